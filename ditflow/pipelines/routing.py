"""Clause routing: each region of an image reads the clause of the caption that describes it.

A caption reaches a FLUX DiT as one text sequence, and joint attention lets every image token read every clause. A
small model then leaks attributes between the things a caption names: one panel of a multi-panel canvas copies its
neighbour's colour, or "a cyan circle and a blue square" comes out as two squares. Routing masks the image → text
part of joint attention. A caption's layout names regions, each with its clause:
- **panels**: a tagged multi-panel caption ("[TWO-PANEL] overview; [LEFT] clause, [RIGHT] clause.", In-Context-LoRA
  style; the tag grammar is `ditflow/panel_tags.py`) gives each panel its tagged clause;
- **objects**: a single-panel caption naming two or more objects of the shapes world (`world/phrases.py`) gives
  each object's words to the cell its position phrase names, a little enlarged; objects named without positions
  get side-by-side strips, a fixed layout plan in the spirit of LLM-grounded diffusion. The object clauses' text
  tokens also stop reading one another, so one noun's state does not take the other's.
An image token inside a region reads the shared text (tags, overview, special and padding tokens) and the clauses
of the regions it is in; a token in no region reads everything. Image ↔ image attention stays whole, so panels
still see each other (the in-context consistency ChatDiT relies on), and text tokens still read the whole image.

Routing only chooses text keys, so it combines exactly with CLEAR local attention: on a transformer whose every
attention layer is local (`kernels/processors.py`), the hook passes a compact `TextRouting` (each image token's class,
the set of regions it lies in, and the text each class reads) built from the owners and regions, never the
(L, L) mask, which at FLUX's L = 16896 would be 285 MB per image; otherwise it passes the dense mask.

Each caption is routed by its own layout: true CFG's empty negative prompt names nothing and runs unmasked, and a
caption without a layout leaves the call untouched. It is training-free; docs/benchmarks.md (builtin section)
measures it.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ditflow.panel_tags import clause_starts, grid_of_caption
from ditflow.world.phrases import BACKGROUND_RE, mentions, normalise
from ditflow.world.scenes import POSITION_CELL

if TYPE_CHECKING:  # torch loads where routing runs: naming the flag or a caption's layout needs none of it
    import torch

    from ditflow.kernels.local_attention import TextRouting

_ATTR = "_ditflow_clause_routing"


# ----------------------------------------------------------------------------- layouts: regions and their clauses
OBJECT_MARGIN = 0.05  # an object's cell grows by this share of the image each way: objects overhang their cell


@dataclass(frozen=True)
class Region:
    """Part of the image, (top, left, bottom, right) in fractions of it, and its clause: caption characters."""

    box: tuple[float, float, float, float]
    start: int
    end: int


@dataclass(frozen=True)
class Layout:
    regions: tuple[Region, ...]
    separate_clauses: bool = False  # the clauses' text tokens stop reading one another


def panel_layout(prompt: str, token_rows: int, token_cols: int) -> Layout | None:
    """Panels of a tagged multi-panel caption, each with its tagged clause (up to the next tag)."""
    grid = grid_of_caption(prompt, token_rows, token_cols)
    if grid is None:
        return None
    rows, cols = grid
    starts = clause_starts(prompt, grid)
    ends = starts[1:] + [len(prompt)]
    cells = [(r, c) for r in range(rows) for c in range(cols)]
    return Layout(tuple(Region((r / rows, c / cols, (r + 1) / rows, (c + 1) / cols), a, e)
                        for (r, c), a, e in zip(cells, starts, ends)))


def object_layout(prompt: str) -> Layout | None:
    """Objects of a shapes-world caption naming two or more: each object phrase, up to the next (or the background
    phrase), goes to the 3 × 3 cell its position names; objects without positions get side-by-side strips. None
    for fewer than two objects, or when only some have positions."""
    text = normalise(prompt)
    found = mentions(text)
    positions = [m.thing.position for m in found]
    if len(found) < 2 or (any(positions) and not all(positions)):
        return None
    background = BACKGROUND_RE.search(text, found[-1].end)
    ends = [m.start for m in found[1:]] + [background.start() if background else len(text)]
    at = _original_offsets(prompt, text)
    g, regions = OBJECT_MARGIN, []
    for k, (m, end) in enumerate(zip(found, ends)):
        if m.thing.position:
            r, c = POSITION_CELL[m.thing.position]
            box = (r / 3 - g, c / 3 - g, (r + 1) / 3 + g, (c + 1) / 3 + g)
        else:
            box = (0.0, k / len(found), 1.0, (k + 1) / len(found))
        regions.append(Region(box, at[m.start], at[end]))
    return Layout(tuple(regions), separate_clauses=True)


def caption_layout(prompt: str, token_rows: int, token_cols: int) -> Layout | None:
    """The regions a caption names on a canvas of token_rows × token_cols tokens: panels first, else objects."""
    return panel_layout(prompt, token_rows, token_cols) or object_layout(prompt)


def _original_offsets(original: str, normalised: str) -> list[int]:
    """For each index of `normalised` (and its end), the index of `original` it came from."""
    import difflib

    out = [0] * (len(normalised) + 1)
    ops = difflib.SequenceMatcher(None, original.lower(), normalised, autojunk=False).get_opcodes()
    for tag, i1, i2, j1, j2 in ops:
        for j in range(j1, j2 + 1):
            out[j] = i1 + (j - j1) if tag == "equal" else (i2 if j == j2 else i1)
    return out


def token_owners(tokenizer, prompt: str, layout: Layout, max_len: int) -> torch.Tensor | None:
    """(max_len,) region index of each text token of `prompt` as the pipeline tokenizes it, -1 for shared tokens.

    None when the tokenizer gives no character offsets (a slow tokenizer): the caption is then not routed."""
    import torch

    try:  # the same call as FluxPipeline's T5 slot, plus offsets
        enc = tokenizer(prompt, padding="max_length", max_length=max_len, truncation=True,
                        return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError):
        return None
    owners = torch.full((max_len,), -1, dtype=torch.long)
    for i, (a, b) in enumerate(enc["offset_mapping"][:max_len]):
        if b <= a:  # special and padding tokens carry no text
            continue
        for k, region in enumerate(layout.regions):
            if region.start <= a < region.end:
                owners[i] = k
    return owners


def regions_of_tokens(img_ids: torch.Tensor, layout: Layout) -> torch.Tensor:
    """(N, R) whether each packed image token (FLUX's (N, 3) img_ids) has its centre inside each region."""
    import torch

    row, col = img_ids[:, 1].double(), img_ids[:, 2].double()
    y, x = (row + 0.5) / (row.max() + 1), (col + 0.5) / (col.max() + 1)
    top, left, bottom, right = torch.tensor([r.box for r in layout.regions], dtype=torch.double).T
    return (y[:, None] >= top) & (y[:, None] < bottom) & (x[:, None] >= left) & (x[:, None] < right)


def text_routing(owners: torch.Tensor, inside: torch.Tensor, separate_clauses: bool = False) -> TextRouting:
    """The routing of one caption, compact (batch 1): image tokens fall into classes by the set of regions they lie
    in (a row of `inside`, (N, R)), and class S reads text token j if j is shared (owner -1), if j's region is in S,
    or if S is empty. With `separate_clauses` a clause's text tokens do not read another clause's."""
    import torch

    from ditflow.kernels.local_attention import TextRouting

    owned = owners >= 0
    sets, image_class = torch.unique(inside, dim=0, return_inverse=True)  # (C, R) region sets, (N,) class
    class_text = ~owned[None, :] | sets[:, owners.clamp(min=0)] | ~sets.any(1)[:, None]  # (C, T)
    text_text = None
    if separate_clauses:
        text_text = ~(owned[:, None] & owned[None, :] & (owners[:, None] != owners[None, :]))[None]
    return TextRouting(image_class.reshape(1, -1).long(), class_text[None], text_text)


def routing_mask(owners: torch.Tensor, inside: torch.Tensor, separate_clauses: bool = False) -> torch.Tensor:
    """(L + N, L + N) boolean joint-attention mask, text tokens first as in FLUX: `text_routing` made dense. Image
    token i reads text token j if j is shared (owner -1), if i lies in j's region, or if i lies in no region; every
    other pair attends as usual, except that with `separate_clauses` a clause's text tokens do not read another
    clause's."""
    return text_routing(owners, inside, separate_clauses).dense()[0, 0]


def batch_routing(routings: list[TextRouting | None], text_len: int, image_len: int) -> TextRouting:
    """One routing per image (None: unrouted, one class reading all text) as one batch; classes padded."""
    import torch

    from ditflow.kernels.local_attention import TextRouting

    classes = max(1 if r is None else r.class_text.shape[1] for r in routings)
    b = len(routings)
    image_class = torch.zeros(b, image_len, dtype=torch.long)
    class_text = torch.ones(b, classes, text_len, dtype=torch.bool)
    text_text = None
    for i, r in enumerate(routings):
        if r is None:
            continue
        image_class[i] = r.image_class[0]
        class_text[i, :r.class_text.shape[1]] = r.class_text[0]
        if r.text_text is not None:
            text_text = torch.ones(b, text_len, text_len, dtype=torch.bool) if text_text is None else text_text
            text_text[i] = r.text_text[0]
    return TextRouting(image_class, class_text, text_text)


# ----------------------------------------------------------------------------- routing a pipeline
@dataclass
class ClauseRouting:
    """The state behind `enable_clause_routing`: captions per text-embedding tensor, and the routings (compact, or
    as dense masks) made from them."""

    tokenizer: object
    hook: object = None
    captions: list = field(default_factory=list)  # [(prompt_embeds, prompts, max_len)], newest last
    masks: dict = field(default_factory=dict)  # (id(prompt_embeds), token rows, cols, dense) → routing/mask or None
    routed_calls: int = 0

    def remember(self, embeds: torch.Tensor, prompts: list[str], max_len: int) -> None:
        self.captions = [c for c in self.captions[-3:] if c[0] is not embeds] + [(embeds, prompts, max_len)]
        self.masks.clear()

    def mask_for(self, embeds: torch.Tensor, img_ids: torch.Tensor) -> torch.Tensor | None:
        """(B, 1, L, L) bool joint-attention mask for the captions behind `embeds`, or None when none is routed."""
        return self._lookup(embeds, img_ids, dense=True)

    def text_routing_for(self, embeds: torch.Tensor, img_ids: torch.Tensor) -> TextRouting | None:
        """The same routing in compact form, for local attention: made from the owners and regions directly, with
        no (L, L) mask; None when no caption is routed."""
        return self._lookup(embeds, img_ids, dense=False)

    def _lookup(self, embeds, img_ids, dense: bool):
        entry = next((c for c in self.captions if c[0] is embeds), None)
        if entry is None:
            return None
        rows, cols = int(img_ids[:, 1].max()) + 1, int(img_ids[:, 2].max()) + 1
        key = (id(embeds), rows, cols, dense)
        if key not in self.masks:
            routing = self._build(entry[1], entry[2], img_ids, rows, cols)
            if routing is None or routing.class_text.shape[0] != embeds.shape[0]:
                self.masks[key] = None
            else:
                routing = routing.for_batch(embeds.shape[0], embeds.device)
                self.masks[key] = routing.dense() if dense else routing
        return self.masks[key]

    def _build(self, prompts, max_len, img_ids, rows, cols) -> TextRouting | None:
        routings = []
        for prompt in prompts:
            layout = caption_layout(prompt, rows, cols)
            owners = None if layout is None else token_owners(self.tokenizer, prompt, layout, max_len)
            routings.append(None if owners is None else text_routing(owners, regions_of_tokens(img_ids, layout),
                                                                     layout.separate_clauses))
        if all(r is None for r in routings):
            return None
        return batch_routing(routings, max_len, img_ids.shape[0])


def enable_clause_routing(pipe) -> ClauseRouting:
    """Route captions with a layout (panels, or objects) in every call of `pipe`, and of the pipelines sharing its
    transformer that `track_captions` was given. Idempotent; `disable_clause_routing` undoes it."""
    routing = getattr(pipe.transformer, _ATTR, None)
    if routing is None:
        routing = ClauseRouting(pipe.tokenizer_2 or pipe.tokenizer)
        routing.hook = pipe.transformer.register_forward_pre_hook(_routing_hook(routing), with_kwargs=True)
        setattr(pipe.transformer, _ATTR, routing)
    track_captions(pipe)
    return routing


def disable_clause_routing(pipe) -> None:
    routing = getattr(pipe.transformer, _ATTR, None)
    if routing is not None:
        routing.hook.remove()
        setattr(pipe.transformer, _ATTR, None)


def add_clause_routing_flag(ap, note: str = "") -> None:
    """`--clause-routing/--no-clause-routing` on an argparse parser; its value goes to `set_clause_routing`."""
    import argparse

    ap.add_argument("--clause-routing", action=argparse.BooleanOptionalAction, default=None,
                    help="each region a caption names reads only its own clause of the text: each panel of a tagged "
                         "multi-panel caption ('[TWO-PANEL] ...; [LEFT] ..., [RIGHT] ...'), each object of a "
                         "shapes-world caption ('a red circle on the left and a blue square at the top') (default: "
                         "the model's own; on for the builtin, docs/benchmarks.md)" + (f". {note}" if note else ""))


def set_clause_routing(pipe, on: bool | None) -> None:
    """`--clause-routing` (True), `--no-clause-routing` (False), or None: keep the pipeline's own setting."""
    if on:
        enable_clause_routing(pipe)
    elif on is False:
        disable_clause_routing(pipe)


def clause_routing(pipe) -> ClauseRouting | None:
    return getattr(pipe.transformer, _ATTR, None)


def track_captions(pipe) -> None:
    """Wrap `pipe.encode_prompt` so the routing on its transformer, if any, learns which embeddings came from
    which captions. A no-op while routing is off; safe to call on every pipeline derived from a routed one."""
    if getattr(pipe.encode_prompt, "_ditflow_tracks", False):
        return
    encode = pipe.encode_prompt
    signature = inspect.signature(encode)

    def encode_prompt(*args, **kwargs):
        out = encode(*args, **kwargs)
        routing = getattr(pipe.transformer, _ATTR, None)
        if routing is None:
            return out
        bound = signature.bind_partial(*args, **kwargs).arguments
        prompt = bound.get("prompt_2") or bound.get("prompt")
        if prompt is None or bound.get("prompt_embeds") is not None:
            return out
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        per = int(bound.get("num_images_per_prompt") or 1)
        routing.remember(out[0], [p for p in prompts for _ in range(per)],
                         int(bound.get("max_sequence_length") or out[0].shape[1]))
        return out

    encode_prompt._ditflow_tracks = True
    pipe.encode_prompt = encode_prompt  # an instance attribute shadows the method


def _routing_hook(routing: ClauseRouting):
    def hook(module, args, kwargs):
        from ditflow.kernels.processors import installed as local_attention

        joint = kwargs.get("joint_attention_kwargs") or {}
        img_ids, embeds = kwargs.get("img_ids"), kwargs.get("encoder_hidden_states")
        # Kontext-style reference images (img_ids axis 0 ≠ 0) are not panels
        if ("attention_mask" in joint or img_ids is None or embeds is None or img_ids.ndim != 2
                or bool((img_ids[:, 0] != 0).any())):
            return None
        local = local_attention(module)  # local on every layer: the compact routing; otherwise the dense mask
        compact = local is not None and local.everywhere
        mask = routing.text_routing_for(embeds, img_ids) if compact else routing.mask_for(embeds, img_ids)
        if mask is None:
            return None
        routing.routed_calls += 1
        kwargs["joint_attention_kwargs"] = {**joint, "attention_mask": mask}
        return args, kwargs

    return hook
