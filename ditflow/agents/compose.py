"""Composed generation: a scene of more objects than the model draws right in one prompt is drawn one object at a
time, the first with the background, each further one inpainted into a cell of its own. A scene on a plain
background the model draws objects poorly on has its objects drawn on the model's own background, and its
background filled in around them last.

GenArtist (arXiv 2407.05600) decomposes a complex prompt into a generation and object additions by editing tools.
We do it when the model says it needs it: `PipelineInfo.objects_per_prompt` (the builtin model: 1; None for
FLUX.1, which binds attributes across many objects). On the builtin model a two-object caption drawn in one
prompt is right 5% of the time (`bench shapes`), while one object is drawn right most of the time, and an inpaint
prompted with one placed object fills its region well (`docs/lab-notes.md`, Verification).

The plan still says `generate`: what to draw. How to draw it on this model is the executor's business, and the
tool record lists every call. Cells come from the description (a named position) or are the free cell farthest
from the objects already placed; each inpaint keeps the objects detected so far out of its region.

The builtin model draws objects on white far better than on black or gray (`PipelineInfo.object_background`).
On 24 held-out scenes on black or gray, drawn directly, 37.5% were right. Drawn on white, 83% were right, and
filling the background with its plain colour around the objects' silhouettes kept all of them (83%). Inpainting
the background instead ("a plain black background", 20 steps) gave 71–75%: the model drew coloured fringes
around the objects, and at times a second object. An SDEdit pass after the fill, to blend the edges, gave
58–62% (strength 0.3–0.5): on black the model redraws the objects worse.
"""
from __future__ import annotations

import time
from typing import Callable

from PIL import Image

from ditflow.agents import scene as sc
from ditflow.pipelines.loading import info_of
from ditflow.schemas import ToolRecord
from ditflow.world import scenes as world

Pick = Callable[[list[Image.Image], str], Image.Image]  # (candidates, what they must show) → the best one


def best_of(images: list[Image.Image], description: str, pick: Pick | None) -> Image.Image:
    """The candidate `pick` prefers against `description` (the first, when there is no choice to make)."""
    return pick(images, description) if pick and len(images) > 1 else images[0]


def free_cell(taken: list[tuple], w: int, h: int) -> str:
    """The grid cell farthest from every box in `taken` (the top-left one when nothing is taken)."""
    def gap(pos: str) -> float:
        r, c = world.POSITION_CELL[pos]
        cx, cy = (c + 0.5) * w / 3, (r + 0.5) * h / 3
        return min((abs(cx - (b[0] + b[2]) / 2) + abs(cy - (b[1] + b[3]) / 2) for b in taken), default=0.0)

    return max((p for row in world.POSITIONS for p in row), key=gap)


def side_px(size: str | None, w: int, h: int) -> float:
    """The mean side of an object of `size` in a w×h panel (the world's sizes are for 64 px panels)."""
    return world.mean_side(size) * min(w, h) / world.PANEL


def place(thing: sc.Thing, cell: str, w: int, h: int) -> tuple[sc.Thing, tuple]:
    """One copy of `thing` named in `cell` (a prompt that names the cell keeps the model drawing inside the region;
    unplaced, it draws where it likes) and the box it is drawn in."""
    from ditflow.toolkit.edit import cell_box

    return sc.Thing(thing.shape, thing.color, thing.size, cell), cell_box(cell, side_px(thing.size, w, h), w, h)


def layout(description: str, w: int, h: int) -> tuple[list[tuple[sc.Thing, tuple]], str | None] | None:
    """Each object copy of the description, placed in a cell with the box it is drawn in (a lone copy: as
    described, with no box), and the background; None when the description is not a scene of world objects (an
    unknown phrase, or more copies than cells)."""
    from ditflow.agents.verify import expected_of

    exp = expected_of(description)
    copies = [t for t in exp.things for _ in range(t.count)]
    if not copies or exp.unknown or len(copies) > len(world.POSITION_CELL):
        return None
    if len(copies) == 1:  # a lone object (composed for its background) is drawn where the description says, if it does
        return [(copies[0], None)], exp.background
    placed: list[tuple[sc.Thing, tuple]] = []
    for t in sorted(copies, key=lambda t: t.position is None):  # named cells first, so free ones avoid them
        used = {p.position for p, _ in placed}
        # copies of a placed count ("two circles on the left") share a named cell: the second takes a free one
        cell = t.position if t.position and t.position not in used else free_cell([b for _, b in placed], w, h)
        placed.append(place(t, cell, w, h))
    return placed, exp.background


def needs_composing(pipe, description: str) -> bool:
    """Whether this model should draw `description` object by object, or on another background than its own."""
    info = info_of(pipe)
    if info.objects_per_prompt is None:
        return False
    from ditflow.agents.verify import expected_of

    exp = expected_of(description)
    if exp.unknown or not exp.things:
        return False
    return sum(t.count for t in exp.things) > info.objects_per_prompt or _repaints(info, exp.background)


def _repaints(info, background: str | None) -> bool:
    """Whether a scene on `background` gets its objects drawn on the model's own and this one filled in last."""
    return background in world.BACKGROUNDS and info.object_background not in (None, background)


def compose(pipe, description: str, seed: int, progress=None, steps: int | None = None,
            size: tuple[int, int] | None = None, candidates: int = 1,
            pick: Pick | None = None) -> tuple[Image.Image, list[ToolRecord]]:
    """Draw `description` one object at a time: the first object with the background in one generation, then
    each further copy inpainted into its cell, prompted with that copy alone. A plain background other than the
    one the model draws objects on best (`PipelineInfo.object_background`) is filled in last, around the objects'
    silhouettes. With `candidates` > 1 each draw makes that many in one batch, and `pick` chooses among them
    against the scene drawn so far. Returns the image and every tool record, the last one a `compose` record."""
    from ditflow.agents.verify import detections
    from ditflow.schemas import EditSpec, GenerateSpec
    from ditflow.toolkit.edit import edit, region_mask
    from ditflow.toolkit.generate import generate

    t0 = time.perf_counter()
    info = info_of(pipe)
    w, h = size or (info.panel, info.panel)
    got = layout(description, w, h)
    if got is None:
        raise ValueError(f"cannot compose {description!r}: it is not a scene of shapes-world objects")
    placed, background = got
    repaint = _repaints(info, background)
    drawn_on = info.object_background if repaint else background
    text = lambda *things: sc.scene_text(sc.Scene(things, drawn_on))  # noqa: E731
    choose = lambda images, k: best_of(images, text(*(t for t, _ in placed[:k + 1])), pick).convert("RGB")  # noqa: E731
    first = GenerateSpec(prompt=text(placed[0][0]), seed=seed, steps=steps, height=h, width=w, num_images=candidates)
    images, rec = generate(pipe, first, progress=progress)
    image, records = choose(images, 0), [rec]
    for k, (thing, box) in enumerate(placed[1:], start=1):
        _, seen = detections(image)  # whatever is drawn so far stays as it is
        mask = region_mask(image.size, [box], keep=[tuple(d.box) for d in seen])
        spec = EditSpec(prompt=text(thing), mode="inpaint", strength=1.0, seed=seed + k, steps=steps,
                        num_images=candidates)
        images, rec = edit(pipe, image, spec, mask=mask, progress=progress)
        image = choose(images, k)
        records.append(rec)
    if repaint:  # everything but the objects' own pixels becomes the plain background asked for
        image = world.repaint_background(image, [d.box for d in detections(image)[1]], background)
    records.append(ToolRecord(tool="compose", spec={"prompt": description, "seed": seed, "steps": steps},
                              seconds=time.perf_counter() - t0,
                              details={"layout": [{"prompt": text(t), "box": b and [round(x) for x in b]}
                                                  for t, b in placed], "candidates": candidates,
                                       "background_filled": background if repaint else None,
                                       "model": info.name}))
    return image, records
