"""Honest outcomes (issue 30): what happened is said on the terminal and in the exit status, not only in
manifest.json. A request for nothing the model draws is refused (2) and writes no image; a mixed one draws its
drawable part and says what it left out; an output that still fails verification after repairs is named with
its failed claims (4); an unreachable LLM costs one line and milliseconds, not seconds of retries.

Real runs of the CLI: the builtin model for the refusal, the tiny random pipeline elsewhere (a shapes-world model
too, whose outputs never match, so a mismatch happens for real)."""
from __future__ import annotations

import io
import json
import os
import random
import re
import socket
import subprocess
import sys
import time
from dataclasses import replace

import diffusers  # noqa: F401  (first imported here, not inside a test: it binds its log handler to that stderr)
import pytest
from langgraph.checkpoint.memory import InMemorySaver
from rich.console import Console

from ditflow.agents import scope
from ditflow.agents.graph import AgentRuntime, run_turn
from ditflow.agents.llm.base import LLMUnavailable
from ditflow.agents.llm.openai import OpenAIBackend
from ditflow.agents.parsing import Context, parse_rules
from ditflow.api import read_manifest
from ditflow.batch import BATCH_FILE, BatchManifest
from ditflow.cli.main import EXIT_MISMATCH, EXIT_OK, EXIT_USAGE, main
from ditflow.pipelines.tiny import tiny_flux_pipeline
from ditflow.progress import RichProgress
from ditflow.schemas import OUT_OF_WORLD, OutputSpec, ParsedRequest, ProgressEvent
from ditflow.world import scenes as world

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as s:  # free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(*descriptions: str, task: str = "generate", sources: list[int] | None = None) -> ParsedRequest:
    outputs = [OutputSpec(index=i, description=d, sources=sources or []) for i, d in enumerate(descriptions, 1)]
    n_in = max(sources or [0])
    return ParsedRequest(task=task, num_inputs=n_in, num_outputs=len(outputs), outputs=outputs,
                         inputs=[{"index": i, "description": "a photo"} for i in range(1, n_in + 1)])


# ----------------------------------------------------------------------------- scope, by vocabulary alone
def test_the_worlds_own_captions_are_never_outside_it():
    rng = random.Random(0)
    for wording in (world.TRAIN_WORDING, world.EVAL_WORDING):
        for _ in range(300):
            caption = world.caption(world.sample_spec(rng), rng, wording)
            assert scope.check(request(caption), caption) == scope.Scope(), caption


@pytest.mark.parametrize("instruction,descriptions,outside,left_out", [
    ("a photo of a cat sleeping on a sofa", ["a cat sleeping on a sofa"], (1,), ("a cat", "a sofa")),
    ("a red circle next to a cat", ["a red circle"], (), ("a cat",)),  # the rules parser kept the circle only
    ("", ["a red circle next to a cat"], (), ("a cat",)),  # an LLM parser kept the whole phrase
    ("a nice red circle on a black background", ["a red circle on a black background"], (), ()),
    ("a four-page picture book about a red circle that turns blue", ["a red circle"] * 2 + ["a blue circle"] * 2,
     (), ()),
    ("draw 6 different shapes, one per image", ["6 different shapes, one per image, scene 1 of 2"] * 2, (), ()),
    ("three pictures: a red circle, a cat on a sofa, a blue square",
     ["a red circle", "a cat on a sofa", "a blue square"], (2,), ("a cat", "a sofa")),
    # a shape in a colour the world's objects never have is not that object (the parse drops the colour)
    ("a photo of a brown circle", ["a circle"], (1,), ("a brown circle",)),
    ("two silver triangles on a gray background", ["two triangles on a gray background"], (1,),
     ("two silver triangles",)),
    ("a white circle on a black background", ["a circle on a black background"], (1,), ("a white circle",)),
    ("a tan-coloured diamond", ["a diamond"], (1,), ("a tan-colored diamond",)),
    # more of a kind than a picture holds: drawing two would pass for what was asked
    ("eight small pink squares", ["two small pink squares"], (1,), ("eight small pink squares",)),
    ("12 circles and a triangle", ["two circles and a triangle"], (1,), ("12 circles",)),
    ("five pictures of two circles", ["two circles"] * 5, (), ()),  # pictures are no objects
    ("twelve images of diamonds", ["a diamond"] * 12, (), ()),  # a count of pictures, not of diamonds
    ("draw 10 different pictures of squares", ["a square"] * 10, (), ()),
    ("ten small squares in one picture", ["three small squares"], (1,), ("ten small squares",)),
])
def test_what_lies_outside_the_shapes_world(instruction, descriptions, outside, left_out):
    found = scope.check(request(*descriptions), instruction)
    assert (found.outside, found.left_out) == (outside, left_out)


def test_edits_and_restorations_of_an_input_image_are_never_outside():
    for task in ("edit", "restore"):
        assert not scope.check(request("a photo of a cat, edited: make the cat blue", task=task, sources=[1]),
                               "make the cat in image 1 blue")
    # a new image made from an input is judged by the input, not by the words
    assert not scope.check(request("a cat in the style of image 1", sources=[1]), "a cat like image 1")


@pytest.mark.parametrize("instruction, look", [
    ("Make it look like a watercolor painting", "watercolor"), ("what if it were snowing?", "snowing"),
    ("show me this scene at night", "at night"), ("make the circle red", None),
])
def test_an_edit_to_a_look_the_world_lacks_is_outside_and_asks_nothing(instruction, look):
    from ditflow.agents.parsing import Context, parse_rules
    from ditflow.schemas import InputImage, SceneObject

    objects = [SceneObject(id=1, shape="circle", color="orange", position="top", box=(24, 4, 40, 20)),
               SceneObject(id=2, shape="square", color="blue", position="left", box=(4, 24, 18, 38))]
    image = InputImage(index=1, description="an orange circle at the top and a blue square on the left",
                       objects=objects, background="white")
    req = parse_rules(Context(instruction=instruction, inputs=[image])).request
    assert req.clarification is None  # not "which one did 'it' mean?"
    found = scope.check(req, instruction)
    assert found == (scope.Scope((1,), (look,)) if look else scope.Scope())


def test_the_drawable_part_drops_empty_outputs_renumbers_and_notes_them():
    req = request("a red circle", "a cat on a sofa", "a blue square")
    found = scope.check(req)
    kept, notes = scope.drawable_part(req, found)
    assert [(o.index, o.description) for o in kept.outputs] == [(1, "a red circle"), (2, "a blue square")]
    assert kept.num_outputs == 2
    assert notes == ["left out output 2 ('a cat on a sofa'): outside what this model draws",
                     "left out 'a cat', 'a sofa': outside what this model draws"]
    message = scope.refusal(request("a cat on a sofa"), scope.check(request("a cat on a sofa")))
    assert message.startswith(f"{OUT_OF_WORLD} 'a cat', 'a sofa'. It draws circles, squares, triangles and diamonds")
    assert all(w in message for w in [*world.COLORS, *world.BACKGROUNDS, "bottom right", "center"])


# ----------------------------------------------------------------------------- scope in the graph
@pytest.fixture(scope="module")
def pipe():
    return tiny_flux_pipeline()


def test_the_graph_refuses_a_shapes_world_model_but_never_another_model(pipe, tmp_path):
    rt = AgentRuntime(pipeline=pipe)
    refused = run_turn(rt, thread_id="a", instruction="a photo of a cat sleeping on a sofa", images=[],
                       out_dir=tmp_path / "tiny", checkpointer=InMemorySaver())
    assert refused.error.startswith(f"{OUT_OF_WORLD} 'a cat', 'a sofa'")
    assert refused.plan is None and refused.images == [] and not (tmp_path / "tiny").exists()
    other = tiny_flux_pipeline()  # the same weights, as a model of no known world (FLUX.1, say)
    other.ditflow_info = replace(other.ditflow_info, name="black-forest-labs/FLUX.1-dev", world=None)
    drawn = run_turn(AgentRuntime(pipeline=other), thread_id="b", instruction="a photo of a cat sleeping on a sofa",
                     images=[], out_dir=tmp_path / "flux", checkpointer=InMemorySaver())
    assert drawn.error is None and drawn.images == ["0001.png"] and (tmp_path / "flux" / "0001.png").is_file()


# ----------------------------------------------------------------------------- ditflow run
def test_a_request_for_nothing_the_model_draws_exits_2_and_writes_no_image(tmp_path):
    out = tmp_path / "cat"
    r = subprocess.run([sys.executable, "-m", "ditflow.cli", "run", "a photo of a cat sleeping on a sofa", "-o",
                        str(out), "-q"], env=ENV, capture_output=True, text=True, timeout=600)  # the builtin model
    assert r.returncode == EXIT_USAGE, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("ditflow run:")]
    assert errors == [f"ditflow run: error: {OUT_OF_WORLD} 'a cat', 'a sofa'. It draws {scope.WORLD_TEXT}"]
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert not out.exists() or not any(out.iterdir())  # no image, no manifest: nothing to clean up before a rerun


def test_a_mixed_request_draws_the_drawable_part_and_says_what_it_left_out(tmp_path, capfd):
    out = tmp_path / "mixed"
    code = main(["run", "a red circle next to a cat", "-o", str(out), "-q", "--no-verify", "--model", "tiny"])
    err = capfd.readouterr().err
    assert code == EXIT_MISMATCH, err  # finished, but not all of it: the exit status says so
    assert "ditflow run: note: left out 'a cat': outside what this model draws" in err.splitlines()
    assert "ditflow run: not drawn: 'a cat' (outside what this model draws)" in err.splitlines()
    m = read_manifest(out)
    assert m.images == ["0001.png"] and m.parsed.outputs[0].description == "a red circle"
    assert "left out 'a cat': outside what this model draws" in m.notes and m.left_out == ["a cat"]


@pytest.mark.parametrize("instruction, look", [("a red circle made of glass", "made of glass"),
                                               ("draw two striped blue squares", "striped"),
                                               ("a yellow triangle with a drop shadow", "a drop shadow"),
                                               ("a pixel art green diamond on black", "pixel art")])
def test_a_look_the_world_cannot_draw_is_left_out_and_said(instruction, look):
    req = parse_rules(Context(instruction=instruction)).request
    assert scope.check(req, instruction).left_out == (look,)


@pytest.mark.parametrize("instruction", ["two blue squares at night", "a painting of a red circle",
                                         "a red circle on a gray background"])
def test_a_picture_word_or_a_story_backdrop_is_not_a_look(instruction):
    """Own wording: night is a story's backdrop, "a painting of" a picture, a named background plain."""
    assert not scope.check(parse_rules(Context(instruction=instruction)).request, instruction)


def test_an_output_that_still_fails_verification_is_named_and_exits_4(tmp_path, capfd):
    out = tmp_path / "mismatch"
    code = main(["run", "a red triangle at the top left", "-o", str(out), "-q", "--model", "tiny",
                 "--max-repairs", "0"])
    captured = capfd.readouterr()
    assert code == EXIT_MISMATCH == 4, captured.err
    m = read_manifest(out)  # the run finished: images and manifest are there
    assert captured.out.split() == [str(out / "0001.png"), str(out / "plan.json"), str(out / "manifest.json")]
    failed = [c for c in m.verdicts[0].claims if c.status == "fail"]
    assert failed  # the tiny random pipeline draws no triangle
    want = "ditflow run: 0001.png does not match: " + "; ".join(f"{c.text!r} (seen: {c.seen})" for c in failed)
    assert want in captured.err.splitlines()


def test_an_unreachable_llm_costs_one_line_and_no_retries(tmp_path, capfd):
    url = f"http://127.0.0.1:{free_port()}/v1"
    out = tmp_path / "llm"
    code = main(["run", "a four-page picture book about a red circle that turns blue", "-o", str(out), "-q",
                 "--model", "tiny", "--no-verify", "--llm", url])
    err = capfd.readouterr().err
    assert code == EXIT_OK, err
    m = read_manifest(out)
    assert len(m.images) == 4 and m.timings.parse_s < 2.0  # no seconds of backoff against a refused connection
    told = [line for line in err.splitlines() if line.startswith("ditflow run:") and "unreachable" in line]
    assert told == [f"ditflow run: note: parse: the LLM gave no valid answer (LLM {url} unavailable: unreachable "
                    "(ConnectError: connection refused)); using the rules parse"]
    # the planner and the article writer fell back too: recorded, but not told again
    assert sum("unreachable" in n for n in m.notes) == 3


def test_the_openai_backend_does_not_retry_a_refused_connection():
    b = OpenAIBackend(f"http://127.0.0.1:{free_port()}/v1", model="m", retries=3, backoff=1.0)
    t0 = time.perf_counter()
    with pytest.raises(LLMUnavailable, match=r"unreachable \(ConnectError: connection refused\)"):
        b.complete([{"role": "user", "content": "a red circle"}], ParsedRequest)
    assert time.perf_counter() - t0 < 1.0 and b.stats.transport_retries == 0  # backoff alone would be 7 s


def test_the_display_prints_notices_as_lines_only_when_asked():
    for notices in (True, False):
        buf = io.StringIO()
        with RichProgress(console=Console(file=buf, width=200), notices=notices) as show:
            show(ProgressEvent(stage="parse", message="reading the instruction"))
            show(ProgressEvent(stage="parse", message="parse: the LLM gave no valid answer", notice=True))
        assert ("note: parse: the LLM gave no valid answer" in buf.getvalue()) == notices


@pytest.mark.parametrize("command", ["run", "batch"])
def test_help_lists_every_exit_status(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out.split("exit status:\n")[1]
    entries = {int(e.split()[0]): " ".join(e.split()[1:]) for e in re.split(r"\n(?=  \d)", text.strip("\n"))}
    assert entries.keys() == {0, 1, 2, 3, 4, 130}  # each status once, with one meaning
    for status, meaning in [(0, "done"), (1, "could not finish"), (2, "outside what this model draws"),
                            (3, "out of disk space"), (4, "does not match"), (130, "interrupted")]:
        assert meaning in entries[status], entries[status]


# ----------------------------------------------------------------------------- ditflow batch
def test_batch_records_mismatches_and_exits_4_also_on_resume(tmp_path, capfd):
    tasks, out = tmp_path / "tasks.jsonl", tmp_path / "out"
    tasks.write_text(json.dumps({"id": "t0", "instruction": "a red triangle at the top left"}) + "\n")
    args = ["batch", str(tasks), "-o", str(out), "--model", "tiny", "--max-repairs", "0"]
    assert main(args) == EXIT_MISMATCH, capfd.readouterr().err
    err = capfd.readouterr().err
    state = BatchManifest.model_validate_json((out / BATCH_FILE).read_text()).tasks[0]
    assert state.status == "done" and state.mismatches and state.mismatches[0].startswith("0001.png does not match:")
    assert f"  t0/{state.mismatches[0]}" in err.splitlines()
    assert main([*args, "--resume"]) == EXIT_MISMATCH  # skipped, and still not matching: the folders are the truth
    again = BatchManifest.model_validate_json((out / BATCH_FILE).read_text()).tasks[0]
    assert again.skipped and again.mismatches == state.mismatches


@pytest.mark.parametrize("instruction", ["a hexagon on a gray background", "a yellow star on black, like a night sky"])
def test_nothing_drawable_but_a_backdrop_is_refused(instruction):
    """Own wording: the only object is not the world's, so drawing would give a bare background."""
    req = parse_rules(Context(instruction=instruction)).request
    assert scope.check(req, instruction).outside == (1,)
