"""`ditflow batch --ray`: the same tasks on a local Ray instance give the same images as the plain batch (same
seeds, same pipeline, byte-identical PNGs), failures are recorded the same way, resume skips what is done, and
every port the local instance opens is on loopback. Real Ray (`ray.init(num_cpus=2)` via `connect("local")`),
real tiny random FLUX pipelines in the actors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ditflow.api import read_manifest
from ditflow.batch import BATCH_FILE, STAGING, BatchManifest, run_batch
from ditflow.config import Settings

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before ray is imported: a loopback-only instance
ray = pytest.importorskip("ray", reason="the `ray` extra is not installed")
pytest.importorskip("ditflow.agents.graph")

from ditflow.scale.ray_batch import connect  # noqa: E402

TASKS = [{"id": "t0", "instruction": "a large red circle on the left", "seed": 0},
         {"id": "t1", "instruction": "two small blue squares on a gray background", "seed": 1},
         {"id": "t2", "instruction": "make the square in image 1 green", "images": ["in.png"], "seed": 2},
         {"id": "broken", "instruction": "make the object in image 1 blue", "images": ["missing.png"]}]


@pytest.fixture(scope="module")
def cluster():
    started = connect("local", num_cpus=2)
    yield
    if started:
        ray.shutdown()


@pytest.fixture()
def tasks(tmp_path) -> Path:
    from PIL import Image

    img = Image.new("RGB", (32, 32), (245, 245, 245))
    img.paste((40, 80, 220), (10, 10, 22, 22))
    img.save(tmp_path / "in.png")
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in TASKS))
    return path


def settings(tmp_path: Path) -> Settings:
    return Settings.load(model="tiny", llm="rules", home=tmp_path / "home", verify=False, device="cpu")


def outputs(out: Path) -> dict[str, dict]:
    """Per done task: its image hashes and plan (what must match across runs); per failed task: its error."""
    manifest = BatchManifest.model_validate_json((out / BATCH_FILE).read_text())
    result = {}
    for t in manifest.tasks:
        run = read_manifest(out / t.id)
        if t.status == "done":
            assert run is not None, f"{t.id} is done but its folder does not check out"
            result[t.id] = {"images": {k: v for k, v in run.files.items() if k.endswith(".png")},
                            "plan": (out / t.id / "plan.json").read_text(), "task": run.task,
                            "inputs": [i["sha256"] for i in run.inputs]}
        else:
            result[t.id] = {"error": t.error}
    return result


def test_ray_batch_matches_the_plain_batch_and_resumes(cluster, tasks, tmp_path):
    # The plain batch as a user runs it: its own process, one thread (each of the two actors gets one CPU).
    r = subprocess.run([sys.executable, "-m", "ditflow.cli", "batch", str(tasks), "-o", str(tmp_path / "plain"),
                        "--model", "tiny", "--llm", "rules", "--no-verify", "--device", "cpu"],
                       env={**os.environ, "OMP_NUM_THREADS": "1", "DITFLOW_HOME": str(tmp_path / "home")},
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 1, r.stderr  # 1: the broken task failed, as it should
    plain = BatchManifest.model_validate_json((tmp_path / "plain" / BATCH_FILE).read_text())
    on_ray = run_batch(tasks, tmp_path / "ray", settings=settings(tmp_path), ray="auto", workers=2)
    assert on_ray.workers == 2
    assert [t.status for t in on_ray.tasks] == [t.status for t in plain.tasks] == ["done"] * 3 + ["failed"]

    a, b = outputs(tmp_path / "plain"), outputs(tmp_path / "ray")
    assert a == b  # identical PNG bytes, plans, task records and input hashes; the same error for the bad task
    assert "missing.png: no such file" in b["broken"]["error"]
    assert b["t2"]["task"]["images"] == [str(tasks.parent / "in.png")]  # recorded as the driver knows it
    assert not any((tmp_path / "ray" / STAGING).glob("*"))

    again = run_batch(tasks, tmp_path / "ray", settings=settings(tmp_path), ray="auto", workers=2, resume=True)
    assert {t.id for t in again.tasks if t.skipped} == {"t0", "t1", "t2"}  # done on Ray, skipped on resume
    assert outputs(tmp_path / "ray") == b


def test_a_local_instance_listens_on_loopback_only(cluster):
    """Every TCP port opened by this process and Ray's processes (GCS, raylet, workers) is bound to 127.0.0.1."""
    psutil = pytest.importorskip("psutil")
    pids = {p.pid for p in psutil.Process().children(recursive=True)} | {os.getpid()}
    listening = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in pids]
    assert listening, "found no listening socket of the Ray instance to check"
    for c in listening:
        assert c.laddr.ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1"), f"{c.laddr} is reachable from other hosts"
