"""The call settings a FLUX-family pipeline needs, in one place: text length, CFG flavour, steps.

FLUX.1-dev is guidance-distilled (`guidance_embeds=True`: pass `guidance_scale`); the builtin model and most
small models use true classifier-free guidance (`negative_prompt=""` + `true_cfg_scale`).
"""
from __future__ import annotations

import torch

from ditflow.pipelines.loading import info_of


def call_kwargs(pipe, steps: int | None = None, cfg: float | None = None) -> dict:
    info = info_of(pipe)
    cfg = info.default_cfg if cfg is None else cfg
    kw = {"num_inference_steps": steps or info.default_steps, "max_sequence_length": info.text_len}
    if info.guidance_embeds:
        kw["guidance_scale"] = cfg
    elif cfg > 1.0:
        kw.update(negative_prompt="", true_cfg_scale=cfg)
    return kw


def generators(seeds: list[int], device="cpu") -> list[torch.Generator]:
    """One generator per image, so an image depends on its own seed only, not on its batch neighbours."""
    return [torch.Generator(device).manual_seed(int(s)) for s in seeds]


def progress_callback(progress, total: int):
    """Adapt a `progress(step, total)` function to diffusers' `callback_on_step_end`."""
    if progress is None:
        return {}

    def cb(pipe, i, t, kwargs):
        progress(i + 1, total)
        return {}

    return {"callback_on_step_end": cb}


@torch.no_grad()
def text_to_images(pipe, prompts: list[str], sizes: list[tuple[int, int]], seeds: list[int],
                   steps: int | None = None, cfg: float | None = None, batch: int = 16, progress=None):
    """Generate one image per prompt at its (height, width); each batch holds one size."""
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, size in enumerate(sizes):
        by_size.setdefault(tuple(size), []).append(i)
    kw = call_kwargs(pipe, steps, cfg)
    out: list = [None] * len(prompts)
    done = 0
    for (h, w), idx in by_size.items():
        for start in range(0, len(idx), batch):
            chunk = idx[start:start + batch]
            images = pipe([prompts[i] for i in chunk], height=h, width=w, generator=generators([seeds[i] for i in chunk]),
                          output_type="pil", **kw).images
            for i, im in zip(chunk, images):
                out[i] = im
            done += len(chunk)
            if progress:
                progress(done, len(prompts))
    return out
