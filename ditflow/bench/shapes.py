"""`ditflow bench shapes`: the analytic scorer over a held-out prompt set, plus small:large throughput.

    ditflow bench shapes --model builtin --n 40 --steps 20
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ditflow.pipelines.routing import add_clause_routing_flag, clause_routing, set_clause_routing
from ditflow.world import scenes as world

GOALS = {"single": 0.90, "paraphrase": 0.80, "two": 0.70, "count": 0.70, "background": 0.95, "panels": 0.70}
ROUTED_KINDS = ("two", "panels")  # the kinds whose captions name regions (pipelines/routing.py)


def score_pipeline(pipe, n_per_kind: int = 40, steps: int | None = None, cfg: float | None = None, seed: int = 0,
                   kinds: tuple[str, ...] | None = None, save_dir: Path | None = None, progress=None) -> world.Report:
    """Generate every held-out prompt once (seed + its index in the whole set) and score it."""
    from ditflow.pipelines.sampling import text_to_images

    # a prompt's seed is its index in the whole set, so a run of some kinds repeats those images of a full run
    chosen = [(i, t, s) for i, (t, s) in enumerate(world.heldout_prompts(n_per_kind))
              if kinds is None or s.kind in kinds]
    prompts = [(t, s) for _, t, s in chosen]
    images = text_to_images(pipe, [t for t, _ in prompts], [s.size for _, s in prompts],
                            [seed + i for i, _, _ in chosen], steps=steps, cfg=cfg, progress=progress)
    if save_dir:
        save_dir.mkdir(parents=True, exist_ok=True)
        for i, ((text, spec), im) in enumerate(zip(prompts, images)):
            im.save(save_dir / f"{i:04d}_{spec.kind}.png")
        (save_dir / "prompts.txt").write_text("\n".join(t for t, _ in prompts))
    return world.score_many([(s, im) for (_, s), im in zip(prompts, images)])


@torch.no_grad()
def throughput(pipe, n: int = 16, steps: int = 20, batch: int = 8) -> float:
    """Images/s at 64×64 with `steps` steps (CFG as the model's default)."""
    from ditflow.pipelines.sampling import text_to_images

    prompts = ["a red circle in the center"] * n
    text_to_images(pipe, prompts[:2], [(64, 64)] * 2, [0, 1], steps=2, batch=batch)  # warm-up
    t = time.perf_counter()
    text_to_images(pipe, prompts, [(64, 64)] * n, list(range(n)), steps=steps, batch=batch)
    return n / (time.perf_counter() - t)


def report_table(name: str, rep: world.Report) -> str:
    rows = [f"| {name} | {k} | {rep.per_kind.get(k, float('nan')):.1%} | ≥{g:.0%} |" for k, g in GOALS.items()
            if k in rep.per_kind]
    rows.append(f"| {name} | overall | {rep.overall:.1%} | |")
    return "\n".join(rows)


def cli(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="ditflow bench shapes", description=__doc__.splitlines()[0])
    ap.add_argument("--model", nargs="+", default=["builtin", "builtin-small"])
    ap.add_argument("--n", type=int, default=40, help="prompts per kind")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--throughput", type=int, default=16, help="images for the images/s figure (0: skip)")
    ap.add_argument("--save", type=Path, help="write the generated images here")
    ap.add_argument("--json", type=Path, help="write the figures as JSON")
    add_clause_routing_flag(ap, "When on, the two-object and panels kinds are scored again without it, side by side")
    args = ap.parse_args(argv)

    from rich.console import Console
    from rich.progress import Progress

    from ditflow.pipelines.loading import load_pipeline

    console = Console()
    results = {}
    for name in args.model:
        pipe = load_pipeline(name)
        set_clause_routing(pipe, args.clause_routing)
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task(f"{name}: generating", total=None)
            rep = score_pipeline(pipe, args.n, args.steps, args.cfg, args.seed,
                                 save_dir=args.save / name.replace("/", "_") if args.save else None,
                                 progress=lambda d, t: bar.update(task, completed=d, total=t))
        ips = throughput(pipe, args.throughput, args.steps) if args.throughput else float("nan")
        results[name] = {**rep.as_dict(), "images_per_s": ips}
        if clause_routing(pipe) is not None:  # the same prompts and seeds, every clause read by every image token
            set_clause_routing(pipe, False)
            unrouted = score_pipeline(pipe, args.n, args.steps, args.cfg, args.seed, kinds=ROUTED_KINDS)
            set_clause_routing(pipe, True)
            results[name]["unrouted"] = {k: unrouted.per_kind[k] for k in ROUTED_KINDS}
        console.print(f"[bold]{name}[/]: overall {rep.overall:.1%}, {ips:.2f} images/s at 64×64, {args.steps} steps")
        console.print("| model | kind | accuracy | goal |\n|---|---|---|---|\n" + report_table(name, rep))
        console.print("per attribute: " + ", ".join(f"{k} {v:.1%}" for k, v in rep.per_attribute.items()))
        for kind, acc in results[name].get("unrouted", {}).items():
            console.print(f"{kind} without clause routing: {acc:.1%} (routed: {rep.per_kind[kind]:.1%})")
    names = list(results)
    if len(names) == 2 and args.throughput:
        a, b = results[names[0]]["images_per_s"], results[names[1]]["images_per_s"]
        console.print(f"throughput {names[1]}:{names[0]} = {b / a:.2f}×")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0
