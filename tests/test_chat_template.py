"""``scoring.chat_template`` through ``kinject eval``: prompts rendered with the model's chat
template (lm-eval's ``--apply_chat_template``), cells keyed apart from plain ones, the lm-eval
export's command asking for the same, and a clear refusal for a model without a template.

The byte-for-byte comparison with lm-eval's own chat rendering, on a real chat model, is in
``test_smollm2.py``; here a tiny Llama is given a ChatML template so that every path runs in
seconds.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import tiny_llama
from kinject.cli import app

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory, bpe_tokenizer) -> Path:
    folder = tmp_path_factory.mktemp("tiny-chat-llama")
    tiny_llama(bpe_tokenizer, seed=3).save_pretrained(folder)
    tokenizer = copy.deepcopy(bpe_tokenizer)  # the session's tokenizer stays template-free
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(folder)
    return folder


def _questions(folder: Path) -> tuple[Path, Path]:
    rows = [
        {
            "id": f"q{i}",
            "question": f"Where does person {i} live?",
            "choices": ["Oslo", "Lima", "Pune"],
            "answer": i % 3,
        }
        for i in range(4)
    ]
    dev = [
        {
            "id": "d0",
            "question": "Where is Bergen?",
            "choices": ["Norway", "Peru", "India"],
            "answer": 0,
        }
    ]
    test, examples = folder / "test.jsonl", folder / "dev.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples.write_text("".join(json.dumps(r) + "\n" for r in dev))
    return test, examples


def _config(folder: Path, model: Path, chat: bool, multiturn: bool = True) -> Path:
    test, dev = _questions(folder)
    scoring = {"chat_template": chat, "fewshot_as_multiturn": multiturn} if chat else {}
    config = {
        "model": {"path": str(model), "device": "cpu"},
        "tasks": [
            {"name": "where", "path": str(test), "dev": str(dev), "description": "Places.\n\n"}
        ],
        "arms": ["base"],
        "shots": [0, 1],
        "scoring": scoring,
        "bootstrap_resamples": 100,
    }
    path = folder / ("chat.yaml" if chat else "plain.yaml")
    path.write_text(json.dumps(config))
    return path


def _cells(run: Path) -> dict[str, list[dict]]:
    return {
        path.name: [json.loads(line) for line in path.read_text().splitlines()]
        for path in sorted((run / "cells").glob("*.jsonl"))
    }


def test_eval_scores_chat_rendered_prompts_in_cells_of_their_own(tmp_path, chat_model_dir):
    from kinject.config import ModelSpec
    from kinject.models.loading import load_causal_lm
    from kinject.scoring.loglikelihood import LoglikelihoodScorer
    from kinject.tasks.loaders import jsonl_task
    from kinject.tasks.prompts import ChatFormat, build_prompt

    runner = CliRunner()
    run = tmp_path / "run"
    for chat in (False, True):
        config = _config(tmp_path, chat_model_dir, chat)
        result = runner.invoke(app, ["eval", "--config", str(config), "--out", str(run)])
        assert result.exit_code == 0, result.output
    cells = _cells(run)
    assert len(cells) == 4  # 0- and 1-shot, plain and chat: the chat cells did not reuse plain
    saved = (run / "config.yaml").read_text()
    assert "chat_template: true" in saved and "fewshot_as_multiturn: true" in saved

    model, tokenizer = load_causal_lm(ModelSpec(path=str(chat_model_dir), device="cpu"))
    task = jsonl_task("where", tmp_path / "test.jsonl", tmp_path / "dev.jsonl")
    task = replace(task, description="Places.\n\n")
    scorer = LoglikelihoodScorer(model, tokenizer)
    chat = ChatFormat(tokenizer)
    by_shots: dict[tuple[bool, int], list[list[float]]] = {}
    for records in cells.values():
        prompts = [build_prompt(task, item, records[0]["shots"], chat=chat) for item in task.items]
        requests = [(p.context, c) for p in prompts for c in p.continuations]
        expected = [s.logprob for s in scorer.loglikelihood(requests)]
        got = [ll for r in records for ll in r["loglikelihoods"]]
        is_chat = got == pytest.approx(expected, abs=1e-5)
        by_shots[(is_chat, records[0]["shots"])] = got
    assert set(by_shots) == {(False, 0), (False, 1), (True, 0), (True, 1)}

    one_shot = build_prompt(task, task.items[0], 1, chat=chat)
    assert one_shot.context == (
        "<|im_start|>system\nPlaces.\n\n<|im_end|>\n"
        "<|im_start|>user\nQuestion: Where is Bergen?\nAnswer:<|im_end|>\n"
        "<|im_start|>assistant\nNorway<|im_end|>\n"
        "<|im_start|>user\nQuestion: Where does person 0 live?\nAnswer:<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert one_shot.continuations == ("Oslo", "Lima", "Pune")  # no target delimiter
    single = build_prompt(task, task.items[0], 1, chat=ChatFormat(tokenizer, multiturn=False))
    assert single.context.count("<|im_start|>user") == 1
    assert "Answer: Norway\n\nQuestion: Where does person 0 live?" in single.context

    exported = tmp_path / "export"
    result = runner.invoke(app, ["export", "lm-eval", str(run), "--out", str(exported)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((exported / "manifest.json").read_text())
    commands = [c for t in manifest["tasks"] for c in t["commands"].values()]
    # the run's records are its last config's cells: both with the chat template
    assert len(commands) == 2 and all("--apply_chat_template" in c for c in commands)


def test_a_chat_template_on_a_model_without_one_is_refused_before_any_file(
    tmp_path, tiny_llama_dir
):
    config = _config(tmp_path, tiny_llama_dir, chat=True)
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["eval", "--config", str(config), "--out", str(run)])
    assert result.exit_code == 2, result.output
    assert "chat_template is on, but the tokenizer" in result.output
    assert "has no chat template" in result.output
    assert not run.exists() or not any(run.iterdir())
