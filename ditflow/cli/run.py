"""`ditflow run "INSTRUCTION" [-i IMG ...] -o DIR`: one instruction, end to end.

Writes DIR/0001.png ..., DIR/plan.json, DIR/article.md (articles, picture books) and, last, DIR/manifest.json
(instruction, inputs with hashes, model, LLM, seed, timings, tool calls), each atomically. What the manifest alone
would hide is said on stderr: an LLM fallback, a part of the request left out, an output that still does not match
its description after repairs; and the exit status says how the run ended (see --help).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from ditflow.agents.parsing import check_instruction
from ditflow.agents.repair import REPAIR_DIR
from ditflow.api import ARTICLE_FILE, MANIFEST_FILE, PLAN_FILE, Session, Turn, numbered
from ditflow.cli.main import EXIT_FAILED, EXIT_MISMATCH, EXIT_OK, EXIT_STATUS_HELP, UserError
from ditflow.logs import add_verbose_flag
from ditflow.pipelines.acceleration import add_accelerate_flag
from ditflow.progress import RichProgress
from ditflow.schemas import CLARIFY, DEFAULT_REPAIRS, OUT_OF_WORLD, ProgressEvent, TurnRecord

EXAMPLES = """examples:
  ditflow run "three green triangles on a black background" -o out/tri
  ditflow run "make the top left triangle red" -i out/tri/0001.png -o out/red
  ditflow run "a four-page picture book about a red circle that turns blue" -o out/book
  ditflow run "this picture is really noisy, can you clean it up?" -i noisy.png -o out/clean

"""


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """Options shared by run, chat and batch; None means "use the setting / environment / default"."""
    p.add_argument("--model", help="builtin (default: the embedded shapes-world model), builtin-small, tiny (random "
                                   "weights, for smoke runs), a diffusers folder, or a hub id")
    p.add_argument("--llm", help="rules (default), local, parser (the trained parse model, in-process), openai, or "
                                 "an http(s)://host/v1 endpoint")
    p.add_argument("--seed", type=int, help="base seed (default 0)")
    p.add_argument("--device", help="cpu, cuda, cuda:N, mps (default: cuda when available)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--no-verify", dest="verify", action="store_const", const=False, help="skip verify/repair")
    p.add_argument("--max-repairs", type=int, metavar="N", help=f"repair attempts per failed output (default {DEFAULT_REPAIRS})")
    add_accelerate_flag(p)


def parser(prog: str = "ditflow run") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0], epilog=EXAMPLES + EXIT_STATUS_HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("instruction", help="what to make, in plain words")
    p.add_argument("-i", "--image", dest="images", action="append", default=[], metavar="IMG",
                   help="input image (repeat for several; numbered 1, 2, ... in the instruction)")
    p.add_argument("-o", "--out", required=True, type=Path, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run's files in DIR")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the output paths")
    add_verbose_flag(p)
    add_engine_args(p)
    return p


def prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse to mix two runs in one folder; with --overwrite, drop the earlier run's numbered outputs first."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder; choose another -o")
    for dead in out.glob(".run-*") if out.is_dir() else ():  # staging left by a killed run
        shutil.rmtree(dead, ignore_errors=True)
    if (out / MANIFEST_FILE).exists():
        if not overwrite:
            raise ValueError(f"{out} already holds a run; choose another -o or pass --overwrite")
        for old in out.glob("[0-9][0-9][0-9][0-9].*"):
            old.unlink()
        shutil.rmtree(out / REPAIR_DIR, ignore_errors=True)
        (out / MANIFEST_FILE).unlink()


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def publish(staging: Path, out: Path) -> None:
    """Move a finished run's files (and its repairs/ folder) from its staging folder into `out`, the manifest
    last: a run that fails or is killed leaves no output files behind, and a manifest in `out` means every file it
    lists is there."""
    for f in sorted(p for p in staging.iterdir() if p.name != MANIFEST_FILE):
        if f.is_dir() and (out / f.name).is_dir():  # an earlier run's, replaced under --overwrite
            shutil.rmtree(out / f.name)
        os.replace(f, out / f.name)
    os.replace(staging / MANIFEST_FILE, out / MANIFEST_FILE)


def mismatches(record: TurnRecord) -> list[str]:
    """One line per output that still fails a claim after repairs, naming the claims and what was seen instead:
    "0002.png does not match: 'a red triangle' (seen: a green triangle)"; and one for the parts of the request
    this model could not draw, which no output shows. Unverified outputs and claims the verifier cannot check
    are not mismatches."""
    lines = []
    if record.left_out and record.images:
        lines.append(f"not drawn: {', '.join(repr(w) for w in record.left_out)} (outside what this model draws)")
    for v in record.verdicts:
        failed = [c for c in v.claims if c.status == "fail"]
        if v.error is None and failed:
            claims = "; ".join(f"{c.text!r}" + (f" (seen: {c.seen})" if c.seen else "") for c in failed)
            lines.append(f"{numbered(v.output)} does not match: {claims}")
    return lines


def outcome(record: TurnRecord) -> str:
    """The closing line: "1 image in 14.2 s; verified: 1 of 1 match" (or why they were not checked)."""
    n = len(record.images)
    text = f"{n} image{'s' if n != 1 else ''} in {record.timings.total_s:.1f} s"
    checked = [v for v in record.verdicts if v.error is None and v.claims]
    if checked:
        text += f"; verified: {sum(v.passed for v in checked)} of {len(checked)} match"
    elif record.images:
        text += "; not verified"
    repaired = len({a.output for a in record.repairs})
    return text + (f"; repairs tried on {repaired}, each attempt kept in {REPAIR_DIR}/" if repaired else "")


def cli(argv: list[str], command: str = "run") -> int:
    args = parser(f"ditflow {command}").parse_args(argv)
    check_instruction(args.instruction)  # before any display or folder: a rejected instruction leaves nothing
    prepare_out(args.out, args.overwrite)
    made_out = not args.out.exists()  # a run that ends with nothing to show leaves no folder it made
    staging = Path(tempfile.mkdtemp(prefix=".run-", dir=_mkdir(args.out)))
    show = RichProgress(enabled=not args.quiet, notices=True)
    notices: list[str] = []  # the display shows them live; printed after the run when -q hides it

    def listen(event: ProgressEvent) -> None:
        if event.notice:
            notices.append(event.message)
        show(event)

    try:
        with Session(model=args.model, llm=args.llm, seed=args.seed, device=args.device, dtype=args.dtype,
                     verify=args.verify, max_repairs=args.max_repairs, accelerate=args.accelerate,
                     persist=False) as session, show:
            turn = session.run(args.instruction, args.images, staging, on_progress=listen)
        error = turn.record.error or ""
        if error.startswith((OUT_OF_WORLD, CLARIFY)):  # a problem with what was asked: nothing written
            raise UserError(error.removeprefix(CLARIFY).strip())
        publish(staging, args.out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if made_out and args.out.is_dir() and not any(args.out.iterdir()):
            args.out.rmdir()
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    turn = Turn(turn.record, args.out, turn.manifest)
    for path in turn.image_paths:
        print(path)
    for name in (PLAN_FILE, ARTICLE_FILE):
        if (args.out / name).exists():
            print(args.out / name)
    print(args.out / MANIFEST_FILE)
    if not args.quiet:
        print(f"ditflow {command}: {outcome(turn.record)}", file=sys.stderr)
    for line in [f"note: {n}" for n in notices if args.quiet] + mismatches(turn.record):
        print(f"ditflow {command}: {line}", file=sys.stderr)
    if turn.record.error:
        print(f"ditflow {command}: the agents could not finish: {turn.record.error}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_MISMATCH if mismatches(turn.record) else EXIT_OK
