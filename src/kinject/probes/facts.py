"""A pretrained model's own ``known`` and ``updated`` populations, checked by scoring.

The synthetic world's ``known`` people mean nothing to a real model.  What a real model
knows is found by asking it: every fact of :mod:`kinject.probes.fact_list` is put to the
model closed book as a four-option question, and the facts it answers right are the ones it
knows.  They are split in two, seeded:

* ``known``: asked as they are; the knowledge base says nothing about them, so a drop there
  after fine-tuning (or beside retrieved text) is forgetting;
* ``updated``: the knowledge base states a changed value (``The capital of France is
  Rome.``); the question's answer is the new value and ``previous`` names the old one, so
  the tables show whether retrieval or fine-tuning moved the model off a fact it was sure of.

Beside them go some of the world's fictional ``new`` people (their biographies in the
knowledge base too).  The output folder (staged, then renamed into place)::

    corpus.jsonl          the knowledge base: updated facts' documents, new people's bios
    oracle.jsonl          the same and a true statement of every known fact: the oracle
                          arm's gold documents (never retrieved, never trained on)
    paraphrases.jsonl     paraphrases of every document (other sentences for a fact, the
                          world's paraphrases for a bio)
    tasks/known.jsonl     multiple-choice test tasks
    tasks/updated.jsonl
    tasks/new.jsonl
    tasks/validation.jsonl  updated facts and new people in other words: chooses K, LR, epoch
    candidates.jsonl      every fact asked, with the model's log-likelihoods and "known"
    facts.json            the config, the model, counts per relation
"""

from __future__ import annotations

import random
from pathlib import Path

from pydantic import Field

from kinject.errors import KinjectError
from kinject.probes.fact_list import RELATIONS, Relation
from kinject.section import Section

FACTS_FORMAT = 1  # bump when the folder's files change
# the world's files the new people come from (all of them decide the folder)
WORLD_NEW, WORLD_VALIDATION = "tasks/new.jsonl", "tasks/validation.jsonl"
WORLD_KB, WORLD_PARAPHRASES = "kb.jsonl", "paraphrases.jsonl"
WORLD_FILES = (WORLD_NEW, WORLD_VALIDATION, WORLD_KB, WORLD_PARAPHRASES)


class FactsConfig(Section):
    """A model's checked ``known`` / ``updated`` populations beside the world's new people
    (what ``kinject probes facts`` writes); an experiment's ``facts:`` section builds it
    once and caches it by the model, the world's files and these settings."""

    model: str = Field(
        description="The model whose knowledge is checked: a folder, a .gguf file or a "
        "preset (smollm2-135m-instruct)."
    )
    world: str | None = Field(
        None, description="A 'kinject world build' folder (e.g. ${world}): its new people join in."
    )
    n_new: int = Field(12, ge=0, description="New (fictional) people taken from the world.")
    seed: int = Field(0, description="Options' order and the known/updated split.")


def facts_fingerprint(config: FactsConfig) -> str:
    """A digest of everything that decides the folder: the model by content, the world files
    read, the built-in fact list, the settings and this module's format (bump FACTS_FORMAT
    when :func:`verify`'s scoring changes)."""
    from kinject.cache import fingerprint
    from kinject.config import ModelSpec
    from kinject.evaluation.identity import model_identity
    from kinject.fileio import sha256_of

    world = None
    if config.world is not None and config.n_new:
        world = {}
        for name in WORLD_FILES:
            path = Path(config.world) / name
            world[name] = sha256_of(path) if path.is_file() else None
    relations = [[r.name, r.question, r.validation, r.statements, r.facts] for r in RELATIONS]
    return fingerprint(
        FACTS_FORMAT,
        config.model_dump(mode="json", exclude={"world", "model"}),
        model_identity(ModelSpec(path=config.model)),
        world,
        relations,
    )


def _distinct_values(relation: Relation) -> list[str]:
    return sorted({value for _, value in relation.facts})


def _fact_id(relation: Relation, subject: str) -> str:
    slug = "".join(c if c.isalnum() else "-" for c in subject.lower()).strip("-")
    return f"{relation.name}-{slug}"


def candidate_facts(seed: int) -> list[dict]:
    """Every built-in fact with three wrong options and a changed value (one of them), in a
    seeded order of options."""
    facts = []
    for relation in RELATIONS:
        values = _distinct_values(relation)
        for subject, value in relation.facts:
            fact_id = _fact_id(relation, subject)
            rng = random.Random(f"{seed}:{fact_id}")
            wrong = rng.sample([v for v in values if v != value], 3)
            choices = [value, *wrong]
            rng.shuffle(choices)
            facts.append(
                {
                    "id": fact_id,
                    "relation": relation.name,
                    "subject": subject,
                    "value": value,
                    "changed": wrong[0],
                    "choices": choices,
                }
            )
    return facts


def _relation(name: str) -> Relation:
    return next(r for r in RELATIONS if r.name == name)


def fact_question(fact: dict, split: str, wording: str = "question") -> dict:
    """A fact as a task record: ``known`` asks for its value, ``updated`` for its changed
    value (``previous``: the old one's option)."""
    relation = _relation(fact["relation"])
    template = relation.question if wording == "question" else relation.validation
    answer = fact["changed"] if split == "updated" else fact["value"]
    record = {
        "id": f"{split}-{fact['id']}" + ("" if wording == "question" else "-validation"),
        "question": template.format(subject=fact["subject"]),
        "choices": fact["choices"],
        "answer": fact["choices"].index(answer),
        "subject": fact["relation"],
    }
    if split == "updated":
        record["previous"] = fact["choices"].index(fact["value"])
    record["doc_ids"] = [f"fact-{fact['id']}"]
    return record


def fact_documents(fact: dict, changed: bool = True) -> tuple[dict, list[str]]:
    """A fact's document (its changed value, or its true one) and the document's
    paraphrases."""
    relation = _relation(fact["relation"])
    value = fact["changed"] if changed else fact["value"]
    sentences = [s.format(subject=fact["subject"], value=value) for s in relation.statements]
    sentences = [s[0].upper() + s[1:] for s in sentences]
    doc = {"id": f"fact-{fact['id']}", "title": fact["subject"], "text": sentences[0]}
    return doc, sentences[1:]


def _world_rows(world: Path, name: str, fields: tuple[str, ...]) -> list[dict]:
    """A world file's rows, each holding ``fields`` (an error names the file, line, field)."""
    from kinject.errors import DataError
    from kinject.fileio import read_jsonl

    path = world / name
    if not path.is_file():
        raise KinjectError(f"{path}: file not found (a folder of 'kinject world build'?)")
    rows = []
    for line, row in read_jsonl(path):
        for field in fields:
            if field not in row:
                raise DataError(path, line, field, "missing")
        rows.append(row)
    return rows


def _new_people(world: Path, n_new: int) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    """The first ``n_new`` of the world's new people: bios, paraphrases, test questions and
    validation questions."""
    new = _world_rows(world, WORLD_NEW, ("doc_ids",))
    people = list(dict.fromkeys(doc for row in new for doc in row["doc_ids"]))[:n_new]
    if len(people) < n_new:
        raise KinjectError(f"{world}: {len(people)} new people, {n_new} asked for")
    chosen = set(people)
    bios = [doc for doc in _world_rows(world, WORLD_KB, ("id",)) if doc["id"] in chosen]
    paraphrases = [p for p in _world_rows(world, WORLD_PARAPHRASES, ("id",)) if p["id"] in chosen]
    questions = [row for row in new if set(row["doc_ids"]) <= chosen]
    validation = [
        row
        for row in _world_rows(world, WORLD_VALIDATION, ("doc_ids",))
        if "previous" not in row and row["doc_ids"] and set(row["doc_ids"]) <= chosen
    ]
    return bios, paraphrases, questions, validation


def verify(model: str, facts: list[dict], folder: Path, show_progress: bool) -> dict[str, dict]:
    """Ask the model every fact closed book, in both wordings; a fact is known when both
    answers are right.  Returns, per fact id, the log-likelihoods and ``known``."""
    from kinject.config import EvalConfig, ModelSpec, TaskSpec
    from kinject.evaluation.evaluate import run_evaluation
    from kinject.fileio import read_jsonl, write_jsonl

    folder.mkdir(parents=True, exist_ok=True)
    for wording in ("question", "validation"):
        write_jsonl(
            folder / f"{wording}.jsonl", [fact_question(f, "known", wording) for f in facts]
        )
    config = EvalConfig(
        model=ModelSpec(path=model),
        label="model",
        tasks=[
            TaskSpec(name=w, path=str(folder / f"{w}.jsonl")) for w in ("question", "validation")
        ],
        arms=["base"],
        shots=[0],
    )
    run_evaluation(config, folder / "run", show_progress=show_progress)
    asked: dict[str, dict] = {f["id"]: {} for f in facts}
    for _, record in read_jsonl(folder / "run" / "records.jsonl"):
        fact_id = record["question_id"].removeprefix("known-").removesuffix("-validation")
        asked[fact_id][record["split"]] = {
            "loglikelihoods": record["loglikelihoods"],
            "correct": record["correct"],
        }
    for result in asked.values():
        result["known"] = all(result[w]["correct"] for w in ("question", "validation"))
    return asked


def build_facts(
    model: str,
    out: str | Path,
    world: str | Path | None = None,
    n_new: int = 12,
    seed: int = 0,
    show_progress: bool = True,
) -> dict:
    """Write the folder described above for ``model``; returns ``facts.json``'s content."""
    import shutil

    from kinject.fileio import replace_dir, staging_dir, write_json, write_jsonl

    out = Path(out)
    staging = staging_dir(out.parent, f".{out.name}-")
    try:
        people = _new_people(Path(world), n_new) if world is not None and n_new else None
        facts = candidate_facts(seed)
        asked = verify(model, facts, staging / "verify", show_progress)
        known = [f for f in facts if asked[f["id"]]["known"]]
        if len(known) < 2:
            raise KinjectError(
                f"{model} answered {len(known)} of {len(facts)} built-in facts right in both "
                "wordings: too few for a known and an updated population"
            )
        order = list(known)
        random.Random(seed).shuffle(order)
        updated_ids = {f["id"] for f in order[: len(order) // 2]}
        splits = {"known": [], "updated": []}
        validation, corpus, paraphrases, true_docs = [], [], [], []
        for fact in known:  # known: no KB document; updated: the KB states the changed value
            if fact["id"] in updated_ids:
                splits["updated"].append(fact_question(fact, "updated"))
                validation.append(fact_question(fact, "updated", "validation"))
                doc, others = fact_documents(fact)
                corpus.append(doc)
                paraphrases.append({"id": doc["id"], "paraphrases": others})
            else:
                splits["known"].append(fact_question(fact, "known"))
                true_docs.append(fact_documents(fact, changed=False)[0])
        if people is not None:
            bios, bio_paraphrases, questions, new_validation = people
            corpus += bios
            paraphrases += bio_paraphrases
            splits["new"] = questions
            validation += new_validation
        (staging / "tasks").mkdir()
        for split, rows in splits.items():
            write_jsonl(staging / "tasks" / f"{split}.jsonl", rows)
        write_jsonl(staging / "tasks" / "validation.jsonl", validation)
        write_jsonl(staging / "corpus.jsonl", corpus)
        write_jsonl(staging / "oracle.jsonl", corpus + true_docs)
        write_jsonl(staging / "paraphrases.jsonl", paraphrases)
        write_jsonl(staging / "candidates.jsonl", [{**f, **asked[f["id"]]} for f in facts])
        shutil.rmtree(staging / "verify")
        relations = {}
        for fact in facts:
            counts = relations.setdefault(fact["relation"], {"asked": 0, "known": 0})
            counts["asked"] += 1
            counts["known"] += int(asked[fact["id"]]["known"])
        manifest = {
            "format": FACTS_FORMAT,
            "model": model,
            "world": None if world is None else str(world),
            "n_new": n_new if people is not None else 0,
            "seed": seed,
            "asked": len(facts),
            "known": len(known),
            "counts": {split: len(rows) for split, rows in splits.items()}
            | {"validation": len(validation), "documents": len(corpus)},
            "relations": relations,
        }
        write_json(staging / "facts.json", manifest)
        replace_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest
