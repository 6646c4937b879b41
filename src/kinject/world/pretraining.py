"""The base model's pretraining text, made fresh for every pass over the world.

Three kinds of document, all in the same "Question: …\\nAnswer: …" format the evaluator uses:

* **known** people (known, updated with their *old* values, dev): biographies in main
  templates, and quizzes of questions about them — knowledge the base model stores;
* **reading** documents: a biography (sometimes among others) followed by questions about
  it, sometimes led by a quiz about known people (the shape of a k-shot prompt).  Most are
  about *fresh* people, sampled anew every pass, so they can only be answered by reading
  the context; the fixed ``reading`` split is in every pass.  This is how a model trained
  from scratch learns to use retrieved context at all;
* **new** people never appear.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from kinject.models.packing import TrainingDocument
from kinject.world.build import World
from kinject.world.people import Person, all_names, random_person, render_bio
from kinject.world.vocabulary import ATTRIBUTES, Attribute

ANSWER_PREFIX = "\nAnswer: "


def qa_text(question: str, answer: str) -> str:
    return f"Question: {question}{ANSWER_PREFIX}{answer}"


@dataclass(frozen=True)
class MixSettings:
    known_bios: int = 2  # biographies of each known person per pass
    known_questions: int = 1  # questions per known fact per pass
    reading_ratio: float = 1.0  # fresh reading documents per known person per pass
    reading_questions: tuple[int, int] = (2, 6)  # questions per reading document (range)
    max_distractor_bios: int = 1  # other people's bios beside the target's
    answer_loss_only: bool = True  # reading documents: loss on the answers only
    quiz_prefix_probability: float = 0.3  # reading documents led by a k-shot-like quiz
    max_quiz_questions: int = 6  # questions in a quiz about known people
    bio_facts: int = len(ATTRIBUTES)  # facts per reading bio (fewer: shorter, easier contexts)


class FreshPeople:
    """An endless supply of people who are in no split (names unused by the world)."""

    def __init__(self, world: World, rng: random.Random):
        taken = world.names
        self.names = [name for name in all_names() if name not in taken]
        self.rng = rng
        self.count = 0

    def __call__(self) -> Person:
        self.count += 1
        return random_person(f"fresh-{self.count}", self.rng.choice(self.names), "fresh", self.rng)


def _any_question(attribute: Attribute, rng: random.Random) -> str:
    """Pretraining asks in every phrasing, test and reserved alike."""
    return rng.choice(attribute.test_questions + attribute.reserved_questions)


def _quiz(facts: list[tuple[Person, Attribute, str]]) -> str:
    lines = []
    for person, attribute, template in facts:
        lines.append(
            qa_text(template.format(name=person.name), person.pretraining_values[attribute.name])
        )
    return "\n\n".join(lines)


def _random_facts(
    people: list[Person], count: int, rng: random.Random
) -> list[tuple[Person, Attribute, str]]:
    facts = []
    for _ in range(count):
        attribute = rng.choice(ATTRIBUTES)
        template = _any_question(attribute, rng)
        facts.append((rng.choice(people), attribute, template))
    return facts


def _facts_in_bio(settings: MixSettings, rng: random.Random) -> tuple[Attribute, ...]:
    if settings.bio_facts >= len(ATTRIBUTES):
        return ATTRIBUTES
    return tuple(rng.sample(ATTRIBUTES, settings.bio_facts))


def _reading_document(
    target: Person,
    distractors: list[Person],
    settings: MixSettings,
    rng: random.Random,
    known: list[Person],
) -> TrainingDocument:
    """``[quiz about known people]  bios  questions about the target`` — the shape of a
    k-shot prompt with retrieved context, so the model reads context behind examples too."""
    people = [target, *distractors]
    rng.shuffle(people)
    facts = {p.id: _facts_in_bio(settings, rng) for p in people}
    parts = [
        render_bio(p.name, p.female, p.values, rng, variants="all", attributes=facts[p.id])
        for p in people
    ]
    if known and rng.random() < settings.quiz_prefix_probability:
        count = rng.randint(1, settings.max_quiz_questions)
        parts.insert(0, _quiz(_random_facts(known, count, rng)))
    attributes = list(facts[target.id])
    rng.shuffle(attributes)
    low, high = settings.reading_questions
    spans = []
    text = "\n\n".join(parts)
    for attribute in attributes[: rng.randint(low, high)]:
        text += "\n\n" + qa_text(_any_question(attribute, rng).format(name=target.name), "")
        answer = target.values[attribute.name]
        spans.append((len(text), len(text) + len(answer)))
        text += answer
    return TrainingDocument(text, tuple(spans) if settings.answer_loss_only else None)


def _known_documents(
    world: World, settings: MixSettings, rng: random.Random
) -> list[TrainingDocument]:
    documents = []
    people = world.pretrained_people
    for person in people:
        for _ in range(settings.known_bios):
            bio = render_bio(person.name, person.female, person.pretraining_values, rng)
            documents.append(TrainingDocument(bio))
    facts = [
        (p, a, _any_question(a, rng))
        for p in people
        for a in ATTRIBUTES
        for _ in range(settings.known_questions)
    ]
    rng.shuffle(facts)
    while facts:  # quizzes, like k-shot prompts
        size = rng.randint(1, settings.max_quiz_questions)
        documents.append(TrainingDocument(_quiz(facts[:size])))
        facts = facts[size:]
    return documents


def pretraining_documents(
    world: World, seed: int, epoch: int, settings: MixSettings, reading_only: bool = False
) -> list[TrainingDocument]:
    """The documents of one pass, shuffled; a pure function of (world, seed, epoch, settings)."""
    rng = random.Random(f"kinject-pretrain-{world.config.seed}-{seed}-{epoch}")
    fresh = FreshPeople(world, rng)
    documents = [] if reading_only else _known_documents(world, settings, rng)
    known = [] if reading_only else world.pretrained_people  # no known facts in a warm-up
    for person in world.split("reading"):
        documents.append(_reading_document(person, [], settings, rng, known))
    n_fresh = int(settings.reading_ratio * len(world.pretrained_people))
    for _ in range(n_fresh):
        distractors = [fresh() for _ in range(rng.randint(0, settings.max_distractor_bios))]
        documents.append(_reading_document(fresh(), distractors, settings, rng, known))
    rng.shuffle(documents)
    return documents
