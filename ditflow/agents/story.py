"""Stories and sequences: what happens from page to page of a picture book, a frame series or a list of steps.

`tell(text, base, n)` reads what the instruction says happens and gives one scene per page, with a sentence saying
what happens on it. The events it reads:
- a path: "drops from the top to the bottom", "climbs from the bottom left to the top right", "rolls from right
  to left", "falls", "rises", "flies up", "bounces", "goes around the corners";
- a change: colour ("turns blue", "changes from red to green"), shape ("turns into a circle"), size ("grows",
  "shrinks"), count ("one circle becomes two", "more and more squares appear");
- something arriving or leaving ("a blue circle arrives", "a second circle joins it", "the triangle leaves");
- a colour per page ("each a different colour").
Steps ("draw X, then a second picture where ...", "first ..., then ..., finally ...") are keyframes: each makes a
page derived from the page before. Without steps, a path spans the pages and each change happens once, the
changes spread evenly. An open-ended story with nothing stated ("goes on an adventure", "a picture book about a
red triangle") gets a journey across the page that meets a friend, the same journey every time.

Pure and deterministic (style.md §8). Positions are the 3×3 cells of docs/shapes-world.md; scenes are written by
`scene.scene_text`, the builtin model's training wording, by the caller.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from ditflow.agents import scene as sc
from ditflow.world.phrases import BACKGROUND_WORDS
from ditflow.world.scenes import COLORS, POSITION_CELL, POSITIONS, SHAPES


@dataclass(frozen=True)
class Page:
    scene: sc.Scene
    happens: str  # one sentence for the page text: "Then it drops to the middle."
    derived: bool = False  # a step of the instruction: an edit of the page before, not drawn afresh


@dataclass(frozen=True)
class Story:
    pages: tuple[Page, ...]
    overview: str  # what the pages share, in the builtin model's multi-panel overview wording
    changes: bool  # something happens (a colour per page alone is no story)


@dataclass(frozen=True)
class Event:
    kind: str  # path | color | size | split | ramp | arrive | leave | background (a step's)
    start: int
    end: int
    verb: str = ""  # the user's verb, for the page sentence
    who: sc.Thing | None = None  # whom it happens to; None: the hero (the scene's first object)
    # per kind: path (direction, from cell, to cell) · color (old colour, new colour, new shape) · size (before,
    # after) · split (count,) · arrive (thing, one more of the hero?, "after"/"before" the verb) · background (name,)
    value: tuple = field(default_factory=tuple)


# ----------------------------------------------------------------------------- vocabulary
_COLOR = "|".join(sorted(sc.COLOR_WORDS, key=len, reverse=True))
_SHAPE = "|".join(sorted(sc.SHAPE_WORDS, key=len, reverse=True))
_NUM = {"two": 2, "three": 3, "2": 2, "3": 3}
_PICTURE = r"(?:pictures?|images?|frames?|panels?|pages?|drawings?|photos?|scenes?|shots?|slides?|ones?|versions?)"
CLAUSE_END = re.compile(r"[,;.!?:]|\b(?:and then|then|but|while|after that|finally|when)\b")

_DOWN = (r"(?:come|comes|coming|came|go|goes|going|went|slides?|sliding|slid|rolls?|rolling|rolled|floats?|floating|"
         r"moves?|moving|moved|drifts?|drifting|climbs?|climbing|jumps?|jumping|hops?|hopping) down|"
         r"drop(?:s|ping|ped)?|"
         r"fall(?:s|ing)?|fell|sink(?:s|ing)?|sank|descend(?:s|ing|ed)?|tumbl(?:es|ing|ed|e)|plung(?:es|ing|ed|e)")
_UP = (r"(?:climbs?|climbing|climbed|fly|flies|flying|flew|floats?|floating|floated|go|goes|going|went|moves?|moving|"
       r"moved|jumps?|jumping|jumped|drifts?|drifting|comes?|coming|came|hops?|hopping) up|ris(?:e|es|ing)|rose|"
       r"climb(?:s|ing|ed)?|ascend(?:s|ing|ed)?|tak(?:e|es|ing) off|lift(?:s|ing)? off|"
       r"learn(?:s|ed|t|ing)? (?:how )?to fly|fl(?:y|ies|ying|ew)|soar(?:s|ing|ed)?|float(?:s|ing|ed)?")
_BOUNCE = r"bounc(?:e|es|ing|ed)|jump(?:s|ing|ed)?|hop(?:s|ping|ped)?|leap(?:s|ing|t)?"
_ACROSS = (r"mov(?:e|es|ing|ed)|travel(?:s|ling|ing|led|ed)?|walk(?:s|ing|ed)?|roll(?:s|ing|ed)?|slid(?:e|es|ing)?|"
           r"drift(?:s|ing|ed)?|crawl(?:s|ing|ed)?|run(?:s|ning)?|ran|glid(?:e|es|ing|ed)|zoom(?:s|ing|ed)?|"
           r"rac(?:e|es|ing|ed)|cross(?:es|ing|ed)?|swim(?:s|ming)?|swam|march(?:es|ing|ed)?|wander(?:s|ing|ed)?|"
           r"(?:go|goes|going|went|heads?|heading|headed)(?= across| from| to(?: the)? (?:left|right|top|bottom|"
           r"middle|center)| left| right)")
_AROUND = (r"clockwise|different corners?|each corner|every corner|around the (?:canvas|corners|frame|page|edges?|"
           r"picture)|circl(?:es|ing) around|orbit(?:s|ing)?|(?:goes|going|moves|moving|travels|travelling) around")
PATH_RE = re.compile(rf"\b(?:(?P<around>{_AROUND})|(?P<down>{_DOWN})|(?P<up>{_UP})|(?P<bounce>{_BOUNCE})"
                     rf"|(?P<across>{_ACROSS}))\b")
FROM_TO_RE = re.compile(r"\bfrom\s+(?P<a>[^,;.]{2,30}?)\s+(?:to|towards?|into)\s+(?P<b>[^,;.]{2,30}?)"
                        r"(?=[,;.]|$|\s+(?:in|over|and|then|while)\b)")
COLOR_RE = re.compile(
    rf"\b(?P<verb>turns?|turning|turned|becomes?|becoming|became|changes?|changing|changed|goes|going|went|fades?|"
    rf"fading|faded|switch(?:es|ing)?|grows? into|growing into|is now|are now|now)\s+(?:(?:its|their)\s+)?"
    rf"(?:colou?rs?\s+)?(?:from\s+(?:a\s+|an\s+)?(?P<old>{_COLOR})\s+)?(?:(?:to|into)\s+)?(?:a\s+|an\s+)?"
    rf"(?:bright\s+|deep\s+)?(?P<new>{_COLOR})\b(?:\s+(?P<shape>{_SHAPE})\b)?(?!\s+(?:background|backdrop))")
SHAPE_RE = re.compile(rf"\b(?P<verb>(?:turns?|turning|turned|changes?|changing|changed|transforms?|transforming|"
                      rf"transformed|morphs?|morphing|morphed) into|becomes?|becoming|became)\s+(?:a|an)\s+"
                      rf"(?P<shape>{_SHAPE})\b")
# "becomes a big blue one", "turns into a small green square": a change to a thing, of every attribute it names
# (at least two; one alone is COLOR_RE's, SHAPE_RE's or SIZE_TO_RE's)
_SIZE_WORD = r"small|little|tiny|large|big|huge"
CHANGE_TO_RE = re.compile(rf"\b(?P<verb>becomes?|becoming|became|(?:turns?|turning|turned|changes?|changing|changed|"
                          rf"transforms?|transforming|transformed|morphs?|morphing|morphed) into)\s+(?:a|an)\s+"
                          rf"(?:(?P<size>{_SIZE_WORD})\s+)?(?:(?P<color>{_COLOR})\s+)?(?P<shape>{_SHAPE}|one)\b")
GROW_RE = re.compile(r"\b(?:grows?(?! into)|growing(?! into)|grew|grown|growth|gets? (?:bigger|larger)|"
                     r"getting (?:bigger|larger)|got (?:bigger|larger)|expands?|expanding|swells?|swelling|"
                     r"becomes? (?:big|bigger|large|larger|huge))\b")
# "grows into a large red square", "shrinks down to a small one": the size it ends at, not a second object
SIZE_TO_RE = re.compile(rf"\b(?:grows?|growing|grew|shrinks?|shrinking|shrank|shrunk)\s+(?:down\s+|up\s+)?"
                        rf"(?:into|to|until it is|until it's)\s+(?:a|an)\s+(?P<size>small|little|tiny|large|big|huge)"
                        rf"(?:\s+(?:{_COLOR}))?(?:\s+(?:{_SHAPE}|one))?\b")
_BG = "|".join(sorted(BACKGROUND_WORDS, key=len, reverse=True))
# "one day the green square is big", "the next day it is pink": a state said plainly, a change where the object
# had another colour or size before (find_events checks that)
STATE_RE = re.compile(rf"\b(?P<verb>is|was|are|were|looks|looked)\s+(?:now\s+|all\s+|very\s+|really\s+|so\s+)?"
                      rf"(?:(?P<new>{_COLOR})|(?P<size>big|bigger|large|larger|huge|giant|small|smaller|tiny|little))"
                      rf"\b(?!\s+(?:(?:\w+\s+)?(?:{_SHAPE})|background|backdrop|ones?)\b)")
# night and day as a backdrop: "running in the dark", "then it becomes night", "make the time to midnight"
NIGHT_RE = re.compile(r"\b(?:in the dark(?:ness)?|at night|(?:at |to )?midnight|night ?time|"
                      r"(?:becomes?|became|turns?|turned|is|was|gets?|got|goes|went) (?:night|dark)|"
                      r"night (?:falls|fell|comes|came|arrives)|the sun (?:sets|set|goes down|went down))\b")
# "as the background turns from white to black": the backdrop changes over the pages
BACKDROP_RE = re.compile(rf"\b(?:the\s+)?(?:background|backdrop|sky)\s+(?:slowly\s+|gradually\s+)?"
                         rf"(?P<verb>turns?|turning|"
                         rf"changes?|changing|goes|going|fades?|fading|shifts?|shifting|becomes?|becoming)\s+"
                         rf"(?:from\s+(?P<old>{_BG})\s+)?(?:to\s+|into\s+)?(?P<new>{_BG})\b")
SHRINK_RE = re.compile(r"\b(?:shrinks?|shrinking|shrank|shrunk|gets? (?:smaller|tiny)|getting smaller|got smaller|"
                       r"becomes? (?:small|smaller|tiny))\b")
SPLIT_RE = re.compile(rf"\b(?P<verb>becomes?|becoming|became|turns? into|turning into|turned into|splits? into|"
                      rf"splitting into|split into|divides? into|dividing into|multiplies into)\s+(?P<n>two|three|2|3)"
                      rf"\b(?:\s+(?:\w+\s+)?(?:{_SHAPE})\b)?")
RAMP_RE = re.compile(rf"\bmore and more\b(?:\s+(?:\w+\s+)?(?P<shape>{_SHAPE})\b)?(?:\s+(?:appear|arrive|join|come|"
                     rf"show up|pop up)\b)?|\bmultipl(?:y|ies|ying)\b|\bone (?:after another|by one)\b")
_NEW = (rf"(?:an?|another|one more|a second|a third|a new|some)\s+(?:(?:new|little|small|tiny|big|large|huge)\s+)?"
        rf"(?:(?:{_COLOR})\s+)?(?:(?:little|small|tiny|big|large|huge)\s+)?(?:{_SHAPE}|friends?|ones?)\b")
ARRIVE_AFTER_RE = re.compile(rf"\b(?P<new>{_NEW})\s+(?P<verb>arrives?|arriving|appears?|appearing|joins?|joining|"
                             rf"comes? (?:along|in|by|over)|coming (?:along|in|by|over)|shows? up|showing up|"
                             rf"enters?|entering|pops? up|popping up|drops? in|turns? up)\b")
ARRIVE_BEFORE_RE = re.compile(rf"\b(?P<verb>(?:is )?joined by|meets?|meeting|met|finds?|finding|found|befriends?|"
                              rf"makes? friends with|making friends with|visits?|visiting|(?:is )?met by)\s+"
                              rf"(?P<new>{_NEW})")
LEAVE_RE = re.compile(r"\b(?P<verb>leaves|leaving|(?:has|have) left|disappears?|disappearing|vanish(?:es|ing|ed)?|"
                      r"(?:has|have) (?:driven|flown|rolled|walked|run|gone|moved|floated|drifted) (?:away|off)|"
                      r"drove (?:away|off)|(?:goes|going|flies|"
                      r"flying|runs|running|rolls|rolling|walks|walking|floats|floating|drifts|drifting|moves|"
                      r"moving) (?:away|off)|fades? (?:away|out)|fading (?:away|out)|is gone|departs?|departing|"
                      r"exits?|exiting|says? goodbye)\b")
PALETTE_RE = re.compile(r"different colou?rs?|(?:another|a new) colou?r|various colou?rs|every colou?r|"
                        r"all the colou?rs|\brainbow\b|\bin \w+ colou?rs\b")
JOURNEY_RE = re.compile(r"\badventures?\b|\bjourney|\btrip\b|\bvoyage|\bquest\b|\bexplor(?:es|ing|e)\b|\bwander|"
                        r"\bsets? (?:off|out)\b|\blooking for\b|\bsearch(?:es|ing)? for\b|\bin search of\b|"
                        r"\b(?:goes|going|went) (?:on|out)\b")
BOOK_RE = re.compile(r"picture[- ]?books?|story[- ]?books?|children'?s (?:book|story)|\bstory\b|\bfable\b|"
                     r"fairy ?tale|\bcomic|storyboard|tell (?:me )?a story")
STEP_RE = re.compile(r"(?:^|[,;.!]\s*|\s)(?:and\s+)?(?:then|after that|afterwards|after this|finally|lastly|"
                     r"in the end|eventually)\b[\s,:]*|(?:^|[,;.!]\s*)(?:and\s+)?next\b(?! to)[\s,:]*"
                     rf"|(?P<picture>(?:^|[,;.!]\s*)(?:and\s+)?(?:in|on)\s+the\s+(?:next|following|second|third|last|"
                     rf"final)\s+(?:(?!{_PICTURE}\b)\w+\s+)?{_PICTURE}\b[\s,:]*"
                     # "..., and a third where it is red"
                     rf"|(?:,\s*|\s+)and\s+(?=(?:a|an|the)\s+(?:second|third|fourth|fifth|next|last|final)\s+"
                     rf"(?:(?:\w+\s+)?{_PICTURE}|where|in which|showing|with)\b))")
FIRST_RE = re.compile(r"\b(?:first(?:ly)?|at first|to begin with|to start with|in the beginning)\b")
PICTURE_STEP_RE = re.compile(rf"\b(?:an?|another|the next|the following|one more|the last|the final)\s+"
                             rf"(?:\w+\s+)?{_PICTURE}\b|\bone (?:where|in which|with)\b")
BIGGER_RE = re.compile(r"\b(?:bigger|larger|big|large|huge)\b")
SMALLER_RE = re.compile(r"\b(?:smaller|small|tiny|little)\b")
SWAP_RE = re.compile(r"\b(?:swap|switch|trade|exchange|change)(?:s|ped|ped|ed|ing|ping)?\s+(?:their\s+)?"
                     r"(?:places|positions|sides|spots)\b")
GONE_RE = re.compile(r"\b(?:without|removed?|gone|no longer|missing|take (?:away|out)|taken (?:away|out)|deleted?|"
                     r"erased?|get rid of|got rid of)\b")
ADD_RE = re.compile(r"\b(?:add|adds|added|plus|put|place|include|with)\b")
COUNT_TEXT = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}
CONNECTORS = ("Then", "Next", "After that", "Soon", "Later", "A little later", "Now")
# the third person of the user's verb, by stem: "dropping" → "drops", "fell" → "falls"
VERB_STEMS = (("drop", "drops"), ("fall", "falls"), ("fell", "falls"), ("sink", "sinks"), ("sank", "sinks"),
              ("descend", "descends"), ("tumbl", "tumbles"), ("plung", "plunges"), ("ris", "rises"),
              ("rose", "rises"), ("climb", "climbs"), ("fl", "flies"), ("soar", "soars"), ("float", "floats"),
              ("learn", "flies"), ("tak", "takes off"), ("lift", "lifts off"), ("jump", "jumps"), ("hop", "hops"),
              ("leap", "leaps"), ("bounc", "bounces"), ("roll", "rolls"), ("slid", "slides"), ("walk", "walks"),
              ("run", "runs"), ("ran", "runs"), ("travel", "travels"), ("drift", "drifts"), ("crawl", "crawls"),
              ("glid", "glides"), ("zoom", "zooms"), ("rac", "races"), ("swim", "swims"), ("swam", "swims"),
              ("march", "marches"), ("wander", "wanders"), ("head", "heads"), ("come", "comes"), ("cam", "comes"),
              ("go", "goes"), ("went", "goes"), ("leav", "leaves"), ("disappear", "disappears"),
              ("vanish", "vanishes"), ("fad", "fades"), ("is gone", "is gone"), ("depart", "departs"),
              ("exit", "exits"), ("say", "says"), ("arriv", "arrives"), ("appear", "appears"), ("join", "joins"),
              ("show", "shows up"), ("enter", "enters"), ("pop", "pops up"), ("turn", "turns up"),
              ("meet", "meets"), ("met", "meets"), ("find", "finds"), ("found", "finds"), ("befriend", "befriends"),
              ("mak", "makes friends with"), ("visit", "visits"))


def _third(verb: str, default: str) -> str:
    """The user's verb in the third person present, with its particle: "flying away" → "flies away"."""
    words = verb.split()
    if not words:
        return default
    if verb.startswith("is joined") or verb.startswith("joined by") or "met by" in verb:
        return "meets"
    head = next((v for stem, v in VERB_STEMS if words[0].startswith(stem)), default)
    particle = [w for w in words[1:] if w in ("up", "down", "away", "off", "out", "along", "in", "by", "over")]
    return " ".join([head] + particle) if " " not in head else head


# ----------------------------------------------------------------------------- positions
def interpolate(a: str, b: str, n: int) -> list[str]:
    """n cells on the straight line from cell a to cell b, both included."""
    (r0, c0), (r1, c1) = POSITION_CELL[a], POSITION_CELL[b]
    out = []
    for i in range(n):
        f = i / max(1, n - 1)
        out.append(POSITIONS[int(r0 + f * (r1 - r0) + 0.5)][int(c0 + f * (c1 - c0) + 0.5)])
    return out


def opposite(cell: str) -> str:
    r, c = POSITION_CELL[cell]
    return "right" if cell == "center" else POSITIONS[2 - r][2 - c]


def _position(segment: str) -> str | None:
    """The cell a fragment names: "the top of the frame" → top; bare "left" and "top" count too."""
    seg = segment.strip()
    return sc.find_position(seg if seg.startswith("the ") else "the " + seg)[0]


TO_TEXT = {"center": "the middle"}


def _to(cell: str) -> str:
    return TO_TEXT.get(cell, "the " + cell.replace("-", " "))


# ----------------------------------------------------------------------------- finding events
def _clause_end(text: str, at: int) -> int:
    m = CLAUSE_END.search(text, at)
    return m.start() if m else len(text)


def _who(text: str, at: int, ments: list[sc.Mention]) -> sc.Thing | None:
    """The object named just before `at` in the same clause (the subject of the verb there), else None."""
    before = [m for m in ments if m.end <= at]
    if not before:
        return None
    m = before[-1]
    between = text[m.end:at]
    return None if CLAUSE_END.search(between) or re.search(r"\b(?:it|they|he|she)\b", between) else m.thing


_SEG_END = re.compile(r"\s+(?:in|over|while|on|with|against|set|and|along|across|at the same)\s+|$")


def _cell_at(window: str, at: int, stop: int | None = None) -> tuple[str | None, int]:
    """The cell named from `at` on (up to `stop`, or to a word that starts another phrase: "in 3 frames", "on a
    black background"), and where that phrase ends."""
    seg_end = _SEG_END.search(window, at).start() if stop is None else stop
    return _position(window[at:seg_end]), seg_end


def _path(text: str, m: re.Match) -> Event:
    """A path verb and the from/to phrase after it, in its clause."""
    kind = next(k for k in ("around", "down", "up", "bounce", "across") if m.group(k))
    window = text[m.end():_clause_end(text, m.end())]
    a = b = None
    end = 0
    fr = re.search(r"\bfrom\s+", window)
    to = re.search(r"\b(?:to|towards?|into|onto|until)\s+", window[fr.end():] if fr else window)
    if fr:
        a, end = _cell_at(window, fr.end(), fr.end() + to.start() if to else None)
    if to:
        at = (fr.end() if fr else 0) + to.end()
        b, e = _cell_at(window, at)
        end = e if b else end
    if not (a or b) and (lr := re.match(r"\s*(left|right)(?:wards?)?\b", window)):  # "rolls left"
        b, end = lr.group(1), lr.end()
    if kind == "across" and (ac := re.match(r"\s*across\b", window)):
        end = max(end, ac.end())
    if lane := LANE_RE.search(window):  # "rolls along the bottom from right to left": the path keeps to that row
        a, b = _in_lane(kind, a, b, lane.group("side"))
        end = max(end, lane.end())
    return Event("path", m.start(), m.end() + (end if a or b or kind == "across" else 0), m.group(0), None,
                 (kind, a, b))


LANE_RE = re.compile(r"\b(?:along|across|over|on|at|by|near|down|up)\s+the\s+(?:very\s+)?(?P<side>top|bottom|upper|"
                     r"lower|left|right)(?:[\s-]+hand)?(?:\s+(?:edge|side|row|column|border|part|half))?"
                     r"(?:\s+of\s+the\s+(?:frame|page|picture|image|canvas|panel|scene))?(?!\s*(?:left|right|corner))\b")


def _in_lane(kind: str, a: str | None, b: str | None, side: str) -> tuple[str | None, str | None]:
    """The ends of a path that keeps to one edge: a top or bottom lane fixes the row of a sideways path, a left or
    right lane the column of an upward or downward one."""
    side = {"upper": "top", "lower": "bottom"}.get(side, side)
    rows = side in ("top", "bottom")
    fixed = {"top": 0, "bottom": 2, "left": 0, "right": 2}[side]
    ra, ca = POSITION_CELL[a] if a else (None, None)
    rb, cb = POSITION_CELL[b] if b else (None, None)
    vertical = kind in ("down", "up") or (a and b and ca == cb and ra != rb)
    if rows == bool(vertical):  # a lane along the path's own direction says nothing of the other axis
        return a, b
    if a is None and b is None:
        a, b = ("left", "right") if rows else (("top", "bottom") if kind != "up" else ("bottom", "top"))
    elif a is None or b is None:  # one end named: the path starts (or ends) at the far end of the lane
        r, c = POSITION_CELL[a or b]
        far = POSITIONS[r][2 - c if c != 1 else 0] if rows else POSITIONS[2 - r if r != 1 else 0][c]
        a, b = (far, b) if a is None else (a, far)

    def put(cell: str | None) -> str | None:
        if cell is None:
            return None
        r, c = POSITION_CELL[cell]
        return POSITIONS[fixed][c] if rows else POSITIONS[r][fixed]
    return put(a), put(b)


def _newcomer(text: str, m: re.Match, hero: sc.Thing | None) -> tuple[sc.Thing | None, bool]:
    """The object an arrival brings, and whether it is one more of the hero ("a second circle", "another one")."""
    phrase = m.group("new")
    more = bool(re.match(r"(?:another|one more|a second|a third)\b", phrase))
    got = sc.mentions(text[m.start("new"):_clause_end(text, m.end("new"))])
    t = got[0].thing if got and got[0].start < len(phrase) else None
    if t is None:
        if hero is None:
            return None, more
        if re.search(r"\bfriends?\b", phrase):  # "meets a friend": the teller makes one up
            return _friend(hero), False
        t = replace(hero, position=None, count=1)
        return t, True
    if more and hero is not None and t.shape == hero.shape:
        return replace(t, color=t.color or hero.color, size=t.size or hero.size), True
    return t, False


def find_events(text: str) -> list[Event]:
    """Every event in (normalised) text, in order, none overlapping (the first finder to claim a span keeps it)."""
    ments = sc.mentions(text)
    hero = ments[0].thing if ments else None
    found: list[Event] = []

    def free(a: int, b: int) -> bool:
        return not any(a < e.end and e.start < b for e in found)

    for m in LEAVE_RE.finditer(text):
        if free(m.start(), m.end()):
            one = re.search(r"\b(?:one|1|any) of (?:them|the \w+)\s+$", text[:m.start()])  # one of several goes
            found.append(Event("leave", m.start(), m.end(), m.group("verb"), _who(text, m.start(), ments),
                               ("one",) if one else ()))
    for rx, side in ((ARRIVE_AFTER_RE, "after"), (ARRIVE_BEFORE_RE, "before")):
        for m in rx.finditer(text):
            if free(m.start(), m.end()):
                thing, more = _newcomer(text, m, hero)
                if thing is None:  # "meets a friend" before anyone is named: no one to arrive
                    continue
                who = _who(text, m.start(), ments) if side == "before" else None
                stop = m.end() if side == "after" else m.end("new")
                if thing.position:  # "arrives at the top right": the cell goes with it
                    _, _, cell_end = sc.find_position(text[stop:_clause_end(text, stop)])
                    stop += max(0, cell_end)
                found.append(Event("arrive", m.start(), stop, m.group("verb"), who, (thing, more, side)))
    for m in SPLIT_RE.finditer(text):
        if free(m.start(), m.end()):
            found.append(Event("split", m.start(), m.end(), m.group("verb"), _who(text, m.start(), ments),
                               (_NUM[m.group("n")],)))
    for m in RAMP_RE.finditer(text):
        if free(m.start(), m.end()):
            shape = sc.SHAPE_WORDS.get(m.group("shape") or "")
            found.append(Event("ramp", m.start(), m.end(), "appear", sc.Thing(shape) if shape else None))
    for m in CHANGE_TO_RE.finditer(text):
        shape = sc.SHAPE_WORDS.get(m.group("shape"))
        if sum(bool(v) for v in (m.group("size"), m.group("color"), shape)) < 2 or not free(m.start(), m.end()):
            continue
        who = _who(text, m.start(), ments)
        if m.group("color") or shape:
            found.append(Event("color", m.start(), m.end(), m.group("verb"), who,
                               (None, sc.COLOR_WORDS.get(m.group("color") or ""), shape)))
        if m.group("size"):
            end = "small" if m.group("size") in ("small", "little", "tiny") else "large"
            found.append(Event("size", m.start(), m.end(), m.group("verb"), who,
                               ("large" if end == "small" else "small", end)))
    for m in COLOR_RE.finditer(text):
        if free(m.start(), m.end()):
            shape = sc.SHAPE_WORDS.get(m.group("shape") or "")
            found.append(Event("color", m.start(), m.end(), m.group("verb"), _who(text, m.start(), ments),
                               (sc.COLOR_WORDS.get(m.group("old") or ""), sc.COLOR_WORDS[m.group("new")], shape)))
    for m in STATE_RE.finditer(text):
        subject = _who(text, m.start(), ments) or hero
        # "the red circle was huge": the circle as the story first named it, with the size it had then
        subject = next((x.thing for x in ments if x.thing.shape == subject.shape
                        and subject.color in (None, x.thing.color)), subject) if subject else None
        if subject is None or not free(m.start(), m.end()):
            continue
        if m.group("new") and subject.color and sc.COLOR_WORDS[m.group("new")] != subject.color:
            found.append(Event("color", m.start(), m.end(), "turns", _who(text, m.start(), ments),
                               (subject.color, sc.COLOR_WORDS[m.group("new")], None)))
        elif m.group("size"):
            size = "small" if m.group("size") in ("small", "smaller", "tiny", "little") else "large"
            if subject.size and subject.size != size:
                found.append(Event("size", m.start(), m.end(), "grows" if size == "large" else "shrinks",
                                   _who(text, m.start(), ments), (subject.size, size)))
    for m in NIGHT_RE.finditer(text):
        if free(m.start(), m.end()):
            found.append(Event("background", m.start(), m.end(), "turns", None, ("black", None)))
    for m in SHAPE_RE.finditer(text):
        if free(m.start(), m.end()):
            found.append(Event("color", m.start(), m.end(), m.group("verb"), _who(text, m.start(), ments),
                               (None, None, sc.SHAPE_WORDS[m.group("shape")])))
    for m in BACKDROP_RE.finditer(text):
        if free(m.start(), m.end()):
            found.append(Event("background", m.start(), m.end(), m.group("verb"), None,
                               (BACKGROUND_WORDS[m.group("new")], BACKGROUND_WORDS.get(m.group("old") or ""))))
    for m in SIZE_TO_RE.finditer(text):
        if free(m.start(), m.end()):
            end = "small" if m.group("size") in ("small", "little", "tiny") else "large"
            found.append(Event("size", m.start(), m.end(), m.group(0).split()[0], _who(text, m.start(), ments),
                               ("large" if end == "small" else "small", end)))
    for rx, sizes in ((GROW_RE, ("small", "large")), (SHRINK_RE, ("large", "small"))):
        for m in rx.finditer(text):
            said = any(e.kind == "size" and e.value == sizes for e in found)  # "growth stages ... grows into"
            if free(m.start(), m.end()) and not said:
                found.append(Event("size", m.start(), m.end(), m.group(0), _who(text, m.start(), ments), sizes))
    around = re.search(rf"\b(?:{_AROUND})\b", text)
    if around and free(around.start(), around.end()):  # before "moving": "moving clockwise" goes around
        found.append(Event("path", around.start(), around.end(), "moves", None, ("around", None, None)))
    for m in PATH_RE.finditer(text):
        if free(m.start(), m.end()) and not any(e.kind == "path" for e in found):
            e = _path(text, m)
            if free(e.start, e.end):
                found.append(replace(e, who=_who(text, m.start(), ments)))
    if not any(e.kind == "path" for e in found):  # "a square, from the top left to the bottom right"
        for m in FROM_TO_RE.finditer(text):
            a, b = _position(m.group("a")), _position(m.group("b"))
            if a and b and free(m.start(), m.end()):
                found.append(Event("path", m.start(), m.end(), "moves", None, ("across", a, b)))
                break
    return sorted(found, key=lambda e: e.start)


# ----------------------------------------------------------------------------- steps
_LABEL_NOUN = r"(?:image|picture|panel|frame|page|step|scene|shot|slide|photo|drawing|caption)"
# "Image 1: ... Image 2: ...", "First picture: ...", "Start image: ... End image: ...", "the second image with ..."
LABEL_RE = re.compile(rf"(?:^|(?<=[\s,;.!:(]))(?:(?:{_LABEL_NOUN}\s*#?\s*(?:[1-9]|one|two|three|four|five|six)|"
                      rf"(?:the\s+)?(?:first|second|third|fourth|fifth|sixth|last|final|start(?:ing)?|end(?:ing)?|"
                      rf"1st|2nd|3rd|4th)\s+{_LABEL_NOUN})\s*(?::|[-–]\s|(?=with\b|shows?\b|showing\b))"
                      rf"|(?:page|panel|frame|step|scene|slide)\s+(?:[1-9]|one|two|three|four|five|six),"  # "page two, ..."
                      rf"|\(?(?P<num>[1-9])[).](?=\s))\s*")  # numbered captions, too: "1) ..., 2) ..."


def labelled_parts(text: str) -> list[str]:
    """The pictures an instruction labels one by one ("Image 1: a circle at the top left. Image 2: at the top
    right."), each its text; [] when it labels fewer than two. Words before the first label that name objects
    belong to the first picture."""
    marks = list(LABEL_RE.finditer(text))
    nums = [m.group("num") for m in marks if m.group("num")]
    if nums and [int(k) for k in nums] != list(range(1, len(marks) + 1)):  # "1) 2) 3)", not "a 3. place"
        return []
    if len(marks) < 2:
        return []
    ends = [m.start() for m in marks[1:]] + [len(text)]
    parts = [re.sub(r"(?:[\s,;.]+(?:and|then))?[\s,;.]*$", "", text[m.end():e]).strip(" ,;.")
             for m, e in zip(marks, ends)]
    before = text[:marks[0].start()].strip(" ,;.:")
    if sc.mentions(before) and not sc.mentions(parts[0]):
        parts[0] = f"{before} {parts[0]}"
    return parts if all(parts) else []


def steps(text: str) -> list[str]:
    """The instruction's steps ("draw X, then a second picture where ...", "first ..., then ..., finally ..."), or
    [text] when it is one scene (a later part that only names more objects is part of the same picture)."""
    labelled = labelled_parts(text)
    if labelled:
        return labelled
    parts, at, pictures = [], 0, False
    for m in STEP_RE.finditer(text):
        if m.start() > at:
            parts.append(text[at:m.start()])
        at = m.end()
        pictures |= bool(m.group("picture"))  # "...; in the next picture ...": a page per step, whatever it says
    parts.append(text[at:])
    parts = [p.strip(" ,;.:") for p in parts if p.strip(" ,;.:")]
    if len(parts) < 2:
        return [text]
    later = parts[1:]
    if pictures or FIRST_RE.search(parts[0]) or any(PICTURE_STEP_RE.search(p) or _step_events(p) for p in later):
        return parts
    return [text]


def _definite(text: str, m: sc.Mention) -> bool:
    """ "the triangle", "the same square", "this circle": words that point at an object already there."""
    return bool(re.search(r"\b(?:the|same|this|that|its|their)\s+$", text[:m.start]) or
                re.match(r"(?:the|same)\s", text[m.start:m.end]))


def _backref(text: str, m: sc.Mention, earlier: list[sc.Mention]) -> bool:
    """A mention of an object named before it ("a triangle ... the triangle leaves")."""
    return _definite(text, m) and any(e.thing.shape == m.thing.shape for e in earlier)


def _step_events(part: str) -> list[Event]:
    """The events of one step: the finders' events, or the step's plain words ("where it is blue", "now at the top
    right", "bigger", "without the triangle") when it names no new object."""
    events = find_events(part)
    if events:
        pos, start, _ = sc.find_position(part)
        if pos and not any(e.kind == "path" or e.start <= start < e.end for e in events):
            # "the orange square at the bottom right, now cyan": the place it is in now, too
            events.append(Event("path", 0, len(part), "moves", None, ("across", None, pos)))
        return events
    ments = sc.mentions(part)
    new = [m for m in ments if not _definite(part, m)]  # a step's "the square" is the one of the steps before
    who = ments[0].thing if ments else None
    if new and ADD_RE.search(part):
        return [Event("arrive", 0, len(part), "appears", None, (new[0].thing, False, "after"))]
    if new:
        return []
    spans = [(m.start, m.end) for m in ments]
    colors = [sc.COLOR_WORDS[w.group(0)] for w in re.finditer(r"[a-z]+", part) if w.group(0) in sc.COLOR_WORDS
              and not any(a <= w.start() < b for a, b in spans) and not re.match(r"\s+(?:background|backdrop)",
                                                                               part[w.end():])]
    out = []
    if SWAP_RE.search(part):  # "another photo where they have swapped places"
        return [Event("swap", 0, len(part), "swap", None)]
    if re.search(r"\b(?:one|1|any) of (?:them|the \w+)\b", part) and (GONE_RE.search(part)
                                                                     or LEAVE_RE.search(part)):
        return [Event("leave", 0, len(part), "leaves", who, ("one",))]  # "one of them has driven away"
    if GONE_RE.search(part) and ments:
        return [Event("leave", 0, len(part), "leaves", who)]
    if colors:
        out.append(Event("color", 0, len(part), "turns", who, (None, colors[-1], None)))
    pos = sc.find_position(part)[0]
    if pos:
        out.append(Event("path", 0, len(part), "moves", who, ("across", None, pos)))
    if BIGGER_RE.search(part) or SMALLER_RE.search(part):
        out.append(Event("size", 0, len(part), "grows", who, ("small", "large") if BIGGER_RE.search(part)
                         else ("large", "small")))
    bg = sc.find_background(part)
    if bg:
        out.append(Event("background", 0, len(part), "", None, (bg,)))
    return out


def setting(text: str) -> str:
    """The text that says how the story starts: later steps and every event phrase blanked out."""
    parts = steps(text)
    if len(parts) > 1:
        text = parts[0]
    chars = list(text)
    ments = sc.mentions(text)
    for e in find_events(text):
        if e.kind in ("path", "arrive", "ramp", "color", "size", "split", "background"):
            chars[e.start:e.end] = " " * (e.end - e.start)
        if e.kind == "path":  # "flies over a green triangle from left to right": the triangle stays in the story
            kept = [(m.start, m.end) for m in ments if e.start < m.start and m.end <= e.end]
            kept += [b.span() for b in re.finditer(rf"\b(?:{_BG})\s+(?:background|backdrop)\b", text[:e.end])
                     if b.start() >= e.start]  # "hops across the black background"
            for a, b in kept:
                chars[a:b] = text[a:b]
    return sc.normalise("".join(chars))


def cast(text: str) -> tuple[str, list[sc.Mention]]:
    """The setting, and the objects the story starts with: what it names, less the newcomers of events and the
    mentions of an object already named ("the triangle leaves"). All mentions when that leaves none."""
    where = setting(text)
    ments = sc.mentions(where)
    kept = [m for k, m in enumerate(ments) if not _backref(where, m, ments[:k])]
    if not kept:
        return sc.normalise(text), sc.mentions(text)
    return where, kept


# ----------------------------------------------------------------------------- applying events
def _index(scene: sc.Scene, who: sc.Thing | None) -> int | None:
    """The object an event happens to: the one its words name (shape, then colour), else the hero."""
    if not scene.things:
        return None
    if who is None:
        return 0
    hits = [i for i, t in enumerate(scene.things) if t.shape == who.shape and who.color in (None, t.color)]
    hits = hits or [i for i, t in enumerate(scene.things) if t.shape == who.shape]
    return hits[0] if hits else 0


def _set(scene: sc.Scene, i: int, **kw) -> sc.Scene:
    things = list(scene.things)
    things[i] = replace(things[i], **kw)
    return replace(scene, things=tuple(things))


def _name(scene: sc.Scene, i: int) -> str:
    """How a page sentence names an object: "it" when it is alone, else by colour and shape."""
    t = scene.things[i]
    if len(scene.things) == 1:
        return "they" if t.count > 1 else "it"
    head = " ".join(w for w in (t.color, t.shape + ("s" if t.count > 1 else "")) if w)
    return f"the {head}"


def _bare(t: sc.Thing) -> str:
    return sc.thing_text(replace(t, position=None))


def _before(base: sc.Scene, events: list[Event]) -> sc.Scene:
    """The first page: what the events change from, where the instruction leaves it open ("grows": small)."""
    scene = base
    for e in events:
        if e.kind == "background":  # "the background turns from white to black": white first
            old = e.value[1] if len(e.value) > 1 else None
            scene = replace(scene, background=old or scene.background)
            continue
        i = _index(scene, e.who)
        if i is None:
            continue
        t = scene.things[i]
        if e.kind == "color" and e.value[0] and t.color is None:
            scene = _set(scene, i, color=e.value[0])
        elif e.kind == "size" and t.size is None:
            scene = _set(scene, i, size=e.value[0])
        elif e.kind in ("split", "ramp"):
            scene = _set(scene, i, count=1)
    return scene


def _apply(scene: sc.Scene, e: Event) -> tuple[sc.Scene, str]:
    """The scene after one change event, and the clause that tells it ("it turns blue")."""
    i = _index(scene, e.who)
    if e.kind == "swap" and len(scene.things) >= 2:
        a, b = scene.things[0], scene.things[1]
        scene = _set(_set(scene, 0, position=b.position), 1, position=a.position)
        return scene, f"{_name(scene, 0)} and {_name(scene, 1)} swap places"
    if e.kind == "background":
        return replace(scene, background=e.value[0]), f"the background turns {e.value[0]}"
    if e.kind == "arrive":
        thing, more, side = e.value
        if more and i is not None and scene.things[i].shape == thing.shape:
            t = scene.things[i]
            ordinal = ("second", "third")[min(t.count, 2) - 1]
            who = _name(scene, i)
            scene = _set(scene, i, count=min(3, t.count + 1), position=None)
            return scene, f"a {ordinal} {t.shape} {_third(e.verb, 'joins')}" + (
                f" {'them' if who == 'they' else 'it'}" if re.match(r"join", e.verb) else "")
        clause = (f"{_name(scene, i)} {_third(e.verb, 'meets')} {sc.thing_text(thing)}" if side == "before" and
                  i is not None else f"{sc.thing_text(thing)} {_third(e.verb, 'arrives')}")
        return sc.add(scene, thing), clause
    if i is None:
        return scene, ""
    t, who = scene.things[i], _name(scene, i)
    if e.kind == "leave":
        if e.value == ("one",) and t.count > 1:  # one of several goes; the rest stay
            left = _set(scene, i, count=t.count - 1)
            return left, f"one of the {t.shape}s leaves"
        return replace(scene, things=scene.things[:i] + scene.things[i + 1:]), f"{who} {_third(e.verb, 'leaves')}"
    if e.kind == "color":
        _, color, shape = e.value
        after = replace(t, color=color or t.color, shape=shape or t.shape)
        what = f"turns into {_bare(replace(after, size=None, count=1))}" if shape else f"turns {color}"
        return _set(scene, i, color=after.color, shape=after.shape), f"{who} {what}"
    if e.kind == "size":
        grow = e.value[1] == "large"
        return _set(scene, i, size=e.value[1]), f"{who} {'grows bigger' if grow else 'shrinks'}"
    if e.kind == "split":
        after = replace(t, count=e.value[0], position=None)
        return _set(scene, i, count=e.value[0], position=None), f"{who} becomes {_bare(after)}"
    if e.kind == "path":  # a step's path: straight to where it ends
        end = _route(e, t.position, 2)[-1]
        return _set(scene, i, position=end), f"{who} {_third(e.verb, 'moves')} to {_to(end)}"
    return scene, ""


def _route(e: Event, start: str | None, n: int) -> list[str]:
    """The hero's cell on each of n pages along a path event."""
    kind, a, b = e.value
    corners = ["top-left", "top-right", "bottom-right", "bottom-left"]
    if kind == "around":
        first = corners.index(start) if start in corners else 0
        return [corners[(first + i) % 4] for i in range(n)]
    r, c = POSITION_CELL[start] if start else (1, 1)
    if kind == "bounce" and not (a or b):
        return [POSITIONS[2][c] if i % 2 == 0 else POSITIONS[0][c] for i in range(n)]
    if a is None and b is not None:
        a = start if start and start != b else opposite(b)
    elif a is not None and b is None:
        ar, ac = POSITION_CELL[a]
        b = POSITIONS[2][ac] if kind == "down" else POSITIONS[0][ac] if kind == "up" else opposite(a)
    elif a is None:
        if kind == "down":
            a, b = POSITIONS[0][c], POSITIONS[2][c]
        elif kind == "up":
            a, b = POSITIONS[2][c], POSITIONS[0][c]
        else:
            a, b = (POSITIONS[r][2], POSITIONS[r][0]) if c == 2 else (POSITIONS[r][0], POSITIONS[r][2])
    return interpolate(a, b, n)


# ----------------------------------------------------------------------------- telling
def _sentence(k: int, n: int, clauses: list[str]) -> str:
    """ "Then it drops to the middle and turns blue." A clause that repeats the subject before it drops it."""
    if not clauses:
        return ""
    words = [clauses[0]]
    for prev, c in zip(clauses, clauses[1:]):
        subj = prev.split(" ")[0] if prev.startswith(("it ", "they ")) else None
        same = subj and c.startswith(subj + " ")
        words.append(("and " + c[len(subj) + 1:]) if same else ("and " + c))
    body = " ".join(words)
    lead = "At last" if k == n - 1 and n > 2 else CONNECTORS[(k - 1) % len(CONNECTORS)]
    return f"{lead} {body}."


def _stay(scene: sc.Scene, first: sc.Scene) -> str:
    """The clause of a page where nothing changes: still as on the first page, or staying as it has become."""
    if not scene.things:
        return "all is quiet"
    t, who = scene.things[0], _name(scene, 0)
    s = "" if who == "they" else "s"
    if t.position:
        return f"{who} stay{s} {sc.POSITION_TEXT[t.position]}"
    was = first.things[0] if first.things else t
    for attr in ("size", "color"):
        if getattr(t, attr) and getattr(t, attr) != getattr(was, attr):
            return f"{who} stay{s} {getattr(t, attr)}"
    for attr in ("size", "color"):
        if getattr(t, attr):
            return f"{who} {'are' if who == 'they' else 'is'} still {getattr(t, attr)}"
    return f"{who} wait{s} a little"


def _intro(scene: sc.Scene, path: bool, book: bool, journey: bool = False) -> str:
    if not scene.things:
        return "The page is empty."
    hero = scene.things[0]
    name = _bare(hero)
    name = name[0].upper() + name[1:]
    if journey and hero.position:
        if len(scene.things) > 1:
            others = sc.scene_text(replace(scene, things=scene.things[1:], background=None))
            return f"{name} sets off from {_to(hero.position)} to visit {others}."
        return f"{name} sets off from {_to(hero.position)}."
    if path and hero.position:
        return f"{name} starts {sc.POSITION_TEXT[hero.position]}."
    said = sc.scene_text(replace(scene, background=None))
    many = hero.count > 1  # "there are two circles"
    return (f"Once upon a time there {'were' if many else 'was'} {said}." if book
            else f"First there {'are' if many else 'is'} {said}.")


def _unique(pages: list[Page]) -> tuple[Page, ...]:
    """The pages with no sentence said twice (the connectors cycle, so a long book can repeat a quiet page)."""
    said: list[str] = []
    for p in pages:
        said.append(p.happens[:-1] + " once more." if p.happens in said else p.happens)
    return tuple(replace(p, happens=h) for p, h in zip(pages, said))


def _friend(hero: sc.Thing) -> sc.Thing:
    """The friend a journey meets: the next shape and the colour across the palette from the hero's."""
    colors = list(COLORS)
    color = colors[(colors.index(hero.color) + 4) % len(colors)] if hero.color else colors[0]
    return sc.Thing(SHAPES[(SHAPES.index(hero.shape) + 1) % len(SHAPES)], color, hero.size)


JOURNEY_ROUTE = ("bottom-left", "left", "center", "right", "top-right")  # a winding climb across the page
VISIT_ROUTE = ("bottom-left", "left", "center")  # towards the others, who wait on the right
WAITING_CELLS = ("right", "top-right", "bottom-right")
NEAR_CELLS = ("top", "bottom", "top-left", "bottom-right", "top-right", "bottom-left", "left", "right")


def _journey(base: sc.Scene, n: int) -> list[Page]:
    """An open-ended story: the hero crosses the page; alone, it meets a friend halfway and goes on."""
    hero = base.things[0]
    others = list(base.things[1:])
    if hero.position:
        route = [hero.position, "center", opposite(hero.position)] if hero.position != "center" else ["center", "right"]
    else:
        route = list(VISIT_ROUTE if others else JOURNEY_ROUTE)
    cells = [route[int(i * (len(route) - 1) / max(1, n - 1) + 0.5)] for i in range(n)]
    free = [c for c in WAITING_CELLS if c not in cells]
    others = [o if o.position or o.count > 1 else replace(o, position=free[k % len(free)])
              for k, o in enumerate(others)]
    meet = n // 2 if n >= 3 and not others else None
    friend = None
    if meet is not None:
        # the friend waits diagonally from the hero or farther, never beside it: a region redrawn around one of
        # two neighbours has too little room left (the squashed squares of the first try)
        def gap(p: str, q: str) -> float:
            (r0, c0), (r1, c1) = POSITION_CELL[p], POSITION_CELL[q]
            return ((r0 - r1) ** 2 + (c0 - c1) ** 2) ** 0.5

        roomy = [p for p in NEAR_CELLS if min(gap(p, q) for q in cells[meet:]) > 1.4]
        spot = min(roomy or [p for p in NEAR_CELLS if p not in cells[meet:]], key=lambda p: gap(p, cells[meet]))
        friend = replace(_friend(hero), position=spot)
    pages = []
    for i, cell in enumerate(cells):
        things = [replace(hero, position=cell)] + others + ([friend] if friend and i >= meet else [])
        scene = replace(base, things=tuple(things))
        if i == 0:
            text = _intro(scene, True, True, journey=True)
        else:
            who = "it" if len(pages[-1].scene.things) == 1 else "the " + " ".join(w for w in (hero.color, hero.shape)
                                                                                      if w)
            moved = cell != cells[i - 1]
            if i == n - 1:
                clauses = [f"{who} reaches {_to(cell)}" if moved else f"{who} rests {sc.POSITION_TEXT[cell]}"]
            else:
                up = POSITION_CELL[cell][0] < POSITION_CELL[cells[i - 1]][0]
                clauses = [f"{who} {'climbs' if up else 'travels'} to {_to(cell)}" if moved else
                           f"{who} rests {sc.POSITION_TEXT[cell]}"]
            if i == meet:
                clauses.append(f"{who} meets {sc.thing_text(friend)}")
            text = _sentence(i, n, clauses)
        pages.append(Page(scene, text))
    return pages


def _spread(base: sc.Scene, events: list[Event], n: int, book: bool, palette: list[str]) -> list[Page]:
    """No steps: a path spans the pages, each change happens once, the changes spaced evenly."""
    path = next((e for e in events if e.kind == "path"), None)
    ramp = next((e for e in events if e.kind == "ramp"), None)
    changes = [e for e in events if e.kind not in ("path", "ramp")]
    at = [min(n - 1, max(1, int((j + 1) * n / (len(changes) + 1) + 0.5))) for j in range(len(changes))]
    scene = _before(base, changes + ([ramp] if ramp else []))
    hero = _index(scene, path.who if path else None) if scene.things else None
    route = _route(path, scene.things[hero].position, n) if path and hero is not None else None
    pages: list[Page] = []
    for i in range(n):
        before = scene
        clauses = []
        if i > 0:
            for e, k in zip(changes, at):
                if k == i:
                    scene, clause = _apply(scene, e)
                    clauses.append(clause)
        if route and scene.things:
            h = _index(scene, path.who)
            if scene.things[h].count == 1:
                if i > 0 and scene.things[h].position != route[i]:
                    verb = _third(path.verb, "moves")
                    last = i == n - 1 and n > 2
                    clauses.append(f"{_name(scene, h)} " + (f"lands {sc.POSITION_TEXT[route[i]]}" if last and
                                                             path.value[0] == "down" else f"{verb} to {_to(route[i])}"))
                scene = _set(scene, h, position=route[i])
        if ramp and scene.things:
            h = _index(scene, ramp.who)
            want = 1 + int(i * 2 / max(1, n - 1) + 0.5) if n > 1 else 1
            t = scene.things[h]
            if want != t.count:
                clauses.append(f"another {t.shape} appears" if want == t.count + 1 else
                               f"more {t.shape}s appear")
                scene = _set(scene, h, count=want, position=None)
        if palette and scene.things:
            color = palette[i % len(palette)]
            if i > 0 and scene.things[0].color != color:
                clauses.append(f"{_name(scene, 0)} turns {color}")
            scene = _set(scene, 0, color=color)
        if i == 0:
            text = _intro(scene, bool(route), book)
        else:
            text = _sentence(i, n, [c for c in clauses if c] or [_stay(before, pages[0].scene)])
        pages.append(Page(scene, text))
    return pages


def _keyframes(base: sc.Scene, beats: list[list[Event]], fresh: list[sc.Scene | None], n: int,
               book: bool) -> list[Page]:
    """Steps: the first page is the setting, each step one page derived from the one before (a step that names
    a new scene is drawn afresh); with more pages than steps, the pages between keyframes move the hero on."""
    scene = _before(base, [e for beat in beats for e in beat])
    keys = [Page(scene, _intro(scene, False, book))]
    for k, (beat, new) in enumerate(zip(beats, fresh), start=1):
        if new is not None:
            scene = new
            keys.append(Page(scene, "", derived=False))
            continue
        clauses = []
        for e in beat:
            scene, clause = _apply(scene, e)
            clauses.append(clause)
        keys.append(Page(scene, " | ".join(c for c in clauses if c), derived=True))
    m = len(keys)
    if n <= m:
        picks = [int(j * (m - 1) / max(1, n - 1) + 0.5) for j in range(n)] if n < m else list(range(m))
        chosen = [keys[j] for j in picks]
    else:
        slots = [int(j * (n - 1) / (m - 1) + 0.5) for j in range(m)]
        chosen = []
        for j in range(m - 1):
            chosen.append(keys[j])
            a, b = keys[j].scene, keys[j + 1].scene
            gap = slots[j + 1] - slots[j]
            pa = a.things[0].position if a.things else None
            pb = b.things[0].position if b.things else None
            cells = interpolate(pa, pb, gap + 1) if pa and pb and keys[j + 1].derived else [pa] * (gap + 1)
            # on its way, not there yet: the keyframe itself arrives (neighbouring cells have nothing between)
            cells = [pa] + [c if c != pb else pa for c in cells[1:-1]] + [pb]
            for s in range(1, gap):
                mid = _set(a, 0, position=cells[s]) if a.things and cells[s] else a
                chosen.append(Page(mid, "~", derived=True))
        chosen.append(keys[-1])
    pages = []
    for i, p in enumerate(chosen):
        if i == 0:
            pages.append(p)
            continue
        prev = pages[-1].scene
        if p.happens == "~":  # between keyframes: the hero on its way
            moved = p.scene.things and prev.things and p.scene.things[0].position != prev.things[0].position
            clause = f"{_name(prev, 0)} moves to {_to(p.scene.things[0].position)}" if moved else \
                _stay(prev, pages[0].scene)
            text = _sentence(i, len(chosen), [clause])
        elif not p.derived:
            text = _sentence(i, len(chosen), [f"we see {sc.scene_text(replace(p.scene, background=None))}"])
        else:
            text = _sentence(i, len(chosen), [c for c in p.happens.split(" | ") if c] or [_stay(prev, pages[0].scene)])
        pages.append(replace(p, happens=text))
    return pages


def _palette(text: str, base: sc.Scene) -> list[str]:
    """The colours of "each a different colour": the ones the text names apart from objects, else the whole
    palette from the hero's colour on."""
    if not PALETTE_RE.search(text) or not base.things:
        return []
    ments = sc.mentions(text)
    named = []
    for w in re.finditer(r"[a-z]+", text):
        c = sc.COLOR_WORDS.get(w.group(0))
        if c and c not in named and not any(m.start <= w.start() < m.end for m in ments) and \
                not re.match(r"\s+(?:background|backdrop)", text[w.end():]):
            named.append(c)
    if len(named) >= 2:
        return named
    colors = list(COLORS)
    first = colors.index(base.things[0].color) if base.things[0].color else 0
    return colors[first:] + colors[:first]


def _overview(base: sc.Scene, events: list[Event], palette: list[str], n: int) -> str:
    """What the pages share, as the builtin model's multi-panel overviews say it ("a red circle that turns blue",
    "a pink circle moving", "the same square in four colours")."""
    if not base.things:
        return "an empty scene"
    hero = base.things[0]
    name = _bare(replace(hero, size=None, count=1))
    kinds = [e.kind for e in events]
    if palette and not events:
        return f"the same {hero.shape} in {COUNT_TEXT.get(n, str(n))} colours"
    if kinds == ["color"] and events[0].value[1] and (hero.color or events[0].value[0]):
        start = hero.color or events[0].value[0]
        return f"{sc.thing_text(sc.Thing(hero.shape, start))} that turns {events[0].value[1]}"
    if "path" in kinds:
        path = events[kinds.index("path")]
        return name + (" moving clockwise" if path.value[0] == "around" else " moving")
    if kinds == ["size"]:
        return name + (" that grows" if events[0].value[1] == "large" else " that shrinks")
    return sc.scene_text(replace(base, things=tuple(replace(t, position=None) for t in base.things)))


_LINK = r"\s*(?:,\s*(?:and\s+)?(?:then\s+)?|(?:and\s+)?then\s+|to\s+|into\s+|->\s*|→\s*)(?:to\s+|into\s+)?"
# "goes from green to blue to purple", "turns red, then yellow, then blue": three colours or more in a row
COLOR_CHAIN_RE = re.compile(rf"\b(?:from\s+)?(?:{_COLOR})\b"
                            rf"(?:{_LINK}(?:{_COLOR})\b(?!\s+(?:background|backdrop))){{2,}}")
_COUNT = {"one": 1, "two": 2, "three": 3, "four": 4, "1": 1, "2": 2, "3": 3, "4": 4}
_COUNT_ALT = "|".join(sorted(_COUNT, key=len, reverse=True))
# "first one red circle, then two, then three": a count per page
COUNT_CHAIN_RE = re.compile(rf"\b(?:first\s+)?(?P<first>{_COUNT_ALT}|an?|a single)\s+(?:\w+\s+){{0,2}}?(?:{_SHAPE})\b"
                            rf"(?:\s*,?\s*(?:and\s+)?(?:then|next|finally|later|after that)\s+(?:{_COUNT_ALT})\b"
                            rf"(?:\s+(?:\w+\s+){{0,2}}?(?:{_SHAPE}))?){{1,}}")


def _chain(text: str, base: sc.Scene, n: int) -> list[Page] | None:
    """Pages for a chain of colours or counts the instruction lists in order, one state after another, spread
    over the n pages; None when it lists none."""
    hero = base.things[0]
    m = COLOR_CHAIN_RE.search(text)
    if m:
        seq = [sc.COLOR_WORDS[w] for w in re.findall(r"[a-z]+", m.group(0)) if w in sc.COLOR_WORDS]
        if hero.color and hero.color != seq[0] and not m.group(0).startswith("from") and len(seq) < n:
            seq = [hero.color] + seq  # "a red circle turns orange, then yellow": red first
        attr = "color"
    elif (m := COUNT_CHAIN_RE.search(text)) and all(
            t.thing.shape == hero.shape and t.thing.color in (None, hero.color) for t in sc.mentions(m.group(0))):
        words = re.findall(r"[a-z0-9]+", m.group(0)[m.end("first") - m.start():])
        seq = [_COUNT.get(m.group("first"), 1)] + [_COUNT[w] for w in words if w in _COUNT]
        attr = "count"
    else:
        return None
    states = [seq[round(i * (len(seq) - 1) / max(1, n - 1))] for i in range(n)]
    pages: list[Page] = []
    scene = base
    for i, v in enumerate(states):
        before = scene
        scene = _set(scene, 0, **{attr: v, **({"position": None} if attr == "count" and v > 1 else {})})
        if i == 0:
            pages.append(Page(scene, _intro(scene, False, False)))
            continue
        t = scene.things[0]
        if v == getattr(before.things[0], attr):
            clause = _stay(scene, pages[0].scene)
        elif attr == "color":
            clause = f"{_name(before, 0)} turn{'' if before.things[0].count > 1 else 's'} {v}"
        else:
            clause = f"there are {sc.NUMBER_TEXT.get(v, str(v))} {t.shape}s"
        # a colour change is an edit of the page before (the same object, recoloured); a new count is drawn afresh
        pages.append(Page(scene, _sentence(i, n, [clause]), derived=attr == "color"))
    return pages


def tell(text: str, base: sc.Scene, n: int) -> Story | None:
    """One scene and one sentence per page for what the (normalised) instruction says happens to `base`, the
    scene it starts from; None when nothing happens from page to page."""
    if not base.things or n < 2:
        return None
    book = bool(BOOK_RE.search(text))
    chained = _chain(text, base, n)
    if chained:
        return Story(_unique(chained), _overview(base, [], [], n), True)
    parts = steps(text)
    if len(parts) > 1:
        first = find_events(parts[0])
        later = [_step_events(p) for p in parts[1:]]
        beats = ([first] if first else []) + later
        fresh = ([None] if first else []) + [None if beat else _fresh(p, base) for p, beat in zip(parts[1:], later)]
        pages = _keyframes(base, beats, fresh, n, book)
        events = [e for beat in beats for e in beat]
        return Story(_unique(pages), _overview(base, events, [], n), True)
    events = [e for e in find_events(text) if e.kind != "arrive" or _arrives(e, base)]
    palette = _palette(text, base)
    if events or palette:
        pages = _spread(base, events, n, book, palette)
        return Story(_unique(pages), _overview(base, events, palette, n), bool(events))
    if JOURNEY_RE.search(text) or book:
        return Story(_unique(_journey(base, n)), _overview(base, [], [], n), True)
    return None


def _fresh(part: str, base: sc.Scene) -> sc.Scene | None:
    """A step that names a scene of its own and changes nothing ("then a picture of a blue square")."""
    scene = sc.parse_scene(part)
    return replace(scene, background=scene.background or base.background) if scene.things else None


def _arrives(e: Event, base: sc.Scene) -> bool:
    """An arrival brings something new; "a blue circle arrives" when the scene already holds it is the setting."""
    thing, more, _ = e.value
    if thing is None:
        return False
    return more or not any(t.shape == thing.shape and t.color == thing.color for t in base.things)
