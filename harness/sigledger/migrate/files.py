"""Reading migration and repeatable files: names, versions, headers, checksums, statements.

Statements are split by the real PostgreSQL parser (pglast wraps libpg_query), so dollar quotes, comments
and strings never confuse the split, and statements that cannot run inside a transaction block are found
by their parse tree, not by a regular expression.

A no-transaction file may end a query with psql's `\\gexec` (on a line of its own) instead of `;`: the runner
runs the query, then each non-NULL value of its result (row by row, column by column) as a statement of its
own, as psql does; a CREATE INDEX CONCURRENTLY among them gets the runner's repair like any other. The whole
is one step: a re-run after a failure runs the query again, so it must produce only what is still to do (or
statements that may run again). This is how a migration reaches objects it cannot name in advance, e.g. one
index per partition built CONCURRENTLY (V8_101), which no function or DO block can run.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pglast
from pglast import ast

from sigledger.core.errors import MigrationError

_VERSIONED = re.compile(
    r"^V(?P<version>\d+(?:[._]\d+)*)__(?P<name>[A-Za-z0-9_\-]+?)(?P<kind>\.down|\.verify)?\.sql$"
)
_REPEATABLE = re.compile(r"^(?P<order>\d+)_(?P<name>[A-Za-z0-9_\-]+)\.sql$")
HEADER_NO_TRANSACTION = "sigledger:no-transaction"
HEADER_ALWAYS = "sigledger:always"
# Role management (CREATE ROLE, ALTER ROLE, GRANT role) needs the connecting user's own privileges: a file with
# this header runs without SET ROLE to the owner role.
HEADER_SESSION_USER = "sigledger:as-session-user"
# A released file that was rewritten (to make it online, or to stop it needing a privilege) lists the checksums
# of its earlier released contents: a database that applied one of those is not drifted. The rewrite must
# reach the same schema (tests/migrate/test_superseded.py builds both and compares them).
HEADER_SUPERSEDES = "sigledger:supersedes"
# A repair file (sql/repairs) names the released versions it runs before.
HEADER_BEFORE = "sigledger:before"
# psql's meta-command that ends a query whose result is a list of statements to run (see the module docstring)
GEXEC = re.compile(r"^[ \t]*\\gexec[ \t]*$", re.MULTILINE)


_VERSION = re.compile(r"^\d+(?:[._]\d+)*$")


def version_key(version: str) -> tuple[int, ...]:
    """(3, 10) for "3_010": versions compare numerically, part by part."""
    if not _VERSION.match(version):
        raise MigrationError(
            f"'{version}' is not a version (expected digits separated by _ or ., e.g. V3_010)"
        )
    return tuple(int(part) for part in re.split(r"[._]", version))


def checksum(text: str) -> str:
    """sha256 of the content with line endings normalised (a CRLF checkout is not drift)."""
    normalised = text.replace("\r\n", "\n").replace("\r", "\n")
    return hashlib.sha256(normalised.encode("utf-8")).hexdigest()


def _headers(text: str) -> dict[str, list[str]]:
    """The `-- sigledger:<name> [args...]` lines of the leading comment block (args of repeated lines join)."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("--"):
            break
        body = stripped[2:].strip()
        if body.startswith("sigledger:"):
            name, *args = body.split()
            found.setdefault(name, []).extend(args)
    return found


@dataclass(frozen=True)
class Statement:
    sql: str
    line: int
    node: ast.Node = field(compare=False, repr=False)
    gexec: bool = False  # ended by \gexec: its result is the statements to run

    @property
    def needs_no_transaction(self) -> bool:
        return needs_no_transaction(self.node)

    @property
    def concurrent_index(self) -> tuple[str | None, str] | None:
        """(schema, index name) for CREATE INDEX CONCURRENTLY, else None."""
        node = self.node
        if isinstance(node, ast.IndexStmt) and node.concurrent and node.idxname and node.relation is not None:
            return (node.relation.schemaname, node.idxname)
        return None


def needs_no_transaction(node: ast.Node) -> bool:
    """True for statements PostgreSQL refuses inside a transaction block."""
    if isinstance(node, ast.IndexStmt | ast.DropStmt):
        return bool(node.concurrent)
    if isinstance(node, ast.ReindexStmt):
        return any(getattr(p, "defname", None) == "concurrently" for p in (node.params or ()))
    return isinstance(
        node,
        ast.VacuumStmt
        | ast.CreatedbStmt
        | ast.DropdbStmt
        | ast.AlterSystemStmt
        | ast.CreateTableSpaceStmt
        | ast.DropTableSpaceStmt
        | ast.CreateSubscriptionStmt
        | ast.DropSubscriptionStmt,
    )


@dataclass(frozen=True)
class Step:
    """What runs as one unit: statements[start:end] of a file, in one transaction or (a lone statement of a
    no-transaction file) on its own. In a no-transaction file, `BEGIN; ... COMMIT;` groups statements into one
    transactional step; the BEGIN and COMMIT themselves are in the range but are not executed."""

    start: int
    end: int
    statements: tuple[Statement, ...]
    transaction: bool


def _is_transaction_control(stmt: Statement, *kinds: int) -> bool:
    return isinstance(stmt.node, ast.TransactionStmt) and (not kinds or stmt.node.kind in kinds)


_BEGIN = (0, 1)  # TRANS_STMT_BEGIN, TRANS_STMT_START
_COMMIT = (2,)  # TRANS_STMT_COMMIT


def parse_statements(text: str, origin: str) -> list[Statement]:
    # each \gexec line ends its query like a semicolon would: replaced by one, padded to the same length so
    # that offsets and line numbers stay those of the file
    ends = [m.start() + m.group().index("\\") for m in GEXEC.finditer(text)]
    for at in ends:
        text = text[:at] + ";" + " " * (len("\\gexec") - 1) + text[at + len("\\gexec") :]
    try:
        raws = pglast.parse_sql(text)
    except pglast.parser.ParseError as exc:
        raise MigrationError(f"{origin}: SQL does not parse: {exc}") from exc
    # pglast reports stmt_location/stmt_len in characters of the str it was given (it maps libpg_query's
    # byte offsets back), so slice the str: slicing the UTF-8 bytes shifts every statement after non-ASCII text.
    out: list[Statement] = []
    used: set[int] = set()
    for raw in raws:
        start = raw.stmt_location or 0
        end = start + raw.stmt_len if raw.stmt_len else len(text)
        chunk = text[start:end]
        sql = chunk.strip()
        line = text.count("\n", 0, start) + 1 + (len(sql) and _leading_newlines(chunk))
        assert raw.stmt is not None
        gexec = next((at for at in ends if at >= end and not text[end:at].strip()), None)
        if gexec is not None:
            used.add(gexec)
        out.append(Statement(sql=sql, line=line, node=raw.stmt, gexec=gexec is not None))
    for at in ends:
        if at not in used:
            raise MigrationError(
                f"{origin}:{text.count(chr(10), 0, at) + 1}: \\gexec must end a query (no ';' before it): psql "
                "would run the previous query again"
            )
    return out


def generated_statement(text: str, origin: str, line: int) -> Statement:
    """One statement produced by a \\gexec query (`origin`:`line` is that query's): exactly one statement, no
    transaction control, a CREATE INDEX CONCURRENTLY with a name (the runner finds it again by its name)."""
    try:
        raws = pglast.parse_sql(text)
    except pglast.parser.ParseError as exc:
        raise MigrationError(
            f"{origin}:{line}: a generated statement does not parse: {exc}: {text!r}"
        ) from exc
    if len(raws) != 1 or raws[0].stmt is None:
        raise MigrationError(
            f"{origin}:{line}: a generated value must be one statement, got {len(raws)}: {text!r}"
        )
    node = raws[0].stmt
    if isinstance(node, ast.TransactionStmt):
        raise MigrationError(
            f"{origin}:{line}: a generated statement may not be transaction control: {text!r}"
        )
    if isinstance(node, ast.IndexStmt) and node.concurrent and not node.idxname:
        raise MigrationError(f"{origin}:{line}: CREATE INDEX CONCURRENTLY needs an index name: {text!r}")
    return Statement(sql=text.strip().rstrip(";").rstrip(), line=line, node=node)


def _leading_newlines(chunk: str) -> int:
    stripped = chunk.lstrip()
    return chunk[: len(chunk) - len(stripped)].count("\n")


@dataclass(frozen=True)
class SqlFile:
    path: Path

    @cached_property
    def text(self) -> str:
        # utf-8-sig: an editor's byte-order mark is not SQL (the parser rejects it) and not a change.
        return self.path.read_text(encoding="utf-8-sig")

    @cached_property
    def checksum(self) -> str:
        return checksum(self.text)

    @cached_property
    def header_args(self) -> dict[str, list[str]]:
        return _headers(self.text)

    @property
    def headers(self) -> set[str]:
        return set(self.header_args)

    @property
    def supersedes(self) -> frozenset[str]:
        """Checksums of earlier released contents of this file (see HEADER_SUPERSEDES)."""
        return frozenset(self.header_args.get(HEADER_SUPERSEDES, ()))

    @property
    def transactional(self) -> bool:
        return HEADER_NO_TRANSACTION not in self.headers

    @property
    def as_owner(self) -> bool:
        return HEADER_SESSION_USER not in self.headers

    @cached_property
    def statements(self) -> list[Statement]:
        return parse_statements(self.text, self.path.name)

    @cached_property
    def steps(self) -> list[Step]:
        """The units the runner executes (check_statements has refused anything malformed)."""
        stmts = self.statements
        if self.transactional:
            body = tuple(s for s in stmts if not _is_transaction_control(s))
            return [Step(0, len(stmts), body, True)]
        out: list[Step] = []
        index = 0
        while index < len(stmts):
            if _is_transaction_control(stmts[index], *_BEGIN):
                end = next(
                    (j for j in range(index + 1, len(stmts)) if _is_transaction_control(stmts[j], *_COMMIT)),
                    len(stmts) - 1,
                )
                out.append(Step(index, end + 1, tuple(stmts[index + 1 : end]), True))
                index = end + 1
            else:
                out.append(Step(index, index + 1, (stmts[index],), False))
                index += 1
        return out

    def check_statements(self, *, transactional: bool | None = None) -> None:
        """Parse, and refuse a transactional file holding a statement that cannot run in a transaction.

        ``transactional`` overrides the file's header (repeatable files always run in a transaction). A
        no-transaction file may group statements with `BEGIN; ... COMMIT;` (one transaction, one resume step);
        any other transaction control is refused.
        """
        in_transaction = self.transactional if transactional is None else transactional
        in_group = False
        opened = 0
        for stmt in self.statements:
            if isinstance(stmt.node, ast.TransactionStmt):
                grouping = not in_transaction and (
                    (not in_group and stmt.node.kind in _BEGIN) or (in_group and stmt.node.kind in _COMMIT)
                )
                if not grouping:
                    raise MigrationError(
                        f"{self.path.name}:{stmt.line}: transaction control ({stmt.sql.split()[0].upper()}) is "
                        "not allowed here; the runner owns the transaction (a no-transaction file may group "
                        "statements with BEGIN; ... COMMIT;)"
                    )
                in_group = not in_group
                opened = stmt.line
                continue
            if in_group and stmt.needs_no_transaction:
                raise MigrationError(
                    f"{self.path.name}:{stmt.line}: '{_first_line(stmt.sql)}' cannot run inside BEGIN ... COMMIT"
                )
            if stmt.gexec and (in_transaction or in_group):
                raise MigrationError(
                    f"{self.path.name}:{stmt.line}: \\gexec runs its statements one by one: only in a file whose "
                    f"first line is '-- {HEADER_NO_TRANSACTION}', outside BEGIN ... COMMIT"
                )
            node = stmt.node
            if isinstance(node, ast.IndexStmt) and node.concurrent and not node.idxname:
                raise MigrationError(
                    f"{self.path.name}:{stmt.line}: CREATE INDEX CONCURRENTLY needs an index name: the runner "
                    "looks the index up by name to keep a valid one and rebuild an INVALID one on re-run"
                )
            if in_transaction and stmt.needs_no_transaction:
                raise MigrationError(
                    f"{self.path.name}:{stmt.line}: '{_first_line(stmt.sql)}' cannot run inside a transaction; "
                    f"put it in a file whose first line is '-- {HEADER_NO_TRANSACTION}'"
                )
        if in_group:
            raise MigrationError(f"{self.path.name}:{opened}: transaction control (BEGIN) without a COMMIT")


def _first_line(sql: str) -> str:
    line = sql.splitlines()[0] if sql else ""
    return line if len(line) <= 80 else line[:77] + "..."


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    up: SqlFile
    down: SqlFile | None
    verify: SqlFile | None

    @property
    def key(self) -> tuple[int, ...]:
        return version_key(self.version)

    @property
    def label(self) -> str:
        return f"V{self.version}__{self.name}"


@dataclass(frozen=True)
class Repeatable:
    name: str
    file: SqlFile

    @property
    def always(self) -> bool:
        return HEADER_ALWAYS in self.file.headers


def discover_migrations(directory: Path) -> list[Migration]:
    parts: dict[str, dict[str, Path]] = {}
    names: dict[str, str] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _VERSIONED.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: not a migration file name (expected V<version>__<name>.sql)")
        version, name = match["version"], match["name"]
        kind = (match["kind"] or ".up")[1:]
        canonical = ".".join(str(p) for p in version_key(version))
        if canonical in names and names[canonical] != version:
            raise MigrationError(f"V{version} and V{names[canonical]} are the same version")
        names[canonical] = version
        slot = parts.setdefault(version, {})
        if kind in slot:
            raise MigrationError(f"two {kind} files for version V{version}")
        slot[kind] = path
        slot.setdefault("_name", Path(name))
    migrations = []
    for version, slot in parts.items():
        if "up" not in slot:
            raise MigrationError(f"V{version}: companion files without V{version}__<name>.sql")
        migrations.append(
            Migration(
                version=version,
                name=slot["_name"].name,
                up=SqlFile(slot["up"]),
                down=SqlFile(slot["down"]) if "down" in slot else None,
                verify=SqlFile(slot["verify"]) if "verify" in slot else None,
            )
        )
    return sorted(migrations, key=lambda m: m.key)


def discover_repeatables(directory: Path) -> list[Repeatable]:
    out = []
    for path in sorted(directory.glob("*.sql")):
        if not _REPEATABLE.match(path.name):
            raise MigrationError(f"{path.name}: not a repeatable file name (expected NNN_<name>.sql)")
        out.append(Repeatable(name=path.name, file=SqlFile(path)))
    return out
