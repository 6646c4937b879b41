"""Scoring cells: one (arm, task, shots, k) combination over all of a task's questions.

Each finished cell is written atomically to ``cells/<key>.jsonl`` in the run folder, so a
killed evaluation resumes at the first unfinished cell; ``records.jsonl``, ``metrics.json``
and ``table.md`` are rebuilt from the cell files at the end (and can be rebuilt any time
from them without a model).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from kinject import faults
from kinject.evaluation.arms import Arm
from kinject.evaluation.fewshot import ExampleSelector, FirstExamples
from kinject.evaluation.stats import bootstrap_ci, previous_answer_rate
from kinject.fileio import read_jsonl, write_json, write_jsonl
from kinject.scoring.loglikelihood import LoglikelihoodScorer, MemoizedScorer
from kinject.tasks.items import Task
from kinject.tasks.prompts import ChatFormat, build_prompt


@dataclass(frozen=True)
class Cell:
    arm: str
    split: str  # the task's name
    shots: int
    k: int  # retrieved chunks per question (0 for arms that retrieve nothing)
    model: str = "base"  # the model's label: the base model, or a fine-tuned one ("ft-par")

    @property
    def key(self) -> str:
        raw = f"{self.arm}__{self.split}__{self.shots}shot__k{self.k}"
        if self.model != "base":
            raw = f"{self.model}__{raw}"
        return re.sub(r"[^A-Za-z0-9_.-]", "_", raw)

    @property
    def column(self) -> str:
        return column_name(self.model, self.arm)


def column_name(model: str, arm: str) -> str:
    """What a table calls an arm of a model: rag, ft-par, ft-par+rag."""
    if model == "base":
        return arm
    return model if arm == "base" else f"{model}+{arm}"


def argmax(values: Sequence[float]) -> int:
    """First index of the maximum, as ``numpy.argmax`` (lm-eval's tie-breaking)."""
    best = 0
    for index, value in enumerate(values):
        if value > values[best]:
            best = index
    return best


def score_cell(
    scorer: LoglikelihoodScorer | MemoizedScorer,
    task: Task,
    arm: Arm,
    shots: int,
    on_batch: Callable[[int], None] | None = None,
    selector: ExampleSelector | None = None,
    model: str = "base",
    chat: ChatFormat | None = None,
) -> list[dict]:
    """Per-question records of one cell: log-likelihood of every choice, predictions, truth
    (``chat``: prompts rendered with the model's chat template)."""
    cell = Cell(arm.name, task.name, shots, arm.k, model)
    contexts, prompts = cell_prompts(task, arm, shots, selector, partial(build_prompt, chat=chat))
    requests = [(p.context, c) for p in prompts for c in p.continuations]
    scores = scorer.loglikelihood(requests, on_batch=on_batch)
    records, position = [], 0
    for item, prompt, context in zip(task.items, prompts, contexts):
        n = len(prompt.continuations)
        lls = [s.logprob for s in scores[position : position + n]]
        position += n
        pred = argmax(lls)
        pred_norm = argmax([ll / len(text) for ll, text in zip(lls, prompt.choice_texts)])
        record = {
            **asdict(cell),
            "question_id": item.id,
            "loglikelihoods": lls,
            "pred": pred,
            "pred_norm": pred_norm,
            "answer": item.answer,
            "correct": pred == item.answer,
            "correct_norm": pred_norm == item.answer,
        }
        if item.previous is not None:  # the choice that was right before the knowledge changed
            record["previous"] = item.previous
        records.append(_with_retrieval(record, context, item))
    return records


def cell_prompts(
    task: Task, arm: Arm, shots: int, selector: ExampleSelector | None = None, build=build_prompt
):
    """``(contexts, prompts)``: each question's context from the arm, and its prompt with the
    k-shot examples (``build``: :func:`~kinject.tasks.prompts.build_prompt` for multiple
    choice, ``build_open_prompt`` for open questions), as a cell scores them."""
    arm.prepare(task.items)
    contexts = [arm.context_for(item) for item in task.items]
    examples = (selector or FirstExamples()).examples(task, task.items, shots)
    prompts = [
        build(task, item, shots, context.text if context else None, shown, arm.instruction_text)
        for item, context, shown in zip(task.items, contexts, examples)
    ]
    return contexts, prompts


def _with_retrieval(record: dict, context, item) -> dict:
    """A record of a retrieving arm also holds what was retrieved and the gold documents."""
    if context is not None and context.retrieved is not None:
        record["retrieved"] = list(context.retrieved)
        record["doc_ids"] = list(context.gold if context.gold is not None else item.doc_ids)
    return record


def score_open_cell(
    generator,
    task: Task,
    arm: Arm,
    shots: int,
    on_batch: Callable[[int], None] | None = None,
    selector: ExampleSelector | None = None,
    model: str = "base",
    chat: ChatFormat | None = None,
) -> list[dict]:
    """Per-question records of a cell of open questions: the generated answer and its scores."""
    from kinject.evaluation.open_metrics import exact_match, token_f1
    from kinject.tasks.prompts import build_open_prompt

    cell = Cell(arm.name, task.name, shots, arm.k, model)
    build = partial(build_open_prompt, chat=chat)
    contexts, prompts = cell_prompts(task, arm, shots, selector, build)
    predictions = generator.generate(prompts, on_batch=on_batch)
    records = []
    for item, prediction, context in zip(task.items, predictions, contexts):
        record = {
            **asdict(cell),
            "question_id": item.id,
            "prediction": prediction,
            "answers": list(item.answers),
            "correct": bool(exact_match(prediction, item.answers)),
            "f1": round(token_f1(prediction, item.answers), 6),
        }
        records.append(_with_retrieval(record, context, item))
    return records


def accuracy(records: Sequence[dict], key: str = "correct") -> float:
    """The share of correct answers, rounded as in metrics.json (what K selection compares)."""
    return round(sum(float(r[key]) for r in records) / len(records), 4)


def cell_metrics(records: Sequence[dict], seed: int, resamples: int) -> dict:
    first = records[0]
    if "prediction" in first:
        return _open_metrics(records, seed, resamples)
    correct = [float(r["correct"]) for r in records]
    correct_norm = [float(r["correct_norm"]) for r in records]
    metrics = {
        **_cell_header(records),
        "acc": accuracy(records),
        "acc_ci": list(bootstrap_ci(correct, seed, resamples)),
        "acc_norm": accuracy(records, "correct_norm"),
        "acc_norm_ci": list(bootstrap_ci(correct_norm, seed, resamples)),
    }
    metrics.update(previous_answer_rate(records, seed, resamples))  # updated facts only
    return _with_recall(metrics, records)


def _cell_header(records: Sequence[dict]) -> dict:
    """Which cell the records are: model, arm, split, shots, k, and how many questions."""
    first = records[0]
    return {
        "model": first.get("model", "base"),
        "arm": first["arm"],
        "split": first["split"],
        "shots": first["shots"],
        "k": first["k"],
        "n": len(records),
    }


def _with_recall(metrics: dict, records: Sequence[dict]) -> dict:
    """A retrieving cell's recall: the share of gold documents among the k retrieved."""
    recalls = [retrieval_recall(r) for r in records if r.get("doc_ids") and "retrieved" in r]
    if recalls and records[0]["k"] > 0:
        metrics["recall"] = round(sum(recalls) / len(recalls), 4)
    return metrics


def _open_metrics(records: Sequence[dict], seed: int, resamples: int) -> dict:
    """Open questions: ``acc`` is exact match; token F1, BLEU-4 and ROUGE beside it."""
    from kinject.evaluation.open_metrics import bleu4, contains, rouge

    predictions = [r["prediction"] for r in records]
    answers = [r["answers"] for r in records]
    f1 = [r["f1"] for r in records]
    found = [contains(p, a) for p, a in zip(predictions, answers)]
    metrics = {
        **_cell_header(records),
        "open": True,
        "acc": accuracy(records),
        "acc_ci": list(bootstrap_ci([float(r["correct"]) for r in records], seed, resamples)),
        "f1": round(sum(f1) / len(f1), 4),
        "f1_ci": list(bootstrap_ci(f1, seed, resamples)),
        "contains": round(sum(found) / len(found), 4),
        "contains_ci": list(bootstrap_ci(found, seed, resamples)),
        "bleu4": round(bleu4(predictions, answers), 4),
        **{kind: round(value, 4) for kind, value in rouge(predictions, answers).items()},
    }
    return _with_recall(metrics, records)


def retrieval_recall(record: dict) -> float:
    """The share of the question's gold documents among the chunks retrieved for it."""
    gold = set(record["doc_ids"])
    found = {hit["doc_id"] for hit in record["retrieved"]}
    return len(gold & found) / len(gold)


class CellStore:
    """The ``cells/`` folder of a run: finished cells, one JSONL file each, named by the cell
    and the digest of what decides it; its cost (scoring time) in a JSON file beside it."""

    def __init__(self, run_dir: Path):
        self.folder = run_dir / "cells"

    def path(self, cell: Cell, digest: str) -> Path:
        return self.folder / f"{cell.key}-{digest}.jsonl"

    def has(self, cell: Cell, digest: str) -> bool:
        return self.path(cell, digest).exists()

    def write(self, cell: Cell, digest: str, records: list[dict], cost: dict) -> None:
        write_json(self.path(cell, digest).with_suffix(".cost.json"), cost)
        write_jsonl(self.path(cell, digest), records)  # last: its existence marks the cell done
        faults.checkpoint("cell.stored", self.path(cell, digest).name)

    def read(self, cell: Cell, digest: str) -> list[dict]:
        return [row for _, row in read_jsonl(self.path(cell, digest))]

    def cost(self, cell: Cell, digest: str) -> dict:
        path = self.path(cell, digest).with_suffix(".cost.json")
        return json.loads(path.read_text(encoding="utf-8"))
