"""The LLM verifier against the real vLLM server with the embedded SmolLM2, through the text-only path: the
describe tool reads the image, the LLM compares it with the claims under the answers grammar.

Set DITFLOW_TEST_VLLM_URL to reuse a running server; otherwise the session's server starts (conftest.py).
The 135M model's judgements are not graded: the test checks that the path holds end to end (one schema-valid
answer per claim, in order, mapped onto the claims; "other" claims never pass) and that no answer crashes a turn.
"""
from __future__ import annotations

import pytest

from ditflow.agents.verify import LLMVerifier, check_guarded
from ditflow.world.scenes import CanvasSpec, ObjectSpec, PanelSpec, render

pytestmark = pytest.mark.vllm


def test_text_only_llm_verdict_from_the_real_server(vllm_url):
    from ditflow.agents.llm.openai import OpenAIBackend

    backend = OpenAIBackend(vllm_url, timeout=300.0, retries=1, schema_retries=2)
    img = render(CanvasSpec((PanelSpec((ObjectSpec("blue", "circle", None, "left"),)),)))
    v = check_guarded(LLMVerifier(backend, timeout_s=600.0), img, "a red circle on the left wearing a hat", 1)
    assert v.error is None, v.error
    assert [c.text for c in v.claims] == ["a red circle", "the red circle is on the left",
                                         "nothing else is in the image", "wearing hat"]
    assert all(c.status in ("pass", "fail", "not_checkable") for c in v.claims)
    assert v.claims[-1].status == "not_checkable" and not v.passed and v.verifier == "llm:openai"
    assert backend.stats.calls == 1 and backend.stats.valid_first_try + backend.stats.valid_after_retry == 1
