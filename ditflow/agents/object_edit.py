"""Object-level edits on the toolkit: each `ObjectEdit` of an output becomes the smallest tool call that makes it,
and nothing outside the objects it names changes.

- recolor on a plain background: the object's own pixels re-tinted from its colour to the new one, each keeping
  its share of object and background (so the silhouette and its soft edge stay exactly), no model call; kept when
  the detector reads the new colour there, else inpainted as below (an inpainted recolour at times lost the object);
- recolor otherwise, reshape, resize: the object's region is inpainted (grown to the large side for a resize up),
  the other objects kept out of it, prompted with the object alone in its cell (the builtin model draws one placed
  object well, `toolkit/edit.py`);
- move: the toolkit's move (the object's own pixels lifted and set down in the cell, the place it leaves refilled);
- remove: the object's region inpainted with the plain background;
- add: a region in the named (or the farthest free) cell inpainted with the new object;
- duplicate: the object's own pixels copied into the cell, so the copy is the same object;
- swap: both lifted, both places refilled, each set down at the other's centre;
- background: everything but the objects' silhouettes filled with the new plain colour (as `compose` does).

Every inpaint composites the original outside its mask, so the untouched objects and the background elsewhere
stay exactly as they were. On a plain shapes-world background an inpainted region is then flattened around the
one object it must show: the model draws faint fringes and, at times, a stray second object. Where checking is
free (the detector), each inpaint draws several candidates in one batch and keeps the one whose region shows what
was asked.
"""
from __future__ import annotations

import time

import numpy as np
from PIL import Image
from scipy import ndimage

from ditflow.agents import scene as sc
from ditflow.pipelines.loading import info_of
from ditflow.schemas import EditSpec, InputImage, ObjectEdit, SceneObject, ToolRecord
from ditflow.world import scenes as world

SHAPES_CANDIDATES = 3  # inpaint candidates per object where the detector checks them in milliseconds
KEEP_GAP = 2  # px (of a 64 px panel) kept clear around the objects that stay, beyond the region mask's own 1 px
Box = tuple[int, int, int, int]


def _prompt(shape: str, color: str | None, size: str | None, cell: str, background: str | None) -> str:
    return sc.scene_text(sc.Scene((sc.Thing(shape, color, size, cell),), background if background != "white" else None))


def _square_box(centre: tuple[float, float], side: float, w: int, h: int) -> Box:
    """A side×side box around `centre`, shifted inside the image."""
    x0 = min(max(0.0, centre[0] - side / 2), w - side)
    y0 = min(max(0.0, centre[1] - side / 2), h - side)
    return round(x0), round(y0), round(x0 + side), round(y0 + side)


def _centre(box: Box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def _moved(box: Box, dx: int, dy: int) -> Box:
    return box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy


def _iou(a: Box, b: Box) -> float:
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def _clear_of(box: Box, keep: list[Box], position: str, w: int, h: int) -> Box:
    """`box` slid, as little as it takes, off the kept objects' boxes and inside the panel, its centre still in
    `position`'s cell: "a small square below the large circle" has room once it sits low in its cell, where the
    circle's box reaches into the cell's top. None when no such place exists."""
    g = world.OBJECT_GAP  # the gap the world leaves between objects, so the detector reads two, not one

    def clear(b: Box) -> bool:
        return (b[0] >= 0 and b[1] >= 0 and b[2] <= w and b[3] <= h and world.cell_of(b, w, h) == position
                and not any(b[0] < k[2] + g and k[0] - g < b[2] and b[1] < k[3] + g and k[1] - g < b[3]
                            for k in keep))
    reach = max(w, h) // 3  # a cell
    shifts = sorted(((dx, dy) for dx in range(-reach, reach + 1) for dy in range(-reach, reach + 1)),
                    key=lambda d: (abs(d[0]) + abs(d[1]), d))
    return next((_moved(box, dx, dy) for dx, dy in shifts if clear(_moved(box, dx, dy))), None)


def _in_region(d: world.Detection, region: np.ndarray) -> bool:
    x, y = _centre(d.box)
    return bool(region[min(region.shape[0] - 1, int(y)), min(region.shape[1] - 1, int(x))])


class ObjectEditor:
    """Applies the edits of one output to its source image, tracking each object's box by its id."""

    def __init__(self, pipe, image: Image.Image, source: InputImage, seed: int, progress=None,
                 candidates: int = 1):
        self.pipe, self.seed, self.progress, self.candidates = pipe, seed, progress, candidates
        self.image = image.convert("RGB")
        self.w, self.h = self.image.size
        self.background = source.background or world.DEFAULT_BACKGROUND
        self.plain = source.background in world.BACKGROUNDS
        self.boxes: dict[int, Box] = {o.id: tuple(o.box) for o in source.objects if o.box}
        self.objects = {o.id: o for o in source.objects}
        self.drawn_on = info_of(pipe).object_background  # the background this model draws objects on best
        self.records: list[ToolRecord] = []
        self.calls = 0

    # ---- tool calls
    def _edit(self, spec: EditSpec, mask: Image.Image, image: Image.Image | None = None) -> list[Image.Image]:
        from ditflow.toolkit.edit import edit

        images, rec = edit(self.pipe, image or self.image, spec, mask=mask, progress=self.progress)
        self.records.append(rec)
        self.calls += 1
        return images

    def _others(self, *ids: int) -> list[Box]:
        """The boxes of the objects that stay, grown by KEEP_GAP px: a redrawn object that touched one would read
        as one object with it, and its rim would change the neighbour's pixels."""
        g = round(KEEP_GAP * min(self.w, self.h) / world.PANEL)
        return [(b[0] - g, b[1] - g, b[2] + g, b[3] + g) for i, b in self.boxes.items() if i not in ids]

    def _redraw(self, box: Box, keep: list[Box], thing: sc.Thing | None, like: Box | None = None) -> Box | None:
        """Inpaint the region around `box` to show `thing` in its cell (None: the plain background); the box of
        what it drew (None when it drew nothing)."""
        from ditflow.toolkit.edit import plain_background, region_mask

        mask = region_mask(self.image.size, [box], keep=keep)
        region = np.asarray(mask) > 0
        drawn_on = self.background
        if thing is not None and self.plain and self.drawn_on not in (None, self.background):
            drawn_on = self.drawn_on  # drawn on the model's own background, set into this one below (compose.py)
        prompt = (_prompt(thing.shape, thing.color, thing.size, thing.position, drawn_on) if thing
                  else plain_background(self.background))
        n = self.candidates if thing else 1
        spec = EditSpec(prompt=prompt, mode="inpaint", strength=1.0, seed=self.seed + self.calls, num_images=n)
        images = self._edit(spec, mask, self._recoloured_background(drawn_on))
        scored = [(self._score(im, region, thing, like), k) for k, im in enumerate(images)]
        best = images[max(scored)[1]]
        self.image, found = self._flatten(best, region, thing)
        return found

    def _recoloured_background(self, background: str) -> Image.Image:
        """The image with its plain background (everything but the objects) in `background`."""
        if background == self.background:
            return self.image
        return world.repaint_background(self.image, list(self.boxes.values()), background)

    def _score(self, image: Image.Image, region: np.ndarray, thing: sc.Thing | None, like: Box | None) -> float:
        """How well a candidate's region shows `thing`: one object of its shape, colour, size and cell, and, for a
        restyled object, over the box it had (`like`), so it keeps its place and extent."""
        _, dets = world.detect(image)
        inside = [d for d in dets if _in_region(d, region)]
        if thing is None:
            return -len(inside)
        if not inside:
            return -1.0
        d = max(inside, key=lambda d: d.area)
        return (3 * (len(inside) == 1) + 2 * (d.shape == thing.shape) + 2 * (thing.color in (None, d.color))
                + (thing.size in (None, d.size)) + (d.position == thing.position) + (_iou(d.box, like) if like else 0))

    def _flatten(self, image: Image.Image, region: np.ndarray,
                 thing: sc.Thing | None) -> tuple[Image.Image, Box | None]:
        """On a plain background: inside the region, everything but the largest object becomes the background."""
        _, dets = world.detect(image)
        inside = [d for d in dets if _in_region(d, region)]
        keep = max(inside, key=lambda d: d.area) if inside and thing is not None else None
        if not self.plain:
            return image, keep.box if keep else None
        a = np.asarray(self.image).copy()  # outside the region: exactly as it was
        silhouette = world.object_mask(image, keep.box) if keep else np.zeros(region.shape, bool)
        a[region] = world.BACKGROUNDS[self.background]
        a[region & silhouette] = np.asarray(image)[region & silhouette]
        return Image.fromarray(a), keep.box if keep else None

    def _lift(self, i: int) -> np.ndarray:
        return world.object_mask(self.image, self.boxes[i])

    def _fill_behind(self, lifts: list[np.ndarray]) -> Image.Image:
        """The image with the places `lifts` leave refilled with the background (inpainted, then flattened)."""
        from ditflow.toolkit.edit import mask_image, move_hole, plain_background

        hole = np.zeros((self.h, self.w), bool)
        for lift in lifts:
            hole |= move_hole(lift)
        spec = EditSpec(prompt=plain_background(self.background), mode="inpaint", strength=1.0,
                        seed=self.seed + self.calls)
        behind = self._edit(spec, mask_image(hole))[0]
        if self.plain:
            a = np.asarray(behind).copy()
            a[hole] = world.BACKGROUNDS[self.background]
            behind = Image.fromarray(a)
        return behind

    def _cell_offset(self, i: int, cell: str, avoid: list[Box]) -> tuple[int, int]:
        from ditflow.toolkit.edit import move_offset

        return move_offset(self.boxes[i], cell, self.w, self.h, avoid=avoid)

    # ---- the ops
    def apply(self, e: ObjectEdit) -> None:
        getattr(self, f"_{e.op}")(e)

    def _recolor(self, e: ObjectEdit) -> None:
        for i in e.targets:
            o = self.objects[i] = self.objects[i].model_copy(update={"color": e.color})
            if not self._tint(i, e.color):
                self._restyle(i, o)

    def _tint(self, i: int, color: str) -> bool:
        """Recolour object `i` in place on a plain background: each pixel near its silhouette is background plus a
        share α of (old colour − background), and becomes background plus α of (new − background). True when
        the detector then reads the new colour at its box (the image is changed only then)."""
        if not self.plain or i not in self.boxes or color not in world.COLORS:
            return False
        x0, y0, x1, y1 = self.boxes[i]
        box = (max(0, x0 - 1), max(0, y0 - 1), min(self.w, x1 + 1), min(self.h, y1 + 1))
        a = np.asarray(self.image, np.float32)
        silhouette = world.object_mask(self.image, box)
        if not silhouette.any():
            return False
        bg = np.asarray(world.BACKGROUNDS[self.background], np.float32)
        old = np.median(a[silhouette], 0) - bg
        if float(old @ old) < 1.0:
            return False
        region = np.zeros(silhouette.shape, bool)
        region[box[1]:box[3], box[0]:box[2]] = True
        for ox0, oy0, ox1, oy1 in self._others(i):  # a neighbour's pixels are its own
            region[max(0, oy0):oy1, max(0, ox0):ox1] = False
        near = ndimage.binary_dilation(silhouette, iterations=1) & region
        alpha = np.clip(((a - bg) @ old) / float(old @ old), 0.0, 1.0)[..., None]
        out = a.copy()
        out[near] = (bg + alpha * (np.asarray(world.COLORS[color], np.float32) - bg))[near]
        tinted = Image.fromarray(out.round().clip(0, 255).astype(np.uint8))
        _, dets = world.detect(tinted)
        if not any(d.color == color and _iou(d.box, self.boxes[i]) > 0.5 for d in dets):
            return False
        self.image = tinted
        return True

    def _reshape(self, e: ObjectEdit) -> None:
        for i in e.targets:
            upd = {k: getattr(e, k) for k in ("shape", "color", "size") if getattr(e, k)}
            o = self.objects[i] = self.objects[i].model_copy(update=upd)
            self._restyle(i, o)

    def _resize(self, e: ObjectEdit) -> None:
        for i in e.targets:
            o = self.objects[i] = self.objects[i].model_copy(update={"size": e.size})
            side = world.mean_side(e.size) * min(self.w, self.h) / world.PANEL
            box = _square_box(_centre(self.boxes[i]), max(side, 1.0), self.w, self.h)
            grown = (min(box[0], self.boxes[i][0]), min(box[1], self.boxes[i][1]),
                     max(box[2], self.boxes[i][2]), max(box[3], self.boxes[i][3]))
            self._restyle(i, o, grown)

    def _restyle(self, i: int, o: SceneObject, box: Box | None = None) -> None:
        drawn = self._redraw(box or self.boxes[i], self._others(i), sc.Thing(o.shape, o.color, o.size, o.position),
                             like=None if box else self.boxes[i])
        if drawn:
            self.boxes[i] = drawn

    def _remove(self, e: ObjectEdit) -> None:
        for i in e.targets:
            self._redraw(self.boxes.pop(i), self._others(), None)
            self.objects.pop(i, None)

    def _add(self, e: ObjectEdit) -> None:
        from ditflow.toolkit.edit import cell_box

        side = world.mean_side(e.size) * min(self.w, self.h) / world.PANEL
        box = tuple(round(v) for v in cell_box(e.position, side, self.w, self.h))
        keep = self._others()
        thing = sc.Thing(e.shape, e.color, e.size, e.position)
        clear = _clear_of(box, keep, e.position, self.w, self.h)
        drawn = None
        if clear not in (box, None) and self.plain:
            # a neighbour reaches into the cell: the model draws at the cell's centre, so draw it there on an
            drawn = self._draw_apart_and_place(box, keep, thing)  # empty panel and set it down clear of them
        if drawn is None:
            drawn = self._redraw(box, keep, thing)
        new_id = max(self.objects, default=0) + 1
        self.objects[new_id] = SceneObject(id=min(new_id, 9), shape=e.shape, color=e.color, size=e.size,
                                           position=e.position)
        if drawn:
            self.boxes[new_id] = drawn

    def _draw_apart_and_place(self, box: Box, keep: list[Box], thing: sc.Thing) -> Box | None:
        from ditflow.toolkit.edit import paste

        scene_image = self.image
        self.image = Image.new("RGB", scene_image.size, world.BACKGROUNDS[self.background])
        try:
            found = self._redraw(box, [], thing)
            alone = self.image
        finally:
            self.image = scene_image
        if found is None:
            return None
        target = _clear_of(found, keep, thing.position, self.w, self.h)
        if target is None:
            return None
        offset = target[0] - found[0], target[1] - found[1]
        self.image = paste(self.image, alone, world.object_mask(alone, found), offset)
        return target

    def _move(self, e: ObjectEdit) -> None:
        from ditflow.toolkit.edit import paste

        for i in e.targets:
            offset = self._cell_offset(i, e.position, self._others(i))
            lift = self._lift(i)
            src = self.image
            self.image = paste(self._fill_behind([lift]), src, lift, offset)
            self.boxes[i] = _moved(self.boxes[i], *offset)

    def _duplicate(self, e: ObjectEdit) -> None:
        from ditflow.agents.references import _free_cell
        from ditflow.toolkit.edit import paste

        i = e.targets[0]
        cell = e.position or _free_cell(list(self.objects.values()))
        if cell is None:
            raise ValueError("no free cell is left for the copy")
        offset = self._cell_offset(i, cell, list(self.boxes.values()))
        self.image = paste(self.image, self.image, self._lift(i), offset)
        new_id = max(self.objects, default=0) + 1
        self.objects[new_id] = self.objects[i].model_copy(update={"id": min(new_id, 9), "position": cell})
        self.boxes[new_id] = _moved(self.boxes[i], *offset)

    def _swap(self, e: ObjectEdit) -> None:
        from ditflow.toolkit.edit import paste

        a, b = e.targets
        (ax, ay), (bx, by) = _centre(self.boxes[a]), _centre(self.boxes[b])
        dx, dy = round(bx - ax), round(by - ay)
        la, lb = self._lift(a), self._lift(b)
        src = self.image
        out = paste(self._fill_behind([la, lb]), src, la, (dx, dy))
        self.image = paste(out, src, lb, (-dx, -dy))
        pa, pb = self.objects[a].position, self.objects[b].position
        self.objects[a] = self.objects[a].model_copy(update={"position": pb})
        self.objects[b] = self.objects[b].model_copy(update={"position": pa})
        self.boxes[a], self.boxes[b] = _moved(self.boxes[a], dx, dy), _moved(self.boxes[b], -dx, -dy)

    def _background(self, e: ObjectEdit) -> None:
        if not self.plain:
            raise ValueError("a background change keeps the objects only on a plain background")
        self.image = world.repaint_background(self.image, list(self.boxes.values()), e.color)
        self.background = e.color


def edit_objects(pipe, image: Image.Image, source: InputImage, edits: list[ObjectEdit], seed: int, progress=None,
                 candidates: int = 1) -> tuple[Image.Image, list[ToolRecord]]:
    """`image` (the input `source` describes, read into objects) with `edits` made, and every tool call's record,
    the last one an `object-edit` summary."""
    if not source.objects or any(o.box is None for o in source.objects):
        raise ValueError("an object edit needs the source image read into objects with boxes")
    t0 = time.perf_counter()
    ed = ObjectEditor(pipe, image, source, seed, progress, candidates)
    for e in edits:
        ed.apply(e)
    summary = ToolRecord(tool="object-edit", spec={"edits": [e.model_dump(exclude_none=True) for e in edits],
                                                   "seed": seed},
                         seconds=time.perf_counter() - t0, details={"tool_calls": ed.calls, "candidates": candidates})
    return ed.image, ed.records + [summary]
