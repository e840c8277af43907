"""What every tool needs from a FLUX-family pipeline: the call arguments that depend on the model (text length,
true CFG vs distilled guidance), packed latents to and from images, and a step callback that reports progress.

FLUX latents are packed: the VAE gives (B, C, h, w) and the transformer sees (B, h/2 · w/2, 4C) tokens, each a
2×2 latent patch, i.e. a (2 · vae_scale_factor)² px square of the image.
"""
from __future__ import annotations

import inspect
from typing import Callable

import numpy as np
import torch
from PIL import Image

from ditflow.pipelines.loading import info_of
from ditflow.pipelines.routing import track_captions
from ditflow.schemas import ToolSpec

Progress = Callable[[int, int], None]
StepHook = Callable[[object, int, torch.Tensor, torch.Tensor], torch.Tensor]  # (pipe, i, t, latents) → latents


def token_px(pipe) -> int:
    """Side in px of one packed latent token; canvas sizes must be multiples of it."""
    return pipe.vae_scale_factor * 2


def check_size(pipe, width: int, height: int) -> None:
    m = token_px(pipe)
    if width % m or height % m:
        raise ValueError(f"size {width}x{height} is not a multiple of {m} px (what this model's latents need); "
                         f"use e.g. {max(m, round(width / m) * m)}x{max(m, round(height / m) * m)}")


def steps_of(pipe, spec: ToolSpec) -> int:
    return spec.steps or info_of(pipe).default_steps


def call_kwargs(pipe, spec: ToolSpec, prompt: str | None = None) -> dict:
    """Arguments for any Flux*Pipeline call: steps, text length and the model's guidance form (distilled
    guidance for FLUX.1-dev, true CFG for the builtin model; see `pipelines.sampling`), the seed, the prompt."""
    from ditflow.pipelines.sampling import call_kwargs as model_kwargs

    kw = model_kwargs(pipe, steps_of(pipe, spec), spec.guidance_scale)
    kw["generator"] = torch.Generator("cpu").manual_seed(spec.seed)
    if getattr(spec, "num_images", 1) > 1:
        kw["num_images_per_prompt"] = spec.num_images
    if prompt is not None:
        kw["prompt"] = prompt
    return kw


def step_callback(progress: Progress | None, total: int, hook: StepHook | None = None):
    """A `callback_on_step_end` that runs `hook` on the latents, then reports (step, total)."""

    def callback(pipe, i, t, kwargs):
        out = {}
        if hook is not None:
            out["latents"] = hook(pipe, i, t, kwargs["latents"])
        if progress is not None:
            progress(i + 1, total)
        return out

    return callback


def sigma_now(pipe) -> float:
    """Noise level of the latents the scheduler just produced (read inside `callback_on_step_end`). Uses the
    scheduler's own step index, so it is right for img2img pipelines that start part-way down the schedule."""
    return float(pipe.scheduler.sigmas[pipe.scheduler.step_index])


def x0_hook(fn: Callable, start: torch.Tensor) -> StepHook:
    """Turn `fn(pipe, latents, x0_hat, sigma) → latents` into a step hook.

    diffusers does not hand the velocity to step callbacks, but an Euler step is x_next = x + (σ_next − σ) v, so
    v follows from two consecutive latents, and x̂0 = x_next − σ_next · v (rectified flow, arXiv 2209.03003).
    `start` is the latents the loop began from; each hook's output becomes the next step's start.
    """
    state = {"prev": start}

    def hook(pipe, i, t, latents):
        s_next = sigma_now(pipe)
        s_prev = float(pipe.scheduler.sigmas[pipe.scheduler.step_index - 1])
        v = (latents - state["prev"]) / (s_next - s_prev)
        out = fn(pipe, latents, latents - s_next * v, s_next)
        state["prev"] = out
        return out

    return hook


# ----------------------------------------------------------------------------- images ↔ packed latents
def image_tensor(pipe, images: Image.Image | list[Image.Image]) -> torch.Tensor:
    """PIL → (B, 3, H, W) in [-1, 1] on the pipeline's device and dtype."""
    x = pipe.image_processor.preprocess(images)
    return x.to(pipe.vae.device, pipe.vae.dtype)


@torch.no_grad()
def encode(pipe, x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] → packed latents (B, H/p · W/p, 4C), p = token_px, scaled as the transformer sees."""
    cfg = pipe.vae.config
    z = pipe.vae.encode(x).latent_dist.mode()  # (B, C, h, w)
    z = (z - (cfg.shift_factor or 0.0)) * cfg.scaling_factor
    b, c, h, w = z.shape
    return pipe._pack_latents(z, b, c, h, w)


def decode(pipe, latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Packed latents → (B, 3, H, W) in [-1, 1]. Differentiable (guidance and restoration take gradients)."""
    cfg = pipe.vae.config
    z = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)  # (B, C, h, w)
    z = z / cfg.scaling_factor + (cfg.shift_factor or 0.0)
    return pipe.vae.decode(z.to(pipe.vae.dtype), return_dict=False)[0]


def to_pil(x: torch.Tensor) -> list[Image.Image]:
    a = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(im) for im in a]


def noise_like(latents: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator("cpu").manual_seed(seed)
    return torch.randn(latents.shape, generator=g, dtype=torch.float32).to(latents.device, latents.dtype)


def blend_known(pipe, i: int, latents: torch.Tensor, known: torch.Tensor, noise: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
    """RePaint-style replacement (arXiv 2201.09865): where `mask` (tokens, 1) is 1, put the known clean latents
    noised to the current level along the flow-matching path x_σ = (1 − σ) x0 + σ ε (arXiv 2210.02747)."""
    s = sigma_now(pipe)
    noised = (1.0 - s) * known + s * noise
    return mask * noised + (1.0 - mask) * latents


def as_array(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


# ----------------------------------------------------------------------------- starting part-way down the schedule
def schedule_sigmas(pipe, steps: int, width: int, height: int) -> np.ndarray:
    """The noise levels a Flux pipeline will step through for this size (with FLUX's resolution-dependent shift
    where the scheduler uses it), ending with the terminal 0."""
    import copy

    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    sched = copy.deepcopy(pipe.scheduler)
    seq = (height // pipe.vae_scale_factor // 2) * (width // pipe.vae_scale_factor // 2)
    c = sched.config
    mu = calculate_shift(seq, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                         c.get("base_shift", 0.5), c.get("max_shift", 1.15))
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    return sched.sigmas.float().numpy()


def strength_for(pipe, steps: int, sigma_start: float, width: int, height: int) -> tuple[float, float]:
    """(img2img `strength`, the noise level it really starts at) for the schedule step nearest `sigma_start`."""
    sig = schedule_sigmas(pipe, steps, width, height)[:steps]
    k = int(np.abs(sig - sigma_start).argmin())
    # FluxImg2ImgPipeline starts at index int(steps − steps·strength); stay just under the boundary
    return (steps - k) / steps - 1e-9, float(sig[k])


def derived(pipe, cls):
    """`cls` (img2img, inpaint, fill) over `pipe`'s own modules, made once per pipeline: it shares them, so anything
    applied to the pipeline (attention processors, T-Stitch, clause routing) applies to it too."""
    cache = pipe.__dict__.setdefault("_ditflow_derived", {})
    key = (cls, id(pipe.transformer), id(pipe.vae))  # a swapped module means a fresh derived pipeline
    if key not in cache:
        # not `cls.from_pipe(pipe)`: it casts the shared modules to its `dtype` (float32 unless told), which turned
        # a bfloat16 pipeline float32 on its first edit, and warned about it
        wanted = inspect.signature(cls).parameters
        cache[key] = cls(**{k: v for k, v in pipe.components.items() if k in wanted})
        cache[key].set_progress_bar_config(disable=True)
        track_captions(cache[key])  # clause routing, when on, follows the shared transformer
    return cache[key]
