"""Batch faults: SIGKILL at random points (20 times, then `--resume`), and a full disk (a tiny tmpfs, or a file
size limit where mounting is not allowed) that stops the batch cleanly until space returns.

The batches are the real `ditflow batch` command (`ditflow.batch.cli`) on the tiny random FLUX pipeline, in
processes forked from a server that has already imported torch/diffusers/langgraph, so that twenty kills cost
seconds of start-up, not minutes. After every kill: `batch.json` parses, and every task folder is complete
(manifest + matching hashes) or a recorded failure; nothing in between.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import resource
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ditflow import batch
from ditflow.api import read_manifest
from ditflow.batch import BATCH_FILE, STAGING, BatchManifest
from ditflow.batch_task import ERROR_FILE

pytest.importorskip("ditflow.agents.graph")

INSTRUCTIONS = ["a large red circle on the left", "two small blue squares on a gray background",
                "a green triangle at the top right", "a pink diamond in the center",
                "a yellow square on a black background", "a purple circle at the bottom",
                "an orange triangle on the right", "a cyan diamond at the top left"]
PRELOAD = ["ditflow.batch", "ditflow.api", "ditflow.agents.graph", "ditflow.agents.execution",
           "ditflow.toolkit.generate", "ditflow.pipelines.tiny", "diffusers", "transformers", "torch"]


@pytest.fixture(scope="module")
def forker():
    """A forkserver whose children start with the heavy modules already imported (one thread each)."""
    os.environ["OMP_NUM_THREADS"] = "1"
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def task_file(tmp_path: Path, n: int) -> tuple[Path, list[str]]:
    path = tmp_path / "tasks.jsonl"
    rows = [{"id": f"t{i}", "instruction": INSTRUCTIONS[i % len(INSTRUCTIONS)], "seed": i} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, [r["id"] for r in rows]


def cli_args(tasks: Path, out: Path, *extra: str) -> list[str]:
    return [str(tasks), "-o", str(out), "--model", "tiny", "--no-verify", *extra]


def run_cli(argv: list[str]) -> None:
    """A forked child's body: the real command, its return value as the exit code."""
    raise SystemExit(batch.cli(argv))


def check_consistent(out: Path) -> dict[str, str]:
    """The invariants that must hold at any instant no writer is running; returns {task id: done | failed}."""
    if not out.exists():  # killed before the batch made its folder (a slow start-up): nothing written, nothing lost
        return {}
    if (out / BATCH_FILE).exists():
        BatchManifest.model_validate_json((out / BATCH_FILE).read_text())  # never half-written
    states = {}
    for folder in sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if read_manifest(folder) is not None:
            states[folder.name] = "done"
        else:
            json.loads((folder / ERROR_FILE).read_text())  # a folder is either complete or a recorded failure
            states[folder.name] = "failed"
        assert not list(folder.glob(".*.tmp")), f"temp files left in {folder}"
    return states


def check_exactly_once(out: Path, ids: list[str]) -> None:
    manifest = BatchManifest.model_validate_json((out / BATCH_FILE).read_text())
    assert [t.id for t in manifest.tasks] == ids and all(t.status == "done" for t in manifest.tasks)
    assert sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")) == sorted(ids)
    assert not (out / STAGING).exists() or not any((out / STAGING).iterdir())
    assert not list(out.glob(".*.tmp"))
    for t in manifest.tasks:
        run = read_manifest(out / t.id)
        assert run is not None and run.task["id"] == t.id
        pngs = sorted(p.name for p in (out / t.id).iterdir() if p.suffix == ".png")
        assert pngs == run.images == t.images and pngs  # one set of outputs per task: no extra, none missing


def _running_task(out: Path) -> bool:
    try:
        return any((out / STAGING).iterdir())
    except FileNotFoundError:
        return False


def test_sigkill_at_random_points_twenty_times_then_resume(forker, tmp_path):
    rng = random.Random(8)  # seeded: a failure names a reproducible schedule
    # 48 tasks: on an idle machine 8 tiny tasks finished inside the first kill window, so no kill landed mid-task
    tasks, ids = task_file(tmp_path, 48)
    out = tmp_path / "out"
    est, landed, mid_task = 0.1, [], 0  # est: seconds per task, learnt from the runs (start short: idle machines are fast)
    for kill in range(20):
        p = forker.Process(target=run_cli, args=(cli_args(tasks, out, "--resume"),))
        p.start()
        t0 = time.monotonic()
        if rng.random() < 0.3:  # anywhere from start-up on: lock, rebuild, pipeline load, a task
            when = t0 + rng.uniform(0, 2 * est)
        else:  # inside the task stream: a task is running; kill within the next ~2.5 tasks
            while not _running_task(out) and p.is_alive() and time.monotonic() - t0 < 300:
                time.sleep(0.01)
            when = time.monotonic() + rng.uniform(0, 2.5 * est)
        done_before = len(check_consistent(out))
        while time.monotonic() < when and p.is_alive():
            time.sleep(0.005)
        in_task = _running_task(out)
        p.kill()
        p.join()
        states = check_consistent(out)
        finished = len(states) - done_before
        if finished > 0:
            est = 0.7 * est + 0.3 * (time.monotonic() - t0) / finished
        landed.append((kill, round(time.monotonic() - t0, 2), in_task, sorted(states)))
        mid_task += in_task
    assert mid_task >= 5, f"too few kills landed inside a task to mean anything: {landed}"

    p = forker.Process(target=run_cli, args=(cli_args(tasks, out, "--resume"),))
    p.start()
    p.join(600)
    assert p.exitcode == 0, f"the final --resume failed (exit {p.exitcode}); kills: {landed}"
    check_exactly_once(out, ids)


# ----------------------------------------------------------------------------- a full disk
def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    return r.returncode == 0


def _cli_with_file_size_limit(argv: list[str], limit: int) -> int:
    """`ditflow batch` in a process that cannot write a file larger than `limit` bytes (EFBIG, not SIGXFSZ)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    raise SystemExit(batch.cli(argv))


def test_full_disk_stops_cleanly_then_resumes_when_space_returns(forker, tmp_path, capfd):
    tasks, ids = task_file(tmp_path, 6)
    disk = tmp_path / "disk"
    mounted = _mount_tmpfs(disk, "48k")
    out = disk / "out"
    try:
        if mounted:
            code = batch.cli(cli_args(tasks, out))
        else:  # no mount permission: a per-process file size limit fails the first large write the same way
            disk.mkdir(exist_ok=True)
            p = forker.Process(target=_cli_with_file_size_limit, args=(cli_args(tasks, out), 2048))
            p.start()
            p.join(600)
            code = p.exitcode
        err = capfd.readouterr().err
        assert code == 3 if mounted else code != 0
        if mounted:
            assert "no space left" in err and "--resume" in err  # says what happened and what to do
        states = check_consistent(out)  # stopped cleanly: complete folders or nothing, batch.json intact
        assert len([s for s in states.values() if s == "done"]) < len(ids)
        assert "failed" not in states.values(), "a full disk must stop the batch, not fail every task"
        if mounted:
            subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)
        code = batch.cli(cli_args(tasks, out, "--resume"))
        assert code == 0, capfd.readouterr().err
        check_exactly_once(out, ids)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(disk)], check=False)
