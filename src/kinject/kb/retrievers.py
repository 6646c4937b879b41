"""Retrievers: queries to ranked chunk rows, behind one method, :meth:`Retriever.search`.

* ``dense``  — the embedder's vectors in FAISS, inner product (cosine on unit vectors);
* ``bm25``   — bm25s over stemmed words (hits scoring 0 are dropped);
* ``hybrid`` — reciprocal-rank fusion of the two: score = sum over lists of 1 / (rrf_k + rank).

Ties are broken by chunk row, so results are deterministic.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

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


class HybridRetriever(Retriever):
    """Reciprocal-rank fusion (Cormack et al., 2009) of a dense and a BM25 ranking."""

    name = "hybrid"

    def __init__(self, dense: Retriever, bm25: Retriever, rrf_k: int = 60, depth: int = 100):
        self.parts = (dense, bm25)
        self.rrf_k = rrf_k
        self.depth = depth

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        depth = max(k, self.depth)
        rankings = [part.search(queries, depth) for part in self.parts]
        results = []
        for per_query in zip(*rankings):
            fused: dict[int, float] = {}
            for hits in per_query:
                for rank, hit in enumerate(hits, start=1):
                    fused[hit.row] = fused.get(hit.row, 0.0) + 1.0 / (self.rrf_k + rank)
            results.append(_ranked(Hit(row, score) for row, score in fused.items())[:k])
        return results


def _ranked(hits) -> list[Hit]:
    return sorted(hits, key=lambda hit: (-hit.score, hit.row))
