"""The agents as one langgraph `StateGraph`: parse → plan → execute (→ verify) (→ article) → finish.

Before planning, a request to a shapes-world model is checked against the world (`agents.scope`): one that names
nothing the model draws ends the turn with an error that starts `OUT_OF_WORLD`, and the parts of a mixed one that
the world does not hold are left out, with a note. Notes the user should read (LLM fallbacks, referee overrules,
parts left out) also go out as `notice` progress events.

The state is checkpointed per `thread_id` by whatever checkpointer the caller passes (SqliteSaver for sessions),
so a conversation keeps its memory across turns and processes: "make page 3 green" reads the current set of
images from the last turn, and `undo` drops that turn. State values are the JSON form of the `ditflow.schemas`
models (validated back into them at each node), so any checkpointer stores them without custom serialisers.
The live objects of a turn (pipeline, LLM backend, progress callback) travel as the graph's runtime context and
are never checkpointed.
"""
from __future__ import annotations

import base64
import io
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from ditflow.agents.parsing import (Context, GalleryItem, InstructionError, Parse, check_instruction, next_gallery,
                                    parse)
from ditflow.agents.repair import REPAIR_STEP_SHARE, after_verify, repair_node, verify_node
from ditflow.agents.state import TurnState, last_turn, turn_inputs
from ditflow.schemas import (CLARIFY, DEFAULT_REPAIRS, MAX_INPUTS, InputImage, ParsedRequest, Plan, ProgressEvent,
                             RepairAttempt, ToolRecord, TurnRecord, TurnTimings, Verdict)

UNDO_RE = re.compile(r"^\s*(?:please\s+)?(?:undo|go back|revert|take that back|undo (?:that|the last (?:turn|change|"
                     r"step)))\s*[.!]?\s*$", re.I)
ARTICLE_FILE = "article.md"


# ----------------------------------------------------------------------------- runtime (never checkpointed)
@dataclass
class AgentRuntime:
    """What a turn runs with.

    Args:
        pipeline: a diffusers pipeline, or a zero-argument callable that loads it (called only when a step runs).
        llm: an `LLMBackend` from `make_backend` (None: the rules).
        seed: base seed; step k of a turn uses seed + 1000·k.
        verify: verify every output after execution and repair the failed ones (`agents.repair`).
        progress: called with every `ProgressEvent`.
        verifier: a `agents.verify.Verifier`; None picks the default for the pipeline and LLM.
        max_repairs: repair attempts per failed output (the budget; 0 only verifies).
        repair_step_share: a repair's denoising steps, as a share of the pipeline's default (`agents.repair`).
        repair_candidates: images each inpaint or redraw of a repair makes in one batch, the verifier keeping the
            best (None: 3 where the shapes-world detector verifies, else 1).
    """

    pipeline: Any = None
    llm: Any = None
    seed: int = 0
    verify: bool = False
    progress: Callable[[ProgressEvent], None] | None = None
    verifier: Any = None
    max_repairs: int = DEFAULT_REPAIRS
    repair_step_share: float = REPAIR_STEP_SHARE
    repair_candidates: int | None = None

    def emit(self, event: ProgressEvent) -> None:
        if self.progress is not None:
            self.progress(event)

    def get_pipeline(self):
        p = self.pipeline
        if p is None:
            raise ValueError("no pipeline: give AgentRuntime a diffusers pipeline or a loader")
        return p if hasattr(p, "components") else p()  # a DiffusionPipeline has `components`; a loader does not

    @property
    def llm_name(self) -> str:
        return getattr(self.llm, "name", "rules")


# ----------------------------------------------------------------------------- state (its type: agents/state.py)
def context_of(state: TurnState, inputs: list[InputImage]) -> Context:
    """The parser's view of this turn: the instruction, the described inputs, and the current set of images."""
    last = last_turn(state)
    gallery = [_read_objects(GalleryItem.model_validate(g)) for g in last["gallery"]] if last else []
    prev = None  # the latest turn that made a new set (not an edit of one) sets the story a follow-up continues
    for t in reversed(state.get("turns") or []):
        p = TurnRecord.model_validate(t["record"]).parsed
        if p and not p.clarification and p.task in ("generate", "article", "guide"):
            prev = p
            break
    return Context(instruction=state["instruction"], inputs=inputs, gallery=gallery,
                   previous_task=prev.task if prev else None, previous_shared=prev.shared if prev else None,
                   previous_title=prev.title if prev else None)


def _read_objects(item: GalleryItem) -> GalleryItem:
    """A gallery image read into its objects (milliseconds, by the detector), so a follow-up can point at one."""
    from ditflow.agents.describe import scene_objects
    from ditflow.images import ImageError, load_image

    if item.objects or not item.path:
        return item
    try:
        read = scene_objects(load_image(item.path))
    except (ImageError, OSError):  # gone since: the follow-up works on its description
        return item
    return item.model_copy(update={"background": read[0], "objects": read[1]}) if read else item


def _timings(state: TurnState, **kw) -> dict:
    return {**(state.get("timings") or {}), **kw}


def _data_url(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


# ----------------------------------------------------------------------------- nodes
def parse_node(state: TurnState, runtime: Runtime[AgentRuntime]) -> dict:
    from ditflow.agents.describe import describe_image
    from ditflow.images import load_image

    rt = runtime.context
    t0 = time.perf_counter()
    rt.emit(ProgressEvent(stage="parse", message="reading the instruction"))
    images = [load_image(p) for p in state.get("image_paths") or []]
    inputs = [describe_image(im, i + 1) for i, im in enumerate(images)]
    urls = [_data_url(im) for im in images] if getattr(rt.llm, "supports_images", False) else None
    p = parse(context_of(state, inputs), rt.llm, image_urls=urls)
    for note in p.notes:  # fallbacks and overrules: the user reads each one
        rt.emit(ProgressEvent(stage="parse", message=note, notice=True))
    req = p.request
    error = f"{CLARIFY} {req.clarification}" if req.clarification else None
    if not error:
        rt.emit(ProgressEvent(stage="parse", message=f"{req.task}: {req.num_outputs} output(s)"))
    return {"inputs": [i.model_dump(mode="json") for i in inputs],
            "parse": {"request": req.model_dump(mode="json"), "uses_gallery": p.uses_gallery, "notes": p.notes,
                      "valid": p.valid_before_fallback, "source": p.source},
            "notes": list(p.notes), "error": error, "timings": _timings(state, parse_s=time.perf_counter() - t0)}


def _llm_fell_back(state: TurnState, rt: AgentRuntime) -> bool:
    """Whether this turn's parse already fell back to the rules: the user has been told the LLM does not answer,
    so the later agents' fallbacks are not told again (they stay in the notes)."""
    return rt.llm_name != "rules" and not (state.get("parse") or {}).get("valid", True)


def plan_node(state: TurnState, runtime: Runtime[AgentRuntime]) -> dict:
    from ditflow.agents import scope
    from ditflow.agents.planning import describe_plan, make_plan
    from ditflow.pipelines.loading import info_of

    rt = runtime.context
    t0 = time.perf_counter()
    req = ParsedRequest.model_validate(state["parse"]["request"])
    update: dict[str, Any] = {}
    notes = list(state.get("notes") or [])
    found = scope.check(req, state["instruction"])
    # the words first: the model is loaded here only for a request that names something outside the shapes world
    if found and scope.shapes_world(info_of(rt.get_pipeline())):
        if len(found.outside) == req.num_outputs:  # nothing to draw: refused, not drawn as an empty canvas
            return {"plan": None, "error": scope.refusal(req, found),
                    "timings": _timings(state, plan_s=time.perf_counter() - t0)}
        update["left_out"] = scope.left_out_parts(req, found)
        req, left = scope.drawable_part(req, found)
        for note in left:
            rt.emit(ProgressEvent(stage="plan", message=note, notice=True))
        notes += left
        update["parse"] = {**state["parse"], "request": req.model_dump(mode="json")}
    try:
        planned = make_plan(req, rt.llm)
    except ValueError as e:  # the rules plan itself failed validation: a bug to report, not to hide
        return {"plan": None, "error": f"planning failed: {e}", "timings": _timings(state, plan_s=time.perf_counter() - t0)}
    for note in planned.notes:
        rt.emit(ProgressEvent(stage="plan", message=note, notice=not _llm_fell_back(state, rt)))
    rt.emit(ProgressEvent(stage="plan", message=describe_plan(planned.plan)))
    return {**update, "plan": planned.plan.model_dump(mode="json"), "notes": notes + planned.notes,
            "timings": _timings(state, plan_s=time.perf_counter() - t0)}


def execute_node(state: TurnState, runtime: Runtime[AgentRuntime]) -> dict:
    from ditflow.agents.execution import execute
    from ditflow.images import save_image_atomic

    rt = runtime.context
    t0 = time.perf_counter()
    req = ParsedRequest.model_validate(state["parse"]["request"])
    plan = Plan.model_validate(state["plan"])
    done = execute(rt.get_pipeline(), plan, req, turn_inputs(state), seed=rt.seed, emit=rt.emit)
    out_dir = Path(state["out_dir"])
    files: dict[str, str] = {}
    for index in sorted(done.images):  # saved in output order, as 0001.png, 0002.png, ...
        name = f"{index:04d}.png"
        save_image_atomic(done.images[index], out_dir / name)
        files[str(index)] = name
        rt.emit(ProgressEvent(stage="save", message=name, output=index))
    return {"files": files, "tool_calls": [r.model_dump(mode="json") for r in done.records],
            "notes": state.get("notes", []) + done.notes, "error": done.error,
            "timings": _timings(state, execute_s=time.perf_counter() - t0)}


def article_node(state: TurnState, runtime: Runtime[AgentRuntime]) -> dict:
    from ditflow.agents.article import Page, template_caption, write_article

    rt = runtime.context
    t0 = time.perf_counter()
    rt.emit(ProgressEvent(stage="article", message="writing the article"))
    req = ParsedRequest.model_validate(state["parse"]["request"])
    out_dir = Path(state["out_dir"])
    files = {int(k): v for k, v in (state.get("files") or {}).items()}
    before: list[Page] = []
    last = last_turn(state)
    if state["parse"]["uses_gallery"] and last:  # "add two more pages": the whole book, new pages at the end
        for k, g in enumerate(GalleryItem.model_validate(x) for x in last["gallery"]):
            caption = g.caption or template_caption(k, len(last["gallery"]) + 1, g.description)
            before.append(Page(k + 1, os.path.relpath(g.path, out_dir), g.description, caption))
    art = write_article(req, files, rt.llm, before=before)
    for note in art.notes:
        rt.emit(ProgressEvent(stage="article", message=note, notice=not _llm_fell_back(state, rt)))
    write_text_atomic(out_dir / ARTICLE_FILE, art.markdown)
    captions = {str(o.index): p.caption for o, p in zip(sorted(req.outputs, key=lambda o: o.index),
                                                        art.pages[len(before):])}
    return {"article": art.markdown, "captions": captions, "notes": state.get("notes", []) + art.notes,
            "timings": _timings(state, article_s=time.perf_counter() - t0)}


def finish_node(state: TurnState, runtime: Runtime[AgentRuntime]) -> dict:
    """Record the turn and advance the current set of images."""
    from ditflow.images import sha256_file

    rt = runtime.context
    turns = list(state.get("turns") or [])
    last = last_turn(state)
    gallery = [GalleryItem.model_validate(g) for g in last["gallery"]] if last else []
    req = ParsedRequest.model_validate(state["parse"]["request"]) if state.get("parse") else None
    files = {int(k): v for k, v in (state.get("files") or {}).items()}
    out_dir = Path(state["out_dir"])
    error = state.get("error")
    if req is not None and not error and len(files) == req.num_outputs:
        captions = state.get("captions") or {}
        outs = [o.model_copy(update={"caption": captions.get(str(o.index), o.caption)}) for o in req.outputs]
        p = Parse(req.model_copy(update={"outputs": outs}), state["parse"]["uses_gallery"])
        gallery = next_gallery(gallery, p, [str(out_dir / files[o.index]) for o in req.outputs])
    timings = TurnTimings(**state.get("timings") or {})
    timings.total_s = sum(getattr(timings, f) for f in ("parse_s", "plan_s", "execute_s", "verify_s", "repair_s",
                                                               "article_s"))
    record = TurnRecord(
        turn=len(turns) + 1, instruction=state["instruction"],
        inputs=[{"path": p, "sha256": sha256_file(p)} for p in state.get("image_paths") or []],
        parsed=req, plan=Plan.model_validate(state["plan"]) if state.get("plan") else None,
        images=[files[k] for k in sorted(files)],
        tool_calls=[ToolRecord.model_validate(r) for r in state.get("tool_calls") or []],
        verdicts=[Verdict.model_validate(v) for v in state.get("verdicts") or []],
        repairs=[RepairAttempt.model_validate(r) for r in state.get("repairs") or []],
        article_markdown=state.get("article"), llm=rt.llm_name, seed=rt.seed, timings=timings, error=error,
        notes=state.get("notes") or [], left_out=state.get("left_out") or [])
    rt.emit(ProgressEvent(stage="error" if error else "done", message=error or f"{len(files)} image(s)"))
    turns.append({"record": record.model_dump(mode="json"),
                  "gallery": [g.model_dump(mode="json") for g in gallery]})
    return {"turns": turns}


# ----------------------------------------------------------------------------- wiring
def _after_parse(state: TurnState) -> str:
    return "finish" if state.get("error") else "plan"


def _after_plan(state: TurnState) -> str:
    return "finish" if state.get("error") else "execute"


def _after_execute(state: TurnState) -> str:
    if state.get("error"):
        return "finish"
    if state.get("verify"):
        return "verify"
    return "article" if (state.get("plan") or {}).get("article") else "finish"


def build_graph() -> StateGraph:
    g = StateGraph(TurnState, context_schema=AgentRuntime)
    for name, fn in (("parse", parse_node), ("plan", plan_node), ("execute", execute_node),
                     ("verify", verify_node), ("repair", repair_node), ("article", article_node),
                     ("finish", finish_node)):
        g.add_node(name, fn)
    g.add_edge(START, "parse")
    g.add_conditional_edges("parse", _after_parse, ["plan", "finish"])
    g.add_conditional_edges("plan", _after_plan, ["execute", "finish"])
    g.add_conditional_edges("execute", _after_execute, ["verify", "article", "finish"])
    g.add_conditional_edges("verify", after_verify, ["repair", "article", "finish"])
    g.add_edge("repair", "verify")
    g.add_edge("article", "finish")
    g.add_edge("finish", END)
    return g


_GRAPH = build_graph()


def _config(thread_id: str) -> dict:
    return {"configurable": {"thread_id": thread_id}}


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------- entry points
def history(thread_id: str, checkpointer) -> list[TurnRecord]:
    state = _GRAPH.compile(checkpointer=checkpointer).get_state(_config(thread_id)).values
    return [TurnRecord.model_validate(t["record"]) for t in state.get("turns") or []]


def undo(runtime: AgentRuntime, thread_id: str, checkpointer) -> TurnRecord | None:
    """Drop the last turn of `thread_id`; returns it (None when there was none). Its files are left on disk."""
    app = _GRAPH.compile(checkpointer=checkpointer)
    cfg = _config(thread_id)
    turns = list(app.get_state(cfg).values.get("turns") or [])
    if not turns:
        return None
    dropped = turns.pop()
    app.update_state(cfg, {"turns": turns}, as_node="finish")
    runtime.emit(ProgressEvent(stage="done", message=f"undid turn {len(turns) + 1}"))
    return TurnRecord.model_validate(dropped["record"])


def run_turn(runtime: AgentRuntime, *, thread_id: str, instruction: str, images: list[Path], out_dir: Path,
             checkpointer) -> TurnRecord:
    """Run one turn through the graph and return its record (error set when it could not be done).

    Raises ValueError (InstructionError, ImageError) for input that is bad before any agent runs: an empty or
    over-long instruction, too many images, an unreadable image.
    """
    from ditflow.images import load_image

    instruction = check_instruction(instruction)
    if len(images) > MAX_INPUTS:
        raise InstructionError(f"{len(images)} images were given; at most {MAX_INPUTS} per turn")
    for p in images:
        load_image(p)  # fails early with ImageError naming the file
    if UNDO_RE.match(instruction):
        dropped = undo(runtime, thread_id, checkpointer)
        return TurnRecord(turn=0, instruction=instruction, llm=runtime.llm_name, seed=runtime.seed,
                          error=None if dropped else "nothing to undo",
                          notes=[f"undid turn {dropped.turn}: {dropped.instruction!r}"] if dropped else [])
    app = _GRAPH.compile(checkpointer=checkpointer)
    fresh = {"instruction": instruction, "image_paths": [str(Path(p)) for p in images], "out_dir": str(out_dir),
             "verify": bool(runtime.verify), "inputs": [], "parse": {}, "plan": None, "files": {}, "tool_calls": [], "verdicts": [],
             "candidates": {}, "to_repair": [], "repairs": [], "article": None,
             "captions": {}, "notes": [], "left_out": [], "error": None, "timings": {}}
    state = app.invoke(fresh, _config(thread_id), context=runtime)
    return TurnRecord.model_validate(state["turns"][-1]["record"])
