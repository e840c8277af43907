"""The correction policy: which repair each failure gets, the regions it redraws, the budget, the best-of choice,
and the verify ⇄ repair loop of the graph on a tiny random FLUX pipeline (real toolkit calls, real detector)."""
from __future__ import annotations

import os
import random
from types import SimpleNamespace

import numpy as np
import pytest
from langgraph.checkpoint.memory import InMemorySaver
from PIL import Image

from ditflow.agents import scene as sc
from ditflow.agents.graph import AgentRuntime, run_turn
from ditflow.agents.repair import (Repair, best, ladder, local_mask, local_regions, picker, repair_candidates,
                                   repair_steps, rung, run_repair)
from ditflow.agents.verify import DetectorVerifier
from ditflow.pipelines.tiny import tiny_flux_pipeline
from ditflow.schemas import Claim, ParsedRequest, Verdict
from ditflow.world import scenes as world
from ditflow.world.scenes import CanvasSpec, ObjectSpec, PanelSpec, render

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def pipe():
    return tiny_flux_pipeline()


def scene(*objects: ObjectSpec, background: str = "white"):
    return render(CanvasSpec((PanelSpec(tuple(objects), background, background != "white"),)), random.Random(0))


def verdict(img, desc):
    return DetectorVerifier().check(img, desc)


def kinds(img, desc, **kw):
    return [r.kind for r in ladder(verdict(img, desc), desc, img.size, **{"group": False, "shapes_world": True, **kw})]


def covered(mask: Image.Image, box) -> float:
    x0, y0, x1, y1 = box
    return float((np.asarray(mask)[y0:y1, x0:x1] > 0).mean())


# ----------------------------------------------------------------------------- the policy
def test_wrong_colour_of_one_object_is_inpainted_over_that_object_only():
    img = scene(ObjectSpec("blue", "circle", "small", "left"), ObjectSpec("green", "square", "small", "right"))
    v = verdict(img, "a red circle on the left and a green square on the right")
    mask = local_mask(v, "a red circle on the left and a green square on the right", img.size)
    wrong = next(c for c in v.claims if c.status == "fail")
    right = next(c for c in v.claims if c.text == "a green square")
    assert covered(mask, wrong.box) == 1.0 and covered(mask, right.box) == 0.0
    desc = "a red circle on the left and a green square on the right"
    assert kinds(img, desc) == ["inpaint", "inpaint", "regenerate"]  # a new seed before a redraw of two objects
    assert kinds(img, desc, shapes_world=False) == ["inpaint", "regenerate"]


def test_a_lone_object_of_the_wrong_colour_escalates_to_classifier_guidance():
    img = scene(ObjectSpec("blue", "circle", "large", "center"))
    assert kinds(img, "a red circle") == ["inpaint", "guide", "regenerate"]
    assert ladder(verdict(img, "a red circle"), "a red circle", img.size, group=False,
                  shapes_world=True)[1].target == {"shape": "circle", "color": "red"}
    assert kinds(img, "a red circle", shapes_world=False) == ["inpaint", "regenerate"]  # no classifier there


def test_a_move_masks_the_old_place_and_the_new_cell():
    img = scene(ObjectSpec("red", "circle", "small", "top-right"))
    v = verdict(img, "a red circle at the bottom left")
    mask = local_mask(v, "a red circle at the bottom left", img.size)
    old = next(c for c in v.claims if c.attribute == "position").box
    assert covered(mask, old) == 1.0 and covered(mask, (2, 46, 18, 62)) == 1.0  # the bottom-left cell's centre
    assert kinds(img, "a red circle at the bottom left") == ["move", "inpaint", "regenerate"]
    assert ladder(v, "a red circle at the bottom left", img.size, group=False, shapes_world=True)[-1].stress
    assert kinds(img, "a red circle at the bottom left", shapes_world=False) == ["inpaint", "regenerate"]
    assert kinds(img, "a blue circle at the bottom left")[0] == "inpaint"  # wrong colour too: redrawn, not moved


def test_a_misplaced_object_is_moved_as_drawn_clear_of_the_others(pipe):
    img = scene(ObjectSpec("red", "circle", "small", "top-right"), ObjectSpec("green", "square", "large", "bottom"))
    desc = "a red circle at the bottom left and a green square at the bottom"
    v = verdict(img, desc)
    (rep,) = [r for r in ladder(v, desc, img.size, group=False, shapes_world=True) if r.kind == "move"]
    ((box, (dx, dy)),) = rep.moves
    assert rep.background == "white"
    req = ParsedRequest(task="generate", num_inputs=0, num_outputs=1, outputs=[{"index": 1, "description": desc}])
    out, rec = run_repair(pipe, rep, img, desc, None, req, [], {}, 1, seed=3, steps=2)
    assert rec.details["repair"] == "move" and rec.details["moves"] == [{"box": list(box), "offset": [dx, dy]}]
    a, b = np.asarray(img), np.asarray(out)
    ys, xs = np.nonzero(world.object_mask(img, box))
    assert (b[ys + dy, xs + dx] == a[ys, xs]).all()  # the circle's own pixels, in the bottom-left cell
    square = next(c.box for c in v.claims if c.text == "a green square")
    assert (b[square[1]:square[3], square[0]:square[2]] == a[square[1]:square[3], square[0]:square[2]]).all()
    x0, y0, x1, y1 = box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy
    assert world.POSITIONS[int((y0 + y1) / 2 * 3 / 64)][int((x0 + x1) / 2 * 3 / 64)] == "bottom-left"
    assert x1 + 3 <= square[0] or y1 + 3 <= square[1]  # a gap, so the two are not read as one object


def test_missing_and_extra_objects_are_inpainted_in_and_out():
    img = scene(ObjectSpec("red", "circle", "small", "left"))
    v = verdict(img, "a red circle on the left and a blue square on the right")
    mask = local_mask(v, "a red circle on the left and a blue square on the right", img.size)
    assert covered(mask, (45, 27, 51, 37)) == 1.0  # the right cell, where the square must appear
    assert covered(mask, next(c for c in v.claims if c.text == "a red circle").box) == 0.0
    extra = scene(ObjectSpec("red", "circle", "small", "left"), ObjectSpec("pink", "diamond", "small", "right"))
    v = verdict(extra, "a red circle on the left")
    bad = next(c for c in v.claims if c.status == "fail")
    assert bad.text == "nothing else is in the image" and covered(local_mask(v, "a red circle on the left", extra.size), bad.box) == 1.0


def test_inpaint_repairs_redraw_one_object_at_a_time_prompted_with_it_alone():
    img = scene(ObjectSpec("blue", "circle", "small", "left"), ObjectSpec("green", "square", "small", "right"))
    desc = "a red circle on the left and a green square on the right"
    ((mask, prompt),) = local_regions(verdict(img, desc), desc, img.size)
    assert prompt == "a red circle on the left"
    both = "a red circle on the left and a blue square on the right"
    v = verdict(img, both)
    regions = local_regions(v, both, img.size)
    assert [p for _, p in regions] == ["a red circle on the left", "a blue square on the right"]
    circle, square = (next(c.box for c in v.claims if c.text == t) for t in ("a red circle", "a blue square"))
    assert covered(regions[0][0], circle) == 1.0 and covered(regions[0][0], square) == 0.0  # the other kept out
    assert covered(regions[1][0], square) == 1.0 and covered(regions[1][0], circle) == 0.0
    extra = scene(ObjectSpec("red", "circle", "small", "left"), ObjectSpec("pink", "diamond", "small", "right"),
                  background="gray")
    ((_, prompt),) = local_regions(verdict(extra, "a red circle on the left"), "a red circle on the left",
                                   extra.size, background="gray")
    assert prompt == "a plain gray background"
    rep = ladder(v, both, img.size, group=False, shapes_world=True)[0]
    assert rep.kind == "inpaint" and len(rep.regions) == 2
    # a verifier with claims of its own: one region for every failure, prompted with the whole description
    own = Verdict(output=1, verifier="vlm", claims=[Claim(text="the circle is red", attribute="object",
                                                          status="fail", box=circle)])
    ((mask, prompt),) = local_regions(own, both, img.size)
    assert prompt == both and covered(mask, circle) == 1.0


def test_counts_are_drawn_in_or_out_then_regenerated_backgrounds_regenerated_and_groups_regrouped():
    img = scene(ObjectSpec("yellow", "square", "small", count=2))
    assert kinds(img, "three yellow squares") == ["count", "regenerate"]
    assert kinds(img, "three yellow squares", group=True) == ["count", "regroup", "regenerate"]
    assert kinds(img, "three yellow squares", shapes_world=False) == ["regenerate"]
    assert kinds(img, "three red squares") == ["regenerate"]  # the colour is wrong too: not a count to patch
    bg = scene(ObjectSpec("red", "circle", "large", "center"), background="gray")
    assert kinds(bg, "a red circle on a black background") == ["regenerate"]


def test_only_failures_trigger_repairs_and_best_prefers_passing_then_score_then_earliest():
    from ditflow.agents.repair import needs_repair
    from ditflow.agents.verify import unverified

    img = scene(ObjectSpec("red", "circle"))
    assert not needs_repair(verdict(img, "a red circle wearing a hat"))  # not checkable: nothing to fix
    assert not needs_repair(unverified("a blue circle", 1, "x", "timed out"))
    assert needs_repair(verdict(img, "a blue circle"))
    v = lambda d: verdict(img, d).model_dump(mode="json")  # noqa: E731
    cands = [{"attempt": 0, "verdict": v("a red circle on the left and a blue square")},  # 1/4
             {"attempt": 1, "verdict": v("a red circle and a blue square")},  # 2/3
             {"attempt": 2, "verdict": v("a red circle and a green square")},  # 2/3, later
             {"attempt": 3, "verdict": None}]  # the repair tool failed
    assert best(cands)["attempt"] == 1
    assert best(cands + [{"attempt": 4, "verdict": v("a red circle")}])["attempt"] == 4


# ----------------------------------------------------------------------------- the repairs run on the toolkit
def test_inpaint_repair_changes_only_the_masked_region(pipe):
    img = scene(ObjectSpec("blue", "circle", "small", "left"), ObjectSpec("green", "square", "small", "right"))
    img = img.resize((32, 32), Image.NEAREST)  # the tiny pipeline's panel
    desc = "a red circle on the left and a blue square on the right"
    rep = ladder(verdict(img, desc), desc, img.size, group=False, shapes_world=True)[0]
    req = ParsedRequest(task="generate", num_inputs=0, num_outputs=1, outputs=[{"index": 1, "description": desc}])
    out, rec = run_repair(pipe, rep, img, desc, None, req, [], {}, 1, seed=3, steps=3)
    keep = ~np.logical_or.reduce([np.asarray(m) > 0 for m, _ in rep.regions])
    assert rec.tool == "edit" and rec.details["repair"] == "inpaint" and out.size == img.size
    assert rec.spec["steps"] == 3
    assert [r["prompt"] for r in rec.details["regions"]] == ["a red circle on the left", "a blue square on the right"]
    assert (np.asarray(out)[keep] == np.asarray(img)[keep]).all() and keep.any() and not keep.all()


def test_repairs_draw_candidates_in_one_batch_and_keep_the_one_the_verifier_prefers(pipe):
    img = scene(ObjectSpec("blue", "circle", "small", "left"), ObjectSpec("green", "square", "small", "right"))
    img = img.resize((32, 32), Image.NEAREST)
    desc = "a red circle on the left and a blue square on the right"
    rep = ladder(verdict(img, desc), desc, img.size, group=False, shapes_world=True)[0]
    req = ParsedRequest(task="generate", num_inputs=0, num_outputs=1, outputs=[{"index": 1, "description": desc}])
    seen = []

    def last(images, description):  # a picker that records what it was offered and takes the last one
        seen.append((len(images), description))
        return images[-1]

    out, rec = run_repair(pipe, rep, img, desc, None, req, [], {}, 1, seed=3, steps=2, candidates=3, pick=last)
    assert seen == [(3, desc)] * len(rep.regions) and rec.spec["num_images"] == 3
    again, _ = run_repair(pipe, rep, img, desc, None, req, [], {}, 1, seed=3, steps=2)  # one candidate: no pick
    assert len(seen) == len(rep.regions) and out.tobytes() != again.tobytes()
    seen.clear()
    _, rec = run_repair(pipe, Repair("regenerate", "count"), img, "two red circles", None, req, [], {}, 1, seed=3,
                        steps=2, candidates=2, pick=last)
    assert seen == [(2, "two red circles")] and rec.tool == "generate"


def test_the_picker_prefers_a_passing_candidate_then_the_higher_score_and_survives_a_broken_verifier():
    desc = "a red circle on the left and a blue square on the right"
    right = scene(ObjectSpec("red", "circle", "small", "left"), ObjectSpec("blue", "square", "small", "right"))
    half = scene(ObjectSpec("red", "circle", "small", "left"), ObjectSpec("green", "square", "small", "right"))
    wrong = scene(ObjectSpec("green", "square", "small", "center"))
    pick = picker(DetectorVerifier(), 1)
    assert pick([wrong, half, right], desc) is right and pick([wrong, half], desc) is half
    assert pick([half, half.copy()], desc) is half  # a tie goes to the first

    class Broken(DetectorVerifier):
        def check(self, image, description, output=1):
            raise RuntimeError("verifier down")

    assert picker(Broken(), 1)([wrong, half], desc) is wrong  # all unverified: the first
    assert repair_candidates(AgentRuntime(), shapes_world=True) == 3  # the detector checks for free
    assert repair_candidates(AgentRuntime(), shapes_world=False) == 1  # a VLM check costs an LLM call
    assert repair_candidates(AgentRuntime(repair_candidates=5), shapes_world=False) == 5


def test_guide_and_regroup_repairs_run_on_a_real_pipeline(pipe):
    good = scene(ObjectSpec("red", "circle", "large", "center")).resize((32, 32), Image.NEAREST)
    req = ParsedRequest(task="generate", num_inputs=0, num_outputs=2, shared="a circle", outputs=[
        {"index": 1, "description": "a red circle"}, {"index": 2, "description": "a blue circle"}])
    out, rec = run_repair(pipe, Repair("guide", "colour", target={"color": "blue", "shape": "circle"}), good,
                          "a blue circle", None, req, [], {}, 2, seed=1)
    assert rec.tool == "guide" and out.size == (32, 32) and rec.details["trace"]
    out, rec = run_repair(pipe, Repair("regroup", "panel"), good, "a blue circle", None, req, [], {1: good}, 2,
                          seed=1)
    assert rec.tool == "group" and rec.spec["n_refs"] == 1 and rec.spec["panel_prompts"][0] == "a red circle"
    with pytest.raises(ValueError, match="no other output passed"):
        run_repair(pipe, Repair("regroup", "panel"), good, "a blue circle", None, req, [], {}, 2, seed=1)


def test_the_ladder_escalates_on_a_base_that_repairs_failed_and_restarts_on_an_improved_one():
    orig = {"attempt": 0}
    assert rung([orig], orig) == 0
    worse = {"attempt": 1, "base": 0}  # repair 1 did not beat the original: the original stays the base
    assert rung([orig, worse], orig) == 1
    better = {"attempt": 1, "base": 0}  # repair 1 beat it: the cheapest rung again, on repair 1
    assert rung([orig, better], better) == 0
    assert rung([orig, better, {"attempt": 2, "base": 1}], better) == 1
    assert rung([orig, {"attempt": 1}], orig) == 1  # a record from before "base" was kept: made from the original


def test_repairs_run_a_share_of_the_default_steps_but_never_fewer_than_four():
    from ditflow.pipelines.loading import PipelineInfo

    def pipe_with(steps):
        return SimpleNamespace(ditflow_info=PipelineInfo(name="p", default_steps=steps))

    assert repair_steps(pipe_with(20)) == 10 and repair_steps(pipe_with(28)) == 14  # builtin, FLUX.1-dev
    assert repair_steps(pipe_with(4)) == 4 and repair_steps(pipe_with(6)) == 4  # FLUX.1-schnell keeps its count
    assert repair_steps(pipe_with(20), 1.0) == 20 and repair_steps(pipe_with(20), 0.25) == 5


# ----------------------------------------------------------------------------- the loop in the graph
def test_a_turn_repairs_within_its_budget_and_records_every_attempt(pipe, tmp_path):
    events = []
    rt = AgentRuntime(pipeline=pipe, verify=True, max_repairs=2, progress=events.append)
    rec = run_turn(rt, thread_id="r", instruction="two images of a red circle at the top left", images=[],
                   out_dir=tmp_path, checkpointer=InMemorySaver())
    assert rec.error is None and rec.images == ["0001.png", "0002.png"]
    assert len(rec.verdicts) == 2 and all(v.verifier == "detector" for v in rec.verdicts)
    for i in (1, 2):
        mine = [r for r in rec.repairs if r.output == i]
        if mine:
            assert [r.attempt for r in mine] == list(range(1, len(mine) + 1)) and len(mine) <= 2
            assert all(r.verdict is not None and (tmp_path / r.file).is_file() and r.reason for r in mine)
            assert all(0 <= r.base < r.attempt for r in mine)  # each repaired an earlier candidate
            assert mine[-1].verdict.passed or len(mine) == 2  # stops at a pass, else at the budget
        chosen = [r for r in mine if r.chosen]
        final = rec.verdicts[i - 1]
        if chosen:  # a repair won: it is the output now, the original is kept beside the attempts
            assert np.array_equal(np.asarray(Image.open(tmp_path / chosen[0].file)),
                                  np.asarray(Image.open(tmp_path / f"{i:04d}.png")))
            assert (tmp_path / f"repairs/{i:04d}-0.png").is_file() and final == chosen[0].verdict
        assert all(final.score >= r.verdict.score for r in mine)  # the best candidate won
    assert rec.timings.repair_s > 0 if rec.repairs else True
    texts = [e.message for e in events if e.stage in ("verify", "repair")]
    assert any("claims hold" in t for t in texts)
    if rec.repairs:
        assert any(t.startswith("fixing 1 of") and "saw" in t for t in texts)


def test_budget_zero_only_verifies_and_verify_off_does_nothing(pipe, tmp_path):
    rec = run_turn(AgentRuntime(pipeline=pipe, verify=True, max_repairs=0), thread_id="z", instruction="a red circle",
                   images=[], out_dir=tmp_path / "a", checkpointer=InMemorySaver())
    assert len(rec.verdicts) == 1 and rec.repairs == [] and not (tmp_path / "a" / "repairs").exists()
    rec = run_turn(AgentRuntime(pipeline=pipe, verify=False), thread_id="z", instruction="a red circle",
                   images=[], out_dir=tmp_path / "b", checkpointer=InMemorySaver())
    assert rec.verdicts == [] and rec.repairs == []


class Broken:
    name, timeout_s = "broken", 5.0

    def check(self, image, description, output=1):
        raise RuntimeError("the verifier crashed")


def test_a_crashing_verifier_leaves_the_turn_done_and_unverified(pipe, tmp_path):
    events = []
    rec = run_turn(AgentRuntime(pipeline=pipe, verify=True, verifier=Broken(), progress=events.append),
                   thread_id="b", instruction="a red circle", images=[], out_dir=tmp_path, checkpointer=InMemorySaver())
    assert rec.error is None and rec.images == ["0001.png"] and rec.repairs == []
    assert rec.verdicts[0].error == "RuntimeError: the verifier crashed" and not rec.verdicts[0].passed
    assert any(e.stage == "verify" and "unverified" in e.message for e in events)


def test_chat_shows_repairs_and_each_unpassed_verdict_with_its_reason(pipe, tmp_path):
    from rich.console import Console

    from ditflow.api import Session, Turn
    from ditflow.cli.chat import Chat

    def shown(**kw) -> tuple[str, object]:
        out = tmp_path / str(len(list(tmp_path.iterdir())))
        rec = run_turn(AgentRuntime(pipeline=pipe, verify=True, **kw), thread_id="c", instruction="a red circle",
                       images=[], out_dir=out, checkpointer=InMemorySaver())
        console = Console(record=True, width=200)
        Chat(Session(model="tiny", home=tmp_path / "home"), console, preview="none").show_turn(Turn(rec, out))
        return console.export_text(), rec

    text, rec = shown(max_repairs=1)
    if not rec.verdicts[0].passed:  # random weights: the red circle is a blob, so it fails and is repaired once
        assert "verifier: output 1:" in text and "saw" in text
        assert f"repaired output 1: {rec.repairs[0].repair}" in text
    text, rec = shown(verifier=Broken())
    assert "verifier: output 1: unverified (RuntimeError: the verifier crashed)" in text


def test_a_count_repair_draws_missing_copies_in_free_cells_and_clears_extra_ones(pipe):
    req = ParsedRequest(task="generate", num_inputs=0, num_outputs=1,
                        outputs=[{"index": 1, "description": "three yellow squares"}])
    two = scene(ObjectSpec("yellow", "square", "small", count=2))
    rep = ladder(verdict(two, "three yellow squares"), "three yellow squares", two.size, group=False,
                 shapes_world=True)[0]
    out, rec = run_repair(pipe, rep, two, "three yellow squares", None, req, [], {}, 1, seed=3, steps=2)
    ((region,),) = [[r["prompt"] for r in rec.details["regions"]]]
    assert rec.details["repair"] == "count" and region.startswith("a yellow square ")  # and the free cell it goes in
    assert sc.parse_scene(region).things[0].position in world.POSITION_CELL
    changed = (np.asarray(out) != np.asarray(two)).any(-1)
    for d in world.detect(two)[1]:  # the two squares drawn right are kept
        assert not changed[d.box[1]:d.box[3], d.box[0]:d.box[2]].any()
    three = scene(ObjectSpec("yellow", "square", "small", count=3))
    rep = ladder(verdict(three, "two yellow squares"), "two yellow squares", three.size, group=False,
                 shapes_world=True)[0]
    assert rep.kind == "count"
    out, rec = run_repair(pipe, rep, three, "two yellow squares", None, req, [], {}, 1, seed=3, steps=2)
    assert [r["prompt"] for r in rec.details["regions"]] == ["a plain white background"]
    changed = (np.asarray(out) != np.asarray(three)).any(-1)
    hit = [changed[d.box[1]:d.box[3], d.box[0]:d.box[2]].any() for d in world.detect(three)[1]]
    assert sorted(hit) == [False, False, True]  # one square cleared, two kept


def test_a_count_repair_also_clears_objects_the_description_does_not_name():
    from ditflow.agents.repair import _count_regions

    img = scene(ObjectSpec("yellow", "square", "small", "left", count=1), ObjectSpec("yellow", "square", "small",
                "right"), ObjectSpec("red", "circle", "small", "bottom"))
    desc = "three yellow squares"
    rep = ladder(verdict(img, desc), desc, img.size, group=False, shapes_world=True)[0]
    assert rep.kind == "count"
    regions = _count_regions(img, rep.things, sc.parse_scene(desc).things, rep.background)
    assert [p for _, p in regions][0] == "a plain white background" and regions[1][1].startswith("a yellow square")
    assert len(regions) == 2
    circle = next(d for d in world.detect(img)[1] if d.shape == "circle")
    assert covered(regions[0][0], circle.box) == 1.0


def test_a_count_repair_swaps_copies_of_the_wrong_size_for_copies_of_the_right_one():
    from ditflow.agents.repair import _count_regions

    img = scene(ObjectSpec("orange", "square", "small", "left"), ObjectSpec("orange", "square", "large", "right"))
    desc = "three small orange squares"
    rep = ladder(verdict(img, desc), desc, img.size, group=False, shapes_world=True)[0]
    assert rep.kind == "count"
    regions = _count_regions(img, rep.things, sc.parse_scene(desc).things, rep.background)
    large = next(d for d in world.detect(img)[1] if d.size == "large")
    assert [p for _, p in regions][0] == "a plain white background" and covered(regions[0][0], large.box) == 1.0
    assert [sc.parse_scene(p).things[0].size for _, p in regions[1:]] == ["small", "small"]  # two drawn in
    assert kinds(img, "three small red squares") == ["regenerate"]  # the colour is wrong too: not a count to patch


def test_an_unplaced_object_of_the_wrong_look_is_redrawn_in_a_named_free_cell():
    from ditflow.toolkit.edit import cell_box

    img = scene(ObjectSpec("blue", "circle", "small", "top-right"), ObjectSpec("green", "square", "small", "left"))
    desc = "a red circle and a green square"
    v = verdict(img, desc)
    ((mask, prompt),) = local_regions(v, desc, img.size)
    (thing,) = sc.parse_scene(prompt).things
    assert (thing.shape, thing.color) == ("circle", "red") and thing.position in ("top-right", "bottom-right")
    old = next(c.box for c in v.claims if c.status == "fail")
    square = next(c.box for c in v.claims if c.text == "a green square")
    new = tuple(round(x) for x in cell_box(thing.position, 14, *img.size))
    assert covered(mask, old) == 1.0 and covered(mask, new) == 1.0 and covered(mask, square) == 0.0
    assert kinds(img, desc) == ["inpaint", "inpaint", "regenerate"]  # several objects: a second inpaint first
    # two missing unplaced objects go to two different cells
    empty = scene(ObjectSpec("green", "square", "small", "center"))
    regions = local_regions(verdict(empty, "a red circle, a blue diamond and a green square"),
                            "a red circle, a blue diamond and a green square", empty.size)
    cells = [sc.parse_scene(p).things[0].position for _, p in regions]
    assert len(cells) == 2 and cells[0] != cells[1] and "center" not in cells


def test_a_verifier_of_its_own_claims_gets_a_missing_object_drawn_in_its_cell():
    img = scene(ObjectSpec("red", "circle", "small", "left"))
    own = Verdict(output=1, verifier="vlm", claims=[
        Claim(text="a blue square on the right", attribute="object", status="fail", want="a blue square on the right",
              seen="nothing"),
        Claim(text="a red circle", attribute="object", status="pass", box=(2, 25, 16, 39))])
    ((mask, prompt),) = local_regions(own, "a red circle and a blue square on the right", img.size)
    assert prompt == "a red circle and a blue square on the right"
    assert covered(mask, (45, 27, 51, 37)) == 1.0  # the right cell
