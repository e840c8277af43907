"""Fuzzed LLM answers through the real `openai` backend and the agents that read it.

A loopback HTTP server (an OpenAI-compatible endpoint that says whatever the case says) answers the parse and
plan requests with: truncated JSON, wrong types, extra keys, huge numbers, negative counts, unknown tools, image
ids out of range, NaN, and bodies that are not chat completions at all. Whatever it says, the agents end with a
`ParsedRequest` and a `Plan` that validate against each other (the LLM's when usable, else the rules'), or with
a typed `LLMError` from the backend itself. Every case has a deadline.
"""
from __future__ import annotations

import json
import math
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image

from loopback_llm import LoopbackLLM, Reply
from ditflow.agents.execution import _ref_images
from ditflow.agents.llm.base import LLMError
from ditflow.agents.llm.openai import CallStats, OpenAIBackend
from ditflow.agents.parsing import Context, parse, parse_messages
from ditflow.agents.planning import make_plan
from ditflow.schemas import InputImage, ParsedRequest, Plan

FUZZ = settings(max_examples=500, deadline=timedelta(seconds=5), database=None, phases=list(Phase)[:-1],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

FUZZ_SMALL = settings(FUZZ, max_examples=150)


class SayAnything(LoopbackLLM):
    """Every answer is `self.body` (a whole HTTP body) verbatim."""

    def __init__(self):
        self.body = "{}"
        super().__init__(lambda request: Reply(body=self.body))

    def say(self, content: str) -> None:
        self.body = Reply(content=content).data().decode("utf-8", "surrogatepass")


@pytest.fixture(scope="module")
def endpoint():
    ep = SayAnything()
    yield ep
    ep.close()


@pytest.fixture(scope="module")
def backend(endpoint):
    """One client for every case (building an httpx client costs more than a loopback request)."""
    b = OpenAIBackend(endpoint.url, model="m", retries=0, schema_retries=0, timeout=5)
    yield b
    b.close()


@pytest.fixture(scope="module")
def with_fallback(endpoint):
    b = OpenAIBackend(endpoint.url, model="m", retries=0, schema_retries=1, timeout=5, fallback="rules")
    yield b
    b.close()


# ----------------------------------------------------------------------------- strategies
HUGE = st.sampled_from([10**30, -(10**30), 2**63, -1, -7, 0, 1e308, -0.0, math.inf, -math.inf, math.nan])
junk = st.one_of(HUGE, st.none(), st.booleans(), st.text(max_size=30), st.lists(st.integers(), max_size=3),
                 st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))


def maybe(value_strategy, p_junk=0.2):
    """Mostly a plausible value, sometimes junk of the wrong type or size."""
    return st.one_of(value_strategy, value_strategy, value_strategy, junk)


ints = st.integers(-3, 20)
output = st.fixed_dictionaries(
    {"index": maybe(ints), "description": maybe(st.sampled_from(["a red circle", "a blue square on the left",
                                                                 "image 2 but green", "", "x" * 3000])),
     "sources": maybe(st.lists(ints, max_size=3))},
    optional={"caption": maybe(st.text(max_size=20)), "sneaky": junk})
parsed_answer = st.fixed_dictionaries(
    {"task": maybe(st.sampled_from(["generate", "edit", "restore", "guide", "article", "delete_files", "exec"])),
     "num_inputs": maybe(ints), "num_outputs": maybe(ints), "inputs": maybe(st.lists(
         st.fixed_dictionaries({"index": maybe(ints), "description": maybe(st.text(max_size=20))}), max_size=3)),
     "outputs": maybe(st.lists(output, max_size=5))},
    optional={"title": maybe(st.text(max_size=30)), "shared": junk, "clarification": maybe(st.text(max_size=30)),
              "extra_key": junk, "__proto__": junk})
ref = st.fixed_dictionaries({"kind": maybe(st.sampled_from(["input", "output", "previous", "file", "url"])),
                             "index": maybe(ints)})
step = st.fixed_dictionaries(
    {"tool": maybe(st.sampled_from(["generate", "group", "edit", "inpaint", "restore", "guide", "shell", "eval",
                                    "write_file", "http_get"])),
     "prompt": maybe(st.sampled_from(["a red circle", "../../etc/passwd", "$(rm -rf /)", ""])),
     "outputs": maybe(st.lists(ints, max_size=4))},
    optional={"refs": maybe(st.lists(ref, max_size=3)),
              "params": maybe(st.dictionaries(st.sampled_from(["strength", "degradation", "path", "mode", "target_color",
                                                               "restore_first", "url"]),
                                              st.one_of(HUGE, st.text(max_size=12), st.booleans()), max_size=3)),
              "extra": junk})
plan_answer = st.fixed_dictionaries({"steps": maybe(st.lists(step, max_size=4))},
                                    optional={"article": maybe(st.booleans()), "extra": junk})


def as_text(obj_strategy):
    """The answer as the model would send it: JSON, JSON cut off anywhere, fenced, or not JSON at all."""
    return st.one_of(
        obj_strategy.map(json.dumps),
        st.tuples(obj_strategy.map(json.dumps), st.floats(0, 1)).map(lambda t: t[0][:int(len(t[0]) * t[1])]),
        obj_strategy.map(lambda o: "```json\n" + json.dumps(o) + "\n```"),
        st.text(max_size=200),
        st.sampled_from(["", "null", "[]", "{}", "{\"task\": ", "NaN", "[" * 5000]))


raw_bodies = st.one_of(st.text(max_size=100), st.sampled_from([
    "{}", "[]", "null", '{"choices": []}', '{"choices": [{}]}', '{"choices": [{"message": null}]}',
    '{"choices": [{"message": {"content": 42}}]}', '{"choices": "no"}', "[" * 5000]))

INSTRUCTIONS = ["a red circle on the left", "two small blue squares on a gray background",
                "make image 1 green", "a four-page picture book about a pink diamond"]


# ----------------------------------------------------------------------------- the checks
def agents_survive(endpoint, backend, instruction: str, n_inputs: int, parse_text: str | None,
                   plan_text: str | None, body: str | None = None) -> None:
    ins = [InputImage(index=i + 1, description="a yellow square in the center") for i in range(n_inputs)]
    if body is not None:
        endpoint.body = body
    else:
        endpoint.say(parse_text)
    p = parse(Context(instruction=instruction, inputs=ins), backend)
    req = ParsedRequest.model_validate(p.request.model_dump())
    assert req.num_inputs == n_inputs  # the LLM can never invent or drop attached images
    assert all(1 <= s <= n_inputs for o in req.outputs for s in o.sources)
    if req.clarification:
        return
    if body is None:
        endpoint.say(plan_text)
    plan = make_plan(req, backend).plan
    Plan.model_validate(plan.model_dump()).check_against(req)
    images = [Image.new("RGB", (8, 8)) for _ in range(n_inputs)]
    made: dict[int, Image.Image] = {}
    for s in plan.steps:  # every reference resolves to an attached image or an earlier output, or is refused
        try:
            refs = _ref_images(s, images, made)
        except ValueError as e:
            assert "refers to input" in str(e)
        else:
            assert all(isinstance(r, Image.Image) for r in refs)
        made.update({i: Image.new("RGB", (8, 8)) for i in s.outputs})


@FUZZ
@given(instruction=st.sampled_from(INSTRUCTIONS), n_inputs=st.integers(0, 2), parse_text=as_text(parsed_answer),
       plan_text=as_text(plan_answer))
def test_any_answer_ends_in_a_valid_request_and_plan(endpoint, backend, instruction, n_inputs, parse_text, plan_text):
    agents_survive(endpoint, backend, instruction, n_inputs, parse_text, plan_text)


@FUZZ_SMALL  # the body space is small; the 500 answers above are the boundary's count
@given(instruction=st.sampled_from(INSTRUCTIONS), body=raw_bodies)
def test_any_http_body_is_a_typed_error_or_a_fallback(endpoint, backend, instruction, body):
    """Bodies that are not chat completions: the backend raises LLMError (never KeyError/TypeError), and the
    agents fall back to the rules."""
    endpoint.body = body
    with pytest.raises(LLMError):
        backend.complete([{"role": "user", "content": "x"}], ParsedRequest)
    agents_survive(endpoint, backend, instruction, 0, None, None, body=body)


@FUZZ_SMALL
@given(parse_text=as_text(parsed_answer))
def test_backend_with_rules_fallback_always_answers(endpoint, with_fallback, parse_text):
    """`fallback="rules"`: the backend itself answers every parse request with a valid object."""
    with_fallback.stats = CallStats()
    endpoint.say(parse_text)
    got = with_fallback.complete(parse_messages(Context(instruction="two red circles"), "parse"), ParsedRequest)
    assert isinstance(got, ParsedRequest)
    s = with_fallback.stats
    assert s.calls == 1 and s.fallbacks + s.valid_first_try + s.valid_after_retry == 1
