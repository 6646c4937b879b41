"""Multiple-choice questions from a knowledge base, the paper's way.

Per chunk of at least ``min_chars`` characters::

    chunk ──► "write 4 specific questions, 4 options, one correct" ──► validate each
          ──► "pick the 2 most specific" (only when more than 2 are valid) ──► kept
    all kept ──► dedupe by normalised question text ──► balance the correct position ──► JSONL

Validation (a question failing a check is dropped and counted under that reason):

- ``empty question``: the question has no content word (see below) once trimmed;
- ``options``: exactly 4 options, each non-empty after trimming;
- ``option is a letter``: an option is a lone letter ("A", "b."), as a small model writes
  when it copies the reply's form instead of answering (a lone digit is a fine option);
- ``duplicate options``: the 4 options are distinct after normalisation (lower case, runs of
  non-letters/digits as one space) — so the correct option is not also a distractor;
- ``refers to other options``: no option such as "all of the above", "none of the above" or
  "both A and B" (with them, exactly one option is not the whole truth, and moving options
  breaks them);
- ``answer``: the answer is one letter A–D (or an index 0–3): exactly one option is correct;
- ``answer not in chunk``: lexical support — the correct option's content words are its runs
  of letters/digits, lower-cased, without English stop words and with a trailing "s" removed;
  at least ``min_support`` of them (default: half, rounded up; at least one) must occur among
  the chunk's words treated the same way.  An option with no content word fails;
- ``duplicate question``: the same normalised question text as a question kept earlier.

The correct option's position is then balanced over the whole output: positions 0..3 are
dealt round-robin, shuffled with ``seed``, and each question's options are reordered (the
distractors in a seeded order) so its correct option lands on its dealt position — the four
counts differ by at most one.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field, field_validator

from kinject.cache import fingerprint
from kinject.datasets.answer_first import SpanFinder, answer_first_for_text, span_pools
from kinject.datasets.resume import PartialResults
from kinject.datasets.text import content_words, normalise
from kinject.errors import KinjectError
from kinject.fileio import write_jsonl
from kinject.llm.client import ChatModel
from kinject.llm.prompts import Prompts, load_prompts
from kinject.progress import progress_bar

LETTERS = "ABCD"
_META_OPTION = re.compile(
    r"\b(all|none|neither|both) of (the )?(above|these|them|those)\b|\bboth [a-d] and [a-d]\b"
    r"|\b[a-d] and [a-d] (are|is) correct\b",
    re.IGNORECASE,
)


class DraftQuestion(BaseModel):
    question: str
    # the schema asks for what the prompt asks (4 options, a letter), which is what a local
    # model is made to write (kinject.llm.guided); validation stays as lenient as check()
    options: list[str] = Field(json_schema_extra={"minItems": 4, "maxItems": 4})
    answer: str | int = Field(json_schema_extra={"enum": list("ABCD")})


class DraftQuestions(BaseModel):
    """The reply to the question prompt."""

    questions: list[DraftQuestion] = Field(min_length=1)


def draft_schema(count: int) -> type[DraftQuestions]:
    """The reply to the question prompt, asking for ``count`` questions (more are accepted)."""

    class Draft(DraftQuestions):
        model_config = {"title": "DraftQuestions"}

        questions: list[DraftQuestion] = Field(min_length=1, json_schema_extra={"maxItems": count})

    return Draft


def selection_schema(count: int, keep: int) -> type[BaseModel]:
    """The reply to the selection prompt: ``keep`` distinct numbers in 1..count."""

    class Selection(BaseModel):
        selected: list[Annotated[int, Field(ge=1, le=count)]] = Field(
            min_length=keep, max_length=keep, json_schema_extra={"uniqueItems": True}
        )

        @field_validator("selected")
        @classmethod
        def _distinct(cls, value: list[int]) -> list[int]:
            if len(set(value)) != len(value):
                raise ValueError("the numbers must be different")
            return value

    return Selection


@dataclass(frozen=True)
class QuestionOptions:
    min_chars: int = 500
    per_chunk: int = 4
    keep: int = 2
    min_support: float = 0.5
    seed: int = 0

    def __post_init__(self):
        if self.per_chunk < 1 or not 1 <= self.keep <= self.per_chunk:
            raise KinjectError("need 1 <= keep <= questions per chunk")
        if not 0 < self.min_support <= 1:
            raise KinjectError("min_support must be in (0, 1]")


@dataclass
class QuestionReport:
    chunks_total: int = 0
    chunks_used: int = 0
    chunks_resumed: int = 0
    generated: int = 0
    kept: int = 0
    not_selected: int = 0
    dropped: Counter = field(default_factory=Counter)
    positions: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    stems: Counter = field(default_factory=Counter)  # answer-first: how each stem was written

    def lines(self) -> list[str]:
        out = [
            f"chunks: {self.chunks_used} of {self.chunks_total} long enough"
            + (f" ({self.chunks_resumed} resumed)" if self.chunks_resumed else ""),
            (
                f"questions: {self.generated} generated, {self.kept} kept, "
                f"{self.not_selected} not chosen as most specific"
            ),
        ]
        for reason, n in sorted(self.dropped.items()):
            out.append(f"dropped ({reason}): {n}")
        if self.stems:
            how = ", ".join(f"{how} {n}" for how, n in sorted(self.stems.items()))
            out.append(f"question stems: {how}")
        counts = ", ".join(f"{LETTERS[i]} {n}" for i, n in enumerate(self.positions))
        out.append(f"correct option positions: {counts}")
        return out


# --------------------------------------------------------------------------------------------
# Checks


def supported(answer: str, chunk_text: str, min_support: float) -> bool:
    """At least ``min_support`` (rounded up, at least one) of the answer's content words occur
    in the chunk's content words."""
    wanted = content_words(answer)
    if not wanted:
        return False
    found = len(wanted & content_words(chunk_text))
    return found >= max(1, math.ceil(min_support * len(wanted)))


def answer_index(answer: str | int) -> int | None:
    if isinstance(answer, int):
        return answer if 0 <= answer < 4 else None
    text = answer.strip().strip(".)(").strip().upper()
    if len(text) == 1 and text in LETTERS:
        return LETTERS.index(text)
    return None


def check(draft: DraftQuestion, text: str, min_support: float) -> tuple[dict | None, str | None]:
    """``(question, None)`` when valid, else ``(None, reason)``."""
    options = [option.strip() for option in draft.options]
    question = draft.question.strip()
    if not content_words(question):
        return None, "empty question"
    if len(options) != 4 or not all(options):
        return None, "options"
    if any(re.fullmatch(r"[a-z]", normalise(option)) for option in options):
        return None, "option is a letter"
    if len({normalise(option) for option in options}) != 4:
        return None, "duplicate options"
    if any(_META_OPTION.search(option) for option in options):
        return None, "refers to other options"
    index = answer_index(draft.answer)
    if index is None:
        return None, "answer"
    if not supported(options[index], text, min_support):
        return None, "answer not in chunk"
    return {"question": question, "choices": options, "answer": index}, None


# --------------------------------------------------------------------------------------------
# One text


def questions_for_text(
    chat: ChatModel, text: str, prompts: Prompts, options: QuestionOptions, seed: int
) -> dict[str, Any]:
    """Ask for questions about ``text``, validate, let the model pick the most specific.

    Returns ``{"generated": n, "dropped": {reason: n}, "not_selected": n, "kept": [{"n": the
    question's number in the reply (1-based), "question", "choices", "answer"}]}``.
    """
    prompt = prompts.render("questions", text=text, n=options.per_chunk)
    schema = draft_schema(options.per_chunk)
    drafts = chat.chat_json([{"role": "user", "content": prompt}], schema, seed=seed)
    valid, dropped = [], Counter()
    for number, draft in enumerate(drafts.questions, start=1):
        question, reason = check(draft, text, options.min_support)
        if reason is not None:
            dropped[reason] += 1
        else:
            valid.append({"n": number, **question})
    kept = valid
    if len(valid) > options.keep:
        listing = "\n\n".join(
            f"{i}. {q['question']}\n"
            + "\n".join(f"   {LETTERS[j]}. {c}" for j, c in enumerate(q["choices"]))
            for i, q in enumerate(valid, start=1)
        )
        prompt = prompts.render(
            "select", text=text, questions=listing, count=len(valid), keep=options.keep
        )
        schema = selection_schema(len(valid), options.keep)
        reply = chat.chat_json([{"role": "user", "content": prompt}], schema, seed=seed)
        kept = [valid[i - 1] for i in sorted(reply.selected)]
    return {
        "generated": len(drafts.questions),
        "dropped": dict(dropped),
        "not_selected": len(valid) - len(kept),
        "kept": kept,
    }


def finish_questions(
    units: list[tuple[str, str, dict[str, Any]]], seed: int, report: QuestionReport
) -> list[dict[str, Any]]:
    """Task rows from ``(unit id, doc id, questions_for_text result)``: deduped, ids and
    doc_ids set, correct positions balanced."""
    rows, seen = [], set()
    for unit_id, doc_id, result in units:
        report.generated += result["generated"]
        report.not_selected += result["not_selected"]
        report.dropped.update(result["dropped"])
        report.stems.update(result.get("stems", {}))
        for question in result["kept"]:
            key = normalise(question["question"])
            if key in seen:
                report.dropped["duplicate question"] += 1
                continue
            seen.add(key)
            rows.append(
                {
                    "id": f"{unit_id}-q{question['n']}",
                    "question": question["question"],
                    "choices": list(question["choices"]),
                    "answer": question["answer"],
                    "doc_ids": [doc_id],
                }
            )
    balance_positions(rows, seed)
    report.kept = len(rows)
    report.positions = [sum(1 for r in rows if r["answer"] == i) for i in range(4)]
    return rows


def balance_positions(rows: list[dict[str, Any]], seed: int) -> None:
    """Move each correct option to a dealt position so the four positions are as even as
    possible (counts differ by at most one); distractors in a seeded order."""
    rng = random.Random(f"positions-{seed}")
    targets = [i % 4 for i in range(len(rows))]
    rng.shuffle(targets)
    for row, target in zip(rows, targets, strict=True):
        correct = row["choices"][row["answer"]]
        others = [c for i, c in enumerate(row["choices"]) if i != row["answer"]]
        rng.shuffle(others)
        others.insert(target, correct)
        row["choices"], row["answer"] = others, target


# --------------------------------------------------------------------------------------------
# A knowledge base


def generate_questions(
    kb_dir: str | Path,
    out: str | Path,
    chat: ChatModel | None,
    options: QuestionOptions = QuestionOptions(),
    prompts: Prompts | None = None,
    max_chunks: int | None = None,
    show_progress: bool = True,
    answer_first: bool = False,
) -> QuestionReport:
    """Write a multiple-choice task JSONL (``load_mc_jsonl`` format) about ``kb_dir``'s chunks.

    ``answer_first``: kinject picks each answer and its distractors from the text and the
    model (``chat``, which may then be None) only phrases the question
    (:mod:`kinject.datasets.answer_first`).  Resumable: each finished chunk is kept in
    ``OUT.partial.jsonl`` until OUT is written.
    """
    from kinject.kb.store import KnowledgeBase

    if chat is None and not answer_first:
        raise KinjectError("questions need a chat model (--model, --llm or --local-path)")

    out = Path(out)
    prompts = prompts or load_prompts()
    chunks = KnowledgeBase.open(kb_dir).chunks
    report = QuestionReport(chunks_total=len(chunks))
    eligible = [c for c in chunks if len(c.text.strip()) >= options.min_chars]
    if max_chunks is not None and len(eligible) > max_chunks:
        picked = set(
            random.Random(f"chunks-{options.seed}").sample(range(len(eligible)), max_chunks)
        )
        eligible = [c for i, c in enumerate(eligible) if i in picked]
    if not eligible:
        raise KinjectError(
            f"{kb_dir}: no chunk has at least {options.min_chars} characters (see --min-chars)"
        )
    report.chunks_used = len(eligible)
    finder = SpanFinder([c.text for c in chunks]) if answer_first else None
    pools = span_pools([(c.doc_id, c.text) for c in chunks], finder) if finder else {}
    kb_digest = fingerprint(sorted(c.sha256 for c in chunks)) if answer_first else None
    partial = PartialResults(out, _settings(chat, prompts, options, kb_digest))
    results = []
    with progress_bar("questions", len(eligible), show_progress) as bar:
        for chunk in eligible:
            sha = chunk.sha256
            result = partial.get(chunk.id, sha)
            if result is None:
                seed = _seed(options.seed, "questions", chunk.id)
                if answer_first:
                    unit = (chunk.id, chunk.doc_id, chunk.text)
                    result = answer_first_for_text(
                        chat, unit, finder, pools, prompts, options.keep, seed
                    )
                else:
                    result = questions_for_text(chat, chunk.text, prompts, options, seed)
                partial.add(chunk.id, sha, result)
            else:
                report.chunks_resumed += 1
            results.append((chunk.id, chunk.doc_id, result))
            bar.advance(info=f"{sum(len(r[2]['kept']) for r in results)} questions")
    rows = finish_questions(results, options.seed, report)
    if not rows:
        raise KinjectError(f"no question passed validation ({dict(report.dropped)})")
    write_jsonl(out, rows)
    partial.finish()
    return report


def _settings(
    chat: ChatModel | None, prompts: Prompts, options: QuestionOptions, kb_digest: str | None
) -> str:
    """What decides a chunk's result: the model, the templates used and the options; with
    answer first (``kb_digest``, the knowledge base's chunks: its distractors and common
    words) ``question_for_answer`` and the knowledge base instead of the question prompts."""
    identity = chat.identity() if chat is not None else "no model"
    if kb_digest is None:  # the key it had before answer-first: earlier partial files resume
        used = {name: prompts.templates[name] for name in ("questions", "select", "paraphrase")}
        return fingerprint(identity, used, options.__dict__)
    used = {"question_for_answer": prompts.templates["question_for_answer"]}
    return fingerprint(identity, used, options.__dict__, "answer-first", kb_digest)


def _seed(seed: int, *parts: object) -> int:
    """A request seed derived from the run's seed and what is asked (stable across runs)."""
    return int(fingerprint(seed, *parts), 16) % 2**31
