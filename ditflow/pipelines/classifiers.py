"""The two small CNN classifiers of the shapes world as the tools load and run them; weights in
`ditflow/assets/classifiers/*.safetensors`, trained by `ditflow train classifiers` (`ditflow/training/classifiers.py`):

- `attributes`: shape, colour, position (3×3 cell) and size of the main object of a clean 64×64 scene: the
  "off-the-shelf" classifier of EluCD guidance for the builtin model (`toolkit/guidance.py`).
- `degradation`: which degradation a 64×64 crop shows (clean, noise, blur, sr2, sr4, jpeg, inpaint) and how
  strong: which restoration to run (`toolkit/degradation.py`; DCPT idea, arXiv 2403.09232).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from ditflow.world import scenes as world

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "classifiers"
CROP = 64  # classifiers see 64×64 px: one shapes-world panel
SHAPE_LABELS = world.SHAPES
COLOR_LABELS = tuple(world.COLORS)
POSITION_LABELS = tuple(p for row in world.POSITIONS for p in row)
SIZE_LABELS = ("small", "large")
ATTRIBUTE_HEADS = {"shape": SHAPE_LABELS, "color": COLOR_LABELS, "position": POSITION_LABELS, "size": SIZE_LABELS}
# The degradation classifier's labels: the degradations `toolkit/degradation.py` has an operator for, and "clean"
DEGRADATIONS = ("noise", "blur", "sr2", "sr4", "jpeg", "inpaint")
DEGRADATION_CLASSES = ("clean",) + DEGRADATIONS
# severity ranges seen in classifier training, and their [0, 1] normalisation for the severity head
SEVERITY_RANGE = {"noise": (0.03, 0.3), "blur": (1.0, 3.0), "sr2": (2.0, 2.0), "sr4": (4.0, 4.0),
                  "jpeg": (5.0, 60.0), "inpaint": (0.05, 0.4)}


# ----------------------------------------------------------------------------- model
class SmallCNN(nn.Module):
    """Conv stack → global average pool → named linear heads. ReLU activations, so that guidance can swap them
    for softplus (EluCD) exactly as it would in any off-the-shelf classifier. With `spatial`, the heads also see
    the features averaged over a 3×3 grid of cells: a global average alone cannot tell where an object is."""

    def __init__(self, heads: dict[str, int], width: int = 16, pool: int = 1, spatial: bool = False):
        super().__init__()
        self.head_sizes = dict(heads)
        self.pool = pool  # input average-pooling: attributes need no fine detail, degradations do
        self.spatial = spatial
        w = width
        self.features = nn.Sequential(  # (B, 3, 64, 64) → (B, 4w, 8, 8)
            nn.Conv2d(3, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1, stride=2), nn.ReLU(),  # 32×32
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1, stride=2), nn.ReLU(),  # 16×16
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(4 * w, 4 * w, 3, padding=1, stride=2), nn.ReLU(),  # 8×8
        )
        self.out = nn.Linear(4 * w * (10 if spatial else 1), sum(heads.values()))

    def heads(self) -> dict[str, slice]:
        out, start = {}, 0
        for name, n in self.head_sizes.items():
            out[name] = slice(start, start + n)
            start += n
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] → (B, Σ heads) logits (the severity head, if any, is in it too)."""
        if self.pool > 1:
            x = F.avg_pool2d(x, self.pool)
        h = self.features(x * 2 - 1)
        feats = h.mean((-2, -1))
        if self.spatial:
            feats = torch.cat([feats, F.adaptive_avg_pool2d(h, 3).flatten(1)], 1)
        return self.out(feats)


@dataclass
class ClassifierConfig:
    kind: str  # attributes | degradation
    width: int = 16
    pool: int = 1
    spatial: bool = False  # 3×3-cell features too (the attribute classifier's position head needs them)
    batch: int = 64
    lr: float = 2e-3
    minutes: float = 4.0
    max_steps: int = 100_000
    seed: int = 0
    save_every: int = 0  # steps between checkpoints (0: only at the end)
    init: str | None = None  # weights to continue from

    def heads(self) -> dict[str, int]:
        if self.kind == "attributes":  # files from before the position head have shape and colour only
            names = tuple(ATTRIBUTE_HEADS) if self.spatial else ("shape", "color")
            return {h: len(ATTRIBUTE_HEADS[h]) for h in names}
        return {"class": len(DEGRADATION_CLASSES), "severity": len(DEGRADATIONS)}


def labels_of(model: SmallCNN, head: str) -> tuple[str, ...]:
    return {**ATTRIBUTE_HEADS, "class": DEGRADATION_CLASSES}[head]


def image_tensor(img: Image.Image) -> torch.Tensor:
    """PIL → (3, H, W) float in [0, 1]: an image as the classifiers see it."""
    return torch.from_numpy(np.asarray(img.convert("RGB"), np.float32) / 255.0).permute(2, 0, 1)


# ----------------------------------------------------------------------------- loading
def load(kind: str, path: Path | None = None) -> SmallCNN:
    """A trained classifier in eval mode (float32). Raises FileNotFoundError with the command that trains it."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path or ASSET_DIR / f"{kind}.safetensors")
    if not path.exists():
        raise FileNotFoundError(f"no {kind} classifier at {path}; train it with "
                                f"`python -m ditflow.training.classifiers {kind}`")
    with safe_open(str(path), "pt") as f:
        cfg = ClassifierConfig(**json.loads(f.metadata()["config"]))
    model = SmallCNN(cfg.heads(), cfg.width, cfg.pool, cfg.spatial)
    model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    model.labels = {h: labels_of(model, h) for h in model.head_sizes if h != "severity"}  # read by guidance
    model.input_size = CROP
    return model.eval()


def metrics_of(kind: str, path: Path | None = None) -> dict:
    from safetensors import safe_open

    with safe_open(str(path or ASSET_DIR / f"{kind}.safetensors"), "pt") as f:
        return json.loads(f.metadata()["metrics"])


# ----------------------------------------------------------------------------- inference
def crops(image: Image.Image, k: int = 3) -> torch.Tensor:
    """Up to k×k native-resolution 64×64 crops on a regular grid: (N, 3, 64, 64). Smaller images are padded
    by reflection, not resized, so their degradation statistics are kept."""
    x = image_tensor(image)
    _, h, w = x.shape
    if h < CROP or w < CROP:
        x = F.pad(x[None], (0, max(0, CROP - w), 0, max(0, CROP - h)), mode="replicate")[0]
        _, h, w = x.shape
    ys = sorted({round(v) for v in np.linspace(0, h - CROP, k)})
    xs = sorted({round(v) for v in np.linspace(0, w - CROP, k)})
    return torch.stack([x[:, a:a + CROP, b:b + CROP] for a in ys for b in xs])


@torch.no_grad()
def predict_degradation(model: SmallCNN, image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """(class probabilities (7,), normalised severities (6,)) averaged over crops; a missing region counts when
    any crop sees it (it need not cover every crop)."""
    heads = model.heads()
    out = model(crops(image))
    p = torch.softmax(out[:, heads["class"]], 1)
    sev = torch.sigmoid(out[:, heads["severity"]]).mean(0)
    probs = p.mean(0)
    i = DEGRADATION_CLASSES.index("inpaint")
    if p[:, i].max() > 0.5:
        probs = p[p[:, i].argmax()]
    return probs.numpy(), sev.numpy()
