"""The builtin pipeline: a genuine diffusers FluxPipeline, trainable end to end and loadable offline."""
import json
import random

import pytest
import torch
from safetensors.torch import load_file

from ditflow.pipelines import loading
from ditflow.training import train
from ditflow.world import scenes as world


@pytest.fixture(scope="module")
def text():
    return loading.load_minilm()


def test_encode_text_matches_flux_encode_prompt(text):
    """Training's one-pass MiniLM encoding must equal what FluxPipeline computes at sampling time."""
    from ditflow.pipelines.tiny import tiny_flux_pipeline

    tok, enc = text
    pipe = tiny_flux_pipeline()
    pipe.text_encoder = pipe.text_encoder_2 = enc
    pipe.tokenizer = pipe.tokenizer_2 = tok
    pipe.tokenizer_max_length = loading.TEXT_LEN
    prompts = ["a red circle in the center", "[TWO-PANEL] the same square in two colours; [LEFT] a blue square"]
    seq, pooled, _ = pipe.encode_prompt(prompts, prompt_2=None, max_sequence_length=loading.TEXT_LEN)
    with torch.no_grad():
        seq2, pooled2 = loading.encode_text(tok, enc, prompts)
    assert torch.allclose(seq, seq2, atol=1e-5) and torch.allclose(pooled, pooled2, atol=1e-5)


def test_padding_does_not_reach_the_caption_states(text):
    """FluxPipeline passes no mask; MaskedMiniLM reads it from the ids, so padding leaves real tokens alone."""
    tok, enc = text
    caption = "a red circle on the left"
    n = len(tok(caption).input_ids)
    with torch.no_grad():
        seq80, pooled80 = loading.encode_text(tok, enc, [caption], 80)
        seq16, pooled16 = loading.encode_text(tok, enc, [caption], 16)
        other, pooled_other = loading.encode_text(tok, enc, ["a blue square on the right"], 80)
    assert torch.allclose(seq80[:, :n], seq16[:, :n], atol=1e-5) and torch.allclose(pooled80, pooled16, atol=1e-5)
    assert (pooled80 - pooled_other).norm() > 0.2 * pooled80.norm()  # captions still differ


def test_learning_rate_warms_up_holds_and_cools_down_over_the_last_minutes():
    r = train.Recipe(lr=1e-3, warmup=10)
    assert train.lr_at(r, 0, 0, 100) == pytest.approx(1e-4)  # warm-up
    assert train.lr_at(r, 50, 99 * 60, 100) == pytest.approx(1e-3)  # no cooldown: constant to the end
    assert train.lr_at(r, 50, 79 * 60, 100, cooldown=20) == pytest.approx(1e-3)  # before the cooldown
    assert train.lr_at(r, 50, 90 * 60, 100, cooldown=20) == pytest.approx(1e-3 * 0.55)  # halfway down
    assert train.lr_at(r, 50, 120 * 60, 100, cooldown=20) == pytest.approx(1e-4)  # floor: 10%


def test_training_resumes_and_exports_a_loadable_flux_pipeline(tmp_path, text, monkeypatch):
    """A few seconds of each stage, exported, reloaded with from_pretrained, sampled at 64×64 and 64×128."""
    from diffusers import FluxPipeline

    run = tmp_path / "run"
    out = train.main(run_dir=run, minutes=30, max_steps=1, vae_minutes=0.05, batch=4)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert any(r["stage"] == "vae" for r in log) and (run / "transformers.ckpt").exists()
    assert torch.load(run / "transformers.ckpt", weights_only=True)["step"] == 1
    before = torch.load(run / "transformers.ckpt", weights_only=True)["trainees"]
    train.main(run_dir=run, minutes=30, max_steps=3, vae_minutes=0.05, batch=4, freeze=("small-nocep",))  # resumes
    after = torch.load(run / "transformers.ckpt", weights_only=True)
    assert after["step"] == 3
    for name, moved in (("small-nocep", False), ("small", True)):  # the frozen twin is kept, the others train
        w0, w1 = before[name]["model"], after["trainees"][name]["model"]
        assert any(not torch.equal(w0[k], w1[k]) for k in w0) == moved, name
    with pytest.raises(ValueError, match="names no model"):
        train.main(run_dir=run, minutes=30, max_steps=3, vae_minutes=0.05, batch=4, freeze=("nope",))

    cfg = json.loads((out / "vae" / "config.json").read_text())
    assert cfg["shift_factor"] is not None and cfg["scaling_factor"] > 0
    pipe = loading.load_builtin("builtin", out, text=text)
    assert isinstance(pipe, FluxPipeline)
    small = loading.load_builtin("builtin-small", out, text=text)
    n_large = sum(p.numel() for p in pipe.transformer.parameters())
    n_small = sum(p.numel() for p in small.transformer.parameters())
    assert n_large > 4 * n_small
    assert (out / "ablation" / "small-nocep" / "config.json").exists()
    from ditflow.pipelines.sampling import text_to_images

    ims = text_to_images(pipe, ["a red circle", "[TWO-PANEL] two squares"], [(64, 64), (64, 128)], [0, 1], steps=2)
    assert ims[0].size == (64, 64) and ims[1].size == (128, 64)

    # --init: a new run continues the exported weights and counts; the VAE is taken, not retrained
    meta = json.loads((out / "ditflow.json").read_text())
    assert meta["step"] == 3 and meta["minutes"] > 0
    run2 = tmp_path / "run2"
    out2 = train.main(run_dir=run2, minutes=30, max_steps=3, vae_minutes=0.05, batch=4, init=out)
    log2 = [json.loads(line) for line in (run2 / "log.jsonl").read_text().splitlines()]
    assert not any(r["stage"] == "vae" for r in log2)
    assert [r for r in log2 if r["stage"] == "init"][0]["step"] == 3
    for sub in ("transformer", "transformer_small", "vae", "ablation/small-nocep"):  # no step taken: unchanged
        a, b = (load_file(o / sub / "diffusion_pytorch_model.safetensors") for o in (out, out2))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), sub
    assert json.loads((out2 / "vae" / "config.json").read_text())["shift_factor"] == cfg["shift_factor"]
    train.main(run_dir=run2, minutes=30, max_steps=4, vae_minutes=0.05, batch=4, init=out)  # trains on, resumes
    state = torch.load(run2 / "transformers.ckpt", weights_only=True)
    assert state["step"] == 4 and state["warm_from"] == 3

    # --t-range: the models that train see only those timesteps (a T-Stitch early-step expert); the frozen keep
    seen_t, loss = [], train.flow_matching_loss
    monkeypatch.setattr(train, "flow_matching_loss", lambda *a: seen_t.append(a[-2].clone()) or loss(*a))
    out3 = train.main(run_dir=run2, minutes=30, max_steps=6, vae_minutes=0.05, batch=4, init=out,
                      freeze=("large",), t_range=(0.5, 1.0))
    t = torch.cat(seen_t)
    assert len(seen_t) == 4 and t.min() >= 0.5 and t.max() <= 1.0  # two steps × the small model and its twin
    models = json.loads((out3 / "ditflow.json").read_text())["models"]
    assert models["small"]["t_range"] == [0.5, 1.0] and models["large"]["t_range"] == [0.0, 1.0]
    with pytest.raises(ValueError, match="LO < HI"):
        train.main(run_dir=run2, minutes=30, max_steps=6, vae_minutes=0.05, batch=4, t_range=(0.8, 0.2))


def test_missing_or_corrupt_model_folder_names_the_problem(tmp_path, text):
    with pytest.raises(loading.ModelLoadError, match="does not exist"):
        loading.load_builtin("builtin", tmp_path / "nope", text=text)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model_index.json").write_text("{}")
    with pytest.raises(loading.ModelLoadError, match="missing vae/config.json"):
        loading.load_builtin("builtin", tmp_path / "m", text=text)


def test_cep_noise_has_the_papers_scale():
    emb = torch.zeros(64, 80, 384)
    noisy = train.cep(emb, 2.0, "gaussian")
    assert abs(noisy.std().item() - 2.0 / 384 ** 0.5) < 0.01
    uni = train.cep(emb, 2.0, "uniform")
    assert uni.abs().max().item() <= 2.0 / 384 ** 0.5 + 1e-6
    assert torch.equal(train.cep(emb, 0.0, "gaussian"), emb)


def test_training_batches_exclude_heldout_captions():
    rng = random.Random(0)
    for layout in train.LAYOUT_WEIGHTS:
        images, captions = train.world_batch(rng, 16, layout)
        assert images.shape[-2:] == (layout[0] * 64, layout[1] * 64)
        assert all(world.seen_in_training(c) for c in captions)


def test_mix_reweights_the_scenes_and_layouts_the_batches_draw(tmp_path):
    """`--mix` draws only what it weights: here single panels of two objects. The defaults are the recipe's, and a
    bad key or weight is refused before a run folder exists."""
    assert train.parse_mix([]) == (train.KIND_WEIGHTS, train.LAYOUT_WEIGHTS)
    only_two = [f"{k}=0" for k in train.KIND_WEIGHTS if k != "two"] + [f"{r}x{c}=0" for r, c in train.LAYOUT_WEIGHTS
                                                                      if (r, c) != (1, 1)]
    kinds, layouts = train.parse_mix(only_two)
    stream = iter(train.WorldStream(seed=5, batch=8, cfg_dropout=0.0, kinds=kinds, layouts=layouts))
    for _ in range(3):
        images, captions = next(stream)
        assert images.shape[-2:] == (64, 64)
        arrays = ((images.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().clip(0, 255).astype("uint8")
        assert [len(world.detect(a)[1]) for a in arrays] == [2] * len(captions), captions
    for bad, says in ((["twoo=2"], "neither a scene kind"), (["two=-1"], "weight ≥ 0"), (["1x2"], "KEY=WEIGHT"),
                      ([f"{r}x{c}=0" for r, c in train.LAYOUT_WEIGHTS], "every layout weight is 0")):
        with pytest.raises(ValueError, match=says):
            train.cli(["--run-dir", str(tmp_path / "run"), "--mix", *bad])
    assert not (tmp_path / "run").exists()


def test_world_stream_feeds_workers_distinct_reproducible_batches():
    """The GPU path reads batches from DataLoader workers: each worker has its own stream, the same seed gives the
    same batches, panel batches are smaller, and CFG dropout blanks about its share of the captions."""
    first = [next(iter(train.WorldStream(seed=3, batch=32, cfg_dropout=0.25))) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(first[0][0], first[1][0])) and first[0][1] == first[1][1]
    loader = torch.utils.data.DataLoader(train.WorldStream(seed=3, batch=32, cfg_dropout=0.25), batch_size=None,
                                         num_workers=2)
    batches = [b for _, b in zip(range(40), loader)]  # workers take turns: even batches worker 0, odd worker 1
    assert batches[0][1] == first[0][1] and batches[1][1] != first[0][1]
    for images, captions in batches:
        rows, cols = images.shape[-2] // 64, images.shape[-1] // 64
        assert len(captions) == (32 if (rows, cols) == (1, 1) else max(8, 32 // (rows * cols)))
    blank = sum(c == "" for _, caps in batches for c in caps) / sum(len(caps) for _, caps in batches)
    assert 0.15 < blank < 0.35
    assert train.pick_device("cpu").type == "cpu"


def test_export_leaves_the_callers_vae_in_full_precision(tmp_path):
    """The export is fp16; the VAE that training goes on encoding with must not be rounded with it."""
    from ditflow.pipelines.tiny import tiny_flux_pipeline

    vae = tiny_flux_pipeline().vae
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(1e-4 * torch.randn_like(p))  # values that fp16 cannot hold exactly
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    out = train.export(tmp_path / "export", vae, {})
    assert all(v.dtype == torch.float32 and torch.equal(v, before[k]) for k, v in vae.state_dict().items())
    saved = load_file(out / "vae" / "diffusion_pytorch_model.safetensors")
    assert all(v.dtype == torch.float16 for v in saved.values())


def test_install_keeps_the_models_the_run_did_not_train(tmp_path):
    """`train builtin --install` once replaced ditflow.json whole, dropping the late-step expert's record."""
    dest, export = tmp_path / "builtin", tmp_path / "export"
    for folder, models in ((dest, {"large": {"export_as": "transformer", "step": "old"},
                                   "small-late": {"export_as": "transformer_small_late", "t_range": [0, 0.45]},
                                   "gone": {"export_as": "transformer_gone"}}),
                           (export, {"large": {"export_as": "transformer", "step": "new"}})):
        (folder / "transformer").mkdir(parents=True)
        (folder / "transformer" / "config.json").write_text(json.dumps({"from": folder.name}))
        (folder / train.DITFLOW_META).write_text(json.dumps({"models": models, "step": folder.name}))
    (dest / "transformer_small_late").mkdir()
    (dest / "transformer_small_late" / "config.json").write_text("{}")
    (dest / train.DITFLOW_META).write_text(json.dumps({**json.loads((dest / train.DITFLOW_META).read_text()),
                                                       "stitch_student": {"kept": True}}))
    train.install_export(export, dest)
    meta = json.loads((dest / train.DITFLOW_META).read_text())
    assert meta["models"]["large"]["step"] == "new" and meta["step"] == "export"
    assert meta["models"]["small-late"]["t_range"] == [0, 0.45]  # its weights are still there
    assert "gone" not in meta["models"]  # no weights, no record
    assert meta["stitch_student"] == {"kept": True}
    assert json.loads((dest / "transformer" / "config.json").read_text()) == {"from": "export"}
