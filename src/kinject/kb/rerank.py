"""Reranking: a cross-encoder reads each query with each of a first-stage retriever's top
chunks and orders them by its score (off by default; ``rag.rerank`` in an experiment,
``--rerank MODEL`` for ``kinject kb search`` and ``kb eval``).

The model is any sentence-transformers ``CrossEncoder``: a local folder or a hub id (for
example ``cross-encoder/ms-marco-MiniLM-L-6-v2``).  It reads the chunk as the retrievers
index it (its heading line and text, ``kb.index_text``).  Reranking only reorders: the
chunks are the first stage's top ``depth``, and the top K of those are returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import Field

from kinject.errors import KinjectError
from kinject.section import Section


class RerankConfig(Section):
    """A cross-encoder over the first stage's top ``depth`` chunks."""

    model: str = Field(description="A sentence-transformers CrossEncoder folder or hub id.")
    depth: int = Field(20, ge=1, description="First-stage chunks read by the cross-encoder.")
    batch_size: int = Field(32, ge=1)
    device: str = Field("cpu", description="cpu, cuda, mps.")
    revision: str | None = Field(None, description="A hub model's revision (commit).")

    def describe(self) -> str:
        """The reranker in a retriever's name (a cell's key): the model by its files."""
        from kinject.evaluation.identity import file_identity

        identity = file_identity(self.model) or {}
        files = identity.get("files")
        pinned = f"@{self.revision}" if self.revision else ""
        digest = ""
        if files:
            import hashlib
            import json

            text = json.dumps(files, sort_keys=True).encode("utf-8")
            digest = f" files={hashlib.sha256(text).hexdigest()[:12]}"
        return f"rerank={identity.get('name', self.model)}{pinned} depth={self.depth}{digest}"


class RerankedRetriever:
    """``first``'s top ``config.depth`` chunks for each query, ordered by the cross-encoder
    (ties by the first stage's order); the top ``k`` of them."""

    def __init__(self, first, texts: Sequence[str], config: RerankConfig):
        self.first = first
        self.texts = texts  # per chunk row: what the cross-encoder reads
        self.config = config
        self.name = f"{first.name}+rerank"
        self._model = None

    def search(self, queries: Sequence[str], k: int):
        from kinject.kb.retrievers import Hit

        candidates = self.first.search(queries, max(k, self.config.depth))
        pairs = [(q, self.texts[hit.row]) for q, hits in zip(queries, candidates) for hit in hits]
        scores = iter(self._scores(pairs)) if pairs else iter(())
        results = []
        for hits in candidates:
            scored = [(float(next(scores)), position, hit) for position, hit in enumerate(hits)]
            scored.sort(key=lambda item: (-item[0], item[1]))
            results.append([Hit(hit.row, score) for score, _, hit in scored[:k]])
        return results

    def _scores(self, pairs: list[tuple[str, str]]):
        model = self._load()
        return model.predict(
            pairs, batch_size=self.config.batch_size, show_progress_bar=False, convert_to_numpy=True
        )

    def _load(self):
        if self._model is None:
            from sentence_transformers import CrossEncoder

            source = self.config.model
            if Path(source).expanduser().exists():
                source = str(Path(source).expanduser().resolve())
            try:
                self._model = CrossEncoder(
                    source,
                    device=self.config.device,
                    revision=self.config.revision,
                    trust_remote_code=False,
                )
            except OSError as error:
                reason = " ".join(str(error).split())
                raise KinjectError(
                    f"cannot load the reranker '{self.config.model}': {reason}"
                ) from None
        return self._model
