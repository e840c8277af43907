"""The `describe` tool: what the parser is told about an input image when the LLM cannot see it.

- A builtin shapes-world scene (plain palette background, palette-coloured objects) is read by the world's
  analytic attribute model (`world.detect`): "a red circle on the left on a black background".
- Anything else gets image statistics (size, dominant colour, brightness) plus the degradations the toolkit's
  classifier detects: "a 256x256 photo, mostly gray, dark, noisy".
"""
from __future__ import annotations

import logging

import numpy as np
from PIL import Image

from ditflow.agents import scene as sc
from ditflow.schemas import InputImage, SceneObject
from ditflow.world import scenes as world

log = logging.getLogger(__name__)

BACKGROUND_MATCH = 30.0  # RGB distance of the border median to a palette background for a shapes-world scene
OBJECT_MATCH = 60.0  # RGB distance of an object's median colour to its palette colour
DEGRADATION_WORD = {"noise": "noisy", "blur": "blurry", "sr2": "low-resolution", "sr4": "low-resolution",
                    "jpeg": "jpeg-compressed", "inpaint": "with missing parts"}
NAMED_COLORS = {**world.COLORS, **world.BACKGROUNDS, "brown": (140, 90, 50)}


def _distance(a, b) -> float:
    return float(np.sqrt(((np.asarray(a, np.float32) - np.asarray(b, np.float32)) ** 2).sum()))


def scene_objects(img: Image.Image) -> tuple[str, list[SceneObject]] | None:
    """The background and the objects of a shapes-world scene, in reading order (rows, then columns), each with
    its box so a request can point at one; None when `img` is not such a scene (checked, not assumed)."""
    a = np.asarray(img.convert("RGB"))
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]).astype(np.float32)
    bg_rgb = np.median(border, 0)
    bg = min(world.BACKGROUNDS, key=lambda n: _distance(world.BACKGROUNDS[n], bg_rgb))
    if _distance(world.BACKGROUNDS[bg], bg_rgb) > BACKGROUND_MATCH:
        return None
    _, dets = world.detect(img)
    if not dets or len(dets) > 6:
        return None
    for d in dets:
        x0, y0, x1, y1 = d.box
        crop = a[y0:y1, x0:x1].reshape(-1, 3).astype(np.float32)
        fg = crop[np.sqrt(((crop - world.BACKGROUNDS[bg]) ** 2).sum(1)) > world.FG_DISTANCE]
        if len(fg) == 0 or _distance(np.median(fg, 0), world.COLORS[d.color]) > OBJECT_MATCH:
            return None
    dets = sorted(dets, key=lambda d: (world.POSITION_CELL[d.position], d.box[0], d.box[1]))
    side = min(img.size)
    return bg, [SceneObject(id=k + 1, shape=d.shape, color=d.color, position=d.position, box=tuple(d.box),
                            size="small" if d.side * world.PANEL / side < world.SMALL_LARGE_SPLIT else "large")
                for k, d in enumerate(dets)]


def as_scene(background: str | None, objects: list[SceneObject]) -> sc.Scene:
    """The phrase-level scene of read objects (the world's default background left unnamed, as captions do)."""
    things = tuple(sc.Thing(o.shape, o.color, o.size, o.position) for o in objects)
    return sc.Scene(things, background if background != world.DEFAULT_BACKGROUND else None)


def shapes_scene(img: Image.Image) -> sc.Scene | None:
    """The shapes-world scene `img` shows, or None when it is not one."""
    read = scene_objects(img)
    return as_scene(*read) if read else None


def statistics(img: Image.Image) -> str:
    a = np.asarray(img.convert("RGB"), np.float32)
    mean = a.reshape(-1, 3).mean(0)
    colour = min(NAMED_COLORS, key=lambda n: _distance(NAMED_COLORS[n], mean))
    light = a.mean() / 255
    tone = "dark, " if light < 0.3 else "bright, " if light > 0.8 else ""
    return f"a {img.width}x{img.height} photo, {tone}mostly {colour}"


def degradations(img: Image.Image) -> list[str]:
    """Degradation names the toolkit's classifier finds, most likely first; [] when it is not available."""
    try:
        from ditflow.toolkit.degradation import detect_degradations

        return [name for name, _ in detect_degradations(img)]
    except (FileNotFoundError, ImportError, OSError, ValueError) as e:  # classifier weights not trained/shipped
        log.info("describe: no degradation classifier (%s); describing without it", e)
        return []


def describe_image(img: Image.Image, index: int) -> InputImage:
    """An `InputImage` for the parser: a shapes-world caption or statistics, with detected degradations."""
    found = degradations(img)
    read = scene_objects(img)
    text = sc.scene_text(as_scene(*read)) if read else statistics(img)
    words = list(dict.fromkeys(DEGRADATION_WORD[d] for d in found if d in DEGRADATION_WORD))
    if words:
        text += ", " + ", ".join(words)
    bg, objects = read or (None, [])
    return InputImage(index=index, description=text, degradations=found, objects=objects, background=bg)
