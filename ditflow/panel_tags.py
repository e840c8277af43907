"""The multi-panel caption tags, In-Context-LoRA style: "[TWO-PANEL] overview; [LEFT] clause, [RIGHT] clause."

How a grid's tags are named, and where a caption's tagged clauses start. The shapes world writes its panel captions
in this grammar (`world/scenes.py`), the canvas its group prompts (`toolkit/canvas.py`), and clause routing reads
it (`pipelines/routing.py`), so it sits below all three and imports nothing of ditflow.
"""
from __future__ import annotations

import math

COUNT_WORDS = ("ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE")
MAX_GRID_SIDE = 6  # the largest rows or columns a caption's grid is looked for in


def layout_tags(grid: tuple[int, int]) -> tuple[str, tuple[str, ...]]:
    """("[FOUR-PANEL]", ("[TOP-LEFT]", ...)) for grids up to 3×3; "[PANEL-i]" beyond (e.g. 1×4 strips)."""
    rows, cols = grid
    n = rows * cols
    if n == 1:
        return "", ()
    head = f"[{COUNT_WORDS[n - 1]}-PANEL]" if n <= len(COUNT_WORDS) else f"[{n}-PANEL]"
    if rows > 3 or cols > 3:
        return head, tuple(f"[PANEL-{i + 1}]" for i in range(n))
    row_words = {1: ("",), 2: ("TOP", "BOTTOM"), 3: ("TOP", "", "BOTTOM")}[rows]
    col_words = {1: ("",), 2: ("LEFT", "RIGHT"), 3: ("LEFT", "", "RIGHT")}[cols]
    names = ["-".join(w for w in (rw, cw) if w) or "CENTER" for rw in row_words for cw in col_words]
    return head, tuple(f"[{name}]" for name in names)


def clause_starts(prompt: str, grid: tuple[int, int]) -> list[int] | None:
    """Where each panel's tagged clause starts in `prompt` (reading order), or None if the caption does not
    name this grid: its head tag, then every panel tag in order."""
    head, tags = layout_tags(grid)
    at = prompt.find(head) if head else -1
    if at < 0:
        return None
    starts, at = [], at + len(head)
    for tag in tags:
        at = prompt.find(tag, at)
        if at < 0:
            return None
        starts.append(at)
        at += len(tag)
    return starts


def grid_of_caption(prompt: str, token_rows: int, token_cols: int) -> tuple[int, int] | None:
    """The panel grid a tagged caption names on a canvas of token_rows × token_cols tokens, or None.

    Grids must split the canvas into whole tokens. Where tags fit two grids (a "[PANEL-i]" strip, 1×4 or 4×1),
    the one with the squarest panels wins."""
    found = []
    for rows in range(1, MAX_GRID_SIDE + 1):
        for cols in range(1, MAX_GRID_SIDE + 1):
            if rows * cols < 2 or token_rows % rows or token_cols % cols:
                continue
            if clause_starts(prompt, (rows, cols)) is not None:
                found.append((abs(math.log((token_cols / cols) / (token_rows / rows))), (rows, cols)))
    return min(found)[1] if found else None
