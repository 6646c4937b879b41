"""Prompt strings, identical to lm-evaluation-harness's for the same task.

* ``letter`` style (lm-eval's ``mmlu`` default task)::

      {question.strip()}\\nA. {c0}\\nB. {c1}\\nC. {c2}\\nD. {c3}\\nAnswer:   + " A" | " B" | …

* ``option`` style (lm-eval's ``arc_easy``, ``sciq`` …)::

      Question: {question}\\nAnswer:                                      + " {choice}"

k-shot (lm-eval's ``first_n`` sampler, ``fewshot_delimiter="\\n\\n"``, ``target_delimiter=" "``)::

      {description}{ex1 text} {ex1 target}\\n\\n … {exk text} {exk target}\\n\\n{text}

Context from an arm (retrieved chunks, the gold document) goes right before the question::

      {description}{examples}\\n\\n{context}\\n\\n{text}

An arm's instruction comes first, before the description: lm-eval 0.4's
``--system_instruction`` for a model without a chat template (``ConfigurableTask.
fewshot_context``: ``maybe_delimit(system_instruction, description, fewshot_delimiter)`` is
the system prompt; the k-shot examples and the question follow it with nothing between)::

      ┌──────── system prompt ────────┐
      {instruction}\\n\\n{description}{ex1 text} {ex1 target}\\n\\n … {context}\\n\\n{text}
      {instruction}{description}…       either has whitespace at the join (e.g. "…Bob.\\n")
      {instruction}{ex1 text} …         no description: nothing between, so an instruction
                                        meant to stand apart ends in "\\n\\n"
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass

from kinject.tasks.items import MCItem, Task

STYLES = ("letter", "option", "cloze")
FEWSHOT_DELIMITER = "\n\n"
TARGET_DELIMITER = " "


def letters(n: int) -> list[str]:
    return list(string.ascii_uppercase[:n])


def item_text(item: MCItem, style: str) -> str:
    """The question in ``style``; ``cloze`` (lm-eval's plain-continuation layout, as lambada
    or hellaswag: ``doc_to_text`` the text, ``doc_to_choice`` the options) is the question as
    it is, each choice scored as its continuation::

        {question}                                                      + " {choice}"
    """
    if style == "cloze":
        return item.question
    if style == "letter":
        lines = [item.question.strip()]
        lines += [
            f"{letter}. {choice}"
            for letter, choice in zip(letters(len(item.choices)), item.choices)
        ]
        return "\n".join(lines) + "\nAnswer:"
    if style == "option":
        return f"Question: {item.question}\nAnswer:"
    raise ValueError(f"unknown prompt style '{style}' (expected one of {', '.join(STYLES)})")


def item_choices(item: MCItem, style: str) -> list[str]:
    """The continuations scored for each option, without the target delimiter (option and
    cloze: the choices' texts; letter: A, B, …)."""
    if style not in STYLES:
        raise ValueError(f"unknown prompt style '{style}' (expected one of {', '.join(STYLES)})")
    return letters(len(item.choices)) if style == "letter" else list(item.choices)


def system_prompt(instruction: str | None, description: str) -> str:
    """What opens a prompt: the instruction and the task's description, joined as lm-eval
    joins ``--system_instruction`` and a description (``maybe_delimit``): by the few-shot
    delimiter unless one of them has whitespace at the join; either alone as it is."""
    if not instruction:
        return description
    if not description:
        return instruction
    if instruction[-1].isspace() or description[0].isspace():
        return instruction + description
    return instruction + FEWSHOT_DELIMITER + description


@dataclass(frozen=True)
class Prompt:
    context: str
    continuations: tuple[str, ...]  # the strings whose log-likelihood is scored
    choice_texts: tuple[str, ...]  # what acc_norm divides by (lm-eval: len of choice string)


def build_prompt(
    task: Task,
    item: MCItem,
    shots: int,
    context: str | None = None,
    examples: Sequence[MCItem] | None = None,
    instruction: str | None = None,
) -> Prompt:
    """The scored prompt; ``examples`` replaces the first ``shots`` dev items (dynamic k-shot);
    ``instruction`` opens it (lm-eval's ``--system_instruction``)."""
    if examples is None:
        if shots > len(task.dev):
            raise ValueError(
                f"task '{task.name}' has {len(task.dev)} dev examples; {shots}-shot needs {shots}"
            )
        examples = task.dev[:shots]
    shown = [
        item_text(example, task.style)
        + TARGET_DELIMITER
        + item_choices(example, task.style)[example.answer]
        for example in examples
    ]
    prefix = system_prompt(instruction, task.description)
    prefix += "".join(example + FEWSHOT_DELIMITER for example in shown)
    if context:
        prefix += context + FEWSHOT_DELIMITER
    choices = item_choices(item, task.style)
    return Prompt(
        context=prefix + item_text(item, task.style),
        continuations=tuple(TARGET_DELIMITER + choice for choice in choices),
        choice_texts=tuple(choices),
    )


def build_open_prompt(
    task: Task,
    item,
    shots: int,
    context: str | None = None,
    examples: Sequence | None = None,
    instruction: str | None = None,
) -> str:
    """An open question in the option style, answered by generation after ``Answer:``::

    {description}Question: {ex1}\\nAnswer: {ex1 answers[0]}\\n\\n … {context}\\n\\nQuestion: {q}\\nAnswer:

    with ``instruction`` first, as in :func:`build_prompt`.
    """
    if examples is None:
        if shots > len(task.dev):
            raise ValueError(
                f"task '{task.name}' has {len(task.dev)} dev examples; {shots}-shot needs {shots}"
            )
        examples = task.dev[:shots]
    prefix = system_prompt(instruction, task.description) + "".join(
        f"Question: {example.question}\nAnswer:{TARGET_DELIMITER}{example.answers[0]}"
        + FEWSHOT_DELIMITER
        for example in examples
    )
    if context:
        prefix += context + FEWSHOT_DELIMITER
    return prefix + f"Question: {item.question}\nAnswer:"
