"""`ditflow bench stitch`: T-Stitch's speed/quality curve, every fraction measured in one run.

For each fraction f the small model takes f of the steps: the first ones, or with `--at 1` the last ones. The
bench generates the held-out `bench shapes` prompt set, scores it with the analytic scorer, and reports the wall
time as a speedup over large-only (f = 0), together with the score change in points. The change is paired (same
prompts, same seeds), so it comes with the prompts lost and gained and a 95% interval: a changed trajectory
redraws the sample even when the small model is as good, so at 120 prompts the interval is several points wide.
The settings take turns, 48 prompts at a time, so that a host whose speed drifts during the run slows all of
them alike.

    ditflow bench stitch --n 20 --steps 20                  # builtin (large) + builtin-small
    ditflow bench stitch --fractions 0 0.4 --at 1           # the small model takes the last 40% instead
    ditflow bench stitch --fractions 0 0.4 --at 1 --small-cfg on off   # and with its steps unguided, side by side
    ditflow bench stitch --fractions 0 0.4 --at 1 --offset off on      # and with the small model's bias offset
    ditflow bench stitch --tiny --n 2 --steps 4             # tiny random pair: timing only, scores meaningless
"""
from __future__ import annotations

import argparse
import time

import torch

from ditflow.bench import _plots
from ditflow.pipelines.stitch import apply_stitch, remove_stitch
from ditflow.world import scenes as world

FRACTIONS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
GOAL_SPEEDUP, GOAL_MAX_LOSS = 1.4, 2.0  # ≥1.4× at ≤2 points of score lost
CHUNK = 48  # prompts per turn: three 16-image batches


def tiny_pair(seed: int = 0):
    """A tiny random FluxPipeline with a 4× larger transformer, plus a small transformer sharing its latents."""
    from diffusers import FluxTransformer2DModel

    from ditflow.pipelines.tiny import tiny_flux_pipeline

    pipe = tiny_flux_pipeline(seed=seed)
    shared = {k: pipe.transformer.config[k] for k in ("patch_size", "in_channels", "joint_attention_dim",
                                                      "pooled_projection_dim", "axes_dims_rope", "guidance_embeds")}
    torch.manual_seed(seed + 1)
    pipe.transformer = FluxTransformer2DModel(num_layers=2, num_single_layers=4, attention_head_dim=16,
                                              num_attention_heads=4, **shared).eval()
    small = FluxTransformer2DModel(num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                                   **shared).eval()
    return pipe, small


def run(pipe, small, fractions=FRACTIONS, n_per_kind: int = 20, steps: int = 20, seed: int = 0,
        kinds: tuple[str, ...] | None = None, at: float = 0.0, small_cfg: tuple[bool, ...] = (True,),
        offsets: tuple[bool, ...] = (False,), chunk: int = CHUNK) -> list[dict]:
    """One row per fraction and, for f > 0, per `small_cfg` value (False: the small model's steps unguided) and
    per `offsets` value (True: `apply_stitch(offset=True)`).

    The rows take turns, `chunk` prompts at a time, so a host that slows down or speeds up during the run costs
    every row alike: on a shared 2-core host the speed drifted by a third between minutes-long passes. Each prompt
    keeps its seed (seed + its index in the whole set), so the chunking does not change what is drawn."""
    from ditflow.bench.shapes import score_pipeline
    from ditflow.pipelines.sampling import text_to_images

    prompts = [(t, s) for t, s in world.heldout_prompts(n_per_kind) if kinds is None or s.kind in kinds]
    setups = [(f, cfg, offset) for f in fractions
              for cfg, offset in ([(c, o) for c in small_cfg for o in offsets] if f > 0 else [(True, False)])]
    images: dict[tuple, list] = {k: [] for k in setups}
    seconds = dict.fromkeys(setups, 0.0)
    score_pipeline(pipe, 1, steps=2, seed=seed, kinds=("single",))  # warm-up: first-call allocations
    for first in range(0, len(prompts), chunk):
        part = prompts[first:first + chunk]
        for f, cfg, offset in setups:
            apply_stitch(pipe, small, f, at=at, cfg=cfg, offset=offset)
            t0 = time.perf_counter()
            images[f, cfg, offset] += text_to_images(pipe, [t for t, _ in part], [s.size for _, s in part],
                                                     [seed + first + i for i in range(len(part))], steps=steps)
            seconds[f, cfg, offset] += time.perf_counter() - t0
            remove_stitch(pipe)
        print(f"  {first + len(part)}/{len(prompts)} prompts: "
              + ", ".join(f"{_label(*k)} {seconds[k]:.0f} s" for k in setups), flush=True)
    rows = []
    for f, cfg, offset in setups:
        report = world.score_many([(s, im) for (_, s), im in zip(prompts, images[f, cfg, offset])])
        rows.append(dict(fraction=f, small_cfg=cfg, offset=offset, seconds=seconds[f, cfg, offset],
                         score=report.overall, per_kind=report.per_kind, passed=report.passed,
                         images=images[f, cfg, offset]))
    base = next((r for r in rows if r["fraction"] == 0.0), rows[0])
    for r in rows:
        r["speedup"] = base["seconds"] / r["seconds"]
        r.update(world.paired_change(base["passed"], r["passed"]))
    return rows


def _label(fraction: float, small_cfg: bool, offset: bool) -> str:
    return (f"{fraction:.2f}" + ("" if small_cfg else ", unguided")  # .1f printed 0.35 as 0.3
            + (", offset" if offset else ""))


def label(row: dict) -> str:
    return _label(row["fraction"], row["small_cfg"], row.get("offset", False))


def print_table(rows: list[dict]) -> None:
    print("| f (small's share of steps) | wall time | speedup vs large-only | score | change (points, 95% CI) "
          "| prompts lost / gained |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {label(r)} | {r['seconds']:.1f} s | {r['speedup']:.2f}× | {r['score']:.1%} | "
              f"{r['score_change_points']:+.1f} ± {r['ci95_points']:.1f} | {r['lost']} / {r['gained']} |")
    kinds = list(rows[0]["per_kind"])
    print("\n| f | " + " | ".join(kinds) + " |")  # where the points go
    print("|---|" + "---|" * len(kinds))
    for r in rows:
        print(f"| {label(r)} | " + " | ".join(f"{r['per_kind'].get(k, float('nan')):.1%}" for k in kinds) + " |")
    ok = [r for r in rows if r["speedup"] >= GOAL_SPEEDUP and r["score_change_points"] >= -GOAL_MAX_LOSS]
    met = ", ".join(label(r) for r in ok)
    print(f"goal (≥{GOAL_SPEEDUP}× at ≤{GOAL_MAX_LOSS:.0f} points lost): " + (f"met at f = {met}" if ok else "not met"))


def main(large: str = "builtin", small: str = "builtin-small", fractions=FRACTIONS, n: int = 20, steps: int = 20,
         seed: int = 0, tiny: bool = False, threads: int | None = None, at: float = 0.0,
         small_cfg: tuple[bool, ...] = (True,), offsets: tuple[bool, ...] = (False,)) -> list[dict]:
    if threads:
        torch.set_num_threads(threads)
    if tiny:
        pipe, small_model = tiny_pair(seed)
    else:
        from ditflow.pipelines.loading import load_pipeline, load_transformer

        pipe = load_pipeline(large)
        small_model = load_transformer(small)
    print(f"T-Stitch: large {'tiny' if tiny else large}, small {'tiny' if tiny else small}, {n} prompts per kind, "
          f"{steps} steps, {torch.get_num_threads()} threads, the small model's steps at {at:g} "
          f"(0 = first, 1 = last)")
    rows = run(pipe, small_model, fractions, n, steps, seed, at=at, small_cfg=small_cfg, offsets=offsets)
    print_table(rows)
    if tiny:
        print("(tiny random models: the timings exercise the harness; the scores and the goal line mean nothing)")
    return rows


def cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ditflow bench stitch", description=__doc__.splitlines()[0])
    p.add_argument("--large", default="builtin")
    p.add_argument("--small", default="builtin-small")
    p.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    p.add_argument("--n", type=int, default=20, help="held-out prompts per kind")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--at", type=float, default=0.0,
                   help="where the small model's steps sit: 0 = the first (T-Stitch), 1 = the last")
    p.add_argument("--small-cfg", nargs="+", choices=("on", "off"), default=["on"],
                   help="true CFG in the small model's steps: on (both passes), off (the conditional pass alone, "
                        "half the cost), or both side by side")
    p.add_argument("--offset", nargs="+", choices=("on", "off"), default=["off"],
                   help="shift the small model's outputs by (large − small) measured on the step before its window "
                        "(needs --at > 0), off, or both side by side")
    p.add_argument("--threads", type=int)
    p.add_argument("--tiny", action="store_true", help="tiny random pair (for checking the harness; no quality)")
    p.add_argument("--plot", nargs="?", const=str(_plots.default_path("stitch")), metavar="PNG",
                   help="also draw the speed/score curve (default docs/img/stitch.png)")
    a = p.parse_args(argv)
    bad = [f for f in a.fractions if not 0 <= f <= 1]
    if bad:
        raise ValueError(f"fractions must lie in [0, 1]; got {bad}")
    if not 0 <= a.at <= 1:
        raise ValueError(f"--at must lie in [0, 1]; got {a.at}")
    if "on" in a.offset and a.at == 0:
        raise ValueError("--offset on needs --at > 0: the offset is measured on the large model's step before the "
                         "small model's, and the first steps have none")
    rows = main(a.large, a.small, a.fractions, a.n, a.steps, a.seed, a.tiny, a.threads, a.at,
                tuple(dict.fromkeys(v == "on" for v in a.small_cfg)), tuple(dict.fromkeys(v == "on" for v in a.offset)))
    if a.plot:
        print(_plots.stitch(rows, a.plot, _plots.caption("stitch", argv or []), GOAL_SPEEDUP, GOAL_MAX_LOSS, label))
    return 0
