"""Paired comparisons of two arms: the exact McNemar test, relative gain, the 'knows' flag."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from scipy.stats import binomtest

from kinject.errors import KinjectError
from kinject.evaluation.stats import (
    McNemar,
    knows,
    mcnemar_exact,
    paired_outcomes,
    relative_gain,
)


def outcomes(a_only: int, b_only: int, both: int = 0, neither: int = 0):
    """Two arms' per-question outcomes with the given counts of each agreement pattern."""
    a = [True] * a_only + [False] * b_only + [True] * both + [False] * neither
    b = [False] * a_only + [True] * b_only + [True] * both + [False] * neither
    return a, b


def exact_p(a_only: int, b_only: int) -> float:
    """The two-sided exact p from the definition, in fractions."""
    n, k = a_only + b_only, min(a_only, b_only)
    tail = sum(Fraction(math.comb(n, i), 2**n) for i in range(k + 1))
    return float(min(Fraction(1), 2 * tail))


def test_mcnemar_by_hand_five_discordant_all_one_way():
    result = mcnemar_exact(*outcomes(0, 5, both=7, neither=2))
    assert result == McNemar(a_only=0, b_only=5, p_value=0.0625)  # 2 * (1/2)^5
    assert result.discordant == 5


@pytest.mark.parametrize(
    "a_only, b_only", [(1, 0), (0, 1), (2, 7), (7, 2), (10, 10), (11, 10), (30, 55), (100, 160)]
)
def test_mcnemar_matches_the_binomial_test_and_the_definition(a_only, b_only):
    result = mcnemar_exact(*outcomes(a_only, b_only, both=3, neither=4))
    assert (result.a_only, result.b_only) == (a_only, b_only)
    expected = binomtest(min(a_only, b_only), a_only + b_only, 0.5).pvalue
    assert result.p_value == pytest.approx(expected, rel=1e-12)
    assert result.p_value == pytest.approx(exact_p(a_only, b_only), rel=1e-15)


def test_mcnemar_is_symmetric_in_the_arms_and_ignores_agreements():
    a, b = outcomes(4, 13, both=20, neither=9)
    forward, backward = mcnemar_exact(a, b), mcnemar_exact(b, a)
    assert (forward.a_only, forward.b_only) == (backward.b_only, backward.a_only) == (4, 13)
    assert forward.p_value == backward.p_value
    assert mcnemar_exact(*outcomes(4, 13)).p_value == forward.p_value


def test_mcnemar_without_discordant_questions_is_one():
    assert mcnemar_exact(*outcomes(0, 0, both=5, neither=3)) == McNemar(0, 0, 1.0)
    assert mcnemar_exact(*outcomes(6, 6)).p_value == 1.0  # an even split caps at 1


def test_mcnemar_on_ten_thousand_discordant_questions_is_exact():
    result = mcnemar_exact(*outcomes(4950, 5050))
    assert result.discordant == 10_000
    assert 0 < result.p_value <= 1
    assert result.p_value == pytest.approx(binomtest(4950, 10_000, 0.5).pvalue, rel=1e-9)
    lopsided = mcnemar_exact(*outcomes(4700, 5300)).p_value
    assert 0 < lopsided < 1e-8
    assert lopsided == pytest.approx(binomtest(4700, 10_000, 0.5).pvalue, rel=1e-9)


def test_mcnemar_refuses_unpaired_or_empty_outcomes():
    with pytest.raises(ValueError, match="paired"):
        mcnemar_exact([True, False], [True])
    with pytest.raises(ValueError, match="at least one"):
        mcnemar_exact([], [])


def test_relative_gain_is_the_papers_ratio_and_none_from_zero():
    assert relative_gain(0.5, 0.75) == pytest.approx(0.5)
    assert relative_gain(0.8, 0.6) == pytest.approx(-0.25)
    assert relative_gain(0.4, 0.4) == 0.0
    assert relative_gain(0.0, 0.3) is None
    assert relative_gain(0.0, 0.0) is None


def test_knows_means_strictly_above_chance():
    assert knows(0.26, 4) and not knows(0.25, 4) and not knows(0.2, 4)
    assert knows(0.51, 2) and not knows(0.5, 2)
    with pytest.raises(ValueError):
        knows(0.5, 0)


def record(question_id: str, correct: bool) -> dict:
    return {"question_id": question_id, "correct": correct, "arm": "ignored"}


def test_paired_outcomes_pair_by_question_in_the_first_cells_order():
    cell_a = [record("q2", True), record("q1", False), record("q3", True)]
    cell_b = [record("q3", False), record("q2", True), record("q1", True)]
    assert paired_outcomes(cell_a, cell_b) == ([True, False, True], [True, True, False])


@pytest.mark.parametrize("side", ["a", "b"])
def test_paired_outcomes_name_a_question_missing_from_one_cell(side):
    full = [record("q1", True), record("q7", False)]
    short = [record("q1", True)]
    cells = (full, short) if side == "a" else (short, full)
    with pytest.raises(KinjectError, match="question 'q7' is in one cell and not the other"):
        paired_outcomes(*cells)


def test_paired_outcomes_refuse_a_question_twice_in_a_cell():
    with pytest.raises(KinjectError, match="question 'q1' appears twice"):
        paired_outcomes([record("q1", True), record("q1", False)], [record("q1", True)])
