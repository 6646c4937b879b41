"""Corpus documents in kinject's JSONL format: ``{"id", "text", "title"?, "source"?, "meta"?}``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kinject.errors import DataError
from kinject.fileio import read_jsonl


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    title: str | None = None
    source: str | None = None
    meta: dict = field(default_factory=dict)


CORPUS_FIELDS = ("id", "text", "title", "source", "meta", "headings")


def check_corpus_record(path: Path, line: int, obj: dict) -> None:
    """One line of corpus JSONL; a bad field raises a DataError naming file, line and field."""
    for key in obj:
        if key not in CORPUS_FIELDS:
            raise DataError(path, line, key, "unknown field")
    for key in ("id", "text"):
        if not isinstance(obj.get(key), str) or not obj[key]:
            raise DataError(path, line, key, "missing or not a non-empty string")
    for key in ("title", "source"):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            raise DataError(path, line, key, "expected a string")
    if not isinstance(obj.get("meta", {}), dict):
        raise DataError(path, line, "meta", "expected an object")
    headings = obj.get("headings", [])
    if not isinstance(headings, list):
        raise DataError(path, line, "headings", 'expected a list of [level, "heading"] pairs')
    for index, pair in enumerate(headings):
        if not (
            isinstance(pair, list)
            and len(pair) == 2
            and type(pair[0]) is int
            and 1 <= pair[0] <= 6
            and isinstance(pair[1], str)
        ):
            why = 'expected [level, "heading"] with level 1 to 6'
            raise DataError(path, line, f"headings[{index}]", why)


def load_corpus_jsonl(path: str | Path) -> dict[str, Document]:
    path = Path(path)
    documents: dict[str, Document] = {}
    lines: dict[str, int] = {}
    for line, obj in read_jsonl(path):
        check_corpus_record(path, line, obj)
        doc_id = obj["id"]
        if doc_id in documents:
            raise DataError(
                path, line, "id", f"duplicate id '{doc_id}' (first on line {lines[doc_id]})"
            )
        documents[doc_id] = Document(
            doc_id, obj["text"], obj.get("title"), obj.get("source"), obj.get("meta", {})
        )
        lines[doc_id] = line
    return documents
