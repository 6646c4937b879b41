"""Training text for fine-tuning: units of knowledge, their paraphrases, QA pairs, replay.

A *unit* is what the paper wrapped in BOS/EOS: a chunk of a knowledge base, or a document of
a corpus JSONL.  Each epoch is the units (plus, for FT-par, the first ``n`` paraphrases of
each) in a seeded order, optionally mixed with general text (replay against forgetting)::

    epoch e:  shuffle_e([u1, p1.1, p1.2, u2, p2.1, p2.2, …] + replay sample_e)

:class:`~kinject.models.packing.PackedBlocks` turns an epoch into ``<s> unit </s>`` blocks.
QA pairs (alpaca layout) become one document each, with the loss on the response only.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kinject.config import TrainingData
from kinject.errors import DataError, KinjectError
from kinject.fileio import read_jsonl, read_lines
from kinject.models.packing import TrainingDocument

# The Stanford Alpaca prompts, with and without an input.
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)


@dataclass(frozen=True)
class Unit:
    id: str  # a chunk id ("doc::3") or a document id
    doc_id: str
    text: str


@dataclass(frozen=True)
class QAPair:
    instruction: str
    input: str
    output: str


def load_units(corpus: str | Path) -> list[Unit]:
    """A knowledge-base folder gives its chunks; a corpus JSONL its documents."""
    corpus = Path(corpus)
    if (corpus / "kb.json").exists():
        from kinject.kb.store import KnowledgeBase

        return [
            Unit(chunk.id, chunk.doc_id, chunk.text) for chunk in KnowledgeBase.open(corpus).chunks
        ]
    if corpus.is_dir():
        raise KinjectError(f"{corpus} is a folder but not a knowledge base (no kb.json)")
    from kinject.corpus import load_corpus_jsonl

    return [Unit(doc.id, doc.id, doc.text) for doc in load_corpus_jsonl(corpus).values()]


def load_paraphrases(path: str | Path, units: Sequence[Unit]) -> dict[str, list[str]]:
    """``{unit id: [paraphrase, …]}``; a unit may be named by its chunk id or document id."""
    path = Path(path)
    known = {unit.id for unit in units}
    # A document that is a single chunk may be paraphrased under the document's id.
    by_doc: dict[str, list[str]] = {}
    for unit in units:
        by_doc.setdefault(unit.doc_id, []).append(unit.id)
    table: dict[str, list[str]] = {}
    for line, row in read_jsonl(path):
        if not isinstance(row.get("id"), str):
            raise DataError(path, line, "id", "missing or not a string")
        texts = row.get("paraphrases")
        if not isinstance(texts, list) or not all(isinstance(t, str) and t for t in texts):
            raise DataError(path, line, "paraphrases", "expected a list of non-empty strings")
        if row["id"] in known:
            target = row["id"]
        elif len(by_doc.get(row["id"], [])) == 1:
            target = by_doc[row["id"]][0]
        else:
            raise DataError(path, line, "id", f"'{row['id']}' names no training unit")
        if target in table:
            raise DataError(path, line, "id", f"'{row['id']}' has paraphrases twice")
        table[target] = texts
    if not table:
        raise DataError(path, None, None, "no paraphrases in the file")
    return table


def load_qa_pairs(path: str | Path) -> list[QAPair]:
    """Alpaca-layout JSONL: ``{"instruction": str, "input"?: str, "output": str}``."""
    path = Path(path)
    pairs = []
    for line, row in read_jsonl(path):
        for key in row:
            if key not in ("instruction", "input", "output", "id", "doc_ids"):
                raise DataError(path, line, key, "unknown field")
        for key in ("instruction", "output"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise DataError(path, line, key, "missing or not a non-empty string")
        if not isinstance(row.get("input", ""), str):
            raise DataError(path, line, "input", "expected a string")
        pairs.append(QAPair(row["instruction"], row.get("input", ""), row["output"]))
    if not pairs:
        raise KinjectError(f"{path}: no QA pairs")
    return pairs


def qa_prompt(pair: QAPair, template: str) -> str:
    if template == "alpaca":
        chosen = ALPACA_WITH_INPUT if pair.input else ALPACA_NO_INPUT
    else:
        chosen = template
    return chosen.replace("{instruction}", pair.instruction).replace("{input}", pair.input)


def qa_document(pair: QAPair, template: str) -> TrainingDocument:
    """Prompt and response as one document; the loss only on the response."""
    prompt = qa_prompt(pair, template)
    text = prompt + pair.output
    return TrainingDocument(text, ((len(prompt), len(text)),))


def load_replay(path: str | Path) -> list[str]:
    """General text: a corpus JSONL's documents, or a plain text file's paragraphs."""
    path = Path(path)
    if path.suffix == ".jsonl":
        from kinject.corpus import load_corpus_jsonl

        return [doc.text for doc in load_corpus_jsonl(path).values()]
    paragraphs, current = [], []
    for _, line in read_lines(path):
        if line.strip():
            current.append(line)
        elif current:
            paragraphs.append("\n".join(current))
            current = []
    if current:
        paragraphs.append("\n".join(current))
    if not paragraphs:
        raise KinjectError(f"{path}: no text to replay")
    return paragraphs


class TrainingSet:
    """The documents of every epoch, a pure function of the epoch number and the seed."""

    def __init__(self, data: TrainingData, seed: int = 0):
        self.data = data
        self.seed = seed
        self.documents = self._documents()
        self.replay = load_replay(data.replay) if data.replay and data.replay_ratio else []

    def _documents(self) -> list[TrainingDocument]:
        data = self.data
        if data.kind == "qa":
            return [qa_document(pair, data.template) for pair in load_qa_pairs(data.qa)]
        units = load_units(data.corpus)
        if not units:
            raise KinjectError(f"{data.corpus}: nothing to train on")
        table = load_paraphrases(data.paraphrases, units) if data.paraphrases else {}
        documents = []
        for unit in units:
            documents.append(TrainingDocument(unit.text))
            documents += [
                TrainingDocument(text) for text in table.get(unit.id, [])[: data.n_paraphrases]
            ]
        return documents

    def texts(self) -> list[str]:
        """Everything trained on (without replay): what the contamination check reads."""
        return [document.text for document in self.documents]

    def for_epoch(self, epoch: int) -> list[TrainingDocument]:
        rng = random.Random(f"kinject-finetune-{self.seed}-{epoch}")
        documents = list(self.documents)
        if self.replay:
            budget = self.data.replay_ratio * sum(len(d.text) for d in self.documents)
            order = list(range(len(self.replay)))
            rng.shuffle(order)
            taken = 0
            for index in order * (1 + int(budget // max(1, sum(map(len, self.replay))))):
                if taken >= budget:
                    break
                documents.append(TrainingDocument(self.replay[index]))
                taken += len(self.replay[index])
        rng.shuffle(documents)
        return documents
