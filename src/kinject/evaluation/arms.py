"""Arms: the ways of giving a model knowledge.  The evaluator does not know which it scores.

An arm's contract is :meth:`Arm.context_for`: the text (if any) placed before a question, with
what was retrieved for it.  :meth:`Arm.prepare` lets an arm do its work for a whole task at
once (the rag arm retrieves for all questions in batches); :meth:`Arm.identity` says what
decides its contexts, so a finished cell is reused only while that is unchanged.
Fine-tuned models are not arms: they are other models, scored with these same arms.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kinject.errors import KinjectError
from kinject.tasks.items import MCItem

CONTEXT_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Context:
    text: str
    retrieved: tuple[dict, ...] | None = None  # [{"chunk", "doc_id", "score"}], best first
    gold: tuple[str, ...] | None = None  # the question's doc_ids as the knowledge base names them


class Arm(ABC):
    name: str
    k: int = 0  # retrieved chunks per question (0: the arm retrieves nothing)

    def prepare(self, items: Sequence[MCItem]) -> None:
        """Work done once for all of a task's questions before :meth:`context_for` is asked."""

    @abstractmethod
    def context_for(self, item: MCItem) -> Context | None:
        """What to put before the question, or None."""

    def identity(self) -> dict:
        """What decides this arm's contexts (JSON-able); part of every cell's key."""
        return {"arm": self.name, "k": self.k}


class BaseArm(Arm):
    """The model as it is: closed book."""

    name = "base"

    def context_for(self, item: MCItem) -> Context | None:
        return None


class OracleArm(Arm):
    """The gold documents (``doc_ids``) before the question: the upper bound for retrieval."""

    name = "oracle"

    def __init__(self, corpus: Mapping[str, str], corpus_path: str = "corpus"):
        self.corpus = corpus
        self.corpus_path = corpus_path

    def context_for(self, item: MCItem) -> Context | None:
        if not item.doc_ids:
            raise KinjectError(
                f"question '{item.id}' has no doc_ids: the oracle arm needs the gold documents"
            )
        missing = [doc_id for doc_id in item.doc_ids if doc_id not in self.corpus]
        if missing:
            raise KinjectError(
                f"question '{item.id}' names document '{missing[0]}', which is not in "
                f"{self.corpus_path}"
            )
        return Context(CONTEXT_SEPARATOR.join(self.corpus[doc_id] for doc_id in item.doc_ids))

    def identity(self) -> dict:
        from kinject.evaluation.identity import file_identity

        return {"arm": self.name, "corpus": file_identity(self.corpus_path)}


class RetrievalCache:
    """Top chunks per question, retrieved once at the deepest K and shared by every K."""

    def __init__(self, kb, retriever, depth: int, retriever_name: str = "dense"):
        self.kb = kb
        self.retriever = retriever
        self.retriever_name = retriever_name  # with its settings, e.g. "hybrid rrf_k=60"
        self.depth = depth
        self._hits: dict[str, list] = {}

    def fetch(self, items: Sequence[MCItem]) -> None:
        todo = [item for item in items if item.id not in self._hits]
        for first in range(0, len(todo), 256):
            batch = todo[first : first + 256]
            results = self.retriever.search([item.question for item in batch], self.depth)
            self._hits.update((item.id, hits) for item, hits in zip(batch, results))

    def hits(self, item: MCItem, k: int) -> list:
        if item.id not in self._hits:
            self.fetch([item])
        return self._hits[item.id][:k]


class RagArm(Arm):
    """Top-K chunks of a knowledge base before the question (the paper: plain concatenation)."""

    name = "rag"

    def __init__(
        self,
        cache: RetrievalCache,
        k: int,
        template: str = "{context}",
        separator: str = CONTEXT_SEPARATOR,
        best_last: bool = False,
    ):
        self.cache = cache
        self.k = k
        self.template = template
        self.separator = separator
        self.best_last = best_last

    def prepare(self, items: Sequence[MCItem]) -> None:
        if self.k:
            self.cache.fetch(items)

    def identity(self) -> dict:
        return {
            "arm": self.name,
            "k": self.k,
            "kb": self.cache.kb.identity(),
            "retriever": self.cache.retriever_name,
            "template": self.template,
            "separator": self.separator,
            "best_last": self.best_last,
        }

    def context_for(self, item: MCItem) -> Context | None:
        aliases = self.cache.kb.duplicates  # gold ids the KB dropped as exact duplicates
        gold = tuple(aliases.get(doc_id, doc_id) for doc_id in item.doc_ids)
        if self.k == 0:
            return Context("", (), gold)
        hits = self.cache.hits(item, self.k)
        chunks = [self.cache.kb.chunks[hit.row] for hit in hits]
        retrieved = tuple(
            {"chunk": chunk.id, "doc_id": chunk.doc_id, "score": round(hit.score, 6)}
            for chunk, hit in zip(chunks, hits)
        )
        texts = [chunk.text for chunk in chunks]
        if self.best_last:
            texts.reverse()
        if not texts:
            return Context("", retrieved, gold)
        text = self.template.replace("{context}", self.separator.join(texts))
        return Context(text, retrieved, gold)
