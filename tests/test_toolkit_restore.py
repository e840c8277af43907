"""Degradation operators against brute-force oracles, restoration plumbing on a tiny pipeline, and the trained
degradation classifier on held-out scenes."""
import random

import pytest
import torch
from PIL import Image

from ditflow.pipelines.tiny import tiny_flux_pipeline
from ditflow.schemas import RestoreSpec
from ditflow.toolkit import degradation as dg
from ditflow.toolkit.restore import measurement, restore, restore_tensor, start_sigma
from ditflow.world import scenes as world


def _matrix(op, h=8, w=8) -> torch.Tensor:
    """The forward operator as a dense matrix (one channel), by applying it to every basis image."""
    cols = []
    for k in range(h * w):
        e = torch.zeros(1, 3, h, w)
        e.view(-1)[k] = 1.0
        cols.append(_linear(op, e)[0, 0].reshape(-1))
    return torch.stack(cols, 1).double()


def _linear(op, x):  # the operators without 8-bit quantisation, for the oracle
    if isinstance(op, dg.Blur):  # mirrored edges: the circular blur of the image's symmetric extension, cropped
        h, w = x.shape[-2:]
        return dg.gaussian_blur(dg._mirrored(x), op.severity)[..., :h, :w]
    if isinstance(op, dg.Downsample):
        return torch.nn.functional.avg_pool2d(x, op.factor)
    if isinstance(op, dg.Inpaint):
        return x * op.mask
    return x


@pytest.mark.parametrize("name", ["noise", "blur", "sr2", "sr4", "inpaint"])
def test_prox_is_the_exact_minimiser(name):
    """prox(x̂, y, ρ) = argmin ‖y − Hx‖² + ρ‖x − x̂‖² = (HᵀH + ρI)⁻¹(Hᵀy + ρx̂), checked by a dense solve."""
    g = torch.Generator().manual_seed(0)
    op = dg.operator(name, mask=dg.Inpaint("inpaint", 0.25).make_mask(8, 8, seed=1) if name == "inpaint" else None)
    x, xhat = torch.rand(1, 3, 8, 8, generator=g), torch.rand(1, 3, 8, 8, generator=g)
    y = _linear(op, x)
    rho = 0.3
    H = _matrix(op)
    lhs = H.T @ H + rho * torch.eye(64, dtype=torch.float64)
    want = torch.linalg.solve(lhs, H.T @ y[0, 0].reshape(-1).double() + rho * xhat[0, 0].reshape(-1).double())
    got = op.prox(xhat, y, rho)[0, 0].reshape(-1).double()
    assert torch.allclose(got, want, atol=1e-4)


def test_operators_degrade_and_baselines_help():
    x = dg.to_tensor(world.sample(random.Random(1), "single").image)
    for name, sev in [("noise", 0.2), ("blur", 1.5), ("sr4", None), ("inpaint", 0.25), ("jpeg", 10)]:
        op = dg.operator(name, sev)
        y = op.apply(x, seed=2)
        if name == "sr4":
            assert y.shape[-1] == 16
            assert dg.psnr(op.baseline(y), x) > 15
            continue
        assert dg.psnr(y, x) < 35
        if name in ("noise", "blur"):
            assert dg.psnr(op.baseline(y), x) > dg.psnr(y, x) + 2  # Wiener filtering is a real baseline
    with pytest.raises(ValueError, match="unknown degradation 'rain'"):
        dg.operator("rain")
    with pytest.raises(ValueError, match="noise σ must be in"):
        dg.operator("noise", 3.0)
    with pytest.raises(ValueError, match="not a multiple of 4"):
        dg.operator("sr4").apply(torch.zeros(1, 3, 10, 12))


def test_missing_region_is_found_or_a_mask_is_asked_for():
    x = dg.to_tensor(world.sample(random.Random(2), "single").image)
    op = dg.operator("inpaint", 0.25)
    img = dg.to_image(op.apply(x, seed=3))
    y, known = measurement(img, "inpaint")
    assert abs(float(1 - known.mean()) - 0.25) < 0.03
    with pytest.raises(ValueError, match="no missing region"):
        measurement(world.sample(random.Random(2), "single").image, "inpaint")
    with pytest.raises(ValueError, match="mask is 8x8 but the image is 64x64"):
        measurement(img, "inpaint", Image.new("L", (8, 8)))


@pytest.fixture(scope="module")
def pipe():
    return tiny_flux_pipeline()


def test_restoration_runs_part_way_and_stays_consistent(pipe):
    x = dg.to_tensor(world.sample(random.Random(4), "single").image.resize((32, 32)))
    # sr4: output is 4× the measurement and, after the final back-projection, downsamples back to it
    op = dg.operator("sr4")
    y = op.apply(x)
    out, details = restore_tensor(pipe, op, y, RestoreSpec(degradation="sr4", steps=4))
    assert out.shape == x.shape and details["steps_run"] == 3 and details["trace"]
    assert (torch.nn.functional.avg_pool2d(out, 4) - y).abs().max() < 2 / 255
    # inpaint: known pixels are the measurement's
    op = dg.operator("inpaint", 0.25)
    y = op.apply(x, seed=1)
    out, _ = restore_tensor(pipe, op, y, RestoreSpec(degradation="inpaint", steps=4))
    assert ((out - y) * op.mask).abs().max() < 1e-5
    # noise: the starting level rises with the measurement's noise
    lo = start_sigma(pipe, dg.operator("noise", 0.05), x)
    hi = start_sigma(pipe, dg.operator("noise", 0.3), x)
    assert 0 < lo < hi < 1
    out, rec = restore(pipe, dg.to_image(dg.operator("jpeg", 10).apply(x)), RestoreSpec(degradation="jpeg", steps=4))
    assert out[0].size == (32, 32) and rec.details["degradation"] == "jpeg"


def test_degradation_classifier_on_heldout_scenes():
    from ditflow.pipelines import classifiers
    from ditflow.training.classifiers import evaluate

    model = classifiers.load("degradation")
    acc = evaluate(model, "degradation", n=140, seed=777)
    assert acc["accuracy"] > 0.8, acc
    rng = random.Random(9)
    clean = world.sample(rng, "single").image
    noisy = dg.to_image(dg.operator("noise", 0.2).apply(dg.to_tensor(clean), seed=1))
    found = dg.detect_degradations(noisy)
    assert found and found[0][0] == "noise" and 0.1 < found[0][1] < 0.3


def test_bench_tools_tunes_on_dev_cases_with_a_restore_setting_overridden(capsys, monkeypatch):
    """`bench toolkit --sections tools --dev --kinds K --set NAME=VALUE`: the sweep that chose JPEG_LR, in the repo.
    The setting reaches the restoration, and only the kinds asked for are run."""
    from ditflow.bench import toolkit
    from ditflow.toolkit import restore as restore_module

    monkeypatch.setattr(restore_module, "JPEG_LR", restore_module.JPEG_LR)  # undone after the test
    assert toolkit.cli(["--sections", "tools", "--dev", "--families", "pil", "--no-photos", "--kinds", "jpeg",
                        "--n", "1", "--set", "JPEG_LR=0.3"]) == 0
    assert restore_module.JPEG_LR == 0.3
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert rows == ["kind", "jpeg"]
    with pytest.raises(ValueError, match="NAME=VALUE"):
        toolkit.cli(["--sections", "tools", "--set", "NOT_A_SETTING=1"])
