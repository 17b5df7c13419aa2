"""Worker processes for the budget tests (run as ``python -m tests.budget.workers <mode> ...``).

load:    hundreds of reserve -> (maybe fail) -> settle calls on a few agents, with random failures between
         reserve and settle (abandoned holds left to expire, explicit releases) and random retries of reserve
         and settle with the same keys. Prints a JSON summary.
drain:   reserves $0.01 holds (alone or three at a time through reserve_budgets) on one agent until refused three
         times in a row, settling or releasing each; every refusal's remaining_usd (DETAIL, or the batch item's
         message) is checked: a caller may be refused only when the whole budget has no room. Prints a JSON
         summary.
tracker: records N costs through a CostTracker, appending each acknowledged key to an ack file ("-": stdout,
         "ACK <key>" lines); SIGTERM takes the graceful path. With --spool-then-wait it flushes (spooling, the
         database being unreachable), prints SPOOLED and waits to be killed. --kill-after N: SIGKILL itself right
         after the Nth acknowledgement. --fsize BYTES: a file-size limit (RLIMIT_FSIZE, as a full disk: writes
         fail with EFBIG). A record() that raises prints "REFUSED <i> <error>" and ends the loop.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import signal
import sys
import time
from decimal import Decimal

import psycopg
from sigledger.budget import BudgetClient
from sigledger.core.db import Database
from sigledger.core.errors import BudgetExceeded, Retryable
from sigledger.ledger.client import CostRecord
from sigledger.ledger.tracker import CostTracker


def retry(func, *args, **kwargs):  # type: ignore[no-untyped-def]
    for attempt in range(20):
        try:
            return func(*args, **kwargs)
        except Retryable:
            time.sleep(random.uniform(0, 0.01 * 2 ** min(attempt, 5)))
    raise RuntimeError("retries exhausted")


def load(args: argparse.Namespace) -> None:
    rnd = random.Random(args.seed)
    agents = args.agents.split(",")
    counts = {
        "reserved": 0,
        "denied": 0,
        "settled": 0,
        "settle_retries": 0,
        "reserve_retries": 0,
        "abandoned": 0,
        "released": 0,
    }
    with Database(args.dsn, min_size=1, max_size=2, application_name=f"load-{args.seed}") as db:
        client = BudgetClient(db)
        for i in range(args.calls):
            agent = rnd.choice(agents)
            estimate = Decimal(rnd.choice(["0.01", "0.02", "0.05", "0.10"]))
            key = f"load-{args.seed}-{i}"
            try:
                row = retry(client.reserve, agent, estimate, args.ttl, key)
            except BudgetExceeded:
                counts["denied"] += 1
                continue
            counts["reserved"] += 1
            if (
                rnd.random() < 0.1
            ):  # a retried reserve (lost reply): same key, same reservation, no second hold
                again = retry(client.reserve, agent, estimate, args.ttl, key)
                assert again["reservation_id"] == row["reservation_id"] and again["replayed"]
                counts["reserve_retries"] += 1
            fate = rnd.random()
            if fate < 0.1:
                counts["abandoned"] += 1  # the worker "crashed": the hold stays until it expires
                continue
            if fate < 0.2:
                retry(client.release, row["reservation_id"])
                counts["released"] += 1
                continue
            actual = (estimate * Decimal(rnd.randint(10, 100)) / 100).quantize(Decimal("0.000001"))
            retry(
                client.settle,
                row["reservation_id"],
                actual,
                input_tokens=10,
                output_tokens=5,
                model="m",
                provider="p",
            )
            counts["settled"] += 1
            if rnd.random() < 0.2:  # a retried settle: idempotent
                again = retry(client.settle, row["reservation_id"], actual, model="m", provider="p")
                assert again["replayed"]
                counts["settle_retries"] += 1
    print(json.dumps(counts), flush=True)


def drain(args: argparse.Namespace) -> None:
    rnd = random.Random(args.seed)
    cent = Decimal("0.01")
    counts = {"reserved": 0, "refused": 0, "refused_with_room": 0, "settled": 0, "released": 0, "batches": 0}
    left = re.compile(r"has (\S+) USD left")
    with psycopg.connect(args.dsn, autocommit=True, application_name=f"drain-{args.seed}") as conn:
        in_row = 0
        for i in range(args.max_calls):
            if in_row >= 3:
                break
            ids: list[int] = []
            rooms: list[Decimal] = []
            if args.batch and rnd.random() < 0.5:
                counts["batches"] += 1
                items = [
                    {
                        "agent_id": args.agent,
                        "estimate_usd": "0.01",
                        "idempotency_key": f"d{args.seed}-{i}-{j}",
                    }
                    for j in range(3)
                ]
                for rid, state, message in conn.execute(
                    "SELECT reservation_id, sqlstate, message FROM sigledger.reserve_budgets(%s::jsonb)",
                    (json.dumps(items),),
                ).fetchall():
                    if rid is not None:
                        ids.append(rid)
                    else:
                        assert state == "SLB01", (state, message)
                        m = left.search(message)
                        assert m, message
                        rooms.append(Decimal(m.group(1)))
            else:
                try:
                    ids.append(
                        conn.execute(
                            "SELECT reservation_id FROM sigledger.reserve_budget(%s::uuid, %s, interval '1 minute', %s)",
                            (args.agent, cent, f"d{args.seed}-{i}"),
                        ).fetchone()[0]  # type: ignore[index]
                    )
                except psycopg.Error as exc:
                    assert exc.diag.sqlstate == "SLB01", exc
                    m = re.search(r"remaining_usd=(\S+)", exc.diag.message_detail or "")
                    assert m, exc.diag.message_detail
                    rooms.append(Decimal(m.group(1)))
            counts["reserved"] += len(ids)
            counts["refused"] += len(rooms)
            counts["refused_with_room"] += sum(1 for r in rooms if r >= cent)
            in_row = in_row + 1 if rooms and not ids else 0
            for rid in ids:
                if rnd.random() < 0.1:
                    conn.execute("SELECT sigledger.release_budget(%s)", (rid,))
                    counts["released"] += 1
                else:
                    conn.execute("SELECT * FROM sigledger.settle_budget(%s, %s)", (rid, cent))
                    counts["settled"] += 1
    print(json.dumps(counts), flush=True)


def tracker(args: argparse.Namespace) -> None:
    if args.fsize:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (args.fsize, args.fsize))
    db = Database(args.dsn, min_size=0, max_size=2, timeout=args.pool_timeout, application_name="tracker")
    db.open(wait=False)
    t = CostTracker(
        db,
        args.spool,
        batch_size=args.batch,
        flush_interval=args.interval,
        capacity=args.capacity,
        when_full=args.when_full,
        **({"durability": args.durability} if args.durability else {}),
    )
    t.install_signal_handlers()
    t.start()
    to_stdout = args.ack == "-"
    ack = sys.stdout if to_stdout else open(args.ack, "a", buffering=1)  # noqa: SIM115 - process lifetime
    try:
        for i in range(args.n):
            key = f"{args.prefix}-{i}"
            try:
                t.record(
                    CostRecord(
                        agent_id=args.agent,
                        model="m",
                        provider="p",
                        cost_usd=Decimal("0.0001"),
                        idempotency_key=key,
                    )
                )
            except Exception as exc:
                print(f"REFUSED {i} {type(exc).__name__}: {exc}", flush=True)
                break
            ack.write(f"ACK {key}\n" if to_stdout else key + "\n")
            if to_stdout:
                ack.flush()
            if args.kill_after and i + 1 >= args.kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
            if args.rate:
                time.sleep(1.0 / args.rate)
        if args.spool_then_wait:
            t.flush()
            print(f"SPOOLED {t.stats['spooled']}", flush=True)
            time.sleep(3600)
        print("DONE", flush=True)
        if args.wait:
            time.sleep(3600)
    finally:
        t.close()
        db.close()
        if not to_stdout:
            ack.close()


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="mode", required=True)
    pl = sub.add_parser("load")
    pl.add_argument("--dsn", required=True)
    pl.add_argument("--agents", required=True)
    pl.add_argument("--calls", type=int, default=200)
    pl.add_argument("--seed", type=int, default=0)
    pl.add_argument("--ttl", type=float, default=3.0)
    pd = sub.add_parser("drain")
    pd.add_argument("--dsn", required=True)
    pd.add_argument("--agent", required=True)
    pd.add_argument("--seed", type=int, default=0)
    pd.add_argument("--batch", action="store_true")
    pd.add_argument("--max-calls", type=int, default=2000)
    pt = sub.add_parser("tracker")
    pt.add_argument("--dsn", required=True)
    pt.add_argument("--agent", required=True)
    pt.add_argument("--spool", required=True)
    pt.add_argument("--ack", required=True)
    pt.add_argument("--prefix", default="t")
    pt.add_argument("--n", type=int, default=1000)
    pt.add_argument("--rate", type=float, default=0)
    pt.add_argument("--batch", type=int, default=100)
    pt.add_argument("--interval", type=float, default=0.2)
    pt.add_argument("--capacity", type=int, default=10000)
    pt.add_argument("--when-full", default="block")
    pt.add_argument("--pool-timeout", type=float, default=2.0)
    pt.add_argument("--spool-then-wait", action="store_true")
    pt.add_argument("--wait", action="store_true")
    pt.add_argument("--kill-after", type=int, default=0)
    pt.add_argument("--fsize", type=int, default=0)
    pt.add_argument("--durability", default="")
    args = p.parse_args()
    {"load": load, "drain": drain, "tracker": tracker}[args.mode](args)


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    main()
