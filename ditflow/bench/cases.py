"""`ditflow bench cases`: whole agent turns on labelled cases, judged by what comes out (issue 30).

Each case of a set (`tests/data/<set>.jsonl`; the frozen `heldout_others` set is worded after public instruction
data, see its note) is run through `ditflow.Session` on one pipeline, with verification on: its input image
rendered from the labelled scene and, for restorations, degraded by an independent implementation (PIL's blur,
box blur, JPEG and resampling; numpy's Gaussian noise, clipped to 8 bits); its history turns first, in the same
session. An output then counts as satisfied when
- the turn's outcome is the expected one (images, a clarification, or a refusal as outside the model's world);
- the number of outputs is the expected one, and each output shows its labelled scene to the world's detector
  (every object with its colour, shape, size and one of its acceptable cells, nothing else, the background);
- "distinct" attributes differ across the outputs; the output has the labelled size;
- a restoration is closer to the clean image than the degraded input is (PSNR, the input resized bicubically);
- the input objects labelled "unchanged" are unchanged: PSNR ≥ 35 dB over each one's box (grown by 2 px).
Reported per category: cases satisfied, and for edits the share whose untouched objects stayed unchanged.
"""
from __future__ import annotations

import argparse
import io
import itertools
import json
import math
import random
import tempfile
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from ditflow.bench._data import DATA
from ditflow.schemas import CLARIFY, OUT_OF_WORLD
from ditflow.world import scenes as world

UNCHANGED_DB = 35.0
GOALS = {"satisfied": 0.90, "unchanged": 0.95}
RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "box": Image.BOX, "lanczos": Image.LANCZOS}


def load(name: str) -> list[dict]:
    path = Path(name) if name.endswith(".jsonl") else DATA / f"{name}.jsonl"
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# ----------------------------------------------------------------------------- inputs
def render_input(case: dict) -> Image.Image:
    """The case's input scene, drawn by the world's renderer (placement seeded by the case id)."""
    spec = case["input"]
    objs = tuple(world.ObjectSpec(o["color"], o["shape"], o.get("size"), o.get("position"))
                 for o in spec["objects"])
    panel = world.PanelSpec(objs, spec.get("background") or world.DEFAULT_BACKGROUND, True)
    return world.render(world.CanvasSpec((panel,)), random.Random(zlib.crc32(case["id"].encode())))


def degrade(img: Image.Image, d: dict, seed: int) -> Image.Image:
    """A degradation made by other libraries than ditflow's own operators."""
    op = d["op"]
    if op == "pil_gaussian_blur":
        return img.filter(ImageFilter.GaussianBlur(d["radius"]))
    if op == "pil_box_blur":
        return img.filter(ImageFilter.BoxBlur(d["radius"]))
    if op == "gaussian_noise":
        a = np.asarray(img, np.float32) + np.random.default_rng(seed).normal(0, d["sigma"], (img.height, img.width, 3))
        return Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8))
    if op == "pil_jpeg":
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(d["quality"]))
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if op == "pil_downscale":
        return img.resize(tuple(d["size"]), RESAMPLE[d.get("resample", "bicubic")])
    raise ValueError(f"unknown degradation op {op!r}")


def psnr(a: Image.Image, b: Image.Image, box: tuple | None = None) -> float:
    x, y = np.asarray(a.convert("RGB"), np.float64), np.asarray(b.convert("RGB"), np.float64)
    if box is not None:
        x0, y0, x1, y1 = box
        x, y = x[y0:y1, x0:x1], y[y0:y1, x0:x1]
    mse = ((x - y) ** 2).mean()
    return math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)


# ----------------------------------------------------------------------------- judging one output
def shows(expected: dict, image: Image.Image) -> tuple[bool, str]:
    """Whether `image` shows the labelled scene: each object (copies by count) matched one-to-one to a detection
    with its colour, shape, size and an acceptable cell; no other object; the background, when labelled."""
    img = image.convert("RGB")
    if img.size != (world.PANEL, world.PANEL):
        img = img.resize((world.PANEL, world.PANEL), Image.BICUBIC)
    bg, dets = world.detect(img)
    want = [o for o in expected.get("objects", []) for _ in range(o.get("count") or 1)]
    seen = ", ".join(f"{d.color} {d.shape} {d.position}" for d in dets) or "nothing"
    if expected.get("background") and bg != expected["background"]:
        return False, f"background {bg}"
    if len(dets) != len(want):
        return False, f"{len(dets)} objects for {len(want)}: {seen}"

    def fits(o: dict, d: world.Detection) -> bool:
        cells = o.get("position")
        cells = [cells] if isinstance(cells, str) else cells
        return (o["shape"] == d.shape and o.get("color") in (None, d.color) and o.get("size") in (None, d.size)
                and (not cells or d.position in cells))

    ok = any(all(fits(o, dets[j]) for o, j in zip(want, perm)) for perm in itertools.permutations(range(len(dets))))
    return ok, "" if ok else f"saw {seen}"


@dataclass
class Result:
    id: str
    category: str
    satisfied: bool
    why: str = ""
    unchanged: bool | None = None  # None: the case labels no untouched objects
    seconds: float = 0.0
    outcome: str = ""


def judge(case: dict, turn, clean: Image.Image | None, given: Image.Image | None) -> Result:
    exp = case["expect"]
    rec = turn.record
    err = rec.error or ""
    outcome = ("clarify" if err.startswith(CLARIFY) else "out_of_world" if err.startswith(OUT_OF_WORLD)
               else "error" if err else "images")
    r = Result(case["id"], case["category"], False, outcome=outcome)
    if outcome != exp["outcome"]:
        r.why = f"outcome {outcome} ({err[:120]})" if err else f"outcome {outcome}"
        return r
    if outcome != "images":
        r.satisfied = not rec.images
        r.why = "" if r.satisfied else "images written"
        return r
    images = turn.images
    n = exp.get("n_outputs", len(exp.get("outputs", [])))
    if len(images) != n:
        r.why = f"{len(images)} outputs for {n}"
        return r
    problems = []
    for k, (want, im) in enumerate(zip(exp.get("outputs", []), images)):
        ok, why = shows(want, im)
        if not ok:
            problems.append(f"#{k + 1} {why}")
    for attr in exp.get("distinct", []):
        values = [tuple(sorted(getattr(d, attr) for d in world.detect(im.convert("RGB"))[1])) for im in images]
        if len(set(values)) != len(values):
            problems.append(f"{attr} not distinct")
    if exp.get("size") and any(list(im.size) != list(exp["size"]) for im in images):
        problems.append(f"size {images[0].size}")
    if exp.get("restored") and clean is not None and given is not None:
        base = psnr(given.resize(clean.size, Image.BICUBIC) if given.size != clean.size else given, clean)
        got = psnr(images[0].resize(clean.size, Image.BICUBIC) if images[0].size != clean.size else images[0],
                   clean)
        if got < base:
            problems.append(f"restored {got:.1f} dB < input {base:.1f} dB")
    if "unchanged" in exp and clean is not None:
        _, dets = world.detect(clean)
        keep = [_input_box(case, i, dets) for i in exp["unchanged"]]
        r.unchanged = all(b is not None and psnr(images[-1], clean, b) >= UNCHANGED_DB for b in keep)
        if not r.unchanged:
            problems.append("an untouched object changed")
    r.satisfied = not problems
    r.why = "; ".join(problems)
    return r


def _input_box(case: dict, i: int, dets: list) -> tuple | None:
    """The box (grown by 2 px) of the input's labelled object `i`, found by its cell among the detections."""
    o = case["input"]["objects"][i]
    hit = [d for d in dets if d.position == o.get("position") and d.shape == o["shape"]]
    if len(hit) != 1:
        return None
    x0, y0, x1, y1 = hit[0].box
    return max(0, x0 - 2), max(0, y0 - 2), min(world.PANEL, x1 + 2), min(world.PANEL, y1 + 2)


# ----------------------------------------------------------------------------- running
def run_case(case: dict, pipe, work: Path, llm: str = "rules", verify: bool = True) -> Result:
    from ditflow.api import Session

    t0 = time.perf_counter()
    clean = given = None
    images: list[Path] = []
    if case.get("input"):
        clean = render_input(case)
        given = degrade(clean, case["degrade"], zlib.crc32(case["id"].encode())) if case.get("degrade") else clean
        path = work / f"{case['id']}-input.png"
        given.save(path)
        images = [path]
    turns = list(case.get("history", [])) + [case["instruction"]]
    with Session(pipeline=pipe, llm=llm, persist=False, verify=verify) as s:
        for k, text in enumerate(turns):
            try:
                turn = s.chat(text, images if k == 0 else [])
            except ValueError as e:  # refused before any agent ran
                from ditflow.schemas import TurnRecord

                turn = type("Refused", (), {"record": TurnRecord(turn=0, instruction=text, error=f"refused: {e}"),
                                            "images": []})()
        r = judge(case, turn, clean, given)
    r.seconds = time.perf_counter() - t0
    return r


def report(results: list[Result]) -> str:
    by = defaultdict(list)
    for r in results:
        by[r.category].append(r)
    lines = [f"{'category':<16}{'n':>5}{'satisfied':>11}{'unchanged':>11}{'s/case':>8}"]
    for cat in sorted(by) + ["all"]:
        rs = results if cat == "all" else by[cat]
        un = [r.unchanged for r in rs if r.unchanged is not None]
        lines.append(f"{cat:<16}{len(rs):>5}{sum(r.satisfied for r in rs) / len(rs):>11.1%}"
                     + (f"{sum(un) / len(un):>11.1%}" if un else f"{'—':>11}")
                     + f"{sum(r.seconds for r in rs) / len(rs):>8.1f}")
    n, k = len(results), sum(r.satisfied for r in results)
    lo, hi = wilson(k, n)
    lines.append(f"satisfied {k}/{n} = {k / n:.1%} (95% interval {lo:.1%}–{hi:.1%}; "
                 f"goal ≥ {GOALS['satisfied']:.0%})")
    return "\n".join(lines)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return c - h, c + h


def cli(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="ditflow bench cases", description=__doc__.splitlines()[0])
    ap.add_argument("--set", default="heldout_others", help="a tests/data/<name>.jsonl set, or a .jsonl path")
    ap.add_argument("--model", default="builtin")
    ap.add_argument("--llm", default="rules")
    ap.add_argument("--category", help="only this category")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--no-verify", dest="verify", action="store_false")
    ap.add_argument("--show-failures", action="store_true", help="one line per unsatisfied case")
    ap.add_argument("--show-all", action="store_true", help="one line per case, as it finishes")
    ap.add_argument("--json", type=Path, help="also write every result here")
    args = ap.parse_args(argv)
    from ditflow.pipelines.loading import load_pipeline

    cases = [c for c in load(args.set) if not args.category or c["category"] == args.category]
    cases = cases[: args.limit] if args.limit else cases
    pipe = load_pipeline(args.model, device="cpu")
    results = []
    with tempfile.TemporaryDirectory(prefix="ditflow-bench-cases-") as tmp:
        for c in cases:
            results.append(run_case(c, pipe, Path(tmp), args.llm, args.verify))
            r = results[-1]
            if args.show_all or (args.show_failures and not r.satisfied):
                print(f"  {r.id} [{r.category}] {'ok' if r.satisfied else r.why} ({r.seconds:.1f} s)", flush=True)
            if args.json:  # kept up to date, so a run cut short still counts what it did
                args.json.write_text(json.dumps([x.__dict__ for x in results], indent=1))
    print(f"set={args.set} model={args.model} llm={args.llm} verify={args.verify} n={len(cases)}")
    print(report(results))
    return 0
