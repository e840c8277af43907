"""Settings: which model and LLM to use, where to run, where to write. One typed object, saved with every output.

Precedence, lowest first: field defaults → `DITFLOW_*` environment variables → explicit arguments.

    >>> s = Settings.load(model="tiny", llm="rules", home="/tmp/ditflow-doc")
    >>> (s.model, s.llm, s.device_or_default() in ("cpu", "cuda"))
    ('tiny', 'rules', True)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ditflow.schemas import DEFAULT_REPAIRS, MAX_INPUTS, MAX_INSTRUCTION_CHARS, MAX_REPAIRS

ENV_PREFIX = "DITFLOW_"
DEFAULT_HOME = Path("~/.local/share/ditflow")
TINY_MODEL = "tiny"  # random-weight FLUX pipeline (ditflow.pipelines.tiny): smoke runs and tests, never a hub
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
Preview = Literal["auto", "kitty", "sixel", "blocks", "none"]


def default_home() -> Path:
    """`$DITFLOW_HOME`, else `~/.local/share/ditflow`: sessions, chat history, checkpoints and logs live here."""
    return Path(os.environ.get(ENV_PREFIX + "HOME") or DEFAULT_HOME).expanduser()


def validation_error(kind: str, text: str) -> PydanticCustomError:
    """For a pydantic validator: an error whose message reads as written (a ValueError's gets "Value error, ")."""
    return PydanticCustomError(kind, "{text}", {"text": text})


def check_model(model: str) -> str:
    """`model` if it can name a pipeline (see `Settings.model`); else a ValueError that lists what can, and reads
    as written in a pydantic validator. Checked when the model is named, not after the agents have started."""
    from ditflow.pipelines.loading import check_model_name

    try:
        return check_model_name(model, also=(TINY_MODEL,))
    except ValueError as e:
        raise validation_error("model", str(e)) from None


def device_problem(device: str) -> str | None:
    """Why this machine cannot run on `device` ("cuda", "cuda:1", "mps"), or None when it can."""
    import torch

    base, _, index = device.partition(":")
    if base == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            why = "torch was built without CUDA" if torch.version.cuda is None else "none is visible"
            return f"this machine has no CUDA device ({why}); use --device cpu"
        if index and int(index) >= count:
            return f"this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
    if base == "mps" and not torch.backends.mps.is_available():
        return "this machine has no MPS (Apple GPU) device; use --device cpu"
    return None


class Settings(BaseModel):
    """Everything a Session needs besides the conversation itself.

    Args:
        model: `builtin`, `builtin-small`, `tiny` (random weights), a local diffusers folder, or a hub id such as
            `black-forest-labs/FLUX.1-dev`; checked when set (`check_model`).
        llm: `rules` (deterministic, offline), `local` (GGUF + xgrammar), `parser` (the trained parse model),
            `openai`, or an `http(s)://.../v1` URL.
        device: `cpu`, `cuda`, `cuda:N` or `mps`, checked against this machine; None picks cuda when available.
        dtype: weights dtype; `auto` is bfloat16 on GPU, float32 on CPU.
        home: folder for sessions and chat history.
        output_dir: default folder for `ditflow run` outputs.
        seed: base seed; each turn's tools derive their seeds from it.
        verify: run the verify/repair loop after execution.
        max_repairs: repair attempts per failed output when verifying (0 only verifies).
        preview: inline image previews in `ditflow chat`.
        max_input_pixels: larger input images are refused with a clear error.
        max_inputs: images per turn.
        allow_pickle: allow non-safetensors weights (a pickle can run code when loaded).
        accelerate: `off`, `auto` (what the measurements say pays for this model and device), or `stitch[=F]`
            and/or `local[=R|student|FILE]`, comma-separated (`ditflow.pipelines.acceleration`); applied to every
            tool call that denoises.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: str = Field("builtin", min_length=1, max_length=500)
    llm: str = Field("rules", min_length=1, max_length=500)
    device: str | None = None
    dtype: Dtype = "auto"
    home: Path = Field(default_factory=default_home)
    output_dir: Path = Path("out")
    seed: int = Field(0, ge=0, le=2**32 - 1)
    verify: bool = True
    max_repairs: int = Field(DEFAULT_REPAIRS, ge=0, le=MAX_REPAIRS)
    preview: Preview = "auto"
    max_input_pixels: int = Field(64 * 1024 * 1024, ge=64)
    max_inputs: int = Field(MAX_INPUTS, ge=0, le=MAX_INPUTS)
    max_instruction_chars: int = Field(MAX_INSTRUCTION_CHARS, ge=1, le=MAX_INSTRUCTION_CHARS)
    allow_pickle: bool = False
    accelerate: str = Field("off", max_length=500)

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        return check_model(v)

    @field_validator("accelerate")
    @classmethod
    def _accelerate(cls, v: str) -> str:
        from ditflow.pipelines.acceleration import parse_acceleration

        try:
            return parse_acceleration(v)
        except ValueError as e:
            raise validation_error("accelerate", str(e)) from None

    @field_validator("device")
    @classmethod
    def _device(cls, v: str | None) -> str | None:
        if v in (None, "", "auto"):
            return None
        base, _, index = v.partition(":")
        if base not in ("cpu", "cuda", "mps") or (index and not index.isdigit()):
            raise validation_error("device", f"device {v!r} is not one of cpu, cuda, cuda:N, mps, auto")
        if base != "cpu" and (problem := device_problem(v)):  # now, not after the agents have started
            raise validation_error("device", f"{v}: {problem}")
        return v

    @model_validator(mode="after")
    def _accelerate_fits(self) -> "Settings":
        """An acceleration this model cannot have is refused when it is set, before anything loads."""
        if self.accelerate != "off" and self.model != TINY_MODEL:
            from ditflow.pipelines.acceleration import check_fits

            try:
                check_fits(self.accelerate, self.model, self.device or "cpu")
            except ValueError as e:
                raise validation_error("accelerate", str(e)) from None
        return self

    @field_validator("home", "output_dir")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return Path(v).expanduser()

    @classmethod
    def load(cls, **overrides: Any) -> "Settings":
        """Defaults, then `DITFLOW_<FIELD>` environment variables, then the non-None `overrides`."""
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            env = os.environ.get(ENV_PREFIX + name.upper())
            if env not in (None, ""):
                values[name] = env
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = sorted(set(values) - set(cls.model_fields))
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown}; known: {sorted(cls.model_fields)}")
        return cls(**values)

    def device_or_default(self) -> str:
        if self.device:
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def torch_dtype(self):
        import torch

        if self.dtype == "auto":
            return torch.bfloat16 if self.device_or_default().startswith("cuda") else torch.float32
        return getattr(torch, self.dtype)

    def public(self) -> dict[str, Any]:
        """What manifests record: the settings that shape the output (not local paths)."""
        return self.model_dump(mode="json",
                               include={"model", "llm", "device", "dtype", "seed", "verify", "max_repairs",
                                        "accelerate"})
