"""Wikipedia text to plain text: wikitext markup removed (wikiextractor-style), and sections
that carry no article prose (References, External links, See also, empty ones) dropped.

Both the MediaWiki API's plain-text extracts (requested with ``exsectionformat=wiki``, so
headings arrive as ``== Heading ==`` lines) and wikitext from dumps end in
:func:`tidy_sections`, so a page reads the same whichever way it was fetched: headings as
plain lines of their own, a blank line between sections.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field

# Sections without article prose: reference lists, link lists, bibliographies.
BOILERPLATE_SECTIONS = frozenset(
    {
        "references", "external links", "see also", "notes", "notes and references",
        "footnotes", "citations", "sources", "further reading", "bibliography",
        "works cited", "reference notes", "explanatory notes",
    }
)  # fmt: skip

_HEADING = re.compile(r"^(={1,6})\s*(.*?)\s*\1\s*$")
_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)
# Elements dropped with their contents (a self-closing one, e.g. <ref name="a" />, first).
_DROPPED_TAGS = "ref|gallery|math|chem|timeline|score|graph|imagemap|templatedata|references"
_SELF_CLOSING = re.compile(rf"<(?:{_DROPPED_TAGS})\b[^>]*/>", re.IGNORECASE)
_ELEMENT = re.compile(rf"<({_DROPPED_TAGS})\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
_TAG = re.compile(r"</?[a-zA-Z][^>]*>")
_BRACES = re.compile(r"\{\{|\}\}")
_INNER_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")
_EXTERNAL_LINK = re.compile(r"\[(?:https?:|ftp:)?//[^\s\]]+(?:\s+([^\]]*))?\]")
_QUOTES = re.compile(r"'{2,5}")
_MAGIC_WORD = re.compile(r"__[A-Z]+__")
_LIST_MARKS = re.compile(r"^[*#:;]+\s*", re.MULTILINE)
_RULE = re.compile(r"^-{4,}\s*$", re.MULTILINE)
_SPACE_BEFORE_PUNCTUATION = re.compile(r"[ \t]+([.,;])")
_DROPPED_LINK_NAMESPACES = frozenset({"file", "image", "category"})
_LANGUAGE_PREFIX = re.compile(r"^[a-z]{2,3}(?:-[a-z]+)?$")
_PARENTHESIS = re.compile(r"\s*\([^)]*\)$")


def wikitext_to_text(wikitext: str) -> str:
    """Plain text of an article's wikitext.

    Comments, ``<ref>`` elements (and galleries, math, timelines), templates ``{{…}}`` (nested)
    and tables ``{| … |}`` (nested) are removed; ``[[target|label]]`` becomes ``label``,
    ``[[target]]`` ``target``; ``[[File:…]]``, ``[[Image:…]]``, ``[[Category:…]]`` and
    interlanguage links are removed; ``[url label]`` becomes ``label``; bold and italic
    quotes, remaining HTML tags (their text kept), magic words, list marks and rules go;
    HTML entities are decoded; headings ``== X ==`` become plain lines (see
    :func:`tidy_sections`).
    """
    return wikitext_to_text_and_headings(wikitext)[0]


def wikitext_to_text_and_headings(wikitext: str) -> tuple[str, list[tuple[int, str]]]:
    """:func:`wikitext_to_text`, and the ``(level, heading)`` of each section kept."""
    text = _COMMENT.sub("", wikitext)
    text = _ELEMENT.sub("", _SELF_CLOSING.sub("", text))
    text = _remove_templates(text)
    text = _remove_tables(text)
    text = _replace_links(text)
    text = _EXTERNAL_LINK.sub(lambda match: match.group(1) or "", text)
    text = _QUOTES.sub("", text)
    text = _TAG.sub("", _BREAK.sub("\n", text))
    text = html.unescape(_MAGIC_WORD.sub("", text))
    text = _RULE.sub("", _LIST_MARKS.sub("", text))
    return tidy_sections_and_headings(_SPACE_BEFORE_PUNCTUATION.sub(r"\1", text))


def tidy_sections(text: str) -> str:
    """Text whose ``== Heading ==`` lines become plain lines, without the sections that hold
    no prose: :data:`BOILERPLATE_SECTIONS` (with their subsections), and sections with no
    text of their own or in a kept subsection.  Lines are stripped; one blank line between
    paragraphs and sections."""
    return tidy_sections_and_headings(text)[0]


def tidy_sections_and_headings(text: str) -> tuple[str, list[tuple[int, str]]]:
    """:func:`tidy_sections`, and the ``(level, heading)`` of each section kept, in order
    (``== History ==`` is level 2, as in wikitext)."""
    sections = _sections(text)
    keep = [False] * len(sections)
    dropped_level = None  # inside a boilerplate section of this level
    for index, section in enumerate(sections):
        if dropped_level is not None and section.level > dropped_level:
            continue
        dropped_level = None
        if section.heading is not None and section.heading.lower() in BOILERPLATE_SECTIONS:
            dropped_level = section.level
            continue
        keep[index] = bool(section.body)
    # A heading stays when a deeper section after it (before the next at its level) stays.
    for index in range(len(sections) - 1, -1, -1):
        if keep[index] or sections[index].heading is None:
            continue
        for later in range(index + 1, len(sections)):
            if sections[later].level <= sections[index].level:
                break
            if keep[later]:
                keep[index] = True
                break
    blocks, headings = [], []
    for section, kept in zip(sections, keep):
        if kept:
            lines = ([section.heading] if section.heading else []) + section.body
            blocks.append("\n".join(lines))
            if section.heading:
                headings.append((section.level, section.heading))
    return "\n\n".join(blocks), headings


@dataclass
class _Section:
    level: int  # 0: the lead, before the first heading
    heading: str | None
    body: list[str] = field(default_factory=list)  # stripped lines; inner blank lines as ""


def _sections(text: str) -> list[_Section]:
    sections = [_Section(0, None)]
    for raw in text.replace("\r\n", "\n").split("\n"):
        line = raw.strip()
        match = _HEADING.match(line)
        if match and match.group(2):
            sections.append(_Section(len(match.group(1)), match.group(2)))
        elif line or (sections[-1].body and sections[-1].body[-1]):
            sections[-1].body.append(line)
    for section in sections:
        while section.body and not section.body[-1]:
            section.body.pop()
    return sections


def _remove_templates(text: str) -> str:
    """Text without ``{{…}}`` spans, nested ones included; an unclosed ``{{`` is kept as text."""
    out: list[str] = []
    depth = 0
    kept_from = 0
    start = 0
    for match in _BRACES.finditer(text):
        if match.group() == "{{":
            if depth == 0:
                out.append(text[kept_from : match.start()])
                start = match.start()
            depth += 1
        elif depth > 0:
            depth -= 1
            if depth == 0:
                kept_from = match.end()
    out.append(text[start:] if depth > 0 else text[kept_from:])
    return "".join(out)


def _remove_tables(text: str) -> str:
    """Text without ``{| … |}`` tables (each marker at the start of a line), nested ones too."""
    kept: list[str] = []
    depth = 0
    for line in text.split("\n"):
        stripped = line.lstrip()
        if stripped.startswith("{|"):
            depth += 1
        elif depth and stripped.startswith("|}"):
            depth -= 1
        elif not depth:
            kept.append(line)
    return "\n".join(kept)


def _replace_links(text: str) -> str:
    """Internal links replaced by their text, innermost first (so a link inside a file
    caption goes with the file)."""
    while True:
        replaced = _INNER_LINK.sub(_link_text, text)
        if replaced == text:
            return replaced
        text = replaced


def _link_text(match: re.Match) -> str:
    inner = match.group(1)
    target, pipe, label = inner.partition("|")
    target = target.strip()
    if target.startswith(":"):  # [[:Category:X]] is a visible link to the category
        return label if pipe and label else target[1:]
    prefix, colon, _ = target.partition(":")
    prefix = prefix.strip().lower()
    if colon and prefix in _DROPPED_LINK_NAMESPACES:
        return ""
    if colon and not pipe and _LANGUAGE_PREFIX.match(prefix):
        return ""  # interlanguage link, e.g. [[de:Hurrikan Idalia]]
    if not pipe:
        return target
    if not label:  # the pipe trick: [[Paris (band)|]] shows "Paris"
        return _PARENTHESIS.sub("", target.split(":", 1)[-1])
    return label
