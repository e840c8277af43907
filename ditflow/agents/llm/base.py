"""One interface for every LLM backend: messages + a pydantic schema → a validated object.

Backends register by name (style.md §4): `openai` (vLLM or any OpenAI-compatible server), `local` (transformers +
GGUF + xgrammar), `rules` (deterministic floor). Errors are typed so callers retry only what is retryable.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol, TypeVar

from pydantic import BaseModel

T = TypeVar("T", bound=BaseModel)
Message = dict[str, Any]  # OpenAI chat format: {"role": ..., "content": str | list[parts]}


class LLMError(RuntimeError):
    """Base of every backend failure."""


class LLMUnavailable(LLMError):
    """Transport failure: connection refused, timeout, 5xx/429 after retries. The endpoint, not the answer."""


class LLMInvalidOutput(LLMError):
    """The model answered, but never with JSON that validates against the schema (after bounded retries)."""

    def __init__(self, message: str, raw: str = ""):
        super().__init__(message)
        self.raw = raw


class LLMBackend(Protocol):
    name: str
    supports_images: bool  # whether image_url parts may be sent

    def complete(self, messages: list[Message], schema: type[T], *, task: str = "") -> T:
        """Return a validated instance of `schema`, or raise LLMUnavailable / LLMInvalidOutput.

        `task` names the agent asking (parse | plan | article | verify) so a backend can route or log.
        """
        ...


BACKENDS: dict[str, Callable[..., LLMBackend]] = {}
MODULE_OF = {"parser": "local"}  # backends registered by a module of another name
PARSER_NAME = "ditflow-parser"  # the trained parse model (issue 32), as `ditflow llm serve --model parser` names it


def only_parses(backend) -> bool:
    """Whether `backend` is the trained parse model: it answers `ParseFrame`s and nothing else, so planning,
    page text and verification stay with the rules."""
    return bool(getattr(backend, "writes_frames", False))


def register(name: str):
    def deco(factory):
        BACKENDS[name] = factory
        return factory

    return deco


def make_backend(spec: str | None, **kwargs) -> LLMBackend:
    """`rules`, `local`, `parser` (the trained parse model, in-process), `openai`, or an endpoint URL
    (`http://host:8000/v1` → openai backend)."""
    spec = spec or "rules"
    if spec.startswith(("http://", "https://")):
        kwargs.setdefault("base_url", spec)
        spec = "openai"
    if spec not in BACKENDS:
        import importlib

        try:
            importlib.import_module(f"ditflow.agents.llm.{MODULE_OF.get(spec, spec)}")
        except ModuleNotFoundError:
            pass
    if spec not in BACKENDS:
        raise ValueError(f"unknown LLM backend {spec!r}; use one of rules, local, parser, openai, or an http(s):// "
                         "URL")
    return BACKENDS[spec](**kwargs)
