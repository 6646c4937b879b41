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

from kinject.errors import KinjectError
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


class ChatFormat:
    """Prompts rendered with a model's chat template, as lm-eval's ``--apply_chat_template``
    (``ConfigurableTask.fewshot_context``, no ``gen_prefix``)::

        system     {instruction}\n\n{description}        (only when there is one)
        user       {ex1 text}                             ┐ k-shot, multiturn: a turn pair
        assistant  {ex1 target}                           ┘ per example (lm-eval's default)
        …
        user       {context}\n\n{text}
        assistant  ← the template's generation prompt; the choices are scored right after it,
                     with no target delimiter (" A" becomes "A")

    With ``multiturn`` off (lm-eval's ``--fewshot_as_multiturn false``) the examples and the
    question are one user turn, laid out as the plain prompt.  A template that refuses a
    system turn gets the conversation without it, as lm-eval retries.
    """

    def __init__(self, tokenizer, multiturn: bool = True):
        if not getattr(tokenizer, "chat_template", None):
            name = getattr(tokenizer, "name_or_path", "") or "the model"
            raise KinjectError(
                f"scoring.chat_template is on, but the tokenizer of {name} has no chat "
                "template (a base model: turn chat_template off)"
            )
        self.tokenizer = tokenizer
        self.multiturn = multiturn

    def render(self, system: str, turns: Sequence[tuple[str, str]], question: str) -> str:
        """``system`` (may be empty), the k-shot ``(text, target)`` pairs, the last user turn."""
        if self.multiturn:
            messages = []
            for text, target in turns:
                messages += [
                    {"role": "user", "content": text},
                    {"role": "assistant", "content": target},
                ]
            messages.append({"role": "user", "content": question})
        else:
            shown = "".join(
                text + TARGET_DELIMITER + target + FEWSHOT_DELIMITER for text, target in turns
            )
            messages = [{"role": "user", "content": shown + question}]
        if system:
            messages.insert(0, {"role": "system", "content": system})
        import jinja2

        try:
            return self._apply(messages)
        except jinja2.TemplateError:
            return self._apply([m for m in messages if m["role"] != "system"])

    def _apply(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )


def chat_format(scoring, tokenizer) -> ChatFormat | None:
    """The chat rendering a scoring section asks for (``chat_template``), else ``None``."""
    if not scoring.chat_template:
        return None
    return ChatFormat(tokenizer, scoring.fewshot_as_multiturn)


def _examples(task: Task, shots: int, examples: Sequence | None) -> Sequence:
    if examples is not None:
        return examples
    if shots > len(task.dev):
        raise ValueError(
            f"task '{task.name}' has {len(task.dev)} dev examples; {shots}-shot needs {shots}"
        )
    return task.dev[:shots]


def _layout(
    system: str, turns: Sequence[tuple[str, str]], question: str, chat: ChatFormat | None
) -> str:
    """The plain prompt (lm-eval's text layout), or the chat-rendered one."""
    if chat is not None:
        return chat.render(system, turns, question)
    shown = "".join(text + TARGET_DELIMITER + target + FEWSHOT_DELIMITER for text, target in turns)
    return system + shown + question


def build_prompt(
    task: Task,
    item: MCItem,
    shots: int,
    context: str | None = None,
    examples: Sequence[MCItem] | None = None,
    instruction: str | None = None,
    chat: ChatFormat | None = None,
) -> Prompt:
    """The scored prompt; ``examples`` replaces the first ``shots`` dev items (dynamic k-shot);
    ``instruction`` opens it (lm-eval's ``--system_instruction``); ``chat`` renders it with
    the model's chat template."""
    turns = [
        (item_text(example, task.style), item_choices(example, task.style)[example.answer])
        for example in _examples(task, shots, examples)
    ]
    question = (context + FEWSHOT_DELIMITER if context else "") + item_text(item, task.style)
    choices = item_choices(item, task.style)
    delimiter = "" if chat is not None else TARGET_DELIMITER
    return Prompt(
        context=_layout(system_prompt(instruction, task.description), turns, question, chat),
        continuations=tuple(delimiter + choice for choice in choices),
        choice_texts=tuple(choices),
    )


def build_open_prompt(
    task: Task,
    item,
    shots: int,
    context: str | None = None,
    examples: Sequence | None = None,
    instruction: str | None = None,
    chat: ChatFormat | None = None,
) -> str:
    """An open question in the option style, answered by generation after ``Answer:``::

    {description}Question: {ex1}\nAnswer: {ex1 answers[0]}\n\n … {context}\n\nQuestion: {q}\nAnswer:

    with ``instruction`` first, as in :func:`build_prompt`; ``chat`` renders the same turns
    with the model's chat template, the answer generated in the assistant's turn.
    """
    turns = [
        (f"Question: {example.question}\nAnswer:", example.answers[0])
        for example in _examples(task, shots, examples)
    ]
    question = (
        context + FEWSHOT_DELIMITER if context else ""
    ) + f"Question: {item.question}\nAnswer:"
    return _layout(system_prompt(instruction, task.description), turns, question, chat)
