"""Article: Markdown for picture books and illustrated articles, referencing the saved images by their real names.

Pages are mapped to files through an explicit {output index → file name} dict, built in output order: ChatDiT zips
a set of ids with a list of images and mislabels pages (style.md §8); a dict cannot. The prose comes from the LLM
when one is configured and its text is checked against the parsed fields: a caption that names a colour or shape
its page does not show, refers to "image 2", repeats another caption or is empty falls back to the template.
A story's pages say what happens on each (`OutputSpec.happens`, from agents/story.py): the template tells that, and
the LLM is given it beside each page's description.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Annotated

from pydantic import BaseModel, Field, create_model

from ditflow.agents import scene as sc
from ditflow.agents.llm.base import only_parses
from ditflow.agents.parsing import SELF_REFERENCE
from ditflow.agents.prompts import prompt_section
from ditflow.schemas import MAX_OUTPUTS, ParsedRequest, one_line

MAX_CAPTION_CHARS = 240
MAX_LLM_CAPTION_CHARS = 90  # bounds the tokens the embedded LLM writes per page (latency), about 15 words


@dataclass
class Page:
    number: int  # 1-based page number in the whole book (follow-up turns continue the numbering)
    file: str  # the image's real file name, relative to the article
    description: str
    caption: str


@dataclass
class Article:
    markdown: str
    pages: list[Page]
    notes: list[str] = field(default_factory=list)
    valid_before_fallback: bool = True


def prose_schema(n: int) -> type[BaseModel]:
    """{"title", "captions"} with exactly n captions: the count is in the schema, so the grammar stops runaway
    lists (issue 5)."""
    caption = Annotated[str, Field(min_length=1, max_length=MAX_LLM_CAPTION_CHARS)]
    return create_model(f"Prose{n}", title=(str, Field(min_length=1, max_length=60)),
                        captions=(list[caption], Field(min_length=n, max_length=n)))


def _words(text: str, vocab: dict[str, str]) -> set[str]:
    return {vocab[w] for w in re.findall(r"[a-z]+", text.lower()) if w in vocab}


def caption_problem(caption: str, description: str, others: list[str], subject: str = "") -> str | None:
    """Why an LLM caption cannot be used for a page showing `description`, or None when it can."""
    text = caption.strip()
    if not text:
        return "empty"
    if len(text) > MAX_CAPTION_CHARS:
        return "too long"
    if SELF_REFERENCE.search(text):
        return "refers to another image"
    allowed = description + " " + subject
    extra_colours = _words(text, sc.COLOR_WORDS) - _words(allowed, sc.COLOR_WORDS)
    if extra_colours:
        return f"names colours the page does not show: {sorted(extra_colours)}"
    extra_shapes = _words(text, sc.SHAPE_WORDS) - _words(allowed, sc.SHAPE_WORDS)
    if extra_shapes:
        return f"names shapes the page does not show: {sorted(extra_shapes)}"
    if text.lower() in (o.strip().lower() for o in others):
        return "repeats another caption"
    return None


def template_caption(k: int, n: int, description: str, first_page: int = 1, happens: str | None = None) -> str:
    """The page text without an LLM: what happens on the page when the story says, else a sentence per place."""
    if happens:
        return happens
    which = "single" if n == 1 and first_page == 1 else "first" if k == 0 and first_page == 1 else \
        "last" if k == n - 1 else "middle"
    return prompt_section("article", f"template {which}").format(description=description)


def write_article(req: ParsedRequest, files: dict[int, str], backend=None, *, before: list[Page] = (),
                  title: str | None = None) -> Article:
    """Markdown for `req`'s outputs, each page showing files[output index]. `before` are the book's earlier pages
    (a follow-up "add two more pages"): they come first, as they were, and the new pages continue the numbering."""
    first_page = len(before) + 1
    missing = [o.index for o in req.outputs if o.index not in files]
    if missing:
        raise ValueError(f"no saved image for output(s) {missing}; the article references real files only")
    outs = sorted(req.outputs, key=lambda o: o.index)  # page order is output order, never a set's order
    n = len(outs)
    notes: list[str] = []
    valid = True
    title = title or req.title or (req.shared or outs[0].description).capitalize()
    captions = [o.caption or "" for o in outs]
    if backend is not None and backend.name != "rules" and not only_parses(backend) and not all(captions) \
            and n <= MAX_OUTPUTS:
        from ditflow.agents.llm.base import LLMError

        user = {"subject": req.shared or title, "pages": [o.description for o in outs]}
        if any(o.happens for o in outs):  # the story: what happens on each page, for the prose to tell
            user["events"] = [o.happens or "" for o in outs]
        messages = [{"role": "system", "content": prompt_section("article", "system")},
                    {"role": "user", "content": json.dumps(user)}]
        try:
            prose = backend.complete(messages, prose_schema(n), task="article")
            if not _words(prose.title, sc.COLOR_WORDS) - _words(" ".join(user["pages"]) + " " + (req.shared or ""),
                                                               sc.COLOR_WORDS):
                title = req.title or prose.title.strip()
            for k, (o, text) in enumerate(zip(outs, prose.captions)):
                if captions[k]:
                    continue
                problem = caption_problem(text, o.description, prose.captions[:k], req.shared or "")
                if problem:
                    notes.append(f"page {first_page + k}: LLM caption {problem}; using the template")
                else:
                    captions[k] = text.strip()
        except LLMError as e:
            valid = False
            notes.append(f"article: the LLM gave no valid prose ({one_line(e, 160)}); using templates")
    pages = list(before)
    for k, o in enumerate(outs):
        caption = captions[k] or template_caption(k, n, o.description, first_page, o.happens)
        pages.append(Page(first_page + k, files[o.index], o.description, caption))
    lines = [f"# {title}", ""]
    for p in pages:
        lines += [f"## Page {p.number}", "", f"![{_alt(p.description)}]({_link(p.file)})", "", p.caption, ""]
    return Article("\n".join(lines), pages, notes, valid)


def _alt(text: str) -> str:
    return re.sub(r"[\[\]\n]", " ", text)


def _link(path: str) -> str:
    return path.replace(" ", "%20").replace("(", "%28").replace(")", "%29")
