"""An experiment's results gathered from its model run folders, with statistics and costs.

``metrics.json`` holds what was measured about the models (deterministic for a fixed seed);
``costs.json`` what it cost (wall time and memory vary from run to run).  Tables, plots and
the report are made from these two files and ``records.jsonl`` alone.
"""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

from kinject.config import ExperimentConfig, load_config
from kinject.errors import KinjectError
from kinject.evaluation.stats import knows, mcnemar_exact, paired_outcomes, relative_gain
from kinject.fileio import read_jsonl, write_json, write_text

SAMPLE_QUESTIONS = 4  # per test task, shown in the report with every arm's answer


def tabulate_experiment(run_dir: str | Path) -> dict:
    """Rebuild metrics.json, costs.json, records.jsonl, table.md and tables/*.csv."""
    from kinject.evaluation.evaluate import retabulate
    from kinject.experiments.tables import generic_column, write_tables

    run_dir = Path(run_dir)
    plan_path = run_dir / "plan.json"
    if not plan_path.exists():
        raise KinjectError(f"{run_dir} holds no finished experiment (no plan.json); run it first")
    config = load_config(ExperimentConfig, run_dir / "experiment.yaml")
    plan = json.loads(plan_path.read_text(encoding="utf-8"))["runs"]
    cells, records, costs, selected_k, selected_by_arm = [], [], [], {}, {}
    for row in plan:
        if row["sweep"] is not None or not row["arms"]:
            continue
        folder = run_dir / row["folder"]
        for metric in retabulate(folder).metrics:
            cells.append({**metric, "base_model": row["base_model"]})
            if "group" in row:
                cells[-1].update({"seed": row["seed"], "group": row["group"]})
        summary = _json(folder / "metrics.json")
        if "selected_k" in summary:
            selected_k[row["label"]] = summary["selected_k"]
        if "selected_k_by_arm" in summary:  # rag arms with an instruction
            selected_by_arm[row["label"]] = summary["selected_k_by_arm"]
        records += [r for _, r in read_jsonl(folder / "records.jsonl")]
        costs += [
            {**c, "base_model": row["base_model"]} for c in _json(folder / "costs.json")["cells"]
        ]
    validation = _validation_name(config)
    models = {row["label"]: _model_row(row) for row in plan}
    models.update(_group_rows(plan))
    for cell in cells:
        cell["column"] = generic_column(cell, models)
    _add_gains(cells, records, validation)
    seed_cells = [cell for cell in cells if "group" in cell]
    cells = [cell for cell in cells if "group" not in cell]
    groups = _seed_groups(main_cells(seed_cells, validation), records)
    summaries = [_seed_summary(group, config) for group in groups]
    members = {
        _cell_key(summary): [records for _, records in group]
        for summary, group in zip(summaries, groups)
    }
    _add_gains(summaries, records, validation, base_cells=cells)
    cells += summaries
    metrics = {
        "experiment": config.name or run_dir.name,
        "validation_task": validation,
        "models": models,
        "cells": cells,
        **({"seed_cells": seed_cells} if seed_cells else {}),
        "selected_k": selected_k,
        **({"selected_k_by_arm": selected_by_arm} if selected_by_arm else {}),
        "comparisons": comparisons(cells, records, validation, members, config),
        "finetuning": _finetunings(plan, run_dir),
        "sweeps": _sweeps(run_dir, plan, config),
        "samples": _samples(config),
        "tables": config.tables.model_dump(mode="json"),
    }
    cost_summary = {"cells": costs, **_training_costs(plan, run_dir), **_index_costs(config)}
    write_json(run_dir / "metrics.json", metrics)
    write_json(run_dir / "costs.json", cost_summary)
    write_text(run_dir / "records.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    write_tables(run_dir, metrics, cost_summary)
    return metrics


def _validation_name(config: ExperimentConfig) -> str | None:
    if config.validation is None:
        return None
    spec = config.validation.task
    return spec.task_name()


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _model_row(row: dict) -> dict:
    model = {
        "base_model": row["base_model"],
        "finetune": row["finetune"],
        "sweep": row["sweep"],
        "learning_rate": row["training"].get("learning_rate"),
        "epoch": row["training"].get("epoch"),
    }
    if "group" in row:  # one seed of a fine-tuning trained with several
        model.update({"seed": row["seed"], "group": row["group"]})
    return model


def _cell_key(metric: dict) -> tuple:
    return (metric["model"], metric["arm"], metric["split"], metric["shots"], metric["k"])


def _outcomes(records: list[dict]) -> dict[tuple, list[dict]]:
    grouped: dict[tuple, list[dict]] = {}
    for record in records:
        key = (record["model"], record["arm"], record["split"], record["shots"], record["k"])
        grouped.setdefault(key, []).append(record)
    return grouped


def _add_gains(
    cells: list[dict],
    records: list[dict],
    validation: str | None,
    base_cells: list[dict] | None = None,
) -> None:
    """Each cell's chance level and the paper's "knows" flag (L > 1/options), and its
    relative gain (L' − L)/L over its base model's closed-book cell (among ``base_cells``,
    default ``cells``).  A cell over seeds keeps the chance level of its seeds' cells."""
    grouped = _outcomes(records)
    closed = {
        (m["base_model"], m["split"], m["shots"]): m
        for m in (cells if base_cells is None else base_cells)
        if m["arm"] == "base" and m["model"] in (m["base_model"], "base")
    }
    for metric in cells:
        if not metric.get("open"):
            if "chance" in metric:  # a cell over seeds: its seeds' options
                options = metric.pop("options")
            else:
                rows = grouped[_cell_key(metric)]
                options = sum(len(r["loglikelihoods"]) for r in rows) / len(rows)
                metric["chance"] = round(1 / options, 4)
            metric["knows"] = knows(metric["acc"], round(options))
        base = closed.get((metric["base_model"], metric["split"], metric["shots"]))
        if base is not None and base is not metric and metric["split"] != validation:
            gain = relative_gain(base["acc"], metric["acc"])
            metric["relative_gain"] = None if gain is None else round(gain, 4)


def _seed_groups(seed_cells: list[dict], records: list[dict]) -> list[list[tuple[dict, list]]]:
    """The seeds' cells of each (fine-tuning, arm, task, shots), each with its records, in
    the order the seeds were trained."""
    grouped = _outcomes(records)
    groups: dict[tuple, list[tuple[dict, list]]] = {}
    for cell in seed_cells:
        key = (cell["group"], cell["arm"], cell["split"], cell["shots"])
        groups.setdefault(key, []).append((cell, grouped[_cell_key(cell)]))
    return list(groups.values())


def _seed_summary(group: list[tuple[dict, list]], config: ExperimentConfig) -> dict:
    from kinject.experiments.seeds import seed_cell

    cells = [cell for cell, _ in group]
    first = cells[0]
    summary = seed_cell(
        first["group"],
        [cell["seed"] for cell in cells],
        cells,
        [records for _, records in group],
        config.seed,
        config.bootstrap_resamples,
    )
    summary.update({"base_model": first["base_model"], "column": first["column"]})
    if "chance" in first:
        records = group[0][1]
        summary["chance"] = first["chance"]
        summary["options"] = sum(len(r["loglikelihoods"]) for r in records) / len(records)
    return summary


def _group_rows(plan: list[dict]) -> dict[str, dict]:
    """The models row of each fine-tuning trained with several seeds: its seeds' label."""
    rows: dict[str, dict] = {}
    for row in plan:
        if "group" not in row:
            continue
        shared = {k: v for k, v in _model_row(row).items() if k not in ("seed", "group")}
        entry = rows.setdefault(row["group"], {**shared, "seeds": [], "models": []})
        entry["seeds"].append(row["seed"])
        entry["models"].append(row["label"])
    return rows


def main_cells(cells: list[dict], validation: str | None) -> list[dict]:
    """The cells tables compare: test tasks, rag at its chosen K."""
    return [m for m in cells if m["split"] != validation and m.get("selected") is not False]


def comparisons(
    cells: list[dict],
    records: list[dict],
    validation: str | None,
    members: dict[tuple, list[list[dict]]] | None = None,
    config: ExperimentConfig | None = None,
) -> list[dict]:
    """Paired comparisons between every two columns of one base model, on the same questions
    (a task at some shots): the difference of accuracy with a paired bootstrap interval, and

    - two columns of one model each: the exact McNemar test (``p_value``);
    - a column trained with several seeds (``members``: its seeds' records): McNemar per
      seed (seed s against seed s of the other column, or against its one model), and as
      ``p_value`` the paired bootstrap over seeds and questions, which holds the training
      noise that a McNemar test on one training leaves out.
    """
    grouped = _outcomes(records)
    members = members or {}
    seed = config.seed if config else 0
    resamples = config.bootstrap_resamples if config else 1000
    groups: dict[tuple, list[dict]] = {}
    for metric in main_cells(cells, validation):
        groups.setdefault((metric["base_model"], metric["split"], metric["shots"]), []).append(
            metric
        )
    result = []
    for (base_model, split, shots), group in groups.items():
        for first, second in combinations(group, 2):
            seeds_a = members.get(_cell_key(first)) or [grouped[_cell_key(first)]]
            seeds_b = members.get(_cell_key(second)) or [grouped[_cell_key(second)]]
            entry = {
                "base_model": base_model,
                "split": split,
                "shots": shots,
                "a": first["column"],
                "b": second["column"],
                "acc_a": first["acc"],
                "acc_b": second["acc"],
            }
            entry.update(
                _compare(seeds_a, seeds_b, first["model"] == second["model"], seed, resamples)
            )
            result.append(entry)
    return result


def _compare(seeds_a: list, seeds_b: list, same_trainings: bool, seed: int, resamples: int):
    from kinject.evaluation.stats import paired_difference

    tests = [mcnemar_exact(*paired_outcomes(a, b)) for a, b in _seed_pairs(seeds_a, seeds_b)]

    def matrix(members: list) -> list[list[float]]:  # [seed][question], seeds_a[0]'s order
        return [[float(x) for x in paired_outcomes(seeds_a[0], m)[1]] for m in members]

    difference = paired_difference(
        matrix(seeds_a),
        matrix(seeds_b),
        seed,
        resamples,
        same_trainings=same_trainings and len(seeds_a) == len(seeds_b),
    )
    entry = {
        "difference": difference.difference,
        "difference_ci": list(difference.ci),
        "a_only": sum(t.a_only for t in tests),
        "b_only": sum(t.b_only for t in tests),
    }
    if len(tests) == 1:
        entry.update({"test": "mcnemar", "p_value": tests[0].p_value})
        return entry
    entry.update(
        {
            "test": "bootstrap over seeds and questions",
            "p_value": difference.p_value,
            "per_seed": [
                {"a_only": t.a_only, "b_only": t.b_only, "p_value": t.p_value} for t in tests
            ],
        }
    )
    return entry


def _seed_pairs(seeds_a: list, seeds_b: list) -> list[tuple[list, list]]:
    """Seed i of one column against seed i of the other; a column of one model against
    every seed of the other."""
    if len(seeds_a) == 1:
        return [(seeds_a[0], b) for b in seeds_b]
    if len(seeds_b) == 1:
        return [(a, seeds_b[0]) for a in seeds_a]
    return list(zip(seeds_a, seeds_b))


def _finetunings(plan: list[dict], run_dir: Path) -> dict[str, dict]:
    """Per fine-tuned model (a fine-tuning trained with several seeds: per its seeds' label):
    what was chosen, the runner-up and its margin, the loss and validation curves."""
    rows: dict[str, list[dict]] = {}
    for row in plan:
        if row["finetune"] and not row["sweep"]:
            rows.setdefault(row.get("group", row["label"]), []).append(row)
    return {label: _finetuning(group, run_dir) for label, group in rows.items()}


def _finetuning(rows: list[dict], run_dir: Path) -> dict:
    """The chosen fine-tuning (over its seeds), its loss and validation curves, every
    candidate scored (with seeds: the seeds' mean), and the validation margin between the
    choice and the runner-up."""
    from kinject.config import FinetuneConfig
    from kinject.experiments.seeds import select_over_seeds

    training = rows[0]["training"]
    folders = [run_dir / row["training"]["folder"] for row in rows]  # absolute when elsewhere
    grid = load_config(FinetuneConfig, folders[0] / "config.yaml").learning_rate
    scored = [_json(folder / "selection.json")["scored"] for folder in folders]
    choice = select_over_seeds(scored, grid)
    chosen = folders[0] / "candidates" / _lr_folder(folders[0], training["learning_rate"])
    loss = [
        {"step": r["step"], "loss": r["loss"]}
        for _, r in read_jsonl(chosen / "training_log.jsonl")
        if "loss" in r
    ]
    entry = {
        "learning_rate": training["learning_rate"],
        "epoch": training["epoch"],
        "validation_acc": training["validation_acc"],
        "runner_up": choice["runner_up"],
        "validation_margin": choice["margin"],
        "loss_curve": loss,  # the first seed's
        "validation_curve": scored[0] if len(rows) == 1 else _mean_curve(scored),
    }
    if len(rows) > 1:
        entry["seeds"] = [
            {"seed": row["seed"], "validation_acc": acc}
            for row, acc in zip(rows, choice["validation_acc_seeds"])
        ]
        entry["validation_curves"] = {str(row["seed"]): s for row, s in zip(rows, scored)}
    return entry


def _mean_curve(scored: list[list[dict]]) -> list[dict]:
    """Validation accuracy and loss per (learning rate, epoch), averaged over seeds."""
    points: dict[tuple, list[dict]] = {}
    for rows in scored:
        for row in rows:
            points.setdefault((row["learning_rate"], row["epoch"]), []).append(row)
    curve = []
    for (rate, epoch), rows in points.items():
        if len(rows) != len(scored) or any("acc" not in r for r in rows):
            continue
        curve.append(
            {
                "learning_rate": rate,
                "epoch": epoch,
                "acc": round(sum(r["acc"] for r in rows) / len(rows), 4),
                "loss": round(sum(r["loss"] for r in rows) / len(rows), 5),
                "n": rows[0].get("n"),
            }
        )
    return curve


def _lr_folder(folder: Path, rate: float) -> str:
    for candidate in (folder / "candidates").iterdir():
        if _json(candidate / "done.json")["learning_rate"] == rate:
            return candidate.name
    raise KinjectError(f"{folder}: no candidate trained at learning rate {rate:g}")


def _training_costs(plan: list[dict], run_dir: Path) -> dict:
    """Per fine-tuned model: tokens, seconds and peak memory of every candidate trained."""
    folders: dict[str, list[Path]] = {}
    for row in plan:
        training = row["training"]
        if not training or row["sweep"] is not None:
            continue
        label = row.get("group", row["label"])  # several seeds: their trainings together
        folders.setdefault(label, []).append(run_dir / training["folder"])  # may be absolute
    costs = {}
    for label, group in folders.items():
        done = [
            _json(c / "done.json")
            for folder in group
            for c in sorted((folder / "candidates").iterdir())
        ]
        costs[label] = {
            "seeds": len(group),
            "candidates": len(done),
            "train_tokens": sum(d["tokens"] for d in done),
            "train_seconds": round(sum(d["seconds"] for d in done), 3),
            "peak_memory_mb": max((d.get("peak_memory_mb", 0.0) for d in done), default=0.0),
            "peak_memory_kind": done[0].get("peak_memory_kind") if done else None,
        }
    return {"training": costs}


def _index_costs(config: ExperimentConfig) -> dict:
    """The knowledge base's build cost, from its snapshot's build.json."""
    if config.rag is None:
        return {}
    from kinject.kb.store import KnowledgeBase

    kb = KnowledgeBase.open(config.rag.kb)
    build = _json(kb.snapshot / "build.json")
    return {"index": {"kb": config.rag.kb, **build}}


def _sweeps(run_dir: Path, plan: list[dict], config: ExperimentConfig) -> list[dict]:

    sweeps: dict[tuple, dict] = {}
    points: dict[tuple, list[dict]] = {}  # a point's rows: one, or one per training seed
    for row in plan:
        if row["sweep"] is not None:
            key = (row["base_model"], row["sweep"]["name"], json.dumps(row["sweep"]["value"]))
            points.setdefault(key, []).append(row)
    for rows in points.values():
        row = rows[0]
        sweep = row["sweep"]
        entry = sweeps.setdefault(
            (row["base_model"], sweep["name"]),
            {
                "name": sweep["name"],
                "base_model": row["base_model"],
                "finetune": row["finetune"],
                "key": sweep["key"],
                "points": [],
            },
        )
        training = row["training"]
        point = {
            "value": sweep["value"],
            "label": row.get("group", row["label"]),
            "learning_rate": training.get("learning_rate"),
            "epoch": training.get("epoch"),
            "validation_acc": training.get("validation_acc"),
            "same_as": training.get("same_as"),
            "cells": _point_cells(run_dir, rows, config),
        }
        if "group" in row:
            point["seeds"] = [r["seed"] for r in rows]
            point["same_as"] = _group_of(plan, training) if training.get("same_as") else None
        entry["points"].append(point)
    return list(sweeps.values())


def _group_of(plan: list[dict], training: dict) -> str | None:
    """The seeds' label of the model a sweep point reuses (``same_as`` names one seed's)."""
    return next(
        (r.get("group", r["label"]) for r in plan if r["label"] == training["same_as"]), None
    )


def _point_cells(run_dir: Path, rows: list[dict], config: ExperimentConfig) -> list[dict]:
    """A sweep point's cells; with several training seeds, over its seeds."""
    from kinject.evaluation.evaluate import retabulate
    from kinject.experiments.seeds import seed_cell

    keep = ("split", "shots", "n", "acc", "acc_ci")
    by_seed = [retabulate(run_dir / row["folder"]).metrics for row in rows]
    if len(rows) == 1:
        return [{key: m[key] for key in keep} for m in by_seed[0]]
    grouped = [
        _outcomes([r for _, r in read_jsonl(run_dir / row["folder"] / "records.jsonl")])
        for row in rows
    ]
    cells = []
    for first in by_seed[0]:
        seeds_cells = [
            next(m for m in metrics if _cell_key(m)[1:] == _cell_key(first)[1:])
            for metrics in by_seed
        ]
        summary = seed_cell(
            rows[0]["group"],
            [row["seed"] for row in rows],
            seeds_cells,
            [g[_cell_key(cell)] for g, cell in zip(grouped, seeds_cells)],
            config.seed,
            config.bootstrap_resamples,
        )
        cells.append({key: summary[key] for key in (*keep, "acc_ci_questions", "acc_sd", "seeds")})
    return cells


def _samples(config: ExperimentConfig) -> list[dict]:
    """A few questions of each test task (seeded), for the report's answers-by-arm view."""
    import random

    from kinject.evaluation.evaluate import load_task

    samples = []
    for spec in config.tasks:
        task = load_task(spec)
        picks = sorted(
            random.Random(config.seed).sample(
                range(len(task.items)), min(SAMPLE_QUESTIONS, len(task.items))
            )
        )
        for index in picks:
            item = task.items[index]
            sample = {"split": task.name, "question_id": item.id, "question": item.question}
            if task.is_open:
                sample["answers"] = list(item.answers)
            else:
                sample["choices"] = list(item.choices)
                sample["answer"] = item.answer
            samples.append(sample)
    return samples
