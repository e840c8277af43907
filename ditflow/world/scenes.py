"""The shapes world: procedural captioned scenes, multi-panel canvases, and an analytic scorer.

The contract lives in `shared/docs/shapes-world.md` (copied to `docs/shapes-world.md`). Read bottom-up:
vocabulary → specs → rendering → captions → sampling → detection → scoring.
"""
from __future__ import annotations

import itertools
import math
import random
from collections import defaultdict
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from ditflow.panel_tags import layout_tags

# ----------------------------------------------------------------------------- vocabulary
PANEL = 64  # one panel is 64×64 RGB
BACKGROUNDS = {"white": (245, 245, 245), "black": (20, 20, 20), "gray": (128, 128, 128)}
DEFAULT_BACKGROUND = "white"
COLORS = {
    "red": (220, 40, 40), "orange": (245, 140, 30), "yellow": (235, 210, 40), "green": (40, 170, 60),
    "cyan": (40, 190, 210), "blue": (40, 80, 220), "purple": (140, 60, 190), "pink": (240, 120, 180),
}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZE_RANGES = {"small": (12, 16), "large": (26, 30), None: (12, 30)}  # bounding-box side, px
SMALL_LARGE_SPLIT = 21  # px: a detected side below this is "small"
POSITIONS = (
    ("top-left", "top", "top-right"),
    ("left", "center", "right"),
    ("bottom-left", "bottom", "bottom-right"),
)
POSITION_CELL = {name: (r, c) for r, row in enumerate(POSITIONS) for c, name in enumerate(row)}
MIN_COMPONENT_PX = 20  # connected components smaller than this are noise
FG_DISTANCE = 48.0  # RGB distance from the background that counts as foreground
OBJECT_GAP = 3  # px between the boxes of two objects

# Panel tags of the world's layouts (rows, cols), in reading order (the grammar: panel_tags.py).
LAYOUT_TAGS = {grid: layout_tags(grid) for grid in ((1, 1), (1, 2), (2, 1), (2, 2))}
CLOCKWISE_2x2 = (0, 1, 3, 2)  # panel indices of a 2×2 grid, clockwise from top-left


# ----------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class ObjectSpec:
    """One named object; `None` attributes are unspecified. `count` copies share every attribute."""

    color: str
    shape: str
    size: str | None = None  # "small" | "large" | None
    position: str | None = None  # one of POSITIONS, or None
    count: int = 1


@dataclass(frozen=True)
class PanelSpec:
    objects: tuple[ObjectSpec, ...]
    background: str = DEFAULT_BACKGROUND
    background_named: bool = False  # whether the caption says the background

    @property
    def n_objects(self) -> int:
        return sum(o.count for o in self.objects)


@dataclass(frozen=True)
class CanvasSpec:
    """A whole canvas: a grid of panels in reading order, plus the relation the overview states."""

    panels: tuple[PanelSpec, ...]
    layout: tuple[int, int] = (1, 1)
    overview: str = ""
    kind: str = "single"  # benchmark bucket: single | paraphrase | two | count | position | background | panels

    @property
    def size(self) -> tuple[int, int]:  # (height, width) in px
        return self.layout[0] * PANEL, self.layout[1] * PANEL


@dataclass
class Sample:
    image: Image.Image
    caption: str
    spec: CanvasSpec


# ----------------------------------------------------------------------------- rendering
@dataclass(frozen=True)
class Placed:
    color: str
    shape: str
    side: int
    cx: float  # box centre, px
    cy: float

    @property
    def box(self) -> tuple[float, float, float, float]:
        h = self.side / 2
        return self.cx - h, self.cy - h, self.cx + h, self.cy + h


def draw_object(draw: ImageDraw.ImageDraw, obj: Placed, ox: int = 0, oy: int = 0) -> None:
    x0, y0, x1, y1 = obj.box
    x0, y0, x1, y1 = x0 + ox, y0 + oy, x1 + ox - 1, y1 + oy - 1
    fill = COLORS[obj.color]
    if obj.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif obj.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif obj.shape == "triangle":  # apex up
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    elif obj.shape == "diamond":
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}; expected one of {SHAPES}")


def _centre_range(cell: int, side: int) -> tuple[float, float]:
    lo, hi = cell * PANEL / 3 + 1, (cell + 1) * PANEL / 3 - 1  # 1 px inside the cell: pixel rounding
    half = side / 2
    return max(lo, half + 1), min(hi, PANEL - half - 1)


def _overlaps(a: Placed, others: list[Placed]) -> bool:
    ax0, ay0, ax1, ay1 = a.box
    for b in others:
        bx0, by0, bx1, by1 = b.box
        if ax0 < bx1 + OBJECT_GAP and bx0 < ax1 + OBJECT_GAP and ay0 < by1 + OBJECT_GAP and by0 < ay1 + OBJECT_GAP:
            return True
    return False


def place(panel: PanelSpec, rng: random.Random, tries: int = 200) -> list[Placed] | None:
    """Realise a panel spec as concrete, non-overlapping objects; None if it cannot be placed."""
    for _ in range(tries):
        placed: list[Placed] = []
        ok = True
        for spec in panel.objects:
            for _ in range(spec.count):
                obj = _place_one(spec, rng, placed)
                if obj is None:
                    ok = False
                    break
                placed.append(obj)
            if not ok:
                break
        if ok:
            return placed
    return None


def _place_one(spec: ObjectSpec, rng: random.Random, placed: list[Placed], tries: int = 50) -> Placed | None:
    for _ in range(tries):
        side = rng.randint(*SIZE_RANGES[spec.size])
        if spec.position is None:
            cx = rng.uniform(side / 2 + 1, PANEL - side / 2 - 1)
            cy = rng.uniform(side / 2 + 1, PANEL - side / 2 - 1)
        else:
            r, c = POSITION_CELL[spec.position]
            (xl, xh), (yl, yh) = _centre_range(c, side), _centre_range(r, side)
            if xl > xh or yl > yh:
                continue
            cx, cy = rng.uniform(xl, xh), rng.uniform(yl, yh)
        obj = Placed(spec.color, spec.shape, side, round(cx * 2) / 2, round(cy * 2) / 2)
        if not _overlaps(obj, placed):
            return obj
    return None


def render(spec: CanvasSpec, rng: random.Random | None = None) -> Image.Image:
    """Draw a canvas; raises ValueError when a panel cannot be placed without overlap."""
    rng = rng or random.Random(0)
    rows, cols = spec.layout
    img = Image.new("RGB", (cols * PANEL, rows * PANEL))
    draw = ImageDraw.Draw(img)
    for i, panel in enumerate(spec.panels):
        r, c = divmod(i, cols)
        ox, oy = c * PANEL, r * PANEL
        draw.rectangle((ox, oy, ox + PANEL - 1, oy + PANEL - 1), fill=BACKGROUNDS[panel.background])
        objs = place(panel, rng)
        if objs is None:
            raise ValueError(f"cannot place {panel} without overlap")
        for obj in objs:
            draw_object(draw, obj, ox, oy)
    return img


# ----------------------------------------------------------------------------- captions
# Wordings seen in training. The held-out paraphrase set (EVAL_*) is never used for training, so the
# benchmark measures whether the model understood the meaning through MiniLM, not memorised a phrasing.
TRAIN_PREFIXES = ("", "", "", "draw ", "paint ", "an image of ", "a picture of ", "I'd like ", "please draw ",
                  "show ", "render ", "make ")
EVAL_PREFIXES = ("could you sketch ", "generate ", "create an illustration of ", "I want to see ",
                 "produce a drawing of ")
TRAIN_POSITION_WORDS = {
    "top-left": ("at the top left", "in the top-left corner", "in the upper left", "at the top-left"),
    "top": ("at the top", "at the top center", "at the top middle", "near the top"),
    "top-right": ("at the top right", "in the top-right corner", "in the upper right", "at the top-right"),
    "left": ("on the left", "at the left", "on the left side", "at the middle left"),
    "center": ("in the center", "in the centre", "in the middle", "at the center"),
    "right": ("on the right", "at the right", "on the right side", "at the middle right"),
    "bottom-left": ("at the bottom left", "in the bottom-left corner", "in the lower left", "at the bottom-left"),
    "bottom": ("at the bottom", "at the bottom center", "at the bottom middle", "near the bottom"),
    "bottom-right": ("at the bottom right", "in the bottom-right corner", "in the lower right",
                     "at the bottom-right"),
}
EVAL_POSITION_WORDS = {
    "top-left": ("up in the left corner", "in the upper-left area"),
    "top": ("along the top edge", "in the upper centre"),
    "top-right": ("up in the right corner", "in the upper-right area"),
    "left": ("at the left edge", "on the left-hand side"),
    "center": ("right in the middle", "in the very centre"),
    "right": ("at the right edge", "on the right-hand side"),
    "bottom-left": ("down in the left corner", "in the lower-left area"),
    "bottom": ("along the bottom edge", "in the lower centre"),
    "bottom-right": ("down in the right corner", "in the lower-right area"),
}
TRAIN_BACKGROUND_WORDS = ("on a {} background", "against a {} backdrop", "with a {} background", "on {}")
EVAL_BACKGROUND_WORDS = ("over a plain {} field", "set on {}")
NUMBER_WORDS = {2: ("two", "2", "a pair of"), 3: ("three", "3")}
TWO_WORDS = ("two", "2")


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _plural(shape: str) -> str:
    return shape + "s"


@dataclass(frozen=True)
class Wording:
    prefixes: tuple[str, ...] = TRAIN_PREFIXES
    positions: dict = field(default_factory=lambda: TRAIN_POSITION_WORDS)
    backgrounds: tuple[str, ...] = TRAIN_BACKGROUND_WORDS


TRAIN_WORDING = Wording()
EVAL_WORDING = Wording(EVAL_PREFIXES, EVAL_POSITION_WORDS, EVAL_BACKGROUND_WORDS)


def object_phrase(o: ObjectSpec, rng: random.Random, wording: Wording = TRAIN_WORDING) -> str:
    size = f"{o.size} " if o.size else ""
    if o.count == 1:
        noun = f"{_a(size or o.color)} {size}{o.color} {o.shape}"
    else:
        noun = f"{rng.choice(NUMBER_WORDS[o.count])} {size}{o.color} {_plural(o.shape)}"
    if o.position:
        noun += " " + rng.choice(wording.positions[o.position])
    return noun


def panel_phrase(p: PanelSpec, rng: random.Random, wording: Wording = TRAIN_WORDING) -> str:
    parts = [object_phrase(o, rng, wording) for o in p.objects]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    if p.background_named:
        text += " " + rng.choice(wording.backgrounds).format(p.background)
    return text


def caption(spec: CanvasSpec, rng: random.Random, wording: Wording = TRAIN_WORDING) -> str:
    if spec.layout == (1, 1):
        return rng.choice(wording.prefixes) + panel_phrase(spec.panels[0], rng, wording)
    return panel_caption(spec.layout, spec.overview, [panel_phrase(p, rng, wording) for p in spec.panels])


def panel_caption(layout: tuple[int, int], overview: str, clauses: list[str]) -> str:
    """In-Context-LoRA style: tag, overview, then one tagged clause per panel."""
    tag, panel_tags = layout_tags(layout)
    body = ", ".join(f"{t} {c}" for t, c in zip(panel_tags, clauses))
    return f"{tag} {overview}; {body}."


# ----------------------------------------------------------------------------- sampling
KINDS = ("single", "two", "count", "position", "background", "panels")


def _random_object(rng: random.Random, position: bool, size: bool, count: int = 1) -> ObjectSpec:
    return ObjectSpec(
        color=rng.choice(list(COLORS)), shape=rng.choice(SHAPES),
        size=rng.choice(("small", "large")) if size else None,
        position=rng.choice([p for row in POSITIONS for p in row]) if position else None, count=count,
    )


def _background(rng: random.Random, named: bool) -> tuple[str, bool]:
    if not named:
        return DEFAULT_BACKGROUND, False
    return rng.choice(list(BACKGROUNDS)), True


def sample_panel(rng: random.Random, kind: str) -> PanelSpec:
    """A placeable panel spec of one benchmark kind."""
    for _ in range(100):
        bg, named = _background(rng, kind == "background" or rng.random() < 0.25)
        if kind in ("single", "position", "background", "paraphrase"):
            objs = (_random_object(rng, position=kind != "background" or rng.random() < 0.5,
                                   size=rng.random() < 0.4),)
        elif kind == "two":
            a = _random_object(rng, position=rng.random() < 0.6, size=rng.random() < 0.3)
            b = _random_object(rng, position=a.position is not None, size=rng.random() < 0.3)
            if (a.color, a.shape) == (b.color, b.shape) or (a.position and a.position == b.position):
                continue
            objs = (a, b)
        elif kind == "count":
            count = rng.choice((2, 3))
            obj = _random_object(rng, position=False, size=rng.random() < 0.5, count=count)
            if count == 3 and obj.size == "large":  # three 28 px objects barely fit a 64 px panel
                obj = replace(obj, size="small")
            objs = (obj,)
        else:
            raise ValueError(f"unknown panel kind {kind!r}")
        spec = PanelSpec(objs, bg, named)
        if place(spec, rng, tries=20) is not None:
            return spec
    raise RuntimeError(f"could not sample a placeable {kind} panel")


def sample_panels(rng: random.Random, layout: tuple[int, int] | None = None) -> CanvasSpec:
    """A multi-panel canvas whose panels share one shape (colour change, or movement)."""
    layout = layout or rng.choice([(1, 2), (1, 2), (2, 1), (2, 2)])
    n = layout[0] * layout[1]
    shape = rng.choice(SHAPES)
    size = rng.choice((None, "small", "large")) if n == 2 else None  # four clauses must fit TEXT_LEN
    cells = [p for row in POSITIONS for p in row]
    story = rng.choice(("colours", "moving"))
    if story == "colours":
        colors = rng.sample(list(COLORS), n) if rng.random() < 0.7 else [rng.choice(list(COLORS))] * n
        pos = rng.choice(cells)
        positions = [pos] * n
        overview = (f"the same {shape} in {('two', 'three', 'four')[n - 2]} colours" if len(set(colors)) > 1
                    else f"the same {colors[0]} {shape} {('twice', 'three times', 'four times')[n - 2]}")
        if len(set(colors)) > 1 and n > 2 and rng.random() < 0.5:
            overview = f"{_a(colors[0])} {colors[0]} {shape} that turns {colors[-1]}"
    else:
        color = rng.choice(list(COLORS))
        colors = [color] * n
        if layout == (2, 2):
            corners = ["top-left", "top-right", "bottom-right", "bottom-left"]
            start = rng.randrange(4)
            order = [corners[(start + k) % 4] for k in range(4)]
            positions = [None] * 4
            for k, idx in enumerate(CLOCKWISE_2x2):
                positions[idx] = order[k]
            overview = f"{_a(color)} {color} {shape} moving clockwise"
        else:
            positions = rng.sample(cells, n)
            overview = f"{_a(color)} {color} {shape} moving"
    bg = rng.choice(list(BACKGROUNDS)) if n == 2 and rng.random() < 0.2 else DEFAULT_BACKGROUND
    panels = tuple(PanelSpec((ObjectSpec(c, shape, size, p),), bg, bg != DEFAULT_BACKGROUND)
                   for c, p in zip(colors, positions))
    return CanvasSpec(panels, layout, overview, "panels")


def sample_spec(rng: random.Random, kind: str | None = None) -> CanvasSpec:
    kind = kind or rng.choices(KINDS, weights=(3, 2, 1.5, 1, 1, 2.5))[0]
    if kind == "panels":
        return sample_panels(rng)
    return CanvasSpec((sample_panel(rng, kind),), (1, 1), "", kind)


def sample(rng: random.Random, kind: str | None = None, wording: Wording = TRAIN_WORDING) -> Sample:
    spec = sample_spec(rng, kind)
    return Sample(render(spec, rng), caption(spec, rng, wording), spec)


def heldout_prompts(n_per_kind: int = 50, seed: int = 10_000) -> list[tuple[str, CanvasSpec]]:
    """The benchmark's prompt set: captions never produced by training (`seen_in_training` is False)."""
    rng = random.Random(seed)
    out: list[tuple[str, CanvasSpec]] = []
    for kind in ("single", "paraphrase", "two", "count", "background", "panels"):
        got = 0
        while got < n_per_kind:
            if kind == "panels":
                spec = sample_panels(rng, (1, 2))
            else:
                spec = CanvasSpec((sample_panel(rng, "single" if kind == "paraphrase" else kind),), (1, 1), "",
                                  kind)
            text = caption(spec, rng, EVAL_WORDING if kind == "paraphrase" else TRAIN_WORDING)
            if kind != "paraphrase" and seen_in_training(text):
                continue
            out.append((text, spec))
            got += 1
    return out


def seen_in_training(text: str) -> bool:
    """Training skips every caption whose stable hash lands in the held-out bucket (1 in 16)."""
    import zlib

    return zlib.crc32(text.encode()) % 16 != 0


# ----------------------------------------------------------------------------- detection
@dataclass(frozen=True)
class Detection:
    color: str
    shape: str
    side: int  # max(bbox w, h), px
    position: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)
    area: int

    @property
    def size(self) -> str:
        return "small" if self.side < SMALL_LARGE_SPLIT else "large"


def _nearest(rgb: np.ndarray, table: dict[str, tuple[int, int, int]]) -> str:
    names = list(table)
    d = ((np.asarray([table[n] for n in names], np.float32) - rgb[None]) ** 2).sum(1)
    return names[int(d.argmin())]


def detect_background(panel: np.ndarray) -> str:
    border = np.concatenate([panel[0], panel[-1], panel[:, 0], panel[:, -1]]).astype(np.float32)
    return _nearest(np.median(border, 0), BACKGROUNDS)


def classify_shape(mask: np.ndarray) -> str:
    """Shape of a cropped boolean mask: fill ratio, then where the mass sits (triangle bottom-heavy)."""
    h, w = mask.shape
    fill = mask.mean()
    if fill > 0.88:
        return "square"
    if fill > 0.66:
        return "circle"
    ys = np.nonzero(mask)[0]
    offset = (ys.mean() + 0.5) / h - 0.5  # triangle ≈ +0.17, diamond ≈ 0
    top, bottom = mask[: max(1, h // 4)].mean(), mask[h - max(1, h // 4):].mean()
    return "triangle" if offset > 0.07 or bottom > 2 * top + 0.15 else "diamond"


def foreground(a: np.ndarray, background: str) -> np.ndarray:
    """Pixels of an RGB array that are not the named background colour (bool, H×W)."""
    bg = np.asarray(BACKGROUNDS[background], np.float32)
    return np.sqrt(((a.astype(np.float32) - bg) ** 2).sum(-1)) > FG_DISTANCE


def object_mask(panel: Image.Image, box: tuple[int, int, int, int]) -> np.ndarray:
    """The silhouette of the object inside `box` (x0, y0, x1, y1): its non-background pixels, as an H×W bool array
    of the whole panel."""
    a = np.asarray(panel.convert("RGB"))
    x0, y0, x1, y1 = (int(v) for v in box)
    out = np.zeros(a.shape[:2], bool)
    out[y0:y1, x0:x1] = foreground(a[y0:y1, x0:x1], detect_background(a))
    return out


def repaint_background(image: Image.Image, boxes, background: str) -> Image.Image:
    """`image` with everything but the silhouettes of the objects in `boxes` set to the plain `background`."""
    keep = np.zeros((image.height, image.width), bool)
    for box in boxes:
        keep |= object_mask(image, box)
    a = np.asarray(image.convert("RGB")).copy()
    a[~keep] = BACKGROUNDS[background]
    return Image.fromarray(a)


def cell_of(box: tuple[float, float, float, float], w: int, h: int) -> str:
    """The 3×3 position name of the cell that holds the centre of `box` (x0, y0, x1, y1) in a w×h panel."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return POSITIONS[min(2, max(0, int(cy * 3 / h)))][min(2, max(0, int(cx * 3 / w)))]


SCENE_BORDER_SHARE = 0.85  # of a scene's border, median-filtered, that lies on its background
SCENE_PALETTE_DISTANCE = 40.0  # RGB distance from the border's median to the nearest world background (pure white
# and pure black, 17 and 35 from the world's, count: a user's own drawing of shapes on them is a scene)


def looks_like_scene(image: Image.Image) -> bool:
    """Whether an image, however degraded, is a shapes-world scene: its border, median-filtered (5 px) so noise
    and compression fall away, lies mostly on one colour that is one of the world's backgrounds. Over 60 scenes
    and 60 photo crops degraded by every tool family, every scene passed (border share ≥ 0.87, palette distance
    ≤ 11) and 3 of 120 held-out photo crops did."""
    img = image.convert("RGB")
    if min(img.size) < PANEL:  # the shorter side to the panel, so the 5 px filter means what it means on a scene
        f = PANEL / min(img.size)
        img = img.resize((round(img.width * f), round(img.height * f)), Image.BICUBIC)
    m = ndimage.median_filter(np.asarray(img, np.float32), size=(5, 5, 1))
    border = np.concatenate([m[0], m[-1], m[:, 0], m[:, -1]])
    bg = np.median(border, 0)
    share = float((np.sqrt(((border - bg) ** 2).sum(-1)) < FG_DISTANCE).mean())
    palette = min(float(np.sqrt(((bg - np.asarray(c, np.float32)) ** 2).sum())) for c in BACKGROUNDS.values())
    return share >= SCENE_BORDER_SHARE and palette <= SCENE_PALETTE_DISTANCE


def detect(panel: Image.Image | np.ndarray) -> tuple[str, list[Detection]]:
    """Background name and the objects of one panel (any size; positions are thirds of it)."""
    a = np.asarray(panel.convert("RGB") if isinstance(panel, Image.Image) else panel)
    h, w = a.shape[:2]
    bg_name = detect_background(a)
    labels, n = ndimage.label(foreground(a, bg_name))
    found: list[Detection] = []
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        comp = labels[sl] == i
        area = int(comp.sum())
        if area < MIN_COMPONENT_PX:
            continue
        core = ndimage.binary_erosion(comp) if area > 60 else comp
        pix = a[sl][core if core.any() else comp].astype(np.float32)
        color = _nearest(np.median(pix, 0), COLORS)
        y0, x0 = sl[0].start, sl[1].start
        y1, x1 = sl[0].stop, sl[1].stop
        found.append(Detection(color, classify_shape(comp), max(x1 - x0, y1 - y0), cell_of((x0, y0, x1, y1), w, h),
                               (x0, y0, x1, y1), area))
    return bg_name, found


def split_panels(img: Image.Image, layout: tuple[int, int]) -> list[Image.Image]:
    rows, cols = layout
    pw, ph = img.width // cols, img.height // rows
    return [img.crop((c * pw, r * ph, (c + 1) * pw, (r + 1) * ph)) for r in range(rows) for c in range(cols)]


# ----------------------------------------------------------------------------- scoring
ATTRIBUTES = ("color", "shape", "size", "position")


@dataclass
class PanelVerdict:
    satisfied: bool
    background_ok: bool
    count_ok: bool
    attributes: dict[str, list[bool]]  # attribute -> one bool per named object copy that states it
    detections: list[Detection]
    background: str


def _matches(o: ObjectSpec, d: Detection, attrs: tuple[str, ...] = ATTRIBUTES) -> bool:
    return all(getattr(o, a) is None or getattr(o, a) == getattr(d, a) for a in attrs)


def score_panel(spec: PanelSpec, panel: Image.Image | np.ndarray) -> PanelVerdict:
    bg, dets = detect(panel)
    wanted = [o for o in spec.objects for _ in range(o.count)]
    count_ok = len(dets) == len(wanted)
    # Best assignment of detections to named objects, by attributes matched (≤3 objects: brute force).
    best, best_hits = None, -1
    pool = dets + [None] * max(0, len(wanted) - len(dets))
    for perm in itertools.permutations(range(len(pool)), len(wanted)):
        hits = sum(sum(getattr(o, a) is None or (pool[j] is not None and getattr(o, a) == getattr(pool[j], a))
                       for a in ATTRIBUTES) for o, j in zip(wanted, perm))
        if hits > best_hits:
            best, best_hits = perm, hits
    attributes: dict[str, list[bool]] = defaultdict(list)
    all_ok = True
    for o, j in zip(wanted, best or ()):
        d = pool[j]
        for a in ATTRIBUTES:
            if getattr(o, a) is not None:
                ok = d is not None and getattr(o, a) == getattr(d, a)
                attributes[a].append(ok)
                all_ok &= ok
        all_ok &= d is not None
    background_ok = bg == spec.background
    return PanelVerdict(all_ok and count_ok and background_ok, background_ok, count_ok, dict(attributes), dets, bg)


def score_canvas(spec: CanvasSpec, img: Image.Image) -> list[PanelVerdict]:
    h, w = spec.size
    if img.size != (w, h):
        img = img.resize((w, h), Image.NEAREST)
    return [score_panel(p, im) for p, im in zip(spec.panels, split_panels(img, spec.layout))]


@dataclass
class Report:
    """Accuracy per prompt kind (a canvas counts when every panel is satisfied) and per attribute."""

    per_kind: dict[str, float]
    per_attribute: dict[str, float]
    n: int
    overall: float
    passed: tuple[bool, ...] = ()  # per canvas, in input order: for paired comparisons of two runs

    def as_dict(self) -> dict:
        return {"n": self.n, "overall": self.overall, "per_kind": self.per_kind, "per_attribute": self.per_attribute}


def score_many(pairs: list[tuple[CanvasSpec, Image.Image]]) -> Report:
    kind_hits: dict[str, list[bool]] = defaultdict(list)
    attr_hits: dict[str, list[bool]] = defaultdict(list)
    passed = []
    for spec, img in pairs:
        verdicts = score_canvas(spec, img)
        passed.append(all(v.satisfied for v in verdicts))
        kind_hits[spec.kind].append(passed[-1])
        for v in verdicts:
            attr_hits["background"].append(v.background_ok)
            attr_hits["count"].append(v.count_ok)
            for a, oks in v.attributes.items():
                attr_hits[a].extend(oks)
    mean = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
    allk = [x for xs in kind_hits.values() for x in xs]
    return Report({k: mean(v) for k, v in kind_hits.items()}, {a: mean(v) for a, v in attr_hits.items()},
                  len(pairs), mean(allk), tuple(passed))


def paired_change(base: tuple[bool, ...], other: tuple[bool, ...]) -> dict:
    """Score change from `base` to `other` in points, with its 95% normal interval, from per-prompt differences of the
    same prompts and seeds (`Report.passed` of two runs), and the prompts lost and gained."""
    d = [int(b) - int(a) for a, b in zip(base, other, strict=True)]
    n = len(d)
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1) if n > 1 else 0.0
    return dict(score_change_points=100 * mean, ci95_points=100 * 1.96 * (var / n) ** 0.5,
                lost=d.count(-1), gained=d.count(1))


def with_color(spec: ObjectSpec, color: str) -> ObjectSpec:
    return replace(spec, color=color)


def canvas_from_panel(panel: PanelSpec, kind: str = "single") -> CanvasSpec:
    return CanvasSpec((panel,), (1, 1), "", kind)


def mean_side(size: str | None) -> int:
    lo, hi = SIZE_RANGES[size]
    return int(math.floor((lo + hi) / 2))
