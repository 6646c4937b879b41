"""The synthetic world: reproducible from a seed, and built the way the experiment needs."""

from __future__ import annotations

import json

from kinject.config import WorldConfig
from kinject.corpus import load_corpus_jsonl
from kinject.tasks.loaders import load_mc_jsonl
from kinject.world.build import build_world, task_questions, write_world
from kinject.world.people import POOLS
from kinject.world.pretraining import MixSettings, pretraining_documents
from kinject.world.vocabulary import ATTRIBUTES

SMALL = WorldConfig(n_known=30, n_new=20, n_updated=10, n_reading=10, n_dev=5, n_paraphrases=4)


def _read_tree(folder):
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_same_seed_writes_identical_files_and_another_seed_does_not(tmp_path):
    a = _read_tree(write_world(build_world(SMALL), tmp_path / "a"))
    b = _read_tree(write_world(build_world(SMALL), tmp_path / "b"))
    c = _read_tree(write_world(build_world(SMALL.model_copy(update={"seed": 1})), tmp_path / "c"))
    assert a == b
    assert a["kb.jsonl"] != c["kb.jsonl"]


def test_files_load_with_the_user_facing_loaders(tmp_path):
    folder = write_world(build_world(SMALL), tmp_path / "w")
    corpus = load_corpus_jsonl(folder / "kb.jsonl")
    assert len(corpus) == 30 + 20 + 10 + 5  # known, new, updated, dev: not reading
    sizes = {
        name: len(load_mc_jsonl(folder / "tasks" / f"{name}.jsonl"))
        for name in ("known", "new", "updated", "reading", "dev", "validation")
    }
    attributes = len(ATTRIBUTES)
    mutable = sum(a.mutable for a in ATTRIBUTES)
    assert sizes == {
        "known": 30 * attributes,
        "new": 20 * attributes,
        "updated": 10 * mutable,
        "reading": 10 * attributes,
        "dev": 5 * attributes,
        "validation": 20 * attributes + 10 * mutable,
    }
    for name in ("known", "new", "updated"):
        for item in load_mc_jsonl(folder / "tasks" / f"{name}.jsonl"):
            assert all(doc_id in corpus for doc_id in item.doc_ids)


def test_questions_have_four_distinct_options_from_the_attribute_pool():
    world = build_world(SMALL)
    people = {p.id: p for p in world.people}
    for split in ("known", "new", "updated", "dev", "validation"):
        for row in task_questions(world, split):
            choices = row["choices"]
            assert len(choices) == 4 and len(set(choices)) == 4
            person = people[row["doc_ids"][0]]
            assert choices[row["answer"]] == person.values[row["subject"]]
            if row["subject"] in POOLS:
                assert all(choice in POOLS[row["subject"]] for choice in choices)


def test_updated_questions_ask_the_new_value_with_the_old_one_as_distractor():
    world = build_world(SMALL)
    people = {p.id: p for p in world.people}
    rows = task_questions(world, "updated")
    assert rows
    for row in rows:
        person = people[row["doc_ids"][0]]
        old = person.old_values[row["subject"]]
        assert old in row["choices"] and row["choices"][row["answer"]] != old


def test_test_questions_never_use_reserved_templates_and_validation_only_does():
    world = build_world(SMALL)
    names = {p.id: p.name for p in world.people}
    by_name = {a.name: a for a in ATTRIBUTES}
    for split in ("known", "new", "updated"):
        for row in task_questions(world, split):
            attribute = by_name[row["subject"]]
            name = names[row["doc_ids"][0]]
            assert row["question"] in [t.format(name=name) for t in attribute.test_questions]
    for row in task_questions(world, "validation"):
        attribute = by_name[row["subject"]]
        name = names[row["doc_ids"][0]]
        assert row["question"] in [t.format(name=name) for t in attribute.reserved_questions]


def _sentences(text: str) -> list[str]:
    parts = text.split(". ")
    return [part if part.endswith(".") else part + "." for part in parts]


def _renderings(person, variants: str) -> set[str]:
    from kinject.world.people import _fill, _sentence_templates

    out = set()
    for attribute in ATTRIBUTES:
        for template in _sentence_templates(attribute, variants):
            for use_name in (True, False):
                out.add(
                    _fill(
                        template,
                        person.name,
                        person.female,
                        person.values[attribute.name],
                        use_name,
                    )
                )
    return out


def test_paraphrases_are_distinct_and_written_only_in_reserved_templates(tmp_path):
    world = build_world(SMALL)
    folder = write_world(world, tmp_path / "w")
    people = {p.id: p for p in world.people}
    kb = {d.id: d.text for d in load_corpus_jsonl(folder / "kb.jsonl").values()}
    for line in (folder / "paraphrases.jsonl").read_text().splitlines():
        row = json.loads(line)
        person = people[row["id"]]
        reserved, main = _renderings(person, "reserved"), _renderings(person, "main")
        assert len(row["paraphrases"]) == 4 == len(set(row["paraphrases"]))
        for text in row["paraphrases"]:
            assert set(_sentences(text)) <= reserved
        assert set(_sentences(kb[row["id"]])) <= main


def test_new_people_never_appear_in_pretraining_text_and_updated_appear_with_old_values():
    world = build_world(SMALL)
    documents = " ".join(d.text for d in pretraining_documents(world, 0, 0, MixSettings()))
    for person in world.split("new"):
        assert person.name not in documents
    for person in world.split("known"):
        assert person.name in documents
    for person in world.split("updated"):
        assert person.name in documents
        for value in person.old_values.values():
            assert value in documents


def test_pretraining_text_is_a_pure_function_of_seed_and_epoch():
    world = build_world(SMALL)
    first = pretraining_documents(world, 0, 3, MixSettings())
    assert first == pretraining_documents(world, 0, 3, MixSettings())
    assert first != pretraining_documents(world, 0, 4, MixSettings())


def test_reading_documents_train_on_answers_only():
    world = build_world(SMALL)
    reading = [d for d in pretraining_documents(world, 0, 0, MixSettings()) if d.loss_spans]
    assert reading
    for document in reading:
        for start, end in document.loss_spans:
            assert document.text[start - len("Answer: ") : start] == "Answer: "
            assert "\n" not in document.text[start:end]


def test_writing_a_world_never_replaces_a_folder_that_is_not_a_world(tmp_path):
    import pytest

    from kinject.errors import KinjectError

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    with pytest.raises(KinjectError, match="not a world folder"):
        write_world(build_world(SMALL), precious)
    assert (precious / "thesis.txt").read_text() == "years of work"
    world = write_world(build_world(SMALL), tmp_path / "w")
    write_world(build_world(SMALL.model_copy(update={"seed": 5})), world)  # a world is replaced
    assert "seed: 5" in (world / "world.yaml").read_text()
