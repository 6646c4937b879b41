"""Retrievers: queries to ranked chunk rows, behind one method, :meth:`Retriever.search`.

* ``dense``  — the embedder's vectors in FAISS, inner product (cosine on unit vectors);
* ``bm25``   — bm25s over stemmed words (hits scoring 0 are dropped);
* ``hybrid`` — the two fused (:class:`Fusion`): weighted reciprocal-rank fusion, score =
  2w / (rrf_k + dense rank) + 2(1 - w) / (rrf_k + BM25 rank) (w = 0.5: plain RRF), or a
  convex combination of the scores, each min-max normalised over the query's list:
  w · dense + (1 - w) · BM25 (a list that misses a chunk gives it 0).

Ties are broken by chunk row, so results are deterministic.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kinject.errors import KinjectError
from kinject.kb.embedders import Embedder


@dataclass(frozen=True)
class Hit:
    row: int  # the chunk's line in chunks.jsonl (its row in every index)
    score: float


class Retriever(ABC):
    name: str

    @abstractmethod
    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        """The top ``k`` chunks for each query, best first."""


class DenseRetriever(Retriever):
    name = "dense"

    def __init__(self, index, embedder: Embedder, query_prefix: str = ""):
        self.index = index
        self.embedder = embedder
        self.query_prefix = query_prefix

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        k = min(k, self.index.ntotal)
        if not queries or k <= 0:
            return [[] for _ in queries]
        vectors = self.embedder.embed_queries([self.query_prefix + query for query in queries])
        scores, rows = self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)
        return [
            _ranked(
                Hit(int(row), float(score)) for row, score in zip(row_list, score_list) if row >= 0
            )
            for row_list, score_list in zip(rows, scores)
        ]


class BM25Retriever(Retriever):
    name = "bm25"

    def __init__(self, index, n_chunks: int):
        self.index = index
        self.n_chunks = n_chunks

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        from kinject.kb.indexes import bm25_tokens

        k = min(k, self.n_chunks)
        if not queries or k <= 0:
            return [[] for _ in queries]
        rows, scores = self.index.retrieve(bm25_tokens(queries), k=k, show_progress=False)
        return [
            _ranked(
                Hit(int(row), float(score)) for row, score in zip(row_list, score_list) if score > 0
            )
            for row_list, score_list in zip(rows, scores)
        ]


FUSIONS = ("rrf", "convex")


@dataclass(frozen=True)
class Fusion:
    """How the hybrid retriever fuses a dense and a BM25 ranking: ``rrf``, weighted
    reciprocal-rank fusion (Cormack et al., 2009), or ``convex``, a convex combination of
    min-max normalised scores (Bruch et al., 2023); ``dense_weight`` is w, the dense list's
    share."""

    # the default: the best of kinject kb eval --validation's grid on half of SQuAD v1.1
    # dev's articles (MRR@20 0.875 there; on the other half's questions recall@1 0.806,
    # against 0.772 for BM25 and 0.619 for dense; docs/knowledge-bases.md)
    kind: str = "convex"
    dense_weight: float = 0.4
    rrf_k: int = 60

    def __post_init__(self) -> None:
        if self.kind not in FUSIONS:
            raise KinjectError(f"unknown fusion '{self.kind}' (expected rrf or convex)")
        if not 0.0 <= self.dense_weight <= 1.0:
            raise KinjectError(f"dense_weight must be in [0, 1], got {self.dense_weight}")
        if self.rrf_k < 1:
            raise KinjectError(f"rrf_k must be at least 1, got {self.rrf_k}")

    def describe(self) -> str:
        if self.kind == "rrf":
            return f"rrf dense_weight={self.dense_weight:g} rrf_k={self.rrf_k}"
        return f"convex dense_weight={self.dense_weight:g}"

    def fuse(self, dense: Sequence[Hit], bm25: Sequence[Hit], k: int) -> list[Hit]:
        """The top ``k`` of the two lists fused, best first (ties by row)."""
        fused: dict[int, float] = {}
        for hits, weight in ((dense, self.dense_weight), (bm25, 1.0 - self.dense_weight)):
            for hit, value in zip(hits, self._values(hits)):
                fused[hit.row] = fused.get(hit.row, 0.0) + weight * value
        return _ranked(Hit(row, score) for row, score in fused.items())[:k]

    def _values(self, hits: Sequence[Hit]) -> list[float]:
        if self.kind == "rrf":  # doubled: at w = 0.5, the scores of plain RRF
            return [2.0 / (self.rrf_k + rank) for rank in range(1, len(hits) + 1)]
        if not hits:
            return []
        high, low = max(hit.score for hit in hits), min(hit.score for hit in hits)
        if high == low:
            return [1.0] * len(hits)
        return [(hit.score - low) / (high - low) for hit in hits]


class HybridRetriever(Retriever):
    """A dense and a BM25 ranking of depth ``depth`` (or k), fused by ``fusion``."""

    name = "hybrid"

    def __init__(
        self, dense: Retriever, bm25: Retriever, fusion: Fusion = Fusion(), depth: int = 100
    ):
        self.parts = (dense, bm25)
        self.fusion = fusion
        self.depth = depth

    def rankings(self, queries: Sequence[str], depth: int) -> list[tuple[list[Hit], list[Hit]]]:
        """Each query's dense and BM25 lists, before fusion."""
        dense, bm25 = (part.search(queries, depth) for part in self.parts)
        return list(zip(dense, bm25))

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        rankings = self.rankings(queries, max(k, self.depth))
        return [self.fusion.fuse(dense, bm25, k) for dense, bm25 in rankings]


def _ranked(hits) -> list[Hit]:
    return sorted(hits, key=lambda hit: (-hit.score, hit.row))
