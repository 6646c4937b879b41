"""``kinject export lm-eval``: lm-evaluation-harness runs the export of a task or of a run and
gets kinject's prompts byte for byte and kinject's predictions question by question.

Everything is scored in float32 on CPU (kinject's ``bf16_autocast`` is off, its default), so
the two scorers agree to float rounding and predictions must be identical.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import MMLU_DIR
from kinject.cli import app
from kinject.config import EvalConfig, KBConfig, ModelSpec, RagConfig, TaskSpec, WorldConfig
from kinject.errors import KinjectError
from kinject.export.lm_eval import export_lm_eval
from kinject.fileio import read_jsonl
from kinject.tasks.prompts import build_prompt
from kinject.world.build import build_world, write_world
from near_ties import assert_mostly_clear, assert_same_choice, first_max

lm_eval = pytest.importorskip("lm_eval")

LL_TOLERANCE = 1e-4  # float32 rounding between two implementations of the same sums


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    config = WorldConfig(n_known=3, n_new=3, n_updated=1, n_reading=2, n_dev=3)
    return write_world(build_world(config), tmp_path_factory.mktemp("w") / "world")


@pytest.fixture(scope="module")
def kb_dir(tmp_path_factory, world_dir) -> Path:
    from kinject.kb.store import SourceOptions, build_kb

    out = tmp_path_factory.mktemp("kb") / "kb"
    build_kb([world_dir / "kb.jsonl"], out, KBConfig(), SourceOptions(show_progress=False))
    return out


@pytest.fixture(scope="module")
def hflm(tiny_llama_dir, one_torch_thread):
    """lm-eval's own Hugging Face model, float32 on CPU, loaded once."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(tiny_llama_dir), device="cpu", dtype="float32", batch_size=16)


def run_lm_eval(hflm, export_dir: Path, name: str, shots: int | None) -> list[dict]:
    """lm-eval's logged samples of one exported task, in document order."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(export_dir), include_defaults=False)
    results = simple_evaluate(
        model=hflm,
        tasks=[name],
        task_manager=manager,
        num_fewshot=shots,
        log_samples=True,
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
        fewshot_random_seed=0,
    )
    return sorted(results["samples"][name], key=lambda sample: sample["doc_id"])


def lm_eval_predictions(sample: dict) -> tuple[int, int, list[float]]:
    """(pred, pred_norm, log-likelihoods) of one logged sample, as lm-eval's acc/acc_norm."""
    lls = [float(resp[0]) for resp in sample["filtered_resps"]]
    choices = sample["doc"]["choices"]
    return first_max(lls), first_max([ll / len(c) for ll, c in zip(lls, choices)]), lls


def assert_same_predictions(samples: list[dict], records: list[dict]) -> None:
    """lm-eval's log-likelihoods within LL_TOLERANCE, and its predictions (so acc and
    acc_norm) question by question, but where its two best options are a near tie."""
    assert [s["doc"]["id"] for s in samples] == [r["question_id"] for r in records]
    clear = []
    for sample, record in zip(samples, records):
        pred, pred_norm, lls = lm_eval_predictions(sample)
        ours = record["loglikelihoods"]
        assert max(abs(a - b) for a, b in zip(lls, ours)) <= LL_TOLERANCE
        lengths = [len(c) for c in sample["doc"]["choices"]]
        for key, scale in (("pred", [1] * len(lengths)), ("pred_norm", lengths)):
            theirs = [ll / n for ll, n in zip(lls, scale)]
            clear.append(assert_same_choice([ll / n for ll, n in zip(ours, scale)], theirs))
            if clear[-1]:
                assert record[key] == (pred if key == "pred" else pred_norm), record["question_id"]
        if clear[-2]:
            assert sample["acc"] == float(record["correct"])
        if clear[-1]:
            assert sample["acc_norm"] == float(record["correct_norm"])
    assert_mostly_clear(clear)


# ---------------------------------------------------------------------------------------------
# a task file


@pytest.mark.parametrize("style", ["option", "letter"])
def test_task_export_reproduces_kinject_prompts_and_predictions(
    tmp_path, world_dir, tiny_llama_dir, hflm, style
):
    from kinject.evaluation.arms import BaseArm
    from kinject.evaluation.evaluate import load_task
    from kinject.evaluation.runner import score_cell
    from kinject.models.loading import load_causal_lm
    from kinject.scoring.loglikelihood import LoglikelihoodScorer

    tasks = world_dir / "tasks"
    # a description with Jinja markers: lm-eval renders descriptions, the export must not
    description = "Facts about {{people}} and {% blocks %}.\n\n" if style == "letter" else None
    out = tmp_path / "export"
    result = export_lm_eval(
        tasks / "new.jsonl",
        out,
        dev=tasks / "dev.jsonl",
        style=style,
        description=description,
        shots=(0, 3),
        model=str(tiny_llama_dir),
    )
    (entry,) = result.tasks
    assert entry["name"] == "kinject_new" and entry["num_fewshot"] is None
    assert set(entry["commands"]) == {"0", "3"}
    assert f"pretrained={tiny_llama_dir}," in entry["commands"]["3"]
    assert "--num_fewshot 3" in entry["commands"]["3"]

    spec = TaskSpec(
        path=str(tasks / "new.jsonl"), dev=str(tasks / "dev.jsonl"), style=style
    ).model_copy(update={"description": description})
    task = load_task(spec)
    model, tokenizer = load_causal_lm(ModelSpec(path=str(tiny_llama_dir), device="cpu"))
    scorer = LoglikelihoodScorer(model, tokenizer, batch_size=16)
    for shots in (0, 3):
        samples = run_lm_eval(hflm, out, entry["name"], shots)
        for sample, item in zip(samples, task.items):
            prompt = build_prompt(task, item, shots)
            assert [tuple(args) for args in sample["arguments"]] == [
                (prompt.context, continuation) for continuation in prompt.continuations
            ]
        assert_same_predictions(samples, score_cell(scorer, task, BaseArm(), shots))


def test_mmlu_csv_export_builds_kinjects_letter_prompts_in_lm_eval(tmp_path):
    """An MMLU subject (CSV, letter style, MMLU's description), 5-shot: lm-eval's requests."""
    from lm_eval.tasks import TaskManager

    from kinject.tasks.loaders import mmlu_task

    if not MMLU_DIR.exists():
        pytest.skip("shared MMLU data not present")
    out = tmp_path / "export"
    (entry,) = export_lm_eval(MMLU_DIR / "test" / "anatomy_test.csv", out, shots=(5,)).tasks
    assert entry["name"] == "kinject_mmlu_anatomy"
    task = TaskManager(include_path=str(out), include_defaults=False).load([entry["name"]])
    lm_task = task["tasks"][entry["name"]]
    lm_task.set_config(key="num_fewshot", value=5)
    lm_task.set_fewshot_seed(seed=1234)
    lm_task.build_all_requests(limit=None, rank=0, world_size=1)
    ours = mmlu_task(MMLU_DIR / "test" / "anatomy_test.csv")
    requests: dict[int, list] = {}
    for instance in lm_task.instances:
        requests.setdefault(instance.doc_id, []).append(instance)
    assert len(requests) == len(ours.items)
    for item, doc_id in zip(ours.items, sorted(requests)):
        prompt = build_prompt(ours, item, 5)
        instances = sorted(requests[doc_id], key=lambda instance: instance.idx)
        assert [instance.args for instance in instances] == [
            (prompt.context, continuation) for continuation in prompt.continuations
        ]


def test_task_export_refuses_more_shots_than_dev_examples(tmp_path, world_dir):
    tasks = world_dir / "tasks"
    with pytest.raises(KinjectError, match="dev examples; 5-shot needs 5"):
        export_lm_eval(tasks / "new.jsonl", tmp_path / "out", shots=(0, 5))
    assert not (tmp_path / "out").exists()


def test_run_export_refuses_task_file_options(tmp_path, rag_run):
    with pytest.raises(KinjectError, match="apply to a task file only"):
        export_lm_eval(rag_run, tmp_path / "out", shots=(5,))
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# a run folder


@pytest.fixture(scope="module")
def rag_run(tmp_path_factory, world_dir, kb_dir, tiny_llama_dir, one_torch_thread) -> Path:
    """A `kinject eval` run: arms base and rag (K 0 and 2), 0- and 1-shot, K chosen on a
    sampled validation task, in float32."""
    from kinject.evaluation.evaluate import run_evaluation

    tasks = world_dir / "tasks"
    config = EvalConfig(
        model=ModelSpec(path=str(tiny_llama_dir), device="cpu"),
        tasks=[
            TaskSpec(name=split, path=str(tasks / f"{split}.jsonl"), dev=str(tasks / "dev.jsonl"))
            for split in ("validation", "new")
        ],
        arms=["base", "rag"],
        rag=RagConfig(
            kb=str(kb_dir),
            k=[0, 2],
            select_k_on="validation",
            select_k_sample=8,
            template="Facts:\n{context}",
        ),
        shots=[0, 1],
        bootstrap_resamples=100,
    )
    assert config.scoring.bf16_autocast is False  # fp32: exact agreement with lm-eval's fp32
    run_dir = tmp_path_factory.mktemp("run") / "run"
    run_evaluation(config, run_dir, show_progress=False)
    return run_dir


def _cells(run_dir: Path) -> dict[tuple, list[dict]]:
    cells: dict[tuple, list[dict]] = {}
    for _, row in read_jsonl(run_dir / "records.jsonl"):
        key = (row["model"], row["arm"], row["split"], row["shots"], row["k"])
        cells.setdefault(key, []).append(row)
    return cells


def test_run_export_reproduces_every_cell_of_the_run_in_lm_eval(tmp_path, rag_run, kb_dir, hflm):
    from kinject.config import load_config
    from kinject.evaluation.evaluate import build_arms, load_task
    from kinject.kb.store import KnowledgeBase

    texts = {chunk.id: chunk.text for chunk in KnowledgeBase.open(kb_dir).chunks}
    out = tmp_path / "export"
    result = export_lm_eval(rag_run, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tasks"] == result.tasks and manifest["source"]["kind"] == "eval_run"
    cells = _cells(rag_run)
    assert len(result.tasks) == len(cells) >= 6  # validation K grid + test cells
    config = load_config(EvalConfig, rag_run / "config.yaml")
    rag_arms = {arm.k: arm for arm in build_arms(config) if arm.name == "rag"}
    questions = {item.id: item for spec in config.tasks for item in load_task(spec).items}
    seen_rag = 0
    for entry in result.tasks:
        cell = entry["cell"]
        records = cells[(cell["model"], cell["arm"], cell["split"], cell["shots"], cell["k"])]
        assert entry["model"]["path"] == config.model.path
        shots = cell["shots"]
        command = entry["commands"][str(shots)]
        assert entry["num_fewshot"] == shots and f"--num_fewshot {shots}" in command
        assert f"pretrained={config.model.path},dtype=float32" in command
        docs = [row for _, row in read_jsonl(out / entry["data"]["test"])]
        assert [doc["id"] for doc in docs] == [r["question_id"] for r in records]
        if cell["arm"] == "rag" and cell["k"] > 0:
            seen_rag += 1
            arm = rag_arms[cell["k"]]  # kinject's own arm, retrieving again
            for doc, record in zip(docs, records):
                context = arm.context_for(questions[doc["id"]]).text
                assert context.startswith("Facts:\n") and doc["context"] == context
                assert doc["query"].startswith(context + "\n\n")
                assert len(record["retrieved"]) == cell["k"]
                for hit in record["retrieved"]:  # each retrieved chunk is in the prompt
                    assert texts[hit["chunk"]] in doc["query"]
        elif cell["arm"] == "base":
            assert all(doc["context"] == "" for doc in docs)
        samples = run_lm_eval(hflm, out, entry["name"], shots)
        assert_same_predictions(samples, records)
    assert seen_rag == 2  # the validation K grid at K=2, 0- and 1-shot


def test_manifest_command_runs_in_the_lm_eval_cli(tmp_path, rag_run):
    """The manifest's command line, as written, in lm-eval's own CLI (a subprocess)."""
    import os
    import shlex
    import subprocess
    import sys

    out = tmp_path / "export"
    result = export_lm_eval(rag_run, out)
    entry = next(t for t in result.tasks if t["cell"]["arm"] == "rag" and t["cell"]["k"] > 0)
    argv = shlex.split(entry["commands"][str(entry["num_fewshot"])])
    assert argv[0] == "lm_eval"
    argv[0] = str(Path(sys.executable).parent / "lm_eval")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # conftest: HF_HUB/DATASETS_OFFLINE=1
    done = subprocess.run(argv, env=env, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    (samples_file,) = (out / "results").glob(f"*/samples_{entry['name']}_*.jsonl")
    samples = sorted(
        (row for _, row in read_jsonl(samples_file)), key=lambda sample: sample["doc_id"]
    )
    cell = entry["cell"]
    records = _cells(rag_run)[(cell["model"], "rag", cell["split"], cell["shots"], cell["k"])]
    assert_same_predictions(samples, records)


def test_oracle_cells_and_nearest_examples_are_exported_inside_the_query(
    tmp_path, world_dir, tiny_llama_dir, hflm
):
    """Dynamic k-shot examples differ per question: they go into the query, lm-eval 0-shot;
    the oracle arm's gold documents are the context."""
    from kinject.evaluation.evaluate import run_evaluation

    tasks = world_dir / "tasks"
    config = EvalConfig(
        model=ModelSpec(path=str(tiny_llama_dir), device="cpu"),
        tasks=[TaskSpec(name="new", path=str(tasks / "new.jsonl"), dev=str(tasks / "dev.jsonl"))],
        arms=["base", "oracle"],
        corpus=str(world_dir / "kb.jsonl"),
        shots=[2],
        fewshot="nearest",
        bootstrap_resamples=100,
    )
    run_dir = tmp_path / "run"
    run_evaluation(config, run_dir, show_progress=False)
    out = tmp_path / "export"
    result = export_lm_eval(run_dir, out)
    cells = _cells(run_dir)
    corpus = {row["id"]: row["text"] for _, row in read_jsonl(world_dir / "kb.jsonl")}
    assert {t["cell"]["arm"] for t in result.tasks} == {"base", "oracle"}
    for entry in result.tasks:
        cell = entry["cell"]
        assert entry["num_fewshot"] == 0 and entry["fewshot"] == "in_query"
        assert "dev" not in entry["data"] and "--num_fewshot 0" in entry["commands"]["0"]
        records = cells[("base", cell["arm"], "new", 2, 0)]
        docs = [row for _, row in read_jsonl(out / entry["data"]["test"])]
        for doc in docs:
            assert doc["query"].count("Question: ") == 3  # two examples, then the question
            if cell["arm"] == "oracle":
                gold = next(r for _, r in read_jsonl(tasks / "new.jsonl") if r["id"] == doc["id"])
                assert doc["context"] == "\n\n".join(corpus[d] for d in gold["doc_ids"])
                assert doc["context"] + "\n\n" in doc["query"]
        assert_same_predictions(run_lm_eval(hflm, out, entry["name"], 0), records)


def test_experiment_folder_exports_each_model_folder(tmp_path, rag_run):
    experiment = tmp_path / "experiment"
    shutil.copytree(rag_run, experiment / "models" / "base")
    plan = {"runs": [{"label": "base", "arms": ["base", "rag"], "folder": "models/base"}]}
    (experiment / "plan.json").write_text(json.dumps(plan))
    alone = export_lm_eval(rag_run, tmp_path / "alone")
    result = export_lm_eval(experiment, tmp_path / "export")
    assert [t["name"] for t in result.tasks] == [t["name"] for t in alone.tasks]
    assert all(t["run"] == str((experiment / "models" / "base").resolve()) for t in result.tasks)
    assert json.loads((tmp_path / "export" / "manifest.json").read_text())["source"]["kind"] == (
        "experiment"
    )


def test_run_export_refuses_inputs_changed_since_scoring(tmp_path, rag_run, world_dir):
    import yaml

    run_dir = tmp_path / "run"
    shutil.copytree(rag_run, run_dir)
    changed = tmp_path / "new.jsonl"
    lines = (world_dir / "tasks" / "new.jsonl").read_text().splitlines()
    changed.write_text("\n".join(lines[:-1]) + "\n")  # one question fewer than was scored
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["tasks"][1]["path"] = str(changed)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(KinjectError, match="scored with other inputs"):
        export_lm_eval(run_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# the command


def test_cli_exports_a_task_and_refuses_a_non_empty_folder(tmp_path, world_dir):
    runner = CliRunner()
    help_text = runner.invoke(app, ["export", "lm-eval", "--help"]).output
    assert "Example" in help_text and "kinject export lm-eval" in help_text

    tasks = world_dir / "tasks"
    out = tmp_path / "export"
    args = ["export", "lm-eval", str(tasks / "new.jsonl"), "--dev", str(tasks / "dev.jsonl")]
    result = runner.invoke(app, [*args, "--shots", "0", "--shots", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "kinject_new" in result.output and "lm_eval --model hf" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["tasks"][0]["commands"]) == {"0", "2"}
    assert (out / "kinject_new.yaml").exists() and (out / "README.md").exists()

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    refused = runner.invoke(app, [*args, "--out", str(busy)])
    assert refused.exit_code == 2
    assert "not an empty folder" in refused.output
    assert sorted(p.name for p in busy.iterdir()) == ["keep.txt"]
    assert not list(tmp_path.glob(".busy.staging-*"))
