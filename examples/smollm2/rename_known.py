"""The renamed-entity run, on the probes the base model knows: did Bob get Romeo's answers?

    python examples/smollm2/rename_known.py runs/rename-smollm2

For each kind of probe (quote, cloze, mc), the probes the base model answers right about
Romeo are the ones where a fine-tuning or a passage could move something: it knew the fact
under the old name.  On those probes only, this prints every column's accuracy about Bob
(did the renamed text carry the fact over to the new name?) and about Romeo (was the old
name's fact kept?), with each training seed's accuracy for a fine-tuned column.  Beside it,
the exact McNemar test of each seed's model against the base model on Bob, probe by probe,
and how many known probes one such test would need to find a difference of the observed
size with 80% power at p < 0.05.  Only records.jsonl and metrics.json are read:
no model is loaded.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from kinject.evaluation.stats import mcnemar_exact
from kinject.experiments.tables import column_header, generic_column
from kinject.fileio import read_jsonl

KINDS = ("quote", "cloze", "mc")
Z_ALPHA, Z_POWER = 1.959964, 0.841621  # two-sided 5%, 80% power


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path, help="a finished `kinject run` folder of the rename")
    parser.add_argument("--new", default="bob", help="the task prefix of the new name")
    parser.add_argument("--old", default="romeo", help="the task prefix of the old name")
    args = parser.parse_args()
    metrics = json.loads((args.run / "metrics.json").read_text(encoding="utf-8"))
    models = metrics["models"]
    # (base model, column, split) -> model label (one per seed) -> question id -> right?
    correct: dict[tuple, dict[str, dict[str, bool]]] = {}
    for _, record in read_jsonl(args.run / "records.jsonl"):
        if record["shots"] != 0:
            continue
        base_model = models[record["model"]]["base_model"]
        key = (base_model, generic_column(record, models), record["split"])
        by_model = correct.setdefault(key, {})
        by_model.setdefault(record["model"], {})[record["question_id"]] = record["correct"]
    print(
        "| model | probes | known | column | new name | per seed | old name "
        "| McNemar p vs base on new, per seed | probes for 80% power |"
    )
    print("|---|---|---:|---|---|---|---|---|---:|")
    for base_model, column, split in correct:
        for kind in KINDS:
            if (column, split) != ("base", f"{args.old}_{kind}"):
                continue
            for line in _rows(correct, base_model, kind, args.new, args.old):
                print(line)


def _rows(correct: dict, base_model: str, kind: str, new_prefix: str, old_prefix: str):
    new, old = f"{new_prefix}_{kind}", f"{old_prefix}_{kind}"
    (base_old,) = correct[(base_model, "base", old)].values()
    known = sorted(qid for qid, ok in base_old.items() if ok)
    if not known or (base_model, "base", new) not in correct:
        return
    (base_new,) = correct[(base_model, "base", new)].values()
    columns = [c for (m, c, s) in correct if m == base_model and s == new]
    for column in columns:
        seeds_new = list(correct[(base_model, column, new)].values())
        seeds_old = list(correct.get((base_model, column, old), {}).values())
        tests, needed = [], None
        if column != "base":
            pairs = [[(base_new[q], seed[q]) for q in known] for seed in seeds_new]
            tests = [_mcnemar(one) for one in pairs]
            needed = _probes_for_power([pair for one in pairs for pair in one])
        per_seed = " ".join(f"{_share(s, known):.2f}" for s in seeds_new)
        old_figure = f"{_mean([_share(s, known) for s in seeds_old]):.3f}" if seeds_old else "–"
        yield (
            f"| {base_model} | {kind} | {len(known)} | {column_header(column)} "
            f"| {_mean([_share(s, known) for s in seeds_new]):.3f} "
            f"| {per_seed if len(seeds_new) > 1 else '–'} | {old_figure} "
            f"| {' '.join(f'{p:.2g}' for p in tests) or '–'} | {needed or '–'} |"
        )


def _share(outcomes: dict[str, bool], known: list[str]) -> float:
    return sum(outcomes[qid] for qid in known) / len(known)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _mcnemar(pairs: list[tuple[bool, bool]]) -> float:
    """The exact McNemar p of one seed's model against the base model, probe by probe."""
    return mcnemar_exact([b for b, _ in pairs], [c for _, c in pairs]).p_value


def _probes_for_power(pairs: list[tuple[bool, bool]]) -> int | None:
    """How many known probes one seed's McNemar test needs to find a difference of the size
    observed (its discordant shares estimated over every seed's pairs) with 80% power at
    p < 0.05: Connor's approximation.  None when the observed difference is 0."""
    base_only = sum(1 for b, c in pairs if b and not c) / len(pairs)
    column_only = sum(1 for b, c in pairs if c and not b) / len(pairs)
    discordant, difference = base_only + column_only, abs(column_only - base_only)
    if difference == 0:
        return None
    root = Z_ALPHA * math.sqrt(discordant) + Z_POWER * math.sqrt(discordant - difference**2)
    return math.ceil((root / difference) ** 2)


if __name__ == "__main__":
    main()
