"""Two runs of the same config and seed, in separate processes with different hash seeds,
write byte-identical metrics.json and records.jsonl: ``kinject eval`` (multiple choice
0/2-shot, base and oracle arms, open questions generated greedily), and ``kinject run`` of a
whole experiment (rag with K chosen on validation, a fine-tuning and the fine-tuned model
with rag) from an empty cache each time, so the world, its pretrained base model, the
knowledge base's embeddings and the fine-tuning are all made twice.

Timings (scoring seconds, training seconds, peak memory, index build time) differ from run
to run; they are written to ``costs.json``, ``env.json`` and the training logs, never to
``metrics.json`` or ``records.jsonl``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kinject.config import EvalConfig, ModelSpec, TaskSpec, WorldConfig, to_yaml
from kinject.world.build import build_world, write_world


@pytest.fixture()
def config_file(tmp_path, tiny_llama_dir) -> Path:
    world = write_world(
        build_world(WorldConfig(n_known=4, n_new=4, n_updated=2, n_reading=2, n_dev=2)),
        tmp_path / "world",
    )
    tasks = world / "tasks"
    config = EvalConfig(
        model=ModelSpec(path=str(tiny_llama_dir), device="cpu"),
        tasks=[
            TaskSpec(name="new", path=str(tasks / "new.jsonl"), dev=str(tasks / "dev.jsonl")),
            TaskSpec(
                name="new_open",
                format="open_jsonl",
                path=str(tasks / "new_open.jsonl"),
                dev=str(tasks / "dev_open.jsonl"),
            ),
        ],
        arms=["base", "oracle"],
        corpus=str(world / "kb.jsonl"),
        shots=[0, 2],
        bootstrap_resamples=200,
    )
    path = tmp_path / "eval.yaml"
    path.write_text(to_yaml(config))
    return path


def _run(config: Path, out: Path, hash_seed: str) -> None:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    command = [sys.executable, "-m", "kinject", "eval", "--config", str(config), "--out", str(out)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def _kinject(args: list[str], cwd: Path, env: dict[str, str]) -> None:
    command = [sys.executable, "-m", "kinject", *args]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_same_config_and_seed_write_identical_results(config_file, tmp_path):
    _run(config_file, tmp_path / "first", "1")
    _run(config_file, tmp_path / "second", "2")
    for name in ("metrics.json", "records.jsonl"):
        first = (tmp_path / "first" / name).read_bytes()
        assert first, name
        assert first == (tmp_path / "second" / name).read_bytes(), name
    records = [json.loads(line) for line in (tmp_path / "first" / "records.jsonl").open()]
    assert {r["split"] for r in records} == {"new", "new_open"}  # open answers generated too
    assert {(r["arm"], r["shots"]) for r in records} == {
        (arm, shots) for arm in ("base", "oracle") for shots in (0, 2)
    }


QUICK_WORLD = Path(__file__).resolve().parent.parent / "examples" / "quick" / "world.yaml"


def _experiment(path: Path) -> Path:
    """The quick example's world; base, rag (dense, K 0-2 chosen on validation), ft-reg and
    ft-reg+rag on two tasks, 0 and 1 shot."""
    world = "${world}"
    dev = f"{world}/tasks/dev.jsonl"
    spec = {
        "include": str(QUICK_WORLD),
        "name": "determinism",
        "models": [{"label": "tiny", "path": "${world_model}"}],
        "tasks": [
            {"name": split, "path": f"{world}/tasks/{split}.jsonl", "dev": dev}
            for split in ("known", "new")
        ],
        "validation": {
            "task": {"name": "validation", "path": f"{world}/tasks/validation.jsonl", "dev": dev},
            "rag_sample": 10,
            "finetune_sample": 10,
        },
        "arms": ["base", "rag", "ft-reg", "ft-reg+rag"],
        "rag": {"kb": "${world_kb}", "k": [0, 1, 2]},
        "finetunes": {
            "ft-reg": {
                "data": {"corpus": f"{world}/kb.jsonl", "block_size": 64},
                "learning_rate": [3.0e-3, 1.0e-2],
                "epochs": 2,
                "batch_size": 4,
            }
        },
        "shots": [0, 1],
        "bootstrap_resamples": 200,
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def test_an_experiment_run_twice_from_empty_caches_writes_identical_results(tmp_path):
    experiment = _experiment(tmp_path / "experiment.yaml")
    runs = []
    for first, hash_seed in ((True, "1"), (False, "2")):
        folder = tmp_path / ("first" if first else "second")
        env = {
            **os.environ,
            "PYTHONHASHSEED": hash_seed,
            "KINJECT_CACHE_DIR": str(folder / "cache"),  # the world and base model made anew
            "OMP_NUM_THREADS": "1",
        }
        _kinject(["run", str(experiment), "--out", str(folder / "run")], tmp_path, env)
        runs.append(folder / "run")
    first, second = runs
    for name in ("metrics.json", "records.jsonl"):
        data = (first / name).read_bytes()
        assert data, name
        assert data == (second / name).read_bytes(), name
    metrics = json.loads((first / "metrics.json").read_text())
    columns = {cell["column"] for cell in metrics["cells"]}
    assert {"base", "rag", "ft-reg", "ft-reg+rag"} <= columns
    assert metrics["finetuning"]["ft-reg"]["loss_curve"]  # the training is in it too
    records = [json.loads(line) for line in (first / "records.jsonl").open()]
    assert any(r.get("retrieved") for r in records)  # and the retrieval scores
