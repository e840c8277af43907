"""The trained parse model (issue 32) in-process: the shipped adapter merges once into a cached folder, answers the
frame prompt with valid frames, and parses through `parsing.parse` with the rules as referee. Real weights, real
decoding; nothing here is mocked."""
from __future__ import annotations

import json
import os

import pytest

from ditflow.agents.llm.base import make_backend, only_parses
from ditflow.agents.llm.local import PARSER_ADAPTER, parser_folder
from ditflow.agents.parsing import Context, parse, parse_frame
from ditflow.agents.planning import llm_plans
from ditflow.schemas import InputImage, SceneObject

os.environ.setdefault("HF_HUB_OFFLINE", "1")
O = SceneObject
TRIANGLES = InputImage(index=1, description="", background="black",
                       objects=[O(id=1, shape="triangle", color="green", position="top-left"),
                                O(id=2, shape="triangle", color="green", position="center"),
                                O(id=3, shape="triangle", color="green", position="bottom-right")])


@pytest.fixture(scope="module")
def parser():
    return make_backend("parser")


def test_the_shipped_adapter_is_small_and_names_its_base_by_hub_id():
    weights = PARSER_ADAPTER / "adapter_model.safetensors"
    assert weights.stat().st_size <= 20 * 2**20
    cfg = json.loads((PARSER_ADAPTER / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_the_merged_model_is_made_once_and_reused():
    first = parser_folder()
    assert (first / "model.safetensors").is_file() and not first.is_relative_to(PARSER_ADAPTER.parents[1])
    mtime = (first / "model.safetensors").stat().st_mtime
    assert parser_folder() == first and (first / "model.safetensors").stat().st_mtime == mtime


def test_it_only_parses(parser):
    assert parser.name == "parser" and only_parses(parser) and not llm_plans(parser)


def test_it_reads_one_object_among_several(parser):
    p = parse_frame(Context(instruction="make the top left triangle red", inputs=[TRIANGLES]), parser)
    assert [(e.op, e.targets, e.color) for e in p.request.outputs[0].edits] == [("recolor", [1], "red")]
    assert p.request.outputs[0].description.startswith("a red triangle at the top left")


def test_it_parses_with_the_rules_as_referee(parser):
    p = parse(Context(instruction="three pictures of a small blue diamond on a gray background"), parser)
    assert p.source == "parser" and p.request.task == "generate" and p.request.num_outputs == 3
    assert all(o.description == "a small blue diamond on a gray background" for o in p.request.outputs)


@pytest.mark.parametrize("text", ["remind me to water the plants on friday", "a watercolor of a fox in the snow"])
def test_what_is_no_picture_of_shapes_gets_a_question(parser, text):
    assert parse_frame(Context(instruction=text), parser).request.clarification
