"""`ditflow bench clear`: the shipped CLEAR student against its full-attention teacher, scored side by side.

The builtin model as it loads (the teacher), the same model with the shipped local-attention student's projections
(`generate --local-attention student`), and local attention at the student's radius without distillation, each
drawing the same held-out 2×2 canvases (128×128 px: a 16×16 token grid, where the window masks most image pairs)
with the same seeds, scored by the shapes world's scorer at three grains (`distill.score`). Goal: the student keeps
≥ 95% of the teacher's score. Training and this score share one scorer; this bench only scores what ships.

    ditflow bench clear --n 80
"""
from __future__ import annotations

import argparse
import time

GOAL_KEPT = 0.95


def cli(argv: list[str]) -> int:
    from ditflow.kernels.processors import install_local_attention
    from ditflow.pipelines.distill import SCORES, DistillConfig, load_student, read_student, score
    from ditflow.pipelines.loading import BUILTIN_DIR, STUDENT_FILE, load_pipeline

    p = argparse.ArgumentParser(prog="ditflow bench clear", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=80, help="held-out canvases (4 panels each)")
    p.add_argument("--size", type=int, default=128, help="canvas side, px (a multiple of 16)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--student", default=str(BUILTIN_DIR / STUDENT_FILE), help="student file (default: the shipped one)")
    a = p.parse_args(argv)
    cfg = DistillConfig(height=a.size, width=a.size, eval_n=a.n, batch=a.batch, seed=a.seed)
    cfg.check()
    radius = float(read_student(a.student)[0]["radius"])
    variants = {"teacher (full attention)": lambda t: None,
                "student (distilled)": lambda t: load_student(t, a.student),
                "local, not distilled": lambda t: install_local_attention(t, radius)}
    scores = {}
    for name, make in variants.items():
        pipe = load_pipeline("builtin", device="cpu")
        make(pipe.transformer)
        t0 = time.perf_counter()
        scores[name] = score(pipe, cfg)
        print(f"{name}: " + ", ".join(f"{k} {v:.1%}" for k, v in scores[name].items())
              + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    teacher, student = scores["teacher (full attention)"], scores["student (distilled)"]
    print(f"\nr = {radius:g}, {a.n} canvases at {a.size}×{a.size}, seeds {a.seed}…{a.seed + a.n - 1}")
    print("| right | teacher | student | kept (goal ≥ 95%) | local, not distilled |")
    print("|---|---|---|---|---|")
    for k in SCORES:
        kept = student[k] / teacher[k] if teacher[k] else float("nan")
        mark = "met" if kept >= GOAL_KEPT else "not met"
        print(f"| {k} | {teacher[k]:.1%} | {student[k]:.1%} | {kept:.0%} ({mark}) | "
              f"{scores['local, not distilled'][k]:.1%} |")
    return 0
