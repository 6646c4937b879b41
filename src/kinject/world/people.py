"""People of the synthetic world, their biographies, and multiple-choice questions about them."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from kinject.world.vocabulary import (
    ATTRIBUTES,
    CITIES,
    EMPLOYERS,
    FIRST_NAMES,
    LAST_NAMES,
    MAJORS,
    MONTHS,
    UNIVERSITIES,
    Attribute,
)

FEMALE_FIRST_NAMES = frozenset(
    [
        "Abigail",
        "Agnes",
        "Alice",
        "Alma",
        "Amelia",
        "Anita",
        "Astrid",
        "Audrey",
        "Beatrice",
        "Bianca",
        "Brenda",
        "Camille",
        "Carmen",
        "Celia",
        "Clara",
        "Cora",
        "Dalia",
        "Daphne",
        "Delia",
        "Edith",
        "Elena",
        "Elsa",
        "Esther",
        "Fiona",
        "Flora",
        "Frida",
        "Gemma",
        "Greta",
        "Hazel",
        "Helga",
        "Hilda",
        "Ida",
        "Imogen",
        "Ingrid",
        "Irene",
        "Joan",
        "Juno",
        "Katya",
        "Leona",
        "Lorna",
        "Lydia",
        "Marta",
        "Mavis",
        "Mina",
        "Miriam",
        "Nadia",
        "Nina",
        "Nora",
        "Olga",
        "Petra",
        "Rhea",
        "Rosa",
        "Sabine",
        "Simone",
        "Tamsin",
        "Ursula",
        "Vera",
        "Wanda",
    ]
)

POOLS: dict[str, tuple[str, ...]] = {
    "birth_city": CITIES,
    "home_city": CITIES,
    "university": UNIVERSITIES,
    "major": MAJORS,
    "employer": EMPLOYERS,
}


def random_date(rng: random.Random) -> str:
    return f"{rng.choice(MONTHS)} {rng.randint(1, 28)}, {rng.randint(1940, 2004)}"


def random_value(attribute: str, rng: random.Random) -> str:
    if attribute == "birth_date":
        return random_date(rng)
    return rng.choice(POOLS[attribute])


@dataclass(frozen=True)
class Person:
    id: str
    name: str
    split: str  # known | new | updated | reading | dev
    female: bool
    values: dict[str, str]  # the current facts: what the knowledge base states
    old_values: dict[str, str] = field(default_factory=dict)  # updated people: pretraining facts

    @property
    def pretraining_values(self) -> dict[str, str]:
        """The facts as the base model's pretraining text states them."""
        return {**self.values, **self.old_values}

    def to_json(self) -> dict:
        row = {"id": self.id, "name": self.name, "split": self.split, "values": self.values}
        if self.old_values:
            row["old_values"] = self.old_values
        return row


def random_person(person_id: str, name: str, split: str, rng: random.Random) -> Person:
    values = {attribute.name: random_value(attribute.name, rng) for attribute in ATTRIBUTES}
    return Person(person_id, name, split, name.split()[0] in FEMALE_FIRST_NAMES, values)


def updated_person(person: Person, rng: random.Random) -> Person:
    """The same person after a change of every mutable attribute (new job, new city)."""
    new_values = dict(person.values)
    old_values = {}
    for attribute in ATTRIBUTES:
        if attribute.mutable:
            old = person.values[attribute.name]
            new = old
            while new == old:
                new = random_value(attribute.name, rng)
            new_values[attribute.name] = new
            old_values[attribute.name] = old
    return Person(person.id, person.name, person.split, person.female, new_values, old_values)


def all_names() -> list[str]:
    return [f"{first} {last}" for first in FIRST_NAMES for last in LAST_NAMES]


def _fill(template: str, person_name: str, female: bool, value: str, use_name: bool) -> str:
    pronoun = "she" if female else "he"
    if use_name:
        # The first sentence of a bio must name the person: a pronoun opening becomes the name.
        template = template.replace("{Pronoun}", "{name}")
    text = template.format(
        name=person_name,
        Pronoun=pronoun.capitalize(),
        pronoun=pronoun,
        possessive="her" if female else "his",
        value=value,
    )
    return text[0].upper() + text[1:]


def render_bio(
    name: str,
    female: bool,
    values: dict[str, str],
    rng: random.Random,
    variants: str = "main",
    attributes: tuple[Attribute, ...] = ATTRIBUTES,
) -> str:
    """One biography: a sentence per attribute, in random order and random phrasing.

    ``variants`` picks the sentence templates: ``main`` (knowledge base and pretraining),
    ``reserved`` (paraphrases, never in the knowledge base), or ``all``.  ``attributes``
    limits the bio to some facts (short bios for a reading curriculum).
    """
    order = list(attributes)
    rng.shuffle(order)
    sentences = []
    for position, attribute in enumerate(order):
        templates = _sentence_templates(attribute, variants)
        template = rng.choice(templates)
        sentences.append(
            _fill(template, name, female, values[attribute.name], use_name=position == 0)
        )
    return " ".join(sentences)


def _sentence_templates(attribute: Attribute, variants: str) -> tuple[str, ...]:
    if variants == "main":
        return attribute.main_sentences
    if variants == "reserved":
        return attribute.reserved_sentences
    return attribute.main_sentences + attribute.reserved_sentences


def choices_for(
    attribute: str, correct: str, rng: random.Random, must_include: str | None = None
) -> tuple[list[str], int]:
    """Four distinct options from the attribute's pool, the correct one at a random position."""
    distractors: list[str] = []
    if must_include is not None and must_include != correct:
        distractors.append(must_include)
    while len(distractors) < 3:
        value = random_value(attribute, rng)
        if value != correct and value not in distractors:
            distractors.append(value)
    rng.shuffle(distractors)
    answer = rng.randrange(4)
    choices = distractors[:answer] + [correct] + distractors[answer:]
    return choices, answer


def question_text(template: str, name: str) -> str:
    return template.format(name=name)
