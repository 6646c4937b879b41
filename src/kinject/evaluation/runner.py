"""Scoring cells: one (arm, task, shots, k) combination over all of a task's questions.

Each finished cell is written atomically to ``cells/<key>.jsonl`` in the run folder, so a
killed evaluation resumes at the first unfinished cell; ``records.jsonl``, ``metrics.json``
and ``table.md`` are rebuilt from the cell files at the end (and can be rebuilt any time
from them without a model).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from kinject.evaluation.arms import Arm
from kinject.evaluation.stats import bootstrap_ci
from kinject.fileio import read_jsonl, write_jsonl
from kinject.scoring.loglikelihood import LoglikelihoodScorer
from kinject.tasks.items import Task
from kinject.tasks.prompts import build_prompt


@dataclass(frozen=True)
class Cell:
    arm: str
    split: str  # the task's name
    shots: int
    k: int  # retrieved chunks per question (0 for arms that retrieve nothing)

    @property
    def key(self) -> str:
        raw = f"{self.arm}__{self.split}__{self.shots}shot__k{self.k}"
        return re.sub(r"[^A-Za-z0-9_.-]", "_", raw)


def argmax(values: Sequence[float]) -> int:
    """First index of the maximum, as ``numpy.argmax`` (lm-eval's tie-breaking)."""
    best = 0
    for index, value in enumerate(values):
        if value > values[best]:
            best = index
    return best


def score_cell(
    scorer: LoglikelihoodScorer,
    task: Task,
    arm: Arm,
    shots: int,
    on_batch: Callable[[int], None] | None = None,
) -> list[dict]:
    """Per-question records of one cell: log-likelihood of every choice, predictions, truth."""
    cell = Cell(arm.name, task.name, shots, arm.k)
    prompts = [build_prompt(task, item, shots, arm.context_for(item)) for item in task.items]
    requests = [(p.context, c) for p in prompts for c in p.continuations]
    scores = scorer.loglikelihood(requests, on_batch=on_batch)
    records, position = [], 0
    for item, prompt in zip(task.items, prompts):
        n = len(prompt.continuations)
        lls = [s.logprob for s in scores[position : position + n]]
        position += n
        pred = argmax(lls)
        pred_norm = argmax([ll / len(text) for ll, text in zip(lls, prompt.choice_texts)])
        records.append(
            {
                **asdict(cell),
                "question_id": item.id,
                "loglikelihoods": lls,
                "pred": pred,
                "pred_norm": pred_norm,
                "answer": item.answer,
                "correct": pred == item.answer,
                "correct_norm": pred_norm == item.answer,
            }
        )
    return records


def cell_metrics(records: Sequence[dict], seed: int, resamples: int) -> dict:
    first = records[0]
    correct = [float(r["correct"]) for r in records]
    correct_norm = [float(r["correct_norm"]) for r in records]
    return {
        "arm": first["arm"],
        "split": first["split"],
        "shots": first["shots"],
        "k": first["k"],
        "n": len(records),
        "acc": round(sum(correct) / len(correct), 4),
        "acc_ci": list(bootstrap_ci(correct, seed, resamples)),
        "acc_norm": round(sum(correct_norm) / len(correct_norm), 4),
        "acc_norm_ci": list(bootstrap_ci(correct_norm, seed, resamples)),
    }


class CellStore:
    """The ``cells/`` folder of a run: finished cells, one JSONL file each."""

    def __init__(self, run_dir: Path):
        self.folder = run_dir / "cells"

    def path(self, cell: Cell) -> Path:
        return self.folder / f"{cell.key}.jsonl"

    def has(self, cell: Cell) -> bool:
        return self.path(cell).exists()

    def write(self, cell: Cell, records: list[dict]) -> None:
        write_jsonl(self.path(cell), records)

    def read(self, cell: Cell) -> list[dict]:
        return [row for _, row in read_jsonl(self.path(cell))]
