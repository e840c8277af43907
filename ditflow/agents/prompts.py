"""Agent prompts live in `ditflow/prompts/*.md` (style.md §7); this loads them relative to the package."""
from __future__ import annotations

from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=None)
def load_prompt(name: str) -> str:
    """The text of `ditflow/prompts/<name>.md`; a missing prompt is a packaging bug, so it raises."""
    path = resources.files("ditflow").joinpath("prompts", f"{name}.md")
    if not path.is_file():
        raise FileNotFoundError(f"prompt {name!r} is missing: expected ditflow/prompts/{name}.md in the package")
    return path.read_text(encoding="utf-8")


def prompt_section(name: str, heading: str) -> str:
    """One `## heading` section of a prompt file (templates share a file, one section each)."""
    text = load_prompt(name)
    marker = f"## {heading}\n"
    if marker not in text:
        raise KeyError(f"ditflow/prompts/{name}.md has no '## {heading}' section")
    body = text.split(marker, 1)[1]
    return body.split("\n## ", 1)[0].strip()
