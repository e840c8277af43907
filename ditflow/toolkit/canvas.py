"""The in-context grid: how many rows × cols, how big each panel is, what the panels are called, and the masks that
say which panels are known. Pure functions of their arguments (style.md §8), so they are tested exhaustively.

In-context generation (In-Context LoRA, arXiv 2410.23775; ChatDiT, arXiv 2412.12571) puts several related images
on one canvas and lets the DiT's full attention keep them consistent.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ditflow.panel_tags import layout_tags  # the tag grammar, shared with the shapes world
from ditflow.schemas import MAX_PANELS

SPARE_PENALTY = 0.3  # cost of one empty cell, per panel, against |log aspect| of the canvas
BLANK_RGB = (245, 245, 245)  # spare cells without a reference: the shapes world's white background


@dataclass(frozen=True)
class Layout:
    """A canvas: `rows × cols` panels of `panel_w × panel_h` px, of which the first `n` are used."""

    rows: int
    cols: int
    panel_w: int
    panel_h: int
    n: int

    @property
    def grid(self) -> tuple[int, int]:
        return self.rows, self.cols

    @property
    def cells(self) -> int:
        return self.rows * self.cols

    @property
    def size(self) -> tuple[int, int]:  # (width, height) of the canvas, as PIL counts
        return self.cols * self.panel_w, self.rows * self.panel_h

    def box(self, i: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of cell i in reading order."""
        r, c = divmod(i, self.cols)
        return c * self.panel_w, r * self.panel_h, (c + 1) * self.panel_w, (r + 1) * self.panel_h


# ----------------------------------------------------------------------------- grid and panel size
def choose_grid(n: int, panel_aspect: float = 1.0, max_panels: int = 4) -> tuple[int, int]:
    """rows × cols for n panels of aspect w/h, making the canvas closest to square.

    Unlike ChatDiT, which lays prime counts out as 1×n strips, this allows spare cells (5 → 2×3, 7 → 3×3):
    a 1×5 strip is far from any canvas the model was trained on. No whole row or column is left empty.
    """
    if n < 1:
        raise ValueError(f"a canvas needs at least one panel, got {n}")
    if max_panels > MAX_PANELS:
        raise ValueError(f"max_panels={max_panels} is above the hard cap of {MAX_PANELS}")
    if n > max_panels:
        raise ValueError(f"{n} panels do not fit one canvas (max_panels={max_panels}); raise max_panels "
                         f"(up to {MAX_PANELS}) or generate in several canvases")
    best, best_cost = (1, n), math.inf
    for rows in range(1, n + 1):
        cols = math.ceil(n / rows)
        spare = rows * cols - n
        if spare >= min(rows, cols) or rows * cols > MAX_PANELS:
            continue
        aspect = cols * panel_aspect / rows  # canvas width / height
        cost = abs(math.log(aspect)) + SPARE_PENALTY * spare / n
        if cost < best_cost - 1e-9 or (abs(cost - best_cost) < 1e-9 and cols > best[1]):  # ties: wide canvas
            best, best_cost = (rows, cols), cost
    return best


def native_canvas_area(native_area: int, panel: int) -> int:
    """Pixels a canvas may hold: the larger of the model's native area and a 2×2 grid of native panels. FLUX.1
    (1024² native, 512 panels) and the builtin model (64 px panels, trained on 128×128 canvases) agree on this."""
    return max(native_area, 4 * panel * panel)


def panel_size(cells: int, aspect: float, native_area: int, panel: int, multiple: int = 16) -> tuple[int, int]:
    """(w, h) of one panel: native panel area, shrunk so the canvas stays near the native canvas area; aspect w/h
    follows the inputs; sides are multiples of `multiple` (VAE factor × 2 for packed FLUX latents)."""
    if not 0.1 <= aspect <= 10:
        raise ValueError(f"panel aspect {aspect:.3g} is out of range; use images between 1:10 and 10:1")
    area = min(panel * panel, native_canvas_area(native_area, panel) / cells)
    w = max(multiple, round(math.sqrt(area * aspect) / multiple) * multiple)
    h = max(multiple, round(math.sqrt(area / aspect) / multiple) * multiple)
    return int(w), int(h)


def plan_layout(n: int, *, native_area: int, panel: int, aspect: float = 1.0, max_panels: int = 4,
                multiple: int = 16) -> Layout:
    rows, cols = choose_grid(n, aspect, max_panels)
    w, h = panel_size(rows * cols, aspect, native_area, panel, multiple)
    return Layout(rows, cols, w, h, n)


def aspect_of(images: list[Image.Image]) -> float:
    """Panel aspect w/h from the input images (the median, so one odd input does not reshape every panel)."""
    return float(np.median([im.width / im.height for im in images])) if images else 1.0


# ----------------------------------------------------------------------------- tags and prompts
def group_prompt(grid: tuple[int, int], overview: str, clauses: list[str]) -> str:
    """In-Context-LoRA style caption: tag, overview, then one tagged clause per cell (matches world.panel_caption)."""
    tag, tags = layout_tags(grid)
    if not tags:
        return clauses[0] if clauses else overview
    body = ", ".join(f"{t} {c}" for t, c in zip(tags, clauses))
    return f"{tag} {overview}; {body}."


# ----------------------------------------------------------------------------- images and masks
def compose(layout: Layout, panels: list[Image.Image | None]) -> Image.Image:
    """Paste panels (resized to the panel size) into a canvas in reading order; `None` cells stay blank."""
    canvas = Image.new("RGB", layout.size, BLANK_RGB)
    for i, im in enumerate(panels[: layout.cells]):
        if im is not None:
            x0, y0, _, _ = layout.box(i)
            canvas.paste(im.convert("RGB").resize((layout.panel_w, layout.panel_h), Image.BICUBIC), (x0, y0))
    return canvas


def split(layout: Layout, canvas: Image.Image) -> list[Image.Image]:
    """All cells of a canvas, in reading order."""
    return [canvas.crop(layout.box(i)) for i in range(layout.cells)]


def known_mask(layout: Layout, known: list[bool]) -> np.ndarray:
    """(H, W) float mask of the canvas: 1 where the cell is known (a reference or blank), 0 where generated."""
    m = np.zeros((layout.size[1], layout.size[0]), np.float32)
    for i, k in enumerate(known):
        if k:
            x0, y0, x1, y1 = layout.box(i)
            m[y0:y1, x0:x1] = 1.0
    return m


def token_mask(mask: np.ndarray, patch: int) -> np.ndarray:
    """Pixel mask (H, W) → one value per packed FLUX latent token (H/patch · W/patch,), row-major like
    `FluxPipeline._pack_latents`. A token counts as known only if every pixel under it is known."""
    h, w = mask.shape
    if h % patch or w % patch:
        raise ValueError(f"mask {w}×{h} is not a multiple of the token size {patch} px")
    blocks = mask.reshape(h // patch, patch, w // patch, patch)  # (h', p, w', p)
    return blocks.min(axis=(1, 3)).reshape(-1)
