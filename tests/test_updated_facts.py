"""Updated facts (issue 9, part 4): a multiple-choice question may name the option that was
right before the knowledge changed (``previous``); every cell of such a task measures how
often the model still picks it (``previous_rate``) beside its accuracy on the new value, and
the tables, the report and the demo show the two side by side.

Real runs on the synthetic world of examples/quick (its world.yaml included, so the session's
cached base model is shared with tests/test_experiments.py)."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kinject.config import WorldConfig
from kinject.errors import DataError
from kinject.evaluation.stats import bootstrap_ci
from kinject.tasks.loaders import load_mc_jsonl
from kinject.world.build import build_world, task_questions, write_world
from kinject.world.vocabulary import ATTRIBUTES

REPO = Path(__file__).resolve().parent.parent
WORLD_YAML = REPO / "examples" / "quick" / "world.yaml"
TITLE = "Updated facts: new value vs previous value"
SCRIPT = "<script>alert(1)</script>"


def _write_lines(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _row() -> dict:
    return {"id": "q1", "question": "Where does Ada work?", "choices": ["A", "B", "C"], "answer": 1}


# ---------------------------------------------------------------------------------------------
# 1. the task format


def test_loader_reads_previous_and_leaves_it_unset_without_it(tmp_path):
    rows = [
        {**_row(), "previous": 2},
        {**_row(), "id": "q2", "previous": 0, "subject": "employer"},
        {**_row(), "id": "q3"},
        {**_row(), "id": "q4", "previous": None},
    ]
    items = load_mc_jsonl(_write_lines(tmp_path / "t.jsonl", rows))
    assert [item.previous for item in items] == [2, 0, None, None]
    assert items[1].subject == "employer" and items[0].answer == 1


@pytest.mark.parametrize(
    "value, message",
    [
        (1, "1 is the answer itself; it must name another choice"),
        (3, "3 is out of range for 3 choices"),
        (-1, "-1 is out of range for 3 choices"),
        ("2", "expected int, got str"),
        (True, "expected int, got bool"),
        (1.0, "expected int, got float"),
    ],
)
def test_loader_refuses_a_bad_previous_naming_file_line_and_field(tmp_path, value, message):
    path = _write_lines(tmp_path / "t.jsonl", [_row(), {**_row(), "id": "q2", "previous": value}])
    with pytest.raises(DataError) as caught:
        load_mc_jsonl(path)
    error = caught.value
    assert (error.path, error.line, error.field) == (path, 2, "previous")
    assert str(error) == f"{path}, line 2, field 'previous': {message}"


# ---------------------------------------------------------------------------------------------
# 2. the synthetic world writes it


SMALL = WorldConfig(n_known=6, n_new=5, n_updated=7, n_reading=2, n_dev=2, n_paraphrases=1)


def test_world_names_the_old_value_of_every_updated_question_and_only_those(tmp_path):
    world = build_world(SMALL)
    people = {p.id: p for p in world.people}
    folder = write_world(world, tmp_path / "w")
    seen = 0
    for task in ("known", "new", "updated", "reading", "dev", "validation"):
        items = load_mc_jsonl(folder / "tasks" / f"{task}.jsonl")
        for item in items:
            person = people[item.doc_ids[0]]
            if person.split != "updated":
                assert item.previous is None, (task, item.id)
                continue
            assert task in ("updated", "validation")
            old = person.old_values[item.subject]
            assert item.previous is not None and item.previous != item.answer
            assert item.choices[item.previous] == old, item.id
            assert item.choices[item.answer] == person.values[item.subject]
            seen += 1
    mutable = sum(attribute.mutable for attribute in ATTRIBUTES)
    assert seen == 2 * 7 * mutable  # every updated person's changed attributes, twice


def test_previous_adds_a_field_and_changes_no_question_choice_or_answer():
    """The rows are those the world wrote before ``previous`` existed, plus that field: the
    random draws that make choices and answers are untouched."""
    world = build_world(SMALL)
    for task in ("updated", "validation", "new"):
        rows = task_questions(world, task)
        keys = [list(row) for row in rows]
        for row, names in zip(rows, keys):
            expected = ["id", "question", "choices", "answer"]
            expected += ["previous"] if "previous" in row else []
            assert names == expected + ["subject", "doc_ids"]
    assert all("previous" in row for row in task_questions(world, "updated"))


# ---------------------------------------------------------------------------------------------
# 3. metrics, tables, `kinject table`, the report


def _experiment(path: Path) -> Path:
    world = "${world}"
    spec = {
        "include": os.path.relpath(WORLD_YAML, path.parent),
        "name": "updated facts",
        "models": [{"label": "tiny", "path": "${world_model}"}],
        "tasks": [
            {"name": task, "path": f"{world}/tasks/{task}.jsonl", "dev": f"{world}/tasks/dev.jsonl"}
            for task in ("updated", "new")
        ],
        "validation": {
            "task": {
                "name": "validation",
                "path": f"{world}/tasks/validation.jsonl",
                "dev": f"{world}/tasks/dev.jsonl",
            },
            "finetune_sample": 10,  # the K grid on all of them: new and updated people
        },
        "arms": ["base", "rag", "ft-reg", "ft-reg+rag"],
        "corpus": f"{world}/kb.jsonl",
        "rag": {"kb": "${world_kb}", "k": [0, 1]},
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
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def updated_run(tmp_path_factory) -> Path:
    """A finished `kinject run` scoring the quick world's updated and new questions."""
    import torch

    from kinject.experiments.files import load_experiment
    from kinject.experiments.runner import run_experiment

    root = tmp_path_factory.mktemp("updated-facts")
    cache = str(tmp_path_factory.getbasetemp() / "kinject-cache")  # as _isolated_cache
    before_cache = os.environ.get("KINJECT_CACHE_DIR")
    os.environ["KINJECT_CACHE_DIR"] = cache
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        experiment = load_experiment(_experiment(root / "updated.yaml"))
        run_experiment(experiment, root / "run", show_progress=False)
    finally:
        torch.set_num_threads(threads)
        if before_cache is None:
            os.environ.pop("KINJECT_CACHE_DIR", None)
        else:
            os.environ["KINJECT_CACHE_DIR"] = before_cache
    return root / "run"


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _records(run: Path) -> dict[tuple, list[dict]]:
    cells: dict[tuple, list[dict]] = {}
    for line in (run / "records.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        cells.setdefault((r["model"], r["arm"], r["split"], r["shots"], r["k"]), []).append(r)
    return cells


def test_previous_rate_and_its_ci_follow_from_the_records(updated_run):
    metrics = _read_json(updated_run / "metrics.json")
    records = _records(updated_run)
    experiment = yaml.safe_load((updated_run / "experiment.yaml").read_text(encoding="utf-8"))
    world = Path(experiment["tasks"][0]["path"]).parent.parent
    items = {i.id: i for i in load_mc_jsonl(world / "tasks" / "updated.jsonl")}
    items |= {i.id: i for i in load_mc_jsonl(world / "tasks" / "validation.jsonl")}
    checked = set()
    for cell in metrics["cells"]:
        rows = records[(cell["model"], cell["arm"], cell["split"], cell["shots"], cell["k"])]
        if cell["split"] == "new":
            assert not any("previous" in r for r in rows)
            assert not {"previous_rate", "previous_rate_ci", "previous_n"} & set(cell)
            continue
        for r in rows:  # records carry the task file's previous answer, where it has one
            assert r.get("previous") == items[r["question_id"]].previous
        changed = [r for r in rows if "previous" in r]
        if not changed:  # a validation sample without updated people's questions
            assert cell["split"] == "validation" and "previous_rate" not in cell
            continue
        kept = [float(r["pred"] == r["previous"]) for r in changed]
        assert cell["previous_n"] == len(changed)
        assert cell["previous_rate"] == round(sum(kept) / len(kept), 4)
        assert cell["previous_rate_ci"] == list(bootstrap_ci(kept, 0, 200))
        low, high = cell["previous_rate_ci"]
        assert low <= cell["previous_rate"] <= high
        if cell["split"] == "updated":  # one prediction: the new value, the old, or neither
            assert cell["previous_n"] == cell["n"]
            assert cell["acc"] + cell["previous_rate"] <= 1.0
        checked.add((cell["column"], cell["split"], cell["shots"]))
    columns = {"base", "rag", "ft-reg", "ft-reg+rag"}
    assert {c for c, s, _ in checked if s == "updated"} == columns
    assert any(s == "validation" for _, s, _ in checked)  # mixed: new and updated people


def _section(text: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index(f"## {TITLE}")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), None)
    return lines[start + 1 : end]


def _rows(section: list[str]) -> list[list[str]]:
    rows = [line for line in section if line.startswith("|")]
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    return [row for row in cells if not all(set(c) <= set("-: ") for c in row)]


def _short(value: float, ci: list[float]) -> str:
    low, high = (f"{bound:.3f}".removeprefix("0") for bound in ci)
    return f"{value:.3f} [{low}–{high}]"


def test_table_md_and_updated_csv_put_new_and_previous_side_by_side(updated_run):
    metrics = _read_json(updated_run / "metrics.json")
    cells = {
        (m["column"], m["split"], m["shots"]): m
        for m in metrics["cells"]
        if m["split"] != "validation" and m.get("selected") is not False
    }
    section = _section((updated_run / "table.md").read_text(encoding="utf-8"))
    assert any("renamed-entity probe" in line for line in section)
    header, *body = _rows(section)
    assert header == ["model", "task", "shots", "answer", "base", "+RAG", "ft-reg", "ft-reg+RAG"]
    assert [row[:4] for row in body] == [
        ["tiny", "updated", "0", "new value"],
        ["tiny", "updated", "0", "previous value"],
        ["tiny", "updated", "1", "new value"],
        ["tiny", "updated", "1", "previous value"],
    ]
    columns = ["base", "rag", "ft-reg", "ft-reg+rag"]
    for row in body:
        for column, text in zip(columns, row[4:]):
            m = cells[(column, "updated", int(row[2]))]
            if row[3] == "new value":
                assert text.startswith(_short(m["acc"], m["acc_ci"]))
            else:
                assert text == _short(m["previous_rate"], m["previous_rate_ci"])

    with (updated_run / "tables" / "updated.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * len(columns)
    for row in rows:
        m = cells[(row["column"], row["task"], int(row["shots"]))]
        assert float(row["acc"]) == m["acc"] and int(row["n"]) == m["n"]
        assert float(row["previous_rate"]) == m["previous_rate"]
        assert [float(row["previous_ci_low"]), float(row["previous_ci_high"])] == m[
            "previous_rate_ci"
        ]
        assert int(row["previous_n"]) == m["previous_n"] == m["n"]


def test_kinject_table_recomputes_previous_rate_from_the_records(tmp_path, updated_run):
    run = shutil.copytree(updated_run, tmp_path / "run")
    expected = {
        name: (run / name).read_bytes()
        for name in ("metrics.json", "table.md", "tables/updated.csv")
    }
    for folder in (run / "models").iterdir():  # every figure from the records alone
        metrics = _read_json(folder / "metrics.json")
        for cell in metrics["cells"]:
            for key in ("previous_rate", "previous_rate_ci", "previous_n"):
                cell.pop(key, None)
        (folder / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    for name in ("metrics.json", "table.md"):
        (run / name).unlink()
    shutil.rmtree(run / "tables")
    result = subprocess.run(
        [sys.executable, "-m", "kinject", "table", str(run)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={**os.environ, "COLUMNS": "300"},
    )
    assert result.returncode == 0, result.stderr
    assert {name: (run / name).read_bytes() for name in expected} == expected


def test_report_has_the_section_and_escapes_what_the_run_named(tmp_path, updated_run):
    from kinject.experiments.report import write_report

    run = tmp_path / "run"
    run.mkdir()
    for name in ("metrics.json", "costs.json", "records.jsonl"):
        shutil.copy(updated_run / name, run / name)
    page_path, md_path = write_report(run)
    page = page_path.read_text(encoding="utf-8")
    assert f"<h2>{TITLE}</h2>" in page and f"<h3>{TITLE}</h3>" in page  # plot; table
    assert re.search(r'<figure class="plot" id="fig-updated">\s*<svg', page)
    assert "renamed-entity probe" in page
    assert "<td>previous value</td>" in page and "<td>new value</td>" in page
    assert f"## {TITLE}" in md_path.read_text(encoding="utf-8")

    metrics = _read_json(run / "metrics.json")  # a task name from the user's config
    for cell in metrics["cells"]:
        if cell["split"] == "updated":
            cell["split"] = f"updated {SCRIPT}"
    (run / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    page = write_report(run)[0].read_text(encoding="utf-8")
    assert "<script" not in page
    assert "updated &lt;script&gt;alert(1)&lt;/script&gt;, 0-shot" in page  # the plot's title
    assert "<td>updated &lt;script&gt;alert(1)&lt;/script&gt;</td>" in page  # the table


def test_no_section_plot_or_csv_without_previous_answers(tmp_path, updated_run):
    from kinject.experiments.report import load_run, make_plots
    from kinject.experiments.tables import markdown, updated_rich, write_tables

    run = tmp_path / "run"
    run.mkdir()
    for name in ("metrics.json", "costs.json", "records.jsonl"):
        shutil.copy(updated_run / name, run / name)
    metrics = _read_json(run / "metrics.json")
    costs = _read_json(run / "costs.json")
    assert updated_rich(metrics, costs) is not None
    for cell in metrics["cells"]:
        for key in ("previous_rate", "previous_rate_ci", "previous_n"):
            cell.pop(key, None)
    (run / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    assert TITLE not in markdown(metrics, costs)
    assert "fig-updated" not in {plot.id for plot in make_plots(load_run(run))}
    assert updated_rich(metrics, costs) is None
    write_tables(run, metrics, costs)
    assert not (run / "tables" / "updated.csv").exists()
    assert (run / "tables" / "table2.csv").exists()
