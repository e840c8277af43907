"""CLEAR distillation: a full-attention teacher → a local-attention student of the same transformer.

CLEAR (Liu et al. 2024, https://arxiv.org/abs/2412.16112, §3.3): the student is a copy of the teacher whose
attention is restricted to a circular window; it is fine-tuned on samples the teacher generated itself, with

    loss = flow-matching loss + 0.5 · MSE(student v, teacher v) + 0.5 · mean over layers MSE(attention outputs)

Only the image-stream q/k/v/out projections train (in FLUX's single-stream blocks q/k/v act on the joint
sequence and there is no separate out projection, so those three train there). Locality only bites above the
builtin's native 8×8 token grid, so we distill at 128×128 px (2×2 panels, a 16×16 grid) with a small radius.
The result ships as a small safetensors file of just the trained projections plus the radius;
`load_student` applies it to a loaded transformer.

    ditflow train distill --minutes 30 --radius 4 --out out/distill
    python -c "from ditflow.training.distill import main; main(model='tiny', steps=20)"
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F

from ditflow.kernels.local_attention import visible_pairs
from ditflow.kernels.processors import install_local_attention
from ditflow.pipelines.loading import STUDENT_FILE
from ditflow.pipelines.student import load_student, read_student, teacher_fingerprint  # noqa: F401  (re-exported)
from ditflow.training.settings import add_flags, from_overrides, require_positive
from ditflow.training.train import cooldown_factor

IMAGE_STREAM = ("to_q", "to_k", "to_v", "to_out.0")  # trainable linear layers inside each FluxAttention
WEIGHTS_NAME = STUDENT_FILE


@dataclass
class DistillConfig:
    """Args:
        model: teacher pipeline (`builtin`, a path, or `tiny` for a random test pipeline).
        height, width: distillation canvas, px (128×128 = 2×2 panels = a 16×16 token grid for the builtin).
        radius: local window radius, tokens.
        n_samples: teacher-generated training samples; teacher_steps: its sampling steps.
        steps: optimiser steps (stops early when `minutes` run out); batch; lr.
        cooldown: the last minutes of the `minutes` budget, over which lr falls linearly to 10% (as in
            `train builtin`); 0 keeps it constant.
        init: a student weights file to continue from (same teacher and radius), so that a run can be extended.
        attn_every: match attention outputs on every k-th attention layer (the "subset of layers").
        w_flow, w_teacher, w_attn: loss weights of flow matching, output matching and attention-output matching.
        eval_n: held-out 2×2-panel prompts scored for teacher and student (0 skips the evaluation), by whole
            canvases, panels and attributes (`score`).
        out: folder for the weights file and report.
        samples: a file that keeps the teacher's samples for the next run ("" = none). It is read when it was
            made by the same teacher weights with the same size, count, steps and seed, else (re)written.
            Sampling is most of a short run: 320 canvases took 11 minutes on 2 cores.
    """

    model: str = "builtin"
    height: int = 128
    width: int = 128
    radius: float = 4.0
    n_samples: int = 256
    teacher_steps: int = 20
    steps: int = 2000
    minutes: float | None = None
    batch: int = 8
    lr: float = 1e-4
    cooldown: float = 0.0
    init: str = ""
    attn_every: int = 2
    w_flow: float = 1.0
    w_teacher: float = 0.5
    w_attn: float = 0.5
    eval_n: int = 40
    seed: int = 0
    out: str = "out/distill"
    samples: str = ""

    def check(self) -> None:
        if self.height % 16 or self.width % 16 or min(self.height, self.width) < 16:
            raise ValueError(f"height and width must be multiples of 16 px; got {self.height}×{self.width}")
        if not self.radius > 0:
            raise ValueError(f"radius must be > 0 tokens; got {self.radius}")
        require_positive(self, ("n_samples", "teacher_steps", "steps", "batch", "attn_every"))
        if self.cooldown < 0 or (self.cooldown and (self.minutes is None or self.cooldown > self.minutes)):
            raise ValueError(f"cooldown is part of the minutes budget: 0 ≤ cooldown ≤ minutes; got cooldown "
                             f"{self.cooldown} with minutes {self.minutes}")


# ----------------------------------------------------------------------------- data: the teacher's own samples
def canvas_prompts(n: int, height: int, width: int, seed: int, heldout: bool = False) -> list[tuple[str, object]]:
    """(caption, CanvasSpec) pairs for the canvas's panel layout; held-out captions only when `heldout`."""
    from ditflow.world import scenes as world

    layout = (max(1, height // world.PANEL), max(1, width // world.PANEL))
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        spec = (world.sample_panels(rng, layout) if layout != (1, 1)
                else world.sample_spec(rng, rng.choice([k for k in world.KINDS if k != "panels"])))
        text = world.caption(spec, rng)
        if world.seen_in_training(text) != heldout:
            out.append((text, spec))
    return out


@torch.no_grad()
def teacher_samples(pipe, cfg: DistillConfig) -> dict[str, torch.Tensor]:
    """Packed latents the teacher generates for world captions, with the text embeddings they came from."""
    from ditflow.pipelines.sampling import call_kwargs, generators

    prompts = [t for t, _ in canvas_prompts(cfg.n_samples, cfg.height, cfg.width, cfg.seed)]
    kw = call_kwargs(pipe, cfg.teacher_steps)
    latents, seqs, pooled = [], [], []
    for i in range(0, len(prompts), cfg.batch):
        chunk = prompts[i:i + cfg.batch]
        out = pipe(chunk, height=cfg.height, width=cfg.width, output_type="latent",
                   generator=generators([cfg.seed + i + j for j in range(len(chunk))]), **kw).images
        seq, pool, _ = pipe.encode_prompt(chunk, prompt_2=None, max_sequence_length=kw["max_sequence_length"])
        latents.append(out), seqs.append(seq), pooled.append(pool)
    return {"x0": torch.cat(latents), "seq": torch.cat(seqs), "pooled": torch.cat(pooled)}


def cached_teacher_samples(pipe, cfg: DistillConfig, log=print) -> dict[str, torch.Tensor]:
    """`teacher_samples`, read from or written to `cfg.samples` when it is given."""
    if not cfg.samples:
        return teacher_samples(pipe, cfg)
    path = Path(cfg.samples)
    key = {k: getattr(cfg, k) for k in ("height", "width", "n_samples", "teacher_steps", "seed")}
    key["teacher"] = teacher_fingerprint(pipe.transformer)
    if path.is_file():
        try:
            saved = torch.load(path, weights_only=True)
        except Exception as e:  # a truncated or foreign file: resample rather than stop
            log(f"teacher samples in {path} unreadable ({type(e).__name__}); sampling again")
        else:
            if saved.get("key") == key:
                log(f"teacher samples read from {path}")
                return saved["data"]
            log(f"teacher samples in {path} were made with other settings or weights; sampling again")
    data = teacher_samples(pipe, cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"key": key, "data": data}, tmp)
    os.replace(tmp, path)  # a killed run leaves the old file or none, never half of one
    return data


# ----------------------------------------------------------------------------- student
def make_student(teacher, radius: float):
    """A deep copy of the teacher with local attention and only the image-stream projections trainable."""
    student = copy.deepcopy(teacher)
    student.requires_grad_(False)
    for name, module in student.named_modules():
        if name.endswith(".attn"):
            for sub in IMAGE_STREAM:
                layer = module.get_submodule(sub) if _has(module, sub) else None
                if layer is not None:
                    layer.requires_grad_(True)
    install_local_attention(student, radius)
    return student


def _has(module, path: str) -> bool:
    try:
        module.get_submodule(path)
        return True
    except AttributeError:
        return False


def trainable_state(student) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in student.named_parameters() if p.requires_grad}


def attention_modules(model, every: int) -> list[str]:
    names = [n for n, _ in model.named_modules() if n.endswith(".attn")]
    return names[::every]


class AttentionTap:
    """Forward hooks that keep the outputs of the named attention modules during one forward."""

    def __init__(self, model, names: list[str]):
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = [model.get_submodule(n).register_forward_hook(self._keep(n)) for n in names]

    def _keep(self, name):
        def hook(module, args, output):
            parts = output if isinstance(output, tuple) else (output,)
            self.outputs[name] = torch.cat([p.flatten(1) for p in parts], dim=1)  # both streams, (B, ·)
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


# ----------------------------------------------------------------------------- the loss
def token_ids(batch: int, height: int, width: int, text_len: int, vae_scale: int):
    from diffusers import FluxPipeline

    img_ids = FluxPipeline._prepare_latent_image_ids(batch, height // vae_scale // 2, width // vae_scale // 2,
                                                     "cpu", torch.float32)
    return img_ids, torch.zeros(text_len, 3)


def distill_loss(student, teacher, tap_s: AttentionTap, tap_t: AttentionTap, x0, seq, pooled, img_ids, txt_ids,
                 t, noise, cfg: DistillConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """Rectified flow as in FLUX/SD3: x_t = (1-t)·x0 + t·ε and the model predicts v = ε − x0."""
    xt = (1 - t[:, None, None]) * x0 + t[:, None, None] * noise
    kw = dict(hidden_states=xt, encoder_hidden_states=seq, pooled_projections=pooled, timestep=t, img_ids=img_ids,
              txt_ids=txt_ids, return_dict=False)
    with torch.no_grad():
        v_teacher = teacher(**kw)[0]
    v_student = student(**kw)[0]
    flow = F.mse_loss(v_student, noise - x0)
    match = F.mse_loss(v_student, v_teacher)
    attn = torch.stack([F.mse_loss(tap_s.outputs[n], tap_t.outputs[n]) for n in tap_t.outputs]).mean()
    loss = cfg.w_flow * flow + cfg.w_teacher * match + cfg.w_attn * attn
    return loss, {"loss": loss.item(), "flow": flow.item(), "match": match.item(), "attn": attn.item()}


def batch_seed(cfg: DistillConfig) -> int:
    """A continued run draws other batches than the run it continues: the init file's digest joins the seed."""
    if not cfg.init:
        return cfg.seed
    return cfg.seed + int(hashlib.sha256(Path(cfg.init).read_bytes()).hexdigest()[:12], 16)


def train_student(teacher, student, data: dict[str, torch.Tensor], cfg: DistillConfig, vae_scale: int,
                  log=print) -> list[dict]:
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    names = attention_modules(teacher, cfg.attn_every)
    tap_t, tap_s = AttentionTap(teacher, names), AttentionTap(student, names)
    img_ids, txt_ids = token_ids(1, cfg.height, cfg.width, data["seq"].shape[1], vae_scale)
    gen = torch.Generator().manual_seed(batch_seed(cfg))
    history, start = [], time.monotonic()
    student.train()
    try:
        for step in range(cfg.steps):
            elapsed = time.monotonic() - start
            if cfg.minutes is not None and elapsed > 60 * cfg.minutes:
                break
            lr = cfg.lr * cooldown_factor(elapsed, cfg.minutes or 0.0, cfg.cooldown)
            for group in opt.param_groups:
                group["lr"] = lr
            idx = torch.randint(0, data["x0"].shape[0], (cfg.batch,), generator=gen)
            x0 = data["x0"][idx]
            t = torch.sigmoid(torch.randn(cfg.batch, generator=gen))  # logit-normal timesteps (SD3)
            noise = torch.randn(x0.shape, generator=gen)
            loss, parts = distill_loss(student, teacher, tap_s, tap_t, x0, data["seq"][idx], data["pooled"][idx],
                                       img_ids, txt_ids, t, noise, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            history.append(parts | {"lr": lr, "step": step})
            if step % 50 == 0 or step == cfg.steps - 1:
                log(json.dumps({k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in history[-1].items()}))
    finally:
        tap_t.remove(), tap_s.remove()
        student.eval()
    return history


# ----------------------------------------------------------------------------- weights file
def save_student(student, path: Path, meta: dict, dtype: torch.dtype = torch.float16) -> Path:
    """Write the trained projections and the radius atomically; everything else stays the teacher's. fp16 by
    default, as the exported transformers are: the builtin student is then ~4 MB."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    state = {k: v.to(dtype) for k, v in trainable_state(student).items()}
    save_file(state, str(tmp), metadata={k: str(v) for k, v in meta.items()})
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------- evaluation and entry points
SCORES = ("canvases", "panels", "attributes")  # whole canvases right; panels right; mean per-attribute accuracy


@torch.no_grad()
def score(pipe, cfg: DistillConfig, steps: int | None = None) -> dict[str, float]:
    """The `bench shapes` scorer on held-out canvases at the distillation size, at three grains. A canvas counts
    only when all its panels are right, which the builtin teacher almost never manages on 2×2 canvases (0%), so
    the panels and the attributes are what can show a student falling behind."""
    from ditflow.pipelines.sampling import text_to_images
    from ditflow.world import scenes as world

    pairs = canvas_prompts(cfg.eval_n, cfg.height, cfg.width, seed=10_000 + cfg.seed, heldout=True)
    images = text_to_images(pipe, [t for t, _ in pairs], [(cfg.height, cfg.width)] * len(pairs),
                            [cfg.seed + i for i in range(len(pairs))], steps=steps, batch=cfg.batch)
    report = world.score_many([(s, im) for (_, s), im in zip(pairs, images)])
    panels = [v.satisfied for (_, s), im in zip(pairs, images) for v in world.score_canvas(s, im)]
    attrs = [a for a in report.per_attribute.values() if a == a]  # nan: an attribute no prompt named
    return {"canvases": report.overall, "panels": sum(panels) / max(1, len(panels)),
            "attributes": sum(attrs) / max(1, len(attrs))}


def masked_fraction(cfg: DistillConfig, vae_scale: int, text_len: int) -> dict[str, float]:
    grid = (cfg.height // vae_scale // 2, cfg.width // vae_scale // 2)
    n = grid[0] * grid[1]
    image_pairs = visible_pairs(grid, cfg.radius, 0)
    length = n + text_len
    return {"image_pairs_masked": 1 - image_pairs / (n * n),
            "all_pairs_masked": 1 - visible_pairs(grid, cfg.radius, text_len) / (length * length),
            "grid": list(grid)}


def load_teacher(model: str):
    if model == "tiny":
        from ditflow.pipelines.tiny import tiny_flux_pipeline

        return tiny_flux_pipeline()
    from ditflow.pipelines.loading import load_pipeline

    return load_pipeline(model, device="cpu")


def main(pipe=None, log=print, **overrides) -> dict:
    """Distill, save, evaluate. Returns the report (also written to `out/report.json`)."""
    cfg = from_overrides(DistillConfig, overrides, "distill")
    done = 0  # optimiser steps behind the starting projections, recorded in the weights file
    if cfg.init:  # checked before the teacher samples, which can take minutes
        meta = read_student(cfg.init)[0]
        radius, done = float(meta["radius"]), int(meta.get("steps", 0))
        if radius != cfg.radius:
            raise ValueError(f"{cfg.init} was distilled for radius {radius:g}, not {cfg.radius:g}; pass --radius "
                             f"{radius:g} to continue it")
    torch.manual_seed(cfg.seed)
    pipe = pipe or load_teacher(cfg.model)
    teacher = pipe.transformer.eval().requires_grad_(False)
    vae_scale = pipe.vae_scale_factor
    out = Path(cfg.out)
    t0 = time.monotonic()
    data = cached_teacher_samples(pipe, cfg, log)
    log(f"teacher samples: {tuple(data['x0'].shape)} in {time.monotonic() - t0:.0f} s")
    masked = masked_fraction(cfg, vae_scale, data["seq"].shape[1])
    log(f"window r={cfg.radius} on a {masked['grid'][0]}×{masked['grid'][1]} grid masks "
        f"{masked['image_pairs_masked']:.1%} of image pairs ({masked['all_pairs_masked']:.1%} of all pairs)")
    student = make_student(teacher, cfg.radius)
    if cfg.init:
        load_student(student, cfg.init)
        log(f"continuing from {cfg.init}")
    history = train_student(teacher, student, data, cfg, vae_scale, log)
    frozen = teacher_fingerprint(teacher, skip={n for n, p in student.named_parameters() if p.requires_grad})
    path = save_student(student, out / WEIGHTS_NAME, {"radius": cfg.radius, "model": cfg.model,
                                                       "height": cfg.height, "width": cfg.width,
                                                       "steps": done + len(history), "teacher": frozen})
    load_student(student, path)  # the evaluation scores what ships: the fp16-rounded projections
    report = {"config": asdict(cfg), "masked": masked, "steps_run": len(history),
              "first_loss": history[0]["loss"] if history else math.nan,
              "last_loss": history[-1]["loss"] if history else math.nan, "weights": str(path)}
    if cfg.eval_n:
        zero_shot = make_student(teacher, cfg.radius)  # local attention without distillation, for reference
        for name, model in (("teacher", teacher), ("student", student), ("local_no_distill", zero_shot)):
            pipe.transformer = model
            report[f"score_{name}"] = score(pipe, cfg)
        pipe.transformer = teacher
        report["kept"] = {k: report["score_student"][k] / report["score_teacher"][k] if report["score_teacher"][k]
                          else math.nan for k in SCORES}
        for k in SCORES:
            log(f"{k} right at {cfg.height}×{cfg.width}: teacher {report['score_teacher'][k]:.1%}, student "
                f"{report['score_student'][k]:.1%} ({report['kept'][k]:.0%} kept; goal ≥95%), undistilled local "
                f"{report['score_local_no_distill'][k]:.1%}")
    tmp = out / "report.json.tmp"
    tmp.write_text(json.dumps(report, indent=1))
    os.replace(tmp, out / "report.json")
    return report


def cli(argv: list[str] | None = None, command: str = "distill") -> int:
    p = argparse.ArgumentParser(prog="ditflow train distill", description=__doc__.splitlines()[0])
    add_flags(p, DistillConfig)
    main(**vars(p.parse_args(argv)))
    return 0
