"""Every cross-module data type, as pydantic models. LLM JSON becomes these at the boundary and nowhere else.

Sections: limits → agent data (ParsedRequest, Plan) → tool specs and records → verification → turns and events.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# ----------------------------------------------------------------------------- limits (named once)
MAX_INSTRUCTION_CHARS = 4000  # longer instructions are refused with a clear error, not truncated silently
MAX_OUTPUTS = 16  # outputs per turn
MAX_INPUTS = 8
MAX_PANELS = 9  # panels per canvas (configurable per call up to this hard cap)
MAX_PROMPT_CHARS = 2000
MAX_CANDIDATES = 16  # images per tool call, drawn in one batch for a caller to pick from
DEFAULT_REPAIRS, MAX_REPAIRS = 2, 8  # repair attempts per failed output: the default budget and its cap
# A canvas caption holds a layout tag, the overview and one tagged clause per panel, each up to MAX_PROMPT_CHARS.
MAX_CANVAS_PROMPT_CHARS = (MAX_PANELS + 1) * (MAX_PROMPT_CHARS + 32)
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # task / session / case ids that become folder names
_ID_RE = re.compile(ID_PATTERN)


def check_id(value: str) -> str:
    """Validate an id that becomes a path component; rejects '..', slashes, absolute paths."""
    if not isinstance(value, str) or not _ID_RE.match(value) or ".." in value:
        raise ValueError(f"invalid id {value!r}: use 1–64 letters, digits, '_', '.', '-' (no '..', no slashes)")
    return value


SafeId = Annotated[str, Field(pattern=ID_PATTERN), AfterValidator(check_id)]  # the pattern alone lets 'ok..' through


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def one_line(e: BaseException, limit: int | None = None) -> str:
    """An error in one line, for notes and the CLI: a pydantic error names each bad field and why (its own first
    line only counts them); anything else keeps its first line, or its type when it has no message."""
    if isinstance(e, ValidationError):
        text = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'value'}: {err['msg']}" for err in e.errors())
    else:
        text = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
    return text if limit is None or len(text) <= limit else text[:limit - 1] + "…"


# ----------------------------------------------------------------------------- agent data
TaskKind = Literal["generate", "edit", "restore", "guide", "article"]


MAX_SCENE_OBJECTS = 9  # objects an input image is read into: one per cell of the 3×3 grid


class SceneObject(Strict):
    """One object of an input image, as the detector (or a VLM) reads it, so a request can point at it: "the top
    left triangle" is the object whose shape and cell match. `id` is 1-based, in reading order (rows, then
    columns)."""

    id: int = Field(ge=1, le=MAX_SCENE_OBJECTS)
    shape: str = Field(max_length=40)
    color: str | None = Field(None, max_length=40)
    size: str | None = Field(None, max_length=40)
    position: str | None = Field(None, max_length=40)
    box: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1 px, when known


class InputImage(Strict):
    """What the parser knows of one input image (1-based index, as the user counts)."""

    index: int = Field(ge=1, le=MAX_INPUTS)
    description: str = Field(max_length=MAX_PROMPT_CHARS)
    degradations: list[str] = Field(default_factory=list)
    objects: list[SceneObject] = Field(default_factory=list, max_length=MAX_SCENE_OBJECTS,
                                       description="its objects, when it is a scene the reader knows")
    background: str | None = Field(None, max_length=40)


ObjectOp = Literal["recolor", "reshape", "resize", "move", "remove", "add", "swap", "duplicate", "background"]


class ObjectEdit(Strict):
    """One change to the objects of a source image. `targets` are `SceneObject.id`s of the source (none for add;
    two for swap); the other fields are the new values the op sets (a move's `position`, a recolour's `color`,
    an added or duplicated object's look and cell)."""

    op: ObjectOp
    targets: list[int] = Field(default_factory=list, max_length=MAX_SCENE_OBJECTS)
    shape: str | None = Field(None, max_length=40)
    color: str | None = Field(None, max_length=40)
    size: str | None = Field(None, max_length=40)
    position: str | None = Field(None, max_length=40)

    @model_validator(mode="after")
    def _targets_fit_op(self) -> ObjectEdit:
        need = {"add": (0, 0), "background": (0, 0), "swap": (2, 2)}.get(self.op, (1, MAX_SCENE_OBJECTS))
        if not need[0] <= len(self.targets) <= need[1]:
            raise ValueError(f"a {self.op} takes {need[0]}–{need[1]} target objects, got {len(self.targets)}")
        if self.op == "add" and not self.shape:
            raise ValueError("an add needs the shape of the object to add")
        if self.op == "background" and not self.color:
            raise ValueError("a background change needs the new background colour")
        return self


class OutputSpec(Strict):
    """One requested output. `description` is self-contained: it never says "image 2"."""

    index: int = Field(ge=1, le=MAX_OUTPUTS)
    description: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    sources: list[int] = Field(default_factory=list, description="1-based input images this output derives from")
    caption: str | None = Field(None, max_length=MAX_PROMPT_CHARS, description="story text for picture books")
    edits: list[ObjectEdit] = Field(default_factory=list, max_length=MAX_SCENE_OBJECTS,
                                    description="object-level changes to its one source (an edit of a known scene)")
    size: tuple[Annotated[int, Field(ge=1, le=4096)], Annotated[int, Field(ge=1, le=4096)]] | None = Field(
        None, description="(width, height) in px, when the request names the output's size")
    scale: float | None = Field(None, gt=0, le=16, description='its size as a multiple of its source\'s, when the '
                                'request names one ("4x bigger")')
    happens: str | None = Field(None, max_length=MAX_PROMPT_CHARS, description="what happens on this page of a "
                                "story or sequence, one sentence for its page text")
    derived_from: int | None = Field(None, ge=1, le=MAX_OUTPUTS, description="an earlier output of this turn that "
                                     "this one is an edit of (a step of the instruction: 'then it turns yellow')")


class ParsedRequest(Strict):
    task: TaskKind
    num_inputs: int = Field(ge=0, le=MAX_INPUTS)
    num_outputs: int = Field(ge=1, le=MAX_OUTPUTS)
    inputs: list[InputImage] = Field(default_factory=list)
    outputs: list[OutputSpec]
    title: str | None = Field(None, max_length=200)
    shared: str | None = Field(None, max_length=MAX_PROMPT_CHARS, description="what all outputs share")
    clarification: str | None = Field(None, description="set when the request cannot be done as asked")

    @model_validator(mode="after")
    def _consistent(self) -> "ParsedRequest":
        if len(self.outputs) != self.num_outputs:
            raise ValueError(f"num_outputs is {self.num_outputs} but {len(self.outputs)} outputs are described")
        if len(self.inputs) != self.num_inputs:
            raise ValueError(f"num_inputs is {self.num_inputs} but {len(self.inputs)} inputs are described")
        if [o.index for o in self.outputs] != list(range(1, self.num_outputs + 1)):
            raise ValueError("outputs must be numbered 1..num_outputs in order")
        for o in self.outputs:
            bad = [s for s in o.sources if not 1 <= s <= self.num_inputs]
            if bad:
                raise ValueError(f"output {o.index} refers to input(s) {bad}, but {self.num_inputs} were given")
        return self

    @model_validator(mode="after")
    def _derived_from_earlier(self) -> "ParsedRequest":
        for o in self.outputs:
            if o.derived_from is not None and not o.derived_from < o.index:
                raise ValueError(f"output {o.index} is derived from output {o.derived_from}; it must be an earlier "
                                 "output of this turn")
        return self


class FrameOutput(Strict):
    """One output as the trained parse model writes it: a scene for a new image, or a source and its edits."""

    scene: str | None = Field(None, max_length=MAX_PROMPT_CHARS, description="the new image in canonical words")
    source: int | None = Field(None, ge=1, le=MAX_INPUTS, description="the 1-based input it is made from")
    edits: list[ObjectEdit] = Field(default_factory=list, max_length=MAX_SCENE_OBJECTS)


class ParseFrame(Strict):
    """The short form of a `ParsedRequest` that the trained parse model writes (issue 32): only what the words
    decide. Descriptions of edited images, inputs, counts and titles follow from it and the context
    (`agents/frames.py`), so the model writes few tokens and cannot contradict itself."""

    task: Literal["generate", "edit", "restore", "guide", "article", "clarify"]
    outputs: list[FrameOutput] = Field(default_factory=list, max_length=MAX_OUTPUTS)
    restore: Literal["auto", "noise", "blur", "sr2", "sr4", "jpeg", "inpaint"] | None = None


ToolName = Literal["generate", "group", "edit", "inpaint", "restore", "guide"]


class Ref(Strict):
    """A reference panel: an input image or an earlier output of this turn (or of the previous turn)."""

    kind: Literal["input", "output", "previous"]
    index: int = Field(ge=1, le=MAX_OUTPUTS)


class Step(Strict):
    tool: ToolName
    prompt: str = Field(max_length=MAX_CANVAS_PROMPT_CHARS, description="panel prompt, with layout tags for groups")
    outputs: list[int] = Field(min_length=1, max_length=MAX_PANELS, description="1-based output indices produced")
    refs: list[Ref] = Field(default_factory=list, max_length=MAX_PANELS)
    params: dict[str, float | int | str | bool] = Field(default_factory=dict)


class Plan(Strict):
    steps: list[Step] = Field(min_length=1)
    article: bool = False

    def check_against(self, parsed: ParsedRequest) -> "Plan":
        """Every output produced exactly once; refs only to inputs that exist or outputs made earlier; an article
        exactly when the request asks for one."""
        if self.article != (parsed.task == "article"):
            raise ValueError(f"plan says article={self.article}, but the request's task is {parsed.task}")
        made: list[int] = []
        for s in self.steps:
            for r in s.refs:
                if r.kind == "input" and r.index > parsed.num_inputs:
                    raise ValueError(f"step refers to input {r.index}, but {parsed.num_inputs} were given")
                if r.kind == "output" and r.index not in made:
                    raise ValueError(f"step refers to output {r.index} before it is made")
            made += s.outputs
        if sorted(made) != list(range(1, parsed.num_outputs + 1)):
            raise ValueError(f"plan makes outputs {sorted(made)}, expected 1..{parsed.num_outputs} once each")
        return self


# ----------------------------------------------------------------------------- tool specs and records
class ToolSpec(Strict):
    seed: int = Field(0, ge=0, le=2**32 - 1)
    steps: int | None = Field(None, ge=1, le=200)
    guidance_scale: float | None = Field(None, ge=0.0, le=30.0)


class GenerateSpec(ToolSpec):
    prompt: str = Field(min_length=1, max_length=MAX_CANVAS_PROMPT_CHARS)
    height: int | None = Field(None, ge=16, le=4096, multiple_of=16)
    width: int | None = Field(None, ge=16, le=4096, multiple_of=16)
    classifier_guidance: float = Field(0.0, ge=0.0, le=100.0)
    # candidates drawn in one batched call (diffusers' num_images_per_prompt), for a caller that picks among them
    num_images: int = Field(1, ge=1, le=MAX_CANDIDATES)

    @model_validator(mode="after")
    def _one_image_when_guided(self) -> GenerateSpec:
        if self.classifier_guidance > 0 and self.num_images > 1:
            raise ValueError("classifier guidance draws one image at a time; set num_images to 1")
        return self


class GroupSpec(ToolSpec):
    """In-context group: references on the canvas, targets generated. Prompts are per panel (refs first)."""

    overview: str = Field("", max_length=MAX_PROMPT_CHARS)
    panel_prompts: list[str] = Field(min_length=1, max_length=MAX_PANELS)
    n_refs: int = Field(0, ge=0, le=MAX_PANELS - 1)
    max_panels: int = Field(4, ge=1, le=MAX_PANELS)
    # one panel's size, px; None: the model's native panel, shrunk so the canvas stays near its native area
    height: int | None = Field(None, ge=16, le=4096, multiple_of=16)
    width: int | None = Field(None, ge=16, le=4096, multiple_of=16)

    @model_validator(mode="after")
    def _both_sides_or_neither(self) -> GroupSpec:
        if (self.width is None) != (self.height is None):
            raise ValueError("a panel size needs both width and height")
        return self


class EditSpec(ToolSpec):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    mode: Literal["sdedit", "inpaint", "in-context", "move"] = "sdedit"
    strength: float = Field(0.6, gt=0.0, le=1.0)
    box: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1 in px
    target: str | None = Field(None, description='detector mask for builtin scenes, e.g. "the red circle"')
    # mode "move": the masked pixels travel by (dx, dy) px; the prompt says what fills the place they leave
    offset: tuple[int, int] | None = None
    num_images: int = Field(1, ge=1, le=MAX_CANDIDATES)  # inpaint and sdedit: candidates from one batched call

    @model_validator(mode="after")
    def _offset_goes_with_move(self) -> EditSpec:
        if (self.mode == "move") != (self.offset is not None):
            raise ValueError("a move needs an offset (dx, dy) in px, and only a move takes one")
        if self.num_images > 1 and self.mode not in ("inpaint", "sdedit"):
            raise ValueError(f"a {self.mode} edit makes one image; num_images > 1 needs mode inpaint or sdedit")
        return self


class RestoreSpec(ToolSpec):
    degradation: Literal["auto", "noise", "blur", "sr2", "sr4", "jpeg", "inpaint"] = "auto"
    severity: float | None = Field(None, ge=0.0)
    # the restored size in px (one of them: the other keeps the aspect); None: what the degradation gives
    width: int | None = Field(None, ge=1, le=4096)
    height: int | None = Field(None, ge=1, le=4096)


class GuideSpec(ToolSpec):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    target: dict[str, str] = Field(default_factory=dict, description='attribute → label, e.g. {"color": "red"}')
    # Beside CFG, 5 broke 8 of 27 right samples and 2 broke 2; with CFG off (guidance_scale 1), 5 lifts accuracy
    # by 10.7 points (docs/benchmarks.md, Toolkit). The default is the one that is safe beside CFG.
    scale: float = Field(2.0, ge=0.0, le=100.0)


class ToolRecord(BaseModel):
    """What a tool did: enough to reproduce it. Returned by every toolkit function beside its images."""

    tool: str
    spec: dict[str, Any] = Field(default_factory=dict)
    seconds: float = 0.0
    details: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None


# ----------------------------------------------------------------------------- verification
ClaimStatus = Literal["pass", "fail", "not_checkable", "unverified"]


class Claim(BaseModel):
    text: str
    attribute: str  # object | color | shape | size | position | count | background | panel | other
    status: ClaimStatus
    seen: str | None = None  # what the verifier saw instead, when it failed
    want: str | None = None  # what the description asks of this claim's subject, in the verifier's words
    box: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1 px of the subject seen, when the verifier knows


class Verdict(BaseModel):
    output: int
    claims: list[Claim] = Field(default_factory=list)
    verifier: str = ""
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.claims) and all(c.status == "pass" for c in self.claims)

    @property
    def score(self) -> float:
        return sum(c.status == "pass" for c in self.claims) / max(1, len(self.claims))


class RepairAttempt(BaseModel):
    """One repair of one output (issue 6): what was tried, why, the candidate file and its verdict."""

    output: int
    attempt: int = Field(ge=1)  # 1..budget
    base: int = Field(0, ge=0)  # the attempt it repaired (0: the original), the best candidate at the time
    repair: str  # move | count | inpaint | regroup | guide | regenerate
    reason: str = ""  # the failed claims it aimed at
    file: str = ""  # the candidate image, relative to the turn folder
    verdict: Verdict | None = None
    tool_call: ToolRecord | None = None
    chosen: bool = False  # this candidate became the output


# ----------------------------------------------------------------------------- turns and events
# How the error of a turn refused for asking what the model cannot draw begins (agents/scope.py), so that a CLI
# tells it from a failure of the agents.
OUT_OF_WORLD = "outside what this model draws:"
CLARIFY = "clarification needed:"  # a turn's error when the parser asks a question instead of drawing
Stage = Literal["parse", "plan", "execute", "denoise", "verify", "repair", "article", "save", "done", "error"]


class ProgressEvent(BaseModel):
    """Streamed to callbacks/iterators so a host app can show its own progress."""

    stage: Stage
    message: str = ""
    step: int = 0
    total: int = 0
    output: int | None = None
    # a decision the user should read as a line, not a passing status: an LLM fallback, a referee overrule, a part
    # of the request left out
    notice: bool = False


class TurnTimings(BaseModel):
    parse_s: float = 0.0
    plan_s: float = 0.0
    execute_s: float = 0.0
    verify_s: float = 0.0
    repair_s: float = 0.0
    article_s: float = 0.0
    total_s: float = 0.0


class TurnRecord(BaseModel):
    """One finished turn, as saved in manifests and the session history (images as file names)."""

    turn: int
    instruction: str
    inputs: list[dict[str, Any]] = Field(default_factory=list)  # {"path", "sha256"}
    parsed: ParsedRequest | None = None
    plan: Plan | None = None
    images: list[str] = Field(default_factory=list)
    tool_calls: list[ToolRecord] = Field(default_factory=list)
    verdicts: list[Verdict] = Field(default_factory=list)
    repairs: list[RepairAttempt] = Field(default_factory=list)
    article_markdown: str | None = None
    model: str = ""
    llm: str = ""
    acceleration: str = Field("", description="what ran accelerated (`pipelines/acceleration.py`): 'off', or "
                              "e.g. 'stitch=0.4,local=student' for the setting 'auto'")
    seed: int = 0
    timings: TurnTimings = Field(default_factory=TurnTimings)
    error: str | None = None
    notes: list[str] = Field(default_factory=list, description="decisions made visibly: referee overrules, "
                             "re-plans, template fallbacks")
    left_out: list[str] = Field(default_factory=list, description="parts of the request the outputs do not show, "
                                "because this model cannot draw them ('a cat', 'made of glass')")

    @field_validator("instruction")
    @classmethod
    def _bounded(cls, v: str) -> str:
        return v[: MAX_INSTRUCTION_CHARS * 30]  # stored bounded; validation of length happens at input


class RunManifest(TurnRecord):
    """`manifest.json` beside a run's outputs (`ditflow run`, batch tasks, sessions): the turn, plus what is needed
    to check the files and reproduce them. Written last, so its presence means the folder is complete."""

    ditflow_version: str = ""
    created: float = 0.0
    settings: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict, description="file name → sha256 of every output file")
    task: dict[str, Any] | None = Field(None, description="the batch task this run came from, if any")
