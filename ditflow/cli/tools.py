"""`ditflow edit` and `ditflow restore`: thin shells over `toolkit.edit` and `toolkit.restore`.

    ditflow edit scene.png "make the top left circle blue" -o out.png     # shapes scene: only the object meant
    ditflow edit photo.png "a watercolour painting" -o out.png --strength 0.5        # SDEdit
    ditflow edit photo.png "a cat" -o out.png --mask mask.png                         # masked inpaint
    ditflow edit photo.png "a plain wall" -o out.png --mask cup.png --offset 40,0     # move the masked pixels
    ditflow restore noisy.png -o clean.png                                            # degradation=auto
    ditflow restore small.png -o big.png --degradation sr4
    ditflow restore tiny.png -o big.png --scale 3                                     # auto, 3x larger
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ditflow.cli.generate import add_model_args, check_prompt, examples, load_model, progress_bar
from ditflow.cli.main import EXIT_MISMATCH, EXIT_OK, UserError
from ditflow.logs import route_libraries
from ditflow.pipelines.loading import check_model_name
from ditflow.schemas import EditSpec, RestoreSpec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def _out_path(text: str) -> Path:
    out = Path(text)
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise UserError(f"-o {out}: give an image file name ending in .png, .jpg or .webp")
    return out


def _ints(text: str | None, n: int, flag: str, form: str) -> tuple[int, ...] | None:
    """`n` comma-separated (possibly negative) integers, or a one-line error naming `flag` and its `form`."""
    if text is None:
        return None
    parts = text.split(",")
    if len(parts) != n or not all(p.strip().lstrip("-").isdigit() for p in parts):
        raise UserError(f"{flag} {text!r}: write it as {form}")
    return tuple(int(p) for p in parts)


def _box(text: str | None) -> tuple[int, int, int, int] | None:
    return _ints(text, 4, "--box", "x0,y0,x1,y1 in pixels")  # type: ignore[return-value]


def _offset(text: str | None) -> tuple[int, int] | None:
    return _ints(text, 2, "--offset", "dx,dy in pixels (e.g. 40,0 moves right by 40)")  # type: ignore[return-value]


def edit_cli(argv: list[str]) -> int:
    from ditflow.images import load_image, save_image_atomic

    ap = argparse.ArgumentParser(prog="ditflow edit", description="edit an image: SDEdit, inpaint, in-context",
                                 epilog=examples(__doc__, "edit"), formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("image")
    ap.add_argument("instruction", help="what the result shows, or a shapes-world edit ('make the red circle blue')")
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--mode", choices=("auto", "sdedit", "inpaint", "in-context", "move"), default="auto",
                    help="auto: move when --offset is given, inpaint when a mask/box/target is, a shapes-world edit "
                         "when the instruction is one, else SDEdit")
    ap.add_argument("--mask", help="mask image of the same size (white = change)")
    ap.add_argument("--box", help="x0,y0,x1,y1: a box to change")
    ap.add_argument("--target", help="a shapes-world object to change, e.g. 'the red circle'")
    ap.add_argument("--offset", help="dx,dy: move the masked pixels (mask, box or target) this far; the "
                                     "instruction says what fills the place they leave")
    ap.add_argument("--strength", type=float, default=None, help="0–1: how far from the input (default 0.6, "
                                                                   "1.0 for inpainting)")
    add_model_args(ap)
    args = ap.parse_args(argv)
    check_model_name(args.model)
    instruction = check_prompt(args.instruction, "the instruction")
    out = _out_path(args.out)
    if args.strength is not None and not 0 < args.strength <= 1:
        raise UserError(f"--strength {args.strength}: use a value in (0, 1]")
    route_libraries()  # before the toolkit imports diffusers: its warnings go to the log
    from ditflow.toolkit.edit import edit, shapes_edit

    image = load_image(args.image)
    mask = load_image(args.mask, min_side=1).convert("L") if args.mask else None
    box = _box(args.box)
    base = dict(seed=args.seed, steps=args.steps, guidance_scale=args.cfg)
    offset = _offset(args.offset)
    mode = args.mode
    planned = None
    if mode == "auto" and offset is None and mask is None and not box and not args.target:
        objects = _object_edits(image, instruction)
        if objects is not None:  # the objects the instruction refers to, and nothing else (as `ditflow run`)
            from ditflow.agents.object_edit import SHAPES_CANDIDATES, edit_objects

            with progress_bar(not args.quiet) as progress:
                pipe = load_model(args.model)
                result, _ = edit_objects(pipe, image, *objects, seed=args.seed, progress=progress,
                                         candidates=SHAPES_CANDIDATES)
            save_image_atomic(result, out)
            print(out)
            return 0
    if mode == "auto":
        if offset is not None:
            mode = "move"
        elif mask is not None or box or args.target:
            mode = "inpaint"
        else:
            planned = shapes_edit(image, instruction, seed=args.seed, steps=args.steps)
            mode = planned.spec.mode if planned else "sdedit"
    if (mode == "move") != (offset is not None):
        raise UserError("--mode move needs --offset dx,dy (with --mask, --box or --target), and --offset needs it")
    if planned is not None:
        spec, mask = planned.spec.model_copy(update={"guidance_scale": args.cfg}), planned.mask
    else:
        strength = args.strength if args.strength is not None else (1.0 if mode in ("inpaint", "move") else 0.6)
        spec = EditSpec(prompt=instruction, mode=mode, strength=strength, box=box, target=args.target,
                        offset=offset, **base)
    if spec.mode in ("inpaint", "move"):  # check the mask against the image before the model loads
        from ditflow.toolkit.edit import lift_mask, mask_of

        mask = (lift_mask if spec.mode == "move" else mask_of)(image, spec, mask)
    with progress_bar(not args.quiet) as progress:
        pipe = load_model(args.model)
        images, record = edit(pipe, image, spec, mask, progress)
    save_image_atomic(images[0], out)
    print(out)
    return 0


def _object_edits(image, instruction: str):
    """(the image read as an input, its object edits) when `image` is a shapes-world scene and the instruction
    refers to its objects; None otherwise. A reference the scene cannot settle is the user's to fix."""
    from ditflow.agents import references as rf
    from ditflow.agents.describe import scene_objects
    from ditflow.agents.scene import normalise
    from ditflow.schemas import InputImage

    read = scene_objects(image)
    if read is None:
        return None
    source = InputImage(index=1, description="", background=read[0], objects=read[1])
    try:
        edits = rf.object_edits(normalise(instruction), source.objects, image="the image")
    except rf.Unclear as e:
        raise UserError(str(e)) from None
    return (source, edits) if edits else None


def restore_cli(argv: list[str]) -> int:
    from ditflow.images import load_image, save_image_atomic

    ap = argparse.ArgumentParser(prog="ditflow restore", description="restore a degraded image with the model prior",
                                 epilog=examples(__doc__, "restore") + RESTORE_STATUS,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("image")
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--degradation", choices=("auto", "noise", "blur", "sr2", "sr4", "jpeg", "inpaint"),
                    default="auto", help="auto: the degradation classifier decides")
    ap.add_argument("--severity", type=float, default=None,
                    help="noise σ (0–1), blur σ (px), JPEG quality, or missing fraction (default: detected/typical)")
    ap.add_argument("--scale", type=float, default=None,
                    help="output size as a factor of the image's (default: the image's size, or for an image smaller "
                         "than the model's panel, the panel; sr2/sr4: 2x/4x)")
    ap.add_argument("--mask", help="inpaint: mask of the missing region (white = missing); default: black pixels")
    ap.add_argument("--prompt", default="", help="optional caption of the image, to steer the prior")
    add_model_args(ap)
    args = ap.parse_args(argv)
    check_model_name(args.model)
    out = _out_path(args.out)
    route_libraries()  # before the toolkit imports diffusers: its warnings go to the log
    from ditflow.toolkit.restore import restore

    image = load_image(args.image)
    mask = load_image(args.mask, min_side=1) if args.mask else None
    if mask is not None and mask.size != image.size:
        raise UserError(f"--mask is {mask.width}x{mask.height} but the image is {image.width}x{image.height}; "
                        "give a mask of the same size")
    if args.scale is not None and not 0 < args.scale <= 16:
        raise UserError(f"--scale {args.scale}: give a factor above 0 and at most 16")
    size = {} if args.scale is None else {"width": max(1, round(image.width * args.scale)),
                                          "height": max(1, round(image.height * args.scale))}
    spec = RestoreSpec(degradation=args.degradation, severity=args.severity, seed=args.seed, steps=args.steps,
                       guidance_scale=args.cfg, **size)
    with progress_bar(not args.quiet) as progress:
        pipe = load_model(args.model)
        images, record = restore(pipe, image, spec, progress, mask=mask, prompt=args.prompt)
    d = record.details
    detected = d.get("detected")
    if detected is not None:
        print("detected: " + (", ".join(f"{n} ({_severity(n, s)})" for n, s in detected) or "nothing"))
    if detected == [] and not size:
        print("the image looks clean: nothing written")
        return EXIT_OK
    for key in ("low_resolution", "note"):
        if d.get(key):
            print(d[key])
    save_image_atomic(images[0], out)
    what = d.get("degradation", "resize")
    sev = f" {_severity(what, d['severity'])}" if d.get("severity") is not None and what in ("noise", "blur", "jpeg") else ""
    print(f"{out} ({images[0].width}x{images[0].height}, {what}{sev})")
    return EXIT_MISMATCH if d.get("fallback") else EXIT_OK


RESTORE_STATUS = """
exit status:
  0    restored and written, or (auto, no --scale) nothing found to restore and nothing written
  2    bad arguments or input
  4    written, but it is the input (resized where asked): the restoration failed its check against the input"""


def _severity(name: str, value: float) -> str:
    """A severity in words a user reads: noise σ in 8-bit levels, blur σ in px, JPEG quality."""
    if name == "noise":
        return f"σ {value * 255:.0f}/255"
    if name == "blur":
        return f"σ {value:.2g} px"
    if name == "jpeg":
        return f"quality {value:.0f}"
    return f"{value:.3g}"


def cli(argv: list[str], command: str = "edit") -> int:
    if command == "edit":
        return edit_cli(argv)
    if command == "restore":
        return restore_cli(argv)
    raise UserError(f"cli.tools has no command {command!r}; use edit or restore")
