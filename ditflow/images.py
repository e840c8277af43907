"""Every image enters and leaves ditflow through here: load anything PIL can read as clean 8-bit RGB, or fail
with one clear `ImageError`; write atomically so a crash never leaves a half-written file."""
from __future__ import annotations

import hashlib
import io
import os
import secrets
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

MAX_PIXELS = 64 * 1024 * 1024  # 64 MP: an 8k×8k photo loads, a 20000×20000 bomb does not
MIN_SIDE = 8  # px: smaller than one VAE latent cell is not an image we can work with


class ImageError(ValueError):
    """An input image is unreadable, corrupt, truncated, too large or too small; the message says which."""


def _to_rgb(img: Image.Image) -> Image.Image:
    """16-bit, float, CMYK, paletted, grey+alpha and RGBA → 8-bit RGB; transparency is composited on white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # high bit depth grey: rescale to the full 8-bit range
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = np.zeros_like(a) if hi <= lo else (a - lo) / (hi - lo) * 255.0
        img = Image.fromarray(a.round().astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "PA", "La"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "RGBa"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    return img.convert("RGB")


def load_image(source: str | os.PathLike | bytes | Image.Image, *, max_pixels: int = MAX_PIXELS,
               min_side: int = MIN_SIDE) -> Image.Image:
    """Decode `source` (path, bytes, or a PIL image) fully into an upright 8-bit RGB image.

    Raises `ImageError` naming the file and the problem: missing, not an image, truncated/corrupt, more than
    `max_pixels` pixels, or a side under `min_side` px. EXIF rotation is applied.
    """
    name = "image" if isinstance(source, (bytes, Image.Image)) else str(source)
    if isinstance(source, Image.Image):
        img = source
    else:
        if not isinstance(source, bytes) and not Path(source).is_file():
            raise ImageError(f"{name}: no such file")
        with warnings.catch_warnings():  # PIL's own bomb check warns at half our limit; we check ourselves
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            except Image.DecompressionBombError as e:
                raise ImageError(f"{name}: too large ({e}); the limit is {max_pixels} pixels") from e
            except (OSError, SyntaxError, ValueError) as e:
                raise ImageError(f"{name}: not a readable image ({e})") from e
    w, h = img.size
    if w * h > max_pixels:
        raise ImageError(f"{name}: {w}×{h} is too large; the limit is {max_pixels} pixels (raise max_pixels)")
    if min(w, h) < min_side:
        raise ImageError(f"{name}: {w}×{h} is too small; each side must be at least {min_side} px")
    try:
        img.load()  # decode now, so truncation is found here and not deep inside a tool
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img)
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name}: corrupt or truncated image data ({e})") from e


def write_atomic(path: str | os.PathLike, write) -> Path:
    """Call `write(binary_file)` on a temp file in the same folder, fsync, then `os.replace`: readers see all or
    nothing, and a failure leaves no temp file behind. Every atomic write in ditflow goes through here.

    The file gets the mode any new file gets (0o666 less the umask: 0644 under the usual 022), as `open` would
    give it; `tempfile.mkstemp` makes 0600 files, private to their owner."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # O_EXCL: never another writer's file
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def save_image_atomic(img: Image.Image, path: str | os.PathLike, **save_kwargs) -> Path:
    """Write `img` to `path` atomically (see `write_atomic`); the format follows the extension."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown image extension {path.suffix!r}; use .png, .jpg or .webp")
    return write_atomic(path, lambda f: img.save(f, format=fmt, **save_kwargs))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
