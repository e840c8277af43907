"""Scope: which parts of a request a shapes-world model can draw.

A shapes-world model (the builtin, tiny) draws circles, squares, triangles and diamonds in eight colours on three
plain backgrounds (docs/shapes-world.md), and nothing else: asked for "a photo of a cat" it draws an empty canvas.
So the graph checks each output drawn from words alone against the world's vocabulary before planning:
- an output whose description names no shape and no background, only other words, is outside the world;
- an object phrase of the instruction or of a description that is not the world's ("a cat" in "a red circle next
  to a cat") is left out of the drawing, and the turn says so.
A shape in a colour no world object has ("a brown circle") is not that object: an output of only such shapes is
outside. An edit that asks for a look the world has no picture for ("make it a watercolor", "what if it were
snowing") is outside; other edits and restorations never are: the image, not the words, says what is there.
Pure functions of the request; the graph decides what a model is (`shapes_world`) and what to do (agents/graph.py).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ditflow.agents import scene as sc
from ditflow.agents.verify import FILLER, expected_of
from ditflow.schemas import OUT_OF_WORLD, ParsedRequest
from ditflow.world import scenes as world

DRAWN_FROM_WORDS = ("generate", "article", "guide")  # tasks whose outputs come from descriptions, not input images
# What starts an object phrase, and what ends one: "a cat" in "a cat sleeping on a sofa".
DETERMINERS = frozenset("a an the some one two three four five six several many".split())
STOP = frozenset("""and or but nor with without on in at of to for from by next beside besides near under over behind
    above below beneath between among inside outside around into onto across along against that who which where
    while when whose is are was were be been being has have had as like than then plus about after before during
    each every its their his her this these those""".split())
# Words about the request itself, not objects in it: "a four-page picture book", "a 2x2 grid", "the third one".
NOT_OBJECTS = frozenset("""picture pictures image images photo photos photograph photographs drawing drawings painting
    paintings illustration illustrations illustrated sketch sketches render renders version versions variant variants
    variation variations copy copies book books picturebook storybook page pages story stories tale comic comics
    article articles blog post posts strip grid grids panel panels canvas canvases frame frames scene scenes set sets
    series sequence row rows column columns layout view views shot shots one ones thing things shape shapes object
    objects color colors colour colours style time times step steps bit lot few couple pair duo trio handful dozen
    same different new other another more way kind sort type size sizes position positions place places end start
    short long simple empty blank first second third fourth fifth sixth last next previous per background backdrop field
    adventure adventures journey journeys trip trips voyage quest visit walk ride day days night story-time lesson
    lessons life dream dreams game games friend friends friendship change changes surprise
    """.split())  # the last two rows: what a story tells, not objects (a story's friend is a world object, story.py)
# colours people name that the world's objects never have ("a brown circle"; black, white and gray are backgrounds)
FOREIGN_COLORS = frozenset("""brown beige tan maroon olive khaki silver bronze copper black white gray grey cream ivory
    peach salmon lavender mint coral ochre sepia charcoal rust burgundy""".split())
_SIZE = r"(?:(?:small|little|tiny|large|big|huge)\s+)?"
_FOREIGN_ALT = "|".join(sorted(FOREIGN_COLORS))
_SHAPE_ALT = "|".join(sorted(sc.SHAPE_WORDS, key=len, reverse=True))
_FOREIGN_COLORED = re.compile(rf"\b(?:an?|the|one|two|three|some)?\s*{_SIZE}(?P<color>{_FOREIGN_ALT})"
                              rf"(?:[\s-]colou?red)?\s+{_SIZE}"
                              rf"(?P<shape>{_SHAPE_ALT})\b")
# a look, medium, weather or time the world has no picture for: "make it a watercolor", "what if it were snowing"
LOOK_RE = re.compile(r"\b(?:painting|painted|watercolou?rs?|oil paint|pencil|sketch(?:ed|y)?|cartoon|anime|manga|"
                     r"pixel art|picasso|van gogh|monet|cubis[mt]|impressionis[mt]|photo-?realistic|realistic|vintage|"
                     r"retro|sepia|black and white|grayscale|greyscale|noir|snow(?:ing|y|fall)?|rain(?:ing|y)?|"
                     r"fog(?:gy)?|storm(?:y)?|sunset|sunrise|at night|night ?time|winter|summer|autumn|underwater|"
                     r"in space|neon|glowing|metallic|wooden|made of glass|3d render)\b")
# a material, texture or style a drawn object cannot have in the world ("a red circle made of glass", "a striped
# square", "a watercolor of a green square"): drawn without it, and the turn says so. Narrower than LOOK_RE: night,
# the dark and the weather of a story are backdrops (story.py), and "a painting of" is only a picture
DRAWN_LOOK_RE = re.compile(r"\b(?:watercolou?rs?|oil paint(?:ing)?|pencil|crayons?|cartoon|anime|manga|pixel art|"
                           r"picasso|van gogh|monet|cubis[mt]|impressionis[mt]|photo-?realistic|vintage|retro|sepia|"
                           r"noir|neon|glowing|metallic|wooden|(?:made of )?glass|glassy|transparent|translucent|"
                           r"shiny|glossy|furry|fluffy|striped|stripes|polka[- ]dots?|checkered|plaid|gradient|"
                           r"(?:a |with (?:a )?)?(?:drop )?shadows?|3d|embossed|golden|sparkly|sparkling|textured|"
                           r"rounded corners|cross-?hatch(?:ed|ing)?|pen-and-ink|outlined)\b")
MOST_PER_PICTURE = max(world.NUMBER_WORDS)  # objects of one kind a shapes-world panel holds
_MANY = {"four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12,
         "a dozen": 12, "dozens of": 24, "hundreds of": 100, "a hundred": 100}
# "seven blue circles", "10 squares": more of one kind than a picture of the world holds; "twelve images of
# diamonds" counts pictures, not diamonds
_PICTURES = r"(?:images?|pictures?|pics?|photos?|panels?|frames?|pages?|versions?|variations?|drawings?|canvases)\b"
TOO_MANY_RE = re.compile(rf"\b(?P<n>{'|'.join(_MANY)}|\d+)\s+(?:(?!{_PICTURES})\w+\s+){{0,2}}(?:{_SHAPE_ALT})\b")
WORLD_WORDS = frozenset({*sc.COLOR_WORDS, *sc.SIZE_WORDS, *sc.SHAPE_WORDS, *sc.BACKGROUND_WORDS, *sc.COUNT_WORDS})
_POSITION_RES = [re.compile(r"\b(?:" + p + r")\b") for p, _ in sc.POSITION_PHRASES]
_TOKEN = re.compile(r"\||[a-z0-9][a-z0-9'-]*|[^\sa-z0-9|]")
KNOWN = "|"  # stands in for an object phrase the world's vocabulary read


def _either(words, last: str) -> str:
    words = list(words)
    return ", ".join(words[:-1]) + f" {last} " + words[-1]


# One line that says what the world holds, built from the world's own tables.
WORLD_TEXT = (f"{_either((s + 's' for s in world.SHAPES), 'and')} in {_either(world.COLORS, 'or')}, small or large, "
              f"one to {world.NUMBER_WORDS[MOST_PER_PICTURE][0]} of a kind in a picture, "
              f"on a {_either(world.BACKGROUNDS, 'or')} background, anywhere or at the "
              f"{_either((p.replace('-', ' ') for row in world.POSITIONS for p in row), 'or')}; "
              "e.g. 'two small blue squares on a gray background'")


@dataclass(frozen=True)
class Scope:
    """What a request asks for that the shapes world does not hold."""

    outside: tuple[int, ...] = ()  # outputs whose description names nothing the world draws
    left_out: tuple[str, ...] = ()  # object phrases that are not the world's, as written: "a cat"

    def __bool__(self) -> bool:
        return bool(self.outside or self.left_out)


def shapes_world(info) -> bool:
    """Whether a pipeline (its `PipelineInfo`) draws the shapes world; the same models the detector verifies."""
    return info.world == "shapes"


def foreign_objects(text: str) -> list[str]:
    """Object phrases of `text` that are not the world's, in order: "a cat", "a sofa" in "a photo of a cat sleeping
    on a sofa". A phrase starts at a determiner and ends at a preposition, a conjunction or an -ing/-ed word; one
    that runs into a world phrase qualifies it ("a nice red circle") and one about the request ("a picture book")
    names no object."""
    t = sc.normalise(text)
    places = [m.span() for rx in (sc.BACKGROUND_RE, *_POSITION_RES) for m in rx.finditer(t)]
    chars = list(t)
    # each read phrase becomes one mark of its own length, so the other spans stay where they were: objects a
    # phrase may qualify ("a nice | "), backgrounds and positions a plain break ("a dog ; ")
    for (a, b), mark in [*((span, ";") for span in places), *(((m.start, m.end), KNOWN) for m in sc.mentions(t))]:
        chars[a:b] = mark + " " * (b - a - 1)
    tokens = _TOKEN.findall("".join(chars))
    found: list[str] = []
    i = 0
    while i < len(tokens):
        if tokens[i] not in DETERMINERS:
            i += 1
            continue
        j, words = i + 1, []
        while (j < len(tokens) and len(words) < 4 and tokens[j][0].isalnum() and tokens[j] not in STOP
               and tokens[j] not in DETERMINERS and not (words and tokens[j].endswith(("ing", "ed")))):
            words.append(tokens[j])
            j += 1
        qualifies_known = j < len(tokens) and tokens[j] == KNOWN
        phrase = " ".join([tokens[i], *words])
        if words and not qualifies_known and _names_an_object(words) and phrase not in found:
            found.append(phrase)
        i = max(j, i + 1)
    return found


def _plain(word: str) -> bool:
    """A word that names no object: the world's own, one about the request, a filler, a number."""
    return all(p in WORLD_WORDS or p in NOT_OBJECTS or p in FILLER or p in STOP or p in DETERMINERS
               or any(ch.isdigit() for ch in p) for p in word.split("-"))


def _names_an_object(words: list[str]) -> bool:
    if any(p in NOT_OBJECTS or p in FILLER or any(ch.isdigit() for ch in p) for w in words for p in w.split("-")):
        return False  # "a four-page picture book", "the same": the request's words
    return any(not _plain(w) for w in words)


def check(req: ParsedRequest, instruction: str = "") -> Scope:
    """What of `req` (and the instruction it came from) lies outside the shapes world, by vocabulary alone."""
    if req.task == "edit" and not req.clarification and not any(o.edits for o in req.outputs):
        look = LOOK_RE.search(sc.normalise(instruction))
        if look:  # "make it a picasso painting": a change the world has no picture for
            return Scope(tuple(o.index for o in req.outputs), (look.group(0),))
    drawn = [o for o in req.outputs if not o.sources] if req.task in DRAWN_FROM_WORDS else []
    if not drawn or req.clarification:
        return Scope()
    outside = []
    for o in drawn:
        e = expected_of(o.description)
        # no shape, no background, and a word the world has no picture for ("6 different shapes" is not outside)
        if not e.things and e.background is None and any(not _plain(w) for u in e.unknown for w in u.split()):
            outside.append(o.index)
        elif not e.things and foreign_objects(o.description):  # "a hexagon on a gray background": a bare backdrop
            outside.append(o.index)
    texts = ([instruction] if req.num_inputs == 0 else []) + [o.description for o in drawn]
    left: list[str] = []
    for text in texts:
        left += [p for p in foreign_objects(text) if p not in left]
    if req.num_inputs == 0:  # "a red circle made of glass": the circle is drawn, the glass cannot be
        said = sc.normalise(instruction)
        left += [m.group(0) for m in DRAWN_LOOK_RE.finditer(said)
                 if not any(m.group(0) in p or p in m.group(0) for p in left)]
    if req.num_inputs == 0:  # "seven blue circles": more than a picture holds; drawing two would say it did
        many = [m.group(0) for m in TOO_MANY_RE.finditer(sc.normalise(instruction))
                if _MANY.get(m.group("n"), int(m.group("n")) if m.group("n").isdigit() else 0) > MOST_PER_PICTURE]
        if many:
            outside = [o.index for o in drawn]
            left += [p for p in many if p not in left]
    if req.num_inputs == 0:  # "a brown circle": a shape in a colour the world has not, so not that object at all
        said = sc.normalise(instruction)
        odd = [m.group(0).strip() for m in _FOREIGN_COLORED.finditer(said)
               if not re.match(r"\s*(?:background|backdrop)\b", said[m.end():])]
        if odd and len(odd) >= len(sc.mentions(said)):  # every object it names is one of them: nothing to draw
            outside = [o.index for o in drawn]
            left += [p for p in odd if p not in left]
    return Scope(tuple(outside), tuple(left))


def refusal(req: ParsedRequest, found: Scope) -> str:
    """The one-line error of a request with nothing to draw: what was asked, and what the model draws instead."""
    what = found.left_out or tuple(o.description for o in req.outputs if o.index in found.outside)
    return f"{OUT_OF_WORLD} {', '.join(repr(w) for w in what)}. It draws {WORLD_TEXT}"


def left_out_parts(req: ParsedRequest, found: Scope) -> list[str]:
    """What of `req` its outputs will not show: each phrase left out, and each output left out by its description."""
    return list(found.left_out) + [o.description for o in req.outputs if o.index in found.outside
                                   and o.description not in found.left_out]


def drawable_part(req: ParsedRequest, found: Scope) -> tuple[ParsedRequest, list[str]]:
    """`req` without its outputs that name nothing drawable (the rest renumbered 1..n), and a note for each thing
    left out. Callers refuse a request whose every output is outside (`refusal`)."""
    why = OUT_OF_WORLD.rstrip(":")
    notes = [f"left out output {o.index} ({o.description!r}): {why}" for o in req.outputs if o.index in found.outside]
    if found.left_out:
        notes.append(f"left out {', '.join(repr(w) for w in found.left_out)}: {why}")
    if found.outside:
        kept = [o for o in req.outputs if o.index not in found.outside]
        outputs = [o.model_copy(update={"index": k}) for k, o in enumerate(kept, 1)]
        req = ParsedRequest.model_validate({**req.model_dump(), "outputs": [o.model_dump() for o in outputs],
                                            "num_outputs": len(outputs)})
    return req, notes
