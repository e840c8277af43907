"""`ditflow batch TASKS -o DIR [--resume] [--workers N]`: many instructions, resumable, exactly once.

TASKS is JSONL (one JSON object a line) or YAML (a list, or `{tasks: [...]}`); each task is
`{id, instruction, images, seed, model?}`, with image paths relative to the TASKS file.

How a kill at any moment loses nothing and duplicates nothing:
- a task runs in `DIR/.staging/<id>/`; when its images, plan and manifest are written, the whole folder is renamed
  to `DIR/<id>/` in one `os.replace`, so `DIR/<id>/` with a matching manifest means done, and nothing else does
  (`ditflow.batch_task`);
- `--resume` deletes `DIR/.staging/`, skips done tasks, and runs the rest (failed ones included);
- `DIR/batch.json` records each task's status for people and tools; it is rewritten atomically by the one
  parent process, and rebuilt from the folders on resume, so the folders stay the truth;
- a lock on `DIR/.lock` keeps two batches from writing one DIR.
A failed task gets `DIR/<id>/error.json` instead of a manifest; the others go on. A task whose outputs are made
but some still fail verification after repairs is done, and its mismatches are recorded and printed. The exit
status says how the batch ended: any task failed, else any output does not match, else all good (see --help).
With `--workers N`, N processes each load the pipeline once and share it across their tasks. With `--ray ADDRESS`,
N Ray actors do (one per GPU by default) and send each finished folder back, and this process commits it the
same way (`ditflow.scale.ray_batch`).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from ditflow.batch_task import STAGING, BatchTask, Engines, OutOfSpace, TaskState, out_of_space, run_task
from ditflow.sessions import write_json_atomic

BATCH_FILE, LOCK_FILE = "batch.json", ".lock"
MAX_WORKERS = 64
# what `ditflow batch --help` shows of a task file; tests load these very lines
TASKS_HELP = """task file: one task a line (JSONL), or YAML (a list, or {tasks: [...]}); two tasks, then the first in YAML:
  {"id": "circle", "instruction": "a red circle on the left", "seed": 1}
  {"id": "bluer", "instruction": "make the circle blue", "images": ["in/circle.png"], "model": "builtin-small"}

  - id: circle
    instruction: a red circle on the left
    seed: 1
fields: id (its output folder's name), instruction; optional: images (paths relative to the task file),
  seed (default 0), model (default --model)

examples:
  ditflow batch tasks.jsonl -o out/batch --workers 2
  ditflow batch tasks.jsonl -o out/batch --resume     # after a kill or a failure: only what is not done"""


class BatchManifest(BaseModel):
    tasks_file: str
    created: float = Field(default_factory=time.time)
    updated: float = Field(default_factory=time.time)
    settings: dict = Field(default_factory=dict)
    workers: int = 1
    tasks: list[TaskState] = Field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(t.status == status for t in self.tasks)

    def mismatched(self) -> int:
        return sum(t.status == "done" and bool(t.mismatches) for t in self.tasks)


# ----------------------------------------------------------------------------- reading tasks
def load_tasks(path: str | Path) -> list[BatchTask]:
    """Parse and validate a task file; errors name the line (JSONL) or entry (YAML) and the problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (bad byte at offset {e.start}); save the task file as UTF-8") from e
    entries: list[tuple[str, object]] = []
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:  # one line: where the parser stopped and why, and where what it read began
            mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            why = f"{problem} at column {mark.column + 1}" if mark and problem else str(e).splitlines()[0]
            if getattr(e, "context", None) and e.context_mark:  # e.g. "while parsing a flow sequence", an open "["
                why += f"; {e.context} that began on line {e.context_mark.line + 1}"
            raise ValueError(f"{where}: not valid YAML ({why})") from e
        if isinstance(data, dict) and "tasks" in data:
            data = data["tasks"]
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a list of tasks (or a mapping with a 'tasks' list)")
        entries = [(f"entry {i}", item) for i, item in enumerate(data, 1)]
    else:
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip() and not line.lstrip().startswith("#"):
                try:
                    entries.append((f"line {n}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not valid JSON ({e.msg}); use one task object per line") from e
                except RecursionError as e:  # json's parser recurses once per bracket
                    raise ValueError(f"{path}:{n}: nested too deeply; use one flat task object per line") from e
    tasks: list[BatchTask] = []
    seen: dict[str, str] = {}
    for where, item in entries:
        try:
            task = BatchTask.model_validate(item)
        except ValidationError as e:
            first = e.errors()[0]
            field = ".".join(str(x) for x in first["loc"]) or "task"
            raise ValueError(f"{path}: {where}: {field}: {first['msg']}") from e
        if task.id in seen:
            raise ValueError(f"{path}: {where}: duplicate id {task.id!r} (first at {seen[task.id]}); ids must be unique")
        seen[task.id] = where
        images = [str((path.parent / p).resolve()) if not Path(p).is_absolute() else p for p in task.images]
        tasks.append(task.model_copy(update={"images": images}))
    if not tasks:
        raise ValueError(f"{path}: no tasks found")
    return tasks


# ----------------------------------------------------------------------------- the worker processes (--workers N)
_WORKER: Engines | None = None


def _worker_init(settings_json: str, threads: int, verbose: bool | None = None) -> None:
    """Per worker process: die with the parent (so a killed batch leaves no writer behind), share the cores, and
    log where the parent does (`verbose` None: the parent did not set up logging)."""
    global _WORKER
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    import torch

    if verbose is not None:
        from ditflow import logs

        logs.setup(verbose)
    torch.set_num_threads(threads)
    _WORKER = Engines(settings_json)


def _worker_run(task_json: str, out: str) -> str:
    return run_task(_WORKER, BatchTask.model_validate_json(task_json), Path(out)).model_dump_json()


# ----------------------------------------------------------------------------- the batch (in the parent)
def is_done(task: BatchTask, folder: Path) -> bool:
    """Done means: the folder's manifest parses, every file matches its hash, and it ran this very task."""
    from ditflow.api import read_manifest

    manifest = read_manifest(folder)
    if manifest is None or manifest.error or not manifest.images:
        return False
    if manifest.task != task.model_dump(mode="json"):
        raise ValueError(f"task {task.id!r} changed since it finished in {folder}; "
                         "use a new -o, or delete that folder to redo it")
    return True


class _Lock:
    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise ValueError(f"another `ditflow batch` is writing {self.path.parent}; wait for it or use another -o")
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # closing releases the lock; the kernel also releases it if we are killed


def run_batch(tasks_path: str | Path, out: str | Path, *, resume: bool = False, workers: int | None = 1, settings=None,
              on_task=None, ray: str | None = None) -> BatchManifest:
    """Run every task not already done; returns the final batch manifest (also at DIR/batch.json).

    `ray`: a Ray address (or `auto`, `local`) to fan the tasks out over a cluster (`ditflow.scale.ray_batch`);
    then `workers` is the number of actors, None meaning one per GPU of the cluster."""
    from ditflow.config import Settings

    settings = settings or Settings.load()
    if workers is None and not ray:
        workers = 1
    if workers is not None and not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"--workers must be between 1 and {MAX_WORKERS}, got {workers}")
    tasks = load_tasks(tasks_path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with _Lock(out / LOCK_FILE):
        if (out / BATCH_FILE).exists() and not resume:
            raise ValueError(f"{out} already holds a batch; pass --resume to continue it, or choose another -o")
        shutil.rmtree(out / STAGING, ignore_errors=True)  # half-written tasks from a killed run: redone below
        for tmp in out.glob(f".{BATCH_FILE}.*.tmp"):  # a batch.json write cut short by a kill
            tmp.unlink(missing_ok=True)
        manifest = BatchManifest(tasks_file=str(Path(tasks_path).resolve()), settings=settings.public(),
                                 workers=workers or 1)
        pending: list[BatchTask] = []
        for task in tasks:
            if is_done(task, out / task.id):
                from ditflow.api import read_manifest
                from ditflow.cli.run import mismatches

                done = read_manifest(out / task.id, check_files=False)
                manifest.tasks.append(TaskState(id=task.id, status="done", images=done.images, skipped=True,
                                                mismatches=mismatches(done)))
            else:
                manifest.tasks.append(TaskState(id=task.id))
                pending.append(task)
        states = {t.id: t for t in manifest.tasks}

        def save() -> None:
            manifest.updated = time.time()
            write_json_atomic(out / BATCH_FILE, manifest)

        save()

        def finished(state: TaskState) -> None:
            state.attempts = states[state.id].attempts
            states[state.id].__dict__.update(state.__dict__)
            save()
            if on_task:
                on_task(state)

        if ray and pending:
            from ditflow.scale.ray_batch import run_on_ray

            manifest.workers = run_on_ray(pending, out, settings, workers, states, save, finished, address=ray)
            save()
        elif workers == 1 or len(pending) <= 1:
            engines = Engines(settings.model_dump_json())
            for task in pending:
                states[task.id].status, states[task.id].attempts = "running", states[task.id].attempts + 1
                save()
                finished(run_task(engines, task, out))
        else:
            _run_pool(pending, out, settings, workers, states, save, finished)
        return manifest


def _run_pool(pending, out, settings, workers, states, save, finished) -> None:
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from ditflow.logs import is_verbose

    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                             initargs=(settings.model_dump_json(), threads, is_verbose())) as pool:
        queue, running = list(pending), {}
        while queue or running:
            while queue and len(running) < workers:  # keep exactly `workers` tasks in flight, in file order
                task = queue.pop(0)
                states[task.id].status, states[task.id].attempts = "running", states[task.id].attempts + 1
                running[pool.submit(_worker_run, task.model_dump_json(), str(out))] = task
            save()
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                task = running.pop(fut)
                try:
                    finished(TaskState.model_validate_json(fut.result()))
                except OutOfSpace:
                    raise
                except Exception as e:  # the worker itself died (out of memory, killed): record, go on
                    finished(TaskState(id=task.id, status="failed", error=f"worker failed: {type(e).__name__}: {e}"))


# ----------------------------------------------------------------------------- command line
def cli(argv: list[str], command: str = "batch") -> int:
    from rich.console import Console
    from rich.markup import escape

    from ditflow.cli.main import EXIT_FAILED, EXIT_MISMATCH, EXIT_NO_SPACE, EXIT_OK, EXIT_STATUS_HELP
    from ditflow.cli.run import add_engine_args
    from ditflow.config import Settings
    from ditflow.logs import add_verbose_flag

    p = argparse.ArgumentParser(prog=f"ditflow {command}", description=__doc__.splitlines()[0],
                                epilog=f"{TASKS_HELP}\n\n{EXIT_STATUS_HELP}",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tasks", type=Path, help="JSONL or YAML task file")
    p.add_argument("-o", "--out", required=True, type=Path, help="output folder (one sub-folder per task)")
    p.add_argument("--resume", action="store_true", help="continue a killed or finished batch in DIR")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (or Ray actors), each with its own pipeline; default 1 (Ray: one per GPU)")
    p.add_argument("--ray", metavar="ADDRESS", default=None,
                   help="fan tasks out over Ray: a cluster address, auto (RAY_ADDRESS or the cluster running here), "
                        "or local (start one on this machine, loopback only)")
    add_engine_args(p)
    add_verbose_flag(p)
    args = p.parse_args(argv)
    settings = Settings.load(model=args.model, llm=args.llm, seed=args.seed, device=args.device, dtype=args.dtype,
                             verify=args.verify, max_repairs=args.max_repairs, accelerate=args.accelerate)
    console = Console(stderr=True)
    total = len(load_tasks(args.tasks))
    t0 = time.perf_counter()

    def report(state: TaskState) -> None:
        if state.status != "done":
            mark = f"[red]failed[/]: {escape(state.error or '')}"
        else:
            mark = "[yellow]done, does not match[/]" if state.mismatches else "[green]done[/]"
        console.print(f"{state.id}: {mark} ({state.seconds:.1f}s)", highlight=False, soft_wrap=True)
        for line in state.mismatches:  # one line each, however long: lines are what tools read
            console.print(f"  {state.id}/{line}", highlight=False, markup=False, soft_wrap=True)

    try:
        manifest = run_batch(args.tasks, args.out, resume=args.resume, workers=args.workers, settings=settings,
                             on_task=report, ray=args.ray)
    except OSError as e:
        if not (full := out_of_space(e, args.out, "?")):
            raise
        console.print(f"[red]stopped[/]: {full.strerror}", highlight=False)
        return EXIT_NO_SPACE
    skipped = sum(t.skipped for t in manifest.tasks)
    ran = total - skipped
    minutes = (time.perf_counter() - t0) / 60
    console.print(f"{manifest.count('done')}/{total} done"
                  + (f" ({manifest.mismatched()} not matching)" if manifest.mismatched() else "")
                  + f", {manifest.count('failed')} failed, {skipped} skipped (already done); {ran} run in "
                  f"{minutes * 60:.1f}s" + (f" = {ran / minutes:.1f} tasks/min" if ran and minutes > 0 else ""),
                  highlight=False, soft_wrap=True)
    print(args.out / BATCH_FILE)
    if manifest.count("failed"):
        return EXIT_FAILED
    return EXIT_MISMATCH if manifest.mismatched() else EXIT_OK
