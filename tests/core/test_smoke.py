import psycopg


def test_template_is_migrated(conn: psycopg.Connection) -> None:
    row = conn.execute(
        "SELECT count(*) FROM sigledger_meta.schema_history WHERE status = 'applied'"
    ).fetchone()
    assert row is not None and row[0] >= 5
