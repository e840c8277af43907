"""Where the libraries' own output goes. transformers, diffusers, torch and the rest write warnings, log records
and loading bars; a person running `ditflow` wants ditflow's lines. So every command's log records and Python
warnings go to `<home>/logs/ditflow.log`, and reach the terminal only with `-v/--verbose`; ditflow's own
loggers' warnings stay on the terminal, as before.

`ditflow.cli.main` calls `setup()` around every command. transformers and diffusers keep their own stderr
handlers, set up when they are imported; importing them costs seconds, which `--help` and a quick one-line error
should not pay, so `route_libraries()` takes those handlers over where ditflow loads a model, not up front.
"""
from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

VERBOSE_FLAGS = ("-v", "--verbose")
LOG_FILE = Path("logs") / "ditflow.log"  # under the ditflow home (`ditflow.config.default_home`)
LOG_BYTES = 5 * 1024 * 1024  # then it rolls over to ditflow.log.1, so the log never grows without bound
VERBOSE_HELP = "also show the libraries' warnings, logs and loading bars (always in <home>/logs/ditflow.log)"

_handlers: list[logging.Handler] = []
_verbose: bool | None = None  # None: not set up, so the libraries' logging is left as their user made it
_root_level = logging.WARNING  # the root logger's level before setup()


def take_verbose_flag(argv: list[str]) -> tuple[list[str], bool]:
    """`argv` without -v/--verbose, and whether it was there. Every command takes the flag, wherever it stands
    (before a `--`), so `main` reads it before the command's own parser."""
    end = argv.index("--") if "--" in argv else len(argv)
    kept = [a for a in argv[:end] if a not in VERBOSE_FLAGS] + argv[end:]
    return kept, len(kept) < len(argv)


def add_verbose_flag(parser) -> None:
    """Lists -v/--verbose in a command's --help; `main` has taken it off argv before the parser runs."""
    parser.add_argument(*VERBOSE_FLAGS, action="store_true", help=VERBOSE_HELP)


def setup(verbose: bool = False, home: Path | None = None) -> Path | None:
    """Route log records and Python warnings for one command; returns the log file (None if it cannot be written).
    `reset()` undoes it."""
    global _verbose, _root_level
    from ditflow.config import default_home

    reset()
    terminal = logging.StreamHandler()  # stderr
    if verbose:
        terminal.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        terminal.setLevel(logging.WARNING)
        terminal.addFilter(logging.Filter("ditflow"))  # ditflow's own loggers only
    _handlers.append(terminal)
    path: Path | None = (home or default_home()) / LOG_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        file = logging.handlers.RotatingFileHandler(path, maxBytes=LOG_BYTES, backupCount=1, encoding="utf-8")
    except OSError:  # a home we cannot write costs the log, not the command
        path = None
    else:
        file.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
        _handlers.append(file)
    root = logging.getLogger()
    for h in _handlers:
        root.addHandler(h)
    _root_level = root.level
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)  # warnings.warn → the "py.warnings" logger → the handlers above
    _verbose = verbose
    return path


def reset() -> None:
    """Undo `setup()` (`main` runs in-process in tests, and each call sets up anew)."""
    global _verbose
    root = logging.getLogger()
    for h in _handlers:
        root.removeHandler(h)
        h.close()
    _handlers.clear()
    if _verbose is not None:
        root.setLevel(_root_level)
        logging.captureWarnings(False)
    _verbose = None


def is_verbose() -> bool | None:
    """Whether the running command asked for -v; None outside `setup()`."""
    return _verbose


def route_libraries() -> None:
    """Send transformers' and diffusers' records to our handlers instead of their own stderr ones, and turn their
    loading bars off unless verbose. Called where ditflow loads a model, before the libraries' first warnings
    (transformers' that torchvision is missing comes as diffusers is imported). Does nothing outside `setup()`."""
    if _verbose is None:
        return
    from transformers.utils import logging as transformers_logging  # first: diffusers imports transformers
    from diffusers.utils import logging as diffusers_logging

    for lib in (transformers_logging, diffusers_logging):
        lib.disable_default_handler()
        lib.enable_propagation()
        if not _verbose:
            lib.disable_progress_bar()  # transformers' also turns off huggingface_hub's download bars
