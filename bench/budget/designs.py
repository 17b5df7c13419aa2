"""The designs of the budget benchmark, what each counts as a cost, and the baselines each figure is
reported against (a ratio measured in the same run)."""

from __future__ import annotations

# design -> (label, what counts as one cost, workloads it runs on)
DESIGNS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "a_reserve_settle": ("sigledger reserve+settle", "ledger", ("hot", "spread")),
    "a_check_and_record": ("sigledger check_and_record_budget", "ledger", ("hot", "spread")),
    "a_reserve_settle_sliced": ("sigledger reserve+settle, 8 slices", "ledger", ("hot",)),
    "a_check_and_record_sliced": ("sigledger check_and_record_budget, 8 slices", "ledger", ("hot",)),
    "a_reserve_settle_sliced32": ("sigledger reserve+settle, 32 slices", "ledger", ("hot",)),
    "a_check_and_record_sliced32": ("sigledger check_and_record_budget, 32 slices", "ledger", ("hot",)),
    "b_bare_reserve_settle": ("bare SQL, reserve+settle writes", "ledger", ("hot", "spread")),
    "b_bare_record": ("bare SQL, record writes", "ledger", ("hot", "spread")),
    "b_bare_record_sliced": ("bare SQL, record writes on a random slice of 8", "ledger", ("hot",)),
    "b_bare_record_sliced32": ("bare SQL, record writes on a random slice of 32", "ledger", ("hot",)),
    "b_raw_update": ("raw single-row UPDATE", "tx", ("hot",)),
    "c_seed": ("seed NOWAIT + version", "seed", ("hot", "spread")),
    # the floor of any PL/pgSQL design: the bare writes inside empty functions shaped like sigledger's
    "f_floor_reserve_settle": ("bare writes in PL/pgSQL functions, reserve+settle", "ledger", ("spread",)),
    "f_floor_record": ("bare writes in a PL/pgSQL function, record", "ledger", ("spread",)),
}
# the hot agent's budget is split over 8 slices (the probe) and over 32 (one per client at 32 clients):
# the sliced designs run one script with the slice count as a pgbench variable (bench.sliced has one agent
# per count)
SLICE_COUNTS = (8, 32)
SCRIPTS: dict[str, str] = {
    "a_reserve_settle_sliced32": "a_reserve_settle_sliced",
    "a_check_and_record_sliced32": "a_check_and_record_sliced",
    "b_bare_record_sliced32": "b_bare_record_sliced",
}
VARIABLES: dict[str, dict[str, str]] = {
    **{
        d: {"slices": "8"}
        for d in ("a_reserve_settle_sliced", "a_check_and_record_sliced", "b_bare_record_sliced")
    },
    **{d: {"slices": "32"} for d in SCRIPTS},
}
# each design's baselines of the same run: (baseline design, target ratio or None)
BASELINES: dict[str, list[tuple[str, float | None]]] = {
    "a_reserve_settle": [("b_bare_reserve_settle", 0.8), ("c_seed", None), ("f_floor_reserve_settle", None)],
    "a_check_and_record": [("b_bare_record", 0.8), ("c_seed", 1.0), ("f_floor_record", None)],
    "a_reserve_settle_sliced": [("b_raw_update", 2.0), ("a_reserve_settle", None)],
    "a_check_and_record_sliced": [
        ("b_raw_update", 2.0),
        ("a_check_and_record", None),
        ("b_bare_record_sliced", None),
    ],
    "a_reserve_settle_sliced32": [("b_raw_update", 2.0), ("a_reserve_settle_sliced", None)],
    "a_check_and_record_sliced32": [
        ("b_raw_update", 2.0),
        ("a_check_and_record_sliced", None),
        ("b_bare_record_sliced32", None),
    ],
    # the ceiling of the 2x target on this machine: the same sliced writes with no check against the raw UPDATE
    "b_bare_record_sliced": [("b_raw_update", None)],
    "b_bare_record_sliced32": [("b_raw_update", None)],
    "c_seed": [("b_bare_record", None)],
    # what a PL/pgSQL function shaped like sigledger's costs before it checks anything
    "f_floor_reserve_settle": [("b_bare_reserve_settle", None)],
    "f_floor_record": [("b_bare_record", None)],
}
OVERSPEND: dict[str, str] = {
    "a_reserve_settle": "os_a_reserve_settle.sql",
    "a_check_and_record": "os_a_check_and_record.sql",
    "a_reserve_settle_sliced": "os_a_reserve_settle.sql",
    "a_check_and_record_sliced": "os_a_check_and_record.sql",
    "c_seed": "os_c_seed.sql",
}
