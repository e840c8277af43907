"""`ditflow bench attention`: CLEAR local attention against full SDPA, measured side by side in one run.

Every method runs on the same q, k, v, interleaved round-robin, best of `--repeats` (the machine may be shared,
and the minimum is the least disturbed run). For each grid it prints the speedup over unmasked
`F.scaled_dot_product_attention`, the FLOP bound (full attention's score/value work over the window's), the
fraction of that bound realized, the peak extra memory, and the max abs error against the exact reference.

    ditflow bench attention                          # 32², 64², 128²; heads 4 × 64, fp32, text 32, r 8
    ditflow bench attention --grids 16 24 32 48 64 128 256 --threads 2
    ditflow bench attention --methods "local (auto)" --grids 8 16 32 64 128 --head-dim 32 --heads 8 --store

`--store` writes this run's local (auto) speed-ups into the crossover table the dispatch reads
(`ditflow/kernels/crossover.json`, or `--table PATH`, or $DITFLOW_CROSSOVER_TABLE), replacing the entry for this
device type, dtype and head_dim. A stored speed-up is the median over the rounds of SDPA's time over local's in
the same round, so a shared machine's slow spells fall on both sides of the ratio.
"""
from __future__ import annotations

import argparse
import json
import datetime
import os
import shlex
import statistics
import subprocess
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ditflow.bench import _plots
from ditflow.kernels import crossover
from ditflow.kernels import local_attention as la

# name → (call, largest grid side it is run at: the slow levers are measured where they matter)
METHODS = {
    "local (auto)": (lambda q, k, v, **kw: la.local_attention(q, k, v, **kw), 10_000),
    "cpu kernel, 1 query/pass": (lambda q, k, v, **kw: la.cpu_attention(q, k, v, pair=False, **kw), 10_000),
    "tiled 8×8 (naive)": (lambda q, k, v, **kw: la.tiled_attention(q, k, v, tile=8, **kw), 128),
    "tiled 4×4": (lambda q, k, v, **kw: la.tiled_attention(q, k, v, tile=4, **kw), 128),
    "tiled 16×16": (lambda q, k, v, **kw: la.tiled_attention(q, k, v, tile=16, **kw), 128),
    "tiled 8×8 bf16": (lambda q, k, v, **kw: la.tiled_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(),
                                                                tile=8, **kw).float(), 128),
    "dense masked SDPA": (lambda q, k, v, **kw: la.dense_attention(q, k, v, **kw), 64),
}
# On CUDA the auto backend is FlexAttention over the 2-D tile order; the lever is the token order.
CUDA_METHODS = {
    "local (auto)": METHODS["local (auto)"],
    "flex, row-major order": (lambda q, k, v, **kw: la.flex_attention_local(q, k, v, order="row", **kw), 10_000),
}


def _fixed_mmap_threshold() -> None:
    """glibc keeps freed large blocks once its mmap threshold has grown; a fixed one returns them at once, so the
    resident high-water mark measures each method's own peak."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 256 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def peak_extra_mib(fn) -> float | None:
    """Peak resident memory added while `fn` runs (Linux: reset the high-water mark via clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        base = _status_kib("VmRSS")
        fn()
        return max(0.0, (_status_kib("VmHWM") - base) / 1024)
    except OSError:
        return None


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def cuda_peak_mib(fn) -> float:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def bench_grid(side: int, args, methods: list[str]) -> dict:
    gen = torch.Generator().manual_seed(side)
    length = args.text_len + side * side
    cuda = args.device == "cuda"
    table = CUDA_METHODS if cuda else METHODS
    q, k, v = (torch.randn(1, args.heads, length, args.head_dim, generator=gen).to(args.device, args.dtype)
               for _ in range(3))
    kw = dict(grid=(side, side), radius=args.radius, text_len=args.text_len)
    calls = {"full SDPA (no mask)": lambda: F.scaled_dot_product_attention(q, k, v)}
    calls.update({m: (lambda f=table[m][0]: f(q, k, v, **kw)) for m in methods if m in table and side <= table[m][1]})
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with torch.no_grad():
        if cuda or side > 64:  # the C kernel / tiled path are themselves checked against dense in the tests
            ref = la.tiled_attention(q.cpu().float(), k.cpu().float(), v.cpu().float(), **kw)
        else:
            ref = la.dense_attention(q.float(), k.float(), v.float(), **kw)
        errors = {name: float((fn().cpu().float() - ref).abs().max()) for name, fn in calls.items()
                  if name != "full SDPA (no mask)"}  # also the warm-up (and compile, on CUDA)
        memory = {name: (cuda_peak_mib(fn) if cuda else peak_extra_mib(fn)) for name, fn in calls.items()}
        times: dict[str, list[float]] = {name: [] for name in calls}
        repeats = args.repeats if side < 256 else max(1, args.repeats // 2)
        for _ in range(repeats):
            for name, fn in calls.items():
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - t0)
    full = min(times["full SDPA (no mask)"])
    bound = la.flop_ratio((side, side), args.radius, args.text_len)
    rows = []
    for name in calls:
        best = min(times[name])
        paired = statistics.median(f / t for f, t in zip(times["full SDPA (no mask)"], times[name]))
        rows.append(dict(method=name, ms=best * 1e3, median_ms=statistics.median(times[name]) * 1e3,
                         speedup=full / best, median_speedup=paired, realized=full / best / bound,
                         peak_mib=memory[name], max_err=errors.get(name)))
    return dict(grid=side, tokens=length, flop_bound=bound, masked_fraction=1 - 1 / bound, rows=rows)


def print_grid(res: dict) -> None:
    print(f"\ngrid {res['grid']}² ({res['tokens']} tokens): FLOP bound {res['flop_bound']:.1f}×")
    print("| method | ms (best) | speedup vs SDPA | of FLOP bound | peak extra MiB | max abs err |")
    print("|---|---|---|---|---|---|")
    for r in res["rows"]:
        mem = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        err = "–" if r["max_err"] is None else f"{r['max_err']:.1e}"
        print(f"| {r['method']} | {r['ms']:.1f} | {r['speedup']:.2f}× | {100 * r['realized']:.1f}% | {mem} | {err} |")


def crossover_entry(results: list[dict], args, threads: int, command: str, commit: str) -> dict:
    """This run's local (auto) points as a crossover-table entry (`ditflow/kernels/crossover.py`)."""
    points = []
    for res in results:
        auto = next(r for r in res["rows"] if r["method"] == "local (auto)")
        grid, probe = (res["grid"], res["grid"]), torch.empty(1, 1, res["tokens"], 0, device=args.device)
        points.append(dict(tokens=res["tokens"], grid=list(grid), radius=args.radius, text_len=args.text_len,
                           heads=args.heads, backend=la.choose_backend(probe, grid, args.radius, args.text_len, False),
                           speedup=round(auto["median_speedup"], 4), flop_ratio=round(res["flop_bound"], 4)))
    cuda = args.device == "cuda"
    return dict(device=args.device, dtype=crossover.dtype_name(args.dtype), head_dim=args.head_dim, points=points,
                machine=crossover.machine(args.device), torch=torch.__version__, commit=commit,
                date=datetime.date.today().isoformat(), command=command,
                note=f"{'' if cuda else f'{threads} CPU threads; '}speed-up = median over {args.repeats} interleaved "
                     f"rounds of SDPA time / local (auto) time")


def _commit() -> str:
    """The source's commit, '+dirty' when its code (.py, .c) has uncommitted changes (a table being filled entry
    by entry does not count); 'unknown' outside a git checkout."""
    here = Path(__file__).parent
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=here, capture_output=True, text=True,  # noqa: E731
                                        timeout=10).stdout.strip()
        head = run("rev-parse", "--short", "HEAD")
        dirty = head and run("diff", "--name-only", "HEAD", "--", ":(top)*.py", ":(top)*.c")
        return (head + ("+dirty" if dirty else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main(grids=(32, 64, 128), heads=4, head_dim=64, text_len=32, radius=8.0, threads=2, repeats=5,
         methods: list[str] | None = None, json_out: str | None = None, device: str = "cpu",
         dtype: str = "float32", store: bool = False, table_file: str | None = None) -> list[dict]:
    torch.set_num_threads(threads)
    _fixed_mmap_threshold()
    commit = _commit()  # the source measured, named before the run
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device here; run on a GPU machine or use --device cpu")
    table = CUDA_METHODS if device == "cuda" else METHODS
    methods = methods or list(table)
    unknown = [m for m in methods if m not in table]
    if unknown:
        raise ValueError(f"unknown methods {unknown} for {device}; choose from {list(table)}")
    if "local (auto)" not in methods:
        raise ValueError('the crossover is measured on "local (auto)"; add it to --methods')
    args = argparse.Namespace(heads=heads, head_dim=head_dim, text_len=text_len, radius=radius, repeats=repeats,
                              device=device, dtype=getattr(torch, dtype))
    probe = torch.empty(1, 1, text_len + max(grids) ** 2, 1, device=device)  # dispatch looks at the length
    backend = la.choose_backend(probe, (max(grids), max(grids)), radius, text_len, False)
    where = torch.cuda.get_device_name() if device == "cuda" else f"{threads} CPU threads"
    print(f"local attention benchmark: heads {heads} × {head_dim}, {dtype}, text {text_len}, r {radius}, "
          f"{where}, best of {repeats}; auto backend here: {backend}")
    results = []
    for side in grids:
        res = bench_grid(side, args, methods)
        print_grid(res)
        results.append(res)
    auto = {r["grid"]: next(x for x in r["rows"] if x["method"] == "local (auto)") for r in results}
    losses = [g for g, row in auto.items() if row["speedup"] <= 1.0]
    wins = [g for g in auto if g > max(losses, default=0)]
    print(f"\ncrossover: local (auto) beats full SDPA at every measured grid from {min(wins)}² up" if wins else
          "\ncrossover: local (auto) did not beat full SDPA at the largest measured grid")
    if store:
        command = shlex.join(["ditflow", "bench", "attention", "--grids", *map(str, grids), "--heads", str(heads),
                              "--head-dim", str(head_dim), "--text-len", str(text_len), "--radius", str(radius),
                              "--threads", str(threads), "--repeats", str(repeats), "--methods", *methods,
                              "--device", device, "--dtype", dtype, "--store"])
        path = crossover.store_entry(crossover_entry(results, args, threads, command, commit), table_file)
        print(f"stored as the {device} {dtype} head_dim {head_dim} entry of {path}")
    if json_out:
        tmp = Path(json_out).with_suffix(".tmp")
        settings = {k: str(v) for k, v in vars(args).items()} | {"threads": threads}
        tmp.write_text(json.dumps(dict(settings=settings, results=results), indent=1))
        os.replace(tmp, json_out)
    return results


def cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ditflow bench attention", description=__doc__.splitlines()[0])
    p.add_argument("--grids", type=int, nargs="+", default=[32, 64, 128], help="token grid sides")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--text-len", type=int, default=32)
    p.add_argument("--radius", type=float, default=8.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--methods", nargs="+", choices=list(METHODS | CUDA_METHODS),
                   help="local methods to run (default: all for the device)")
    p.add_argument("--json", dest="json_out", help="also write the results here (atomically)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--store", action="store_true",
                   help="write this run's local (auto) points into the crossover table the dispatch reads")
    p.add_argument("--table", help="the crossover table --store writes (default: $DITFLOW_CROSSOVER_TABLE, "
                                   "else ditflow/kernels/crossover.json)")
    p.add_argument("--plot", nargs="?", const=str(_plots.default_path("attention")), metavar="PNG",
                   help="also draw the speed-up by grid against the FLOP bound (default docs/img/attention.png)")
    a = p.parse_args(argv)
    results = main(a.grids, a.heads, a.head_dim, a.text_len, a.radius, a.threads, a.repeats, a.methods,
                   a.json_out, a.device, a.dtype, a.store, a.table)
    if a.plot:
        print(_plots.attention(results, a.plot, _plots.caption("attention", argv or [], a.device)))
    return 0
