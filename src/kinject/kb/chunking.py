"""Token-based chunking with sentence-aware boundaries.

A document is tokenized once (with character offsets); sentences become token ranges; chunks
are runs of whole sentences of at most ``size`` tokens, and each chunk after the first starts
with the last sentences of the one before, up to ``overlap`` tokens::

    sentences   |--s0--|---s1---|-s2-|----s3----|--s4--|
    chunk 0     |--s0--|---s1---|-s2-|                        (<= size tokens)
    chunk 1                     |-s2-|----s3----|--s4--|      (s2 carried: <= overlap tokens)

A sentence longer than ``size`` tokens is cut into windows of at most ``size`` tokens that
overlap by at most ``overlap``, cut between words (inside a word only when one word is longer
than a window, and then between characters: a byte-level tokenizer spreads one character over
several tokens).  Every chunk is an exact character span of its document:
``chunk.text == document.text[chunk.start:chunk.end]``, without whitespace at either end,
and chunks move forward: each starts and ends after the one before it.  Nothing is lost and
nothing repeated but the overlap: what lies between two chunks (or before the first, after
the last) is whitespace, so the chunks, each without the part it shares with the one before,
and the whitespace between them, are the text again (a text of which the tokenizer reads
nothing, such as a lone control character, gives no chunks).
"""

from __future__ import annotations

import bisect
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

# The end of a sentence: . ! ? (then closing quotes/brackets) and whitespace; or a blank line.
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s+|\n\s*\n")


@dataclass(frozen=True)
class Chunk:
    id: str  # "{doc_id}::{index}"
    doc_id: str
    index: int  # position within its document
    start: int  # character span in the document's text
    end: int
    text: str
    heading: str = ""  # its document's title and the headings above it (see heading_line)

    @property
    def sha256(self) -> str:
        return text_hash(self.text)

    @property
    def indexed(self) -> str:
        """What the retrievers index and the LLM's context shows: the heading line, a line
        break, the chunk's text (the text alone when there is no heading line)."""
        return f"{self.heading}\n{self.text}" if self.heading else self.text

    def to_json(self) -> dict[str, Any]:
        row = {
            "id": self.id,
            "doc_id": self.doc_id,
            "index": self.index,
            "start": self.start,
            "end": self.end,
            "text": self.text,
            "sha256": self.sha256,
        }
        if self.heading:
            row["heading"] = self.heading
        return row


class Heading(NamedTuple):
    """A section heading of a document: where its line starts in the text, its level (1 for
    ``#`` or ``<h1>``, 2 for ``##``, ``<h2>`` or ``== X ==``, ...) and its text."""

    start: int
    level: int
    text: str


INDEX_TEXTS = ("title+headings+text", "title+text", "text")
HEADING_SEPARATOR = " > "


def heading_line(
    title: str | None, headings: Sequence[Heading], start: int, index_text: str
) -> str:
    """The line a chunk starting at character ``start`` is indexed under: with
    ``index_text`` ``title+headings+text``, the document's title and the headings of the
    sections it lies in (those that start before it, the innermost of each level, outer
    first), joined by ``" > "``: ``"Paris > History > Middle Ages"``; with ``title+text``
    the title alone; with ``text`` nothing."""
    if index_text not in INDEX_TEXTS:
        raise ValueError(f"index_text '{index_text}': expected one of {', '.join(INDEX_TEXTS)}")
    parts = [title] if title and index_text != "text" else []
    if index_text == "title+headings+text":
        path: dict[int, str] = {}
        for heading in headings:
            if heading.start >= start:
                break
            path = {level: text for level, text in path.items() if level < heading.level}
            path[heading.level] = heading.text
        for level in sorted(path):
            if not parts or parts[-1] != path[level]:  # an <h1> that repeats the <title>
                parts.append(path[level])
    return HEADING_SEPARATOR.join(parts)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of sentences (trailing whitespace excluded; blank spans dropped)."""
    spans, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        spans.append((start, match.start() + len(match.group().rstrip())))
        start = match.end()
    spans.append((start, len(text)))
    return [(a, b) for a, b in spans if text[a:b].strip()]


class Chunker:
    """Splits document texts into chunks of at most ``size`` tokens of ``tokenizer``."""

    def __init__(self, tokenizer, size: int = 256, overlap: int = 32):
        if not 0 <= overlap < size:
            raise ValueError(f"chunk overlap ({overlap}) must be >= 0 and below size ({size})")
        self.tokenizer = tokenizer
        self.size = size
        self.overlap = overlap

    def chunk(self, doc_id: str, text: str, reserve: int = 0) -> list[Chunk]:
        """``text``'s chunks; ``reserve``: tokens each chunk leaves free (for its heading
        line, when the retriever sees one: see :func:`heading_line`)."""
        size = max(min(8, self.size), self.size - reserve)
        overlap = min(self.overlap, size - 1)
        offsets = self._token_offsets(text)
        if not offsets:
            return []
        # A sentence's tokens are those that end inside it: a byte-level BPE token such as
        # " The" starts on the space before its sentence and still belongs to it.
        ends = [end for _, end in offsets]
        units = []  # sentences as token ranges [first, last)
        for a, b in sentence_spans(text):
            first, last = bisect.bisect_right(ends, a), bisect.bisect_right(ends, b)
            if last > first:
                units.append((first, last))
        chunks = []
        for first, last in self._pack(units, _cuts(text, offsets), size, overlap):
            # From the end of the token before (characters no token reads, such as U+FFFD
            # or a zero-width joiner for MiniLM, go with the chunk that follows them) to the
            # end of the last token (of the text, for the last chunk); whitespace trimmed.
            start = offsets[first - 1][1] if first else 0
            end = offsets[last - 1][1] if last < len(offsets) else len(text)
            while start < end and text[start].isspace():
                start += 1
            while end > start and text[end - 1].isspace():
                end -= 1
            if end > start:
                n = len(chunks)
                chunks.append(Chunk(f"{doc_id}::{n}", doc_id, n, start, end, text[start:end]))
        return chunks

    def tokens(self, text: str) -> int:
        """How many tokens ``text`` is (no special tokens)."""
        return len(self._token_offsets(text))

    def truncated(self, text: str, tokens: int) -> str:
        """``text`` cut after its first ``tokens`` tokens (whitespace at the end trimmed)."""
        offsets = self._token_offsets(text)
        return text if len(offsets) <= tokens else text[: offsets[tokens - 1][1]].rstrip()

    def _token_offsets(self, text: str) -> list[tuple[int, int]]:
        encoding = self.tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )
        return [(a, b) for a, b in encoding["offset_mapping"] if b > a]

    def _pack(
        self, units: list[tuple[int, int]], cuts: list[int], size: int, overlap: int
    ) -> list[tuple[int, int]]:
        """Token ranges of the chunks: whole sentences, carried overlap, long ones windowed."""
        ranges: list[tuple[int, int]] = []
        current: list[tuple[int, int]] = []
        for unit in units:
            length = unit[1] - unit[0]
            if length > size:
                if current:
                    ranges.append((current[0][0], current[-1][1]))
                ranges.extend(self._windows(*unit, cuts, size, overlap))
                current = []
                continue
            if current and unit[1] - current[0][0] > size:
                ranges.append((current[0][0], current[-1][1]))
                current = self._carried(current, unit, size, overlap)
            current.append(unit)
        if current:
            ranges.append((current[0][0], current[-1][1]))
        return ranges

    def _carried(
        self, previous: list[tuple[int, int]], following: tuple[int, int], size: int, overlap: int
    ) -> list[tuple[int, int]]:
        """The last sentences of ``previous`` that fit in ``overlap`` and, with the tokens up
        to the end of the ``following`` sentence (whitespace tokens between sentences
        included), in ``size``."""
        carried: list[tuple[int, int]] = []
        for unit in reversed(previous[1:]):  # never the first: every chunk must move forward
            if previous[-1][1] - unit[0] > overlap or following[1] - unit[0] > size:
                break
            carried.insert(0, unit)
        return carried

    def _windows(
        self, first: int, last: int, cuts: list[int], size: int, overlap: int
    ) -> list[tuple[int, int]]:
        """Windows of at most ``size`` tokens over ``[first, last)``, each ending before the
        last word start that fits and the next one starting at the first word start within
        ``overlap`` tokens of that end (where no word starts, cut between characters, and
        inside one only if a single character is more than ``size`` tokens).  A window ends
        after the one before it ended, so none lies inside another."""
        windows = []
        start, previous_end = first, first
        while True:
            end = min(start + size, last)
            if end < last:
                fits = range(end, previous_end, -1)
                end = next((i for i in fits if cuts[i] == _WORD), None) or next(
                    (i for i in fits if cuts[i] == _CHARACTER), end
                )
            windows.append((start, end))
            previous_end = end
            if end == last:
                return windows
            after = range(max(end - overlap, start + 1), end)
            start = next((i for i in after if cuts[i] == _WORD), end)


# How clean a cut before token i is (see _cuts).
_WORD, _CHARACTER, _INSIDE = 2, 1, 0


def _cuts(text: str, offsets: list[tuple[int, int]]) -> list[int]:
    """Per token: _WORD when whitespace comes before it (or it opens the text), so a cut
    before it splits no word; _CHARACTER when it starts a character (a cut splits a word but
    no character); _INSIDE when it continues the character of the token before it (a
    byte-level tokenizer's pieces of one character)."""
    cuts = [_WORD] * len(offsets)
    for i in range(1, len(offsets)):
        before, start = offsets[i - 1][1], offsets[i][0]
        if before > start:
            cuts[i] = _INSIDE
        elif before == start or not text[before:start].isspace():
            cuts[i] = _CHARACTER
    return cuts
