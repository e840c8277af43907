"""Canvas layout is pure: grids, panel sizes, tags and masks are checked exhaustively."""
import math

import numpy as np
import pytest
from PIL import Image

from ditflow.schemas import MAX_PANELS
from ditflow.toolkit import canvas as cv
from ditflow.world import scenes as world


@pytest.mark.parametrize("n", range(1, MAX_PANELS + 1))
@pytest.mark.parametrize("aspect", [0.5, 1.0, 16 / 9, 2.0])
def test_grid_holds_n_without_empty_rows_and_is_near_square(n, aspect):
    rows, cols = cv.choose_grid(n, aspect, max_panels=MAX_PANELS)
    spare = rows * cols - n
    assert rows * cols >= n and spare < min(rows, cols)  # never a whole empty row or column
    canvas_aspect = cols * aspect / rows
    # no other grid without empty rows is closer to square by more than the spare-cell allowance
    for r in range(1, n + 1):
        c = math.ceil(n / r)
        if r * c - n < min(r, c) and r * c <= MAX_PANELS:
            assert abs(math.log(canvas_aspect)) <= abs(math.log(c * aspect / r)) + cv.SPARE_PENALTY + 1e-9


def test_primes_are_not_strips():
    assert cv.choose_grid(2) == (1, 2)
    assert cv.choose_grid(3, max_panels=4) == (2, 2)  # ChatDiT: 1×3
    assert cv.choose_grid(4) == (2, 2)
    assert cv.choose_grid(5, max_panels=9) == (2, 3)  # ChatDiT: 1×5
    assert cv.choose_grid(7, max_panels=9) == (3, 3)  # ChatDiT: 1×7
    assert cv.choose_grid(2, panel_aspect=2.0) == (2, 1)  # wide panels stack, so the canvas stays square


def test_panel_limit_errors_say_what_to_change():
    with pytest.raises(ValueError, match="max_panels=4.*raise max_panels"):
        cv.choose_grid(5, max_panels=4)
    with pytest.raises(ValueError, match="hard cap"):
        cv.choose_grid(3, max_panels=MAX_PANELS + 1)
    with pytest.raises(ValueError, match="at least one"):
        cv.choose_grid(0)


def test_panel_size_keeps_canvas_near_native_area():
    # FLUX.1: 1024² native, 512 panels. Up to 2×2 panels stay 512; 3×3 shrinks so the canvas stays ~1024².
    assert cv.panel_size(4, 1.0, 1024 * 1024, 512) == (512, 512)
    w, h = cv.panel_size(9, 1.0, 1024 * 1024, 512)
    assert w == h and w % 16 == 0 and abs(9 * w * h / (1024 * 1024) - 1) < 0.1
    # builtin: 64 px panels, trained on 128×128 canvases
    assert cv.panel_size(4, 1.0, 64 * 64, 64, multiple=8) == (64, 64)
    # aspect follows the inputs, area is kept
    w, h = cv.panel_size(2, 2.0, 1024 * 1024, 512)
    assert w % 16 == 0 and h % 16 == 0 and abs(w / h - 2) < 0.15 and abs(w * h / 512 ** 2 - 1) < 0.1
    with pytest.raises(ValueError, match="aspect"):
        cv.panel_size(1, 50.0, 1024, 32)


def test_tags_match_the_shapes_world_on_trained_layouts_and_extend_beyond():
    for grid, tags in world.LAYOUT_TAGS.items():
        assert cv.layout_tags(grid) == tags
    head, tags = cv.layout_tags((3, 3))
    assert head == "[NINE-PANEL]" and tags[0] == "[TOP-LEFT]" and tags[4] == "[CENTER]" and tags[7] == "[BOTTOM]"
    head, tags = cv.layout_tags((2, 3))
    assert tags == ("[TOP-LEFT]", "[TOP]", "[TOP-RIGHT]", "[BOTTOM-LEFT]", "[BOTTOM]", "[BOTTOM-RIGHT]")
    head, tags = cv.layout_tags((1, 4))
    assert head == "[FOUR-PANEL]" and tags == tuple(f"[PANEL-{i}]" for i in range(1, 5))
    assert len(set(cv.layout_tags((3, 2))[1])) == 6  # every cell has its own name


def test_group_prompt_matches_world_panel_caption():
    clauses = ["a red circle in the center", "a blue circle in the center"]
    assert cv.group_prompt((1, 2), "the same circle", clauses) == world.panel_caption((1, 2), "the same circle",
                                                                                     clauses)


def test_compose_split_roundtrip_and_masks():
    layout = cv.plan_layout(3, native_area=64 * 64, panel=64, max_panels=4, multiple=8)
    assert layout.grid == (2, 2) and layout.size == (128, 128)
    panels = [Image.new("RGB", (64, 64), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    canvas = cv.compose(layout, panels + [None])
    cells = cv.split(layout, canvas)
    for p, c in zip(panels, cells):
        assert np.array_equal(np.asarray(p), np.asarray(c))
    assert np.asarray(cells[3]).min() == cv.BLANK_RGB[0]
    m = cv.known_mask(layout, [True, False, False, True])
    assert m[:64, :64].min() == 1 and m[:64, 64:].max() == 0 and m[64:, 64:].min() == 1
    tok = cv.token_mask(m, 16).reshape(8, 8)  # row-major like FluxPipeline._pack_latents
    assert tok[:4, :4].min() == 1 and tok[:4, 4:].max() == 0 and tok[4:, :4].max() == 0
    with pytest.raises(ValueError, match="multiple of the token size"):
        cv.token_mask(np.ones((20, 16)), 16)
