"""Local Wikipedia: MediaWiki XML exports and dumps, and WikiExtractor output.

- a MediaWiki XML export, or a ``pages-articles`` dump (``.xml``, ``.xml.bz2``, also the split
  ``…pages-articles1.xml-p1p41242.bz2`` files): streamed with ``iterparse``, so memory holds
  one page at a time; article pages (namespace 0) only, redirects skipped; the wikitext is
  cleaned by :func:`kinject.sources.wikitext.wikitext_to_text`;
- WikiExtractor output files (``wiki_00``, ``wiki_01``, … and their ``.bz2`` forms): either
  ``<doc id="…" url="…" title="…">…</doc>`` blocks or, from ``--json``, one
  ``{"id", "url", "title", "text"}`` object per line.  Their text is already clean; a first
  line repeating the title is dropped (the title is kept as the document's title).

Every page becomes a :class:`WikiPage` whose document id is :func:`page_id` of its title, the
same id a page fetched through the API gets.  A bad page or line is passed to ``problem``
(which raises, or keeps a warning, as the caller decides) and skipped; a file that cannot be
read at all raises a :class:`DataError` naming it.
"""

from __future__ import annotations

import bz2
import html
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from kinject.errors import DataError, KinjectError
from kinject.fileio import parse_json
from kinject.sources.wikitext import tidy_sections_and_headings, wikitext_to_text_and_headings

Problem = Callable[[KinjectError], None]

DUMP_NAME = re.compile(r"\.xml(?:-p\d+p\d+)?\.bz2$", re.IGNORECASE)
WIKIEXTRACTOR_NAME = re.compile(r"^wiki_\d+(?:\.bz2)?$")
_DOC_START = re.compile(r"^<doc\b[^>]*>$")
_DOC_ID = re.compile(r'\bid="([^"]*)"')
_DOC_TITLE = re.compile(r'\btitle="(.*)"\s*>$')


@dataclass(frozen=True)
class WikiPage:
    title: str
    text: str  # plain text, sections tidied; not yet through ingest's clean_text
    headings: tuple[tuple[int, str], ...] = ()  # (level, heading) of its sections, in order

    @property
    def id(self) -> str:
        return page_id(self.title)


def page_id(title: str) -> str:
    """A page's document id: its title as Wikipedia writes it in URLs (spaces as ``_``)."""
    return title.strip().replace(" ", "_")


def is_dump_name(name: str) -> bool:
    return bool(DUMP_NAME.search(name))


def is_wikiextractor_name(name: str) -> bool:
    return bool(WIKIEXTRACTOR_NAME.match(name))


# --------------------------------------------------------------------------- XML dumps


def dump_pages(path: Path, problem: Problem) -> Iterator[WikiPage]:
    """The article pages of a MediaWiki XML export (``.xml``, or bz2-compressed)."""
    opener = bz2.open if path.name.lower().endswith(".bz2") else open
    try:
        with opener(path, "rb") as handle:
            yield from _xml_pages(path, handle, problem)
    except ET.ParseError as error:
        line = error.position[0] if error.position else None
        message = " ".join(str(error).split())
        raise DataError(path, line, None, f"not well-formed XML ({message})") from None
    except (OSError, EOFError) as error:
        detail = " ".join(str(error).split()) or type(error).__name__
        raise DataError(path, None, None, f"cannot read the dump ({detail})") from None


def _xml_pages(path: Path, handle, problem: Problem) -> Iterator[WikiPage]:
    root = None
    namespace = ""
    number = 0
    for event, element in ET.iterparse(handle, events=("start", "end")):
        if root is None:
            root = element
            namespace, local = _split_tag(element.tag)
            if local != "mediawiki":
                message = f"not a MediaWiki XML export (root element <{local}>, not <mediawiki>)"
                raise DataError(path, None, None, message)
            continue
        if event != "end" or element.tag != f"{namespace}page":
            continue
        number += 1
        page = _xml_page(path, element, namespace, number, problem)
        root.clear()  # the page is done: keep memory at one page
        if page is not None:
            yield page
    if root is None:
        raise DataError(path, None, None, "empty file")


def _split_tag(tag: str) -> tuple[str, str]:
    """``("{uri}", "local")`` of an ElementTree tag (``("", tag)`` without a namespace)."""
    if tag.startswith("{"):
        uri, _, local = tag[1:].partition("}")
        return f"{{{uri}}}", local
    return "", tag


def _xml_page(path: Path, page, namespace: str, number: int, problem: Problem) -> WikiPage | None:
    """One ``<page>``: a WikiPage, or None for other namespaces, redirects and bad pages."""
    title = (page.findtext(f"{namespace}title") or "").strip()
    if not title:
        problem(DataError(path, None, "title", f"page {number} has no <title>, skipped"))
        return None
    ns = (page.findtext(f"{namespace}ns") or "0").strip()
    if ns != "0" or page.find(f"{namespace}redirect") is not None:
        return None
    revisions = page.findall(f"{namespace}revision")
    text = revisions[-1].find(f"{namespace}text") if revisions else None
    if text is None:
        message = f"page {number} '{title}' has no <revision><text>, skipped"
        problem(DataError(path, None, "text", message))
        return None
    cleaned, headings = wikitext_to_text_and_headings(text.text or "")
    if not cleaned.strip():
        message = f"page {number} '{title}' has no text after cleaning, skipped"
        problem(DataError(path, None, "text", message))
        return None
    return WikiPage(title, cleaned, tuple(headings))


# --------------------------------------------------------------------------- WikiExtractor


def wikiextractor_pages(path: Path, raw: bytes, problem: Problem) -> list[WikiPage]:
    """The pages of one WikiExtractor output file (doc blocks or JSON lines; bz2 or not)."""
    if path.name.endswith(".bz2"):
        try:
            raw = bz2.decompress(raw)
        except (OSError, ValueError, EOFError) as error:
            detail = " ".join(str(error).split())
            raise DataError(path, None, None, f"cannot decompress ({detail})") from None
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        line = 1 + raw.count(b"\n", 0, error.start)
        raise DataError(path, line, None, f"invalid UTF-8 at byte {error.start}") from None
    lines = text.split("\n")
    first = next((line.strip() for line in lines if line.strip()), "")
    if first.startswith("{"):
        return _json_pages(path, lines, problem)
    if first.startswith("<doc"):
        return _doc_pages(path, lines, problem)
    raise DataError(path, 1, None, 'not WikiExtractor output (expected <doc id=…> or {"id": …})')


def _doc_pages(path: Path, lines: list[str], problem: Problem) -> list[WikiPage]:
    pages: list[WikiPage] = []
    number = 0
    while number < len(lines):
        line = lines[number].strip()
        number += 1
        if not line:
            continue
        start = number
        if not _DOC_START.match(line):
            raise DataError(path, start, None, "expected <doc id=… url=… title=…>")
        title_match = _DOC_TITLE.search(line)
        body: list[str] = []
        while number < len(lines) and lines[number].strip() != "</doc>":
            body.append(lines[number])
            number += 1
        if number == len(lines):
            raise DataError(path, start, None, "<doc> without a closing </doc>")
        number += 1
        if title_match is None or not title_match.group(1).strip():
            problem(DataError(path, start, "title", "missing or empty, page skipped"))
            continue
        title = html.unescape(title_match.group(1)).strip()
        page = _extracted_page(path, start, title, html.unescape("\n".join(body)), problem)
        if page is not None:
            pages.append(page)
    return pages


def _json_pages(path: Path, lines: list[str], problem: Problem) -> list[WikiPage]:
    pages: list[WikiPage] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = parse_json(path, number, line)
        except DataError as error:
            problem(error)
            continue
        if not isinstance(obj, dict):
            problem(DataError(path, number, None, "expected a JSON object"))
            continue
        bad = next((key for key in ("title", "text") if not isinstance(obj.get(key), str)), None)
        if bad is not None or not obj["title"].strip():
            problem(DataError(path, number, bad or "title", "missing or not a non-empty string"))
            continue
        page = _extracted_page(path, number, obj["title"].strip(), obj["text"], problem)
        if page is not None:
            pages.append(page)
    return pages


def _extracted_page(
    path: Path, line: int, title: str, text: str, problem: Problem
) -> WikiPage | None:
    lines = text.strip().split("\n")
    if lines and lines[0].strip() == title:
        lines = lines[1:]
    cleaned, headings = tidy_sections_and_headings("\n".join(lines))
    if not cleaned.strip():
        problem(DataError(path, line, "text", f"page '{title}' has no text, skipped"))
        return None
    return WikiPage(title, cleaned, tuple(headings))
