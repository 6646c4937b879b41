"""Questions whose answer kinject takes from the text, for a model too small to write them.

A 135M model asked for whole multiple-choice questions writes none a person would accept
(docs/llm-datasets.md).  So here kinject does what needs judgement of the text, and the
model only phrases:

1. **The answer**: in a sentence of the chunk (8 to 40 words), a span of one kind: a
   ``year`` (1000–2099), a ``number``, or a ``name`` (a run of capitalised words, "of" and
   "the" allowed inside, up to four words; a lone capitalised word that starts the sentence
   is not one).  A chunk's questions use different sentences.
2. **Three distractors**: spans of the same kind from the knowledge base's other chunks, none
   of which occurs in this chunk (so none is stated true beside the answer), names with the
   answer's number of words where there are enough; seeded.
3. **The question**: the model is asked (prompt ``question_for_answer``) to turn the sentence
   into a question whose answer is the span (three worked examples first: a model this
   small follows examples, not instructions).  Its question is kept when it ends with "?",
   gives no content word of the answer away, has 3 to 30 words, shares at least two content
   words with the sentence and asks for the answer's kind (when or which year for a year;
   who, what, which or where for a name; how many, what or which for a number).  Otherwise, or with no model at all, the question is the
   sentence with the answer blanked (``____``): a cloze stem, as on a quiz.

The report counts how the stems were written (by the model, or cloze and why); the correct
option's position is balanced as for the model-written questions.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from kinject.datasets.text import content_words, normalise
from kinject.llm.client import ChatModel
from kinject.llm.prompts import Prompts

BLANK = "____"
KINDS = ("name", "year", "number")
_YEAR = re.compile(r"(?<![\w.,:–—-])(1\d{3}|20\d{2})(?![\w,:–—-])")
_NUMBER = re.compile(
    r"(?<![\w.,:–—-])(?:\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)(?![\w,:–—-])"
)  # neither is a part of a range (1646–47, 1187—1241), a time (02:00) or a longer token
_WORD = re.compile(r"[^\W\d_][\w'’-]*|\S")
_JOINERS = {"of", "the", "de", "du", "von", "van", "al"}
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"“(])")


_ASKS = {  # the words a question asking for a span of each kind holds
    "year": r"\b(when|year|century|date)\b",
    "number": r"\b(how|number|what|which)\b",
    "name": r"\b(who|whom|whose|what|which|where)\b",
}


class PhrasedQuestion(BaseModel):
    """The model's reply: the question alone."""

    question: str


@dataclass(frozen=True)
class Span:
    kind: str
    text: str
    sentence: str
    start: int  # where ``text`` is in ``sentence``
    end: int

    def blanked(self) -> str:
        """The sentence with this span (not an earlier one of the same words) as ``____``."""
        return self.sentence[: self.start] + BLANK + self.sentence[self.end :]


def _all_sentences(text: str) -> list[str]:
    """The text's sentences, whitespace collapsed; a Markdown heading line is not one."""
    return [
        sentence
        for line in text.splitlines()
        if not line.lstrip().startswith("#")
        for sentence in _SENTENCE.split(" ".join(line.split()))
    ]


def sentences(text: str) -> list[str]:
    """The text's sentences of 8 to 40 words: those a question is made of."""
    return [s for s in _all_sentences(text) if 8 <= len(s.split()) <= 40]


class SpanFinder:
    """Answer spans, knowing the knowledge base's words: a capitalised word that the texts
    also write in lower case ("Border", "North", "These") is an ordinary word, not a name."""

    def __init__(self, texts: list[str]):
        self.common = {word for text in texts for word in re.findall(r"\b[a-z][a-z'’-]*\b", text)}

    def spans(self, sentence: str) -> list[Span]:
        """Years, numbers, then names of ``sentence``, each in order of appearance."""
        found = [Span("year", m.group(), sentence, *m.span()) for m in _YEAR.finditer(sentence)]
        years = {span.start for span in found}
        for match in _NUMBER.finditer(sentence):
            if match.start() not in years:
                found.append(Span("number", match.group(), sentence, *match.span()))
        return found + self._names(sentence)

    def _names(self, sentence: str) -> list[Span]:
        words = list(_WORD.finditer(sentence))
        names, run = [], []
        for index, match in enumerate([*words, None]):
            word = match.group() if match else "."
            bare = re.sub(r"['’]s$", "", word)  # Wegener's: the name is Wegener
            capital = bare[:1].isupper() and not bare.isupper()
            if capital or (run and word in _JOINERS):
                run.append((index, bare, match.start(), match.start() + len(bare)))
                if bare == word:
                    continue  # a possessive ends the name
            names += self._name(run, sentence)
            run = []
        return names

    def _name(self, run: list[tuple[int, str, int, int]], sentence: str) -> list[Span]:
        while run and run[-1][1] in _JOINERS:
            run = run[:-1]
        if run and run[0][0] == 0 and len(run) == 1:
            run = []  # a sentence's first word, capitalised for being first
        while run and (
            run[0][1] in _JOINERS
            or (run[0][1].lower() in self.common and (run[0][0] == 0 or len(run) > 4))
        ):
            run = run[1:]  # "The" first, "North" (of the Isle of Brenna): ordinary words
        if not run or len(run) > 4 or (len(run) == 1 and run[0][1].lower() in self.common):
            return []
        start, end = run[0][2], run[-1][3]
        return [Span("name", sentence[start:end], sentence, start, end)]


def span_pools(chunks: list[tuple[str, str]], finder: SpanFinder) -> dict[str, dict[str, set[str]]]:
    """kind -> span text -> the ids of the documents that hold it, from ``(document id,
    text)`` of every chunk."""
    pools: dict[str, dict[str, set[str]]] = {kind: {} for kind in KINDS}
    for doc_id, text in chunks:
        for sentence in _all_sentences(text):
            for span in finder.spans(sentence):
                pools[span.kind].setdefault(span.text, set()).add(doc_id)
    return pools


def distractors(
    span: Span,
    doc_id: str,
    chunk_text: str,
    pools: dict[str, dict[str, set[str]]],
    rng: random.Random,
) -> list[str] | None:
    """Three spans of the answer's kind that the chunk never uses, or None: from the same
    document where it has three (the same topic: Mongol names for a Mongol name), names
    with the answer's number of words and numbers with its number of digits first."""
    words = set(normalise(chunk_text).split())
    taken = {normalise(span.text)}
    pool = []
    for text in sorted(pools[span.kind]):
        key = normalise(text)
        if key in taken or (key and set(key.split()) <= words):
            continue
        taken.add(key)
        pool.append(text)

    def shape(text: str) -> int:
        return len(text.split()) if span.kind == "name" else len(re.sub(r"\D", "", text))

    local = [t for t in pool if doc_id in pools[span.kind][t]]
    for narrowed in (
        [t for t in local if shape(t) == shape(span.text)],
        local,
        [t for t in pool if shape(t) == shape(span.text)],
        pool,
    ):
        if len(narrowed) >= 3:
            return rng.sample(narrowed, 3)
    return None


def phrasing_check(question: str, span: Span) -> str | None:
    """Why the model's question cannot stand (None when it can)."""
    words = question.split()
    if not question.endswith("?"):
        return "not a question"
    if not 3 <= len(words) <= 30:
        return "length"
    if content_words(span.text) & content_words(question):
        return "gives the answer away"
    if len(content_words(question) & content_words(span.sentence)) < 2:
        return "not about the sentence"
    if not re.search(_ASKS[span.kind], question, re.IGNORECASE):
        return f"does not ask for a {span.kind}"
    return None


def answer_first_for_text(
    chat: ChatModel | None,
    chunk: tuple[str, str, str],
    finder: SpanFinder,
    pools: dict[str, dict[str, set[str]]],
    prompts: Prompts,
    keep: int,
    seed: int,
) -> dict[str, Any]:
    """Up to ``keep`` questions about ``text``, in the shape of
    :func:`kinject.datasets.questions.questions_for_text`'s result, with ``stems`` (how many
    stems the model wrote and how many are cloze, with why the model's failed)."""
    chunk_id, doc_id, text = chunk
    rng = random.Random(f"answer-first-{seed}-{chunk_id}")
    candidates = [span for sentence in sentences(text) for span in finder.spans(sentence)]
    rng.shuffle(candidates)
    kept, used, stems = [], set(), Counter()
    for span in candidates:
        if len(kept) == keep:
            break
        if span.sentence in used:
            continue
        wrong = distractors(span, doc_id, text, pools, rng)
        if wrong is None:
            continue
        used.add(span.sentence)
        question, why = None, "no model"
        if chat is not None:
            prompt = prompts.render("question_for_answer", sentence=span.sentence, answer=span.text)
            messages = [{"role": "user", "content": prompt}]
            reply = chat.chat_json(messages, PhrasedQuestion, seed=seed + len(kept))
            question = " ".join(reply.question.split())
            why = phrasing_check(question, span)
        if why is None:
            stems["model"] += 1
        else:
            stems[f"cloze ({why})"] += 1
            question = span.blanked()
        kept.append(
            {
                "n": len(kept) + 1,
                "question": question,
                "choices": [span.text, *wrong],
                "answer": 0,
            }
        )
    return {
        "generated": len(kept),
        "dropped": {},
        "not_selected": 0,
        "kept": kept,
        "stems": dict(stems),
    }
