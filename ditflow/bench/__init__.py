"""`ditflow bench NAME ...`: each benchmark is a module `ditflow/bench/NAME.py` with `cli(argv) -> int`; a module
name's underscores are hyphens on the command line (`flux_width.py` is `ditflow bench flux-width`).
Figures are printed as ratios measured side by side in one run; docs/benchmarks.md records them."""
from __future__ import annotations

import importlib
import pkgutil
import pydoc
import sys
from pathlib import Path


def available() -> list[str]:
    """The benchmarks' names as typed: module names with hyphens for underscores."""
    return sorted(m.name.replace("_", "-") for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def module_path(name: str) -> Path:
    """The source file of benchmark `name`."""
    return Path(__file__).with_name(f"{name.replace('-', '_')}.py")


def measures(name: str) -> str:
    """What benchmark `name` measures: its module docstring's first line, after the "`ditflow bench NAME`: " that
    opens it; read from the source, so --help imports no benchmark."""
    line = pydoc.synopsis(str(module_path(name))) or ""
    return line.split("`: ", 1)[-1]


def usage() -> str:
    names = available()
    rows = "\n".join(f"  {name:<13} {measures(name)}" for name in names)
    return (f"usage: ditflow bench {{{','.join(names)}}} [ARGS]\n\nbenchmarks:\n{rows}\n\n"
            "examples:\n  ditflow bench shapes --model builtin --n 40 --steps 20\n  ditflow bench toolkit --help")


def cli(argv: list[str], command: str = "bench") -> int:
    names = available()
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] not in names:
        print(f"ditflow bench: unknown benchmark {argv[0]!r}; choose from {', '.join(names)}", file=sys.stderr)
        return 2
    from ditflow.logs import route_libraries

    route_libraries()  # before a benchmark imports diffusers: the libraries' warnings go to the log, not the table
    return int(importlib.import_module(f"ditflow.bench.{argv[0].replace('-', '_')}").cli(argv[1:]) or 0)
