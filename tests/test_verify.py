"""Verifiers: exact claim-level verdicts from the shapes-world detector on rendered scenes, "not checkable" for
claims outside the vocabulary, "unverified" for a verifier that errors or times out, and the LLM verifier's
text-only path through the embedded LLM and a dead endpoint."""
from __future__ import annotations

import os
import random
import time

import pytest

from ditflow.agents.verify import (NOTHING, DetectorVerifier, LLMVerifier, check_guarded, claims_of, expected_of,
                                   summary, verify_outputs)
from ditflow.schemas import ParsedRequest
from ditflow.world import scenes as world
from ditflow.world.scenes import CanvasSpec, ObjectSpec, PanelSpec, render

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def scene(*objects: ObjectSpec, background: str = "white", seed: int = 0):
    return render(CanvasSpec((PanelSpec(tuple(objects), background, background != "white"),)), random.Random(seed))


def by_attr(verdict, attribute: str, text_part: str = ""):
    return next(c for c in verdict.claims if c.attribute == attribute and text_part in c.text)


# ----------------------------------------------------------------------------- claims
def test_claims_follow_the_description_in_a_fixed_order():
    texts = [(c.attribute, c.text) for c in claims_of("a large red circle on the left on a black background")]
    assert texts == [("object", "a red circle"), ("size", "the red circle is large"),
                     ("position", "the red circle is on the left"), ("object", "nothing else is in the image"),
                     ("background", "on a black background")]
    assert [c.attribute for c in claims_of("three purple triangles")] == ["count", "object"]
    assert all(c.status == "unverified" for c in claims_of("a red circle"))


def test_words_outside_the_vocabulary_become_other_claims():
    assert expected_of("a blue circle, a red square, they play together").unknown == ("they play together",)
    assert expected_of("please draw a small cyan triangle at the center on gray").unknown == ()
    exp = expected_of("a 256x256 photo, mostly gray, restored")
    assert exp.things == () and exp.unknown == ("256x256 photo", "mostly gray", "restored")


# ----------------------------------------------------------------------------- detector verifier
def test_detector_passes_every_rendered_heldout_scene():
    rng = random.Random(1)
    prompts = [(t, s) for t, s in world.heldout_prompts(8) if s.layout == (1, 1)]
    failed = []
    for text, spec in prompts:
        v = DetectorVerifier().check(render(spec, rng), text)
        if not v.passed:
            failed.append((text, summary(v)))
    assert len(prompts) == 40 and failed == []


@pytest.mark.parametrize("desc, objects, background, attribute, part, seen", [
    ("a red circle", [ObjectSpec("blue", "circle", "large", "center")], "white", "object", "red circle",
     "a blue circle in the center"),
    ("a red circle", [ObjectSpec("red", "square", "large", "center")], "white", "object", "red circle",
     "a red square in the center"),
    ("a red circle on the left", [ObjectSpec("red", "circle", "large", "top-right")], "white", "position", "left",
     "top-right"),
    ("a small red circle", [ObjectSpec("red", "circle", "large", "center")], "white", "size", "small", "large"),
    ("a red circle and a blue square", [ObjectSpec("red", "circle", None, "left")], "white", "object", "blue square",
     NOTHING),
    ("a red circle", [ObjectSpec("red", "circle", "small", "left"), ObjectSpec("green", "diamond", "small", "right")],
     "white", "object", "nothing else", "a green diamond on the right"),
    ("three yellow squares", [ObjectSpec("yellow", "square", "small", None, count=2)], "white", "count", "three",
     "two yellow squares"),
    ("a red circle on a black background", [ObjectSpec("red", "circle", "large", "center")], "gray", "background",
     "black", "gray"),
])
def test_detector_names_each_failure_and_what_it_saw(desc, objects, background, attribute, part, seen):
    img = scene(*objects, background=background)
    v = DetectorVerifier().check(img, desc, output=3)
    bad = [c for c in v.claims if c.status == "fail"]
    assert v.output == 3 and not v.passed and v.verifier == "detector"
    assert [(c.attribute, c.seen) for c in bad] == [(attribute, seen)], summary(v)
    assert part in bad[0].text
    if bad[0].box is not None:  # a box, when given, is where the offending object is
        x0, y0, x1, y1 = bad[0].box
        assert 0 <= x0 < x1 <= img.width and 0 <= y0 < y1 <= img.height
    # the same scene passes its own description
    truth = world.panel_phrase(PanelSpec(tuple(objects), background, True), random.Random(0))
    assert DetectorVerifier().check(img, truth).passed, truth


def test_a_blob_bigger_than_any_world_object_is_not_a_shape():
    from PIL import Image

    img = Image.new("RGB", (64, 64), world.BACKGROUNDS["white"])
    img.paste(world.COLORS["red"], (4, 4, 60, 60))
    v = DetectorVerifier().check(img, "a red square")
    assert by_attr(v, "object", "red square").status == "fail" and "blob" in by_attr(v, "object", "red").seen


def test_claims_outside_the_vocabulary_are_never_passed():
    img = scene(ObjectSpec("red", "circle", "large", "center"))
    v = DetectorVerifier().check(img, "a red circle wearing a tiny hat")
    assert [c.status for c in v.claims] == ["pass", "pass", "not_checkable"]
    assert v.claims[-1].text == "wearing tiny hat" and not v.passed
    only = DetectorVerifier().check(img, "a 256x256 photo, mostly gray, restored")
    assert only.claims and all(c.status == "not_checkable" for c in only.claims) and not only.passed


# ----------------------------------------------------------------------------- the guard
class Exploding:
    name, timeout_s = "exploding", 5.0

    def check(self, image, description, output=1):
        raise KeyError("the verifier has a bug")


class Stuck:
    name, timeout_s = "stuck", 0.3

    def check(self, image, description, output=1):
        time.sleep(5)


def test_an_erroring_or_hanging_verifier_gives_unverified_verdicts():
    img = scene(ObjectSpec("red", "circle"))
    v = check_guarded(Exploding(), img, "a red circle on the left", 2)
    assert v.output == 2 and "KeyError" in v.error and not v.passed
    assert [c.status for c in v.claims] == ["unverified"] * 3
    t0 = time.perf_counter()
    v = check_guarded(Stuck(), img, "a red circle", 1)
    assert time.perf_counter() - t0 < 2.0 and "timed out" in v.error and not v.passed


def test_verify_outputs_checks_each_output_against_its_own_description():
    req = ParsedRequest(task="generate", num_inputs=0, num_outputs=2, outputs=[
        {"index": 1, "description": "a red circle"}, {"index": 2, "description": "a blue square"}])
    imgs = {1: scene(ObjectSpec("red", "circle")), 2: scene(ObjectSpec("red", "circle"))}
    assert [v.passed for v in verify_outputs(DetectorVerifier(), imgs, req)] == [True, False]


# ----------------------------------------------------------------------------- LLM verifier
def test_llm_verifier_on_a_dead_endpoint_is_unverified_not_a_crash():
    from ditflow.agents.llm.openai import OpenAIBackend

    import socket

    with socket.socket() as s:  # a port nobody listens on: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = OpenAIBackend(base_url=f"http://127.0.0.1:{port}/v1", model="m", retries=0, timeout=2.0)
    v = check_guarded(LLMVerifier(dead), scene(ObjectSpec("red", "circle")), "a red circle", 1)
    assert v.error and "unavailable" in v.error and v.verifier == "llm:openai" and not v.passed


@pytest.mark.slow  # about 2 min on 2 busy cores: the 135M model writes every answer token under the grammar
def test_llm_verifier_text_path_with_the_embedded_llm():
    """The text-only path end to end: describe → the embedded LLM under the answers grammar → a verdict with one
    answer per claim, in order; a claim the describe text cannot show stays "not checkable" whatever it says."""
    from ditflow.agents.llm.base import make_backend

    try:
        backend = make_backend("local")
        v = LLMVerifier(backend).check(scene(ObjectSpec("blue", "circle", None, "left")),
                                       "a blue circle and a cat wearing a hat")
    except Exception as e:  # noqa: BLE001
        if type(e).__name__ == "LLMUnavailable":
            pytest.skip(f"embedded LLM not installed: {e}")
        raise
    assert [c.text for c in v.claims] == ["a blue circle", "nothing else is in the image", "cat wearing hat"]
    assert v.claims[-1].status == "not_checkable"
    assert all(c.status in ("pass", "fail", "not_checkable") for c in v.claims) and v.verifier == "llm:local"


def test_bench_exactness_and_the_scene_a_description_is_scored_against():
    from ditflow.bench.verification import detector_exactness, spec_of

    r = detector_exactness(2)
    assert r["n"] == 10 and r["true_pass"] == 1.0 and r["recoloured_fail"] == 1.0
    assert spec_of("a red circle wearing a hat") is None and spec_of("a 64x64 photo, mostly gray") is None
    assert spec_of("two small blue squares on a gray background") == PanelSpec(
        (ObjectSpec("blue", "square", "small", None, 2),), "gray", True)


def test_bench_runs_both_modes_on_a_real_pipeline_within_the_budget():
    from ditflow.bench.verification import report, run

    r = run("tiny", ["off", "on"], n_per_kind=1, split="test", limit=0, budget=1, seed=0, sets=("shapes",),
            step_share=0.5)
    off, on = r["results"][("shapes", "off")], r["results"][("shapes", "on")]
    assert off.outputs == on.outputs == 5 and off.repairs == 0 and on.max_repairs <= 1
    assert off.seconds > 0 and on.seconds > 0 and not off.errors and not on.errors
    text = report(r)
    assert "repair steps=0.5× default" in text and "budget respected by every output: yes" in text
    assert len(on.failed) == on.outputs - on.satisfied  # a random model fails: each failure is listed to look at
    assert all(f"unsatisfied with verification on: {f}" in text for f in on.failed[:10])
