"""`sigledger demo`: the main job on a throwaway local cluster (run.py) with its graph projection (graph.py)."""

from sigledger.demo.run import DEMO_DATABASE, EXIT_SIGINT, DemoConfig, run

__all__ = ["DEMO_DATABASE", "EXIT_SIGINT", "DemoConfig", "run"]
