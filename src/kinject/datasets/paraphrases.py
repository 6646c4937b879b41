"""Paraphrases of a knowledge base's chunks for FT-par, and a validation task, the paper's way.

Per chunk, calls of the paraphrase prompt, each with a new seed, each answering
``{"paraphrases": [...]}``, until ``n`` distinct paraphrases (none equal to the chunk) are
collected.  The file is what :func:`kinject.training.data.load_paraphrases` reads::

    {"id": "<chunk id>", "paraphrases": ["…", …]}        # one line per chunk

The validation set (the paper: 240 chunks × 2 paraphrases): ``validation_chunks`` chunks
picked with the seed; each is paraphrased ``validation_paraphrases`` more times by separate
calls (seeds of their own, so these texts are not among the training paraphrases), and
questions are generated from each paraphrased text exactly as from a chunk (4 asked, 2 most
specific kept, the same checks, lexical support against the paraphrase).  The questions form
a multiple-choice task whose ``doc_ids`` name the source chunk's document, for choosing
learning rate and epoch without touching test questions.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from kinject.cache import fingerprint
from kinject.datasets.questions import (
    QuestionOptions,
    QuestionReport,
    finish_questions,
    questions_for_text,
)
from kinject.datasets.resume import PartialResults
from kinject.datasets.text import normalise
from kinject.errors import KinjectError
from kinject.fileio import write_jsonl
from kinject.llm.client import ChatModel
from kinject.llm.prompts import Prompts, load_prompts
from kinject.progress import progress_bar


class ParaphraseReply(BaseModel):
    paraphrases: list[str] = Field(min_length=1)


@dataclass(frozen=True)
class ParaphraseOptions:
    n: int = 10
    per_call: int = 5
    min_chars: int = 0
    seed: int = 0
    max_calls: int | None = None  # per chunk; default: 3 × the calls n needs

    def __post_init__(self):
        if self.n < 1 or self.per_call < 1:
            raise KinjectError("--n and --per-call must be at least 1")

    @property
    def call_limit(self) -> int:
        return self.max_calls or 3 * math.ceil(self.n / self.per_call)


@dataclass
class ParaphraseReport:
    chunks: int = 0
    resumed: int = 0
    calls: int = 0
    paraphrases: int = 0
    validation_chunks: int = 0
    validation: QuestionReport | None = None

    def lines(self) -> list[str]:
        out = [
            (
                f"paraphrased {self.chunks} chunks ({self.resumed} resumed): "
                f"{self.paraphrases} paraphrases from {self.calls} calls"
            )
        ]
        if self.validation is not None:
            out.append(f"validation: {self.validation_chunks} chunks")
            out += ["  " + line for line in self.validation.lines()[1:]]
        return out


def call_seed(seed: int, purpose: str, chunk_id: str, call: int) -> int:
    """The seed of one call: new for every call, chunk and purpose; stable across runs."""
    return int(fingerprint(seed, purpose, chunk_id, call), 16) % 2**31


def paraphrase_text(
    chat: ChatModel,
    text: str,
    n: int,
    per_call: int,
    prompts: Prompts,
    seeds: list[int],
) -> tuple[list[str], list[int]]:
    """``n`` distinct paraphrases of ``text`` and the seeds of the calls that made them."""
    collected: list[str] = []
    seen = {normalise(text)}
    used = []
    for seed in seeds:
        if len(collected) >= n:
            break
        want = min(per_call, n - len(collected))
        prompt = prompts.render("paraphrase", text=text, n=want)
        reply = chat.chat_json([{"role": "user", "content": prompt}], ParaphraseReply, seed=seed)
        used.append(seed)
        for paraphrase in reply.paraphrases:
            paraphrase = paraphrase.strip()
            key = normalise(paraphrase)
            if paraphrase and key not in seen and len(collected) < n:
                seen.add(key)
                collected.append(paraphrase)
    if len(collected) < n:
        raise KinjectError(
            f"only {len(collected)} distinct paraphrases of {n} after {len(used)} calls "
            "(the model repeats itself; raise --max-calls or the temperature)"
        )
    return collected, used


def generate_paraphrases(
    kb_dir: str | Path,
    out: str | Path,
    chat: ChatModel,
    options: ParaphraseOptions = ParaphraseOptions(),
    prompts: Prompts | None = None,
    show_progress: bool = True,
) -> ParaphraseReport:
    """Write ``{"id": chunk id, "paraphrases": [...]}`` per chunk of ``kb_dir`` to ``out``."""
    from kinject.kb.store import KnowledgeBase

    out = Path(out)
    prompts = prompts or load_prompts()
    chunks = [c for c in KnowledgeBase.open(kb_dir).chunks if len(c.text) >= options.min_chars]
    if not chunks:
        raise KinjectError(f"{kb_dir}: no chunk has at least {options.min_chars} characters")
    settings = fingerprint(chat.identity(), prompts.templates["paraphrase"], options.__dict__)
    partial = PartialResults(out, settings)
    report = ParaphraseReport(chunks=len(chunks))
    rows = []
    with progress_bar("paraphrases", len(chunks), show_progress) as bar:
        for chunk in chunks:
            result = partial.get(chunk.id, chunk.sha256)
            if result is None:
                seeds = [
                    call_seed(options.seed, "paraphrase", chunk.id, call)
                    for call in range(options.call_limit)
                ]
                texts, used = paraphrase_text(
                    chat, chunk.text, options.n, options.per_call, prompts, seeds
                )
                result = {"paraphrases": texts, "seeds": used}
                partial.add(chunk.id, chunk.sha256, result)
            else:
                report.resumed += 1
            report.calls += len(result["seeds"])
            report.paraphrases += len(result["paraphrases"])
            rows.append({"id": chunk.id, "paraphrases": result["paraphrases"]})
            bar.advance()
    write_jsonl(out, rows)
    partial.finish()
    return report


def generate_validation(
    kb_dir: str | Path,
    out: str | Path,
    chat: ChatModel,
    n_chunks: int = 240,
    n_paraphrases: int = 2,
    question_options: QuestionOptions | None = None,
    prompts: Prompts | None = None,
    show_progress: bool = True,
) -> QuestionReport:
    """A validation task: questions generated from fresh paraphrases of seeded chunks."""
    from kinject.kb.store import KnowledgeBase

    out = Path(out)
    prompts = prompts or load_prompts()
    question_options = question_options or QuestionOptions()
    seed = question_options.seed
    eligible = [
        c
        for c in KnowledgeBase.open(kb_dir).chunks
        if len(c.text.strip()) >= question_options.min_chars
    ]
    if not eligible:
        raise KinjectError(
            f"{kb_dir}: no chunk has at least {question_options.min_chars} characters"
        )
    picked = sorted(
        random.Random(f"validation-{seed}").sample(
            range(len(eligible)), min(n_chunks, len(eligible))
        )
    )
    chosen = [eligible[i] for i in picked]
    used = {name: prompts.templates[name] for name in ("questions", "select", "paraphrase")}
    settings = fingerprint(  # the templates it uses (the key they gave before there were more)
        "validation", chat.identity(), used, question_options.__dict__, n_paraphrases
    )
    partial = PartialResults(out, settings)
    report = QuestionReport(chunks_total=len(eligible), chunks_used=len(chosen))
    units = []
    with progress_bar("validation", len(chosen), show_progress) as bar:
        for chunk in chosen:
            result = partial.get(chunk.id, chunk.sha256)
            if result is None:
                result = _validation_unit(chat, chunk, n_paraphrases, question_options, prompts)
                partial.add(chunk.id, chunk.sha256, result)
            else:
                report.chunks_resumed += 1
            for k, item in enumerate(result, start=1):
                units.append((f"{chunk.id}~v{k}", chunk.doc_id, item["questions"]))
            bar.advance()
    rows = finish_questions(units, seed, report)
    if not rows:
        raise KinjectError(f"no validation question passed validation ({dict(report.dropped)})")
    write_jsonl(out, rows)
    partial.finish()
    return report


def _validation_unit(
    chat: ChatModel, chunk, n_paraphrases: int, options: QuestionOptions, prompts: Prompts
) -> list[dict[str, Any]]:
    """Per paraphrase of ``chunk``: its text and the questions generated from it."""
    seeds = [
        call_seed(options.seed, "validation", chunk.id, call) for call in range(3 * n_paraphrases)
    ]
    texts, _ = paraphrase_text(chat, chunk.text, n_paraphrases, 1, prompts, seeds)
    items = []
    for k, text in enumerate(texts):
        seed = call_seed(options.seed, "validation-questions", chunk.id, k)
        items.append(
            {"text": text, "questions": questions_for_text(chat, text, prompts, options, seed)}
        )
    return items
