"""The checkpointed state of a turn through the agents' graph, and the reads of it that more than one node makes.

`graph.py` wires the nodes and `repair.py` holds two of them (verify, repair); both read the state through here.
State values are the JSON form of the `ditflow.schemas` models (validated back into them at each node), so any
checkpointer stores them without custom serialisers.
"""
from __future__ import annotations

from typing import TypedDict

from ditflow.schemas import MAX_INPUTS


class TurnState(TypedDict, total=False):
    """Checkpointed state. `turns` is the conversation; everything else is the turn in progress."""

    turns: list[dict]  # [{"record": TurnRecord, "gallery": [GalleryItem]}] as JSON, oldest first
    instruction: str
    image_paths: list[str]
    out_dir: str
    verify: bool
    inputs: list[dict]  # InputImage, as described
    parse: dict  # {"request": ParsedRequest, "uses_gallery": bool, "notes": [...], "valid": bool, "source": str}
    plan: dict | None  # Plan
    files: dict[str, str]  # output index (as a string: JSON keys) → file name in out_dir
    tool_calls: list[dict]  # ToolRecord
    verdicts: list[dict]  # Verdict
    candidates: dict[str, list[dict]]  # output index → [original, repair 1, ...] with verdicts (agents.repair)
    to_repair: list[int]  # outputs the repair node works on next
    repairs: list[dict]  # RepairAttempt
    article: str | None
    captions: dict[str, str]  # output index → the page text the article gave it (kept for later pages)
    notes: list[str]
    left_out: list[str]  # what of the request the outputs cannot show (scope.left_out_parts)
    error: str | None
    timings: dict  # TurnTimings


def last_turn(state: TurnState) -> dict | None:
    turns = state.get("turns") or []
    return turns[-1] if turns else None


def turn_inputs(state: TurnState) -> list:
    """The images this turn's steps may reference: the attached ones, or the current set for a follow-up."""
    from ditflow.images import load_image

    if state["parse"]["uses_gallery"]:
        last = last_turn(state)
        return [load_image(g["path"]) for g in (last["gallery"] if last else [])][:MAX_INPUTS]
    return [load_image(p) for p in state.get("image_paths") or []]
