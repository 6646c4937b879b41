"""``kinject eval``: load tasks and model, score every cell, write the run folder.

The run folder (the contract later tools rely on)::

    config.yaml     the resolved config (absolute paths)
    env.json        package versions, seed, torch threads, machine
    cells/*.jsonl   finished cells (resume points)
    records.jsonl   one line per (cell, question)
    metrics.json    {"cells": [{arm, split, shots, k, n, acc, acc_ci, acc_norm, acc_norm_ci}]}
    table.md        the human table
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from kinject.config import EvalConfig, TaskSpec, to_yaml
from kinject.corpus import load_corpus_jsonl
from kinject.errors import KinjectError
from kinject.evaluation.arms import Arm, BaseArm, OracleArm
from kinject.evaluation.environment import environment
from kinject.evaluation.report import markdown_table
from kinject.evaluation.runner import Cell, CellStore, cell_metrics, score_cell
from kinject.fileio import read_jsonl, write_json, write_jsonl, write_text
from kinject.tasks.items import Task
from kinject.tasks.loaders import jsonl_task, mmlu_task


@dataclass(frozen=True)
class EvalResult:
    run_dir: Path
    metrics: list[dict]


def load_task(spec: TaskSpec) -> Task:
    if spec.format == "mmlu_csv":
        task = mmlu_task(spec.path, spec.dev)
        updates = {"style": spec.style or "letter"}
    else:
        name = spec.name or Path(spec.path).stem
        task = jsonl_task(name, spec.path, spec.dev, spec.style or "option")
        updates = {}
    if spec.name:
        updates["name"] = spec.name
    if spec.description is not None:
        updates["description"] = spec.description
    return replace(task, **updates)


def build_arms(config: EvalConfig) -> list[Arm]:
    arms: list[Arm] = []
    for name in config.arms:
        if name == "base":
            arms.append(BaseArm())
        elif name == "oracle":
            corpus = load_corpus_jsonl(config.corpus)
            arms.append(OracleArm({d.id: d.text for d in corpus.values()}, config.corpus))
    return arms


def validate_plan(config: EvalConfig, tasks: list[Task], arms: list[Arm]) -> None:
    """Everything that can be wrong with the inputs, found before a model is loaded."""
    names = [task.name for task in tasks]
    if len(set(names)) != len(names):
        raise KinjectError(f"two tasks share a name in {names}; give them distinct 'name's")
    for task in tasks:
        if not task.items:
            raise KinjectError(f"task '{task.name}' ({task.source.get('path')}) has no questions")
        for shots in config.shots:
            if shots > len(task.dev):
                raise KinjectError(
                    f"task '{task.name}' has {len(task.dev)} dev examples; {shots}-shot needs {shots}"
                )
    for arm in arms:  # an arm that cannot serve a question fails now, not mid-run
        for task in tasks:
            for item in task.items:
                arm.context_for(item)


def check_run_dir(config: EvalConfig, run_dir: Path) -> None:
    """An existing run folder must have been made by the same config (then it resumes)."""
    saved = run_dir / "config.yaml"
    if saved.exists() and saved.read_text(encoding="utf-8") != to_yaml(config):
        raise KinjectError(
            f"{run_dir} holds a run of a different config; choose another --out "
            "(or delete the folder to start over)"
        )


def run_evaluation(
    config: EvalConfig,
    run_dir: str | Path,
    model_and_tokenizer=None,
    show_progress: bool = True,
) -> EvalResult:
    """Score every (task × arm × shots) cell not yet in ``run_dir`` and write the run files."""
    from kinject.progress import progress_bar

    run_dir = Path(run_dir)
    tasks = [load_task(spec) for spec in config.tasks]  # bad inputs fail before any model work
    arms = build_arms(config)
    validate_plan(config, tasks, arms)
    check_run_dir(config, run_dir)
    store = CellStore(run_dir)
    plan = [(task, arm, shots) for task in tasks for arm in arms for shots in config.shots]
    pending = [p for p in plan if not store.has(Cell(p[1].name, p[0].name, p[2], p[1].k))]
    if pending:
        model, tokenizer = model_and_tokenizer or _load(config)  # fails before any file is written
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / "config.yaml", to_yaml(config))
        write_json(run_dir / "env.json", environment(config.seed))
        from kinject.scoring.loglikelihood import LoglikelihoodScorer

        scorer = LoglikelihoodScorer(
            model, tokenizer, config.scoring.batch_size, bf16=config.scoring.bf16_autocast
        )
        total = sum(len(item.choices) for task, _, _ in pending for item in task.items)
        with progress_bar("scoring", total=total, enabled=show_progress) as bar:
            for task, arm, shots in pending:
                records = score_cell(scorer, task, arm, shots, on_batch=bar.advance)
                store.write(Cell(arm.name, task.name, shots, arm.k), records)
    metrics = tabulate(run_dir, [Cell(a.name, t.name, s, a.k) for t, a, s in plan], config)
    return EvalResult(run_dir, metrics)


def _load(config: EvalConfig):
    from kinject.models.loading import load_causal_lm

    return load_causal_lm(config.model)


def tabulate(run_dir: Path, cells: list[Cell], config: EvalConfig) -> list[dict]:
    """Rebuild records.jsonl, metrics.json and table.md from the finished cells."""
    store = CellStore(run_dir)
    records, metrics = [], []
    for cell in cells:
        rows = store.read(cell)
        records.extend(rows)
        metrics.append(cell_metrics(rows, config.seed, config.bootstrap_resamples))
    write_jsonl(run_dir / "records.jsonl", records)
    write_json(run_dir / "metrics.json", {"cells": metrics})
    write_text(run_dir / "table.md", markdown_table(metrics))
    return metrics


def retabulate(run_dir: str | Path) -> list[dict]:
    """Metrics and table again from ``records.jsonl`` alone: no model, no tasks needed."""
    from kinject.config import load_config

    run_dir = Path(run_dir)
    config = load_config(EvalConfig, run_dir / "config.yaml")
    groups: dict[tuple, list[dict]] = {}
    for _, row in read_jsonl(run_dir / "records.jsonl"):
        groups.setdefault((row["arm"], row["split"], row["shots"], row["k"]), []).append(row)
    metrics = [
        cell_metrics(rows, config.seed, config.bootstrap_resamples) for rows in groups.values()
    ]
    write_json(run_dir / "metrics.json", {"cells": metrics})
    write_text(run_dir / "table.md", markdown_table(metrics))
    return metrics
