"""Acceleration as a runtime setting: T-Stitch and CLEAR local attention on a loaded pipeline, so that every tool
that denoises with it (generation, canvases, edits, restoration, repairs) runs accelerated; the derived img2img
and inpaint pipelines share its transformer (`toolkit/flux.py: derived`).

    off                     nothing (the default)
    auto                    what the measurements say pays for this model on this device (`AUTO_TABLE`)
    stitch[=F]              T-Stitch: the model's small partner takes the last share F of the steps (default 0.4),
                            unguided, offset by the large model's step before (`pipelines/stitch.py`)
    local[=R|student|FILE]  CLEAR local attention: a window radius, the distilled student shipped beside the
                            model (the default), or a student file; dispatched per call, so it runs only where the
                            measured crossover says it beats plain SDPA (`kernels/crossover.py`), and the model's
                            own attention (and, for a student, its own projections) everywhere else
    stitch,local=student    both

    acc = apply_acceleration(pipe, "auto", "cpu")   # an Acceleration: what runs, e.g. stitch=0.4,local=student
    remove_acceleration(pipe)                        # the pipeline as loaded
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

OFF, AUTO = "off", "auto"
STITCH_SHARE = 0.4  # the last 8 of 20 steps: 1.53× at −0.8 ± 1.6 points on the builtin (docs/benchmarks.md, T-Stitch)
STUDENT = "student"
# Each model's small partner for T-Stitch's last steps: a copy fine-tuned on low noise (docs/lab-notes.md, T-Stitch)
STITCH_PARTNER = {"builtin": "builtin-small-late", "builtin-large": "builtin-small-late"}
# What `auto` turns on, by model and device type, from measurements only (docs/benchmarks.md): on the builtin the
# late expert's stitch (1.53× on CPU); the student's local attention, which the crossover table leaves off at the
# builtin's usual canvases and turns on for large ones. T-Stitch is not measured on CUDA, nothing on other models.
AUTO_TABLE = {("builtin", "cpu"): f"stitch={STITCH_SHARE},local={STUDENT}",
              ("builtin-large", "cpu"): f"stitch={STITCH_SHARE},local={STUDENT}",
              ("builtin", "cuda"): f"local={STUDENT}"}
_ATTR = "ditflow_acceleration"  # where a pipeline keeps the Acceleration applied to it


@dataclass(frozen=True)
class Acceleration:
    """What runs: the small model's share of the last steps, and the local attention (a radius, or a student
    file's path; None: off)."""

    stitch: float | None = None
    local: float | str | None = None

    def __str__(self) -> str:
        parts = ([f"stitch={self.stitch:g}"] if self.stitch is not None else []) + \
                ([f"local={self.local:g}" if isinstance(self.local, float) else f"local={self.local}"]
                 if self.local is not None else [])
        return ",".join(parts) or OFF

    @property
    def on(self) -> bool:
        return self.stitch is not None or self.local is not None

    def describe(self) -> str:
        """For the terminal: "the small model takes the last 40% of the steps; local attention (student) where it
        beats plain SDPA"."""
        if not self.on:
            return "nothing measured pays for this model on this device; running unaccelerated"
        parts = [f"the small model takes the last {self.stitch:.0%} of the steps"] if self.stitch is not None else []
        if self.local is not None:
            what = f"r = {self.local:g}" if isinstance(self.local, float) else Path(str(self.local)).name
            parts.append(f"local attention ({what}) where it beats plain SDPA")
        return "; ".join(parts)


def parse_acceleration(text: str) -> str:
    """The setting in its canonical spelling ("off", "auto", "stitch=0.4,local=student"), or a ValueError whose
    message is one line. Nothing is loaded: a student file is checked when it is applied."""
    acc = _parse(text)
    return acc if acc == AUTO else str(acc)


def _parse(text: str) -> Acceleration | str:
    """AUTO, or the Acceleration `text` spells out (off: an empty one)."""
    spec = str(text).strip()
    if spec.lower() in (OFF, ""):
        return Acceleration()
    if spec.lower() == AUTO:
        return AUTO
    stitch, local = None, None
    for part in (p.strip() for p in spec.split(",")):
        name, eq, value = part.partition("=")
        name, value = name.strip().lower(), value.strip()
        if name == "stitch" and stitch is None:
            try:
                stitch = float(value) if eq else STITCH_SHARE
            except ValueError:
                stitch = -1.0
            if not 0.0 < stitch <= 1.0:
                raise ValueError(f"stitch={value}: the small model's share of the steps must be in (0, 1], e.g. "
                                 "stitch=0.4")
        elif name == "local" and local is None:
            local = _local_value(value if eq else STUDENT)
        elif name in ("stitch", "local"):
            raise ValueError(f"{text!r} gives {name} twice")
        else:
            raise ValueError(f"{part!r} is not off, auto, stitch[=F] or local[=R|student|FILE] (parts separated by "
                             "commas)")
    return Acceleration(stitch, local)


def _local_value(value: str) -> float | str:
    try:
        radius = float(value)
    except ValueError:
        if not value:
            raise ValueError("local= needs a window radius, 'student' or a student file") from None
        return STUDENT if value.lower() == STUDENT else value
    if not radius > 0:
        raise ValueError(f"local={value}: the window radius must be a positive number of tokens")
    return radius


def resolve(setting: str, model: str, device: str) -> Acceleration:
    """The Acceleration a setting means for `model` on `device` ("cpu", "cuda:0", ...)."""
    acc = _parse(setting)
    return _parse(auto_setting(model, device)) if acc == AUTO else acc


def auto_setting(model: str, device: str) -> str:
    """What `auto` means for `model` on `device`: the AUTO_TABLE entry, else off."""
    return AUTO_TABLE.get((model, device.partition(":")[0]), OFF)


def check_fits(setting: str, model: str, device: str) -> None:
    """A ValueError (one line) when `model` cannot have `setting`, found without loading anything: stitch with no
    small partner, local=student with no student shipped."""
    acc = resolve(setting, model, device)
    if acc.stitch is not None and model not in STITCH_PARTNER:
        raise ValueError(f"accelerate {setting}: no small model is known to pair with {model} for stitch; pair one "
                         "by hand with `ditflow generate --stitch F --stitch-model MODEL`")
    if isinstance(acc.local, str):
        student_file(model, acc.local)


def student_file(model: str, local: str) -> Path:
    """The student file `local` names: "student" is the one shipped in the model's folder."""
    from ditflow.pipelines.loading import STUDENT_FILE, _resolve

    if local != STUDENT:
        path = Path(os.path.expanduser(local))  # "~nobody/x" stays as written
        if not path.is_file():
            raise ValueError(f"accelerate local={local}: not a radius, 'student', or an existing student file")
        return path
    folder, _ = _resolve(model)
    if not isinstance(folder, Path) or not (folder / STUDENT_FILE).is_file():
        raise ValueError(f"accelerate local=student: {model} has no distilled student ({STUDENT_FILE}); make one with "
                         f"`ditflow train distill --model {model} --out DIR` and give local=DIR/{STUDENT_FILE}, or "
                         "a window radius (local=8)")
    return folder / STUDENT_FILE


def apply_acceleration(pipe, setting: str, device: str | None = None) -> Acceleration:
    """Apply `setting` to `pipe` (replacing any earlier one) and return what runs. A ValueError (one line) when
    this model cannot have it: no small partner for stitch, no student for local=student."""
    from ditflow.pipelines.loading import info_of

    remove_acceleration(pipe)
    model = info_of(pipe).name
    device = device or str(pipe.transformer.device)
    acc = resolve(setting, model, device)
    if acc.stitch is not None:
        from ditflow.pipelines.loading import load_transformer
        from ditflow.pipelines.stitch import apply_stitch

        check_fits(setting, model, device)
        small = load_transformer(STITCH_PARTNER[model], dtype=pipe.transformer.dtype, device=str(pipe.transformer.device))
        apply_stitch(pipe, small, acc.stitch, at=1.0, cfg=False, offset=True)
    if acc.local is not None:
        from ditflow.kernels.processors import install_local_attention

        try:
            if isinstance(acc.local, float):
                install_local_attention(pipe.transformer, acc.local, when="faster")
            else:
                from ditflow.pipelines.student import load_student

                load_student(pipe.transformer, student_file(model, acc.local), when="faster")
        except (ValueError, OSError) as e:
            remove_acceleration(pipe)
            raise ValueError(str(e) if str(e).startswith("accelerate") else f"accelerate local={acc.local}: {e}") from e
    setattr(pipe, _ATTR, acc)
    return acc


def remove_acceleration(pipe) -> None:
    """The pipeline as it was loaded: no stitch, its own attention processors."""
    from ditflow.kernels.processors import remove_local_attention
    from ditflow.pipelines.stitch import remove_stitch

    remove_stitch(pipe)
    remove_local_attention(pipe.transformer)
    setattr(pipe, _ATTR, Acceleration())


def applied(pipe) -> Acceleration:
    return getattr(pipe, _ATTR, None) or Acceleration()


def add_accelerate_flag(p) -> None:
    """`--accelerate` on an argparse parser (run, chat, batch, generate); its value is a `Settings.accelerate`."""
    p.add_argument("--accelerate", metavar="off|auto|PARTS",
                   help="off (default), auto (what the measurements say pays for this model and device: on the "
                        "builtin on CPU, the small model's last steps and the local-attention student where it beats "
                        "SDPA), or stitch[=F] and/or local[=R|student|FILE], comma-separated; every tool call that "
                        "denoises runs with it (docs/benchmarks.md, Acceleration)")
