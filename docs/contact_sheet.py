"""Draw `docs/contact-sheet.png`, the README's picture of what the builtin model does: a picture book, an object
edit in a conversation and a restoration, each as `ditflow run` and `ditflow chat` make them (verification on),
panels enlarged 3× without smoothing.

    python docs/contact_sheet.py [--out docs/contact-sheet.png]
"""
from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ditflow import Session
from ditflow.world import scenes as world

ZOOM, GAP, TEXT_H = 3, 8, 34


def noisy_scene(path: Path) -> None:
    """A shapes-world scene with Gaussian noise (σ = 0.12 of the range), made by numpy, not by ditflow."""
    spec = world.PanelSpec((world.ObjectSpec("yellow", "circle", "large", "left"),
                            world.ObjectSpec("blue", "square", "small", "top-right")), "white")
    clean = np.asarray(world.render(world.CanvasSpec((spec,)), random.Random(5)), float)
    noisy = clean + np.random.default_rng(0).normal(0, 0.12 * 255, clean.shape)
    Image.fromarray(np.clip(noisy, 0, 255).round().astype(np.uint8)).save(path)


def row(images: list[Image.Image], caption: str, width: int) -> Image.Image:
    side = world.PANEL * ZOOM
    out = Image.new("RGB", (width, side + TEXT_H), "white")
    for k, im in enumerate(images):
        out.paste(im.convert("RGB").resize((side, side), Image.NEAREST), (k * (side + GAP), 0))
    ImageDraw.Draw(out).text((0, side + 6), caption, fill=(30, 30, 30))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("contact-sheet.png"))
    args = ap.parse_args()
    rows = []
    width = 4 * (world.PANEL * ZOOM + GAP)
    with tempfile.TemporaryDirectory() as tmp, Session(model="builtin", persist=False) as s:
        book = s.chat("a four-page picture book about a red circle that turns blue")
        rows.append(row(book.images, 'ditflow run "a four-page picture book about a red circle that turns blue"',
                        width))
        s.new()
        tri = s.chat("three green triangles on a black background")
        red = s.chat("make the top left triangle red")
        rows.append(row([tri.images[0], red.images[0]],
                        'ditflow chat: "three green triangles on a black background", then '
                        '"make the top left triangle red"', width))
        s.new()
        noisy = Path(tmp) / "noisy.png"
        noisy_scene(noisy)
        clean = s.chat("this picture is really noisy, can you clean it up?", [noisy])
        rows.append(row([Image.open(noisy), clean.images[0]],
                        'ditflow run "this picture is really noisy, can you clean it up?" -i noisy.png', width))
    sheet = Image.new("RGB", (width, sum(r.height + GAP for r in rows)), "white")
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height + GAP
    sheet.save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
