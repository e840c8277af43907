"""The describe tool: shapes-world scenes are read by the analytic attribute model, anything else by statistics."""
from __future__ import annotations

import numpy as np
from PIL import Image

from ditflow.agents.describe import describe_image, shapes_scene, statistics
from ditflow.agents.scene import Thing
from ditflow.world.scenes import CanvasSpec, ObjectSpec, PanelSpec, render


def test_a_builtin_scene_is_described_in_the_world_vocabulary():
    spec = CanvasSpec((PanelSpec((ObjectSpec("green", "triangle", "large", "top-left"),
                                  ObjectSpec("pink", "square", "small", "bottom-right")), "black", True),))
    s = shapes_scene(render(spec))
    assert s.background == "black"
    assert set(s.things) == {Thing("triangle", "green", "large", "top-left"), Thing("square", "pink", "small",
                                                                                     "bottom-right")}
    d = describe_image(render(spec), 1)
    assert d.index == 1 and "green triangle" in d.description and "black background" in d.description


def test_a_photo_gets_statistics_not_a_made_up_scene():
    rng = np.random.default_rng(0)
    photo = Image.fromarray((rng.random((48, 80, 3)) * 255).astype("uint8"))
    assert shapes_scene(photo) is None
    assert statistics(photo).startswith("a 80x48 photo, mostly ")
    assert describe_image(photo, 2).description.startswith("a 80x48 photo")
