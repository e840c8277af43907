"""Object references and object-level edits: what a request means for the objects of a known scene.

An input image read into objects (`describe.scene_objects`) lets a request point at one of them, as MagicBrush-
and Emu-Edit-style instructions do: by position ("the top left triangle", "the one on the right"), attribute ("the
red one", "the bigger square"), ordinal ("the second circle from the left", "the leftmost one"), all of a kind
("every triangle", "both circles", "all of them"), or a pronoun in chat ("make it blue" after "move the red circle
left"). `object_edits` turns an edit instruction into `ObjectEdit`s on those objects, and `edited_scene` gives the
scene they leave, so the output's description names every object, changed or not. A reference that matches
nothing, or several objects where one was meant, raises `Unclear` with what the image holds.

Read bottom-up: vocabulary → reference phrases → resolving → the ops of one clause → a whole instruction.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from ditflow.agents import scene as sc
from ditflow.schemas import ObjectEdit, SceneObject
from ditflow.world.scenes import POSITION_CELL, POSITIONS

# ----------------------------------------------------------------------------- vocabulary
_shape_alt = "|".join(sorted(sc.SHAPE_WORDS, key=len, reverse=True))
_color_alt = "|".join(sorted(sc.COLOR_WORDS, key=len, reverse=True))
GENERIC_NOUN = r"ones?|shapes?|objects?|things?|items?|figures?|forms?|elements?"
NOUN = rf"(?:{_shape_alt}|{GENERIC_NOUN})"
DETERMINER = (r"(?:every|each|all(?: of)?(?: the)?|both(?: of)?(?: the)?|the|this|that|these|those|its|their"
              r"|(?:one|any|two|three|1|2|3) of the)")
TAKE = {"one": 1, "any": 1, "1": 1, "two": 2, "2": 2, "three": 3, "3": 3}  # "one of the circles": some n of them
ORDINAL = {"first": 1, "second": 2, "third": 3, "fourth": 4, "1st": 1, "2nd": 2, "3rd": 3, "last": -1}
EXTREME = {  # superlative and relative words → (attribute, which end)
    "leftmost": ("x", "min"), "left": ("x", "min"), "rightmost": ("x", "max"), "right": ("x", "max"),
    "topmost": ("y", "min"), "uppermost": ("y", "min"), "highest": ("y", "min"), "upper": ("y", "min"),
    "top": ("y", "min"), "lowest": ("y", "max"), "bottommost": ("y", "max"), "lower": ("y", "max"),
    "bottom": ("y", "max"), "biggest": ("side", "max"), "largest": ("side", "max"), "bigger": ("side", "max"),
    "larger": ("side", "max"), "smallest": ("side", "min"), "smaller": ("side", "min"),
    "middle": ("mid", "min"), "center": ("mid", "min"), "central": ("mid", "min"),
}
_extreme_alt = "|".join(sorted(EXTREME, key=len, reverse=True))
_ordinal_alt = "|".join(ORDINAL)
MODIFIER = (rf"(?:{_color_alt}|{_extreme_alt}|{_ordinal_alt}|small|little|tiny|large|big|huge|other|same|colou?red|"
            r"two|three|2|3|-)")
# "the top left triangle", "both green circles", "the second circle from the left", "the red one"
REF_RE = re.compile(rf"\b(?P<det>{DETERMINER})\s+(?P<mods>(?:{MODIFIER}[\s-]+){{0,4}})(?P<noun>{NOUN})\b")
# headline wording drops the article: "remove middle circle", "make left triangle red"; only right after an edit
# verb, and with a word that picks it out, so "add a red circle" is never read as a reference
BARE_REF_RE = re.compile(rf"\b(?:remove|delete|erase|make|turn|paint|colou?r|recolou?r|change|move|shift|put|place|"
                         rf"swap|switch|replace|shrink|enlarge|resize|duplicate|copy|rotate|flip|"
                         rf"(?:colou?r|size|shape|fill) of)\s+"
                         rf"(?P<ref>(?P<mods>(?:(?:{_color_alt}|{_extreme_alt}|{_ordinal_alt}|small|little|tiny|large|"
                         rf"big|huge)[\s-]+){{1,3}})(?P<noun>{_shape_alt})\b)")
OF_REF_RE = re.compile(rf"\b(?:colou?r|size|shape|fill|position|place) of\s+(?P<ref>(?:{_shape_alt})\b)")
PRONOUN_RE = re.compile(r"\b(?P<p>it|its|itself|him|his|her|he|she|them|they|both|all of them|everything|"
                        r"all objects|all shapes"
                        r"|each of them|every shape|every object)\b")
POSITION_TAIL = re.compile(r"^\s*(?:(?:that|which) (?:is|sits) |that's |(?:should|must|needs? to|has to|to) "
                           r"(?:be|go|sit) |goes |located |sitting |placed )?(?:at|in|on|near|from|"
                           r"towards|along|by)\s+(?:the\s+)?(?P<where>(?:very\s+)?(?:top|bottom|upper|lower|left|right|"
                           r"middle|center|centre)(?:[\s-]+(?:left|right|middle|center))?(?:[\s-]+(?:hand))?"
                           r"(?:\s+(?:corner|side|edge|area|part|half|row|column))?)"
                           rf"(?!\s+of\s+(?:the|an?)\s+(?:\w+\s+){{0,2}}?(?:{_shape_alt}|{GENERIC_NOUN})\b)")
# "the circle second from the left", "the triangle that is third from the top"
ORDINAL_TAIL = re.compile(rf"^\s*(?:(?:that|which) is |that's |, )?(?P<o>{_ordinal_alt})(?: one)? from (?:the )?"
                          r"(?P<side>left|right|top|bottom)\b(?:\s+(?:side|edge|end))?")
COLOR_TAIL = re.compile(rf"^\s*(?:that is|which is|that's)\s+(?P<c>{_color_alt})\b")

ADD_RE = re.compile(r"\b(?:add|adds|adding|insert|include|draw in|draw|drop in|put|place|put in|place in|give|"
                    r"there should be|i want|let there be|introduce)\b")
REMOVE_RE = re.compile(r"\b(?:remove|delete|erase|take out|take away|get rid of|drop|eliminate|clear|rid|omit|"
                       r"lose(?!\s+(?:some\s+|a\s+(?:bit|little)\s+(?:of\s+)?)?weight)|cut out|wipe out|wipe)\b"
                       r"|\bdisappear|\bvanish|\bgo away\b|\bleave only\b")
MOVE_RE = re.compile(r"\b(?:move|moves|moving|shift|slide|push|drag|relocate|reposition|put|place|bring|send|"
                     r"transfer|nudge|carry)\b")
NEW_THING_RE = re.compile(rf"\b(?:an?|one|another|new)\s+(?:\w+\s+){{0,3}}?(?:{_shape_alt})\b")
RELATION = (r"(?:next to|beside|besides|near|by|alongside|close to|closest to|nearest(?: to)?|above|over|on top of|"
            r"on the top of|below|under|beneath|underneath|between|in between|(?:to |on )?(?:the )?(?:left|right) of)")
# "the triangle by the yellow circle", "the square that is above the triangle": the second object picks the first
ANCHOR_GAP = re.compile(rf"\s*(?:(?:that|which) (?:is|sits) |that's |sitting |lying |standing )?(?P<rel>{RELATION})\s*")
# "remove the middle circle and put a triangle in its place": the new object takes the removed one's place
IN_PLACE_RE = re.compile(r"\b(?:there|in (?:its|his|her|their) (?:place|spot|stead)|in place|instead|"
                         r"where (?:it|he|she) (?:was|used to be|stood)|in the same (?:place|spot))\b")
SWAP_RE = re.compile(r"\b(?:swap|switch|exchange|trade|interchange)\b")
DUPLICATE_RE = re.compile(r"\b(?:duplicate|copy|clone|replicate|double up|another one like|one more like|mirror)\b"
                          r"|\b(?:add|put|place|draw|insert)\s+(?:another|a second|one more|a copy)\b")
# people speak of shapes as of bodies too: "make the square gain weight", "let the circle slim down"
BIGGER_RE = re.compile(r"\b(?:bigger|larger|enlarge|enlarged|grow|fatter|fatten|chubbier|gain(?:s)? (?:some )?weight|"
                       r"put(?:s)? on (?:some )?weight|bulk(?:s)? up|beef(?:s)? up|puff(?:s)? up|swell|expand|"
                       r"increase (?:the |its )?size|scale (?:it |them )?up|"
                       r"blow (?:it |them )?up|twice (?:as big|the size)|double (?:the|its) size|"
                       r"make (?!an?\s)[\w ]+? (?:big|large|huge))\b")
SMALLER_RE = re.compile(r"\b(?:smaller|shrink|shrunk|thinner|slimmer|skinnier|slim(?:s)? down|"
                        r"lose(?:s)? (?:some )?weight|reduce (?:the |its )?size|scale (?:it |them )?down|"
                        r"half (?:the|its) size|make (?!an?\s)[\w ]+? (?:small|tiny|little))\b")
BACKGROUND_RE = re.compile(r"\b(?:background|backdrop)\b")
ONTO_RE = re.compile(rf"\b(?:put|place|set|move|have)\s+(?:it|them|everything|all of (?:it|them))\s+(?:on|against|onto)\s+"
                     rf"(?:a\s+)?(?:plain\s+)?(?P<bg>black|gray|white)\b(?!\s+(?:{_shape_alt})\b)")
DIRECTION = {"left": (0, -1), "leftward": (0, -1), "leftwards": (0, -1), "right": (0, 1), "rightward": (0, 1),
             "rightwards": (0, 1), "up": (-1, 0), "upward": (-1, 0), "upwards": (-1, 0), "higher": (-1, 0),
             "down": (1, 0), "downward": (1, 0), "downwards": (1, 0), "lower": (1, 0)}
_EDIT_VERB = (r"(?:make|turn|change|recolou?r|paint|colou?r|move|shift|slide|put|place|remove|delete|erase|add|swap|"
              r"switch|duplicate|copy|resize|shrink|enlarge|replace|give|let|set|get rid)")
# clauses: "make it red; then move it", "add a triangle, make the square blue", "step 2: make it large"
CLAUSE_SPLIT = re.compile(rf"\s*(?:;|\.\s|,?\s+and then\s+|,?\s+then\s+|,\s*and\s+|(?:\s+and|,)\s+(?=(?:also\s+)?"
                          rf"{_EDIT_VERB}\b))\s*(?:step\s*[1-9]\s*:\s*)?")


SHADES = ("white", "gray", "black")  # the backgrounds from light to dark
SINGULAR = ("it", "its", "itself", "him", "his", "her", "he", "she")  # people's pronouns for a shape, too


class Unclear(ValueError):
    """A reference the scene cannot settle: it matches nothing, or several objects where one was meant."""


# ----------------------------------------------------------------------------- reference phrases
@dataclass
class Reference:
    """What a phrase says of the object(s) it means; None attributes are unsaid."""

    text: str
    start: int
    end: int
    shape: str | None = None
    color: str | None = None
    size: str | None = None
    cell: str | None = None  # a named cell ("top left"), or a row/column word kept in `extremes`
    extremes: list[tuple[str, str]] = field(default_factory=list)
    ordinal: int | None = None
    axis: str = "x"  # what an ordinal counts along: "x" from the left, "-x" from the right, "y", "-y"
    every: bool = False
    pronoun: str | None = None
    other: bool = False
    head_end: int = 0  # where the phrase ends before a trailing place ("the triangle| at the top left")
    tail: str = ""  # that trailing place, which a move may mean as where the object goes
    take: int | None = None  # "one of the circles", "two of the squares": that many of those it matches
    anchor: Reference | None = None  # "the triangle by the circle": the object the relation is to
    relation: str = ""  # "by", "above", "left of"


def _cell(words: str) -> str | None:
    """The 3×3 cell a phrase names exactly ("top left", "bottom", "center"), or None."""
    pos, _, _ = sc.find_position(words if words.startswith("the ") else "the " + words)
    return pos


def find_references(text: str) -> list[Reference]:
    """Every definite reference to objects in (normalised) `text`, in order, with its span."""
    out: list[Reference] = []
    for m in REF_RE.finditer(text):
        det, mods, noun = m.group("det"), m.group("mods").replace("-", " ").split(), m.group("noun")
        ref = Reference(m.group(0), m.start(), m.end(), head_end=m.end())
        plural = noun.endswith("s") and noun not in ("its",) and (noun not in sc.SHAPE_WORDS or
                                                                   sc.SHAPE_WORDS[noun] != noun)
        ref.shape = sc.SHAPE_WORDS.get(noun)
        ref.take = TAKE.get(det.split()[0]) if det.endswith(" of the") else None
        ref.every = ref.take is None and (det.startswith(("every", "each", "all", "both"))
                                          or plural and det in ("the", "these", "those"))
        ref.other = "other" in mods
        ref.every |= any(w in ("two", "three", "2", "3") for w in mods)  # "the two circles"
        joined = " ".join(mods)
        cell = _cell(joined) if re.search(r"\b(?:top|bottom|upper|lower)\b.*\b(?:left|right)\b", joined) else None
        for w in mods:
            if w in sc.COLOR_WORDS:
                ref.color = sc.COLOR_WORDS[w]
            elif w in ("small", "little", "tiny"):
                ref.size = "small"
            elif w in ("large", "big", "huge"):
                ref.size = "large"
            elif w in ORDINAL:
                ref.ordinal = ORDINAL[w]
            elif w in EXTREME and not cell:
                ref.extremes.append(EXTREME[w])
        ref.cell = cell
        tail = text[m.end():m.end() + 60]
        t = POSITION_TAIL.match(tail)
        if t:
            where = t.group("where")
            if ref.ordinal is not None and t.group(0).strip().startswith("from"):
                ref.axis = {"left": "x", "right": "-x", "top": "y", "bottom": "-y"}.get(where.split()[-1]
                                                                                         if where.split()[-1] not in
                                                                                         ("side", "edge") else
                                                                                         where.split()[0], "x")
            else:
                ref.cell = _cell(where)
                if ref.cell in ("left", "right", "top", "bottom", "center"):  # a side, not a cell: relative
                    ref.extremes.append(EXTREME[ref.cell])
                    ref.cell = None
            ref.end = m.end() + t.end()
            ref.text, ref.tail = text[ref.start:ref.end], t.group(0)
        o = ORDINAL_TAIL.match(text[ref.end:])
        if o:
            ref.ordinal = ORDINAL[o.group("o")]
            ref.axis = {"left": "x", "right": "-x", "top": "y", "bottom": "-y"}[o.group("side")]
            ref.end += o.end()
            ref.text = text[ref.start:ref.end]
        c = COLOR_TAIL.match(text[ref.end:])
        if c:
            ref.color = sc.COLOR_WORDS[c.group("c")]
            ref.end += c.end()
        out.append(ref)
    # headline wording ("remove middle circle"), and a noun alone after "colour of" ("set the colour of circle")
    for m in [*OF_REF_RE.finditer(text), *BARE_REF_RE.finditer(text)]:
        k = m.start("ref")
        if not any(r.start <= k < r.end for r in out):  # read as if it had its article
            r = find_references("the " + text[k:])[0]
            out.append(replace(r, start=k, end=r.end + k - 4, head_end=r.head_end + k - 4))
    out = _anchored(text, sorted(out, key=lambda r: r.start))
    for m in PRONOUN_RE.finditer(text):
        if any(r.start <= m.start() < r.end for r in out):
            continue
        if m.group("p") == "both" and re.match(r"\s+(?:of\s+)?(?:the\s+)?\w", text[m.end():]) and \
                re.match(rf"\s+(?:of\s+)?(?:the\s+)?(?:\w+\s+){{0,2}}{NOUN}\b", text[m.end():]):
            continue  # "both circles" is a phrase REF_RE has read
        p = m.group("p")
        every = p not in SINGULAR
        some = re.search(r"\b(?P<n>one|any|two|1|2) of\s+$", text[max(0, m.start() - 8):m.start()])
        if some and p in ("them", "they"):  # "remove one of them": that many of those it means
            out.append(Reference(f"{some.group('n')} of {p}", m.start(), m.end(), pronoun=p, take=TAKE[some.group("n")]))
            continue
        out.append(Reference(p, m.start(), m.end(), every=every, pronoun=p))
    return sorted(out, key=lambda r: r.start)


def _anchored(text: str, refs: list[Reference]) -> list[Reference]:
    """`refs` with each "X <relation> Y" read as one reference to X, picked out by Y ("the triangle by the yellow
    circle"). A move may still mean the relation as where X goes (`clause_edits`)."""
    out: list[Reference] = []
    for r in refs:
        prev = out[-1] if out else None
        gap = ANCHOR_GAP.fullmatch(text[prev.end:r.start]) if prev and prev.end <= r.start else None
        if gap and prev.anchor is None and not gap.group("rel").endswith("between"):
            out[-1] = replace(prev, anchor=r, relation=sc.relation(gap.group("rel")), end=r.end,
                              text=text[prev.start:r.end])
        else:
            out.append(r)
    return out


# ----------------------------------------------------------------------------- resolving
def _centre(o: SceneObject) -> tuple[float, float]:
    if o.box:
        return (o.box[0] + o.box[2]) / 2, (o.box[1] + o.box[3]) / 2
    r, c = POSITION_CELL.get(o.position or "center", (1, 1))
    return c * 21.3 + 10.7, r * 21.3 + 10.7


def _side(o: SceneObject) -> float:
    return max(o.box[2] - o.box[0], o.box[3] - o.box[1]) if o.box else (28.0 if o.size == "large" else 14.0)


def _key(o: SceneObject, attr: str) -> float:
    x, y = _centre(o)
    if attr == "x":
        return x
    if attr == "y":
        return y
    if attr == "side":
        return _side(o)
    return abs(x - 32) + abs(y - 32)  # "mid": distance from the centre of a 64 px panel


def _matches(ref: Reference, objects: list[SceneObject]) -> list[SceneObject]:
    """The objects whose shape, colour and cell fit `ref` (what it says of them, nothing relative)."""
    return [o for o in objects if ref.shape in (None, o.shape) and ref.color in (None, o.color)
            and ref.cell in (None, o.position)]


def listing(objects: list[SceneObject]) -> str:
    """What an image holds, as a clarification lists it: "a green triangle at the top left, ..."."""
    return ", ".join(sc.thing_text(sc.Thing(o.shape, o.color, None, o.position)) for o in objects) or "no objects"


def resolve(ref: Reference, objects: list[SceneObject], focus: list[int] = (), image: str = "the image",
            many: bool = False) -> list[int]:
    """The ids of the objects `ref` means. `focus`: the objects the conversation last acted on (what "it" means).
    `many`: the op takes several (a swap's pair is read as two references, so it is False there)."""
    if ref.pronoun:
        if ref.pronoun in SINGULAR:
            if focus and len(focus) == 1:
                return list(focus)
            if len(objects) == 1:
                return [objects[0].id]
            if focus:
                return list(focus)
            raise Unclear(f"'{ref.text}' could be any of the {len(objects)} objects in {image} "
                          f"({listing(objects)}); which one did you mean?")
        them = list(focus) if ref.pronoun in ("them", "they") and focus and len(focus) > 1 else \
            [o.id for o in objects]
        if ref.take:  # "one of them": the last ones, as for "one of the circles"
            if len(them) < ref.take:
                raise Unclear(f"{image} has only {len(them)} object(s) ({listing(objects)}); there is no {ref.text}")
            return them[-ref.take:]
        return them
    hits = [o for o in objects if (ref.shape is None or o.shape == ref.shape)
            and (ref.color is None or o.color == ref.color) and (ref.cell is None or o.position == ref.cell)]
    if ref.size and len({o.size for o in hits}) > 1:
        hits = [o for o in hits if o.size == ref.size]
    if ref.other and focus:
        hits = [o for o in hits if o.id not in focus] or hits
    if ref.anchor is not None and hits:
        hits = _related(hits, ref.relation, resolve(ref.anchor, objects, focus, image, many=True), objects)
    named = ref.text.strip()
    if not hits:
        raise Unclear(f"there is no {named.removeprefix('the ').strip()} in {image}; it holds {listing(objects)}. "
                      f"Which object did you mean?")
    for attr, end in ref.extremes:  # "the left one", "the bigger square": the one at that end, if one is
        if len(hits) < 2:
            break
        centred = [o for o in hits if o.position == "center"]
        if attr == "mid" and len(centred) == 1:  # "the middle circle": the one in the centre cell, however placed
            hits = centred
            continue
        keys = [_key(o, attr) for o in hits]
        best = min(keys) if end == "min" else max(keys)
        close = 2.0 if attr == "side" else 6.0  # px: closer than this is a tie, not an end
        hits = [o for o, k in zip(hits, keys) if abs(k - best) < close]
    if ref.ordinal is not None and not ref.every:
        sign = -1 if ref.axis.startswith("-") else 1
        order = sorted(hits, key=lambda o: (sign * _key(o, ref.axis.strip("-")), _key(o, "y" if "x" in ref.axis
                                                                                      else "x")))
        k = ref.ordinal
        if not -len(order) <= (k - 1 if k > 0 else k) < len(order):
            raise Unclear(f"{image} has only {len(order)} such object(s) ({listing(order)}); there is no "
                          f"{named.removeprefix('the ')}")
        pick = order[k - 1 if k > 0 else k]
        axis = ref.axis.strip("-")
        level = [o for o in order if abs(_key(o, axis) - _key(pick, axis)) < 6.0]
        if len(level) > 1:  # two in one column are both "second from the left": ask, as for any tie
            raise Unclear(f"'{named}' could be any of {len(level)} objects in {image} ({listing(level)}), which "
                          f"stand level; which one did you mean? Say its position or colour")
        return [pick.id]
    if ref.take:  # "one of the circles": any will do; the last ones, so the first stay where the eye starts
        if len(hits) < ref.take:
            raise Unclear(f"{image} has only {len(hits)} such object(s) ({listing(hits)}); there is no {named}")
        return [o.id for o in hits[-ref.take:]]
    if ref.every or many:
        return [o.id for o in hits]
    if len(hits) > 1:
        raise Unclear(f"'{named}' could be any of {len(hits)} objects in {image} ({listing(hits)}); which one "
                      f"did you mean? Say its position or colour, e.g. "
                      f"'{named.removeprefix('the ')} at the {hits[0].position.replace('-', ' ')}'")
    return [hits[0].id]


def _related(hits: list[SceneObject], relation: str, anchor_ids: list[int],
             objects: list[SceneObject]) -> list[SceneObject]:
    """Those of `hits` that stand in `relation` to the anchor objects, the nearest first kept (ties kept, so an
    unclear pick still asks)."""
    anchors = [_centre(o) for o in objects if o.id in anchor_ids]
    side = {"above": (1, -1), "below": (1, 1), "left of": (0, -1), "right of": (0, 1)}.get(relation)

    def fits(o: SceneObject) -> bool:
        if side is None:
            return True
        axis, sign = side
        return any(sign * (_centre(o)[axis] - a[axis]) > 4 for a in anchors)

    def gap(o: SceneObject) -> float:
        x, y = _centre(o)
        return min(((x - ax) ** 2 + (y - ay) ** 2) ** 0.5 for ax, ay in anchors)

    kept = [o for o in hits if o.id not in anchor_ids and fits(o)] or [o for o in hits if o.id not in anchor_ids]
    if not kept:
        return hits
    best = min(gap(o) for o in kept)
    return [o for o in kept if gap(o) - best < 6.0]


# ----------------------------------------------------------------------------- the ops of one clause
def _new_thing(text: str) -> sc.Thing | None:
    """The look a phrase gives a new or changed object: "into a red circle" → Thing(circle, red)."""
    ms = sc.mentions(text)
    return ms[0].thing if ms else None


def _colors(text: str) -> list[str]:
    return [sc.COLOR_WORDS[w] for w in re.findall(r"[a-z]+", text) if w in sc.COLOR_WORDS]


def _target_cell(text: str, current: str | None) -> str | None:
    """Where a move goes: a named cell ("to the top right"), a side ("from left to right", "to upper": the end of
    its row or column), or one step in a direction ("move it left")."""
    side = re.search(r"\b(?:from (?:the )?(?:left|right|top|bottom|upper|lower)(?: side| edge)? to (?:the )?|"
                     r"to (?=(?:left|right|top|bottom|upper|lower)\b)|to the (?=(?:upper|lower)\b|"
                     r"(?:left|right|top|bottom)\s+(?:part|half|side|edge|area)\b))"
                     r"(?P<s>left|right|top|bottom|upper|lower)\b(?![\s-]+(?:left|right|of)\b)", text)
    if side and current:
        r, c = POSITION_CELL[current]
        s = {"upper": "top", "lower": "bottom"}.get(side.group("s"), side.group("s"))
        r = 0 if s == "top" else 2 if s == "bottom" else r
        c = 0 if s == "left" else 2 if s == "right" else c
        return POSITIONS[r][c]
    pos, _, _ = sc.find_position(text)
    m = re.search(r"\b(?:(?:one|a|1)\s+(?:step|cell|space|notch|bit|little)\s+)?(?:to the\s+)?"
                  r"(?P<d>left|right|up|down|upwards?|downwards?|leftwards?|rightwards?|higher|lower)\b", text)
    bare = m and not re.search(rf"\bthe\s+(?:\w+\s+)?{m.group('d')}\b", text)
    if m and current and (bare or not pos):
        dr, dc = DIRECTION[m.group("d")]
        r, c = POSITION_CELL[current]
        return POSITIONS[min(2, max(0, r + dr))][min(2, max(0, c + dc))]
    return pos


def _near_cell(ref_ids: list[int], objects: list[SceneObject], taken: set[str]) -> str | None:
    """A free cell beside the objects `ref_ids` name ("next to the triangle")."""
    cells = [POSITION_CELL[o.position] for o in objects if o.id in ref_ids and o.position]
    for r, c in cells:
        for dr, dc in ((0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (-1, -1), (1, -1), (-1, 1)):
            rr, cc = r + dr, c + dc
            if 0 <= rr < 3 and 0 <= cc < 3 and POSITIONS[rr][cc] not in taken:
                return POSITIONS[rr][cc]
    return None


def _free_cell(objects: list[SceneObject]) -> str | None:
    taken = {o.position for o in objects}
    free = [p for row in POSITIONS for p in row if p not in taken]
    if not free:
        return None
    # farthest from every object, as compose places an unplaced object
    def gap(p: str) -> float:
        r, c = POSITION_CELL[p]
        return min((abs(r - POSITION_CELL[o.position][0]) + abs(c - POSITION_CELL[o.position][1])
                    for o in objects if o.position), default=0)
    return max(free, key=gap)


def clause_edits(clause: str, objects: list[SceneObject], focus: list[int], image: str,
                 background: str | None = None) -> list[ObjectEdit]:
    """The object edits of one clause ("make the top left triangle red"); [] when it is not an object edit.
    `background`: the image's, which "make the background darker" starts from."""
    refs = find_references(clause)
    rest = clause
    for r in reversed(refs):  # what is left once the references are cut out names the new values
        rest = rest[:r.start] + " # " + rest[r.end:]
    after = rest.split("#", 1)[1] if "#" in rest else rest
    onto = ONTO_RE.search(clause)
    if onto and not BACKGROUND_RE.search(clause):  # "put it on black": the whole picture onto that backdrop
        clause = f"{clause} (on a {onto.group('bg')} background)"
    if BACKGROUND_RE.search(clause):
        bg = sc.find_background(clause) or next((sc.BACKGROUND_WORDS[w] for w in re.findall(r"[a-z]+", clause)
                                                 if w in sc.BACKGROUND_WORDS and w not in ("dark", "light")), None)
        refs = [r for r in refs if r.shape or r.pronoun not in (None, *SINGULAR)]
        shade = re.search(r"\b(?P<d>darker|dark|black)|(?P<l>lighter|light|brighter|bright|white)\b", clause)
        if shade and background in SHADES and (bg is None or bg == background or not sc.find_background(clause)):
            k = SHADES.index(background) + (1 if shade.group("d") else -1)  # one step along white, gray, black
            bg = SHADES[min(len(SHADES) - 1, max(0, k))] if not sc.find_background(clause) else bg
        if bg and not [r for r in refs if r.shape]:
            return [ObjectEdit(op="background", color=bg)]
    # "switch the circles to squares" changes them; "swap the circle with the square" swaps them
    named = sc.mentions(clause)
    # "swap circle with square": two bare nouns, both objects of the scene, are a pair to swap, not a new look
    in_scene = len(named) >= 2 and not re.search(r"\b(?:to|into|for)\b|\bwith an?\b", clause) and all(
        any(o.shape == m.thing.shape and m.thing.color in (None, o.color) for o in objects) for m in named[:2])
    if SWAP_RE.search(clause) and (in_scene or not re.search(rf"\b(?:to|into|for|with)\s+(?!the\b)(?:an?\s+)?"
                                                           rf"(?:\w+\s+){{0,2}}(?:{_shape_alt}|{_color_alt})\b",
                                                           clause)):
        pair = [r for r in refs if not r.pronoun] or refs
        if len(pair) < 2 and len(named) >= 2:  # "swap the square and circle": the second noun has no article
            pair = [Reference(clause[m.start:m.end], m.start, m.end, shape=m.thing.shape, color=m.thing.color,
                              every=m.thing.count > 1) for m in named]
        ids: list[int] = []
        if len(pair) >= 2:
            for r in pair[:2]:
                ids += resolve(r, objects, focus, image)
        elif pair and pair[0].every:
            ids = resolve(pair[0], objects, focus, image, many=True)
        if len(ids) != 2:
            raise Unclear(f"a swap needs two objects; {image} holds {listing(objects)}. Which two?")
        if re.search(r"\bcolou?rs?\b", clause):  # "swap the colours of the circles": each takes the other's
            a, b = (next(o for o in objects if o.id == i) for i in ids)
            return [ObjectEdit(op="recolor", targets=[a.id], color=b.color),
                    ObjectEdit(op="recolor", targets=[b.id], color=a.color)]
        return [ObjectEdit(op="swap", targets=ids)]
    counted = _count_change(clause, named, objects)
    if counted is not None:
        return counted
    sel = next((r for r in refs), None)
    # "make a copy of the pink diamond on the top right", "have the red circle at the top": the place named after
    # the only object of that look is where it goes, not which one is meant
    misplaced = bool(sel and sel.tail and sc.find_position(sel.tail)[0] and not _matches(sel, objects)
                     and len(_matches(find_references(clause[sel.start:sel.head_end])[0], objects)) == 1)
    if misplaced:
        after, sel = sel.tail + " " + after, find_references(clause[sel.start:sel.head_end])[0]
    if DUPLICATE_RE.search(clause):
        new = _new_thing(re.sub(r"^.*?\b(?:another|a second|one more|a copy of)\b", "", clause)) if not sel else None
        ref = sel or (Reference(new.shape, 0, 0, shape=new.shape, color=new.color) if new else None)
        if ref is not None:
            ids = resolve(ref, objects, focus, image)
            taken = {o.position for o in objects}
            cell = _target_cell(after, None)
            cell = cell if cell and cell not in taken else None
            return [ObjectEdit(op="duplicate", targets=[i], position=cell) for i in ids[:1]]
    if REMOVE_RE.search(clause) and sel is not None:
        m = re.search(r"\b(?:leave only|keep only|only keep|but|except(?: for)?|other than|apart from|save)\b", clause)
        if m:  # "remove everything except the square": the reference after the exception is what stays
            kept = [r for r in refs if r.start >= m.end() and not r.pronoun]
            if not kept:
                return [ObjectEdit(op="remove", targets=resolve(sel, objects, focus, image))]
            keep = [i for r in kept for i in resolve(r, objects, focus, image, many=True)]
            if len(keep) == len(objects):
                return []
            return [ObjectEdit(op="remove", targets=[o.id for o in objects if o.id not in keep])]
        # "delete the circle and the small square": every reference joined to the first
        return [ObjectEdit(op="remove", targets=_joined_ids(clause, refs, sel, objects, focus, image)[0])]
    m = ADD_RE.search(clause) and NEW_THING_RE.search(clause)
    # "give the circle a blue triangle next to it": the new object comes after the one it is placed by
    placed_by_sel = bool(m and sel is not None and m.start() > sel.end
                         and re.match(rf"\s*(?:right\s+|just\s+)?{RELATION}\s+(?:it|him|her|them)\b", clause[m.end():]))
    # "give it a red circle underneath", "give the square a hat on top": the new object goes by the one given it
    given = bool(m and sel is not None and not placed_by_sel and re.search(r"\bgive\s+$", clause[:sel.start])
                 and m.start() == sel.end + len(clause[sel.end:]) - len(clause[sel.end:].lstrip()))
    side = re.search(r"\b(on top|above|over it|underneath|below|beneath|under it|beside|next to it|alongside)\b",
                     clause[m.end():]) if given else None
    if m and (sel is None or placed_by_sel or given or NEW_THING_RE.search(clause[:sel.start])):
        new = _new_thing(m.group(0))
        taken = {o.position for o in objects}
        cell = _target_cell(clause[m.end():], None)
        relation = (re.match(rf"\s*(?:right\s+|just\s+)?({RELATION})", clause[m.end():]) if placed_by_sel else
                    re.search(rf"\b({RELATION})\s*$", clause[:sel.start]) if sel is not None else None)
        word = relation.group(1) if relation else None
        if given:
            word = side.group(1) if side else "beside"
            word = {"on top": "above", "over it": "above", "under it": "below", "next to it": "beside"}.get(word, word)
        if word:
            ids = _group_ids(clause, refs, sel, objects, focus, image)
            cell = _related_cell(sc.relation(word), ids, objects, taken)
        if cell in taken:
            raise Unclear(f"the {cell.replace('-', ' ')} of {image} is taken ({listing(objects)}); where should "
                          f"the new {new.shape} go?")
        cell = cell or _free_cell(objects)
        if cell is None:
            raise Unclear(f"{image} has no free place left for another object ({listing(objects)})")
        return [ObjectEdit(op="add", shape=new.shape, color=new.color, size=new.size, position=cell)]
    if sel is None:
        return []
    if MOVE_RE.search(clause) or re.search(r"\bto the (?:top|bottom|left|right|center|middle)", after) or misplaced:
        # (misplaced: "have the pink diamond at the top right" names the only pink diamond where it should be)
        if sel.tail and not sc.find_position(after)[0] and re.match(r"\s*(?:in|at|on|into|to|onto|towards)\b",
                                                                     sel.tail):
            # "put the diamond in the top right corner": the only place named is where it goes, not which one
            after, sel = sel.tail, find_references(clause[sel.start:sel.head_end])[0]
        dest = _destination(clause, refs, sel, after, objects, focus, image)
        if dest is not None:
            sel, cell = dest
            ids = resolve(sel, objects, focus, image)
            return [ObjectEdit(op="move", targets=ids, position=cell)] if cell else []
        ids, _ = _joined_ids(clause, refs, sel, objects, focus, image)
        moves = []
        for i in ids:  # several objects keep their own row or column: "move both circles to the top"
            cur = next(o.position for o in objects if o.id == i)
            cell = _target_cell(after, cur) if len(ids) == 1 else _edge_cell(after, cur)
            if cell and cell != cur:
                moves.append(ObjectEdit(op="move", targets=[i], position=cell))
        if moves:
            return moves
    edits: list[ObjectEdit] = []
    ids, end = _joined_ids(clause, refs, sel, objects, focus, image)
    after = clause[end:] if end is not None else after
    new = _new_thing(after)
    # "turn it into a circle", "make the left one a diamond"
    if new is not None and new.shape and (re.search(r"\b(?:into|to|with|for|as|by|become|becomes|be)\s+(?:an?\s+)?"
                                                    rf"(?:\w+\s+){{0,2}}(?:{_shape_alt})\b", after)
                                          or re.match(rf"\s*(?:an?|one)\s+(?:\w+\s+){{0,2}}(?:{_shape_alt})\b", after)):
        edits.append(ObjectEdit(op="reshape", targets=ids, shape=new.shape, color=new.color,
                                size=new.size))
    else:
        colors = _colors(after) or [c for c in _colors(rest) if c != sel.color]
        if colors:
            edits.append(ObjectEdit(op="recolor", targets=ids, color=colors[-1]))
    if edits and edits[-1].size:  # "make the square a big red circle": the reshape has sized it
        pass
    elif BIGGER_RE.search(unnamed := rest.replace("#", "it")):  # "the bigger square" names, it does not resize
        edits.append(ObjectEdit(op="resize", targets=ids, size="large"))
    elif SMALLER_RE.search(unnamed):
        edits.append(ObjectEdit(op="resize", targets=ids, size="small"))
    return edits


def _joined_ids(clause: str, refs: list[Reference], sel: Reference, objects, focus,
                image) -> tuple[list[int], int | None]:
    """The ids of `sel` and of the references joined to it by "and" or a comma ("the left circle and the
    square"), and where the last joined one ends (None when none is joined)."""
    ids, end = resolve(sel, objects, focus, image), None
    k = refs.index(sel) if sel in refs else len(refs)
    for a, b in zip(refs[k:], refs[k + 1:]):
        if not re.fullmatch(r"\s*(?:,|and|, and|as well as|plus)\s*", clause[a.end:b.start]):
            break
        ids += [i for i in resolve(b, objects, focus, image) if i not in ids]
        end = b.end
    return ids, end


def _group_ids(clause: str, refs: list[Reference], sel: Reference, objects, focus, image) -> list[int]:
    """All the objects `sel` and the references joined to it mean ("between the circle and the square")."""
    return resolve(sel, objects, focus, image, many=True) if sel.every else \
        _joined_ids(clause, refs, sel, objects, focus, image)[0]


def _destination(clause: str, refs: list[Reference], sel: Reference, after: str, objects, focus,
                 image) -> tuple[Reference, str | None] | None:
    """Where a move goes when a relation says it: "put the square above the triangle", "move the circle to the
    left of the square", "move the triangle between the squares". (the object that moves, the cell) or None."""
    if sc.find_position(after)[0] and sel.anchor is None:
        return None
    mover = sel
    if sel.anchor is not None:
        head = find_references(clause[sel.start:sel.head_end])[0]
        try:
            resolve(head, objects, focus, image)
        except Unclear:
            return None  # "move the triangle by the circle to the top": the relation picks which one
        if sc.find_position(clause[sel.end:])[0]:
            return None
        mover, relation, anchor = head, sel.relation, sel.anchor
        ids = resolve(anchor, objects, focus, image, many=True)
    else:
        k = refs.index(sel) if sel in refs else -1
        later = next((r for r in refs[k + 1:] if re.search(rf"\b(?:{RELATION})\s*$", clause[sel.end:r.start])), None)
        if later is None:
            return None
        relation = sc.relation(re.search(rf"\b({RELATION})\s*$", clause[sel.end:later.start]).group(1))
        ids = _group_ids(clause, refs, later, objects, focus, image)
    moving = resolve(mover, objects, focus, image)
    taken = {o.position for o in objects if o.id not in moving}
    return mover, _related_cell(relation, ids, objects, taken)


def _count_change(clause: str, named: list[sc.Mention], objects: list[SceneObject]) -> list[ObjectEdit] | None:
    """"from three triangles to two", "make it three squares instead of one": removals or copies that bring the
    number of objects of a shape to the number asked for; None when the clause says no such change."""
    n = r"(?:one|two|three|1|2|3)"
    m = (re.search(rf"\bfrom\s+(?P<a>{n})\s+(?:(?:\w+\s+)?(?:{_shape_alt})\s+)?to\s+(?P<b>{n})\b", clause)
         or re.search(rf"\b(?P<b>{n})\s+(?:\w+\s+)?(?:{_shape_alt})\s+instead of\s+(?P<a>{n})\b", clause))
    if not m or not named:
        return None
    thing = named[0].thing
    hits = [o for o in objects if o.shape == thing.shape and thing.color in (None, o.color)]
    want = TAKE[m.group("b")]
    if not hits or want == len(hits):
        return None
    if want < len(hits):
        return [ObjectEdit(op="remove", targets=[o.id for o in hits[want:]])]
    taken, edits = {o.position for o in objects}, []
    for _ in range(want - len(hits)):
        cell = _near_cell([hits[0].id], objects, taken) or _free_cell(objects)
        if cell is None:
            break
        taken.add(cell)
        edits.append(ObjectEdit(op="duplicate", targets=[hits[0].id], position=cell))
    return edits


def _edge_cell(text: str, current: str) -> str | None:
    """Where one of several objects goes when they move together: a side keeps its other coordinate ("to the
    top": each to the top of its own column), a step moves each one cell."""
    m = re.search(r"\b(?:to|towards|at|on|in)\s+the\s+(top|bottom|left|right)\b(?![\s-]+(?:left|right))", text)
    if not m:
        return _target_cell(text, current) if re.search(r"\b(?:up|down|left|right|upwards?|downwards?|higher|"
                                                          r"lower)\b", text) and not sc.find_position(text)[0] \
            else None
    r, c = POSITION_CELL[current]
    side = m.group(1)
    r = 0 if side == "top" else 2 if side == "bottom" else r
    c = 0 if side == "left" else 2 if side == "right" else c
    return POSITIONS[r][c]


def _related_cell(relation: str, ids: list[int], objects, taken: set[str]) -> str | None:
    """The free cell a relation (`_relation`) names with respect to the objects `ids` ("below the circle",
    "between the squares"); a free cell beside them when that one is taken or off the grid."""
    cells = [POSITION_CELL[o.position] for o in objects if o.id in ids and o.position]
    if not cells:
        return None
    if relation == "between" and len(cells) >= 2:
        (r1, c1), (r2, c2) = cells[:2]
        r, c = (r1 + r2) / 2, (c1 + c2) / 2
        r, c = (int(r) if r == int(r) else 1), (int(c) if c == int(c) else 1)  # halfway rounds to the middle
        cell = POSITIONS[r][c]
        return cell if cell not in taken else _near_cell(ids, objects, taken)
    dr, dc = {"above": (-1, 0), "below": (1, 0), "left of": (0, -1), "right of": (0, 1)}.get(relation, (0, 0))
    r, c = cells[0]
    if (dr or dc) and 0 <= r + dr < 3 and 0 <= c + dc < 3 and POSITIONS[r + dr][c + dc] not in taken:
        return POSITIONS[r + dr][c + dc]
    return _near_cell(ids, objects, taken)


# ----------------------------------------------------------------------------- a whole instruction
def apply(objects: list[SceneObject], edits: list[ObjectEdit]) -> list[SceneObject]:
    """The objects after `edits` (boxes dropped where an object changes place or size: they are re-read later)."""
    objs = {o.id: o for o in objects}
    next_id = max(objs, default=0) + 1
    for e in edits:
        if e.op == "remove":
            for i in e.targets:
                objs.pop(i, None)
        elif e.op == "add":
            objs[next_id] = SceneObject(id=min(next_id, 9), shape=e.shape, color=e.color, size=e.size,
                                        position=e.position)
            next_id += 1
        elif e.op == "duplicate":
            o = objs[e.targets[0]]
            taken = [x.position for x in objs.values()]
            cell = e.position or _free_cell(list(objs.values()))
            if cell and cell not in taken:
                objs[next_id] = o.model_copy(update={"id": min(next_id, 9), "position": cell, "box": None})
                next_id += 1
        elif e.op == "swap":
            a, b = (objs[i] for i in e.targets)
            objs[a.id] = a.model_copy(update={"position": b.position, "box": None})
            objs[b.id] = b.model_copy(update={"position": a.position, "box": None})
        elif e.op != "background":
            for i in e.targets:
                upd = {k: getattr(e, k) for k in ("shape", "color", "size", "position") if getattr(e, k)}
                if e.op == "move":
                    upd["box"] = None
                objs[i] = objs[i].model_copy(update=upd)
    return list(objs.values())


def diff_edits(objects: list[SceneObject], background: str | None, after: sc.Scene) -> list[ObjectEdit]:
    """The object edits that turn `objects` into the phrase-level scene `after` (what a phrase edit produced,
    read back at object level), so that the objects it did not change are not redrawn. Things are matched in
    order, as the phrase edits keep them; [] when they cannot be matched."""
    things = list(after.things)
    if any(t.count != 1 for t in things) or len(things) > len(objects) + 3:
        return []
    edits: list[ObjectEdit] = []
    kept = list(objects)
    if len(things) < len(objects):  # removed ones: those no remaining thing names
        for o in objects:
            if len(kept) > len(things) and not any(_same(o, t) for t in things):
                edits.append(ObjectEdit(op="remove", targets=[o.id]))
                kept.remove(o)
        if len(kept) != len(things):
            return []
    for o, t in zip(kept, things):
        if t.shape != o.shape:
            edits.append(ObjectEdit(op="reshape", targets=[o.id], shape=t.shape, color=t.color
                                    if t.color != o.color else None))
        elif t.color and t.color != o.color:
            edits.append(ObjectEdit(op="recolor", targets=[o.id], color=t.color))
        if t.size and t.size != o.size:
            edits.append(ObjectEdit(op="resize", targets=[o.id], size=t.size))
        if t.position and t.position != o.position:
            edits.append(ObjectEdit(op="move", targets=[o.id], position=t.position))
    taken = {o.position for o in kept}
    for t in things[len(kept):]:
        cell = t.position if t.position and t.position not in taken else _free_cell(
            kept + [SceneObject(id=1, shape=t.shape, position=p) for p in taken if p])
        if cell is None:
            return []
        taken.add(cell)
        edits.append(ObjectEdit(op="add", shape=t.shape, color=t.color, size=t.size, position=cell))
    if after.background and after.background != (background or "white"):
        edits.append(ObjectEdit(op="background", color=after.background))
    return edits


def _same(o: SceneObject, t: sc.Thing) -> bool:
    return t.shape == o.shape and t.color in (None, o.color)


def edited_scene(objects: list[SceneObject], background: str | None, edits: list[ObjectEdit]) -> sc.Scene:
    """The scene the edits leave, every object named with its cell, for the output's description."""
    bg = next((e.color for e in reversed(edits) if e.op == "background"), background)
    things = tuple(sc.Thing(o.shape, o.color, o.size, o.position) for o in apply(objects, edits))
    return sc.Scene(things, bg if bg and bg != "white" else None)


def touched(edits: list[ObjectEdit]) -> list[int]:
    """The ids an instruction acted on: what "it" means in the next turn."""
    return list(dict.fromkeys(i for e in edits for i in e.targets))


BACK_RE = re.compile(r"\b(?:put|bring|add|place|draw|paint|give)\s+(?:(?:it|them|him|her|the \w+)\s+)?back\b")


def _brought_back(text: str, objects: list[SceneObject], gone: list[SceneObject], image: str) -> list[ObjectEdit]:
    """"Put it back on the right", "add them back, but pink": the objects the last turn removed, drawn again
    where they were or where the words say, in the colour the words give."""
    taken = {o.position for o in objects}
    colors = _colors(text)
    cell = _target_cell(text, None) if len(gone) == 1 else None
    out = []
    for g in gone:
        where = cell or (g.position if g.position not in taken else None) or _free_cell(objects)
        if where is None or where in taken:
            raise Unclear(f"{image} has no free place for the {g.shape} to go back to ({listing(objects)})")
        taken.add(where)
        out.append(ObjectEdit(op="add", shape=g.shape, color=colors[-1] if colors else g.color, size=g.size,
                              position=where))
    return out


def object_edits(text: str, objects: list[SceneObject], focus: list[int] = (),
                 image: str = "the image", gone: list[SceneObject] = (),
                 background: str | None = None) -> list[ObjectEdit]:
    """The object edits of a whole (normalised) edit instruction, clause by clause; a pronoun in a later clause
    means what the clause before acted on. [] when the instruction is not an edit of these objects. `gone`: the
    objects the last turn removed, which "put it back" brings back."""
    if gone and BACK_RE.search(text):
        return _brought_back(text, objects, list(gone), image)
    edits: list[ObjectEdit] = []
    focus = list(focus)
    current = list(objects)
    clauses = [c for part in CLAUSE_SPLIT.split(text) if part and part.strip() for c in _distributed(part)]
    before = current
    for clause in clauses:
        got = clause_edits(clause, current, focus, image, background)
        if (len(got) == 1 and got[0].op == "add" and edits and edits[-1].op == "remove"
                and len(edits[-1].targets) == 1 and IN_PLACE_RE.search(clause)):
            # a replacement said in two clauses is one reshape, where the old object was, as "replace ... with"
            gone, new = edits.pop(), got[0]
            got, current = [ObjectEdit(op="reshape", targets=gone.targets, shape=new.shape, color=new.color,
                                       size=new.size)], before
        if (len(got) == 1 and got[0].op == "move" and edits and edits[-1].op == "duplicate"
                and got[0].targets == edits[-1].targets and PRONOUN_RE.search(clause)):
            # "make a copy of the circle and put it at the bottom right": "it" is the copy, and that is its place
            edits[-1] = edits[-1].model_copy(update={"position": got[0].position})
            current, got = apply(before, [edits[-1]]), []
        before = current
        if got:
            edits += got
            focus = touched(got) or focus
            # later clauses see the scene as this one left it, by the same ids
            current = apply(current, got)
            background = next((e.color for e in got if e.op == "background"), background)
    return edits


PAIR_SPLIT = re.compile(r",?\s+and\s+(?=(?:the|every|each|both|all)\b)|,\s*(?=(?:the|every|each|both|all)\b)")


def _distributed(clause: str) -> list[str]:
    """"colour the circles purple and the square orange" → each reference with its own value, the verb carried
    over: ["colour the circles purple", "colour the square orange"]. A swap's two references stay together."""
    if SWAP_RE.search(clause) or re.search(r"\bbetween\b", clause):
        return [clause]
    parts = PAIR_SPLIT.split(clause)
    first = find_references(parts[0])

    def valued(p: str) -> bool:  # the part says its own value: a colour, a size or a way, or two shapes
        refs = find_references(p)
        return bool(_colors(p) or VALUE_RE.search(p[refs[0].end:] if refs else p)
                    or re.search(rf"\b(?:{_shape_alt})\b.*\b(?:{_shape_alt})\b", p))

    if len(parts) < 2 or not first or not all(valued(p) for p in parts):
        return [clause]
    verb = parts[0][:first[0].start]
    return [parts[0]] + [p if re.match(r"\s*(?:make|turn|colou?r|paint|change|recolou?r|move|shift|put)\b", p)
                         else verb + p for p in parts[1:]]


# a value said after a reference, for its own verb carried over: "make the triangle bigger and the square smaller",
# "move the triangle up and the square down"
VALUE_RE = re.compile(r"^\s*(?:a\s+(?:bit|little)\s+)?(?:bigger|smaller|larger|big|small|large|tiny|huge|up|down|"
                      r"(?:to\s+the\s+)?(?:left|right|top|bottom))\b")
