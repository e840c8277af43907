"""Figures for docs/img/, drawn by `ditflow bench attention|stitch|toolkit --plot`: what a reader would rather look
at than read. Every plot is made from the results of the run that prints the table, never from numbers typed in.
matplotlib is imported here only (the `dev` extra installs it), so a bench without --plot never needs it."""
from __future__ import annotations

import os
import shlex
from pathlib import Path

DOCS_IMG = Path("docs/img")


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise ValueError("--plot needs matplotlib: pip install matplotlib (the project's [dev] extra has it)") from e
    matplotlib.use("Agg")  # files only; no display
    import matplotlib.pyplot as plt

    return plt


def default_path(name: str) -> Path:
    return DOCS_IMG / f"{name}.png"


def caption(bench: str, argv: list[str], device: str = "cpu") -> str:
    """What made the plot: the command, the commit and the machine, as docs/benchmarks.md names them."""
    import platform
    import subprocess

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
    except OSError:
        commit = ""
    if device.startswith("cuda"):
        import torch

        machine = torch.cuda.get_device_name()
    else:
        cpu = Path("/proc/cpuinfo")
        names = [line.split(":", 1)[1].strip() for line in (cpu.read_text().splitlines() if cpu.exists() else [])
                 if line.startswith("model name")]
        machine = f"{names[0] if names else platform.processor() or 'CPU'}, {os.cpu_count()} cores"
    return f"ditflow bench {bench} {shlex.join(argv)} · commit {commit or 'unknown'} · {machine}"


def _save(fig, path: str | Path, caption: str) -> Path:
    """Write atomically, with the command's settings in small print under the plot."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.text(0.01, 0.005, caption, fontsize=6, color="0.4", va="bottom")
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=130)
    os.replace(tmp, path)
    fig.clf()
    return path


def attention(results: list[dict], path: str | Path, caption: str) -> Path:
    """Speed-up over full SDPA against the token grid, one line per method, beside the FLOP bound (the most the
    window can save: full attention's score/value work over the window's)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    grids = [r["grid"] for r in results]
    ax.plot(grids, [r["flop_bound"] for r in results], "k--", label="FLOP bound")
    methods = dict.fromkeys(row["method"] for r in results for row in r["rows"]
                            if not row["method"].startswith("full"))  # the baseline is the 1× line
    for m in methods:
        pts = [(r["grid"], row["speedup"]) for r in results for row in r["rows"] if row["method"] == m]
        ax.plot(*zip(*pts), "o-", label=m)
    ax.axhline(1.0, color="0.6", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(grids, [f"{g}²" for g in grids])
    ax.yaxis.set_major_formatter(lambda y, _: f"{y:g}×")
    ax.yaxis.set_minor_formatter(lambda y, _: "")
    ax.set_xlabel("token grid")
    ax.set_ylabel("speed-up over full SDPA (×)")
    ax.set_title("CLEAR local attention against full attention")
    ax.legend(fontsize=8)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return _save(fig, path, caption)


def stitch(rows: list[dict], path: str | Path, caption: str, goal_speedup: float, goal_loss: float,
           label=lambda r: str(r["fraction"])) -> Path:
    """T-Stitch's trade-off: each setting's speed-up against its score change (95% interval), with the goal's
    corner shaded."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    xmax = max(max(r["speedup"] for r in rows) * 1.1, goal_speedup * 1.2)
    low = min(-goal_loss - 1, min(r["score_change_points"] - r["ci95_points"] for r in rows) - 0.5)
    high = max(1.0, max(r["score_change_points"] + r["ci95_points"] for r in rows) + 0.5)
    ax.fill_between([goal_speedup, xmax], -goal_loss, high, color="tab:green", alpha=0.08)  # the goal's corner
    ax.axhline(-goal_loss, color="tab:green", lw=0.8, ls="--", label=f"goal: ≥ {goal_speedup}× at ≤ {goal_loss:g} "
                                                                     "points lost")
    ax.axvline(goal_speedup, color="tab:green", lw=0.8, ls="--")
    ax.errorbar([r["speedup"] for r in rows], [r["score_change_points"] for r in rows],
                yerr=[r["ci95_points"] for r in rows], fmt="o", capsize=3)
    for r in rows:
        ax.annotate(label(r), (r["speedup"], r["score_change_points"]), textcoords="offset points", xytext=(6, 4),
                    fontsize=7)
    ax.set_xlim(0.9, xmax)
    ax.set_ylim(low, high)
    ax.set_xlabel("speed-up over the large model alone (×)")
    ax.set_ylabel("score change (points, 95% interval)")
    ax.set_title("T-Stitch: the small model's share of the steps")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return _save(fig, path, caption)


def restoration(examples: dict[str, dict], path: str | Path, caption: str) -> Path:
    """Before and after: one row per degradation kind, columns clean / degraded (as given, upsized when small) /
    restored, each titled with its PSNR against the clean image."""
    plt = _pyplot()
    kinds = list(examples)
    fig, axes = plt.subplots(len(kinds), 3, figsize=(5.2, 1.75 * len(kinds) + 0.4), squeeze=False)
    for row, kind in zip(axes, kinds):
        ex = examples[kind]
        for ax, (title, image) in zip(row, [("clean", ex["clean"]), (f"{kind}: {ex['in_db']:.1f} dB", ex["given"]),
                                             (f"restored: {ex['out_db']:.1f} dB", ex["out"])]):
            ax.imshow(image, interpolation="nearest")
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return _save(fig, path, caption)
