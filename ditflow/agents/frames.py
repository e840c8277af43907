"""The trained parse model's side of parsing (issue 32): its short prompt, and its `ParseFrame` compiled into a
`ParsedRequest`.

The model reads a few lines, not the long prompt of `prompts/parse.md`: the request, then each input image, as its
objects (id, size, colour, shape, cell) when they were read and as its description otherwise. It writes a
`ParseFrame`: the task, and per output a scene in canonical words or a source with object edits. Everything else
follows here, by rule: an edited image's description is its objects after the edits, a restoration's is its
source's, the inputs are the context's. So the model writes few tokens and cannot contradict itself; what it
writes is still refereed by the rules in `parsing.parse`.

The training data (`ditflow/training/parser_data.py`) writes its prompts with `frame_prompt`, so training and
inference read the same lines.
"""
from __future__ import annotations

from ditflow.agents import references as rf
from ditflow.agents import scene as sc
from ditflow.schemas import (MAX_PROMPT_CHARS, InputImage, OutputSpec, ParsedRequest, ParseFrame, SceneObject)
from ditflow.world.scenes import BACKGROUNDS, COLORS, POSITION_CELL, SHAPES

SYSTEM = "Write the image request as JSON."
CLARIFY = ("I could not read that as a request for pictures of shapes (circles, squares, triangles, diamonds); "
           "say what to draw, edit or restore.")


class FrameError(ValueError):
    """The frame names something the context does not hold (an input, an object) or leaves an output empty."""


def object_line(o: SceneObject) -> str:
    return f"{o.id} " + " ".join(w for w in (o.size, o.color, o.shape, o.position) if w)


def image_line(image: InputImage) -> str:
    if image.objects:
        things = "; ".join(object_line(o) for o in image.objects)
        return f"image {image.index}: {things}; {image.background or 'white'} background"
    return f"image {image.index}: {image.description.strip() or 'not described'}"


def frame_prompt(instruction: str, inputs: list[InputImage]) -> str:
    return "\n".join([f"request: {instruction.strip()}"] + [image_line(i) for i in inputs])


def frame_messages(instruction: str, inputs: list[InputImage]) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": frame_prompt(instruction, inputs)}]


def frame_text(frame: ParseFrame) -> str:
    """The frame as the model writes it: no defaults, no spaces (every token carries content)."""
    return frame.model_dump_json(exclude_defaults=True)


# what each op must set for the executor to act on it (the schema leaves them optional, since ops differ)
NEEDS = {"recolor": ("color",), "resize": ("size",), "reshape": ("shape",), "move": ("position",),
         "add": ("shape", "position"), "duplicate": ("position",)}


def _check_edits(frame_out, image: InputImage, k: int) -> None:
    ids = {o.id for o in image.objects}
    for e in frame_out.edits:
        missing = [t for t in e.targets if t not in ids]
        if missing:
            raise FrameError(f"output {k} edits object(s) {missing}, which image {image.index} does not hold")
        unset = [f for f in NEEDS.get(e.op, ()) if not getattr(e, f)]
        if unset:
            raise FrameError(f"output {k}: a {e.op} with no {' or '.join(unset)}")
        words = {"shape": SHAPES, "size": ("small", "large"), "position": POSITION_CELL,
                 "color": BACKGROUNDS if e.op == "background" else COLORS}
        odd = [f"{f} {getattr(e, f)!r}" for f, known in words.items() if getattr(e, f) and getattr(e, f) not in known]
        if odd:  # the grammar allows any string; the world does not
            raise FrameError(f"output {k}: a {e.op} to {', '.join(odd)}, which the world does not have")


def compile_frame(frame: ParseFrame, instruction: str, inputs: list[InputImage]) -> ParsedRequest:
    """The `ParsedRequest` a frame means in this context. Raises FrameError for a frame the context refutes."""
    if frame.task == "clarify" or not frame.outputs:
        return ParsedRequest(task="generate", num_inputs=len(inputs), num_outputs=1, inputs=inputs,
                             outputs=[OutputSpec(index=1, description=instruction.strip()[:MAX_PROMPT_CHARS] or "?")],
                             clarification=CLARIFY)
    outputs, chosen = [], []
    for k, f in enumerate(frame.outputs, 1):
        if f.source is not None and f.source > len(inputs):
            raise FrameError(f"output {k} is made from image {f.source}, but {len(inputs)} were given")
        image = inputs[f.source - 1] if f.source else None
        edits = []
        if image is not None and frame.task == "edit" and f.edits and image.objects:
            _check_edits(f, image, k)
            edits = list(f.edits)
            desc = sc.scene_text(rf.edited_scene(image.objects, image.background, edits))
        elif f.scene:
            desc = f.scene
        elif image is not None:
            base = sc.split_degradations(image.description)[0]
            desc = base if frame.task == "edit" or sc.parse_scene(base).things else f"{base}, restored".lstrip(", ")
        else:
            raise FrameError(f"output {k} has neither a scene nor a source image")
        if image is not None:
            chosen.append(image.index)
        outputs.append(OutputSpec(index=k, description=desc.strip()[:MAX_PROMPT_CHARS] or "restored",
                                  sources=[image.index] if image is not None else [], edits=edits))
    if frame.task in ("edit", "restore") and not chosen:
        raise FrameError(f"an {frame.task} names no source image")
    kind = frame.restore if frame.task == "restore" else None
    new_inputs = [i.model_copy(update={"degradations": list(dict.fromkeys([kind] + i.degradations))})
                  if kind and kind != "auto" and i.index in chosen else i for i in inputs]
    shared = None
    if frame.task == "article" or (len(outputs) > 1 and not chosen):
        shared = outputs[0].description
    title = _title(shared) if frame.task == "article" and shared else None
    return ParsedRequest(task=frame.task, num_inputs=len(inputs), num_outputs=len(outputs), inputs=new_inputs,
                         outputs=outputs, shared=shared, title=title)


def _title(subject: str) -> str:
    words = subject.strip(" .").split()
    small = ("a", "an", "the", "of", "and", "to", "on", "in", "at")
    return " ".join(w if w in small and i else w.capitalize() for i, w in enumerate(words))[:120] or "A Story"
