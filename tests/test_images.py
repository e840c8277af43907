"""ditflow.images: every odd input converts to 8-bit RGB or fails with one clear ImageError; writes are atomic."""
import io
import os

import numpy as np
import pytest
from PIL import Image

from ditflow.images import ImageError, load_image, save_image_atomic, sha256_file


def _png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_16bit_grey_rescaled_to_full_range():
    a = np.linspace(1000, 60000, 32 * 32).reshape(32, 32).astype(np.uint16)
    img = load_image(_png_bytes(Image.fromarray(a)))
    out = np.asarray(img)
    assert img.mode == "RGB" and out.shape == (32, 32, 3)
    assert out.min() == 0 and out.max() == 255  # not clipped to white, not truncated to the low byte


def test_cmyk_jpeg_converts():
    img = load_image(_png_bytes(Image.new("CMYK", (20, 20), (0, 255, 255, 0)), "JPEG"))
    r, g, b = np.asarray(img)[10, 10]
    assert img.mode == "RGB" and r > 200 and g < 60 and b < 60  # C=0, M=Y=full → red


def test_paletted_with_transparency_and_alpha_composite_on_white():
    p = Image.new("P", (16, 16), 0)
    p.putpalette([0, 0, 255] + [0, 0, 0] * 255)
    p.info["transparency"] = 0
    assert np.asarray(load_image(_png_bytes(p))).min() == 255  # fully transparent → white
    la = Image.new("LA", (16, 16), (0, 255))
    assert np.asarray(load_image(_png_bytes(la))).max() == 0  # opaque black stays black
    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 128))
    r, g, b = np.asarray(load_image(_png_bytes(rgba)))[0, 0]
    assert r == 255 and 120 < g < 135 and g == b  # half red over white


def test_exif_rotation_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = img.getexif()
    exif[0x0112] = 6  # orientation: rotate 90° CW on display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    assert load_image(buf.getvalue()).size == (20, 40)


@pytest.mark.parametrize("size", [(1, 1), (4, 300)])
def test_too_small_is_refused(size):
    with pytest.raises(ImageError, match="too small"):
        load_image(_png_bytes(Image.new("RGB", size)))


def test_too_large_is_refused_before_decoding():
    huge = _png_bytes(Image.new("1", (20000, 20000)))  # 400 MP, a few hundred KB compressed
    with pytest.raises(ImageError, match="too large"):
        load_image(huge)
    assert load_image(_png_bytes(Image.new("RGB", (300, 200))), max_pixels=60_000).size == (300, 200)
    with pytest.raises(ImageError, match="limit is 50000"):
        load_image(_png_bytes(Image.new("RGB", (300, 200))), max_pixels=50_000)


def test_truncated_corrupt_and_missing(tmp_path):
    data = _png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)))
    with pytest.raises(ImageError, match="corrupt or truncated|not a readable"):
        load_image(data[: len(data) // 2])
    with pytest.raises(ImageError, match="not a readable image"):
        load_image(b"definitely not an image")
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.png")
    assert isinstance(ImageError("x"), ValueError)  # the CLI prints ValueErrors as one line


def test_save_atomic_roundtrip_and_no_partial_file(tmp_path):
    img = Image.new("RGB", (16, 16), (1, 2, 3))
    path = save_image_atomic(img, tmp_path / "sub" / "a.png")
    assert np.array_equal(np.asarray(load_image(path)), np.asarray(img))
    assert len(sha256_file(path)) == 64
    before = sha256_file(path)

    class Broken:  # fails midway through saving
        def save(self, f, format, **kw):
            f.write(b"partial")
            raise OSError("disk full")

    with pytest.raises(OSError):
        save_image_atomic(Broken(), path)
    assert sha256_file(path) == before  # the old file is untouched
    assert os.listdir(path.parent) == ["a.png"]  # and no temp file is left behind
    with pytest.raises(ValueError, match="unknown image extension"):
        save_image_atomic(img, tmp_path / "a.xyz")
