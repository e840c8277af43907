"""`ditflow train builtin | distill | stitch | classifiers | parser`: each target is a module with `cli(argv)`."""
from __future__ import annotations

import importlib
import sys

TARGETS = {
    "builtin": ("ditflow.training.train", "the VAE and both transformers of the builtin model (resumable)"),
    "distill": ("ditflow.training.distill", "CLEAR distillation: full-attention teacher → local-attention student"),
    "stitch": ("ditflow.training.stitch_distill", "T-Stitch: the small model distilled on the large one's early steps"),
    "classifiers": ("ditflow.training.classifiers", "the attribute and degradation classifiers"),
    "parser": ("ditflow.training.parser", "the parse model: SmolLM2-135M with LoRA on generated requests (resumable)"),
}


def cli(argv: list[str], command: str = "train") -> int:
    if not argv or argv[0] not in TARGETS:
        print("usage: ditflow train {" + ",".join(TARGETS) + "} [ARGS]")
        for name, (_, text) in TARGETS.items():
            print(f"  {name:<12} {text}")
        print("\nexamples:\n  ditflow train builtin --help\n  ditflow train classifiers --help")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(TARGETS[argv[0]][0])
    return int(module.cli(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
