"""CLEAR distillation on a tiny random Flux pipeline: the student, its loss, training, and the weights file."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

from ditflow.kernels.processors import installed, remove_local_attention
from ditflow.pipelines.tiny import tiny_flux_pipeline
from ditflow.training import distill

SMALL = dict(model="tiny", height=64, width=64, radius=2.0, n_samples=4, teacher_steps=2, steps=3, batch=2,
             eval_n=0)


def test_student_trains_only_image_stream_projections():
    teacher = tiny_flux_pipeline(seed=0).transformer.eval()
    student = distill.make_student(teacher, radius=2.0)
    trainable = [n for n, p in student.named_parameters() if p.requires_grad]
    assert trainable and all(".attn." in n and n.split(".attn.")[1].rsplit(".", 1)[0] in distill.IMAGE_STREAM
                             for n in trainable)
    assert any("single_transformer_blocks" in n for n in trainable)  # joint q/k/v of single-stream blocks
    assert not any("add_" in n or "to_add_out" in n for n in trainable)  # the text stream stays frozen
    assert installed(student) is not None and installed(teacher) is None


def test_distillation_lowers_the_loss_on_fixed_data():
    """The student moves toward the teacher: output and attention-output gaps shrink on a fixed batch.

    The flow term is switched off here: on a random tiny teacher it is mostly irreducible noise."""
    pipe = tiny_flux_pipeline(seed=1)
    cfg = distill.DistillConfig(**{**SMALL, "steps": 40, "lr": 3e-3, "batch": 4, "w_flow": 0.0})
    teacher = pipe.transformer.eval().requires_grad_(False)
    data = distill.teacher_samples(pipe, cfg)
    assert data["x0"].shape == (4, 16 * 16, 16)  # 64 px / VAE 2 / packing 2 = a 16×16 token grid
    student = distill.make_student(teacher, cfg.radius)
    names = distill.attention_modules(teacher, cfg.attn_every)
    img_ids, txt_ids = distill.token_ids(1, 64, 64, data["seq"].shape[1], pipe.vae_scale_factor)
    g = torch.Generator().manual_seed(5)
    t, noise = torch.tensor([0.3, 0.5, 0.7, 0.9]), torch.randn(data["x0"].shape, generator=g)

    def fixed_loss():
        tap_t, tap_s = distill.AttentionTap(teacher, names), distill.AttentionTap(student, names)
        try:
            with torch.no_grad():
                return distill.distill_loss(student, teacher, tap_s, tap_t, data["x0"], data["seq"], data["pooled"],
                                            img_ids, txt_ids, t, noise, cfg)[1]
        finally:
            tap_t.remove(), tap_s.remove()

    before = fixed_loss()
    assert before["attn"] > 0 and before["match"] > 0  # the window changes the output: something to distill
    history = distill.train_student(teacher, student, data, cfg, pipe.vae_scale_factor, log=lambda m: None)
    after = fixed_loss()
    assert len(history) == 40
    assert after["match"] < 0.7 * before["match"] and after["attn"] < 0.7 * before["attn"]
    frozen = dict(teacher.named_parameters())
    for n, p in student.named_parameters():  # only the image-stream projections moved
        assert torch.equal(p, frozen[n]) != p.requires_grad


def test_main_writes_a_small_weights_file_that_loads_back(tmp_path):
    pipe = tiny_flux_pipeline(seed=2)
    report = distill.main(pipe=pipe, out=str(tmp_path), log=lambda m: None, **SMALL)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["steps_run"] == 3 and saved["masked"]["grid"] == [16, 16]
    assert 0.5 < report["masked"]["image_pairs_masked"] < 1  # r=2 on 16×16: most image pairs masked
    weights = tmp_path / distill.WEIGHTS_NAME
    total = sum(p.numel() for p in pipe.transformer.parameters())
    from safetensors.torch import load_file

    state = load_file(str(weights))
    assert 0 < sum(v.numel() for v in state.values()) < total  # only the projections ship

    fresh = tiny_flux_pipeline(seed=2).transformer  # same seed: the teacher's weights
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # its own teacher: no warning
        distill.load_student(fresh, weights)
    assert installed(fresh).radius == 2.0
    own = dict(fresh.named_parameters())
    assert all(v.dtype == torch.float16 and torch.equal(own[k], v.to(own[k].dtype)) for k, v in state.items())
    remove_local_attention(fresh)
    with pytest.warns(UserWarning, match="distilled from other weights"):
        distill.load_student(tiny_flux_pipeline(seed=3).transformer, weights)  # same shapes, another teacher


def test_teacher_samples_are_kept_for_the_next_run_with_the_same_teacher(tmp_path, monkeypatch):
    cache = tmp_path / "samples.pt"
    pipe = tiny_flux_pipeline(seed=2)
    cfg = distill.DistillConfig(**SMALL, samples=str(cache))
    first = distill.cached_teacher_samples(pipe, cfg, log=lambda m: None)
    assert cache.is_file()
    calls = []
    real = distill.teacher_samples
    monkeypatch.setattr(distill, "teacher_samples", lambda p, c: calls.append(c.n_samples) or real(p, c))
    again = distill.cached_teacher_samples(pipe, cfg, log=lambda m: None)
    assert calls == [] and all(torch.equal(first[k], again[k]) for k in first)
    distill.cached_teacher_samples(pipe, distill.DistillConfig(**{**SMALL, "n_samples": 2}, samples=str(cache)),
                                   log=lambda m: None)  # other settings: sampled again, and kept instead
    other_teacher = tiny_flux_pipeline(seed=3)
    distill.cached_teacher_samples(other_teacher, distill.DistillConfig(**{**SMALL, "n_samples": 2},
                                                                        samples=str(cache)), log=lambda m: None)
    assert calls == [2, 2]  # the same settings but other weights: stale, sampled again
    cache.write_bytes(b"not a torch file")
    distill.cached_teacher_samples(pipe, cfg, log=lambda m: None)
    assert calls == [2, 2, 4] and torch.load(cache, weights_only=True)["key"]["n_samples"] == 4


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="multiples of 16"):
        distill.main(pipe=None, **{**SMALL, "height": 60})
    with pytest.raises(ValueError, match="unknown distill settings"):
        distill.main(pipe=None, radius_px=3)
    with pytest.raises(ValueError, match="radius"):
        distill.main(pipe=None, **{**SMALL, "radius": 0})


def test_loading_a_foreign_file_raises(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "x.safetensors"
    save_file({"nope": torch.zeros(2)}, str(path), metadata={"radius": "2"})
    with pytest.raises(ValueError, match="does not fit"):
        distill.load_student(tiny_flux_pipeline().transformer, path)
    save_file({"nope": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="not a local-attention student"):
        distill.load_student(tiny_flux_pipeline().transformer, path)


def test_score_judges_canvases_panels_and_attributes(monkeypatch):
    """The scorer is the real one; the generator is replaced by the world's own renders (all right), then by those
    renders with the first panel blanked (no canvas right, three panels of four, fewer attributes)."""
    import random

    from PIL import Image

    from ditflow.pipelines import sampling
    from ditflow.world import scenes as world

    cfg = distill.DistillConfig(model="tiny", height=128, width=128, eval_n=6)
    pairs = distill.canvas_prompts(cfg.eval_n, cfg.height, cfg.width, seed=10_000 + cfg.seed, heldout=True)
    truth = {t: world.render(s, random.Random(i)) for i, (t, s) in enumerate(pairs)}

    def blank_first(img):
        img = img.copy()
        img.paste(Image.new("RGB", (world.PANEL, world.PANEL), world.BACKGROUNDS["white"]), (0, 0))
        return img

    for draw, want in ((lambda im: im, {"canvases": 1.0, "panels": 1.0, "attributes": 1.0}),
                       (blank_first, {"canvases": 0.0, "panels": 0.75})):
        monkeypatch.setattr(sampling, "text_to_images",
                            lambda pipe, prompts, *a, **k: [draw(truth[p]) for p in prompts])
        got = distill.score(None, cfg)
        assert set(got) == set(distill.SCORES) and all(got[k] == v for k, v in want.items())
    assert 0.5 < got["attributes"] < 1.0


def test_a_run_continues_from_a_student_file(tmp_path):
    """--init starts from the file's projections (with lr 0 they come back unchanged), counts the steps behind
    them, draws other batches, and refuses a file made for another radius before any sampling."""
    pipe = tiny_flux_pipeline(seed=2)
    distill.main(pipe=pipe, out=str(tmp_path / "a"), log=lambda m: None, **SMALL)
    first = tmp_path / "a" / distill.WEIGHTS_NAME
    pipe = tiny_flux_pipeline(seed=2)
    distill.main(pipe=pipe, out=str(tmp_path / "b"), log=lambda m: None,
                 **{**SMALL, "steps": 1, "lr": 0.0, "init": str(first)})
    meta_a, state_a = distill.read_student(first)
    meta_b, state_b = distill.read_student(tmp_path / "b" / distill.WEIGHTS_NAME)
    assert meta_a["steps"] == "3" and meta_b["steps"] == "4"
    assert state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    cfg = distill.DistillConfig(**SMALL)
    assert distill.batch_seed(cfg) != distill.batch_seed(distill.DistillConfig(**SMALL, init=str(first)))
    with pytest.raises(ValueError, match="radius 2, not 3"):
        distill.main(pipe=None, **{**SMALL, "radius": 3.0, "init": str(first)})


def test_cooldown_lowers_the_learning_rate_within_the_budget(tmp_path):
    pipe = tiny_flux_pipeline(seed=2)
    teacher = pipe.transformer.eval().requires_grad_(False)
    cfg = distill.DistillConfig(**{**SMALL, "minutes": 0.5, "cooldown": 0.5, "lr": 1e-3})
    data = distill.teacher_samples(pipe, cfg)
    history = distill.train_student(teacher, distill.make_student(teacher, cfg.radius), data, cfg,
                                    pipe.vae_scale_factor, log=lambda m: None)
    lrs = [h["lr"] for h in history]
    assert lrs[0] == pytest.approx(1e-3, rel=0.05) and lrs == sorted(lrs, reverse=True) and lrs[-1] < lrs[0]
    with pytest.raises(ValueError, match="cooldown is part of the minutes budget"):
        distill.main(pipe=None, **{**SMALL, "cooldown": 5.0})  # no minutes budget to cool down within
    with pytest.raises(ValueError, match="cooldown is part of the minutes budget"):
        distill.main(pipe=None, **{**SMALL, "minutes": 2.0, "cooldown": 5.0})


def test_the_shipped_student_was_distilled_from_the_shipped_large_model():
    """`--local-attention student` on the builtin: the file's teacher digest is the shipped transformer's, so a
    retrained large model cannot ship beside a stale student unnoticed."""
    from ditflow.pipelines.loading import BUILTIN_DIR, STUDENT_FILE, load_transformer

    path = BUILTIN_DIR / STUDENT_FILE
    meta, state = distill.read_student(path)
    record = json.loads((BUILTIN_DIR / "ditflow.json").read_text())["local_attention_student"]
    assert float(meta["radius"]) == record["radius"] and int(meta["steps"]) == record["student_steps"]
    transformer = load_transformer("builtin", device="cpu")
    before = {k: v.clone() for k, v in transformer.state_dict().items() if k in state}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        distill.load_student(transformer, path)
    assert installed(transformer).radius == 6.0
    assert all(not torch.equal(before[k], transformer.state_dict()[k]) for k in state)  # distilled, not copied


def test_bench_clear_scores_teacher_student_and_undistilled_on_the_same_canvases(capsys):
    from ditflow.bench import clear

    assert clear.cli(["--n", "1", "--batch", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| right")]
    assert [r.split(" | ")[0] for r in rows] == ["| canvases", "| panels", "| attributes"]
    assert all(("(met)" in r) != ("(not met)" in r) or "nan" in r for r in rows)
    assert "teacher (full attention): canvases" in out and "student (distilled): canvases" in out
    assert "local, not distilled: canvases" in out


def test_bench_clear_scores_the_teacher_unrouted_unless_asked(capsys):
    """Local attention takes no routing mask, so the teacher it is compared with is unrouted; the routed teacher
    is a column of its own, on request."""
    from ditflow.bench import clear

    assert clear.cli(["--n", "1", "--batch", "1", "--variants", "teacher", "--routed-teacher"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| right"))
    assert header == "| right | teacher (full attention) | teacher (full attention), routed |"
