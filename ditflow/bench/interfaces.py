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

    def screen(self, colours: bool = False) -> str:
        """The pane and its scrollback as text; with `colours`, with the SGR escapes that colour it."""
        return subprocess.run(["tmux", "capture-pane", "-p", "-J", *(["-e"] if colours else []), "-S", "-3000",
                               "-t", self.name], capture_output=True, text=True).stdout

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

    def wait_for_prompt(self, prompt: str, timeout: float = 60.0, poll: float = 0.02) -> str:
        """Wait until the screen's last line is `prompt`: the program is idle and reading keys again."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if screen.rstrip().endswith(prompt.rstrip()):
                return screen
            if time.monotonic() > deadline:
                raise TimeoutError(f"the prompt {prompt!r} did not come back within {timeout}s; screen:\n{screen}")
            time.sleep(poll)

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)

    def __enter__(self) -> "Tmux":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def ditflow_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "ditflow.cli", *args]


# ----------------------------------------------------------------------------- measurements
def chat_latency(model: str, instruction: str = ONE_IMAGE) -> dict[str, float]:
    """Seconds, as seen on a real terminal: start → prompt ready, Enter → first feedback line, Enter → first agent
    stage on screen, Enter → turn done."""
    from ditflow.cli.chat import READY, WORKING
    from ditflow.progress import STAGE_TEXT

    with tempfile.TemporaryDirectory() as home:
        env = {"DITFLOW_HOME": home, "HF_HUB_OFFLINE": "1", "PATH": os.environ["PATH"], "TERM": "xterm-256color"}
        t0 = time.perf_counter()
        with Tmux(ditflow_cmd("chat", "--model", model, "--preview", "blocks"), env) as t:
            t.wait_for(READY, timeout=300)
            ready = time.perf_counter() - t0
            t.send("-l", instruction)
            enter = time.perf_counter()
            t.send("Enter")
            t.wait_for(WORKING, timeout=60, poll=0.005)
            first = time.perf_counter() - enter
            stage = None
            deadline = time.monotonic() + 600
            while stage is None and time.monotonic() < deadline:
                screen = t.screen()
                if any(text in screen for text in STAGE_TEXT.values() if text != "done") or "turn 1 done" in screen:
                    stage = time.perf_counter() - enter
                time.sleep(0.005)
            t.wait_for("turn 1 done", timeout=600)
            done = time.perf_counter() - enter
            t.type("/exit")
    return {"start_to_prompt_s": ready, "enter_to_feedback_s": first, "enter_to_first_stage_s": stage or float("nan"),
            "enter_to_done_s": done}


def run_wall(model: str, instruction: str) -> float:
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        r = subprocess.run(ditflow_cmd("run", instruction, "-o", out, "--model", model, "-q"),
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"ditflow run failed: {r.stderr.strip()[-500:]}")
        return time.perf_counter() - t0


def batch_rate(model: str, n_tasks: int, workers: int) -> float:
    """Tasks per minute, wall clock of the whole `ditflow batch` process (start-up and model loads included)."""
    instructions = ["a large red circle on the left", "two small blue squares on a gray background",
                    "a green triangle at the top right", "a pink diamond in the center"]
    with tempfile.TemporaryDirectory() as tmp:
        tasks = Path(tmp) / "tasks.jsonl"
        tasks.write_text("".join(json.dumps({"id": f"t{i}", "instruction": instructions[i % 4], "seed": i}) + "\n"
                                 for i in range(n_tasks)))
        t0 = time.perf_counter()
        r = subprocess.run(ditflow_cmd("batch", str(tasks), "-o", str(Path(tmp) / "out"), "--model", model,
                                       "--workers", str(workers)), capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"ditflow batch failed: {r.stderr.strip()[-500:]}")
        return n_tasks / ((time.perf_counter() - t0) / 60)


def cli(argv: list[str]) -> int:
    from rich.console import Console
    from rich.table import Table

    p = argparse.ArgumentParser(prog="ditflow bench interfaces", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="builtin", help="model for every measurement (default builtin)")
    p.add_argument("--tasks", type=int, default=8, help="tasks in the batch throughput runs")
    p.add_argument("--skip", nargs="*", default=[], choices=["chat", "run", "batch"])
    args = p.parse_args(argv)
    table = Table("measure", "value", title=f"interfaces on {args.model} ({os.cpu_count()} CPU cores)")
    if "chat" not in args.skip:
        lat = chat_latency(args.model)
        table.add_row("chat: start → prompt", f"{lat['start_to_prompt_s']:.2f} s")
        table.add_row("chat: Enter → first feedback", f"{lat['enter_to_feedback_s']:.3f} s (goal < 1 s)")
        table.add_row("chat: Enter → first agent stage", f"{lat['enter_to_first_stage_s']:.2f} s")
        table.add_row("chat: Enter → one-image turn done", f"{lat['enter_to_done_s']:.2f} s")
    if "run" not in args.skip:
        one, book = run_wall(args.model, ONE_IMAGE), run_wall(args.model, PICTURE_BOOK)
        table.add_row("run: one image (wall, process start included)", f"{one:.1f} s")
        table.add_row("run: four-page picture book (wall)", f"{book:.1f} s")
        table.add_row("run: book / one image", f"{book / one:.2f}×")
    if "batch" not in args.skip:
        r1, r2 = batch_rate(args.model, args.tasks, 1), batch_rate(args.model, args.tasks, 2)
        table.add_row(f"batch: {args.tasks} tasks, 1 worker", f"{r1:.1f} tasks/min")
        table.add_row(f"batch: {args.tasks} tasks, 2 workers", f"{r2:.1f} tasks/min")
        table.add_row("batch: 2 workers / 1 worker", f"{r2 / r1:.2f}×")
    Console().print(table)
    return 0
