"""Stories and sequences (issue 30, part 2): what happens from page to page, parsed into per-page scenes and page
sentences (agents/story.py), planned as edits where the instruction gives steps, and run end to end on the
shipped builtin model with the world detector checking what was drawn."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ditflow.agents import scene as sc
from ditflow.agents import story
from ditflow.agents.article import write_article
from ditflow.agents.parsing import Context, parse_rules
from ditflow.agents.planning import plan_rules
from ditflow.schemas import OutputSpec, ParsedRequest, Ref
from ditflow.world import scenes as world

DEV = Path(__file__).parent / "data" / "story_dev.jsonl"
CASES = [json.loads(line) for line in DEV.read_text().splitlines() if line.strip()]


def tell(text: str, n: int) -> story.Story:
    text = sc.normalise(text)
    _, ments = story.cast(text)
    base = sc.Scene(tuple(m.thing for m in ments), sc.find_background(text))
    told = story.tell(text, base, n)
    assert told is not None, text
    return told


def cells(told: story.Story) -> list[str | None]:
    return [p.scene.things[0].position for p in told.pages]


def parsed(text: str) -> ParsedRequest:
    req = parse_rules(Context(instruction=text)).request
    assert req.clarification is None, req.clarification
    return req


# ----------------------------------------------------------------------------- story.py
@pytest.mark.parametrize("text,n,want", [
    ("a yellow diamond dropping from the top of the frame to the bottom", 3, ["top", "center", "bottom"]),
    ("a ball climbs from the bottom left to the top right", 3, ["bottom-left", "center", "top-right"]),
    ("a square rolls from right to left", 3, ["right", "center", "left"]),
    ("a circle on the left falls", 3, ["top-left", "left", "bottom-left"]),  # keeps its column
    ("a triangle rises", 2, ["bottom", "top"]),
    ("a diamond flies up", 2, ["bottom", "top"]),
    ("a circle that sinks", 3, ["top", "center", "bottom"]),
    ("a circle on the right moves to the left", 3, ["right", "center", "left"]),
    ("a square moving clockwise", 4, ["top-left", "top-right", "bottom-right", "bottom-left"]),
    ("a circle bouncing", 3, ["bottom", "top", "bottom"]),
    ("a square, from the top left to the bottom right", 3, ["top-left", "center", "bottom-right"]),
])
def test_a_path_runs_its_way_across_the_pages(text, n, want):
    told = tell(text, n)
    assert cells(told) == want
    assert told.overview.endswith("moving" if "clockwise" not in text else "moving clockwise")


@pytest.mark.parametrize("text,n,attr,want", [
    ("a red circle that turns blue", 4, "color", ["red", "red", "blue", "blue"]),
    ("a square that changes from red to green", 2, "color", ["red", "green"]),
    ("a circle that turns from orange to purple", 3, "color", ["orange", "orange", "purple"]),
    ("a pink diamond that grows", 3, "size", ["small", "small", "large"]),
    ("a big green circle shrinking", 4, "size", ["large", "large", "small", "small"]),
    ("one red circle becomes two", 4, "count", [1, 1, 2, 2]),
    ("a yellow circle; a second circle joins it", 2, "count", [1, 2]),
    ("more and more squares appear", 5, "count", [1, 2, 2, 3, 3]),
])
def test_a_change_happens_once_and_stays(text, n, attr, want):
    assert [getattr(p.scene.things[0], attr) for p in tell(text, n).pages] == want


def test_arrivals_and_departures_add_and_remove_objects():
    arrive = tell("a green square; a blue circle arrives at the top right", 3)
    assert [len(p.scene.things) for p in arrive.pages] == [1, 1, 2]
    assert arrive.pages[-1].scene.things[1] == sc.Thing("circle", "blue", None, "top-right")
    assert "a blue circle at the top right arrives" in arrive.pages[-1].happens
    leave = tell("a red square and a green triangle, and the triangle leaves", 3)
    assert [[t.shape for t in p.scene.things] for p in leave.pages] == [["square", "triangle"]] * 2 + [["square"]]
    assert "the green triangle leaves" in leave.pages[-1].happens


def test_each_page_a_different_colour_uses_the_named_colours_or_the_palette():
    told = tell("six pictures, each with a square of a different colour", 6)
    colours = [p.scene.things[0].color for p in told.pages]
    assert len(set(colours)) == 6 and not told.changes
    named = tell("a circle in different colours, red and blue", 4)
    assert [p.scene.things[0].color for p in named.pages] == ["red", "blue", "red", "blue"]


def test_steps_are_keyframes_each_derived_from_the_page_before():
    told = tell("draw a green square, then a second picture where the same square has turned yellow", 2)
    assert [sc.scene_text(p.scene) for p in told.pages] == ["a green square", "a yellow square"]
    assert [p.derived for p in told.pages] == [False, True]
    three = tell("first a red circle on the left, then it moves to the center, finally it turns blue", 3)
    assert [sc.scene_text(p.scene) for p in three.pages] == [
        "a red circle on the left", "a red circle in the center", "a blue circle in the center"]
    # a later part that only names more objects is the same picture, not a step
    assert story.steps("draw a red circle and then a blue square") == ["draw a red circle and then a blue square"]
    assert len(story.steps("draw a red circle, then another picture with a blue square")) == 2


def test_more_pages_than_steps_move_the_hero_on_between_keyframes():
    told = tell("first a blue circle at the top left, then it is at the bottom right", 3)
    assert cells(told) == ["top-left", "center", "bottom-right"]


def test_an_open_ended_adventure_is_a_journey_the_same_every_time():
    text = "a short picture book about a little yellow square who goes on an adventure"
    one, two = tell(text, 3), tell(text, 3)
    assert one == two  # deterministic
    scenes = [p.scene for p in one.pages]
    assert len({sc.scene_text(s) for s in scenes}) == 3  # the pages differ
    assert all(s.things[0] == sc.Thing("square", "yellow", "small", s.things[0].position) for s in scenes)
    assert len({s.things[0].position for s in scenes}) == 3  # it travels
    assert any(len(s.things) == 2 for s in scenes) and "meets" in one.pages[1].happens  # and meets a friend
    visit = tell("a story about a red diamond and a blue diamond", 3)  # two heroes: one visits the other
    assert all(p.scene.things[1].position == "right" for p in visit.pages)
    assert story.tell(sc.normalise("four pictures of a green circle"), sc.parse_scene("a green circle"), 4) is None


@pytest.mark.parametrize("text,n", [
    ("a four-page picture book about a red circle that turns blue", 4), ("a circle bouncing", 8),
    ("a story about a cyan triangle", 16), ("six pictures of a square, each a different colour", 10),
    ("more and more squares appear", 13),  # eight quiet pages in a row: more than the connectors
    ("first a red circle, then it turns blue, then it grows, finally it moves to the top", 4),
])
def test_page_sentences_tell_each_change_and_never_repeat(text, n):
    told = tell(text, n)
    sentences = [p.happens for p in told.pages]
    assert len(set(sentences)) == n and all(s.endswith(".") and s[0].isupper() for s in sentences)
    for before, page in zip(told.pages, told.pages[1:]):
        if page.scene.things and before.scene.things and page.scene.things[0].color != before.scene.things[0].color:
            assert f"turns {page.scene.things[0].color}" in page.happens


FRAGMENTS = ["a red circle", "the circle", "it", "a second square", "another one", "a blue square", "two triangles",
             "then", "first", "finally", ",", ".", "and", "turns blue", "changes from red to green", "grows",
             "shrinks", "falls", "drops from the top to the bottom", "rolls from right to left",
             "moves to the top right", "leaves", "arrives", "joins it", "meets a friend",
             "more and more squares appear", "becomes two", "each a different colour", "in 4 frames", "a picture book",
             "on a black background",
             "a second picture where", "goes on an adventure", "bounces", "clockwise", "is bigger", "is gone",
             "at the bottom left", "twelve frames"]


@given(st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=14))
@settings(max_examples=150, deadline=None)
def test_any_mix_of_story_words_parses_and_plans_into_canonical_scenes(words):
    req = parse_rules(Context(instruction=" ".join(words))).request  # validation checks derived_from
    if req.clarification is None:
        plan_rules(req)  # check_against: refs only to outputs made earlier
        for o in req.outputs:
            scene = sc.parse_scene(o.description)
            assert not scene.things or sc.scene_text(scene) == o.description


# ----------------------------------------------------------------------------- parsing: the dev cases
@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_dev_cases_parse_into_the_expected_pages(case):
    req = parsed(case["instruction"])
    assert req.num_outputs == case["count"]
    assert req.task == case.get("task", req.task)
    descs = [o.description for o in req.outputs]
    if "scenes" in case:
        assert [sc.parse_scene(d) for d in descs] == [sc.parse_scene(s) for s in case["scenes"]]
    if case.get("distinct"):
        assert len(set(descs)) == len(descs)
    for word in case.get("attrs_all", []):
        assert all(word in d for d in descs)
    if "derived" in case:
        assert [o.derived_from for o in req.outputs] == case["derived"]
    assert all(sc.scene_text(sc.parse_scene(d)) == d for d in descs)  # the builtin model's canonical wording


def test_a_second_picture_is_a_new_output_not_a_reference():
    req = parsed("Draw a green square, then a second picture where the same square has turned yellow.")
    assert [o.sources for o in req.outputs] == [[], []]
    assert parse_rules(Context(instruction="make the second image blue")).request.clarification  # still asked


def test_derived_from_must_name_an_earlier_output():
    outs = [OutputSpec(index=1, description="a red circle"), OutputSpec(index=2, description="a blue circle",
                                                                          derived_from=2)]
    with pytest.raises(ValidationError, match="earlier output"):
        ParsedRequest(task="generate", num_inputs=0, num_outputs=2, outputs=outs)


def test_steps_plan_as_edits_of_the_output_they_continue():
    req = parsed("first a red circle on the left, then it moves to the center, finally it turns blue")
    plan = plan_rules(req)  # check_against runs inside: refs only to outputs made earlier
    assert [(s.tool, s.outputs, s.refs) for s in plan.steps] == [
        ("generate", [1], []), ("edit", [2], [Ref(kind="output", index=1)]),
        ("edit", [3], [Ref(kind="output", index=2)])]
    assert [s.params.get("change") for s in plan.steps[1:]] == ["position", "color"]


def test_the_article_tells_what_happens_on_each_page():
    req = parsed("a four-page picture book about a red circle that turns blue")
    art = write_article(req, {o.index: f"{o.index:04d}.png" for o in req.outputs})
    captions = [p.caption for p in art.pages]
    assert captions == [o.happens for o in req.outputs] and len(set(captions)) == 4
    assert "turns blue" in captions[2] and "Next, we see" not in art.markdown


# ----------------------------------------------------------------------------- end to end on the builtin model
def run(instruction: str, out: Path) -> dict:
    """`ditflow run` on the shipped builtin model, verification on (the default); in this process, as the CLI's
    own tests do, since a fresh interpreter per run only adds seconds of imports."""
    from ditflow.cli.main import main

    assert main(["run", instruction, "-o", str(out), "-q"]) == 0
    return json.loads((out / "manifest.json").read_text())


def panel(out: Path, k: int):
    from PIL import Image

    return Image.open(out / f"{k:04d}.png").convert("RGB")


def satisfied(out: Path, k: int, *objects: world.ObjectSpec) -> bool:
    return world.score_panel(world.PanelSpec(tuple(objects)), panel(out, k)).satisfied


def test_cli_a_diamond_drops_from_top_to_bottom(tmp_path):
    run("Show a yellow diamond dropping from the top of the frame to the bottom, in 3 frames.", tmp_path)
    for k, cell in enumerate(["top", "center", "bottom"], start=1):
        assert satisfied(tmp_path, k, world.ObjectSpec("yellow", "diamond", position=cell)), k


def test_cli_six_squares_in_six_colours(tmp_path):
    run("I need six pictures, each with a square of a different colour.", tmp_path)
    seen = []
    for k in range(1, 7):
        _, dets = world.detect(panel(tmp_path, k))
        assert [d.shape for d in dets] == ["square"], k
        seen.append(dets[0].color)
    assert len(set(seen)) == 6


def test_cli_a_second_picture_is_an_edit_of_the_first(tmp_path):
    m = run("Draw a green square, then a second picture where the same square has turned yellow.", tmp_path)
    assert [o["derived_from"] for o in m["parsed"]["outputs"]] == [None, 1]
    assert m["plan"]["steps"][1]["refs"] == [{"kind": "output", "index": 1}]
    assert satisfied(tmp_path, 1, world.ObjectSpec("green", "square"))
    assert satisfied(tmp_path, 2, world.ObjectSpec("yellow", "square"))


def test_cli_a_picture_book_adventure_travels_and_tells_each_page(tmp_path):
    m = run("make me a short picture book, three pages, about a little yellow square who goes on an adventure",
            tmp_path)
    where = []
    for k, o in enumerate(m["parsed"]["outputs"], start=1):
        scene = sc.parse_scene(o["description"])
        specs = [world.ObjectSpec(t.color, t.shape, t.size, t.position, t.count) for t in scene.things]
        assert satisfied(tmp_path, k, *specs), (k, o["description"])
        where.append(scene.things[0].position)
    assert len(set(where)) == 3  # the square travels
    article = (tmp_path / "article.md").read_text()
    texts = [o["happens"] for o in m["parsed"]["outputs"]]
    assert len(set(texts)) == 3 and all(t in article for t in texts)
    assert "Next, we see" not in article and "And in the end" not in article


def test_captions_are_labels_and_a_numbered_one_of_them_goes():
    from ditflow.agents.parsing import Context, parse_rules
    pages = parse_rules(Context(instruction="Caption 1: three pink squares. Caption 2: delete 1 of the squares."))
    assert [o.description for o in pages.request.outputs] == ["three pink squares", "two pink squares"]
    one = parse_rules(Context(instruction="two diamonds clipart image")).request
    assert [o.description for o in one.outputs] == ["two diamonds"]  # a plural shape counts objects, not images
