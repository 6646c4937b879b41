"""Choosing the k-shot examples: the first k dev items (lm-eval's ``first_n``), or the k dev
items nearest to the question by the same retriever the rag arm uses ("dynamic few-shot").

Nearest examples are shown nearest-last, next to the question (as KATE, Liu et al. 2022).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from kinject.config import EmbedderConfig
from kinject.tasks.items import MCItem, Task


class ExampleSelector(ABC):
    @abstractmethod
    def examples(self, task: Task, items: Sequence[MCItem], shots: int) -> list[list[MCItem]]:
        """The k-shot examples for each of ``items``, in prompt order."""

    def identity(self) -> dict:
        """What decides the examples chosen (JSON-able); part of every k-shot cell's key."""
        return {"selector": type(self).__name__}


class FirstExamples(ExampleSelector):
    def examples(self, task: Task, items: Sequence[MCItem], shots: int) -> list[list[MCItem]]:
        return [list(task.dev[:shots]) for _ in items]


class NearestExamples(ExampleSelector):
    """Dev items ranked by ``retriever`` (dense, bm25 or hybrid) against the question."""

    def __init__(self, retriever: str, embedder: EmbedderConfig, rrf_k: int = 60):
        self.kind = retriever
        self.embedder_config = embedder
        self.rrf_k = rrf_k
        self._embedder = None
        self._retrievers: dict[str, object] = {}

    def identity(self) -> dict:
        return {
            "selector": "nearest",
            "retriever": self.kind,
            "embedder": self.embedder_config.model_dump(
                mode="json", exclude={"device", "batch_size"}
            ),
            "rrf_k": self.rrf_k,
        }

    def examples(self, task: Task, items: Sequence[MCItem], shots: int) -> list[list[MCItem]]:
        if shots == 0:
            return [[] for _ in items]
        retriever = self._retriever(task)
        ranked = retriever.search([item.question for item in items], shots + 1)
        result = []
        for item, hits in zip(items, ranked):
            chosen = [
                task.dev[hit.row]
                for hit in hits
                if task.dev[hit.row].id != item.id and task.dev[hit.row].question != item.question
            ][:shots]
            if len(chosen) < shots:  # a lexical retriever may find too few: fill in dev order
                chosen += [d for d in task.dev if d not in chosen and d.id != item.id][
                    : shots - len(chosen)
                ]
            result.append(list(reversed(chosen)))
        return result

    def _retriever(self, task: Task):
        if task.name not in self._retrievers:
            self._retrievers[task.name] = self._build([item.question for item in task.dev])
        return self._retrievers[task.name]

    def _build(self, texts: list[str]):
        from kinject.config import IndexConfig
        from kinject.kb.embedders import make_embedder, resolve_preset
        from kinject.kb.indexes import build_bm25_index, build_dense_index
        from kinject.kb.retrievers import BM25Retriever, DenseRetriever, Fusion, HybridRetriever

        bm25 = BM25Retriever(build_bm25_index(texts), len(texts))
        if self.kind == "bm25":
            return bm25
        if self._embedder is None:
            self._embedder = make_embedder(self.embedder_config)
        index = build_dense_index(self._embedder.embed(texts), IndexConfig())
        prefix = resolve_preset(self.embedder_config).query_prefix
        dense = DenseRetriever(index, self._embedder, prefix)
        if self.kind == "dense":
            return dense
        return HybridRetriever(dense, bm25, Fusion("rrf", 0.5, self.rrf_k))  # plain RRF
