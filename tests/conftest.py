import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory):
    """One real vLLM server (from `.venv-vllm`, `make vllm-venv`) serving the embedded SmolLM2 on loopback, and the
    trained parse model beside it as a LoRA module, shared by every vLLM test of the session. Without the venv the
    tests skip locally and fail under CI (CI=true)."""
    from ditflow.agents.llm.base import PARSER_NAME
    from ditflow.agents.llm.local import PARSER_ADAPTER
    from ditflow.agents.llm.serve import VLLMServer, vllm_python

    try:
        vllm_python()
    except FileNotFoundError as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(e))
    # eager: torch.compile is most of the start (minutes on a busy 2-core machine) and buys little for a few requests
    server = VLLMServer(log_path=tmp_path_factory.mktemp("vllm") / "server.log", threads=1, eager=True,
                        lora={PARSER_NAME: PARSER_ADAPTER})
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def vllm_url(request):
    """The OpenAI base URL of a vLLM server: DITFLOW_TEST_VLLM_URL reuses a running one, else `vllm_server`."""
    return os.environ.get("DITFLOW_TEST_VLLM_URL") or request.getfixturevalue("vllm_server").url
