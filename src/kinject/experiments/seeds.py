"""Training noise: a fine-tuning trained once per seed, chosen on the seeds' mean validation
accuracy, and each fine-tuned cell summarized over its seeds.

An experiment with ``seeds: [0, 1, 2]`` trains every fine-tuning (and every sweep point) once
per seed, each its own cached training.  The learning rate and the epoch are then chosen on
the validation accuracy averaged over the seeds (:func:`select_over_seeds`), so a choice does
not flip on one training's luck; every seed's model at that choice is scored as its own model
(``<label>.seed-<s>``), and the tables show the seeds' cell (:func:`seed_cell`): the mean over
seeds, the spread, and an interval that resamples seeds and questions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

from kinject.errors import KinjectError


def seed_label(label: str, seed: int) -> str:
    """The model label of one seed's training: ``ft-par.seed-1``."""
    return f"{label}.seed-{seed}"


def select_over_seeds(scored: Sequence[Sequence[dict]], grid: Sequence[float]) -> dict:
    """The (learning rate, epoch) with the best validation accuracy averaged over seeds.

    ``scored[s]``: seed s's rows ``{learning_rate, epoch, acc, loss}``, every (learning rate,
    epoch) its validation scored (a fine-tuning's ``selection.json`` "scored").  Only choices
    scored under every seed compete; the best has the highest mean accuracy, then the lowest
    mean loss, then comes first in the grid (earlier learning rate, then earlier epoch), as a
    single fine-tuning chooses.  Returns the choice, its mean and per-seed accuracy, and the
    runner-up with the margin between them (None when there is one choice).  Without
    validation figures: the first learning rate's last epoch."""
    if not scored:
        raise ValueError("select_over_seeds needs at least one seed")
    order = {lr: i for i, lr in enumerate(grid)}
    by_choice: dict[tuple[float, int], list[dict]] = {}
    for rows in scored:
        for row in rows:
            by_choice.setdefault((row["learning_rate"], row["epoch"]), []).append(row)
    complete = {
        choice: rows
        for choice, rows in by_choice.items()
        if len(rows) == len(scored) and choice[0] in order
    }
    if not complete:
        raise KinjectError("no (learning rate, epoch) was scored under every seed")
    ranked = sorted(complete, key=lambda choice: (order[choice[0]], choice[1]))
    if any("acc" not in row for rows in complete.values() for row in rows):
        lr = grid[0]
        epochs = [e for r, e in complete if r == lr]
        if not epochs:
            raise KinjectError(f"learning rate {lr:g} was not trained under every seed")
        epoch = max(epochs)
        return {
            "learning_rate": lr,
            "epoch": epoch,
            "validation_acc": None,
            "runner_up": None,
            "margin": None,
            "validation_acc_seeds": None,
        }

    def mean(rows: list[dict], key: str) -> float:
        return sum(row[key] for row in rows) / len(rows)

    figures = {c: (mean(complete[c], "acc"), mean(complete[c], "loss")) for c in ranked}
    # stable sort: equal figures keep the grid order
    best_first = sorted(ranked, key=lambda c: (-figures[c][0], figures[c][1]))
    chosen = best_first[0]
    runner = best_first[1] if len(best_first) > 1 else None
    result = {
        "learning_rate": chosen[0],
        "epoch": chosen[1],
        "validation_acc": round(figures[chosen][0], 4),
        "validation_loss": round(figures[chosen][1], 5),
        "validation_acc_seeds": [row["acc"] for row in complete[chosen]],
        "runner_up": None,
        "margin": None,
    }
    if runner is not None:
        result["runner_up"] = {
            "learning_rate": runner[0],
            "epoch": runner[1],
            "validation_acc": round(figures[runner][0], 4),
        }
        result["margin"] = round(figures[chosen][0] - figures[runner][0], 4)
    return result


# ---------------------------------------------------------------------------------------------
# A cell over its seeds


def _contains(record: dict) -> float:
    from kinject.evaluation.open_metrics import contains

    return float(contains(record["prediction"], record["answers"]))


# The figures with a per-question value: their interval resamples seeds and questions.
PER_QUESTION: dict[str, Callable[[dict], float]] = {
    "acc": lambda r: float(r["correct"]),
    "acc_norm": lambda r: float(r["correct_norm"]),
    "f1": lambda r: float(r["f1"]),
    "contains": _contains,
}


def outcome_matrix(
    members: Sequence[Sequence[dict]], value: Callable[[dict], float], questions: list[str]
) -> list[list[float]]:
    """``[seed][question]`` values of one cell's seeds, questions in the order given; every
    seed must have scored exactly those questions."""
    matrix = []
    for records in members:
        by_id = {r["question_id"]: r for r in records}
        if len(by_id) != len(records) or set(by_id) != set(questions):
            raise KinjectError(
                f"cannot combine seeds of model '{records[0].get('model')}': they scored "
                "different questions"
            )
        matrix.append([value(by_id[q]) for q in questions])
    return matrix


def seed_cell(
    label: str,
    seeds: Sequence[int],
    cells: Sequence[dict],
    members: Sequence[Sequence[dict]],
    seed: int,
    resamples: int,
) -> dict:
    """One fine-tuned cell over its training seeds: ``cells[i]`` and ``members[i]`` (its
    records) are seed ``seeds[i]``'s.

    Figures with a per-question value (accuracy, acc_norm, F1, answer contained) are the
    mean over seeds with two intervals: ``<figure>_ci`` resamples seeds and then questions
    (training noise and question noise), ``<figure>_ci_questions`` resamples questions
    only, the seeds held fixed; the share still giving a changed fact's previous answer
    (``previous_rate``) has the first.  Corpus-level figures (BLEU, ROUGE, recall) are the seeds' mean.  ``acc_sd`` is
    the standard deviation of the seeds' accuracies; ``seeds`` lists each seed's accuracy,
    interval and K."""
    from kinject.evaluation.stats import bootstrap_ci, hierarchical_bootstrap_ci

    first = cells[0]
    questions = [r["question_id"] for r in members[0]]
    result = {key: first[key] for key in ("arm", "split", "shots") if key in first}
    ks = Counter(cell["k"] for cell in cells)
    result.update(
        {
            "model": label,
            "k": min(ks, key=lambda k: (-ks[k], k)),  # the K most seeds chose
            "n": first["n"],
            "n_seeds": len(seeds),
        }
    )
    if first.get("open"):
        result["open"] = True
    if "selected" in first:
        result["selected"] = True
    for key, value in PER_QUESTION.items():
        if key not in first:
            continue
        matrix = outcome_matrix(members, value, questions)
        result[key] = round(sum(cell[key] for cell in cells) / len(cells), 4)
        result[f"{key}_ci"] = list(hierarchical_bootstrap_ci(matrix, seed, resamples))
        per_question = [sum(column) / len(column) for column in zip(*matrix)]
        result[f"{key}_ci_questions"] = list(bootstrap_ci(per_question, seed, resamples))
    if "previous_rate" in first:
        changed = [r["question_id"] for r in members[0] if r.get("previous") is not None]
        matrix = outcome_matrix(
            [[r for r in records if r.get("previous") is not None] for records in members],
            lambda r: float(r["pred"] == r["previous"]),
            changed,
        )
        result["previous_n"] = first["previous_n"]
        result["previous_rate"] = round(sum(c["previous_rate"] for c in cells) / len(cells), 4)
        result["previous_rate_ci"] = list(hierarchical_bootstrap_ci(matrix, seed, resamples))
    for key in ("bleu4", "rouge1", "rouge2", "rougeL", "recall"):
        if all(key in cell for cell in cells):
            result[key] = round(sum(cell[key] for cell in cells) / len(cells), 4)
    accs = [cell["acc"] for cell in cells]
    mean = sum(accs) / len(accs)
    spread = (sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) ** 0.5 if len(accs) > 1 else 0.0
    result["acc_sd"] = round(spread, 4)
    result["seeds"] = [
        {
            "seed": s,
            "model": cell["model"],
            "acc": cell["acc"],
            "acc_ci": cell["acc_ci"],
            "k": cell["k"],
        }
        for s, cell in zip(seeds, cells)
    ]
    return result
