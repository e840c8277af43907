"""Trajectory distillation for T-Stitch: the small transformer learns the large one's early steps.

T-Stitch (`pipelines/stitch.py`) gives the small model the first fraction f of the steps and the large one the rest. The
large model inherits whatever layout the small one put down in those noisy steps, so the handover keeps the large
model's quality only if the small model moves the latents where the large one would have. The general small model
learned flow matching from data. At high noise its target ε − x0 is mostly noise, and with a fifth of the capacity
it lays things out worse than the large model: on the builtin pair, f = 0.4 loses about 11 points in `bench stitch`.

Here a copy of the small model learns the large model's own velocities instead. The inputs are the states of the
large model's sampling trajectories, at the steps the small model will take. The target is the large model's
estimate of E[ε − x0 | x_t], with none of the data's noise. Both the conditional and the unconditional velocity are
matched, so true CFG combines them as before; the CFG-combined velocity, which is what moves the latents, is matched
too.

`at` places the student's steps as `apply_stitch` does: 0 (the default) learns the first steps, 1 the last
ones, where the builtin pair loses fewest points. There the states come from the large model's whole trajectory,
and the handover is the final latents.

The student is written as a third transformer of a copy of the folder, `transformer_stitch`; `--stitch-model
FOLDER#transformer_stitch` uses it. `builtin-small` stays the general small model.

    ditflow train stitch --minutes 20 --out runs/stitch-distill
    ditflow bench stitch --small "runs/stitch-distill#transformer_stitch" --fractions 0 0.4
    ditflow train stitch --start transformer_small_late --fraction 0.4 --at 1 --out runs/stitch-late-distill
    ditflow bench stitch --small "runs/stitch-late-distill#transformer_stitch" --fractions 0 0.4 --at 1
"""
from __future__ import annotations

import argparse
import copy
import json
import random
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F

from ditflow.pipelines.stitch import small_step_range
from ditflow.training.settings import add_flags, from_overrides, require_positive

STUDENT = "transformer_stitch"  # subfolder the student is written to; `--stitch-model FOLDER#transformer_stitch`


@dataclass
class StitchDistillConfig:
    """Args:
        model: a builtin-style folder (or `builtin`) holding the large `transformer` and the student's start.
        start: the transformer subfolder the student starts from (the general small model).
        fraction: the share of `steps` the student learns; with `at` 0 or 1 it then serves every stitch fraction
            up to this.
        at: where those steps sit, as `apply_stitch`'s `at`: 0 = the first (T-Stitch), 1 = the last.
        steps: the sampling schedule the trajectories follow (the builtin default is 20).
        n_prompts: training captions (never the held-out ones) whose trajectories the large model records.
        batch: trajectories per recording call, and states per optimiser step.
        lr: peak learning rate, falling linearly to 10% over the budget.
        rollout: weight of the handover loss. The student is unrolled from the teacher's starting noise through
            all the recorded steps with its own CFG-combined velocities, and the relative squared distance to the
            teacher's handover latents is penalised (0 = per-step matching only).
        rollout_batch: trajectories unrolled per optimiser step.
        minutes, max_steps: the training budget, whichever ends first.
        eval_n: held-out prompts for the handover gap (0 skips it).
        out: a copy of `model` with the student in `transformer_stitch`.
    """

    model: str = "builtin"
    start: str = "transformer_small"
    fraction: float = 0.5
    at: float = 0.0
    steps: int = 20
    n_prompts: int = 768
    batch: int = 16
    lr: float = 1e-4
    rollout: float = 0.0
    rollout_batch: int = 4
    minutes: float = 20.0
    max_steps: int = 1_000_000
    eval_n: int = 32
    seed: int = 0
    out: str = "runs/stitch-distill"

    def check(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1]; got {self.fraction}")
        if not 0.0 <= self.at <= 1.0:
            raise ValueError(f"at must be in [0, 1] (0 = the first steps, 1 = the last); got {self.at}")
        require_positive(self, ("steps", "n_prompts", "batch", "max_steps", "rollout_batch"))
        if round(self.fraction * self.steps) < 1:
            raise ValueError(f"fraction {self.fraction} of {self.steps} steps is no step at all")


@dataclass
class Trajectories:
    """The large model's k steps that the student learns, for the prompts of one canvas size (R = 2 with true CFG:
    cond, uncond)."""

    size: tuple[int, int]
    x: torch.Tensor  # (N, k, L, C): the latents each step starts from
    t: torch.Tensor  # (k + 1,): the transformer's timestep input at each step, then at the handover
    v: torch.Tensor  # (N, k, R, L, C): the large model's velocities
    end: torch.Tensor  # (N, L, C): the latents it hands over after the k steps
    seq: torch.Tensor  # (N, R, T, D): text states (the unconditional ones are the empty prompt's)
    pooled: torch.Tensor  # (N, R, D)
    img_ids: torch.Tensor
    txt_ids: torch.Tensor
    guidance: float | None  # a guidance-distilled model's guidance input


# ----------------------------------------------------------------------------- recording
def training_prompts(n: int, seed: int) -> dict[tuple[int, int], list[str]]:
    """Training captions of every kind and layout, grouped by canvas (height, width)."""
    from ditflow.world import scenes as world

    rng = random.Random(seed)
    out: dict[tuple[int, int], list[str]] = {}
    got = 0
    while got < n:
        spec = world.sample_spec(rng)
        text = world.caption(spec, rng)
        if world.seen_in_training(text):
            out.setdefault(tuple(spec.size), []).append(text)
            got += 1
    return out


def run_steps(pipe, prompts: list[str], size: tuple[int, int], seeds: list[int], span: range, steps: int,
              keep: bool = True) -> tuple[torch.Tensor, list[dict]]:
    """Run the pipeline of `steps` steps up to the end of `span`; returns the latents then and, with `keep`, the
    inputs and outputs of every transformer call in `span` (cond and uncond alternate under true CFG) and last
    the timestep input the next step would get (the scheduler's σ at the handover; 0 after the last step)."""
    from ditflow.pipelines.sampling import call_kwargs, generators

    calls: list[dict] = []
    done = [0]  # steps finished, counted by the step-end callback

    def record(module, args, kwargs, output):
        if done[0] < span.start:  # a step before the span: nothing to keep
            return
        calls.append({**{n: kwargs.get(n) for n in ("hidden_states", "timestep", "encoder_hidden_states",
                                                      "pooled_projections", "img_ids", "txt_ids", "guidance")},
                      "v": output[0]})

    def stop_after_span(p, i, t, kw):
        done[0] = i + 1
        if i + 1 >= span.stop:
            p._interrupt = True  # FluxPipeline skips the remaining steps (diffusers' documented interrupt)
            calls.append({"handover_t": p.scheduler.sigmas[span.stop]})
        return {}

    handle = pipe.transformer.register_forward_hook(record, with_kwargs=True) if keep else None
    try:
        h, w = size
        latents = pipe(prompts, height=h, width=w, generator=generators(seeds), output_type="latent",
                       callback_on_step_end=stop_after_span, **call_kwargs(pipe, steps)).images
    finally:
        if handle is not None:
            handle.remove()
    return latents, calls


@torch.no_grad()
def record_trajectories(pipe, cfg: StitchDistillConfig, log=print) -> list[Trajectories]:
    span = small_step_range(cfg.fraction, cfg.at, cfg.steps)
    k = len(span)
    groups = []
    for size, prompts in training_prompts(cfg.n_prompts, cfg.seed).items():
        parts: dict[str, list[torch.Tensor]] = {"x": [], "v": [], "end": [], "seq": [], "pooled": []}
        t0 = time.monotonic()
        for start in range(0, len(prompts), cfg.batch):
            chunk = prompts[start:start + cfg.batch]
            end, calls = run_steps(pipe, chunk, size,
                                   [cfg.seed + 100_000 + start + j for j in range(len(chunk))], span, cfg.steps)
            handover_t = calls.pop()["handover_t"]
            r = len(calls) // k
            if r not in (1, 2) or len(calls) != r * k:
                raise RuntimeError(f"expected 1 or 2 transformer calls per step, got {len(calls)} for {k} steps")
            per = [calls[i * r:(i + 1) * r] for i in range(k)]  # per step: [cond, (uncond)]
            parts["x"].append(torch.stack([s[0]["hidden_states"] for s in per], 1))
            parts["v"].append(torch.stack([torch.stack([c["v"] for c in s], 1) for s in per], 1))
            parts["end"].append(end)
            # the empty negative prompt comes as a batch of one, which the transformer broadcasts
            b = len(chunk)
            parts["seq"].append(torch.stack([c["encoder_hidden_states"].expand(b, -1, -1) for c in per[0]], 1))
            parts["pooled"].append(torch.stack([c["pooled_projections"].expand(b, -1) for c in per[0]], 1))
        first = calls[0]
        g = first["guidance"]
        t = torch.stack([s[0]["timestep"][0] for s in per] + [handover_t.to(per[0][0]["timestep"].dtype)])
        groups.append(Trajectories(size, torch.cat(parts["x"]), t, torch.cat(parts["v"]), torch.cat(parts["end"]),
                                   torch.cat(parts["seq"]), torch.cat(parts["pooled"]),
                                   first["img_ids"], first["txt_ids"], None if g is None else float(g.flatten()[0])))
        log(f"recorded {len(prompts)} trajectories at {size[0]}×{size[1]}, {k} steps each, "
            f"in {time.monotonic() - t0:.0f} s")
    return groups


# ----------------------------------------------------------------------------- the loss
def cfg_scale(pipe) -> float:
    from ditflow.pipelines.sampling import call_kwargs

    return float(call_kwargs(pipe).get("true_cfg_scale", 1.0))


def predict(student, g: Trajectories, idx: torch.Tensor, ks: torch.Tensor, x: torch.Tensor | None = None):
    """The student's velocities, (B, R, L, C), cond and uncond in one batched call, at the recorded states of
    trajectories `idx` at steps `ks`, or at latents `x` (B, L, C) at those steps' timesteps."""
    b, r = len(idx), g.v.shape[2]
    x = g.x[idx, ks] if x is None else x
    kw = {}
    if g.guidance is not None:
        kw["guidance"] = torch.full((r * b,), g.guidance)
    out = student(hidden_states=x.repeat(r, 1, 1), timestep=g.t[ks].repeat(r),
                  encoder_hidden_states=g.seq[idx].transpose(0, 1).flatten(0, 1),
                  pooled_projections=g.pooled[idx].transpose(0, 1).flatten(0, 1),
                  img_ids=g.img_ids, txt_ids=g.txt_ids, return_dict=False, **kw)[0]
    return out.unflatten(0, (r, b)).transpose(0, 1)


def guided(v: torch.Tensor, scale: float) -> torch.Tensor:
    """The velocity that moves the latents: diffusers' true-CFG combination of (B, R, L, C) velocities."""
    return v[:, 0] if v.shape[1] == 1 else v[:, 1] + scale * (v[:, 0] - v[:, 1])


def trajectory_loss(pred: torch.Tensor, target: torch.Tensor, scale: float) -> tuple[torch.Tensor, dict]:
    """MSE on every velocity, plus on the CFG-combined one when there is an unconditional one."""
    each = F.mse_loss(pred, target)
    if pred.shape[1] == 1:
        return each, {"each": each.item()}
    combined = F.mse_loss(guided(pred, scale), guided(target, scale))
    return each + combined, {"each": each.item(), "guided": combined.item()}


def rollout_loss(student, g: Trajectories, idx: torch.Tensor, scale: float) -> torch.Tensor:
    """Relative squared distance at the handover between the student's own Euler trajectory, from the teacher's
    starting noise, and the teacher's (FlowMatchEuler: x ← x + (σ_next − σ)·v)."""
    x = g.x[idx, 0]
    for j in range(g.x.shape[1]):
        ks = torch.full((len(idx),), j)
        x = x + (g.t[j + 1] - g.t[j]) * guided(predict(student, g, idx, ks, x), scale)
    end = g.end[idx]
    return (((x - end) ** 2).sum((1, 2)) / (end ** 2).sum((1, 2))).mean()


def train_student(student, groups: list[Trajectories], scale: float, cfg: StitchDistillConfig, log=print) -> list:
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    weights = [g.x.shape[0] for g in groups]
    rng = random.Random(cfg.seed)
    history, start = [], time.monotonic()
    student.train()
    step = 0
    while step < cfg.max_steps and time.monotonic() - start < 60 * cfg.minutes:
        done = min(1.0, (time.monotonic() - start) / (60 * cfg.minutes))
        for group in opt.param_groups:
            group["lr"] = cfg.lr * (1 - 0.9 * done)
        g = rng.choices(groups, weights)[0]
        idx = torch.randint(0, g.x.shape[0], (cfg.batch,), generator=gen)
        ks = torch.randint(0, g.x.shape[1], (cfg.batch,), generator=gen)
        loss, parts = trajectory_loss(predict(student, g, idx, ks), g.v[idx, ks], scale)
        if cfg.rollout > 0:
            gap = rollout_loss(student, g, idx[:cfg.rollout_batch], scale)
            loss = loss + cfg.rollout * gap
            parts["handover"] = gap.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        history.append({"step": step, **parts})
        if step % 100 == 0:
            log(json.dumps({"step": step, "min": round((time.monotonic() - start) / 60, 1),
                            **{k: round(v, 5) for k, v in parts.items()}}))
        step += 1
    student.eval()
    return history


# ----------------------------------------------------------------------------- how far apart at the handover
@torch.no_grad()
def handover_gap(pipe, small, fraction: float, steps: int, n: int, seed: int = 0, at: float = 0.0) -> float:
    """Mean relative squared distance, at the end of the small model's steps, between the latents of the stitched
    pipeline and those the large model reaches alone, over n held-out single-panel prompts (same seeds). With
    `at` = 1 that is the final latents."""
    from ditflow.pipelines.stitch import apply_stitch, remove_stitch
    from ditflow.world import scenes as world

    prompts = [t for t, s in world.heldout_prompts(n) if s.layout == (1, 1)][:n]
    span = small_step_range(fraction, at, steps)
    size = (world.PANEL, world.PANEL)
    seeds = [seed + i for i in range(len(prompts))]
    alone, _ = run_steps(pipe, prompts, size, seeds, span, steps, keep=False)
    apply_stitch(pipe, small, fraction, at=at)
    try:
        stitched, _ = run_steps(pipe, prompts, size, seeds, span, steps, keep=False)
    finally:
        remove_stitch(pipe)
    return float(((stitched - alone) ** 2).sum((1, 2)).div((alone ** 2).sum((1, 2))).mean())


# ----------------------------------------------------------------------------- entry points
def source_dir(model: str) -> Path:
    from ditflow.pipelines.loading import BUILTIN_DIR

    return BUILTIN_DIR if model in ("builtin", "builtin-large") else Path(model)


def export(student, source: Path, out: Path, meta: dict) -> Path:
    """`out` = a copy of the source folder plus the student in `transformer_stitch` (fp16, as the other
    transformers), written beside and swapped in, so a kill leaves the previous folder whole."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp, ignore=shutil.ignore_patterns(STUDENT))
    copy.deepcopy(student).to(torch.float16).save_pretrained(tmp / STUDENT, safe_serialization=True)
    from ditflow.pipelines.loading import DITFLOW_META

    info_path = tmp / DITFLOW_META
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    info["stitch_student"] = meta
    info_path.write_text(json.dumps(info, indent=2))
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)
    return out


def main(pipe=None, small=None, log=print, install: bool = False, **overrides) -> dict:
    """Record, distil, export; returns the report (also `out/stitch_distill.json`)."""
    from ditflow.pipelines.loading import BUILTIN_DIR, load_pipeline

    cfg = from_overrides(StitchDistillConfig, overrides, "stitch")
    torch.manual_seed(cfg.seed)
    source = source_dir(cfg.model)
    pipe = pipe or load_pipeline(str(source), device="cpu")
    pipe.transformer.eval().requires_grad_(False)
    small = small or load_pipeline(f"{source}#{cfg.start}", device="cpu").transformer
    student = copy.deepcopy(small)
    groups = record_trajectories(pipe, cfg, log)
    scale = cfg_scale(pipe)
    report = {"config": asdict(cfg), "cfg_scale": scale,
              "states": sum(g.x.shape[0] * g.x.shape[1] for g in groups)}
    t0 = time.monotonic()
    history = train_student(student, groups, scale, cfg, log)
    report.update(optimizer_steps=len(history), train_minutes=round((time.monotonic() - t0) / 60, 1),
                  first_loss=history[0] if history else None, last_loss=history[-1] if history else None)
    if cfg.eval_n:
        for f in sorted({0.4, cfg.fraction}):
            if f == cfg.fraction or (f < cfg.fraction and cfg.at in (0.0, 1.0)):  # steps the student learned
                report[f"handover_gap_f{f}"] = {
                    "start": handover_gap(pipe, small, f, cfg.steps, cfg.eval_n, cfg.seed, cfg.at),
                    "student": handover_gap(pipe, student, f, cfg.steps, cfg.eval_n, cfg.seed, cfg.at)}
                log(f"handover gap at f = {f}: {report[f'handover_gap_f{f}']}")
    out = export(student, source, Path(cfg.out), {k: v for k, v in report.items() if k != "first_loss"})
    (out / "stitch_distill.json").write_text(json.dumps(report, indent=1, default=str))
    if install:
        shutil.copytree(out / STUDENT, BUILTIN_DIR / STUDENT, dirs_exist_ok=True)
        log(f"installed {BUILTIN_DIR / STUDENT}")
    return report


def cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ditflow train stitch", description=__doc__.splitlines()[0])
    add_flags(p, StitchDistillConfig)
    p.add_argument("--install", action="store_true", help=f"copy the student into the builtin folder as {STUDENT}")
    args = vars(p.parse_args(argv))
    main(install=args.pop("install"), **args)
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
