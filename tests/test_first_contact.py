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
    assert r.stdout.splitlines() == [str(out / "0001.png"), str(out / "manifest.json")]
    for name in ("0001.png", "manifest.json", "plan.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name
    log = (tmp_path / "home" / logs.LOG_FILE).read_text()
    assert "transformers" in log  # what the terminal did not show was kept


def test_a_run_that_repairs_prints_only_ditflows_lines(tmp_path):
    # the tiny model's outputs never match, so repairs run: inpaint and img2img pipelines made from the loaded one
    r = ditflow("run", "a red circle", "-o", str(tmp_path / "out"), "-q", "--model", "tiny", home=tmp_path / "home")
    assert r.returncode == 4, r.stderr
    assert r.stderr and all(line.startswith("ditflow run: ") for line in r.stderr.splitlines()), r.stderr


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
        source = (Path(bench.__file__).parent / f"{name}.py").read_text()
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
    for command in ("generate", "edit", "restore", "batch", "bench", "train"):
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
    from ditflow.chat import Chat

    console = Console(file=io.StringIO(), width=300)
    with Session(model="tiny", llm="rules", home=tmp_path) as session:
        assert Chat(session, console, "none").command("/model nonexistent")
        assert session.settings.model == "tiny"
    said = console.file.getvalue().strip()
    assert said.startswith("error: model: 'nonexistent' is not a model") and "\n" not in said


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (.ci/run installs it)")
def test_chat_loads_its_model_in_the_background_without_printing_over_the_prompt(tmp_path):
    from ditflow.bench.interfaces import Tmux, ditflow_cmd
    from ditflow.chat import PROMPT, READY

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
