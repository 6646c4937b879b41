"""Ingestion: SOURCE paths (folders searched recursively, or single files) to cleaned documents.

Supported formats, chosen by suffix:

- ``.txt``, ``.md``, ``.markdown``: plain text, one document per file; a Markdown file's
  ATX headings (``#`` … ``######``) are its headings, and its first heading its title;
- ``.html``, ``.htm``: visible text (BeautifulSoup), the ``<title>`` as title (else the
  first heading), ``<h1>`` … ``<h6>`` as headings;
- ``.jsonl``: kinject's corpus format ``{"id", "text", "title"?, "source"?, "meta"?,
  "headings"?}`` (``headings``: ``[level, "heading"]`` pairs, each a line of the text);
- ``.json``: the SQuAD v1.1 layout, one document per paragraph;
- ``.pdf``: page texts (pypdf, the ``pdf`` extra);
- ``.xml``, ``.xml.bz2`` (and split dumps ``….xml-p1p41242.bz2``): a MediaWiki XML export or
  Wikipedia ``pages-articles`` dump, streamed, one document per article (see
  :mod:`kinject.sources.wikidump`; the size limit applies to the file as stored), its
  section names (``== History ==``) as headings;
- ``wiki_00``, ``wiki_01``, … (also ``.bz2``): WikiExtractor output, ``<doc>`` or ``--json``.

A document's title and the headings above a chunk are what the chunk is indexed under (see
:func:`kinject.kb.chunking.heading_line`).

Ids are stable: a JSONL record's ``id``; ``"{title}#{index}"`` for a SQuAD paragraph; a
Wikipedia page's title with spaces as ``_`` (as the API-built knowledge bases use); else
the file's path relative to its SOURCE folder (or its name, for a single-file SOURCE).

Bad input (empty, binary, invalid UTF-8, too large, a bad JSONL line, an unreadable PDF, an
id already taken) is skipped with a one-line warning naming the file, line and field, or
raised as a :class:`KinjectError` with the same message when ``strict``.  Unsupported files
inside folders and symbolic links that are not followed are always warnings.

Nothing is written to disk, except, when :func:`ingest` is given a :class:`TextSpool`, the
cleaned texts, to an anonymous temporary file: then each document is kept as a
:class:`SpooledDocument` (its id, title, source, hash and where its text lies in the spool):
no text stays in memory beyond the file being read (a Wikipedia dump is streamed page by
page), only well under a kilobyte per document.  A file that fails part-way is taken back out
of the spool, as it is left out of the documents.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
import tempfile
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatch
from functools import lru_cache
from io import BytesIO
from pathlib import Path
from typing import Any

from kinject import faults
from kinject.corpus import check_corpus_record
from kinject.errors import DataError, KinjectError
from kinject.fileio import parse_json
from kinject.kb.chunking import Heading
from kinject.progress import progress_bar

SUPPORTED_SUFFIXES = (
    ".txt", ".md", ".markdown", ".html", ".htm", ".jsonl", ".json", ".pdf", ".xml", ".xml.bz2",
)  # fmt: skip
# Kinds of file recognised by name rather than suffix (see _kind).
_WIKIEXTRACTOR = "wikiextractor"
_SUPPORTED_NAMES = "wiki_NN (WikiExtractor output)"

_BINARY_PROBE_BYTES = 8192
_PDF_EXTRA = 'install the pdf extra: pip install "kinject[pdf]"'

# HTML: elements whose contents are dropped (the page <title> is taken separately); block
# elements that start and end a paragraph (2) or a line (1); table cells end with a space.
_HTML_DROP = frozenset({"script", "style", "noscript", "template", "head", "title"})
_HTML_PARAGRAPH_TAGS = (
    "p", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article", "header", "footer", "pre",
    "blockquote", "table", "ul", "ol", "dl", "main", "nav", "aside", "figure", "address",
)  # fmt: skip
_HTML_LINE_TAGS = ("div", "li", "tr", "dt", "dd", "hr", "caption", "figcaption", "details")
_HTML_BREAKS = {**dict.fromkeys(_HTML_PARAGRAPH_TAGS, 2), **dict.fromkeys(_HTML_LINE_TAGS, 1)}
_HTML_CELLS = frozenset({"td", "th"})
_HTML_HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")

_SPACE_RUNS = re.compile(r"[ \t]+")
_SPACES_AROUND_NEWLINES = re.compile(r" *\n *")
_BLANK_LINE_RUNS = re.compile(r"\n{3,}")
_WHITESPACE_RUNS = re.compile(r"\s+")


@dataclass(frozen=True)
class IngestedDocument:
    """One cleaned document, with where it came from."""

    id: str  # JSONL "id"; SQuAD "{title}#{paragraph}"; else the path relative to its SOURCE
    text: str  # cleaned text (see clean_text)
    title: str | None  # JSONL "title"; HTML <title>; SQuAD article title ("_" -> " ")
    source: str  # absolute path of the file it came from
    root: str  # absolute path of the SOURCE argument it was found under
    sha256: str  # hex sha256 of the text (utf-8)
    headings: tuple[Heading, ...] = ()  # Markdown, HTML and Wikipedia section headings

    @property
    def chars(self) -> int:
        return len(self.text)


class TextSpool:
    """Document texts on disk while a knowledge base is built: appended as the sources are
    read, read back one document at a time.  The file is anonymous (unlinked as it is made),
    so nothing is left behind, whatever happens (``contextlib.closing`` closes it)."""

    def __init__(self, folder: str | Path):
        # closed by close(); unlinked as it is made, so never left behind
        self._file = tempfile.TemporaryFile(dir=folder, buffering=0)  # noqa: SIM115
        self.size = 0

    def keep(self, document: IngestedDocument) -> SpooledDocument:
        """Write ``document``'s text to the spool; the document without its text."""
        data = memoryview(document.text.encode("utf-8"))
        offset, written = self.size, 0
        while written < len(data):
            written += os.pwrite(self._file.fileno(), data[written:], offset + written)
        self.size += len(data)
        faults.checkpoint("kb.spooled", document.id)
        return SpooledDocument(
            document.id,
            document.title,
            document.source,
            document.root,
            document.sha256,
            len(document.text),
            self,
            offset,
            len(data),
            document.headings,
        )

    def read(self, offset: int, length: int) -> str:
        data = os.pread(self._file.fileno(), length, offset)
        if len(data) != length:
            raise KinjectError(f"text spool: {length} bytes at {offset} expected, {len(data)} read")
        return data.decode("utf-8")

    def truncate(self, size: int) -> None:
        """Forget what was written after ``size`` bytes (a file that failed part-way)."""
        os.ftruncate(self._file.fileno(), size)
        self.size = size

    def close(self) -> None:
        self._file.close()


@dataclass(frozen=True, slots=True)
class SpooledDocument:
    """An :class:`IngestedDocument` whose text waits in a :class:`TextSpool`: ``text`` reads it
    back each time it is asked for."""

    id: str
    title: str | None
    source: str
    root: str
    sha256: str
    chars: int  # len(text)
    spool: TextSpool
    offset: int  # bytes into the spool
    length: int  # bytes of utf-8
    headings: tuple[Heading, ...] = ()

    @property
    def text(self) -> str:
        return self.spool.read(self.offset, self.length)


Document = IngestedDocument | SpooledDocument


@dataclass
class IngestReport:
    """What :func:`ingest` found: the documents, and what it skipped or dropped."""

    documents: list[Document]  # sorted by id, exact duplicates removed
    warnings: list[str] = field(default_factory=list)  # one line each, naming the file
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (dropped id, kept id)
    dropped: list[Document] = field(default_factory=list)  # those dropped, by id


@dataclass(frozen=True)
class _File:
    """A file to ingest: the path as walked (for messages), its id and absolute paths."""

    path: Path
    doc_id: str
    source: str
    root: str


@dataclass
class _Run:
    """Options and the warnings collected so far, for one :func:`ingest` call."""

    strict: bool
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    max_bytes: int
    warnings: list[str] = field(default_factory=list)

    def problem(self, error: KinjectError) -> None:
        """Bad input: raise it when strict, else keep its message as a warning."""
        if self.strict:
            raise error
        self.warnings.append(str(error))

    def note(self, message: str) -> None:
        """A warning in every mode (skipped unsupported files, links not followed)."""
        self.warnings.append(message)


# --------------------------------------------------------------------------- public API


def ingest(
    sources: Sequence[str | Path],
    *,
    strict: bool = False,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    max_file_mb: float = 20.0,
    show_progress: bool = False,
    spool: TextSpool | None = None,
) -> IngestReport:
    """Read every supported file under ``sources`` into cleaned, de-duplicated documents.

    ``include`` / ``exclude`` are glob patterns matched against each file's path relative to
    its SOURCE folder and against its name (``exclude`` also prunes matching folders); they
    do not apply to a SOURCE that is itself a file.  Files over ``max_file_mb`` (10^6 bytes)
    are skipped without being read.  Documents with the same cleaned text are kept once,
    under the id that sorts first; the others are listed in ``duplicates`` (and ``dropped``).
    With a ``spool``, the documents are :class:`SpooledDocument` s, their texts in the spool.
    """
    if isinstance(sources, (str, Path)):
        sources = [sources]
    if not sources:
        raise KinjectError("no SOURCE given: name at least one folder or file to ingest")
    if max_file_mb <= 0:
        raise KinjectError(f"max_file_mb must be positive, got {max_file_mb}")
    run = _Run(strict, tuple(include), tuple(exclude), int(max_file_mb * 1_000_000))
    files = [file for source in sources for file in _source_files(Path(source), run)]
    documents: list[Document] = []
    owners: dict[str, Path] = {}
    with progress_bar("ingesting", total=len(files), enabled=show_progress) as bar:
        for file in files:
            for document in _file_documents(file, run, spool):
                if _claim_id(document, file.path, owners, run):
                    documents.append(document)
            bar.advance(1, info=file.doc_id)
    kept, duplicates = _drop_exact_duplicates(documents)
    dropped_ids = {dropped for dropped, _ in duplicates}
    dropped = sorted((d for d in documents if d.id in dropped_ids), key=lambda d: d.id)
    return IngestReport(kept, run.warnings, duplicates, dropped)


def clean_text(text: str) -> str:
    """Normalise text: NFC, ``\\n`` line ends, no control or invisible format characters,
    single spaces, no spaces at line ends, at most one blank line in a row, stripped.

    Tabs and other spaces (no-break, thin, ...) become one space; form feeds, vertical tabs
    and Unicode line separators become line breaks.  Zero-width (non-)joiners are kept, as
    some scripts need them; every other format character (zero-width space, soft hyphen,
    byte-order mark, direction marks) is removed.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = unicodedata.normalize("NFC", text.translate(_character_table()))
    text = _SPACE_RUNS.sub(" ", text)
    text = _SPACES_AROUND_NEWLINES.sub("\n", text)
    return _BLANK_LINE_RUNS.sub("\n\n", text).strip()


def html_to_text(html: str) -> tuple[str, str | None]:
    """The visible text of an HTML page (cleaned) and its ``<title>`` (or None).

    Script, style, noscript, template and head contents are dropped; block elements start
    and end lines, inline elements (``b``, ``a``, ``span``) do not; source line breaks count
    as spaces except inside ``<pre>``.
    """
    text, title, _ = html_to_text_and_headings(html)
    return text, title


def html_to_text_and_headings(html: str) -> tuple[str, str | None, tuple[Heading, ...]]:
    """:func:`html_to_text`, and the page's ``<h1>`` … ``<h6>`` headings in that text."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, _html_parser())
    text = clean_text(_join_html_pieces(_html_pieces(soup)))
    found = [  # each heading's text as the page's text has it
        (int(tag.name[1]), _join_html_pieces(_html_pieces(tag)))
        for tag in soup.find_all(_HTML_HEADINGS)
        if not any(parent.name in _HTML_DROP for parent in tag.parents)
    ]
    headings = locate_headings(text, found, blank_before=True, blank_after=True)
    return text, _html_title(soup), headings


def squad_paragraph_id(title: str, index: int) -> str:
    """The document id of paragraph ``index`` (0-based, within its article) of a SQuAD article."""
    return f"{title}#{index}"


# --------------------------------------------------------------------------- finding files


def _source_files(source: Path, run: _Run) -> list[_File]:
    """The files to ingest from one SOURCE argument, in processing order."""
    if not source.exists():
        raise KinjectError(f"{source}: no such file or folder")
    root = os.path.abspath(source)
    if source.is_dir():
        walker = _Walker(source, root, run)
        walker.walk(source)
        walker.report_unsupported()
        return walker.files
    if not source.is_file():
        raise KinjectError(f"{source}: not a regular file or folder")
    if _kind(source) is None:
        raise KinjectError(
            f"{source}: unsupported file type '{source.suffix or source.name}' "
            f"(supported: {', '.join(SUPPORTED_SUFFIXES)}, {_SUPPORTED_NAMES})"
        )
    return [_File(source, source.name, root, root)]


class _Walker:
    """Walks one SOURCE folder in sorted order, collecting the files to ingest."""

    def __init__(self, source: Path, root: str, run: _Run):
        self.source = source
        self.root = root
        self.real_root = source.resolve()
        self.run = run
        self.visited: set[Path] = set()
        self.files: list[_File] = []
        self.unsupported: Counter[str] = Counter()

    def walk(self, folder: Path) -> None:
        self.visited.add(folder.resolve())
        for entry in self._entries(folder):
            if entry.name.startswith("."):
                continue
            if entry.is_symlink() and not self._follow_link(entry):
                continue
            relative = entry.relative_to(self.source).as_posix()
            if entry.is_dir():
                if not _matches(self.run.exclude, relative, entry.name):
                    self.walk(entry)
            elif entry.is_file():
                self._add_file(entry, relative)
            else:
                self.run.note(f"{entry}: not a regular file or folder, skipped")

    def _entries(self, folder: Path) -> list[Path]:
        try:
            return sorted(folder.iterdir(), key=lambda path: path.name)
        except OSError as error:
            self.run.problem(KinjectError(f"{folder}: cannot list folder ({error.strerror})"))
            return []

    def _follow_link(self, link: Path) -> bool:
        """Whether a symbolic link leads inside the SOURCE folder, and not back into a loop."""
        try:
            target = link.resolve(strict=True)
        except (OSError, RuntimeError):
            self.run.note(f"{link}: broken symbolic link, not followed")
            return False
        if not target.is_relative_to(self.real_root):
            self.run.note(f"{link}: symbolic link to {target}, outside {self.source}, not followed")
            return False
        if target.is_dir() and target in self.visited:
            self.run.note(f"{link}: symbolic link to a folder already visited, not followed")
            return False
        return True

    def _add_file(self, path: Path, relative: str) -> None:
        if self.run.include and not _matches(self.run.include, relative, path.name):
            return
        if _matches(self.run.exclude, relative, path.name):
            return
        if _kind(path, sniff_xml=True) is None:
            self.unsupported[path.suffix.lower() or "no extension"] += 1
            return
        self.files.append(_File(path, relative, os.path.abspath(path), self.root))

    def report_unsupported(self) -> None:
        count = sum(self.unsupported.values())
        if count:
            kinds = ", ".join(sorted(self.unsupported))
            noun = "file of unsupported type" if count == 1 else "files of unsupported types"
            self.run.note(f"{self.source}: skipped {count} {noun} ({kinds})")


def _matches(patterns: tuple[str, ...], relative: str, name: str) -> bool:
    return any(fnmatch(relative, pattern) or fnmatch(name, pattern) for pattern in patterns)


# --------------------------------------------------------------------------- reading files


def _file_documents(file: _File, run: _Run, spool: TextSpool | None) -> list[Document]:
    """The documents in one file; bad input is raised (strict) or warned about and skipped.
    With a ``spool``, texts go to it as they are read; a file that fails part-way is taken
    back out of it, as it is left out of the documents."""
    mark = spool.size if spool is not None else 0
    try:
        kind = _kind(file.path)
        documents: Iterable[IngestedDocument]
        if kind in _STREAMED_READERS:
            _check_size(file.path, run.max_bytes)
            documents = _STREAMED_READERS[kind](file, run)
        else:
            raw = _read_bytes(file.path, run.max_bytes)
            documents = _READERS[kind](file, raw, run)
            del raw
        if spool is None:
            return list(documents)
        return [spool.keep(document) for document in documents]
    except KinjectError as error:
        if spool is not None:
            spool.truncate(mark)
        run.problem(error)
        return []


def _kind(path: Path, sniff_xml: bool = False) -> str | None:
    """Which reader a file needs (a key of _READERS or _STREAMED_READERS), None if unsupported.
    ``sniff_xml`` (walking a folder): an .xml file is a source only with a ``<mediawiki`` root;
    a file named on the command line is read, and its reader says what is wrong with it."""
    from kinject.sources.wikidump import is_dump_name, is_wikiextractor_name

    if is_wikiextractor_name(path.name):
        return _WIKIEXTRACTOR
    if is_dump_name(path.name):
        return ".xml.bz2"
    suffix = path.suffix.lower()
    if suffix == ".xml" and sniff_xml and not _is_mediawiki_xml(path):
        return None  # another kind of XML (a pom.xml, a sitemap): not a document source
    return suffix if suffix in SUPPORTED_SUFFIXES else None


def _is_mediawiki_xml(path: Path) -> bool:
    """Whether an .xml file's root element is ``<mediawiki`` (read from its first 4 KB)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(4096)
    except OSError:
        return True  # let the reader report the file it cannot read
    return b"<mediawiki" in head


def _read_bytes(path: Path, max_bytes: int) -> bytes:
    """The file's bytes, after checking its size (so an oversized file is never read)."""
    _check_size(path, max_bytes)
    try:
        return path.read_bytes()
    except OSError as error:
        raise DataError(path, None, None, f"cannot read file ({error.strerror})") from None


def _check_size(path: Path, max_bytes: int) -> None:
    try:
        size = path.stat().st_size
    except OSError as error:
        raise DataError(path, None, None, f"cannot read file ({error.strerror})") from None
    if size > max_bytes:
        limit = f"{max_bytes / 1e6:g} MB"
        raise DataError(
            path,
            None,
            None,
            f"too large ({size / 1e6:.1f} MB > {limit}; raise max_file_mb in the KB config)",
        )
    if size == 0:
        raise DataError(path, None, None, "empty file")


def _check_not_binary(path: Path, raw: bytes) -> None:
    position = raw.find(b"\x00", 0, _BINARY_PROBE_BYTES)
    if position >= 0:
        raise DataError(path, None, None, f"binary file (NUL byte at offset {position})")


def _decode(path: Path, raw: bytes, first_line: int = 1, offset: int = 0) -> str:
    """UTF-8 text; an invalid byte is reported with its line and byte offset in the file."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = first_line + raw.count(b"\n", 0, error.start)
        message = f"invalid UTF-8 at byte {offset + error.start}"
        raise DataError(path, line, None, message) from None


def _document(
    file: _File, doc_id: str, text: str, title: str | None, headings: tuple[Heading, ...] = ()
) -> IngestedDocument:
    sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return IngestedDocument(doc_id, text, title, file.source, file.root, sha256, headings)


def _clean_title(title: str | None) -> str | None:
    """A one-line title, or None when there is nothing left of it."""
    if title is None:
        return None
    return " ".join(clean_text(title).split()) or None


def _read_text(file: _File, raw: bytes, run: _Run) -> list[IngestedDocument]:
    _check_not_binary(file.path, raw)
    text = clean_text(_decode(file.path, raw))
    if not text:
        raise DataError(file.path, None, None, "no text after cleaning")
    if file.path.suffix.lower() not in (".md", ".markdown"):
        return [_document(file, file.doc_id, text, None)]
    headings = markdown_headings(text)
    title, headings = _title_from_headings(None, headings)
    return [_document(file, file.doc_id, text, title, headings)]


def _read_html(file: _File, raw: bytes, run: _Run) -> list[IngestedDocument]:
    _check_not_binary(file.path, raw)
    text, title, headings = html_to_text_and_headings(_decode(file.path, raw))
    if not text:
        raise DataError(file.path, None, None, "no visible text after cleaning")
    title, headings = _title_from_headings(title, headings)
    return [_document(file, file.doc_id, text, title, headings)]


# --------------------------------------------------------------------------- headings

# An ATX heading: 1-6 '#', a space, the text, optionally closed by '#'s (CommonMark).
_MARKDOWN_HEADING = re.compile(r"^(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_MARKDOWN_FENCE = re.compile(r"^(```|~~~)")


def markdown_headings(text: str) -> tuple[Heading, ...]:
    """The ATX headings (``# Title``, ``## Section``) of a Markdown text, outside fenced code
    blocks, each at the start of its line."""
    headings, fence, start = [], None, 0
    for line in text.split("\n"):
        opening = _MARKDOWN_FENCE.match(line)
        if opening and (fence is None or opening.group(1) == fence):
            fence = None if fence else opening.group(1)
        elif fence is None:
            match = _MARKDOWN_HEADING.match(line)
            name = _clean_title(match.group(2)) if match else None
            if name:
                headings.append(Heading(start, len(match.group(1)), name))
        start += len(line) + 1
    return tuple(headings)


def locate_headings(
    text: str,
    found: Iterable[tuple[int, str]],
    blank_before: bool = False,
    blank_after: bool = False,
) -> tuple[Heading, ...]:
    """``(level, heading)`` pairs, in document order, placed at the lines of ``text`` that
    hold them (each after the one before; ``blank_before`` / ``blank_after``: only a line
    with a blank line or the text's start / end on that side, as a heading block has, so a
    table of contents' line is passed over); a heading with no such line is left out."""
    before = r"(?:\A|(?<=\n\n))" if blank_before else "^"
    after = r"(?=\n\n|\Z)" if blank_after else "$"
    headings, position = [], 0
    for level, raw in found:
        name = _clean_title(raw)
        if not name:
            continue
        pattern = re.compile(rf"{before}{re.escape(name)}{after}", re.MULTILINE)
        match = pattern.search(text, position)
        if match is not None:
            headings.append(Heading(match.start(), level, name))
            position = match.end()
    return tuple(headings)


def _title_from_headings(
    title: str | None, headings: tuple[Heading, ...]
) -> tuple[str | None, tuple[Heading, ...]]:
    """A document without a title takes its first heading as title (and out of its
    headings: the title heads every chunk anyway)."""
    if title is None and headings:
        return headings[0].text, headings[1:]
    return title, headings


# --------------------------------------------------------------------------- HTML


@lru_cache(maxsize=1)
def _html_parser() -> str:
    try:
        import lxml  # noqa: F401
    except ImportError:
        return "html.parser"
    return "lxml"


def _html_title(soup: Any) -> str | None:
    tag = soup.head.find("title") if soup.head is not None else None
    if tag is None:
        tag = soup.find("title")
    return _clean_title(tag.get_text()) if tag is not None else None


def _html_pieces(soup: Any) -> list[str | int]:
    """Visible text and breaks (1: line, 2: paragraph) in document order.

    Whitespace runs in text become one space, except inside ``<pre>``; comments, doctypes
    and the contents of :data:`_HTML_DROP` elements are left out.  Iterative, so deeply
    nested pages do not hit the recursion limit.
    """
    from bs4 import CData, NavigableString, Tag

    pieces: list[str | int] = []
    # (children left to visit, what to emit after them, inside <pre>)
    stack: list[tuple[Iterator[Any], str | int | None, bool]] = [(iter(soup.children), None, False)]
    while stack:
        children, after, in_pre = stack[-1]
        child = next(children, None)
        if child is None:
            stack.pop()
            if after is not None:
                pieces.append(after)
        elif isinstance(child, Tag) and child.name == "br":
            pieces.append("\n")
        elif isinstance(child, Tag) and child.name not in _HTML_DROP:
            brk = _HTML_BREAKS.get(child.name)
            if brk is not None:
                pieces.append(brk)
            closing = brk if brk is not None else (" " if child.name in _HTML_CELLS else None)
            stack.append((iter(child.children), closing, in_pre or child.name == "pre"))
        elif type(child) in (NavigableString, CData):
            pieces.append(str(child) if in_pre else _WHITESPACE_RUNS.sub(" ", child))
    return pieces


def _join_html_pieces(pieces: list[str | int]) -> str:
    """Text with adjacent breaks merged into the strongest (so nested blocks add no blank
    lines); a collapsed space next to a break is dropped."""
    out: list[str] = []
    pending = 0
    for piece in pieces:
        if isinstance(piece, int):
            pending = max(pending, piece)
        elif pending and piece == " ":
            continue
        else:
            if pending:
                out.append("\n" * pending)
                pending = 0
            out.append(piece)
    return "".join(out)


# --------------------------------------------------------------------------- JSONL corpus


def _read_jsonl(file: _File, raw: bytes, run: _Run) -> list[IngestedDocument]:
    """One document per line; a bad line is a warning (or error) and is skipped."""
    _check_not_binary(file.path, raw)
    if not raw.strip():
        raise DataError(file.path, None, None, "no text (only blank lines)")
    documents: list[IngestedDocument] = []
    lines: dict[str, int] = {}
    for number, offset, line in _byte_lines(raw):
        try:
            record = _jsonl_record(file.path, number, offset, line)
            if record is None:
                continue
            doc_id, text, title, headings = record
            if doc_id in lines:
                message = f"duplicate id '{doc_id}' (first on line {lines[doc_id]})"
                raise DataError(file.path, number, "id", message)
        except DataError as error:
            run.problem(error)
            continue
        lines[doc_id] = number
        documents.append(_document(file, doc_id, text, title, headings))
    return documents


def _byte_lines(raw: bytes) -> Iterator[tuple[int, int, bytes]]:
    """``(line number, byte offset, line)`` for each ``\\n``-separated line of ``raw``."""
    offset = 0
    for number, line in enumerate(raw.split(b"\n"), start=1):
        yield number, offset, line
        offset += len(line) + 1


def _jsonl_record(
    path: Path, number: int, offset: int, line: bytes
) -> tuple[str, str, str | None, tuple[Heading, ...]] | None:
    """``(id, cleaned text, title, headings)`` of one corpus line, None for a blank line."""
    decoded = _decode(path, line, number, offset)
    if number == 1:
        decoded = decoded.removeprefix("\ufeff")
    if not decoded.strip():
        return None
    obj = parse_json(path, number, decoded)
    if not isinstance(obj, dict):
        raise DataError(path, number, None, "expected a JSON object")
    check_corpus_record(path, number, obj)
    text = clean_text(obj["text"])
    if not text:
        raise DataError(path, number, "text", "no text after cleaning")
    headings = locate_headings(text, obj.get("headings", []))
    return obj["id"], text, _clean_title(obj.get("title")), headings


# --------------------------------------------------------------------------- SQuAD JSON


def _read_squad(file: _File, raw: bytes, run: _Run) -> list[IngestedDocument]:
    """One document per paragraph of a SQuAD v1.1 file, id ``"{title}#{index}"``."""
    _check_not_binary(file.path, raw)
    decoded = _decode(file.path, raw).removeprefix("\ufeff")
    obj = parse_json(file.path, None, decoded)
    documents: list[IngestedDocument] = []
    for article, (title, contexts) in enumerate(_squad_articles(file.path, obj)):
        clean_title = _clean_title(title.replace("_", " "))
        for index, context in enumerate(contexts):
            text = clean_text(context)
            if not text:
                where = f"data[{article}].paragraphs[{index}].context"
                run.problem(DataError(file.path, None, where, "no text after cleaning"))
                continue
            documents.append(_document(file, squad_paragraph_id(title, index), text, clean_title))
    return documents


def _squad_articles(path: Path, obj: Any) -> list[tuple[str, list[str]]]:
    """``(title, paragraph contexts)`` per article, checking the whole layout first."""

    def not_squad(where: str | None, why: str) -> DataError:
        return DataError(path, None, where, f"not a SQuAD-format JSON file ({why})")

    if not isinstance(obj, dict) or not isinstance(obj.get("data"), list):
        raise not_squad(None, 'expected {"data": [{"title": ..., "paragraphs": [...]}]}')
    articles = []
    for i, article in enumerate(obj["data"]):
        if not isinstance(article, dict):
            raise not_squad(f"data[{i}]", "expected an object")
        title, paragraphs = article.get("title"), article.get("paragraphs")
        if not isinstance(title, str) or not title:
            raise not_squad(f"data[{i}].title", "expected a non-empty string")
        if not isinstance(paragraphs, list):
            raise not_squad(f"data[{i}].paragraphs", "expected a list")
        for j, paragraph in enumerate(paragraphs):
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("context"), str):
                raise not_squad(f"data[{i}].paragraphs[{j}].context", "expected a string")
        articles.append((title, [paragraph["context"] for paragraph in paragraphs]))
    if not any(contexts for _, contexts in articles):
        raise DataError(path, None, "data", "no paragraphs")
    return articles


# --------------------------------------------------------------------------- PDF


def _read_pdf(file: _File, raw: bytes, run: _Run) -> list[IngestedDocument]:
    text = clean_text("\n\n".join(_pdf_pages(file.path, raw)))
    if not text:
        raise DataError(file.path, None, None, "no extractable text (a scanned PDF needs OCR)")
    return [_document(file, file.doc_id, text, None)]


def _pdf_pages(path: Path, raw: bytes) -> list[str]:
    """The text of each page; unreadable and password-protected PDFs are DataErrors."""
    try:
        import pypdf
    except ImportError:
        raise KinjectError(f"{path}: reading PDF files needs pypdf; {_PDF_EXTRA}") from None
    # pypdf logs what it repairs ("EOF marker not found"); what it cannot read is raised
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = pypdf.PdfReader(BytesIO(raw))
        if reader.is_encrypted and not reader.decrypt(""):
            raise DataError(path, None, None, "encrypted PDF (needs a password)")
        return [page.extract_text() or "" for page in reader.pages]
    except KinjectError:
        raise
    except Exception as error:  # noqa: BLE001 -- pypdf raises many kinds on malformed files
        detail = " ".join(str(error).split())
        message = f"unreadable PDF ({type(error).__name__}: {detail})"
        raise DataError(path, None, None, message) from None


# --------------------------------------------------------------------------- Wikipedia


def _read_wiki_dump(file: _File, run: _Run) -> Iterator[IngestedDocument]:
    """The articles of a MediaWiki XML export or dump, streamed from disk, one by one."""
    from kinject.sources.wikidump import dump_pages

    return _wiki_documents(file, dump_pages(file.path, run.problem))


def _read_wikiextractor(file: _File, raw: bytes, run: _Run) -> Iterator[IngestedDocument]:
    from kinject.sources.wikidump import wikiextractor_pages

    return _wiki_documents(file, wikiextractor_pages(file.path, raw, run.problem))


def _wiki_documents(file: _File, pages) -> Iterator[IngestedDocument]:
    found = False
    for page in pages:
        text = clean_text(page.text)
        if text:  # nothing may be left of a page of control characters
            found = True
            headings = locate_headings(text, page.headings, blank_before=True)
            yield _document(file, page.id, text, _clean_title(page.title), headings)
    if not found:
        raise DataError(file.path, None, None, "no article pages with text")


_READERS = {
    ".txt": _read_text,
    ".md": _read_text,
    ".markdown": _read_text,
    ".html": _read_html,
    ".htm": _read_html,
    ".jsonl": _read_jsonl,
    ".json": _read_squad,
    ".pdf": _read_pdf,
    _WIKIEXTRACTOR: _read_wikiextractor,
}
_STREAMED_READERS = {".xml": _read_wiki_dump, ".xml.bz2": _read_wiki_dump}


# --------------------------------------------------------------------------- ids and text


def _claim_id(document: Document, path: Path, owners: dict[str, Path], run: _Run) -> bool:
    """Whether ``document``'s id is still free; the first file to use an id keeps it."""
    first = owners.get(document.id)
    if first is None:
        owners[document.id] = path
        return True
    message = f"duplicate id '{document.id}' (already taken by {first}), skipped"
    run.problem(DataError(path, None, None, message))
    return False


def _drop_exact_duplicates(
    documents: list[Document],
) -> tuple[list[Document], list[tuple[str, str]]]:
    """Documents sorted by id, each text once (under its first id); ``(dropped, kept)`` ids."""
    kept: list[Document] = []
    duplicates: list[tuple[str, str]] = []
    first: dict[str, str] = {}
    for document in sorted(documents, key=lambda d: d.id):
        if document.sha256 in first:
            duplicates.append((document.id, first[document.sha256]))
        else:
            first[document.sha256] = document.id
            kept.append(document)
    return kept, duplicates


@lru_cache(maxsize=1)
def _character_table() -> dict[int, str | None]:
    """``str.translate`` table: drop control, format and surrogate code points; unify spaces."""
    table: dict[int, str | None] = {}
    for code in range(sys.maxunicode + 1):
        category = unicodedata.category(chr(code))
        if category in ("Cc", "Cf", "Cs"):
            table[code] = None
        elif category == "Zs" and code != 0x20:
            table[code] = " "
    for kept in ("\n", "\t", "\u200c", "\u200d"):  # line breaks, tabs, zero-width (non-)joiner
        del table[ord(kept)]
    for line_break in ("\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028"):
        table[ord(line_break)] = "\n"
    table[0x2029] = "\n\n"  # paragraph separator
    return table
