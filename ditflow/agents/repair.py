"""Self-correction after execution: verify every output, repair the failed ones with the cheapest fitting tool,
re-verify, and keep the best candidate (issue 6; GenArtist, arXiv 2407.05600, verifies and corrects each step).

The policy, per failed output (at most `budget` attempts per output, default 2), escalating while repairs do not
improve on the best candidate and starting again from the cheapest rung when one does (`rung`):
- on a shapes-world model, objects that are right but in the wrong cell (their only failed claims are positions) →
  a move: the object's own pixels are lifted and set down in the named cell, and the place they leave is refilled
  with the background;
- on a shapes-world model, a wrong count of objects that are otherwise right (or some of the wrong size) → the
  missing copies inpainted in, one per free cell, each prompted with one copy; the extra ones (and those of the
  wrong size) inpainted out with the background;
- local failures the verifier can place (wrong colour or shape of one object, wrong size, wrong position, a missing
  or an extra object) → masked inpaints, one per object in turn (a move masks both the old place and the new cell;
  a missing object masks its cell; the other objects are kept out), each prompted with only its object placed in its
  region's cell, or with a plain background where extra objects were; on a shapes-world model a scene of several
  objects gets this rung twice before a redraw, which it almost never gets right;
- an output drawn in an in-context group → regenerate the group with the outputs that passed as references;
- colour/shape of a lone object on a shapes-world model → EluCD classifier guidance on those attributes;
- anything else (counts, background, several objects, a verifier that gives no regions) → regenerate with a new
  seed, as the first pass drew it (object by object on a model that binds one object per prompt, `compose.py`);
  a wrong position is regenerated with the prompt stressed (CFG × `STRESS_CFG`).
Each attempt is saved under `repairs/` and recorded with its verdict; if none passes, the best-scoring candidate
(the original included) becomes the output. Only "fail" claims trigger repairs: "unverified" and "not checkable"
ones cannot be fixed by redrawing.

The two graph nodes live here; `graph.py` wires them: execute → verify ⇄ repair → article | finish.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from ditflow.agents import scene as sc
from ditflow.agents.compose import Pick, best_of, compose, free_cell, needs_composing, place, side_px
from ditflow.agents.state import turn_inputs
from ditflow.agents.verify import (NOTHING, DetectorVerifier, check_guarded, claims_of, default_verifier,
                                   detections, expected_of, summary)
from ditflow.schemas import (EditSpec, GenerateSpec, GuideSpec, ParsedRequest, Plan, ProgressEvent, Ref,
                             RepairAttempt, Step, ToolRecord, Verdict)
from ditflow.world import scenes as world

log = logging.getLogger(__name__)

STRESS_CFG = 1.5  # "regenerate with the position stressed": CFG multiplied by this
# A repair inpaints one object's region (or redraws a small scene) with the pipeline's default steps times this:
# verification's cost is almost all repair time. On the builtin model half the steps took the on/off wall time
# from 1.88× to 1.47× for two fewer fixed outputs of 30 (docs/lab-notes.md, Verification).
REPAIR_STEP_SHARE = 0.5
# Candidates a repair draws per inpaint or redraw in one batch, the verifier keeping the best, where checking is
# free (the shapes-world detector: milliseconds) and drawing cheap (a batch of 3 costs the builtin model 2× one).
SHAPES_REPAIR_CANDIDATES = 3
REPAIR_DIR = "repairs"
TOOL_ERRORS = (ValueError, RuntimeError, OSError)
LOCAL_ATTRIBUTES = {"object", "size", "position"}


# ----------------------------------------------------------------------------- regions
def _claims_by_thing(v: Verdict, description: str) -> list[tuple[sc.Thing | None, list]] | None:
    """The verdict's claims grouped by the described thing they are about (claims_of lists each thing's object
    claim, then its size and position claims); the rest (nothing else, background, unknown phrases) under None.
    None when the verifier made claims of its own."""
    if [c.text for c in v.claims] != [c.text for c in claims_of(description)]:
        return None
    groups, k = [], 0
    for t in expected_of(description).things:
        n = 1 + bool(t.size) + bool(t.position)
        groups.append((t, v.claims[k:k + n]))
        k += n
    return groups + [(None, v.claims[k:])]


def _boxes_to_redraw(c, cell: str | None, w: int, h: int) -> list[tuple] | None:
    """The boxes one failed claim needs redrawn (none when another claim of the same object covers it), or None
    when the failure is not local. `cell` is where the claim's object is drawn anew when its object claim failed
    (the named one, or a free one for an unplaced object)."""
    from ditflow.toolkit.edit import cell_box  # lazily: the toolkit loads torch

    if c.attribute not in LOCAL_ATTRIBUTES:
        return None
    if c.attribute == "object" and c.want != NOTHING and cell is not None:  # missing or wrong: drawn in its cell
        things = sc.parse_scene(c.want or "").things
        side = side_px(things[0].size if things else None, w, h)
        return ([c.box] if c.box is not None and c.seen != NOTHING else []) + [cell_box(cell, side, w, h)]
    if c.attribute in ("size", "position") and c.seen == NOTHING:  # of a missing object: drawn in above
        return []
    if c.box is None:
        return None
    boxes = [c.box]
    if c.attribute == "position" and c.want in world.POSITION_CELL:  # move: the new cell too
        boxes.append(cell_box(c.want, max(c.box[2] - c.box[0], c.box[3] - c.box[1]), w, h))
    elif c.attribute == "size" and c.want in ("small", "large"):  # grow or shrink about the same centre
        cx, cy, half = (c.box[0] + c.box[2]) / 2, (c.box[1] + c.box[3]) / 2, side_px(c.want, w, h) / 2
        boxes.append((cx - half, cy - half, cx + half, cy + half))
    return boxes


def _redraw_cell(thing: sc.Thing | None, claims: list, taken: list[tuple], w: int, h: int) -> str | None:
    """The cell a described object is drawn anew in, when its object claim failed (missing, or of the wrong shape
    or colour): its named cell, or for an unplaced one the free cell farthest from every object that stays. A
    wrong object is redrawn clear of the others rather than where it was: there it often touched or merged with
    a neighbour, and a region cut around the neighbour leaves the model too little room."""
    if thing is None or thing.count != 1:
        return None
    if not any(c.attribute == "object" and c.status == "fail" and c.want != NOTHING for c in claims):
        return None
    return thing.position or free_cell(taken, w, h)


def local_regions(v: Verdict, description: str, size: tuple[int, int],
                  background: str | None = None) -> list[tuple[Image.Image, str]] | None:
    """(mask, prompt) per object to redraw, in turn, so that every failed claim is fixed; None when some failure is
    not local. Each prompt names only the object its region must show, placed in its region's cell (or a plain
    background, where extra objects were), and the other objects are kept out of each region. The builtin model
    binds attributes poorly when a prompt names several objects (two-object prompts are almost never right) but
    draws one object right most of the time, so one inpaint per object beats one inpaint of all of them; and
    unplaced, it draws the object where it likes, often outside the region."""
    from ditflow.toolkit.edit import plain_background, region_mask

    w, h = size
    if not any(c.status == "fail" for c in v.claims):
        return None
    groups = _claims_by_thing(v, description)
    exp = expected_of(description)
    structured = groups is not None
    if not structured:  # claims without structure: one region for all, prompted with the whole description
        groups = [(None, v.claims)]
    taken = [tuple(c.box) for c in v.claims if c.box is not None and c.status == "pass"]
    plans = []
    for thing, claims in groups:
        cell = _redraw_cell(thing, claims, taken, w, h) if structured else None
        boxes = []
        for c in claims:
            if c.status != "fail":
                continue
            at = cell
            if not structured and c.attribute == "object" and c.want != NOTHING and c.seen == NOTHING:
                named = sc.parse_scene(c.want or "").things  # a missing object of a verifier's own claim
                at = (named[0].position if named else None) or free_cell(taken, w, h)
            got = _boxes_to_redraw(c, at, w, h)
            if got is None:
                return None
            boxes += got
        if not boxes:
            continue
        if not structured:
            prompt = description
        elif thing is not None:
            if thing.position is None and thing.count == 1:
                thing = replace(thing, position=cell or world.cell_of(boxes[0], w, h))
            prompt = sc.scene_text(sc.Scene((thing,), exp.background))
            taken.append(tuple(round(x) for x in boxes[-1]))  # the next object is placed clear of this one
        else:  # the extra objects
            prompt = plain_background(exp.background or background or world.DEFAULT_BACKGROUND)
        plans.append((boxes, prompt))
    every = [tuple(c.box) for c in v.claims if c.box is not None]
    regions = []
    for boxes, prompt in plans:
        own = {tuple(b) for b in boxes}
        regions.append((region_mask(size, boxes, keep=[b for b in every if b not in own]), prompt))
    return regions or None


def local_mask(v: Verdict, description: str, size: tuple[int, int]) -> Image.Image | None:
    """Everything `local_regions` redraws, as one mask."""
    from ditflow.toolkit.edit import mask_image

    regions = local_regions(v, description, size)
    if regions is None:
        return None
    union = np.zeros((size[1], size[0]), bool)
    for m, _ in regions:
        union |= np.asarray(m) > 0
    return mask_image(union)


def position_moves(v: Verdict, description: str,
                   size: tuple[int, int]) -> list[tuple[tuple, tuple[int, int]]] | None:
    """(box seen, offset to its cell) per object that is drawn right but in the wrong cell, when such misplacements
    are all that failed; None otherwise. Moving keeps the object as drawn; redrawing it in its cell is bounded by
    how well the model places things, which is the builtin model's weakest attribute."""
    from ditflow.toolkit.edit import move_offset

    groups = _claims_by_thing(v, description)
    if groups is None:
        return None
    misplaced = []  # (box seen, cell wanted)
    for thing, claims in groups:
        failed = [c for c in claims if c.status == "fail"]
        if not failed:
            continue
        if thing is None or thing.count != 1 or len(failed) != 1:
            return None
        c = failed[0]
        if c.attribute != "position" or c.box is None or c.want not in world.POSITION_CELL:
            return None
        misplaced.append((tuple(c.box), c.want))
    moving = {b for b, _ in misplaced}
    stay = list({tuple(c.box) for c in v.claims if c.box is not None} - moving)
    return [(b, move_offset(b, cell, *size, avoid=stay)) for b, cell in misplaced] or None


def count_things(v: Verdict, description: str) -> list[sc.Thing] | None:
    """The described things whose count failed, when wrong counts (and copies of the wrong size) are all that
    failed; None otherwise. How many to add or take away is read off the image when the repair runs
    (`run_repair`)."""
    groups = _claims_by_thing(v, description)
    if groups is None:
        return None
    things = []
    for thing, claims in groups:
        failed = [c for c in claims if c.status == "fail"]
        if thing is not None and failed:
            if thing.count == 1 or any(c.attribute not in ("count", "size") or c.seen == NOTHING for c in failed):
                return None  # (none of the right kind drawn at all: a redraw, not a patch)
            things.append(thing)
    # "nothing else" may fail as well: surplus copies and stray objects are cleared by the same repair
    return things or None


def _count_regions(image: Image.Image, things: list[sc.Thing], described: tuple[sc.Thing, ...],
                   background: str) -> list[tuple[Image.Image, str]]:
    """(mask, prompt) per object to clear (its box, prompted with the background: surplus copies, and objects
    that are none of the `described` things, copies of the wrong size included) or per copy to draw in (in the
    free cell farthest from every object, prompted with one copy), for each miscounted thing in `things` to come
    out right."""
    from ditflow.toolkit.edit import plain_background, region_mask

    w, h = image.size
    _, dets = detections(image)  # as the verifier sees them

    def kind_of(d, t: sc.Thing) -> bool:
        size = "small" if d.side * world.PANEL / min(w, h) < world.SMALL_LARGE_SPLIT else "large"
        return d.shape == t.shape and t.color in (None, d.color) and t.size in (None, size)

    clear = [d for d in dets if not any(kind_of(d, t) for t in described)]
    for t in things:
        clear += [d for d in dets if kind_of(d, t)][t.count:]  # surplus copies: the last ones found go
    boxes = [tuple(d.box) for d in dets]
    regions = [(region_mask(image.size, [d.box], keep=[b for b in boxes if b != tuple(d.box)]),
                plain_background(background)) for d in clear]
    boxes = [tuple(d.box) for d in dets if d not in clear]
    for t in things:
        same = [d for d in dets if kind_of(d, t)]
        for _ in range(t.count - len(same)):
            copy, new = place(t, free_cell(boxes, w, h), w, h)
            regions.append((region_mask(image.size, [new], keep=boxes),
                            sc.scene_text(sc.Scene((copy,), None if background == world.DEFAULT_BACKGROUND
                                                   else background))))
            boxes.append(tuple(round(x) for x in new))
    return regions


# ----------------------------------------------------------------------------- the policy
@dataclass
class Repair:
    kind: str  # move | count | inpaint | regroup | guide | regenerate
    reason: str
    regions: list[tuple[Image.Image, str]] = field(default_factory=list)  # inpaint: (mask, what it must show), in turn
    stress: bool = False
    target: dict[str, str] = field(default_factory=dict)  # guide: attribute → label
    moves: list[tuple[tuple, tuple[int, int]]] = field(default_factory=list)  # move: (box seen, (dx, dy)), in turn
    background: str = world.DEFAULT_BACKGROUND  # move, count: what a moved or cleared object leaves behind
    things: list = field(default_factory=list)  # count: the described things whose count is wrong


def guide_target(v: Verdict, description: str) -> dict[str, str]:
    """{colour, shape} to steer towards, when the only failure is the look of the description's one object."""
    exp = expected_of(description)
    failed = [c for c in v.claims if c.status == "fail"]
    if len(exp.things) != 1 or exp.things[0].count != 1 or exp.background or not failed:
        return {}
    if any(c.attribute != "object" or c.want == NOTHING for c in failed):
        return {}
    t = exp.things[0]
    return {"shape": t.shape, **({"color": t.color} if t.color else {})}


def ladder(v: Verdict, description: str, size: tuple[int, int], *, group: bool, shapes_world: bool,
           background: str | None = None) -> list[Repair]:
    """The repairs for a verdict, cheapest first; attempt k uses entry k (the last one repeats). `background` is
    the one seen, for an inpaint that must clear a region the description gives no background for."""
    failed = [c for c in v.claims if c.status == "fail"]
    reason = "; ".join(f"{c.text}: saw {c.seen}" for c in failed)
    steps: list[Repair] = []
    moves = position_moves(v, description, size) if shapes_world else None
    bg = expected_of(description).background or background or world.DEFAULT_BACKGROUND
    if moves:
        steps.append(Repair("move", reason, moves=moves, background=bg))
    counts = count_things(v, description) if shapes_world else None
    if counts:
        steps.append(Repair("count", reason, things=counts, background=bg))
    regions = local_regions(v, description, size, background)
    if regions:
        steps.append(Repair("inpaint", reason, regions=regions))
        if shapes_world and len(expected_of(description).things) > 1:
            # a second inpaint (a new seed) before a redraw: the builtin model draws one object right most of
            # the time, but a scene of several almost never (two objects: 5% in bench shapes)
            steps.append(Repair("inpaint", reason, regions=regions))
    if group:
        steps.append(Repair("regroup", reason))
    target = guide_target(v, description) if shapes_world else {}
    if target:
        steps.append(Repair("guide", reason, target=target))
    steps.append(Repair("regenerate", reason, stress=any(c.attribute == "position" for c in failed)))
    return steps


def rung(cands: list[dict], base: dict) -> int:
    """Which entry of the ladder the next repair of `base` takes: the number of repairs already made from it.
    A repair that improved on its base becomes the new base and starts its own ladder at the cheapest rung (a
    missing object drawn in the wrong cell is then moved by inpaint, not regenerated); one that did not leaves the
    base in place, so the next attempt escalates."""
    return sum(c.get("base", 0) == base["attempt"] for c in cands if c["attempt"] > 0)


def needs_repair(v: Verdict | None) -> bool:
    return v is not None and v.error is None and any(c.status == "fail" for c in v.claims)


# ----------------------------------------------------------------------------- running a repair
def repair_steps(pipe, share: float = REPAIR_STEP_SHARE) -> int:
    """Denoising steps of an inpaint, guided or regenerating repair: a share of the pipeline's default (at least 4,
    so that a few-step model such as FLUX.1-schnell keeps its own count)."""
    from ditflow.pipelines.loading import info_of

    default = info_of(pipe).default_steps
    return min(default, max(4, round(default * share)))


def run_repair(pipe, rep: Repair, image: Image.Image, description: str, origin: Step | None, req: ParsedRequest,
               inputs: list[Image.Image], made: dict[int, Image.Image], output: int, seed: int,
               progress=None, steps: int | None = None, candidates: int = 1,
               pick: Pick | None = None) -> tuple[Image.Image, ToolRecord]:
    """One candidate for `output`, made by the toolkit as `rep` says (tool errors propagate to the caller).
    `steps` sets the denoising steps of inpaints, guided and plain regenerations (None: the pipeline's default);
    a regroup or a redone edit step runs as its step says. Inpaints and regenerations draw `candidates` images
    in one batch, and `pick` keeps the best against `description` (each region of an inpaint in turn)."""
    from ditflow.agents.execution import run_step

    w, h = image.size
    kind = rep.kind
    if rep.kind == "count":  # drawn in or cleared out, copy by copy: planned here, on the image, then inpainted
        regions = _count_regions(image, rep.things, expected_of(description).things, rep.background)
        rep = Repair("inpaint", rep.reason, regions=regions)
        if not rep.regions:
            raise ValueError("the count is already right on this image; nothing to draw in or clear")
    if rep.kind == "move":
        from ditflow.toolkit.edit import edit, mask_image, plain_background

        if not rep.moves:
            raise ValueError("a move repair needs at least one object to move")
        records, seconds = [], 0.0
        for box, offset in rep.moves:  # one object at a time, each on the result of the last
            lift = world.object_mask(image, box)
            if not lift.any():
                raise ValueError(f"nothing but background in {box}, so there is no object to move")
            spec = EditSpec(prompt=plain_background(rep.background), mode="move", strength=1.0, offset=offset, seed=seed, steps=steps)
            images, rec = edit(pipe, image, spec, mask=mask_image(lift), progress=progress)
            images = [image := images[0].convert("RGB")]
            seconds += rec.seconds
            records.append({"box": list(box), "offset": list(offset)})
        rec.seconds, rec.details = seconds, {**rec.details, "moves": records}
    elif rep.kind == "inpaint":
        from ditflow.toolkit.edit import edit

        if not rep.regions:
            raise ValueError("an inpaint repair needs at least one region")
        records, seconds = [], 0.0
        for mask, prompt in rep.regions:  # one object at a time, each on the result of the last
            spec = EditSpec(prompt=prompt, mode="inpaint", strength=1.0, seed=seed, steps=steps, num_images=candidates)
            images, rec = edit(pipe, image, spec, mask=mask, progress=progress)
            images = [image := best_of(images, description, pick).convert("RGB")]
            seconds += rec.seconds
            records.append({"prompt": prompt, "mask_fraction": rec.details.get("mask_fraction")})
        rec.seconds, rec.details = seconds, {**rec.details, "regions": records}
    elif rep.kind == "regroup":
        good = [i for i in sorted(made) if i != output][: 3]
        if not good:
            raise ValueError("no other output passed, so there is no good panel to regroup on")
        step = Step(tool="group", prompt=description, outputs=[output], refs=[Ref(kind="output", index=i) for i in good])
        images, recs = run_step(pipe, step, req, inputs, made, seed, progress)
        rec = recs[-1]
    elif rep.kind == "guide":
        from ditflow.toolkit.guidance import guided_generate

        spec = GuideSpec(prompt=description, target=rep.target, seed=seed, steps=steps)
        images, rec = guided_generate(pipe, spec, progress=progress, height=_mult16(h), width=_mult16(w))
    elif origin is not None and origin.tool in ("edit", "inpaint", "restore"):  # redo the step from its source
        step = origin.model_copy(update={"outputs": [output]})
        images, recs = run_step(pipe, step, req, inputs, made, seed, progress)
        rec = recs[-1]
    elif needs_composing(pipe, description):  # a redraw the way the first pass drew it: object by object
        size = (w, h) if _mult16(w) and _mult16(h) else None
        image_, records = compose(pipe, description, seed, progress, steps=steps, size=size, candidates=candidates,
                                  pick=pick)
        images, rec = [image_], records[-1]
    else:
        from ditflow.pipelines.loading import info_of
        from ditflow.toolkit.generate import generate

        cfg = min(30.0, info_of(pipe).default_cfg * STRESS_CFG) if rep.stress else None
        spec = GenerateSpec(prompt=description, seed=seed, steps=steps, height=_mult16(h), width=_mult16(w),
                            guidance_scale=cfg, num_images=candidates)
        images, rec = generate(pipe, spec, progress=progress)
        images = [best_of(images, description, pick)]
    out = images[0].convert("RGB")
    if out.size != image.size:
        out = out.resize(image.size, Image.BICUBIC)
    rec.details = {**rec.details, "repair": kind}
    return out, rec


def picker(verifier, output: int) -> Pick:
    """Chooses among candidates by the verifier: a passing one if any, else the highest score; ties go to the
    first. A verifier that errors scores a candidate 0, so it never crashes the repair."""
    def pick(images: list[Image.Image], description: str) -> Image.Image:
        def key(k: int):
            v = check_guarded(verifier, images[k], description, output)
            return v.passed, v.score, -k

        return images[max(range(len(images)), key=key)]

    return pick


def repair_candidates(rt, shapes_world: bool) -> int:
    return rt.repair_candidates or (SHAPES_REPAIR_CANDIDATES if shapes_world else 1)


def _mult16(px: int) -> int | None:
    return px if px % 16 == 0 else None


def best(cands: list[dict]) -> dict:
    """The winning candidate: a passing one if any, else the highest score; ties go to the earliest attempt."""
    scored = [c for c in cands if c.get("verdict")]
    if not scored:
        return cands[0]
    return max(scored, key=lambda c: (Verdict.model_validate(c["verdict"]).passed,
                                      Verdict.model_validate(c["verdict"]).score, -c["attempt"]))


# ----------------------------------------------------------------------------- graph nodes
def _origin(plan: Plan | None, output: int) -> Step | None:
    return next((s for s in (plan.steps if plan else []) if output in s.outputs), None)


def _verifier(rt):
    return rt.verifier if rt.verifier is not None else default_verifier(rt.get_pipeline(), rt.llm)


def verify_node(state: dict, runtime) -> dict:
    """Verify every candidate that has no verdict yet; then either schedule repairs or settle the outputs."""
    from ditflow.images import load_image

    rt = runtime.context
    t0 = time.perf_counter()
    timings = dict(state.get("timings") or {})
    verifier = _verifier(rt)
    if verifier is None:
        rt.emit(ProgressEvent(stage="verify", message="no verifier for this model and LLM; outputs are unverified"))
        return {"verdicts": [], "notes": (state.get("notes") or []) + ["outputs unverified: no verifier for this "
                                                                      "model (give an OpenAI-compatible LLM)"]}
    req = ParsedRequest.model_validate(state["parse"]["request"])
    out_dir = Path(state["out_dir"])
    files = {int(k): v for k, v in (state.get("files") or {}).items()}
    cands = {int(k): list(v) for k, v in (state.get("candidates") or {}).items()}
    budget = rt.max_repairs
    plan = Plan.model_validate(state["plan"]) if state.get("plan") else None
    for o in req.outputs:
        origin = _origin(plan, o.index)
        if o.index not in files or (origin is not None and origin.tool == "restore"):
            # a restoration answers to its input (the restore tool's own consistency check), not to a description
            # read from the degraded input, which a repair would redraw the image to match
            continue
        lst = cands.setdefault(o.index, [{"attempt": 0, "file": files[o.index], "repair": None, "reason": "",
                                          "verdict": None, "tool_call": None}])
        for c in lst:
            if c["verdict"] is None and c["file"]:
                rt.emit(ProgressEvent(stage="verify", message=f"checking output {o.index}"
                                      + (f" (repair {c['attempt']})" if c["attempt"] else ""), output=o.index))
                v = check_guarded(verifier, load_image(out_dir / c["file"]), o.description, o.index)
                c["verdict"] = v.model_dump(mode="json")
                rt.emit(ProgressEvent(stage="verify", message=f"output {o.index}: {summary(v)}", output=o.index))
    to_repair = []
    for i, lst in sorted(cands.items()):
        top = best(lst)
        if needs_repair(Verdict.model_validate(top["verdict"]) if top["verdict"] else None) and len(lst) - 1 < budget:
            to_repair.append(i)
    timings["verify_s"] = timings.get("verify_s", 0.0) + time.perf_counter() - t0
    update = {"candidates": {str(k): v for k, v in cands.items()}, "to_repair": to_repair, "timings": timings}
    if not to_repair:
        update.update(_settle(cands, out_dir, rt))
    return update


def _settle(cands: dict[int, list[dict]], out_dir: Path, rt) -> dict:
    """Make each output its best candidate (the original kept under repairs/), and record every attempt."""
    from ditflow.images import load_image, save_image_atomic

    verdicts, repairs = [], []
    for i, lst in sorted(cands.items()):
        top = best(lst)
        if top["attempt"] > 0:
            original = lst[0]
            kept = f"{REPAIR_DIR}/{i:04d}-0.png"
            save_image_atomic(load_image(out_dir / original["file"]), out_dir / kept)
            save_image_atomic(load_image(out_dir / top["file"]), out_dir / original["file"])
            rt.emit(ProgressEvent(stage="repair", message=f"output {i}: repair {top['attempt']} ({top['repair']}) "
                                  "is used", output=i))
        if top["verdict"]:
            verdicts.append(Verdict.model_validate(top["verdict"]))
        for c in lst[1:]:
            repairs.append(RepairAttempt(output=i, attempt=c["attempt"], base=c.get("base", 0), repair=c["repair"],
                                         reason=c["reason"], file=c["file"], verdict=c["verdict"],
                                         tool_call=c["tool_call"], chosen=c is top).model_dump(mode="json"))
    return {"verdicts": [v.model_dump(mode="json") for v in verdicts], "repairs": repairs}


def repair_node(state: dict, runtime) -> dict:
    """One repair attempt for every output scheduled by the verify node."""
    from ditflow.images import load_image, save_image_atomic

    rt = runtime.context
    t0 = time.perf_counter()
    req = ParsedRequest.model_validate(state["parse"]["request"])
    plan = Plan.model_validate(state["plan"]) if state.get("plan") else None
    out_dir = Path(state["out_dir"])
    cands = {int(k): list(v) for k, v in (state.get("candidates") or {}).items()}
    budget = rt.max_repairs
    pipe = rt.get_pipeline()
    verifier = _verifier(rt)
    shapes_world = isinstance(verifier, DetectorVerifier)  # its vocabulary is the attribute classifier's
    steps_each = repair_steps(pipe, rt.repair_step_share)
    candidates = repair_candidates(rt, shapes_world)
    todo = list(state.get("to_repair") or [])
    passed = {i: load_image(out_dir / best(lst)["file"]) for i, lst in cands.items()
              if best(lst)["verdict"] and Verdict.model_validate(best(lst)["verdict"]).passed}
    inputs = None
    for k, i in enumerate(todo):
        lst = cands[i]
        attempt = len(lst)  # the original is attempt 0
        if attempt > budget:  # the verify node never schedules this; a hard stop all the same
            raise RuntimeError(f"output {i} would get repair {attempt} past its budget of {budget}")
        base = best(lst)
        verdict = Verdict.model_validate(base["verdict"])
        image = load_image(out_dir / base["file"])
        desc = req.outputs[i - 1].description
        origin = _origin(plan, i)
        steps = ladder(verdict, desc, image.size, group=bool(origin and origin.tool == "group" and passed),
                       shapes_world=shapes_world,
                       background=world.detect_background(np.asarray(image.convert("RGB"))) if shapes_world else None)
        rep = steps[min(rung(lst, base), len(steps) - 1)]
        rt.emit(ProgressEvent(stage="repair", message=f"fixing {k + 1} of {len(todo)}: output {i} by {rep.kind} "
                              f"({rep.reason})", step=k + 1, total=len(todo), output=i))
        if rep.kind == "regenerate" and origin is not None and origin.tool in ("edit", "inpaint", "restore") \
                and inputs is None:
            inputs = turn_inputs(state)
        progress = lambda s, t, _o=i, _m=f"repair {attempt}: {rep.kind}": rt.emit(  # noqa
            ProgressEvent(stage="denoise", message=_m, step=s, total=t, output=_o))
        seed = rt.seed + 500_000 + 1000 * i + attempt
        entry = {"attempt": attempt, "base": base["attempt"], "file": "", "repair": rep.kind, "reason": rep.reason,
                 "verdict": None, "tool_call": None}
        try:
            made = {**passed, i: image}
            if origin is not None and origin.tool in ("edit", "inpaint", "restore"):
                for r in origin.refs:  # an edit of an earlier output redoes from that output, passed or not
                    if r.kind == "output" and r.index not in made:
                        made[r.index] = load_image(out_dir / (best(cands[r.index])["file"] if r.index in cands
                                                              else state["files"][str(r.index)]))
            cand, rec = run_repair(pipe, rep, image, desc, origin, req, inputs or [], made, i, seed, progress,
                                   steps=steps_each, candidates=candidates, pick=picker(verifier, i))
            name = f"{REPAIR_DIR}/{i:04d}-{attempt}.png"
            save_image_atomic(cand, out_dir / name)
            entry.update(file=name, tool_call=rec.model_dump(mode="json"))
        except TOOL_ERRORS as e:  # a failed repair spends its attempt; the turn goes on with what it has
            msg = f"repair {attempt} of output {i} ({rep.kind}) failed: {type(e).__name__}: {e}"
            log.warning(msg)
            rt.emit(ProgressEvent(stage="repair", message=msg, output=i))
            entry["tool_call"] = ToolRecord(tool=rep.kind, error=msg).model_dump(mode="json")
        lst.append(entry)
    timings = dict(state.get("timings") or {})
    timings["repair_s"] = timings.get("repair_s", 0.0) + time.perf_counter() - t0
    return {"candidates": {str(k): v for k, v in cands.items()}, "to_repair": [], "timings": timings}


def after_verify(state: dict) -> str:
    if state.get("to_repair"):
        return "repair"
    return "article" if (state.get("plan") or {}).get("article") else "finish"
