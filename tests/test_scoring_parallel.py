"""Data-parallel scoring: `kinject run` under `accelerate launch` with 2 CPU processes (gloo)
scores what one process scores, the main process alone building and writing; the shards
behind it."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from finetune_helpers import ONE_THREAD, TWO_CPU_PROCESSES
from kinject.scoring.parallel import shard_requests

# -- the shards ------------------------------------------------------------------------------


def _requests(seed: int, contexts: int) -> tuple[list[str], list[int]]:
    """Keys (a question's context) and token lengths of 1-5 options per context."""
    rng = random.Random(seed)
    keys, lengths = [], []
    for context in range(contexts):
        for _ in range(rng.randint(1, 5)):
            keys.append(f"context {context}")
            lengths.append(rng.randint(1, 300))
    order = list(range(len(keys)))
    rng.shuffle(order)  # a context's requests need not be adjacent
    return [keys[i] for i in order], [lengths[i] for i in order]


@pytest.mark.parametrize("n", [1, 2, 3, 7])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shards_are_disjoint_cover_every_request_and_keep_each_context_whole(n, seed):
    keys, lengths = _requests(seed, contexts=40)
    shards = shard_requests(keys, lengths, n)
    assert len(shards) == n
    flat = [index for shard in shards for index in shard]
    assert sorted(flat) == list(range(len(keys)))  # every request once
    for shard in shards:
        assert shard == sorted(shard)  # request order within a shard
    owner = {index: rank for rank, shard in enumerate(shards) for index in shard}
    by_context: dict[str, set[int]] = {}
    for index, key in enumerate(keys):
        by_context.setdefault(key, set()).add(owner[index])
    assert all(len(ranks) == 1 for ranks in by_context.values())  # a context on one process
    assert shard_requests(keys, lengths, n) == shards  # deterministic


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shards_are_balanced_by_length(seed):
    keys, lengths = _requests(seed, contexts=60)
    loads: dict[str, int] = {}
    for key, length in zip(keys, lengths):
        loads[key] = loads.get(key, 0) + length
    for n in (2, 3, 4):
        totals = [sum(lengths[i] for i in shard) for shard in shard_requests(keys, lengths, n)]
        # heaviest group first to the lightest process: no process is behind by more than a group
        assert max(totals) - min(totals) <= max(loads.values())
        assert min(totals) > 0


def test_one_long_context_and_many_short_ones_are_dealt_apart():
    keys = ["long"] * 4 + [f"short {i}" for i in range(8)]
    lengths = [100] * 4 + [50] * 8  # 400 tokens against 8 x 50
    shards = shard_requests(keys, lengths, 2)
    assert shards == [[0, 1, 2, 3], list(range(4, 12))]


def test_a_bad_shard_count_is_an_error():
    with pytest.raises(ValueError, match="0 processes"):
        shard_requests(["a"], [1], 0)
    with pytest.raises(ValueError, match="1 keys but 2 lengths"):
        shard_requests(["a"], [1, 2], 2)


def _files(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())


def _undigested(name: str) -> str:
    return re.sub(r"-[0-9a-f]{10}\.", "-<digest>.", name)


# -- kinject run on 2 CPU processes ----------------------------------------------------------


def _experiment(root: Path) -> Path:
    """A tiny world (built by the run, its model pretrained for 2 steps), its base model
    closed book and with the gold document, and an FT-reg fine-tuning; multiple choice and
    open questions, 0 and 1 shot."""
    tasks = "${world}/tasks"
    experiment = {
        "world": {
            "world": {"n_known": 3, "n_new": 3, "n_updated": 1, "n_reading": 2, "n_dev": 2},
            "model": {"vocab_size": 600, "hidden_size": 32, "intermediate_size": 64},
            "pretrain": {
                "steps": 2,
                "batch_size": 4,
                "block_size": 64,
                "warmup_steps": 1,
                "reading_warmup_steps": 1,
            },
        },
        "models": [{"label": "tiny", "path": "${world_model}", "device": "cpu"}],
        "tasks": [
            {"name": "new", "path": f"{tasks}/new.jsonl", "dev": f"{tasks}/dev.jsonl"},
            {
                "name": "new_open",
                "format": "open_jsonl",
                "path": f"{tasks}/new_open.jsonl",
                "dev": f"{tasks}/dev_open.jsonl",
            },
        ],
        "validation": {"task": {"path": f"{tasks}/validation.jsonl"}, "finetune_sample": 4},
        "arms": ["base", "oracle", "ft-reg"],
        "corpus": "${world}/kb.jsonl",
        "finetunes": {
            "ft-reg": {
                "data": {"corpus": "${world}/kb.jsonl", "block_size": 32},
                "learning_rate": [3e-3],
                "epochs": 1,
                "batch_size": 2,
            }
        },
        "shots": [0, 1],
        # one (context, option) sequence per forward pass: no pass is shaped by the shards,
        # so the scores are the same to the bit on any CPU.  In batches, or with prefix
        # sharing (the prefixes a shard's questions share depend on the shard), they agree
        # up to float summation order, which differs between CPUs.
        "scoring": {"batch_size": 1, "share_prefix": False, "max_new_tokens": 4},
        "bootstrap_resamples": 100,
    }
    path = root / "experiment.yaml"
    path.write_text(yaml.safe_dump(experiment))
    return path


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU (gloo) path is what is tested")
def test_an_experiment_on_two_processes_scores_what_one_process_scores(
    tmp_path, monkeypatch, one_torch_thread
):
    from kinject.experiments.files import load_experiment
    from kinject.experiments.runner import run_experiment

    cache = tmp_path / "cache"
    monkeypatch.setenv("KINJECT_CACHE_DIR", str(cache))
    experiment = _experiment(tmp_path)
    command = [*TWO_CPU_PROCESSES, "-m", "kinject", "run", str(experiment), "--out", "two"]
    env = {**os.environ, **ONE_THREAD, "ACCELERATE_LOG_LEVEL": "error"}
    double = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=300
    )
    assert double.returncode == 0, double.stderr
    # The main process alone built the world and pretrained its model, and printed; both
    # trained FT-reg (data parallel) and scored every cell.
    assert double.stdout.count("(pretrained now)") == 1
    assert double.stdout.count("(trained now)") == 1
    assert double.stdout.count("run folder:") == 1
    built = sorted(p.name for p in (cache / "base-models").iterdir())
    assert len(built) == 2 and built[0] == f".{built[1]}.lock"  # no second builder's leftovers

    one = tmp_path / "one"  # the same experiment in this process, on the cached world
    run_experiment(load_experiment(experiment), one, show_progress=False)
    two = tmp_path / "two"
    # The same files (a fine-tuned model's cells are named by its folder: each run's own).
    assert [_undigested(f) for f in _files(two)] == [_undigested(f) for f in _files(one)]
    # The base model's run folder, cells and all, is the same to the byte but for timings.
    base = Path("models") / "base"
    assert _files(two / base) == _files(one / base)
    timed = ("env.json", "costs.json", ".cost.json")
    for name in _files(one / base):
        if not name.endswith(timed):
            assert (two / base / name).read_bytes() == (one / base / name).read_bytes(), name
    records = _rows(one / base / "records.jsonl")
    assert {(r["arm"], r["split"], r["shots"]) for r in records} == {
        (arm, split, shots)
        for arm in ("base", "oracle")
        for split in ("new", "new_open")  # log-likelihoods and generation were both sharded
        for shots in (0, 1)
    }
    costs = [json.loads((run / base / "costs.json").read_text())["cells"] for run in (one, two)]
    assert [c["requests"] for c in costs[0]] == [c["requests"] for c in costs[1]]
    # FT-reg was trained data parallel (weights equal within float tolerance, as in
    # tests/test_finetune_ddp.py), then scored on the same questions.
    tuned = [_rows(run / "models" / "ft-reg" / "records.jsonl") for run in (one, two)]
    assert [(r["split"], r["shots"], r["question_id"]) for r in tuned[0]] == [
        (r["split"], r["shots"], r["question_id"]) for r in tuned[1]
    ]
    assert json.loads((two / "env.json").read_text())["processes"] == 2
    assert json.loads((two / base / "env.json").read_text())["processes"] == 2
    assert "processes" not in json.loads((one / "env.json").read_text())
