"""Text → image, and in-context groups: references placed on one canvas, target panels generated beside them.

Targets are made by masked denoising. At every step the reference cells are reset to the reference latents noised
to the current level (RePaint, arXiv 2201.09865), so the DiT's attention reads them while it denoises the targets.
A model with fill channels (FLUX.1-Fill) gets the mask as input instead, through diffusers' `FluxFillPipeline`.
"""
from __future__ import annotations

import time

import torch
from PIL import Image

from ditflow.pipelines.loading import info_of
from ditflow.schemas import GenerateSpec, GroupSpec, ToolRecord
from ditflow.toolkit import canvas as cv
from ditflow.toolkit.flux import (Progress, blend_known, call_kwargs, check_size, derived, encode, image_tensor,
                                  noise_like, step_callback, steps_of, token_px)

BLANK_CLAUSE = "blank"  # what a spare cell without a reference is called in the group prompt


def generate(pipe, spec: GenerateSpec, progress: Progress | None = None) -> tuple[list[Image.Image], ToolRecord]:
    """`spec.num_images` images from a prompt, in one batch. `spec.classifier_guidance > 0` steers towards the
    attributes the prompt names."""
    if spec.classifier_guidance > 0:
        from ditflow.toolkit.guidance import guided_generate, targets_from_prompt
        from ditflow.schemas import GuideSpec

        gspec = GuideSpec(prompt=spec.prompt, target=targets_from_prompt(spec.prompt), scale=spec.classifier_guidance,
                          seed=spec.seed, steps=spec.steps, guidance_scale=spec.guidance_scale)
        return guided_generate(pipe, gspec, progress=progress, height=spec.height, width=spec.width)
    t0 = time.perf_counter()
    info = info_of(pipe)
    width, height = spec.width or info.panel, spec.height or info.panel
    check_size(pipe, width, height)
    kw = call_kwargs(pipe, spec, spec.prompt)
    images = pipe(height=height, width=width, callback_on_step_end=step_callback(progress, kw["num_inference_steps"]),
                  **kw).images
    return images, ToolRecord(tool="generate", spec=spec.model_dump(), seconds=time.perf_counter() - t0,
                              details={"size": [width, height], "model": info.name})


# ----------------------------------------------------------------------------- in-context groups
def has_fill_channels(pipe) -> bool:
    """FLUX.1-Fill style transformers take [noise, masked-image latents, mask] concatenated per token."""
    return pipe.transformer.config.in_channels > 4 * pipe.vae.config.latent_channels


def fill_canvas(pipe, canvas: Image.Image, layout: cv.Layout, known: list[bool], prompt: str, spec, seed: int,
                progress: Progress | None = None, step_offset: int = 0, total: int | None = None) -> Image.Image:
    """Generate the unknown cells of `canvas` conditioned on the known ones; returns the whole canvas."""
    width, height = layout.size
    check_size(pipe, width, height)
    kw = call_kwargs(pipe, spec.model_copy(update={"seed": seed}), prompt)
    steps = kw["num_inference_steps"]
    total = total or steps
    report = (lambda s, _t: progress(step_offset + s, total)) if progress else None
    if all(not k for k in known):  # text-only: the whole canvas in one ordinary call
        return pipe(height=height, width=width, callback_on_step_end=step_callback(report, steps), **kw).images[0]
    mask_px = cv.known_mask(layout, known)  # 1 = known
    if has_fill_channels(pipe):
        from diffusers import FluxFillPipeline

        fill = derived(pipe, FluxFillPipeline)
        gen_mask = Image.fromarray(((1.0 - mask_px) * 255).astype("uint8"), "L")
        return fill(image=canvas, mask_image=gen_mask, height=height, width=width,
                    callback_on_step_end=step_callback(report, steps), **kw).images[0]
    with torch.no_grad():
        known_latents = encode(pipe, image_tensor(pipe, canvas))  # (1, tokens, 4C)
    noise = noise_like(known_latents, seed)
    m = torch.from_numpy(cv.token_mask(mask_px, token_px(pipe)))[None, :, None].to(noise)  # (1, tokens, 1)
    hook = lambda p, i, t, lat: blend_known(p, i, lat, known_latents, noise, m)  # noqa: E731
    return pipe(height=height, width=width, latents=noise, callback_on_step_end=step_callback(report, steps, hook),
                **kw).images[0]


def _canvas_plan(n_refs: int, n_targets: int, max_panels: int) -> list[tuple[list[int], list[int]]]:
    """Split a group into canvases: [(reference indices, target indices)], indices into refs + targets.

    Long sequences continue on new canvases (ChatDiT), but every later canvas is anchored on the *same* panels
    (the given references, or else the first canvas's outputs) rather than on the latest outputs, so errors
    do not accumulate down the sequence.
    """
    if n_refs + n_targets <= max_panels:
        return [(list(range(n_refs)), list(range(n_refs, n_refs + n_targets)))]
    if max_panels < 2:
        raise ValueError(f"{n_refs + n_targets} panels need several canvases, which needs max_panels ≥ 2")
    n_anchor = min(max(n_refs, 1), max_panels // 2)
    plans, todo = [], list(range(n_refs, n_refs + n_targets))
    if n_refs == 0:  # the first canvas is text-only and its first panel becomes the anchor
        plans.append(([], todo[:max_panels]))
        todo = todo[max_panels:]
        anchors = plans[0][1][:n_anchor]
    else:
        anchors = list(range(n_anchor))
    while todo:
        room = max_panels - len(anchors)
        plans.append((anchors, todo[:room]))
        todo = todo[room:]
    return plans


def generate_group(pipe, spec: GroupSpec, refs: list[Image.Image] | None = None,
                   progress: Progress | None = None) -> tuple[list[Image.Image], ToolRecord]:
    """Target panels of an in-context group (references are not returned).

    `spec.panel_prompts` has one clause per panel, references first; `spec.overview` says what they share.
    """
    t0 = time.perf_counter()
    refs = list(refs or [])
    if len(refs) != spec.n_refs:
        raise ValueError(f"the spec says n_refs={spec.n_refs} but {len(refs)} reference images were given")
    n_targets = len(spec.panel_prompts) - spec.n_refs
    if n_targets < 1:
        raise ValueError(f"{len(spec.panel_prompts)} panel prompts for {spec.n_refs} references leaves no target; "
                         "give one prompt per reference and per output")
    info = info_of(pipe)
    aspect = cv.aspect_of(refs)
    plans = _canvas_plan(spec.n_refs, n_targets, spec.max_panels)
    steps = steps_of(pipe, spec)
    panels: dict[int, Image.Image] = dict(enumerate(refs))
    canvases = []
    for k, (ref_ids, target_ids) in enumerate(plans):
        used = ref_ids + target_ids
        if spec.width and spec.height:  # the caller's panel size
            layout = cv.Layout(*cv.choose_grid(len(used), spec.width / spec.height, spec.max_panels),
                               spec.width, spec.height, len(used))
        else:
            layout = cv.plan_layout(len(used), native_area=info.native_area, panel=info.panel, aspect=aspect,
                                    max_panels=spec.max_panels, multiple=token_px(pipe))
        spare = layout.cells - len(used)
        fill_ids = [ref_ids[j % len(ref_ids)] for j in range(spare)] if ref_ids else [None] * spare
        cells = used + fill_ids
        known = [c is None or c in ref_ids for c in cells]
        clauses = [BLANK_CLAUSE if c is None else spec.panel_prompts[c] for c in cells]
        prompt = cv.group_prompt(layout.grid, spec.overview, clauses)
        image = cv.compose(layout, [None if c is None or c not in ref_ids else panels[c] for c in cells])
        out = fill_canvas(pipe, image, layout, known, prompt, spec, spec.seed + k, progress, k * steps,
                          steps * len(plans))
        for c, panel in zip(cells, cv.split(layout, out)):
            if c is not None and c not in ref_ids:
                panels[c] = panel
        canvases.append({"grid": list(layout.grid), "panel": [layout.panel_w, layout.panel_h], "prompt": prompt,
                         "refs": ref_ids, "targets": target_ids, "spare": spare})
    targets = [panels[i] for i in range(spec.n_refs, spec.n_refs + n_targets)]
    method = "fill" if has_fill_channels(pipe) else "repaint"
    return targets, ToolRecord(tool="group", spec=spec.model_dump(), seconds=time.perf_counter() - t0,
                               details={"canvases": canvases, "method": method, "model": info.name})
