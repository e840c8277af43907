"""`ditflow batch`: killed mid-run and resumed, every task ends done exactly once; failures are recorded and the
rest go on; two workers share the work. Real runs of the CLI on the tiny random FLUX pipeline."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ditflow.api import read_manifest
from ditflow.batch import BATCH_FILE, STAGING, BatchManifest
from ditflow.cli.main import EXIT_MISMATCH

pytest.importorskip("ditflow.agents.graph", reason="the agents graph (run_turn) has not landed yet")

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
INSTRUCTIONS = ["a large red circle on the left", "two small blue squares on a gray background",
                "a green triangle at the top right", "a pink diamond in the center",
                "a yellow square on a black background", "a purple circle at the bottom",
                "an orange triangle on the right", "a cyan diamond at the top left"]


def batch(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ditflow.cli", "batch", *args, "--model", "tiny"], env=ENV,
                          capture_output=True, text=True, timeout=600, **kw)


def task_file(tmp_path: Path, n: int, extra: list[dict] = ()) -> Path:
    path = tmp_path / "tasks.jsonl"
    rows = [{"id": f"t{i}", "instruction": INSTRUCTIONS[i % len(INSTRUCTIONS)], "seed": i} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in [*rows, *extra]))
    return path


def check_exactly_once(out: Path, ids: list[str]) -> BatchManifest:
    manifest = BatchManifest.model_validate_json((out / BATCH_FILE).read_text())
    assert [t.id for t in manifest.tasks] == ids  # each task listed once, in file order
    assert not (out / STAGING).exists() or not any((out / STAGING).iterdir())
    assert sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")) == sorted(ids)
    for t in manifest.tasks:
        run = read_manifest(out / t.id)  # manifest present and every file matches its hash
        assert t.status == "done" and run is not None and run.task["id"] == t.id
        numbered = sorted(p.name for p in (out / t.id).glob("[0-9][0-9][0-9][0-9].png"))
        assert numbered == run.images == t.images and numbered  # no extra, no missing images
    return manifest


def test_killed_batch_resumes_with_every_task_done_exactly_once(tmp_path):
    ids = [f"t{i}" for i in range(6)]
    tasks, out = task_file(tmp_path, 6), tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "ditflow.cli", "batch", str(tasks), "-o", str(out), "--model",
                             "tiny"], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600  # generous: CPU-starved machines start slowly
    while read_manifest(out / "t1") is None:  # two tasks finished: kill in the middle of the third
        assert proc.poll() is None, "the batch ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {i: (out / i / "manifest.json").read_bytes() for i in ids if read_manifest(out / i)}
    assert 2 <= len(done_before) < len(ids), "the kill must land mid-run for this test to mean anything"

    refused = batch(str(tasks), "-o", str(out))
    assert refused.returncode == 2 and "pass --resume" in refused.stderr

    r = batch(str(tasks), "-o", str(out), "--resume")
    assert r.returncode == EXIT_MISMATCH, r.stderr  # all done; the tiny model's random images never match
    manifest = check_exactly_once(out, ids)
    for i, data in done_before.items():  # finished tasks were skipped, not redone
        assert (out / i / "manifest.json").read_bytes() == data
    assert {t.id for t in manifest.tasks if t.skipped} == set(done_before)
    assert f"{len(done_before)} skipped" in r.stderr

    again = batch(str(tasks), "-o", str(out), "--resume")  # nothing left to do: everything skipped
    assert again.returncode == EXIT_MISMATCH and f"{len(ids)} skipped" in again.stderr


def test_a_failing_task_is_recorded_and_the_rest_go_on(tmp_path):
    bad = {"id": "broken", "instruction": "make the object in image 1 blue", "images": ["missing.png"]}
    tasks, out = task_file(tmp_path, 2, extra=[bad]), tmp_path / "out"
    r = batch(str(tasks), "-o", str(out))
    assert r.returncode == 1, r.stderr  # the exit code says that something failed
    manifest = BatchManifest.model_validate_json((out / BATCH_FILE).read_text())
    status = {t.id: t for t in manifest.tasks}
    assert status["t0"].status == status["t1"].status == "done"
    assert status["broken"].status == "failed" and "missing.png: no such file" in status["broken"].error
    error = json.loads((out / "broken" / "error.json").read_text())
    assert error["task"]["id"] == "broken" and "no such file" in error["error"]
    assert read_manifest(out / "broken") is None

    r = batch(str(tasks), "-o", str(out), "--resume")  # failed tasks are retried, finished ones are not
    assert r.returncode == 1 and "2 skipped" in r.stderr


def test_two_workers_share_the_tasks(tmp_path):
    ids = [f"t{i}" for i in range(4)]
    tasks, out = task_file(tmp_path, 4), tmp_path / "out"
    r = batch(str(tasks), "-o", str(out), "--workers", "2")
    assert r.returncode == EXIT_MISMATCH, r.stderr
    manifest = check_exactly_once(out, ids)
    assert manifest.workers == 2
