"""`ditflow bench ideabench PATH -o DIR`: run IDEA-Bench cases and write outputs where its scripts look for them.

IDEA-Bench (https://arxiv.org/abs/2412.11767) ships one folder per case:
    PATH/dataset/<task>_<NNNN>/instruction.txt   the instruction
                              meta.json         with `output_image_count` (and optionally `input_images`)
                              *.jpg / *.png     the input images (all image files, by name, unless meta lists them)
and scores `outputs/<model>/<case>/0001.jpg, 0002.jpg ...` (its `scripts/stitch_image.py`, then an MLLM judge).
This runner writes exactly that, plus our own run folders (`DIR/runs/<case>/`: plan, manifest) and a summary
`DIR/ideabench.json`. It resumes: a case whose images and run manifest are complete is skipped. Scoring needs
the judge, which is outside this machine; ChatDiT's published overall score is 23.19.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import time
from pathlib import Path

from pydantic import BaseModel, Field

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
CHATDIT_SCORE = 23.19  # ChatDiT on IDEA-Bench, https://arxiv.org/abs/2412.12571


class Case(BaseModel):
    name: str
    folder: Path
    instruction: str
    output_count: int = Field(ge=1)
    inputs: list[Path] = Field(default_factory=list)


class CaseResult(BaseModel):
    case: str
    status: str  # done | incomplete | failed | skipped
    expected: int
    produced: int = 0
    seconds: float = 0.0
    error: str | None = None


def dataset_root(path: Path) -> Path:
    return path / "dataset" if (path / "dataset").is_dir() else path


def read_case(folder: Path) -> Case:
    """One case folder → Case; a broken meta.json names the file and the field to fix."""
    meta_path = folder / "meta.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{meta_path}: not readable JSON ({e})") from e
    count = meta.get("output_image_count") if isinstance(meta, dict) else None
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"{meta_path}: output_image_count must be a positive integer, got {count!r}")
    if isinstance(meta.get("input_images"), list):
        inputs = [folder / str(name) for name in meta["input_images"]]
    else:
        inputs = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    instruction = (folder / "instruction.txt").read_text(encoding="utf-8").strip()
    return Case(name=folder.name, folder=folder, instruction=instruction, output_count=count, inputs=inputs)


def find_cases(path: str | Path) -> list[Case]:
    """Every folder under PATH (or PATH/dataset) holding instruction.txt and meta.json, sorted by name."""
    root = dataset_root(Path(path))
    if not root.is_dir():
        raise FileNotFoundError(f"{path} is not a folder; give the IDEA-Bench root (with dataset/) or dataset/")
    folders = sorted({p.parent for p in root.rglob("meta.json") if (p.parent / "instruction.txt").is_file()},
                     key=lambda p: p.name)
    if not folders:
        raise ValueError(f"no IDEA-Bench cases under {root}: expected <task>_<NNNN>/instruction.txt and meta.json")
    return [read_case(f) for f in folders]


def model_dir_name(model: str) -> str:
    """`builtin` → `ditflow-builtin`; `black-forest-labs/FLUX.1-dev` → `ditflow-FLUX.1-dev`."""
    tail = Path(model.rstrip("/")).name or "model"
    return "ditflow-" + re.sub(r"[^A-Za-z0-9_.-]", "_", tail)


def outputs_complete(folder: Path, count: int) -> bool:
    return all((folder / f"{i:04d}.jpg").is_file() for i in range(1, count + 1))


def run_case(session, case: Case, out: Path, model_name: str) -> CaseResult:
    from ditflow.api import read_manifest
    from ditflow.images import load_image, save_image_atomic

    target = out / "outputs" / model_name / case.name
    run_dir = out / "runs" / case.name
    manifest = read_manifest(run_dir)
    if manifest is not None and outputs_complete(target, min(case.output_count, len(manifest.images))):
        produced = min(case.output_count, len(manifest.images))
        status = "skipped" if produced == case.output_count else "incomplete"
        return CaseResult(case=case.name, status=status, expected=case.output_count, produced=produced)
    staging = out / "runs" / ".staging" / case.name
    shutil.rmtree(staging, ignore_errors=True)
    t0 = time.perf_counter()
    try:
        turn = session.run(case.instruction, case.inputs, staging, task={"ideabench_case": case.name})
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # one case's failure is recorded; the benchmark goes on
        return CaseResult(case=case.name, status="failed", expected=case.output_count,
                          seconds=time.perf_counter() - t0, error=f"{type(e).__name__}: {e}")
    shutil.rmtree(run_dir, ignore_errors=True)
    os.replace(staging, run_dir)
    images = [run_dir / Path(p).name for p in turn.record.images][: case.output_count]
    for i, src in enumerate(images, 1):  # IDEA-Bench reads JPEGs named from 0001
        save_image_atomic(load_image(src), target / f"{i:04d}.jpg", quality=95)
    status = "done" if len(images) == case.output_count else ("failed" if not images else "incomplete")
    return CaseResult(case=case.name, status=status, expected=case.output_count, produced=len(images),
                      seconds=time.perf_counter() - t0, error=turn.record.error)


def cli(argv: list[str]) -> int:
    from rich.console import Console
    from rich.table import Table

    from ditflow.api import Session
    from ditflow.cli.run import add_engine_args
    from ditflow.sessions import write_json_atomic

    p = argparse.ArgumentParser(prog="ditflow bench ideabench", description=__doc__.splitlines()[0])
    p.add_argument("path", type=Path, help="IDEA-Bench root (holding dataset/) or its dataset/ folder")
    p.add_argument("-o", "--out", required=True, type=Path, help="writes DIR/outputs/<model>/<case>/0001.jpg ...")
    p.add_argument("--model-name", help="folder name under outputs/ (default ditflow-<model>)")
    p.add_argument("--limit", type=int, help="run only the first N cases")
    p.add_argument("--cases", help="only cases whose name contains this text")
    add_engine_args(p)
    args = p.parse_args(argv)
    cases = find_cases(args.path)
    if args.cases:
        cases = [c for c in cases if args.cases in c.name]
    cases = cases[: args.limit] if args.limit else cases
    console = Console(stderr=True)
    results: list[CaseResult] = []
    with Session(model=args.model, llm=args.llm, seed=args.seed, device=args.device, dtype=args.dtype,
                 verify=args.verify, persist=False) as session:
        model_name = args.model_name or model_dir_name(session.settings.model)
        for case in cases:
            result = run_case(session, case, args.out, model_name)
            results.append(result)
            console.print(f"{case.name}: {result.status} {result.produced}/{result.expected}"
                          + (f" ({result.error})" if result.error else ""), highlight=False)
            write_json_atomic(args.out / "ideabench.json",
                              {"model_name": model_name, "settings": session.settings.public(),
                               "dataset": str(args.path), "cases": [r.model_dump() for r in results]})
    table = Table("status", "cases")
    for status in ("done", "skipped", "incomplete", "failed"):
        table.add_row(status, str(sum(r.status == status for r in results)))
    Console().print(table)
    print(f"outputs: {args.out / 'outputs' / model_name} — score them with IDEA-Bench's scripts "
          f"(ChatDiT: {CHATDIT_SCORE})")
    return 1 if any(r.status == "failed" for r in results) else 0
