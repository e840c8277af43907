"""`ditflow bench agents`: parse accuracy of each LLM backend on the labelled instructions, and turn latency.

Per backend: output-count accuracy, task-kind accuracy, attribute accuracy of descriptions, schema-valid rate
before fallback, valid final plans (after fallback), and seconds per instruction. Labels: tests/data/*.jsonl.
"""
from __future__ import annotations

import argparse
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from ditflow.bench._data import load_cases


@dataclass
class CaseResult:
    id: str
    category: str
    task_ok: bool
    count_ok: bool
    attrs_ok: bool | None  # None when the case labels no attributes
    valid_before_fallback: bool
    plan_ok: bool
    seconds: float
    got: dict = field(default_factory=dict)


def _words(text: str) -> str:
    return " " + re.sub(r"[^a-z0-9]+", " ", text.lower()) + " "


def score_case(case: dict, parsed, plan_ok: bool, valid: bool, seconds: float) -> CaseResult:
    """Compare one parse (a ParsedRequest, or None when the instruction was refused) with its labels."""
    want_task = case["task"] if isinstance(case["task"], list) else [case["task"]]
    clarified = parsed is None or parsed.clarification is not None
    got_task = "clarify" if clarified else parsed.task
    task_ok = got_task in want_task
    if clarified:
        count_ok = "clarify" in want_task
        return CaseResult(case["id"], case["category"], task_ok, count_ok, None if "clarify" in want_task else False,
                          valid, plan_ok or "clarify" in want_task, seconds, {"task": got_task})
    lo, hi = (case["count"], case["count"]) if isinstance(case["count"], int) else case["count"]
    n = parsed.num_outputs
    count_ok = lo <= n <= hi
    descs = [o.description for o in parsed.outputs]
    attrs_ok = None
    per = case.get("attrs") or ([case["attrs_all"]] * n if case.get("attrs_all") is not None else None)
    if per is not None or case.get("forbid"):
        per = per or [[]] * n
        ok = len(per) == n
        for want, d in zip(per, descs):
            ok &= all(_words(w) in _words(d) or _words(w).strip() + "s " in _words(d) for w in want)
        for d in descs:
            ok &= not any(_words(w) in _words(d) or _words(w).strip() + "s " in _words(d)
                          for w in case.get("forbid", []))
        if case.get("sources"):
            ok &= [o.sources for o in parsed.outputs] == case["sources"]
        attrs_ok = bool(ok)
    return CaseResult(case["id"], case["category"], task_ok, count_ok, attrs_ok, valid, plan_ok, seconds,
                      {"task": got_task, "n": n, "descriptions": descs})


def run_case(case: dict, backend, alone: bool = False) -> CaseResult:
    """Parse the case's history turns, then its instruction, with one backend; then plan it. `alone`: the trained
    parse model's own frame for the instruction, with no rules referee and no fallback (issue 32)."""
    from ditflow.agents.frames import FrameError
    from ditflow.agents.llm.base import LLMError
    from ditflow.agents.parsing import Context, InstructionError, next_gallery, parse_frame
    from ditflow.agents.planning import make_plan
    from ditflow.agents.parsing import parse
    from ditflow.schemas import InputImage

    inputs = [InputImage(index=i + 1, description=d) for i, d in enumerate(case.get("inputs", []))]
    gallery, prev = [], None
    for h in case.get("history", []):
        p = parse(Context(instruction=h, gallery=gallery, previous_task=prev and prev.request.task,
                                     previous_shared=prev and prev.request.shared,
                                     previous_title=prev and prev.request.title), backend)
        gallery = next_gallery(gallery, p)
        if not p.request.clarification and p.request.task in ("generate", "article", "guide"):
            prev = p  # as the graph does: the turn that made the set is the story a follow-up continues
    ctx = Context(instruction=case["instruction"], inputs=inputs, gallery=gallery,
                  previous_task=prev and prev.request.task, previous_shared=prev and prev.request.shared,
                  previous_title=prev and prev.request.title)
    t0 = time.perf_counter()
    if alone:
        try:
            req = parse_frame(ctx, backend).request
        except (LLMError, FrameError):
            return CaseResult(case["id"], case["category"], False, False, False if case.get("attrs") else None,
                              False, False, time.perf_counter() - t0, {"task": "invalid"})
        return score_case(case, None if req.clarification else req, True, True, time.perf_counter() - t0)
    try:
        p = parse(ctx, backend)
    except InstructionError:
        return score_case(case, None, True, True, time.perf_counter() - t0)
    plan_ok = True
    if not p.request.clarification:
        try:
            make_plan(p.request, backend)
        except ValueError:
            plan_ok = False
    return score_case(case, p.request, plan_ok, p.valid_before_fallback, time.perf_counter() - t0)


def summarise(results: list[CaseResult]) -> dict:
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    attrs = [r.attrs_ok for r in results if r.attrs_ok is not None]
    return {"n": len(results), "count": mean([r.count_ok for r in results]), "task": mean([r.task_ok for r in results]),
            "attributes": mean(attrs), "valid_before_fallback": mean([r.valid_before_fallback for r in results]),
            "valid_plans": mean([r.plan_ok for r in results]), "s_per_instruction": mean([r.seconds for r in results])}


BOOK = "a four-page picture book about a red circle that turns blue"


def end_to_end(model: str, llm: str, out_dir: Path, repeats: int = 1) -> dict:
    """Seconds of the picture-book turn with everything loaded: parse, plan, execute, article, total.

    The first turn warms up (imports, grammar compile, first-call allocations) and is reported separately."""
    import tempfile

    from langgraph.checkpoint.memory import InMemorySaver

    from ditflow.agents.graph import AgentRuntime, run_turn
    from ditflow.agents.llm.base import make_backend

    t0 = time.perf_counter()
    if model == "tiny":
        from ditflow.pipelines.tiny import tiny_flux_pipeline

        pipe = tiny_flux_pipeline()
    else:
        from ditflow.pipelines.loading import load_pipeline

        pipe = load_pipeline(model, device="cpu")
    backend = make_backend(llm)
    if llm == "local":
        from ditflow.agents.llm.local import load_model

        load_model()
    load_s = time.perf_counter() - t0
    rows = []
    for k in range(repeats + 1):
        rec = run_turn(AgentRuntime(pipeline=pipe, llm=backend, seed=k), thread_id=f"bench-{k}", instruction=BOOK,
                       images=[], out_dir=Path(tempfile.mkdtemp(dir=out_dir)), checkpointer=InMemorySaver())
        if rec.error:
            raise RuntimeError(f"the picture-book turn failed: {rec.error}")
        rows.append(rec.timings)
    warm = rows[1:]
    mean = lambda f: sum(getattr(t, f) for t in warm) / len(warm)  # noqa: E731
    return {"model": model, "llm": llm, "load_s": load_s, "first_turn_s": rows[0].total_s,
            **{f: mean(f) for f in ("parse_s", "plan_s", "execute_s", "article_s", "total_s")},
            "pages": 4, "notes": rec.notes}


def cli(argv: list[str]) -> int:
    if any(a == "--verify" or a.startswith("--verify=") for a in argv):  # issue 6: full turns, verify on/off
        from ditflow.bench.verification import cli as verification_cli

        return verification_cli(argv)
    if any(a == "--cases" or a.startswith("--cases=") for a in argv):  # issue 30: judged end to end, per category
        from ditflow.bench.cases import cli as cases_cli

        return cases_cli([a.replace("--cases", "--set", 1) if a.startswith("--cases") else a for a in argv])
    ap = argparse.ArgumentParser(prog="ditflow bench agents")
    ap.add_argument("--split", default="test", choices=("dev", "test", "all"))
    ap.add_argument("--backends", default="rules,local", help="comma-separated: rules, local, openai, or a URL; "
                    "local:parser, local:parser-alone, openai:parser, openai:parser-alone for the trained parse model")
    ap.add_argument("--show-errors", action="store_true")
    ap.add_argument("--limit", type=int, default=0, help="only the first N cases (slow backends)")
    ap.add_argument("--e2e", action="store_true", help="also time a four-page picture book end to end")
    ap.add_argument("--model", default="builtin", help="pipeline for --e2e: builtin, tiny, or a path")
    ap.add_argument("--e2e-llm", default="local", help="LLM backend for --e2e")
    ap.add_argument("--cases", metavar="SET",
                    help="instead: whole turns on a judged set (heldout_others, edits_dev), per category (bench/cases.py)")
    ap.add_argument("--verify", choices=("on", "off", "both"),
                    help="instead: full turns with verify/repair on, off, or both side by side (bench/verification.py)")
    args = ap.parse_args(argv)
    from ditflow.agents.llm.base import PARSER_NAME, make_backend

    cases = load_cases(args.split)
    cases = cases[: args.limit] if args.limit else cases
    rows = {}
    for spec in args.backends.split(","):
        # "local:parse" lets the embedded LLM parse, to measure it; "local:parser" is the trained parse model
        # refereed by the rules, "local:parser-alone" the same model with no referee (issue 32); "openai:parser"
        # and "openai:parser-alone" the same through the server at $DITFLOW_LLM_URL (vLLM)
        name, _, role = spec.partition(":")
        kwargs = {"parses": True} if role == "parse" else {}
        if role in ("parser", "parser-alone"):
            kwargs = {"parser": True} if name == "local" else {"model": PARSER_NAME}
        backend = make_backend(name, **kwargs)
        results = [run_case(c, backend, alone=role == "parser-alone") for c in cases]
        rows[spec] = summarise(results)
        if args.show_errors:
            for r in results:
                if not (r.task_ok and r.count_ok and r.attrs_ok is not False):
                    print(f"  {spec} {r.id} task={r.task_ok} count={r.count_ok} attrs={r.attrs_ok} {r.got}")
    print(f"split={args.split} n={len(cases)}")
    print(f"{'backend':<28}{'count':>7}{'task':>7}{'attrs':>7}{'valid':>7}{'plans':>7}{'s/instr':>9}")
    for spec, s in rows.items():
        print(f"{spec:<28}{s['count']:>7.1%}{s['task']:>7.1%}{s['attributes']:>7.1%}"
              f"{s['valid_before_fallback']:>7.1%}{s['valid_plans']:>7.1%}{s['s_per_instruction']:>9.3f}")
    if args.e2e:
        import tempfile

        r = end_to_end(args.model, args.e2e_llm, Path(tempfile.mkdtemp(prefix="ditflow-bench-agents-")))
        print(f"\npicture book, 4 pages, model={r['model']} llm={r['llm']} (loads {r['load_s']:.1f} s, first turn "
              f"{r['first_turn_s']:.1f} s, excluded)")
        print(f"  parse {r['parse_s']:.2f} s  plan {r['plan_s']:.3f} s  execute {r['execute_s']:.2f} s  "
              f"article {r['article_s']:.2f} s  total {r['total_s']:.2f} s (goal ≤ 15 s)")
        for n in r["notes"]:
            print(f"  note: {n}")
    return 0
