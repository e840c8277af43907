"""First contact (issue 35): a command prints ditflow's own lines and nothing of the libraries' (their warnings and
bars go to <home>/logs/ditflow.log, and to the terminal with -v); a mistake costs one line, exit status 2 and no
files; output files follow the umask; --help teaches.

Real runs of the CLI: the builtin model for the quiet run (it loads MiniLM weights and the diffusers folders, where
the noise came from), the tiny random pipeline where a repair must run."""
from __future__ import annotations

import ast
import io
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from ditflow import bench, logs
from ditflow.batch import load_tasks
from ditflow.bench import available

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def ditflow(*args: str, home, umask: int | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ditflow.cli", *args], env={**ENV, "DITFLOW_HOME": str(home)},
                          capture_output=True, text=True, timeout=timeout,
                          preexec_fn=None if umask is None else lambda: os.umask(umask))


def test_a_quiet_run_prints_only_its_paths_and_its_files_follow_the_umask(tmp_path):
    out = tmp_path / "q1"
    r = ditflow("run", "a red circle", "-o", str(out), "-q", "--no-verify", home=tmp_path / "home", umask=0o022)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # no library warnings, no loading bars
    assert r.stdout.splitlines() == [str(out / "0001.png"), str(out / "plan.json"), str(out / "manifest.json")]
    for name in ("0001.png", "manifest.json", "plan.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name
    log = (tmp_path / "home" / logs.LOG_FILE).read_text()
    assert "transformers" in log  # what the terminal did not show was kept


def test_a_run_that_repairs_prints_only_ditflows_lines(tmp_path):
    # the tiny model's outputs never match, so repairs run: inpaint and img2img pipelines made from the loaded one
    r = ditflow("run", "a red circle", "-o", str(tmp_path / "out"), "-q", "--model", "tiny", home=tmp_path / "home")
    assert r.returncode == 4, r.stderr
    assert r.stderr and all(line.startswith("ditflow run: ") for line in r.stderr.splitlines()), r.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    named = [a["file"] for a in manifest["repairs"] if a["file"]]  # a failed attempt has no file
    assert named and all((tmp_path / "out" / name).is_file() for name in named)


def test_a_device_this_machine_lacks_is_one_line_at_once_and_leaves_nothing(tmp_path):
    device = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"  # one past the last
    out = tmp_path / "x"
    t0 = time.monotonic()
    r = ditflow("run", "a red circle", "-o", str(out), "--device", device, home=tmp_path / "home")
    assert time.monotonic() - t0 < 30  # refused before any model or agent starts (loading them took minutes here)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines() == [r.stderr.strip()] and "Traceback" not in r.stderr
    assert f"device: {device}: this machine has" in r.stderr and "CUDA device" in r.stderr
    assert not out.exists()


@pytest.mark.parametrize("command", ["run", "generate", "batch"])
def test_an_unknown_model_is_one_line_naming_what_can_be_named(tmp_path, command):
    (tmp_path / "tasks.jsonl").write_text('{"id": "a", "instruction": "a red circle"}\n')
    first = {"run": ["a red circle"], "generate": ["a red circle"], "batch": [str(tmp_path / "tasks.jsonl")]}[command]
    out = tmp_path / ("x.png" if command == "generate" else "x")
    r = ditflow(command, *first, "-o", str(out), "--model", "nonexistent", home=tmp_path / "home")
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.splitlines()) == 1, r.stderr
    assert "'nonexistent' is not a model" in r.stderr and "builtin-small" in r.stderr and "hub id" in r.stderr
    assert not out.exists()


def test_a_task_files_yaml_error_names_its_line(tmp_path):
    tasks = tmp_path / "tasks.yaml"
    tasks.write_text("- id: a\n  instruction: a red circle\n  seed: [1\n- id: b\n  instruction: a blue square\n")
    r = ditflow("batch", str(tasks), "-o", str(tmp_path / "out"), "--model", "tiny", home=tmp_path / "home")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert f"{tasks}:4: not valid YAML (" in r.stderr and "column 5" in r.stderr and "began on line 3" in r.stderr
    assert not (tmp_path / "out").exists()


def test_bench_help_says_what_each_benchmark_measures(tmp_path):
    r = ditflow("bench", "--help", home=tmp_path)
    rows = {line.split()[0]: line.split(maxsplit=1)[1] for line in r.stdout.splitlines()
            if line.startswith("  ") and len(line.split()) > 1}
    for name in available():
        source = bench.module_path(name).read_text()
        first_line = ast.get_docstring(ast.parse(source)).splitlines()[0]
        assert rows.get(name) and rows[name] in first_line and not rows[name].startswith("`"), name


def test_batch_help_shows_task_lines_that_load(tmp_path):
    help_text = ditflow("batch", "--help", home=tmp_path).stdout
    lines = help_text.splitlines()
    jsonl = [line.strip() for line in lines if line.startswith("  {")]
    start = next(i for i, line in enumerate(lines) if line.startswith("  - id:"))
    end = next(i for i, line in enumerate(lines) if line.startswith("fields:"))
    (tmp_path / "in").mkdir()
    (tmp_path / "tasks.jsonl").write_text("\n".join(jsonl) + "\n")
    (tmp_path / "tasks.yaml").write_text(yaml.safe_dump([json.loads(jsonl[0])]))
    shown_yaml = yaml.safe_load("\n".join(line[2:] for line in lines[start:end]))
    assert len(jsonl) >= 2 and [t.id for t in load_tasks(tmp_path / "tasks.jsonl")] == ["circle", "bluer"]
    assert shown_yaml == [json.loads(jsonl[0])]  # the YAML is the same first task
    for command in ("run", "chat", "llm", "generate", "edit", "restore", "batch", "bench", "train"):
        shown = ditflow(command, "--help", home=tmp_path).stdout
        assert f"ditflow {command} " in shown.split("example", 1)[-1], command  # an example after the options


def test_verbose_shows_what_the_log_keeps(tmp_path, capsys):
    """The routing itself, in-process: library records reach the log always and the terminal only with -v;
    ditflow's own warnings reach both."""
    for verbose in (False, True):
        logs.setup(verbose, home=tmp_path)
        try:
            logs.route_libraries()
            logging.getLogger("transformers.models.bert").warning("library says %s", verbose)
            logging.getLogger("ditflow.agents.x").warning("ditflow says %s", verbose)
            warnings.warn(f"python warning {verbose}", UserWarning)
        finally:
            logs.reset()
        err = capsys.readouterr().err
        assert f"ditflow says {verbose}" in err
        assert (f"library says {verbose}" in err) == verbose and (f"python warning {verbose}" in err) == verbose
    log = (tmp_path / logs.LOG_FILE).read_text()
    assert all(f"{what} {v}" in log for what in ("library says", "ditflow says", "python warning")
               for v in (False, True))
    assert logs.take_verbose_flag(["run", "-v", "x", "--", "-v"]) == (["run", "x", "--", "-v"], True)


def test_chat_model_command_checks_the_name(tmp_path):
    from rich.console import Console

    from ditflow.api import Session
    from ditflow.cli.chat import Chat

    console = Console(file=io.StringIO(), width=300)
    with Session(model="tiny", llm="rules", home=tmp_path) as session:
        assert Chat(session, console, "none").command("/model nonexistent")
        assert session.settings.model == "tiny"
    said = console.file.getvalue().strip()
    assert said.startswith("error: model: 'nonexistent' is not a model") and "\n" not in said


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (.ci/run installs it)")
def test_chat_loads_its_model_in_the_background_without_printing_over_the_prompt(tmp_path):
    from ditflow.bench.interfaces import Tmux, ditflow_cmd
    from ditflow.cli.chat import PROMPT, READY

    env = {"DITFLOW_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": os.environ["PATH"],
           "TERM": "xterm-256color"}
    with Tmux(ditflow_cmd("chat", "--model", "tiny", "--preview", "none", "--no-verify"), env) as t:
        t.wait_for(READY, timeout=60)
        t.type("a red circle")
        t.wait_for("turn 1 done", timeout=120)
        screen = t.wait_for_prompt(PROMPT)
        t.type("/exit")
        t.wait_for("EXIT=0")
    for noise in ("[transformers]", "torchvision", "Warning", "Loading", "it/s]", "diffusers"):
        assert noise not in screen, screen


def half_block_pixels(screen: str) -> list[list[tuple]]:
    """Decode the rows of a captured pane drawn with '▀' (foreground: the upper pixel, background: the lower) into
    pixel rows; every other cell is None. The SGR colours are read as the terminal would (24-bit, reset, defaults)."""
    import re

    rows = []
    for line in screen.splitlines():
        if "▀" not in line:
            continue
        fg = bg = None
        top, bottom = [], []
        for esc, ch in re.findall(r"(\x1b\[[0-9;]*m)|(.)", line):
            if esc:
                codes = [int(c) if c else 0 for c in esc[2:-1].split(";")]
                i = 0
                while i < len(codes):
                    c = codes[i]
                    if c in (38, 48) and codes[i + 1:i + 2] == [2]:
                        rgb = tuple(codes[i + 2:i + 5])
                        fg, bg = (rgb, bg) if c == 38 else (fg, rgb)
                        i += 5
                        continue
                    if c == 0:
                        fg = bg = None
                    elif c == 39:
                        fg = None
                    elif c == 49:
                        bg = None
                    i += 1
            else:
                top.append(fg if ch == "▀" else None)
                bottom.append(bg if ch == "▀" else None)
        rows += [top, bottom]
    return rows


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (.ci/run installs it)")
def test_the_chat_preview_of_a_red_circle_shows_a_round_red_blob_of_the_right_size(tmp_path):
    """Issue 35: decode the half-block preview chat draws under tmux, and find the circle the PNG holds."""
    import numpy as np
    from PIL import Image

    from ditflow.bench.interfaces import Tmux, ditflow_cmd
    from ditflow.cli.chat import PROMPT, READY

    env = {"DITFLOW_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": os.environ["PATH"],
           "TERM": "xterm-256color", "COLORTERM": "truecolor"}
    with Tmux(ditflow_cmd("chat", "--preview", "blocks", "--no-verify"), env) as t:
        t.wait_for(READY, timeout=120)
        t.type("a large red circle in the center")
        t.wait_for("turn 1 done", timeout=180)
        t.wait_for_prompt(PROMPT)
        screen = t.screen(colours=True)
        t.type("/exit")
    pixels = half_block_pixels(screen)
    assert len(pixels) == 32 and all(len(r) == 32 for r in pixels), (len(pixels), [len(r) for r in pixels])

    def red(rgb) -> bool:
        return rgb is not None and rgb[0] > 150 and rgb[1] < 110 and rgb[2] < 110

    shown = np.array([[red(p) for p in row] for row in pixels])
    png = next(tmp_path.glob("sessions/*/turns/0001/0001.png"))
    drawn = np.asarray(Image.open(png).convert("RGB").resize((32, 32), Image.BOX)).astype(int)
    truth = (drawn[..., 0] > 150) & (drawn[..., 1] < 110) & (drawn[..., 2] < 110)
    assert truth.sum() >= 40, "the model did not draw a large red circle; nothing to compare the preview with"
    ys, xs = np.nonzero(shown)
    height, width = np.ptp(ys) + 1, np.ptp(xs) + 1
    assert 0.8 <= height / width <= 1.25  # round, aspect kept
    assert 0.65 <= shown.sum() / (height * width) <= 0.9  # a disc fills π/4 of its box; a square would fill 1
    assert (shown & truth).sum() / (shown | truth).sum() >= 0.8  # where the PNG has it, at its size


def test_chat_reads_a_piped_script_line_by_line_and_fails_when_a_turn_fails(tmp_path):
    script = "a red circle\n/history\n"
    r = subprocess.run([sys.executable, "-m", "ditflow.cli", "chat", "--model", "tiny", "--no-verify"], input=script,
                       env={**ENV, "DITFLOW_HOME": str(tmp_path)}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "you › a red circle" in r.stdout and "turn 1 done" in r.stdout and "1  a red circle" in r.stdout
    assert len(list(tmp_path.glob("sessions/*/turns/0001/0001.png"))) == 1
    r = subprocess.run([sys.executable, "-m", "ditflow.cli", "chat", "--model", "tiny", "--no-verify"],
                       input="make it blue\n", env={**ENV, "DITFLOW_HOME": str(tmp_path / "new")},
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stdout  # nothing to edit yet: the turn asks back, and the script's status says so
    assert r.stdout.count("no image to change yet") == 1, r.stdout


def test_the_progress_display_names_output_and_tool_and_leaves_the_error_to_its_caller():
    from rich.console import Console

    from ditflow.progress import RichProgress
    from ditflow.schemas import ProgressEvent

    console = Console(file=io.StringIO(), width=120, force_terminal=False)
    with RichProgress(console=console) as show:
        for message in ("generate", "generate", "repair 1: inpaint"):
            for step in (1, 2):
                show(ProgressEvent(stage="denoise", message=message, step=step, total=2, output=1))
        show(ProgressEvent(stage="error", message="clarification needed: which triangle?"))
    shown = console.file.getvalue()
    assert "output 1 · generate" in shown and "output 1 · generate, pass 2" in shown
    assert "output 1 · repair 1: inpaint" in shown and "stopped" in shown and "which triangle" not in shown


def test_the_closing_line_says_how_many_images_how_long_and_what_verification_found():
    from ditflow.cli.run import outcome
    from ditflow.schemas import Claim, RepairAttempt, TurnRecord, TurnTimings, Verdict

    red = Claim(text="a red circle", attribute="object", status="pass")
    blue = Claim(text="a blue circle", attribute="color", status="fail")
    record = TurnRecord(turn=1, instruction="two circles", images=["0001.png", "0002.png"],
                        timings=TurnTimings(total_s=3.14),
                        verdicts=[Verdict(output=1, claims=[red]), Verdict(output=2, claims=[blue])],
                        repairs=[RepairAttempt(output=2, attempt=1, repair="inpaint", reason="colour")])
    assert outcome(record) == ("2 images in 3.1 s; verified: 1 of 2 match; repairs tried on 1, each attempt kept "
                               "in repairs/")
    assert outcome(TurnRecord(turn=1, instruction="a", images=["0001.png"])) == "1 image in 0.0 s; not verified"


@pytest.mark.parametrize("bench_args", [
    ["attention", "--grids", "8", "16", "--repeats", "1", "--methods", "local (auto)"],
    ["stitch", "--tiny", "--n", "1", "--steps", "2", "--fractions", "0", "0.5"]])
def test_bench_plot_draws_the_runs_own_figure(tmp_path, bench_args):
    """Issue 35: `--plot` draws the run's results (the docs' figures come from a command, not from typed numbers)."""
    import numpy as np
    from PIL import Image

    png = tmp_path / "img" / "figure.png"
    r = ditflow("bench", *bench_args, "--plot", str(png), home=tmp_path / "home")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == str(png)
    pixels = np.asarray(Image.open(png).convert("L"))
    assert pixels.shape[1] >= 600 and pixels.std() > 20  # a drawn chart, not a blank page
    assert not list(png.parent.glob(".*"))  # written atomically: no temp file left
