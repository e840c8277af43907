"""A pipeline that raises in the middle of denoising: the transformer of a real tiny FLUX pipeline gets a forward
hook that raises on its k-th call (step k of the sampling loop). The turn must end with its error recorded in the
manifest, no image or temp file half-written, and, in a batch, the task marked failed and redone on resume."""
from __future__ import annotations

import json

import pytest

from ditflow.api import MANIFEST_FILE, Session, read_manifest
from ditflow.batch_task import ERROR_FILE, BatchTask, Engines, run_task
from ditflow.config import Settings

pytest.importorskip("ditflow.agents.graph")


class InjectedFault(RuntimeError):
    pass


def fail_at(pipe, call: int):
    """Make the transformer raise on its `call`-th forward (1-based) and on every one after; returns the hook."""
    seen = {"n": 0}

    def hook(module, args, kwargs):
        seen["n"] += 1
        if seen["n"] >= call:
            raise InjectedFault(f"injected fault in denoising step {seen['n']}")

    return pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True), seen


@pytest.fixture()
def pipe():
    from ditflow.pipelines.tiny import tiny_flux_pipeline

    return tiny_flux_pipeline()


def files_in(folder):
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


def test_raise_mid_denoise_records_the_error_and_writes_no_image(pipe, tmp_path):
    handle, seen = fail_at(pipe, 3)  # the tiny pipeline samples 4 steps: this is the middle of the first image
    out = tmp_path / "out"
    with Session(pipeline=pipe, llm="rules", verify=False, persist=False) as s:
        turn = s.run("a large red circle on the left", out_dir=out)
    handle.remove()
    assert seen["n"] >= 3
    assert not turn.ok and "InjectedFault" in turn.error and "denoising step 3" in turn.error
    manifest = read_manifest(out)
    assert manifest is not None and manifest.error == turn.error  # the error is in the manifest
    assert any(c.error and "InjectedFault" in c.error for c in manifest.tool_calls)  # and in the tool record
    assert not list(out.glob("*.png")) and not list(out.glob(".*"))  # no image, no temp file
    assert set(files_in(out)) == set(manifest.files) | {MANIFEST_FILE}  # nothing the manifest does not list


def test_a_later_step_failing_keeps_only_listed_complete_files(pipe, tmp_path):
    """Two independent images: the first completes, the second's denoising raises. Whatever is on disk is
    complete and listed with its hash; the manifest says the turn failed."""
    handle, seen = fail_at(pipe, 6)  # image 1 takes calls 1-4; image 2 fails in its second step
    out = tmp_path / "out"
    with Session(pipeline=pipe, llm="rules", verify=False, persist=False) as s:
        turn = s.run("two images: a red circle and a blue square", out_dir=out)
    handle.remove()
    assert not turn.ok and "InjectedFault" in turn.error
    manifest = read_manifest(out)  # check_files: every listed file matches its sha256
    assert manifest is not None and manifest.error
    assert set(files_in(out)) == set(manifest.files) | {MANIFEST_FILE}
    assert not list(out.glob(".*"))


def test_batch_task_raising_mid_denoise_is_failed_and_redone(pipe, tmp_path):
    out = tmp_path / "batch"
    (out / ".staging").mkdir(parents=True)
    task = BatchTask(id="t0", instruction="a large red circle on the left", seed=3)
    settings = Settings.load(model="tiny", llm="rules", verify=False, home=tmp_path / "home")
    engines = Engines(settings.model_dump_json())
    engines.session = Session(pipeline=pipe, settings=settings, persist=False)
    handle, _ = fail_at(pipe, 2)
    state = run_task(engines, task, out)
    assert state.status == "failed" and "InjectedFault" in state.error
    error = json.loads((out / "t0" / ERROR_FILE).read_text())
    assert error["task"]["id"] == "t0" and "InjectedFault" in error["error"]
    assert read_manifest(out / "t0").error and not list((out / "t0").glob("*.png"))

    handle.remove()  # the fault is gone: the retry (what --resume does for a failed task) succeeds in place
    state = run_task(engines, task, out)
    assert state.status == "done"
    assert not (out / "t0" / ERROR_FILE).exists() and read_manifest(out / "t0").error is None
    engines.session.close()
