"""The Cypher of the projection's writes (docs/graph.md, "Why a stale snapshot never wins").

Every statement decides under the written node's own write lock: it takes the lock first (``MERGE`` on the
constrained id, then ``SET n.sync_lock``: a node a concurrent transaction is creating or deleting is waited
for), and only then reads the versions it compares. So two writers of one node are ordered by Neo4j itself,
whatever Postgres locks they hold or lost:

- a node keeps the ``sync_version`` of the snapshot that wrote it; an older or equal snapshot changes nothing
  of it, its properties or its outgoing relationships;
- a deleted or merged aggregate leaves a tombstone ``(:SigledgerTombstone {key: "<kind>:<id>"})`` with the
  deleting snapshot's version, so a slower, older snapshot cannot create the node again;
- a link target that does not exist yet is created as a stub (no ``sync_version``); a stub that loses its last
  relationship is removed, so a stale snapshot's link to a merged entity disappears with the signal's next
  write (the merge emitted one);
- an upsert whose node was deleted by a concurrent transaction while it waited reports the row as lost, and
  the whole write is retried (a concurrent delete of a link target raises EntityNotFound: retried too).

Each aggregate owns its node's properties and its outgoing relationships of the projection's types
(MENTIONS, INCLUDES): an upsert removes every other outgoing relationship of those types, and duplicates.
"""

from __future__ import annotations

LABELS: dict[str, str] = {"entity": "Entity", "signal": "Signal", "opportunity": "Opportunity"}
# (relationship type, target label) owned by each aggregate type, None when it owns no outgoing links.
LINKS: dict[str, tuple[str, str] | None] = {
    "entity": None,
    "signal": ("MENTIONS", "Entity"),
    "opportunity": ("INCLUDES", "Signal"),
}
# Relationships that point *at* a node of this type, moved to the winner when it is merged.
INCOMING: dict[str, tuple[str, str] | None] = {
    "entity": ("MENTIONS", "Signal"),
    "signal": ("INCLUDES", "Opportunity"),
    "opportunity": None,
}
REL_TYPES = "MENTIONS|INCLUDES"
TOMBSTONE = "SigledgerTombstone"
META = "SigledgerGraph"

CONSTRAINTS: tuple[str, ...] = (
    *(
        f"CREATE CONSTRAINT sigledger_{kind}_id IF NOT EXISTS FOR (n:{label}) REQUIRE n.id IS UNIQUE"
        for kind, label in LABELS.items()
    ),
    f"CREATE CONSTRAINT sigledger_tombstone_key IF NOT EXISTS FOR (t:{TOMBSTONE}) REQUIRE t.key IS UNIQUE",
    f"CREATE CONSTRAINT sigledger_graph_key IF NOT EXISTS FOR (m:{META}) REQUIRE m.key IS UNIQUE",
)


def _lock_and_compare(kind: str, *, tombstone: str) -> str:
    """MERGE + lock the node, read the tombstone under that lock; ``newer`` says whether the row wins.

    ``tombstone`` is "read" (upserts: an existing tombstone newer than the row refuses it) or "merge" (deletes:
    the tombstone is created if missing, and refuses the row when it is as new or newer)."""
    label = LABELS[kind]
    q = f"""
UNWIND $rows AS row
MERGE (n:{label} {{id: row.id}})
  ON CREATE SET n.sync_version = -1
SET n.sync_lock = true"""
    if tombstone == "read":
        q += f"""
WITH n, row
OPTIONAL MATCH (gone:{TOMBSTONE} {{key: '{kind}:' + row.id}})
WITH n, row, coalesce(n.sync_version, -1) < row.version
             AND (gone IS NULL OR gone.sync_version < row.version) AS newer"""
    else:
        q += f"""
MERGE (gone:{TOMBSTONE} {{key: '{kind}:' + row.id}})
  ON CREATE SET gone.sync_version = -1, gone.kind = '{kind}', gone.id = row.id
WITH n, gone, row, coalesce(n.sync_version, -1) < row.version AND gone.sync_version < row.version AS newer
CALL (gone, newer) {{
  WITH gone WHERE NOT newer AND gone.sync_version = -1
  DELETE gone
}}"""
    # Refused: release the lock; a node this statement created only to lock it goes again, and so does a
    # stub no relationship uses any more (left by an older writer; nothing else would remove it).
    q += """
CALL (n, newer) {
  WITH n WHERE NOT newer
  REMOVE n.sync_lock
  WITH n WHERE n.sync_version = -1 OR (n.sync_version IS NULL AND NOT EXISTS { (n)--() })
  DELETE n
}"""
    return q


def _drop_orphan_stubs(var: str) -> str:
    """Stubs among ``var`` (one node per row) that no relationship uses any more are removed, under their lock
    (a concurrent writer linking one waits, then finds it gone: EntityNotFound, retried)."""
    return f"""
CALL ({var}) {{
  WITH {var} WHERE {var}.sync_version IS NULL
  SET {var}.sync_lock = true
  WITH {var}, {var}.sync_version IS NULL AND NOT EXISTS {{ ({var})--() }} AS orphan
  REMOVE {var}.sync_lock
  WITH {var} WHERE orphan
  DELETE {var}
}}"""


def upsert_query(kind: str) -> str:
    """Parameters: ``$rows`` (id, version, props and, for a kind with links, ``at``: the positions of its
    link targets in ``$targets``) and ``$targets``: the distinct link target ids of the statement, in id
    order (each is looked up once per statement, not once per link)."""
    q = _lock_and_compare(kind, tombstone="read")
    q += """
WITH n, row WHERE newer
SET n = row.props, n.id = row.id, n.sync_version = row.version"""
    link = LINKS[kind]
    if link is None:
        # Outgoing relationships of the projection's types: an entity owns none; they all go.
        q += f"""
WITH n, row
CALL (n) {{
  MATCH (n)-[r:{REL_TYPES}]->(t)
  WITH t, collect(r) AS rs
  UNWIND rs AS unwanted
  DELETE unwanted
  WITH DISTINCT t{_drop_orphan_stubs("t")}
}}
WITH n, row WHERE n.sync_version IS NULL OR n.sync_version <> row.version"""
        # A node deleted by a concurrent transaction while this one waited for its lock: the SET above did
        # nothing; report the row so that the write is retried.
        q += """
RETURN collect(row.id) AS lost"""
        return q
    rel, target = link
    # Outgoing relationships of the projection's types: one per link Postgres has; the rest goes.
    q += f"""
WITH n, row
CALL (n, row) {{
  WITH n, [i IN row.at | $targets[i]] AS links
  MATCH (n)-[r:{REL_TYPES}]->(t)
  WITH t, r, type(r) = '{rel}' AND t:{target} AND t.id IN links AS wanted
  WITH t, wanted, collect(r) AS rs
  UNWIND (CASE WHEN wanted THEN tail(rs) ELSE rs END) AS unwanted
  DELETE unwanted
  WITH DISTINCT t{_drop_orphan_stubs("t")}
}}"""
    # The missing links are CREATEd, not MERGEd: n's lock (taken above) orders every writer of n's outgoing
    # relationships (other upserts of n, and a merge moving them, whose MERGE locks n), so what is read here
    # under that lock stays true until commit and no duplicate can appear. A relationship MERGE would also
    # take an exclusive lock on the target: every batch of signals would then queue on the entities it
    # mentions, and two workers would write one after the other. CREATE takes a shared lock on the target,
    # which still conflicts with a concurrent delete of it (DeadlockDetected, retried; or EntityNotFound
    # after the delete committed, retried).
    #
    # The targets are looked up (a stub created for a missing one) once per statement, after every row of
    # it holds its node's lock and has trimmed its relationships (the collect() waits for all rows: no stub
    # this statement still links can be removed as an orphan by the trim of another row). A target of rows
    # that were all refused or lost is a stub no relationship uses, removed again at the end.
    q += f"""
WITH collect([n, row]) AS written
CALL (written) {{
  UNWIND CASE WHEN size(written) > 0 THEN $targets ELSE [] END AS tid
  MERGE (t:{target} {{id: tid}})
  RETURN collect(t) AS targets
}}
CALL (written, targets) {{
  UNWIND written AS w
  WITH w[0] AS n, w[1] AS row, targets
  WITH n, row, targets, COLLECT {{ MATCH (n)-[:{rel}]->(linked:{target}) RETURN linked }} AS linked
  UNWIND [i IN row.at WHERE NOT targets[i] IN linked] AS i
  WITH n, targets[i] AS t
  CREATE (n)-[:{rel}]->(t)
}}
CALL (targets) {{
  UNWIND targets AS t
  WITH t WHERE t.sync_version IS NULL AND NOT EXISTS {{ (t)--() }}{_drop_orphan_stubs("t")}
}}"""
    # A node deleted by a concurrent transaction while this one waited for its lock: the SET above did
    # nothing; report the row so that the write is retried.
    q += """
RETURN [w IN written WHERE w[0].sync_version IS NULL OR w[0].sync_version <> w[1].version | w[1].id] AS lost"""
    return q


def delete_query(kind: str) -> str:
    """The aggregate is gone in Postgres: tombstone, then delete the node (and stubs only it used)."""
    q = _lock_and_compare(kind, tombstone="merge")
    q += f"""
WITH n, gone, row WHERE newer
SET gone.sync_version = row.version
WITH n, [(n)-[:{REL_TYPES}]->(t) WHERE t.sync_version IS NULL | t] AS stubs
DETACH DELETE n
WITH stubs
UNWIND stubs AS s{_drop_orphan_stubs("s")}
RETURN count(*) AS done"""
    return q


def merge_query(kind: str) -> str:
    """Loser -> winner: tombstone the loser, move its relationships onto the winner, delete it. The winner is
    upserted later in the same transaction (same batch unit), which trims what moved to what Postgres says.

    The winner is decided under its own lock like any written node: when its tombstone is newer than the row
    (it was merged away or deleted since this snapshot was read), nothing moves onto it, and a winner node
    this statement created only to lock it goes again (a stub no relationship uses: the winner's refused
    upsert would not remove it). The loser's links are then the concern of their own aggregates' events (the
    merge emitted one for each, docs/graph.md), and stubs only the loser used go with it."""
    label = LABELS[kind]
    q = _lock_and_compare(kind, tombstone="merge")
    q += f"""
WITH n, gone, row WHERE newer
SET gone.sync_version = row.version, gone.merged_into = row.winner
MERGE (w:{label} {{id: row.winner}})
SET w.sync_lock = true
WITH n, w, row
OPTIONAL MATCH (wgone:{TOMBSTONE} {{key: '{kind}:' + row.winner}})
WITH n, w, wgone IS NULL OR wgone.sync_version < row.version AS allowed"""
    out_link = LINKS[kind]
    if out_link is not None:
        rel, target = out_link
        q += f"""
CALL (n, w, allowed) {{
  WITH n, w WHERE allowed
  MATCH (n)-[:{rel}]->(t:{target})
  MERGE (w)-[:{rel}]->(t)
}}"""
    in_link = INCOMING[kind]
    if in_link is not None:
        rel, source = in_link
        q += f"""
CALL (n, w, allowed) {{
  WITH n, w WHERE allowed
  MATCH (s:{source})-[:{rel}]->(n)
  MERGE (s)-[:{rel}]->(w)
}}"""
    # Aggregated (eager): every row's moves are done before any orphan check (two losers, one winner).
    q += f"""
REMOVE w.sync_lock
WITH n, w, [(n)-[:{REL_TYPES}]->(t) WHERE t.sync_version IS NULL | t] AS stubs
DETACH DELETE n
WITH collect(DISTINCT w) AS winners, collect(stubs) AS stubs
UNWIND winners + reduce(acc = [], l IN stubs | acc + l) AS c
WITH DISTINCT c{_drop_orphan_stubs("c")}
RETURN count(*) AS done"""
    return q


# The meta node (docs/graph.md, "Epochs"): which database and epoch the graph holds, the highest version
# written (restore detection), and the fence below which no write is accepted (tombstone collection, and
# every batch read before a rebuild). Every batch reads it first, inside its write transaction, and stops
# there when it is not its database's, epoch's or above the fence. It is not locked by batches: the fence
# protects tombstones for as long as a transaction may run (see COLLECT).
_META_FIELDS = """m.database_id AS database_id, m.epoch AS epoch, coalesce(m.high_water, 0) AS high_water,
       coalesce(m.fence, 0) AS fence, m.diverged AS diverged"""

READ_META = f"""
MATCH (m:{META} {{key: 'meta'}})
RETURN {_META_FIELDS}"""

# The first write of a database that never wrote a graph in this epoch: the graph becomes its.
CREATE_META = f"""
MERGE (m:{META} {{key: 'meta'}})
  ON CREATE SET m.database_id = $database_id, m.epoch = $epoch, m.high_water = 0, m.fence = 0,
                m.created_at = datetime()
RETURN {_META_FIELDS}"""

# After a batch (at most once a second per worker): the highest version written, under the meta lock.
RECORD_HIGH_WATER = f"""
MATCH (m:{META} {{key: 'meta'}})
SET m.sync_lock = true
WITH m
SET m.high_water = CASE WHEN coalesce(m.high_water, 0) < $version THEN $version ELSE m.high_water END
REMOVE m.sync_lock
RETURN {_META_FIELDS}"""

# A worker found the graph ahead of this database (restored from a backup): every worker refuses from now on,
# until graph rebuild starts a new epoch.
MARK_DIVERGED = f"""
MATCH (m:{META} {{key: 'meta'}})
SET m.diverged = $reason"""

# graph rebuild: the graph now holds this database's new epoch; nothing below the floor is accepted. The
# tombstones stay until collection (every one is below the floor: they refuse nothing any more).
ADOPT_META = f"""
MERGE (m:{META} {{key: 'meta'}})
SET m.sync_lock = true
WITH m
SET m.database_id = $database_id, m.epoch = $epoch, m.high_water = $floor, m.fence = $floor,
    m.fence_raised_at = timestamp(), m.adopted_at = datetime()
REMOVE m.sync_lock, m.diverged
RETURN m.epoch AS epoch"""

# Tombstone collection, one round. A batch checks the fence when its transaction begins, and a transaction
# lives at most its timeout (enforced by the server): once the fence has stood for longer than that
# ($grace_ms), no transaction that read an older fence is left, and the tombstones at or below the fence can
# refuse nothing any more. Then the fence moves up to $fence (a version read long enough ago, see
# batch.FenceClock) for the next round. Returns the fence whose tombstones may go now (NULL: not yet).
COLLECT = f"""
MATCH (m:{META} {{key: 'meta'}})
SET m.sync_lock = true
WITH m, coalesce(m.fence, 0) AS fence, timestamp() - coalesce(m.fence_raised_at, 0) AS age
WITH m, fence, age >= $grace_ms AS stood
SET m.fence = CASE WHEN stood AND fence < $fence THEN $fence ELSE fence END,
    m.fence_raised_at = CASE WHEN stood AND fence < $fence THEN timestamp() ELSE m.fence_raised_at END
REMOVE m.sync_lock
RETURN CASE WHEN stood THEN fence END AS droppable"""

DROP_TOMBSTONES = f"""
MATCH (t:{TOMBSTONE}) WHERE t.sync_version <= $fence
CALL (t) {{ DELETE t }} IN TRANSACTIONS OF 5000 ROWS"""
