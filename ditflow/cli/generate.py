"""`ditflow generate`: text → image(s) with any FLUX-family pipeline, offline on the builtin model by default.

    ditflow generate "a red circle on the left" -o out.png --seed 1 --steps 20 --size 64x64
    ditflow generate --prompts-file prompts.txt -o outdir --seed 0          # outdir/0001.png, 0002.png, ...
    ditflow generate --panels 4 "a red square moving clockwise" -o outdir  # one in-context canvas
    ditflow generate "a blue circle" -o out.png --classifier-guidance 2
    ditflow generate "a blue circle" -o out.png --cfg 1 --classifier-guidance 5   # EluCD: the classifier, not CFG
    ditflow generate "a blue circle" -o out.png --stitch 0.4 --stitch-at 1   # builtin-small-late: the last 8 steps
    ditflow generate "a red square" -o out.png --size 128x128 --local-attention student   # CLEAR, distilled

Everything is validated before the model loads, and every image is written atomically.
"""
from __future__ import annotations

import argparse
from contextlib import contextmanager
from pathlib import Path

from ditflow.cli.main import UserError
from ditflow.logs import add_verbose_flag, route_libraries
from ditflow.pipelines.loading import check_model_name
from ditflow.pipelines.routing import add_clause_routing_flag, set_clause_routing
from ditflow.schemas import MAX_PANELS, MAX_PROMPT_CHARS, GenerateSpec, GroupSpec, ProgressEvent

SIZE_MULTIPLE = 16  # what FLUX-family latents need at 8× VAEs (2×2 packing)
MAX_SIDE = 4096
PANEL_SEP = "|"  # "overview | panel 1 | panel 2 ..." in --panels prompts


# ----------------------------------------------------------------------------- shared by generate / edit / restore
def parse_size(text: str | None) -> tuple[int, int] | None:
    """"64x64" → (64, 64) as (width, height); a one-line error for anything else."""
    if text is None:
        return None
    parts = text.lower().replace("×", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise UserError(f"--size {text!r}: write it as WIDTHxHEIGHT, e.g. 64x64")
    w, h = (int(p) for p in parts)
    m = SIZE_MULTIPLE
    if w % m or h % m or not (m <= w <= MAX_SIDE and m <= h <= MAX_SIDE):
        raise UserError(f"--size {w}x{h}: width and height must be multiples of {m} between {m} and {MAX_SIDE}, "
                        f"e.g. {max(m, round(w / m) * m)}x{max(m, round(h / m) * m)}")
    return w, h


def check_prompt(prompt: str, where: str = "prompt") -> str:
    prompt = prompt.strip()
    if not prompt:
        raise UserError(f"{where} is empty; describe the image to generate")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise UserError(f"{where} is {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}, shorten it")
    return prompt


def examples(doc: str, command: str) -> str:
    """The `ditflow COMMAND ...` example lines of a module docstring, as an --help epilog."""
    lines = [ln[2:] for ln in doc.splitlines() if ln.lstrip().startswith(f"ditflow {command} ")]
    return "examples:\n" + "\n".join(lines)


def add_model_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", default="builtin", help="builtin | builtin-small | a diffusers folder | a hub id")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's own)")
    ap.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the model's own)")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_verbose_flag(ap)


def load_model(name: str):
    from ditflow.pipelines.loading import load_pipeline

    return load_pipeline(name)


@contextmanager
def progress_bar(enabled: bool = True):
    """A rich bar over every denoising loop; yields `progress(step, total)` for the toolkit."""
    from ditflow.progress import RichProgress

    with RichProgress(enabled=enabled, transient=False) as show:
        loop = {"n": 0, "last": None}

        def progress(step: int, total: int) -> None:
            if loop["last"] is None or step <= loop["last"]:
                loop["n"] += 1  # a new loop started
            loop["last"] = step
            show(ProgressEvent(stage="denoise", step=step, total=total, output=loop["n"]))

        show(ProgressEvent(stage="execute", message="loading the model"))
        yield progress


# ----------------------------------------------------------------------------- generate
def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ditflow generate", description="text → image(s) with a FLUX-family pipeline",
                                 epilog=examples(__doc__, "generate"),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("prompt", nargs="?", help="what to draw")
    ap.add_argument("-o", "--out", required=True, help="output image (or folder with --prompts-file / --panels)")
    ap.add_argument("--prompts-file", help="one prompt per line → OUT/0001.png, OUT/0002.png, ...")
    ap.add_argument("--size", help="WIDTHxHEIGHT, multiples of 16, of the image or, with --panels, of each panel "
                    "(default: the model's panel size)")
    ap.add_argument("--panels", type=int, default=None,
                    help=f"an in-context group of N panels (≤{MAX_PANELS}); the prompt is the overview, or "
                         f"'overview | panel 1 | panel 2 ...'")
    ap.add_argument("--max-panels", type=int, default=4, help="panels per canvas; more continue on new canvases")
    ap.add_argument("--classifier-guidance", type=float, default=0.0, metavar="SCALE",
                    help="EluCD guidance towards the colour, shape, position and size the prompt names (builtin "
                         "scenes); 2 is safe beside CFG, 5 with --cfg 1 lifts the most (docs/benchmarks.md, Toolkit)")
    ap.add_argument("--stitch", type=float, default=None, metavar="F",
                    help="T-Stitch: the small model takes a fraction F of the steps (the first ones; see --stitch-at). "
                         "Fastest for the builtin at ≤2 points lost: --stitch 0.4 --stitch-at 1 --stitch-offset "
                         "--no-stitch-cfg (about 1.5×, docs/benchmarks.md)")
    ap.add_argument("--stitch-at", type=float, default=0.0, metavar="P",
                    help="where the --stitch steps sit: 0 = the first (T-Stitch), 1 = the last")
    ap.add_argument("--stitch-model", default=None, metavar="ID_OR_PATH",
                    help="the pipeline whose transformer takes the --stitch steps: any FLUX-family folder or hub id "
                         "with the --model's latent space, or FOLDER#SUBFOLDER (default: builtin-small-late for "
                         "the builtin's last steps, builtin-small otherwise)")
    ap.add_argument("--stitch-cfg", action=argparse.BooleanOptionalAction, default=None,
                    help="true CFG in the --stitch steps (default on); --no-stitch-cfg runs the small model on the "
                         "conditional pass alone, at half its cost: faster, for a little quality (docs/lab-notes.md)")
    ap.add_argument("--stitch-offset", action="store_true",
                    help="shift the small model's outputs by (large − small), measured on the large model's step "
                         "before them; needs --stitch-at > 0. With --no-stitch-cfg the large model's guidance on "
                         "that step is carried through them too (docs/benchmarks.md, T-Stitch)")
    ap.add_argument("--local-attention", default=None, metavar="R_OR_FILE",
                    help="CLEAR local attention in the transformer: a window radius in tokens (e.g. 4), a student "
                         "file from `ditflow train distill`, or 'student' for the one shipped in the model's folder")
    add_clause_routing_flag(ap, "With --local-attention as well, an image token keeps its window of image tokens "
                                "and only the text it reads is routed")
    add_model_args(ap)
    return ap


def local_attention_spec(text: str | None, model: str) -> float | Path | None:
    """--local-attention as a radius or a student file, checked before the model loads."""
    if text is None:
        return None
    try:
        radius = float(text)
    except ValueError:
        radius = None
    if radius is not None:
        if not radius > 0:
            raise UserError(f"--local-attention {text}: the window radius must be a positive number of tokens")
        return radius
    if text == "student":
        from ditflow.pipelines.loading import STUDENT_FILE, _resolve

        folder, _ = _resolve(model)
        if not isinstance(folder, Path):
            raise UserError(f"--local-attention student: {model} is not a local folder; give the student file")
        path = folder / STUDENT_FILE
        if not path.is_file():
            raise UserError(f"--local-attention student: {folder} has no {STUDENT_FILE}; make one with "
                            f"`ditflow train distill --model {model} --out DIR` and give DIR/{STUDENT_FILE}")
        return path
    path = Path(text).expanduser()
    if not path.is_file():
        raise UserError(f"--local-attention {text}: not a radius, 'student', or an existing student file")
    return path


def apply_local_attention(transformer, spec: float | Path) -> None:
    from safetensors import SafetensorError

    from ditflow.kernels.processors import install_local_attention
    from ditflow.training.distill import load_student

    if isinstance(spec, float):
        install_local_attention(transformer, spec)
        return
    try:
        load_student(transformer, spec)
    except ValueError as e:  # not a student file, or distilled from another transformer
        raise UserError(f"--local-attention {spec}: {e}") from e
    except (SafetensorError, OSError) as e:  # a corrupt, truncated or unreadable file
        raise UserError(f"--local-attention {spec}: cannot read it as a student file ({e})") from e


def stitch_model(model: str, at: float, given: str | None) -> str:
    """The small model for --stitch. On the builtin pair the last steps go to a small model fine-tuned on low
    noise only, which loses half the points the general one does there (docs/lab-notes.md, T-Stitch)."""
    if given is not None:
        return given
    return "builtin-small-late" if at == 1.0 and model in ("builtin", "builtin-large") else "builtin-small"


def _prompts(args) -> list[str]:
    if args.prompts_file:
        if args.prompt:
            raise UserError("give either a PROMPT or --prompts-file, not both")
        path = Path(args.prompts_file)
        if not path.is_file():
            raise UserError(f"--prompts-file {path}: no such file")
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if not lines:
            raise UserError(f"--prompts-file {path} has no prompts (one per line)")
        return [check_prompt(ln, f"line {i + 1} of {path}") for i, ln in enumerate(lines)]
    if args.prompt is None:
        raise UserError("give a PROMPT (or --prompts-file FILE)")
    return [check_prompt(args.prompt)]


def _group_spec(prompt: str, n: int, args) -> GroupSpec:
    parts = [p.strip() for p in prompt.split(PANEL_SEP)]
    overview, clauses = (parts[0], parts[1:]) if len(parts) > 1 else (prompt, [prompt] * n)
    if len(clauses) != n:
        raise UserError(f"--panels {n} but the prompt gives {len(clauses)} panel clauses after the overview")
    if any(not c for c in clauses):
        raise UserError("a panel clause is empty; write 'overview | panel 1 | panel 2 ...'")
    w, h = parse_size(args.size) or (None, None)  # with --panels, --size is one panel's
    return GroupSpec(overview=overview, panel_prompts=clauses, n_refs=0, max_panels=args.max_panels, seed=args.seed,
                     steps=args.steps, guidance_scale=args.cfg, width=w, height=h)


def cli(argv: list[str], command: str = "generate") -> int:
    from ditflow.images import save_image_atomic

    args = _parser().parse_args(argv)
    check_model_name(args.model)  # now: the model loads only after every other check
    prompts = _prompts(args)
    size = parse_size(args.size)
    out = Path(args.out)
    many = bool(args.prompts_file) or args.panels is not None
    if not many and out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise UserError(f"-o {out}: give an image file name ending in .png, .jpg or .webp")
    if args.panels is not None and not 1 <= args.panels <= MAX_PANELS * 4:
        raise UserError(f"--panels {args.panels}: use 1 to {MAX_PANELS * 4}")
    if not 1 <= args.max_panels <= MAX_PANELS:
        raise UserError(f"--max-panels {args.max_panels}: use 1 to {MAX_PANELS}")
    if args.stitch is not None and not 0.0 <= args.stitch <= 1.0:
        raise UserError(f"--stitch {args.stitch}: the fraction of steps for the small model must be in [0, 1]")
    if not 0.0 <= args.stitch_at <= 1.0:
        raise UserError(f"--stitch-at {args.stitch_at}: use 0 (the small model takes the first steps) to 1 (the last)")
    for flag, given in (("--stitch-at", args.stitch_at), ("--stitch-model", args.stitch_model is not None),
                        ("--stitch-cfg", args.stitch_cfg is not None), ("--stitch-offset", args.stitch_offset)):
        if given and args.stitch is None:
            raise UserError(f"{flag} needs the small model's share of the steps: give --stitch F as well")
    if args.stitch_offset and args.stitch_at == 0:
        raise UserError("--stitch-offset needs --stitch-at > 0: the offset is measured on the large model's step "
                        "before the small model's, and the first steps have none")
    local = local_attention_spec(args.local_attention, args.model)
    w, h = size or (None, None)
    specs = [GenerateSpec(prompt=p, seed=args.seed, steps=args.steps, guidance_scale=args.cfg, width=w, height=h,
                          classifier_guidance=args.classifier_guidance) for p in prompts]
    group = _group_spec(prompts[0], args.panels, args) if args.panels is not None else None
    if group is not None and args.prompts_file:
        raise UserError("--panels takes one PROMPT, not --prompts-file")

    route_libraries()  # before the toolkit imports diffusers: its warnings go to the log
    from ditflow.toolkit.generate import generate, generate_group

    with progress_bar(not args.quiet) as progress:
        pipe = load_model(args.model)
        set_clause_routing(pipe, args.clause_routing)
        if local is not None:
            apply_local_attention(pipe.transformer, local)
        if args.stitch is not None:
            try:
                from ditflow.pipelines.stitch import apply_stitch
            except ImportError as e:
                raise UserError(f"--stitch needs ditflow.pipelines.stitch, which is not available ({e})") from e
            from ditflow.pipelines.loading import load_transformer

            small_name = stitch_model(args.model, args.stitch_at, args.stitch_model)
            small = load_transformer(small_name)
            try:
                apply_stitch(pipe, small, args.stitch, at=args.stitch_at, cfg=args.stitch_cfg is not False,
                             offset=args.stitch_offset)
            except ValueError as e:  # the two models do not share a latent space or text conditioning
                raise UserError(f"--stitch-model {small_name}: {e}") from e
        if group is not None:
            images, _ = generate_group(pipe, group, [], progress)
            paths = [out / f"{i:04d}.png" for i in range(1, len(images) + 1)]
            for img, path in zip(images, paths):
                save_image_atomic(img, path)
        else:
            paths = []
            for i, spec in enumerate(specs, start=1):
                images, _ = generate(pipe, spec, progress)
                path = out / f"{i:04d}.png" if many else out
                save_image_atomic(images[0], path)  # each finished image is safe on disk before the next starts
                paths.append(path)
    for p in paths:
        print(p)
    return 0
