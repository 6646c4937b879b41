"""Token-based chunking with sentence-aware boundaries.

A document is tokenized once (with character offsets); sentences become token ranges; chunks
are runs of whole sentences of at most ``size`` tokens, and each chunk after the first starts
with the last sentences of the one before, up to ``overlap`` tokens::

    sentences   |--s0--|---s1---|-s2-|----s3----|--s4--|
    chunk 0     |--s0--|---s1---|-s2-|                        (<= size tokens)
    chunk 1                     |-s2-|----s3----|--s4--|      (s2 carried: <= overlap tokens)

A sentence longer than ``size`` tokens is cut into windows of at most ``size`` tokens that
overlap by at most ``overlap``, cut between words (inside a word only when one word is longer
than a window).  Every chunk is an exact character span of its document:
``chunk.text == document.text[chunk.start:chunk.end]``.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from dataclasses import dataclass
from typing import Any

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

    @property
    def sha256(self) -> str:
        return text_hash(self.text)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "doc_id": self.doc_id,
            "index": self.index,
            "start": self.start,
            "end": self.end,
            "text": self.text,
            "sha256": self.sha256,
        }


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

    def chunk(self, doc_id: str, text: str) -> list[Chunk]:
        offsets = self._token_offsets(text)
        if not offsets:
            return []
        starts = [start for start, _ in offsets]
        units = []  # sentences as token ranges [first, last)
        for a, b in sentence_spans(text):
            first, last = bisect.bisect_left(starts, a), bisect.bisect_left(starts, b)
            if last > first:
                units.append((first, last))
        # word_start[i]: token i follows whitespace (or opens the text), so a cut before it
        # does not split a word
        word_start = [i == 0 or offsets[i - 1][1] < offsets[i][0] for i in range(len(offsets))]
        ranges = self._pack(units, word_start)
        chunks = []
        for index, (first, last) in enumerate(ranges):
            start, end = offsets[first][0], offsets[last - 1][1]
            chunks.append(Chunk(f"{doc_id}::{index}", doc_id, index, start, end, text[start:end]))
        return chunks

    def _token_offsets(self, text: str) -> list[tuple[int, int]]:
        encoding = self.tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )
        return [(a, b) for a, b in encoding["offset_mapping"] if b > a]

    def _pack(self, units: list[tuple[int, int]], word_start: list[bool]) -> list[tuple[int, int]]:
        """Token ranges of the chunks: whole sentences, carried overlap, long ones windowed."""
        ranges: list[tuple[int, int]] = []
        current: list[tuple[int, int]] = []
        for unit in units:
            length = unit[1] - unit[0]
            if length > self.size:
                if current:
                    ranges.append((current[0][0], current[-1][1]))
                ranges.extend(self._windows(*unit, word_start))
                current = []
                continue
            if current and unit[1] - current[0][0] > self.size:
                ranges.append((current[0][0], current[-1][1]))
                current = self._carried(current, room=self.size - length)
            current.append(unit)
        if current:
            ranges.append((current[0][0], current[-1][1]))
        return ranges

    def _carried(self, previous: list[tuple[int, int]], room: int) -> list[tuple[int, int]]:
        """The last sentences of ``previous`` that fit in ``overlap`` (and beside the next one)."""
        budget = min(self.overlap, room)
        carried: list[tuple[int, int]] = []
        for unit in reversed(previous[1:]):  # never the first: every chunk must move forward
            if previous[-1][1] - unit[0] > budget:
                break
            carried.insert(0, unit)
        return carried

    def _windows(self, first: int, last: int, word_start: list[bool]) -> list[tuple[int, int]]:
        """Windows of at most ``size`` tokens over ``[first, last)``, each ending before the
        last word start that fits and the next one starting at the first word start within
        ``overlap`` tokens of that end (hard cuts only where no word starts)."""
        windows = []
        start = first
        while True:
            end = min(start + self.size, last)
            if end < last:
                end = next((i for i in range(end, start, -1) if word_start[i]), end)
            windows.append((start, end))
            if end == last:
                return windows
            after = range(max(end - self.overlap, start + 1), end)
            start = next((i for i in after if word_start[i]), end)
