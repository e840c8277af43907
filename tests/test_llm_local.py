"""The embedded LLM (SmolLM2-135M GGUF via transformers, xgrammar-constrained): valid JSON by construction,
counts tied to the schema, bounded retries, and prose that the agents check against the parsed fields."""
from __future__ import annotations

import os

import pytest
from pydantic import BaseModel, Field, field_validator

from ditflow.agents.article import caption_problem, prose_schema, write_article
from ditflow.agents.llm.base import LLMInvalidOutput, make_backend
from ditflow.agents.llm.local import gguf_path, grammar_schema
from ditflow.agents.parsing import Context, parse_rules
from ditflow.schemas import ParsedRequest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def local():
    return make_backend("local", max_new_tokens=160)


def test_gguf_is_found_in_site_packages_without_importing_its_package():
    p = gguf_path()
    assert p.name.endswith(".gguf") and p.stat().st_size > 50_000_000


def test_count_is_tied_to_the_outputs_list_in_the_grammar():
    js = grammar_schema(ParsedRequest)
    k3 = js["anyOf"][2]["properties"]
    assert k3["num_outputs"] == {"const": 3} and k3["outputs"]["minItems"] == k3["outputs"]["maxItems"] == 3


def test_article_prose_has_one_caption_per_page_and_is_checked(local, tmp_path):
    req = parse_rules(Context(instruction="a three-page picture book about a yellow triangle that turns pink")).request
    files = {o.index: f"{o.index:04d}.png" for o in req.outputs}
    art = write_article(req, files, local)
    assert art.valid_before_fallback  # the grammar made the JSON valid on the first try
    assert [p.file for p in art.pages] == ["0001.png", "0002.png", "0003.png"]
    for k, p in enumerate(art.pages):  # every caption used is one the checks accept (or the template)
        others = [q.caption for q in art.pages[:k]]
        assert caption_problem(p.caption, p.description, others, req.shared or "") is None or \
            any(f"page {p.number}" in n for n in art.notes)
    assert local.stats["new_tokens"] > 0


def test_answers_that_never_validate_raise_after_bounded_retries(local):
    class Impossible(BaseModel):  # the grammar can make the JSON, but no answer passes this validator
        word: str = Field(max_length=8)

        @field_validator("word")
        @classmethod
        def _never(cls, v):
            raise ValueError("no word is acceptable")

    with pytest.raises(LLMInvalidOutput, match="after 2 tries") as e:
        local.complete([{"role": "user", "content": "Say a word as JSON."}], Impossible, task="describe")
    assert e.value.raw.startswith("{")


def test_prose_schema_rejects_a_wrong_number_of_captions():
    with pytest.raises(ValueError):
        prose_schema(2).model_validate({"title": "t", "captions": ["a"]})
