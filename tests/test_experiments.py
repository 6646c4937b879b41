"""`kinject run`, `kinject table` and `kinject compare`: experiments from one YAML file,
resumed after a kill, rerun cell by cell after a change, rebuilt from their records alone.

Real runs on the synthetic world of examples/quick (the session's `quick_experiment_run`,
or smaller grids written here that include its world.yaml, so the cached base model is
shared)."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from kinject.config import FinetuneConfig, load_config
from kinject.errors import KinjectError
from kinject.experiments.files import load_experiment

REPO = Path(__file__).resolve().parent.parent
WORLD_YAML = REPO / "examples" / "quick" / "world.yaml"


# ---------------------------------------------------------------------------------------------
# helpers


def kinject_env(**extra: str) -> dict:
    """The environment of a `kinject` subprocess: this session's cache, one torch thread."""
    return {
        **os.environ,
        "KINJECT_CACHE_DIR": os.environ["KINJECT_CACHE_DIR"],
        "COLUMNS": "400",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        **extra,
    }


def kinject(
    *args: str, cwd: Path, env: dict | None = None, python_flags=()
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *python_flags, "-m", "kinject", *args],
        check=False,
        cwd=cwd,
        env=env or kinject_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def write_small_experiment(
    path: Path,
    arms=("base", "ft-reg"),
    tasks=("new",),
    shots=(0,),
    k=(0, 1),
    name="small grid",
) -> Path:
    """A grid smaller than examples/quick: its world (included by a relative path), one
    fine-tuning recipe, a few cells."""
    world = "${world}"
    spec = {
        "include": os.path.relpath(WORLD_YAML, path.parent),
        "name": name,
        "models": [{"label": "tiny", "path": "${world_model}"}],
        "tasks": [
            {"name": task, "path": f"{world}/tasks/{task}.jsonl", "dev": f"{world}/tasks/dev.jsonl"}
            for task in tasks
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
        "arms": list(arms),
        "rag": {"kb": "${world_kb}", "k": list(k)},
        "finetunes": {
            "ft-reg": {
                "data": {"corpus": f"{world}/kb.jsonl", "block_size": 64},
                "learning_rate": [3.0e-3],
                "epochs": 1,
                "batch_size": 4,
            }
        },
        "shots": list(shots),
        "bootstrap_resamples": 200,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def run_in_process(experiment: Path, run_dir: Path):
    from kinject.experiments.runner import run_experiment

    return run_experiment(load_experiment(experiment), run_dir, show_progress=False)


def stats(paths) -> dict[str, tuple[int, int]]:
    """``{path: (st_mtime_ns, st_ino)}``: an atomic rewrite changes both."""
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_ino) for p in paths}


def cell_files(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("models/*/cells/*.jsonl")) + sorted(
        run_dir.glob("sweeps/*/cells/*.jsonl")
    )


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def read_records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "records.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def cell_key(cell: dict) -> tuple:
    return (cell["model"], cell["arm"], cell["split"], cell["shots"], cell["k"])


def main_cells(metrics: dict) -> list[dict]:
    """The cells the tables show: test tasks, rag only at its chosen K."""
    return [
        m
        for m in metrics["cells"]
        if m["split"] != metrics["validation_task"] and m.get("selected") is not False
    ]


def exact_mcnemar(a_only: int, b_only: int) -> float:
    """Two-sided exact binomial test on the discordant pairs, written out independently."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(a_only, b_only) + 1))
    return min(1.0, 2 * tail / 2**n)


def markdown_section(text: str, heading_start: str) -> list[str]:
    """The lines of the table.md section whose heading starts with ``heading_start``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading_start))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start + 1 : end]


def markdown_rows(section: list[str]) -> list[list[str]]:
    """The rows (header first) of the first markdown table in a section, separator dropped."""
    rows = [line for line in section if line.startswith("|")]
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    return [row for row in cells if not all(set(c) <= set("-: ") for c in row)]


# ---------------------------------------------------------------------------------------------
# 1. a killed run resumes to the same results


def _kill_when(process: subprocess.Popen, ready, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            pytest.fail(
                f"the run ended (rc {process.returncode}) before it could be killed:\n"
                + log.read_text(errors="replace")[-3000:]
            )
        assert time.monotonic() < deadline, "the run never reached the point to kill it at"
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL, "the run was not killed mid-way"


def test_killed_run_resumes_to_the_results_of_an_uninterrupted_run(tmp_path, one_torch_thread):
    experiment = write_small_experiment(
        tmp_path / "exp" / "small.yaml", arms=("base", "rag", "ft-reg"), tasks=("new", "known")
    )
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "kinject", "run", str(experiment), "--out", str(run_dir)]
    log = tmp_path / "stderr.log"

    # kill 1: once the first cell is stored (between cells: no write in flight)
    with open(log, "wb") as stderr:
        first = subprocess.Popen(
            command, cwd=tmp_path, env=kinject_env(), stdout=subprocess.DEVNULL, stderr=stderr
        )
        _kill_when(first, lambda: bool(cell_files(run_dir)), log)
    after_first_kill = stats(cell_files(run_dir))
    assert 1 <= len(after_first_kill) < 8  # 2 K on validation + 2 arms x 2 tasks + ft-reg x 2
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "plan.json").exists()

    # kill 2: once the fine-tuning has begun (its guard report written, training next)
    with open(log, "ab") as stderr:
        second = subprocess.Popen(
            command, cwd=tmp_path, env=kinject_env(), stdout=subprocess.DEVNULL, stderr=stderr
        )
        _kill_when(second, lambda: bool(list(run_dir.glob("finetuned/*/contamination.json"))), log)
    before = stats(cell_files(run_dir))
    assert set(after_first_kill) <= set(before)
    assert not (run_dir / "plan.json").exists()

    # to the end
    result = subprocess.run(
        command,
        check=False,
        cwd=tmp_path,
        env=kinject_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    after = stats(cell_files(run_dir))
    assert {path: after[path] for path in before} == before  # finished cells never rescored
    assert len(after) == 8
    assert list(run_dir.rglob("*.tmp")) == []
    finetunings = sorted(p.name for p in (run_dir / "finetuned").iterdir() if p.is_dir())
    assert len(finetunings) == 1, finetunings  # the killed fine-tuning resumed in its folder
    assert (run_dir / "finetuned" / finetunings[0] / "selection.json").exists()
    assert not list(run_dir.glob("finetuned/*/candidates/*/checkpoint"))

    # the same experiment, never interrupted (its own fine-tuning, the same seeds)
    reference = tmp_path / "reference"
    run_in_process(experiment, reference)
    resumed, uninterrupted = (
        read_json(run_dir / "metrics.json"),
        read_json(reference / "metrics.json"),
    )

    def figures(metrics):
        return {
            cell_key(m): (m["n"], m["acc"], m["acc_ci"], m.get("acc_norm"))
            for m in metrics["cells"]
        }

    assert len(figures(resumed)) == 8  # K 0 and 1 on validation + 3 columns x 2 tasks
    assert figures(resumed) == figures(uninterrupted)
    assert resumed == uninterrupted  # comparisons, gains, K chosen, fine-tuning curves too
    assert (run_dir / "records.jsonl").read_bytes() == (reference / "records.jsonl").read_bytes()


# ---------------------------------------------------------------------------------------------
# 2. a changed axis scores only the cells it touches


def test_adding_shots_scores_only_the_new_cells_and_keeps_the_finetuning(
    tmp_path, one_torch_thread
):
    experiment = tmp_path / "small.yaml"
    run_dir = tmp_path / "run"
    run_in_process(write_small_experiment(experiment, shots=(0,)), run_dir)
    first_metrics = read_json(run_dir / "metrics.json")
    cells_before = stats(cell_files(run_dir) + sorted(run_dir.glob("models/*/cells/*.cost.json")))
    assert len(cell_files(run_dir)) == 2  # base and ft-reg on 'new', 0-shot
    training = sorted(run_dir.glob("finetuned/*/selection.json")) + sorted(
        run_dir.glob("finetuned/*/candidates/*/done.json")
    )
    training_before = stats(training)
    assert len(training_before) == 2

    run_in_process(write_small_experiment(experiment, shots=(0, 1)), run_dir)
    cells_after = stats(cell_files(run_dir) + sorted(run_dir.glob("models/*/cells/*.cost.json")))
    assert {path: cells_after[path] for path in cells_before} == cells_before
    new = sorted(Path(path).name for path in set(cells_after) - set(cells_before))
    assert all("__1shot__" in name for name in new), new
    assert len([name for name in new if name.endswith(".jsonl")]) == 2, new
    assert stats(training) == training_before  # not trained again
    assert len(list(run_dir.glob("finetuned/*/selection.json"))) == 1

    metrics = read_json(run_dir / "metrics.json")
    by_key = {cell_key(m): m for m in metrics["cells"]}
    for cell in first_metrics["cells"]:  # the 0-shot figures are the same cells' figures
        assert by_key[cell_key(cell)]["acc"] == cell["acc"]
        assert by_key[cell_key(cell)]["acc_ci"] == cell["acc_ci"]
    assert sorted((m["model"], m["shots"]) for m in metrics["cells"]) == [
        ("base", 0),
        ("base", 1),
        ("ft-reg", 0),
        ("ft-reg", 1),
    ]


def test_adding_a_task_keeps_the_finetuning_and_guards_the_new_task(tmp_path, one_torch_thread):
    experiment = tmp_path / "small.yaml"
    run_dir = tmp_path / "run"
    run_in_process(write_small_experiment(experiment, tasks=("new",)), run_dir)
    (folder,) = [p.parent for p in run_dir.glob("finetuned/*/selection.json")]
    trained = stats(sorted(folder.rglob("*.safetensors")) + [folder / "selection.json"])
    cells = stats(cell_files(run_dir))
    checked = read_json(folder / "contamination.json")["questions_checked"]
    run_in_process(write_small_experiment(experiment, tasks=("new", "known")), run_dir)
    assert [p.parent for p in run_dir.glob("finetuned/*/selection.json")] == [folder]
    assert stats(sorted(folder.rglob("*.safetensors")) + [folder / "selection.json"]) == trained
    # Only the new task's cells are scored; the guard checked its questions too.
    assert {p: s for p, s in stats(cell_files(run_dir)).items() if p in cells} == cells
    assert len(cell_files(run_dir)) > len(cells)
    guarded = load_config(FinetuneConfig, folder / "config.yaml").contamination.tasks
    assert [task.name for task in guarded] == ["new", "known"]
    known = len(Path(guarded[1].path).read_text(encoding="utf-8").splitlines())
    assert read_json(folder / "contamination.json")["questions_checked"] == checked + known


# ---------------------------------------------------------------------------------------------
# 3. include:


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_include_merges_mappings_replaces_lists_and_resolves_paths_per_file(tmp_path):
    base, exp = tmp_path / "base", tmp_path / "exp"
    (base / "local-model").mkdir(parents=True)
    write(base / "common.yaml", "seed: 7\nscoring: {batch_size: 8, max_new_tokens: 5}\n")
    write(
        base / "base.yaml",
        """
include: common.yaml
name: the base
models:
  - {label: hub, path: org/some-model}
  - {label: local, path: local-model, adapter: adapters/a}
tasks: [{name: t1, path: data/t1.jsonl}, {name: t2, path: data/t2.jsonl}]
validation: {task: {name: v, path: data/v.jsonl, dev: data/dev.jsonl}, rag_sample: 5}
arms: [base, rag, ft]
corpus: corpus.jsonl
rag: {kb: kb, k: [0, 1, 2]}
finetunes:
  ft: {data: {corpus: corpus.jsonl, block_size: 64}, learning_rate: [1.0e-3], epochs: 3}
shots: [0, 1]
scoring: {batch_size: 16}
""",
    )
    experiment = write(
        exp / "experiment.yaml",
        """
include: ../base/base.yaml
name: mine
tasks: [{name: t3, path: t3.jsonl}]
rag: {k: [4]}
finetunes:
  ft: {epochs: 1, data: {paraphrases: para.jsonl, n_paraphrases: 2}}
scoring: {bf16_autocast: true}
shots: [5]
""",
    )
    config = load_experiment(experiment)
    b, e = base.resolve(), exp.resolve()
    assert config.name == "mine"  # the including file wins
    assert config.seed == 7  # from the base's own include
    assert [(t.name, t.path) for t in config.tasks] == [("t3", str(e / "t3.jsonl"))]  # replaced
    assert config.shots == [5]
    assert config.arms == ["base", "rag", "ft"]
    assert config.validation.task.path == str(b / "data" / "v.jsonl")
    assert config.validation.task.dev == str(b / "data" / "dev.jsonl")
    assert config.validation.rag_sample == 5
    assert config.corpus == str(b / "corpus.jsonl")
    assert (config.rag.kb, config.rag.k) == (str(b / "kb"), [4])  # merged key by key
    recipe = config.finetunes["ft"]
    assert recipe.epochs == 1 and recipe.learning_rate == [1.0e-3]
    assert recipe.data.corpus == str(b / "corpus.jsonl")  # written in base/
    assert recipe.data.paraphrases == str(e / "para.jsonl")  # written in exp/
    assert (recipe.data.n_paraphrases, recipe.data.block_size) == (2, 64)
    scoring = config.scoring
    assert (scoring.batch_size, scoring.max_new_tokens, scoring.bf16_autocast) == (16, 5, True)
    hub, local = config.models
    assert hub.path == "org/some-model"  # not a folder there: a hub id, left alone
    assert local.path == str(b / "local-model")
    assert local.adapter == str(b / "adapters" / "a")


def test_include_cycle_missing_include_and_unknown_keys_are_one_line_errors(tmp_path):
    a = write(tmp_path / "a" / "a.yaml", "include: ../b/b.yaml\n")
    b = write(tmp_path / "b" / "b.yaml", "include: [../a/a.yaml]\n")
    with pytest.raises(KinjectError) as error:
        load_experiment(a)
    message = str(error.value)
    assert "\n" not in message
    assert "include cycle" in message and str(a.resolve()) in message
    assert str(b.resolve()) in message

    me = write(tmp_path / "me.yaml", "include: me.yaml\n")
    with pytest.raises(KinjectError, match="include cycle"):
        load_experiment(me)

    lost = write(tmp_path / "c" / "lost.yaml", "include: nowhere.yaml\nname: x\n")
    with pytest.raises(KinjectError) as error:
        load_experiment(lost)
    message = str(error.value)
    assert "\n" not in message
    assert str((tmp_path / "c" / "nowhere.yaml").resolve()) in message
    assert "not found" in message and str(lost.resolve()) in message

    with pytest.raises(KinjectError, match="not found"):
        load_experiment(tmp_path / "absent.yaml")

    body = "models: [{label: m, path: x}]\ntasks: [{path: t.jsonl}]\n"
    typo = write(tmp_path / "typo.yaml", body + "arm: [base]\n")
    with pytest.raises(KinjectError) as error:
        load_experiment(typo)
    assert str(error.value) == f"{typo}: unknown key 'arm' (did you mean 'arms'?)"

    nested = write(tmp_path / "nested.yaml", body + "scoring: {batch_sise: 4}\n")
    with pytest.raises(KinjectError, match=r"unknown key 'scoring\.batch_sise'"):
        load_experiment(nested)

    # An error is reported in the file that wrote the key, not in the one including it.
    base = write(tmp_path / "d" / "base.yaml", body + "sheets: [0]\nscoring: {batch_size: 4}\n")
    including = write(tmp_path / "d" / "top.yaml", "include: base.yaml\n")
    with pytest.raises(KinjectError) as error:
        load_experiment(including)
    assert str(error.value) == f"{base.resolve()}: unknown key 'sheets' (did you mean 'shots'?)"
    write(base, body + "scoring: {batch_size: 4}\n")
    write(including, "include: base.yaml\nscoring: {max_new_tokens: -1}\n")
    with pytest.raises(KinjectError) as error:
        load_experiment(including)
    assert str(error.value).startswith(f"{including.resolve()}: key 'scoring.max_new_tokens'")


def test_include_cycle_from_the_command_line_is_one_line_and_exit_2(tmp_path):
    write(tmp_path / "a.yaml", "include: b.yaml\n")
    write(tmp_path / "b.yaml", "include: a.yaml\n")
    result = kinject("run", "a.yaml", "--out", "run", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: include cycle")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# 4. placeholders, arms and sweeps checked before any model work


@pytest.fixture
def tiny_inputs(tmp_path) -> Path:
    """Task and corpus files good enough to load (no model is ever reached)."""
    rows = [
        {"id": f"q{i}", "question": f"Question {i}?", "choices": ["yes", "no"], "answer": i % 2}
        for i in range(4)
    ]
    write(tmp_path / "t.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write(tmp_path / "corpus.jsonl", json.dumps({"id": "d", "text": "Some text."}) + "\n")
    return tmp_path


def experiment_text(extra: str = "") -> str:
    return (
        "models: [{label: m, path: no/such-model}]\n"
        "tasks: [{name: t, path: t.jsonl}]\n"
        "validation: {task: {name: v, path: t.jsonl}}\n"
        "finetunes:\n"
        "  ft: {data: {corpus: corpus.jsonl, block_size: 16}, learning_rate: [1.0e-3]}\n" + extra
    )


def test_world_placeholder_without_world_section_fails_before_any_work(tmp_path):
    from kinject.experiments.runner import run_experiment

    path = write(
        tmp_path / "e.yaml",
        "models: [{label: m, path: no/such-model}]\n"
        "tasks: [{name: t, path: '${world}/tasks/new.jsonl'}]\n",
    )
    config = load_experiment(path)  # placeholders are left for the runner
    with pytest.raises(KinjectError) as error:
        run_experiment(config, tmp_path / "run", show_progress=False)
    message = str(error.value)
    assert "'${world}'" in message and "world:" in message and "\n" not in message
    assert not (tmp_path / "run").exists()


def test_misspelt_placeholder_with_a_world_is_named(tmp_path):
    from kinject.experiments.runner import run_experiment

    experiment = write_small_experiment(tmp_path / "small.yaml")
    text = experiment.read_text().replace("${world_kb}", "${world_kbb}")
    experiment.write_text(text)
    with pytest.raises(KinjectError, match=r"still holds '\$\{world_kbb\}'"):
        run_experiment(load_experiment(experiment), tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run").exists()


def test_arm_or_sweep_naming_an_unknown_finetuning_is_an_error(tmp_path, tiny_inputs):
    path = write(tmp_path / "arms.yaml", experiment_text("arms: [base, ft-big]\n"))
    with pytest.raises(KinjectError) as error:
        load_experiment(path)
    assert "arm 'ft-big'" in str(error.value) and "['ft']" in str(error.value)

    path = write(tmp_path / "arms2.yaml", experiment_text("arms: [base, ft+bm25]\n"))
    with pytest.raises(KinjectError, match=r"arm 'ft\+bm25'"):
        load_experiment(path)

    sweep = "sweeps: [{name: s, finetune: ft-big, key: epochs, values: [1]}]\n"
    path = write(tmp_path / "sweep.yaml", experiment_text(sweep))
    with pytest.raises(KinjectError, match="sweep 's' names finetune 'ft-big'"):
        load_experiment(path)


@pytest.mark.parametrize("key", ["data.n_paraphrasez", "dataa.corpus", "epochs.x", "learning_rate"])
def test_sweep_key_not_of_the_finetuning_fails_before_any_model_work(tmp_path, tiny_inputs, key):
    from kinject.experiments.runner import run_experiment

    sweep = f"sweeps: [{{name: points, finetune: ft, key: {key}, values: [1, 2]}}]\n"
    config = load_experiment(write(tmp_path / "e.yaml", experiment_text(sweep)))
    with pytest.raises(KinjectError) as error:
        run_experiment(config, tmp_path / "run", show_progress=False)
    message = str(error.value)
    assert f"sweep 'points': '{key}' is not a fine-tuning key" in message
    assert not (tmp_path / "run").exists()  # the model path is bogus: never reached


def test_bad_sweep_value_fails_before_any_model_work(tmp_path, tiny_inputs):
    from kinject.experiments.runner import run_experiment

    sweep = "sweeps: [{name: ep, finetune: ft, key: epochs, values: [1, 0]}]\n"
    config = load_experiment(write(tmp_path / "e.yaml", experiment_text(sweep)))
    with pytest.raises(KinjectError) as error:
        run_experiment(config, tmp_path / "run", show_progress=False)
    assert "sweep 'ep', epochs = 0" in str(error.value)
    assert not (tmp_path / "run").exists()  # the model path is bogus: never reached
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# 5. metrics and tables rebuilt from records


REBUILT = ("metrics.json", "costs.json", "table.md", "records.jsonl")
TABLES = ("table1.csv", "table2.csv", "costs.csv")


def test_table_rebuilds_metrics_and_tables_byte_for_byte(tmp_path, quick_experiment_run):
    run_dir = tmp_path / "run"
    shutil.copytree(quick_experiment_run, run_dir)
    before = {name: (run_dir / name).read_bytes() for name in REBUILT}
    before.update({name: (run_dir / "tables" / name).read_bytes() for name in TABLES})
    for name in ("metrics.json", "costs.json", "table.md"):
        (run_dir / name).unlink()
    shutil.rmtree(run_dir / "tables")

    result = kinject("table", str(run_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    after = {name: (run_dir / name).read_bytes() for name in REBUILT}
    after.update({name: (run_dir / "tables" / name).read_bytes() for name in TABLES})
    assert after == before
    assert "ft-par+RAG" in result.stdout  # the tables are printed


def test_table_on_a_folder_without_a_plan_is_one_line_exit_2(tmp_path):
    (tmp_path / "empty").mkdir()
    result = kinject("table", str(tmp_path / "empty"), cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_moved_run_folder_can_be_tabulated_again(tmp_path, one_torch_thread):
    from kinject.experiments.tabulate import tabulate_experiment

    run_dir = tmp_path / "run"
    run_in_process(write_small_experiment(tmp_path / "small.yaml"), run_dir)
    expected = (run_dir / "metrics.json").read_bytes()
    moved = run_dir.rename(tmp_path / "moved")
    tabulate_experiment(moved)
    assert (moved / "metrics.json").read_bytes() == expected


def test_comparisons_gains_and_knows_follow_from_the_records(quick_experiment_run):
    metrics = read_json(quick_experiment_run / "metrics.json")
    records = read_records(quick_experiment_run)
    by_cell: dict[tuple, list[dict]] = {}
    for record in records:
        by_cell.setdefault(cell_key(record), []).append(record)
    assert sorted(by_cell) == sorted(cell_key(m) for m in metrics["cells"])

    for cell in metrics["cells"]:
        rows = by_cell[cell_key(cell)]
        assert cell["n"] == len(rows)
        assert cell["acc"] == round(sum(r["correct"] for r in rows) / len(rows), 4)
        if cell.get("open"):
            continue
        options = {len(r["loglikelihoods"]) for r in rows}
        assert options == {4}
        assert cell["chance"] == 0.25
        assert cell["knows"] is (cell["acc"] > 0.25)

    # relative gain: (acc - base acc) / base acc, against the base model closed book
    closed = {
        (m["split"], m["shots"]): m["acc"]
        for m in metrics["cells"]
        if m["model"] == "base" and m["arm"] == "base"
    }
    gains = 0
    for cell in metrics["cells"]:
        if cell["split"] == "validation" or (cell["model"], cell["arm"]) == ("base", "base"):
            assert cell.get("relative_gain") is None
            continue
        base = closed[(cell["split"], cell["shots"])]
        if base == 0:
            assert cell["relative_gain"] is None
            continue
        assert cell["relative_gain"] == pytest.approx((cell["acc"] - base) / base, abs=6e-5)
        gains += cell["relative_gain"] != 0
    assert gains > 0  # not every column ties the base model

    # McNemar: pair each comparison's two cells by question id, count, exact binomial
    columns = {(m["split"], m["shots"], m["column"]): cell_key(m) for m in main_cells(metrics)}
    groups = {(split, shots) for split, shots, _ in columns}
    names = sorted({column for _, _, column in columns})
    assert names == sorted(["base", "oracle", "rag", "ft-reg", "ft-par", "ft-par+rag"])
    assert len(metrics["comparisons"]) == len(groups) * math.comb(len(names), 2)
    discordant = 0
    for comparison in metrics["comparisons"]:
        group = (comparison["split"], comparison["shots"])
        a = {r["question_id"]: r["correct"] for r in by_cell[columns[(*group, comparison["a"])]]}
        b = {r["question_id"]: r["correct"] for r in by_cell[columns[(*group, comparison["b"])]]}
        assert a.keys() == b.keys()
        a_only = sum(1 for q in a if a[q] and not b[q])
        b_only = sum(1 for q in a if b[q] and not a[q])
        assert (comparison["a_only"], comparison["b_only"]) == (a_only, b_only)
        assert comparison["p_value"] == pytest.approx(exact_mcnemar(a_only, b_only), rel=1e-12)
        discordant += a_only + b_only
    assert discordant > 0
    assert any(0 < c["p_value"] < 1 for c in metrics["comparisons"])  # not only p = 1


# ---------------------------------------------------------------------------------------------
# 6. table layouts


def test_table_csvs_match_metrics_and_the_markdown_layouts(quick_experiment_run):
    metrics = read_json(quick_experiment_run / "metrics.json")
    cells = {(m["split"], m["shots"], m["column"]): m for m in main_cells(metrics)}
    tests = {}  # (model, task, shots, column): its McNemar test against the base column
    for test in metrics["comparisons"]:
        for mine, other in (("a", "b"), ("b", "a")):
            if test[other] == "base":
                tests[(test["base_model"], test["split"], test["shots"], test[mine])] = test

    def rows(name):
        with open(quick_experiment_run / "tables" / name, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    table1, table2 = rows("table1.csv"), rows("table2.csv")
    for row in table1 + table2:
        cell = cells[(row["task"], int(row["shots"]), row["column"])]
        assert row["model"] == "tiny"
        assert float(row["acc"]) == cell["acc"]
        assert int(row["n"]) == cell["n"]
        assert [float(row["ci_low"]), float(row["ci_high"])] == cell["acc_ci"]
        assert int(row["k"]) == cell["k"]
        if row["column"] == "base":
            assert row["p_vs_base"] == ""
        else:
            test = tests[("tiny", row["task"], int(row["shots"]), row["column"])]
            assert float(row["p_vs_base"]) == test["p_value"]
            assert int(row["discordant_vs_base"]) == test["a_only"] + test["b_only"]
    # Table 1: base, +RAG, and the first fine-tuning that has a +rag arm, with it
    assert {row["column"] for row in table1} == {"base", "rag", "ft-par", "ft-par+rag"}
    # Table 2: every column but the oracle, on every test task and shots
    assert {(r["task"], int(r["shots"]), r["column"]) for r in table2} == {
        key for key in cells if key[2] != "oracle"
    }
    assert len(table2) == len({(r["task"], r["shots"], r["column"]) for r in table2})

    text = (quick_experiment_run / "table.md").read_text(encoding="utf-8")
    assert text.startswith("# quick grid on the synthetic world\n")
    header, *body = markdown_rows(markdown_section(text, "## Table 1 layout: tiny"))
    assert header == ["task", "shots", "base", "+RAG", "FT (ft-par)", "FT+RAG (ft-par)"]
    assert [(r[0], r[1]) for r in body] == [
        (task, str(shots)) for task in ("known", "new", "new_open") for shots in (0, 1)
    ]
    for row in body:  # FT is ft-par: the first fine-tuning with a +rag arm
        acc = cells[(row[0], int(row[1]), "ft-par")]["acc"]
        assert row[4].startswith(f"{acc:.3f} [")
        acc = cells[(row[0], int(row[1]), "ft-par+rag")]["acc"]
        assert row[5].startswith(f"{acc:.3f} [")
        for column, model in ((3, "base"), (5, "ft-par")):  # the K chosen, K=0 included
            assert row[column].endswith(f" k{metrics['selected_k'][model][row[1]]}")
    header, *body = markdown_rows(markdown_section(text, "## Table 2 layout"))
    assert header == ["model", "task", "shots", "base", "+RAG", "ft-reg", "ft-par", "ft-par+RAG"]

    # the sweep: its values in the order written, each point's accuracy on 'new'
    sweep = metrics["sweeps"][0]
    assert [p["value"] for p in sweep["points"]] == [0, 1, 2]
    header, *body = markdown_rows(
        markdown_section(text, "## Sweep 'paraphrases': ft-par by data.n_paraphrases")
    )
    assert header == ["data.n_paraphrases", "lr", "epoch", "validation acc", "new 0-shot"]
    assert [row[0] for row in body] == ["0", "1", "2"]
    for row, point in zip(body, sweep["points"]):
        (cell,) = point["cells"]
        assert row[4].startswith(f"{cell['acc']:.3f} [")
        folder = quick_experiment_run / "sweeps" / point["label"]
        (scored,) = read_json(folder / "metrics.json")["cells"]
        assert (scored["acc"], scored["acc_ci"]) == (cell["acc"], cell["acc_ci"])
    # a point that is the same training as a named fine-tuning reuses its model and figures
    same = {p["value"]: p["same_as"] for p in sweep["points"]}
    assert same == {0: "ft-reg", 1: None, 2: "ft-par"}
    for value, column in ((0, "ft-reg"), (2, "ft-par")):
        (cell,) = sweep["points"][value]["cells"]
        assert cell["acc"] == cells[("new", 0, column)]["acc"]


def test_two_base_models_get_their_own_columns_fine_tunings_and_tables(tmp_path, one_torch_thread):
    """Two labels of one model file: each is a base model of its own, with its own
    fine-tuned column; the same training is trained once; the same cells agree."""
    experiment = write_small_experiment(tmp_path / "two.yaml", arms=("base", "ft-reg"))
    spec = yaml.safe_load(experiment.read_text(encoding="utf-8"))
    spec["models"] = [
        {"label": "a", "path": "${world_model}"},
        {"label": "b", "path": "${world_model}"},
    ]
    experiment.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    run_dir = tmp_path / "run"
    run_in_process(experiment, run_dir)

    metrics = read_json(run_dir / "metrics.json")
    assert {label: (m["base_model"], m["finetune"]) for label, m in metrics["models"].items()} == {
        "a": ("a", None),
        "a.ft-reg": ("a", "ft-reg"),
        "b": ("b", None),
        "b.ft-reg": ("b", "ft-reg"),
    }
    plan = read_json(run_dir / "plan.json")
    assert len(list(run_dir.glob("finetuned/*/selection.json"))) == 1
    cells = {(m["base_model"], m["column"], m["split"], m["shots"]): m for m in main_cells(metrics)}
    assert {key[:2] for key in cells} == {
        ("a", "base"),
        ("a", "ft-reg"),
        ("b", "base"),
        ("b", "ft-reg"),
    }
    for (model, column, split, shots), cell in cells.items():
        if model == "b":
            assert cell["acc"] == cells[("a", column, split, shots)]["acc"]
    records = read_records(run_dir)
    assert {r["model"] for r in records} == {"a", "a.ft-reg", "b", "b.ft-reg"}
    text = (run_dir / "table.md").read_text(encoding="utf-8")
    for model in ("a", "b"):
        header, *body = markdown_rows(markdown_section(text, f"## Table 1 layout: {model}"))
        assert header == ["task", "shots", "base", "+RAG", "FT (ft-reg)", "FT+RAG (ft-reg)"]
        for row in body:  # FT is this model's ft-reg; no rag arm was asked for
            acc = cells[(model, "ft-reg", row[0], int(row[1]))]["acc"]
            assert row[4].startswith(f"{acc:.3f} [") and row[3] == row[5] == "–"
    with open(run_dir / "tables" / "table2.csv", newline="", encoding="utf-8") as f:
        table2 = list(csv.DictReader(f))
    assert {(row["model"], row["column"]) for row in table2} == {
        ("a", "base"),
        ("a", "ft-reg"),
        ("b", "base"),
        ("b", "ft-reg"),
    }
    trained = {row["label"]: row["training"] for row in plan["runs"] if row["training"]}
    assert trained["a.ft-reg"]["folder"] == trained["b.ft-reg"]["folder"]


# ---------------------------------------------------------------------------------------------
# 7. compare


def test_compare_two_runs_without_models_or_torch(tmp_path, quick_experiment_run):
    from kinject.evaluation.report import short_ci

    for name in ("mistral", "llama"):
        shutil.copytree(quick_experiment_run, tmp_path / name)
        shutil.rmtree(tmp_path / name / "finetuned")  # no model anywhere in the copies
        for cells in (tmp_path / name).glob("*/*/cells"):
            shutil.rmtree(cells)
    empty_cache = tmp_path / "empty-cache"
    empty_cache.mkdir()
    env = kinject_env(KINJECT_CACHE_DIR=str(empty_cache), HF_HUB_OFFLINE="1")
    compare = ("compare", "mistral", "llama", "--out", "cmp.csv")
    result = kinject(*compare, cwd=tmp_path, env=env, python_flags=("-X", "importtime"))
    assert result.returncode == 0, result.stderr[-3000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert "kinject.experiments.compare" in imported
    assert not {"torch", "transformers"} & imported

    with open(tmp_path / "cmp.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    metrics = read_json(quick_experiment_run / "metrics.json")
    cells = {(m["split"], m["shots"], m["column"]): m for m in main_cells(metrics)}
    groups = [f"{task} {shots}-shot" for task in ("known", "new", "new_open") for shots in (0, 1)]
    assert list(rows[0]) == ["run", "model", "column", *groups]
    headers = {"base": "base", "rag": "+RAG", "oracle": "oracle", "ft-reg": "ft-reg"}
    headers.update({"ft-par": "ft-par", "ft-par+rag": "ft-par+RAG"})
    for run in ("mistral", "llama"):
        mine = [row for row in rows if row["run"] == run]
        assert [row["column"] for row in mine] == [
            headers[c] for c in ("base", "oracle", "rag", "ft-reg", "ft-par", "ft-par+rag")
        ]
        for row in mine:
            column = next(c for c, h in headers.items() if h == row["column"])
            for group in groups:
                task, shots = group.removesuffix("-shot").split()
                cell = cells[(task, int(shots), column)]
                assert row[group] == short_ci(cell["acc"], cell["acc_ci"])
    first = [{k: v for k, v in r.items() if k != "run"} for r in rows if r["run"] == "mistral"]
    second = [{k: v for k, v in r.items() if k != "run"} for r in rows if r["run"] == "llama"]
    assert first == second


def test_compare_of_runs_with_one_name_uses_their_paths(tmp_path, quick_experiment_run):
    from kinject.experiments.compare import comparison_rows

    for parent in ("a", "b"):
        shutil.copytree(quick_experiment_run, tmp_path / parent / "run", ignore=_only_results)
    header, body = comparison_rows([tmp_path / "a" / "run", tmp_path / "b" / "run"])
    assert {row[0] for row in body} == {str(tmp_path / "a" / "run"), str(tmp_path / "b" / "run")}
    assert header[:3] == ["run", "model", "column"]


def _only_results(folder, names):
    return [name for name in names if name not in ("metrics.json", "costs.json")]


def test_compare_of_a_folder_that_is_not_a_run_is_one_line_exit_2(tmp_path, quick_experiment_run):
    (tmp_path / "nothing").mkdir()
    shutil.copytree(quick_experiment_run, tmp_path / "good", ignore=_only_results)
    shutil.copytree(quick_experiment_run / "models" / "base", tmp_path / "eval-run")
    for other in ("nothing", "eval-run"):
        result = kinject("compare", "good", other, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and other in lines[0]
    assert not (tmp_path / "cmp.csv").exists()
