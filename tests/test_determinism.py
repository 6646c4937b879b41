"""Two runs of the same config and seed, in separate processes with different hash seeds,
write byte-identical metrics.json and records.jsonl (multiple choice 0/2-shot, base and
oracle arms, open questions generated greedily)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
