"""Issue 30's reference-edit reproductions, driven through the CLI and the API on the shipped builtin model: an edit
acts on the object the words point at, and every other object stays exactly as it was."""
import math
import os
import random
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ditflow.cli.main import EXIT_USAGE
from ditflow.world import scenes as world

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
UNTOUCHED_DB = 35.0


def ditflow(*args: str) -> subprocess.CompletedProcess:
    """The CLI as a user runs it, in a fresh process (what it prints and leaves behind)."""
    return subprocess.run([sys.executable, "-m", "ditflow.cli", *args, "-q"], env=ENV, capture_output=True,
                          text=True, timeout=300)


def ditflow_here(*args: str) -> int:
    """The CLI in this process: the same code path, without a fresh interpreter's seconds of imports."""
    from ditflow.cli.main import main

    return main([*args, "-q"])


def psnr(a: Image.Image, b: Image.Image, box) -> float:
    x0, y0, x1, y1 = box
    d = np.asarray(a.convert("RGB"), float)[y0:y1, x0:x1] - np.asarray(b.convert("RGB"), float)[y0:y1, x0:x1]
    mse = (d ** 2).mean()
    return math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def grown(box, px=2):
    return max(0, box[0] - px), max(0, box[1] - px), min(64, box[2] + px), min(64, box[3] + px)


@pytest.fixture(scope="module")
def triangles(tmp_path_factory):
    """The issue's first step, as a user runs it: three green triangles drawn by the builtin model."""
    out = tmp_path_factory.mktemp("r1")
    assert ditflow_here("run", "three green triangles on a black background", "-o", str(out / "r1")) == 0
    image = Image.open(out / "r1" / "0001.png").convert("RGB")
    bg, dets = world.detect(image)
    assert bg == "black" and [(d.color, d.shape) for d in dets] == [("green", "triangle")] * 3
    return out / "r1" / "0001.png", image, dets


@pytest.mark.parametrize("command, instruction, shape", [
    ("run", "make the top left triangle red", "triangle"),
    ("run", "turn the triangle at the top left into a red circle", "circle"),
    ("edit", "make the top left triangle red", "triangle"),
])
def test_one_triangle_of_three_changes_and_the_others_stay(tmp_path, triangles, command, instruction, shape):
    path, before, dets = triangles
    top_left = min(dets, key=lambda d: d.box[0] + d.box[1])
    if command == "run":
        code = ditflow_here("run", instruction, "-i", str(path), "-o", str(tmp_path / "x"))
        out = tmp_path / "x" / "0001.png"
    else:
        out = tmp_path / "x.png"
        code = ditflow_here("edit", str(path), instruction, "-o", str(out))
    assert code == 0
    after = Image.open(out).convert("RGB")
    bg, got = world.detect(after)
    assert bg == "black" and len(got) == 3
    changed = [d for d in got if (d.color, d.shape) != ("green", "triangle")]
    assert [(d.color, d.shape, d.position) for d in changed] == [("red", shape, top_left.position)]
    for d in dets:
        if d is not top_left:  # the two triangles nobody asked about, pixel for pixel
            assert psnr(after, before, grown(d.box)) >= UNTOUCHED_DB


def test_a_reference_that_fits_three_asks_which_and_leaves_nothing(tmp_path, triangles):
    path, _, _ = triangles
    r = ditflow("run", "make the triangle red", "-i", str(path), "-o", str(tmp_path / "x"))
    assert r.returncode == EXIT_USAGE
    assert "could be any of 3 objects" in r.stderr and "top left" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists()


def test_in_chat_it_means_the_object_acted_on_before(tmp_path):
    from ditflow.api import Session
    from ditflow.pipelines.loading import load_pipeline

    spec = world.PanelSpec((world.ObjectSpec("red", "circle", "small", "top-left"),
                            world.ObjectSpec("yellow", "square", None, "bottom-right")), "white")
    src = tmp_path / "in.png"
    world.render(world.CanvasSpec((spec,)), random.Random(3)).save(src)
    before = Image.open(src).convert("RGB")
    square = next(d for d in world.detect(before)[1] if d.shape == "square")
    with Session(pipeline=load_pipeline("builtin", device="cpu"), persist=False) as s:
        moved = s.chat("move the red circle to the bottom left", [src])
        assert moved.error is None
        turn = s.chat("make it blue")
        assert turn.error is None and turn.parsed.outputs[0].edits[0].op == "recolor"
        after = turn.images[0]  # read while the session's folder exists
    got = sorted((d.color, d.shape, d.position) for d in world.detect(after)[1])
    assert got == [("blue", "circle", "bottom-left"), ("yellow", "square", "bottom-right")]
    assert psnr(after, before, grown(square.box)) >= UNTOUCHED_DB
