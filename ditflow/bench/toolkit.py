"""`ditflow bench toolkit`: the toolkit's figures on held-out shapes scenes, each measured side by side in one run.

    ditflow bench toolkit                      # builtin model, every section
    ditflow bench toolkit --n 16 --sections restore,guide --model builtin --json out.json
    ditflow bench toolkit --sections guide --guide-cfg 1 --guide-scale 5   # EluCD's setting: no CFG
    ditflow bench toolkit --sections tools --dev --families pil --kinds jpeg --n 10 --set JPEG_LR=0.2   # tuning

Sections and their goals (issue 3):
  restore   PSNR of diffusion restoration vs the degraded input (≥ +3 dB) and the classical baseline (above it)
  classify  degradation classifier accuracy on held-out shapes scenes (≥ 90%) and held-out photos (reported), and
            on each tool family's degradations (issue 31: ≥ 90% on the held-out OpenCV, ≥ 95% on the others)
  tools     `restore --degradation auto` on degradations made by other tools (pipelines/degraders.py), a table
            per tool family, the family kept out of training on its own line (issue 31): PSNR gain over the
            input (over bicubic for small images), the classifier's accuracy, the severity error, how many
            outputs are the input handed back (fallback) or restored classically, and on shapes scenes the share
            whose objects the world's detector still reads as in the clean scene (kept)
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
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ditflow.bench import _plots
from ditflow.pipelines.routing import add_clause_routing_flag, set_clause_routing
from ditflow.schemas import GuideSpec
from ditflow.world import scenes as world

SECTIONS = ("restore", "classify", "tools", "guide", "edit", "group")
HELDOUT_SEED = 31_337  # scenes never drawn by classifier or model training (they use small seeds)
DEV_SEED = 4_242  # `--dev`: the tools section's scenes and degradations for tuning, apart from the held-out ones
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
    from ditflow.pipelines import classifiers, degraders
    from ditflow.training.classifiers import evaluate

    model = classifiers.load("degradation")
    out = {"heldout_shapes": evaluate(model, "degradation", n=n, seed=HELDOUT_SEED),
           "heldout_photos": evaluate(model, "degradation", n=n, seed=HELDOUT_SEED, photos=True)}
    for family in degraders.FAMILIES:  # each tool family's degradations alone (OpenCV's never trained on)
        out[f"family {family}"] = {
            "shapes": evaluate(model, "degradation", n=n, seed=HELDOUT_SEED, family=family),
            "photos": evaluate(model, "degradation", n=n, seed=HELDOUT_SEED, photos=True, family=family)}
    return out


TOOL_KINDS = ("clean", "noise", "blur", "blur+noise", "jpeg", "small2", "small3", "small4", "small4+jpeg")
WORSE_DB = 0.1  # an output this far below its input counts as worse
CLEAN_CHANGED_DB = 40.0  # a clean image's output below this PSNR to it counts as worse (a gain is meaningless there)


# what a user types for each kind, through `ditflow run` (`--via-run`): plain requests that name no operator
# beyond what the user sees
TOOL_REQUESTS = {"clean": "fix this image please", "noise": "clean up this noisy picture",
                 "blur": "sharpen this", "blur+noise": "sharpen this", "jpeg": "fix the compression artifacts",
                 "small2": "make this tiny image bigger", "small3": "make this tiny image bigger",
                 "small4": "make this tiny image bigger", "small4+jpeg": "make this tiny image bigger"}


def _restore_via_run(pipe, img: Image.Image, request: str, seed: int):
    """The image and the restore call's record of one `ditflow run`-like turn (a Session, verification on)."""
    import tempfile
    from pathlib import Path

    from ditflow.api import Session

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.png"
        img.save(path)
        with Session(pipeline=pipe, llm="rules", persist=False, seed=seed) as s:
            turn = s.chat(request, [path])
            images = turn.images  # read before the session's folder goes
        recs = [r for r in turn.manifest.tool_calls if r.tool == "restore"] if images else []
        return images[:1] or [img], (recs[0] if recs else None)


def _objects(image: Image.Image) -> list:
    """The (colour, shape, cell) of each object the world's detector reads in a shapes scene, sorted."""
    return sorted((d.color, d.shape, d.position) for d in world.detect(image.convert("RGB"))[1])


def _tool_case(pipe, clean: Image.Image, kind: str, family: str, rng: np.random.Generator, seed: int,
               via_run: bool = False, scene: bool = False) -> dict:
    """One clean image degraded by `family`'s tools as `kind`, restored with `auto` (or, `via_run`, by a plain
    request through the agents): what was detected, the size that came back, and the PSNR of input and output
    against the clean image."""
    from ditflow.pipelines import degraders
    from ditflow.schemas import RestoreSpec, ToolRecord
    from ditflow.toolkit import degradation as dg
    from ditflow.toolkit.restore import restore

    d = degraders.sample(np.asarray(clean), kind, family, rng)
    img = Image.fromarray(d.image)
    if via_run:
        out, rec = _restore_via_run(pipe, img, TOOL_REQUESTS[kind], seed)
        rec = rec or ToolRecord(tool="none", details={"degradation": "none"})
    else:
        out, rec = restore(pipe, img, RestoreSpec(degradation="auto", seed=seed))
    x = dg.to_tensor(clean)
    given = dg.to_tensor(img if img.size == clean.size else img.resize(clean.size, Image.BICUBIC))
    got = out[0]
    row = {"kind": kind, "variant": d.variant, "label": d.label, "size_ok": got.size == clean.size,
           "in_db": dg.psnr(given, x)}
    row["out_db"] = dg.psnr(dg.to_tensor(got), x) if row["size_ok"] else row["in_db"]
    row["images"] = {"clean": clean, "given": img.resize(clean.size, Image.BICUBIC) if img.size != clean.size
                     else img, "out": got}  # for --plot's before/after sheet
    det = rec.details.get("detected")
    if kind.startswith("small"):
        row["named"] = row["size_ok"]
    else:
        name = det[0][0] if det else ("clean" if det == [] else rec.details.get("degradation"))
        row["named"] = name == d.label
        sev = rec.details.get("severity")
        if row["named"] and d.severity is not None and sev is not None and d.label in ("noise", "blur", "jpeg"):
            row["severity_error"] = abs(sev - d.severity) * (255 if d.label == "noise" else 1)
    row["fallback"] = bool(rec.details.get("fallback"))
    row["classical"] = rec.details.get("prior") == "classical"
    if scene:  # a shapes scene: does the output still show the clean scene's objects (colour, shape, cell)?
        row["kept"] = _objects(clean) == _objects(got)
    return row


def bench_tools(pipe, n: int, families: tuple[str, ...] | None = None, photos: bool = True,
                via_run: bool = False, examples: dict | None = None, kinds: tuple[str, ...] = TOOL_KINDS,
                seed: int = HELDOUT_SEED) -> dict:
    """Per tool family and kind, on held-out shapes scenes and (with `photos`) crops of held-out photos; with
    `via_run`, each through a plain request to the agents (TOOL_REQUESTS) instead of `restore --degradation auto`.
    `examples`, when given, receives the first case of each kind per "domain family" (images and PSNRs).
    `seed` DEV_SEED draws other scenes and degradations, and crops of the training photos, to tune on."""
    from ditflow.pipelines import degraders
    from ditflow.training import classifiers

    families = families or degraders.FAMILIES
    domains = {"shapes": _scenes(n, "two", seed + 5)}
    if photos:
        prng = random.Random(seed + 6)
        source = classifiers.HELDOUT_PHOTOS if seed == HELDOUT_SEED else classifiers.TRAIN_PHOTOS  # never tune on it
        domains["photos"] = [Image.fromarray((classifiers.photo_crop(prng, source)
                                              .permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
                             for _ in range(n)]
    out: dict = {"heldout_family": degraders.HELDOUT_FAMILY}
    for domain, images in domains.items():
        for family in families:
            table = {}
            for kind in kinds:
                rng = np.random.default_rng(seed + TOOL_KINDS.index(kind))
                rows = [_tool_case(pipe, im.image if hasattr(im, "image") else im, kind, family, rng, i, via_run,
                                   scene=domain == "shapes") for i, im in enumerate(images)]
                if examples is not None:
                    examples.setdefault(f"{domain} {family}", {})[kind] = {**rows[0]["images"], **{
                        k: rows[0][k] for k in ("in_db", "out_db")}}
                gains = [r["out_db"] - r["in_db"] for r in rows]
                sev = [r["severity_error"] for r in rows if "severity_error" in r]
                worse = ([r["out_db"] < CLEAN_CHANGED_DB for r in rows] if kind == "clean"
                         else [g < -WORSE_DB for g in gains])
                table[kind] = {"n": len(rows), "gain_db": None if kind == "clean" else round(float(np.mean(gains)), 2),
                               "named": round(float(np.mean([r["named"] for r in rows])), 3),
                               "worse": int(sum(worse)),
                               "fallback": int(sum(r["fallback"] for r in rows)),
                               "classical": int(sum(r["classical"] for r in rows)),
                               "objects_kept": (round(float(np.mean([r["kept"] for r in rows])), 3)
                                                if rows and "kept" in rows[0] else None),
                               "severity_error": round(float(np.median(sev)), 2) if sev else None}
            named = [t["named"] for k, t in table.items() if not k.startswith("small")]
            table["classifier_accuracy"] = round(float(np.mean(named)), 3) if named else None
            out[f"{domain} {family}" + (" (held out)" if family == degraders.HELDOUT_FAMILY else "")] = table
            print(_tools_table(f"{domain}, {family}", table), flush=True)
    return out


def _tools_table(title: str, table: dict) -> str:
    acc = table["classifier_accuracy"]
    lines = [f"{title}: classifier " + ("– (no kind it names)" if acc is None else f"{acc:.1%}"),
             f"  {'kind':<12} {'gain dB':>8} {'named':>6} {'worse':>5} {'fallback':>8} {'classical':>9} {'kept':>5} {'sev err':>7}"]
    for kind, t in table.items():
        if isinstance(t, dict):
            se = "" if t["severity_error"] is None else f"{t['severity_error']:.2f}"
            gain = "-" if t["gain_db"] is None else f"{t['gain_db']:+.2f}"
            kept = "" if t.get("objects_kept") is None else f"{t['objects_kept']:.0%}"
            lines.append(f"  {kind:<12} {gain:>8} {t['named']:>6.0%} {t['worse']:>5} "
                         f"{t['fallback']:>8} {t.get('classical', 0):>9} {kept:>5} {se:>7}")
    return "\n".join(lines)


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
def _plot_tools(examples: dict, folder: Path, caption: str) -> None:
    from ditflow.pipelines import degraders

    for domain in dict.fromkeys(key.split()[0] for key in examples):
        keys = [k for k in examples if k.split()[0] == domain]
        key = next((k for k in keys if k.split()[1] == degraders.HELDOUT_FAMILY), keys[0])
        kinds = {k: v for k, v in examples[key].items() if k != "clean"}
        print(_plots.restoration(kinds, folder / f"restoration-{domain}.png", f"{key} · {caption}"))


def _set_restore_constant(setting: str) -> None:
    """`--set NAME=VALUE`: a numeric module constant of ditflow.toolkit.restore, replaced for this run."""
    from ditflow.toolkit import restore

    name, _, value = setting.partition("=")
    if not name.isupper() or not isinstance(getattr(restore, name, None), (int, float)) or not value:
        raise ValueError(f"--set {setting}: give NAME=VALUE for a number of ditflow.toolkit.restore, e.g. JPEG_LR=0.2")
    setattr(restore, name, type(getattr(restore, name))(float(value)))


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
    ap.add_argument("--families", default=None, help="tools section: these tool families only (comma-separated)")
    ap.add_argument("--no-photos", action="store_true", help="tools section: shapes scenes only")
    ap.add_argument("--kinds", default=None, help="tools section: these degradation kinds only (comma-separated; "
                    f"of {', '.join(TOOL_KINDS)})")
    ap.add_argument("--dev", action="store_true", help="tools section: dev scenes and degradations (seed "
                    f"{DEV_SEED}) and crops of the training photos, to tune on; the default, held-out ones are "
                    "for reporting")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="override a number of ditflow.toolkit.restore for this run, e.g. JPEG_LR=0.2 (tuning)")
    ap.add_argument("--via-run", action="store_true",
                    help="tools section: plain requests through the agents ('sharpen this'), as `ditflow run` does")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--plot", nargs="?", const=str(_plots.DOCS_IMG), metavar="DIR",
                    help="tools section: also draw a before/after sheet per domain for the held-out family (or the "
                         "first family run) into DIR (default docs/img/restoration-DOMAIN.png)")
    args = ap.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        raise ValueError(f"unknown section(s) {', '.join(bad)}; choose from {', '.join(SECTIONS)}")
    kinds = tuple(k.strip() for k in args.kinds.split(",")) if args.kinds else TOOL_KINDS
    if bad := [k for k in kinds if k not in TOOL_KINDS]:
        raise ValueError(f"unknown kind(s) {', '.join(bad)}; choose from {', '.join(TOOL_KINDS)}")
    for setting in args.set:
        _set_restore_constant(setting)
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
        elif s == "tools":
            fams = tuple(f.strip() for f in args.families.split(",")) if args.families else None
            examples: dict = {}
            figures[s] = bench_tools(pipe, args.n, fams, photos=not args.no_photos, via_run=args.via_run,
                                     examples=examples, kinds=kinds, seed=DEV_SEED if args.dev else HELDOUT_SEED)
            if args.plot:
                _plot_tools(examples, Path(args.plot), _plots.caption("toolkit", argv))
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
        if s != "tools":  # printed as tables while it runs
            print(json.dumps({s: figures[s]}, indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0
