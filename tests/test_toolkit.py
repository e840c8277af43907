"""Toolkit on tiny random FLUX pipelines: generation, in-context groups, editing, guidance plumbing.

A random model draws noise, so these tests check mechanics that must hold for any weights: reference cells are
really held, references really reach the targets, pixels outside an inpainting mask are untouched, the velocity
recovered inside step callbacks is the transformer's own, and guidance raises the classifier's objective.
"""
import random

import numpy as np
import pytest
import torch
from PIL import Image

from ditflow.pipelines.tiny import tiny_flux_pipeline
from ditflow.schemas import EditSpec, GenerateSpec, GroupSpec, GuideSpec
from ditflow.toolkit import canvas as cv
from ditflow.toolkit import flux
from ditflow.toolkit.edit import REGION_MARGIN, describe, edit, find_target, shapes_edit
from ditflow.toolkit.generate import _canvas_plan, fill_canvas, generate, generate_group
from ditflow.world import scenes as world

STEPS = 3


@pytest.fixture(scope="module")
def pipe():
    return tiny_flux_pipeline()


def _psnr(a, b, mask=None):
    d = (np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2
    mse = d[mask].mean() if mask is not None else d.mean()
    return 10 * np.log10(255 ** 2 / max(mse, 1e-10))


def test_generate_is_seeded_and_reports_every_step(pipe):
    seen = []
    a, rec = generate(pipe, GenerateSpec(prompt="a red circle", steps=STEPS, seed=1), lambda s, n: seen.append((s, n)))
    b, _ = generate(pipe, GenerateSpec(prompt="a red circle", steps=STEPS, seed=1))
    c, _ = generate(pipe, GenerateSpec(prompt="a red circle", steps=STEPS, seed=2, width=64, height=32))
    assert seen == [(i, STEPS) for i in range(1, STEPS + 1)]
    assert np.array_equal(np.asarray(a[0]), np.asarray(b[0]))
    assert c[0].size == (64, 32) and rec.tool == "generate"
    with pytest.raises(ValueError, match="multiple of 4"):
        generate(pipe, GenerateSpec(prompt="x", steps=1, width=32, height=16).model_copy(update={"height": 18}))


def test_reference_cells_are_held_and_reach_the_targets(pipe, monkeypatch):
    layout = cv.plan_layout(2, native_area=32 * 32, panel=32, max_panels=2, multiple=flux.token_px(pipe))
    rng = random.Random(0)
    refs = [world.sample(rng, "single").image.resize((32, 32)) for _ in range(2)]
    spec = GroupSpec(panel_prompts=["a", "b"], n_refs=1, steps=STEPS, max_panels=2)
    decoded = []  # the latents the pipeline finally decodes (a spy: the real decoder still runs)
    real_decode = pipe.vae.decode
    monkeypatch.setattr(pipe.vae, "decode", lambda z, *a, **k: decoded.append(z.clone()) or real_decode(z, *a, **k))
    finals, wanted = [], []
    for ref in refs:
        canvas = cv.compose(layout, [ref, None])
        fill_canvas(pipe, canvas, layout, [True, False], "[TWO-PANEL] x; [LEFT] a, [RIGHT] b.", spec, seed=3)
        with torch.no_grad():
            z = pipe.vae.encode(flux.image_tensor(pipe, canvas)).latent_dist.mode()  # (1, C, 16, 32)
        finals.append(decoded[-1])
        wanted.append(z)
    half = finals[0].shape[-1] // 2
    for z_out, z_ref in zip(finals, wanted):
        assert torch.allclose(z_out[..., :half], z_ref[..., :half], atol=1e-4)  # the reference cell is held
    # same seed and prompt, different reference → different target: attention reads the reference
    assert (finals[0][..., half:] - finals[1][..., half:]).abs().mean() > 1e-5  # exactly 0 if unread


def test_group_returns_targets_and_long_sequences_stay_anchored(pipe):
    ref = Image.new("RGB", (32, 32), (200, 30, 30))
    spec = GroupSpec(overview="same", panel_prompts=list("rabcdef"), n_refs=1, max_panels=4, steps=2)
    targets, rec = generate_group(pipe, spec, [ref])
    assert len(targets) == 6 and all(t.size == (32, 32) for t in targets)
    assert [c["refs"] for c in rec.details["canvases"]] == [[0], [0]]  # every canvas anchored on the reference
    assert rec.details["method"] == "repaint"
    # text-only: the first canvas's first output anchors the later ones, not the latest output
    assert _canvas_plan(0, 7, 4) == [([], [0, 1, 2, 3]), ([0], [4, 5, 6])]
    assert _canvas_plan(2, 3, 9) == [([0, 1], [2, 3, 4])]
    with pytest.raises(ValueError, match="n_refs=1 but 0"):
        generate_group(pipe, spec, [])
    with pytest.raises(ValueError, match="leaves no target"):
        generate_group(pipe, GroupSpec(panel_prompts=["a"], n_refs=1, steps=1), [ref])


def test_fill_channel_models_use_the_fill_pipeline():
    from diffusers import FluxTransformer2DModel

    fill = tiny_flux_pipeline()
    # FLUX.1-Fill layout: noise (16) + masked-image latents (16) + mask (vae_scale² · 4 = 16) channels in
    fill.transformer = FluxTransformer2DModel(patch_size=1, in_channels=48, out_channels=16, num_layers=1,
                                              num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                                              joint_attention_dim=32, pooled_projection_dim=32,
                                              guidance_embeds=False, axes_dims_rope=(4, 6, 6))
    targets, rec = generate_group(fill, GroupSpec(panel_prompts=["a", "b"], n_refs=1, steps=2),
                                  [Image.new("RGB", (32, 32), "red")])
    assert rec.details["method"] == "fill" and targets[0].size == (32, 32)


def test_derived_pipelines_share_the_modules_and_keep_their_dtype():
    from diffusers import FluxFillPipeline, FluxImg2ImgPipeline, FluxInpaintPipeline

    half = tiny_flux_pipeline()
    for module in (half.transformer, half.vae, half.text_encoder):
        module.to(torch.bfloat16)  # as a FLUX.1 pipeline on a GPU (diffusers' from_pipe made such a one float32)
    for cls in (FluxImg2ImgPipeline, FluxInpaintPipeline, FluxFillPipeline):
        d = flux.derived(half, cls)
        assert d.transformer is half.transformer and d.vae is half.vae and d.tokenizer is half.tokenizer
        assert flux.derived(half, cls) is d
    assert {half.transformer.dtype, half.vae.dtype, half.text_encoder.dtype} == {torch.bfloat16}


def test_inpaint_keeps_everything_outside_the_mask(pipe):
    scene = world.sample(random.Random(5), "two")
    img = scene.image
    obj = scene.spec.panels[0].objects[0]
    se = shapes_edit(img, f"make the {obj.color} {obj.shape} {'blue' if obj.color != 'blue' else 'red'}", steps=2)
    assert se.kind == "recolor" and se.expected.objects[0].color != obj.color
    out, rec = edit(pipe, img, se.spec, se.mask)
    m = np.asarray(se.mask) > 0
    assert np.array_equal(np.asarray(out[0])[~m], np.asarray(img)[~m])
    assert 0 < rec.details["mask_fraction"] < 0.5
    mv = shapes_edit(img, f"move the {obj.color} {obj.shape} to the top left", steps=2)
    assert mv.kind == "move" and any(o.position == "top-left" for o in mv.expected.objects)
    rm = shapes_edit(img, f"remove the {obj.color} {obj.shape}")
    assert rm.kind == "remove" and len(rm.expected.objects) == 1
    assert shapes_edit(img, "make it look like a watercolour") is None


def test_candidates_come_from_one_batched_call_and_differ(pipe):
    scene = world.sample(random.Random(5), "two")
    img = scene.image
    m = Image.new("L", img.size, 0)
    m.paste(255, (8, 8, 40, 40))
    spec = EditSpec(prompt="a red circle", mode="inpaint", strength=1.0, steps=2, seed=3, num_images=3)
    outs, rec = edit(pipe, img, spec, m)
    keep = np.asarray(m) == 0
    assert len(outs) == 3 and rec.spec["num_images"] == 3
    assert all(np.array_equal(np.asarray(o)[keep], np.asarray(img)[keep]) for o in outs)
    assert len({o.tobytes() for o in outs}) == 3  # each its own noise
    one, _ = edit(pipe, img, spec.model_copy(update={"num_images": 1}), m)  # the same seed's first draw
    assert np.abs(np.asarray(one[0], float) - np.asarray(outs[0], float)).max() <= 2
    gen, _ = generate(pipe, GenerateSpec(prompt="a red circle", steps=STEPS, num_images=2))
    assert len(gen) == 2
    with pytest.raises(ValueError, match="num_images > 1 needs mode inpaint or sdedit"):
        EditSpec(prompt="x", mode="move", offset=(1, 0), num_images=2)
    with pytest.raises(ValueError, match="classifier guidance draws one image"):
        GenerateSpec(prompt="x", classifier_guidance=2.0, num_images=2)


def test_shapes_edits_prompt_the_region_and_keep_the_neighbours_out():
    scene = world.sample(random.Random(5), "two")
    (bg, (a, b)), img = world.detect(scene.image), scene.image
    se = shapes_edit(img, f"make the {a.color} {a.shape} {'blue' if a.color != 'blue' else 'red'}")
    assert se.spec.prompt == describe([(se.expected.objects[0].color, a.shape, a.position)], bg)  # this object only
    m = np.asarray(se.mask) > 0
    x0, y0, x1, y1 = a.box
    assert m[y0:y1, x0:x1].all() and not m[b.box[1]:b.box[3], b.box[0]:b.box[2]].any()
    g = round(REGION_MARGIN * 64)  # room around the object, unless a neighbour or the border is there
    assert m.sum() > (x1 - x0) * (y1 - y0) and m[max(0, y0 - g):y1 + g, max(0, x0 - g):x1 + g].mean() > 0.5
    assert shapes_edit(img, f"remove the {a.color} {a.shape}").spec.prompt == f"a plain {bg} background"


def test_a_move_lifts_the_object_and_sets_it_down_in_its_cell(pipe):
    scene = world.sample(random.Random(5), "two")
    (bg, (a, b)), img = world.detect(scene.image), scene.image
    cell = "top-left" if b.position != "top-left" else "top"
    mv = shapes_edit(img, f"move the {a.color} {a.shape} to the {cell}", steps=2)
    assert mv.kind == "move" and mv.spec.mode == "move" and mv.spec.prompt == f"a plain {bg} background"
    lift, region = np.asarray(mv.mask) > 0, np.asarray(mv.region) > 0
    x0, y0, x1, y1 = a.box
    assert lift[y0:y1, x0:x1].sum() == lift.sum() >= a.area  # the silhouette only, not the neighbour
    out, rec = edit(pipe, img, mv.spec, mv.mask)
    o, i = np.asarray(out[0]), np.asarray(img)
    assert np.array_equal(o[~region], i[~region])  # the rest of the scene is untouched
    dx, dy = mv.spec.offset
    ys, xs = np.nonzero(lift)
    assert np.array_equal(o[ys + dy, xs + dx], i[ys, xs]) and rec.details["offset"] == [dx, dy]
    assert world.POSITIONS[int((y0 + y1) / 2 + dy) * 3 // 64][int((x0 + x1) / 2 + dx) * 3 // 64] == cell
    with pytest.raises(ValueError, match="offset"):
        EditSpec(prompt="x", mode="move")
    with pytest.raises(ValueError, match="offset"):
        EditSpec(prompt="x", mode="inpaint", offset=(1, 2))


def test_edit_errors_say_what_to_change(pipe):
    img = Image.new("RGB", (32, 32), (245, 245, 245))
    with pytest.raises(ValueError, match="mask is 16x16 but the image is 32x32"):
        edit(pipe, img, EditSpec(prompt="x", mode="inpaint", steps=1), Image.new("L", (16, 16), 255))
    with pytest.raises(ValueError, match="not inside"):
        edit(pipe, img, EditSpec(prompt="x", mode="inpaint", box=(0, 0, 40, 10), steps=1))
    with pytest.raises(ValueError, match="sees: nothing"):
        find_target(img, "the red circle")
    with pytest.raises(ValueError, match="needs a mask"):
        edit(pipe, img, EditSpec(prompt="x", mode="inpaint", steps=1))


def test_sdedit_and_in_context_edit_run_at_odd_sizes(pipe):
    img = Image.new("RGB", (37, 30), (40, 80, 220))
    for mode in ("sdedit", "in-context"):
        out, rec = edit(pipe, img, EditSpec(prompt="a red square", mode=mode, strength=0.5, steps=2))
        assert out[0].size == (37, 30) and rec.details["work_size"] == [36, 32]


def test_velocity_recovered_in_callbacks_is_the_transformers(pipe):
    """x0_hook derives v from consecutive latents; compare with a direct transformer call (no CFG)."""
    prompt, steps = "a green square", 3
    kw = flux.call_kwargs(pipe, GenerateSpec(prompt=prompt, steps=steps, guidance_scale=1.0), prompt)
    emb, pooled, txt_ids = pipe.encode_prompt(prompt=prompt, prompt_2=None,
                                              max_sequence_length=kw["max_sequence_length"])
    start = flux.noise_like(torch.zeros(1, 64, 16), 0)
    img_ids = pipe._prepare_latent_image_ids(1, 8, 8, "cpu", torch.float32)
    errors = []

    def check(p, latents, x0, sigma):
        with torch.no_grad():
            s_prev = float(p.scheduler.sigmas[p.scheduler.step_index - 1])
            v = p.transformer(hidden_states=check.prev, timestep=torch.tensor([s_prev]), guidance=None,
                              pooled_projections=pooled, encoder_hidden_states=emb, txt_ids=txt_ids,
                              img_ids=img_ids, return_dict=False)[0]
        errors.append(float((x0 - (check.prev - s_prev * v)).abs().max()))
        check.prev = latents
        return latents

    check.prev = start
    hook = flux.x0_hook(check, start)
    pipe(height=32, width=32, latents=start, callback_on_step_end=flux.step_callback(None, steps, hook), **kw)
    assert len(errors) == steps and max(errors) < 1e-4


def test_guidance_raises_the_classifier_objective(pipe):
    from ditflow.pipelines import classifiers
    from ditflow.toolkit import guidance as gd

    clf = classifiers.load("attributes")
    smooth = gd.smooth_activations(clf)
    assert not any(isinstance(m, torch.nn.ReLU) for m in smooth.modules())
    assert any(isinstance(m, torch.nn.ReLU) for m in clf.modules())  # the original is untouched
    targets = gd.resolve_targets(smooth, {"color": "blue", "shape": "square"})

    def score(img):
        x = torch.from_numpy(np.asarray(img.resize((64, 64)), np.float32) / 255).permute(2, 0, 1)[None]
        return float(gd.objective(smooth(x), targets))

    spec = GuideSpec(prompt="a blue square", target={"color": "blue", "shape": "square"}, steps=4, seed=0)
    plain, _ = gd.guided_generate(pipe, spec.model_copy(update={"scale": 0.0}), classifier=clf, width=64, height=64)
    guided, rec = gd.guided_generate(pipe, spec.model_copy(update={"scale": 30.0}), classifier=clf, width=64,
                                     height=64)
    assert rec.details["trace"] and score(guided[0]) > score(plain[0])
    assert gd.targets_from_prompt("Two small Blue squares on the left") == {"color": "blue", "shape": "square"}
    assert gd.targets_from_prompt("a large red circle at the top left") == {
        "color": "red", "shape": "circle", "position": "top-left", "size": "large"}
    assert gd.targets_from_prompt("a pink diamond in the upper-right area, please")["position"] == "top-right"
    assert "position" not in gd.targets_from_prompt("a red circle on the left and a blue square on the right")
    with pytest.raises(ValueError, match="names none"):
        gd.targets_from_prompt("a cat")
    with pytest.raises(ValueError, match="unknown color 'teal'"):
        gd.resolve_targets(smooth, {"color": "teal"})
    assert gd.sine_schedule(0.0) == 0 and gd.sine_schedule(0.5) == 1 and gd.sine_schedule(1.0) < 1e-9


def test_attribute_classifier_reads_every_attribute_guidance_aims_at():
    # trained on clean scenes only (EluCD's off-the-shelf classifier); its labels are what the scorer detects
    from ditflow.pipelines import classifiers
    from ditflow.training.classifiers import evaluate

    clf = classifiers.load("attributes")
    assert set(clf.heads()) == {"shape", "color", "position", "size"} and clf.labels["position"][0] == "top-left"
    acc = evaluate(clf, "attributes", n=256, seed=777)
    assert min(acc[h] for h in clf.heads()) >= 0.95, acc
    # the softplus copy that guidance differentiates must still be the same classifier (at β = 10 it was not:
    # colour 59%)
    from ditflow.toolkit.guidance import smooth_activations

    smooth = evaluate(smooth_activations(clf), "attributes", n=256, seed=777)
    assert min(smooth[h] for h in clf.heads()) >= 0.95, smooth


def test_guidance_leaves_a_sample_alone_once_the_classifier_is_sure(pipe):
    """The step is gated by 1 − p(target | x̂0): a classifier already certain of the target moves nothing, one
    that is unsure moves the latents."""
    from ditflow.toolkit import guidance as gd

    class Fixed(torch.nn.Module):  # logits that depend on the image (so there is a gradient) plus a set margin
        def __init__(self, margin):
            super().__init__()
            self.margin = margin

        def forward(self, x):
            m = x.mean(dim=(1, 2, 3))
            return torch.stack([self.margin + m, -m], dim=1)

    latents = torch.randn(1, 64, 16, generator=torch.Generator().manual_seed(0))  # the tiny pipe at 32×32
    x0 = torch.randn_like(latents)
    for margin, moves in ((12.0, False), (0.0, True)):  # p = 1 − 6e-6: a gradient that RMS-normalising would blow up
        hook = gd.guidance_hook(Fixed(margin), [(slice(None), 0)], scale=5.0, width=32, height=32)
        out = hook(pipe, latents, x0, 0.5)
        step = float((out - latents).abs().max())  # ungated, a normalised step moves some latent by ≈0.1 or more
        assert (step > 1e-3) == moves, (margin, step)


def test_bench_guide_pairs_the_runs_prompt_by_prompt(tmp_path):
    # the guide section's lift is paired (same prompts, seeds and steps): lost and gained prompts account for it
    import json

    from ditflow.bench import toolkit as bench

    out = tmp_path / "guide.json"
    assert bench.cli(["--sections", "guide", "--n", "2", "--steps", "2", "--guide-scale", "30", "--guide-cfg", "1",
                      "--guide-seed", "1000", "--json", str(out)]) == 0
    g = json.loads(out.read_text())["guide"]
    assert g["n"] == 2 * len(bench.GUIDE_KINDS) and g["scale"] == 30  # n prompts of each lone-object kind
    assert g["cfg"] == 1.0  # both runs without CFG: the classifier alone conditions the guided one
    assert g["seed"] == 1000  # prompt i drew seed 1000 + i in both runs
    assert set(g["unguided"]["per_kind"]) == set(bench.GUIDE_KINDS)
    assert g["lift_points"] == pytest.approx(100 * (g["gained"] - g["lost"]) / g["n"], abs=0.05)  # rounded to 0.1
    assert g["lift_points"] == pytest.approx(100 * (g["guided"]["overall"] - g["unguided"]["overall"]), abs=0.05)
