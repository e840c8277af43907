"""`ditflow.Session`: the Python API. `ditflow run`, `chat`, `batch` and `bench ideabench` are thin shells over it.

A Session is one conversation with the agents: each `chat()` is a turn that can follow up on earlier ones
("make page 3 green", `undo()`), checkpointed per session by langgraph and saved under the session store
(`ditflow.sessions`). It holds no global state, so several Sessions can live in one process.

    >>> from ditflow import Session
    >>> s = Session(model="tiny", llm="rules", persist=False)        # doctest: +SKIP
    >>> turn = s.chat("a red circle on the left")                    # doctest: +SKIP
    >>> turn.images[0].size, turn.plan.steps[0].tool                 # doctest: +SKIP
    ((32, 32), 'generate')
    >>> turn.save("out/red-circle")                                  # doctest: +SKIP
    >>> s.chat("make it green").parsed.task                          # doctest: +SKIP
    'edit'

Progress arrives as `ProgressEvent`s, through a callback (`Session(on_progress=print)`, or per call) or as an
iterator (`for item in s.stream("...")`: events, then the finished `Turn`).
"""
from __future__ import annotations

import hashlib
import queue
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ditflow.config import TINY_MODEL, Settings
from ditflow.schemas import ProgressEvent, RunManifest, TurnRecord
from ditflow.sessions import SessionMeta, SessionStore, copy_atomic, write_json_atomic, write_text_atomic
from ditflow.version import __version__

Progress = Callable[[ProgressEvent], None]
PLAN_FILE, ARTICLE_FILE, MANIFEST_FILE = "plan.json", "article.md", "manifest.json"


class TurnCancelled(KeyboardInterrupt):
    """Raised inside a running turn after `Session.cancel()`. A KeyboardInterrupt, so no `except Exception` in a
    tool or agent swallows it into an ordinary error and carries on."""


def numbered(i: int, ext: str = "png") -> str:
    """1-based output file names, as IDEA-Bench and our manifests count: 0001.png, 0002.png ..."""
    return f"{i:04d}.{ext}"


# ----------------------------------------------------------------------------- a finished turn
class Turn:
    """One finished turn: the typed `TurnRecord` plus the folder holding its images.

    Attributes mirror the record (`plan`, `parsed`, `article_markdown`, `tool_calls`, `timings`, `error`);
    `images` loads the output images as PIL RGB images, `image_paths` gives their files.
    """

    def __init__(self, record: TurnRecord, folder: str | Path, manifest: RunManifest | None = None):
        self.record = record
        self.folder = Path(folder)
        self.manifest = manifest

    def __repr__(self) -> str:
        return f"Turn({self.record.turn}, {self.record.instruction[:40]!r}, {len(self.record.images)} images)"

    def __getattr__(self, name: str) -> Any:  # plan, parsed, article_markdown, tool_calls, timings, error ...
        if name != "record" and name in TurnRecord.model_fields:
            return getattr(self.record, name)
        raise AttributeError(name)

    @property
    def ok(self) -> bool:
        return self.record.error is None and bool(self.record.images)

    @property
    def image_paths(self) -> list[Path]:
        return [Path(p) if Path(p).is_absolute() else self.folder / p for p in self.record.images]

    @property
    def images(self):
        from ditflow.images import load_image

        return [load_image(p) for p in self.image_paths]

    def save(self, out_dir: str | Path, *, settings: Settings | None = None, task: dict | None = None) -> Path:
        """Write `0001.png ...`, `plan.json`, `article.md` (articles, picture books) and, last, `manifest.json`.

        Every file is written atomically and the manifest lists each file's sha256, so a folder whose manifest
        exists and matches is complete. Returns the manifest's path.
        """
        from ditflow.images import sha256_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files: dict[str, str] = {}
        names = []
        for i, src in enumerate(self.image_paths, 1):
            dst = out / numbered(i, src.suffix.lstrip(".") or "png")
            if src.resolve() != dst.resolve():
                copy_atomic(src, dst)
            files[dst.name] = sha256_file(dst)
            names.append(dst.name)
        if self.record.plan is not None:
            write_json_atomic(out / PLAN_FILE, self.record.plan)
            files[PLAN_FILE] = sha256_file(out / PLAN_FILE)
        if self.record.article_markdown:
            write_text_atomic(out / ARTICLE_FILE, self.record.article_markdown)
            files[ARTICLE_FILE] = sha256_file(out / ARTICLE_FILE)
        manifest = RunManifest(**self.record.model_dump(exclude={"images"}), images=names,
                               ditflow_version=__version__, created=time.time(),
                               settings=settings.public() if settings else {}, files=files, task=task)
        path = write_json_atomic(out / MANIFEST_FILE, manifest)
        self.manifest = manifest
        return path


def read_manifest(folder: str | Path, *, check_files: bool = True) -> RunManifest | None:
    """The folder's manifest if it exists, parses, and (with `check_files`) every listed file matches its hash;
    None otherwise. This is how batch and ideabench tell a finished folder from a half-written one."""
    from ditflow.images import sha256_file

    path = Path(folder) / MANIFEST_FILE
    try:
        manifest = RunManifest.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if check_files:
        for name, digest in manifest.files.items():
            f = Path(folder) / name
            if not f.is_file() or sha256_file(f) != digest:
                return None
    return manifest


# ----------------------------------------------------------------------------- the session
class Session:
    """A conversation with the agents over one lazily loaded pipeline.

    Args:
        model: see `Settings.model` (`builtin` by default; `tiny` is a random-weight pipeline for smoke runs).
        llm: see `Settings.llm` (`rules` by default).
        pipeline: an already loaded diffusers pipeline to use instead of loading `model` (tests, host apps).
        session_id: resume this stored session (persist=True only).
        persist: keep turns and checkpoints under `home`; False keeps them in a temp folder until `close()`.
        home, seed, verify, device, dtype, accelerate: override the matching `Settings` fields (`accelerate`:
            off, auto, or stitch[=F] and/or local[=R|student|FILE]; see `ditflow.pipelines.acceleration`).
        on_progress: called with every `ProgressEvent` of every turn.
        settings: a complete `Settings` (the keyword overrides above still apply on top).

    Example (runs offline in a few seconds):

        >>> with Session(model="tiny", persist=False) as s:           # doctest: +SKIP
        ...     turn = s.chat("two small blue squares on a gray background")
        ...     print(len(turn.images), turn.error)
        1 None
    """

    def __init__(self, model: str | None = None, llm: str | None = None, *, pipeline=None,
                 session_id: str | None = None, persist: bool = True, home: str | Path | None = None,
                 seed: int | None = None, verify: bool | None = None, max_repairs: int | None = None,
                 device: str | None = None, dtype: str | None = None, accelerate: str | None = None,
                 on_progress: Progress | None = None, settings: Settings | None = None):
        overrides = dict(model=model, llm=llm, home=home, seed=seed, verify=verify, max_repairs=max_repairs,
                         device=device, dtype=dtype, accelerate=accelerate)
        if settings is None:
            self.settings = Settings.load(**overrides)
            if model is None and pipeline is not None:  # an injected pipeline names itself in records
                from ditflow.pipelines.loading import info_of

                # model_copy, not a check: the name is a label (a host app's own pipeline), never loaded
                self.settings = self.settings.model_copy(update={"model": info_of(pipeline).name})
        else:
            self.settings = settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})
            Settings.model_validate(self.settings.model_dump())  # re-check the overrides
        self.on_progress = on_progress
        self._call_listener: Progress | None = None  # the running call's own on_progress
        self._pipeline = pipeline
        self._pipeline_model = self.settings.model if pipeline is not None else None
        self._pipeline_accel = "off"  # the acceleration applied to the pipeline: none as loaded, or as injected
        self._llm = None
        self._cancel = threading.Event()
        self._load_lock = threading.Lock()
        self._busy = threading.Lock()  # one turn at a time; a second caller gets a clear error, not a race
        # a non-persistent session's store; its finalizer deletes the folder even when close() is never called
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._checkpointer = None
        self._conn = None
        self.attachments: list[Path] = []  # attached with attach(), sent with the next chat()
        self.persist = persist
        if persist:
            self.store = SessionStore(self.settings.home)
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="ditflow-session-", ignore_cleanup_errors=True)
            self.store = SessionStore(Path(self._tmp.name))
        self.meta: SessionMeta | None = None
        if session_id is not None:
            self.load(session_id)

    # context manager / lifetime ------------------------------------------------
    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the checkpoint database; a non-persistent session's temp folder is deleted."""
        self._close_checkpointer()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # conversation identity ----------------------------------------------------
    @property
    def id(self) -> str | None:
        """The stored session's id; None until the first turn of a new conversation."""
        return self.meta.id if self.meta else None

    def new(self) -> None:
        """Start a new conversation; the loaded pipeline and LLM stay."""
        self._close_checkpointer()
        self.meta = None
        self.attachments = []

    def load(self, session_id: str) -> SessionMeta:
        """Switch to a stored session (its model and LLM come with it)."""
        meta = self.store.load(session_id)
        self._close_checkpointer()
        self.meta = meta
        self.attachments = []
        if meta.model != self.settings.model:
            self.set_model(meta.model)
        if meta.llm != self.settings.llm:
            self.set_llm(meta.llm)
        return meta

    def sessions(self) -> list[SessionMeta]:
        return self.store.list()

    def set_model(self, model: str) -> None:
        """Use another model from the next turn on (loaded lazily)."""
        self.settings.model = model
        if self.meta:
            self.meta.model = model
            self.store.save(self.meta)

    def set_accelerate(self, setting: str) -> None:
        """Accelerate from the next turn on: off, auto, or stitch[=F] and/or local[=R|student|FILE]. A bad setting
        raises ValueError now; one this model cannot have (no student, no small partner) on the next turn."""
        self.settings.accelerate = setting  # validated on assignment

    def set_llm(self, spec: str) -> None:
        """Use another LLM backend from the next turn on; an unknown spec raises ValueError now."""
        from ditflow.agents.llm.base import make_backend

        backend = make_backend(spec)
        self.settings.llm, self._llm = spec, backend
        if self.meta:
            self.meta.llm = spec
            self.store.save(self.meta)

    # engines -------------------------------------------------------------------
    @property
    def pipeline(self):
        """The diffusers pipeline, loaded on first use and kept for the Session's life."""
        with self._load_lock:  # chat warms up on a background thread while the first turn may already need it
            if self._pipeline is None or self._pipeline_model != self.settings.model:
                self._emit(ProgressEvent(stage="execute", message=f"loading model {self.settings.model}"))
                self._pipeline = None  # free the old one before loading the next
                self._pipeline = load_model(self.settings)
                self._pipeline_model, self._pipeline_accel = self.settings.model, "off"
            if self._pipeline_accel != self.settings.accelerate:
                from ditflow.pipelines.acceleration import OFF, apply_acceleration

                acc = apply_acceleration(self._pipeline, self.settings.accelerate, self.settings.device_or_default())
                self._pipeline_accel = self.settings.accelerate
                if self.settings.accelerate != OFF:
                    self._emit(ProgressEvent(stage="execute", notice=True,
                                             message=f"accelerate {self.settings.accelerate}: {acc.describe()}"))
            return self._pipeline

    @property
    def llm(self):
        if self._llm is None:
            from ditflow.agents.llm.base import make_backend

            self._llm = make_backend(self.settings.llm)
        return self._llm

    def warm_up(self) -> None:
        """Import the agents and load the pipeline now (chat does this while the user types)."""
        import ditflow.agents.graph  # noqa: F401  (the heavy imports: langgraph, diffusers, torch)

        _ = self.llm, self.pipeline

    # turns ---------------------------------------------------------------------
    def attach(self, path: str | Path) -> Path:
        """Validate an image and queue it as an input of the next `chat()`."""
        self.attachments.append(self._check_image(path))
        return self.attachments[-1]

    def chat(self, instruction: str, images: Iterable[str | Path] = (), *, seed: int | None = None,
             on_progress: Progress | None = None) -> Turn:
        """Run one turn of the conversation and return it; images plus any `attach()`ed ones are its inputs.

        Raises ValueError for bad input (empty or too long instruction, unreadable image, too many images),
        `TurnCancelled` after `cancel()`. A turn the agents could not complete comes back with `turn.error` set.
        """
        instruction = self._check_instruction(instruction)
        inputs = self.attachments + [self._check_image(p) for p in images]
        self._check_count(inputs)
        with self._turn_guard(on_progress):
            if self.meta is None:
                self.meta = self.store.create(model=self.settings.model, llm=self.settings.llm)
            meta = self.meta
            n = meta.next_turn
            inputs = [self._keep(p) for p in inputs]
            out = self.store.turn_dir(meta.id, n)
            shutil.rmtree(out, ignore_errors=True)  # left by a turn that crashed before it was recorded
            try:
                record = self._run_turn(meta.id, instruction, inputs, out, self._session_checkpointer(),
                                        seed=self.settings.seed + n - 1 if seed is None else seed)
            except BaseException:
                shutil.rmtree(out, ignore_errors=True)  # nothing partial stays behind a cancelled turn
                raise
            if record.turn == 0:  # "undo" said as an instruction: the graph dropped its last turn
                shutil.rmtree(out, ignore_errors=True)
                if record.error is None and meta.turns:
                    meta.turns.pop()
                    self.store.save(meta)
                return Turn(record, out)
            record = record.model_copy(update={"turn": n})
            self.store.write_turn(meta.id, n, record)
            turn = Turn(record, out)
            turn.save(out, settings=self.settings)
            meta.turns.append(n)
            meta.next_turn = n + 1
            meta.title = meta.title or instruction[:60]
            self.store.save(meta)
            self.attachments = []
            self._emit(ProgressEvent(stage="save", message=f"turn {n} saved: {len(record.images)} image(s)"))
            return turn

    def run(self, instruction: str, images: Iterable[str | Path] = (), out_dir: str | Path | None = None, *,
            seed: int | None = None, task: dict | None = None, on_progress: Progress | None = None) -> Turn:
        """One-shot: a fresh conversation whose outputs, plan, article and manifest go to `out_dir`.

        Used by `ditflow run`, batch tasks and IDEA-Bench cases; the Session's own conversation is untouched.
        """
        from langgraph.checkpoint.memory import InMemorySaver

        instruction = self._check_instruction(instruction)
        inputs = [self._check_image(p) for p in images]
        self._check_count(inputs)
        out = Path(out_dir or self.settings.output_dir)
        with self._turn_guard(on_progress):
            record = self._run_turn(f"run-{uuid.uuid4().hex[:12]}", instruction, inputs, out, InMemorySaver(),
                                    seed=self.settings.seed if seed is None else seed)
            turn = Turn(record, out)
            turn.save(out, settings=self.settings, task=task)
            if record.images:
                self._emit(ProgressEvent(stage="done", message=f"{len(record.images)} image(s) saved"))
            return turn

    def stream(self, instruction: str, images: Iterable[str | Path] = (), **kwargs) -> Iterator[ProgressEvent | Turn]:
        """`chat()` as an iterator: yields each ProgressEvent as it happens, then the finished Turn.

        Closing the iterator early cancels the turn.
        """
        items: queue.Queue = queue.Queue()
        done = object()

        def work():
            try:
                items.put(self.chat(instruction, images, on_progress=items.put, **kwargs))
            except BaseException as e:  # handed to the consumer's thread and re-raised there
                items.put(_Raised(e))
            finally:
                items.put(done)

        worker = threading.Thread(target=work, name="ditflow-turn", daemon=True)
        worker.start()
        try:
            while (item := items.get()) is not done:
                if isinstance(item, _Raised):
                    raise item.error
                yield item
        finally:
            if worker.is_alive():
                self.cancel()
            worker.join()

    def cancel(self) -> None:
        """Stop the running turn at its next progress event (thread-safe). The session stays as it was."""
        self._cancel.set()

    @property
    def history(self) -> list[Turn]:
        if self.meta is None:
            return []
        return [Turn(self.store.read_turn(self.meta.id, n), self.store.turn_dir(self.meta.id, n))
                for n in self.meta.turns]

    @property
    def last(self) -> Turn | None:
        if not self.meta or not self.meta.turns:
            return None
        n = self.meta.turns[-1]
        return Turn(self.store.read_turn(self.meta.id, n), self.store.turn_dir(self.meta.id, n))

    def undo(self) -> Turn | None:
        """Drop the last turn from the conversation (its folder stays on disk). Returns the turn now last."""
        if not self.meta or not self.meta.turns:
            raise ValueError("nothing to undo: this conversation has no turns yet")
        from ditflow.agents import graph

        with self._busy_or_fail():
            graph.undo(self._runtime(), self.meta.id, self._session_checkpointer())
            self.meta.turns.pop()
            self.store.save(self.meta)
        return self.last

    # internals -----------------------------------------------------------------
    def _run_turn(self, thread_id: str, instruction: str, inputs: list[Path], out: Path, checkpointer, *,
                  seed: int) -> TurnRecord:
        from ditflow.agents import graph

        out.mkdir(parents=True, exist_ok=True)
        runtime = self._runtime(seed=seed)
        t0 = time.perf_counter()
        record = graph.run_turn(runtime, thread_id=thread_id, instruction=instruction, images=list(inputs),
                                out_dir=out, checkpointer=checkpointer)
        if not record.inputs:  # the manifest promises input hashes; fill them when the graph did not
            from ditflow.images import sha256_file

            record.inputs = [{"path": str(p), "sha256": sha256_file(p)} for p in inputs]
        record.model = record.model or self.settings.model
        record.llm = record.llm or self.settings.llm
        if self._pipeline is not None:
            from ditflow.pipelines.acceleration import applied

            record.acceleration = str(applied(self._pipeline))
        if not record.timings.total_s:
            record.timings.total_s = time.perf_counter() - t0
        return record

    def _runtime(self, seed: int | None = None):
        from ditflow.agents.graph import AgentRuntime

        return AgentRuntime(pipeline=lambda: self.pipeline, llm=self.llm,
                            seed=self.settings.seed if seed is None else seed,
                            verify=self.settings.verify, max_repairs=self.settings.max_repairs,
                            progress=self._emit)

    def _emit(self, event: ProgressEvent) -> None:
        if self._cancel.is_set():
            raise TurnCancelled("turn cancelled")
        for listener in (self.on_progress, self._call_listener):
            if listener is not None:
                listener(event)

    def _turn_guard(self, on_progress: Progress | None):
        return _TurnGuard(self, on_progress)

    def _busy_or_fail(self):
        return _TurnGuard(self, None)

    def _session_checkpointer(self):
        if self.meta is None:
            raise RuntimeError("no conversation yet")
        if self._checkpointer is None:
            import sqlite3

            from langgraph.checkpoint.sqlite import SqliteSaver

            path = self.store.checkpoint_path(self.meta.id)
            path.parent.mkdir(parents=True, exist_ok=True)
            # check_same_thread=False: stream() runs turns on a worker thread; _busy serialises them
            self._conn = sqlite3.connect(path, check_same_thread=False)
            self._checkpointer = SqliteSaver(self._conn)
        return self._checkpointer

    def _close_checkpointer(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = self._checkpointer = None

    def _check_instruction(self, instruction: str) -> str:
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError("the instruction is empty; say what to make, e.g. 'a red circle on the left'")
        instruction = instruction.strip()
        limit = self.settings.max_instruction_chars
        if len(instruction) > limit:
            raise ValueError(f"the instruction has {len(instruction)} characters; the limit is {limit}. "
                             "Shorten it or split it into several turns")
        return instruction

    def _check_image(self, path: str | Path) -> Path:
        from ditflow.images import load_image

        path = Path(path).expanduser()
        load_image(path, max_pixels=self.settings.max_input_pixels)  # raises ImageError(ValueError), clear text
        return path.resolve()

    def _check_count(self, inputs: list[Path]) -> None:
        if len(inputs) > self.settings.max_inputs:
            raise ValueError(f"{len(inputs)} input images; at most {self.settings.max_inputs} per turn")

    def _keep(self, path: Path) -> Path:
        """Copy an input into the session's attachments (content-addressed), so later turns and restarts can
        still read it after the original moves."""
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        kept = self.store.attachments_dir(self.meta.id) / f"{digest}{path.suffix.lower() or '.png'}"
        if not kept.exists():
            copy_atomic(path, kept)
        return kept


class _Raised:
    def __init__(self, error: BaseException):
        self.error = error


class _TurnGuard:
    """Serialise turns on a Session, install the per-call progress listener, clear the cancel flag."""

    def __init__(self, session: Session, listener: Progress | None):
        self.session, self.listener = session, listener

    def __enter__(self):
        if not self.session._busy.acquire(blocking=False):
            raise RuntimeError("this Session is already running a turn; wait for it or use another Session")
        self.session._cancel.clear()
        self.session._call_listener = self.listener
        return self

    def __exit__(self, *exc):
        self.session._call_listener = None
        self.session._cancel.clear()
        self.session._busy.release()


def load_model(settings: Settings):
    """The pipeline named by `settings.model`: `tiny` builds a random one offline, anything else goes through
    `ditflow.pipelines.loading.load_pipeline` (builtin, local folder, or hub id)."""
    from ditflow.logs import route_libraries

    route_libraries()  # before diffusers and transformers are first imported: their warnings go to the log
    if settings.model == TINY_MODEL:
        from ditflow.pipelines.tiny import tiny_flux_pipeline

        return tiny_flux_pipeline(seed=settings.seed).to(settings.device_or_default())
    from ditflow.pipelines.loading import load_pipeline

    return load_pipeline(settings.model, dtype=settings.torch_dtype(), device=settings.device_or_default(),
                         allow_pickle=settings.allow_pickle)
