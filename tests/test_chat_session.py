"""`ditflow chat` turns, driven under tmux as a person would: a picture book with previews, saving, a restart that
continues the session, a follow-up, undo, and Ctrl-C cancelling a running generation without losing the session."""
import importlib.util
import json
import os
import shutil

import pytest

from ditflow.bench.interfaces import Tmux, ditflow_cmd
from ditflow.cli.chat import READY, WORKING

pytestmark = [
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (.ci/run installs it)"),
    pytest.mark.skipif(importlib.util.find_spec("ditflow.agents.graph") is None,
                       reason="the agents graph (run_turn) has not landed yet"),
]
BOOK = "a four-page picture book about a red circle that turns blue"


def chat_env(home) -> dict:
    return {"DITFLOW_HOME": str(home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "PATH": os.environ["PATH"], "TERM": "xterm-256color"}


def start(home, *args):
    t = Tmux(ditflow_cmd("chat", "--model", "tiny", "--preview", "blocks", *args), chat_env(home))
    t.wait_for(READY, timeout=120)
    return t


def test_turns_previews_save_restart_follow_up_undo(tmp_path):
    t = start(tmp_path)
    try:
        t.type(BOOK)
        screen = t.wait_for("turn 1 done", timeout=300)
        assert WORKING in screen and "plan: group" in screen
        assert "▀" in screen  # half-block previews of the pages
        assert all(f"000{i}.png" in screen for i in range(1, 5))
        t.type(f"/save {tmp_path / 'saved'}")
        t.wait_for("saved 4 image(s)")
        t.type("/exit")
        t.wait_for("EXIT=0")
    finally:
        t.close()
    manifest = json.loads((tmp_path / "saved" / "manifest.json").read_text())
    assert manifest["instruction"] == BOOK and len(manifest["images"]) == 4
    assert (tmp_path / "saved" / "article.md").is_file()

    t = start(tmp_path, "--continue")  # sessions persist across restarts
    try:
        t.type("/history")
        t.wait_for("[4 image(s)]")  # turn 1, read back from the store
        t.type("make page 3 green")
        t.wait_for("turn 2 done", timeout=300)
        t.type("/undo")
        t.wait_for("undone; 1 turn(s) left")
        t.type("/sessions")
        screen = t.wait_for("updated")
        assert screen.count("*") >= 1  # the current session is marked
        t.type("/exit")
        t.wait_for("EXIT=0")
    finally:
        t.close()


def test_ctrl_c_cancels_a_running_generation_and_keeps_the_session(tmp_path):
    t = start(tmp_path)
    try:
        t.type("a red circle")
        t.wait_for("turn 1 done", timeout=300)
        t.type("a sixteen-page picture book about a green square that grows")
        t.wait_for("output 1 · ", timeout=300)  # a denoising bar is running
        t.send("C-c")
        screen = t.wait_for("cancelled; the session is as it was", timeout=120)
        assert "turn 2 done" not in screen and "Traceback" not in screen
        t.type("/history")
        screen = t.wait_for("[1 image(s)]")
        assert "sixteen-page" not in screen.split("/history")[-1]
        t.type("make it blue")
        t.wait_for("turn 2 done", timeout=300)  # the session goes on after a cancel
        t.type("/exit")
        t.wait_for("EXIT=0")
    finally:
        t.close()
