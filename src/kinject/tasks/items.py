"""The item and task types every loader produces: multiple choice, and open questions."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MCItem:
    """A multiple-choice question; ``answer`` indexes the right choice.

    ``previous`` (optional) indexes the choice that was right before the knowledge changed
    (the synthetic world's ``updated`` facts: the old employer, the old city), so a run can
    measure how often a model still answers the old fact beside how often it answers the new.
    """

    id: str
    question: str
    choices: tuple[str, ...]
    answer: int
    subject: str | None = None
    doc_ids: tuple[str, ...] = ()
    previous: int | None = None


@dataclass(frozen=True)
class OpenItem:
    """A question answered by generation; any of ``answers`` counts as right."""

    id: str
    question: str
    answers: tuple[str, ...]
    doc_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Task:
    """Test items plus the dev items k-shot examples are taken from (first k, as lm-eval)."""

    name: str
    items: tuple[MCItem, ...] | tuple[OpenItem, ...]
    dev: tuple[MCItem, ...] | tuple[OpenItem, ...] = ()
    description: str = ""  # text before the k-shot examples (MMLU's "The following are …")
    style: str = "option"  # letter | option
    source: dict = field(default_factory=dict)

    @property
    def is_open(self) -> bool:
        """Open questions (scored by generation) rather than multiple choice."""
        return bool(self.items) and isinstance(self.items[0], OpenItem)
