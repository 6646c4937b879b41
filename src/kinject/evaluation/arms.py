"""Arms: the ways of giving a model knowledge.  The evaluator does not know which it scores.

An arm's contract is one method, :meth:`Arm.context_for`: the text (if any) placed before a
question.  Later arms (retrieval, fine-tuning) add preparation of the model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

from kinject.errors import KinjectError
from kinject.tasks.items import MCItem

CONTEXT_SEPARATOR = "\n\n"


class Arm(ABC):
    name: str
    k: int = 0  # retrieved chunks per question (0: the arm retrieves nothing)

    @abstractmethod
    def context_for(self, item: MCItem) -> str | None:
        """Text to put before the question, or None."""


class BaseArm(Arm):
    """The model as it is: closed book."""

    name = "base"

    def context_for(self, item: MCItem) -> str | None:
        return None


class OracleArm(Arm):
    """The gold documents (``doc_ids``) before the question: the upper bound for retrieval."""

    name = "oracle"

    def __init__(self, corpus: Mapping[str, str], corpus_path: str = "corpus"):
        self.corpus = corpus
        self.corpus_path = corpus_path

    def context_for(self, item: MCItem) -> str | None:
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
        return CONTEXT_SEPARATOR.join(self.corpus[doc_id] for doc_id in item.doc_ids)
