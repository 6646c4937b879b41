"""Confidence intervals for accuracies, and paired comparisons of two arms."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kinject.errors import KinjectError


def _chunks(resamples: int, size: int = 256):
    for start in range(0, resamples, size):
        yield start, min(resamples, start + size)


def bootstrap_ci(
    outcomes: Sequence[float], seed: int, resamples: int = 1000, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``outcomes`` (0/1 per question), seeded."""
    import numpy as np

    values = np.asarray(outcomes, dtype=float)
    if values.size == 0:
        raise ValueError("bootstrap_ci needs at least one outcome")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start, stop in _chunks(resamples):  # chunks bound memory for large question sets
        picks = rng.integers(0, values.size, size=(stop - start, values.size))
        means[start:stop] = values[picks].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return round(float(low), 4), round(float(high), 4)


def previous_answer_rate(records: Sequence[Mapping], seed: int, resamples: int) -> dict:
    """How often a cell still gives the answer that was right before the knowledge changed.

    Over the records that carry ``previous`` (the index of that choice; the synthetic world's
    ``updated`` questions): ``previous_n`` such questions, ``previous_rate`` the share whose
    prediction ``pred`` is ``previous``, and ``previous_rate_ci`` its percentile bootstrap
    interval, seeded as ``acc_ci``.  Empty when no record carries ``previous``.
    """
    changed = [r for r in records if r.get("previous") is not None]
    if not changed:
        return {}
    kept = [float(r["pred"] == r["previous"]) for r in changed]
    return {
        "previous_n": len(changed),
        "previous_rate": round(sum(kept) / len(kept), 4),
        "previous_rate_ci": list(bootstrap_ci(kept, seed, resamples)),
    }


# ---------------------------------------------------------------------------------------------
# Comparing two arms on the same questions


@dataclass(frozen=True)
class McNemar:
    """The exact McNemar test of two arms scored on the same questions."""

    a_only: int  # questions arm A got right and arm B got wrong
    b_only: int  # questions arm B got right and arm A got wrong
    p_value: float  # two-sided

    @property
    def discordant(self) -> int:
        return self.a_only + self.b_only


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> McNemar:
    """The paired exact (binomial) McNemar test; ``a[i]``, ``b[i]``: question i right in arm A, B.

    Under the null hypothesis each discordant question is A's with probability 1/2, so with
    ``n`` discordant questions and ``k = min(a_only, b_only)``::

        p = min(1, 2 * P(X <= k)),   X ~ Binomial(n, 1/2);   p = 1 when n = 0

    computed in exact integer arithmetic and rounded once to a float (so 10,000 discordant
    questions neither overflow nor lose precision; a p below ~1e-308 is 0.0, the nearest float).
    """
    if len(a) != len(b):
        raise ValueError(f"mcnemar_exact needs paired outcomes, got {len(a)} and {len(b)}")
    if not a:
        raise ValueError("mcnemar_exact needs at least one question")
    a_only = sum(1 for x, y in zip(a, b) if x and not y)
    b_only = sum(1 for x, y in zip(a, b) if y and not x)
    n, k = a_only + b_only, min(a_only, b_only)
    if n == 0:
        return McNemar(a_only, b_only, 1.0)
    term, tail = 1, 0  # term = C(n, i), updated exactly: C(n, i+1) = C(n, i) * (n-i) / (i+1)
    for i in range(k + 1):
        tail += term
        term = term * (n - i) // (i + 1)
    return McNemar(a_only, b_only, min(1.0, (2 * tail) / (1 << n)))


def relative_gain(base: float, new: float) -> float | None:
    """The paper's relative gain ``(L' - L) / L`` of ``new`` over ``base``; None when L = 0."""
    if base == 0:
        return None
    return (new - base) / base


def knows(acc: float, n_options: int) -> bool:
    """The paper's flag that a model knows a question set: accuracy above chance, 1/options."""
    if n_options < 1:
        raise ValueError(f"knows needs at least one option, got {n_options}")
    return acc > 1 / n_options


def paired_outcomes(
    records_a: Sequence[Mapping], records_b: Sequence[Mapping]
) -> tuple[list[bool], list[bool]]:
    """Per-question ``correct`` of two cells, paired by ``question_id`` in the order of
    ``records_a``; both cells must hold exactly the same questions, each once."""
    by_id_a = _by_question(records_a)
    by_id_b = _by_question(records_b)
    if by_id_a.keys() != by_id_b.keys():
        only_a = [q for q in by_id_a if q not in by_id_b]
        missing = only_a + [q for q in by_id_b if q not in by_id_a]
        raise KinjectError(
            f"cannot pair arms: question '{missing[0]}' is in one cell and not the other "
            f"({len(missing)} such question(s))"
        )
    return [by_id_a[q] for q in by_id_a], [by_id_b[q] for q in by_id_a]


def _by_question(records: Sequence[Mapping]) -> dict[str, bool]:
    outcomes: dict[str, bool] = {}
    for record in records:
        question = record["question_id"]
        if question in outcomes:
            raise KinjectError(f"cannot pair arms: question '{question}' appears twice in a cell")
        outcomes[question] = bool(record["correct"])
    return outcomes


# ---------------------------------------------------------------------------------------------
# Training noise: several trainings (seeds) of one arm, scored on the same questions


def hierarchical_bootstrap_ci(
    outcomes: Sequence[Sequence[float]], seed: int, resamples: int = 1000, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of an arm's accuracy over its trainings and its questions.

    ``outcomes[s][q]``: question q's outcome (0/1, or F1) under training seed s; every seed
    scores the same questions.  Each resample draws the seeds with replacement, then the
    questions with replacement, and takes the mean of the drawn seeds' drawn outcomes: the
    interval holds the training noise (another seed) and the question noise (another
    sample of questions).  The questions are drawn as :func:`bootstrap_ci` draws them (the
    same generator, the same draws) and the seeds from a second generator, so the interval
    differs from the question interval of the seeds' per-question mean only by the seeds'
    resampling; with one seed it is :func:`bootstrap_ci`'s question interval."""
    import numpy as np

    values = np.asarray(outcomes, dtype=float)
    if values.ndim != 2 or values.size == 0:
        raise ValueError("hierarchical_bootstrap_ci needs seeds × questions outcomes")
    if values.shape[0] == 1:
        return bootstrap_ci(values[0], seed, resamples, level)
    n_seeds, n_questions = values.shape
    rng, seed_rng = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    means = np.empty(resamples)
    for start, stop in _chunks(resamples):
        questions = rng.integers(0, n_questions, size=(stop - start, n_questions))
        seeds = seed_rng.integers(0, n_seeds, size=(stop - start, n_seeds))
        means[start:stop] = values[seeds[:, :, None], questions[:, None, :]].mean(axis=(1, 2))
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return round(float(low), 4), round(float(high), 4)


@dataclass(frozen=True)
class Difference:
    """Arm A's accuracy minus arm B's on the same questions, over seeds and questions."""

    difference: float  # mean over A's seeds minus mean over B's seeds
    ci: tuple[float, float]  # percentile interval of the paired bootstrap
    p_value: float  # two-sided: twice the share of resamples on the far side of 0

    @property
    def excludes_zero(self) -> bool:
        return self.ci[0] > 0 or self.ci[1] < 0


def paired_difference(
    a: Sequence[Sequence[float]],
    b: Sequence[Sequence[float]],
    seed: int,
    resamples: int = 1000,
    same_trainings: bool = False,
    level: float = 0.95,
) -> Difference:
    """The paired bootstrap of ``mean(a) - mean(b)``: ``a[s][q]``, ``b[s][q]`` as in
    :func:`hierarchical_bootstrap_ci`, question q the same question in both.

    Each resample draws one set of questions for both arms (the pairing that McNemar's test
    uses), and each arm's seeds with replacement: independently, since two fine-tunings'
    seed 0 are unrelated trainings, or as one draw when ``same_trainings`` (an arm and the
    same models with retrieval).  The p-value is two-sided, ``min(1, 2 * min(P(d <= 0),
    P(d >= 0)))`` over the resampled differences d: 0 when no resample reaches 0, which
    reads p < 1 / resamples."""
    import numpy as np

    first, second = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if first.ndim != 2 or second.ndim != 2 or first.shape[1] != second.shape[1]:
        raise ValueError("paired_difference needs seeds × questions outcomes on the same questions")
    if same_trainings and first.shape[0] != second.shape[0]:
        raise ValueError("same_trainings needs as many seeds in both arms")
    n_questions = first.shape[1]
    rng = np.random.default_rng(seed)
    diffs = np.empty(resamples)
    for start, stop in _chunks(resamples):
        size = stop - start
        questions = rng.integers(0, n_questions, size=(size, n_questions))[:, None, :]
        seeds_a = rng.integers(0, first.shape[0], size=(size, first.shape[0]))
        seeds_b = (
            seeds_a if same_trainings else rng.integers(0, second.shape[0], (size, second.shape[0]))
        )
        mean_a = first[seeds_a[:, :, None], questions].mean(axis=(1, 2))
        mean_b = second[seeds_b[:, :, None], questions].mean(axis=(1, 2))
        diffs[start:stop] = mean_a - mean_b
    tail = (1 - level) / 2
    low, high = np.quantile(diffs, [tail, 1 - tail])
    far = min(float(np.mean(diffs <= 0)), float(np.mean(diffs >= 0)))
    observed = float(first.mean() - second.mean())
    return Difference(
        round(observed, 4), (round(float(low), 4), round(float(high), 4)), min(1.0, 2 * far)
    )
