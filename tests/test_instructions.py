"""The instruction arm: a named prompt prefix any arm of any experiment can carry.

Config grammar and its errors; the prompt layout, byte-identical to lm-evaluation-harness's
``--system_instruction`` (0- and k-shot, with and without a task description) with the same
log-likelihoods on a tiny model; arms without an instruction keep their cell identity;
``kinject eval`` with ``[base, rename]``; an experiment with ``rename``, ``rag+rename``,
``ft-reg+rename`` and ``ft-reg+rag+rename`` (K chosen on validation for each rag arm, own
columns in every table, McNemar tests, the dry run's count, the lm-eval export).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from conftest import MMLU_DIR
from kinject.config import EvalConfig, ExperimentConfig, ModelSpec, TaskSpec, WorldConfig
from kinject.errors import KinjectError
from kinject.evaluation.arms import BaseArm, Instruction, OracleArm, RagArm, parse_arm
from kinject.tasks.loaders import jsonl_task, mmlu_task
from kinject.tasks.prompts import build_open_prompt, build_prompt, system_prompt
from kinject.world.build import build_world, write_world
from lm_eval_tasks import OPTION_TASK_YAML

REPO = Path(__file__).resolve().parent.parent
WORLD_YAML = REPO / "examples" / "quick" / "world.yaml"
RENAME = "In this text, Romeo is called Bob."
APART = "In this text, Romeo is called Bob.\n\n"  # ends in a blank line: set apart


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    config = WorldConfig(n_known=5, n_new=4, n_updated=2, n_reading=2, n_dev=2)
    return write_world(build_world(config), tmp_path_factory.mktemp("w") / "world")


def _eval_values(world_dir: Path, **overrides) -> dict:
    values = {
        "model": {"path": "m"},
        "tasks": [{"path": str(world_dir / "tasks" / "new.jsonl")}],
        "instructions": {"rename": RENAME},
        "arms": ["base", "rename"],
    }
    values.update(overrides)
    return values


# ---------------------------------------------------------------------------------------------
# config grammar


def test_eval_arms_take_an_instruction_after_base_oracle_or_rag(world_dir):
    config = EvalConfig.model_validate(
        _eval_values(
            world_dir,
            arms=["base", "rename", "oracle+rename", "rag+rename", "rag"],
            corpus="kb.jsonl",
            rag={"kb": "kb"},
        )
    )
    names = [parse_arm(arm, config.instructions).name for arm in config.arms]
    assert names == ["base", "rename", "oracle+rename", "rag+rename", "rag"]
    assert parse_arm("base+rename", {"rename"}).name == "rename"  # the bare name's long form


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"arms": ["rag+renam"]}, r"arm 'rag\+renam': expected base, oracle or rag, .*'renam'"),
        ({"arms": ["rename+rename"]}, r"instruction 'rename' used twice"),
        ({"arms": ["rag+rename+rename"]}, r"instruction 'rename' used twice"),
        ({"arms": ["rename+rag"]}, r"the instruction 'rename' goes last"),
        (
            {"arms": ["rag+a+rename"], "instructions": {"a": "A.", "rename": RENAME}},
            r"two instructions \('a' and 'rename'\)",
        ),
        ({"arms": ["rename", "base+rename"]}, r"'rename' and 'base\+rename' are the same arm"),
        ({"arms": ["base", "base"]}, r"'base' is listed twice"),
        ({"instructions": {"rag": RENAME}, "arms": ["base"]}, r"instruction name 'rag' is an arm"),
        ({"instructions": {"a b": RENAME}, "arms": ["base"]}, r"instruction name 'a b': use"),
        ({"instructions": {"a+b": RENAME}, "arms": ["base"]}, r"instruction name 'a\+b': use"),
        ({"instructions": {"rename": " \n"}}, r"instruction 'rename' is empty"),
        ({"arms": ["rag+rename"]}, r"the rag arm needs a 'rag' section"),
        ({"arms": ["oracle+rename"]}, r"the oracle arm needs 'corpus'"),
        ({"arms": ["rename"], "instructions": {}}, r"arm 'rename': expected base, oracle or rag$"),
    ],
)
def test_bad_eval_arms_and_instructions_are_one_line_errors_naming_file_and_field(
    tmp_path, world_dir, overrides, message
):
    from kinject.config import load_config

    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(_eval_values(world_dir, **overrides)), encoding="utf-8")
    with pytest.raises(KinjectError, match=message) as error:
        load_config(EvalConfig, path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def _experiment_values(**overrides) -> dict:
    values = {
        "models": [{"label": "tiny", "path": "m"}],
        "tasks": [{"path": "t.jsonl"}],
        "validation": {"task": {"name": "validation", "path": "v.jsonl"}},
        "rag": {"kb": "kb"},
        "finetunes": {"ft-reg": {"data": {"corpus": "kb.jsonl"}}},
        "instructions": {"rename": RENAME},
        "arms": ["base"],
    }
    values.update(overrides)
    return values


def test_experiment_arms_follow_base_rag_and_finetunes_with_an_instruction():
    from kinject.experiments.runner import model_runs

    arms = [
        "base",
        "rag+rename",
        "ft-reg+rag+rename",
        "rename",
        "ft-reg+rename",
        "ft-reg+rag",
        "rag",
        "ft-reg",
    ]
    config = ExperimentConfig.model_validate(_experiment_values(arms=arms))
    runs = model_runs(config, config.models[0])
    assert [(run.label, run.finetune, run.arms) for run in runs] == [
        ("base", None, ["base", "rag+rename", "rename", "rag"]),
        # closed book and rag first, as before instructions; then the instruction arms
        ("ft-reg", "ft-reg", ["base", "rag", "rag+rename", "rename"]),
    ]
    columns = [parse_arm(arm, config.instructions, config.finetunes).column for arm in arms]
    assert columns == arms


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"arms": ["ft-reg+renam"]},
            (
                r"arm 'ft-reg\+renam': expected base, oracle, rag, <finetune> or <finetune>\+rag "
                r"with <finetune> one of \['ft-reg'\], optionally followed by \+<instruction>"
            ),
        ),
        ({"arms": ["ft-reg+rename+rename"]}, r"instruction 'rename' used twice"),
        ({"arms": ["ft-reg+oracle+rename"]}, r"arm 'ft-reg\+oracle\+rename': expected"),
        (
            {"instructions": {"ft-reg": RENAME}},
            r"instruction name 'ft-reg' is also a fine-tuning's",
        ),
        ({"instructions": {"oracle": RENAME}}, r"instruction name 'oracle' is an arm's"),
        ({"arms": ["rename", "base+rename"]}, r"are the same arm"),
    ],
)
def test_bad_experiment_arms_are_errors(tmp_path, overrides, message):
    from kinject.config import load_config

    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(_experiment_values(**overrides)), encoding="utf-8")
    with pytest.raises(KinjectError, match=message) as error:
        load_config(ExperimentConfig, path)
    assert str(path) in str(error.value)


# ---------------------------------------------------------------------------------------------
# prompt layout and identity


def test_instruction_opens_the_prompt_before_description_and_examples(world_dir):
    task = jsonl_task("new", world_dir / "tasks" / "new.jsonl", world_dir / "tasks" / "dev.jsonl")
    item = task.items[0]
    bare = build_prompt(task, item, 2, "CONTEXT")
    told = build_prompt(task, item, 2, "CONTEXT", instruction=APART)
    assert told.context == APART + bare.context
    assert told.continuations == bare.continuations
    glued = build_prompt(task, item, 0, instruction=RENAME)  # lm-eval: nothing in between
    assert glued.context == RENAME + "Question: " + item.question + "\nAnswer:"

    described = replace(task, description="About people.\n\n")
    prompt = build_prompt(described, item, 1, instruction=RENAME)
    assert prompt.context.startswith(RENAME + "\n\nAbout people.\n\nQuestion: ")
    assert build_prompt(described, item, 1, instruction=APART).context == prompt.context

    assert system_prompt(None, "D") == "D" and system_prompt("I", "") == "I"
    assert system_prompt("I", "D") == "I\n\nD"
    assert system_prompt("I\n", "D") == "I\nD" and system_prompt("I", " D") == "I D"


def test_open_prompts_take_the_instruction_first(world_dir):
    from kinject.tasks.loaders import open_task

    task = open_task(
        "new_open", world_dir / "tasks" / "new_open.jsonl", world_dir / "tasks" / "dev_open.jsonl"
    )
    item = task.items[0]
    described = replace(task, description="Answer briefly.")
    for shots in (0, 2):
        for base in (task, described):
            plain = build_open_prompt(base, item, shots, "CONTEXT")
            told = build_open_prompt(base, item, shots, "CONTEXT", instruction=RENAME)
            expected = system_prompt(RENAME, base.description)
            assert told == expected + plain.removeprefix(base.description)
            assert told.startswith(RENAME) and told.endswith(f"Question: {item.question}\nAnswer:")


def test_arms_without_instruction_keep_their_identity_and_with_one_add_its_text(world_dir):
    from kinject.evaluation.identity import file_identity

    corpus_path = str(world_dir / "kb.jsonl")
    assert BaseArm().identity() == {"arm": "base", "k": 0}
    assert OracleArm({}, corpus_path).identity() == {
        "arm": "oracle",
        "corpus": file_identity(corpus_path),
    }
    told = Instruction("rename", RENAME)
    assert BaseArm(told).name == "rename"
    assert BaseArm(told).identity() == {"arm": "rename", "k": 0, "instruction": RENAME}
    oracle = OracleArm({}, corpus_path, told)
    assert oracle.name == "oracle+rename"
    assert oracle.identity() == {
        "arm": "oracle+rename",
        "corpus": file_identity(corpus_path),
        "instruction": RENAME,
    }

    class FakeKB:  # RagArm.identity reads only these
        def identity(self):
            return {"snapshot": "s"}

    class FakeCache:
        kb = FakeKB()
        retriever_name = "dense"

    plain = RagArm(FakeCache(), 2)
    assert plain.identity() == {
        "arm": "rag",
        "k": 2,
        "kb": {"snapshot": "s"},
        "retriever": "dense",
        "template": "{context}",
        "separator": "\n\n",
        "best_last": False,
    }
    told_rag = RagArm(FakeCache(), 2, instruction=told)
    assert told_rag.name == "rag+rename"
    assert told_rag.identity() == {**plain.identity(), "arm": "rag+rename", "instruction": RENAME}


# ---------------------------------------------------------------------------------------------
# lm-evaluation-harness parity: kinject's instruction is lm-eval's --system_instruction


@pytest.fixture(scope="module")
def lm_eval_tasks(tmp_path_factory, world_dir) -> Path:
    """lm-eval tasks: the world's option-style task (no description) and, with the shared
    MMLU data, the real ``mmlu_anatomy`` task (letter style, a description) on local files."""
    pytest.importorskip("lm_eval")
    import lm_eval

    folder = tmp_path_factory.mktemp("lm-eval-tasks")
    (folder / "world_new.yaml").write_text(
        OPTION_TASK_YAML.format(
            name="world_new",
            test=world_dir / "tasks" / "new.jsonl",
            dev=world_dir / "tasks" / "dev.jsonl",
        )
    )
    if MMLU_DIR.exists():
        from kinject.tasks.loaders import load_mmlu_csv

        files = {}
        for split in ("test", "dev"):
            rows = [
                {
                    "question": item.question,
                    "subject": "anatomy",
                    "choices": list(item.choices),
                    "answer": item.answer,
                }
                for item in load_mmlu_csv(MMLU_DIR / split / f"anatomy_{split}.csv")
            ]
            files[split] = folder / f"anatomy_{split}.jsonl"
            files[split].write_text("".join(json.dumps(row) + "\n" for row in rows))
        base = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default"
        (folder / "local_mmlu_anatomy.yaml").write_text(
            f"include: {base / 'mmlu_anatomy.yaml'}\n"
            "task: local_mmlu_anatomy\n"
            "dataset_path: json\n"
            "dataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    test: {files['test']}\n    dev: {files['dev']}\n"
        )
    return folder


def _lm_eval_contexts(folder: Path, name: str, shots: int, instruction: str | None):
    """lm-eval's (context, continuation) requests per document, with ``--system_instruction``."""
    from lm_eval.tasks import TaskManager

    task = TaskManager(include_path=str(folder), include_defaults=False).load([name])["tasks"][name]
    task.set_config(key="num_fewshot", value=shots)
    task.set_fewshot_seed(seed=1234)
    task.build_all_requests(limit=None, rank=0, world_size=1, system_instruction=instruction)
    docs: dict[int, list] = {}
    for instance in task.instances:
        docs.setdefault(instance.doc_id, []).append(instance)
    return [[i.args for i in sorted(docs[d], key=lambda i: i.idx)] for d in sorted(docs)]


def _kinject_task(world_dir: Path, name: str):
    if name == "world_new":
        return jsonl_task(
            "new", world_dir / "tasks" / "new.jsonl", world_dir / "tasks" / "dev.jsonl"
        )
    return mmlu_task(MMLU_DIR / "test" / "anatomy_test.csv")


@pytest.mark.parametrize("instruction", [RENAME, APART, "\nLeading newline."])
@pytest.mark.parametrize("shots", [0, 3])
@pytest.mark.parametrize("name", ["world_new", "local_mmlu_anatomy"])
def test_prompts_equal_lm_eval_with_system_instruction(
    lm_eval_tasks, world_dir, name, shots, instruction
):
    """Without a description (world_new) and with one (MMLU's), 0- and k-shot, instructions
    ending in a word, in a blank line, or starting with a newline."""
    if name.startswith("local_mmlu") and not MMLU_DIR.exists():
        pytest.skip("shared MMLU data not present (set KINJECT_SHARED_DATA)")
    task = _kinject_task(world_dir, name)
    theirs = _lm_eval_contexts(lm_eval_tasks, name, shots, instruction)
    assert len(theirs) == len(task.items)
    for item, requests in zip(task.items, theirs):
        prompt = build_prompt(task, item, shots, instruction=instruction)
        assert requests == [(prompt.context, c) for c in prompt.continuations]
        assert prompt.context.startswith(instruction)


def test_loglikelihoods_with_an_instruction_match_lm_eval_hflm(
    lm_eval_tasks, world_dir, tiny_llama_dir, one_torch_thread
):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from kinject.models.loading import load_causal_lm
    from kinject.scoring.loglikelihood import LoglikelihoodScorer

    names = ["world_new"] + (["local_mmlu_anatomy"] if MMLU_DIR.exists() else [])
    requests = []
    for name in names:
        for shots in (0, 3):
            for doc in _lm_eval_contexts(lm_eval_tasks, name, shots, RENAME)[:4]:
                requests += doc
    reference = HFLM(pretrained=str(tiny_llama_dir), device="cpu", dtype="float32", batch_size=4)
    instances = [
        Instance(request_type="loglikelihood", doc={}, arguments=args, idx=i)
        for i, args in enumerate(requests)
    ]
    expected = [ll for ll, _ in reference.loglikelihood(instances, disable_tqdm=True)]
    model, tokenizer = load_causal_lm(ModelSpec(path=str(tiny_llama_dir), device="cpu"))
    got = [s.logprob for s in LoglikelihoodScorer(model, tokenizer).loglikelihood(requests)]
    assert max(abs(g - e) for g, e in zip(got, expected)) <= 1e-4
    plain = [(context.removeprefix(RENAME), c) for context, c in requests]
    without = LoglikelihoodScorer(model, tokenizer).loglikelihood(plain)
    assert all(abs(a.logprob - b) > 1e-6 for a, b in zip(without, got))  # it changes scores


# ---------------------------------------------------------------------------------------------
# kinject eval: [base, rename] on a tiny model


def kinject(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "400", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "kinject", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_kinject_eval_scores_the_instruction_arm_from_the_prompt_it_opens(
    tmp_path, world_dir, tiny_llama_dir, one_torch_thread
):
    from kinject.evaluation.evaluate import load_task
    from kinject.models.loading import load_causal_lm
    from kinject.scoring.loglikelihood import LoglikelihoodScorer

    tasks = [
        {
            "name": "new",
            "path": str(world_dir / "tasks" / "new.jsonl"),
            "dev": str(world_dir / "tasks" / "dev.jsonl"),
        },
        {
            "name": "updated",
            "path": str(world_dir / "tasks" / "updated.jsonl"),
            "dev": str(world_dir / "tasks" / "dev.jsonl"),
            "description": "About people.\n\n",
        },
    ]
    config = {
        "model": {"path": str(tiny_llama_dir), "device": "cpu"},
        "tasks": tasks,
        "instructions": {"rename": RENAME},
        "arms": ["base", "rename"],
        "shots": [0, 2],
        "bootstrap_resamples": 200,
    }
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    done = kinject("eval", "--config", "eval.yaml", "--out", "run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    assert {r["arm"] for r in records} == {"base", "rename"}
    by = {(r["arm"], r["split"], r["shots"], r["question_id"]): r for r in records}

    model, tokenizer = load_causal_lm(ModelSpec(path=str(tiny_llama_dir), device="cpu"))
    scorer = LoglikelihoodScorer(model, tokenizer)
    saved = EvalConfig.model_validate(yaml.safe_load((run / "config.yaml").read_text()))
    assert saved.instructions == {"rename": RENAME} and saved.arms == ["base", "rename"]
    for spec in saved.tasks:
        task = load_task(spec)
        for shots in (0, 2):
            prompts = [build_prompt(task, i, shots, instruction=RENAME) for i in task.items]
            assert all(p.context.startswith(RENAME) for p in prompts)
            requests = [(p.context, c) for p in prompts for c in p.continuations]
            scores = iter(s.logprob for s in scorer.loglikelihood(requests))
            for item in task.items:
                told = by[("rename", task.name, shots, item.id)]
                plain = by[("base", task.name, shots, item.id)]
                expected = [next(scores) for _ in item.choices]
                # the record is the prompt that starts with the instruction, scored
                assert max(abs(a - b) for a, b in zip(told["loglikelihoods"], expected)) < 1e-4
                assert told["loglikelihoods"] != plain["loglikelihoods"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert {(m["arm"], m["split"], m["shots"]) for m in metrics["cells"]} == {
        (arm, split, shots)
        for arm in ("base", "rename")
        for split in ("new", "updated")
        for shots in (0, 2)
    }
    table = (run / "table.md").read_text()
    assert "| task | shots | base | rename |" in table
    assert "| rename | new | 0 |" in table  # every cell


# ---------------------------------------------------------------------------------------------
# kinject run: instruction arms of the base model and of a fine-tuned one

ARMS = ["base", "rename", "rag", "rag+rename", "ft-reg", "ft-reg+rename", "ft-reg+rag+rename"]


@pytest.fixture(scope="module")
def instruction_experiment(tmp_path_factory) -> tuple[Path, Path]:
    """``(experiment.yaml, run folder)`` of a small grid on examples/quick's world."""
    from kinject.experiments.files import load_experiment
    from kinject.experiments.runner import run_experiment

    folder = tmp_path_factory.mktemp("instruction-experiment")
    world = "${world}"
    spec = {
        "include": os.path.relpath(WORLD_YAML, folder),
        "name": "instruction arms",
        "models": [{"label": "tiny", "path": "${world_model}"}],
        "tasks": [
            {"name": "new", "path": f"{world}/tasks/new.jsonl", "dev": f"{world}/tasks/dev.jsonl"}
        ],
        "validation": {
            "task": {
                "name": "validation",
                "path": f"{world}/tasks/validation.jsonl",
                "dev": f"{world}/tasks/dev.jsonl",
            },
            "rag_sample": 10,
            "finetune_sample": 10,
        },
        "instructions": {"rename": APART},
        "arms": ARMS,
        "rag": {"kb": "${world_kb}", "k": [0, 1, 2]},
        "finetunes": {
            "ft-reg": {
                "data": {"corpus": f"{world}/kb.jsonl", "block_size": 64},
                "learning_rate": [3.0e-3],
                "epochs": 1,
                "batch_size": 4,
            }
        },
        "shots": [0, 1],
        "bootstrap_resamples": 200,
    }
    path = folder / "experiment.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    import torch

    previous = os.environ.get("KINJECT_CACHE_DIR")
    # as conftest's _isolated_cache, which module fixtures run before
    os.environ["KINJECT_CACHE_DIR"] = str(tmp_path_factory.getbasetemp() / "kinject-cache")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_experiment(load_experiment(path), folder / "run", show_progress=False)
    finally:
        torch.set_num_threads(threads)
        if previous is None:
            os.environ.pop("KINJECT_CACHE_DIR", None)
        else:
            os.environ["KINJECT_CACHE_DIR"] = previous
    return path, folder / "run"


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_each_rag_arm_chooses_its_k_on_validation_per_model(instruction_experiment):
    _, run = instruction_experiment
    metrics = _read_json(run / "metrics.json")
    plan = _read_json(run / "plan.json")["runs"]
    assert [(row["label"], row["arms"]) for row in plan] == [
        ("base", ["base", "rename", "rag", "rag+rename"]),
        ("ft-reg", ["base", "rename", "rag+rename"]),
    ]
    chosen = {
        ("base", "rag"): metrics["selected_k"]["base"],
        ("base", "rag+rename"): metrics["selected_k_by_arm"]["base"]["rag+rename"],
        ("ft-reg", "rag+rename"): metrics["selected_k_by_arm"]["ft-reg"]["rag+rename"],
    }
    assert "ft-reg" not in metrics["selected_k"]  # no plain rag arm on the fine-tuned model
    for (model, arm), selected in chosen.items():
        for shots in (0, 1):
            grid = {
                m["k"]: m
                for m in metrics["cells"]
                if (m["model"], m["arm"], m["split"], m["shots"])
                == (model, arm, "validation", shots)
            }
            assert sorted(grid) == [0, 1, 2]
            best = max(grid, key=lambda k: (grid[k]["acc"], -k))  # ties: the smallest K
            assert selected[str(shots)] == best
            assert [k for k in grid if grid[k]["selected"]] == [best]
            (test,) = [
                m
                for m in metrics["cells"]
                if (m["model"], m["arm"], m["split"], m["shots"]) == (model, arm, "new", shots)
            ]
            assert test["k"] == best and test["selected"] is True
    # rag and rag+rename on the same questions: their own grids, their own scores
    records = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    lls = {}
    for r in records:
        if r["split"] == "validation" and r["model"] == "base" and r["k"] == 1:
            lls.setdefault(r["arm"], {})[(r["shots"], r["question_id"])] = r["loglikelihoods"]
    assert lls["rag"].keys() == lls["rag+rename"].keys()
    assert all(lls["rag"][key] != lls["rag+rename"][key] for key in lls["rag"])


def test_instruction_arms_are_their_own_columns_in_metrics_tables_and_tests(
    instruction_experiment,
):
    from kinject.experiments.tabulate import tabulate_experiment

    _, run = instruction_experiment
    metrics = _read_json(run / "metrics.json")
    columns = {m["column"] for m in metrics["cells"] if m["split"] == "new"}
    assert columns == {
        "base",
        "rename",
        "rag",
        "rag+rename",
        "ft-reg",
        "ft-reg+rename",
        "ft-reg+rag+rename",
    }
    table = (run / "table.md").read_text()
    assert (
        "| model | task | shots | base | +RAG | ft-reg | rename | +RAG+rename | ft-reg+rename "
        "| ft-reg+RAG+rename |" in table
    )
    assert (
        "| task | shots | base | +RAG | FT (ft-reg) | FT+RAG (ft-reg) | rename | +RAG+rename "
        "| FT+rename (ft-reg) | FT+RAG+rename (ft-reg) |" in table
    )
    k_grid = table.split("## RAG: accuracy by K on 'validation'")[1].splitlines()
    assert (
        "| K | rag 0-shot | rag 1-shot | rag+rename 0-shot | rag+rename 1-shot "
        "| ft-reg+rag+rename 0-shot | ft-reg+rag+rename 1-shot |" in k_grid
    )
    rows = (run / "tables" / "table2.csv").read_text().splitlines()
    told = [row for row in rows if ",ft-reg+rag+rename," in row]
    (cell,) = [
        m
        for m in metrics["cells"]
        if m["column"] == "ft-reg+rag+rename" and m["split"] == "new" and m["shots"] == 0
    ]
    assert told[0].startswith(f"tiny,new,0,ft-reg+rag+rename,{cell['k']},{cell['n']},")

    # paired McNemar tests: the instruction arm against the closed book, from the records
    records = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    right = {
        (r["model"], r["arm"], r["shots"], r["question_id"]): r["correct"]
        for r in records
        if r["split"] == "new"
    }
    for shots in (0, 1):
        (test,) = [
            c
            for c in metrics["comparisons"]
            if {c["a"], c["b"]} == {"base", "rename"} and c["shots"] == shots
        ]
        a, b = ("base", "base"), ("base", "rename")
        if test["a"] == "rename":
            a, b = b, a
        ids = [q for (model, arm, s, q) in right if (model, arm, s) == (*a, shots)]
        assert test["a_only"] == sum(
            right[(*a, shots, q)] and not right[(*b, shots, q)] for q in ids
        )
        assert test["b_only"] == sum(
            right[(*b, shots, q)] and not right[(*a, shots, q)] for q in ids
        )
    assert any({c["a"], c["b"]} == {"ft-reg", "ft-reg+rename"} for c in metrics["comparisons"])

    before = {name: (run / name).read_bytes() for name in ("metrics.json", "table.md")}
    tabulate_experiment(run)  # `kinject table`: the same from the records alone
    assert {name: (run / name).read_bytes() for name in before} == before


def test_dry_run_counts_the_instruction_arms_cells(instruction_experiment):
    from kinject.experiments.dryrun import dry_run
    from kinject.experiments.files import load_experiment

    path, run = instruction_experiment
    result = dry_run(load_experiment(path))
    assert result.problems == [] and result.unknown == []
    cells = sorted(run.glob("models/*/cells/*.jsonl"))
    # base and rename of both models; 3 rag arms' K grids (K 0-2) and their test cells; 2 shots
    assert result.cells == len(cells) == (4 + 3 * 3 + 3) * 2
    requests = sum(len(json.loads(line)["loglikelihoods"]) for p in cells for line in p.open())
    assert result.requests == requests


def test_report_plots_each_rag_arms_k_grid(instruction_experiment, tmp_path):
    import shutil

    from kinject.experiments.report import write_report

    _, run = instruction_experiment
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    html_path, _ = write_report(copy)
    k_plot = (copy / "report_files" / "fig-k.svg").read_text()
    for label in ("rag 0-shot", "rag+rename 0-shot", "ft-reg+rag+rename 1-shot"):
        assert label in k_plot
    assert "+RAG+rename" in html_path.read_text()


def entry_cell(entry: dict) -> tuple:
    cell = entry["cell"]
    return (cell["model"], cell["arm"], cell["split"], cell["shots"], cell["k"])


def test_export_reproduces_an_instruction_arms_cell_in_lm_eval(instruction_experiment, tmp_path):
    from lm_eval.models.huggingface import HFLM

    from kinject.evaluation.evaluate import load_task
    from kinject.export.lm_eval import export_lm_eval

    pytest.importorskip("lm_eval")
    _, run = instruction_experiment
    out = tmp_path / "export"
    result = export_lm_eval(run, out)
    told = [e for e in result.tasks if "rename" in e["cell"]["arm"]]
    assert {(e["cell"]["model"], e["cell"]["arm"]) for e in told} == {
        ("base", "rename"),
        ("base", "rag+rename"),
        ("ft-reg", "rename"),
        ("ft-reg", "rag+rename"),
    }
    assert all(e["system_instruction"] == APART and e["task_description"] == "" for e in told)
    assert not any("system_instruction" in e for e in result.tasks if e not in told)
    # a cell of the K grid on validation (the tiny model's test cells may have chosen K=0)
    (entry,) = [e for e in told if entry_cell(e) == ("base", "rag+rename", "validation", 1, 2)]
    assert yaml.safe_load((out / entry["yaml"]).read_text())["description"] == APART
    experiment = yaml.safe_load((run / "experiment.yaml").read_text())
    task = load_task(TaskSpec(**experiment["validation"]["task"]))
    docs = [json.loads(line) for line in (out / entry["data"]["test"]).read_text().splitlines()]
    by_id = {item.id: item for item in task.items}
    expected = [
        build_prompt(task, by_id[d["id"]], 1, d["context"] or None, instruction=APART).context
        for d in docs
    ]
    assert len(docs) == 10 and all(d["context"] for d in docs)
    theirs = _lm_eval_contexts(out, entry["name"], 1, None)
    assert [requests[0][0] for requests in theirs] == expected
    # the same with the task's own description and lm-eval's --system_instruction
    plain = out / "plain"
    plain.mkdir()
    config = yaml.safe_load((out / entry["yaml"]).read_text())
    config.update(task="plain_task", description=entry["task_description"])
    (plain / "plain.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    again = _lm_eval_contexts(plain, "plain_task", 1, entry["system_instruction"])
    assert [requests[0][0] for requests in again] == expected
    # and lm-eval's scores give kinject's predictions
    from test_export_lm_eval import assert_same_predictions, run_lm_eval

    rows = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    records = [
        r
        for r in rows
        if (r["model"], r["arm"], r["split"], r["shots"], r["k"]) == entry_cell(entry)
    ]
    hflm = HFLM(pretrained=entry["model"]["path"], device="cpu", dtype="float32", batch_size=8)
    assert_same_predictions(run_lm_eval(hflm, out, entry["name"], 1), records)
