"""`kinject finetune` under `accelerate launch` with 2 CPU processes (gloo, DDP) trains the
model a single process trains: every process takes half the rows of each step's batch and
the gradients are averaged, so the global batch is the same."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_llama
from finetune_helpers import ONE_THREAD, TWO_CPU_PROCESSES, settings, weights
from kinject.config import WorldConfig
from kinject.world.build import build_world, write_world


@pytest.fixture()
def job(tmp_path, bpe_tokenizer) -> Path:
    world = write_world(
        build_world(WorldConfig(n_known=2, n_new=2, n_updated=1, n_reading=1, n_dev=2)),
        tmp_path / "world",
    )
    base = tmp_path / "base"
    tiny_llama(bpe_tokenizer, hidden_size=32).save_pretrained(base)
    bpe_tokenizer.save_pretrained(base)
    # Packed text: every row has the same number of labelled tokens, so the mean of the two
    # processes' losses is the single process's loss. fp32 keeps the comparison tight.
    config = settings(world, base, learning_rate=[1e-2, 3e-2], epochs=2, batch_size=4, bf16=False)
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _finetune(launcher: list[str], config: Path, out: Path) -> subprocess.CompletedProcess:
    command = [*launcher, "-m", "kinject", "finetune", "--config", str(config), "--out", str(out)]
    env = {**os.environ, **ONE_THREAD, "ACCELERATE_LOG_LEVEL": "error"}
    return subprocess.run(
        command, cwd=out.parent, env=env, capture_output=True, text=True, check=False
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU (gloo) path is what is tested")
def test_two_processes_train_the_model_one_process_trains(job, tmp_path):
    single = _finetune([sys.executable], job, tmp_path / "one")
    assert single.returncode == 0, single.stderr
    double = _finetune(TWO_CPU_PROCESSES, job, tmp_path / "two")
    assert double.returncode == 0, double.stderr
    assert double.stdout.count("chosen:") == 1  # the main process alone reports and writes

    one, two = tmp_path / "one", tmp_path / "two"
    first, second = weights(one / "model"), weights(two / "model")
    assert first.keys() == second.keys()
    for name in first:
        assert torch.allclose(first[name], second[name], atol=1e-4), name
    # Weights equal within float tolerance score the validation questions alike, but where
    # two options are a near tie: each accuracy within one question's worth, and the same
    # candidate chosen wherever the choice is clear by more than that.
    chosen = [json.loads((run / "selection.json").read_text()) for run in (one, two)]
    for a, b in zip(chosen[0]["scored"], chosen[1]["scored"]):
        assert (a["learning_rate"], a["epoch"], a["n"]) == (b["learning_rate"], b["epoch"], b["n"])
        assert abs(a["acc"] - b["acc"]) <= 1 / a["n"] + 1e-9
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3)  # validation NLL, in nats
    ranked = sorted(chosen[0]["scored"], key=lambda c: (c["acc"], -c["loss"]), reverse=True)
    best, runner_up = ranked[:2]
    accuracies = {(c["learning_rate"], c["epoch"]): c["acc"] for c in chosen[1]["scored"]}
    same_accuracies = all(
        accuracies[c["learning_rate"], c["epoch"]] == c["acc"] for c in (best, runner_up)
    )
    by_accuracy = best["acc"] > runner_up["acc"]
    if best["acc"] - runner_up["acc"] > 2 / best["n"] or (
        same_accuracies and (by_accuracy or runner_up["loss"] - best["loss"] > 3e-3 * best["loss"])
    ):
        assert [(c["learning_rate"], c["epoch"]) for c in chosen] == [
            (best["learning_rate"], best["epoch"])
        ] * 2
    for lr in ("lr-0.01", "lr-0.03"):
        logs = [
            [json.loads(line) for line in (run / "candidates" / lr / "training_log.jsonl").open()]
            for run in (one, two)
        ]
        assert [row["tokens"] for row in logs[0]] == [row["tokens"] for row in logs[1]]
        for a, b in zip(*logs):  # float sums in another order: close, not equal
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-3)
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
