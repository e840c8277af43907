"""T-Stitch on real (tiny, random) diffusers Flux pipelines: routing, oracles at f = 0 and f = 1, guidance."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ditflow.bench.stitch import tiny_pair
from ditflow.pipelines.stitch import apply_stitch, remove_stitch, stitched
from ditflow.pipelines.tiny import tiny_flux_pipeline

STEPS = 4


def _gen(pipe, **kw):
    return pipe("a red circle", height=32, width=32, num_inference_steps=STEPS, output_type="np",
                generator=torch.Generator().manual_seed(0), **kw).images[0]


@pytest.fixture(scope="module")
def pair():
    return tiny_pair(seed=0)


def test_endpoints_equal_single_model_pipelines(pair):
    pipe, small = pair
    large_only = _gen(pipe)
    apply_stitch(pipe, small, 0.0)
    assert np.array_equal(_gen(pipe), large_only)
    apply_stitch(pipe, small, 1.0)
    all_small = _gen(pipe)
    remove_stitch(pipe)
    large = pipe.transformer
    pipe.transformer = small
    try:
        assert np.array_equal(all_small, _gen(pipe))  # oracle: the pipeline with only the small model
    finally:
        pipe.transformer = large
    assert np.array_equal(_gen(pipe), large_only)  # removed: back to the large model


@pytest.mark.parametrize("fraction,small_steps", [(0.25, 1), (0.4, 2), (0.5, 2), (0.8, 3)])
def test_first_fraction_of_steps_go_to_the_small_model(pair, fraction, small_steps):
    pipe, small = pair
    stitch = apply_stitch(pipe, small, fraction)
    try:
        out = _gen(pipe)
        assert stitch.calls == {"small": small_steps, "large": STEPS - small_steps, "reused": 0}
        stitch.calls.update(small=0, large=0)
        _gen(pipe, negative_prompt="", true_cfg_scale=2.0)  # true CFG: two calls per step, same split
        assert stitch.calls == {"small": 2 * small_steps, "large": 2 * (STEPS - small_steps), "reused": 0}
    finally:
        remove_stitch(pipe)
    assert not np.array_equal(out, _gen(pipe)) and stitched(pipe) is None


@pytest.mark.parametrize("at,steps", [(0.0, [0, 1]), (0.5, [1, 2]), (1.0, [2, 3])])
def test_at_places_the_small_models_steps(pair, at, steps):
    # the steps the small model serves, read from the scheduler: first (T-Stitch), mid-way, or last
    pipe, small = pair
    seen = []
    hook = small.register_forward_pre_hook(lambda m, a: seen.append(pipe.scheduler.step_index or 0))
    stitch = apply_stitch(pipe, small, 0.5, at=at)
    try:
        _gen(pipe)
    finally:
        hook.remove()
        remove_stitch(pipe)
    assert seen == steps and stitch.calls == {"small": 2, "large": 2, "reused": 0}


def test_unguided_small_steps_run_the_small_model_once_per_step(pair):
    pipe, small = pair
    cfg = dict(negative_prompt="", true_cfg_scale=3.0)
    guided = _gen(pipe, **cfg)
    stitch = apply_stitch(pipe, small, 0.5, at=1.0, cfg=False)
    try:
        unguided = _gen(pipe, **cfg)
        assert stitch.calls == {"small": 2, "large": 4, "reused": 2}  # the large steps keep both passes
        plain = _gen(pipe)  # no true CFG: one call per step, nothing to skip
        apply_stitch(pipe, small, 0.5, at=1.0)
        assert np.array_equal(plain, _gen(pipe))
        assert not np.array_equal(unguided, _gen(pipe, **cfg))
        apply_stitch(pipe, small, 1.0, cfg=False)
        all_small_unguided = _gen(pipe, **cfg)
    finally:
        remove_stitch(pipe)
    assert not np.array_equal(unguided, guided)
    large = pipe.transformer
    pipe.transformer = small
    try:  # oracle: the small model alone, without CFG
        assert np.array_equal(all_small_unguided, _gen(pipe))
    finally:
        pipe.transformer = large


def test_offset_cancels_a_constant_bias_of_the_small_model(pair):
    """A small model that is the large one plus a constant output bias: the offset measured on the step before
    its window removes the bias exactly, so the stitched pipeline draws the large model's image."""
    import copy

    pipe, _ = pair
    biased = copy.deepcopy(pipe.transformer)
    with torch.no_grad():
        biased.proj_out.bias.add_(0.05)
    cfg = dict(negative_prompt="", true_cfg_scale=3.0)
    for kw in ({}, cfg):
        large_only = _gen(pipe, **kw)
        apply_stitch(pipe, biased, 0.5, at=1.0)
        plain = _gen(pipe, **kw)
        stitch = apply_stitch(pipe, biased, 0.5, at=1.0, offset=True)
        try:
            corrected = _gen(pipe, **kw)
            passes = 2 if kw else 1
            # the window's 2 steps plus the anchor (step 1), each pass; the large model keeps steps 0 and 1
            assert stitch.calls == {"small": 3 * passes, "large": 2 * passes, "reused": 0}
            assert sorted(stitch.offsets) == list(range(passes))
        finally:
            remove_stitch(pipe)
        assert np.abs(plain - large_only).max() > 1e-3  # the bias shows without the offset
        np.testing.assert_allclose(corrected, large_only, atol=1e-5)


def test_unguided_offset_window_carries_the_large_models_guidance_from_the_anchor(pair):
    """cfg=False with the offset: the small model runs once per window step, and the unconditional pass is answered
    with its shifted conditional output minus the guidance (cond − uncond) the large model gave on the anchor step,
    so the pipeline's CFG sum is cond + (s − 1)·guidance at half the small model's cost."""
    pipe, small = pair
    cfg = dict(negative_prompt="", true_cfg_scale=3.0)
    apply_stitch(pipe, small, 0.5, at=1.0, cfg=False, offset=False)
    unguided = _gen(pipe, **cfg)
    stitch = apply_stitch(pipe, small, 0.5, at=1.0, cfg=False, offset=True)
    stitched_forward, seen = pipe.transformer.forward, []

    def record(*args, **kwargs):
        out = stitched_forward(*args, **kwargs)
        seen.append((pipe.scheduler.step_index or 0, out[0] if isinstance(out, tuple) else out.sample))
        return out

    pipe.transformer.forward = record  # remove_stitch deletes it with the stitch
    try:
        carried = _gen(pipe, **cfg)
        # steps 0-1 large (both passes); the anchor (step 1) adds one small cond call; the window one per step
        assert stitch.calls == {"small": 3, "large": 4, "reused": 2}
        assert sorted(stitch.offsets) == [0]
        assert [step for step, _ in seen] == [0, 0, 1, 1, 2, 2, 3, 3]
        guide = seen[2][1] - seen[3][1]  # the large model's cond − uncond on the anchor step
        torch.testing.assert_close(stitch.guide, guide, rtol=0, atol=0)
        for cond, uncond in (seen[4:6], seen[6:8]):
            torch.testing.assert_close(uncond[1], cond[1] - guide, rtol=0, atol=0)
        seen.clear()
        assert np.array_equal(carried, _gen(pipe, **cfg))  # a second run measures its own, same guidance
    finally:
        remove_stitch(pipe)
    assert not np.array_equal(carried, unguided)
    assert "forward" not in vars(pipe.transformer)


def test_offset_gives_each_cfg_pass_its_own_shift_and_needs_a_step_before(pair):
    pipe, small = pair
    cfg = dict(negative_prompt="", true_cfg_scale=3.0)
    apply_stitch(pipe, small, 0.5, at=1.0)
    plain = _gen(pipe, **cfg)
    stitch = apply_stitch(pipe, small, 0.5, at=1.0, offset=True)
    try:
        shifted = _gen(pipe, **cfg)
        assert not torch.equal(stitch.offsets[0], stitch.offsets[1])  # cond and uncond differ between models
        assert np.array_equal(shifted, _gen(pipe, **cfg))  # a second run measures its own, same offsets
    finally:
        remove_stitch(pipe)
    assert not np.array_equal(plain, shifted)
    with pytest.raises(ValueError, match="at > 0"):
        apply_stitch(pipe, small, 0.4, offset=True)
    assert stitched(pipe) is None


def test_small_model_last_differs_from_first_and_all_small_is_placement_free(pair):
    pipe, small = pair
    outs = {}
    for at in (0.0, 1.0):
        for f in (0.5, 1.0):
            apply_stitch(pipe, small, f, at=at)
            outs[at, f] = _gen(pipe)
            remove_stitch(pipe)
    assert not np.array_equal(outs[0.0, 0.5], outs[1.0, 0.5])
    assert np.array_equal(outs[0.0, 1.0], outs[1.0, 1.0])  # every step small: where they "sit" cannot matter


def test_guidance_distilled_mismatch_both_ways():
    pipe = tiny_flux_pipeline(seed=1, guidance_embeds=True)  # FLUX.1-dev-like large model
    _, small = tiny_pair(seed=1)  # no guidance embedding
    stitch = apply_stitch(pipe, small, 0.5)
    assert np.isfinite(_gen(pipe)).all() and stitch.calls["small"] == 2
    remove_stitch(pipe)
    plain, _ = tiny_pair(seed=2)
    distilled = tiny_flux_pipeline(seed=3, guidance_embeds=True).transformer
    stitch = apply_stitch(plain, distilled, 0.5)
    assert np.isfinite(_gen(plain)).all() and stitch.calls["small"] == 2


def test_incompatible_models_and_bad_fractions_raise(pair):
    from diffusers import FluxTransformer2DModel

    pipe, small = pair
    other = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                   attention_head_dim=16, num_attention_heads=2, joint_attention_dim=48,
                                   pooled_projection_dim=32, axes_dims_rope=(4, 6, 6))
    with pytest.raises(ValueError, match="joint_attention_dim"):
        apply_stitch(pipe, other, 0.4)
    for f in (-0.1, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            apply_stitch(pipe, small, f)
    for at in (-0.5, 2.0):
        with pytest.raises(ValueError, match="position"):
            apply_stitch(pipe, small, 0.4, at=at)
    with pytest.raises(ValueError, match="different model"):
        apply_stitch(pipe, pipe.transformer, 0.4)
    assert stitched(pipe) is None


def test_bench_stitch_reports_a_paired_interval(capsys):
    from ditflow.bench.stitch import label, main

    rows = main(fractions=(0.0, 1.0), n=1, steps=2, tiny=True, small_cfg=(True, False))
    assert [(r["fraction"], r["small_cfg"]) for r in rows] == [(0.0, True), (1.0, True), (1.0, False)]
    offset_rows = main(fractions=(0.0, 0.5), n=1, steps=2, tiny=True, at=1.0, offsets=(False, True))
    assert [(r["fraction"], r["offset"]) for r in offset_rows] == [(0.0, False), (0.5, False), (0.5, True)]
    assert rows[0]["score_change_points"] == 0.0
    n = len(rows[0]["passed"])
    assert n > 0 and all(len(r["passed"]) == n for r in rows)
    out = capsys.readouterr().out
    assert "prompts lost / gained" in out and "| 1.00, unguided |" in out and "| f | single |" in out
    assert "| 0.50, offset |" in out
    assert label({"fraction": 0.35, "small_cfg": True}) == "0.35"  # not 0.3, the row above it in a curve


def test_bench_stitch_takes_turns_without_changing_what_is_drawn(capsys):
    from ditflow.bench.stitch import run

    pipe, small = tiny_pair(seed=0)
    whole = run(pipe, small, (0.0, 0.5), n_per_kind=1, steps=2, at=1.0, chunk=100)
    turns = run(pipe, small, (0.0, 0.5), n_per_kind=1, steps=2, at=1.0, chunk=2)
    assert [r["passed"] for r in turns] == [r["passed"] for r in whole]
    for a, b in zip(whole, turns):  # each prompt keeps its seed; only the batching differs (1 level of 255 at most)
        assert len(a["images"]) == len(b["images"]) == 6
        for x, y in zip(a["images"], b["images"]):
            assert np.abs(np.asarray(x, np.int16) - np.asarray(y, np.int16)).max() <= 1
    assert any(np.asarray(x).std() > 0 for x in whole[1]["images"])
    assert not all(np.array_equal(x, y) for x, y in zip(whole[0]["images"], whole[1]["images"]))
    assert all(r["seconds"] > 0 for r in turns)
    out = capsys.readouterr().out
    assert "2/6 prompts: 0.00" in out and "6/6 prompts: 0.00" in out  # three turns of two prompts, every setting
    assert out.count("/6 prompts:") == 1 + 3


def test_builtin_ships_a_late_step_expert_that_stitches_onto_the_large_model():
    """builtin-small-late is its own weights (not a copy of builtin-small), trained on low noise only, and
    takes the builtin's last steps through the same call `generate --stitch F --stitch-at 1` makes."""
    import json

    from ditflow.pipelines.loading import BUILTIN_DIR, load_pipeline, load_transformer

    meta = json.loads((BUILTIN_DIR / "ditflow.json").read_text())
    lo, hi = meta["models"]["small-late"]["t_range"]
    assert lo == 0.0 and hi < 0.5
    pipe = load_pipeline("builtin", device="cpu")
    late = load_transformer("builtin-small-late", device="cpu")
    small = load_transformer("builtin-small", device="cpu")
    assert any(not torch.equal(a, b) for a, b in zip(late.state_dict().values(), small.state_dict().values()))
    stitch = apply_stitch(pipe, late, 0.4, at=1.0)
    pipe("a red circle", height=64, width=64, num_inference_steps=5, output_type="np")
    assert stitch.calls == {"small": 2, "large": 3, "reused": 0}
