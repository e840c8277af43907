"""`ditflow bench toolkit`: the toolkit's figures on held-out shapes scenes, each measured side by side in one run.

    ditflow bench toolkit                      # builtin model, every section
    ditflow bench toolkit --n 16 --sections restore,guide --model builtin --json out.json
    ditflow bench toolkit --sections guide --guide-cfg 1 --guide-scale 5   # EluCD's setting: no CFG

Sections and their goals (issue 3):
  restore   PSNR of diffusion restoration vs the degraded input (≥ +3 dB) and the classical baseline (above it)
  classify  degradation classifier accuracy on held-out shapes scenes (≥ 90%) and held-out photos (reported)
  guide     scorer accuracy with EluCD guidance vs without on lone-object prompts (n per kind), same seeds
            and steps (≥ +10 points)
  edit      "make the X Y" / "move the X to the left": scorer success (≥ 80%) with PSNR outside the edit ≥ 25 dB
  group     in-context panels share the instructed shape (≥ 70%)
"""
from __future__ import annotations

import argparse
import json
import random
import time

import numpy as np
import torch
from PIL import Image

from ditflow.pipelines import world
from ditflow.pipelines.routing import add_clause_routing_flag, set_clause_routing
from ditflow.schemas import GuideSpec

SECTIONS = ("restore", "classify", "guide", "edit", "group")
HELDOUT_SEED = 31_337  # scenes never drawn by classifier or model training (they use small seeds)
RESTORE_CASES = (("noise", 0.2), ("blur", 1.5), ("sr4", None), ("inpaint", 0.25))
# Every held-out kind with one object, the one the attribute classifier reads. Backgrounds and paraphrases are
# where the model still misdraws colour and shape (on single objects it is right ~85% of the time unguided).
GUIDE_KINDS = ("single", "paraphrase", "background")


def _scenes(n: int, kind: str, seed: int) -> list[world.Sample]:
    rng = random.Random(seed)
    return [world.sample(rng, kind) for _ in range(n)]


# ----------------------------------------------------------------------------- sections
def bench_restore(pipe, n: int, steps: int | None) -> dict:
    from ditflow.schemas import RestoreSpec
    from ditflow.toolkit import degradation as dg
    from ditflow.toolkit.restore import restore_tensor

    out = {}
    scenes = _scenes(n, "two", HELDOUT_SEED)
    for name, sev in RESTORE_CASES:
        rows = []
        for i, s in enumerate(scenes):
            x = dg.to_tensor(s.image)
            op = dg.operator(name, sev)
            y = op.apply(x, seed=i)
            degraded = y if y.shape == x.shape else torch.nn.functional.interpolate(y, size=x.shape[-2:],
                                                                                     mode="nearest")
            restored, _ = restore_tensor(pipe, op, y, RestoreSpec(degradation=name, seed=i, steps=steps))
            rows.append((dg.psnr(degraded, x), dg.psnr(op.baseline(y), x), dg.psnr(restored, x)))
        d, b, r = (float(np.mean(c)) for c in zip(*rows))
        out[f"{name}" + (f" {sev}" if sev else "")] = {"degraded_db": round(d, 2), "baseline_db": round(b, 2),
                                                       "restored_db": round(r, 2), "gain_db": round(r - d, 2),
                                                       "over_baseline_db": round(r - b, 2)}
    return out


def bench_classify(n: int) -> dict:
    from ditflow.pipelines import classifiers

    model = classifiers.load("degradation")
    return {"heldout_shapes": classifiers.evaluate(model, "degradation", n=n, seed=HELDOUT_SEED),
            "heldout_photos": classifiers.evaluate(model, "degradation", n=n, seed=HELDOUT_SEED, photos=True)}


def bench_guide(pipe, n: int, steps: int | None, scale: float, cfg: float | None = None, seed: int = 0) -> dict:
    from ditflow.pipelines import classifiers
    from ditflow.toolkit.guidance import guided_generate, targets_from_prompt

    clf = classifiers.load("attributes")
    prompts = [(t, s) for t, s in world.heldout_prompts(max(n, 1), seed=HELDOUT_SEED) if s.kind in GUIDE_KINDS]
    pairs = {0.0: [], scale: []}
    for i, (text, spec) in enumerate(prompts):
        for sc in pairs:
            g = GuideSpec(prompt=text, target=targets_from_prompt(text), scale=sc, seed=seed + i, steps=steps,
                          guidance_scale=cfg)
            img, _ = guided_generate(pipe, g, classifier=clf)
            pairs[sc].append((spec, img[0]))
    rep = {sc: world.score_many(p) for sc, p in pairs.items()}
    # paired, prompt by prompt: a push redraws samples either way, and the lost/gained split says which
    change = world.paired_change(rep[0.0].passed, rep[scale].passed)
    return {"n": len(prompts), "scale": scale, "cfg": cfg, "seed": seed, "unguided": rep[0.0].as_dict(),
            "guided": rep[scale].as_dict(),
            "lift_points": round(change["score_change_points"], 1), "ci95_points": round(change["ci95_points"], 1),
            "lost": change["lost"], "gained": change["gained"]}


def _outside_psnr(a: Image.Image, b: Image.Image, mask: Image.Image) -> float:
    m = np.asarray(mask) == 0
    d = (np.asarray(a, np.float64) - np.asarray(b, np.float64))[m] ** 2
    return float(10 * np.log10(255 ** 2 / max(d.mean(), 1e-10))) if d.size else float("inf")


def bench_edit(pipe, n: int, steps: int | None) -> dict:
    from ditflow.toolkit.edit import edit, shapes_edit

    rng = random.Random(HELDOUT_SEED + 1)
    results = {"recolor": [], "move": []}
    for i, s in enumerate(_scenes(n, "two", HELDOUT_SEED + 1)):
        _, found = world.detect(s.image)
        if not found:
            continue
        d = found[0]
        new = rng.choice([c for c in world.COLORS if c != d.color])
        free = [p for row in world.POSITIONS for p in row if p not in {f.position for f in found}]
        for kind, text in (("recolor", f"make the {d.color} {d.shape} {new}"),
                           ("move", f"move the {d.color} {d.shape} to the {rng.choice(free)}")):
            plan = shapes_edit(s.image, text, seed=i, steps=steps)
            out, _ = edit(pipe, s.image, plan.spec, plan.mask)
            ok = world.score_panel(plan.expected, out[0]).satisfied
            results[kind].append((ok, _outside_psnr(out[0], s.image, plan.region)))
    summary = {}
    for kind, rows in results.items():
        if rows:
            summary[kind] = {"n": len(rows), "success": round(float(np.mean([r[0] for r in rows])), 3),
                             "success_and_unchanged": round(float(np.mean([r[0] and r[1] >= 25 for r in rows])), 3),
                             "min_outside_psnr_db": round(min(r[1] for r in rows), 2)}
    return summary


def bench_group(pipe, n: int, steps: int | None) -> dict:
    """A reference panel with one shape; targets asked for "the same <shape>" in other colours."""
    from ditflow.schemas import GroupSpec
    from ditflow.toolkit.generate import generate_group

    rng = random.Random(HELDOUT_SEED + 2)
    shared, with_ref = [], []
    for i in range(n):
        shape, pos = rng.choice(world.SHAPES), rng.choice([p for row in world.POSITIONS for p in row])
        colors = rng.sample(list(world.COLORS), 2)
        clauses = [f"{world._a(c)} {c} {shape} {world.TRAIN_POSITION_WORDS[pos][0]}" for c in colors]
        ref = world.render(world.canvas_from_panel(world.PanelSpec((world.ObjectSpec(colors[0], shape, None, pos),))),
                           random.Random(i))
        spec = GroupSpec(overview=f"the same {shape} in two colours", panel_prompts=clauses, n_refs=1, max_panels=2,
                         seed=i, steps=steps)
        targets, _ = generate_group(pipe, spec, [ref])
        _, found = world.detect(targets[0])
        with_ref.append(len(found) == 1 and found[0].shape == shape)
        # text-only: both panels generated in one call must show the same shape
        both, _ = generate_group(pipe, spec.model_copy(update={"n_refs": 0}), [])
        dets = [world.detect(p)[1] for p in both]
        shared.append(all(len(d) == 1 for d in dets) and len({d[0].shape for d in dets}) == 1
                      and dets[0][0].shape == shape)
    return {"n": n, "reference_shape_kept": round(float(np.mean(with_ref)), 3),
            "text_only_shared_shape": round(float(np.mean(shared)), 3)}


# ----------------------------------------------------------------------------- entry point
def cli(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="ditflow bench toolkit", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin")
    ap.add_argument("--n", type=int, default=32, help="scenes / prompts per section (guide: per prompt kind)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--guide-scale", type=float, default=GuideSpec.model_fields["scale"].default,
                    help="default: GuideSpec's, so the bench measures what users get")
    ap.add_argument("--guide-cfg", type=float, default=None,
                    help="the guide section's CFG scale, for both runs (default: the model's; 1 = no CFG, "
                         "the classifier alone conditions, as in classic classifier guidance)")
    ap.add_argument("--guide-seed", type=int, default=0,
                    help="the guide section's first seed (prompt i draws seed + i): other seeds, other noise")
    add_clause_routing_flag(ap)
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        raise ValueError(f"unknown section(s) {', '.join(bad)}; choose from {', '.join(SECTIONS)}")
    pipe = None
    if any(s != "classify" for s in sections):
        from ditflow.pipelines.loading import load_pipeline

        pipe = load_pipeline(args.model)
        set_clause_routing(pipe, args.clause_routing)
    torch.manual_seed(0)
    figures: dict = {"model": args.model, "n": args.n, "steps": args.steps}
    for s in sections:
        t0 = time.perf_counter()
        if s == "restore":
            figures[s] = bench_restore(pipe, args.n, args.steps)
        elif s == "classify":
            figures[s] = bench_classify(max(args.n, 256))
        elif s == "guide":
            figures[s] = bench_guide(pipe, args.n, args.steps, args.guide_scale, args.guide_cfg,
                                     args.guide_seed)
        elif s == "edit":
            figures[s] = bench_edit(pipe, args.n, args.steps)
        else:
            figures[s] = bench_group(pipe, args.n, args.steps)
        figures[s]["seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps({s: figures[s]}, indent=1), flush=True)
    if args.json:
        from pathlib import Path

        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0
