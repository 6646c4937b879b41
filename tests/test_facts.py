"""A real model's own known and updated populations (``kinject probes facts``): built-in
public facts asked closed book, the ones answered right in both wordings kept, split into
known and updated, beside the world's new people.  Run here on a tiny random Llama (which
knows a handful by chance); tests/test_smollm2.py runs it on the real model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kinject.cli import app
from kinject.probes.fact_list import RELATIONS
from kinject.probes.facts import build_facts, candidate_facts, fact_documents, fact_question


def _facts_cli(*args: str):
    return CliRunner().invoke(app, ["probes", "facts", *args])


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from kinject.config import WorldConfig
    from kinject.world.build import build_world, write_world

    folder = tmp_path_factory.mktemp("world") / "world"
    write_world(
        build_world(
            WorldConfig(n_known=6, n_new=5, n_updated=2, n_reading=2, n_dev=2, n_paraphrases=2)
        ),
        folder,
    )
    return folder


def test_every_candidate_has_four_options_of_its_relation_and_a_changed_value():
    facts = candidate_facts(0)
    assert len(facts) == sum(len(r.facts) for r in RELATIONS)
    assert len({f["id"] for f in facts}) == len(facts)
    values = {r.name: {v for _, v in r.facts} for r in RELATIONS}
    for fact in facts:
        assert len(set(fact["choices"])) == 4 and fact["value"] in fact["choices"]
        assert set(fact["choices"]) <= values[fact["relation"]]
        assert fact["changed"] in fact["choices"] and fact["changed"] != fact["value"]
    assert candidate_facts(0) == facts and candidate_facts(1) != facts
    doc, paraphrases = fact_documents(next(f for f in facts if f["id"] == "capital-france"))
    assert doc["text"].startswith("The capital of France is ") and "Paris" not in doc["text"]
    assert all(
        next(f for f in facts if f["id"] == "capital-france")["changed"] in p for p in paraphrases
    )


def test_the_facts_text_passes_the_contamination_guard_for_every_question():
    """Training on the facts' documents and paraphrases (true or changed) must not be refused:
    no statement may hold a question's words (a long title once did: 'Who is the author of
    The Adventures of Tom Sawyer?' against 'The author of The Adventures of Tom Sawyer is')."""
    from kinject.tasks.items import MCItem, Task
    from kinject.training.contamination import check_contamination

    facts = candidate_facts(0)
    texts = []
    for fact in facts:
        for changed in (True, False):
            doc, paraphrases = fact_documents(fact, changed)
            texts += [doc["text"], *paraphrases]
    items = [
        MCItem(row["id"] + wording, row["question"], tuple(row["choices"]), row["answer"])
        for fact in facts
        for wording in ("question", "validation")
        for row in [fact_question(fact, "known", wording)]
    ]
    report = check_contamination(texts, [Task("facts", tuple(items))])
    assert report.questions == 2 * len(facts)
    assert report.contaminated == ()
    # the guard does see a question a statement spells out
    spelled = [*texts, "Who painted the Mona Lisa? Leonardo da Vinci."]
    assert len(check_contamination(spelled, [Task("facts", tuple(items))]).contaminated) == 1


def test_known_facts_are_the_ones_answered_right_in_both_wordings(tiny_llama_dir, world, tmp_path):
    out = tmp_path / "facts"
    result = _facts_cli(
        "--model", str(tiny_llama_dir), "--world", str(world), "--n-new", "3", "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "facts.json").read_text())
    candidates = _rows(out / "candidates.jsonl")
    assert len(candidates) == manifest["asked"] == len(candidate_facts(0))
    known = [c for c in candidates if c["known"]]
    for c in candidates:  # known: the best log-likelihood is the right option's, twice
        right = [
            max(range(4), key=c[w]["loglikelihoods"].__getitem__) == c["choices"].index(c["value"])
            for w in ("question", "validation")
        ]
        assert c["known"] == all(right)
    tasks = {
        name: _rows(out / "tasks" / f"{name}.jsonl")
        for name in ("known", "updated", "new", "validation")
    }
    assert len(tasks["known"]) + len(tasks["updated"]) == len(known) == manifest["known"]
    by_id = {c["id"]: c for c in known}
    for row in tasks["known"]:
        fact = by_id[row["id"].removeprefix("known-")]
        assert row["choices"][row["answer"]] == fact["value"]
    corpus = {doc["id"]: doc for doc in _rows(out / "corpus.jsonl")}
    for row in tasks["updated"]:  # the KB states the changed value; previous is the true one
        fact = by_id[row["id"].removeprefix("updated-")]
        assert row["choices"][row["answer"]] == fact["changed"]
        assert row["choices"][row["previous"]] == fact["value"]
        assert fact["changed"] in corpus[row["doc_ids"][0]]["text"]
    known_docs = {row["doc_ids"][0] for row in tasks["known"]}
    assert not known_docs & set(corpus)  # never retrieved, never trained on
    oracle = {doc["id"] for doc in _rows(out / "oracle.jsonl")}
    assert known_docs | set(corpus) == oracle
    people = {doc for row in tasks["new"] for doc in row["doc_ids"]}
    assert len(people) == 3 and people <= set(corpus)
    assert {p["id"] for p in _rows(out / "paraphrases.jsonl")} == set(corpus)
    test_questions = {
        row["question"] for name in ("known", "updated", "new") for row in tasks[name]
    }
    assert not test_questions & {row["question"] for row in tasks["validation"]}

    from kinject.config import TaskSpec
    from kinject.evaluation.evaluate import load_task

    for name in tasks:  # ordinary kinject tasks
        assert load_task(TaskSpec(path=str(out / "tasks" / f"{name}.jsonl"))).items

    again = tmp_path / "again"
    build_facts(str(tiny_llama_dir), again, world, n_new=3, show_progress=False)
    for name in ("corpus.jsonl", "oracle.jsonl", "tasks/updated.jsonl", "tasks/known.jsonl"):
        assert (again / name).read_bytes() == (out / name).read_bytes()


def test_a_world_without_its_files_is_named_and_nothing_is_left(tiny_llama_dir, tmp_path):
    result = _facts_cli(
        "--model",
        str(tiny_llama_dir),
        "--world",
        str(tmp_path / "nowhere"),
        "--out",
        str(tmp_path / "facts"),
    )
    assert result.exit_code == 2
    assert "nowhere/tasks/new.jsonl: file not found" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_world_row_without_its_field_is_named_by_file_and_line(tiny_llama_dir, world, tmp_path):
    import shutil

    broken = tmp_path / "world"
    shutil.copytree(world, broken)
    new = broken / "tasks" / "new.jsonl"
    lines = new.read_text().splitlines()
    lines[1] = json.dumps({k: v for k, v in json.loads(lines[1]).items() if k != "doc_ids"})
    new.write_text("\n".join(lines) + "\n")
    out = tmp_path / "facts"
    result = _facts_cli("--model", str(tiny_llama_dir), "--world", str(broken), "--out", str(out))
    assert result.exit_code == 2
    assert result.output == f"error: {new}, line 2, field 'doc_ids': missing\n"
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["world"]
