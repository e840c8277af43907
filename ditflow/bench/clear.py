"""`ditflow bench clear`: the shipped CLEAR student against its full-attention teacher, scored side by side.

The builtin model as it loads (the teacher), the same model with the shipped local-attention student's projections
(`generate --local-attention student`), and local attention at the student's radius without distillation, each
drawing the same held-out 2×2 canvases (128×128 px: a 16×16 token grid, where the window masks most image pairs)
with the same seeds, scored by the shapes world's scorer at three grains (`distill.score`). Goal: the student keeps
≥ 95% of the teacher's score. Training and this score share one scorer; this bench only scores what ships.

All three run without clause routing, so the teacher is scored as the student was distilled from it (routing now
combines with local attention, but the student was distilled unrouted). `--routed-teacher` adds the teacher as
the builtin loads (routed), to show what choosing local attention gives up on canvases.

    ditflow bench clear --n 80
    ditflow bench clear --n 80 --variants teacher --routed-teacher
"""
from __future__ import annotations

import argparse
import time

GOAL_KEPT = 0.95
VARIANTS = {"teacher": "teacher (full attention)", "student": "student (distilled)", "local": "local, not distilled"}
_KEPT = {VARIANTS["teacher"], VARIANTS["student"]}  # the columns the goal compares


def cli(argv: list[str]) -> int:
    from ditflow.kernels.processors import install_local_attention
    from ditflow.pipelines.loading import BUILTIN_DIR, STUDENT_FILE, load_pipeline
    from ditflow.pipelines.routing import set_clause_routing
    from ditflow.training.distill import SCORES, DistillConfig, load_student, read_student, score

    p = argparse.ArgumentParser(prog="ditflow bench clear", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=80, help="held-out canvases (4 panels each)")
    p.add_argument("--size", type=int, default=128, help="canvas side, px (a multiple of 16)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--student", default=str(BUILTIN_DIR / STUDENT_FILE), help="student file (default: the shipped one)")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), help="which to score")
    p.add_argument("--routed-teacher", action="store_true",
                   help="also score the teacher with clause routing, as the builtin loads")
    a = p.parse_args(argv)
    cfg = DistillConfig(height=a.size, width=a.size, eval_n=a.n, batch=a.batch, seed=a.seed)
    cfg.check()
    radius = float(read_student(a.student)[0]["radius"])
    make = {"teacher": lambda t: None, "student": lambda t: load_student(t, a.student),
            "local": lambda t: install_local_attention(t, radius)}
    runs = [(v, False) for v in a.variants] + ([("teacher", True)] if a.routed_teacher else [])
    scores = {}
    for variant, routed in runs:
        name = VARIANTS[variant] + (", routed" if routed else "")
        pipe = load_pipeline("builtin", device="cpu")
        set_clause_routing(pipe, routed)
        make[variant](pipe.transformer)
        t0 = time.perf_counter()
        scores[name] = score(pipe, cfg)
        print(f"{name}: " + ", ".join(f"{k} {v:.1%}" for k, v in scores[name].items())
              + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"\nr = {radius:g}, {a.n} canvases at {a.size}×{a.size}, seeds {a.seed}…{a.seed + a.n - 1}")
    cols = list(scores)
    with_kept = _KEPT <= set(cols)
    print("| right | " + " | ".join(cols) + " |" + (" kept (goal ≥ 95%) |" if with_kept else ""))
    print("|---|" + "---|" * (len(cols) + with_kept))
    for k in SCORES:
        row = f"| {k} | " + " | ".join(f"{scores[c][k]:.1%}" for c in cols) + " |"
        if with_kept:
            teacher, student = (scores[c][k] for c in (VARIANTS["teacher"], VARIANTS["student"]))
            kept = student / teacher if teacher else float("nan")
            row += f" {kept:.0%} ({'met' if kept >= GOAL_KEPT else 'not met'}) |"
        print(row)
    return 0
