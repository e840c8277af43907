"""`ditflow` command: a thin shell over the package. Each subcommand's module is imported only when used,
so `ditflow --help` is instant and a broken optional part never breaks the others."""
from __future__ import annotations

import importlib
import os
import sys

from ditflow import logs

# subcommand → (module with `cli(argv)`, one-line help)
COMMANDS = {
    "run": ("ditflow.cli.run", "run one instruction end to end and write images, plan and manifest"),
    "chat": ("ditflow.cli.chat", "interactive terminal session"),
    "batch": ("ditflow.batch", "run a JSONL/YAML task file, resumable"),
    "generate": ("ditflow.cli.generate", "text → image(s) with a FLUX-family pipeline"),
    "edit": ("ditflow.cli.tools", "edit an image (SDEdit, inpaint, in-context)"),
    "restore": ("ditflow.cli.tools", "restore a degraded image"),
    "bench": ("ditflow.bench", "benchmarks: shapes | toolkit | attention | agents | stitch | ideabench ..."),
    "llm": ("ditflow.agents.llm.serve", "LLM helpers: serve a vLLM OpenAI server"),
    "train": ("ditflow.training.cli", "train: builtin | distill | classifiers"),
}


# Exit statuses, one meaning each; `run` and `batch` list them in their --help. 3 was batch's out-of-space stop
# before mismatches had a status, and keeps that meaning.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_SPACE, EXIT_MISMATCH, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
EXIT_STATUS_HELP = f"""exit status:
  {EXIT_OK}    done: every output made and, where verified, matching its description
  {EXIT_FAILED}    the agents could not finish (run), or at least one task failed (batch)
  {EXIT_USAGE}    a problem with what was asked: bad arguments or input, a request for nothing this model
       draws ("outside what this model draws: ..."), or a question back ("which triangle did you mean?")
  {EXIT_NO_SPACE}    (batch) stopped: out of disk space; free some, then rerun with --resume
  {EXIT_MISMATCH}    finished, but not everything matches: some output still does not match its description after
       repairs (each one is named on stderr with the claims that failed), or part of the request was
       left out because this model cannot draw it ("not drawn: 'a cat'")
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)"""


class UserError(Exception):
    """A problem with what the user asked; printed as one line, exit code 2, no traceback."""


EXAMPLES = """examples:
  ditflow run "a red circle on the left" -o out/circle
  ditflow run "a four-page picture book about a red circle that turns blue" -o out/book
  ditflow chat
  ditflow run --help"""


def usage() -> str:
    names = "\n".join(f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items())
    return (f"usage: ditflow [-v] COMMAND [ARGS]\n\ncommands:\n{names}\n\noptions (every command):\n"
            f"  -v, --verbose  {logs.VERBOSE_HELP}\n\n{EXAMPLES}")


def main(argv: list[str] | None = None) -> int:
    argv, verbose = logs.take_verbose_flag(list(sys.argv[1:] if argv is None else argv))
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"ditflow: unknown command {name!r}; see `ditflow --help`", file=sys.stderr)
        return EXIT_USAGE
    logs.setup(verbose)
    try:
        module = importlib.import_module(COMMANDS[name][0])
        return int(module.cli(rest, command=name) or 0)
    except KeyboardInterrupt:
        print("ditflow: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (UserError, ValueError, FileNotFoundError) as e:  # ValueError: our validation messages
        from ditflow.schemas import one_line  # imported here: pydantic need not load for `ditflow --help`

        msg = one_line(e)
        print(f"ditflow {name}: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        logs.reset()

