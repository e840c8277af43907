"""`ditflow bench agents --verify on|off|both`: full agent turns with and without verify/repair (issue 6).

Two sets, each run through `run_turn` on one pipeline:
- shapes: the held-out single-panel captions of `world.heldout_prompts` as instructions; an output is satisfied
  when the world's scorer (`world.score_panel`) accepts it against the caption's true scene spec;
- instructions: the labelled instruction set (tests/data, cases without history or input images); each output
  is scored by `world.score_panel` against the scene its parsed description names. Outputs whose description
  is outside the world's vocabulary are counted apart as "not checkable".
Reported per set and mode: share of outputs satisfied, mean repairs per output, the most repairs any output got
(never above the budget), and wall time; with `both`, the on/off wall-time ratio measured in the same run.
The `exactness` set checks the detector verifier alone on rendered scenes (no model).
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ditflow.agents.repair import REPAIR_STEP_SHARE
from ditflow.agents.verify import expected_of
from ditflow.bench._data import load_cases
from ditflow.pipelines.routing import add_clause_routing_flag, set_clause_routing
from ditflow.schemas import MAX_CANDIDATES
from ditflow.world import scenes as world

GOALS = {"satisfied_on": 0.97, "time_ratio": 1.6}


@dataclass
class Item:
    id: str
    instruction: str
    truth: world.PanelSpec | None = None  # shapes set: the caption's own scene


@dataclass
class Tally:
    outputs: int = 0
    satisfied: int = 0
    not_checkable: int = 0
    repairs: int = 0
    max_repairs: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # "id#output: description (repairs tried)", to read the images

    @property
    def share(self) -> float:
        n = self.outputs - self.not_checkable
        return self.satisfied / n if n else float("nan")


def shapes_items(n_per_kind: int) -> list[Item]:
    return [Item(f"{spec.kind}-{i}", text, spec.panels[0]) for i, (text, spec) in
            enumerate(world.heldout_prompts(n_per_kind)) if spec.layout == (1, 1)]


def instruction_items(split: str, limit: int = 0) -> list[Item]:
    cases = [c for c in load_cases(split) if not c.get("history") and not c.get("inputs") and c["instruction"].strip()]
    cases = cases[:limit] if limit else cases
    return [Item(c["id"], c["instruction"]) for c in cases]


def spec_of(description: str) -> world.PanelSpec | None:
    """The world scene a description names, for the scorer; None when some of it is outside the vocabulary."""
    exp = expected_of(description)
    if not exp.things or exp.unknown:
        return None
    objs = tuple(world.ObjectSpec(t.color, t.shape, t.size, t.position, t.count) for t in exp.things)
    return world.PanelSpec(objs, exp.background or world.DEFAULT_BACKGROUND, exp.background is not None)


def run_set(pipe, items: list[Item], *, verify: bool, budget: int, seed: int, out_dir: Path,
            step_share: float = REPAIR_STEP_SHARE, candidates: int | None = None) -> Tally:
    from langgraph.checkpoint.memory import InMemorySaver

    from ditflow.agents.graph import AgentRuntime, run_turn
    from ditflow.agents.parsing import InstructionError

    tally = Tally()
    for k, item in enumerate(items):
        rt = AgentRuntime(pipeline=pipe, seed=seed + k, verify=verify, max_repairs=budget,
                          repair_step_share=step_share, repair_candidates=candidates)
        folder = out_dir / f"{item.id}-{'on' if verify else 'off'}"
        t0 = time.perf_counter()
        try:
            rec = run_turn(rt, thread_id=item.id, instruction=item.instruction, images=[], out_dir=folder,
                           checkpointer=InMemorySaver())
        except InstructionError:  # refused before any agent ran (the bad-input cases): no outputs to score
            continue
        tally.seconds += time.perf_counter() - t0
        if rec.error:
            tally.errors.append(f"{item.id}: {rec.error}")
        descs = {o.index: o.description for o in (rec.parsed.outputs if rec.parsed else [])}
        for i, name in enumerate(rec.images, start=1):
            tally.outputs += 1
            n_rep = sum(r.output == i for r in rec.repairs)
            tally.repairs += n_rep
            tally.max_repairs = max(tally.max_repairs, n_rep)
            spec = item.truth if item.truth is not None and len(rec.images) == 1 else spec_of(descs.get(i, ""))
            if spec is None:
                tally.not_checkable += 1
                continue
            ok = world.score_panel(spec, Image.open(folder / name).convert("RGB")).satisfied
            tally.satisfied += ok
            if not ok:
                tried = ", ".join(r.repair for r in rec.repairs if r.output == i)
                tally.failed.append(f"{item.id}#{i}: {descs.get(i) or item.instruction}"
                                    + (f" (repairs: {tried})" if tried else ""))
    return tally


def detector_exactness(n_per_kind: int, seed: int = 0) -> dict:
    """The detector verifier on rendered held-out scenes: true scenes must pass, and the same captions on scenes
    with the first object recoloured must fail. No model involved: it measures the verifier alone."""
    import random
    from dataclasses import replace

    from ditflow.agents.verify import DetectorVerifier

    rng, v = random.Random(seed), DetectorVerifier()
    n = passed = caught = 0
    t0 = time.perf_counter()
    for text, spec in world.heldout_prompts(n_per_kind):
        if spec.layout != (1, 1):
            continue
        p, o = spec.panels[0], spec.panels[0].objects[0]
        other = next(c for c in world.COLORS if c != o.color)
        wrong = replace(spec, panels=(replace(p, objects=(replace(o, color=other),) + p.objects[1:]),))
        n += 1
        passed += v.check(world.render(spec, rng), text).passed
        caught += not v.check(world.render(wrong, rng), text).passed
    return {"n": n, "true_pass": passed / n, "recoloured_fail": caught / n,
            "ms_per_check": 1000 * (time.perf_counter() - t0) / (2 * n)}


def load(model: str, clause_routing: bool | None = None):
    if model == "tiny":
        from ditflow.pipelines.tiny import tiny_flux_pipeline

        pipe = tiny_flux_pipeline()
    else:
        from ditflow.pipelines.loading import load_pipeline

        pipe = load_pipeline(model, device="cpu")
    set_clause_routing(pipe, clause_routing)
    return pipe


def run(model: str, modes: list[str], *, n_per_kind: int, split: str, limit: int, budget: int, seed: int,
        sets: tuple[str, ...] = ("shapes", "instructions"), step_share: float = REPAIR_STEP_SHARE,
        candidates: int | None = None, clause_routing: bool | None = None) -> dict:
    results: dict = {}
    if "exactness" in sets:
        results["exactness"] = detector_exactness(n_per_kind, seed)
        sets = tuple(s for s in sets if s != "exactness")
        if not sets:
            return {"model": model, "budget": budget, "results": results, "out_dir": ""}
    pipe = load(model, clause_routing)
    out_dir = Path(tempfile.mkdtemp(prefix="ditflow-bench-verify-"))
    items = {"shapes": shapes_items(n_per_kind), "instructions": instruction_items(split, limit)}
    for name in sets:
        for mode in modes:  # side by side in one run, same seeds, so the wall-time ratio compares like with like
            results[(name, mode)] = run_set(pipe, items[name], verify=mode == "on", budget=budget, seed=seed,
                                            out_dir=out_dir / name, step_share=step_share, candidates=candidates)
    return {"model": model, "budget": budget, "step_share": step_share, "candidates": candidates, "results": results,
            "out_dir": str(out_dir)}


def report(r: dict) -> str:
    res = dict(r["results"])
    lines = []
    if "exactness" in res:
        e = res.pop("exactness")
        lines.append(f"detector verifier on {e['n']} rendered held-out scenes: true scenes pass {e['true_pass']:.1%}, "
                     f"recoloured scenes fail {e['recoloured_fail']:.1%}, {e['ms_per_check']:.1f} ms per check")
        if not res:
            return "\n".join(lines)
    r = {**r, "results": res}
    lines += [f"model={r['model']} budget={r['budget']} repair steps={r['step_share']:g}× default, "
              f"candidates per repair draw={r.get('candidates') or 'default'}, images under {r['out_dir']}",
             f"{'set':<14}{'verify':>7}{'outputs':>9}{'checkable':>10}{'satisfied':>10}{'repairs/out':>12}"
             f"{'max rep':>8}{'wall s':>9}"]
    for (name, mode), t in r["results"].items():
        lines.append(f"{name:<14}{mode:>7}{t.outputs:>9}{t.outputs - t.not_checkable:>10}{t.share:>10.1%}"
                     f"{t.repairs / max(1, t.outputs):>12.2f}{t.max_repairs:>8}{t.seconds:>9.1f}")
    for name in dict.fromkeys(n for n, _ in r["results"]):
        on, off = r["results"].get((name, "on")), r["results"].get((name, "off"))
        if on and off and off.seconds:
            lines.append(f"{name}: wall time on/off = {on.seconds / off.seconds:.2f}× (goal ≤ {GOALS['time_ratio']}×); "
                         f"satisfied on {on.share:.1%} vs off {off.share:.1%} (goal ≥ {GOALS['satisfied_on']:.0%} on)")
        for t in (on, off):
            for e in (t.errors if t else [])[:5]:
                lines.append(f"  error: {e}")
        for f in (on.failed if on else [])[:10]:
            lines.append(f"  unsatisfied with verification on: {f}")
    ok = all(t.max_repairs <= r["budget"] for t in r["results"].values())
    lines.append(f"budget respected by every output: {'yes' if ok else 'NO'}")
    return "\n".join(lines)


def cli(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="ditflow bench agents --verify")
    ap.add_argument("--verify", required=True, choices=("on", "off", "both"))
    ap.add_argument("--model", default="builtin")
    ap.add_argument("--n", type=int, default=20, help="held-out captions per kind for the shapes set")
    ap.add_argument("--split", default="test", choices=("dev", "test", "all"))
    ap.add_argument("--limit", type=int, default=0, help="only the first N instructions")
    ap.add_argument("--budget", type=int, default=2, help="repairs per output")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repair-step-share", type=float, default=REPAIR_STEP_SHARE,
                    help="a repair's denoising steps as a share of the model's default")
    ap.add_argument("--sets", default="exactness,shapes,instructions",
                    help="exactness: the detector verifier alone on rendered scenes (no model)")
    ap.add_argument("--repair-candidates", type=int, default=None,
                    help="images per repair draw, the verifier keeping the best (default: 3 on the shapes world, else 1)")
    add_clause_routing_flag(ap)
    args, _ = ap.parse_known_args(argv)
    if args.repair_candidates is not None and not 1 <= args.repair_candidates <= MAX_CANDIDATES:
        raise ValueError(f"--repair-candidates must be in 1..{MAX_CANDIDATES}, got {args.repair_candidates}")
    if args.budget < 0:
        raise ValueError(f"--budget must be >= 0, got {args.budget}")
    if not 0 < args.repair_step_share <= 1:
        raise ValueError(f"--repair-step-share must be in (0, 1], got {args.repair_step_share}")
    modes = ["off", "on"] if args.verify == "both" else [args.verify]
    sets = tuple(s for s in args.sets.split(",") if s)
    bad = [s for s in sets if s not in ("exactness", "shapes", "instructions")]
    if bad:
        raise ValueError(f"unknown set(s) {bad}; use exactness, shapes and/or instructions")
    print(report(run(args.model, modes, n_per_kind=args.n, split=args.split, limit=args.limit, budget=args.budget,
                     seed=args.seed, sets=sets, step_share=args.repair_step_share,
                     candidates=args.repair_candidates, clause_routing=args.clause_routing)))
    return 0
