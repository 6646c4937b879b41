"""An experiment's setup sections beyond the synthetic world: a tiny model pretrained on a
text (``text_model:``), a renamed corpus with its probes (``rename:``), a knowledge base of
corpus files (``knowledge_base:``), each cached, a later one using an earlier one's
placeholder; and ``kinject run --model`` replacing the file's models (skipping what only
they needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kinject.config import TextModelSetup, TextPretrainConfig, TinyModelConfig
from kinject.errors import KinjectError
from kinject.experiments.files import load_experiment
from kinject.models.text_model import corpus_texts, ensure_text_model, split_documents

# A text written for these tests: five households, each with a few plain facts.
HOUSES = {
    "Alder": ("Mira", "the mill", "Tessel", "barley"),
    "Brook": ("Oswin", "the forge", "Calder", "iron"),
    "Corrin": ("Petra", "the dairy", "Lune", "cheese"),
    "Dunmore": ("Silas", "the quay", "Harrow", "herring"),
    "Elvey": ("Wren", "the orchard", "Mossby", "cider"),
}


def story() -> str:
    paragraphs = []
    for house, (head, place, town, goods) in HOUSES.items():
        paragraphs += [
            f"{head} of house {house} keeps {place} at {town}.",
            f"Every autumn {head} sends {goods} from {town} down the river.",
            f"The people of {town} say that {head} {house} is fair in trade.",
        ]
    return "\n\n".join(paragraphs * 3) + "\n"


TINY_SHAPE = {
    "vocab_size": 300,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_layers": 1,
    "num_heads": 2,
}
TINY_PRETRAIN = {
    "steps": 4,
    "batch_size": 2,
    "block_size": 64,
    "warmup_steps": 1,
    "document_chars": 300,
    "bf16": False,
}


def test_documents_are_whole_paragraphs_and_lose_no_text():
    text = story()
    pieces = split_documents(text, 300)
    assert len(pieces) > 5
    assert "\n\n".join(pieces) == text.strip("\n")
    paragraphs = {p for p in text.split("\n\n")}
    for piece in pieces:
        assert all(
            part.strip("\n") in {q.strip("\n") for q in paragraphs} for part in piece.split("\n\n")
        )
        assert len(piece) <= 300 or "\n\n" not in piece  # only a lone long paragraph is longer


def test_text_model_is_pretrained_once_then_reused(tmp_path):
    corpus = tmp_path / "story.txt"
    corpus.write_text(story(), encoding="utf-8")
    setup = TextModelSetup(
        corpus=str(corpus),
        model=TinyModelConfig(**TINY_SHAPE),
        pretrain=TextPretrainConfig(**TINY_PRETRAIN),
    )
    folder, cached = ensure_text_model(setup, show_progress=False)
    assert not cached
    summary = json.loads((folder / "pretrain_summary.json").read_text())
    assert summary["steps"] == 4 and summary["documents"] > 5
    assert not folder.with_name(folder.name + ".partial").exists()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.config.vocab_size == len(tokenizer)
    assert tokenizer("Mira of house Alder").input_ids[0] == tokenizer.bos_token_id
    again, cached = ensure_text_model(setup, show_progress=False)
    assert again == folder and cached
    corpus.write_text(story() + "\nOne more line.\n", encoding="utf-8")  # new text: new model
    other, cached = ensure_text_model(setup, show_progress=False)
    assert other != folder and not cached


def test_text_model_refuses_a_binary_file(tmp_path):
    corpus = tmp_path / "blob.txt"
    corpus.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(KinjectError, match=r"blob\.txt: not UTF-8 text"):
        corpus_texts(str(corpus))


def write_questions(folder: Path) -> tuple[Path, Path]:
    towns = [town for _, _, town, _ in HOUSES.values()]
    rows = []
    for index, (house, (head, _place, town, _goods)) in enumerate(HOUSES.items()):
        choices = [town, *[t for t in towns if t != town][:3]]
        rows.append(
            {
                "id": f"q{index}",
                "question": f"Where does {head} of house {house} live?",
                "choices": choices,
                "answer": 0,
                "doc_ids": [],
            }
        )
    test, validation = folder / "test.jsonl", folder / "validation.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    validation.write_text("".join(json.dumps(r) + "\n" for r in rows[:3]), encoding="utf-8")
    return test, validation


def write_experiment(folder: Path, seed: int) -> Path:
    (folder / "story.txt").write_text(story(), encoding="utf-8")
    corpus = folder / "story.jsonl"
    corpus.write_text(
        "".join(
            json.dumps({"id": f"d{i}", "text": text}) + "\n"
            for i, text in enumerate(story().split("\n\n")[:15])
        ),
        encoding="utf-8",
    )
    write_questions(folder)
    spec = {
        "name": "text model",
        "text_model": {  # a seed of its own: no other test's cached model has this key
            "corpus": "story.txt",
            "model": TINY_SHAPE,
            "pretrain": {**TINY_PRETRAIN, "seed": seed},
        },
        "knowledge_base": {"sources": ["story.jsonl"]},
        "models": [{"label": "story", "path": "${text_model}"}],
        "tasks": [{"name": "towns", "path": "test.jsonl"}],
        "validation": {"task": {"name": "validation", "path": "validation.jsonl"}},
        "arms": ["base", "rag"],
        "rag": {"kb": "${kb}", "k": [0, 1]},
        "bootstrap_resamples": 200,
    }
    path = folder / "experiment.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def kinject(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "300", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "kinject", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def cache() -> Path:
    return Path(os.environ["KINJECT_CACHE_DIR"])


def test_experiment_pretrains_its_model_builds_its_kb_and_reuses_both(tmp_path):
    experiment = write_experiment(tmp_path, seed=11)
    dry = kinject("run", str(experiment), "--dry-run", cwd=tmp_path)
    assert "text_model: not built yet" in dry.stdout, dry.stdout + dry.stderr
    assert "knowledge_base: not built yet" in dry.stdout
    first = kinject("run", str(experiment), "--out", "run", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "pretrained now" in first.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    arms = {cell["arm"] for cell in metrics["cells"] if cell["split"] == "towns"}
    assert arms == {"base", "rag"}
    saved = yaml.safe_load((tmp_path / "run" / "experiment.yaml").read_text())
    model_path = Path(saved["models"][0]["path"])
    assert model_path.parent == cache() / "base-models" and (model_path / "config.json").exists()
    assert Path(saved["rag"]["kb"]).parent == cache() / "kbs"
    second = kinject("run", str(experiment), "--out", "run2", cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "(cached)" in second.stdout and "pretrained now" not in second.stdout
    dry = kinject("run", str(experiment), "--dry-run", cwd=tmp_path)
    assert "${text_model}" in dry.stdout and str(model_path) in dry.stdout


def test_run_with_model_replaces_the_models_and_skips_the_text_model(tmp_path):
    import shutil

    experiment = write_experiment(tmp_path, seed=12)
    other = TextModelSetup(
        corpus=str(tmp_path / "story.txt"),
        model=TinyModelConfig(**TINY_SHAPE),
        pretrain=TextPretrainConfig(**{**TINY_PRETRAIN, "steps": 2}),
    )
    built, _ = ensure_text_model(other, show_progress=False)
    shutil.copytree(built, tmp_path / "my.model")
    before = sorted(p.name for p in (cache() / "base-models").iterdir())
    done = kinject("run", str(experiment), "--model", "my.model", "--out", "run", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in (cache() / "base-models").iterdir()) == before
    assert "text model:" not in done.stdout
    saved = yaml.safe_load((tmp_path / "run" / "experiment.yaml").read_text())
    assert saved["models"] == [
        {**saved["models"][0], "label": "my-model", "path": str(tmp_path / "my.model")}
    ]
    refused = kinject("run", str(experiment), "--dtype", "bfloat16", cwd=tmp_path)
    assert refused.returncode != 0 and "--dtype goes with --model" in refused.stderr


def test_a_setup_section_cannot_use_a_later_sections_placeholder(tmp_path):
    experiment = write_experiment(tmp_path, seed=13)
    spec = yaml.safe_load(experiment.read_text())
    spec["text_model"]["corpus"] = "${kb}/story.txt"
    experiment.write_text(yaml.safe_dump(spec), encoding="utf-8")
    from kinject.experiments.setup import resolve_setup

    with pytest.raises(KinjectError, match=r"'text_model:' uses \$\{kb\}, which no earlier"):
        resolve_setup(load_experiment(experiment), show_progress=False)


def test_rename_section_feeds_the_knowledge_base_and_the_tasks(tmp_path):
    from kinject.experiments.setup import cached_setup, resolve_setup

    (tmp_path / "story.txt").write_text(story(), encoding="utf-8")
    probes = {
        "entities": {
            "Mira": [
                {
                    "quote": "{name} of house Alder keeps",
                    "answer": "the mill",
                    "distractors": ["the forge", "the quay"],
                },
            ]
        }
    }
    (tmp_path / "probes.yaml").write_text(yaml.safe_dump(probes), encoding="utf-8")
    spec = {
        "rename": {"corpus": "story.txt", "map": {"Mira": "Zoe"}, "templates": "probes.yaml"},
        "knowledge_base": {"sources": ["${rename}/renamed.jsonl"]},
        "models": [{"label": "m", "path": "m"}],
        "tasks": [{"name": "zoe", "path": "${rename}/quote_new.jsonl", "style": "cloze"}],
        "arms": ["base", "rag"],
        "rag": {"kb": "${kb}"},
    }
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text(yaml.safe_dump(spec), encoding="utf-8")
    config = load_experiment(experiment)
    _, built, missing, failed = cached_setup(config)
    assert built == {} and missing == ["rename", "knowledge_base"] and failed == {}
    resolved = resolve_setup(config, show_progress=False)
    folder = Path(resolved.tasks[0].path).parent
    assert folder.parent == cache() / "rename" and (folder / "probes.json").exists()
    assert json.loads((folder / "quote_new.jsonl").read_text())["question"] == (
        "Zoe of house Alder keeps"
    )
    from kinject.kb.store import KnowledgeBase

    kb = KnowledgeBase.open(resolved.rag.kb)
    assert Path(resolved.rag.kb).parent == cache() / "kbs"
    assert any("Zoe of house Alder" in chunk.text for chunk in kb.chunks)
    assert not any("Mira" in chunk.text for chunk in kb.chunks)
    again, built, missing, failed = cached_setup(config)  # now both are found, nothing is built
    assert missing == [] and failed == {} and again == resolved


def test_the_rename_example_parses_and_skips_its_text_model_for_another_model():
    from kinject.experiments.files import with_model
    from kinject.experiments.setup import used_sections

    example = Path(__file__).resolve().parent.parent / "examples" / "rename" / "experiment.yaml"
    config = load_experiment(example)
    assert used_sections(config) == ["rename", "text_model", "knowledge_base"]
    assert config.instructions == {"rename": "In this text, Romeo is called Bob.\n\n"}
    assert {"rename", "rag+rename", "ft-full+rename"} <= set(config.arms)
    assert Path(config.rename.templates).parent == example.parent
    other = with_model(config, "mistralai/Mistral-7B-v0.1", "bfloat16")
    assert [(m.label, m.path, m.dtype) for m in other.models] == [
        ("Mistral-7B-v0-1", "mistralai/Mistral-7B-v0.1", "bfloat16")
    ]
    assert used_sections(other) == ["rename", "knowledge_base"]
