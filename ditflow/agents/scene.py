"""Shapes-world phrases ↔ structured scenes, and the edits the agents apply to them.

The parser reads "a large red circle on the left on a black background" into a `Scene`, applies edit operations
("make it blue", "move it to the top right") to it, and writes it back as one canonical phrase. The vocabulary is
the one of docs/shapes-world.md (`ditflow.pipelines.world`), plus the synonyms users type.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from ditflow.pipelines.world import BACKGROUNDS, COLORS, SHAPES

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
               "a pair of": 2, "a couple of": 2, "couple of": 2, "pair of": 2}
# Position phrases, longest first so "top left" wins over "top" and "left".
POSITION_PHRASES = [
    (r"(?:top|upper)[ -]?left(?:[ -]hand)?(?: corner| area| side)?|up in the left corner", "top-left"),
    (r"(?:top|upper)[ -]?right(?:[ -]hand)?(?: corner| area| side)?|up in the right corner", "top-right"),
    (r"(?:bottom|lower)[ -]?left(?:[ -]hand)?(?: corner| area| side)?|down in the left corner", "bottom-left"),
    (r"(?:bottom|lower)[ -]?right(?:[ -]hand)?(?: corner| area| side)?|down in the right corner", "bottom-right"),
    (r"(?:top|upper) (?:center|centre|middle)|(?:along )?the top(?: edge)?|near the top|at the top|(?:to )?the top",
     "top"),
    (r"(?:bottom|lower) (?:center|centre|middle)|(?:along )?the bottom(?: edge)?|near the bottom|at the bottom"
     r"|(?:to )?the bottom", "bottom"),
    (r"(?:middle |the )?left(?:[ -]hand)?(?: side| edge)?", "left"),
    (r"(?<!the )right in the (?:very )?(?:center|middle)", "center"),  # "right in the middle" is not "right"
    (r"(?:middle |the )?right(?:[ -]hand)?(?: side| edge)?", "right"),
    (r"(?:the )?(?:very )?(?:center|centre|middle)", "center"),
]
_POS_RE = [(re.compile(r"\b(?:" + p + r")\b"), name) for p, name in POSITION_PHRASES]
POSITION_TEXT = {  # canonical phrase per position, as the builtin model's training captions say it
    "top-left": "at the top left", "top": "at the top", "top-right": "at the top right", "left": "on the left",
    "center": "in the center", "right": "on the right", "bottom-left": "at the bottom left",
    "bottom": "at the bottom", "bottom-right": "at the bottom right",
}
NUMBER_TEXT = {1: "a", 2: "two", 3: "three"}

_color_alt = "|".join(sorted(COLOR_WORDS, key=len, reverse=True))
_shape_alt = "|".join(sorted(SHAPE_WORDS, key=len, reverse=True))
_size_alt = "|".join(SIZE_WORDS)
_count_alt = "|".join(sorted((re.escape(k) for k in COUNT_WORDS), key=len, reverse=True))
OBJECT_RE = re.compile(
    rf"\b(?:(?P<count>{_count_alt})\s+)?(?:(?:the|same|other)\s+)?(?:(?P<size>{_size_alt})\s+)?"
    rf"(?:(?P<color>{_color_alt})(?:\s+colou?red)?\s+)?(?:(?P<size2>{_size_alt})\s+)?(?P<shape>{_shape_alt})\b")
BACKGROUND_RE = re.compile(
    rf"\b(?:(?P<a>{'|'.join(BACKGROUND_WORDS)})\s+(?:background|backdrop|field)"
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


@dataclass(frozen=True)
class Scene:
    things: tuple[Thing, ...] = ()
    background: str | None = None  # None: unspecified (the world's default, white)

    def __bool__(self) -> bool:
        return bool(self.things) or self.background is not None


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


def parse_scene(text: str) -> Scene:
    """The objects and background a phrase names. Unnamed attributes stay None."""
    return Scene(tuple(m.thing for m in mentions(text)), find_background(normalise(text)))


# ----------------------------------------------------------------------------- writing
def _an(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def thing_text(t: Thing) -> str:
    words = [w for w in (t.size, t.color) if w]
    if t.count == 1:
        head = " ".join(words + [t.shape])
        text = f"{_an(head)} {head}"
    else:
        text = " ".join([NUMBER_TEXT.get(t.count, str(t.count))] + words + [t.shape + "s"])
    if t.position:
        text += " " + POSITION_TEXT[t.position]
    return text


def scene_text(scene: Scene) -> str:
    """Canonical phrase, in the builtin model's training wording: "a red circle on the left on a black background"."""
    parts = [thing_text(t) for t in scene.things]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1] if parts else "an empty scene"
    if scene.background:
        text += f" on a {scene.background} background"
    return text


# ----------------------------------------------------------------------------- edits
def _select(scene: Scene, selector: Thing | None) -> list[int]:
    """Indices of the things a selector names (shape, then colour); all when there is no selector."""
    if selector is None:
        return list(range(len(scene.things)))
    hits = [i for i, t in enumerate(scene.things) if t.shape == selector.shape and
            (selector.color is None or t.color == selector.color)]
    if not hits:  # "the circle" when the circle is red and the user says "the red circle": shape alone
        hits = [i for i, t in enumerate(scene.things) if t.shape == selector.shape]
    return hits or list(range(len(scene.things)))


def recolor(scene: Scene, color: str, selector: Thing | None = None) -> Scene:
    idx = set(_select(scene, selector))
    return replace(scene, things=tuple(replace(t, color=color) if i in idx else t for i, t in enumerate(scene.things)))


def reshape(scene: Scene, shape: str, selector: Thing | None = None) -> Scene:
    idx = set(_select(scene, selector))
    return replace(scene, things=tuple(replace(t, shape=shape) if i in idx else t for i, t in enumerate(scene.things)))


def resize(scene: Scene, size: str, selector: Thing | None = None) -> Scene:
    idx = set(_select(scene, selector))
    return replace(scene, things=tuple(replace(t, size=size) if i in idx else t for i, t in enumerate(scene.things)))


def move(scene: Scene, position: str, selector: Thing | None = None) -> Scene:
    idx = _select(scene, selector)[:1] if selector or len(scene.things) == 1 else _select(scene, selector)
    idx = set(idx)
    return replace(scene, things=tuple(replace(t, position=position) if i in idx else t
                                       for i, t in enumerate(scene.things)))


def remove(scene: Scene, selector: Thing) -> Scene:
    idx = set(_select(scene, selector))
    kept = tuple(t for i, t in enumerate(scene.things) if i not in idx)
    return replace(scene, things=kept)


def add(scene: Scene, thing: Thing) -> Scene:
    return replace(scene, things=scene.things + (thing,))


def set_background(scene: Scene, background: str) -> Scene:
    return replace(scene, background=background)
