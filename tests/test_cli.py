"""The command line as a user runs it: real subprocesses, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

COMMANDS = [[], ["demo"], ["world", "build"], ["eval"], ["table"], ["run"], ["report"], ["compare"]]


def kinject(*args: str, cwd: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "kinject", *args],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "top")
def test_every_command_has_help_with_an_example(tmp_path, command):
    result = kinject(*command, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    if command:
        assert "Example" in result.stdout


def _command_paths(group, prefix=()):
    for name, command in sorted(group.commands.items()):
        if hasattr(command, "commands"):
            yield from _command_paths(command, (*prefix, name))
        else:
            yield (*prefix, name)


def test_every_command_answers_dash_h_with_an_example_and_the_version_prints():
    import typer.main
    from typer.testing import CliRunner

    from kinject import __version__
    from kinject.cli import app

    paths = list(_command_paths(typer.main.get_command(app)))
    assert ("probes", "rename") in paths and ("kb", "build") in paths and len(paths) >= 20
    runner = CliRunner()
    for path in [(), *paths]:
        result = runner.invoke(app, [*path, "-h"], terminal_width=100)
        assert result.exit_code == 0, (path, result.output)
        assert "Example" in result.output, f"'kinject {' '.join(path)} -h' shows no example"
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.output.startswith(f"kinject {__version__} (")


def test_help_does_not_import_torch(tmp_path):
    code = "import sys; from kinject.cli import app; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert result.stdout.strip() == "False"


def test_unknown_config_key_is_one_clear_line(tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text("modle: {path: x}\ntasks: [{path: t.jsonl}]\n")
    result = kinject("eval", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {config}: unknown key 'modle' (did you mean 'model'?)"
    ]


def test_missing_config_and_bad_task_file_are_one_line_errors(tmp_path):
    result = kinject("eval", "--config", "nope.yaml", cwd=tmp_path)
    assert (
        result.returncode == 2
        and result.stderr.strip() == "error: nope.yaml: config file not found"
    )
    (tmp_path / "t.jsonl").write_text(
        '{"id": "a", "question": "q", "choices": ["x"], "answer": 0}\n'
    )
    (tmp_path / "eval.yaml").write_text("model: {path: gpt2}\ntasks: [{path: t.jsonl}]\n")
    result = kinject("eval", "--config", "eval.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "t.jsonl, line 1, field 'choices': needs at least two choices" in result.stderr


def test_world_build_writes_the_world(tmp_path):
    result = kinject("world", "build", "--out", "w", "--seed", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for name in (
        "kb.jsonl",
        "paraphrases.jsonl",
        "people.jsonl",
        "tasks/new.jsonl",
        "tasks/dev.jsonl",
    ):
        assert (tmp_path / "w" / name).exists()
    assert "seed: 3" in (tmp_path / "w" / "world.yaml").read_text()


def test_eval_command_on_a_local_model_and_table_rebuild(tmp_path, tiny_gpt2_dir):
    kinject("world", "build", "--out", "w", cwd=tmp_path)
    (tmp_path / "eval.yaml").write_text(
        f"model: {{path: {tiny_gpt2_dir}}}\n"
        "tasks:\n  - {path: w/tasks/updated.jsonl, dev: w/tasks/dev.jsonl}\n"
        "arms: [base, oracle]\ncorpus: w/kb.jsonl\nshots: [0, 1]\n"
    )
    result = kinject("eval", "--config", "eval.yaml", "--out", "run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "updated" in result.stdout and "run folder: run" in result.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["cells"]
    assert {(m["arm"], m["shots"]) for m in metrics} == {
        ("base", 0),
        ("base", 1),
        ("oracle", 0),
        ("oracle", 1),
    }
    (tmp_path / "run" / "table.md").unlink()
    result = kinject("table", "run", cwd=tmp_path)
    assert result.returncode == 0 and (tmp_path / "run" / "table.md").exists()


# (model, arm) of a demo's base model and its text fine-tunings, closed book and with rag
TEXT_COLUMNS = (
    ("base", "base"),
    ("base", "oracle"),
    ("base", "rag"),
    ("ft-reg", "base"),
    ("ft-reg", "rag"),
    ("ft-par", "base"),
    ("ft-par", "rag"),
)


def test_quick_demo_end_to_end_and_second_run_uses_the_cache(tmp_path):
    env = {"KINJECT_CACHE_DIR": str(tmp_path / "cache"), "COLUMNS": "400"}
    # the demo's path raises no deprecation, and prints no warning, of kinject's or a library's
    strict = {**env, "PYTHONWARNINGS": "error::DeprecationWarning,error::FutureWarning"}
    first = kinject("demo", "--quick", "--out", "run1", cwd=tmp_path, env_extra=strict)
    assert first.returncode == 0, first.stderr
    said = (first.stdout + first.stderr).lower()
    assert "warn" not in said and "deprecat" not in said, first.stderr
    assert "pretrained now" in first.stdout
    for line in ("closed-book accuracy on known >= 0.80", "oracle-context accuracy on new >= 0.80"):
        assert f"tiny: {line}" in first.stdout
    assert not (tmp_path / "run1" / "smollm2").exists()  # --quick: the tiny model alone
    run = tmp_path / "run1"
    for name in ("records.jsonl", "metrics.json", "costs.json", "table.md", "demo.yaml"):
        assert (run / name).exists(), name
    assert (run / "checks.json").exists() and (run / "tables" / "table2.csv").exists()
    seeded = [f"{name}.seed-{seed}" for name in ("ft-reg", "ft-par", "sft") for seed in (0, 1, 2)]
    for model in ("base", *seeded):  # each fine-tuning trained with three seeds
        for name in ("config.yaml", "env.json", "records.jsonl", "metrics.json"):
            assert (run / "models" / model / name).exists(), (model, name)
    summary = json.loads((run / "metrics.json").read_text())
    columns = {(m["model"], m["arm"]) for m in summary["cells"]}
    assert columns == {*TEXT_COLUMNS, ("sft", "base")}
    (sweep,) = summary["sweeps"]
    assert [p["value"] for p in sweep["points"]] == [0, 2]
    assert [p["same_as"] for p in sweep["points"]] == ["ft-reg", "ft-par"]  # not trained again
    assert {m["n_seeds"] for m in summary["cells"] if m["model"] != "base"} == {3}
    assert {m["split"] for m in summary["cells"] if m.get("open")} == {"new_open"}
    table = (run / "table.md").read_text()
    assert "gain on new" in table and "Sweep 'paraphrases'" in table
    assert "ft-par+RAG" in table and "Open questions" in table and "## Costs" in table
    (run / "table.md").unlink()
    rebuilt = kinject("table", "run1", cwd=tmp_path, env_extra=env)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert (run / "table.md").read_text() == table
    models = list((tmp_path / "cache" / "base-models").glob("tiny-llama-*"))
    assert len(models) == 1 and (models[0] / "config.json").exists()
    assert not [m for m in models if not m.name.endswith(tuple("0123456789abcdef"))]

    second = kinject("demo", "--quick", "--out", "run2", cwd=tmp_path, env_extra=env)
    assert second.returncode == 0, second.stderr
    assert "(cached)" in second.stdout and "trained now" not in second.stdout
    # The same figures: metrics.json holds no timing (costs.json does).
    assert (run / "metrics.json").read_text() == (tmp_path / "run2" / "metrics.json").read_text()


def test_quick_demo_runs_a_pretrained_model_beside_the_tiny_one(tmp_path, tiny_llama_dir):
    """The demo's real-model experiment (SmolLM2 by default; here a tiny random Llama
    folder, which knows a few of the built-in facts by chance): its checked facts, a
    knowledge base of their documents, LoRA FT-reg and FT-par with every seed, in its own
    folder of the run, with its tables printed and its checks beside the tiny model's."""
    env = {"KINJECT_CACHE_DIR": str(tmp_path / "cache"), "COLUMNS": "400"}
    config = tmp_path / "demo.yaml"
    config.write_text(
        f"pretrained:\n  model: {tiny_llama_dir}\n  label: rand\n  n_new: 3\n"
        "  epochs: 1\n  rag_k: [1]\n  validation_sample: 10\n",
        encoding="utf-8",
    )
    result = kinject(
        "demo", "--quick", "--config", str(config), "--out", "run", cwd=tmp_path, env_extra=env
    )
    assert result.returncode == 0, result.stderr
    run = tmp_path / "run" / "rand"
    summary = json.loads((run / "metrics.json").read_text())
    cells = {(m["model"], m["arm"], m["split"]) for m in summary["cells"]}
    for model, arm in TEXT_COLUMNS:
        for split in ("known", "updated", "new"):
            assert (model, arm, split) in cells, (model, arm, split)
    assert {m["n_seeds"] for m in summary["cells"] if m["model"] != "base"} == {3}
    facts = json.loads(next((tmp_path / "cache" / "facts").glob("facts-*/facts.json")).read_text())
    known = next(
        m
        for m in summary["cells"]
        if (m["model"], m["arm"], m["split"]) == ("base", "base", "known")
    )
    assert known["n"] == facts["counts"]["known"] and known["acc"] == 1.0  # known: by construction
    assert "change on known" in (run / "table.md").read_text()
    said = json.loads((tmp_path / "run" / "checks.json").read_text())["checks"]
    assert {c["check"].split(":")[0] for c in said} == {"tiny", "rand"}
    assert "rand: " in result.stdout and (tmp_path / "run" / "metrics.json").exists()


def test_demo_with_a_missing_real_model_fails_before_any_work(tmp_path):
    config = tmp_path / "demo.yaml"
    config.write_text(f"pretrained: {{model: {tmp_path / 'gone.gguf'}}}\n", encoding="utf-8")
    env = {"KINJECT_CACHE_DIR": str(tmp_path / "cache")}
    result = kinject("demo", "--config", str(config), "--out", "run", cwd=tmp_path, env_extra=env)
    assert result.returncode == 2
    assert "gone.gguf' does not exist" in result.stderr and "pretrained: null" in result.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()
    for setting, said in [
        ("{n_new: 9}", "pretrained.n_new is 9, but the world has 8 new people"),
        ("{label: models, n_new: 8}", "pretrained.label 'models' is taken"),
    ]:
        config.write_text(f"world: {{n_new: 8}}\npretrained: {setting}\n", encoding="utf-8")
        result = kinject("demo", "--config", str(config), "--out", "run", cwd=tmp_path)
        assert result.returncode == 2 and said in result.stderr, result.stderr
        assert str(config) in result.stderr and not (tmp_path / "run").exists()


def test_two_demos_at_once_share_the_cache_safely(tmp_path):
    # Wide lines: rich would wrap "(pretrained now)" after a long cache path.
    env = {**os.environ, "KINJECT_CACHE_DIR": str(tmp_path / "cache"), "COLUMNS": "400"}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "kinject", "demo", "--quick", "--out", f"run{i}"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    base_lines = [
        next(line for line in out.splitlines() if line.startswith("base model:"))
        for out, _ in outputs
    ]
    said = sorted("trained" if "(pretrained now)" in line else "cached" for line in base_lines)
    assert said == ["cached", "trained"], base_lines
    folders = (tmp_path / "cache" / "finetuned").iterdir()
    finetuned = sorted(p.name.rsplit("-", 1)[0] for p in folders if p.is_dir())
    # Each trained once per seed; the curve's points 0 and 2 are FT-reg and FT-par here.
    assert finetuned == sorted(["ft-par", "ft-reg", "sft"] * 3)
    assert len(list((tmp_path / "cache" / "worlds").glob("world-*"))) == 1
