"""``kinject run --dry-run``: every input checked and the grid sized without a model, on the
quick experiment (against what its real run did) and on the paper's two configs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import MMLU_DIR, QUICK_EXPERIMENT, REPO
from kinject.experiments.dryrun import CHARS_PER_TOKEN, dry_run
from kinject.experiments.files import load_experiment

PAPER = REPO / "examples" / "paper"
TEXTS = [f"In month {i} of 2023 there was a parade, an election and a storm." for i in range(8)]


def kinject(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "kinject", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_dry_run_sizes_the_quick_grid_as_its_run_scored_it(quick_experiment_run, tmp_path):
    result = dry_run(load_experiment(QUICK_EXPERIMENT))
    assert result.problems == [] and result.unknown == []
    cells = sorted(quick_experiment_run.glob("*/*/cells/*.jsonl"))
    assert result.cells == len(cells)
    requests = 0
    for path in cells:
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            requests += len(record["loglikelihoods"]) if "loglikelihoods" in record else 1
    assert result.requests == requests
    # Tokens of the training text in the model's own tokenizer, before packing into blocks:
    # within a few percent of what the trainings saw (blocks, with document separators).
    trained = sum(
        json.loads(done.read_text(encoding="utf-8"))["tokens"]
        for done in quick_experiment_run.glob("finetuned/*/candidates/*/done.json")
    )
    assert not result.tokens_estimated
    assert 0.85 * trained <= result.training_tokens <= 1.0 * trained


def test_the_paper_configs_name_every_missing_input_and_exit_2(tmp_path):
    for name, missing in (
        ("mmlu.yaml", ["data/mmlu/test/", "data/mmlu_validation.jsonl", "kbs/mmlu"]),
        ("current_events.yaml", ["data/current_events.jsonl", "kbs/current_events"]),
    ):
        result = kinject("run", str(PAPER / name), "--dry-run", cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        out = result.stdout
        for path in missing:
            assert str(PAPER / path) in out, (path, out)
        for hub_id in (
            "mistralai/Mistral-7B-v0.1",
            "meta-llama/Llama-2-7b-hf",
            "microsoft/Orca-2-7b",
        ):
            assert f"hub id {hub_id} (downloaded on the first run, not now)" in out
        assert "problem(s): nothing was run" in out
        assert list(tmp_path.iterdir()) == []  # nothing written, no runs/ folder


def _mc_rows(prefix: str, n: int) -> str:
    rows = [
        {
            "id": f"{prefix}-{i}",
            "question": f"Which event happened in month {i}?",
            "choices": ["a parade", "an election", "a storm", "a launch"],
            "answer": i % 4,
        }
        for i in range(n)
    ]
    return "".join(json.dumps(row) + "\n" for row in rows)


@pytest.fixture(scope="module")
def paper_inputs(tmp_path_factory) -> Path:
    """examples/paper/*.yaml copied beside the inputs they name: the shared MMLU files, small
    knowledge bases (built with the offline default embedder), questions and paraphrases."""
    from kinject.config import KBConfig
    from kinject.kb.store import SourceOptions, build_kb

    root = tmp_path_factory.mktemp("paper")
    for path in PAPER.glob("*.yaml"):
        shutil.copy(path, root / path.name)
    data = root / "data"
    data.mkdir()
    shutil.copytree(MMLU_DIR, data / "mmlu")
    (data / "mmlu_validation.jsonl").write_text(_mc_rows("val", 300), encoding="utf-8")
    (data / "current_events.jsonl").write_text(_mc_rows("ce", 30), encoding="utf-8")
    (data / "current_events_dev.jsonl").write_text(_mc_rows("dev", 5), encoding="utf-8")
    (data / "current_events_validation.jsonl").write_text(_mc_rows("v", 20), encoding="utf-8")
    for name in ("mmlu_validation_dev", "current_events_validation_dev"):
        (data / f"{name}.jsonl").write_text(_mc_rows(name, 5), encoding="utf-8")
    docs = root / "docs.jsonl"
    texts = TEXTS
    docs.write_text(
        "".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)),
        encoding="utf-8",
    )
    quiet = SourceOptions(show_progress=False)
    for kb in ("mmlu", "current_events"):
        build_kb([docs], root / "kbs" / kb, KBConfig(), quiet)
    (root / "kbs" / "current_events" / "paraphrases.jsonl").write_text(
        "".join(
            json.dumps({"id": f"d{i}", "paraphrases": [f"{t} (told again {n})" for n in range(10)]})
            + "\n"
            for i, t in enumerate(texts)
        ),
        encoding="utf-8",
    )
    return root


@pytest.mark.skipif(not MMLU_DIR.exists(), reason="shared MMLU data not present")
def test_the_paper_configs_with_their_inputs_pass_and_are_sized(paper_inputs):
    from kinject.kb.store import KnowledgeBase

    chars = sum(len(c.text) for c in KnowledgeBase.open(paper_inputs / "kbs" / "mmlu").chunks)
    mmlu = dry_run(load_experiment(paper_inputs / "mmlu.yaml"))
    assert mmlu.problems == []
    test_requests = 4 * (135 + 152 + 144 + 100 + 324)  # the five subjects' test questions
    validation = 4 * 240  # rag_sample and finetune_sample: 240 of the 300 questions
    # per model: base and ft-reg, each: the K grid (6 K x 2 shots) on validation, then
    # 5 subjects x 2 shots x (base, rag at the chosen K)
    assert mmlu.cells == 3 * 2 * (6 * 2 + 5 * 2 * 2)
    assert mmlu.requests == 3 * 2 * (6 * 2 * validation + 2 * 2 * test_requests)
    assert mmlu.finetuning_requests == 3 * 5 * 4 * validation  # every epoch of every LR
    assert mmlu.tokens_estimated
    assert mmlu.training_tokens == 3 * 5 * 4 * (chars // CHARS_PER_TOKEN)

    events = dry_run(load_experiment(paper_inputs / "current_events.yaml"))
    assert events.problems == []
    # per model: base, ft-reg, ft-par; each the K grid on 20 validation questions, then the
    # 30 test questions at 2 shots x (base, rag)
    assert events.cells == 3 * 3 * (6 * 2 + 2 * 2)
    assert events.requests == 3 * 3 * (6 * 2 * 4 * 20 + 2 * 2 * 4 * 30)
    paraphrased = chars + sum(len(f"{t} (told again {n})") for t in TEXTS for n in range(10))
    per_model = 5 * 4 * (chars // CHARS_PER_TOKEN + paraphrased // CHARS_PER_TOKEN)
    assert events.training_tokens == 3 * per_model


def test_the_dry_run_command_prints_the_checks_and_exits_0(paper_inputs):
    result = kinject("run", "mmlu.yaml", "--dry-run", cwd=paper_inputs)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "ok      task 'mmlu_anatomy': 135 questions, 5 dev examples, mmlu_csv" in lines
    assert "cells: 192" in lines
    assert any(
        line.startswith("training tokens") and "characters per token" in line for line in lines
    )
    assert not (paper_inputs / "runs").exists()


def test_the_dry_run_refuses_what_the_run_would_refuse(tmp_path):
    """A local model path that is not there, a task without the dev examples its shots need,
    a damaged knowledge base: each a problem of its own, none stopping the others."""
    (tmp_path / "t.jsonl").write_text(_mc_rows("t", 3), encoding="utf-8")
    (tmp_path / "kb").mkdir()
    (tmp_path / "kb" / "kb.json").write_text('{"format": 1, "snapshot": "snapshots/none"}')
    (tmp_path / "e.yaml").write_text(
        "models: [{label: m, path: ./missing-model}, {label: hub, path: org/model}]\n"
        "tasks: [{path: t.jsonl}]\narms: [base, rag]\nrag: {kb: kb, k: [0, 1]}\nshots: [0, 5]\n",
        encoding="utf-8",
    )
    result = dry_run(load_experiment(tmp_path / "e.yaml"))
    problems = {(c.kind, c.name): c.detail for c in result.problems}
    assert set(problems) == {("model", "m"), ("task", "t"), ("knowledge base", "rag.kb")}
    assert problems[("model", "m")].endswith(
        "missing-model' does not exist (a local path: not looked up on the hub)"
    )
    assert problems[("task", "t")].endswith("0 dev examples, jsonl: 5-shot needs 5 dev examples")
    assert any(c.ok and c.detail.startswith("hub id org/model") for c in result.checks)


def test_a_facts_section_whose_model_is_not_there_is_a_failed_check(tmp_path):
    """The facts folder's cache key needs the model's content: a .gguf file that is not
    there is reported as the setup section's problem, beside the others, not as a crash."""
    (tmp_path / "e.yaml").write_text(
        "facts: {model: ./gone.gguf, n_new: 0}\n"
        "models: [{label: m, path: ./gone.gguf}]\n"
        "tasks: [{path: '${facts}/tasks/known.jsonl'}]\narms: [base]\n",
        encoding="utf-8",
    )
    result = dry_run(load_experiment(tmp_path / "e.yaml"))
    problems = {(c.kind, c.name): c.detail for c in result.problems}
    assert set(problems) == {("setup", "facts:"), ("model", "m")}
    assert problems[("setup", "facts:")].endswith("gone.gguf' does not exist")
    cli = kinject("run", "e.yaml", "--dry-run", cwd=tmp_path)
    assert cli.returncode == 2 and "gone.gguf' does not exist" in cli.stdout + cli.stderr
