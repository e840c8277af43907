"""Clause routing (ditflow/pipelines/routing.py): the tag grammar, the regions a caption names (panels, objects),
which text tokens belong to which region, the joint-attention mask, and how a routed pipeline applies it
(conditional pass only, captions with a layout only)."""
import random

import pytest
import torch

from ditflow.cli.main import main
from ditflow.images import sha256_file
from ditflow.pipelines import routing
from ditflow.pipelines.loading import minilm_dir
from ditflow.pipelines.tiny import tiny_flux_pipeline
from ditflow.toolkit import canvas as cv
from ditflow.toolkit.flux import derived
from ditflow.world import scenes as world

CAPTION = "[TWO-PANEL] the same circle in two colours; [LEFT] a red circle on the left, [RIGHT] a blue circle on top."


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir())


def test_the_grid_is_read_from_the_tags_and_the_canvas_shape():
    rng = random.Random(0)
    for layout, tokens in (((1, 2), (8, 16)), ((2, 1), (16, 8)), ((2, 2), (16, 16))):
        spec = world.sample_panels(rng, layout)
        assert routing.grid_of_caption(world.caption(spec, rng), *tokens) == layout
    assert routing.grid_of_caption("a red circle on the left", 8, 8) is None
    assert routing.grid_of_caption("[TWO-PANEL] circles; [LEFT] a red circle", 8, 16) is None  # [RIGHT] missing
    assert routing.grid_of_caption("[TWO-PANEL] x; [RIGHT] a, [LEFT] b.", 8, 16) is None  # out of order
    assert routing.grid_of_caption(CAPTION, 8, 15) is None  # 15 token columns do not split in two
    strip = cv.group_prompt((1, 4), "a circle", ["red", "blue", "green", "pink"])  # [PANEL-i] tags fit 1×4 and 4×1
    assert routing.grid_of_caption(strip, 8, 32) == (1, 4) and routing.grid_of_caption(strip, 32, 8) == (4, 1)


def test_each_clause_token_belongs_to_its_panel_and_the_rest_is_shared(tokenizer):
    layout = routing.caption_layout(CAPTION, 8, 16)
    assert [r.box for r in layout.regions] == [(0, 0, 1, 0.5), (0, 0.5, 1, 1)] and not layout.separate_clauses
    owners = routing.token_owners(tokenizer, CAPTION, layout, 48)
    ids = tokenizer(CAPTION, padding="max_length", max_length=48, truncation=True)["input_ids"]
    text = {k: tokenizer.decode([i for i, o in zip(ids, owners.tolist()) if o == k], skip_special_tokens=True)
            for k in (-1, 0, 1)}
    assert text[0] == "[ left ] a red circle on the left,"
    assert text[1] == "[ right ] a blue circle on top."
    assert text[-1] == "[ two - panel ] the same circle in two colours ;"
    assert owners.shape == (48,) and (owners[-5:] == -1).all()  # padding is shared


def test_objects_get_the_cells_their_positions_name_or_side_by_side_strips(tokenizer):
    def clauses(prompt):
        layout = routing.caption_layout(prompt, 8, 8)
        return None if layout is None else [(r.box, prompt[r.start:r.end]) for r in layout.regions]

    g = routing.OBJECT_MARGIN
    assert clauses("draw a Blue diamond at the top and a cyan ball on the left on a gray background") == [
        ((-g, 1 / 3 - g, 1 / 3 + g, 2 / 3 + g), "a Blue diamond at the top and "),
        ((1 / 3 - g, -g, 2 / 3 + g, 1 / 3 + g), "a cyan ball on the left ")]  # the background phrase is shared
    # normalising ("colour", doubled spaces) moves characters; the clauses still point into the caption as given
    assert clauses("a  red circle in the centre and a blue coloured square at the top") == [
        ((1 / 3 - g, 1 / 3 - g, 2 / 3 + g, 2 / 3 + g), "a  red circle in the centre and "),
        ((-g, 1 / 3 - g, 1 / 3 + g, 2 / 3 + g), "a blue coloured square at the top")]
    assert clauses("a red circle and two blue squares") == [  # no positions: side-by-side strips
        ((0.0, 0.0, 1.0, 0.5), "a red circle and "), ((0.0, 0.5, 1.0, 1.0), "two blue squares")]
    assert clauses("a red circle on the left") is None  # one object: nothing to keep apart
    assert clauses("two red circles") is None
    assert clauses("a red circle on the left and a blue square") is None  # only one position: no layout to trust
    assert clauses("a cat on the left and a dog on the right") is None  # not the shapes world's words
    layout = routing.caption_layout("a red circle at the top left and a blue square at the bottom right", 8, 8)
    assert layout.separate_clauses
    owners = routing.token_owners(tokenizer, "a red circle at the top left and a blue square at the bottom right",
                                  layout, 24)
    assert owners.tolist()[:16] == [-1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1] and (owners[16:] == -1).all()


def test_the_mask_only_cuts_image_tokens_off_other_regions_clauses():
    owners = torch.tensor([-1, 0, 0, 1, -1])
    img_ids = torch.zeros(8, 3)
    img_ids[:, 1], img_ids[:, 2] = torch.arange(8) // 4, torch.arange(8) % 4  # 2 × 4 tokens, two panels side by side
    layout = routing.panel_layout("[TWO-PANEL] x; [LEFT] a, [RIGHT] b.", 2, 4)
    inside = routing.regions_of_tokens(img_ids, layout)
    assert inside.tolist() == [[True, False], [True, False], [False, True], [False, True]] * 2
    mask = routing.routing_mask(owners, inside)
    assert mask.shape == (13, 13) and mask.dtype == torch.bool
    assert mask[:5].all() and mask[:, 5:].all()  # text reads everything, image ↔ image is whole
    left, right = mask[5], mask[7]  # an image token of each panel, over the text
    assert left[:5].tolist() == [True, True, True, False, True]
    assert right[:5].tolist() == [True, False, False, True, True]

    # objects: regions may overlap or leave tokens out; a token reads the clauses of every region it is in, and
    # a token in none reads them all; separated clauses stop reading each other
    inside = torch.tensor([[True, False], [True, True], [False, False], [False, True]])
    mask = routing.routing_mask(owners, inside, separate_clauses=True)
    assert mask[5:, :5].tolist() == [[True, True, True, False, True], [True] * 5, [True] * 5,
                                     [True, False, False, True, True]]
    assert mask[:5, :5].tolist() == [[True] * 5, [True, True, True, False, True], [True, True, True, False, True],
                                     [True, False, False, True, True], [True] * 5]


def _spy(pipe):
    """Record the attention mask of every transformer call (registered after the routing hook, so it sees it)."""
    seen = []

    def hook(module, args, kwargs):
        seen.append((kwargs.get("joint_attention_kwargs") or {}).get("attention_mask"))

    handle = pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    return seen, handle


def test_a_routed_pipeline_masks_the_conditional_pass_of_tagged_captions_only():
    pipe = tiny_flux_pipeline(text_len=48)
    state = routing.enable_clause_routing(pipe)
    assert routing.enable_clause_routing(pipe) is state  # idempotent
    seen, handle = _spy(pipe)
    kw = dict(height=32, width=64, num_inference_steps=2, negative_prompt="", true_cfg_scale=2.0, output_type="pt",
              max_sequence_length=48)
    routed = pipe(CAPTION, generator=torch.Generator().manual_seed(0), **kw).images
    masks = seen[:]
    assert len(masks) == 4 and masks[1] is None and masks[3] is None  # true CFG's empty prompt runs unmasked
    assert masks[0] is masks[2] and masks[0].shape == (1, 1, 48 + 8 * 16, 48 + 8 * 16)  # built once per call
    assert not masks[0].all() and state.routed_calls == 2

    seen.clear()
    pipe("a red circle on the left", generator=torch.Generator().manual_seed(0), **kw)
    assert seen == [None] * 4  # a plain caption is left alone

    seen.clear()
    pipe("a red circle on the left and a blue square on the right", generator=torch.Generator().manual_seed(0), **kw)
    assert seen[0] is not None and not seen[0][0, 0, :48, :48].all() and seen[1] is None  # objects: text split too

    seen.clear()
    pipe([CAPTION, "a blue square"], num_images_per_prompt=2, generator=torch.Generator().manual_seed(0),
         **{**kw, "negative_prompt": ["", ""]})
    mask = seen[0]
    assert mask.shape[0] == 4 and not mask[:2].all() and mask[2:].all()  # per image, repeated per prompt

    seen.clear()
    img2img = derived(pipe, __import__("diffusers").FluxImg2ImgPipeline)  # shares the transformer, so the routing
    img2img(CAPTION, image=torch.rand(1, 3, 32, 64), strength=1.0, generator=torch.Generator().manual_seed(0), **kw)
    assert seen[0] is not None and seen[1] is None

    routing.disable_clause_routing(pipe)
    assert routing.clause_routing(pipe) is None
    seen.clear()
    unrouted = pipe(CAPTION, generator=torch.Generator().manual_seed(0), **kw).images
    handle.remove()
    assert seen == [None] * 4
    assert not torch.equal(routed, unrouted)  # the mask changes what the panels read


def test_routing_leaves_plain_captions_bit_identical():
    pipe = tiny_flux_pipeline(text_len=48)
    kw = dict(height=32, width=32, num_inference_steps=2, negative_prompt="", true_cfg_scale=2.0, output_type="pt",
              max_sequence_length=48)
    plain = pipe("a red circle", generator=torch.Generator().manual_seed(1), **kw).images
    routing.enable_clause_routing(pipe)
    assert torch.equal(pipe("a red circle", generator=torch.Generator().manual_seed(1), **kw).images, plain)


def test_the_builtin_model_routes_panels_and_the_flag_turns_it_off(tmp_path, monkeypatch):
    from ditflow.pipelines.loading import load_pipeline

    assert routing.clause_routing(load_pipeline("builtin")) is not None
    compact = []  # what the routing hook hands local attention: a TextRouting, never the (L, L) mask
    text_routing_for = routing.ClauseRouting.text_routing_for
    monkeypatch.setattr(routing.ClauseRouting, "text_routing_for",
                        lambda self, *a: compact.append(text_routing_for(self, *a)) or compact[-1])
    for name, flag in (("on", []), ("off", ["--no-clause-routing"]),
                       ("local-on", ["--clause-routing", "--local-attention", "4"]),
                       ("local-off", ["--no-clause-routing", "--local-attention", "4"])):
        assert main(["generate", CAPTION, "-o", str(tmp_path / f"{name}.png"), "--size", "128x64", "--steps", "3",
                     "--quiet", *flag]) == 0
    assert sha256_file(tmp_path / "on.png") != sha256_file(tmp_path / "off.png")
    assert sha256_file(tmp_path / "local-on.png") != sha256_file(tmp_path / "local-off.png")
    routed = [r for r in compact if r is not None]  # true CFG's empty negative prompt is not routed
    assert routed and all(not r.class_text.all() for r in routed)  # the conditional pass is, with the windows
