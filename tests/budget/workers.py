"""Worker processes for the budget tests (run as ``python -m tests.budget.workers <mode> ...``).

load:    hundreds of reserve -> (maybe fail) -> settle calls on a few agents, with random failures between
         reserve and settle (abandoned holds left to expire, explicit releases) and random retries of reserve
         and settle with the same keys. Prints a JSON summary.
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
import resource
import signal
import sys
import time
from decimal import Decimal

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
    {"load": load, "tracker": tracker}[args.mode](args)


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    main()
