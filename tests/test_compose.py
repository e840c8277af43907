"""Composed generation: scenes of more objects than the model binds in one prompt are drawn object by object, on
the shipped builtin pipeline (real weights, a few steps) and not on a model without that limit."""
from __future__ import annotations

import os

import numpy as np
import pytest

from ditflow.agents import scene as sc
from ditflow.agents.compose import compose, layout, needs_composing
from ditflow.agents.execution import run_step
from ditflow.agents.verify import detections
from ditflow.schemas import GenerateSpec, ParsedRequest, Step
from ditflow.world import scenes as world

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def builtin():
    from ditflow.pipelines.loading import load_pipeline

    return load_pipeline("builtin", device="cpu")


def test_layout_places_named_objects_first_and_spreads_the_others():
    placed, background = layout("two blue squares and a red circle at the top left on gray", 64, 64)
    assert background == "gray"
    things = [t for t, _ in placed]
    assert things[0] == sc.Thing("circle", "red", None, "top-left")  # the named cell first
    cells = [t.position for t in things]
    assert len(set(cells)) == 3 and "bottom-right" in cells  # the free cell farthest from the circle
    assert [t.shape for t in things[1:]] == ["square", "square"]
    assert all(world.cell_of(box, 64, 64) == t.position for t, box in placed)  # each box sits in its cell
    assert layout("a red circle wearing a hat", 64, 64) is None  # not a world scene
    placed, _ = layout("two red circles on the left", 64, 64)
    assert len({t.position for t, _ in placed}) == 2  # one cell each


def test_only_a_model_that_binds_one_object_composes_and_only_scenes_of_several(builtin):
    from ditflow.pipelines.tiny import tiny_flux_pipeline

    assert needs_composing(builtin, "a red circle and a blue square")
    assert needs_composing(builtin, "three yellow squares")
    assert not needs_composing(builtin, "a red circle on the left")
    assert not needs_composing(builtin, "a red circle on the left on a white background")  # its own background
    assert needs_composing(builtin, "a red circle on the left on a black background")  # painted in last
    assert not needs_composing(builtin, "a red circle and a dragon")  # outside the world: drawn as asked
    assert not needs_composing(tiny_flux_pipeline(), "a red circle and a blue square")  # no declared limit
    assert not needs_composing(tiny_flux_pipeline(), "a red circle on black")


def test_compose_draws_the_first_object_then_inpaints_the_next_and_keeps_what_was_drawn(builtin):
    from ditflow.toolkit.edit import region_mask
    from ditflow.toolkit.generate import generate

    desc = "a red circle at the top left and a blue square at the bottom right"
    image, records = compose(builtin, desc, seed=5, steps=4)
    assert [r.tool for r in records] == ["generate", "edit", "compose"]
    assert records[0].spec["prompt"] == "a red circle at the top left"
    assert records[1].spec["prompt"] == "a blue square at the bottom right" and records[1].spec["mode"] == "inpaint"
    assert [d["prompt"] for d in records[-1].details["layout"]] == [records[0].spec["prompt"],
                                                                    records[1].spec["prompt"]]
    first = generate(builtin, GenerateSpec(prompt="a red circle at the top left", seed=5, steps=4, height=64,
                                           width=64))[0][0]
    _, seen = detections(first)
    box = layout(desc, 64, 64)[0][1][1]
    outside = np.asarray(region_mask(first.size, [box], keep=[tuple(d.box) for d in seen])) == 0
    assert (np.asarray(image)[outside] == np.asarray(first)[outside]).all()  # only the square's region was drawn
    for d in seen:  # every object of the first draw is kept exactly
        x0, y0, x1, y1 = d.box
        assert (np.asarray(image)[y0:y1, x0:x1] == np.asarray(first)[y0:y1, x0:x1]).all()


def test_a_generate_step_composes_on_the_builtin_model_and_not_on_a_model_without_the_limit(builtin):
    from ditflow.pipelines.tiny import tiny_flux_pipeline

    desc = "two green triangles"
    req = ParsedRequest(task="generate", num_inputs=0, num_outputs=1, outputs=[{"index": 1, "description": desc}])
    step = Step(tool="generate", prompt=desc, outputs=[1])
    images, records = run_step(builtin, step, req, [], {}, 3, None)
    assert len(images) == 1 and [r.tool for r in records] == ["generate", "edit", "compose"]
    images, records = run_step(tiny_flux_pipeline(), step, req, [], {}, 3, None)
    assert len(images) == 1 and [r.tool for r in records] == ["generate"]


def test_a_regenerate_repair_redraws_as_the_first_pass_did(builtin):
    from PIL import Image

    from ditflow.agents.repair import Repair, run_repair

    desc = "two green triangles"
    req = ParsedRequest(task="generate", num_inputs=0, num_outputs=1, outputs=[{"index": 1, "description": desc}])
    blank = Image.new("RGB", (64, 64), "white")
    out, rec = run_repair(builtin, Repair("regenerate", "saw one"), blank, desc, None, req, [], {}, 1, seed=3, steps=4)
    assert rec.tool == "compose" and rec.details["repair"] == "regenerate" and len(rec.details["layout"]) == 2
    assert out.size == (64, 64)


def test_a_scene_on_another_background_is_drawn_on_the_models_own_and_filled_in_around_the_objects(builtin):
    desc = "a pair of orange triangles on a black background"
    image, records = compose(builtin, desc, seed=2, steps=4)
    assert [r.tool for r in records] == ["generate", "edit", "compose"]
    assert "black" not in records[0].spec["prompt"] and "white" in records[0].spec["prompt"]
    assert records[-1].details["background_filled"] == "black"
    before, white = compose(builtin, desc.replace("black", "white"), seed=2, steps=4)  # the same draws, not filled
    assert white[-1].details["background_filled"] is None
    _, seen = detections(before)
    keep = np.zeros((64, 64), bool)
    for d in seen:
        keep |= world.object_mask(before, d.box)
    assert keep.any() and (np.asarray(image)[keep] == np.asarray(before)[keep]).all()  # the objects stay exactly
    assert (np.asarray(image)[~keep] == world.BACKGROUNDS["black"]).all()  # and the rest is the plain black
    lone, records = compose(builtin, "a cyan circle on gray", seed=1, steps=4)
    assert records[0].spec["prompt"] == "a cyan circle on a white background"  # unplaced, as described
    assert records[-1].details["layout"] == [{"prompt": "a cyan circle on a white background", "box": None}]
