"""Instruction parsing: text + input images → a validated `ParsedRequest`.

Two parsers share this module:
- `parse_rules`: the deterministic parser. It owns the hard fields (task, counts, colours, shapes, positions,
  backgrounds, references to inputs) in the embedded default, because a tiny LLM gets them wrong (issue 5).
- `parse`: asks the configured LLM backend, then lets the rules referee what they can check (explicit numbers,
  named colours, input references). Every disagreement is resolved in favour of the rules and logged as a note.

Read bottom-up: vocabulary → safety checks → references → counts → task → descriptions → follow-ups → entry points.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field, replace

from pydantic import BaseModel, Field, ValidationError, create_model

from ditflow.agents import frames as fr
from ditflow.agents import references as rf
from ditflow.agents import scope
from ditflow.agents import scene as sc
from ditflow.agents.scene import split_degradations
from ditflow.agents import story
from ditflow.schemas import (MAX_INPUTS, MAX_INSTRUCTION_CHARS, MAX_OUTPUTS, MAX_PANELS, MAX_PROMPT_CHARS, InputImage,
                             ObjectEdit, OutputSpec, ParsedRequest, ParseFrame, SceneObject, TaskKind, one_line)
from ditflow.world.scenes import BACKGROUNDS, COLORS

log = logging.getLogger(__name__)


class InstructionError(ValueError):
    """The instruction itself is unusable (empty, too long); the message says what to change."""


# ----------------------------------------------------------------------------- vocabulary
NUMBERS = {"one": 1, "single": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
           "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
           "sixteen": 16, "twenty": 20, "thirty": 30, "fifty": 50, "hundred": 100, "a dozen": 12, "dozen": 12,
           "a couple of": 2, "a couple": 2, "couple of": 2, "a pair of": 2, "pair of": 2, "a duo of": 2,
           "a trio of": 3, "a single": 1, "both": 2}
# Vague quantities (issue 5: "some" 2–3, "a series" 3–10): the value chosen inside each range.
VAGUE = {"some": 3, "a few": 3, "few": 3, "several": 4, "a handful of": 4, "a bunch of": 4, "a series of": 4,
         "a set of": 4, "a sequence of": 4, "multiple": 3, "many": 6, "lots of": 6, "a lot of": 6}
ORDINALS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8,
            "ninth": 9, "tenth": 10, "1st": 1, "2nd": 2, "3rd": 3, "4th": 4, "5th": 5, "6th": 6}
OUTPUT_NOUN = (r"(?:images?|pictures?|pics?|pix|photos?|photographs?|drawings?|illustrations?|frames?|snapshots?"
               r"|panels?|pages?|figures?|variations?|versions?|shots?|renders?|renderings?|options?|takes?"
               r"|scenes?|slides?|cards?|sketch(?:es)?|paintings?|artworks?|icons?|posters?|stickers?"
               r"|alternatives?|copies|outputs?|samples?|spreads?|stages?|phases?|steps|keyframes?)")
SERIES_NOUN = r"(?:frames|snapshots|panels|pages|shots|slides|scenes)"
REF_NOUN = r"(?:images?|pictures?|pics?|photos?|pages?|panels?|frames?|inputs?|imgs?|ones?|drawings?)"
DEFAULT_BOOK_PAGES = 4
DEFAULT_SERIES = 4  # "a series of frames", a comic strip, a storyboard
DEFAULT_PLURAL = 2  # a bare plural ("pictures of ...")

_num_alt = "|".join(sorted((re.escape(k) for k in NUMBERS), key=len, reverse=True))
_vague_alt = "|".join(sorted((re.escape(k) for k in VAGUE), key=len, reverse=True))
_ord_alt = "|".join(ORDINALS)
# (never across an article: "turn it into a green one in a second picture" asks for no one picture)
COUNT_RE = re.compile(rf"\b(?P<num>\d+|{_num_alt}|{_vague_alt})(?!\s+(?:per|each|of (?:them|these|those)))"
                      # "three circles vector image" counts circles: a plural shape is the objects' count
                      rf"(?:[\s-]+(?!\d|{_num_alt}\b|(?:a|an|the|another|in|on|at|{sc.PLURAL_ALT})\b)[a-z']+){{0,3}}?"
                      rf"[\s-]+(?P<noun>{OUTPUT_NOUN})\b(?!\s+(?:per|for each|for every)\b)")  # "one picture per line"
MORE_RE = re.compile(rf"\b(?:(?P<num>\d+|{_num_alt})\s+(?:more|extra|additional|new)|(?P<another>another)"
                     rf"|(?P<onemore>one more))\b")
ARTICLE_RE = re.compile(r"picture[- ]?books?|story[- ]?books?|children'?s (?:book|story)|illustrated (?:story|"
                        r"article|blog|post|essay|guide|tutorial|book)|\barticles?\b|blog ?posts?|\bblog\b|story "
                        r"with (?:pictures|images|illustrations)|tell (?:me )?a story|\bstory\b|\bbook\b|\bfable\b"
                        r"|\bfairy ?tale\b")
GUIDE_RE = re.compile(r"\bclassifier\b|\bguidance\b|\bguided\b|\bguide\b|\bsteer")
RESTORE_WORDS = {  # user words → RestoreSpec.degradation
    "noise": r"denois|\bnois[ey]|grain|speckl|static",
    "blur": r"deblur|blur|sharp(?:en|er|ness)|crisp|out of focus|unfocused|fuzzy|soft focus|clearer|clarity",
    "sr4": r"(?<![\w.])(?:4 ?[x×]|[x×] ?4)(?![\w.])|four times|quadruple|\bby (?:a factor of )?(?:4|four)\b",
    "sr2": r"upscal|upsampl|super[- ]?res|pixelat|low[- ]?res|higher resolution|increase the resolution|"
           # the image itself made bigger (an object made bigger is a resize edit): "make this tiny image bigger"
           r"\b(?:this|the|my|that)\s+(?:\w+\s+)?(?:image|picture|photo|pic|thumbnail)\s+(?:\w+\s+)?"
           r"(?:bigger|larger)\b|\b(?:enlarge|blow up|magnify)\s+(?:this|the|my|that)\s+(?:\w+\s+)?"
           r"(?:image|picture|photo|pic|thumbnail)\b",
    "jpeg": r"jpe?g|compression|artifact|blocky|blockiness",
    "inpaint": r"missing|(?<!'s )fill in(?! (?:the|this|that) (?:image|picture|photo) (?:to|with))|\bholes?\b|scratch|"
               r"torn|damaged|\bgaps?\b",  # "the square's fill in the image to blue" is a colour
}
# "could we get a better quality version", "improve the image quality": restoration, the operator left to auto
QUALITY = (r"(?:better|higher|improved?|improving|boost(?:ed)?|increase[sd]?)\s+(?:the\s+)?(?:image\s+|picture\s+|"
           r"photo\s+|overall\s+)?quality")
RESTORE_RE = re.compile(rf"{QUALITY}|restor|\brepair|\bfix\b|enhance|clean (?:it |them |this |these |that )?up|"
                        r"clean ?up|"
                        + "|".join(v for k, v in RESTORE_WORDS.items() if k != "sr4"))
ADD_VERB = r"\b(?:add|adds|adding|put|place|insert|include|draw in|drop in)\b"
REMOVE_VERB = r"\b(?:remove|delete|erase|take out|take away|get rid of|drop)\b"
MOVE_VERB = r"\b(?:move|shift|slide|push|drag|put|place|relocate|reposition)\b"
BIGGER = r"\b(?:bigger|larger|enlarge|grow|increase (?:the|its) size|make (?:it|them|the \w+) (?:big|large|huge))\b"
SMALLER = r"\b(?:smaller|shrink|reduce (?:the|its) size|make (?:it|them|the \w+) (?:small|tiny|little))\b"
EDIT_VERB = re.compile(r"\b(?:make|turn|change|recolou?r|paint|colou?r|replace|swap|switch|convert|move|shift|"
                       r"edit|modify|remove|delete|erase|add|put|place|give|set|transform|fill)\b")
# Text addressed to the system rather than describing images (OWASP LLM01 "prompt injection" patterns).
INJECTION_RE = re.compile(
    r"\b(?:ignore|disregard|forget|override|bypass)\b[^.]{0,40}\b(?:schema|instructions?|rules|prompt|system|"
    r"guidelines|constraints)\b|\bsystem prompt\b|\byou are now\b|\bjailbreak|\bwrite (?:a )?files?\b|"
    r"(?:^|\s)/(?:etc|bin|usr|root|home|tmp|var|dev|proc)\b|\.\./|\brm -rf\b|\bexecute (?:code|commands?|shell)\b|"
    r"\bshell command|\bsudo\b|\bapi[_ ]?key\b|\bpassword")
NEGATION_RE = re.compile(
    r"\b(?:don'?t|do not|does not|doesn'?t|never|not|no|without|except|avoid|avoiding|none of (?:them|the \w+)|"
    r"other than|anything but|instead of|rather than|isn'?t|aren'?t|but not)\b"
    r"(?P<span>[^,.;:!?]{1,40}?)(?=[,.;:!?]|\bbut\b|\bjust\b|\bonly\b|$)")
COMMAND_WORDS = re.compile(
    r"^(?:(?:please|pls|plz|kindly|now|ok|okay|hey|hi)\b[\s,]*)*(?:(?:could|can|would|will) you(?: please)?"
    r"(?: be so kind as to)?|i(?:'d| would)? (?:like|love|want|need)(?: to see| to have| you to)?|i want to see|"
    r"can i (?:get|have)|let me see|give me|show me|gimme|whip up|imagine|generate|create|draw|paint|render|make"
    r"(?: me)?|produce|sketch|show|design|illustrate|write|tell me|depict)?\b[\s,]*", re.I)
ARTICLE_NOUNS = r"(?:picture[- ]?book|story[- ]?book|children'?s (?:book|story)|illustrated \w+|article|blog ?post|" \
                r"story|book|fable)"


# ----------------------------------------------------------------------------- context
class GalleryItem(BaseModel):
    """One image of the current set, as later turns refer to it ("page 3", "the second one")."""

    path: str = ""
    description: str
    caption: str | None = None
    objects: list[SceneObject] = Field(default_factory=list, description="its objects, when read")
    background: str | None = None
    # the objects the turn that made it acted on, as it left them: what "it" means next ("make it blue")
    focus: list[SceneObject] = Field(default_factory=list)
    # the objects that turn removed, as they were: what "put it back" brings back
    gone: list[SceneObject] = Field(default_factory=list)


class Context(BaseModel):
    """Everything the parser may read: the instruction, the given images, and the conversation so far."""

    instruction: str
    inputs: list[InputImage] = Field(default_factory=list)
    gallery: list[GalleryItem] = Field(default_factory=list, description="the current set, from earlier turns")
    previous_task: TaskKind | None = None
    previous_shared: str | None = None
    previous_title: str | None = None


@dataclass
class Parse:
    """What a parser returns: the request, whether the previous set became this turn's inputs, and notes."""

    request: ParsedRequest
    uses_gallery: bool = False
    notes: list[str] = field(default_factory=list)
    valid_before_fallback: bool = True
    source: str = "rules"


def check_instruction(text: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise InstructionError("the instruction is empty; describe the images you want, e.g. 'a red circle'")
    if len(text) > MAX_INSTRUCTION_CHARS:
        raise InstructionError(f"the instruction is {len(text):,} characters; the limit is "
                               f"{MAX_INSTRUCTION_CHARS:,}. Shorten it or split it into several turns")
    return text.strip()


def _clarify(question: str, ctx: Context) -> ParsedRequest:
    """A request that cannot be done as asked: one placeholder output and the question for the user."""
    return ParsedRequest(task="generate", num_inputs=0, num_outputs=1,
                         outputs=[OutputSpec(index=1, description=ctx.instruction.strip()[:200] or "(empty)")],
                         clarification=question)


# ----------------------------------------------------------------------------- negations
def strip_negations(text: str) -> tuple[str, set[str]]:
    """Remove negated spans ("don't make it red", "no green ones") and return the words they forbid."""
    forbidden: set[str] = set()

    def cut(m: re.Match) -> str:
        span = m.group("span")
        for w in re.findall(r"[a-z]+", span):
            if w in sc.COLOR_WORDS:
                forbidden.add(sc.COLOR_WORDS[w])
            elif w in sc.SHAPE_WORDS:
                forbidden.add(sc.SHAPE_WORDS[w])
            elif w in sc.BACKGROUND_WORDS and "background" in span:
                forbidden.add(sc.BACKGROUND_WORDS[w])
        return " "

    return re.sub(r"\s+", " ", NEGATION_RE.sub(cut, text)).strip(), forbidden


# ----------------------------------------------------------------------------- references to inputs
@dataclass
class Refs:
    indices: list[int]  # explicit, in order of mention
    spans: list[tuple[int, int, list[int]]]  # (start, end, indices) of each mention
    all: bool = False


_SHAPES_ALT = "|".join(sorted(sc.SHAPE_WORDS, key=len, reverse=True))


def find_refs(text: str, n: int) -> Refs:
    """Explicit references to inputs: "image 2", "images 1 and 3", "the second one", "page 3", "the last image".
    "A second picture" is a new output, not a reference; with no inputs, the pictures of a sequence ("draw X, then
    a second picture where ...") are this turn's own outputs."""
    spans: list[tuple[int, int, list[int]]] = []
    if not n and len(story.steps(text)) > 1:
        return Refs([], [])
    for m in re.finditer(rf"\b(?:{REF_NOUN}|#)\s*#?(\d+)\b((?:\s*(?:,|and|&|or)\s*#?\d+\b)*)", text):
        nums = [int(m.group(1))] + [int(x) for x in re.findall(r"\d+", m.group(2) or "")]
        spans.append((m.start(), m.end(), nums))
    for m in re.finditer(rf"(?<!\ba )(?<!\ban )\b(?:the\s+)?({_ord_alt}|last)\s+(?:\w+\s+)?{REF_NOUN}\b|"
                         rf"\b({_ord_alt}|last) one\b", text):
        word = m.group(1) or m.group(2)
        if m.group(0).endswith("one") and re.match(rf"\s+(?:\w+\s+){{0,2}}?(?:{_SHAPES_ALT})\b", text[m.end():]):
            continue  # "first one pink circle, then two": a count, not "the first one"
        spans.append((m.start(), m.end(), [n if word == "last" else ORDINALS[word]]))
    spans.sort()
    indices: list[int] = []
    for _, _, nums in spans:
        indices += [k for k in nums if k not in indices]
    everyone = bool(re.search(r"\b(?:both|all|each|every|them|these|those|they)\b", text))
    return Refs(indices, spans, everyone and not indices)


# ----------------------------------------------------------------------------- counts
@dataclass
class Count:
    n: int
    explicit: bool  # a number the user wrote; the referee enforces it
    why: str


def _number(word: str) -> tuple[int, bool]:
    if word.isdigit():
        return int(word), True
    if word in NUMBERS:
        return NUMBERS[word], True
    return VAGUE[word], False


# what a listed series varies from picture to picture: "in three colours: ...", "on different backgrounds - ..."
VARIED_RE = re.compile(r"\b(?:colou?rs?|positions?|places?|spots?|locations?|corners?|backgrounds?|backdrops?|sizes?)"
                       r"\s*(?::|\s[-–—]\s)")


def count_outputs(text: str, task: str, items: list[str]) -> Count | None:
    """How many outputs a generation asks for; None when nothing says (then 1, or the task's default)."""
    listed = items and (task == "article" or VARIED_RE.search(text)
                        or PLACES_RE.search(text) and not LIST_OPEN.search(text))
    labelled = story.labelled_parts(text)
    if labelled:  # "Image 1: ... Image 2: ...": a page per label
        return Count(len(labelled), True, "labelled pictures")
    m = COUNT_RE.search(text)
    parts = story.steps(text)
    if m:
        n, explicit = _number(m.group("num"))
        # "a set of pictures ...: A, B and C" is as many as it lists, "a series of images: first ..., then ..." as
        # many as its steps
        if explicit or not (listed or len(parts) > 1):
            return Count(n, explicit, m.group(0))
    if len(parts) > 1:  # "draw X, then a second picture where ...": a page per step (and one for the setting)
        return Count(len(parts) + bool(story.find_events(parts[0])), True, "steps")
    m = re.search(rf"\b(?P<num>\d+|{_num_alt})\s+(?:\w+\s+)?(?:shapes|objects|things|colou?rs)\b", text)
    if m and re.search(r"one (?:per|each)|separate|each in|in (?:\w+ )?colou?rs|own (?:image|picture)|"
                       r"different colou?rs", text):
        n, explicit = _number(m.group("num"))
        return Count(n, explicit, m.group(0))
    if listed:
        return Count(len(items), True, "listed items")
    if task == "article":
        return Count(DEFAULT_BOOK_PAGES, False, "default pages")
    m = re.search(rf"\b(?P<vague>{_vague_alt})\b", text)
    if m and re.search(OUTPUT_NOUN, text[m.end():]):
        return Count(VAGUE[m.group("vague")], False, m.group(0))
    if re.search(r"comic|storyboard|animation|flip ?book", text) or re.search(rf"\b{SERIES_NOUN}\b", text):
        return Count(DEFAULT_SERIES, False, "a series")
    if re.search(rf"\b{OUTPUT_NOUN}\b", text) and re.search(r"\b(?:images|pictures|pics|photos|drawings|"
                                                          r"illustrations|variations|versions|figures)\b", text):
        return Count(DEFAULT_PLURAL, False, "a bare plural")
    return None


# "in different positions - the top left, the center and the bottom right": a dash, too, opens a list
LIST_OPEN = re.compile(r":|\s[-–—]\s")


_POS_ALT = "|".join(f"(?:{p})" for p, _ in sc.POSITION_PHRASES)
# "pictures of a red circle at the left, the center and the right": one picture per place named
PLACES_RE = re.compile(rf"\b(?:at|in|on)\s+(?:the\s+)?(?:{_POS_ALT})(?:\s*(?:,\s*(?:and\s+)?|\s+and\s+)(?:then\s+)?"
                       rf"(?:at\s+|in\s+|on\s+)?(?:the\s+)?(?:{_POS_ALT})\b){{1,5}}")


def numbered_lines(raw: str) -> str:
    """A list written one item per line under a line that opens it ("one panel per line:\\n a ...\\n b ...") as
    numbered items, which survive the whitespace normalising that would run the lines together."""
    lines = [ln.strip() for ln in raw.strip().splitlines() if ln.strip()]
    k = next((i for i, ln in enumerate(lines) if ln.endswith(":")), None)
    if k is None or len(lines) - k - 1 < 2 or story.labelled_parts(sc.normalise(raw)):
        return raw
    return " ".join(lines[:k + 1]) + " " + ", ".join(f"{j}) {ln}" for j, ln in enumerate(lines[k + 1:], start=1))


def list_items(text: str) -> list[str]:
    """Items after a colon (or a dash): "...: a red circle, a blue square and a green triangle" → three items;
    labelled or numbered pictures ("1) a red square, 2) ...", story.labelled_parts) wherever they are."""
    labelled = story.labelled_parts(text)
    if labelled:
        return labelled
    m = LIST_OPEN.search(text)
    places = PLACES_RE.search(text)
    if not m and places and re.search(rf"\b{SERIES_NOUN}\b|\b(?:images|pictures|photos|drawings|series)\b", text):
        return [p.strip() for p in re.split(r"\s*,\s*(?:and\s+)?|\s+and\s+", places.group(0)) if p.strip()]
    if not m:
        return []
    tail = text[m.end():].strip().rstrip(".!")
    # "...: one circle. two circles. three circles": a sentence each, too
    items = [s.strip() for s in re.split(r",\s*(?:and\s+)?|\s+and\s+(?=(?:a|an|the|they|it|then)\b|\w+$)|;|"
                                         r"(?<=[a-z])\.\s+", tail)]
    return [s for s in items if s] if len(items) > 1 else []


# ----------------------------------------------------------------------------- task
def restore_kind(text: str) -> str | None:
    """The degradation a user names ("grainy" → noise, "upscale 4x" → sr4), or None."""
    for name in ("inpaint", "jpeg", "noise", "blur"):
        if re.search(RESTORE_WORDS[name], text):
            return name
    if re.search(RESTORE_WORDS["sr2"], text):
        return "sr4" if re.search(RESTORE_WORDS["sr4"], text) else "sr2"
    return None


# "64x64", "64 by 64" (a full stop may end the sentence after it: "make it 64 by 64.")
RESTORE_SIZE_RE = re.compile(r"(?<![\w.])(\d{1,5}) ?(?:[x×]|by) ?(\d{1,5})(?!\w|\.\d)")
RESTORE_SCALE_RE = re.compile(r"(?<![\w.])(\d{1,2}(?:\.\d+)?) ?[x×](?!\w|\.\d)"
                              r"|(?<![\w.])[x×] ?(\d{1,2}(?:\.\d+)?)(?!\w|\.\d)"
                              r"|\bby (?:a factor of )?(\d{1,2}(?:\.\d+)?|two|three|four|eight)(?:[x×]|\b)(?!\.\d)"
                              r"|\b(twice|double|triple|quadruple|(?:two|three|four|eight) times)\b")
SCALE_WORDS = {"two": 2, "three": 3, "four": 4, "eight": 8, "twice": 2, "double": 2, "triple": 3, "quadruple": 4}


INPUT_SIZE_RE = re.compile(r" ?(?:px|pixels?)? ?(?:image|picture|photo|input|thumbnail|icon)s?\b")


def restore_size(text: str) -> tuple[int, int] | None:
    """The output size a restoration request names, (width, height) in px ("to 64 by 64 pixels"), or None. The
    last size named counts ("from 16x16 to 64x64"), but not the input's own ("this 16x16 image", "from 16x16"),
    nor sides under 8 px ("a 2x2 grid" names no image size)."""
    sizes = [(int(m[1]), int(m[2])) for m in RESTORE_SIZE_RE.finditer(text)
             if not INPUT_SIZE_RE.match(text, m.end()) and not text[:m.start()].endswith("from ")]
    return sizes[-1] if sizes and min(sizes[-1]) >= 8 else None


def restore_scale(text: str) -> float | None:
    """The enlargement a restoration request names ("4x bigger", "x2", "twice the size", "by a factor of 3"), or
    None; a named size ("64x64") is not a factor."""
    m = RESTORE_SCALE_RE.search(RESTORE_SIZE_RE.sub(" ", text))
    if not m:
        return None
    word = next(g for g in m.groups() if g)
    return float(SCALE_WORDS.get(word.split()[0], word))


def restore_output_size(text: str) -> dict:
    """The OutputSpec fields of the size a restoration request names: {"size": (w, h)} or {"scale": f} or {}."""
    size, scale = restore_size(text), restore_scale(text)
    return {"size": size} if size else {"scale": scale} if scale else {}


def _has_edit_ops(text: str) -> bool:
    colourish = any(re.search(rf"\b{w}\b", text) for w in sc.COLOR_WORDS) or "background" in text
    shapeish = bool(sc.mentions(text))
    return bool(EDIT_VERB.search(text)) and (colourish or shapeish or bool(re.search(BIGGER + "|" + SMALLER, text))
                                             or bool(re.search(MOVE_VERB, text)))


# ----------------------------------------------------------------------------- descriptions
def _free_colors(text: str, spans: list[tuple[int, int]]) -> list[str]:
    """Object colours named outside any object phrase ("make it blue"), in order."""
    out = []
    for m in re.finditer(r"[a-z]+", text):
        if m.group(0) in sc.COLOR_WORDS and not any(a <= m.start() < b for a, b in spans):
            c = sc.COLOR_WORDS[m.group(0)]
            if c not in out:
                out.append(c)
    return out


def apply_edit(desc: str, clause: str) -> str:
    """The self-contained description of `desc` after the edit `clause` ("make the circle blue")."""
    base, _ = split_degradations(desc)
    scene = sc.parse_scene(base)
    clause = sc.normalise(clause)
    ments = sc.mentions(clause)
    if not scene.things:  # a photo or anything outside the shapes world: say what changes, in words
        change = re.sub(rf"\b(?:{REF_NOUN}|#)\s*#?\d+\b|\b(?:in|of|on) (?:it|this|the (?:image|photo|picture))\b",
                        "", clause).strip(" ,.")
        if not change:
            return base
        # a description is a prompt: the words of a very long edit beyond the prompt limit cannot be drawn anyway
        room = max(0, MAX_PROMPT_CHARS - len(base) - len(", edited: "))
        return f"{base}, edited: {change[:room]}" if room else base
    bg_clause = "background" in clause or "backdrop" in clause
    new = scene
    spans = [(m.start, m.end) for m in ments]
    selectors, targets, added, removed = [], [], [], []
    add_at = [m.end() for m in re.finditer(ADD_VERB, clause)]
    rem_at = [m.end() for m in re.finditer(REMOVE_VERB, clause)]
    for m in ments:
        before = clause[max(0, m.start - 12):m.start]
        existing = any(t.shape == m.thing.shape and (m.thing.color in (None, t.color)) for t in scene.things)
        if any(0 <= m.start - a <= 14 for a in rem_at):
            removed.append(m.thing)
        elif any(0 <= m.start - a <= 14 for a in add_at) and not existing:
            added.append(m.thing)
        elif re.search(r"\b(?:to|into|with|for|as|by)\s+(?:an?\s+|the\s+)?$", before) or (
                not existing and m.thing.shape not in [t.shape for t in scene.things]):
            targets.append(m.thing)
        else:
            selectors.append(m.thing)
    selector = selectors[0] if selectors else None
    for t in removed:
        new = sc.remove(new, t)
    for t in targets:
        new = sc.reshape(new, t.shape, selector)
        if t.color:
            new = sc.recolor(new, t.color, sc.Thing(t.shape) if selector is None else
                             sc.Thing(t.shape, None))
    for t in added:
        new = sc.add(new, t)
    colors = [] if bg_clause and not ments else _free_colors(clause, spans)
    if colors:
        new = sc.recolor(new, colors[-1], sc.Thing(targets[0].shape) if targets else selector)
    if re.search(BIGGER, clause):
        new = sc.resize(new, "large", selector)
    elif re.search(SMALLER, clause):
        new = sc.resize(new, "small", selector)
    if re.search(MOVE_VERB, clause) and not added:
        pos, _, _ = sc.find_position(clause)
        if pos:
            new = sc.move(new, pos, sc.Thing(targets[0].shape) if targets else selector)
    if bg_clause:
        bg = sc.find_background(clause)
        if bg is None:  # "swap the background of picture 2 to black"
            bg = next((sc.BACKGROUND_WORDS[w] for w in re.findall(r"[a-z]+", clause) if w in sc.BACKGROUND_WORDS
                       and w not in ("dark", "light")), None)
        if bg:
            new = sc.set_background(new, bg)
    return sc.scene_text(new)


def _subject(text: str) -> str:
    """The words that describe what to draw, with the command, count and book words taken out."""
    t = COMMAND_WORDS.sub("", text.strip()).strip()
    t = re.sub(rf"^(?:a |an |the )?(?:short |little |small |nice |simple )?(?:\w+[- ]page )?{ARTICLE_NOUNS}"
               rf"(?:\s+(?:with|in|of)\s+\w+\s+{OUTPUT_NOUN})?[\s,:]*(?:about|of|on|featuring|explaining|"
               rf"showing|with|called)?\s*", "", t)
    t = COUNT_RE.sub("", t, count=1)
    t = re.sub(rf"^\s*(?:a |an |one )?(?:single |lone )?{OUTPUT_NOUN}\b", "", t)
    t = re.sub(r"^\s*(?:of|showing|featuring|with|about|for|that shows?|:)\s+", "", t).strip(" ,.:;!?")
    t = re.sub(r",?\s*(?:please|pls|thanks|thank you)$", "", t).strip(" ,.")
    return t or text.strip()


def _title(subject: str) -> str:
    words = subject.strip(" .").split()
    return " ".join(w if w in ("a", "an", "the", "of", "and", "to", "that") and i else w.capitalize()
                    for i, w in enumerate(words))[:120] or "A Story"


@dataclass
class Generated:
    """What `generation_descriptions` gives each output, in order."""

    descriptions: list[str]
    shared: str | None  # what the outputs share (None for independent images)
    happens: list[str | None]  # a story's page sentences (agents/story.py)
    derived_from: list[int | None]  # the earlier output each step is an edit of


BACKDROPS_RE = re.compile(r"\b(?:backgrounds?|backdrops?)\s*(?::|\s[-–—]\s)")


EVERY_PAGE_RE = re.compile(r"\b(?:on|in|for) (?:all|every|each) (?:of the |the )?(?:pages?|panels?|frames?|pictures?|"
                           r"images?|scenes?|slides?)\b|\bthe whole time\b|\bthroughout\b|\bin all of them\b")


def generation_descriptions(text: str, n: int, task: str, items: list[str]) -> Generated:
    """Self-contained descriptions for n new images, what they share, and what happens from one to the next."""
    # the objects the story starts with; its events and later steps say the rest (one picture shows everything)
    where, ments = story.cast(text) if n > 1 else (text, sc.mentions(text))
    spans = [(m.start, m.end) for m in ments]
    said = sc.normalise(where)
    things = sc.bind(said, sc.placed(said, ments))
    if n > 1:  # "pictures of blue diamonds": one object per picture unless a number says otherwise
        plural = {(m.thing.shape, m.thing.color) for m in ments if m.extras.get("bare_plural")}
        things = [sc.Thing(t.shape, t.color, t.size, t.position, 1) if (t.shape, t.color) in plural and t.count == 2
                  else t for t in things]
    colors = [c for c in _free_colors(where, spans) if not re.search(rf"\b{c}\s+background", where)]
    if things and colors and all(t.color is None for t in things) and len(colors) == 1:
        things = [sc.Thing(t.shape, colors[0], t.size, t.position, t.count) for t in things]
    every = EVERY_PAGE_RE.search(text) if n > 1 else None  # "gray background on all pages", wherever it is said
    every_bg = sc.find_background(text[max(0, every.start() - 40):every.end() + 40]) if every else None
    base = sc.Scene(tuple(things), sc.find_background(where) or every_bg)
    storyish = task == "article" or bool(re.search(r"comic|story|series|frames|snapshots|sequence|animation|same",
                                                   text))

    def plain(descs: list[str], shared: str | None) -> Generated:
        return Generated(descs, shared, [None] * len(descs), [None] * len(descs))

    if not things:
        subject = _subject(text)
        if n == 1:
            return plain([subject], None)
        return plain([f"{subject}, scene {i + 1} of {n}" for i in range(n)], subject)
    if n == 1:
        return plain([sc.scene_text(base)], None)
    subject_text = sc.scene_text(base)
    sequence = len(story.steps(text)) > 1  # "first ..., then ...": the steps, not the colon's list, are the pages
    # Listed items: "...: a red circle, a blue square and a green triangle", or colours "in three colours: ...".
    if len(items) == n and not sequence:
        out = []
        earlier: dict[str, str] = {}  # shape → the colour the items gave it so far
        for item in items:
            s = sc.parse_scene(item)
            cols = [sc.COLOR_WORDS[w] for w in re.findall(r"[a-z]+", item) if w in sc.COLOR_WORDS]
            where = sc.find_position(item if item.startswith("the ") else "the " + item)[0]
            bg = sc.find_background(f"on a {item} background") if BACKDROPS_RE.search(text) else None
            if s.things:
                # "2) the red square in the middle, 3) the square turns green": a colour said apart from the object,
                # else the one it had before
                things = tuple(replace(t, color=t.color or (cols[-1] if cols else earlier.get(t.shape)))
                               for t in s.things)
                earlier.update({t.shape: t.color for t in things if t.color})
                out.append(sc.scene_text(sc.Scene(things, s.background or base.background)))
            elif bg and base.things:  # "on different backgrounds: white, gray and black"
                out.append(sc.scene_text(replace(base, background=bg)))
            elif where and base.things:  # "in different places: the top left, the center, ..."
                out.append(sc.scene_text(replace(base, things=(replace(base.things[0], position=where),
                                                               *base.things[1:]))))
            elif cols and base.things:
                out.append(sc.scene_text(sc.recolor(base, cols[0])))
            elif re.match(r"(?:they|it|both|together)\b", item) and base.things:
                out.append(subject_text + ", " + item)
            else:
                out.append(f"{subject_text}, {item}")
        return plain(out, subject_text if storyish else None)
    separate = re.search(r"separate|each (?:in|on) its own|one (?:per|each)|\b(?:images?|pictures?|pair of \w+)\s*:",
                         text)
    if len(things) == n and separate and task != "article":
        return plain([sc.scene_text(sc.Scene((t,), base.background)) for t in things], None)
    tale = story.tell(text, base, n)
    if tale is None:
        return plain([subject_text] * n, subject_text if storyish else None)
    return Generated([sc.scene_text(p.scene) for p in tale.pages], tale.overview if storyish or tale.changes else None,
                     [p.happens for p in tale.pages], [k if p.derived else None for k, p in enumerate(tale.pages)])


# ----------------------------------------------------------------------------- the deterministic parser
def gallery_inputs(gallery: list[GalleryItem]) -> list[InputImage]:
    """The current set as a turn's inputs, objects and all: what a follow-up edits."""
    return [InputImage(index=i + 1, description=g.description, objects=g.objects, background=g.background)
            for i, g in enumerate(gallery[:MAX_INPUTS])]


def parse_rules(ctx: Context) -> Parse:
    """Parse `ctx` deterministically. Never raises on content: unusable requests carry a clarification."""
    raw = check_instruction(ctx.instruction)
    text = sc.distribute(sc.correct_slips(sc.normalise(numbered_lines(raw))))
    if INJECTION_RE.search(text):
        return Parse(_clarify("The instruction contains text addressed to the system (e.g. about schemas, prompts "
                              "or files). ditflow only makes images and writes only to this session's output "
                              "folder; please rephrase it as a description of the images you want.", ctx))
    text, forbidden = strip_negations(text)
    if not text:
        return Parse(_clarify("Everything in the instruction is negated; what should the images show?", ctx))
    inputs = list(ctx.inputs)
    uses_gallery = False
    follow = _follow_up_kind(text, ctx)
    focus: dict[int, list[int]] = {}
    gone: dict[int, list[SceneObject]] = {}
    if follow == "edit":  # "make the second one green": the current set becomes this turn's inputs
        inputs = gallery_inputs(ctx.gallery)
        focus = {i + 1: _focus_ids(g) for i, g in enumerate(ctx.gallery[:MAX_INPUTS])}
        gone = {i + 1: list(g.gone) for i, g in enumerate(ctx.gallery[:MAX_INPUTS])}
        uses_gallery = True
    elif follow == "continue":
        return Parse(_continuation(text, ctx, forbidden), uses_gallery=True)
    n_in = len(inputs)
    refs = find_refs(text, n_in)
    bad = [k for k in refs.indices if not 1 <= k <= n_in]
    if bad:
        given = f"only {n_in} image{'s' if n_in != 1 else ''} {'was' if n_in == 1 else 'were'} given" if n_in \
            else "no images were given (attach them, or generate some first)"
        return Parse(_clarify(f"You referred to image {bad[0]}, but {given}. Which image did you mean?", ctx))
    # ---- task
    if ARTICLE_RE.search(text) and not n_in:
        task: str = "article"
    elif GUIDE_RE.search(text) and not n_in:
        task = "guide"
    elif n_in and RESTORE_RE.search(text):
        task = "restore"
        if _has_edit_ops(re.sub(r"\b(?:restore|fix|clean|repair|enhance|denoise|deblur|sharpen)\b.*?"
                                r"(?:\band then\b|\bthen\b|,)", " ", text)) and re.search(r"\bthen\b|\band\b", text):
            task = "edit"  # "restore it and then make the circle blue": restore first, then edit
    elif n_in and scope.LOOK_RE.search(text):  # "make it a watercolor": a change of look, not of its objects
        task = "edit"
    elif n_in and (_has_edit_ops(text) or refs.indices or _reads_as_object_edit(text, inputs)
                   or any(gone.values()) and rf.BACK_RE.search(text)):
        task = "edit"
    elif n_in and re.search(r"\b(?:variations?|versions?|similar|like (?:this|it|these)|in the style of|based on|"
                            r"same style|inspired by)\b", text):
        task = "generate"
    elif n_in and not (sc.mentions(text) or sc.find_background(text) or _free_colors(text, [])
                       or sc.find_position(text)[0] or scope.LOOK_RE.search(text)):
        # an image and words that ask for nothing this parser reads ("请问…", "what can you do with this"): drawing
        # something unrelated would pass for an answer
        return Parse(_clarify(f"I could not tell what to do with the image{'s' if n_in > 1 else ''} you gave. Say "
                              "what should change, e.g. 'make the circle blue', 'remove the square', 'clean up this "
                              "noisy picture' or 'make it 4x bigger'.", ctx))
    elif re.search(r"\b(?:it|this|that|them|the (?:image|picture|photo))\b", text) and EDIT_VERB.search(text) \
            and not sc.mentions(text) and not n_in:
        return Parse(_clarify("There is no image to change yet: attach one, or describe a new image.", ctx))
    elif not n_in and (RESTORE_RE.search(text) and re.search(r"\b(?:it|this|the (?:image|photo|picture))\b", text)):
        return Parse(_clarify("There is no image to restore: attach the image you want restored.", ctx))
    else:
        task = "generate"
    # ---- panel limits
    canvas = re.search(rf"\b(?:single|one) (?:canvas|image|picture|grid)\b.*?\b(\d+|{_num_alt}) panels\b|"
                       rf"\b(\d+|{_num_alt}) panels?\b.*?\b(?:single|one) (?:canvas|image|grid)\b|"
                       rf"\b(\d+)\s*[x×]\s*(\d+) grid\b", text)
    if canvas:
        g = [x for x in canvas.groups() if x]
        panels = int(g[0]) * int(g[1]) if len(g) == 2 else _number(g[0])[0]
        if panels > MAX_PANELS:
            return Parse(_clarify(f"One canvas holds at most {MAX_PANELS} panels, and you asked for {panels}. "
                                  f"Ask for {MAX_PANELS} or fewer panels, or for separate images.", ctx))
    try:  # a description can outgrow a prompt's limit (a 4000-character list of objects): ask, never crash
        if task in ("edit", "restore"):
            req = _edit_or_restore(text, task, inputs, refs, forbidden, focus, gone)
        else:
            items = list_items(text)
            count = count_outputs(text, task, items)
            n = count.n if count else 1
            if n > MAX_OUTPUTS:
                return Parse(_clarify(f"You asked for {n} images; one turn makes at most {MAX_OUTPUTS}. Ask for "
                                      f"{MAX_OUTPUTS} or fewer (you can ask for more in the next turn).", ctx))
            if n < 1:
                return Parse(_clarify("You asked for zero images; how many should I make?", ctx))
            gen = generation_descriptions(text, n, task, items)
            shared = gen.shared
            listed = task == "article" and len(items) == n and len(story.steps(text)) == 1
            captions = items if listed else [None] * n
            sources = _sources_for_generation(refs, n_in)
            derived = [None] * n if n_in else gen.derived_from  # steps of this turn's own pictures
            req = ParsedRequest(task=task, num_inputs=n_in, num_outputs=n, inputs=inputs,
                                outputs=[OutputSpec(index=i + 1, description=_drop_forbidden(d, forbidden),
                                                    sources=sources, caption=c, happens=h, derived_from=f)
                                         for i, (d, c, h, f) in enumerate(zip(gen.descriptions, captions,
                                                                              gen.happens, derived))],
                                shared=_drop_forbidden(shared, forbidden) if shared else None,
                                title=_title(_subject(raw)) if task == "article" else None)
    except rf.Unclear as e:  # a reference the image cannot settle: ask, listing what it holds
        return Parse(_clarify(_sentence(str(e)), ctx))
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        return Parse(_clarify(f"This request does not fit one turn ({'.'.join(map(str, err['loc']))}: {err['msg']}); "
                              "please describe the images more briefly.", ctx))
    return Parse(req, uses_gallery=uses_gallery)


def _sources_for_generation(refs: Refs, n_in: int) -> list[int]:
    if not n_in:
        return []
    return refs.indices or list(range(1, n_in + 1))


def _drop_forbidden(desc: str, forbidden: set[str]) -> str:
    """A negated colour or shape never reaches a description, even through a default."""
    for w in forbidden:
        desc = re.sub(rf"\b{w}\s+", "", desc) if w in COLORS or w in BACKGROUNDS else desc
    return desc


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _focus_ids(item: GalleryItem) -> list[int]:
    """The ids, among the objects read from a gallery image, of the objects its turn acted on."""
    return [o.id for o in item.objects if any((o.shape, o.color, o.position) == (f.shape, f.color, f.position)
                                              for f in item.focus)]


def _reads_as_object_edit(text: str, inputs: list[InputImage]) -> bool:
    """Whether an instruction without the usual edit verbs ("let the top triangle be red", "duplicate the
    square") still edits the objects of an input."""
    for i in inputs:
        try:
            if _object_edits(text, i, []):
                return True
        except rf.Unclear:
            return True
    return False


def _object_edits(clause: str, image: InputImage, focus: list[int],
                  gone: list[SceneObject] = ()) -> list[ObjectEdit]:
    """The object-level edits of `clause` on an input read into objects ([] when it is not one, or not read).
    Raises references.Unclear for a reference the image cannot settle."""
    if not image.objects:
        return []
    return rf.object_edits(clause, image.objects, focus, f"image {image.index}", gone, image.background)


def _edited_description(image: InputImage, edits: list[ObjectEdit]) -> str:
    return sc.scene_text(rf.edited_scene(image.objects, image.background, edits))


def _edit_or_restore(text: str, task: str, inputs: list[InputImage], refs: Refs, forbidden: set[str],
                     focus: dict[int, list[int]] | None = None,
                     gone: dict[int, list[SceneObject]] | None = None) -> ParsedRequest:
    """Outputs for an edit or restoration of the chosen inputs. `focus`: per input, the ids of the objects the
    previous turn acted on (what "it" means); `gone`: the objects it removed (what "put it back" means)."""
    focus, gone = focus or {}, gone or {}
    n_in = len(inputs)
    if refs.indices:
        chosen = refs.indices
    elif n_in == 1:
        chosen = [1]
    else:  # pick by content when the text names an object only some inputs show ("remove the red square")
        named = sc.mentions(text)
        chosen = [i.index for i in inputs if named and any(
            any(t.shape == m.thing.shape and m.thing.color in (None, t.color)
                for t in sc.parse_scene(split_degradations(i.description)[0]).things) for m in named)]
        if not chosen or refs.all or task == "restore":
            chosen = [i.index for i in inputs]
        if task == "restore" and not refs.all:  # "clean up the grainy second picture" is caught by refs above
            degraded = [i.index for i in inputs if split_degradations(i.description)[1] or i.degradations]
            chosen = degraded if 0 < len(degraded) < n_in and not re.search(r"\b(?:both|all|them|these)\b", text) \
                else chosen
    if len(chosen) > MAX_OUTPUTS:
        chosen = chosen[:MAX_OUTPUTS]
    clauses = _clauses(text, refs, chosen)
    kind = restore_kind(text)
    new_inputs = []
    for i in inputs:
        desc, degr = split_degradations(i.description)
        degr = list(dict.fromkeys(([kind] if kind and i.index in chosen else []) + degr + i.degradations))
        new_inputs.append(i.model_copy(update={"degradations": degr}))
    outputs = []
    for k, src in enumerate(chosen):
        base, _ = split_degradations(inputs[src - 1].description)
        edits = []
        if task == "edit":
            clause = clauses[src]
            if task == "edit" and RESTORE_RE.search(clause):
                clause = re.split(r"\bthen\b", clause)[-1]
            image = inputs[src - 1]
            look = scope.LOOK_RE.search(clause)  # a new look changes no object: a phrase edit (FLUX can)
            edits = [] if look else _object_edits(clause, image, focus.get(src, []), gone.get(src, []))
            if not edits and image.objects and not look:  # wording the references do not read: the phrase edit, diffed
                edits = rf.diff_edits(image.objects, image.background, sc.parse_scene(apply_edit(base, clause)))
            desc = _edited_description(image, edits) if edits else apply_edit(base, clause)
        else:
            desc = base if sc.parse_scene(base).things else f"{base}, restored"
        # an image with no description of its own (one added by path): the instruction describes it, as in
        # _continuation
        desc = _drop_forbidden(desc, forbidden).strip() or text.strip()[:MAX_PROMPT_CHARS]
        outputs.append(OutputSpec(index=k + 1, description=desc, sources=[src],
                                  edits=edits, **(restore_output_size(text) if task == "restore" else {})))
    return ParsedRequest(task=task, num_inputs=n_in, num_outputs=len(outputs), inputs=new_inputs, outputs=outputs)


def _clauses(text: str, refs: Refs, chosen: list[int]) -> dict[int, str]:
    """The part of the instruction that speaks about each chosen input ("turn the first blue and the third one
    yellow" → {1: "turn the first blue and", 3: "the third one yellow"}); the whole text when refs share one."""
    whole = {k: text for k in chosen}
    if len(refs.spans) < 2:
        return whole
    out: dict[int, str] = {}
    prefix = text[:refs.spans[0][0]]
    for j, (start, end, nums) in enumerate(refs.spans):
        stop = refs.spans[j + 1][0] if j + 1 < len(refs.spans) else len(text)
        part = prefix + " " + text[start:stop]
        if not _has_edit_ops(part) and not re.search(r"\b(?:bigger|smaller|larger)\b", part):
            part = text
        for k in nums:
            out.setdefault(k, part)
    return {k: out.get(k, text) for k in chosen}


# ----------------------------------------------------------------------------- follow-ups
PRONOUN_RE = re.compile(rf"\b(?:it|its|him|his|her|he|she|them|they|this|that|these|those|both|all of them|each|"
                        rf"previous|last|"
                        rf"again|same|another|more|undo|(?:{_ord_alt}|last) ones?|(?:page|image|picture|panel|"
                        rf"frame|photo)s? \d+|the (?:{_ord_alt}) (?:page|image|picture|panel|frame|one))\b")


def _follow_up_kind(text: str, ctx: Context) -> str | None:
    """"edit" when the text changes earlier images, "continue" when it asks for more of them, else None."""
    if ctx.inputs or not ctx.gallery:
        return None
    # "make the top left triangle red" after drawing three: a definite reference to what is on screen
    pointed = _has_edit_ops(text) and any(not r.pronoun for r in rf.find_references(text)) or bool(
        re.search(r"\b(?:change|make|turn|set|switch|paint|colou?r|recolou?r)\b[^.;]*\bthe (?:background|backdrop)\b",
                  text))  # "now change the backdrop to gray": the picture on screen's
    if not PRONOUN_RE.search(text) and not pointed:
        return None
    if MORE_RE.search(text) or re.search(r"\b(?:again|same again|do it again|once more|more (?:pages?|images?|"
                                         r"pictures?|panels?|frames?))\b", text):
        if not re.search(ADD_VERB + r"\s+(?:an?\s+|the\s+)?(?:\w+\s+)?(?:" + "|".join(sc.SHAPE_WORDS) + r")", text):
            return "continue"
    return "edit"


def _continuation(text: str, ctx: Context, forbidden: set[str]) -> ParsedRequest:
    """More of the current set ("add two more pages", "another one", "same again but on black")."""
    task = ctx.previous_task if ctx.previous_task in ("generate", "article", "guide") else "generate"
    m = MORE_RE.search(text)
    if m and m.group("num"):
        n = _number(m.group("num"))[0]
    elif m:
        n = 1
    elif re.search(r"\bmore\b", text):
        n = DEFAULT_PLURAL
    else:
        n = len(ctx.gallery)
    n = max(1, min(n, MAX_OUTPUTS))
    again = not m and re.search(r"\b(?:again|same)\b", text)
    change = re.sub(r"\b(?:same again|do it again|again|same|but|now|please)\b", " ", text).strip(" ,.")
    if again:
        bases = [g.description for g in ctx.gallery][:n]
        descs = [apply_edit(b, change) if change else b for b in bases]
    else:
        base = ctx.previous_shared or ctx.gallery[-1].description
        descs = [base] * n
    inputs = [InputImage(index=i + 1, description=g.description) for i, g in enumerate(ctx.gallery[:MAX_INPUTS])]
    sources = [1] if task == "article" or ctx.previous_shared else []
    # a gallery entry may carry no description (an image added by path); the instruction then describes it
    descs = [_drop_forbidden(d, forbidden).strip() or text.strip()[:MAX_PROMPT_CHARS] for d in descs]
    return ParsedRequest(task=task, num_inputs=len(inputs), num_outputs=n, inputs=inputs,
                         outputs=[OutputSpec(index=i + 1, description=d, sources=sources)
                                  for i, d in enumerate(descs)],
                         shared=ctx.previous_shared, title=ctx.previous_title)


# ----------------------------------------------------------------------------- LLM parsing + referee
SELF_REFERENCE = re.compile(rf"\b(?:{REF_NOUN}|input)\s*#?\d+\b|\b(?:{_ord_alt}) (?:image|picture|input|one)\b", re.I)


def referee(llm: ParsedRequest, rules: ParsedRequest, text: str) -> tuple[ParsedRequest, list[str]]:
    """Check an LLM's parse against what the rules can check; the rules win each disagreement, visibly."""
    notes: list[str] = []
    if rules.clarification:
        return rules, [f"rules: {rules.clarification}"] + ([] if llm.clarification else
                                                           ["the LLM parse was overruled by the rules' clarification"])
    out = llm.model_copy(deep=True)
    count = count_outputs(sc.normalise(text), rules.task, list_items(sc.normalise(text)))
    explicit = (count is not None and count.explicit) or rules.task in ("edit", "restore")
    if explicit and out.num_outputs != rules.num_outputs:
        notes.append(f"count: LLM said {out.num_outputs}, the instruction says {rules.num_outputs}; using "
                     f"{rules.num_outputs}")
        out = rules.model_copy(update={"task": out.task if out.task not in ("edit", "restore") or rules.num_inputs
                                       else rules.task}, deep=True)
    if out.num_inputs != rules.num_inputs or out.inputs != rules.inputs:
        out = out.model_copy(update={"num_inputs": rules.num_inputs, "inputs": rules.inputs})
    fixed = []
    for o, r in zip(out.outputs, rules.outputs):
        o = o.model_copy()
        want = {w for w in re.findall(r"[a-z]+", r.description.lower()) if w in COLORS}
        have = {sc.COLOR_WORDS[w] for w in re.findall(r"[a-z]+", o.description.lower()) if w in sc.COLOR_WORDS}
        if want - have or have - want - set(COLORS) or (have - want and want):
            notes.append(f"output {o.index}: LLM colours {sorted(have)} differ from the named {sorted(want)}; using "
                         f"the rules' description")
            o.description = r.description
        if SELF_REFERENCE.search(o.description):
            notes.append(f"output {o.index}: description refers to another image; using the rules' description")
            o.description = r.description
        if sorted(o.sources) != sorted(r.sources):
            if o.sources or r.sources:
                notes.append(f"output {o.index}: sources {o.sources} → {r.sources} (the instruction's references)")
            o.sources = r.sources
        fixed.append(o)
    fixed += out.outputs[len(fixed):]
    if out.task in ("edit", "restore") and not all(f.sources for f in fixed):
        # the instruction's references (the rules') leave an edit with nothing to edit: the readings differ too much
        notes.append(f"the LLM's {out.task} names an image the instruction does not; using the rules' parse")
        return rules, notes
    try:
        out = ParsedRequest.model_validate({**out.model_dump(), "outputs": [f.model_dump() for f in fixed]})
    except ValidationError as e:
        notes.append(f"refereed parse did not validate ({e.error_count()} errors); using the rules' parse")
        out = rules
    for n in notes:
        log.info("parse referee: %s", n)
    return out, notes


def parse_messages(ctx: Context, prompt: str) -> list[dict]:
    """Chat messages for the parse agent: the markdown prompt, then the context as JSON (never free text)."""
    user = {"instruction": ctx.instruction,
            "inputs": [{"index": i.index, "description": i.description} for i in ctx.inputs],
            "previous_outputs": [{"index": k + 1, "description": g.description} for k, g in enumerate(ctx.gallery)],
            "previous_task": ctx.previous_task}
    return [{"role": "system", "content": prompt}, {"role": "user", "content": json.dumps(user)}]


def context_from_messages(messages: list[dict]) -> Context:
    """The inverse of `parse_messages`, for backends that read the context rather than the prose."""
    for m in reversed(messages):
        if m.get("role") == "user":
            content = m["content"]
            if isinstance(content, list):  # OpenAI parts: text + image_url
                content = " ".join(p.get("text", "") for p in content if p.get("type") == "text")
            data = json.loads(content)
            inputs = [InputImage(index=i["index"], description=i["description"]) for i in data.get("inputs", [])]
            gallery = [GalleryItem(description=g["description"]) for g in data.get("previous_outputs", [])]
            return Context(instruction=data["instruction"], inputs=inputs, gallery=gallery,
                           previous_task=data.get("previous_task"))
    raise ValueError("no user message with the parse context (JSON) was given")


def _gone_after(req: ParsedRequest, o: OutputSpec) -> list[SceneObject]:
    """The objects an output's edits removed, as they were."""
    if not o.edits or len(o.sources) != 1:
        return []
    removed = {i for e in o.edits if e.op == "remove" for i in e.targets}
    return [x for x in req.inputs[o.sources[0] - 1].objects if x.id in removed]


def _focus_after(req: ParsedRequest, o: OutputSpec) -> list[SceneObject]:
    """The objects an output's edits acted on (or added), as the edits left them."""
    if not o.edits or len(o.sources) != 1:
        return []
    before = req.inputs[o.sources[0] - 1].objects
    ids = set(rf.touched(o.edits)) | {i for i in range(len(before) + 1, len(before) + 1 + len(o.edits))}
    return [x for x in rf.apply(before, o.edits) if x.id in ids]


def next_gallery(gallery: list[GalleryItem], parse: Parse, paths: list[str] | None = None) -> list[GalleryItem]:
    """The current set after a turn: edits replace their sources, "more" appends, anything new replaces it."""
    req = parse.request
    if req.clarification:
        return list(gallery)
    paths = paths or [""] * req.num_outputs
    made = [GalleryItem(path=p, description=o.description, caption=o.caption, focus=_focus_after(req, o),
                        gone=_gone_after(req, o)) for o, p in zip(req.outputs, paths)]
    if parse.uses_gallery and req.task in ("edit", "restore"):
        out = list(gallery)
        for o, item in zip(req.outputs, made):
            if len(o.sources) == 1 and 1 <= o.sources[0] <= len(out):
                out[o.sources[0] - 1] = item
        return out
    if parse.uses_gallery:
        return list(gallery) + made
    return made


# ----------------------------------------------------------------------------- entry point
def parse_mode(backend) -> str:
    """rules: the rules parse alone · prose: rules own the fields, the LLM only writes prose (the embedded tiny
    LLM) · llm: the LLM parses and the rules referee (a capable endpoint)."""
    if getattr(backend, "name", "rules") == "rules":
        return "rules"
    return "llm" if getattr(backend, "parses", True) else "prose"


def parse(ctx: Context, backend=None, image_urls: list[str] | None = None) -> Parse:
    """Parse one turn with `backend` (None: rules). Raises InstructionError for an unusable instruction."""
    from ditflow.agents.llm.base import LLMError
    from ditflow.agents.prompts import load_prompt

    rules = parse_rules(ctx)
    if backend is None or parse_mode(backend) == "rules":
        return rules
    if parse_mode(backend) == "prose":
        return polish_descriptions(rules, backend)
    if rules.request.clarification:  # safety and reference checks are the rules' call, never the LLM's
        rules.notes.append("the rules asked for clarification; the LLM was not consulted")
        return rules
    if getattr(backend, "writes_frames", False):
        return _parse_frames(ctx, backend, rules)
    messages = parse_messages(ctx, load_prompt("parse"))
    if image_urls and getattr(backend, "supports_images", False):
        messages[-1]["content"] = [{"type": "text", "text": messages[-1]["content"]}] + [
            {"type": "image_url", "image_url": {"url": u}} for u in image_urls]
    try:
        got = backend.complete(messages, ParsedRequest, task="parse")
    except LLMError as e:
        note = f"parse: the LLM gave no valid answer ({one_line(e, 200)}); using the rules parse"
        log.info(note)
        return Parse(rules.request, rules.uses_gallery, [note], valid_before_fallback=False, source="rules")
    if got.clarification and not rules.request.clarification:
        return Parse(rules.request, rules.uses_gallery,
                     [f"the LLM asked '{got.clarification[:200]}', but the rules found the request clear"],
                     source="rules")
    refereed, notes = referee(got, rules.request, ctx.instruction)
    return Parse(refereed, rules.uses_gallery, notes, valid_before_fallback=True,
                 source=backend.name if refereed is not rules.request else "rules")


def parse_frame(ctx: Context, backend) -> Parse:
    """The trained parse model's own reading of a turn (no referee): its frame, compiled in this context. With no
    images attached, the current set is shown as the images, as the rules read a follow-up; the turn uses it when
    an output is made from one. Raises LLMError when the model gives no valid frame, frames.FrameError when the
    frame contradicts the context."""
    inputs = ctx.inputs or gallery_inputs(ctx.gallery)
    got = backend.complete(fr.frame_messages(ctx.instruction, inputs), ParseFrame, task="parse")
    uses_gallery = not ctx.inputs and any(o.source for o in got.outputs)
    req = fr.compile_frame(got, ctx.instruction, inputs if ctx.inputs or uses_gallery else [])
    if req.task == "restore":  # an output size the user wrote ("to 64 by 64", "4× bigger") is read, not guessed
        size = restore_output_size(sc.normalise(ctx.instruction))
        req = req.model_copy(update={"outputs": [o.model_copy(update=size) for o in req.outputs]})
    return Parse(req, uses_gallery, source=backend.name)


def _parse_frames(ctx: Context, backend, rules: Parse) -> Parse:
    """The trained model parses; the rules referee as they do any LLM's parse. Where the two read a follow-up
    differently (one edits the current set, the other makes new images), the rules cannot check the model's
    fields against theirs, and the model's reading stands, with a note."""
    from ditflow.agents.llm.base import LLMError

    try:
        got = parse_frame(ctx, backend)
    except (LLMError, fr.FrameError) as e:
        note = f"parse: the parse model gave no usable answer ({one_line(e, 200)}); using the rules parse"
        log.info(note)
        return Parse(rules.request, rules.uses_gallery, [note], valid_before_fallback=False, source="rules")
    if got.request.clarification:
        return Parse(rules.request, rules.uses_gallery,
                     ["the parse model asked for clarification, but the rules found the request clear; overruled"],
                     source="rules")
    if got.uses_gallery != rules.uses_gallery:
        reading = "edits the current set" if got.uses_gallery else "makes new images"
        return Parse(got.request, got.uses_gallery, [f"the parse model {reading}, unlike the rules; the model's "
                                                     "reading stands"], source=backend.name)
    refereed, notes = referee(got.request, rules.request, ctx.instruction)
    return Parse(refereed, rules.uses_gallery, [f"referee overruled the parse model: {n}" for n in notes],
                 valid_before_fallback=True, source=backend.name if refereed is not rules.request else "rules")


def description_problem(new: str, old: str) -> str | None:
    """Why a rewritten description cannot replace `old`: it must keep every field the rules parsed."""
    if not new.strip() or len(new) > MAX_PROMPT_CHARS:
        return "empty or too long"
    old = re.sub(r",?\s*scene \d+ of \d+", "", old)  # the template's own numbering is not a parsed field
    if SELF_REFERENCE.search(new):
        return "refers to another image"
    for vocab in (sc.COLOR_WORDS, sc.SHAPE_WORDS, sc.BACKGROUND_WORDS):
        a = {vocab[w] for w in re.findall(r"[a-z]+", old.lower()) if w in vocab}
        b = {vocab[w] for w in re.findall(r"[a-z]+", new.lower()) if w in vocab}
        if a != b:
            return f"changes {sorted(a ^ b)}"
    nums = lambda t: {w for w in re.findall(r"[a-z0-9]+", t.lower()) if w.isdigit() or w in NUMBERS}  # noqa: E731
    if nums(old) - nums(new):
        return f"drops the number(s) {sorted(nums(old) - nums(new))}"
    return None


def polish_descriptions(p: Parse, backend) -> Parse:
    """Let a prose-only LLM rewrite descriptions the shapes-world vocabulary does not cover ("a fox who learns to
    swim, scene 2 of 4"), keeping each rewrite only if it keeps the parsed fields. Shapes-world descriptions stay
    canonical: they are the builtin model's training wording."""
    from ditflow.agents.llm.base import LLMError
    from ditflow.agents.prompts import prompt_section

    req = p.request
    todo = [o for o in req.outputs if not sc.parse_scene(o.description).things] if not req.clarification else []
    if not todo or req.task not in ("generate", "article", "guide"):
        return p
    schema = create_model(f"Descriptions{len(todo)}", descriptions=(list[str], Field(min_length=len(todo),
                                                                                     max_length=len(todo))))
    messages = [{"role": "system", "content": prompt_section("describe", "system")},
                {"role": "user", "content": json.dumps({"descriptions": [o.description for o in todo]})}]
    try:
        got = backend.complete(messages, schema, task="describe").descriptions
    except LLMError as e:
        return Parse(req, p.uses_gallery, p.notes + [f"describe: no valid LLM answer ({str(e)[:160]}); kept the "
                                                     f"template descriptions"], valid_before_fallback=False)
    notes = list(p.notes)
    new = {o.index: o.description for o in req.outputs}
    for o, text in zip(todo, got):
        problem = description_problem(text, o.description)
        if problem:
            notes.append(f"output {o.index}: LLM description {problem}; kept the template")
        else:
            new[o.index] = text.strip()
    outputs = [o.model_copy(update={"description": new[o.index]}) for o in req.outputs]
    return Parse(req.model_copy(update={"outputs": outputs}), p.uses_gallery, notes, source=backend.name)
