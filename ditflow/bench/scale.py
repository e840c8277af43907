"""`ditflow bench scale`: batch throughput, plain vs Ray with 1 and 2 actors, and the cost of `--resume`.

All in one run, on the same task file:
1. a plain batch;
2. Ray with 1 actor, then with 2 actors, each on a fresh local instance (`--ray local`);
3. `--resume` on the finished plain batch: the fixed cost of checking every folder.

It prints tasks/min and ratios to the plain batch. Ray times include starting the local instance and loading
each actor's pipeline, because a user pays for both.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

INSTRUCTIONS = ["a large red circle on the left", "two small blue squares on a gray background",
                "a green triangle at the top right", "a pink diamond in the center",
                "a yellow square on a black background", "a purple circle at the bottom"]


def _timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def cli(argv: list[str], command: str = "bench scale") -> int:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # `--ray local` stays on loopback
    from ditflow.batch import run_batch
    from ditflow.config import Settings

    p = argparse.ArgumentParser(prog=f"ditflow {command}", description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=8, help="tasks in the batch")
    p.add_argument("--model", default="tiny")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray actor counts to measure")
    args = p.parse_args(argv)
    if args.tasks < 1:
        raise ValueError("--tasks must be >= 1")

    with tempfile.TemporaryDirectory(prefix="ditflow-bench-scale-") as tmp:
        tmp = Path(tmp)
        tasks = tmp / "tasks.jsonl"
        tasks.write_text("".join(json.dumps({"id": f"t{i}", "instruction": INSTRUCTIONS[i % len(INSTRUCTIONS)],
                                             "seed": i}) + "\n" for i in range(args.tasks)))
        settings = Settings.load(model=args.model, llm="rules", verify=False, home=tmp / "home")
        rows = []
        plain_s, m = _timed(lambda: run_batch(tasks, tmp / "plain", settings=settings))
        assert m.count("done") == args.tasks, "the plain batch did not finish every task"
        rows.append(("plain batch", plain_s))
        for n in args.workers:
            s, m = _timed(lambda: run_batch(tasks, tmp / f"ray{n}", settings=settings, ray="local", workers=n))
            assert m.count("done") == args.tasks, f"the Ray batch with {n} actor(s) did not finish every task"
            rows.append((f"ray, {n} actor{'s' if n > 1 else ''}", s))
        resume_s, m = _timed(lambda: run_batch(tasks, tmp / "plain", settings=settings, resume=True))
        assert all(t.skipped for t in m.tasks)

    print(f"{args.tasks} tasks, model {args.model}, {os.cpu_count()} CPUs")
    print(f"{'run':<18}{'seconds':>9}{'tasks/min':>11}{'vs plain':>10}")
    for name, s in rows:
        print(f"{name:<18}{s:>9.1f}{args.tasks / s * 60:>11.1f}{plain_s / s:>9.2f}x")
    print(f"resume of the finished batch (check every folder, run nothing): {resume_s:.2f} s = "
          f"{resume_s / args.tasks * 1000:.0f} ms per task = {resume_s / plain_s:.1%} of the plain run")
    return 0
