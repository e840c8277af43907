"""Strategy planning: a `ParsedRequest` → a `Plan` of tool steps.

The rules planner is a pure function (style.md §8) and follows ChatDiT's referencing rules (arXiv 2412.12571,
§3.2), tightened:
- one output, no references → `generate`;
- outputs that share a subject (a picture book, a series, "the same square in three colours") → one in-context
  `group`, so the panels are drawn consistently; outputs beyond one step's panels continue in later steps that
  reference output 1 (the same anchor each time, so drift does not accumulate down a long book);
- independent outputs → one `generate` each;
- steps of the instruction ("draw X, then a second picture where it has turned yellow") → each later output an
  `edit` of the earlier output it continues (`OutputSpec.derived_from`);
- outputs derived from inputs → `edit` / `restore` per source, or a `group` with the inputs as references for
  variations; a restore-then-edit request is one `edit` step whose params ask for the restore first;
- `guide` → classifier-guided generation towards the colour, shape, position and size the description names.
A capable LLM may propose a plan instead; it is used only if it validates against the request
(`Plan.check_against`), and otherwise the rules plan is used and the reason noted.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from pydantic import ValidationError

from ditflow.agents import scene as sc
from ditflow.agents.llm.base import only_parses
from ditflow.agents.scene import split_degradations
from ditflow.toolkit import canvas as cv
from ditflow.schemas import MAX_PANELS, OutputSpec, ParsedRequest, Plan, Ref, Step, one_line

log = logging.getLogger(__name__)

GROUP_PANELS = 4  # panels per in-context canvas: the builtin model is trained on 1×1, 1×2, 2×1 and 2×2
# Edit strength per kind of change: a recolour keeps the layout (low), a move or an added object needs more noise.
EDIT_STRENGTH = {"color": 0.7, "background": 0.7, "size": 0.8, "shape": 0.85, "position": 0.9, "add": 0.85,
                 "remove": 0.85, "other": 0.6}


def group_prompt(overview: str, clauses: list[str]) -> str:
    """The tagged caption of one canvas, for the record and for the LLM to read (the toolkit lays it out)."""
    return cv.group_prompt(cv.choose_grid(len(clauses), max_panels=MAX_PANELS), overview, clauses)


def _changed(before: str, after: str) -> str:
    """Which attribute an edit changes, to pick the edit strength."""
    a, b = sc.parse_scene(before), sc.parse_scene(after)
    if not a.things or not b.things:
        return "other"
    if len(b.things) > len(a.things):
        return "add"
    if len(b.things) < len(a.things):
        return "remove"
    for field_ in ("position", "shape", "size", "color"):
        if any(getattr(x, field_) != getattr(y, field_) for x, y in zip(a.things, b.things)):
            return field_
    return "background" if a.background != b.background else "other"


def _restore_step(req: ParsedRequest, o: OutputSpec) -> Step:
    """A restoration of the output's source; the size the request names rides along as width/height or scale
    (the executor knows the image, and the model's panel, to settle the rest)."""
    src = o.sources[0]
    degr = req.inputs[src - 1].degradations
    params: dict = {"degradation": degr[0] if degr else "auto"}
    if o.size:
        params["width"], params["height"] = o.size
    elif o.scale:
        params["scale"] = o.scale
    return Step(tool="restore", prompt=o.description, outputs=[o.index], refs=[Ref(kind="input", index=src)],
                params=params)


def _edit_step(req: ParsedRequest, o: OutputSpec) -> Step:
    src = o.sources[0]
    before, degr = split_degradations(req.inputs[src - 1].description)
    kind = _changed(before, o.description)
    params: dict = {"mode": "sdedit", "strength": EDIT_STRENGTH[kind], "change": kind}
    if o.edits:  # object-level: only the objects referred to are redrawn, moved or removed (agents/object_edit.py)
        params = {"mode": "objects", "change": "+".join(dict.fromkeys(e.op for e in o.edits))}
    degr = degr + req.inputs[src - 1].degradations
    if degr:  # restore first, then edit (issue 5: "mixes tools: restore, then edit")
        params["restore_first"] = degr[0]
    return Step(tool="edit", prompt=o.description, outputs=[o.index], refs=[Ref(kind="input", index=src)],
                params=params)


def _derived_step(req: ParsedRequest, o: OutputSpec) -> Step:
    """A step of the instruction ("then it turns yellow"): an edit of the earlier output it continues, so the
    picture keeps what the step does not change."""
    kind = _changed(req.outputs[o.derived_from - 1].description, o.description)
    return Step(tool="edit", prompt=o.description, outputs=[o.index], refs=[Ref(kind="output", index=o.derived_from)],
                params={"mode": "sdedit", "strength": EDIT_STRENGTH[kind], "change": kind})


def _guide_step(o: OutputSpec) -> Step:
    s = sc.parse_scene(o.description)
    params: dict = {}
    if s.things:
        t = s.things[0]
        if t.color:
            params["target_color"] = t.color
        params["target_shape"] = t.shape
    return Step(tool="guide", prompt=o.description, outputs=[o.index], params=params)


def _group_steps(req: ParsedRequest, outputs: list[OutputSpec], refs: list[Ref], ref_texts: list[str]) -> list[Step]:
    """Consistent outputs as in-context groups: the first canvas from text (or the given references), later
    ones anchored on output 1 when nothing else anchors them."""
    overview = req.shared or ""
    steps: list[Step] = []
    todo = list(outputs)
    room = GROUP_PANELS - len(refs)
    if room < 1:  # more references than a canvas holds: keep the first ones
        refs, ref_texts, room = refs[:GROUP_PANELS - 1], ref_texts[:GROUP_PANELS - 1], 1
    first, todo = todo[:room], todo[room:]
    steps.append(Step(tool="group", prompt=group_prompt(overview, ref_texts + [o.description for o in first]),
                      outputs=[o.index for o in first], refs=refs))
    anchor_refs = refs or [Ref(kind="output", index=first[0].index)]
    anchor_texts = ref_texts or [first[0].description]
    while todo:
        room = min(GROUP_PANELS, MAX_PANELS) - len(anchor_refs)
        chunk, todo = todo[:room], todo[room:]
        steps.append(Step(tool="group", prompt=group_prompt(overview, anchor_texts + [o.description for o in chunk]),
                          outputs=[o.index for o in chunk], refs=anchor_refs))
    return steps


def plan_rules(req: ParsedRequest) -> Plan:
    """The deterministic plan for a parsed request (a request with a clarification has no plan)."""
    if req.clarification:
        raise ValueError(f"the request needs clarification first: {req.clarification}")
    outs = req.outputs
    if req.task == "restore":
        steps = [_restore_step(req, o) for o in outs]
    elif req.task == "edit":
        steps = [_edit_step(req, o) if o.sources else Step(tool="generate", prompt=o.description, outputs=[o.index])
                 for o in outs]
    elif req.task == "guide":
        steps = [_guide_step(o) for o in outs]
    else:  # generate | article
        sources = sorted({s for o in outs for s in o.sources})
        if any(o.derived_from for o in outs) and not sources:  # steps: each later picture an edit of an earlier one
            steps = [_derived_step(req, o) if o.derived_from else Step(tool="generate", prompt=o.description,
                                                                         outputs=[o.index]) for o in outs]
        elif sources:
            refs = [Ref(kind="input", index=s) for s in sources]
            texts = [split_degradations(req.inputs[s - 1].description)[0] for s in sources]
            steps = _group_steps(req, outs, refs, texts)
        elif len(outs) > 1 and req.shared:
            steps = _group_steps(req, outs, [], [])
        else:
            steps = [Step(tool="generate", prompt=o.description, outputs=[o.index]) for o in outs]
    return Plan(steps=steps, article=req.task == "article").check_against(req)


@dataclass
class Planned:
    plan: Plan
    notes: list[str] = field(default_factory=list)
    valid_before_fallback: bool = True
    source: str = "rules"


def plan_messages(req: ParsedRequest, prompt: str) -> list[dict]:
    return [{"role": "system", "content": prompt}, {"role": "user", "content": req.model_dump_json(exclude_none=True)}]


def make_plan(req: ParsedRequest, backend=None, prompt: str | None = None) -> Planned:
    """The plan for `req`: the LLM's when it is capable and its plan validates, else the rules plan."""
    from ditflow.agents.llm.base import LLMError

    rules = plan_rules(req)
    if backend is None or not llm_plans(backend):
        return Planned(rules)
    from ditflow.agents.prompts import load_prompt

    try:
        proposed = backend.complete(plan_messages(req, prompt or load_prompt("plan")), Plan, task="plan")
        proposed.article = req.task == "article"  # the task decides it, not the LLM (small ones drop the flag)
        return Planned(proposed.check_against(req), source=backend.name)
    except (LLMError, ValidationError, ValueError) as e:
        note = f"plan: the LLM's plan was not usable ({one_line(e, 200)}); using the rules plan"
        log.info(note)
        return Planned(rules, [note], valid_before_fallback=False)


def llm_plans(backend) -> bool:
    """Only a capable endpoint plans; the rules and the embedded tiny LLM leave planning to the rules."""
    return backend.name != "rules" and getattr(backend, "parses", True) and not only_parses(backend)


def describe_plan(plan: Plan) -> str:
    """One line per step, for logs and the chat UI."""
    return "\n".join(f"{i + 1}. {s.tool} → outputs {s.outputs}"
                     + (f" refs {[f'{r.kind}:{r.index}' for r in s.refs]}" if s.refs else "")
                     + (f" {json.dumps(s.params)}" if s.params else "") for i, s in enumerate(plan.steps))
