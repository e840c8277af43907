"""Execution: run a `Plan` on the toolkit, step by step, with progress events and a record of every tool call.

A failing step is re-planned once with a simpler tool (a group becomes one `generate` per output, an edit is
redrawn from its self-contained description, a guided generation runs unguided, a named restoration falls back to
`auto`), and the change is noted. If the simpler step fails too, the turn stops and reports which step failed and
why. A `generate` of more objects than the model draws right in one prompt is drawn object by object
(`compose.py`), and in one prompt if that fails. Only tool errors (ValueError, RuntimeError, OSError) are
caught; anything else is a bug and propagates. Tools are imported when first used: the agents know the toolkit's contract, not its internals.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

from PIL import Image

from ditflow.agents.scene import split_degradations
from ditflow.agents.planning import GROUP_PANELS
from ditflow.schemas import (EditSpec, GenerateSpec, GroupSpec, GuideSpec, ParsedRequest, Plan, ProgressEvent,
                             RestoreSpec, Step, ToolRecord)

log = logging.getLogger(__name__)
TOOL_ERRORS = (ValueError, RuntimeError, OSError)
Emit = Callable[[ProgressEvent], None]


class ExecutionError(RuntimeError):
    """A step failed and its re-plan failed too; the message names the step, the tool and the cause."""


@dataclass
class Executed:
    images: dict[int, Image.Image] = field(default_factory=dict)  # output index → image
    records: list[ToolRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None


def _ref_images(step: Step, inputs: list[Image.Image], made: dict[int, Image.Image]) -> list[Image.Image]:
    out = []
    for r in step.refs:
        if r.kind == "output":
            out.append(made[r.index])
        else:  # "input" (and "previous", which the graph passes as inputs of a follow-up turn)
            if r.index > len(inputs):
                raise ValueError(f"step refers to input {r.index}, but {len(inputs)} images were loaded")
            out.append(inputs[r.index - 1])
    return out


def _ref_texts(step: Step, req: ParsedRequest) -> list[str]:
    texts = []
    for r in step.refs:
        if r.kind == "output":
            texts.append(req.outputs[r.index - 1].description)
        else:
            texts.append(split_degradations(req.inputs[r.index - 1].description)[0])
    return texts


def run_step(pipe, step: Step, req: ParsedRequest, inputs: list[Image.Image], made: dict[int, Image.Image],
             seed: int, progress) -> tuple[list[Image.Image], list[ToolRecord]]:
    """One step on the toolkit: images for `step.outputs` in order, and the tool records."""
    p = step.params
    if step.tool == "generate":
        from ditflow.agents.compose import compose, needs_composing
        from ditflow.toolkit.generate import generate

        failed = []
        if needs_composing(pipe, step.prompt):  # more objects than this model draws right in one prompt
            try:
                image, records = compose(pipe, step.prompt, seed, progress)
                return [image], records
            except TOOL_ERRORS as e:  # drawn in one prompt instead, and the record says why
                log.warning("composing %r failed (%s); drawing it in one prompt", step.prompt, e)
                failed = [ToolRecord(tool="compose", spec={"prompt": step.prompt, "seed": seed},
                                     error=f"{type(e).__name__}: {e}")]
        images, rec = generate(pipe, GenerateSpec(prompt=step.prompt, seed=seed), progress=progress)
        return images, failed + [rec]
    if step.tool == "group":
        from ditflow.toolkit.generate import generate_group

        refs = _ref_images(step, inputs, made)
        prompts = _ref_texts(step, req) + [req.outputs[i - 1].description for i in step.outputs]
        spec = GroupSpec(overview=req.shared or "", panel_prompts=prompts, n_refs=len(refs),
                         max_panels=GROUP_PANELS, seed=seed)
        images, rec = generate_group(pipe, spec, refs, progress=progress)
        return images, [rec]
    if step.tool == "guide":
        from ditflow.toolkit.guidance import guided_generate

        target = {k.removeprefix("target_"): str(v) for k, v in p.items() if k.startswith("target_")}
        images, rec = guided_generate(pipe, GuideSpec(prompt=step.prompt, target=target, seed=seed),
                                      progress=progress)
        return images, [rec]
    (source,) = _ref_images(step, inputs, made)[:1] or [None]
    if source is None:
        raise ValueError(f"a {step.tool} step needs a reference image; the plan gave none")
    if step.tool == "restore":
        from ditflow.agents.restoring import restore_spec
        from ditflow.toolkit.restore import restore

        images, rec = restore(pipe, source, restore_spec(pipe, source, p, seed), progress=progress)
        if rec.details.get("fallback"):  # the tool handed the input back rather than a worse image
            log.warning("step %s: %s", step.outputs, rec.details["note"])
        return images, [rec]
    if step.tool in ("edit", "inpaint"):
        from ditflow.toolkit.edit import edit

        records = []
        if p.get("restore_first"):
            from ditflow.toolkit.restore import restore

            restored, rec = restore(pipe, source, RestoreSpec(degradation=str(p["restore_first"]), seed=seed),
                                    progress=progress)
            source, records = restored[0], [rec]
        if p.get("mode") == "objects":  # the objects the request refers to, and nothing else
            from ditflow.agents.object_edit import SHAPES_CANDIDATES, edit_objects
            from ditflow.agents.verify import DetectorVerifier, default_verifier

            out = req.outputs[step.outputs[0] - 1]
            checks = isinstance(default_verifier(pipe), DetectorVerifier)
            image, recs = edit_objects(pipe, source, req.inputs[out.sources[0] - 1], out.edits, seed, progress,
                                       candidates=SHAPES_CANDIDATES if checks else 1)
            return [image], records + recs
        later = _later_page(pipe, source, step) if p.get("mode", "sdedit") == "sdedit" else None
        if later is not None:  # a story's next page as object edits of the page before: the rest stays exact
            from ditflow.agents.object_edit import SHAPES_CANDIDATES, edit_objects

            image, recs = edit_objects(pipe, source, later[0], later[1], seed, progress, candidates=SHAPES_CANDIDATES)
            return [image], records + recs
        mode = "inpaint" if step.tool == "inpaint" else str(p.get("mode", "sdedit"))
        spec = EditSpec(prompt=step.prompt, mode=mode, strength=float(p.get("strength", 0.6)), seed=seed,
                        target=p.get("target"))
        images, rec = edit(pipe, source, spec, progress=progress)
        return images, records + [rec]
    raise ValueError(f"unknown tool {step.tool!r}")


def _later_page(pipe, page: Image.Image, step: Step):
    """(the earlier page read into objects, the object edits that make it `step.prompt`) for a step that continues
    an earlier output of this turn ("then it turns yellow"), where the world's detector reads that page and the
    change is unambiguous: one object in both, or the same objects on another background. Else None: SDEdit."""
    from ditflow.agents import references as rf
    from ditflow.agents import scene as sc
    from ditflow.agents.describe import scene_objects
    from ditflow.agents.verify import DetectorVerifier, default_verifier
    from ditflow.schemas import InputImage

    if not any(r.kind == "output" for r in step.refs) or not isinstance(default_verifier(pipe), DetectorVerifier):
        return None
    read = scene_objects(page)
    after = sc.parse_scene(step.prompt)
    if not read or any(t.count != 1 for t in after.things):
        return None
    background, objects = read
    look = sorted((o.shape, o.color, o.position) for o in objects)
    same = look == sorted((t.shape, t.color, t.position) for t in after.things)
    if not (len(objects) == len(after.things) == 1 or same):
        return None
    edits = rf.diff_edits(objects, background, after)
    return (InputImage(index=1, description="", objects=objects, background=background), edits) if edits else None


def fallback(step: Step) -> list[Step] | None:
    """The simpler re-plan of a failed step, or None when there is nothing simpler."""
    if step.tool == "group" or step.tool == "guide":
        return [Step(tool="generate", prompt=step.prompt if step.tool == "guide" else "", outputs=[i])
                for i in step.outputs]
    if step.tool in ("edit", "inpaint"):
        return [Step(tool="generate", prompt=step.prompt, outputs=step.outputs)]
    if step.tool == "restore" and step.params.get("degradation", "auto") != "auto":
        return [step.model_copy(update={"params": {**step.params, "degradation": "auto"}})]
    return None


def execute(pipe, plan: Plan, req: ParsedRequest, inputs: list[Image.Image], *, seed: int = 0,
            emit: Emit | None = None) -> Executed:
    """Run every step; on a tool error re-plan that step once; stop with `error` set if that fails too."""
    out = Executed()
    emit = emit or (lambda e: None)
    for k, step in enumerate(plan.steps):
        first = step.outputs[0]
        emit(ProgressEvent(stage="execute", message=f"step {k + 1}/{len(plan.steps)}: {step.tool}",
                           step=k + 1, total=len(plan.steps), output=first))
        progress = lambda s, t, _o=first, _m=step.tool: emit(ProgressEvent(stage="denoise", message=_m, step=s,  # noqa
                                                                         total=t, output=_o))
        attempts = [[step]]
        alt = fallback(step)
        if alt:
            for s in alt:  # a generate fallback of a group draws each panel's own description
                if s.tool == "generate" and not s.prompt:
                    s.prompt = req.outputs[s.outputs[0] - 1].description
            attempts.append(alt)
        for attempt, steps in enumerate(attempts):
            try:
                for j, s in enumerate(steps):
                    images, records = run_step(pipe, s, req, inputs, out.images, seed + 1000 * k + j, progress)
                    if len(images) != len(s.outputs):
                        raise ValueError(f"{s.tool} returned {len(images)} images for {len(s.outputs)} outputs")
                    out.records += records
                    out.images.update(zip(s.outputs, images))
                    for note in (r.details.get("note") for r in records if r.details.get("note")):
                        out.notes.append(note)  # e.g. a restoration that handed the input back, and why
                        emit(ProgressEvent(stage="execute", message=note, output=first, notice=True))
                break
            except TOOL_ERRORS as e:
                msg = f"step {k + 1} ({'+'.join(s.tool for s in steps)}) failed: {type(e).__name__}: {e}"
                out.records.append(ToolRecord(tool=steps[0].tool, spec=steps[0].model_dump(), error=msg))
                if attempt + 1 < len(attempts):
                    note = f"{msg}; re-planned as {'+'.join(s.tool for s in attempts[attempt + 1])}"
                    out.notes.append(note)
                    log.warning(note)
                    emit(ProgressEvent(stage="execute", message=note, output=first))
                else:
                    out.error = msg
                    emit(ProgressEvent(stage="error", message=msg, output=first))
                    return out
    return out
