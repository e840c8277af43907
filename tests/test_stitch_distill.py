"""T-Stitch trajectory distillation on tiny random Flux pipelines: recording, training, the handover, export."""
from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from ditflow.bench.stitch import tiny_pair
from ditflow.training import stitch_distill as sd
from ditflow.world import scenes as world

CFG = sd.StitchDistillConfig(fraction=0.5, steps=4, n_prompts=12, batch=4, lr=3e-3, minutes=5, max_steps=150)
quiet = lambda *_: None  # noqa: E731


@pytest.fixture(scope="module")
def recorded():
    pipe, small = tiny_pair(seed=0)
    pipe.ditflow_info = dataclasses.replace(pipe.ditflow_info, default_cfg=3.0)  # true CFG: cond + uncond calls
    return pipe, small, sd.record_trajectories(pipe, CFG, log=quiet)


def test_training_prompts_are_never_held_out():
    prompts = sd.training_prompts(200, seed=1)
    assert sum(map(len, prompts.values())) == 200 and len(prompts) > 1  # single panels and canvases
    assert all(world.seen_in_training(t) for ts in prompts.values() for t in ts)


def test_recorded_states_replay_to_the_large_models_velocities(recorded):
    pipe, _, groups = recorded
    assert sum(g.x.shape[0] for g in groups) == CFG.n_prompts
    for g in groups:
        n, k, length, channels = g.x.shape
        assert k == 2 and g.v.shape == (n, k, 2, length, channels) and torch.all(g.t[:-1] > g.t[1:])
        idx, ks = torch.arange(n), torch.arange(n) % k
        with torch.no_grad():  # cond and uncond, each with its own text, in the order the pipeline called them
            assert torch.allclose(sd.predict(pipe.transformer, g, idx, ks), g.v[idx, ks], atol=1e-5)
        # the second state is the Euler step from the first along the CFG-combined velocity (scale 3)
        v = g.v[:, 0, 1] + 3.0 * (g.v[:, 0, 0] - g.v[:, 0, 1])
        assert torch.allclose(g.x[:, 1], g.x[:, 0] + (g.t[1] - g.t[0]) * v, atol=1e-5)
        with torch.no_grad():  # the teacher unrolled from its own noise lands on its recorded handover latents
            assert sd.rollout_loss(pipe.transformer, g, idx, 3.0) < 1e-8


def test_distilled_student_reaches_the_large_models_handover(recorded):
    pipe, small, groups = recorded
    student = copy.deepcopy(small)
    before = sd.handover_gap(pipe, small, CFG.fraction, CFG.steps, 6)
    history = sd.train_student(student, groups, sd.cfg_scale(pipe), CFG, log=quiet)
    assert history[-1]["each"] < 0.1 * history[0]["each"] and "guided" in history[-1]
    assert "handover" not in history[-1]  # the rollout term is off by default
    after = sd.handover_gap(pipe, student, CFG.fraction, CFG.steps, 6)  # held-out prompts, unseen seeds
    assert after < 0.2 * before


def test_last_steps_are_recorded_from_the_whole_trajectory_and_distil(recorded):
    from ditflow.pipelines.sampling import call_kwargs, generators

    pipe, small, _ = recorded
    late = dataclasses.replace(CFG, at=1.0)
    groups = sd.record_trajectories(pipe, late, log=quiet)
    size, prompts, seeds = (32, 32), ["a red circle", "a blue square"], [5, 6]
    end, calls = sd.run_steps(pipe, prompts, size, seeds, range(2, 4), 4)
    full = pipe(prompts, height=32, width=32, generator=generators(seeds), output_type="latent",
                **call_kwargs(pipe, 4)).images
    assert torch.equal(end, full) and calls[-1]["handover_t"] == 0  # the handover is the final latents
    assert len(calls) == 1 + 2 * 2  # the last two steps, cond and uncond
    for g in groups:
        n, k = g.x.shape[:2]
        assert k == 2 and g.t[-1] == 0 and torch.all(g.t[:-1] > g.t[1:])
        idx, ks = torch.arange(n), torch.arange(n) % k
        with torch.no_grad():
            assert torch.allclose(sd.predict(pipe.transformer, g, idx, ks), g.v[idx, ks], atol=1e-5)
            assert sd.rollout_loss(pipe.transformer, g, idx, 3.0) < 1e-8
    student = copy.deepcopy(small)
    before = sd.handover_gap(pipe, small, late.fraction, late.steps, 6, at=1.0)
    sd.train_student(student, groups, sd.cfg_scale(pipe), late, log=quiet)
    assert sd.handover_gap(pipe, student, late.fraction, late.steps, 6, at=1.0) < 0.2 * before


def test_export_copies_the_folder_and_adds_the_student(tmp_path, recorded):
    from diffusers import FluxTransformer2DModel

    _, small, _ = recorded
    src = tmp_path / "src"
    (src / sd.STUDENT).mkdir(parents=True)
    (src / sd.STUDENT / "stale.txt").write_text("an older student")
    (src / "ditflow.json").write_text(json.dumps({"panel": 64}))
    before = {k: v.clone() for k, v in small.state_dict().items()}
    out = sd.export(small, src, tmp_path / "out", {"fraction": 0.5})
    loaded = FluxTransformer2DModel.from_pretrained(out, subfolder=sd.STUDENT)
    for (name, a), b in zip(small.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a.half().float(), b.float()), name
    assert not (out / sd.STUDENT / "stale.txt").exists() and not (tmp_path / "out.tmp").exists()
    assert json.loads((out / "ditflow.json").read_text()) == {"panel": 64, "stitch_student": {"fraction": 0.5}}
    # the caller's model is left as it was: fp32, not rounded through the fp16 copy
    assert all(torch.equal(v, before[k]) for k, v in small.state_dict().items())


def test_rollout_term_shrinks_the_gap_it_measures(recorded):
    pipe, small, groups = recorded
    student = copy.deepcopy(small)
    cfg = dataclasses.replace(CFG, rollout=1.0, max_steps=60)
    history = sd.train_student(student, groups, sd.cfg_scale(pipe), cfg, log=quiet)
    assert history[-1]["handover"] < 0.2 * history[0]["handover"]


@pytest.mark.parametrize("bad", [{"fraction": 0.0}, {"fraction": 1.5}, {"fraction": 0.01}, {"batch": 0},
                                 {"rollout_batch": 0}, {"at": -0.1}, {"at": 1.5}])
def test_config_refuses_impossible_settings(bad):
    with pytest.raises(ValueError):
        sd.StitchDistillConfig(**bad).check()
