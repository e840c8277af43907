"""`ditflow bench vllm`: the real vLLM server behind the `openai` backend, measured in one run.

Reports the server's start time, then sends agent-style structured requests (the parse agent's real prompt and
messages on labelled dev instructions, and the plan agent's on their rules parses) and reports per schema:
seconds per request, schema-valid rate on the first answer and after the bounded retries (before any fallback),
and, for parses, the LLM's own count and task accuracy before the rules referee. `--vs-local` runs the same
requests through the `local` backend (same SmolLM2 weights, transformers + xgrammar in-process) for a
side-by-side latency ratio.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel


class _Hi(BaseModel):
    """The warm-up request's schema: a tiny one, so the first-request compile is timed apart."""

    greeting: str


@dataclass
class Tally:
    seconds: list[float] = field(default_factory=list)
    first: int | None = 0  # None: the backend keeps no per-attempt stats (only "after retries" is known)
    after_retry: int = 0
    invalid: int = 0
    count_ok: int = 0
    task_ok: int = 0

    @property
    def n(self) -> int:
        return len(self.seconds)

    def row(self, name: str) -> str:
        n = max(1, self.n)
        s = sorted(self.seconds) or [0.0]
        acc = f"  count {self.count_ok / n:5.0%}  task {self.task_ok / n:5.0%}" if self.count_ok or self.task_ok else ""
        first = "  n/a" if self.first is None else f"{self.first / n:5.0%}"
        valid = (self.n - self.invalid) / n
        return (f"{name:<16} n={self.n:<3} median {statistics.median(s):6.2f} s  p90 {s[int(0.9 * (len(s) - 1))]:6.2f} s"
                f"  valid first {first}  after retries {valid:5.0%}{acc}")


def run_requests(backend, cases: list[dict]) -> dict[str, Tally]:
    """Parse and plan requests through `backend.complete`, tallied per schema (no fallback anywhere)."""
    from ditflow.agents.llm.base import LLMError
    from ditflow.agents.parsing import Context, parse_messages, parse_rules
    from ditflow.agents.planning import plan_messages
    from ditflow.agents.prompts import load_prompt
    from ditflow.schemas import ParsedRequest, Plan

    parse_prompt, plan_prompt = load_prompt("parse"), load_prompt("plan")
    out = {"parse": Tally(), "plan": Tally()}
    for case in cases:
        ctx = Context(instruction=case["instruction"])
        rules = parse_rules(ctx).request
        for task, schema, messages in (("parse", ParsedRequest, parse_messages(ctx, parse_prompt)),
                                       ("plan", Plan, plan_messages(rules, plan_prompt))):
            if task == "plan" and rules.clarification:
                continue
            t = out[task]
            stats = getattr(backend, "stats", None)
            before = (stats.valid_first_try, stats.valid_after_retry) if stats else None
            t0 = time.perf_counter()
            try:
                got = backend.complete(messages, schema, task=task)
                if task == "plan":
                    got.check_against(rules)  # a plan that validates but makes the wrong outputs is not valid
            except (LLMError, ValueError):
                got = None
            t.seconds.append(time.perf_counter() - t0)
            if got is None:
                t.invalid += 1
                continue
            if stats is None:
                t.first = None
            elif stats.valid_after_retry > before[1]:
                t.after_retry += 1
            elif t.first is not None:
                t.first += 1
            if task == "parse":
                want = case["count"] if isinstance(case["count"], list) else [case["count"], case["count"]]
                t.count_ok += want[0] <= got.num_outputs <= want[1]
                tasks = case["task"] if isinstance(case["task"], list) else [case["task"]]
                t.task_ok += got.task in tasks
    return out


def cli(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="ditflow bench vllm", description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="use this running server (skips the start-time measurement)")
    ap.add_argument("--model", help="model folder for the started server (default: the embedded SmolLM2)")
    ap.add_argument("--threads", type=int, default=None, help="server OpenMP threads (default: half the cores)")
    ap.add_argument("--eager", action="store_true", help="start the server without torch.compile")
    ap.add_argument("--limit", type=int, default=10, help="how many dev instructions (parse + plan each)")
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--vs-local", action="store_true", help="the same requests through the local backend too")
    args = ap.parse_args(argv)
    if args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")

    from ditflow.agents.llm.openai import OpenAIBackend
    from ditflow.agents.llm.serve import VLLMServer
    from ditflow.bench._data import load_cases

    cases = [c for c in load_cases("dev") if c["task"] != "clarify"][: args.limit]
    server = None
    if not args.url:
        log_path = Path(tempfile.gettempdir()) / f"ditflow-bench-vllm-{os.getpid()}.log"
        server = VLLMServer(args.model, threads=args.threads, eager=args.eager, log_path=log_path)
        print(f"starting vLLM ({server.model}, {server.threads} thread(s){', eager' if args.eager else ''}) ...",
              flush=True)
        server.start()
        print(f"vLLM start: {server.start_seconds:.1f} s (until /v1/models answers); log: {log_path}", flush=True)
    try:
        backend = OpenAIBackend(args.url or server.url, timeout=600.0, retries=1, schema_retries=2,
                                max_tokens=args.max_tokens)
        t0 = time.perf_counter()
        backend.complete([{"role": "user", "content": "Say hi as JSON."}], _Hi)  # warm-up: first-request compile
        print(f"first request (warm-up): {time.perf_counter() - t0:.1f} s", flush=True)
        vllm = run_requests(backend, cases)
    finally:
        if server:
            server.stop()
    print(f"\n{len(cases)} dev instructions, max_tokens {args.max_tokens}, temperature 0")
    for task, t in vllm.items():
        print(t.row(f"vllm {task}"))
    if args.vs_local:
        from ditflow.agents.llm.base import make_backend

        local = make_backend("local", parses=True)
        local.complete([{"role": "user", "content": "Say hi as JSON."}], _Hi)  # load outside the timing
        loc = run_requests(local, cases)
        for task, t in loc.items():
            print(t.row(f"local {task}"))
        for task in vllm:
            if vllm[task].n and loc[task].n:
                ratio = statistics.median(loc[task].seconds) / max(1e-9, statistics.median(vllm[task].seconds))
                print(f"{task}: local / vllm median latency = {ratio:.2f}x")
    return 0

