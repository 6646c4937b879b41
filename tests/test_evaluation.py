"""The evaluator and its run folder: contents, resume after a kill, re-tabulation, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kinject.config import EvalConfig, ModelSpec, TaskSpec, WorldConfig
from kinject.errors import KinjectError
from kinject.evaluation import evaluate as evaluate_module
from kinject.evaluation.evaluate import retabulate, run_evaluation
from kinject.evaluation.stats import bootstrap_ci
from kinject.world.build import build_world, write_world


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    config = WorldConfig(n_known=5, n_new=4, n_updated=2, n_reading=2, n_dev=2)
    return write_world(build_world(config), tmp_path_factory.mktemp("w") / "world")


def _config(world_dir: Path, model_dir: Path, **overrides) -> EvalConfig:
    tasks = [
        TaskSpec(
            name=split,
            path=str(world_dir / "tasks" / f"{split}.jsonl"),
            dev=str(world_dir / "tasks" / "dev.jsonl"),
        )
        for split in ("new", "updated")
    ]
    values = {
        "model": ModelSpec(path=str(model_dir), device="cpu"),
        "tasks": tasks,
        "arms": ["base", "oracle"],
        "corpus": str(world_dir / "kb.jsonl"),
        "shots": [0, 2],
        "bootstrap_resamples": 200,
    }
    values.update(overrides)
    return EvalConfig(**values)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_folder_holds_config_env_records_metrics_and_table(tmp_path, world_dir, tiny_llama_dir):
    config = _config(world_dir, tiny_llama_dir)
    result = run_evaluation(config, tmp_path / "run", show_progress=False)
    run = tmp_path / "run"
    assert (
        EvalConfig.model_validate(__import__("yaml").safe_load((run / "config.yaml").read_text()))
        == config
    )
    env = json.loads((run / "env.json").read_text())
    assert env["seed"] == 0 and env["packages"]["torch"] and env["torch_threads"] >= 1

    records = _rows(run / "records.jsonl")
    assert len(records) == 2 * 2 * (4 * 6 + 2 * 2)  # arms x shots x questions
    for row in records:
        assert set(row) >= {
            "arm",
            "split",
            "shots",
            "k",
            "question_id",
            "loglikelihoods",
            "pred",
            "answer",
            "correct",
        }
        assert len(row["loglikelihoods"]) == 4
        assert row["pred"] == max(range(4), key=lambda i: (row["loglikelihoods"][i], -i))
        assert row["correct"] == (row["pred"] == row["answer"])

    metrics = json.loads((run / "metrics.json").read_text())["cells"]
    assert metrics == result.metrics and len(metrics) == 8
    for cell in metrics:
        rows = [
            r
            for r in records
            if (r["arm"], r["split"], r["shots"]) == (cell["arm"], cell["split"], cell["shots"])
        ]
        assert cell["n"] == len(rows)
        assert cell["acc"] == round(sum(r["correct"] for r in rows) / len(rows), 4)
        assert cell["acc_ci"][0] <= cell["acc"] <= cell["acc_ci"][1]
        assert cell["acc_norm_ci"][0] <= cell["acc_norm"] <= cell["acc_norm_ci"][1]
    table = (run / "table.md").read_text()
    assert "| new | 0 |" in table and "oracle" in table


def test_oracle_context_changes_the_scores(tmp_path, world_dir, tiny_llama_dir):
    run_evaluation(
        _config(world_dir, tiny_llama_dir, shots=[0]), tmp_path / "run", show_progress=False
    )
    records = _rows(tmp_path / "run" / "records.jsonl")
    base = {r["question_id"]: r["loglikelihoods"] for r in records if r["arm"] == "base"}
    oracle = {r["question_id"]: r["loglikelihoods"] for r in records if r["arm"] == "oracle"}
    assert base.keys() == oracle.keys()
    assert all(base[q] != oracle[q] for q in base)


def test_killed_evaluation_resumes_without_redoing_finished_cells(
    tmp_path, world_dir, tiny_llama_dir, monkeypatch
):
    config = _config(world_dir, tiny_llama_dir)
    reference = run_evaluation(config, tmp_path / "reference", show_progress=False).metrics

    real = evaluate_module.score_cell
    calls = []

    def dies_on_third_cell(*args, **kwargs):
        calls.append(args[1].name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "score_cell", dies_on_third_cell)
    with pytest.raises(KeyboardInterrupt):
        run_evaluation(config, tmp_path / "run", show_progress=False)
    cells = tmp_path / "run" / "cells"
    finished = {p.name: p.stat().st_mtime_ns for p in cells.glob("*.jsonl")}
    assert len(finished) == 2
    assert not list(cells.glob("*.tmp"))  # nothing half-written

    calls.clear()
    monkeypatch.setattr(evaluate_module, "score_cell", real)
    resumed = run_evaluation(config, tmp_path / "run", show_progress=False).metrics
    assert resumed == reference
    assert {
        p.name: p.stat().st_mtime_ns for p in cells.glob("*.jsonl") if p.name in finished
    } == finished


def test_a_changed_config_rescores_only_the_cells_it_changes(
    tmp_path, world_dir, tiny_llama_dir, monkeypatch
):
    run = tmp_path / "run"
    first = run_evaluation(_config(world_dir, tiny_llama_dir, shots=[0]), run, show_progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in (run / "cells").glob("*.jsonl")}

    real, scored = evaluate_module.score_cell, []

    def counting(*args, **kwargs):
        scored.append((args[2].name, args[1].name, args[3]))
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "score_cell", counting)
    wider = run_evaluation(
        _config(world_dir, tiny_llama_dir, shots=[0, 2]), run, show_progress=False
    ).metrics
    assert scored and all(shots == 2 for _, _, shots in scored)  # the 0-shot cells were kept
    assert [m for m in wider if m["shots"] == 0] == first.metrics
    kept = {p.name: p.stat().st_mtime_ns for p in (run / "cells").glob("*.jsonl")}
    assert {name: kept[name] for name in before} == before

    scored.clear()  # a changed scoring setting that changes predictions: every cell again
    changed = _config(world_dir, tiny_llama_dir, shots=[0])
    changed = changed.model_copy(
        update={"scoring": changed.scoring.model_copy(update={"bf16_autocast": True})}
    )
    run_evaluation(changed, run, show_progress=False)
    assert len(scored) == len(first.metrics)
    scored.clear()  # one that cannot (the batch size): nothing again
    same = _config(world_dir, tiny_llama_dir, shots=[0])
    same = same.model_copy(update={"scoring": same.scoring.model_copy(update={"batch_size": 3})})
    assert run_evaluation(same, run, show_progress=False).metrics == first.metrics
    assert scored == []
    saved = (run / "config.yaml").read_text()
    assert "batch_size: 3" in saved  # the folder's config is the latest run's


def test_tables_rebuild_from_records_without_a_model(tmp_path, world_dir, tiny_llama_dir):
    run = tmp_path / "run"
    original = run_evaluation(_config(world_dir, tiny_llama_dir), run, show_progress=False).metrics
    table = (run / "table.md").read_text()
    (run / "metrics.json").unlink()
    (run / "table.md").unlink()
    assert retabulate(run).metrics == original
    assert (run / "table.md").read_text() == table


def test_bad_inputs_fail_before_any_model_is_loaded(tmp_path, world_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "question": "q", "choices": ["x", "y"], "answer": 5}\n')
    config = _config(
        world_dir,
        tmp_path / "no-such-model",
        tasks=[TaskSpec(path=str(bad))],
        arms=["base"],
        shots=[0],
    )
    with pytest.raises(KinjectError, match=r"bad.jsonl, line 1, field 'answer'"):
        run_evaluation(config, tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run").exists()


def test_too_few_dev_examples_for_the_shots_is_an_error(tmp_path, world_dir, tiny_llama_dir):
    config = _config(world_dir, tiny_llama_dir, shots=[50])
    with pytest.raises(KinjectError, match="50-shot needs 50"):
        run_evaluation(config, tmp_path / "run", show_progress=False)


def test_oracle_needs_gold_document_ids(tmp_path, world_dir, tiny_llama_dir):
    task = tmp_path / "t.jsonl"
    task.write_text('{"id": "a", "question": "q", "choices": ["x", "y"], "answer": 0}\n')
    config = _config(world_dir, tiny_llama_dir, tasks=[TaskSpec(path=str(task))], shots=[0])
    with pytest.raises(KinjectError, match="'a' has no doc_ids"):
        run_evaluation(config, tmp_path / "run", show_progress=False)


def test_bootstrap_interval_is_seeded_and_brackets_the_mean():
    outcomes = [1.0] * 70 + [0.0] * 30
    assert bootstrap_ci(outcomes, seed=3) == bootstrap_ci(outcomes, seed=3)
    low, high = bootstrap_ci(outcomes, seed=3)
    assert 0.58 < low < 0.7 < high < 0.8
    assert bootstrap_ci([1.0] * 10, seed=0) == (1.0, 1.0)


def test_a_model_that_cannot_load_leaves_no_run_folder(tmp_path, world_dir):
    config = _config(world_dir, tmp_path / "missing-model", arms=["base"], shots=[0])
    with pytest.raises(KinjectError, match="does not exist"):
        run_evaluation(config, tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run").exists()


def test_an_empty_task_file_is_an_error(tmp_path, world_dir, tiny_llama_dir):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    config = _config(
        world_dir, tiny_llama_dir, tasks=[TaskSpec(path=str(empty))], arms=["base"], shots=[0]
    )
    with pytest.raises(KinjectError, match=r"empty\.jsonl: no questions"):
        run_evaluation(config, tmp_path / "run", show_progress=False)


def test_forgetting_rows_show_gain_and_change_against_the_base_model():
    from kinject.experiments.tables import Results, forgetting_rows

    def cell(model, split, acc, arm="base"):
        column = arm if model == "base" else (model if arm == "base" else f"{model}+{arm}")
        return {
            "model": model,
            "arm": arm,
            "column": column,
            "base_model": "tiny",
            "split": split,
            "shots": 0,
            "k": 0,
            "n": 10,
            "acc": acc,
            "acc_ci": [acc - 0.1, acc],
        }

    metrics = {
        "models": {
            "base": {"base_model": "tiny", "finetune": None, "sweep": None},
            "ft-par": {"base_model": "tiny", "finetune": "ft-par", "sweep": None},
        },
        "cells": [
            cell("base", "new", 0.25),
            cell("base", "updated", 0.0),
            cell("base", "known", 1.0),
            cell("ft-par", "new", 0.8),
            cell("ft-par", "updated", 0.7),
            cell("ft-par", "known", 0.9),
            cell("ft-par", "new", 0.95, arm="rag"),  # FT+RAG is not a closed-book row
        ],
        "comparisons": [],
        "tables": {"forgetting_tasks": ["known"]},
    }
    header, body = forgetting_rows(Results(metrics, {}))
    assert header[-1] == "change on known (forgetting)"
    assert body == [["tiny", "ft-par", "0", "+0.550", "+0.700", "-0.100"]]
