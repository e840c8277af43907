"""A diffusers attention processor for `FluxAttention` that runs CLEAR local attention.

    handle = install_local_attention(pipe.transformer, radius=8)   # any FluxTransformer2DModel, any resolution
    ...
    remove_local_attention(pipe.transformer)                       # the original processors come back

The processor projects, normalises and applies RoPE as FLUX does, then calls `local_attention` on the joint
`[text | image]` sequence. The token grid and text length are not visible to a processor (single-stream blocks
see one concatenated sequence), so a forward pre-hook on the transformer reads them from `img_ids`/`txt_ids`
on every call; a new resolution therefore needs no rebuild, only a geometry cache miss in the kernel.

An `attention_mask` in `joint_attention_kwargs` may route text keys (clause routing, `pipelines/routing.py`): a
`TextRouting`, or a dense bool mask whose image-key columns are all True, read once per mask into one.

`when="faster"` makes each call ask the measured crossover table (`crossover.local_pays`) whether local attention
beats plain SDPA for this device, dtype, head size and geometry; where it does not, the processor that was
installed before runs instead (diffusers' own full attention), so turning local attention on never slows a call
down by more than the table's margin of error. A distilled student's projections can be handed to the processors
(`weights=`), which use them on the local path only: below the crossover the output is exactly the teacher's.
"""
from __future__ import annotations

import inspect
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ditflow.kernels.crossover import local_pays
from ditflow.kernels.local_attention import TextRouting, choose_backend, local_attention

_ATTR = "_ditflow_local_attention"  # where an installed transformer keeps its LocalAttention
WHEN = ("always", "faster")  # install_local_attention(when=...): local on every call, or only where it pays
STUDENT_LAYERS = ("to_q", "to_k", "to_v", "to_out.0")  # the projections a student may replace (image stream)
OUTSIDE_FORWARD = ("local attention processors ran outside their transformer's forward; call the transformer "
                   "itself (its pre-hook supplies the token grid)")


@dataclass
class Geometry:
    """What the pre-hook learned about the current forward call."""

    grid: tuple[int, int] | None = None
    text_len: int = 0
    read_mask: tuple | None = None  # (dense mask, text_len, its TextRouting): every layer gets the same mask
    dense_of: tuple | None = None  # (TextRouting, its dense mask): the full-attention path's, made once per call

    def densify(self, mask):
        """A `TextRouting` as the dense mask the stock processors take, built once for all layers; else `mask`."""
        if not isinstance(mask, TextRouting):
            return mask
        if self.dense_of is None or self.dense_of[0] is not mask:
            self.dense_of = (mask, mask.dense())
        return self.dense_of[1]


def routing_of_mask(attention_mask, text_len: int, geometry: Geometry | None = None) -> TextRouting | None:
    """`attention_mask` as a local-attention processor takes it: None, a `TextRouting`, or a dense bool mask that
    only routes text keys (`TextRouting.from_dense`, read once per mask object when `geometry` keeps it)."""
    if attention_mask is None or isinstance(attention_mask, TextRouting):
        return attention_mask
    if not isinstance(attention_mask, torch.Tensor):
        raise ValueError(f"local attention takes an attention_mask that is a TextRouting or a bool tensor; got "
                         f"{type(attention_mask).__name__}")
    kept = geometry.read_mask if geometry is not None else None
    if kept is not None and kept[0] is attention_mask and kept[1] == text_len:
        return kept[2]
    try:
        routing = TextRouting.from_dense(attention_mask, text_len)
    except ValueError as e:
        raise ValueError(f"local attention takes an attention mask only when it routes text keys: {e}") from e
    if geometry is not None:
        geometry.read_mask = (attention_mask, text_len, routing)
    return routing


def grid_of(img_ids: torch.Tensor) -> tuple[int, int]:
    """(H, W) of image tokens from FLUX's (N, 3) position ids, which must form one row-major grid."""
    ids = img_ids[0] if img_ids.ndim == 3 else img_ids
    rows, cols = ids[:, 1], ids[:, 2]
    h, w = int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1
    expect_r = torch.arange(h, device=ids.device).repeat_interleave(w).to(rows.dtype) + rows.min()
    expect_c = torch.arange(w, device=ids.device).repeat(h).to(cols.dtype) + cols.min()
    if h * w != ids.shape[0] or not (torch.equal(rows, expect_r) and torch.equal(cols, expect_c)):
        raise ValueError("local attention needs img_ids that form one row-major token grid (a plain FLUX "
                         "text-to-image/img2img call); remove it with remove_local_attention() for this model")
    return h, w


class LocalFluxAttnProcessor:
    """FluxAttention processor: FLUX's projections, QK-norm and RoPE, then CLEAR local attention.

    Args:
        radius: window radius in tokens (dy² + dx² < r² in the token grid).
        geometry: shared with the transformer's pre-hook, which fills in the grid and text length.
        backend: a `local_attention` backend name, or None to pick per call (C kernel for inference on CPU,
            a differentiable one when training, FlexAttention on CUDA).
        full: the processor to run where local attention does not pay (`crossover.local_pays` says no), with the
            attention mask passed through; None: local attention on every call.
        weights: {"to_q": (weight, bias), ...} (names from STUDENT_LAYERS): projections used instead of the
            layer's own on the local path only (a student's).
        counts: a Counter the processor adds "local" or "full" to on every call.

    `attention_mask` (from `joint_attention_kwargs`) may be a `TextRouting` or a dense bool mask convertible by
    `TextRouting.from_dense`: which text keys each query reads, on top of the window. Anything else: ValueError.
    """

    def __init__(self, radius: float, geometry: Geometry, backend: str | None = None, *, full=None,
                 weights: dict | None = None, counts: Counter | None = None):
        if not radius > 0:
            raise ValueError(f"radius must be > 0 tokens; got {radius}")
        self.radius, self.geometry, self.backend = float(radius), geometry, backend
        self.full, self.weights = full, dict(weights or {})
        self.counts = Counter() if counts is None else counts

    def pays(self, attn, hidden_states, encoder_hidden_states=None) -> bool:
        """Whether the crossover table says local attention beats plain SDPA for this call."""
        if self.geometry.grid is None:
            raise ValueError(OUTSIDE_FORWARD)
        joint = encoder_hidden_states is not None and attn.added_kv_proj_dim is not None
        text_len = encoder_hidden_states.shape[1] if joint else self.geometry.text_len
        grid = self.geometry.grid
        needs_grad = torch.is_grad_enabled() and (hidden_states.requires_grad or attn.to_q.weight.requires_grad)
        probe = hidden_states.new_empty(1, 1, text_len + grid[0] * grid[1], 0)  # what the dispatch looks at
        backend = self.backend or choose_backend(probe, grid, self.radius, text_len, needs_grad)
        return local_pays(hidden_states.device.type, hidden_states.dtype, attn.head_dim, grid, self.radius,
                          text_len, backend=backend)

    def _project(self, attn, name: str, x: torch.Tensor) -> torch.Tensor:
        """attn.<name>(x), or the student's projection in its place (moved to the layer's device and dtype once)."""
        layer = attn.get_submodule(name)
        if name not in self.weights:
            return layer(x)
        w, b = self.weights[name]
        if w.device != layer.weight.device or w.dtype != layer.weight.dtype:
            w, b = w.to(layer.weight), None if b is None else b.to(layer.weight)
            self.weights[name] = (w, b)
        return F.linear(x, w, b)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 image_rotary_emb=None):
        if self.full is not None and not self.pays(attn, hidden_states, encoder_hidden_states):
            self.counts["full"] += 1
            mask = self.geometry.densify(attention_mask)
            return self.full(attn, hidden_states, encoder_hidden_states=encoder_hidden_states, attention_mask=mask,
                             image_rotary_emb=image_rotary_emb)
        self.counts["local"] += 1
        if self.geometry.grid is None:
            raise ValueError(OUTSIDE_FORWARD)
        joint = encoder_hidden_states is not None and attn.added_kv_proj_dim is not None
        if getattr(attn, "fused_projections", False) and not self.weights:
            q, k, v = attn.to_qkv(hidden_states).chunk(3, dim=-1)
            if joint:
                eq, ek, ev = attn.to_added_qkv(encoder_hidden_states).chunk(3, dim=-1)
        else:
            q, k, v = (self._project(attn, n, hidden_states) for n in ("to_q", "to_k", "to_v"))
            if joint:
                eq = attn.add_q_proj(encoder_hidden_states)
                ek = attn.add_k_proj(encoder_hidden_states)
                ev = attn.add_v_proj(encoder_hidden_states)
        heads = lambda x: x.unflatten(-1, (-1, attn.head_dim))  # noqa: E731  (B, N, heads, D)
        q, k, v = attn.norm_q(heads(q)), attn.norm_k(heads(k)), heads(v)
        if joint:  # double-stream block: text tokens go in front, as in FLUX
            q = torch.cat([attn.norm_added_q(heads(eq)), q], dim=1)
            k = torch.cat([attn.norm_added_k(heads(ek)), k], dim=1)
            v = torch.cat([heads(ev), v], dim=1)
        if image_rotary_emb is not None:
            from diffusers.models.embeddings import apply_rotary_emb

            q = apply_rotary_emb(q, image_rotary_emb, sequence_dim=1)
            k = apply_rotary_emb(k, image_rotary_emb, sequence_dim=1)
        text_len = encoder_hidden_states.shape[1] if joint else self.geometry.text_len
        routing = routing_of_mask(attention_mask, text_len, self.geometry)
        out = local_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), grid=self.geometry.grid,
                              radius=self.radius, text_len=text_len, backend=self.backend,
                              routing=routing)  # (B, heads, L, D)
        out = out.transpose(1, 2).flatten(2, 3).to(q.dtype)  # (B, L, heads·D)
        if encoder_hidden_states is None:
            return out
        txt, img = out.split_with_sizes([text_len, out.shape[1] - text_len], dim=1)
        img = attn.to_out[1](self._project(attn, "to_out.0", img.contiguous()))  # projection, dropout
        return img, attn.to_add_out(txt.contiguous())


@dataclass
class LocalAttention:
    """The installation on one transformer: what to restore and the hook to remove."""

    radius: float
    geometry: Geometry
    original: dict = field(repr=False)
    hook: object = field(repr=False)
    layers: tuple[str, ...] = ()
    when: str = "always"
    counts: Counter = field(default_factory=Counter)  # calls that went "local" and "full", all layers together

    @property
    def everywhere(self) -> bool:
        """Whether every attention layer is local: only then may an attention mask be a `TextRouting`."""
        return set(self.layers) == set(self.original)


def install_local_attention(transformer, radius: float, *, layers=None, backend: str | None = None,
                            when: str = "always", weights: dict | None = None) -> LocalAttention:
    """Swap the attention processors of a Flux transformer for local ones; one call, undone by
    `remove_local_attention`. Re-installing replaces the previous installation.

    Args:
        layers: processor names (keys of `transformer.attn_processors`) to change, default all.
        when: "always" runs local attention on every call; "faster" only where the crossover table says it beats
            plain SDPA for the call's device, dtype, head size and geometry, and the processor that was there
            before (full attention) otherwise.
        weights: a student's projections by parameter name ("transformer_blocks.0.attn.to_q.weight", ...), used
            on the local path instead of the transformer's own, which stay untouched.
    """
    if when not in WHEN:
        raise ValueError(f"when must be one of {WHEN}; got {when!r}")
    if getattr(transformer, _ATTR, None) is not None:
        remove_local_attention(transformer)
    current = dict(transformer.attn_processors)
    names = tuple(current) if layers is None else tuple(layers)
    unknown = [n for n in names if n not in current]
    if unknown:
        raise ValueError(f"no attention layer named {unknown[0]!r}; choose from transformer.attn_processors keys")
    geometry = Geometry()
    signature = inspect.signature(type(transformer).forward)  # the class's: an instance may shadow forward

    def read_geometry(module, args, kwargs):
        bound = signature.bind_partial(module, *args, **kwargs).arguments
        img_ids, txt_ids = bound.get("img_ids"), bound.get("txt_ids")
        if img_ids is None or txt_ids is None:
            raise ValueError("local attention needs img_ids and txt_ids in the transformer call")
        geometry.grid = grid_of(img_ids)
        geometry.text_len = int(txt_ids.shape[-2])

    known = {f"{n.removesuffix('processor')}{layer}.{p}" for n in current for layer in STUDENT_LAYERS
             for p in ("weight", "bias")}
    stray = [k for k in weights or {} if k not in known]
    if stray:
        raise ValueError(f"weights has {stray[0]!r}, which names no projection of an attention layer here "
                         f"(expected e.g. {min(known)!r})")
    counts = Counter()

    def local(name):
        prefix = name.removesuffix("processor")  # "transformer_blocks.0.attn."
        own = {layer: (weights[f"{prefix}{layer}.weight"], weights.get(f"{prefix}{layer}.bias"))
               for layer in STUDENT_LAYERS if f"{prefix}{layer}.weight" in (weights or {})}
        return LocalFluxAttnProcessor(radius, geometry, backend, full=current[name] if when == "faster" else None,
                                      weights=own, counts=counts)

    processors = {n: (local(n) if n in names else p) for n, p in current.items()}
    transformer.set_attn_processor(processors)
    hook = transformer.register_forward_pre_hook(read_geometry, with_kwargs=True)
    handle = LocalAttention(float(radius), geometry, current, hook, names, when, counts)
    setattr(transformer, _ATTR, handle)
    return handle


def remove_local_attention(transformer) -> None:
    """Restore the processors that were there before `install_local_attention`; a no-op if none is installed."""
    handle = getattr(transformer, _ATTR, None)
    if handle is None:
        return
    handle.hook.remove()
    transformer.set_attn_processor(handle.original)
    setattr(transformer, _ATTR, None)


def installed(transformer) -> LocalAttention | None:
    return getattr(transformer, _ATTR, None)
