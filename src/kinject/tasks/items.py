"""The multiple-choice item and task types every loader produces."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MCItem:
    id: str
    question: str
    choices: tuple[str, ...]
    answer: int
    subject: str | None = None
    doc_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Task:
    """Test items plus the dev items k-shot examples are taken from (first k, as lm-eval)."""

    name: str
    items: tuple[MCItem, ...]
    dev: tuple[MCItem, ...] = ()
    description: str = ""  # text before the k-shot examples (MMLU's "The following are …")
    style: str = "option"  # letter | option
    source: dict = field(default_factory=dict)
