"""The sync worker: drains the outbox into Neo4j.

One Postgres transaction per batch: claim (FOR UPDATE SKIP LOCKED), re-read the aggregates, write them to Neo4j
in one managed transaction, acknowledge, COMMIT. Until that COMMIT the rows stay locked, so a worker that
dies anywhere in the batch (SIGKILL included) loses nothing: its backend rolls back and the rows are claimable
again; the Neo4j writes it may have made are replayed idempotently by the next worker.

Failures are sorted by cause:
- Neo4j unreachable (down, restarting, timeouts): not the rows' fault. The batch rolls back untouched and the
  worker backs off (exponential, jitter) and tries again; an outage never kills rows.
- The write of some rows fails (Neo4j rejects their data): the batch is split in halves until the failing
  rows are isolated; the others are written and acknowledged, the failing ones get an attempt, a backoff with
  jitter and, after ``max_attempts``, the dead state (sigledger._graph_fail). Dead rows block nothing.

Wake-up: LISTEN sigledger_outbox (sigledger._outbox_emit notifies at commit), with a polling fallback.
Any number of workers may run at once, on any machines: coordination is Postgres row and advisory locks.

``python -m sigledger.graph.worker [--once|--follow]`` runs one worker process (the CLI's ``--workers N``
starts N of them).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import namedtuple_row

from sigledger.core.errors import GraphError

from .driver import GraphUnavailable, Neo4jSettings, connect, describe, is_outage
from .sink import Neo4jSink, Snapshot

log = logging.getLogger("sigledger.graph.worker")

CHANNEL = "sigledger_outbox"


@dataclass(frozen=True)
class WorkerConfig:
    batch_size: int = 500
    max_attempts: int = 8
    base_delay: float = 1.0  # seconds, first retry of a failing row (then doubling, with jitter)
    max_delay: float = 600.0
    poll_interval: float = 1.0  # fallback when a notification is lost
    outage_backoff_max: float = 15.0
    once_outage_retries: int = 3  # --once gives up (non-zero exit) after this many failed tries in a row


@dataclass
class BatchResult:
    claimed: int = 0
    acked: int = 0
    failed: int = 0
    dead: int = 0
    deferred: int = 0
    lags: list[float] = field(default_factory=list)  # created_at -> Neo4j commit, seconds, per acked row

    def __iadd__(self, other: BatchResult) -> BatchResult:
        self.claimed += other.claimed
        self.acked += other.acked
        self.failed += other.failed
        self.dead += other.dead
        self.deferred += other.deferred
        self.lags.extend(other.lags)
        return self


def _snapshot(row: Any) -> Snapshot:
    return Snapshot(
        aggregate_type=row.aggregate_type,
        aggregate_id=str(row.aggregate_id),
        state=row.state,
        version=int(row.version),
        props=row.props,
        links=tuple(str(x) for x in (row.links or ())),
        winner_id=str(row.winner_id) if row.winner_id is not None else None,
        error=row.error,
    )


class SyncWorker:
    """One worker: owns one Postgres connection for batches (and one for LISTEN while following)."""

    def __init__(
        self,
        dsn: str,
        sink: Neo4jSink,
        config: WorkerConfig | None = None,
        *,
        name: str = "sigledger-graph-sync",
        write: Callable[[Sequence[Snapshot]], None] | None = None,
        settings: Neo4jSettings | None = None,
    ) -> None:
        self.dsn = dsn
        self.sink = sink
        self.settings = settings or Neo4jSettings.from_env()  # for error messages (which server)
        self.config = config or WorkerConfig()
        self.name = name
        self._write = write or sink.write
        self._conn: psycopg.Connection[Any] | None = None
        self.stop_event = threading.Event()

    # ---- connections ------------------------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.dsn, application_name=self.name, row_factory=namedtuple_row)
            # The batch transaction stays open while Neo4j is written; the server ends it if we hang.
            self._conn.execute("SET idle_in_transaction_session_timeout = '5min'")
            self._conn.commit()
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # ---- one batch ---------------------------------------------------------------------------------------

    def run_batch(self) -> BatchResult:
        """Claim, project and acknowledge one batch. Raises GraphUnavailable (batch rolled back) on an outage."""
        conn = self._connection()
        result = BatchResult()
        try:
            with conn.transaction():
                rows = conn.execute(
                    "SELECT * FROM sigledger._graph_claim(p_limit => %s::integer)", (self.config.batch_size,)
                ).fetchall()
                result.claimed = len(rows)
                if not rows:
                    return result
                snaps = [
                    _snapshot(r)
                    for r in conn.execute(
                        "SELECT * FROM sigledger._graph_snapshot(p_types => %s::text[], p_ids => %s::uuid[])",
                        ([r.aggregate_type for r in rows], [r.aggregate_id for r in rows]),
                    ).fetchall()
                ]
                by_key = {s.key: s for s in snaps}

                # A unit is what must be written together: an aggregate, plus its winner when it was merged.
                units: list[list[Snapshot]] = []
                errors: dict[tuple[str, str], str] = {}
                deferred: set[tuple[str, str]] = set()
                for key in dict.fromkeys((r.aggregate_type, str(r.aggregate_id)) for r in rows):
                    s = by_key.get(key)
                    if s is None:
                        errors[key] = f"no snapshot returned for {key[0]} {key[1]}"
                    elif s.state == "error":
                        errors[key] = s.error or "cannot be projected"
                    elif s.state == "deferred":
                        deferred.add(key)
                    else:
                        unit = [s]
                        if s.winner_id is not None and (s.aggregate_type, s.winner_id) in by_key:
                            unit.append(by_key[(s.aggregate_type, s.winner_id)])
                        units.append(unit)

                errors.update(self._write_isolating(units))
                written_at = time.time()

                ack_ids = [
                    r.id
                    for r in rows
                    if (r.aggregate_type, str(r.aggregate_id)) not in errors
                    and (r.aggregate_type, str(r.aggregate_id)) not in deferred
                ]
                if ack_ids:
                    conn.execute("SELECT sigledger._graph_ack(p_ids => %s::bigint[])", (ack_ids,))
                result.acked = len(ack_ids)
                acked = set(ack_ids)
                result.lags = [written_at - r.created_at.timestamp() for r in rows if r.id in acked]
                result.deferred = sum(1 for r in rows if (r.aggregate_type, str(r.aggregate_id)) in deferred)

                for key, message in errors.items():
                    ids = [r.id for r in rows if (r.aggregate_type, str(r.aggregate_id)) == key]
                    failed = conn.execute(
                        "SELECT * FROM sigledger._graph_fail(p_ids => %s::bigint[], p_error => %s::text, "
                        "p_max_attempts => %s::integer, p_base_delay => make_interval(secs => %s), "
                        "p_max_delay => make_interval(secs => %s))",
                        (
                            ids,
                            message,
                            self.config.max_attempts,
                            self.config.base_delay,
                            self.config.max_delay,
                        ),
                    ).fetchall()
                    result.failed += len(failed)
                    result.dead += sum(1 for f in failed if f.dead)
                    log.warning(
                        "%s %s failed (%s rows, %s now dead): %s",
                        key[0],
                        key[1],
                        len(failed),
                        sum(1 for f in failed if f.dead),
                        message,
                    )
        except psycopg.OperationalError:
            # Lost Postgres connection: the server rolled the batch back; reconnect next time.
            self.close()
            raise
        return result

    def _write_isolating(self, units: list[list[Snapshot]]) -> dict[tuple[str, str], str]:
        """Write all units; on a data error split in halves until the failing units are isolated.

        Returns key -> error for the units that could not be written. An outage raises GraphUnavailable.
        """
        if not units:
            return {}
        try:
            self._write([s for unit in units for s in unit])
            return {}
        except Exception as exc:
            if is_outage(exc):
                raise describe(exc, self.settings) from exc
            if len(units) == 1:
                return {units[0][0].key: f"{type(exc).__name__}: {exc}"}
            mid = len(units) // 2
            failed = self._write_isolating(units[:mid])
            failed.update(self._write_isolating(units[mid:]))
            return failed

    # ---- loop --------------------------------------------------------------------------------------------

    def run(
        self, *, once: bool = False, on_batch: Callable[[BatchResult], None] | None = None
    ) -> BatchResult:
        """Drain the outbox. ``once``: stop when nothing is due (raises GraphUnavailable if Neo4j stays down);
        otherwise follow until ``stop_event`` is set, sleeping on LISTEN/NOTIFY between batches."""
        total = BatchResult()
        listen: psycopg.Connection[Any] | None = None
        outage_delay = 0.0
        outages = 0
        try:
            if not once:
                listen = self._listen()
            while not self.stop_event.is_set():
                try:
                    res = self.run_batch()
                except GraphUnavailable as exc:
                    outages += 1
                    if once and outages > self.config.once_outage_retries:
                        raise
                    outage_delay = min(self.config.outage_backoff_max, max(0.5, outage_delay * 2))
                    wait = outage_delay * (0.5 + random.random() / 2)
                    log.warning("%s; retrying in %.1fs", exc, wait)
                    self.stop_event.wait(wait)
                    continue
                except psycopg.OperationalError as exc:
                    if once:
                        raise
                    log.warning("Postgres unavailable (%s); retrying", exc)
                    self.stop_event.wait(1.0)
                    continue
                outage_delay = 0.0
                outages = 0
                total += res
                if on_batch is not None:
                    on_batch(res)
                if res.claimed == 0:
                    if once:
                        break
                    listen = self._wait_for_notify(listen)
                elif res.acked + res.failed == 0:
                    # Only deferred rows (their merge winner is being projected elsewhere): brief pause.
                    self.stop_event.wait(0.05)
        finally:
            if listen is not None:
                listen.close()
        return total

    def _listen(self) -> psycopg.Connection[Any] | None:
        try:
            conn = psycopg.connect(self.dsn, application_name=f"{self.name}-listen", autocommit=True)
            conn.execute(f"LISTEN {CHANNEL}")
            return conn
        except psycopg.OperationalError as exc:
            log.warning("LISTEN unavailable (%s); polling every %.1fs", exc, self.config.poll_interval)
            return None

    def _wait_for_notify(self, listen: psycopg.Connection[Any] | None) -> psycopg.Connection[Any] | None:
        """Sleep until a notification or the poll interval; returns the (possibly new) LISTEN connection."""
        if listen is None or listen.closed:
            listen = self._listen()
            if listen is None:
                self.stop_event.wait(self.config.poll_interval)
                return None
        try:
            # In slices of at most a second, so a stop request is seen promptly during a long poll interval.
            deadline = time.monotonic() + self.config.poll_interval
            while not self.stop_event.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if any(True for _ in listen.notifies(timeout=min(remaining, 1.0), stop_after=1)):
                    break
        except psycopg.OperationalError:
            # Lost: the poll interval still bounds the delay; reconnect on the next wait.
            listen.close()
            self.stop_event.wait(self.config.poll_interval)
        return listen


def make_worker(
    dsn: str,
    settings: Neo4jSettings | None = None,
    config: WorkerConfig | None = None,
    name: str = "sigledger-graph-sync",
) -> SyncWorker:
    """A worker with a verified Neo4j connection and the constraints in place."""
    settings = settings or Neo4jSettings.from_env()
    driver = connect(settings)
    sink = Neo4jSink(driver, settings.database)
    try:
        sink.ensure_constraints()
    except Exception as exc:
        driver.close()
        raise describe(exc, settings) from exc
    return SyncWorker(dsn, sink, config, name=name, settings=settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sigledger.graph.worker", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--dsn", default=os.environ.get("SIGLEDGER_DSN", ""))
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="drain what is due, then exit")
    mode.add_argument("--follow", action="store_true", help="keep following (default)")
    parser.add_argument("--batch-size", type=int, default=WorkerConfig.batch_size)
    parser.add_argument("--max-attempts", type=int, default=WorkerConfig.max_attempts)
    parser.add_argument("--base-delay", type=float, default=WorkerConfig.base_delay)
    parser.add_argument("--poll-interval", type=float, default=WorkerConfig.poll_interval)
    parser.add_argument("--name", default=f"sigledger-graph-sync-{os.getpid()}")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("SIGLEDGER_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s",
    )
    config = WorkerConfig(
        batch_size=args.batch_size,
        max_attempts=args.max_attempts,
        base_delay=args.base_delay,
        poll_interval=args.poll_interval,
    )
    try:
        worker = make_worker(args.dsn, config=config, name=args.name)
    except GraphError as exc:
        print(f"error: {exc}" + (f" ({exc.hint})" if exc.hint else ""), file=sys.stderr)
        return 1

    def _stop(signum: int, _frame: object) -> None:
        # Finish the batch in flight (its COMMIT), then leave.
        worker.stop_event.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        total = worker.run(once=args.once)
    except GraphError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        worker.close()
        worker.sink.driver.close()
    log.info("done: %s acked, %s failed, %s dead", total.acked, total.failed, total.dead)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
