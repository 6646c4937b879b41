"""Helpers for test_finetune.py: fine-tuning configs over a tiny world, weights, JSONL."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from kinject.config import FinetuneConfig, parse_config
from kinject.experiments.files import deep_merge

# torch's default of one thread per core is oversubscribed (and 100x slower) when other
# processes share the cores; subprocesses get the same single thread, which also keeps their
# numerics identical to the in-process runs they are compared with.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# `accelerate launch` of two processes: on a machine without GPUs, one CPU process each (gloo).
TWO_CPU_PROCESSES = [
    str(Path(sys.executable).parent / "accelerate"),
    "launch",
    "--multi_gpu",
    "--num_processes",
    "2",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
]


def settings(world: Path, base: Path, **overrides) -> dict:
    """A small fine-tuning of ``base`` on the world's KB: 3 learning rates, 4 epochs."""
    plain = {
        "model": {"path": str(base), "device": "cpu"},
        "data": {"corpus": str(world / "kb.jsonl"), "block_size": 32},
        "learning_rate": [3e-3, 1e-2, 3e-2],
        "epochs": 4,
        "batch_size": 2,
        "selection": {"task": {"path": str(world / "tasks" / "validation.jsonl")}},
        "contamination": {"tasks": [{"path": str(world / "tasks" / "new.jsonl")}]},
        "scoring": {"batch_size": 16},
    }
    return deep_merge(plain, overrides)


def ft_config(world: Path, base: Path, **overrides) -> FinetuneConfig:
    return parse_config(FinetuneConfig, settings(world, base, **overrides))


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(Path(folder).glob("*.safetensors"))
    assert files, f"no weights in {folder}"
    return {name: t for f in files for name, t in load_file(f).items()}


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = weights(a), weights(b)
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path
