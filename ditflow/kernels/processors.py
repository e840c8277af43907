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
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch

from ditflow.kernels.local_attention import TextRouting, local_attention

_ATTR = "_ditflow_local_attention"  # where an installed transformer keeps its LocalAttention


@dataclass
class Geometry:
    """What the pre-hook learned about the current forward call."""

    grid: tuple[int, int] | None = None
    text_len: int = 0
    read_mask: tuple | None = None  # (dense mask, text_len, its TextRouting): every layer gets the same mask


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

    `attention_mask` (from `joint_attention_kwargs`) may be a `TextRouting` or a dense bool mask convertible by
    `TextRouting.from_dense`: which text keys each query reads, on top of the window. Anything else: ValueError.
    """

    def __init__(self, radius: float, geometry: Geometry, backend: str | None = None):
        if not radius > 0:
            raise ValueError(f"radius must be > 0 tokens; got {radius}")
        self.radius, self.geometry, self.backend = float(radius), geometry, backend

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 image_rotary_emb=None):
        if self.geometry.grid is None:
            raise ValueError("local attention processors ran outside their transformer's forward; call the "
                             "transformer itself (its pre-hook supplies the token grid)")
        joint = encoder_hidden_states is not None and attn.added_kv_proj_dim is not None
        if getattr(attn, "fused_projections", False):
            q, k, v = attn.to_qkv(hidden_states).chunk(3, dim=-1)
            if joint:
                eq, ek, ev = attn.to_added_qkv(encoder_hidden_states).chunk(3, dim=-1)
        else:
            q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
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
        img = attn.to_out[1](attn.to_out[0](img.contiguous()))  # projection, dropout
        return img, attn.to_add_out(txt.contiguous())


@dataclass
class LocalAttention:
    """The installation on one transformer: what to restore and the hook to remove."""

    radius: float
    geometry: Geometry
    original: dict = field(repr=False)
    hook: object = field(repr=False)
    layers: tuple[str, ...] = ()

    @property
    def everywhere(self) -> bool:
        """Whether every attention layer is local: only then may an attention mask be a `TextRouting`."""
        return set(self.layers) == set(self.original)


def install_local_attention(transformer, radius: float, *, layers=None, backend: str | None = None) -> LocalAttention:
    """Swap the attention processors of a Flux transformer for local ones; one call, undone by
    `remove_local_attention`. `layers`: processor names (keys of `transformer.attn_processors`) to change,
    default all. Re-installing replaces the previous installation."""
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

    processors = {n: (LocalFluxAttnProcessor(radius, geometry, backend) if n in names else p)
                  for n, p in current.items()}
    transformer.set_attn_processor(processors)
    hook = transformer.register_forward_pre_hook(read_geometry, with_kwargs=True)
    handle = LocalAttention(float(radius), geometry, current, hook, names)
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
