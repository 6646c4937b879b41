"""Task and corpus loaders: real MMLU files load whole; every bad row names file, line, field."""

from __future__ import annotations

import json

import pytest

from conftest import MMLU_DIR, MMLU_SUBJECTS
from kinject.corpus import load_corpus_jsonl
from kinject.errors import DataError
from kinject.tasks.loaders import load_mc_jsonl, load_mmlu_csv, mmlu_task

GOOD = {"id": "q1", "question": "Where?", "choices": ["a", "b", "c"], "answer": 1}


@pytest.mark.skipif(not MMLU_DIR.exists(), reason="shared MMLU data not present")
def test_mmlu_subjects_load_with_their_test_and_dev_rows():
    sizes = {}
    for subject in MMLU_SUBJECTS:
        task = mmlu_task(MMLU_DIR / "test" / f"{subject}_test.csv")
        sizes[subject] = len(task.items)
        assert len(task.dev) == 5
        assert task.style == "letter"
        assert all(len(item.choices) == 4 for item in task.items)
    assert sizes == {
        "anatomy": 135,
        "astronomy": 152,
        "college_biology": 144,
        "college_chemistry": 100,
        "prehistory": 324,
    }


@pytest.mark.skipif(not MMLU_DIR.exists(), reason="shared MMLU data not present")
def test_mmlu_quoted_multiline_rows_keep_their_text():
    items = load_mmlu_csv(MMLU_DIR / "test" / "college_biology_test.csv")
    assert any("\n" in item.question or any("\n" in c for c in item.choices) for item in items)


def _jsonl(tmp_path, rows, name="t.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" if isinstance(r, dict) else r for r in rows))
    return path


@pytest.mark.parametrize(
    "bad, line, field",
    [
        ({**GOOD, "answer": 3}, 2, "answer"),
        ({**GOOD, "answer": -1}, 2, "answer"),
        ({**GOOD, "answer": "1"}, 2, "answer"),
        ({**GOOD, "answer": True}, 2, "answer"),
        ({**GOOD, "choices": ["only"]}, 2, "choices"),
        ({**GOOD, "choices": ["a", 2]}, 2, "choices"),
        ({k: v for k, v in GOOD.items() if k != "question"}, 2, "question"),
        ({**GOOD, "id": "q1"}, 2, "id"),  # duplicate of line 1
        ({**GOOD, "id": "q2", "doc_ids": "d1"}, 2, "doc_ids"),
        ({**GOOD, "id": "q2", "answr": 1}, 2, "answr"),
    ],
)
def test_bad_jsonl_rows_name_file_line_and_field(tmp_path, bad, line, field):
    path = _jsonl(tmp_path, [GOOD, bad])
    with pytest.raises(DataError) as raised:
        load_mc_jsonl(path)
    assert (raised.value.path, raised.value.line, raised.value.field) == (path, line, field)
    assert str(path) in str(raised.value) and f"line {line}" in str(raised.value)


def test_invalid_json_and_invalid_utf8_are_located(tmp_path):
    path = _jsonl(tmp_path, [GOOD, "{not json\n"])
    with pytest.raises(DataError, match="line 2"):
        load_mc_jsonl(path)
    raw = tmp_path / "raw.jsonl"
    raw.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"id": "\xff"}\n')
    with pytest.raises(DataError, match=r"line 2: invalid UTF-8"):
        load_mc_jsonl(raw)


@pytest.mark.parametrize(
    "content, line, field, message",
    [
        ("q,a,b,c,d,A\nq,a,b,c,E\n", 2, None, "expected 6 columns"),
        ("q,a,b,c,d,A\nq,a,b,c,d,E\n", 2, "answer", "not one of A, B, C, D"),
        ('"multi\nline",a,b,c,d,B\nq,a,b,c,d,\n', 3, "answer", "not one of"),
    ],
)
def test_bad_mmlu_rows_name_file_line_and_field(tmp_path, content, line, field, message):
    path = tmp_path / "x_test.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as raised:
        load_mmlu_csv(path)
    assert (raised.value.line, raised.value.field) == (line, field)


def test_mmlu_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "x_test.csv"
    path.write_bytes(b"q,a,b,c,d,A\nq,\xe9,b,c,d,A\n")
    with pytest.raises(DataError, match="line 2: invalid UTF-8"):
        load_mmlu_csv(path)


def test_corpus_rejects_duplicates_and_empty_text(tmp_path):
    path = _jsonl(tmp_path, [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}], "c.jsonl")
    with pytest.raises(DataError, match="line 2, field 'id': duplicate"):
        load_corpus_jsonl(path)
    path = _jsonl(tmp_path, [{"id": "a", "text": ""}], "d.jsonl")
    with pytest.raises(DataError, match="line 1, field 'text'"):
        load_corpus_jsonl(path)


# --- MMLU in the Hugging Face cais/mmlu layout, and the paper's five subjects as a group -------


def _cais_layout(root, kind: str):
    """The local CSVs rewritten in the cais/mmlu layout: ``<subject>/test-00000-of-00001.<kind>``
    (and ``dev-…``), rows ``{"question", "subject", "choices", "answer": 0..3}``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for subject in MMLU_SUBJECTS:
        for split in ("test", "dev"):
            rows = [
                {
                    "question": item.question,
                    "subject": subject,
                    "choices": list(item.choices),
                    "answer": item.answer,
                }
                for item in load_mmlu_csv(MMLU_DIR / split / f"{subject}_{split}.csv")
            ]
            path = root / subject / f"{split}-00000-of-00001.{kind}"
            path.parent.mkdir(parents=True, exist_ok=True)
            if kind == "parquet":
                pq.write_table(pa.Table.from_pylist(rows), path)
            else:
                path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return root


@pytest.mark.skipif(not MMLU_DIR.exists(), reason="shared MMLU data not present")
@pytest.mark.parametrize("kind", ["parquet", "jsonl"])
def test_the_cais_mmlu_layout_gives_the_same_tasks_as_the_csvs(tmp_path, kind):
    from dataclasses import replace

    from kinject.config import EvalConfig, parse_config
    from kinject.evaluation.evaluate import load_task
    from kinject.tasks.loaders import mmlu_hf_task

    root = _cais_layout(tmp_path / "mmlu", kind)
    by_folder = mmlu_hf_task(root / "anatomy")
    by_file = mmlu_hf_task(root / "anatomy" / f"test-00000-of-00001.{kind}")
    from_csv = mmlu_task(MMLU_DIR / "test" / "anatomy_test.csv")
    for task in (by_folder, by_file):
        assert replace(task, source={}) == replace(from_csv, source={})
        assert task.source["dev"] == str(root / "anatomy" / f"dev-00000-of-00001.{kind}")

    for layout, path in (("mmlu_hf", root), ("mmlu_csv", MMLU_DIR)):
        group = {"group": "mmlu_paper", "format": layout, "path": str(path)}
        config = parse_config(EvalConfig, {"model": {"path": "m"}, "tasks": [group]})
        tasks = [load_task(spec) for spec in config.tasks]
        assert [t.name for t in tasks] == [f"mmlu_{s}" for s in MMLU_SUBJECTS]
        assert [len(t.items) for t in tasks] == [135, 152, 144, 100, 324]
        assert all(len(t.dev) == 5 and t.style == "letter" for t in tasks)


def test_bad_cais_mmlu_rows_and_groups_are_named(tmp_path):
    from kinject.config import ExperimentConfig, parse_config
    from kinject.errors import KinjectError
    from kinject.tasks.loaders import load_mmlu_hf

    path = tmp_path / "test-00000-of-00001.jsonl"
    good = {"question": "Q?", "subject": "s", "choices": ["a", "b", "c", "d"], "answer": 0}
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "answer": 4}) + "\n")
    with pytest.raises(DataError, match=r"line 2.*'answer'.*4 is not one of 0, 1, 2, 3"):
        load_mmlu_hf(path)
    path.write_text(json.dumps({**good, "choices": ["a", "b"]}) + "\n")
    with pytest.raises(DataError, match=r"line 1.*'choices'.*expected 4 strings"):
        load_mmlu_hf(path)
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="broken.parquet.*not a readable parquet file"):
        load_mmlu_hf(bad)

    base = {"models": [{"label": "m", "path": "m"}]}
    for entry, message in (
        ({"group": "mmlu_all", "path": "x"}, "unknown task group 'mmlu_all' .known: mmlu_paper"),
        ({"group": "mmlu_paper", "format": "jsonl", "path": "x"}, "needs format mmlu_csv"),
        ({"group": "mmlu_paper", "path": "x", "name": "n"}, "'name' and 'dev' are set per"),
    ):
        with pytest.raises(KinjectError, match=message):
            parse_config(ExperimentConfig, {**base, "tasks": [entry]})
