"""The labelled sets the benchmarks read from tests/data: the instruction sets (`instructions_<split>.jsonl`) of
`bench agents` and its `--verify` turns, and the judged case sets of `bench cases`. Not a benchmark itself."""
from __future__ import annotations

import json
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "tests" / "data"


def load_cases(split: str = "dev") -> list[dict]:
    splits = ("dev", "test") if split == "all" else (split,)
    cases = []
    for s in splits:
        with open(DATA / f"instructions_{s}.jsonl") as f:
            cases += [dict(json.loads(line), split=s) for line in f if line.strip()]
    return cases
