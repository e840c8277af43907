"""Restoration requests end to end (issue 30): `ditflow run "<request>" -i <degraded scene>` on the builtin model
returns the size asked for and is never worse than its input, measured by PSNR against the clean scene; a
restoration that fails its check against the input hands the input back, and says so in the manifest."""
import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from ditflow.agents.parsing import Context, parse_rules
from ditflow.agents.planning import plan_rules
from ditflow.agents.restoring import output_size
from ditflow.api import read_manifest
from ditflow.cli.main import main
from ditflow.schemas import InputImage
from ditflow.toolkit import degradation as dg
from ditflow.toolkit.restore import check_restoration
from ditflow.world import scenes as world

SR_MARGIN_DB = 0.5  # an upscale may trail bicubic by this much and still count as no worse


@pytest.fixture(scope="module")
def clean() -> Image.Image:
    # the scene: two objects in opposite corners on white
    return world.render(world.CanvasSpec((world.PanelSpec((world.ObjectSpec("red", "circle", None, "top-left"),
                                                           world.ObjectSpec("blue", "square", None, "bottom-right")),
                                                          "white"),)))


def _noisy(img: Image.Image, sigma255: float) -> Image.Image:
    noise = np.random.default_rng(0).normal(0, sigma255 / 255, (img.height, img.width, 3))
    a = np.asarray(img, np.float32) / 255 + noise
    return Image.fromarray((np.clip(a, 0, 1) * 255).round().astype(np.uint8))


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return Image.open(buf).convert("RGB")


def psnr(img: Image.Image, ref: Image.Image) -> float:
    return dg.psnr(dg.to_tensor(img), dg.to_tensor(ref))


def run(tmp_path, instruction: str, image: Image.Image, *flags: str):
    """`ditflow run` on one input; (the output image, its manifest)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    src, out = tmp_path / "in.png", tmp_path / "out"
    image.save(src)
    assert main(["run", instruction, "-i", str(src), "-o", str(out), "-q", *flags]) == 0
    return Image.open(out / "0001.png").convert("RGB"), read_manifest(out)


def restore_call(manifest) -> dict:
    (rec,) = [r for r in manifest.tool_calls if r.tool == "restore"]
    return rec.details


def test_upscale_returns_the_size_asked_for_and_beats_bicubic(tmp_path, clean):
    tiny = clean.resize((16, 16), Image.BICUBIC)
    out, m = run(tmp_path, "Upscale this tiny image to 64 by 64 pixels.", tiny)
    assert out.size == (64, 64)
    assert m.plan.steps[0].params["width"] == 64 and m.plan.steps[0].params["height"] == 64
    bicubic = tiny.resize((64, 64), Image.BICUBIC)
    assert psnr(out, clean) >= psnr(bicubic, clean) - SR_MARGIN_DB, (psnr(out, clean), psnr(bicubic, clean))


@pytest.mark.parametrize("instruction, want", [
    ("Upscale this tiny image.", (64, 64)),  # smaller than the builtin model's 64 px panel: to the panel
    ("upscale it 2x", (32, 32)),
    ("upscale this picture 4x bigger", (64, 64)),
    ("upscale it to 128x96", (128, 96)),
    ("upscale this 16x16 image to 48x48", (48, 48)),  # the input's own size is not the one asked for
    ("upscale this 16x16 image 2x", (32, 32)),
    ("It is too small and fuzzy. Please make it 48 by 48.", (48, 48)),  # a full stop after the size
    ("upscale it by 2.5x", (40, 40)),
    ("make this tiny image bigger", (64, 64)),  # the image made bigger, not an object in it
    ("enlarge this small picture", (64, 64)),
])
def test_the_size_a_request_names_reaches_the_restore_step(instruction, want):
    req = parse_rules(Context(instruction=instruction, inputs=[InputImage(index=1, description="a 16x16 photo")]))
    assert req.request.task == "restore", req.request
    (step,) = plan_rules(req.request).steps
    assert output_size(Image.new("RGB", (16, 16)), step.params, panel=64) == want, step.params


@pytest.mark.parametrize("instruction", ["make the circle bigger", "make the red one larger", "make the blue square larger"])
def test_an_object_made_bigger_is_an_edit_not_an_upscale(instruction):
    req = parse_rules(Context(instruction=instruction,
                              inputs=[InputImage(index=1, description="a red circle and a blue square")]))
    assert req.request.task == "edit", req.request


@pytest.mark.parametrize("instruction, kind", [
    ("Boost the sharpness, please", "blur"), ("make this crisper", "blur"),
    ("Could we get a better quality version of this picture?", None),  # the operator left to auto
])
def test_quality_words_route_to_restoration(instruction, kind):
    req = parse_rules(Context(instruction=instruction, inputs=[InputImage(index=1, description="a red circle")]))
    assert req.request.task == "restore", req.request
    assert req.request.inputs[0].degradations == ([kind] if kind else [])


@pytest.mark.parametrize("instruction, degrade", [
    ("fix this image please", lambda img: _noisy(img, 40)),
    ("sharpen this blurry picture", lambda img: img.filter(ImageFilter.GaussianBlur(1.5))),
    ("fix the compression artifacts", lambda img: _jpeg(img, 15)),
])
def test_restoration_is_never_worse_than_its_input(tmp_path, clean, instruction, degrade):
    degraded = degrade(clean)
    out, m = run(tmp_path, instruction, degraded)
    assert out.size == clean.size
    assert psnr(out, clean) >= psnr(degraded, clean), (psnr(out, clean), psnr(degraded, clean), restore_call(m))


def test_noise_severity_is_measured_not_assumed(tmp_path, clean):
    """σ = 30/255 read as the default 0.2 left the model too much to redraw; the image says how noisy it is."""
    noisy = _noisy(clean, 30)
    out, m = run(tmp_path, "This picture is really noisy, can you clean it up?", noisy, "--no-verify")
    details = restore_call(m)
    assert details["degradation"] == "noise" and details["severity_from"] == "estimated"
    assert 15 / 255 < details["severity"] < 35 / 255  # clipping at white reads low: ≈ 22/255
    assert psnr(out, clean) >= psnr(noisy, clean) + 3, (psnr(out, clean), psnr(noisy, clean))


def test_noisy_request_with_verification_is_never_worse(tmp_path, clean):
    """Verification once repaired the restored square into the circle the describe tool misread in the noisy input
    (28.7 dB → 16.6 dB); a restoration answers to its input now, not to that description."""
    noisy = _noisy(clean, 30)
    out, _ = run(tmp_path, "This picture is really noisy, can you clean it up?", noisy)
    assert psnr(out, clean) >= psnr(noisy, clean)


def test_a_failed_restoration_hands_back_the_input_and_says_so(tmp_path, clean):
    """A random model restores nothing; the check catches it. A denoising is then done classically (checked
    the same way, and closer to the clean scene than the input); an upscale hands back the input, bicubic."""
    noisy = _noisy(clean, 30)
    out, m = run(tmp_path, "please denoise this", noisy, "--model", "tiny")
    details = restore_call(m)
    assert details["prior"] == "classical" and details["prior_check"]["failed"] and details["check"]["ok"]
    assert not details["fallback"] and "restored classically" in details["note"]
    assert psnr(out, clean) > psnr(noisy, clean) + 3
    tiny = clean.resize((16, 16), Image.BICUBIC)
    out, m = run(tmp_path / "sr", "upscale this", tiny, "--model", "tiny")  # the tiny model's panel is 32 px
    assert out.size == (32, 32) and restore_call(m)["fallback"]
    small = clean.resize((32, 32), Image.BOX)
    assert psnr(out, small) >= psnr(tiny.resize((32, 32), Image.BICUBIC), small) - SR_MARGIN_DB


def test_check_passes_the_clean_scene_and_fails_a_changed_object(clean):
    """check_restoration without a reference: the clean scene explains its noisy measurement; the same scene with
    the square redrawn as a circle, or with a blob added, does not."""
    y = dg.to_tensor(_noisy(clean, 30))
    op = dg.operator("noise", dg.estimate_severity(_noisy(clean, 30), "noise"))
    c = dg.to_tensor(clean)
    assert check_restoration(op, y, c, op.noise_sigma)["ok"]
    changed = world.render(world.CanvasSpec((world.PanelSpec((world.ObjectSpec("red", "circle", None, "top-left"),
                                                              world.ObjectSpec("blue", "circle", None, "bottom-right")),
                                                             "white"),)))
    assert check_restoration(op, y, dg.to_tensor(changed), op.noise_sigma)["failed"]
    blob = c.clone()
    blob[..., 28:38, 4:14] = torch.tensor([0.16, 0.67, 0.24])[:, None, None]  # a small green square
    assert "local" in check_restoration(op, y, blob, op.noise_sigma)["failed"]
    blurred = dg.to_tensor(clean.filter(ImageFilter.GaussianBlur(1.5)))
    blur = dg.operator("blur", 1.5)
    assert check_restoration(blur, blurred, c, 1 / 255)["ok"]
    ringing = c + 0.15 * torch.sign(torch.randn(c.shape, generator=torch.Generator().manual_seed(0)))
    assert "edges" in check_restoration(blur, blurred, ringing.clamp(0, 1), 1 / 255)["failed"]
