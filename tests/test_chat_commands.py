"""`ditflow chat` driven under tmux as a person would: slash commands, errors, Ctrl-C at the prompt, exit."""
import os
import shutil

import pytest

from ditflow.bench.interfaces import Tmux, ditflow_cmd
from ditflow.chat import READY

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None,
                                reason="tmux is not installed (.ci/run installs it); these tests drive the chat UI")


def chat_env(home) -> dict:
    return {"DITFLOW_HOME": str(home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "PATH": os.environ["PATH"], "TERM": "xterm-256color"}


def test_slash_commands_answer_on_screen(tmp_path):
    with Tmux(ditflow_cmd("chat", "--model", "tiny", "--preview", "blocks"), chat_env(tmp_path)) as t:
        t.wait_for(READY, timeout=30)
        t.type("/help")
        screen = t.wait_for("/attach PATH")
        for cmd in ("/new", "/sessions", "/load ID", "/history", "/images", "/save DIR", "/model", "/llm", "/undo",
                    "/exit"):
            assert cmd in screen
        t.type("/sessions")
        t.wait_for("no stored sessions yet")
        t.type("/history")
        t.wait_for("no turns yet")
        t.type("/frobnicate")
        t.wait_for("unknown command /frobnicate")
        t.type("/load nope")
        t.wait_for("error: no session 'nope'")
        t.type("/attach /nonexistent.png")
        t.wait_for("/nonexistent.png: no such file")
        t.type("/llm martian")
        t.wait_for("unknown LLM backend 'martian'")
        t.type("/model")
        t.wait_for("model: tiny")
        t.type("/undo")
        t.wait_for("nothing to undo")
        t.send("-l", "half-typed words")
        t.send("C-c")  # Ctrl-C at the prompt clears the line and keeps the chat
        t.type("/sessions")
        t.wait_for("no stored sessions yet", count=2)
        t.type("/exit")
        screen = t.wait_for("EXIT=0")
        assert "bye" in screen and "Traceback" not in screen
    assert (tmp_path / "chat_history").read_text().count("/sessions") == 2  # history persists on disk


def test_chat_refuses_without_a_terminal(tmp_path):
    import subprocess

    r = subprocess.run(ditflow_cmd("chat", "--model", "tiny"), stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, env={**os.environ, "DITFLOW_HOME": str(tmp_path)}, timeout=60)
    assert r.returncode == 2 and "needs a terminal" in r.stderr
