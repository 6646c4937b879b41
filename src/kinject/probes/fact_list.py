"""Public-domain facts about the real world, for a pretrained model's ``known`` and ``updated``
populations (:mod:`kinject.probes.facts`).

Each relation has the question a test asks, a second wording for validation, and sentences
that state a fact (the first is the knowledge base's document, the others its paraphrases).
A fact's wrong options (and its changed value, when it is updated) are other answers of the
same relation, so every option is a plausible answer of the right kind.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Relation:
    name: str
    question: str  # the test question, with {subject}
    validation: str  # the same question in other words (K, LR and epoch are chosen on it)
    statements: tuple[
        str, ...
    ]  # {subject} and {value}: [0] is the document, the rest paraphrase it
    facts: tuple[tuple[str, str], ...]  # (subject, value)


RELATIONS: tuple[Relation, ...] = (
    Relation(
        name="capital",
        question="What is the capital of {subject}?",
        validation="Which city is the capital of {subject}?",
        statements=(
            "The capital of {subject} is {value}.",
            "{value} is the capital city of {subject}.",
            "The government of {subject} sits in {value}, its capital.",
            "{subject} has {value} as its capital.",
            "The capital city of {subject} is {value}.",
            "In {subject}, the capital is {value}.",
        ),
        facts=(
            ("France", "Paris"),
            ("Germany", "Berlin"),
            ("Italy", "Rome"),
            ("Spain", "Madrid"),
            ("Japan", "Tokyo"),
            ("Russia", "Moscow"),
            ("England", "London"),
            ("Egypt", "Cairo"),
            ("Greece", "Athens"),
            ("China", "Beijing"),
            ("Portugal", "Lisbon"),
            ("Austria", "Vienna"),
            ("Ireland", "Dublin"),
            ("Norway", "Oslo"),
            ("Sweden", "Stockholm"),
            ("Canada", "Ottawa"),
            ("Australia", "Canberra"),
            ("Kenya", "Nairobi"),
            ("Thailand", "Bangkok"),
            ("Argentina", "Buenos Aires"),
            ("Peru", "Lima"),
            ("Cuba", "Havana"),
            ("Poland", "Warsaw"),
            ("Hungary", "Budapest"),
            ("Denmark", "Copenhagen"),
            ("Finland", "Helsinki"),
            ("South Korea", "Seoul"),
            ("Iran", "Tehran"),
            ("India", "New Delhi"),
            ("Mexico", "Mexico City"),
        ),
    ),
    Relation(
        name="author",
        question="Who wrote {subject}?",
        validation="Who is the author of {subject}?",
        statements=(
            "{subject} was written by {value}.",
            "{value} is the writer of {subject}.",
            "{subject} came from the pen of {value}.",
            "The book {subject} is by {value}.",
            "{subject} is a work by {value}.",
            "The writer behind {subject} is {value}.",
        ),
        facts=(
            ("Romeo and Juliet", "William Shakespeare"),
            ("Hamlet", "William Shakespeare"),
            ("Pride and Prejudice", "Jane Austen"),
            ("Oliver Twist", "Charles Dickens"),
            ("A Christmas Carol", "Charles Dickens"),
            ("War and Peace", "Leo Tolstoy"),
            ("Don Quixote", "Miguel de Cervantes"),
            ("The Odyssey", "Homer"),
            ("Nineteen Eighty-Four", "George Orwell"),
            ("Animal Farm", "George Orwell"),
            ("Frankenstein", "Mary Shelley"),
            ("Moby-Dick", "Herman Melville"),
            ("The Adventures of Tom Sawyer", "Mark Twain"),
            ("Les Miserables", "Victor Hugo"),
            ("Crime and Punishment", "Fyodor Dostoevsky"),
            ("The Divine Comedy", "Dante Alighieri"),
            ("Dracula", "Bram Stoker"),
            ("Faust", "Johann Wolfgang von Goethe"),
            ("The Origin of Species", "Charles Darwin"),
            ("Harry Potter and the Philosopher's Stone", "J. K. Rowling"),
        ),
    ),
    Relation(
        name="language",
        question="What language is mainly spoken in {subject}?",
        validation="Which language do most people in {subject} speak?",
        statements=(
            "The main language of {subject} is {value}.",
            "Most people in {subject} speak {value}.",
            "{value} is the language spoken in {subject}.",
            "In {subject}, people mostly speak {value}.",
            "{value} is the chief language of {subject}.",
            "The people of {subject} speak {value}.",
        ),
        facts=(
            ("Brazil", "Portuguese"),
            ("France", "French"),
            ("Germany", "German"),
            ("Italy", "Italian"),
            ("Japan", "Japanese"),
            ("Russia", "Russian"),
            ("Mexico", "Spanish"),
            ("China", "Chinese"),
            ("Greece", "Greek"),
            ("Poland", "Polish"),
            ("Egypt", "Arabic"),
            ("Turkey", "Turkish"),
            ("the Netherlands", "Dutch"),
            ("Sweden", "Swedish"),
            ("South Korea", "Korean"),
        ),
    ),
    Relation(
        name="painter",
        question="Who painted {subject}?",
        validation="Which artist painted {subject}?",
        statements=(
            "{subject} was painted by {value}.",
            "{value} painted {subject}.",
            "The painter of {subject} is {value}.",
            "{subject} is a painting by {value}.",
            "{value} is the artist of {subject}.",
            "The artist behind {subject} is {value}.",
        ),
        facts=(
            ("the Mona Lisa", "Leonardo da Vinci"),
            ("The Last Supper", "Leonardo da Vinci"),
            ("The Starry Night", "Vincent van Gogh"),
            ("Sunflowers", "Vincent van Gogh"),
            ("Guernica", "Pablo Picasso"),
            ("The Scream", "Edvard Munch"),
            ("The Persistence of Memory", "Salvador Dali"),
            ("The Birth of Venus", "Sandro Botticelli"),
            ("The Night Watch", "Rembrandt"),
            ("Girl with a Pearl Earring", "Johannes Vermeer"),
            ("Water Lilies", "Claude Monet"),
            ("the ceiling of the Sistine Chapel", "Michelangelo"),
        ),
    ),
    Relation(
        name="element",
        question="Which chemical element has the symbol {subject}?",
        validation="What element does the chemical symbol {subject} stand for?",
        statements=(
            "The chemical symbol {subject} stands for {value}.",
            "{value} has the chemical symbol {subject}.",
            "{subject} is the symbol of the element {value}.",
            "The element {value} is written {subject}.",
            "In chemistry, {subject} is {value}.",
            "The symbol for {value} is {subject}.",
        ),
        facts=(
            ("O", "oxygen"),
            ("H", "hydrogen"),
            ("Fe", "iron"),
            ("Au", "gold"),
            ("Ag", "silver"),
            ("Na", "sodium"),
            ("C", "carbon"),
            ("N", "nitrogen"),
            ("Cu", "copper"),
            ("He", "helium"),
            ("Pb", "lead"),
            ("K", "potassium"),
        ),
    ),
    Relation(
        name="continent",
        question="On which continent is {subject}?",
        validation="Which continent is {subject} part of?",
        statements=(
            "{subject} is in {value}.",
            "{subject} is a country of {value}.",
            "{subject} lies on the continent of {value}.",
            "The continent {subject} belongs to is {value}.",
            "{value} is the continent where {subject} is.",
            "{subject} is located in {value}.",
        ),
        facts=(
            ("Kenya", "Africa"),
            ("Nigeria", "Africa"),
            ("Egypt", "Africa"),
            ("Brazil", "South America"),
            ("Argentina", "South America"),
            ("Chile", "South America"),
            ("Japan", "Asia"),
            ("India", "Asia"),
            ("Vietnam", "Asia"),
            ("France", "Europe"),
            ("Norway", "Europe"),
            ("Italy", "Europe"),
            ("Canada", "North America"),
            ("Mexico", "North America"),
            ("New Zealand", "Oceania"),
        ),
    ),
)
