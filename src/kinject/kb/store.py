"""The knowledge-base folder: build, incremental update, and opening it for search.

Layout (every change writes a whole new snapshot, then switches ``kb.json`` to it in one
atomic rename; a crash at any point leaves the previous snapshot in use)::

    KB_DIR/
      kb.json                 {"format": 1, "snapshot": "snapshots/000002"}
      .lock                   held while the KB changes
      snapshots/000002/
        config.yaml           the KBConfig it was built with
        documents.jsonl       the cleaned corpus (kinject corpus JSONL), sorted by id
        manifest.jsonl        per document: id, sha256, title, headings ([start, level,
                              text] each), source, root, chars, chunks; an exact
                              duplicate (not indexed) also has duplicate_of
        duplicates.json       {dropped id: kept id} for exact-duplicate documents
        chunks.jsonl          per chunk: id, doc_id, index, start, end, text, sha256 and
                              heading: the line it is indexed under (config index_text),
                              its document's title and the headings above it
        embeddings.npy        float32 [chunks, dim], row i = line i of chunks.jsonl
        dense.faiss           FAISS index over the embeddings (same rows)
        bm25/                 bm25s index over the chunk texts (same rows)
        build.json            counts: documents, chunks, vectors embedded and reused;
                              costs: embed_seconds, index_seconds, index_bytes,
                              embeddings_bytes

Chunks and vectors of unchanged text are reused by content hash; the indexes are rebuilt from
the stored rows in document-id order, so a knowledge base after any sequence of updates
searches exactly like a fresh build of the same documents.

A snapshot is written as a stream, so a build needs memory for one batch of chunks and the
search indexes, not for the corpus::

    sources ──► ingest ──► TextSpool (texts on disk; in memory: id, title, hash, offset)
                              │  documents in id order, one text at a time
                              ▼
    documents.jsonl ◄── document ──► chunks ──► chunks.jsonl
                                        │ batches of SourceOptions.batch chunks
                                        ▼
                     new texts embedded ──► embeddings.npy (rows appended; header last)
                     texts tokenized    ──► BM25 term ids (4 bytes a token)
    then: dense.faiss from embeddings.npy (block by block), bm25/ from the term ids

A build reads its documents into a spool beside ``--out`` (an unlinked temporary file);
updates (add, update, remove) still hold the knowledge base's documents, chunks and vectors
in memory.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack, closing
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from kinject.config import KBConfig, load_config, to_yaml
from kinject.errors import KinjectError
from kinject.fileio import (
    atomic_open,
    exclusive_lock,
    parse_json,
    read_bytes,
    read_jsonl,
    staging_dir,
    write_json,
    write_jsonl,
    write_text,
)
from kinject.kb.chunking import Chunk, Chunker, Heading, heading_line, text_hash
from kinject.kb.ingest import Document, IngestedDocument, TextSpool, ingest

FORMAT = 1
POINTER = "kb.json"


@dataclass
class Change:
    """What one build or update did."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    embedded: int = 0  # vectors computed
    reused: int = 0  # vectors taken from the previous snapshot by content hash
    warnings: list[str] = field(default_factory=list)
    documents: int = 0
    chunks: int = 0


class KnowledgeBase:
    """An opened snapshot: its config, documents, chunks and (lazily) its search indexes."""

    def __init__(self, folder: Path, snapshot: Path):
        self.folder = folder
        self.snapshot = snapshot
        self.config = load_config(KBConfig, snapshot / "config.yaml")
        # built before chunks were indexed with titles and headings (build.json then names
        # no index_text): its chunks are indexed by their text alone, whatever config.yaml says
        build = json.loads((snapshot / "build.json").read_text(encoding="utf-8"))
        self.indexes_text_only = "index_text" not in build
        if self.indexes_text_only:
            self.config = self.config.model_copy(update={"index_text": "text"})
        self.manifest = [row for _, row in read_jsonl(snapshot / "manifest.jsonl")]
        self.chunks = [_chunk(row) for _, row in read_jsonl(snapshot / "chunks.jsonl")]
        self.duplicates: dict[str, str] = json.loads(
            (snapshot / "duplicates.json").read_text(encoding="utf-8")
        )
        self._embedder = None
        self._noted = False

    @classmethod
    def open(cls, folder: str | Path) -> KnowledgeBase:
        folder = Path(folder)
        pointer = folder / POINTER
        if not pointer.exists():
            raise KinjectError(
                f"{folder} is not a knowledge base (no {POINTER}); make one with `kinject kb build`"
            )
        data = parse_json(pointer, None, read_bytes(pointer).decode("utf-8", "replace"))
        if not isinstance(data, dict) or not isinstance(data.get("snapshot"), str):
            raise KinjectError(f'{pointer}: expected {{"format": {FORMAT}, "snapshot": "…"}}')
        if data.get("format") != FORMAT:
            raise KinjectError(f"{pointer}: unknown knowledge-base format {data.get('format')}")
        return cls(folder, folder / data["snapshot"])

    def identity(self) -> dict:
        """The snapshot in use: a changed knowledge base is a new snapshot (or a new build)."""
        build = self.snapshot / "chunks.jsonl"
        return {
            "kb": str(self.folder.resolve()),
            "snapshot": self.snapshot.name,
            "chunks": [build.stat().st_size, build.stat().st_mtime_ns],
        }

    def documents(self, with_duplicates: bool = False) -> list[IngestedDocument]:
        """The indexed documents, sorted by id; ``with_duplicates``: also those dropped as exact
        duplicates of one of them (the same text, under their own id, title and source)."""
        by_id = {row["id"]: row for row in self.manifest}
        result = []
        for _, row in read_jsonl(self.snapshot / "documents.jsonl"):
            meta = by_id[row["id"]]
            result.append(
                IngestedDocument(
                    row["id"],
                    row["text"],
                    row.get("title"),
                    meta["source"],
                    meta["root"],
                    meta["sha256"],
                    _headings(meta),
                )
            )
        if with_duplicates:
            texts = {document.id: document.text for document in result}
            result += [
                IngestedDocument(
                    row["id"],
                    texts[row["duplicate_of"]],
                    row.get("title"),
                    row["source"],
                    row["root"],
                    row["sha256"],
                    _headings(row),
                )
                for row in self.manifest
                if "duplicate_of" in row
            ]
            result.sort(key=lambda d: d.id)
        return result

    def embeddings(self) -> np.ndarray:
        return np.load(self.snapshot / "embeddings.npy")

    @property
    def embedder(self):
        from kinject.kb.embedders import make_embedder

        if self._embedder is None:
            self._embedder = make_embedder(self.config.embedder)
        return self._embedder

    def retriever(self, kind: str, fusion=None, rerank=None):
        """``dense``, ``bm25`` or ``hybrid`` over this snapshot's chunks (``fusion``: how
        hybrid fuses the two, a :class:`kinject.kb.retrievers.Fusion`; default RRF), its top
        chunks reordered by a cross-encoder when ``rerank`` (a :class:`RerankConfig`) is given."""
        first = self._first_stage(kind, fusion)
        if rerank is None:
            return first
        from kinject.kb.rerank import RerankedRetriever

        return RerankedRetriever(first, [chunk.indexed for chunk in self.chunks], rerank)

    def _first_stage(self, kind: str, fusion):
        from kinject.kb.embedders import resolve_preset
        from kinject.kb.indexes import load_bm25_index, load_dense_index
        from kinject.kb.retrievers import BM25Retriever, DenseRetriever, Fusion, HybridRetriever

        if self.indexes_text_only and not self._noted:
            self._noted = True
            print(
                f"note: {self.folder} indexes chunk texts alone (built before titles and "
                "headings were indexed); to index them, build it again with `kinject kb build`",
                file=sys.stderr,
            )
        if kind == "bm25":
            return BM25Retriever(load_bm25_index(self.snapshot), len(self.chunks))
        dense = DenseRetriever(
            load_dense_index(self.snapshot, self.config.index),
            self.embedder,
            resolve_preset(self.config.embedder).query_prefix,
        )
        if kind == "dense":
            return dense
        if kind == "hybrid":
            bm25 = BM25Retriever(load_bm25_index(self.snapshot), len(self.chunks))
            return HybridRetriever(dense, bm25, fusion or Fusion())
        raise KinjectError(f"unknown retriever '{kind}' (expected dense, bm25 or hybrid)")


def _chunk(row: dict) -> Chunk:
    return Chunk(
        row["id"],
        row["doc_id"],
        row["index"],
        row["start"],
        row["end"],
        row["text"],
        row.get("heading", ""),
    )


def _headings(row: dict) -> tuple[Heading, ...]:
    """A manifest row's headings (``[start, level, text]`` each)."""
    return tuple(Heading(*heading) for heading in row.get("headings", ()))


# ---------------------------------------------------------------------------------------------
# Building and updating


@dataclass(frozen=True)
class SourceOptions:
    strict: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    show_progress: bool = True
    # chunks chunked, embedded and written per batch: bounds a build's memory, never changes
    # what it writes (a vector does not depend on the texts embedded with it)
    batch: int = 1024

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise KinjectError(f"batch must be at least 1 chunk, got {self.batch}")


def build_kb(
    sources: Sequence[str | Path],
    out: str | Path,
    config: KBConfig | None = None,
    options: SourceOptions = SourceOptions(),
) -> Change:
    """A new knowledge base at ``out`` from ``sources``; nothing is left at ``out`` on failure."""
    config = config or KBConfig()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise KinjectError(
            f"{out} already exists; use `kinject kb update` to change it, or choose another --out"
        )
    # the texts wait on the disk the KB goes to, in a file unlinked as it is made
    spool_folder = next(p for p in out.absolute().parents if p.is_dir())
    with closing(TextSpool(spool_folder)) as spool:
        report = _ingest(sources, config, options, spool)
        if not report.documents:
            n = len(report.warnings)  # else why the files were skipped is never shown
            why = f" ({n} warning{'s' * (n > 1)}, the first: {report.warnings[0]})" if n else ""
            raise KinjectError(f"no documents found in {', '.join(map(str, sources))}{why}")
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = staging_dir(out.parent, f".{out.name}.building-")
        try:
            change = Change(added=[d.id for d in report.documents], warnings=report.warnings)
            _commit(staging, report.documents, report.dropped, config, None, change, options)
            if out.exists():
                out.rmdir()  # empty, checked above
            staging.rename(out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return change


def add_documents(kb_dir: str | Path, sources, options: SourceOptions = SourceOptions()) -> Change:
    """New documents from ``sources``; an id already in the KB is refused (use update)."""

    def plan(current: dict[str, IngestedDocument], incoming, change: Change):
        for document in incoming:
            if document.id in current and current[document.id].sha256 != document.sha256:
                _bad(
                    change,
                    options,
                    f"{document.source}: document '{document.id}' is already in the knowledge "
                    "base with other text; use `kinject kb update` to replace it",
                )
            elif document.id not in current:
                current[document.id] = document
                change.added.append(document.id)
        return current

    return _update(kb_dir, sources, plan, options)


def update_documents(
    kb_dir: str | Path, sources, options: SourceOptions = SourceOptions()
) -> Change:
    """Make the KB hold what ``sources`` hold now: new and changed documents in, and documents
    that came from the same source folder or file but are gone from it, out."""

    def plan(current: dict[str, IngestedDocument], incoming, change: Change):
        roots = {Path(source).resolve() for source in sources}  # the same folder by any name
        seen = {document.id for document in incoming}
        for doc_id in sorted(current):
            if Path(current[doc_id].root).resolve() in roots and doc_id not in seen:
                del current[doc_id]
                change.removed.append(doc_id)
        for document in incoming:
            old = current.get(document.id)
            if old is None:
                change.added.append(document.id)
            elif old.sha256 != document.sha256:
                change.changed.append(document.id)
            current[document.id] = document
        return current

    return _update(kb_dir, sources, plan, options)


def remove_documents(
    kb_dir: str | Path, doc_ids: Sequence[str], options: SourceOptions = SourceOptions()
) -> Change:
    def plan(current: dict[str, IngestedDocument], incoming, change: Change):
        for doc_id in doc_ids:
            if doc_id in current:
                del current[doc_id]
                change.removed.append(doc_id)
            else:
                _bad(change, options, f"{kb_dir}: no document '{doc_id}' in the knowledge base")
        return current

    return _update(kb_dir, (), plan, options)


def _bad(change: Change, options: SourceOptions, message: str) -> None:
    if options.strict:
        raise KinjectError(message)
    change.warnings.append(message)


def _update(kb_dir, sources, plan, options: SourceOptions) -> Change:
    kb_dir = Path(kb_dir)
    with exclusive_lock(kb_dir / ".lock"):
        kb = KnowledgeBase.open(kb_dir)
        report = _ingest(sources, kb.config, options) if sources else None
        change = Change(warnings=list(report.warnings) if report else [])
        # Documents dropped as duplicates come back into play: dedup runs on the whole.
        current = {document.id: document for document in kb.documents(with_duplicates=True)}
        incoming = (
            sorted([*report.documents, *report.dropped], key=lambda d: d.id) if report else []
        )
        current = plan(current, incoming, change)
        documents, dropped = drop_duplicates(current.values())
        if not documents:
            raise KinjectError(f"{kb_dir}: the update would leave the knowledge base empty")
        touched = set(change.added) | set(change.changed) | set(change.removed)
        change.unchanged = len([d for d in documents if d.id not in touched])
        _clean_stale(kb_dir)
        staging = staging_dir(_snapshots(kb_dir), ".tmp-")
        try:
            _commit(staging, documents, dropped, kb.config, kb, change, options)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        shutil.rmtree(kb.snapshot)
        return change


def drop_duplicates(
    documents,
) -> tuple[list[IngestedDocument], list[IngestedDocument]]:
    """Documents sorted by id with exact-duplicate texts dropped (the first id is kept), and
    the dropped ones, sorted by id."""
    kept: dict[str, IngestedDocument] = {}
    dropped: list[IngestedDocument] = []
    for document in sorted(documents, key=lambda d: d.id):
        if document.sha256 in kept:
            dropped.append(document)
        else:
            kept[document.sha256] = document
    return sorted(kept.values(), key=lambda d: d.id), dropped


def _ingest(sources, config: KBConfig, options: SourceOptions, spool: TextSpool | None = None):
    report = ingest(
        sources,
        strict=options.strict,
        include=options.include,
        exclude=options.exclude,
        max_file_mb=config.max_file_mb,
        show_progress=options.show_progress,
        spool=spool,
    )
    return report


def _snapshots(kb_dir: Path) -> Path:
    folder = kb_dir / "snapshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _clean_stale(kb_dir: Path) -> None:
    """Remove what a crashed update left: temporary folders and unreferenced snapshots."""
    current = json.loads((kb_dir / POINTER).read_text(encoding="utf-8"))["snapshot"]
    for path in _snapshots(kb_dir).iterdir():
        if path.relative_to(kb_dir).as_posix() != current:
            shutil.rmtree(path, ignore_errors=True)


def _commit(
    staging: Path,
    documents: Sequence[Document],
    dropped: Sequence[Document],
    config: KBConfig,
    previous: KnowledgeBase | None,
    change: Change,
    options: SourceOptions,
) -> None:
    """Write a complete snapshot into ``staging``, then make it the KB's current one.

    For a new KB ``staging`` is the KB folder to be; for an update it is a temporary folder
    under ``KB_DIR/snapshots``.
    """
    if previous is None:
        kb_dir, snapshot = staging, staging / "snapshots" / "000001"
        number = 1
    else:
        kb_dir = previous.folder
        number = int(previous.snapshot.name) + 1
        snapshot = staging
    _write_snapshot(snapshot, documents, dropped, config, previous, change, options)
    final = kb_dir / "snapshots" / f"{number:06d}"
    if snapshot != final:
        os.rename(snapshot, final)
    write_json(kb_dir / POINTER, {"format": FORMAT, "snapshot": f"snapshots/{number:06d}"})
    change.documents = len(documents)


class _Chunks:
    """The chunks of one document at a time; an unchanged document (same id and text as in
    ``previous``) keeps its previous chunks, without tokenizing it again."""

    def __init__(self, config: KBConfig, previous: KnowledgeBase | None):
        self.config = config
        self.old: dict[tuple, list[Chunk]] = {}
        if previous is not None and previous.config.index_text == config.index_text:
            keys = {row["id"]: _chunk_key(row, _headings(row)) for row in previous.manifest}
            for chunk in previous.chunks:
                self.old.setdefault(keys[chunk.doc_id], []).append(chunk)
        self._chunker: Chunker | None = None

    def of(self, document: Document, text: str) -> list[Chunk]:
        """The document's chunks, each with its heading line (``config.index_text``); each
        leaves room in ``chunking.size`` for the longest heading line its document has."""
        row = {"id": document.id, "sha256": document.sha256, "title": document.title}
        key = _chunk_key(row, document.headings)
        reused = self.old.get(key)
        if reused is not None:
            return reused
        if self._chunker is None:
            self._chunker = make_chunker(self.config)
        chunker, index_text = self._chunker, self.config.index_text
        title, headings = document.title, document.headings
        cap = max(1, chunker.size // 4)  # a heading line longer than a quarter is cut

        def line_at(start: int) -> str:
            return chunker.truncated(heading_line(title, headings, start, index_text), cap)

        starts = [0, *(heading.start + 1 for heading in headings)]
        lines = {line_at(start) for start in starts}
        reserve = max((chunker.tokens(line) + 1 for line in lines if line), default=0)
        return [
            replace(chunk, heading=line_at(chunk.start))
            for chunk in chunker.chunk(document.id, text, reserve)
        ]


def _chunk_key(row: dict, headings: tuple[Heading, ...]) -> tuple:
    """What a document's chunks depend on, but for the KB's config: its text, title and
    headings."""
    return row["id"], row["sha256"], row.get("title"), headings


def make_chunker(config: KBConfig) -> Chunker:
    from transformers import AutoTokenizer

    from kinject.kb.embedders import resolve_preset

    source = config.chunking.tokenizer or resolve_preset(config.embedder).model
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, revision=config.embedder.revision, trust_remote_code=False
        )
    except OSError as error:
        reason = " ".join(str(error).split())
        raise KinjectError(f"cannot load the chunking tokenizer '{source}': {reason}") from None
    return Chunker(tokenizer, config.chunking.size, config.chunking.overlap)


class _Vectors:
    """``embeddings.npy`` written as chunks come, a batch at a time: one vector per chunk, in
    order.  A text seen in the previous snapshot (by hash) reuses its vector; a text already
    met in this build copies the row it got; each other text is embedded once, with the rest
    of its batch.  Only hashes (and the previous snapshot's vectors, on update) are kept.

    The rows go after room for the .npy header, which is written when the number of rows is
    known: the file is byte for byte what ``np.save`` writes of the same array.
    """

    _HEADER = 128  # bytes np.save's version 1.0 header takes for any float32 [rows, dim]

    def __init__(self, handle, config: KBConfig, previous: KnowledgeBase | None, change: Change):
        self.handle = handle
        self.config = config
        self.previous = previous
        self.change = change
        self.seconds = 0.0  # embedding the new texts (the model's loading included)
        self.rows = 0  # written
        self.dim: int | None = None
        self._cache: dict[str, np.ndarray] = {}  # previous vectors by text hash
        if previous is not None:
            started = time.perf_counter()
            for chunk, vector in zip(previous.chunks, previous.embeddings()):
                self._cache[text_hash(chunk.indexed)] = vector
            self.seconds += time.perf_counter() - started
        self._row_of: dict[bytes, int] = {}  # this build's rows by text hash (digest)
        self._embedder = None
        handle.seek(self._HEADER)

    def write(self, chunks: Sequence[Chunk]) -> None:
        """The rows of ``chunks``, the next ones in order."""
        started = time.perf_counter()
        sources: list[tuple[str, object]] = []  # per row: where its vector comes from
        texts: list[str] = []  # to embed
        for position, chunk in enumerate(chunks):
            sha = text_hash(chunk.indexed)  # what is embedded
            digest = bytes.fromhex(sha)
            if sha in self._cache:
                self.change.reused += 1
                sources.append(("vector", self._cache[sha]))
            elif digest in self._row_of:
                sources.append(("row", self._row_of[digest]))
            else:
                sources.append(("new", len(texts)))
                texts.append(chunk.indexed)
            if digest not in self._row_of:
                self._row_of[digest] = self.rows + position
        fresh = self._embed(texts) if texts else None
        self.change.embedded += len(texts)
        block = np.empty((len(chunks), self._dim(fresh)), dtype=np.float32)
        for position, (kind, where) in enumerate(sources):
            if kind == "vector":
                block[position] = where
            elif kind == "new":
                block[position] = fresh[where]
            elif where >= self.rows:  # a row of this block
                block[position] = block[where - self.rows]
            else:
                block[position] = self._read_row(where)
        self.handle.write(block.tobytes())
        self.rows += len(chunks)
        self.seconds += time.perf_counter() - started

    def finish(self) -> None:
        """Write the header, now that the number of rows is known."""
        import io

        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": "<f4", "fortran_order": False, "shape": (self.rows, self.dim or 0)}
        )
        if len(header.getvalue()) != self._HEADER:  # (rows, dim) would need ~60 digits
            raise KinjectError(f"embeddings.npy: no room for the header of {self.rows} rows")
        self.handle.seek(0)
        self.handle.write(header.getvalue())
        self.handle.seek(0, os.SEEK_END)

    def _embed(self, texts: list[str]) -> np.ndarray:
        from kinject.kb.embedders import make_embedder

        if self._embedder is None:
            if self.previous is not None:
                self._embedder = self.previous.embedder
            else:
                self._embedder = make_embedder(self.config.embedder)
            self._embedder.show_progress = False  # the build shows one bar for everything
        return self._embedder.embed(texts)

    def _dim(self, fresh: np.ndarray | None) -> int:
        if self.dim is None:
            if fresh is not None:
                self.dim = fresh.shape[1]
            else:
                self.dim = len(next(iter(self._cache.values())))
        return self.dim

    def _read_row(self, row: int) -> np.ndarray:
        self.handle.flush()
        size = self.dim * 4
        data = os.pread(self.handle.fileno(), size, self._HEADER + row * size)
        return np.frombuffer(data, dtype=np.float32)


def _write_snapshot(
    folder: Path,
    documents: Sequence[Document],
    dropped: Sequence[Document],
    config: KBConfig,
    previous: KnowledgeBase | None,
    change: Change,
    options: SourceOptions,
) -> None:
    """Every file of a snapshot, streamed: each document is read (from the spool, on a build),
    written to documents.jsonl, chunked; its chunks go to chunks.jsonl and, a batch of
    ``options.batch`` chunks at a time, to embeddings.npy and the BM25 term ids."""
    from kinject.kb.indexes import (
        BM25_FOLDER,
        FAISS_FILE,
        BM25Builder,
        build_dense_index_from_file,
        save_bm25_index,
        save_dense_index,
    )
    from kinject.progress import progress_bar

    legacy = previous is not None and previous.indexes_text_only  # stays so when updated
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / "config.yaml", to_yaml(config))
    counts: dict[str, int] = {}
    chunker = _Chunks(config, previous)
    bm25 = BM25Builder()
    bm25_seconds = 0.0
    with ExitStack() as files:
        corpus_out = files.enter_context(atomic_open(folder / "documents.jsonl"))
        chunks_out = files.enter_context(atomic_open(folder / "chunks.jsonl"))
        vectors_out = files.enter_context(atomic_open(folder / "embeddings.npy", "w+b"))
        vectors = _Vectors(vectors_out, config, previous, change)
        batch: list[Chunk] = []

        def flush() -> None:
            nonlocal bm25_seconds
            vectors.write(batch)
            started = time.perf_counter()
            bm25.add(chunk.indexed for chunk in batch)
            bm25_seconds += time.perf_counter() - started
            batch.clear()

        bar_context = progress_bar("chunking and embedding", len(documents), options.show_progress)
        with bar_context as bar:
            for document in documents:
                text = document.text
                corpus_out.write(_json_line(_corpus_row(document, text)))
                chunks = chunker.of(document, text)
                del text
                counts[document.id] = len(chunks)
                for chunk in chunks:
                    chunks_out.write(_json_line(chunk.to_json()))
                    batch.append(chunk)
                    if len(batch) >= options.batch:
                        flush()
                bar.advance(1)
            if batch:
                flush()
        if not vectors.rows:
            raise KinjectError("the documents hold no text to index")
        vectors.finish()
    change.chunks = vectors.rows
    kept = {d.sha256: d.id for d in documents}
    duplicates = {d.id: kept[d.sha256] for d in dropped}
    write_jsonl(
        folder / "manifest.jsonl",
        (
            _manifest_row(d, counts.get(d.id, 0), duplicates.get(d.id))
            for d in sorted([*documents, *dropped], key=lambda d: d.id)
        ),
    )
    write_json(folder / "duplicates.json", duplicates)
    started = time.perf_counter()
    save_dense_index(build_dense_index_from_file(folder / "embeddings.npy", config.index), folder)
    save_bm25_index(bm25.build(), folder)
    index_seconds = time.perf_counter() - started + bm25_seconds
    write_json(
        folder / "build.json",
        {
            "documents": len(documents),
            **({} if legacy else {"index_text": config.index_text}),
            "chunks": vectors.rows,
            "embedded": change.embedded,
            "reused": change.reused,
            "duplicates": len(duplicates),
            "embed_seconds": round(vectors.seconds, 3),
            "index_seconds": round(index_seconds, 3),
            "index_bytes": _bytes(folder / FAISS_FILE) + _bytes(folder / BM25_FOLDER),
            "embeddings_bytes": _bytes(folder / "embeddings.npy"),
        },
    )
    _fsync_tree(folder)


def _json_line(row: dict) -> str:
    """A JSONL line as :func:`kinject.fileio.write_jsonl` writes it."""
    return json.dumps(row, ensure_ascii=False) + "\n"


def _bytes(path: Path) -> int:
    """The size of a file, or of every file under a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _manifest_row(document: Document, chunks: int, duplicate_of: str | None) -> dict:
    row = {"id": document.id, "sha256": document.sha256}
    if document.title:
        row["title"] = document.title
    if document.headings:
        row["headings"] = [list(heading) for heading in document.headings]
    row |= {"source": document.source, "root": document.root, "chars": document.chars}
    row |= {"chunks": chunks}
    if duplicate_of is not None:
        row["duplicate_of"] = duplicate_of  # not indexed: its text is its kept copy's
    return row


def _corpus_row(document: Document, text: str) -> dict:
    row = {"id": document.id, "text": text}
    if document.title:
        row["title"] = document.title
    row["source"] = document.source
    return row


def _fsync_tree(folder: Path) -> None:
    """Flush every file of a snapshot before the pointer names it."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
