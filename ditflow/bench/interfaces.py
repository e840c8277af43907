"""`ditflow bench interfaces`: the interface numbers of issue 4, measured side by side in one run.

- chat: seconds from Enter to the first feedback on screen, and to the first agent event, read from a real
  terminal (tmux) the way a person sees it;
- run: `ditflow run` wall time for a one-image request and a four-page picture book;
- batch: tasks/min with 1 and with 2 workers on the same task file.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ONE_IMAGE = "a large red circle on the left"
PICTURE_BOOK = "a four-page picture book about a red circle that turns blue"


class Tmux:
    """A program in a detached tmux pane: type with send-keys, read the screen with capture-pane."""

    def __init__(self, command: list[str], env: dict[str, str], width: int = 140, height: int = 50):
        if shutil.which("tmux") is None:
            raise RuntimeError("tmux is not installed (apt-get install tmux)")
        self.name = f"ditflow-{uuid.uuid4().hex[:8]}"
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        # `; sleep` keeps the pane after the program exits, so its last screen can still be read
        shell = f"env {exports} {' '.join(map(shlex.quote, command))}; echo EXIT=$?; sleep 120"
        subprocess.run(["tmux", "new-session", "-d", "-s", self.name, "-x", str(width), "-y", str(height), shell],
                       check=True)

    def screen(self) -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-J", "-S", "-3000", "-t", self.name],
                              capture_output=True, text=True).stdout

    def send(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def type(self, text: str) -> None:
        self.send("-l", text)
        self.send("Enter")

    def wait_for(self, text: str, timeout: float = 60.0, count: int = 1, poll: float = 0.02) -> str:
        """Wait until `text` shows `count` times on the screen (scrollback included); return the screen."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if screen.count(text) >= count:
                return screen
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} did not show {count}× within {timeout}s; screen:\n{screen}")
            time.sleep(poll)

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)

    def __enter__(self) -> "Tmux":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def ditflow_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "ditflow.cli", *args]
