"""The openai backend against a scripted fake endpoint, for the fault cases only: malformed JSON, schema
violations, cut-off answers, timeouts, 5xx, 429, refused requests. The real server is exercised in
test_vllm_integration.py; here a real loopback HTTP server replays a script so each fault happens on cue."""
from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass

import pytest
from PIL import Image

import loopback_llm as loopback
from ditflow.agents.llm.base import LLMError, LLMInvalidOutput, LLMUnavailable, make_backend
from ditflow.agents.llm.openai import OpenAIBackend, request_schema
from ditflow.schemas import ParsedRequest, Plan

GOOD = {"task": "generate", "num_inputs": 0, "num_outputs": 2, "inputs": [],
        "outputs": [{"index": 1, "description": "a red circle"}, {"index": 2, "description": "a blue square"}]}


@dataclass
class Reply(loopback.Reply):
    content: str | None = json.dumps(GOOD)  # most scripts answer with a valid request


class ScriptedEndpoint(loopback.LoopbackLLM):
    """Each chat request gets the next `Reply` of the script; a 500 once it runs out."""

    def __init__(self, script: list[Reply]):
        self.script = list(script)
        super().__init__(lambda request: self.script.pop(0) if self.script
                         else Reply(status=500, body='{"error": "script exhausted"}'))


@pytest.fixture
def endpoint():
    made = []

    def start(*script: Reply) -> ScriptedEndpoint:
        made.append(ScriptedEndpoint(list(script)))
        return made[-1]

    yield start
    for ep in made:
        ep.close()


def backend(url: str, **kw) -> OpenAIBackend:
    kw.setdefault("backoff", 0.01)
    # Far above a loopback answer even on a loaded 2-core machine: a timeout here would re-send a request and shift
    # the script (once, in a full suite, a cut-off answer was lost that way). Timeout tests set their own.
    kw.setdefault("timeout", 60.0)
    return OpenAIBackend(base_url=url, **kw)


def follow_up(ep: ScriptedEndpoint, b: OpenAIBackend) -> list[dict]:
    """The messages of the second request, which must be the backend's answer to the first reply, not a re-send."""
    assert b.stats.transport_retries == 0, "a transport retry re-sent a request; the script no longer lines up"
    return ep.requests[1]["messages"]


MESSAGES = [{"role": "system", "content": "Parse the request."}, {"role": "user", "content": "a red circle and a blue square"}]


# ----------------------------------------------------------------------------- the ordinary path
def test_valid_answer_first_try_sends_schema_and_model(endpoint):
    ep = endpoint(Reply())
    b = backend(ep.url, api_key="sk-test")
    got = b.complete(MESSAGES, ParsedRequest, task="parse")
    assert got == ParsedRequest.model_validate(GOOD)
    assert b.stats.valid_first_try == 1 and b.stats.calls == 1
    (req,) = ep.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["model"] == "scripted-model"  # asked of /models, since none was configured
    assert req["auth"] == "Bearer sk-test"
    assert req["messages"] == MESSAGES
    rf = req["response_format"]
    assert rf["type"] == "json_schema" and rf["json_schema"]["name"] == "ParsedRequest"
    assert rf["json_schema"]["schema"] == request_schema(ParsedRequest)
    assert req["temperature"] == 0.0


def test_request_schema_ties_counts_and_bounds_every_container():
    js = request_schema(ParsedRequest)
    # one variant per (num_outputs, num_inputs): 16 x 9, each fixing both list lengths
    assert len(js["anyOf"]) == 16 * 9
    combos = {(v["properties"]["num_outputs"]["const"], v["properties"]["num_inputs"]["const"]) for v in js["anyOf"]}
    assert combos == {(o, i) for o in range(1, 17) for i in range(0, 9)}
    for v in js["anyOf"]:
        p = v["properties"]
        o, i = p["num_outputs"]["const"], p["num_inputs"]["const"]
        assert p["outputs"]["minItems"] == p["outputs"]["maxItems"] == o
        assert p["inputs"]["minItems"] == p["inputs"]["maxItems"] == i
        assert {"inputs", "outputs"} <= set(v["required"])

    def containers(node):
        if isinstance(node, dict):
            if node.get("type") in ("array", "string"):
                yield node
            for v in node.values():
                yield from containers(v)
        elif isinstance(node, list):
            for v in node:
                yield from containers(v)

    for c in containers(js):
        if c["type"] == "array":
            assert "maxItems" in c
        elif not {"enum", "const", "pattern"} & c.keys():
            assert "maxLength" in c
    # a schema without counts passes through with bounds only
    assert "anyOf" not in request_schema(Plan)


def test_fenced_json_is_accepted(endpoint):
    ep = endpoint(Reply(content="```json\n" + json.dumps(GOOD) + "\n```"))
    assert backend(ep.url, model="m").complete(MESSAGES, ParsedRequest).num_outputs == 2


# ----------------------------------------------------------------------------- content faults
def test_malformed_json_is_fed_back_then_fixed(endpoint):
    ep = endpoint(Reply(content='{"task": "generate", "num_outputs": 2,'), Reply())
    b = backend(ep.url, model="m")
    got = b.complete(MESSAGES, ParsedRequest)
    assert got.num_outputs == 2
    assert b.stats.valid_first_try == 0 and b.stats.valid_after_retry == 1
    second = follow_up(ep, b)
    assert second[: len(MESSAGES)] == MESSAGES
    assert second[-2] == {"role": "assistant", "content": '{"task": "generate", "num_outputs": 2,'}
    assert second[-1]["role"] == "user" and "not valid" in second[-1]["content"]
    assert "json" in second[-1]["content"].lower()  # the parse error itself, not a generic complaint


def test_schema_violation_exhausts_retries_with_the_error_fed_back(endpoint):
    bad = {**GOOD, "outputs": GOOD["outputs"][:1]}  # says 2 outputs, describes 1: valid JSON, invalid object
    ep = endpoint(*[Reply(content=json.dumps(bad))] * 3)
    b = backend(ep.url, model="m", schema_retries=2)
    with pytest.raises(LLMInvalidOutput) as exc:
        b.complete(MESSAGES, ParsedRequest)
    assert len(ep.requests) == 3
    assert "num_outputs is 2 but 1 outputs are described" in follow_up(ep, b)[-1]["content"]
    assert json.loads(exc.value.raw) == bad
    assert "ParsedRequest" in str(exc.value) and "3 attempt" in str(exc.value)
    assert b.stats.invalid == 1


def test_cut_off_answer_asks_for_shorter_text(endpoint):
    ep = endpoint(Reply(content='{"task": "gen', finish_reason="length"), Reply())
    b = backend(ep.url, model="m", max_tokens=7)
    b.complete(MESSAGES, ParsedRequest)
    assert "cut off at 7 tokens" in follow_up(ep, b)[-1]["content"]


def test_missing_content_counts_as_invalid(endpoint):
    ep = endpoint(Reply(content=None), Reply(content=None))
    with pytest.raises(LLMInvalidOutput):
        backend(ep.url, model="m", schema_retries=1).complete(MESSAGES, ParsedRequest)


# ----------------------------------------------------------------------------- transport faults
def test_500_then_success_is_retried(endpoint):
    ep = endpoint(Reply(status=500, body='{"error": "boom"}'), Reply(status=503, body="unavailable"), Reply())
    b = backend(ep.url, model="m", retries=3)
    assert b.complete(MESSAGES, ParsedRequest).num_outputs == 2
    assert len(ep.requests) == 3 and b.stats.transport_retries == 2


def test_429_honours_retry_after_and_then_gives_up(endpoint):
    ep = endpoint(*[Reply(status=429, body='{"error": "slow down"}', headers={"Retry-After": "0.2"})] * 3)
    b = backend(ep.url, model="m", retries=2)
    t0 = time.perf_counter()
    with pytest.raises(LLMUnavailable, match="3 attempt"):
        b.complete(MESSAGES, ParsedRequest)
    assert len(ep.requests) == 3
    assert time.perf_counter() - t0 >= 0.4  # waited as asked between the attempts, not the 0.01 s backoff
    assert b.stats.unavailable == 1


def test_429_with_a_long_retry_after_is_not_waited_out(endpoint):
    ep = endpoint(Reply(status=429, body="{}", headers={"Retry-After": "3600"}))
    with pytest.raises(LLMUnavailable):
        backend(ep.url, model="m", retries=5).complete(MESSAGES, ParsedRequest)
    assert len(ep.requests) == 1


def test_timeout_is_bounded_and_retried(endpoint):
    ep = endpoint(Reply(delay=3.0), Reply(delay=3.0))
    b = backend(ep.url, model="m", timeout=0.3, retries=1)
    with pytest.raises(LLMUnavailable, match="Timeout"):
        b.complete(MESSAGES, ParsedRequest)
    assert b.stats.transport_retries == 1  # the client gave up on the first and sent it once more
    # The server logs a request once its handler thread has read it, which on a loaded 2-core machine can come
    # after the client's 0.3 s have run out (once, in a full suite, the check below ran first and saw 1).
    deadline = time.monotonic() + 10
    while len(ep.requests) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(ep.requests) == 2


def test_timeout_then_answer_recovers(endpoint):
    # The retry carries the 129 kB counts schema; 0.5 s to send, parse and answer it was too little on a loaded CI
    # machine, so the timeout leaves room and the first reply stays well past it.
    ep = endpoint(Reply(delay=8.0), Reply())
    b = backend(ep.url, model="m", timeout=2.5, retries=1)
    assert b.complete(MESSAGES, ParsedRequest).num_outputs == 2
    assert len(ep.requests) == 2 and b.stats.transport_retries == 1


def test_connection_refused_is_unavailable():
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    b = backend(f"http://127.0.0.1:{port}/v1", model="m", retries=1)
    with pytest.raises(LLMUnavailable, match="ConnectError"):
        b.complete(MESSAGES, ParsedRequest)


def test_400_is_not_retried(endpoint):
    ep = endpoint(Reply(status=400, body='{"error": "context length exceeded"}'))
    with pytest.raises(LLMError, match="context length exceeded") as exc:
        backend(ep.url, model="m", retries=3).complete(MESSAGES, ParsedRequest)
    assert not isinstance(exc.value, (LLMUnavailable, LLMInvalidOutput))
    assert len(ep.requests) == 1


def test_200_without_choices_is_a_transport_fault(endpoint):
    ep = endpoint(Reply(body='{"object": "error"}'))
    with pytest.raises(LLMUnavailable, match="without choices"):
        backend(ep.url, model="m").complete(MESSAGES, ParsedRequest)


# ----------------------------------------------------------------------------- fallback
def test_fallback_to_rules_answers_when_the_endpoint_stays_invalid(endpoint, caplog):
    from ditflow.agents.parsing import parse_messages, Context

    ep = endpoint(*[Reply(content="not json")] * 2)
    b = backend(ep.url, model="m", schema_retries=1, fallback="rules")
    messages = parse_messages(Context(instruction="three pictures of a green triangle"), "Parse the request.")
    with caplog.at_level("WARNING"):
        got = b.complete(messages, ParsedRequest, task="parse")
    assert got.num_outputs == 3 and "green" in got.outputs[0].description
    assert b.stats.fallbacks == 1 and b.stats.invalid == 1
    assert "answering with the rules backend" in caplog.text


def test_fallback_also_covers_an_unreachable_endpoint():
    from ditflow.agents.parsing import parse_messages, Context

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    b = backend(f"http://127.0.0.1:{port}/v1", model="m", retries=0, fallback=make_backend("rules"))
    got = b.complete(parse_messages(Context(instruction="two images of blue squares"), "p"), ParsedRequest)
    assert got.num_outputs == 2 and b.stats.unavailable == 1


# ----------------------------------------------------------------------------- images and configuration
def test_image_parts_go_to_a_vlm_and_are_refused_for_a_text_model(endpoint):
    img = Image.new("RGB", (8, 8), (220, 40, 40))
    from ditflow.agents.llm.openai import image_part

    part = image_part(img)
    assert part["type"] == "image_url" and part["image_url"]["url"].startswith("data:image/png;base64,")
    messages = [{"role": "user", "content": [{"type": "text", "text": "what is this?"}, part]}]
    ep = endpoint(Reply())
    backend(ep.url, model="m", vision=True).complete(messages, ParsedRequest)
    assert ep.requests[0]["messages"][0]["content"][1] == part
    with pytest.raises(ValueError, match="not a vision model"):
        backend(ep.url, model="m", vision=False).complete(messages, ParsedRequest)
    assert len(ep.requests) == 1  # refused before any request


def test_make_backend_from_url_and_env(monkeypatch, endpoint):
    ep = endpoint(Reply())
    b = make_backend(ep.url)
    assert isinstance(b, OpenAIBackend) and b.base_url == ep.url
    monkeypatch.setenv("DITFLOW_LLM_URL", ep.url + "/")
    monkeypatch.setenv("DITFLOW_LLM_VISION", "1")
    b2 = make_backend("openai")
    assert b2.base_url == ep.url and b2.supports_images
    assert b2.complete(MESSAGES, ParsedRequest).num_outputs == 2


def test_key_never_shown_and_bad_settings_rejected(endpoint):
    b = backend("http://127.0.0.1:1/v1", api_key="sk-secret")
    assert "sk-secret" not in repr(b)
    for kw, msg in [({"timeout": 0}, "timeout"), ({"retries": -1}, "retries"), ({"max_tokens": 0}, "max_tokens")]:
        with pytest.raises(ValueError, match=msg):
            backend("http://127.0.0.1:1/v1", **kw)
    with pytest.raises(ValueError, match="http"):
        OpenAIBackend(base_url="ftp://example/v1")
