"""One task of `ditflow batch`: its schema, its state, and its run with a loaded Session in a staging folder that
one rename commits (see `ditflow/batch.py` for why a kill then loses nothing). The local batch (`batch.py`) and its
Ray fan-out (`scale/ray_batch.py`) both run tasks this way, so it sits below both."""
from __future__ import annotations

import errno
import os
import shutil
import time
import traceback
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from ditflow.schemas import MAX_INSTRUCTION_CHARS, SafeId, Strict
from ditflow.sessions import write_json_atomic

STAGING, ERROR_FILE = ".staging", "error.json"
NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}  # disk full, quota, file-size limit: every next task would fail


class OutOfSpace(OSError):
    """The output folder ran out of space: the batch stops (finished tasks stay done; the half-written one is
    removed) and `--resume` continues it once there is space again."""


def out_of_space(e: BaseException, out: Path, task_id: str) -> OutOfSpace | None:
    if isinstance(e, OutOfSpace) or not (isinstance(e, OSError) and e.errno in NO_SPACE):
        return e if isinstance(e, OutOfSpace) else None
    return OutOfSpace(e.errno, f"no space left in {out} while writing task {task_id!r} ({e.strerror}); free some "
                               "space, then run the same command with --resume")


class BatchTask(Strict):
    id: SafeId
    instruction: str = Field(min_length=1, max_length=MAX_INSTRUCTION_CHARS)
    images: list[str] = Field(default_factory=list)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    model: str | None = Field(None, min_length=1)
    accelerate: str | None = Field(None, min_length=1, max_length=500, description="this task's acceleration "
                                   "setting, as `--accelerate` (default: the batch's)")

    @field_validator("model")
    @classmethod
    def _model(cls, v: str | None) -> str | None:  # checked as the file loads, not when the task's turn comes
        from ditflow.config import check_model

        return v if v is None else check_model(v)

    @field_validator("accelerate")
    @classmethod
    def _accelerate(cls, v: str | None) -> str | None:
        from ditflow.config import validation_error
        from ditflow.pipelines.acceleration import parse_acceleration

        try:
            return v if v is None else parse_acceleration(v)
        except ValueError as e:
            raise validation_error("accelerate", str(e)) from None


class TaskState(BaseModel):
    id: str
    status: Literal["pending", "running", "done", "failed"] = "pending"
    error: str | None = None
    seconds: float = 0.0
    images: list[str] = Field(default_factory=list)
    attempts: int = 0
    skipped: bool = Field(False, description="done in an earlier run, not redone")
    mismatches: list[str] = Field(default_factory=list, description="outputs that still fail verification after "
                                  "repairs, one line each with the failed claims (`cli.run.mismatches`)")


# ----------------------------------------------------------------------------- one task (in a worker)
class Engines:
    """The worker's loaded Session: one pipeline, reused across tasks; replaced only when a task names another
    model, so at most one pipeline is in memory per worker."""

    def __init__(self, settings_json: str):
        from ditflow.config import Settings

        self.settings = Settings.model_validate_json(settings_json)
        self.session = None

    def get(self, model: str | None, accelerate: str | None = None):
        """The Session for a task's model and acceleration; the pipeline is reloaded only for another model (an
        acceleration is applied to the loaded one, and changed in place)."""
        from ditflow.api import Session

        want = model or self.settings.model
        if self.session is None or self.session.settings.model != want:
            if self.session is not None:
                self.session.close()
            self.session = Session(settings=self.settings.model_copy(update={"model": want}), persist=False)
        self.session.set_accelerate(accelerate or self.settings.accelerate)
        return self.session


def run_task(engines: Engines, task: BatchTask, out: Path) -> TaskState:
    """Run one task in its staging folder and move the folder into place; never raises for a task's own failure."""
    from ditflow.cli.run import mismatches
    staging = out / STAGING / task.id
    final = out / task.id
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    t0 = time.perf_counter()
    state = TaskState(id=task.id, status="failed")
    try:
        turn = engines.get(task.model, task.accelerate).run(task.instruction, task.images, staging, seed=task.seed,
                                           task=task.model_dump(mode="json"))
        state.images = [p.name for p in turn.image_paths]
        if turn.record.error or not turn.record.images:
            state.error = turn.record.error or "the agents produced no image"
        else:
            state.status = "done"
            state.mismatches = mismatches(turn.record)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # a task's failure is recorded and the batch goes on; the traceback goes beside it
        if full := out_of_space(e, out, task.id):
            shutil.rmtree(staging, ignore_errors=True)
            raise full from e
        state.error = f"{type(e).__name__}: {e}"
        (staging / "traceback.txt").write_text(traceback.format_exc(), encoding="utf-8")
    state.seconds = time.perf_counter() - t0
    if state.status == "failed":
        write_json_atomic(staging / ERROR_FILE, {"task": task.model_dump(mode="json"), "error": state.error})
    shutil.rmtree(final, ignore_errors=True)  # only a failed or corrupt earlier attempt can be here
    os.replace(staging, final)  # the commit point: the folder appears whole, or not at all
    fsync_dir(out)
    return state


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
