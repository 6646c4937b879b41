"""Questions whose answer kinject takes from the text (`questions generate --answer-first`):
the spans it picks, and the whole command on a real knowledge base (MiniLM), without a model
and with a tiny GPT-2 built from a config."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kinject.datasets.answer_first import BLANK, SpanFinder, phrasing_check
from kinject.tasks.loaders import load_mc_jsonl
from test_cli import kinject

DOCS = {
    "harbour.md": "# The harbour\n\nThe harbour of Velmar was built in 1612 by the merchant "
    "Oskar Lind and his partner Greta Holm. It held 340 ships at its height, most of them "
    "trading salt with the island of Brenna.\n",
    "bridge.md": "# The bridge\n\nThe stone bridge across the Tavel river was finished in 1788 "
    "after a flood destroyed the wooden one. Its architect Mirela Sand used 12 arches and "
    "stone from the Kessel quarry.\n",
    "school.md": "# The school\n\nThe first school of Velmar opened in 1841 with 65 pupils and "
    "one teacher, Anton Brekke. The school moved to the old customs house near Ostby square "
    "in 1903.\n",
    "fire.md": "# The fire\n\nA fire in 1726 burned 200 houses in the old town of Velmar. The "
    "town council under mayor Ilse Dahl rebuilt the streets in brick within 9 years, with "
    "money lent by Jonas Vik.\n",
}


def test_spans_are_years_numbers_and_names_not_ordinary_capitalised_words():
    finder = SpanFinder(["the harbour was busy, north of the town; these ships"])
    kinds = lambda sentence: [(s.kind, s.text) for s in finder.spans(sentence)]
    assert kinds("These ships left Velmar in 1612 with 20,000 barrels for Greta Holm's shop.") == [
        ("year", "1612"),
        ("number", "20,000"),
        ("name", "Velmar"),
        ("name", "Greta Holm"),  # the possessive is not part of the name
    ]
    # times and ranges are neither years nor numbers; a lone capitalised first word is not a name,
    # nor is a capitalised word the texts also write in lower case (North)
    assert kinds(
        "Oskar sailed at 02:00 in the years 1640–42 to the North of the Isle of Brenna."
    ) == [
        ("name", "Isle of Brenna"),
    ]
    span = finder.spans("The bridge of Velmar was repaired in 1788 by Velmar masons.")[-1]
    assert (span.text, span.blanked()) == (
        "Velmar",
        f"The bridge of Velmar was repaired in 1788 by {BLANK} masons.",  # this one, not the first
    )


def test_a_model_question_stands_only_if_it_asks_about_the_sentence_without_the_answer():
    finder = SpanFinder([""])
    sentence = "The harbour of Velmar was built in 1612 by the merchant Oskar Lind."
    span = next(s for s in finder.spans(sentence) if s.text == "Oskar Lind")
    assert phrasing_check("Which merchant built the harbour of Velmar in 1612?", span) is None
    assert phrasing_check("Which merchant built the harbour of Velmar.", span) == "not a question"
    assert phrasing_check("Did Oskar Lind build the harbour?", span) == "gives the answer away"
    assert phrasing_check("What is the correct answer?", span) == "not about the sentence"
    year = next(s for s in finder.spans(sentence) if s.kind == "year")
    assert phrasing_check("Who built the harbour of Velmar?", year) == "does not ask for a year"
    assert phrasing_check("In which year was the harbour of Velmar built?", year) is None


@pytest.fixture(scope="module")
def town_kb(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("town")
    (root / "docs").mkdir()
    for name, text in DOCS.items():
        (root / "docs" / name).write_text(text, encoding="utf-8")
    result = kinject("kb", "build", "docs", "--out", "kb", cwd=root)
    assert result.returncode == 0, result.stderr
    return root


def _generate(root: Path, out: str, *extra: str):
    args = ["questions", "generate", "kb", "--answer-first", "--keep", "2", "--min-chars", "50"]
    return kinject(*args, "--out", out, *extra, cwd=root)


def test_without_a_model_every_question_is_its_sentence_with_the_answer_blanked(town_kb):
    result = _generate(town_kb, "cloze.jsonl")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (town_kb / "cloze.jsonl").read_text().splitlines()]
    task = load_mc_jsonl(town_kb / "cloze.jsonl")  # a task kinject eval reads
    assert len(task) == len(rows) == 8  # two per document, from different sentences
    assert f"question stems: cloze (no model) {len(rows)}" in result.stdout
    counts = [sum(1 for r in rows if r["answer"] == i) for i in range(4)]
    assert max(counts) - min(counts) <= 1
    for row in rows:
        (doc_id,) = row["doc_ids"]
        text = " ".join(DOCS[doc_id].split())
        answer = row["choices"][row["answer"]]
        assert row["question"].count(BLANK) == 1
        assert row["question"].replace(BLANK, answer) in text  # the sentence, answer in place
        wrong = [c for i, c in enumerate(row["choices"]) if i != row["answer"]]
        assert len(set(row["choices"])) == 4
        assert not any(re.search(rf"\b{re.escape(w)}\b", text) for w in wrong), row
        kind = "year" if re.fullmatch(r"1\d{3}", answer) else None
        if kind == "year":  # a year's distractors are years of the other documents
            assert all(re.fullmatch(r"1\d{3}", w) for w in wrong)
    again = _generate(town_kb, "again.jsonl")
    assert again.returncode == 0
    assert (town_kb / "again.jsonl").read_text() == (town_kb / "cloze.jsonl").read_text()


def test_a_local_model_phrases_and_its_failed_questions_become_cloze(town_kb, tiny_gpt2_dir):
    result = _generate(town_kb, "local.jsonl", "--local-path", str(tiny_gpt2_dir))
    assert result.returncode == 0, result.stderr
    rows = load_mc_jsonl(town_kb / "local.jsonl")
    assert len(rows) == 8
    stems = result.stdout.split("question stems: ", 1)[1].splitlines()[0]
    counted = sum(int(n) for n in re.findall(r"\) (\d+)|model (\d+)", stems) for n in n if n)
    assert counted == 8 and "no model" not in stems
    # a random GPT-2 writes no question that stands: each says why it became a cloze stem
    assert all(BLANK in item.question for item in rows), stems
    reasons = r"not a question|length|gives the answer away|not about the sentence|does not ask"
    assert re.search(rf"cloze \(({reasons})", stems)
