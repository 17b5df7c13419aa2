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
from typing import Any

import psycopg
from psycopg.rows import namedtuple_row
from psycopg.types.string import TextLoader

from sigledger.core.db import connect as db_connect
from sigledger.core.errors import GraphError, Unavailable

from .batch import BatchResult, FenceClock, WorkerConfig, snapshot_of, stamp_of
from .driver import GraphUnavailable, Neo4jSettings, connect, describe, is_outage
from .sink import GraphIdentityError, GraphMeta, Neo4jSink, Snapshot, Stamp, check_identity
from .wakeup import Wakeup

__all__ = ["BatchResult", "SyncWorker", "WorkerConfig", "make_worker"]

log = logging.getLogger("sigledger.graph.worker")

HIGH_WATER_INTERVAL = 1.0  # seconds between two high-water records of one worker


class SyncWorker:
    """One worker: owns one Postgres connection for batches (and one for LISTEN while following)."""

    def __init__(
        self,
        dsn: str,
        sink: Neo4jSink,
        config: WorkerConfig | None = None,
        *,
        name: str = "sigledger-graph-sync",
        settings: Neo4jSettings | None = None,
    ) -> None:
        self.dsn = dsn
        self.sink = sink
        self.settings = settings or Neo4jSettings.from_env()  # for error messages (which server)
        self.config = config or WorkerConfig()
        self.name = name
        self._conn: psycopg.Connection[Any] | None = None
        self.stop_event = threading.Event()
        # The graph's meta node as this worker last saw it (None: read it again before the next write).
        self._meta: GraphMeta | None = None
        self._meta_known = False
        self._high_water_at = 0.0  # monotonic time of the last high-water record
        self.fence_clock = FenceClock(self.config.tombstone_ttl, self.config.tombstone_interval)
        # Test seam: called with a batch's snapshots right before they are written to Neo4j (the tests pause
        # a worker there to interleave another one deterministically).
        self.before_write: Callable[[Sequence[Snapshot]], None] | None = None

    # ---- connections ------------------------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = db_connect(self.dsn, application_name=self.name, row_factory=namedtuple_row)
            # Ids as the text they are compared and sent as (a uuid.UUID per id and link, then str() of it,
            # was a tenth of the worker's CPU on a batch of 1,000).
            self._conn.adapters.register_loader("uuid", TextLoader)
            # The batch transaction stays open while Neo4j is written; the server ends it if we hang.
            self._conn.execute("SET idle_in_transaction_session_timeout = '5min'")
            # The identity row is drawn here, outside any batch (its first insert would otherwise be held by a
            # batch transaction while Neo4j is written).
            self._conn.execute("SELECT * FROM sigledger._graph_identity()")
            self._conn.commit()
            self._meta_known = False  # a new session (maybe a restored server): look at the graph again
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # ---- one batch ---------------------------------------------------------------------------------------

    def run_batch(self) -> BatchResult:
        """Claim, project and acknowledge one batch. Raises GraphUnavailable (batch rolled back) on an outage,
        GraphIdentityError when the graph is not this database's projection of its epoch."""
        conn = self._connection()
        result = BatchResult()
        if not self._meta_known:
            # Read before this batch's snapshot takes its version: every version the graph holds now was
            # handed out before, so within one epoch the snapshot's version must be above it (_check_graph).
            self._meta, self._meta_known = self.sink.read_meta(), True
        high_water = self._meta.high_water if self._meta is not None else 0
        written_version = 0
        try:
            with conn.transaction():
                rows = conn.execute(
                    "SELECT * FROM sigledger._graph_claim(p_limit => %s::integer)", (self.config.batch_size,)
                ).fetchall()
                result.claimed = len(rows)
                if not rows:
                    return result
                stamp = stamp_of(conn.execute("SELECT * FROM sigledger._graph_identity()").fetchone())
                snaps = [
                    snapshot_of(r)
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

                if units:
                    version = max(s.version for s in snaps)
                    self._check_graph(stamp, version, high_water)
                    if self.before_write is not None:
                        # Each aggregate once (a winner can be both claimed and pulled in by its loser).
                        self.before_write(list({s.key: s for unit in units for s in unit}.values()))
                    errors.update(self._write_isolating(units, stamp))
                    if len(errors) < len(units):
                        written_version = version
                        if not stamp.written:
                            conn.execute(
                                "SELECT sigledger._graph_mark_written(p_epoch => %s::bigint)", (stamp.epoch,)
                            )
                    self.fence_clock.saw(min(s.version for s in snaps))
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
                self._fail(conn, rows, errors, result)
        except psycopg.OperationalError:
            # Lost Postgres connection: the server rolled the batch back; reconnect next time.
            self.close()
            raise
        if written_version and time.monotonic() - self._high_water_at >= HIGH_WATER_INTERVAL:
            self._record_high_water(written_version)
        return result

    def _record_high_water(self, version: int) -> None:
        """The graph's high-water mark (restore detection), at most once a second per worker: one small
        transaction on the meta node, after the batch (batches never wait for each other on it)."""
        try:
            meta = self.sink.record_high_water(version)
        except Exception as exc:  # the next batch records it; the batch itself is done
            log.warning("could not record the graph's high-water mark: %s", exc)
            return
        self._high_water_at = time.monotonic()
        if meta is not None:
            self._meta, self._meta_known = meta, True

    def _check_graph(self, stamp: Stamp, version: int, high_water: int) -> None:
        """Before writing: the graph holds this database's projection of this epoch, and held no version at
        or above this batch's before the batch began (else Postgres went back in time: restored from a
        backup). ``high_water`` must have been read before the snapshot took ``version``."""
        try:
            check_identity(stamp, self._meta, self.settings.uri)
        except GraphIdentityError:
            # Maybe rebuilt since we looked: look again before refusing (its high-water mark is of no use
            # here: read after our version was taken, it may hold concurrent, newer versions).
            self._meta = self.sink.read_meta()
            check_identity(stamp, self._meta, self.settings.uri)
            high_water = 0
        if self._meta is None:
            # This database's first write into a graph in this epoch (check_identity let it through only
            # because none was written yet): the graph becomes its.
            self._meta = self.sink.create_meta(stamp)
            check_identity(stamp, self._meta, self.settings.uri)
        if version <= high_water:
            reason = (
                f"it holds version {high_water}, but this database (id {stamp.database_id}, "
                f"epoch {stamp.epoch}) hands out version {version} now: PostgreSQL was restored from a backup "
                "(or its graph version sequence was reset)"
            )
            self.sink.mark_diverged(reason)  # every worker refuses from now on, until a rebuild
            self._meta_known = False
            raise GraphIdentityError(
                f"the graph at {self.settings.uri} is ahead of this database: {reason}",
                sqlstate="SLG01",
                hint="run `sigledger graph rebuild`",
            )

    def _fail(
        self,
        conn: psycopg.Connection[Any],
        rows: list[Any],
        errors: dict[tuple[str, str], str],
        result: BatchResult,
    ) -> None:
        for key, message in errors.items():
            ids = [r.id for r in rows if (r.aggregate_type, str(r.aggregate_id)) == key]
            failed = conn.execute(
                "SELECT * FROM sigledger._graph_fail(p_ids => %s::bigint[], p_error => %s::text, "
                "p_max_attempts => %s::integer, p_base_delay => make_interval(secs => %s), "
                "p_max_delay => make_interval(secs => %s))",
                (ids, message, self.config.max_attempts, self.config.base_delay, self.config.max_delay),
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

    def _write_isolating(self, units: list[list[Snapshot]], stamp: Stamp) -> dict[tuple[str, str], str]:
        """Write all units; on a data error split in halves until the failing units are isolated.

        Returns key -> error for the units that could not be written. An outage (or a write conflict that
        kept coming back) raises GraphUnavailable; a graph of another database or epoch GraphIdentityError.
        """
        if not units:
            return {}
        try:
            self.sink.write([s for unit in units for s in unit], stamp)
            return {}
        except GraphIdentityError:
            self._meta_known = False
            raise
        except Exception as exc:
            if is_outage(exc):
                raise describe(exc, self.settings) from exc
            if len(units) == 1:
                return {units[0][0].key: f"{type(exc).__name__}: {exc}"}
            mid = len(units) // 2
            failed = self._write_isolating(units[:mid], stamp)
            failed.update(self._write_isolating(units[mid:], stamp))
            return failed

    def collect_tombstones(self) -> None:
        """A round of tombstone collection (Neo4jSink.collect_tombstones), when one is due: the fence moves
        up to a version this worker read at least tombstone_ttl ago."""
        fence = self.fence_clock.due()
        if fence is None:
            return
        try:
            dropped = self.sink.collect_tombstones(fence, self.config.grace)
        except Exception as exc:  # collection is housekeeping: the next round tries again
            log.warning("tombstone collection failed: %s", exc)
            return
        if dropped is not None:
            log.info("tombstones at or below version %s collected; the fence is now %s", dropped, fence)

    # ---- loop --------------------------------------------------------------------------------------------

    def run(
        self, *, once: bool = False, on_batch: Callable[[BatchResult], None] | None = None
    ) -> BatchResult:
        """Drain the outbox. ``once``: stop when nothing is due (raises GraphUnavailable if Neo4j stays down);
        otherwise follow until ``stop_event`` is set, sleeping on LISTEN/NOTIFY between batches."""
        total = BatchResult()
        wakeup = Wakeup(self.dsn, self.name, self.config.poll_interval, self.stop_event)
        outage_delay = 0.0
        outages = 0
        identity_delay = 0.0
        try:
            if not once:
                wakeup.listen()
            while not self.stop_event.is_set():
                try:
                    res = self.run_batch()
                except GraphIdentityError as exc:
                    # Not this database's graph (or not of its epoch): nothing is written, the rows wait.
                    # --once stops here; a follower says so and looks again now and then (a rebuild may be
                    # running right now and finish the new epoch in a moment).
                    if once:
                        raise
                    identity_delay = min(self.config.identity_backoff_max, max(1.0, identity_delay * 2))
                    log.error("%s (%s); looking again in %.0fs", exc, exc.hint or "", identity_delay)
                    self.stop_event.wait(identity_delay)
                    continue
                except GraphUnavailable as exc:
                    outages += 1
                    if once and outages > self.config.once_outage_retries:
                        raise
                    outage_delay = min(self.config.outage_backoff_max, max(0.5, outage_delay * 2))
                    wait = outage_delay * (0.5 + random.random() / 2)
                    log.warning("%s; retrying in %.1fs", exc, wait)
                    self.stop_event.wait(wait)
                    continue
                except (psycopg.OperationalError, Unavailable) as exc:
                    if once:
                        raise
                    log.warning("Postgres unavailable (%s); retrying", exc)
                    self.stop_event.wait(1.0)
                    continue
                outage_delay = identity_delay = 0.0
                outages = 0
                total += res
                if on_batch is not None:
                    on_batch(res)
                if not once:
                    self.collect_tombstones()
                if res.claimed == 0:
                    if once:
                        break
                    wakeup.wait()
                elif res.acked + res.failed == 0:
                    # Only deferred rows (their merge winner is being projected elsewhere): brief pause.
                    self.stop_event.wait(0.05)
        finally:
            wakeup.close()
        return total


def make_worker(
    dsn: str,
    settings: Neo4jSettings | None = None,
    config: WorkerConfig | None = None,
    name: str = "sigledger-graph-sync",
) -> SyncWorker:
    """A worker with a verified Neo4j connection and the constraints in place."""
    settings = settings or Neo4jSettings.from_env()
    config = config or WorkerConfig()
    driver = connect(settings)
    sink = Neo4jSink(driver, settings.database, settings.uri, write_timeout=config.write_timeout)
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
