"""Degradations as other tools make them: Pillow, scikit-image/SciPy, torch and OpenCV, each with its own kernels,
edge handling, rounding and resampling filters. The degradation classifier trains on every family but
HELDOUT_FAMILY, and `ditflow bench toolkit --sections tools` reports that family on its own line: how the
classifier and the restorations do on a tool they never saw (DCPT, arXiv 2403.09232: a degradation classifier
must see the variety of real degradations).

Every operator takes and returns 8-bit RGB arrays (H, W, 3), as files carry them. `sample` draws one at a random
severity and says what it is in `ditflow.toolkit.degradation`'s terms: the class the classifier should name and
the severity in that operator's units (noise σ in [0, 1], blur as the σ px of the Gaussian with the same spread,
JPEG quality, downsampling factor).

    python -m ditflow.pipelines.degraders out/ --family opencv   # writes a few examples of each kind
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

FAMILIES = ("pil", "skimage", "torch", "opencv")
HELDOUT_FAMILY = "opencv"  # never seen in classifier training
TRAIN_FAMILIES = tuple(f for f in FAMILIES if f != HELDOUT_FAMILY)
# kinds: a degradation as a user meets it. "small" ones make an image f× smaller (a super-resolution restores
# it); "upsampled" ones make it smaller and back to its size by the same tool (what the classifier's sr2/sr4 see)
KINDS = ("clean", "noise", "blur", "jpeg", "small2", "small3", "small4", "upsampled2", "upsampled4",
         "blur+noise", "small4+jpeg")
# the severities drawn (the classifier's training range; the bench draws from the same ranges)
NOISE_SIGMA = (0.03, 0.2)  # image units: 8/255 to 51/255
BLUR_SIGMA = (1.0, 3.0)  # px of the equivalent Gaussian
JPEG_QUALITY = (10, 60)


@dataclass
class Degraded:
    image: np.ndarray  # (h, w, 3) uint8
    kind: str  # one of KINDS
    label: str  # the class of ditflow.toolkit.degradation.CLASSES a classifier should name
    severity: float | None  # in that class's units (None: clean, or the size says it)
    family: str
    variant: str  # the tool's own call, e.g. "cv2.GaussianBlur"
    factor: int = 1  # how much smaller than the original (small kinds)


def _u8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.round(a), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- noise
def _noise(a: np.ndarray, sigma: float, family: str, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """Gaussian or Poisson noise of std ≈ σ (image units) at mid-grey, per channel or on luminance only."""
    seed = int(rng.integers(2 ** 31))
    x = a.astype(np.float32)
    if family == "pil":
        if rng.random() < 0.5:  # luminance only: one grey noise image added to every channel
            n = np.asarray(Image.effect_noise((a.shape[1], a.shape[0]), sigma * 255), np.float32) - 128
            return _u8(x + n[..., None]), "Image.effect_noise"
        return _u8(x + rng.normal(0, sigma * 255, a.shape)), "numpy normal on the uint8 array"
    if family == "skimage":
        from skimage.util import random_noise

        if rng.random() < 0.3:  # Poisson with the photon count that gives σ at mid-grey
            peak = 0.5 / sigma ** 2
            return _u8(rng.poisson(x / 255 * peak) / peak * 255), "numpy poisson"
        return _u8(random_noise(a, mode="gaussian", var=sigma ** 2, rng=seed, clip=True) * 255), \
            "skimage.util.random_noise"
    if family == "torch":
        import torch

        g = torch.Generator().manual_seed(seed)
        t = torch.from_numpy(x / 255)
        if rng.random() < 0.3:
            peak = 0.5 / sigma ** 2
            return _u8(torch.poisson(t * peak, generator=g).numpy() / peak * 255), "torch.poisson"
        return _u8((t + sigma * torch.randn(t.shape, generator=g)).clamp(0, 1).numpy() * 255), "torch.randn"
    import cv2

    cv2.setRNGSeed(seed)
    if rng.random() < 0.5:  # luminance only, in YCrCb
        ycc = cv2.cvtColor(a, cv2.COLOR_RGB2YCrCb).astype(np.int16)
        n = np.zeros(a.shape[:2], np.int16)
        cv2.randn(n, 0, sigma * 255)
        ycc[..., 0] += n
        return cv2.cvtColor(np.clip(ycc, 0, 255).astype(np.uint8), cv2.COLOR_YCrCb2RGB), "cv2.randn on Y"
    n = np.zeros(a.shape, np.int16)
    cv2.randn(n, (0, 0, 0), (sigma * 255,) * 3)
    return np.clip(a.astype(np.int16) + n, 0, 255).astype(np.uint8), "cv2.randn"


# ----------------------------------------------------------------------------- blur
def _disk(radius: float) -> np.ndarray:
    r = int(math.ceil(radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    k = (xx ** 2 + yy ** 2 <= radius ** 2 + 1e-6).astype(np.float32)
    return k / k.sum()


def _motion(length: float, angle: float) -> np.ndarray:
    """A line of `length` px at `angle` degrees, anti-aliased by supersampling."""
    r = int(math.ceil(length / 2))
    k = np.zeros((2 * r + 1, 2 * r + 1), np.float32)
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    for t in np.linspace(-length / 2, length / 2, int(length * 8) + 1):
        k[int(round(r + t * s)), int(round(r + t * c))] += 1
    return k / k.sum()


def _blur(a: np.ndarray, sigma: float, family: str, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """A blur whose kernel has the spread of a Gaussian of std σ px: Gaussian, box, disk (defocus) or motion.
    A box of side k has variance (k² − 1)/12 per axis, a disk of radius R R²/4; a motion line of length L has
    L²/12 along its direction, so L = σ√24 gives its mean variance over both axes σ²."""
    v = rng.random()
    if family == "pil":
        img = Image.fromarray(a)
        if v < 0.6:
            return np.asarray(img.filter(ImageFilter.GaussianBlur(sigma))), "ImageFilter.GaussianBlur"
        r = (math.sqrt(12 * sigma ** 2 + 1) - 1) / 2  # box side 2r + 1
        return np.asarray(img.filter(ImageFilter.BoxBlur(r))), "ImageFilter.BoxBlur"
    if family == "skimage":
        from scipy import ndimage

        if v < 0.6:
            from skimage.filters import gaussian

            mode = ("nearest", "reflect", "mirror")[int(rng.integers(3))]
            return _u8(gaussian(a, sigma=sigma, mode=mode, channel_axis=-1, preserve_range=True)), \
                f"skimage.filters.gaussian({mode})"
        k = _disk(2 * sigma)
        return _u8(np.stack([ndimage.convolve(a[..., c].astype(np.float32), k, mode="reflect")
                             for c in range(3)], -1)), "disk by scipy.ndimage.convolve"
    if family == "torch":
        import torch
        import torch.nn.functional as F

        if v < 0.6:
            r = max(1, math.ceil(3 * sigma))
            t = torch.arange(-r, r + 1, dtype=torch.float32)
            g = torch.exp(-t ** 2 / (2 * sigma ** 2))
            k = np.outer(g, g)
            name = "conv2d Gaussian, reflect padding"
        else:
            k = _motion(sigma * math.sqrt(24), float(rng.uniform(0, 180)))
            name = "conv2d motion line, reflect padding"
        k = torch.as_tensor(k / k.sum(), dtype=torch.float32)
        x = torch.from_numpy(a.astype(np.float32)).permute(2, 0, 1)[:, None]
        p = k.shape[-1] // 2
        y = F.conv2d(F.pad(x, (p, p, p, p), mode="reflect" if p < min(a.shape[:2]) else "replicate"), k[None, None])
        return _u8(y[:, 0].permute(1, 2, 0).numpy()), name
    import cv2

    if v < 0.45:
        return cv2.GaussianBlur(a, (0, 0), sigma), "cv2.GaussianBlur"
    if v < 0.65:
        k = max(2, int(round(math.sqrt(12 * sigma ** 2 + 1))))
        return cv2.blur(a, (k, k)), "cv2.blur (box)"
    if v < 0.85:
        return cv2.filter2D(a, -1, _disk(2 * sigma)), "cv2.filter2D disk"
    return cv2.filter2D(a, -1, _motion(sigma * math.sqrt(24), float(rng.uniform(0, 180)))), "cv2.filter2D motion"


# ----------------------------------------------------------------------------- JPEG
def _jpeg(a: np.ndarray, quality: int, family: str, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """Pillow and OpenCV bring their own libjpeg builds; scikit-image and torch users save through Pillow."""
    sub = bool(rng.random() < 0.5)  # chroma subsampling 4:2:0, or none (4:4:4)
    if family != "opencv":
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=int(quality), subsampling=2 if sub else 0)
        return np.asarray(Image.open(buf).convert("RGB")), f"PIL JPEG {'4:2:0' if sub else '4:4:4'}"
    import cv2

    factor = cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420 if sub else cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444
    ok, enc = cv2.imencode(".jpg", a[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality),
                                                  cv2.IMWRITE_JPEG_SAMPLING_FACTOR, factor])
    return cv2.imdecode(enc, cv2.IMREAD_COLOR)[..., ::-1].copy(), f"cv2.imencode {'4:2:0' if sub else '4:4:4'}"


# ----------------------------------------------------------------------------- resizing
def _resize(a: np.ndarray, w: int, h: int, family: str, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """a resized to w × h by the family's own filters (down or up)."""
    if family == "pil":
        name, f = [("BICUBIC", Image.BICUBIC), ("BILINEAR", Image.BILINEAR), ("BOX", Image.BOX),
                   ("LANCZOS", Image.LANCZOS)][int(rng.integers(4))]
        return np.asarray(Image.fromarray(a).resize((w, h), f)), f"Image.resize {name}"
    if family == "skimage":
        from skimage.transform import resize

        order = int(rng.choice([1, 3]))
        aa = w < a.shape[1]
        return _u8(resize(a, (h, w), order=order, anti_aliasing=aa, preserve_range=True)), \
            f"skimage.transform.resize order {order}"
    if family == "torch":
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(a.astype(np.float32)).permute(2, 0, 1)[None]
        down = w < a.shape[1]
        mode = str(rng.choice(["area", "bilinear", "bicubic"] if down else ["bilinear", "bicubic"]))
        kw = {} if mode == "area" else {"align_corners": False, "antialias": down}
        y = F.interpolate(x, size=(h, w), mode=mode, **kw)
        return _u8(y[0].permute(1, 2, 0).numpy()), f"F.interpolate {mode}"
    import cv2

    name, f = [("INTER_AREA", cv2.INTER_AREA), ("INTER_LINEAR", cv2.INTER_LINEAR), ("INTER_CUBIC", cv2.INTER_CUBIC),
               ("INTER_LANCZOS4", cv2.INTER_LANCZOS4)][int(rng.integers(4))]
    return cv2.resize(a, (w, h), interpolation=f), f"cv2.resize {name}"


# ----------------------------------------------------------------------------- sampling
def sample(a: np.ndarray, kind: str, family: str, rng: np.random.Generator) -> Degraded:
    """`a` (H, W, 3) uint8 degraded by `family`'s tools as `kind` (one of KINDS), at a random severity."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; use one of {', '.join(FAMILIES)}")
    h, w = a.shape[:2]
    if kind == "clean":
        return Degraded(a, kind, "clean", None, family, "none")
    if kind == "noise":
        s = float(rng.uniform(*NOISE_SIGMA))
        y, v = _noise(a, s, family, rng)
        return Degraded(y, kind, "noise", s, family, v)
    if kind in ("blur", "blur+noise"):
        s = float(rng.uniform(*BLUR_SIGMA))
        y, v = _blur(a, s, family, rng)
        if kind == "blur+noise":  # a blurred photo from a camera: then sensor noise, lighter than a noisy one
            y, v2 = _noise(y, float(rng.uniform(0.02, 0.06)), family, rng)
            v = f"{v}, then {v2}"
        return Degraded(y, kind, "blur", s, family, v)
    if kind == "jpeg":
        q = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
        y, v = _jpeg(a, q, family, rng)
        return Degraded(y, kind, "jpeg", float(q), family, v)
    f = int(kind.split("+")[0][-1])
    small, v = _resize(a, max(1, w // f), max(1, h // f), family, rng)
    if kind.startswith("small"):
        if kind.endswith("+jpeg"):
            small, v2 = _jpeg(small, int(rng.integers(30, 61)), family, rng)
            v = f"{v}, then {v2}"
        return Degraded(small, kind, f"sr{f}", None, family, v, factor=f)
    if kind.startswith("upsampled"):
        y, v2 = _resize(small, w, h, family, rng)
        return Degraded(y, kind, f"sr{f}", float(f), family, f"{v}, then {v2}", factor=f)
    raise ValueError(f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")


def main(argv: list[str] | None = None) -> int:
    import argparse
    import random
    from pathlib import Path

    from ditflow.world import scenes as world

    ap = argparse.ArgumentParser(prog="python -m ditflow.pipelines.degraders", description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--family", default=HELDOUT_FAMILY, choices=FAMILIES)
    ap.add_argument("--n", type=int, default=2)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng, srng = np.random.default_rng(0), random.Random(0)
    for i in range(args.n):
        a = np.asarray(world.sample(srng, "two").image)
        for kind in KINDS:
            d = sample(a, kind, args.family, rng)
            Image.fromarray(d.image).save(out / f"{i:02d}_{kind}.png")
            print(f"{i:02d}_{kind}.png  {d.variant}  {d.label} {d.severity}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
