"""Restoration of degradations made by other tools (issue 31): the tool families of pipelines/degraders.py, the
held-out family kept out of classifier training, the noise estimate under clipping, blur with a tool's edges,
and `auto` on an image smaller than the model's panel."""
import random

import numpy as np
import pytest
from PIL import Image, ImageFilter
from scipy import ndimage

from ditflow.pipelines import degraders
from ditflow.toolkit import degradation as dg
from ditflow.training import classifiers
from ditflow.world import scenes as world


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    return np.asarray(world.sample(random.Random(3), "two").image)


@pytest.mark.parametrize("family", degraders.FAMILIES)
def test_every_family_makes_every_kind_at_its_size_and_label(scene, family):
    rng = np.random.default_rng(0)
    for kind in degraders.KINDS:
        d = degraders.sample(scene, kind, family, rng)
        f = d.factor if kind.startswith("small") else 1
        assert d.image.dtype == np.uint8 and d.image.shape == (64 // f, 64 // f, 3), (kind, d.image.shape)
        assert d.label in dg.CLASSES + ("sr3",) and d.family == family
        if kind != "clean":
            assert not np.array_equal(d.image, scene[: d.image.shape[0], : d.image.shape[1]]), (kind, d.variant)
    again = degraders.sample(scene, "noise", family, np.random.default_rng(5))
    assert np.array_equal(again.image, degraders.sample(scene, "noise", family, np.random.default_rng(5)).image)


def test_classifier_training_never_sees_the_heldout_family(monkeypatch):
    seen = []
    real = degraders.sample

    def spy(a, kind, family, rng):
        seen.append(family)
        return real(a, kind, family, rng)

    monkeypatch.setattr(degraders, "sample", spy)
    classifiers.degradation_batch(random.Random(0), 48)
    assert seen and degraders.HELDOUT_FAMILY not in seen and set(seen) <= set(degraders.TRAIN_FAMILIES)


@pytest.mark.parametrize("sigma255", [12, 30, 45])
def test_noise_sigma_reads_noise_that_clipping_cut_short(scene, sigma255):
    """A shapes scene's light background clips bright noise at 255; the plain wavelet estimate read 0.7× σ."""
    noise = np.random.default_rng(1).normal(0, sigma255, scene.shape)
    y = dg.to_tensor(Image.fromarray(np.clip(np.round(scene + noise), 0, 255).astype(np.uint8)))
    est = dg.noise_sigma(y) * 255
    assert 0.85 * sigma255 < est < 1.2 * sigma255, est
    assert dg.noise_sigma(dg.to_tensor(Image.fromarray(scene))) * 255 < 2  # a clean scene reads no noise


def test_blur_operator_has_a_tools_edges(scene):
    """The forward model blurs with mirrored edges, as scipy's "reflect" does, not wrapping the far edge in."""
    x = dg.to_tensor(Image.fromarray(scene))
    ours = dg.operator("blur", 1.5).forward(x)
    ref = np.stack([ndimage.gaussian_filter(scene[..., c].astype(np.float64) / 255, 1.5, mode="reflect", truncate=6)
                    for c in range(3)])
    assert float(np.abs(ours[0].numpy() - ref).max()) < 1.5 / 255


@pytest.fixture(scope="module")
def builtin():
    from ditflow.pipelines.loading import load_pipeline

    return load_pipeline("builtin")


def test_auto_enlarges_an_image_smaller_than_the_panel(builtin, scene):
    from ditflow.schemas import RestoreSpec
    from ditflow.toolkit.restore import restore

    tiny = Image.fromarray(scene).resize((16, 16), Image.BICUBIC)
    out, rec = restore(builtin, tiny, RestoreSpec(degradation="auto"))
    assert out[0].size == (64, 64) and "low resolution" in rec.details["low_resolution"]
    clean, bicubic = dg.to_tensor(Image.fromarray(scene)), dg.to_tensor(tiny.resize((64, 64), Image.BICUBIC))
    assert dg.psnr(dg.to_tensor(out[0]), clean) > dg.psnr(bicubic, clean)


def test_auto_restores_pils_blur(builtin, scene):
    """The issue's reproduction: PIL's GaussianBlur(1.5) was "detected: nothing" and came back unchanged."""
    from ditflow.schemas import RestoreSpec
    from ditflow.toolkit.restore import restore

    clean = Image.fromarray(scene)
    blurred = clean.filter(ImageFilter.GaussianBlur(1.5))
    out, rec = restore(builtin, blurred, RestoreSpec(degradation="auto"))
    assert rec.details["detected"][0][0] == "blur" and not rec.details["fallback"], rec.details
    assert dg.psnr(dg.to_tensor(out[0]), dg.to_tensor(clean)) > dg.psnr(dg.to_tensor(blurred), dg.to_tensor(clean))


def test_restore_cli_states_the_size_and_writes_nothing_for_a_clean_image(tmp_path, scene, capsys):
    from ditflow.cli.main import main

    clean, tiny = tmp_path / "clean.png", tmp_path / "tiny.png"
    Image.fromarray(scene).save(clean)
    Image.fromarray(scene).resize((16, 16), Image.LANCZOS).save(tiny)
    assert main(["restore", str(clean), "-o", str(tmp_path / "a.png"), "-q"]) == 0
    assert "nothing written" in capsys.readouterr().out and not (tmp_path / "a.png").exists()
    assert main(["restore", str(tiny), "-o", str(tmp_path / "b.png"), "-q"]) == 0
    out = capsys.readouterr().out
    assert "enlarged to 64x64" in out and "(64x64" in out and Image.open(tmp_path / "b.png").size == (64, 64)
    assert main(["restore", str(tiny), "-o", str(tmp_path / "c.png"), "-q", "--scale", "2"]) == 0
    assert Image.open(tmp_path / "c.png").size == (32, 32)


def test_a_photo_on_the_shapes_model_is_restored_classically(builtin):
    """The shapes prior painted photos' textures flat (blur + noise: 8 of 8 crops worse than their input)."""
    from ditflow.schemas import RestoreSpec
    from ditflow.toolkit.restore import restore

    photo = Image.fromarray((classifiers.photo_crop(random.Random(2), classifiers.HELDOUT_PHOTOS)
                             .permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    assert not world.looks_like_scene(photo) and world.looks_like_scene(world.sample(random.Random(1), "two").image)
    noisy = degraders.sample(np.asarray(photo), "noise", "pil", np.random.default_rng(0)).image
    out, rec = restore(builtin, Image.fromarray(noisy), RestoreSpec(degradation="auto"))
    assert rec.details["prior"] == "classical" and "restored classically" in rec.details["note"]
    x = dg.to_tensor(photo)
    assert dg.psnr(dg.to_tensor(out[0]), x) >= dg.psnr(dg.to_tensor(Image.fromarray(noisy)), x)


def test_a_users_drawing_on_pure_white_is_a_scene():
    """Shapes drawn on 255 white (the world's white is 245) were taken for a photo and restored classically."""
    from PIL import ImageDraw

    im = Image.new("RGB", (64, 64), (255, 255, 255))
    d = ImageDraw.Draw(im)
    d.ellipse((6, 6, 28, 28), fill=(220, 40, 40))
    d.rectangle((36, 34, 58, 56), fill=(40, 60, 220))
    assert world.looks_like_scene(im) and world.looks_like_scene(im.resize((16, 16), Image.BICUBIC))
    assert world.looks_like_scene(im.filter(ImageFilter.GaussianBlur(1.5)))
