"""A distilled CLEAR local-attention student at run time: its file read, and put on a loaded teacher.

A student file (`ditflow train distill`, `training/distill.py`) holds only the projections distillation trained
and the window radius; everything else is the teacher's. `load_student(..., when="faster")` leaves the teacher's
weights alone and hands the projections to the local-attention processors, which use them only where local
attention runs (`kernels/crossover.py`), so below the crossover the output is exactly the teacher's.
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import torch

from ditflow.kernels.processors import WHEN, install_local_attention


def teacher_fingerprint(teacher, skip=()) -> str:
    """A digest of the teacher's weights, less the tensors named in `skip`: a cache of its samples is stale once
    they change, and so is a student, whose own projections are the skipped ones."""
    h = hashlib.sha256()
    for name, t in teacher.state_dict().items():
        if name in skip:
            continue
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def read_student(path: Path | str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """A student file's metadata (radius, model, size) and projections."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    if "radius" not in meta:
        raise ValueError(f"{path} is not a local-attention student file (no radius in its metadata)")
    return meta, state


def load_student(transformer, path: Path | str, when: str = "always"):
    """Turn a loaded teacher transformer (in place) into the distilled local-attention student. A student made
    from other weights of the same shape (an older large model, say) loads with a warning, not an error: the
    digest also changes when the right teacher is merely loaded in another dtype, where the projections fit.

    `when="faster"` (see `install_local_attention`) leaves the transformer's weights as they are and hands the
    student's projections to the processors, which use them only where local attention runs: below the measured
    crossover the output is exactly the teacher's."""
    if when not in WHEN:
        raise ValueError(f"when must be one of {WHEN}; got {when!r}")
    meta, state = read_student(path)
    if "teacher" in meta and teacher_fingerprint(transformer, skip=state.keys()) != meta["teacher"]:
        warnings.warn(f"{path} was distilled from other weights than this transformer's (or in another dtype); "
                      f"redistill it with `ditflow train distill` if the images look wrong", stacklevel=2)
    own = dict(transformer.named_parameters())
    wrong = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    if wrong:
        raise ValueError(f"{path} does not fit this transformer (first mismatch: {wrong[0]}); it was distilled "
                         f"from {meta.get('model', 'another model')}")
    if when == "faster":
        weights = {k: v.to(own[k].device, own[k].dtype) for k, v in state.items()}
        return install_local_attention(transformer, float(meta["radius"]), when=when, weights=weights)
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v.to(own[k].dtype))
    return install_local_attention(transformer, float(meta["radius"]), when=when)
