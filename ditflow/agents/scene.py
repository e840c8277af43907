"""Shapes-world phrases ↔ structured scenes, and the edits the agents apply to them.

The parser reads "a large red circle on the left on a black background" into a `Scene`, applies edit operations
("make it blue", "move it to the top right") to it, and writes it back as one canonical phrase. People say an
object's attributes apart from it too ("three circles: red, green and blue", "the circle is red", "big ones",
"down the left edge"): `bind` gives them to it; `correct_slips` reads "yelow" as "yellow". The vocabulary and
the object-phrase parser are `ditflow.world.phrases`, shared with clause routing.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

# the phrase vocabulary and parser live with the world; re-exported, so the agents read phrases through scene
from ditflow.world.phrases import (  # noqa: F401
    BACKGROUND_RE, BACKGROUND_WORDS, COLOR_WORDS, COUNT_WORDS, OBJECT_RE, POSITION_PHRASES, SHAPE_WORDS, SIZE_WORDS,
    Mention, Thing, find_background, find_position, mentions, normalise,
)
from ditflow.world.scenes import POSITION_CELL, POSITIONS

POSITION_TEXT = {  # canonical phrase per position, as the builtin model's training captions say it
    "top-left": "at the top left", "top": "at the top", "top-right": "at the top right", "left": "on the left",
    "center": "in the center", "right": "on the right", "bottom-left": "at the bottom left",
    "bottom": "at the bottom", "bottom-right": "at the bottom right",
}
NUMBER_TEXT = {1: "a", 2: "two", 3: "three"}


@dataclass(frozen=True)
class Scene:
    things: tuple[Thing, ...] = ()
    background: str | None = None  # None: unspecified (the world's default, white)

    def __bool__(self) -> bool:
        return bool(self.things) or self.background is not None


_COLOR_ALT = "|".join(sorted(COLOR_WORDS, key=len, reverse=True))
_SHAPE_ALT = "|".join(sorted(SHAPE_WORDS, key=len, reverse=True))
PLURAL_ALT = "|".join(sorted((w for w, s in SHAPE_WORDS.items() if w != s and w.endswith("s")), key=len, reverse=True))
# "two squares, one blue and the other orange": one colour per object, said after the count
DISTRIBUTED_RE = re.compile(
    rf"\b(?P<n>two|three|2|3)\s+(?P<shape>{PLURAL_ALT})\b\s*[,:(–-]?\s*(?P<list>(?:one|the first)\s+(?:is\s+)?"
    rf"(?:{_COLOR_ALT})(?:\s*(?:,\s*and|,|and)\s+(?:one|another|the other|the second|the third|the last)\s+"
    rf"(?:one\s+)?(?:is\s+)?(?:{_COLOR_ALT}))+)\)?")


# "three circles: red, green and blue", "2 squares (pink and cyan)": a colour per object, listed after the count
LISTED_RE = re.compile(
    rf"\b(?P<n>two|three|2|3)\s+(?P<shape>{PLURAL_ALT})\b\s*(?:[,:(–-]|in)\s*(?P<list>(?:{_COLOR_ALT})"
    rf"(?:\s*(?:,\s*and|,|and|&)\s+(?:{_COLOR_ALT}))+)\b\)?(?!\s+(?:{_SHAPE_ALT})\b)")


# the world's words of six letters or more, which a slip of one letter still names: "yelow", "botom", "sqaure"
# (shorter ones are too near other words: "bright" is one slip from "right", "blank" from "black")
_LONG_WORDS = sorted({w for w in (*COLOR_WORDS, *SHAPE_WORDS, *BACKGROUND_WORDS, "bottom", "center", "middle",
                                  "background", "picture", "pictures") if len(w) >= 6 and " " not in w})
_NOT_TYPOS = frozenset("""fellow mellow bellow hellow yellows riddle fiddle diddle middles bottoms enter olden
    violent circled circler circles squared squarer squire centres centered centers oranges purples pictured""".split())


def _one_slip(a: str, b: str) -> bool:
    """Whether a and b differ by one letter inserted, left out, changed, or two neighbours swapped."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]]
                                  and a[diff[1]] == b[diff[0]])
    short, long = sorted((a, b), key=len)
    return any(long[:i] + long[i + 1:] == short for i in range(len(long)))


def correct_slips(text: str) -> str:
    """(normalised) text with each word that is one slip away from exactly one of the world's longer words
    spelled as that word; real words that happen to be that close are left alone (_NOT_TYPOS)."""
    def fix(m: re.Match) -> str:
        w = m.group(0)
        if w in _NOT_TYPOS or w in _LONG_WORDS:
            return w
        near = [v for v in _LONG_WORDS if _one_slip(w, v)]
        return near[0] if len(near) == 1 else w
    return re.sub(r"\b[a-z]{5,}\b", fix, text)


def distribute(text: str) -> str:
    """(normalised) text with a count's colours given out one per object: "two squares, one blue and the other
    orange", "two squares: blue and orange" → "a blue square and an orange square"."""
    def one_each(m: re.Match) -> str:
        colors = [w for w in re.findall(r"[a-z]+", m.group("list")) if w in COLOR_WORDS]
        if len(colors) != COUNT_WORDS.get(m.group("n"), int(m.group("n")) if m.group("n").isdigit() else 0):
            return m.group(0)
        shape = SHAPE_WORDS[m.group("shape")]
        parts = [thing_text(Thing(shape, COLOR_WORDS[c])) for c in colors]
        return ", ".join(parts[:-1]) + " and " + parts[-1]

    def named(m: re.Match) -> str:  # "green triangles and one red one": the last shape named before it
        before = [w for w in re.findall(r"[a-z]+", text[:m.start()]) if w in SHAPE_WORDS]
        return f"{m.group('det')} {m.group('c')} {SHAPE_WORDS[before[-1]]}" if before else m.group(0)
    text = re.sub(rf"(?:(?<=\band )|(?<=, ))(?P<det>one|a|an)\s+(?P<c>{_COLOR_ALT})\s+one\b", named, text)
    return LISTED_RE.sub(one_each, DISTRIBUTED_RE.sub(one_each, text))


# "a red circle above a blue square", "...; the square is below the circle": where one object is said to be with
# respect to another
_RELATION_GAP = re.compile(
    r"\s*(?:(?:at|in|on) (?:the )?(?:top|bottom|upper|lower|left|right|middle|center)(?:[ -](?:left|right))?"
    r"(?: corner| side)?\s+)?,?\s*(?:(?:which|that|who) )?"
    r"(?:is |are |sits |sitting |stands |standing |placed |lies |lying |rests |"
    r"resting |located |floats |floating |hovers |hovering )?(?:right |just |directly )?"
    r"(?P<rel>above|over|on top of|below|under|underneath|beneath|(?:to |on )?(?:the )?left of|"
    r"(?:to |on )?(?:the )?right of|next to|beside|besides)\s+(?:(?:an?|the|one)\s+)?")
# (first object, the other) cells per relation; the other's second cell when it is two joined by "and"
_RELATION_CELLS = {"above": ("top", ("bottom", "bottom-left", "bottom-right")),
                   "below": ("bottom", ("top", "top-left", "top-right")),
                   "left of": ("left", ("right", "top-right", "bottom-right")),
                   "right of": ("right", ("left", "top-left", "bottom-left")),
                   "near": ("left", ("right", "top-right", "bottom-right"))}


def relation(words: str) -> str:
    """A relation phrase ("on top of", "to the left of", "beside", "in between") as one of: above, below,
    left of, right of, between, near."""
    w = words.strip()
    for side in ("left of", "right of"):
        if w.endswith(side):
            return side
    if w in ("above", "over", "on top of", "on the top of"):
        return "above"
    if w in ("below", "under", "beneath", "underneath"):
        return "below"
    return "between" if w.endswith("between") else "near"


def placed(text: str, ments: list[Mention]) -> list[Thing]:
    """The things `ments` name in (normalised) `text`, placed where a relation between two of them says ("a red
    circle above a blue square": top and bottom), and without a definite mention of one named before ("a circle
    and a square; the square is below the circle" names two objects). An object given a place keeps it."""
    things = [m.thing for m in ments]
    same: dict[int, int] = {}  # a re-mention's index → the first mention's
    for k, m in enumerate(ments):
        if re.search(r"\bthe\s+$", text[max(0, m.start - 5):m.start]) or text[m.start:m.start + 4] == "the ":
            first = next((i for i in range(k) if i not in same and things[i].shape == m.thing.shape
                          and m.thing.color in (None, things[i].color)), None)
            if first is not None:
                same[k] = first
    pos = [t.position for t in things]
    for k in range(len(ments) - 1):
        rel = _RELATION_GAP.fullmatch(text[ments[k].end:ments[k + 1].start])
        if not rel:
            continue
        a, b = same.get(k, k), same.get(k + 1, k + 1)
        group = [b]
        if k + 2 < len(ments) and re.fullmatch(r"\s*(?:,|and|, and)\s*(?:an?\s+)?", text[ments[k + 1].end:
                                                                                       ments[k + 2].start]):
            group.append(same.get(k + 2, k + 2))
        key = relation(rel.group("rel"))
        mine, theirs = _RELATION_CELLS[key]
        if pos[a] is None:
            pos[a] = mine
        cells = theirs[:1] if len(group) == 1 else theirs[1:]
        if pos[a] != mine:  # the first has a place of its own: the other goes beside it, on the side said
            r, c = POSITION_CELL[pos[a]]
            dr, dc = {"above": (1, 0), "below": (-1, 0), "left of": (0, 1), "right of": (0, -1)}.get(key, (0, 1))
            if not (0 <= r + dr < 3 and 0 <= c + dc < 3):
                dr, dc = -dr, -dc
            cells = (POSITIONS[r + dr][c + dc],)
        for i, cell in zip(group, cells):
            if pos[i] is None:
                pos[i] = cell
    free = [k for k in range(len(things)) if k not in same and pos[k] is None]
    if len(free) == 2 and len(things) - len(same) == 2 and re.search(r"\bside by side\b|\bnext to each other\b",
                                                                     text):
        pos[free[0]], pos[free[1]] = "left", "right"
    return [replace(t, position=p) for k, (t, p) in enumerate(zip(things, pos)) if k not in same]


_SIZE_ALT = "|".join(SIZE_WORDS)
# "all orange", "both green", "all of them small", "big ones": an attribute for every object that has none
_ALL_RE = re.compile(rf"\b(?:(?:all|both|each)(?:\s+of\s+(?:them|the\s+\w+))?(?:\s+(?:are|is|should be|in))?\s+"
                     rf"(?:(?P<c>{_COLOR_ALT})|(?P<s>{_SIZE_ALT}))|(?:(?P<c2>{_COLOR_ALT})|(?P<s2>{_SIZE_ALT}))\s+ones)"
                     rf"\b(?!\s+(?:{_SHAPE_ALT})\b)")
# "the circle should be blue and small", "purple one is large", "blue triangle (small)": an object's attributes
# said apart from it
_SAID_RE = re.compile(rf"\b(?P<who>(?:(?:{_COLOR_ALT}|{_SIZE_ALT})\s+)?(?:{_SHAPE_ALT}|one))\s*(?:(?:should|must|has to|"
                      rf"needs to|will)\s+be|is|=|:|\()\s*(?P<attrs>(?:(?:{_COLOR_ALT}|{_SIZE_ALT})(?!\s+(?:one|{_SHAPE_ALT})\b)"
                      rf"(?:\s+(?:size|color))?"
                      rf"(?:\s*(?:,|and)\s*)?)+)")
# "big one top-left, small one bottom-right", "one at the top and one at the bottom": a place per object
_ONE_AT_RE = re.compile(rf"\b(?:(?P<attr>{_COLOR_ALT}|{_SIZE_ALT})\s+)?one\s+(?:(?:is|goes|sits)\s+)?"
                        rf"(?:(?:at|in|on)\s+)?(?:the\s+)?(?P<pos>(?:top|bottom|upper|lower|middle|center)"
                        rf"(?:[\s-](?:left|right))?(?:\s+corner)?|left|right)\b")


# "down the left edge", "in a row through the middle", "along the top": several of a kind set out along one line
# ("two circles at the top" stays one phrase: a place, not a line)
_LINE_RE = re.compile(r"\b(?:(?:down|along|up|across|through|over)\s+the\s+(?P<side>left|right|top|bottom|"
                      r"middle|center)(?:[\s-]+hand)?\s*(?P<kind>edge|side|row|column|border|line)?|in\s+(?:a|one)\s+"
                      r"(?P<dir>horizontal\s+|vertical\s+)?(?:row|line|column)(?:\s+(?P<dir2>horizontal|vertical)(?:ly)?)?"
                      r"(?:\s+(?:through|across|along|down|in)\s+the\s+(?P<side2>left|right|top|bottom|middle|center))?)\b")


def _line_cells(m: re.Match) -> list[str] | None:
    """The three cells of the row or column a _LINE_RE phrase names, in reading order."""
    side = m.group("side") or m.group("side2") or "middle"
    vertical = bool(re.search(r"vertical|column", m.group(0))) or (m.group("side") in ("left", "right")) or \
        (side in ("middle", "center") and re.search(r"\b(?:down|up)\b", m.group(0)) is not None)
    if side in ("left", "right") and not vertical:
        return None
    k = {"left": 0, "top": 0, "middle": 1, "center": 1, "right": 2, "bottom": 2}[side]
    return [POSITIONS[r][k] for r in range(3)] if vertical else list(POSITIONS[k])


def bind(text: str, things: list[Thing]) -> list[Thing]:
    """`things` (from normalised `text`) with the attributes the text gives them apart from their own phrase:
    for all of them ("all orange", "big ones"), for one of them ("the circle should be blue", "purple one is
    large"), or a place each ("one at the top and one at the bottom" splits a pair)."""
    things = list(things)

    def match(who: str) -> list[int]:
        words = who.split()
        shape = SHAPE_WORDS.get(words[-1])
        attr = words[0] if len(words) > 1 else None
        said = COLOR_WORDS.get(attr or ""), SIZE_WORDS.get(attr or "")
        return [i for i, t in enumerate(things) if (shape is None or t.shape == shape)
                and (attr is None or (t.color == said[0] if said[0] else t.size == said[1]))]

    for m in _SAID_RE.finditer(text):
        hit = match(m.group("who"))
        if len(hit) != 1 or (m.group("who").split()[-1] == "one" and len(m.group("who").split()) == 1):
            continue
        words = re.findall(r"[a-z]+", m.group("attrs"))
        color = next((COLOR_WORDS[w] for w in words if w in COLOR_WORDS), None)
        size = next((SIZE_WORDS[w] for w in words if w in SIZE_WORDS), None)
        t = things[hit[0]]
        things[hit[0]] = replace(t, color=t.color or color, size=t.size or size)
    for m in _ALL_RE.finditer(text):
        color = COLOR_WORDS.get(m.group("c") or m.group("c2") or "")
        size = SIZE_WORDS.get(m.group("s") or m.group("s2") or "")
        things = [replace(t, color=t.color or color, size=t.size or size) for t in things]
    line = _LINE_RE.search(text)
    cells = _line_cells(line) if line else None
    if cells and len(things) == 1 and things[0].position in (None, cells[1]) and things[0].count in (2, 3):
        pick = cells if things[0].count == 3 else [cells[0], cells[2]]  # a pair at the line's two ends
        return [replace(things[0], count=1, position=p) for p in pick]
    places = [(m.group("attr"), find_position("the " + m.group("pos"))[0]) for m in _ONE_AT_RE.finditer(text)]
    places = [(a, p) for a, p in places if p]
    if len(places) >= 2:
        if len(things) == 1 and things[0].count == len(places) and not any(a for a, _ in places):
            things = [replace(things[0], count=1, position=p) for _, p in places]  # a pair, one in each place
        else:
            for attr, p in places:
                hit = match(f"{attr} one") if attr else []
                if len(hit) == 1:  # said of that one by name: it wins over a place read next to another phrase
                    things[hit[0]] = replace(things[hit[0]], position=p)
    return things


def parse_scene(text: str) -> Scene:
    """The objects and background a phrase names. Unnamed attributes stay None."""
    return Scene(tuple(m.thing for m in mentions(text)), find_background(normalise(text)))


# an input's description may end in how it is degraded ("a blue square, noisy"): what restoration undoes
DEGRADATION_SUFFIX = re.compile(r",?\s*\b(noisy|grainy|blurry|blurred|pixelated|low-resolution|jpeg-compressed|"
                                r"compressed|damaged|with missing parts)\b")
SUFFIX_TO_DEGRADATION = {"noisy": "noise", "grainy": "noise", "blurry": "blur", "blurred": "blur",
                         "pixelated": "sr2", "low-resolution": "sr2", "jpeg-compressed": "jpeg", "compressed": "jpeg",
                         "damaged": "inpaint", "with missing parts": "inpaint"}


def split_degradations(description: str) -> tuple[str, list[str]]:
    """"a blue square, noisy" → ("a blue square", ["noise"])."""
    found = [SUFFIX_TO_DEGRADATION[m.group(1)] for m in DEGRADATION_SUFFIX.finditer(description)]
    return DEGRADATION_SUFFIX.sub("", description).strip(" ,"), found


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
