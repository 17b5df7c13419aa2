"""The exit statuses every `sigledger` command shares (docs/operations.md, Exit codes).

Scripts and cron jobs branch on these; a command never uses a number for another meaning.
"""

from __future__ import annotations

OK = 0
#: a rule refused the request: budget exceeded, bad value, unknown id, conflict, rejected lines
REFUSED = 1
#: bad command-line usage (unknown option, bad value of an option): click's own status
USAGE = 2
#: a check found something to act on: pending migrations, budget drift, graph drift or lag
ATTENTION = 3
#: the schema needs repair before anything else: drifted, partially applied or out-of-order migrations
REPAIR = 4
#: the preflight found something that blocks the upgrade (`migrate preflight`/`plan`; each with its fix);
#: the same number as sigledger.migrate.preflight.EXIT_BLOCKED
BLOCKED = 5
#: the database could not be reached (sysexits EX_UNAVAILABLE)
UNAVAILABLE = 69
#: interrupted (Ctrl-C)
INTERRUPTED = 130

TABLE = (
    (OK, "success"),
    (REFUSED, "refused by a rule (budget exceeded, bad value, unknown id, conflict, rejected input lines)"),
    (USAGE, "usage error (unknown command or option, bad option value)"),
    (ATTENTION, "a check found something to act on (pending migrations, budget drift, graph drift or lag)"),
    (REPAIR, "migrations need repair (drift, partially applied, out of order)"),
    (BLOCKED, "the preflight found something that blocks the upgrade (each with its fix)"),
    (UNAVAILABLE, "the database is unavailable (one line names host, port and cause)"),
    (INTERRUPTED, "interrupted"),
)
