"""Typed config: unknown keys and bad values are one-line errors naming the key and file."""

from __future__ import annotations

import pytest

from kinject.config import EvalConfig, load_config, to_yaml
from kinject.demo import DemoConfig
from kinject.errors import KinjectError


def test_nested_unknown_key_is_named_with_its_path_and_a_suggestion(tmp_path):
    path = tmp_path / "demo.yaml"
    path.write_text("pretrain:\n  stepz: 10\n")
    with pytest.raises(KinjectError) as raised:
        load_config(DemoConfig, path)
    assert str(raised.value) == f"{path}: unknown key 'pretrain.stepz' (did you mean 'steps'?)"


def test_bad_value_names_the_key(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("model: {path: m}\ntasks: [{path: t.jsonl, style: fancy}]\n")
    with pytest.raises(
        KinjectError, match=r"key 'tasks.0.style': Input should be 'letter', 'option' or 'cloze'"
    ):
        load_config(EvalConfig, path)


def test_oracle_without_corpus_is_explained(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("model: {path: m}\ntasks: [{path: t.jsonl}]\narms: [base, oracle]\n")
    with pytest.raises(KinjectError, match="the oracle arm needs 'corpus'"):
        load_config(EvalConfig, path)


def test_not_a_mapping_and_bad_yaml(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(KinjectError, match="expected a mapping"):
        load_config(EvalConfig, path)
    path.write_text("model: [unclosed\n")
    with pytest.raises(KinjectError, match="not valid YAML"):
        load_config(EvalConfig, path)


def test_saved_config_round_trips_and_paths_resolve_against_the_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "model").mkdir()
    path = tmp_path / "sub" / "e.yaml"
    path.write_text(
        "model: {path: model}\ntasks: [{path: t.jsonl}]\narms: [oracle]\ncorpus: kb.jsonl\n"
    )
    config = load_config(EvalConfig, path).with_paths_resolved(path.parent)
    assert config.model.path == str(tmp_path / "sub" / "model")
    assert config.tasks[0].path == str(tmp_path / "sub" / "t.jsonl")
    assert config.corpus == str(tmp_path / "sub" / "kb.jsonl")
    saved = tmp_path / "saved.yaml"
    saved.write_text(to_yaml(config))
    assert load_config(EvalConfig, saved) == config
    hub = tmp_path / "hub.yaml"
    hub.write_text("model: {path: EleutherAI/pythia-70m}\ntasks: [{path: t.jsonl}]\n")
    assert (
        load_config(EvalConfig, hub).with_paths_resolved(tmp_path).model.path
        == "EleutherAI/pythia-70m"
    )


def test_the_demo_experiment_file_is_the_demo_grid():
    """examples/demo/experiment.yaml and `kinject demo` must not drift apart."""
    from pathlib import Path

    from kinject.demo import DemoConfig, demo_experiment, pretrained_experiment
    from kinject.experiments.files import load_experiment

    example = Path(__file__).resolve().parent.parent / "examples" / "demo" / "experiment.yaml"
    from_file = load_experiment(example)
    from_demo = demo_experiment(DemoConfig()).model_copy(update={"finetune_dir": None})
    assert from_file == from_demo
    changed = demo_experiment(DemoConfig(shots=[0])).model_copy(update={"finetune_dir": None})
    assert from_file != changed
    real = load_experiment(example.with_name("smollm2.yaml"))
    assert real == pretrained_experiment(DemoConfig()).model_copy(update={"finetune_dir": None})
    assert pretrained_experiment(DemoConfig(pretrained=None)) is None
