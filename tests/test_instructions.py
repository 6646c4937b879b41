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
        ({"arms": ["rename"], "instructions": {}}, r"arm 'rename': .*'rename' is none"),
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
            r"arm 'ft-reg\+renam': expected base, oracle, rag, <finetune> or <finetune>\+rag "
            r"with <finetune> one of \['ft-reg'\], optionally followed by \+<instruction>",
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
        duplicates: dict = {}

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

OPTION_TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {test}
    dev: {dev}
test_split: test
fewshot_split: dev
fewshot_config:
  sampler: first_n
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
"""


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

    task = TaskManager(include_path=str(folder), include_defaults=False).load([name])["tasks"][
        name
    ]
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
