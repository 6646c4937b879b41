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
    for cell in cells:
        cell["column"] = generic_column(cell, models)
    _add_gains(cells, records, validation)
    metrics = {
        "experiment": config.name or run_dir.name,
        "validation_task": validation,
        "models": models,
        "cells": cells,
        "selected_k": selected_k,
        **({"selected_k_by_arm": selected_by_arm} if selected_by_arm else {}),
        "comparisons": comparisons(cells, records, validation),
        "finetuning": {
            row["label"]: _finetuning(row, run_dir)
            for row in plan
            if row["finetune"] and not row["sweep"]
        },
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
    return {
        "base_model": row["base_model"],
        "finetune": row["finetune"],
        "sweep": row["sweep"],
        "learning_rate": row["training"].get("learning_rate"),
        "epoch": row["training"].get("epoch"),
    }


def _cell_key(metric: dict) -> tuple:
    return (metric["model"], metric["arm"], metric["split"], metric["shots"], metric["k"])


def _outcomes(records: list[dict]) -> dict[tuple, list[dict]]:
    grouped: dict[tuple, list[dict]] = {}
    for record in records:
        key = (record["model"], record["arm"], record["split"], record["shots"], record["k"])
        grouped.setdefault(key, []).append(record)
    return grouped


def _add_gains(cells: list[dict], records: list[dict], validation: str | None) -> None:
    """Each cell's chance level and the paper's "knows" flag (L > 1/options), and its
    relative gain (L' − L)/L over its base model's closed-book cell."""
    grouped = _outcomes(records)
    closed = {
        (m["base_model"], m["split"], m["shots"]): m
        for m in cells
        if m["arm"] == "base" and m["model"] in (m["base_model"], "base")
    }
    for metric in cells:
        rows = grouped[_cell_key(metric)]
        if not metric.get("open"):
            options = sum(len(r["loglikelihoods"]) for r in rows) / len(rows)
            metric["chance"] = round(1 / options, 4)
            metric["knows"] = knows(metric["acc"], round(options))
        base = closed.get((metric["base_model"], metric["split"], metric["shots"]))
        if base is not None and base is not metric and metric["split"] != validation:
            gain = relative_gain(base["acc"], metric["acc"])
            metric["relative_gain"] = None if gain is None else round(gain, 4)


def main_cells(cells: list[dict], validation: str | None) -> list[dict]:
    """The cells tables compare: test tasks, rag at its chosen K."""
    return [m for m in cells if m["split"] != validation and m.get("selected") is not False]


def comparisons(cells: list[dict], records: list[dict], validation: str | None) -> list[dict]:
    """Paired exact McNemar tests between every two columns of one base model, on the same
    questions (a task at some shots)."""
    grouped = _outcomes(records)
    groups: dict[tuple, list[dict]] = {}
    for metric in main_cells(cells, validation):
        groups.setdefault((metric["base_model"], metric["split"], metric["shots"]), []).append(
            metric
        )
    result = []
    for (base_model, split, shots), group in groups.items():
        for first, second in combinations(group, 2):
            a, b = paired_outcomes(grouped[_cell_key(first)], grouped[_cell_key(second)])
            test = mcnemar_exact(a, b)
            result.append(
                {
                    "base_model": base_model,
                    "split": split,
                    "shots": shots,
                    "a": first["column"],
                    "b": second["column"],
                    "acc_a": first["acc"],
                    "acc_b": second["acc"],
                    "a_only": test.a_only,
                    "b_only": test.b_only,
                    "p_value": test.p_value,
                }
            )
    return result


def _finetuning(row: dict, run_dir: Path) -> dict:
    """The chosen fine-tuning, its loss and validation curves, and every candidate scored."""
    training = row["training"]
    folder = run_dir / training["folder"]  # absolute when kept elsewhere
    selection = _json(folder / "selection.json")
    chosen = folder / "candidates" / _lr_folder(folder, training["learning_rate"])
    loss = [
        {"step": r["step"], "loss": r["loss"]}
        for _, r in read_jsonl(chosen / "training_log.jsonl")
        if "loss" in r
    ]
    return {
        "learning_rate": training["learning_rate"],
        "epoch": training["epoch"],
        "validation_acc": training["validation_acc"],
        "loss_curve": loss,
        "validation_curve": selection["scored"],  # every (learning rate, epoch) scored
    }


def _lr_folder(folder: Path, rate: float) -> str:
    for candidate in (folder / "candidates").iterdir():
        if _json(candidate / "done.json")["learning_rate"] == rate:
            return candidate.name
    raise KinjectError(f"{folder}: no candidate trained at learning rate {rate:g}")


def _training_costs(plan: list[dict], run_dir: Path) -> dict:
    """Per fine-tuned model: tokens, seconds and peak memory of every candidate trained."""
    costs = {}
    for row in plan:
        training = row["training"]
        if not training or row["sweep"] is not None:
            continue
        folder = run_dir / training["folder"]  # absolute when kept elsewhere
        done = [_json(c / "done.json") for c in sorted((folder / "candidates").iterdir())]
        costs[row["label"]] = {
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
    from kinject.evaluation.evaluate import retabulate

    sweeps: dict[tuple, dict] = {}
    for row in plan:
        if row["sweep"] is None:
            continue
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
        cells = [
            {key: m[key] for key in ("split", "shots", "n", "acc", "acc_ci")}
            for m in retabulate(run_dir / row["folder"]).metrics
        ]
        training = row["training"]
        entry["points"].append(
            {
                "value": sweep["value"],
                "label": row["label"],
                "learning_rate": training.get("learning_rate"),
                "epoch": training.get("epoch"),
                "validation_acc": training.get("validation_acc"),
                "same_as": training.get("same_as"),
                "cells": cells,
            }
        )
    return list(sweeps.values())


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
