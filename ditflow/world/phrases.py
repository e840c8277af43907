"""Shapes-world phrases: the vocabulary users type, and where each object phrase sits in a text.

"a large red circle on the left and two blue squares" → one `Mention` per object phrase, with the position phrase
that follows it and its character span. The agents build scenes and edits on it (agents/scene.py); clause routing
reads it to give each object's words to the region its position names (pipelines/routing.py). The vocabulary is
the one of docs/shapes-world.md (`ditflow.world.scenes`), plus synonyms.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ditflow.world.scenes import BACKGROUNDS, COLORS, SHAPES

# ----------------------------------------------------------------------------- vocabulary (synonyms → world names)
COLOR_WORDS = {**{c: c for c in COLORS}, "violet": "purple", "magenta": "pink", "turquoise": "cyan",
               "teal": "cyan", "aqua": "cyan", "navy": "blue", "gold": "yellow", "golden": "yellow",
               "crimson": "red", "scarlet": "red", "lime": "green"}
BACKGROUND_WORDS = {**{b: b for b in BACKGROUNDS}, "grey": "gray", "dark": "black", "light": "white"}
SHAPE_WORDS = {**{s: s for s in SHAPES}, "circles": "circle", "squares": "square", "triangles": "triangle",
               "diamonds": "diamond", "dot": "circle", "dots": "circle", "ball": "circle", "balls": "circle",
               "disc": "circle", "disk": "circle", "box": "square", "boxes": "square", "rhombus": "diamond",
               "lozenge": "diamond"}
SIZE_WORDS = {"small": "small", "little": "small", "tiny": "small", "large": "large", "big": "large",
              "huge": "large", "giant": "large"}
COUNT_WORDS = {"a": 1, "an": 1, "one": 1, "single": 1, "lone": 1, "two": 2, "2": 2, "three": 3, "3": 3,
               "a pair of": 2, "a couple of": 2, "couple of": 2, "pair of": 2,
               "a trio of": 3, "trio of": 3}
# Position phrases, longest first so "top left" wins over "top" and "left".
POSITION_PHRASES = [
    (r"(?:top|upper)[ -]?left(?:[ -]hand)?(?: corner| area| side)?|up in the left corner", "top-left"),
    (r"(?:top|upper)[ -]?right(?:[ -]hand)?(?: corner| area| side)?|up in the right corner", "top-right"),
    (r"(?:bottom|lower)[ -]?left(?:[ -]hand)?(?: corner| area| side)?|down in the left corner", "bottom-left"),
    (r"(?:bottom|lower)[ -]?right(?:[ -]hand)?(?: corner| area| side)?|down in the right corner", "bottom-right"),
    (r"(?:top|upper) (?:center|centre|middle)|(?:along )?the top(?: edge)?|near the top|at the top|(?:to )?the top",
     "top"),
    (r"(?:bottom|lower) (?:center|centre|middle)|(?:along )?the bottom(?: edge)?|near the bottom|at the bottom"
     r"|(?:to )?the bottom|on the (?:ground|floor)", "bottom"),
    (r"(?:middle |the )?left(?:[ -]hand)?(?: side| edge)?", "left"),
    (r"(?<!the )right in the (?:very )?(?:center|middle)", "center"),  # "right in the middle" is not "right"
    (r"(?:middle |the )?right(?:[ -]hand)?(?: side| edge)?", "right"),
    (r"(?:the )?(?:very )?(?:center|centre|middle)", "center"),
]
_POS_RE = [(re.compile(r"\b(?:" + p + r")\b"), name) for p, name in POSITION_PHRASES]
_color_alt = "|".join(sorted(COLOR_WORDS, key=len, reverse=True))
_shape_alt = "|".join(sorted(SHAPE_WORDS, key=len, reverse=True))
_size_alt = "|".join(SIZE_WORDS)
_count_alt = "|".join(sorted((re.escape(k) for k in COUNT_WORDS), key=len, reverse=True))
OBJECT_RE = re.compile(
    rf"\b(?:(?P<count>{_count_alt})\s+)?(?:(?:the|same|other)\s+)?(?:(?P<size>{_size_alt})\s+)?"
    rf"(?:(?P<color>{_color_alt})(?:\s+colou?red)?\s+)?(?:(?P<size2>{_size_alt})\s+)?(?P<shape>{_shape_alt})\b")
BACKGROUND_RE = re.compile(
    rf"\b(?:(?P<a>{'|'.join(BACKGROUND_WORDS)})\s+(?:background|backdrop|field|scene|canvas|setting)"
    rf"|background\s+(?:is|to|of|in|as|be|becomes?|turns?)?\s*(?:a\s+)?(?P<b>{'|'.join(BACKGROUND_WORDS)})\b"
    rf"|\b(?:on|set on|against)\s+(?:a\s+)?(?:plain\s+)?(?P<c>black|gray|grey|white)\b(?!\s+(?:{_shape_alt})))")


@dataclass(frozen=True)
class Thing:
    """One named object of a scene; None attributes are unspecified."""

    shape: str
    color: str | None = None
    size: str | None = None
    position: str | None = None
    count: int = 1


@dataclass
class Mention:
    """Where an object phrase sits in the text, so callers can tell selectors from targets."""

    thing: Thing
    start: int
    end: int
    extras: dict = field(default_factory=dict)


def normalise(text: str) -> str:
    t = text.lower().replace("colour", "color").replace("centre", "center").replace("grey", "gray")
    t = re.sub(r"[“”\"]", " ", t)
    # how people write "background" in a hurry: "gray bg", "backround gray"
    t = re.sub(r"\b(?:bg|backround|backgound|backgroud|bakground|backgrond|backgroung|backgorund)\b", "background", t)
    return re.sub(r"\s+", " ", t).strip()


def find_position(text: str) -> tuple[str | None, int, int]:
    """The most specific position phrase in `text` (world name, start, end): corners before edges before center."""
    for rx, name in _POS_RE:
        m = rx.search(text)
        if m:
            return name, m.start(), m.end()
    return None, -1, -1


def find_background(text: str) -> str | None:
    m = BACKGROUND_RE.search(text)
    if not m:
        return None
    return BACKGROUND_WORDS[m.group("a") or m.group("b") or m.group("c")]


def mentions(text: str) -> list[Mention]:
    """Every object phrase in (normalised) text, with the position phrase that follows it, if any."""
    text = normalise(text)
    found = [m for m in OBJECT_RE.finditer(text)]
    out: list[Mention] = []
    for k, m in enumerate(found):
        count_word, shape_word = m.group("count"), m.group("shape")
        plural = shape_word != SHAPE_WORDS[shape_word] and shape_word.endswith("s")
        count = COUNT_WORDS[count_word] if count_word else (2 if plural else 1)
        size = m.group("size") or m.group("size2")
        # A position belongs to this object when it follows before the next object phrase.
        tail_end = found[k + 1].start() if k + 1 < len(found) else len(text)
        tail = text[m.end():tail_end]
        tail = re.split(r"\b(?:background|backdrop)\b", tail)[0]
        pos, _, _ = find_position(tail[:40])
        thing = Thing(SHAPE_WORDS[shape_word], COLOR_WORDS.get(m.group("color") or "", None),
                      SIZE_WORDS.get(size) if size else None, pos, count)
        out.append(Mention(thing, m.start(), m.end(), {"bare_plural": plural and not count_word}))
    return out
