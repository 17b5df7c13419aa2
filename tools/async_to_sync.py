"""Generate the sync modules of sigledger from their async sources (the way psycopg writes its sync classes).

The async code is the one written by hand; each pair below names it and its generated sync twin. The
transformation is lexical: the tokens ``async`` and ``await`` are dropped (the rest of the line moves left so the
indentation stays right), and the names of NAME_MAP are renamed everywhere, in strings and comments too. The
result is formatted with ruff. Lines of the source that start with ``# async source:`` are left out. A test (tests/core/test_async_to_sync.py) fails when a committed twin differs
from what this produces, so the two never drift.

Usage: python tools/async_to_sync.py [--check]
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "harness" / "sigledger"

PAIRS: list[tuple[str, str]] = [
    ("core/adb.py", "core/db.py"),
    ("ledger/aclient.py", "ledger/client.py"),
    ("ledger/atracker.py", "ledger/tracker.py"),
    ("budget/aclient.py", "budget/client.py"),
    ("budget/aguard.py", "budget/guard.py"),
    ("reports/aclient.py", "reports/client.py"),
]

NAME_MAP: dict[str, str] = {
    "AsyncDatabase": "Database",
    "AsyncConnectionPool": "ConnectionPool",
    "AsyncConnection": "Connection",
    "AsyncCursor": "Cursor",
    "AsyncLedger": "Ledger",
    "AsyncCostTracker": "CostTracker",
    "AsyncBudgetClient": "BudgetClient",
    "AsyncBudgetGuard": "BudgetGuard",
    "AsyncReportClient": "ReportClient",
    "AsyncIterator": "Iterator",
    "AsyncGenerator": "Generator",
    "asynccontextmanager": "contextmanager",
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "_acompat": "_compat",
    "adb": "db",
    "aclient": "client",
    "atracker": "tracker",
    "aguard": "guard",
    "aconnect": "connect",
    "acall": "call",
}

_WORD = re.compile(r"\b(" + "|".join(re.escape(k) for k in sorted(NAME_MAP, key=len, reverse=True)) + r")\b")
_DROP = {"async", "await"}


def _rename_text(text: str) -> str:
    return _WORD.sub(lambda m: NAME_MAP[m.group(1)], text)


def convert(source: str, origin: str) -> str:
    source = re.sub(r"(?m)^# async source:.*\n", "", source)  # notes about the source itself
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    out: list[tokenize.TokenInfo] = []
    shift: dict[int, int] = {}  # row -> columns removed so far on that row
    for i, tok in enumerate(tokens):
        (srow, scol), (erow, ecol) = tok.start, tok.end
        if tok.type == tokenize.NAME and tok.string in _DROP:
            nxt = tokens[i + 1]
            if nxt.start[0] == srow:  # drop the keyword and the blank after it
                shift[srow] = shift.get(srow, 0) + (nxt.start[1] - scol)
            continue
        string = tok.string
        if tok.type == tokenize.NAME:
            string = NAME_MAP.get(string, string)
        elif tok.type in (tokenize.STRING, tokenize.COMMENT):
            string = _rename_text(string)
        start = (srow, scol - shift.get(srow, 0))
        end = (erow, ecol - shift.get(erow, 0)) if erow == srow else (erow, ecol)
        # a renamed name changes length: later tokens on the row move by the difference
        if string != tok.string and erow == srow:
            delta = len(tok.string) - len(string)
            end = (erow, end[1] - delta)
            shift[srow] = shift.get(srow, 0) + delta
        out.append(tokenize.TokenInfo(tok.type, string, start, end, tok.line))
    text = tokenize.untokenize(out)
    text = re.sub(
        r"\bAwaitable\[([^\[\]]+)\]", r"\1", text
    )  # Callable[..., Awaitable[T]] -> Callable[..., T]
    header = (
        f"# Generated from sigledger/{origin} by tools/async_to_sync.py: do not edit, change the async source\n"
        "# and run `make sync-gen`.\n"
    )
    return header + text


def ruff_format(text: str, path: Path) -> str:
    ruff = Path(sys.executable).parent / "ruff"
    done = subprocess.run(
        [str(ruff), "format", "--stdin-filename", str(path), "-"],
        input=text,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    fixed = subprocess.run(
        [str(ruff), "check", "--select", "I,F401,RUF022", "--fix", "--stdin-filename", str(path), "-"],
        input=done.stdout,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    return fixed.stdout if fixed.stdout else done.stdout


def generate(src: str, dst: str) -> str:
    return ruff_format(convert((PKG / src).read_text(), src), PKG / dst)


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for src, dst in PAIRS:
        text = generate(src, dst)
        target = PKG / dst
        if target.exists() and target.read_text() == text:
            continue
        if check:
            stale.append(dst)
        else:
            target.write_text(text)
            print(f"wrote sigledger/{dst}")
    if stale:
        print("stale generated files (run make sync-gen): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
