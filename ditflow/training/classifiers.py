"""Training of the two small CNN classifiers of the shapes world (the models, and their loading at inference:
`ditflow/pipelines/classifiers.py`); weights in `ditflow/assets/classifiers/*.safetensors`:

- `attributes`: shape, colour, position (3×3 cell) and size of the main object of a clean 64×64 scene. It is the
  "off-the-shelf" classifier of EluCD guidance for the builtin model, so it is trained on clean scenes only, never
  on noisy ones. Position is the builtin model's weakest attribute, so guidance must be able to aim at it.
- `degradation`: which degradation a 64×64 crop shows (clean, noise, blur, sr2, sr4, jpeg, inpaint) and how
  strong, trained on shapes scenes and on the photos shipped in `skimage.data` (DCPT idea, arXiv 2403.09232),
  degraded half by our operators and half by other tools' (pipelines/degraders.py; OpenCV's never).

    python -m ditflow.training.classifiers attributes --minutes 4
    python -m ditflow.training.classifiers degradation --minutes 6
"""
from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ditflow.pipelines.classifiers import (ASSET_DIR, ATTRIBUTE_HEADS, CROP, ClassifierConfig, SmallCNN,
                                           image_tensor, load)
from ditflow.world import scenes as world

# skimage.data photos: the first group trains the degradation classifier, the second is held out for its report
TRAIN_PHOTOS = ("astronaut", "brick", "camera", "coffee", "coins", "grass", "hubble_deep_field",
                "immunohistochemistry", "moon", "stereo_motorcycle", "retina", "page")
HELDOUT_PHOTOS = ("chelsea", "rocket", "gravel", "cell")


# ----------------------------------------------------------------------------- data
def attribute_batch(rng: random.Random, n: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clean single-object scenes: images (n, 3, 64, 64) and label ids per head of ATTRIBUTE_HEADS. Position and
    size are what the scorer's detector reads off the render, so the classifier agrees with the benchmark."""
    xs, labels = [], {h: [] for h in ATTRIBUTE_HEADS}
    for _ in range(n):
        s = world.sample(rng, rng.choice(("single", "single", "position", "background")))
        (d,) = world.detect(s.image)[1]
        xs.append(image_tensor(s.image))
        for head, value in (("shape", d.shape), ("color", d.color), ("position", d.position), ("size", d.size)):
            labels[head].append(ATTRIBUTE_HEADS[head].index(value))
    return torch.stack(xs), {h: torch.tensor(v) for h, v in labels.items()}


_PHOTOS: dict[str, np.ndarray] = {}


def photo(name: str) -> np.ndarray:
    import skimage.data

    if name not in _PHOTOS:
        a = getattr(skimage.data, name)()
        a = a[0] if isinstance(a, tuple) else a  # stereo_motorcycle: (left, right, disparity)
        if a.ndim == 2:
            a = np.stack([a] * 3, -1)
        _PHOTOS[name] = a[..., :3].astype(np.uint8)
    return _PHOTOS[name]


def photo_crop(rng: random.Random, names: tuple[str, ...]) -> torch.Tensor:
    """A 64×64 crop of a random photo at a random scale (¼ to 1), so textures of many sizes are seen."""
    a = photo(rng.choice(names))
    h, w = a.shape[:2]
    side = min(h, w, int(CROP / rng.uniform(0.25, 1.0)))  # crop first, then resize: photos are large
    y0, x0 = rng.randrange(h - side + 1), rng.randrange(w - side + 1)
    img = Image.fromarray(a[y0:y0 + side, x0:x0 + side])
    return image_tensor(img.resize((CROP, CROP), Image.BICUBIC) if side != CROP else img)


def degrade(x: torch.Tensor, cls: int, rng: random.Random) -> tuple[torch.Tensor, float]:
    """Apply class `cls` of CLASSES to (3, H, W) at a random severity; returns (image at the same size,
    severity normalised to [0, 1] within the training range)."""
    from ditflow.toolkit import degradation as dg

    if cls == 0:
        return x, 0.0
    name = dg.CLASSES[cls]
    lo, hi = dg.SEVERITY_RANGE[name]
    sev = rng.uniform(lo, hi)
    op = dg.operator(name, sev)
    y = op.apply(x[None], seed=rng.randrange(2 ** 31))
    if name in ("sr2", "sr4"):  # a detector sees full-size images: low-res content upsampled back
        y = dg.quantize(op.baseline(y))
    return y[0], (sev - lo) / (hi - lo) if hi > lo else 1.0


# what the tool families' kinds (pipelines/degraders.py) look like to a classifier of full-size images: small
# images are told by their size, not by it
TOOL_KINDS = ("clean", "noise", "blur", "blur+noise", "jpeg", "upsampled2", "upsampled4")


def degrade_by_tool(x: torch.Tensor, family: str, rng: random.Random) -> tuple[torch.Tensor, int, float]:
    """(3, H, W) degraded by another tool family's operators: (image, class, normalised severity)."""
    from ditflow.pipelines import degraders
    from ditflow.toolkit.degradation import CLASSES, SEVERITY_RANGE

    a = (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    d = degraders.sample(a, rng.choice(TOOL_KINDS), family, np.random.default_rng(rng.randrange(2 ** 31)))
    s = 0.0
    if d.label in ("noise", "blur", "jpeg"):
        lo, hi = SEVERITY_RANGE[d.label]
        s = min(1.0, max(0.0, (d.severity - lo) / (hi - lo)))
    elif d.label != "clean":
        s = 1.0
    return torch.from_numpy(d.image.astype(np.float32) / 255).permute(2, 0, 1), CLASSES.index(d.label), s


def degradation_batch(rng: random.Random, n: int, photos: tuple[str, ...] | None = TRAIN_PHOTOS,
                      shapes: bool = True, families: tuple[str, ...] | None = None, own: bool = True):
    """n crops, each degraded by our operators (`own`) or by one of `families`' tools (default: the training
    families, never degraders.HELDOUT_FAMILY), half each when both."""
    from ditflow.pipelines import degraders
    from ditflow.toolkit.degradation import CLASSES

    families = degraders.TRAIN_FAMILIES if families is None else families
    xs, cls, sev = [], [], []
    for _ in range(n):
        use_photo = photos and (not shapes or rng.random() < 0.5)
        x = (photo_crop(rng, photos) if use_photo
             else image_tensor(world.sample(rng, rng.choice(world.KINDS[:5])).image))
        if families and (not own or rng.random() < 0.5):
            y, c, s = degrade_by_tool(x, rng.choice(families), rng)
        else:
            c = rng.randrange(len(CLASSES))
            y, s = degrade(x, c, rng)
        xs.append(y)
        cls.append(c)
        sev.append(s)
    return torch.stack(xs), torch.tensor(cls), torch.tensor(sev)


# ----------------------------------------------------------------------------- training
def _loss(model: SmallCNN, cfg: ClassifierConfig, batch) -> torch.Tensor:
    heads = model.heads()
    x = batch[0]
    logits = model(x)
    if cfg.kind == "attributes":
        return sum(F.cross_entropy(logits[:, sl], batch[1][h]) for h, sl in heads.items())
    cls, sev = batch[1], batch[2]
    loss = F.cross_entropy(logits[:, heads["class"]], cls)
    has = cls > 0  # severity is learned for the true degradation only
    if has.any():
        pred = torch.sigmoid(logits[:, heads["severity"]])[has, cls[has] - 1]
        loss = loss + F.mse_loss(pred, sev[has].float())
    return loss


def _batch(cfg: ClassifierConfig, rng: random.Random):
    return attribute_batch(rng, cfg.batch) if cfg.kind == "attributes" else degradation_batch(rng, cfg.batch)


@torch.no_grad()
def evaluate(model: SmallCNN, kind: str, n: int = 512, seed: int = 12345, photos: bool = False,
             family: str | None = None) -> dict[str, float]:
    """Accuracy on freshly sampled held-out scenes (a seed training never uses); for the degradation
    classifier with `photos=True`, on crops of the held-out photos instead, and with `family`, on that tool
    family's degradations only (degraders.HELDOUT_FAMILY: a tool training never saw)."""
    model.eval()
    rng = random.Random(seed)
    heads = model.heads()
    if kind == "attributes":
        x, labels = attribute_batch(rng, n)
        out = model(x)
        ok = {h: (out[:, sl].argmax(1) == labels[h]).float() for h, sl in heads.items()}
        every = torch.stack(list(ok.values())).prod(0)
        return {**{h: float(v.mean()) for h, v in ok.items()}, "all": float(every.mean())}
    tools = {"families": (family,), "own": False} if family else {"families": ()}
    if photos:
        x, c, _ = degradation_batch(rng, n, HELDOUT_PHOTOS, shapes=False, **tools)
    else:
        x, c, _ = degradation_batch(rng, n, None, shapes=True, **tools)
    pred = model(x)[:, heads["class"]].argmax(1)
    acc = {"accuracy": float((pred == c).float().mean())}
    from ditflow.toolkit.degradation import CLASSES

    for i, name in enumerate(CLASSES):
        sel = c == i
        if sel.any():
            acc[name] = float((pred[sel] == i).float().mean())
    return acc


def save(model: SmallCNN, cfg: ClassifierConfig, metrics: dict, path: Path) -> Path:
    """fp16 safetensors with the config and metrics in its metadata; written atomically."""
    import os

    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp), metadata={"config": json.dumps(asdict(cfg)), "metrics": json.dumps(metrics)})
    os.replace(tmp, path)
    return path


def main(**overrides) -> tuple[SmallCNN, dict]:
    """Train one classifier (`kind=attributes|degradation`) for `minutes`, evaluate it, save it to `out`."""
    out = overrides.pop("out", None)
    cfg = ClassifierConfig(**overrides)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    model = SmallCNN(cfg.heads(), cfg.width, cfg.pool, cfg.spatial)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    t0, step = time.time(), 0
    budget = cfg.minutes * 60
    path = Path(out) if out else ASSET_DIR / f"{cfg.kind}.safetensors"
    if cfg.init:  # continue from saved weights (same architecture)
        model.load_state_dict(load(cfg.kind, Path(cfg.init)).state_dict())
    while step < cfg.max_steps and time.time() - t0 < budget:
        lr = cfg.lr * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * max(0.0, 1 - (time.time() - t0) / budget))
        for g in opt.param_groups:
            g["lr"] = lr
        model.train()
        loss = _loss(model, cfg, _batch(cfg, rng))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 100 == 0:
            print(f"{cfg.kind} step {step} loss {loss.item():.4f} ({time.time() - t0:.0f}s)", flush=True)
        if cfg.save_every and step % cfg.save_every == 0:  # a usable file even if the run is cut short
            save(model, cfg, {"steps": step, "partial": True, "heldout_shapes": evaluate(model, cfg.kind, n=128)}, path)
    metrics = {"steps": step, "seconds": round(time.time() - t0, 1), "heldout_shapes": evaluate(model, cfg.kind)}
    if cfg.kind == "degradation":
        from ditflow.pipelines.degraders import HELDOUT_FAMILY

        metrics["heldout_photos"] = evaluate(model, cfg.kind, photos=True)
        metrics[f"heldout_family_{HELDOUT_FAMILY}"] = {
            "shapes": evaluate(model, cfg.kind, family=HELDOUT_FAMILY),
            "photos": evaluate(model, cfg.kind, photos=True, family=HELDOUT_FAMILY)}
    save(model, cfg, metrics, path)
    print(json.dumps(metrics), flush=True)
    return model, metrics


def cli(argv: list[str] | None = None) -> int:
    """`ditflow train classifiers {attributes,degradation} [--minutes M] ...`"""
    ap = argparse.ArgumentParser(prog="ditflow train classifiers")
    ap.add_argument("kind", choices=("attributes", "degradation"))
    ap.add_argument("--minutes", type=float, default=4.0, help="wall-clock budget")
    ap.add_argument("--max-steps", type=int, default=100_000, help="step budget (whichever ends first)")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--pool", type=int, default=None, help="input downsampling (default: 2 attributes, 1 degradation)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--save-every", type=int, default=200, help="checkpoint every N steps (0: only at the end)")
    ap.add_argument("--init", default=None, help="continue from these weights")
    a = ap.parse_args(argv)
    pool = a.pool or (2 if a.kind == "attributes" else 1)
    main(kind=a.kind, minutes=a.minutes, max_steps=a.max_steps, width=a.width, pool=pool, save_every=a.save_every,
         init=a.init, batch=a.batch, seed=a.seed, out=a.out, spatial=a.kind == "attributes")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
