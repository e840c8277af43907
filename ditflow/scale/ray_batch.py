"""`ditflow batch TASKS -o DIR --ray ADDRESS|auto|local`: batch tasks fanned out over a Ray cluster.

- One actor per worker (one per GPU when the cluster has GPUs) loads the pipeline once and keeps it for all its
  tasks, like a `--workers` process does on one machine. The LLM is whatever `--llm` names: an `http://.../v1`
  vLLM endpoint is shared by every actor; `rules` runs inside each actor.
- Actors never write to DIR. An actor runs its task in a scratch folder on its own node (with the task's input
  images shipped to it as bytes) and returns the finished folder as bytes. The driver writes them to
  `DIR/.staging/<id>/` and renames that into `DIR/<id>/`: the very commit a local batch makes, so `--resume`, the
  lock and `batch.json` hold unchanged across the cluster, and a killed driver or a lost node loses at most the
  tasks in flight.
- `local` starts a one-machine Ray instance bound to 127.0.0.1 with no dashboard; `auto` joins the cluster in
  `RAY_ADDRESS` or the one running here; anything else is a cluster address (`ray://host:10001`, `host:6379`).
"""
from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from ditflow.api import MANIFEST_FILE
from ditflow.batch_task import ERROR_FILE, STAGING, BatchTask, Engines, TaskState, fsync_dir, run_task
from ditflow.schemas import RunManifest
from ditflow.sessions import write_json_atomic

log = logging.getLogger(__name__)
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _ray_would_leave_loopback(ray) -> bool:
    """True when Ray will bind to a routable address: it was imported before the switch was set."""
    from ray._private import ray_constants

    return bool(ray_constants.ENABLE_RAY_CLUSTER)


# ----------------------------------------------------------------------------- the actor (on a worker node)
class PipelineWorker:
    """Holds one loaded Session (pipeline + LLM client) and runs tasks with it. Wrapped by `ray.remote` at run
    time, so importing this module never needs Ray."""

    def __init__(self, settings_json: str, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.engines = Engines(settings_json)

    def run(self, task_json: str, inputs: list[tuple[str, bytes | None]]) -> tuple[str, dict[str, bytes]]:
        """Run one task; returns (TaskState JSON, the task folder's files). `inputs` pairs each image path of the
        task with its bytes (None when the driver could not read it: the run then fails as it would locally)."""
        task = BatchTask.model_validate_json(task_json)
        with tempfile.TemporaryDirectory(prefix="ditflow-ray-") as tmp:
            local = []
            for k, (path, data) in enumerate(inputs):
                if data is None:
                    local.append(path)
                    continue
                copy = Path(tmp, "inputs", f"{k}{Path(path).suffix}")
                copy.parent.mkdir(exist_ok=True)
                copy.write_bytes(data)
                local.append(str(copy))
            state = run_task(self.engines, task.model_copy(update={"images": local}), Path(tmp, "out"))
            folder = Path(tmp, "out", task.id)
            files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
        return state.model_dump_json(), files


# ----------------------------------------------------------------------------- the driver
def connect(address: str, num_cpus: int | None = None) -> bool:
    """Join or start Ray; returns True when this call started it (and so should shut it down)."""
    if address == "local":
        # Ray maps 127.0.0.1 to the machine's routable address unless it believes it runs a one-machine "cluster"
        # (its Windows/macOS default); this switch, read when ray is imported, keeps a local instance on loopback.
        os.environ.setdefault(LOCAL_ONLY_ENV, "0")
    import ray

    if ray.is_initialized():  # a host app or a test chose the cluster already
        return False
    quiet = dict(log_to_driver=False, logging_level=logging.WARNING)
    if address == "local":  # a one-machine instance: loopback only, no dashboard
        if os.environ[LOCAL_ONLY_ENV] != "0" or _ray_would_leave_loopback(ray):
            raise ValueError(f"--ray local needs {LOCAL_ONLY_ENV}=0 set before Ray is imported, so that it binds "
                             "to 127.0.0.1; start the cluster yourself (`ray start --head`) and pass --ray auto")
        ray.init(num_cpus=num_cpus, include_dashboard=False, **quiet)
    else:
        ray.init(address=address, **quiet)
    return True


def _input_bytes(task: BatchTask) -> list[tuple[str, bytes | None]]:
    out = []
    for p in task.images:
        try:
            out.append((p, Path(p).read_bytes()))
        except OSError:
            out.append((p, None))
    return out


def commit(out: Path, task: BatchTask, files: dict[str, bytes]) -> None:
    """Write a task folder sent back by an actor into `out/<id>/`: staging, then one rename (as `run_task`).

    The manifest and error record name the task as the driver knows it (the actor saw scratch copies of its
    images), so that `is_done` on resume compares like with like."""
    staging, final = out / STAGING / task.id, out / task.id
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name, data in files.items():
        if Path(name).name != name or name.startswith("."):  # only plain file names come back from a worker
            raise ValueError(f"worker returned a file named {name!r} for task {task.id!r}; refusing to write it")
        with open(staging / name, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    task_json = task.model_dump(mode="json")
    if (staging / MANIFEST_FILE).exists():
        m = RunManifest.model_validate_json((staging / MANIFEST_FILE).read_text(encoding="utf-8"))
        inputs = [{**i, "path": p} for i, p in zip(m.inputs, task.images)]
        write_json_atomic(staging / MANIFEST_FILE, m.model_copy(update={"task": task_json, "inputs": inputs}))
    if (staging / ERROR_FILE).exists():
        write_json_atomic(staging / ERROR_FILE, {"task": task_json, "error": _read_error(staging / ERROR_FILE)})
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    fsync_dir(out)


def _read_error(path: Path) -> str | None:
    import json

    return json.loads(path.read_text(encoding="utf-8")).get("error")


def _warn_if_llm_unreachable(llm: str) -> None:
    """A loopback LLM URL only works when every actor runs on this machine."""
    import ray

    host = urlparse(llm).hostname if llm.startswith(("http://", "https://")) else None
    try:
        loopback = host == "localhost" or (host is not None and ipaddress.ip_address(host).is_loopback)
    except ValueError:
        loopback = False
    if loopback and len([n for n in ray.nodes() if n.get("Alive")]) > 1:
        log.warning("the LLM endpoint %s is on loopback, but the Ray cluster has several nodes; actors on other "
                    "nodes cannot reach it. Serve vLLM on an address every node can reach", llm)


def run_on_ray(pending: list[BatchTask], out: Path, settings, workers: int | None, states: dict, save, finished,
               *, address: str = "auto") -> int:
    """Run `pending` on Ray actors; `finished(TaskState)` is called in the driver as each task lands.
    Returns the number of actors used."""
    import ray

    started = connect(address, num_cpus=workers if address == "local" and workers else None)
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        n = workers or gpus or 1
        cpus = max(1, int(resources.get("CPU", 1)) // n)
        _warn_if_llm_unreachable(settings.llm)
        actor_cls = ray.remote(PipelineWorker).options(num_cpus=cpus, num_gpus=1 if gpus else 0, max_restarts=0)

        def new_actor():
            return actor_cls.remote(settings.model_dump_json(), cpus)

        idle = [new_actor() for _ in range(n)]
        queue, running = list(pending), {}
        while queue or running:
            while queue and idle:  # one task in flight per actor, in file order
                task, actor = queue.pop(0), idle.pop(0)
                states[task.id].status, states[task.id].attempts = "running", states[task.id].attempts + 1
                running[actor.run.remote(task.model_dump_json(), _input_bytes(task))] = (task, actor)
            save()
            (ref,), _ = ray.wait(list(running), num_returns=1)
            task, actor = running.pop(ref)
            try:
                state_json, files = ray.get(ref)
            except ray.exceptions.RayError as e:  # the actor or its node died: record it, replace the actor
                finished(TaskState(id=task.id, status="failed", error=f"worker failed: {type(e).__name__}: {e}"))
                ray.kill(actor)
                idle.append(new_actor())
                continue
            commit(out, task, files)
            finished(TaskState.model_validate_json(state_json))
            idle.append(actor)
        for actor in idle:
            ray.kill(actor)  # frees each pipeline now, not when the cluster notices the driver left
        return n
    finally:
        if started:
            ray.shutdown()
