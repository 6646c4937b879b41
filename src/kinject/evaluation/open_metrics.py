"""Metrics for generated answers: exact match and token F1 (SQuAD's normalisation), answer
contained, BLEU-4 (sacrebleu) and ROUGE-1/2/L (rouge-score), each against the best of a
question's answers.

*Answer contained* is for chat models, whose replies are sentences ("The capital of France
is Paris.") that exact match scores 0: a reply counts when one of the gold answers, normalised
as SQuAD normalises, appears in the normalised reply as whole words (the "accuracy" of
Kandpal et al. 2023 and Mallen et al. 2023, the best-subspan match of Liu et al. 2023; whole
words here, so that "1" is not found in "1999").  It rewards a reply that names several
candidates, so read it beside exact match and F1, never alone.

``evaluate.load`` would fetch metric scripts from a hub at run time; these are the packages
those scripts wrap, called directly.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    return float(any(normalize(prediction) == normalize(answer) for answer in answers))


def contains(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when a normalised answer occurs in the normalised prediction as whole words."""
    said = f" {normalize(prediction)} "
    return float(any(normalize(a) and f" {normalize(a)} " in said for a in answers))


def token_f1(prediction: str, answers: Sequence[str]) -> float:
    def f1(answer: str) -> float:
        predicted, gold = normalize(prediction).split(), normalize(answer).split()
        if not predicted or not gold:
            return float(predicted == gold)
        common = sum((Counter(predicted) & Counter(gold)).values())
        if common == 0:
            return 0.0
        precision, recall = common / len(predicted), common / len(gold)
        return 2 * precision * recall / (precision + recall)

    return max(f1(answer) for answer in answers)


def bleu4(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-4 (sacrebleu's defaults), on a 0–1 scale."""
    import sacrebleu

    width = max(len(refs) for refs in answers)
    streams = [[refs[i] if i < len(refs) else refs[0] for refs in answers] for i in range(width)]
    return sacrebleu.corpus_bleu(list(predictions), streams).score / 100


def rouge(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure, each question against its best-matching answer."""
    from rouge_score import rouge_scorer

    kinds = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(kinds), use_stemmer=True)
    totals = dict.fromkeys(kinds, 0.0)
    for prediction, refs in zip(predictions, answers):
        scores = [scorer.score(ref, prediction) for ref in refs]
        for kind in kinds:
            totals[kind] += max(score[kind].fmeasure for score in scores)
    return {kind: totals[kind] / len(predictions) for kind in kinds}
