"""The renamed-entity run, on the probes the base model knows: did Bob get Romeo's answers?

    python examples/smollm2/rename_known.py runs/rename-smollm2

For each kind of probe (quote, cloze, mc), the probes the base model answers right about
Romeo are the ones where a fine-tuning or a passage could move something: it knew the fact
under the old name.  On those probes only, this prints every column's accuracy about Bob
(did the renamed text carry the fact over to the new name?) and about Romeo (was the old
name's fact kept?), with each training seed's accuracy for a fine-tuned column.  Beside it,
the exact McNemar test of each column against the base model on Bob (seeds pooled: one
pair per seed and probe), and the number of known probes that a difference of the observed
size would need for 80% power at p < 0.05.  Only records.jsonl and metrics.json are read:
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
    correct: dict[tuple, dict[str, dict[str, bool]]] = {}  # (column, split) -> label -> id -> ok
    for _, record in read_jsonl(args.run / "records.jsonl"):
        if record["shots"] != 0 or record.get("selected") is False:
            continue
        column = generic_column(record, models)
        by_model = correct.setdefault((column, record["split"]), {})
        by_model.setdefault(record["model"], {})[record["question_id"]] = record["correct"]
    columns = list(dict.fromkeys(column for column, _ in correct))
    print(
        "| probes | known | column | new name | per seed | old name | vs base on new: p | "
        "probes for 80% power |"
    )
    print("|---|---:|---|---|---|---|---:|---:|")
    for kind in KINDS:
        new, old = f"{args.new}_{kind}", f"{args.old}_{kind}"
        base_old = _one(correct.get(("base", old)))
        if base_old is None:
            continue
        known = sorted(qid for qid, ok in base_old.items() if ok)
        base_new = _one(correct[("base", new)])
        for column in columns:
            if (column, new) not in correct:
                continue
            seeds_new = _per_seed(correct[(column, new)], known)
            seeds_old = _per_seed(correct[(column, old)], known)
            pairs = [
                (base_new[qid], seed[qid])
                for seed in correct[(column, new)].values()
                for qid in known
            ]
            test, needed = _against_base(pairs) if column != "base" else (None, None)
            print(
                f"| {kind} | {len(known)} | {column_header(column)} | {_mean(seeds_new):.3f} | "
                f"{' '.join(f'{a:.2f}' for a in seeds_new) if len(seeds_new) > 1 else '–'} | "
                f"{_mean(seeds_old):.3f} | {'–' if test is None else f'{test:.3g}'} | "
                f"{needed or '–'} |"
            )


def _one(by_model: dict | None) -> dict[str, bool] | None:
    """The outcomes of a column of one model (base)."""
    if by_model is None:
        return None
    (outcomes,) = by_model.values()
    return outcomes


def _per_seed(by_model: dict[str, dict[str, bool]], known: list[str]) -> list[float]:
    return [sum(outcomes[qid] for qid in known) / len(known) for outcomes in by_model.values()]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _against_base(pairs: list[tuple[bool, bool]]) -> tuple[float, int | None]:
    """McNemar's exact p over (base, column) pairs, and the pairs a difference of the observed
    size needs for 80% power (Connor's approximation from the discordant shares)."""
    test = mcnemar_exact([b for b, _ in pairs], [c for _, c in pairs]).p_value
    base_only = sum(1 for b, c in pairs if b and not c)
    column_only = sum(1 for b, c in pairs if c and not b)
    discordant = (base_only + column_only) / len(pairs)
    difference = abs(column_only - base_only) / len(pairs)
    if difference == 0:
        return test, None
    root = Z_ALPHA * math.sqrt(discordant) + Z_POWER * math.sqrt(discordant - difference**2)
    return test, math.ceil((root / difference) ** 2)


if __name__ == "__main__":
    main()
