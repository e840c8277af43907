import random

import numpy as np
import pytest
from PIL import Image

from ditflow.world import scenes as world


def test_scorer_is_at_least_99_percent_on_clean_scenes():
    rng = random.Random(123)
    pairs = []
    for _ in range(1500):
        s = world.sample(rng)
        pairs.append((s.spec, s.image))
    rep = world.score_many(pairs)
    assert rep.overall >= 0.99, rep.as_dict()
    assert set(rep.per_kind) == set(world.KINDS)
    for attr in ("color", "shape", "position", "size", "count", "background"):
        assert rep.per_attribute[attr] >= 0.99, (attr, rep.per_attribute)


def test_scorer_fails_wrong_scenes():
    """The scorer must not pass an image of something else: swap colour, shape, add an extra object."""
    rng = random.Random(5)
    spec = world.canvas_from_panel(world.PanelSpec((world.ObjectSpec("red", "circle", "large", "center"),)))
    good = world.render(spec, rng)
    assert world.score_canvas(spec, good)[0].satisfied
    for wrong in (
        world.ObjectSpec("blue", "circle", "large", "center"),
        world.ObjectSpec("red", "square", "large", "center"),
        world.ObjectSpec("red", "circle", "small", "center"),
        world.ObjectSpec("red", "circle", "large", "top-left"),
    ):
        img = world.render(world.canvas_from_panel(world.PanelSpec((wrong,))), rng)
        assert not world.score_canvas(spec, img)[0].satisfied, wrong
    extra = world.render(world.canvas_from_panel(world.PanelSpec(
        (world.ObjectSpec("red", "circle", "large", "center"), world.ObjectSpec("green", "square", "small", "top-left")))),
        rng)
    verdict = world.score_canvas(spec, extra)[0]
    assert not verdict.satisfied and not verdict.count_ok
    blank = Image.new("RGB", (64, 64), world.BACKGROUNDS["white"])
    assert not world.score_canvas(spec, blank)[0].satisfied


@pytest.mark.parametrize("shape", world.SHAPES)
def test_shape_classification_at_both_sizes(shape):
    rng = random.Random(0)
    for size in ("small", "large"):
        for _ in range(20):
            spec = world.canvas_from_panel(world.PanelSpec((world.ObjectSpec("green", shape, size),)))
            bg, dets = world.detect(world.render(spec, rng))
            assert [d.shape for d in dets] == [shape] and dets[0].size == size


def test_captions_vary_wording_and_mention_every_object():
    rng = random.Random(1)
    spec = world.canvas_from_panel(world.PanelSpec((world.ObjectSpec("red", "circle", None, "center"),)))
    captions = {world.caption(spec, rng) for _ in range(200)}
    assert len(captions) >= 15
    assert any("centre" in c for c in captions) and any("middle" in c for c in captions)
    assert any(c.startswith(("draw", "paint", "an image of", "I'd like")) for c in captions)
    assert all("red circle" in c for c in captions)


def test_panel_captions_use_layout_tags_and_share_the_shape():
    rng = random.Random(2)
    for layout, tag in (((1, 2), "[TWO-PANEL]"), ((2, 2), "[FOUR-PANEL]")):
        for _ in range(20):
            spec = world.sample_panels(rng, layout)
            text = world.caption(spec, rng)
            assert text.startswith(tag)
            assert len({o.shape for p in spec.panels for o in p.objects}) == 1
            for t in world.layout_tags(layout)[1]:
                assert t in text
            img = world.render(spec, rng)
            assert img.size == (layout[1] * 64, layout[0] * 64)
            assert all(v.satisfied for v in world.score_canvas(spec, img))


def test_heldout_prompts_are_never_training_captions():
    prompts = world.heldout_prompts(10)
    kinds = {s.kind for _, s in prompts}
    assert kinds == {"single", "paraphrase", "two", "count", "background", "panels"}
    for text, spec in prompts:
        if spec.kind != "paraphrase":
            assert not world.seen_in_training(text)
    para = [t for t, s in prompts if s.kind == "paraphrase"]
    assert all(any(t.startswith(p) for p in world.EVAL_PREFIXES) for t in para)


def test_render_is_deterministic_given_the_rng():
    spec = world.sample_spec(random.Random(9), "two")
    a = np.asarray(world.render(spec, random.Random(4)))
    b = np.asarray(world.render(spec, random.Random(4)))
    assert (a == b).all()


def test_paired_change_counts_prompts_and_widens_with_disagreement():
    same = world.paired_change((True, False, True, False), (True, False, True, False))
    assert same == dict(score_change_points=0.0, ci95_points=0.0, lost=0, gained=0)
    moved = world.paired_change((True,) * 5 + (False,) * 5, (False,) * 2 + (True,) * 3 + (True,) + (False,) * 4)
    assert (moved["lost"], moved["gained"]) == (2, 1)
    assert moved["score_change_points"] == pytest.approx(-10.0)
    # per-prompt differences -1,-1,0,0,0,+1,0,0,0,0: sample sd 0.568, so 1.96 · 0.568 / √10 = 35.2 points
    assert moved["ci95_points"] == pytest.approx(35.2, abs=0.1)
    with pytest.raises(ValueError):
        world.paired_change((True,), (True, False))
