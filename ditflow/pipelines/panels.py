"""Multi-panel captions, and panel routing: each panel of an in-context canvas reads its own clause.

A multi-panel caption ("[TWO-PANEL] overview; [LEFT] clause, [RIGHT] clause.", In-Context-LoRA style) reaches a
FLUX DiT as one text sequence, and joint attention lets every image token read every clause. A small model then
leaks attributes between panels: one panel copies its neighbour's colour or position. Routing masks only the
image → text part of joint attention. A panel's image tokens read the shared text (layout tag, overview, special
and padding tokens) and their own clause. Image ↔ image attention stays whole, so panels still see each other (the
in-context consistency ChatDiT relies on), and text tokens still read the whole canvas.

Each caption is routed by its own tags: true CFG's empty negative prompt names no panels and runs unmasked, and a
plain caption leaves the call untouched. It is training-free; docs/benchmarks.md (builtin section) measures it.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads where routing runs: the tag grammar serves the world and canvas modules without it
    import torch

COUNT_WORDS = ("ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE")
MAX_GRID_SIDE = 6  # the largest rows or columns a caption's grid is looked for in
_ATTR = "_ditflow_panel_routing"


# ----------------------------------------------------------------------------- the caption grammar
def layout_tags(grid: tuple[int, int]) -> tuple[str, tuple[str, ...]]:
    """("[FOUR-PANEL]", ("[TOP-LEFT]", ...)) for grids up to 3×3; "[PANEL-i]" beyond (e.g. 1×4 strips)."""
    rows, cols = grid
    n = rows * cols
    if n == 1:
        return "", ()
    head = f"[{COUNT_WORDS[n - 1]}-PANEL]" if n <= len(COUNT_WORDS) else f"[{n}-PANEL]"
    if rows > 3 or cols > 3:
        return head, tuple(f"[PANEL-{i + 1}]" for i in range(n))
    row_words = {1: ("",), 2: ("TOP", "BOTTOM"), 3: ("TOP", "", "BOTTOM")}[rows]
    col_words = {1: ("",), 2: ("LEFT", "RIGHT"), 3: ("LEFT", "", "RIGHT")}[cols]
    names = ["-".join(w for w in (rw, cw) if w) or "CENTER" for rw in row_words for cw in col_words]
    return head, tuple(f"[{name}]" for name in names)


def clause_starts(prompt: str, grid: tuple[int, int]) -> list[int] | None:
    """Where each panel's tagged clause starts in `prompt` (reading order), or None if the caption does not
    name this grid: its head tag, then every panel tag in order."""
    head, tags = layout_tags(grid)
    at = prompt.find(head) if head else -1
    if at < 0:
        return None
    starts, at = [], at + len(head)
    for tag in tags:
        at = prompt.find(tag, at)
        if at < 0:
            return None
        starts.append(at)
        at += len(tag)
    return starts


def grid_of_caption(prompt: str, token_rows: int, token_cols: int) -> tuple[int, int] | None:
    """The panel grid a tagged caption names on a canvas of token_rows × token_cols tokens, or None.

    Grids must split the canvas into whole tokens. Where tags fit two grids (a "[PANEL-i]" strip, 1×4 or 4×1),
    the one with the squarest panels wins."""
    found = []
    for rows in range(1, MAX_GRID_SIDE + 1):
        for cols in range(1, MAX_GRID_SIDE + 1):
            if rows * cols < 2 or token_rows % rows or token_cols % cols:
                continue
            if clause_starts(prompt, (rows, cols)) is not None:
                found.append((abs(math.log((token_cols / cols) / (token_rows / rows))), (rows, cols)))
    return min(found)[1] if found else None


def token_owners(tokenizer, prompt: str, grid: tuple[int, int], max_len: int) -> torch.Tensor | None:
    """(max_len,) panel index of each text token of `prompt` as the pipeline tokenizes it, -1 for shared tokens.

    None when the tokenizer gives no character offsets (a slow tokenizer): the caption is then not routed."""
    import torch

    starts = clause_starts(prompt, grid)
    if starts is None:
        return None
    try:  # the same call as FluxPipeline's T5 slot, plus offsets
        enc = tokenizer(prompt, padding="max_length", max_length=max_len, truncation=True,
                        return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError):
        return None
    bounds = starts + [len(prompt)]
    owners = torch.full((max_len,), -1, dtype=torch.long)
    for i, (a, b) in enumerate(enc["offset_mapping"][:max_len]):
        if b <= a:  # special and padding tokens carry no text
            continue
        for panel in range(len(starts)):
            if bounds[panel] <= a < bounds[panel + 1]:
                owners[i] = panel
    return owners


def panel_of_tokens(img_ids: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(N,) panel index, in reading order, of each packed image token from FLUX's (N, 3) img_ids."""
    row, col = img_ids[:, 1].long(), img_ids[:, 2].long()
    rows, cols = int(row.max()) + 1, int(col.max()) + 1
    return (row * grid[0] // rows) * grid[1] + col * grid[1] // cols


def routing_mask(owners: torch.Tensor, panels: torch.Tensor) -> torch.Tensor:
    """(B, 1, L + N, L + N) boolean joint-attention mask, text tokens first as in FLUX: image token i reads text
    token j only if j is shared (owner -1) or belongs to i's panel; every other pair attends as usual."""
    import torch

    b, n_text = owners.shape
    n = n_text + panels.numel()
    mask = torch.ones(b, 1, n, n, dtype=torch.bool)
    own = owners[:, None, :]
    mask[:, 0, n_text:, :n_text] = (own < 0) | (own == panels[None, :, None])
    return mask


# ----------------------------------------------------------------------------- routing a pipeline
@dataclass
class PanelRouting:
    """The state behind `enable_panel_routing`: captions per text-embedding tensor, and masks made from them."""

    tokenizer: object
    hook: object = None
    captions: list = field(default_factory=list)  # [(prompt_embeds, prompts, max_len)], newest last
    masks: dict = field(default_factory=dict)  # (id(prompt_embeds), token rows, cols) → mask or None
    routed_calls: int = 0

    def remember(self, embeds: torch.Tensor, prompts: list[str], max_len: int) -> None:
        self.captions = [c for c in self.captions[-3:] if c[0] is not embeds] + [(embeds, prompts, max_len)]
        self.masks.clear()

    def mask_for(self, embeds: torch.Tensor, img_ids: torch.Tensor) -> torch.Tensor | None:
        entry = next((c for c in self.captions if c[0] is embeds), None)
        if entry is None:
            return None
        rows, cols = int(img_ids[:, 1].max()) + 1, int(img_ids[:, 2].max()) + 1
        key = (id(embeds), rows, cols)
        if key not in self.masks:
            mask = self._build(entry[1], entry[2], img_ids, rows, cols)
            self.masks[key] = None if mask is None or mask.shape[0] != embeds.shape[0] else mask.to(embeds.device)
        return self.masks[key]

    def _build(self, prompts, max_len, img_ids, rows, cols) -> torch.Tensor | None:
        import torch

        owners, panels = [], None
        for prompt in prompts:
            grid = grid_of_caption(prompt, rows, cols)
            own = None if grid is None else token_owners(self.tokenizer, prompt, grid, max_len)
            if own is not None and panels is None:
                panels = grid
            if own is not None and grid != panels:  # one batch, one canvas shape: route by the first grid only
                own = None
            owners.append(torch.full((max_len,), -1, dtype=torch.long) if own is None else own)
        if panels is None:
            return None
        return routing_mask(torch.stack(owners), panel_of_tokens(img_ids, panels))


def enable_panel_routing(pipe) -> PanelRouting:
    """Route multi-panel captions in every call of `pipe` (and of pipelines sharing its transformer that
    `track_captions` was given). Idempotent; `disable_panel_routing` undoes it."""
    routing = getattr(pipe.transformer, _ATTR, None)
    if routing is None:
        routing = PanelRouting(pipe.tokenizer_2 or pipe.tokenizer)
        routing.hook = pipe.transformer.register_forward_pre_hook(_routing_hook(routing), with_kwargs=True)
        setattr(pipe.transformer, _ATTR, routing)
    track_captions(pipe)
    return routing


def disable_panel_routing(pipe) -> None:
    routing = getattr(pipe.transformer, _ATTR, None)
    if routing is not None:
        routing.hook.remove()
        setattr(pipe.transformer, _ATTR, None)


def set_panel_routing(pipe, on: bool | None) -> None:
    """`--panel-routing` (True), `--no-panel-routing` (False), or None: keep the pipeline's own setting."""
    if on:
        enable_panel_routing(pipe)
    elif on is False:
        disable_panel_routing(pipe)


def panel_routing(pipe) -> PanelRouting | None:
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


def _routing_hook(routing: PanelRouting):
    def hook(module, args, kwargs):
        from ditflow.kernels.processors import installed as local_attention

        joint = kwargs.get("joint_attention_kwargs") or {}
        img_ids, embeds = kwargs.get("img_ids"), kwargs.get("encoder_hidden_states")
        # local attention windows take no mask; Kontext-style reference images (img_ids axis 0 ≠ 0) are not panels
        if ("attention_mask" in joint or local_attention(module) is not None or img_ids is None or embeds is None
                or img_ids.ndim != 2 or bool((img_ids[:, 0] != 0).any())):
            return None
        mask = routing.mask_for(embeds, img_ids)
        if mask is None:
            return None
        routing.routed_calls += 1
        kwargs["joint_attention_kwargs"] = {**joint, "attention_mask": mask}
        return args, kwargs

    return hook
