"""Verification: (image, description) → a `Verdict` listing each claim of the description as pass or fail, with
what the verifier saw instead.

Read bottom-up: claims of a description → the shapes-world detector verifier (exact, for the builtin model) →
the LLM verifier (a VLM sees the image; a text-only LLM reads what the `describe` tool says) → the guard that
turns any verifier error or timeout into an "unverified" verdict → picking a verifier for a pipeline.

Claims come from the description alone, so every verifier answers the same list and verdicts compare across
candidates. A phrase outside the shapes-world vocabulary becomes an `other` claim that the detector marks
"not checkable"; nothing a verifier cannot see is ever marked passed.
"""
from __future__ import annotations

import concurrent.futures
import logging
import re
from dataclasses import dataclass, replace
from typing import Literal, Protocol

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, create_model

from ditflow.agents import scene as sc
from ditflow.agents.llm.base import LLMError, only_parses
from ditflow.schemas import Claim, ParsedRequest, Verdict
from ditflow.world import scenes as world

log = logging.getLogger(__name__)

NOTHING = "nothing"  # `seen` of a named object the image does not have
DETECTOR_TIMEOUT_S = 30.0
LLM_TIMEOUT_S = 120.0
MAX_WORLD_SIDE = 40  # px at the 64 px panel scale: the world's largest object is 30 px
# Words that carry no checkable meaning once objects, positions and backgrounds are taken out of a description.
FILLER = frozenset("""a an the and or with on in at of to is are be its it their there here both each one single
    lone image picture drawing scene background backdrop field plain set against colored coloured shape shapes
    object objects same other showing shows show over
    please draw paint render make sketch generate create produce illustration i i'd like want see could you can me""".split())


# ----------------------------------------------------------------------------- claims of a description
@dataclass(frozen=True)
class Expected:
    """What a description asks for: named things (world vocabulary), a named background, and the rest."""

    things: tuple[sc.Thing, ...]
    background: str | None
    unknown: tuple[str, ...]  # phrases outside the vocabulary: never checkable by the detector


_POS_ANY = [re.compile(r"\b(?:" + p + r")\b") for p, _ in sc.POSITION_PHRASES]


def expected_of(description: str) -> Expected:
    """Parse a description into what a verifier must check; leftover content words become `unknown` phrases."""
    text = sc.normalise(description)
    found = sc.mentions(text)
    rest = list(text)
    for m in found:  # blank out what the vocabulary understood, keep the rest's word boundaries
        rest[m.start:m.end] = " " * (m.end - m.start)
    rest = "".join(rest)
    rest = sc.BACKGROUND_RE.sub(" ", rest)
    for rx in _POS_ANY:
        rest = rx.sub(" ", rest)
    phrases = []
    for chunk in re.split(r"[,;.!?]|\band\b|\bthen\b", rest):
        words = [w for w in re.findall(r"[a-z0-9/'-]+", chunk) if w not in FILLER]
        if words:
            phrases.append(" ".join(words))
    return Expected(tuple(m.thing for m in found), sc.find_background(text), tuple(phrases))


def _noun(t: sc.Thing, count: int | None = None) -> str:
    """ "a red circle", "three purple triangles": colour, shape and count, nothing else."""
    return sc.thing_text(sc.Thing(t.shape, t.color, None, None, t.count if count is None else count))


def _subject(t: sc.Thing) -> str:
    head = " ".join(w for w in (t.color, t.shape + ("s" if t.count > 1 else "")) if w)
    return f"the {head}"


def claims_of(description: str) -> list[Claim]:
    """The description's claims in a fixed order, all "unverified": one object (or count) claim per named thing,
    one per named size and position, "nothing else", the named background, and each unknown phrase."""
    exp = expected_of(description)
    claims: list[Claim] = []
    for t in exp.things:
        claims.append(Claim(text=_noun(t), attribute="object" if t.count == 1 else "count", status="unverified",
                            want=sc.thing_text(t)))
        be = "is" if t.count == 1 else "are"
        if t.size:
            claims.append(Claim(text=f"{_subject(t)} {be} {t.size}", attribute="size", status="unverified",
                                want=t.size))
        if t.position:
            claims.append(Claim(text=f"{_subject(t)} {be} {sc.POSITION_TEXT[t.position]}", attribute="position",
                                status="unverified", want=t.position))
    if exp.things:
        claims.append(Claim(text="nothing else is in the image", attribute="object", status="unverified",
                            want=NOTHING))
    if exp.background:
        claims.append(Claim(text=f"on a {exp.background} background", attribute="background", status="unverified",
                            want=exp.background))
    claims += [Claim(text=u, attribute="other", status="unverified") for u in exp.unknown]
    return claims


# ----------------------------------------------------------------------------- the interface
class Verifier(Protocol):
    name: str
    timeout_s: float

    def check(self, image: Image.Image, description: str, output: int = 1) -> Verdict:
        """A verdict on every claim of `description`; raising is allowed (the guard makes it "unverified")."""
        ...


def unverified(description: str, output: int, verifier: str, error: str) -> Verdict:
    return Verdict(output=output, claims=claims_of(description), verifier=verifier, error=error)


def check_guarded(verifier: Verifier, image: Image.Image, description: str, output: int) -> Verdict:
    """`verifier.check` that never raises and never runs past `verifier.timeout_s`: an error or a timeout gives an
    "unverified" verdict that names it, so a broken verifier cannot crash a turn."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="verify")
    try:
        future = pool.submit(verifier.check, image, description, output)
        return future.result(timeout=verifier.timeout_s)
    except concurrent.futures.TimeoutError:
        return unverified(description, output, verifier.name, f"the verifier timed out after {verifier.timeout_s:g}s")
    except Exception as e:  # noqa: BLE001 — any verifier failure is reported in the verdict, never raised
        # an unreachable or confused LLM is an expected failure; anything else gets its traceback logged
        log.warning("verifier %s failed on output %d: %s", verifier.name, output, e, exc_info=not isinstance(e, LLMError))
        return unverified(description, output, verifier.name, f"{type(e).__name__}: {e}")
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # a hung call is abandoned, not waited for


# ----------------------------------------------------------------------------- the shapes-world detector verifier
def _size_of(d: world.Detection, image_side: int) -> str:
    """small | large, judged at the world's 64 px panel scale whatever the image size."""
    return "small" if d.side * world.PANEL / image_side < world.SMALL_LARGE_SPLIT else "large"


def _det_text(d: world.Detection) -> str:
    return f"a {d.color} {d.shape} {sc.POSITION_TEXT[d.position]}"


def _assign(copies: list[sc.Thing], dets: list[world.Detection], side: int) -> list[int | None]:
    """Best one-to-one match of named object copies to detections (Hungarian): shape and colour weigh most."""
    from scipy.optimize import linear_sum_assignment

    if not copies or not dets:
        return [None] * len(copies)
    gain = np.zeros((len(copies), len(dets)))
    for i, t in enumerate(copies):
        for j, d in enumerate(dets):
            gain[i, j] = (1 + 4 * (d.shape == t.shape) + 3 * (t.color in (None, d.color))
                          + (t.size in (None, _size_of(d, side))) + (t.position in (None, d.position)))
    rows, cols = linear_sum_assignment(-gain)
    out: list[int | None] = [None] * len(copies)
    for r, c in zip(rows, cols):
        out[r] = int(c)
    return out


def detections(image: Image.Image) -> tuple[str, list[world.Detection]]:
    """`world.detect`, with every component larger than any world object called a "blob": nothing in the world is
    larger than SIZE_RANGES allows, so such a component is merged or malformed, not a shape."""
    bg, dets = world.detect(image)
    side = min(image.size)
    return bg, [d if d.side * world.PANEL / side <= MAX_WORLD_SIDE else replace(d, shape="blob") for d in dets]


class DetectorVerifier:
    """Exact verdicts for shapes-world images from the analytic detector (`world.detect`): colour, shape, size,
    position, count and background of every named object, and no extra objects."""

    name = "detector"
    timeout_s = DETECTOR_TIMEOUT_S

    def check(self, image: Image.Image, description: str, output: int = 1) -> Verdict:
        exp = expected_of(description)
        bg, dets = detections(image)
        side = min(image.size)
        copies = [t for t in exp.things for _ in range(t.count)]
        match = _assign(copies, dets, side)
        claims = claims_of(description)
        k = 0  # index into `claims`, which follows the same order as expected_of's things
        start = 0
        for t in exp.things:
            mine = [dets[j] for j in match[start:start + t.count] if j is not None]
            start += t.count
            same = [d for d in dets if d.shape == t.shape and t.color in (None, d.color)]
            head = claims[k]
            if t.count == 1:
                d = mine[0] if mine else None
                ok = d is not None and d.shape == t.shape and t.color in (None, d.color)
                claims[k] = head.model_copy(update={"status": "pass" if ok else "fail", "seen": _det_text(d) if d
                                                    else NOTHING, "box": tuple(d.box) if d else None})
            else:
                ok = len(same) == t.count
                claims[k] = head.model_copy(update={"status": "pass" if ok else "fail",
                                                    "seen": _noun(t, len(same)) if same else NOTHING})
            k += 1
            for attr in ("size", "position"):
                want = getattr(t, attr)
                if not want:
                    continue
                got = [(_size_of(d, side) if attr == "size" else d.position) for d in mine]
                ok = len(mine) == t.count and all(g == want for g in got)
                bad = [d for d, g in zip(mine, got) if g != want]
                seen = ", ".join(dict.fromkeys(got)) if got else NOTHING
                box = tuple(bad[0].box) if len(bad) == 1 and t.count == 1 else None
                claims[k] = claims[k].model_copy(update={"status": "pass" if ok else "fail", "seen": seen, "box": box})
                k += 1
        if exp.things:
            extra = [dets[j] for j in range(len(dets)) if j not in match]
            claims[k] = claims[k].model_copy(update={
                "status": "fail" if extra else "pass", "seen": ", ".join(_det_text(d) for d in extra) or NOTHING,
                "box": tuple(extra[0].box) if len(extra) == 1 else None})
            k += 1
        if exp.background:
            claims[k] = claims[k].model_copy(update={"status": "pass" if bg == exp.background else "fail",
                                                     "seen": bg})
            k += 1
        for j in range(k, len(claims)):  # phrases outside the vocabulary
            claims[j] = claims[j].model_copy(update={"status": "not_checkable"})
        return Verdict(output=output, claims=claims, verifier=self.name)


# ----------------------------------------------------------------------------- the LLM verifier
class ClaimAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: Literal["pass", "fail", "not_checkable"]
    seen: str = Field("", max_length=200, description="what the image shows instead, when the claim fails")


def answers_schema(n: int) -> type[BaseModel]:
    """{"answers": [exactly n ClaimAnswer]}: the grammar forces one answer per claim, in order."""
    return create_model("ClaimAnswers", __config__=ConfigDict(extra="forbid"),
                        answers=(list[ClaimAnswer], Field(min_length=n, max_length=n)))


TEXT_CHECKABLE = {"object", "count", "color", "shape", "size", "position", "background"}  # what `describe` reports


class LLMVerifier:
    """Claims judged by an LLM behind the `LLMBackend` interface, as structured JSON.

    A VLM (`backend.supports_images`) gets the image as an `image_url` part. A text-only LLM gets what the
    `describe` tool says of the image and compares; a claim outside the describe tool's vocabulary cannot be
    judged from its text, so it is "not checkable" whatever the LLM answers.
    """

    def __init__(self, backend, timeout_s: float = LLM_TIMEOUT_S):
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0 seconds, got {timeout_s}")
        self.backend = backend
        self.timeout_s = timeout_s
        self.vision = bool(getattr(backend, "supports_images", False))
        self.name = f"{'vlm' if self.vision else 'llm'}:{getattr(backend, 'name', 'llm')}"

    def messages(self, image: Image.Image, claims: list[Claim]) -> list[dict]:
        import json

        from ditflow.agents.prompts import prompt_section

        listing = json.dumps([c.text for c in claims])
        if self.vision:
            from ditflow.agents.llm.openai import image_part

            user = [{"type": "text", "text": f"Claims: {listing}"}, image_part(image)]
            return [{"role": "system", "content": prompt_section("verify", "vision")}, {"role": "user", "content": user}]
        from ditflow.agents.describe import describe_image

        seen = describe_image(image, 1).description
        return [{"role": "system", "content": prompt_section("verify", "text")},
                {"role": "user", "content": json.dumps({"image": seen, "claims": [c.text for c in claims]})}]

    def check(self, image: Image.Image, description: str, output: int = 1) -> Verdict:
        claims = claims_of(description)
        schema = answers_schema(len(claims))
        got = self.backend.complete(self.messages(image, claims), schema, task="verify")
        out = []
        for c, a in zip(claims, got.answers):
            status = a.status
            if not self.vision and c.attribute not in TEXT_CHECKABLE:
                status = "not_checkable"  # the describe text cannot show it, whatever the LLM says
            out.append(c.model_copy(update={"status": status, "seen": (a.seen or None) if status == "fail" else None}))
        return Verdict(output=output, claims=out, verifier=self.name)


# ----------------------------------------------------------------------------- choosing a verifier
def default_verifier(pipe, llm=None) -> Verifier | None:
    """The detector for shapes-world models (builtin, tiny); an LLM endpoint's verifier for other models; else
    None (outputs stay unverified, and the turn says so)."""
    from ditflow.pipelines.loading import info_of

    if info_of(pipe).world == "shapes":
        return DetectorVerifier()
    if llm is not None and getattr(llm, "name", "rules") == "openai" and not only_parses(llm):
        return LLMVerifier(llm)
    return None


def verify_outputs(verifier: Verifier, images: dict[int, Image.Image], req: ParsedRequest) -> list[Verdict]:
    """Every output against its description (the `AgentRuntime.verifier` call shape)."""
    return [check_guarded(verifier, images[o.index], o.description, o.index) for o in req.outputs
            if o.index in images]


def summary(v: Verdict) -> str:
    """One line for chat and logs: "2/3 claims hold; the red circle is on the left: saw top-right"."""
    if v.error:
        return f"unverified ({v.error})"
    n_pass = sum(c.status == "pass" for c in v.claims)
    bad = [c for c in v.claims if c.status == "fail"]
    odd = [c for c in v.claims if c.status == "not_checkable"]
    text = f"{n_pass}/{len(v.claims)} claims hold"
    if bad:
        text += "; " + "; ".join(f"{c.text}: saw {c.seen}" for c in bad[:3])
    if odd:
        text += "; not checkable: " + ", ".join(repr(c.text) for c in odd[:3])
    return text
