"""Arms: the ways of giving a model knowledge.  The evaluator does not know which it scores.

An arm's contract is :meth:`Arm.context_for`: the text (if any) placed before a question, with
what was retrieved for it.  :meth:`Arm.prepare` lets an arm do its work for a whole task at
once (the rag arm retrieves for all questions in batches); :meth:`Arm.identity` says what
decides its contexts, so a finished cell is reused only while that is unchanged.
Fine-tuned models are not arms: they are other models, scored with these same arms.

Any arm may carry an :class:`Instruction`: a user-written text put at the very start of the
prompt, before the task's description (lm-eval's ``--system_instruction``; see
:mod:`kinject.tasks.prompts`).  The arm's name then says so: ``rag+rename``, ``oracle+rename``,
and the closed-book arm with an instruction is named by the instruction alone (``rename``), so
a fine-tuned model's column reads ``ft-reg+rename``.  Arm names in configs follow
:func:`parse_arm`.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kinject.errors import KinjectError
from kinject.tasks.items import MCItem

CONTEXT_SEPARATOR = "\n\n"
ARM_KINDS = ("base", "oracle", "rag")
RESERVED_NAMES = ARM_KINDS  # no instruction may be named like an arm


@dataclass(frozen=True)
class Instruction:
    """A named instruction: ``text`` starts every prompt of the arms that carry it."""

    name: str
    text: str


def arm_name(kind: str, instruction: str | None = None) -> str:
    """An arm's name in records and tables: ``rag``, ``rag+rename``; the closed-book arm
    with an instruction is the instruction's name (``rename``)."""
    if instruction is None:
        return kind
    return instruction if kind == "base" else f"{kind}+{instruction}"


def arm_kind(name: str) -> str:
    """The kind (base, oracle, rag) of an arm named as records name it: ``rag+rename`` is
    rag, a bare instruction name is base."""
    head = name.split("+", 1)[0]
    return head if head in ARM_KINDS else "base"


def arm_instruction(name: str) -> str | None:
    """The instruction's name in an arm named as records name it (``rag+rename``: rename)."""
    head, _, rest = name.partition("+")
    if head in ARM_KINDS:
        return rest or None
    return head


def uses_rag(column: str) -> bool:
    """Whether a table column (``rag``, ``ft-reg+rag``, ``rag+rename``, ``ft-reg+rag+rename``)
    retrieves from the knowledge base."""
    return "rag" in column.split("+")


@dataclass(frozen=True)
class ArmSpec:
    """An arm as a config names it: the fine-tuning whose model it scores (None: the base
    model), its kind and its instruction's name."""

    finetune: str | None
    kind: str
    instruction: str | None = None

    @property
    def name(self) -> str:
        """The arm of its model, as records name it (what ``kinject eval`` is given)."""
        return arm_name(self.kind, self.instruction)

    @property
    def column(self) -> str:
        """Its column in an experiment's tables: ``rag+rename``, ``ft-reg+rename``."""
        if self.finetune is None:
            return self.name
        return self.finetune if self.name == "base" else f"{self.finetune}+{self.name}"


def parse_arm(
    arm: str, instructions: Collection[str], finetunes: Collection[str] | None = None
) -> ArmSpec:
    """An arm name of a config: ``base | oracle | rag`` (and with ``finetunes``, an experiment's
    ``<ft> | <ft>+rag``), optionally followed by ``+<instruction>``; a bare ``<instruction>``
    is the base arm with it.  Raises ValueError naming what is wrong."""
    parts = arm.split("+")
    instruction = parts.pop() if parts[-1] in instructions else None
    repeated = [part for part in parts if part in instructions]
    if repeated:
        first = repeated[0]
        if first == instruction or repeated.count(first) > 1:
            problem = f"instruction '{first}' used twice"
        elif instruction is not None:
            problem = f"two instructions ('{first}' and '{instruction}'); an arm takes one"
        else:
            problem = f"the instruction '{first}' goes last (e.g. rag+{first})"
        raise ValueError(f"arm '{arm}': {problem}")
    finetune = parts.pop(0) if parts and finetunes and parts[0] in finetunes else None
    if not parts and (instruction is not None or finetune is not None):
        return ArmSpec(finetune, "base", instruction)
    if finetune is None and len(parts) == 1 and parts[0] in ARM_KINDS:
        return ArmSpec(None, parts[0], instruction)
    if finetune is not None and parts == ["rag"]:
        return ArmSpec(finetune, "rag", instruction)
    raise ValueError(f"arm '{arm}': {_arm_problem(parts, instructions, finetunes)}")


def _arm_problem(parts: list[str], instructions, finetunes: Collection[str] | None) -> str:
    """The grammar (its instruction part only when there are instructions), and the word of
    ``parts`` that is no arm, fine-tuning or instruction."""
    if finetunes is None:
        grammar = "expected base, oracle or rag"
    else:
        named = sorted(finetunes) or "the finetunes (none given)"
        grammar = (
            f"expected base, oracle, rag, <finetune> or <finetune>+rag with <finetune> one of "
            f"{named}"
        )
    if not instructions:
        return grammar
    grammar += (
        ", optionally followed by +<instruction>, or a bare <instruction>, with <instruction> "
        f"one of {sorted(instructions)}"
    )
    known = set(ARM_KINDS) | set(instructions) | set(finetunes or ())
    unknown = next((part for part in parts if part not in known), None)
    return grammar if unknown is None else f"{grammar} ('{unknown}' is none of these)"


def parse_arms(
    arms: Sequence[str], instructions: Collection[str], finetunes: Collection[str] | None = None
) -> list[ArmSpec]:
    """:func:`parse_arm` of every arm of a config, which must name distinct arms."""
    specs = [parse_arm(arm, instructions, finetunes) for arm in arms]
    for position, spec in enumerate(specs):
        if spec in specs[:position]:
            earlier = arms[specs.index(spec)]
            if earlier == arms[position]:
                raise ValueError(f"arms must be distinct: '{earlier}' is listed twice")
            raise ValueError(
                f"arms must be distinct: '{earlier}' and '{arms[position]}' are the same arm"
            )
    return specs


def check_instruction_names(instructions: Mapping[str, str], finetunes: Collection[str] = ()):
    """Instruction names are words (letters, digits, _ and -) that name no arm or fine-tuning,
    and their texts say something.  Raises ValueError."""
    import re

    for name, text in instructions.items():
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise ValueError(
                f"instruction name '{name}': use letters, digits, '_' and '-' only "
                "(it is joined to arm names with '+')"
            )
        if name in RESERVED_NAMES:
            raise ValueError(f"instruction name '{name}' is an arm's name; choose another")
        if name in finetunes:
            raise ValueError(f"instruction name '{name}' is also a fine-tuning's; choose another")
        if not text.strip():
            raise ValueError(f"instruction '{name}' is empty")


@dataclass(frozen=True)
class Context:
    text: str
    retrieved: tuple[dict, ...] | None = None  # [{"chunk", "doc_id", "score"}], best first
    gold: tuple[str, ...] | None = None  # the question's doc_ids as the knowledge base names them


class Arm(ABC):
    kind: str  # base, oracle, rag
    k: int = 0  # retrieved chunks per question (0: the arm retrieves nothing)
    instruction: Instruction | None = None  # put at the very start of every prompt

    @property
    def name(self) -> str:
        """What records and tables call the arm: ``rag``, ``rag+rename``, ``rename``."""
        return arm_name(self.kind, self.instruction.name if self.instruction else None)

    @property
    def instruction_text(self) -> str | None:
        return self.instruction.text if self.instruction else None

    def prepare(self, items: Sequence[MCItem]) -> None:
        """Work done once for all of a task's questions before :meth:`context_for` is asked."""

    @abstractmethod
    def context_for(self, item: MCItem) -> Context | None:
        """What to put before the question, or None."""

    def identity(self) -> dict:
        """What decides this arm's prompts (JSON-able); part of every cell's key."""
        return self._with_instruction({"arm": self.name, "k": self.k})

    def _with_instruction(self, identity: dict) -> dict:
        """``identity`` with the instruction's text, when the arm has one (without one, it is
        what it was before instructions existed, so finished cells stay valid)."""
        if self.instruction is not None:
            identity["instruction"] = self.instruction.text
        return identity


class BaseArm(Arm):
    """The model as it is: closed book."""

    kind = "base"

    def __init__(self, instruction: Instruction | None = None):
        self.instruction = instruction

    def context_for(self, item: MCItem) -> Context | None:
        return None


class OracleArm(Arm):
    """The gold documents (``doc_ids``) before the question: the upper bound for retrieval."""

    kind = "oracle"

    def __init__(
        self,
        corpus: Mapping[str, str],
        corpus_path: str = "corpus",
        instruction: Instruction | None = None,
    ):
        self.corpus = corpus
        self.corpus_path = corpus_path
        self.instruction = instruction
        self._corpus_identity: dict | None = None

    def context_for(self, item: MCItem) -> Context | None:
        if not item.doc_ids:
            raise KinjectError(
                f"question '{item.id}' has no doc_ids: the oracle arm needs the gold documents"
            )
        missing = [doc_id for doc_id in item.doc_ids if doc_id not in self.corpus]
        if missing:
            import difflib

            close = difflib.get_close_matches(missing[0], sorted(self.corpus), n=1, cutoff=0.5)
            raise KinjectError(
                f"question '{item.id}' names document '{missing[0]}', which is not in "
                f"{self.corpus_path}" + (f" (did you mean '{close[0]}'?)" if close else "")
            )
        return Context(CONTEXT_SEPARATOR.join(self.corpus[doc_id] for doc_id in item.doc_ids))

    def identity(self) -> dict:
        from kinject.evaluation.identity import file_identity

        if self._corpus_identity is None:
            if Path(self.corpus_path).is_dir():  # a knowledge base or a folder: its documents
                texts = json.dumps(sorted(self.corpus.items()), ensure_ascii=False)
                digest = hashlib.sha256(texts.encode("utf-8")).hexdigest()
                path = str(Path(self.corpus_path).resolve())
                self._corpus_identity = {"name": path, "documents": digest}
            else:
                self._corpus_identity = file_identity(self.corpus_path)
        return self._with_instruction({"arm": self.name, "corpus": self._corpus_identity})


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

    kind = "rag"

    def __init__(
        self,
        cache: RetrievalCache,
        k: int,
        template: str = "{context}",
        separator: str = CONTEXT_SEPARATOR,
        best_last: bool = False,
        instruction: Instruction | None = None,
    ):
        self.cache = cache
        self.k = k
        self.template = template
        self.separator = separator
        self.best_last = best_last
        self.instruction = instruction

    def prepare(self, items: Sequence[MCItem]) -> None:
        if self.k:
            self.cache.fetch(items)

    def identity(self) -> dict:
        return self._with_instruction(
            {
                "arm": self.name,
                "k": self.k,
                "kb": self.cache.kb.identity(),
                "retriever": self.cache.retriever_name,
                "template": self.template,
                "separator": self.separator,
                "best_last": self.best_last,
            }
        )

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
        texts = [chunk.indexed for chunk in chunks]  # heading line and text (kb.index_text)
        if self.best_last:
            texts.reverse()
        if not texts:
            return Context("", retrieved, gold)
        text = self.template.replace("{context}", self.separator.join(texts))
        return Context(text, retrieved, gold)
