"""Fuzzed input images at `ditflow.images.load_image`, the one door every image comes in by.

Cases: random bytes; real PNG/JPEG/WebP/GIF/BMP/TIFF files in every mode PIL writes (1, L, P, LA, PA, RGBA, CMYK,
I;16, I, F) at sizes from 0 to 40 px; those files truncated anywhere or with bytes flipped; JPEGs with each EXIF
orientation; decompression bombs (a PNG whose header claims 10^5 × 10^5 px). Each ends as an upright 8-bit RGB
image inside the size limits, or as `ImageError` (a ValueError) with a message; nothing else, within a deadline.
"""
from __future__ import annotations

import io
import struct
import zlib
from datetime import timedelta

from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from ditflow.images import MIN_SIDE, ImageError, load_image

FUZZ = settings(max_examples=500, deadline=timedelta(seconds=5), database=None, phases=list(Phase)[:-1],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
MODES = {"PNG": ["1", "L", "P", "LA", "RGB", "RGBA", "I;16", "I"], "JPEG": ["L", "RGB", "CMYK"],
         "WEBP": ["RGB", "RGBA"], "GIF": ["P", "L"], "BMP": ["1", "L", "P", "RGB"], "TIFF": ["L", "RGB", "CMYK",
                                                                                          "I;16", "F", "LA", "RGBA"]}
formats = st.sampled_from(sorted(MODES))


@st.composite
def encoded(draw) -> tuple[bytes, tuple[int, int], int]:
    """A real image file: (bytes, size, EXIF orientation or 0)."""
    fmt = draw(formats)
    mode = draw(st.sampled_from(MODES[fmt]))
    w, h = draw(st.integers(0, 40)), draw(st.integers(0, 40))
    seed = draw(st.integers(0, 2**16))
    img = Image.new(mode, (w, h))
    if w and h:
        import numpy as np

        rng = np.random.default_rng(seed)
        img = Image.frombytes(mode, (w, h), rng.integers(0, 256, len(img.tobytes()), dtype=np.uint8).tobytes())
        if mode == "P":
            img.putpalette(list(rng.integers(0, 256, 768, dtype=np.uint8)))
            if draw(st.booleans()):
                img.info["transparency"] = 0
    orientation = draw(st.integers(0, 8)) if fmt == "JPEG" else 0
    buf = io.BytesIO()
    try:
        if orientation:
            exif = Image.Exif()
            exif[0x0112] = orientation
            img.save(buf, fmt, exif=exif)
        else:
            img.save(buf, fmt)
    except (OSError, ValueError, SystemError, MemoryError):  # PIL cannot write this combination (e.g. a 0-px JPEG)
        assume(False)
    return buf.getvalue(), (w, h), orientation


def png_bomb(width: int, height: int) -> bytes:
    """A valid-looking PNG whose header claims `width`×`height` px, with a tiny (wrong) data stream."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def mangled(data: bytes, how: str, at: float, byte: int) -> bytes:
    if not data:
        return data
    i = min(len(data) - 1, int(len(data) * at))
    if how == "truncate":
        return data[:i]
    if how == "flip":
        return data[:i] + bytes([data[i] ^ (byte or 1)]) + data[i + 1:]
    return data[:i] + data[i + 1:]  # drop one byte


def check(source, max_pixels: int, min_side: int = MIN_SIDE) -> Image.Image | None:
    try:
        img = load_image(source, max_pixels=max_pixels, min_side=min_side)
    except ImageError as e:
        assert str(e) and ("image" in str(e) or ":" in str(e))
        return None
    assert img.mode == "RGB"
    w, h = img.size
    assert min(w, h) >= min_side and w * h <= max_pixels
    img.tobytes()  # fully decoded
    return img


# ----------------------------------------------------------------------------- cases
@FUZZ
@given(data=st.binary(max_size=2048))
def test_random_bytes(data):
    check(data, 64 * 1024 * 1024)


@FUZZ
@given(case=encoded(), how=st.sampled_from(["intact", "truncate", "flip", "drop"]), at=st.floats(0, 1),
       byte=st.integers(0, 255), small_limit=st.booleans())
def test_real_files_intact_or_damaged(case, how, at, byte, small_limit):
    data, (w, h), orientation = case
    limit = 16 * 16 if small_limit else 64 * 1024 * 1024
    img = check(data if how == "intact" else mangled(data, how, at, byte), limit)
    if how == "intact" and min(w, h) >= MIN_SIDE and w * h <= limit:
        assert img is not None, "a valid image within the limits was refused"
        assert img.size == ((h, w) if orientation in (5, 6, 7, 8) else (w, h))  # EXIF rotation applied


@FUZZ
@given(w=st.integers(0, 2**31 - 1), h=st.integers(0, 2**31 - 1), path=st.booleans())
def test_decompression_bombs_and_absurd_headers(tmp_path_factory, w, h, path):
    data = png_bomb(w, h)
    source = data
    if path:
        source = tmp_path_factory.mktemp("bomb") / "bomb.png"
        source.write_bytes(data)
    img = check(source, 64 * 1024 * 1024)
    assert img is None or w * h <= 64 * 1024 * 1024  # never a success beyond the limit
