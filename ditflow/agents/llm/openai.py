"""`openai` backend: any OpenAI-compatible chat endpoint (vLLM first), with structured output.

The answer is constrained server-side by `response_format: json_schema` (vLLM compiles it to a grammar) and
validated here by pydantic. Two kinds of failure are retried, each a bounded number of times:
- transport: timeouts, dropped connections, HTTP 5xx and 429 → exponential backoff (honouring `Retry-After`);
- content: JSON that does not parse or validate → the validation error goes back to the model as a new turn.
Anything else is not retried, since a retry would not help: HTTP 400 (the server rejects the request itself), and
an endpoint that cannot be reached at all (connection refused, unknown host), which fails at once, so that a turn
falls back to the rules in milliseconds instead of seconds of backoff.
"""
from __future__ import annotations

import base64
import functools
import io
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ValidationError

from ditflow.agents.llm.base import (PARSER_NAME, LLMBackend, LLMError, LLMInvalidOutput, LLMUnavailable, Message, T,
                                     make_backend, register)
from ditflow.schemas import one_line

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"  # where `ditflow llm serve` listens by default
RETRYABLE_STATUS = {429, 500, 502, 503, 504}
MAX_RETRY_AFTER_S = 30.0  # a server asking us to wait longer than this is treated as down
# Schema-less containers get a bound, so a small model looping inside an array or string still finishes within
# max_tokens with closed JSON (otherwise the grammar is satisfied but the answer is truncated mid-string).
DEFAULT_MAX_ITEMS = 16
DEFAULT_MAX_CHARS = 600


@dataclass
class CallStats:
    """Counters over the life of a backend: what `ditflow bench` reports as schema-valid rate before fallback."""

    calls: int = 0
    valid_first_try: int = 0  # answered with a valid object on the first request
    valid_after_retry: int = 0  # needed the validation error fed back at least once
    invalid: int = 0  # never valid within the bounded retries
    unavailable: int = 0  # transport failures after retries
    fallbacks: int = 0  # answered by the fallback backend instead
    transport_retries: int = 0
    seconds: float = 0.0


def image_part(image: Any, *, detail: str = "auto") -> dict[str, Any]:
    """An OpenAI `image_url` content part for a PIL image, a path or raw bytes (sent inline as a PNG data URL)."""
    if isinstance(image, (str, Path)):
        image = Path(image).read_bytes()
    if isinstance(image, (bytes, bytearray)):
        from ditflow.images import load_image  # validates and normalises (mode, EXIF rotation, size limits)

        image = load_image(bytes(image))
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return {"type": "image_url", "image_url": {"url": url, "detail": detail}}


def tie_counts(js: dict[str, Any]) -> dict[str, Any]:
    """Tie each integer property `num_X` to the length of its array property `X`, as an anyOf over the values k
    (`num_X: {const: k}`, exactly k items). Without it a small model states one count and writes another list
    length, often a runaway one (issue 5: SmolLM2 wrote 16 inputs for `num_inputs: 1`). Pairs multiply:
    ParsedRequest gives 9 × 16 variants, which xgrammar compiles once per schema in about a second."""
    props = js.get("properties", {})
    pairs = [(f"num_{name}", name) for name, p in props.items()
             if p.get("type") == "array" and props.get(f"num_{name}", {}).get("type") == "integer"]
    if not pairs:
        return js
    variants = [{k: v for k, v in js.items() if k != "$defs"}]
    for num, arr in pairs:
        lo, hi = props[num].get("minimum", 0), props[num].get("maximum", DEFAULT_MAX_ITEMS)
        variants = [_with_count(v, num, arr, k) for v in variants for k in range(lo, hi + 1)]
    return {"$defs": js.get("$defs", {}), "anyOf": variants}


def _with_count(variant: dict[str, Any], num: str, arr: str, k: int) -> dict[str, Any]:
    props = dict(variant["properties"])
    props[num] = {"const": k}
    props[arr] = {**props[arr], "minItems": k, "maxItems": k}
    required = list(variant.get("required", []))
    return {**variant, "properties": props, "required": required + [arr] * (arr not in required)}


@functools.lru_cache(maxsize=64)  # a pydantic JSON schema costs tens of ms to build; the schemas are fixed classes
def request_schema(schema: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema sent as `response_format`: counts tied to list lengths, a `maxItems`/`maxLength` on every
    array/string that has none, and no titles (the grammar does not need them; 144 variants carry less)."""

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            node = {k: walk(v) for k, v in node.items() if not (k == "title" and isinstance(v, str))}
            if node.get("type") == "array":
                node.setdefault("maxItems", DEFAULT_MAX_ITEMS)
            if node.get("type") == "string" and not {"enum", "const", "pattern"} & node.keys():
                node.setdefault("maxLength", DEFAULT_MAX_CHARS)
            return node
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return tie_counts(walk(schema.model_json_schema()))


def _strip_fence(text: str) -> str:
    """Servers without structured output often wrap JSON in a ```json fence; accept that, nothing looser."""
    t = text.strip()
    if t.startswith("```") and t.endswith("```"):
        t = t[3:-3]
        t = t[4:] if t.startswith("json") else t
    return t.strip()


def _has_images(messages: list[Message]) -> bool:
    return any(
        isinstance(m.get("content"), list) and any(p.get("type") == "image_url" for p in m["content"]) for m in messages
    )


@register("openai")
class OpenAIBackend:
    """Chat completions against an OpenAI-compatible server.

    Args:
        base_url: endpoint root ending in `/v1`. Default: `$DITFLOW_LLM_URL`, else `$OPENAI_BASE_URL`, else
            the local `ditflow llm serve` address.
        model: served model name. Default: `$DITFLOW_LLM_MODEL`, else the first model the server lists.
        api_key: bearer token. Default: `$OPENAI_API_KEY` (vLLM accepts any token unless started with one).
        vision: whether the model accepts `image_url` parts (a VLM). Default: `$DITFLOW_LLM_VISION` == "1".
        timeout: seconds for one request (connect is capped at 10 s). Default: `$DITFLOW_LLM_TIMEOUT`, else 60.
        retries: transport retries per request (5xx, 429, timeouts, dropped connections; never a refused
            connection). Default: `$DITFLOW_LLM_RETRIES`, else 3.
        schema_retries: extra requests with the validation error fed back, when an answer does not validate.
        backoff: first backoff in seconds; doubles on each transport retry.
        max_tokens: answer budget per request.
        temperature: 0 by default, so that a plan is reproducible.
        fallback: a backend name (e.g. "rules") or instance that answers when this one fails; logged visibly.
    """

    name = "openai"

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        *,
        vision: bool | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        schema_retries: int = 2,
        backoff: float = 0.5,
        max_tokens: int = 1024,
        temperature: float = 0.0,
        fallback: str | LLMBackend | None = None,
    ):
        try:  # the environment configures sessions that build their backend from a URL (`--llm http://...`)
            timeout = float(os.environ.get("DITFLOW_LLM_TIMEOUT") or 60.0) if timeout is None else timeout
            retries = int(os.environ.get("DITFLOW_LLM_RETRIES") or 3) if retries is None else retries
        except ValueError as e:
            raise ValueError(f"DITFLOW_LLM_TIMEOUT / DITFLOW_LLM_RETRIES must be numbers: {e}") from e
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        if retries < 0 or schema_retries < 0:
            raise ValueError(f"retries and schema_retries must be >= 0, got {retries} and {schema_retries}")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        self.base_url = (base_url or os.environ.get("DITFLOW_LLM_URL") or os.environ.get("OPENAI_BASE_URL")
                         or DEFAULT_BASE_URL).rstrip("/")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        self._model = model or os.environ.get("DITFLOW_LLM_MODEL") or None
        self.supports_images = bool(vision) if vision is not None else os.environ.get("DITFLOW_LLM_VISION") == "1"
        self.retries, self.schema_retries, self.backoff = retries, schema_retries, backoff
        self.max_tokens, self.temperature = max_tokens, temperature
        self._fallback = fallback
        key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {key}"},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        )
        self.stats = CallStats()

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIBackend(base_url={self.base_url!r}, model={self._model!r}, vision={self.supports_images})"

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------------------- transport
    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One HTTP exchange with bounded retries on transport errors, 5xx and 429."""
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats.transport_retries += 1
            wait = self.backoff * 2**attempt
            try:
                r = self._http.request(method, path, json=body)
            except httpx.ConnectError as e:  # refused, unknown host, no route: nobody to wait for
                raise LLMUnavailable(f"LLM {self.base_url} unavailable: unreachable ({type(e).__name__}: "
                                     f"{_reason(e)})") from e
            except httpx.TransportError as e:  # reset, dropped, and every kind of timeout
                last = f"{type(e).__name__}: {e}"
            else:
                if r.status_code < 400:
                    try:
                        return r.json()
                    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past the parser's depth
                        last = f"HTTP {r.status_code} with a body that is not JSON: {r.text[:200]!r}"
                elif r.status_code in RETRYABLE_STATUS:
                    last = f"HTTP {r.status_code}: {r.text[:200]}"
                    retry_after = r.headers.get("retry-after", "")
                    if retry_after.replace(".", "", 1).isdigit():
                        if float(retry_after) > MAX_RETRY_AFTER_S:
                            break
                        wait = max(wait, float(retry_after))
                else:
                    raise LLMError(f"{self.base_url}{path} refused the request: HTTP {r.status_code}: {r.text[:500]}")
            if attempt < self.retries:
                log.info("LLM endpoint %s%s: %s; retrying in %.1fs", self.base_url, path, last, wait)
                time.sleep(wait)
        raise LLMUnavailable(f"LLM endpoint {self.base_url} unavailable after {self.retries + 1} attempt(s): {last}")

    @property
    def model(self) -> str:
        """The served model; asked of the server once when not configured (vLLM serves exactly one)."""
        if self._model is None:
            data = self._request("GET", "/models").get("data") or []
            if not data:
                raise LLMUnavailable(f"{self.base_url}/models lists no model; pass model=...")
            self._model = str(data[0]["id"])
        return self._model

    @property
    def writes_frames(self) -> bool:
        """Whether the endpoint serves the trained parse model (`ditflow llm serve --model parser`), by its name."""
        try:
            return self.model.startswith(PARSER_NAME)
        except LLMError:  # an endpoint that does not answer is no parse model; the turn's fallback says so
            return False

    # ------------------------------------------------------------------------- structured completion
    def complete(self, messages: list[Message], schema: type[T], *, task: str = "") -> T:
        """A validated `schema` instance; on failure the fallback's answer, else LLMUnavailable/LLMInvalidOutput."""
        t0 = time.perf_counter()
        self.stats.calls += 1
        try:
            return self._complete(messages, schema, task)
        except LLMError as e:
            if isinstance(e, LLMInvalidOutput):
                self.stats.invalid += 1
            elif isinstance(e, LLMUnavailable):
                self.stats.unavailable += 1
            if self._fallback is None:
                raise
            if isinstance(self._fallback, str):
                self._fallback = make_backend(self._fallback)
            log.warning("LLM %s failed for %s (%s); answering with the %s backend", self.name, task or "request",
                        one_line(e), self._fallback.name)
            self.stats.fallbacks += 1
            return self._fallback.complete(messages, schema, task=task)
        finally:
            self.stats.seconds += time.perf_counter() - t0

    def _complete(self, messages: list[Message], schema: type[T], task: str) -> T:
        if _has_images(messages) and not self.supports_images:
            raise ValueError(
                f"{self!r} is not a vision model, but the messages carry image_url parts; describe the images as "
                "text instead (check backend.supports_images), or pass vision=True for a VLM endpoint"
            )
        response_format = {
            "type": "json_schema",
            # no "strict": OpenAI's strict mode wants every field required; vLLM enforces the schema regardless
            "json_schema": {"name": schema.__name__, "schema": request_schema(schema)},
        }
        convo = list(messages)
        raw = problem = ""
        for attempt in range(self.schema_retries + 1):
            body = {
                "model": self.model,
                "messages": convo,
                "response_format": response_format,
                "temperature": self.temperature,
                "max_tokens": self.max_tokens,
            }
            data = self._request("POST", "/chat/completions", body)
            try:
                choice = data["choices"][0]
                raw = choice["message"].get("content") or ""
                finish = choice.get("finish_reason")
                if not isinstance(raw, str):  # a broken server, not a model's answer: content is always a string
                    raise TypeError(f"message.content is a {type(raw).__name__}")
            except (KeyError, IndexError, TypeError, AttributeError):
                raise LLMUnavailable(f"{self.base_url} answered without choices[0].message: {str(data)[:300]}")
            try:
                obj = schema.model_validate_json(_strip_fence(raw))
            except ValidationError as e:
                problem = _describe(e, finish, self.max_tokens)
                log.info("LLM %s answer for %s invalid (attempt %d): %s", self.name, task, attempt + 1, problem)
                convo = [*messages, {"role": "assistant", "content": raw[:4000]}, {"role": "user", "content": (
                    f"That answer is not valid: {problem}\nReply again with only a JSON object that satisfies the "
                    f"{schema.__name__} schema and fixes this.")}]
                continue
            if attempt == 0:
                self.stats.valid_first_try += 1
            else:
                self.stats.valid_after_retry += 1
            return obj
        raise LLMInvalidOutput(
            f"{self.model} at {self.base_url} gave no valid {schema.__name__} in {self.schema_retries + 1} "
            f"attempt(s); last problem: {problem}", raw=raw)


def _reason(e: Exception) -> str:
    """ "connection refused" from "[Errno 111] Connection refused": the OS's words without their number."""
    return re.sub(r"^\[Errno -?\d+\]\s*", "", str(e)).lower() or "no connection"


def _describe(e: ValidationError, finish: str | None, max_tokens: int) -> str:
    """A short, model-readable account of what was wrong with an answer."""
    if finish == "length":
        return f"the answer was cut off at {max_tokens} tokens; write shorter descriptions"
    errs = e.errors(include_url=False)[:5]
    return "; ".join(f"{'.'.join(map(str, x['loc'])) or 'answer'}: {x['msg']}" for x in errs)
