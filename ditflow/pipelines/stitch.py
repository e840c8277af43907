"""T-Stitch: a small transformer denoises a share of the sampling steps (the first, by default), the large one the rest.

Pan et al. 2024, "T-Stitch: Accelerating Sampling in Pre-trained Diffusion Models with Trajectory Stitching"
(https://arxiv.org/abs/2402.14167): early, high-noise steps only lay out low frequencies, which a small model
gets about as right as a large one, so switching models along the trajectory trades little quality for speed.
The two models must share the latent space (VAE), the text conditioning and the sampler; nothing else.

    stitch = apply_stitch(pipe, small_transformer, 0.4)   # pipe.transformer stays the large model
    pipe("a red circle", num_inference_steps=20)          # steps 0-7 small, 8-19 large
    remove_stitch(pipe)

Where the small model's steps sit is a choice (`at`): 0 puts them first, as the paper does; 1 puts them last,
where the large model has already laid the scene out. On the builtin pair the last steps cost fewer points
(docs/lab-notes.md, T-Stitch): that small model places objects worse than it sharpens them, and a copy
fine-tuned on low noise alone (`builtin-small-late`) loses fewer still.

    apply_stitch(pipe, small_transformer, 0.4, at=1.0)    # steps 0-11 large, 12-19 small

With true classifier-free guidance the pipeline calls the transformer twice a step, conditional then
unconditional. Late, low-noise steps need the guidance least (Kynkäänniemi et al. 2024, "Applying Guidance in a
Limited Interval Improves Sample and Distribution Quality in Diffusion Models", https://arxiv.org/abs/2404.07724):
the scene is laid out, and what is left is sharpening it. `cfg=False` gives the small model's steps the
conditional velocity alone. The unconditional call is answered with the conditional output, so the pipeline's
`uncond + s·(cond − uncond)` is the conditional velocity, and the small model runs once per step instead of twice.
On the builtin pair, at the last 8 of 20 steps, that bought 1.38× → 1.55–1.74× for 0–1.7 points.

    apply_stitch(pipe, small_transformer, 0.4, at=1.0, cfg=False)

A small model's error along one trajectory is mostly a bias that changes slowly from step to step: on the builtin
pair the late expert rounds off the corners the large model drew. When the small model's steps come after a large
step (`at` > 0), `offset=True` measures that bias once: on the large model's last step before the window the small
model also runs, on the same inputs, and the difference (large − small, per call, so the conditional and the
unconditional pass each get their own) is added to every small-model output in the window. The small model then
supplies how the velocity changes across its steps and the large model where it starts from: one extra small call
per pass, per run. On the builtin pair, the last 8 of 20 steps, that took the loss on the expert's worst seed set
from 4.6 points to 1.7 (docs/lab-notes.md, T-Stitch).

    apply_stitch(pipe, small_transformer, 0.4, at=1.0, offset=True)

The two combine. With `cfg=False` the offset is measured on the conditional pass alone, and the anchor step's
guidance direction from the large model (its conditional minus its unconditional output) is carried through the
window as well: each unconditional call is answered with the small model's shifted conditional output minus that
direction, so the pipeline's `uncond + s·(cond − uncond)` is `cond + (s − 1)·guidance`. The guidance stays at its
anchor value, as FasterCache (Lv et al. 2024, https://arxiv.org/abs/2410.19355) reuses it across steps; the small
model runs once per window step, plus once on the anchor.

    apply_stitch(pipe, small_transformer, 0.4, at=1.0, cfg=False, offset=True)

The large transformer's `forward` is shadowed on the instance, so everything the pipeline reads from
`pipe.transformer` (config, dtype, cache contexts, attention processors) is still the large model's, and any
diffusers pipeline that steps `pipe.scheduler` works unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

_ATTR = "_ditflow_stitch"
SHARED = ("in_channels", "joint_attention_dim", "pooled_projection_dim", "patch_size")  # must match to stitch
DEFAULT_GUIDANCE = 3.5  # for a guidance-distilled small model paired with a large one that takes no guidance


@dataclass
class Stitch:
    """One stitched pipeline: the small model, the fraction, and how many transformer calls each served."""

    small: torch.nn.Module
    fraction: float
    at: float = 0.0  # where the small model's steps sit among all steps: 0 = first (T-Stitch), 1 = last
    guidance: float = DEFAULT_GUIDANCE
    cfg: bool = True  # False: the small model's steps skip true CFG's unconditional pass
    offset: bool = False  # True: the small model's outputs are shifted by (large − small) from the step before
    calls: dict = field(default_factory=lambda: {"small": 0, "large": 0, "reused": 0})
    last_call: tuple | None = field(default=None, repr=False)  # (step, latents) of the last call: which pass is next
    last_small: object = field(default=None, repr=False)  # the last call's output, when the small model made it
    offsets: dict = field(default_factory=dict, repr=False)  # pass (0 cond, 1 uncond) -> large − small
    guide: torch.Tensor | None = field(default=None, repr=False)  # cfg=False + offset: large cond − large uncond
    anchor_cond: torch.Tensor | None = field(default=None, repr=False)  # the anchor's large cond output, until uncond

    def small_steps(self, total: int) -> range:
        return small_step_range(self.fraction, self.at, total)


def small_step_range(fraction: float, at: float, total: int) -> range:
    """The step indices (of `total`) a small model with share `fraction` takes: round(f · total) consecutive
    steps, starting at the share `at` of the steps that remain (0: the first steps, 1: the last)."""
    k = round(fraction * total)
    start = round(at * (total - k))
    return range(start, start + k)


def check_compatible(large, small) -> None:
    for key in SHARED:
        a, b = large.config.get(key), small.config.get(key)
        if a != b:
            raise ValueError(f"cannot stitch: the small transformer's {key} is {b} but the large one's is {a}; "
                             "T-Stitch needs two models with the same latent space and text conditioning")


def _step(scheduler) -> tuple[int, int]:
    """(index of the step being denoised, steps in the full schedule) from a diffusers scheduler."""
    timesteps = getattr(scheduler, "timesteps", None)
    total = 0 if timesteps is None else len(timesteps)
    index = getattr(scheduler, "step_index", None)
    if index is None:  # the first call of a run comes before the scheduler's first step
        index = getattr(scheduler, "begin_index", None) or 0
    return int(index), total


def _sample(out) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out.sample


def _with_sample(out, sample: torch.Tensor):
    """`out` (a tuple with return_dict=False, else a Transformer2DModelOutput) carrying `sample` instead."""
    if isinstance(out, tuple):
        return (sample, *out[1:])
    return type(out)(sample=sample)


def apply_stitch(pipe, small_transformer, fraction: float, *, at: float = 0.0,
                 guidance: float = DEFAULT_GUIDANCE, cfg: bool = True, offset: bool = False) -> Stitch:
    """Route a `fraction` of each sampling run's steps to `small_transformer`: the first ones by default.

    Args:
        pipe: a diffusers Flux-family pipeline; `pipe.transformer` is the large model and stays in place.
        small_transformer: any Flux transformer with the same in_channels, joint_attention_dim,
            pooled_projection_dim and patch_size. Moved to the large model's device and dtype.
        fraction: share of the steps, counted over the full schedule, that the small model takes (0 = large
            only, 1 = small only).
        at: where those steps sit: 0 = the first steps (T-Stitch), 1 = the last, 0.5 = mid-way.
        guidance: the guidance value given to a guidance-distilled small model when the large one takes none.
        cfg: False answers true CFG's unconditional call in the small model's steps with the conditional output
            just computed (same step, same latents), so those steps follow the conditional velocity at half the
            cost. No effect on pipelines that call the transformer once per step.
        offset: True also runs the small model on the large model's last step before the small model's window
            and adds the difference of the two outputs (large − small, per CFG pass) to each of the small model's
            outputs. Needs `at` > 0: the first steps have no large step before them. With `cfg=False`, the
            conditional pass alone is offset, and the large model's guidance (cond − uncond) on that step is kept
            in the window: the reused unconditional output is the conditional one minus it.
    """
    if not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"stitch fraction must be in [0, 1] (the share of steps for the small model); got {fraction}")
    if not 0.0 <= float(at) <= 1.0:
        raise ValueError(f"stitch position must be in [0, 1] (0 = the small model takes the first steps, 1 = the "
                         f"last); got {at}")
    large = pipe.transformer
    if offset and float(at) == 0.0:
        raise ValueError("stitch offset needs a large-model step before the small model's steps: give at > 0 "
                         "(1 = the small model takes the last steps)")
    if small_transformer is large:
        raise ValueError("the small transformer is the pipeline's own transformer; pass a different model")
    check_compatible(large, small_transformer)
    remove_stitch(pipe)
    small = small_transformer
    if (small.device, small.dtype) != (large.device, large.dtype):
        small = small.to(device=large.device, dtype=large.dtype)
    stitch = Stitch(small, float(fraction), float(at), float(guidance), bool(cfg), bool(offset))
    large_forward = large.forward  # the bound class method
    small_takes_guidance = bool(small.config.get("guidance_embeds", False))

    def small_forward(x, args, kwargs):
        joint = kwargs.get("joint_attention_kwargs") or {}
        routed = joint.get("attention_mask")
        if hasattr(routed, "dense") and not _local_everywhere(small):  # a compact clause routing made for the
            kwargs["joint_attention_kwargs"] = {**joint, "attention_mask": routed.dense()}  # large model's windows
        if not small_takes_guidance:
            kwargs.pop("guidance", None)
        elif kwargs.get("guidance") is None:
            kwargs["guidance"] = torch.full((x.shape[0],), stitch.guidance, device=x.device, dtype=torch.float32)
        return small(*args, **kwargs)

    def forward(*args, **kwargs):
        index, total = _step(pipe.scheduler)
        x = kwargs.get("hidden_states", args[0] if args else None)
        # a second call on the same latents within a step is true CFG's unconditional pass
        second = stitch.last_call is not None and stitch.last_call[0] == index and stitch.last_call[1] is x
        stitch.last_call = (index, x)
        last, stitch.last_small = stitch.last_small, None
        window = stitch.small_steps(total) if total else range(0)
        if index not in window:
            stitch.calls["large"] += 1
            out = large_forward(*args, **kwargs)
            if stitch.offset and index == window.start - 1:  # the anchor: both models on the same inputs
                if stitch.cfg or not second:
                    stitch.calls["small"] += 1
                    with torch.no_grad():
                        stitch.offsets[int(second)] = _sample(out) - _sample(small_forward(x, args, dict(kwargs)))
                    stitch.anchor_cond = None if stitch.cfg else _sample(out)  # unguided: held for the uncond pass
                elif stitch.anchor_cond is not None:  # unguided window: carry the large model's guidance instead
                    stitch.guide, stitch.anchor_cond = stitch.anchor_cond - _sample(out), None
            elif stitch.offset and index < window.start:
                stitch.offsets.clear()  # a new run: nothing measured yet
                stitch.guide = None
            return out
        if not stitch.cfg and second and last is not None:
            stitch.calls["reused"] += 1
            guide = stitch.guide  # set on the anchor when offset
            if guide is not None and guide.shape == _sample(last).shape:
                return _with_sample(last, _sample(last) - guide)  # the pipeline's sum: cond + (s − 1)·guide
            return last
        stitch.calls["small"] += 1
        out = small_forward(x, args, kwargs)
        shift = stitch.offsets.get(int(second)) if stitch.offset else None
        if shift is not None and shift.shape == _sample(out).shape:
            out = _with_sample(out, _sample(out) + shift)
        if not stitch.cfg:
            stitch.last_small = out
        return out

    large.forward = forward  # an instance attribute shadows the method; remove_stitch deletes it
    setattr(large, _ATTR, stitch)
    return stitch


def _local_everywhere(transformer) -> bool:
    from ditflow.kernels.processors import installed

    local = installed(transformer)
    return local is not None and local.everywhere


def remove_stitch(pipe) -> None:
    """Undo `apply_stitch`; a no-op when the pipeline is not stitched."""
    large = pipe.transformer
    if getattr(large, _ATTR, None) is None:
        return
    del large.forward
    setattr(large, _ATTR, None)


def stitched(pipe) -> Stitch | None:
    return getattr(pipe.transformer, _ATTR, None)
