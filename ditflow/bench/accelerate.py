"""`ditflow bench accelerate`: the product's main path with and without --accelerate, side by side in one run.

Each request goes through `Session.run`, as `ditflow run` sends it (parse, plan, tools, verify and repair), once
per setting in alternating order, on Sessions loaded before the clock starts; a repetition repeats that. It prints
each request's median seconds per setting, the ratio to the first setting, and how many outputs verified, so a
faster run that only got faster by failing shows up as such.

The requests touch every tool that denoises: a single generation, a composed scene, a picture book's canvas, an
object edit and a restoration of pictures drawn here with PIL (not by the model). The agents keep canvases near
the model's native size (64 × 64 px on the builtin, an 8² token grid), far below where local attention beats
SDPA (`kernels/crossover.json`); `--canvas 512` adds a row that calls the generate tool itself on a 512 × 512
canvas (a 64² grid) through the same Sessions, to show the setting where the crossover turns local attention on.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

REQUESTS = (  # (name, instruction, input maker or None)
    ("one object", "a large red circle on the left", None),
    ("composed scene", "three green triangles on a black background", None),
    ("picture book", "a four-page picture book about a red circle that turns blue", None),
    ("object edit", "make the top left triangle red", "triangles"),
    ("restoration", "this picture is really noisy, can you clean it up?", "noisy"),
)


def triangles(path: Path) -> Path:
    """Three green triangles on black, drawn with PIL: an input the model did not make."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (64, 64), (0, 0, 0))
    draw = ImageDraw.Draw(img)
    for x, y in ((4, 4), (40, 6), (22, 40)):
        draw.polygon([(x + 10, y), (x + 20, y + 18), (x, y + 18)], fill=(0, 200, 0))
    img.save(path)
    return path


def noisy(path: Path) -> Path:
    """A circle and a square on white with Gaussian noise σ = 0.12, clipped and quantised to 8 bits."""
    import numpy as np
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (64, 64), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.ellipse((6, 8, 28, 30), fill=(220, 30, 30))
    draw.rectangle((36, 34, 58, 56), fill=(30, 60, 220))
    a = np.asarray(img, dtype=np.float32) / 255 + np.random.default_rng(0).normal(0, 0.12, (64, 64, 3))
    Image.fromarray((np.clip(a, 0, 1) * 255).round().astype(np.uint8)).save(path)
    return path


INPUTS = {"triangles": triangles, "noisy": noisy}


def _canvas_run(session, name: str, setting: str, rep: int, prompt: str, px: int) -> dict:
    """The generate tool on a px × px canvas with the Session's (accelerated) pipeline; not verified."""
    from ditflow.kernels.processors import installed
    from ditflow.pipelines.acceleration import applied
    from ditflow.schemas import GenerateSpec
    from ditflow.toolkit.generate import generate

    pipe = session.pipeline
    local = installed(pipe.transformer)
    before = dict(local.counts) if local else {}
    t0 = time.perf_counter()
    generate(pipe, GenerateSpec(prompt=prompt, seed=rep, width=px, height=px))
    seconds = time.perf_counter() - t0
    ran = str(applied(pipe))
    if local:
        ran += f" (attention calls local {local.counts['local'] - before.get('local', 0)}, " \
               f"full {local.counts['full'] - before.get('full', 0)})"
    return {"request": name, "setting": setting, "repeat": rep, "seconds": seconds, "acceleration": ran,
            "images": 1, "verified": 0, "checked": 0, "error": None}


def cli(argv: list[str]) -> int:
    from rich.console import Console
    from rich.table import Table

    from ditflow.api import Session

    p = argparse.ArgumentParser(prog="ditflow bench accelerate", description=__doc__.splitlines()[0])
    p.add_argument("--settings", nargs="+", default=["off", "auto"], help="acceleration settings; the first is the "
                   "baseline the ratios are taken against (default: off auto)")
    p.add_argument("--model", default="builtin")
    p.add_argument("--requests", nargs="+", choices=[r[0] for r in REQUESTS], metavar="NAME",
                   help="a subset of: " + ", ".join(repr(r[0]) for r in REQUESTS))
    p.add_argument("--repeats", type=int, default=2, help="runs per request and setting; the median is reported")
    p.add_argument("--canvas", type=int, nargs="*", default=[], metavar="PX",
                   help="also time the generate tool itself on PX × PX canvases (multiples of 16)")
    p.add_argument("--device", default=None)
    p.add_argument("--json", type=Path, help="write the per-run results here")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    requests = [r for r in REQUESTS if not args.requests or r[0] in args.requests]
    requests += [(f"generate {px}×{px}", "a red circle", px) for px in args.canvas]
    console = Console()
    work = Path(tempfile.mkdtemp(prefix="ditflow-bench-accelerate-"))
    inputs = {name: make(work / f"{name}.png") for name, make in INPUTS.items()}
    sessions = {s: Session(model=args.model, accelerate=s, device=args.device, persist=False) for s in args.settings}
    for i, session in enumerate(sessions.values()):  # loaded, accelerated and warmed before the clock starts
        session.run(REQUESTS[0][1], [], work / f"warm-{i}")
    runs = []
    for rep in range(args.repeats):
        for name, instruction, needs in requests:
            order = args.settings if rep % 2 == 0 else args.settings[::-1]  # alternate who goes first
            for s in order:
                out = work / f"{name.replace(' ', '-')}-{rep}-{args.settings.index(s)}"
                if isinstance(needs, int):  # the tool itself on a large canvas
                    runs.append(_canvas_run(sessions[s], name, s, rep, instruction, needs))
                    continue
                t0 = time.perf_counter()
                turn = sessions[s].run(instruction, [inputs[needs]] if needs else [], out)
                seconds = time.perf_counter() - t0
                checked = [v for v in turn.record.verdicts if v.error is None and v.claims]
                runs.append({"request": name, "setting": s, "repeat": rep, "seconds": seconds,
                             "acceleration": turn.record.acceleration, "images": len(turn.record.images),
                             "verified": sum(v.passed for v in checked), "checked": len(checked),
                             "error": turn.record.error})
    for session in sessions.values():
        session.close()

    base = args.settings[0]
    table = Table(title=f"--accelerate on the main path ({args.model}, median of {args.repeats})")
    table.add_column("request")
    for s in args.settings:
        table.add_column(f"{s}: s", justify="right")
        table.add_column("verified", justify="right")
        if s != base:
            table.add_column(f"{s} ÷ {base}", justify="right")
    totals = {s: 0.0 for s in args.settings}
    for name, _, _ in requests:
        row = [name]
        median = {}
        for s in args.settings:
            mine = [r for r in runs if r["request"] == name and r["setting"] == s]
            median[s] = statistics.median(r["seconds"] for r in mine)
            totals[s] += median[s]
            row += [f"{median[s]:.2f}", f"{sum(r['verified'] for r in mine)}/{sum(r['checked'] for r in mine)}"]
            if s != base:
                row.append(f"{median[base] / median[s]:.2f}×")
        table.add_row(*row)
    row = ["all"]
    for s in args.settings:
        row += [f"{totals[s]:.2f}", ""] + ([f"{totals[base] / totals[s]:.2f}×"] if s != base else [])
    table.add_row(*row, style="bold")
    console.print(table)
    for s in args.settings:
        ran = sorted({r["acceleration"] for r in runs if r["setting"] == s})
        console.print(f"{s}: ran as {', '.join(ran)}")
    errors = [r for r in runs if r["error"]]
    for r in errors:
        console.print(f"[red]{r['request']} ({r['setting']}): {r['error']}[/red]")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))
    return 1 if errors else 0
