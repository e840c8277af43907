"""`ditflow bench NAME ...`: each benchmark is a module `ditflow/bench/NAME.py` with `cli(argv) -> int`.
Figures are printed as ratios measured side by side in one run; docs/benchmarks.md records them."""
from __future__ import annotations

import importlib
import pkgutil
import sys


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def cli(argv: list[str], command: str = "bench") -> int:
    names = available()
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: ditflow bench {" + ",".join(names) + "} [ARGS]")
        return 0
    if argv[0] not in names:
        print(f"ditflow bench: unknown benchmark {argv[0]!r}; choose from {', '.join(names)}", file=sys.stderr)
        return 2
    return int(importlib.import_module(f"ditflow.bench.{argv[0]}").cli(argv[1:]) or 0)
