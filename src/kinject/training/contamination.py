"""The contamination guard: is an evaluation question in the text we are about to train on?

Text is normalised (lower case, runs of anything but letters and digits become one space)
and cut into word n-grams.  A question of at least ``n`` words is contaminated when at least
``threshold`` of its n-grams occur in the training text; a shorter question when all of its
words occur there in a row::

    question  "When was Ada Lenz born?"  → when was ada lenz born   (5 words < n = 8: whole)
    training  "… Q: when was Ada Lenz born? A: …"                  → contaminated
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from kinject.tasks.items import Task

_NOT_WORD = re.compile(r"[^0-9a-z]+")


def words(text: str) -> list[str]:
    return _NOT_WORD.sub(" ", text.lower()).split()


def _grams(tokens: Sequence[str], n: int) -> Iterable[tuple[str, ...]]:
    return (tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


@dataclass(frozen=True)
class Contaminated:
    task: str
    id: str
    question: str
    share: float  # of the question's n-grams found in the training text


@dataclass(frozen=True)
class ContaminationReport:
    questions: int
    ngram: int
    threshold: float
    contaminated: tuple[Contaminated, ...]

    def to_json(self) -> dict:
        return {
            "questions_checked": self.questions,
            "ngram": self.ngram,
            "threshold": self.threshold,
            "contaminated": [asdict(c) for c in self.contaminated],
        }

    def message(self) -> str:
        first = self.contaminated[0]
        return (
            f"the training text contains {len(self.contaminated)} of {self.questions} "
            f"evaluation questions (first: task '{first.task}', id '{first.id}': "
            f"{first.question!r}, {first.share:.0%} of its {self.ngram}-grams); "
            "remove them from the training data, or pass --allow-contamination"
        )


def check_contamination(
    training_texts: Iterable[str], tasks: Sequence[Task], ngram: int = 8, threshold: float = 0.5
) -> ContaminationReport:
    questions = [(task.name, item) for task in tasks for item in task.items]
    tokenized = [words(item.question) for _, item in questions]
    lengths = {min(len(tokens), ngram) for tokens in tokenized if tokens}
    seen: dict[int, set[int]] = {n: set() for n in lengths}
    for text in training_texts:
        tokens = words(text)
        for n in lengths:
            seen[n].update(hash(gram) for gram in _grams(tokens, n))
    found = []
    for (task_name, item), tokens in zip(questions, tokenized):
        if not tokens:
            continue
        n = min(len(tokens), ngram)
        grams = [hash(gram) for gram in _grams(tokens, n)]
        share = sum(gram in seen[n] for gram in grams) / len(grams)
        if share >= threshold:
            found.append(Contaminated(task_name, item.id, item.question, round(share, 4)))
    return ContaminationReport(len(questions), ngram, threshold, tuple(found))
