"""`ditflow bench flux-width`: local attention and clause routing at FLUX.1's real width, block by block, on CPU.

Everything else we measure runs at the builtin model's width (8 heads × 32) or on random tensors (4 × 64). This
bench builds a FLUX.1-shaped diffusers `FluxTransformer2DModel` with FLUX.1's widths (3072 hidden, 24 heads × 128,
T5's 4096-wide text states, CLIP's 768-wide pooled vector, RoPE axes 16/56/56, guidance embedding) and random,
seeded fp32 weights, cut to one double-stream and one single-stream block, and runs both blocks through our
processors at FLUX.1's 512 text tokens and 16 px per image token:

- attention alone, on the q, k, v our processor builds in that block (projections, QK-norm and RoPE done): full
  SDPA (what FLUX runs) against CLEAR local attention (auto backend), with the FLOP bound and the share of it
  realised, and the max abs error against the exact masked reference (masked SDPA, a few heads at a time);
- clause routing, a two-panel layout: the left and right halves of the image each read the shared text and
  their own clause. The stock path is full SDPA with a dense (B, 1, L, L) bool mask; local attention takes the
  compact `TextRouting` (both built by `pipelines/routing.py`), and its reference is masked SDPA under the window
  and the routing together;
- each whole block with diffusers' own processor and with local attention, each with and without routing;
- peak memory of each call: the rise of the process's resident high-water mark (VmHWM, reset through
  /proc/self/clear_refs) over its resident size before the call, so it counts what the call allocates, not the
  weights; and the routing masks' own sizes;
- T-Stitch plumbing at that width: `apply_stitch` between this transformer and a half-width one, through a
  minimal pipeline-like object, with local attention in both (see `stitch_check`);
- at the first size, block-level oracles, each without and with the routing: local attention whose circle
  covers the grid against diffusers' own processor, and the auto backend against the dense one.

Timings are best of `--repeats` (for whole blocks half as many from 2048² on, where a call takes minutes), the
first call included, methods interleaved round-robin (the machine may be shared). The weights are random, so only timings, memory and exactness mean
anything here; docs/scaling.md projects a whole FLUX.1 step (19 double + 38 single blocks) from the block times.

    ditflow bench flux-width                          # 512², 1024², 2048²; r 16; 2 threads
    ditflow bench flux-width --sizes 512 1024 --json out/flux_width.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ditflow.bench.attention import _fixed_mmap_threshold, peak_extra_mib
from ditflow.kernels import local_attention as la
from ditflow.kernels import processors

# FLUX.1's transformer (black-forest-labs/FLUX.1-dev transformer/config.json), cut to one block of each kind
FLUX1 = dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=128,
             num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
             axes_dims_rope=(16, 56, 56))
FLUX1_DEPTH = {"double": 19, "single": 38}  # blocks of each kind in FLUX.1 [dev] and [schnell]
TEXT_LEN = 512  # FLUX.1-dev's T5 max_sequence_length
PX_PER_TOKEN = 16  # the VAE downsamples 8×, then latents are packed 2×2
SIZES = (512, 1024, 2048)
# CLEAR's default window: its distill.py trains window_size 16 unless told otherwise, and its README ships 8, 16
# and 32, warning that 8 often repeats patterns (https://github.com/Huage001/CLEAR). We take that size as our
# radius (dy² + dx² < r²); the paper's code was not at hand to check whether its edge is strict.
RADIUS = 16.0
SHARED_TEXT = 16  # two-panel routing: leading text tokens every image token reads (the tag and overview)
LARGE_GRID = 128  # from this grid side on, whole blocks get half the repeats (at least 1): minutes a call
HEAD_CHUNK = 6  # heads per masked-SDPA call of the exact reference
GOAL_ERR, GOAL_SHARE = 1e-4, 0.40  # the bar at 2048²: exact to 1e-4, ≥ 40% of the FLOP bound
STITCH_STEPS, STITCH_FRACTION, STITCH_AT = 4, 0.5, 1.0  # the small model takes the last 2 of 4 steps


class _Stop(Exception):
    """Raised by a capture hook once it has what it needs, so the rest of a forward never runs."""


# ----------------------------------------------------------------------------- the model and its inputs
def build_transformer(seed: int = 0, **overrides):
    """A FLUX.1-shaped transformer (FLUX1, with `overrides`) with seeded random fp32 weights; no download."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(**(FLUX1 | overrides)).eval()


def transformer_inputs(config, grid: tuple[int, int], text_len: int = TEXT_LEN, seed: int = 0) -> dict:
    """One denoising call's kwargs, as FluxPipeline makes them: packed latents, text states, ids, t, guidance."""
    from diffusers import FluxPipeline

    g = torch.Generator().manual_seed(seed)
    h, w = grid
    out = dict(hidden_states=torch.randn(1, h * w, config.in_channels, generator=g),
               encoder_hidden_states=torch.randn(1, text_len, config.joint_attention_dim, generator=g),
               pooled_projections=torch.randn(1, config.pooled_projection_dim, generator=g),
               timestep=torch.tensor([0.7]),
               img_ids=FluxPipeline._prepare_latent_image_ids(1, h, w, "cpu", torch.float32),
               txt_ids=torch.zeros(text_len, 3), return_dict=False)
    if config.guidance_embeds:
        out["guidance"] = torch.tensor([3.5])
    return out


def block_inputs(transformer, inputs: dict) -> dict:
    """The kwargs diffusers hands its first double block (embedded states, temb, RoPE), stopping right there.

    The single block is fed the same ones: its timing and exactness do not depend on the values it gets."""
    seen = {}

    def grab(module, args, kwargs):
        seen.update(kwargs)
        raise _Stop

    hook = transformer.transformer_blocks[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            transformer(**inputs)
    except _Stop:
        pass
    finally:
        hook.remove()
    return {k: v for k, v in seen.items() if k != "joint_attention_kwargs"}


def use_local(transformer, radius: float, grid: tuple[int, int], text_len: int, backend: str | None = None):
    """Install local attention and give its processors the geometry the transformer's pre-hook would: the
    blocks are then called directly."""
    handle = processors.install_local_attention(transformer, radius, backend=backend)
    handle.geometry.grid, handle.geometry.text_len = tuple(grid), int(text_len)
    return handle


@contextmanager
def captured_attention(stop: bool = True):
    """Record the (q, k, v, kwargs) our processor hands `local_attention`; with `stop`, end the call there."""
    seen = []
    original = processors.local_attention

    def record(q, k, v, **kw):
        seen.append((q.detach().contiguous(), k.detach().contiguous(), v.detach().contiguous(), kw))
        if stop:
            raise _Stop
        return original(q, k, v, **kw)

    processors.local_attention = record
    try:
        yield seen
    finally:
        processors.local_attention = original


def attention_inputs(block, kwargs: dict):
    """(q, k, v, kwargs) of `block`'s attention, (B, heads, L, D) after RoPE; local attention must be installed."""
    with captured_attention() as seen, torch.no_grad():
        try:
            block(**kwargs)
        except _Stop:
            pass
    if not seen:
        raise ValueError("the block did not call local attention: install it first (use_local)")
    return seen[0]


# ----------------------------------------------------------------------------- routing: a two-panel caption
@dataclass(frozen=True)
class PanelRouting:
    """One routing layout in the forms each path takes: the compact `TextRouting` local attention reads, and the
    dense (B, 1, L, L) bool mask diffusers' processor needs (what `pipelines/routing.py` passes it)."""

    owners: torch.Tensor  # (T,) region of each text token, -1 = shared
    inside: torch.Tensor  # (N, R) whether each image token lies in each region
    compact: la.TextRouting
    dense: torch.Tensor  # (1, 1, L, L) bool

    def mib(self) -> dict:
        c = self.compact
        compact = sum(t.numel() * t.element_size() for t in (c.image_class, c.class_text, c.text_text)
                      if t is not None)
        return dict(compact=compact / 2**20, dense_bool=self.dense.numel() / 2**20,
                    dense_float=4 * self.dense.numel() / 2**20)


def two_panel_routing(grid: tuple[int, int], text_len: int = TEXT_LEN, shared: int = SHARED_TEXT) -> PanelRouting:
    """A two-panel caption that fills the text: `shared` leading tokens every image token reads (tag and
    overview), then the left panel's clause, then the right's, each half of the rest; the regions are the
    image's left and right halves. Built by `pipelines/routing.py`, as a routed pipeline call builds it."""
    from diffusers import FluxPipeline

    from ditflow.pipelines.routing import Layout, Region, regions_of_tokens, text_routing

    if not 0 <= shared < text_len - 1:
        raise ValueError(f"shared text tokens must leave room for two clauses of the {text_len}; got {shared}")
    half = shared + (text_len - shared) // 2
    owners = torch.full((text_len,), -1, dtype=torch.long)
    owners[shared:half], owners[half:] = 0, 1
    layout = Layout((Region((0.0, 0.0, 1.0, 0.5), 0, 0), Region((0.0, 0.5, 1.0, 1.0), 0, 0)))
    img_ids = FluxPipeline._prepare_latent_image_ids(1, grid[0], grid[1], "cpu", torch.float32)
    inside = regions_of_tokens(img_ids, layout)
    compact = text_routing(owners, inside)
    return PanelRouting(owners, inside, compact, compact.dense())


# ----------------------------------------------------------------------------- measuring
def masked_reference(q, k, v, mask: torch.Tensor, chunk: int = HEAD_CHUNK) -> torch.Tensor:
    """Exact attention under a dense bool mask ((L, L) or (B, 1, L, L)), `chunk` heads per SDPA call."""
    with torch.no_grad():
        return torch.cat([F.scaled_dot_product_attention(q[:, h:h + chunk], k[:, h:h + chunk], v[:, h:h + chunk],
                                                         attn_mask=mask)
                          for h in range(0, q.shape[1], chunk)], dim=1)


def measure(calls: dict, repeats: int) -> dict:
    """name → dict(out, s (best), peak_mib) for each zero-argument call; the first call of each is also the
    memory measurement and counts as a repeat, then the calls take turns."""
    out = {}
    with torch.no_grad():
        for name, fn in calls.items():
            box = {}

            def first(fn=fn, box=box):
                t0 = time.perf_counter()
                box["out"] = fn()
                box["s"] = time.perf_counter() - t0

            peak = peak_extra_mib(first)
            out[name] = dict(out=box["out"], times=[box["s"]], peak_mib=peak)
        for _ in range(repeats - 1):
            for name, fn in calls.items():
                t0 = time.perf_counter()
                fn()
                out[name]["times"].append(time.perf_counter() - t0)
    for row in out.values():
        row["s"] = min(row.pop("times"))
    return out


def max_err(a, b) -> float:
    a = a[0] if isinstance(a, tuple) else a
    b = b[0] if isinstance(b, tuple) else b
    return float((a.float() - b.float()).abs().max())


def block_outputs_err(a, b) -> float:
    """Max abs difference of two block outputs ((text, image) or (image, text) tuples)."""
    return max(max_err(x, y) for x, y in zip(a, b))


def attention_rows(q, k, v, grid, radius, text_len, routing: PanelRouting, repeats, backend=None) -> dict:
    """Full SDPA, local attention, the stock routed path (SDPA + dense mask) and local attention with the compact
    routing, on one block's q, k, v; each against its exact masked reference."""
    length = q.shape[2]
    kw = dict(grid=tuple(grid), radius=radius, text_len=text_len)
    calls = {"SDPA (FLUX)": lambda: F.scaled_dot_product_attention(q, k, v),
             "local": lambda: la.local_attention(q, k, v, backend=backend, **kw),
             "SDPA + mask (stock)": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=routing.dense),
             "local + routing": lambda: la.local_attention(q, k, v, backend=backend, routing=routing.compact, **kw)}
    res = measure(calls, repeats)
    window = la.local_mask(tuple(grid), float(radius), text_len)
    both = routing.compact.dense(image_image=window[text_len:, text_len:])  # (1, 1, L, L): the window and routing
    masks = {"SDPA (FLUX)": None, "local": window, "SDPA + mask (stock)": routing.dense, "local + routing": both}
    held = {"SDPA + mask (stock)": routing.mib()["dense_bool"], "local + routing": routing.mib()["compact"]}
    full = res["SDPA (FLUX)"]["s"]
    rows = []
    for name, r in res.items():
        mask = masks[name]
        bound = 1.0 if mask is None else length * length / float(mask.sum())
        err = None if mask is None else max_err(r["out"], masked_reference(q, k, v, mask))
        rows.append(dict(method=name, ms=1e3 * r["s"], speedup=full / r["s"], flop_bound=bound,
                         share=full / r["s"] / bound, peak_mib=r["peak_mib"], mask_mib=held.get(name, 0.0),
                         max_err=err))
    return dict(rows=rows, backend=backend or la.choose_backend(q, tuple(grid), radius, text_len, False))


def block_rows(transformer, block, kwargs, grid, radius, text_len, routing: PanelRouting, repeats,
               backend=None) -> list[dict]:
    """The whole block: diffusers' processor and local attention, each without and with the routing (the dense
    mask for diffusers', the compact routing for ours)."""
    def stock(kw):
        def call():
            processors.remove_local_attention(transformer)
            return block(**kw)
        return call

    def local(kw):
        def call():
            if processors.installed(transformer) is None:
                use_local(transformer, radius, grid, text_len, backend)
            return block(**kw)
        return call

    def routed(mask):
        return kwargs | dict(joint_attention_kwargs={"attention_mask": mask})

    calls = {"diffusers (SDPA)": stock(kwargs), "local": local(kwargs),
             "diffusers + mask (stock)": stock(routed(routing.dense)),
             "local + routing": local(routed(routing.compact))}
    res = measure(calls, repeats)
    processors.remove_local_attention(transformer)
    held = {"diffusers + mask (stock)": routing.mib()["dense_bool"], "local + routing": routing.mib()["compact"]}
    base = res["diffusers (SDPA)"]["s"]
    return [dict(method=name, s=r["s"], speedup=base / r["s"], peak_mib=r["peak_mib"], mask_mib=held.get(name, 0.0))
            for name, r in res.items()]


def block_oracles(transformer, block, kwargs, grid, radius, text_len, routing: PanelRouting, backend=None) -> dict:
    """Through the whole block, max abs differences of the block outputs: local attention with a covering circle
    against diffusers' own processor, without and with the routing (compact for ours, the dense mask for
    diffusers'); and `backend` (None: auto) against the dense backend at `radius`, without and with it."""
    routed = kwargs | dict(joint_attention_kwargs={"attention_mask": routing.compact})
    stock_routed = kwargs | dict(joint_attention_kwargs={"attention_mask": routing.dense})
    cover = float(grid[0] + grid[1])  # dy² + dx² < r² for every pair of the grid
    with torch.no_grad():
        processors.remove_local_attention(transformer)
        stock, stock_r = block(**kwargs), block(**stock_routed)
        use_local(transformer, cover, grid, text_len)
        covering, covering_r = block(**kwargs), block(**routed)
        use_local(transformer, radius, grid, text_len, backend="dense")
        dense, dense_r = block(**kwargs), block(**routed)
        use_local(transformer, radius, grid, text_len, backend)
        auto, auto_r = block(**kwargs), block(**routed)
        processors.remove_local_attention(transformer)
    return {"covering circle vs diffusers": block_outputs_err(covering, stock),
            "covering circle + routing vs diffusers + mask": block_outputs_err(covering_r, stock_r),
            "local vs dense backend": block_outputs_err(auto, dense),
            "local + routing vs dense backend + routing": block_outputs_err(auto_r, dense_r)}


def stitch_check(large, grid, radius: float, text_len: int = TEXT_LEN, seed: int = 0) -> dict:
    """T-Stitch at FLUX width: `apply_stitch` between `large` and a half-width random transformer (half the
    heads, one double block; the same latent and text widths), both with local attention, through a minimal
    pipeline-like object whose scheduler is stepped as FluxPipeline steps it. Checks that the small model takes
    exactly the steps `small_step_range` gives it, and that every stitched call equals calling that model
    directly, bit for bit. It checks step routing and plumbing only; the models are random."""
    from types import SimpleNamespace

    from diffusers import FlowMatchEulerDiscreteScheduler

    from ditflow.pipelines.stitch import apply_stitch, remove_stitch, small_step_range

    shape = {key: large.config[key] for key in FLUX1}
    small = build_transformer(seed + 1, **shape | dict(num_layers=1, num_single_layers=0,
                                                       num_attention_heads=max(1, shape["num_attention_heads"] // 2)))
    pipe = SimpleNamespace(transformer=large, scheduler=FlowMatchEulerDiscreteScheduler())
    kw = transformer_inputs(large.config, grid, text_len, seed)
    for model in (large, small):
        processors.install_local_attention(model, radius)
    try:
        with torch.no_grad():
            direct = {"large": large(**kw)[0], "small": small(**kw)[0]}
            pipe.scheduler.set_timesteps(STITCH_STEPS)
            stitch = apply_stitch(pipe, small, STITCH_FRACTION, at=STITCH_AT)
            window = small_step_range(STITCH_FRACTION, STITCH_AT, STITCH_STEPS)
            errors = []
            for i, t in enumerate(pipe.scheduler.timesteps):
                out = large(**kw)[0]
                errors.append(max_err(out, direct["small" if i in window else "large"]))
                pipe.scheduler.step(out, t, kw["hidden_states"])  # advances the step index, as the pipeline does
            remove_stitch(pipe)
    finally:
        for model in (large, small):
            processors.remove_local_attention(model)
    calls = dict(stitch.calls)
    ok = calls == {"small": len(window), "large": STITCH_STEPS - len(window), "reused": 0} and max(errors) == 0
    return dict(steps=STITCH_STEPS, small_steps=list(window), calls=calls, max_err=max(errors), ok=ok,
                small_params=sum(p.numel() for p in small.parameters()))


# ----------------------------------------------------------------------------- one size, the projection, the run
def run_size(transformer, size: int, radius: float = RADIUS, repeats: int = 2, text_len: int = TEXT_LEN,
             seed: int = 0, oracles: bool = False, backend: str | None = None) -> dict:
    """Everything for one image size; `backend` forces a local-attention backend (None: the auto dispatch)."""
    if size % PX_PER_TOKEN:
        raise ValueError(f"image size {size} is not a multiple of {PX_PER_TOKEN} px (one packed FLUX token)")
    side = size // PX_PER_TOKEN
    grid = (side, side)
    block_repeats = repeats if side < LARGE_GRID else max(1, repeats // 2)  # a 2048² block call takes minutes
    t0 = time.perf_counter()
    inputs = transformer_inputs(transformer.config, grid, text_len, seed)
    kwargs = block_inputs(transformer, inputs)
    routing = two_panel_routing(grid, text_len, min(SHARED_TEXT, text_len // 4))
    blocks = {"double": transformer.transformer_blocks[0], "single": transformer.single_transformer_blocks[0]}
    out = dict(size=size, grid=side, tokens=text_len + side * side, radius=radius, text_len=text_len,
               repeats=repeats, block_repeats=block_repeats, masks_mib=routing.mib(), blocks={})
    for kind, block in blocks.items():
        use_local(transformer, radius, grid, text_len)
        q, k, v, _ = attention_inputs(block, kwargs)
        processors.remove_local_attention(transformer)
        att = attention_rows(q, k, v, grid, radius, text_len, routing, repeats, backend)
        del q, k, v
        res = dict(attention=att, block=block_rows(transformer, block, kwargs, grid, radius, text_len, routing,
                                                   block_repeats, backend))
        if oracles:
            res["oracles"] = block_oracles(transformer, block, kwargs, grid, radius, text_len, routing, backend)
        out["blocks"][kind] = res
    out["seconds"] = time.perf_counter() - t0
    return out


def projection(res: dict, depth: dict = FLUX1_DEPTH) -> dict:
    """A whole FLUX.1 step (19 double + 38 single blocks) from one size's block times; embedders, final layer
    and the VAE left out. A projection, not a measurement."""
    def step(method):
        return sum(depth[kind] * next(r["s"] for r in b["block"] if r["method"] == method)
                   for kind, b in res["blocks"].items())

    def attention_share(kind):
        att = {r["method"]: r["ms"] / 1e3 for r in res["blocks"][kind]["attention"]["rows"]}
        blk = next(r["s"] for r in res["blocks"][kind]["block"] if r["method"] == "diffusers (SDPA)")
        return att["SDPA (FLUX)"] / blk

    stock, local = step("diffusers (SDPA)"), step("local")
    stock_routed, local_routed = step("diffusers + mask (stock)"), step("local + routing")
    return dict(size=res["size"], stock_s=stock, local_s=local, speedup=stock / local, stock_routed_s=stock_routed,
                local_routed_s=local_routed, routed_speedup=stock_routed / local_routed,
                attention_share={kind: attention_share(kind) for kind in res["blocks"]})


def _mib(r) -> str:
    """Peak resident rise of a call, plus the routing mask it was handed (held before the call)."""
    if r["peak_mib"] is None:
        return "n/a"
    held = r.get("mask_mib", 0.0)
    return f"{r['peak_mib']:.0f}" + (f" + {held:.3g}" if held else "")


def print_results(results: list[dict], stitch: dict | None, header: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 140)  # a log keeps the tables whole
    console.print(header)
    att = Table("size", "block", "method", "ms", "×SDPA", "bound", "of it", "MiB", "max err",
                title="attention alone, one block's q, k, v (MiB: peak resident rise + the mask handed in)")
    blk = Table("size", "block", "method", "s", "×diffusers", "MiB", title="whole block")
    for res in results:
        label = f"{res['size']}²"
        for kind, b in res["blocks"].items():
            for r in b["attention"]["rows"]:
                err = "–" if r["max_err"] is None else f"{r['max_err']:.1e}"
                name = r["method"].replace("local", f"local ({b['attention']['backend']})", 1)
                att.add_row(label, kind, name, f"{r['ms']:.0f}", f"{r['speedup']:.2f}×",
                            f"{r['flop_bound']:.2f}×", f"{100 * r['share']:.0f}%", _mib(r), err)
            for r in b["block"]:
                blk.add_row(label, kind, r["method"], f"{r['s']:.2f}", f"{r['speedup']:.2f}×", _mib(r))
    console.print(att)
    console.print(blk)
    masks = Table("size", "tokens L", "compact routing", "dense (B,1,L,L) bool", "as float",
                  title="the routing's masks, batch 1")
    for res in results:
        m = res["masks_mib"]
        masks.add_row(f"{res['size']}²", str(res["tokens"]), f"{m['compact'] * 2**10:.0f} KiB",
                      f"{m['dense_bool']:.0f} MiB", f"{m['dense_float']:.0f} MiB")
    console.print(masks)
    for res in results:
        for kind, b in res["blocks"].items():
            for name, err in b.get("oracles", {}).items():
                console.print(f"block oracle, {res['size']}², {kind} block: {name}: max abs err {err:.1e}")
    proj = Table("size", "diffusers", "local", "speed-up", "diffusers + mask", "local + routing", "speed-up",
                 "SDPA share", title=f"PROJECTION, seconds per FLUX.1 step: {FLUX1_DEPTH['double']} double + "
                                     f"{FLUX1_DEPTH['single']} single blocks × the block times above (embedders, "
                                     "final layer, VAE left out); SDPA share: of a diffusers block's time")
    for res in results:
        p = projection(res)
        share = ", ".join(f"{k} {100 * v:.0f}%" for k, v in p["attention_share"].items())
        proj.add_row(f"{res['size']}²", f"{p['stock_s']:.0f}", f"{p['local_s']:.0f}", f"{p['speedup']:.2f}×",
                     f"{p['stock_routed_s']:.0f}", f"{p['local_routed_s']:.0f}", f"{p['routed_speedup']:.2f}×", share)
    console.print(proj)
    if stitch is not None:
        console.print(f"T-Stitch at FLUX width ({stitch['size']}²): small model ({stitch['small_params'] / 1e6:.0f}M "
                      f"params) on steps {stitch['small_steps']} of {stitch['steps']}, calls {stitch['calls']}, "
                      f"stitched vs direct max abs err {stitch['max_err']:.1e}: {'ok' if stitch['ok'] else 'FAILED'}")


def main(sizes=SIZES, radius: float = RADIUS, threads: int = 2, repeats: int = 2, seed: int = 0,
         text_len: int = TEXT_LEN, stitch: bool = True, json_out: str | None = None, quiet: bool = False,
         backend: str | None = None, **overrides) -> dict:
    """Run the bench; `overrides` change FLUX1's config (the tests shrink the width)."""
    if repeats < 1:
        raise ValueError(f"--repeats must be ≥ 1; got {repeats}")
    torch.set_num_threads(threads)
    _fixed_mmap_threshold()
    t0 = time.perf_counter()
    transformer = build_transformer(seed, **overrides)
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in (FLUX1 | overrides).items()}
    results = [run_size(transformer, size, radius, repeats, text_len, seed, oracles=(i == 0), backend=backend)
               for i, size in enumerate(sizes)]
    stitched = None
    if stitch:
        stitched = stitch_check(transformer, (sizes[0] // PX_PER_TOKEN,) * 2, radius, text_len, seed)
        stitched["size"] = sizes[0]
    report = dict(settings=dict(config=config, radius=radius, threads=threads, repeats=repeats, seed=seed,
                                text_len=text_len, shared_text=SHARED_TEXT, backend=backend or "auto",
                                torch=torch.__version__),
                  results=results, projection=[projection(r) for r in results], stitch=stitched,
                  seconds=time.perf_counter() - t0)
    if not quiet:
        print_results(results, stitched, f"FLUX-width blocks: {config['num_attention_heads']} heads × "
                                          f"{config['attention_head_dim']}, text {text_len}, r {radius}, fp32, "
                                          f"{threads} CPU threads, best of {repeats} (whole blocks "
                                          f"from {LARGE_GRID}² on: of {max(1, repeats // 2)})")
        print(f"took {report['seconds']:.0f} s")
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(json_out).with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=1))
        os.replace(tmp, json_out)
    return report


def cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ditflow bench flux-width", description=__doc__.splitlines()[0],
                                epilog="example: ditflow bench flux-width --sizes 512 1024 --json out/fw.json")
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES),
                   help=f"image sides in px, multiples of {PX_PER_TOKEN} (default 512 1024 2048: grids 32², 64², "
                        "128²)")
    p.add_argument("--radius", type=float, default=RADIUS,
                   help=f"local window radius in tokens (default {RADIUS:g}, CLEAR's default window for FLUX)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2,
                   help=f"timed calls per method, best kept; whole blocks get half as many (at least 1) from a "
                        f"{LARGE_GRID}² grid (2048²) on (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=[b for b in la.BACKENDS if b != "sdpa"],
                   help="force one local-attention backend (default: the auto dispatch)")
    p.add_argument("--no-stitch", dest="stitch", action="store_false", help="skip the T-Stitch check")
    p.add_argument("--json", dest="json_out", help="also write the results here (atomically)")
    a = p.parse_args(argv)
    main(a.sizes, a.radius, a.threads, a.repeats, a.seed, stitch=a.stitch, json_out=a.json_out, backend=a.backend)
    return 0
