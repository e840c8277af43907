"""Object edits on the builtin model (agents/object_edit.py): each op changes the objects it names, as it says, and
leaves every other object exactly as it was."""
import random

import numpy as np
import pytest

from ditflow.agents.describe import scene_objects
from ditflow.agents.object_edit import SHAPES_CANDIDATES, edit_objects
from ditflow.schemas import InputImage, ObjectEdit
from ditflow.world import scenes as world


@pytest.fixture(scope="module")
def pipe():
    from ditflow.pipelines.loading import load_pipeline

    return load_pipeline("builtin", device="cpu")


def scene(background="white"):
    spec = world.PanelSpec((world.ObjectSpec("red", "circle", "small", "top-left"),
                            world.ObjectSpec("blue", "square", "small", "center"),
                            world.ObjectSpec("yellow", "triangle", "large", "bottom-right")), background)
    image = world.render(world.CanvasSpec((spec,)), random.Random(7))
    bg, objects = scene_objects(image)
    return image, InputImage(index=1, description="", background=bg, objects=objects)


def same_pixels(a, b, box, grow=2):
    x0, y0, x1, y1 = box
    sl = np.s_[max(0, y0 - grow):y1 + grow, max(0, x0 - grow):x1 + grow]
    return np.array_equal(np.asarray(a.convert("RGB"))[sl], np.asarray(b.convert("RGB"))[sl])


def seen(image):
    return sorted((d.color, d.shape, d.position) for d in world.detect(image)[1])


@pytest.mark.parametrize("edit, want, kept", [
    (ObjectEdit(op="remove", targets=[2]), [("red", "circle", "top-left"), ("yellow", "triangle", "bottom-right")],
     [1, 3]),
    (ObjectEdit(op="move", targets=[1], position="bottom-left"),
     [("blue", "square", "center"), ("red", "circle", "bottom-left"), ("yellow", "triangle", "bottom-right")], [2, 3]),
    (ObjectEdit(op="duplicate", targets=[2], position="top-right"),
     [("blue", "square", "center"), ("blue", "square", "top-right"), ("red", "circle", "top-left"),
      ("yellow", "triangle", "bottom-right")], [1, 2, 3]),
    (ObjectEdit(op="swap", targets=[1, 2]),
     [("blue", "square", "top-left"), ("red", "circle", "center"), ("yellow", "triangle", "bottom-right")], [3]),
    (ObjectEdit(op="recolor", targets=[3], color="green"),
     [("blue", "square", "center"), ("green", "triangle", "bottom-right"), ("red", "circle", "top-left")], [1, 2]),
])
def test_an_op_changes_what_it_names_and_nothing_else(pipe, edit, want, kept):
    image, source = scene()
    out, records = edit_objects(pipe, image, source, [edit], seed=0, candidates=SHAPES_CANDIDATES)
    assert seen(out) == want
    for o in source.objects:
        if o.id in kept:
            assert same_pixels(out, image, o.box), f"object {o.id} ({o.color} {o.shape}) changed"
    assert records[-1].tool == "object-edit" and records[-1].spec["edits"][0]["op"] == edit.op


def test_a_new_background_keeps_every_object(pipe):
    image, source = scene()
    out, _ = edit_objects(pipe, image, source, [ObjectEdit(op="background", color="black")], seed=0)
    bg, dets = world.detect(out)
    assert bg == "black" and seen(out) == seen(image)


def test_an_add_draws_one_new_object_in_a_free_cell(pipe):
    image, source = scene("gray")
    out, _ = edit_objects(pipe, image, source, [ObjectEdit(op="add", shape="diamond", color="purple",
                                                           position="top-right")], seed=0,
                          candidates=SHAPES_CANDIDATES)
    assert ("purple", "diamond", "top-right") in seen(out) and len(seen(out)) == 4
    assert all(same_pixels(out, image, o.box) for o in source.objects)


def test_an_add_beside_a_large_object_slides_clear_of_it_within_its_cell(pipe):
    # the large circle at the top reaches into the centre cell: a small square "below it" must sit low in that cell
    spec = world.PanelSpec((world.ObjectSpec("red", "circle", "large", "top"),
                            world.ObjectSpec("purple", "diamond", "small", "bottom-left")), "white")
    image = world.render(world.CanvasSpec((spec,)), random.Random(3))
    bg, objects = scene_objects(image)
    source = InputImage(index=1, description="", background=bg, objects=objects)
    out, _ = edit_objects(pipe, image, source, [ObjectEdit(op="add", shape="square", color="cyan", size="small",
                                                           position="center")], seed=0, candidates=SHAPES_CANDIDATES)
    assert ("cyan", "square", "center") in seen(out) and len(seen(out)) == 3
    assert all(same_pixels(out, image, o.box) for o in source.objects)


def test_a_later_page_is_object_edits_of_the_page_before_when_that_is_unambiguous(pipe):
    from ditflow.agents.execution import _later_page
    from ditflow.schemas import Ref, Step

    def page(*objects):
        return world.render(world.CanvasSpec((world.PanelSpec(objects, "white"),)), random.Random(2))

    step = Step(tool="edit", prompt="a yellow square", outputs=[2], refs=[Ref(kind="output", index=1)],
                params={"mode": "sdedit"})
    one = _later_page(pipe, page(world.ObjectSpec("green", "square", "large", "left")), step)
    assert one is not None and one[1] == [ObjectEdit(op="recolor", targets=[1], color="yellow")]
    # two squares for one: which one continues is not clear, so the step stays an SDEdit
    assert _later_page(pipe, page(world.ObjectSpec("green", "square", "small", "left"),
                                  world.ObjectSpec("green", "square", "small", "right")), step) is None
    on_gray = step.model_copy(update={"prompt": "a green square on the left on a gray background"})
    assert _later_page(pipe, page(world.ObjectSpec("green", "square", "large", "left")), on_gray)[1] == [
        ObjectEdit(op="background", color="gray")]


@pytest.mark.parametrize("background", ["white", "black", "gray"])
def test_a_recolour_on_a_plain_background_retints_the_object_and_calls_no_model(pipe, background):
    image, source = scene(background)
    out, records = edit_objects(pipe, image, source, [ObjectEdit(op="recolor", targets=[2], color="pink")], seed=0)
    assert seen(out) == sorted([("red", "circle", "top-left"), ("pink", "square", "center"),
                                ("yellow", "triangle", "bottom-right")])
    square = next(o for o in source.objects if o.id == 2)
    before, after = (world.object_mask(im, square.box) for im in (image, out))
    assert np.array_equal(before, after)  # the same silhouette, pixel for pixel
    for o in source.objects:
        if o.id != 2:
            assert same_pixels(out, image, o.box), f"object {o.id} changed"
    assert not [r for r in records if r.tool == "edit"]  # no inpaint was needed
