"""Build the synthetic world from a seed and write it to disk as ordinary kinject inputs.

Layout of a world folder (every file is in a format a user could have written by hand)::

    world.json            config and counts
    people.jsonl          ground truth: each person's current (and, if updated, old) facts
    kb.jsonl              corpus: one biography per person of known, dev, updated, new
    paraphrases.jsonl     {"id": doc id, "paraphrases": [...]}, reserved templates only
    tasks/known.jsonl     multiple-choice test questions, one per person and attribute
    tasks/new.jsonl
    tasks/updated.jsonl   the changed attributes; the old value is always a distractor, and
                          "previous" is its index
    tasks/reading.jsonl   people seen in pretraining only with their bio in context
    tasks/dev.jsonl       k-shot examples (known people, never in a test split)
    tasks/validation.jsonl  new and updated facts asked with the first reserved question template
                          (updated ones with "previous" too)
    tasks/<split>_open.jsonl  known, new, updated, dev as open questions (answers: the value)
    sft.jsonl             QA pairs (alpaca layout) on every KB fact, asked with the second
                          reserved template: training data for the SFT arm, never a test
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kinject.config import WorldConfig, to_yaml
from kinject.errors import KinjectError
from kinject.fileio import replace_dir, staging_dir, write_json, write_jsonl, write_text
from kinject.world.people import (
    Person,
    all_names,
    choices_for,
    question_text,
    random_person,
    render_bio,
    updated_person,
)
from kinject.world.vocabulary import ATTRIBUTES, Attribute

# bump when a world's files change (3: sft.jsonl, open questions, fixed validation wording;
# 4: updated questions name the old value's option in "previous")
WORLD_FORMAT = 4
SPLITS = ("known", "new", "updated", "reading")
TASK_FILES = SPLITS + ("dev", "validation")
OPEN_SPLITS = ("known", "new", "updated", "dev")


@dataclass(frozen=True)
class World:
    config: WorldConfig
    people: tuple[Person, ...]

    def split(self, name: str) -> list[Person]:
        return [person for person in self.people if person.split == name]

    @property
    def names(self) -> frozenset[str]:
        return frozenset(person.name for person in self.people)

    @property
    def pretrained_people(self) -> list[Person]:
        """People whose bios (with pretraining values) are in the base model's training text."""
        return [p for p in self.people if p.split in ("known", "updated", "dev")]

    @property
    def kb_people(self) -> list[Person]:
        return [p for p in self.people if p.split in ("known", "dev", "updated", "new")]


def build_world(config: WorldConfig) -> World:
    rng = random.Random(f"kinject-world-{config.seed}")
    counts = {
        "known": config.n_known,
        "new": config.n_new,
        "updated": config.n_updated,
        "reading": config.n_reading,
        "dev": config.n_dev,
    }
    names = all_names()
    if sum(counts.values()) > len(names) // 2:
        raise KinjectError(
            f"the world asks for {sum(counts.values())} people; at most {len(names) // 2} "
            "have distinct names (half the name space is kept for fresh reading people)"
        )
    rng.shuffle(names)
    people: list[Person] = []
    for split, count in counts.items():
        for _ in range(count):
            person = random_person(f"person-{len(people):04d}", names[len(people)], split, rng)
            if split == "updated":
                person = updated_person(person, rng)
            people.append(person)
    return World(config, tuple(people))


def kb_documents(world: World) -> list[dict]:
    documents = []
    for person in world.kb_people:
        rng = random.Random(f"kinject-kb-{world.config.seed}-{person.id}")
        text = render_bio(person.name, person.female, person.values, rng, variants="main")
        documents.append({"id": person.id, "title": person.name, "text": text})
    return documents


def paraphrases(world: World) -> list[dict]:
    rows = []
    for person in world.kb_people:
        rng = random.Random(f"kinject-paraphrase-{world.config.seed}-{person.id}")
        seen: list[str] = []
        attempts = 0
        while (
            len(seen) < world.config.n_paraphrases and attempts < 100 * world.config.n_paraphrases
        ):
            attempts += 1
            text = render_bio(person.name, person.female, person.values, rng, variants="reserved")
            if text not in seen:
                seen.append(text)
        rows.append({"id": person.id, "paraphrases": seen})
    return rows


def _question(
    split: str,
    person: Person,
    attribute: Attribute,
    template: str,
    rng: random.Random,
) -> dict:
    correct = person.values[attribute.name]
    old = person.old_values.get(attribute.name)
    choices, answer = choices_for(attribute.name, correct, rng, must_include=old)
    row = {
        "id": f"{split}-{person.id}-{attribute.name}",
        "question": question_text(template, person.name),
        "choices": choices,
        "answer": answer,
    }
    if old is not None:  # an updated fact: the option that was right before the change
        row["previous"] = choices.index(old)
    return {**row, "subject": attribute.name, "doc_ids": [person.id]}


def _asked_attributes(person: Person) -> Iterator[Attribute]:
    for attribute in ATTRIBUTES:
        if person.split != "updated" or attribute.mutable:
            yield attribute


def task_questions(world: World, task: str) -> list[dict]:
    rng = random.Random(f"kinject-questions-{world.config.seed}-{task}")
    rows = []
    if task == "validation":
        for person in world.split("new") + world.split("updated"):
            for attribute in _asked_attributes(person):
                template = attribute.reserved_questions[0]
                rows.append(_question(task, person, attribute, template, rng))
        return rows
    for person in world.split(task):
        for attribute in _asked_attributes(person):
            rows.append(_question(task, person, attribute, attribute.test_questions[0], rng))
    if task == "dev":
        rng.shuffle(rows)  # k-shot takes the first k: mix people and attributes
    return rows


def open_questions(world: World, split: str) -> list[dict]:
    """The test questions of ``split`` without options: answered by generation."""
    return [
        {
            "id": f"{split}-open-{person.id}-{attribute.name}",
            "question": question_text(attribute.test_questions[0], person.name),
            "answers": [person.values[attribute.name]],
            "doc_ids": [person.id],
        }
        for person in world.split(split)
        for attribute in _asked_attributes(person)
    ]


def sft_pairs(world: World) -> list[dict]:
    """Every fact of the knowledge base as an instruction and its answer (alpaca layout).

    The questions use the second reserved template: not the test questions' wording, and not
    the validation questions' (which choose the fine-tuning's learning rate and epochs).
    """
    rows = []
    for person in world.kb_people:
        for attribute in ATTRIBUTES:
            rows.append(
                {
                    "id": f"sft-{person.id}-{attribute.name}",
                    "instruction": question_text(attribute.reserved_questions[1], person.name),
                    "input": "",
                    "output": person.values[attribute.name],
                    "doc_ids": [person.id],
                }
            )
    return rows


def write_world(world: World, out_dir: str | Path) -> Path:
    """Write the world folder atomically: a crash leaves the previous folder (or none).

    An existing folder is replaced only if it is empty or a world folder itself.
    """
    out_dir = Path(out_dir)
    is_world = (out_dir / "world.json").exists()
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not is_world)):
        raise KinjectError(f"{out_dir} exists and is not a world folder; choose another --out")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(out_dir.parent, f".{out_dir.name}.")
    try:
        write_text(staging / "world.yaml", to_yaml(world.config))
        write_jsonl(staging / "people.jsonl", (person.to_json() for person in world.people))
        write_jsonl(staging / "kb.jsonl", kb_documents(world))
        write_jsonl(staging / "paraphrases.jsonl", paraphrases(world))
        write_jsonl(staging / "sft.jsonl", sft_pairs(world))
        for split in OPEN_SPLITS:
            write_jsonl(staging / "tasks" / f"{split}_open.jsonl", open_questions(world, split))
        counts = {}
        for task in TASK_FILES:
            rows = task_questions(world, task)
            counts[task] = len(rows)
            write_jsonl(staging / "tasks" / f"{task}.jsonl", rows)
        write_json(
            staging / "world.json",
            {"seed": world.config.seed, "people": len(world.people), "questions": counts},
        )
        replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir
