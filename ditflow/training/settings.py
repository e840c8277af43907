"""Dataclass settings of the training commands: one command-line flag per field, checked construction from
keyword overrides, and the shared range check."""
from __future__ import annotations

import argparse
from dataclasses import fields


def add_flags(parser: argparse.ArgumentParser, cls) -> None:
    """`--some-name` for every field of the dataclass `cls`, typed and defaulted by the field's default; a field
    whose default is None (an optional budget such as `minutes`) takes a float."""
    defaults = cls()
    for f in fields(cls):
        value = getattr(defaults, f.name)
        parser.add_argument("--" + f.name.replace("_", "-"), type=float if value is None else type(value),
                            default=value)


def require_positive(cfg, names: tuple[str, ...]) -> None:
    """Counts that must be at least 1, with the setting named in the error."""
    for name in names:
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be ≥ 1; got {getattr(cfg, name)}")


def from_overrides(cls, overrides: dict, what: str):
    """`cls(**overrides)`, refusing names that are not settings (naming the ones that are), then `check()`ed."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown {what} settings {unknown}; choose from {sorted(known)}")
    cfg = cls(**overrides)
    cfg.check()
    return cfg
