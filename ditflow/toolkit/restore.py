"""Training-free diffusion restoration on the pipeline's own prior (DiffPIR, arXiv 2305.08995; DDRM family).

Each step of a FLUX img2img run, inside `callback_on_step_end`:
  1. denoise: x̂0 from the latents and the model's velocity (flux.x0_hook);
  2. data consistency for the known operator H: x̃0 = argmin ‖y − H x‖² + ρ_t ‖x − D(x̂0)‖² in closed form in
     pixel space (noise, blur, ×2/×4, missing region), re-encoded; for JPEG, a gradient step on ‖y − D(x̂0)‖²
     through the VAE decoder instead;
  3. re-noise to the next level: the latents move by (1 − σ)(E(x̃0) − x̂0), keeping the model's own noise.
The run starts at the schedule step whose noise level matches the measurement.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from PIL import Image

from ditflow.pipelines.loading import info_of
from ditflow.schemas import RestoreSpec, ToolRecord
from ditflow.toolkit import degradation as dg
from ditflow.toolkit.flux import (Progress, call_kwargs, decode, derived, encode, noise_like, step_callback,
                                  steps_of, strength_for, token_px, x0_hook)

# Where the noiseless operators start: how much of the image they leave to the prior (σ of the flow path).
START_SIGMA = {"blur": 0.5, "sr2": 0.5, "sr4": 0.7, "jpeg": 0.35, "inpaint": 0.9}
LAMBDA = 1.0  # DiffPIR's λ in ρ_t = λ σ_n² / σ̄_t²
FINAL_PROJECTIONS = 50  # onto {x: Hx = y} and [0, 1]; both convex, so this converges to a point of both
JPEG_LR = 0.5  # latent step of the JPEG gradient update, in units of the normalised gradient's RMS × σ


def _pix(pipe, latents, w, h) -> torch.Tensor:
    return (decode(pipe, latents, w, h).float() + 1) / 2  # (1, 3, H, W) in [0, 1]


def _enc(pipe, x: torch.Tensor) -> torch.Tensor:
    return encode(pipe, (x.clamp(0, 1) * 2 - 1).to(pipe.vae.device, pipe.vae.dtype))


@torch.no_grad()
def latent_noise_gain(pipe, x: torch.Tensor, sigma: float, seed: int = 0) -> float:
    """How much latent noise per unit of pixel noise this VAE produces around `x`: the RMS latent change for a
    pixel perturbation of std σ, divided by σ (in the [-1, 1] units the VAE sees)."""
    n = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)) * sigma
    dz = _enc(pipe, x + n) - _enc(pipe, x)
    return float(dz.pow(2).mean().sqrt()) / (2 * sigma)


def start_sigma(pipe, op: dg.Degradation, x_init: torch.Tensor) -> float:
    """Noise: the σ whose flow-path noise-to-signal σ/(1 − σ) equals the measurement's noise in latent units.
    Other operators: a fixed level per operator (START_SIGMA)."""
    if op.name == "noise":
        s = latent_noise_gain(pipe, x_init, op.severity) * 2 * op.severity
        return s / (1 + s)
    return START_SIGMA[op.name]


def dc_hook(op: dg.Degradation, y: torch.Tensor, width: int, height: int, log: list):
    """fn(pipe, latents, x̂0, σ) → latents for flux.x0_hook: one DiffPIR data-consistency step."""

    def fn(pipe, latents, x0, sigma):
        with torch.no_grad():
            xhat = _pix(pipe, x0, width, height)
        if op.name == "jpeg":  # no closed form: one gradient step through the decoder
            with torch.enable_grad():
                z = x0.detach().float().requires_grad_(True)
                loss = (_pix(pipe, z, width, height) - y).pow(2).sum()
                (g,) = torch.autograd.grad(loss, z)
            g = g / g.pow(2).mean().sqrt().clamp_min(1e-12)
            z0 = x0 - JPEG_LR * max(sigma, 0.05) * g.to(x0.dtype)
        else:
            nsr = max(sigma, 1e-3) / max(1 - sigma, 1e-3)  # σ̄_t: the flow path's noise-to-signal ratio
            rho = LAMBDA * op.noise_sigma ** 2 / nsr ** 2
            with torch.no_grad():
                z0 = _enc(pipe, op.prox(xhat, y, rho))
        log.append({"sigma": round(sigma, 4), "residual": round(float((xhat - y).pow(2).mean()), 6)
                    if xhat.shape == y.shape else None})
        return latents + (1 - sigma) * (z0 - x0)  # re-noise: keep the model's noise, move its x̂0 to x̃0

    return fn


def restore_tensor(pipe, op: dg.Degradation, y: torch.Tensor, spec: RestoreSpec, progress: Progress | None = None,
                   prompt: str = "") -> tuple[torch.Tensor, dict]:
    """Restore measurement y (1, 3, h, w) in [0, 1] under operator `op`; returns (x (1, 3, H, W), details)."""
    from diffusers import FluxImg2ImgPipeline

    h, w = op.out_size(y)
    m = token_px(pipe)
    if h % m or w % m:
        raise ValueError(f"restored size {w}x{h} is not a multiple of {m} px (what this model's latents need); "
                         f"crop the image so the restored size is, e.g. {w // m * m}x{h // m * m}")
    x_init = op.init(y).clamp(0, 1)
    steps = steps_of(pipe, spec)
    s_want = start_sigma(pipe, op, x_init)
    strength, s0 = strength_for(pipe, steps, s_want, w, h)
    z_init = _enc(pipe, x_init)
    start = (1 - s0) * z_init + s0 * noise_like(z_init, spec.seed)  # the flow path at the starting level
    cfg = spec.guidance_scale if spec.guidance_scale is not None else (info_of(pipe).default_cfg if prompt else 1.0)
    kw = call_kwargs(pipe, spec.model_copy(update={"guidance_scale": cfg}), prompt)
    i2i = derived(pipe, FluxImg2ImgPipeline)
    n_run = max(1, int(steps * strength + 1e-6))
    log: list = []
    hook = x0_hook(dc_hook(op, y.to(pipe.vae.device), w, h, log), start)
    out = i2i(image=dg.to_image(x_init), strength=strength, latents=start, height=h, width=w, output_type="pt",
              callback_on_step_end=step_callback(progress, n_run, hook), **kw).images  # (1, 3, H, W) in [0, 1]
    x = out.float().cpu()
    if op.name == "blur":  # Wiener deconvolution with the diffusion result as its prior instead of 0
        x = op.prox(x, y, dg.WIENER_NSR)
    elif op.name not in ("noise", "jpeg"):  # exact consistency with y inside [0, 1]: alternating projections
        for _ in range(FINAL_PROJECTIONS):
            x = op.prox(x, y, 1e-4).clamp(0, 1)
    return x.clamp(0, 1), {"start_sigma": round(s0, 4), "wanted_sigma": round(s_want, 4), "steps_run": n_run,
                           "trace": log}


def measurement(image: Image.Image, name: str,
                mask: Image.Image | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The measurement y of a degraded image, and the known-pixel mask for `inpaint`."""
    y = dg.to_tensor(image)
    if name != "inpaint":
        return y, None
    if mask is not None:
        if mask.size != image.size:
            raise ValueError(f"mask is {mask.size[0]}x{mask.size[1]} but the image is {image.width}x{image.height}; "
                             "give a mask of the same size (white = missing)")
        known = 1.0 - (dg.to_tensor(mask.convert("RGB"))[:, :1] > 0.5).float()
        return y, known
    known = dg.find_hole(y)
    if known is None:
        raise ValueError("no missing region found (no black area ≥1% of the image); give a mask with --mask")
    return y, known


def restore(pipe, image: Image.Image, spec: RestoreSpec, progress: Progress | None = None,
            mask: Image.Image | None = None, prompt: str = "") -> tuple[list[Image.Image], ToolRecord]:
    """Restore `image`. `spec.degradation="auto"` asks the degradation classifier which one it has.

    For sr2/sr4 the input is the low-resolution image and the output is 2×/4× larger; when `auto` finds a
    full-size image that looks upsampled, it is measured at the low resolution and restored to its own size.
    """
    t0 = time.perf_counter()
    name, severity, detected = spec.degradation, spec.severity, None
    if name == "auto":
        detected = dg.detect_degradations(image)
        if not detected:
            return [image.copy()], ToolRecord(tool="restore", spec=spec.model_dump(), seconds=time.perf_counter() - t0,
                                              details={"detected": [], "note": "no degradation found; unchanged"})
        name = detected[0][0]
        severity = severity if severity is not None else detected[0][1]
    y, known = measurement(image, name, mask)
    op = dg.operator(name, severity, known)
    if detected and isinstance(op, dg.Downsample):
        f = op.factor
        y = dg.quantize(F.avg_pool2d(y[..., : y.shape[-2] // f * f, : y.shape[-1] // f * f], f))
    x, details = restore_tensor(pipe, op, y, spec, progress, prompt)
    details.update({"degradation": name, "severity": op.severity, "detected": detected, "model": info_of(pipe).name})
    return [dg.to_image(x)], ToolRecord(tool="restore", spec=spec.model_dump(), seconds=time.perf_counter() - t0,
                                        details=details)
