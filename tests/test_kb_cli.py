"""``kinject kb …`` as a user runs it: the real app in-process (typer's CliRunner), real files,
the real MiniLM embedder; output and exit codes checked."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kinject.cli import app
from kinject.kb.store import KnowledgeBase

KB_COMMANDS = ["build", "add", "update", "remove", "search", "eval", "wikipedia"]

DOCS = {
    "animals.txt": "Wildebeest migrate across the Serengeti every year in vast herds. Zebras "
    "travel with them. Crocodiles wait in the Mara river for the crossing.",
    "space.md": "# The solar system\n\nJupiter is the largest planet and has dozens of moons. "
    "Saturn's rings are made of ice and rock.",
    "cities.html": "<html><head><title>Harbour cities</title></head><body><p>Amsterdam is "
    "built around a ring of canals. Hamburg has the largest port in Germany.</p></body></html>",
    "facts.jsonl": json.dumps({"id": "fact-1", "text": "Honey never spoils in a sealed jar."})
    + "\n"
    + json.dumps({"id": "fact-2", "text": "Octopuses have three hearts and blue blood."})
    + "\n",
}
QUESTIONS = [
    {"id": "q1", "question": "Where do wildebeest migrate?", "answers": ["x"], "doc_ids": ["animals.txt"]},
    {"id": "q2", "question": "Which planet is the largest?", "answers": ["x"], "doc_ids": ["space.md"]},
    {"id": "q3", "question": "How many hearts does an octopus have?", "answers": ["3"], "doc_ids": ["fact-2"]},
    {"id": "q4", "question": "Which city has canals?", "answers": ["x"], "doc_ids": ["cities.html"]},
]  # fmt: skip


def kinject(*args) -> tuple[int, str, str]:
    """Exit code, stdout and the warnings and errors on stderr of ``kinject ARGS`` (wide, so
    tables do not wrap; stderr's progress bars left out)."""
    result = CliRunner().invoke(app, [str(arg) for arg in args], env={"COLUMNS": "200"})
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    messages = [
        line + "\n"
        for line in result.stderr.splitlines()
        if line.startswith(("warning:", "error:"))
    ]
    return result.exit_code, result.stdout, "".join(messages)


def make_corpus(folder: Path) -> Path:
    for name, content in DOCS.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(content, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def kb_dir(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("cli")
    corpus = make_corpus(base / "corpus")
    config = base / "kb.yaml"
    config.write_text("chunking: {size: 24, overlap: 4}\n", encoding="utf-8")
    code, _, err = kinject("kb", "build", corpus, "--out", base / "kb", "--config", config)
    assert code == 0, err
    return base / "kb"


@pytest.mark.parametrize("command", KB_COMMANDS)
def test_every_kb_command_has_help_with_an_example(command):
    code, out, _ = kinject("kb", command, "--help")
    assert code == 0 and "Example" in out


def test_build_applies_the_config_and_records_its_counts(kb_dir):
    kb = KnowledgeBase.open(kb_dir)
    ids = [document.id for document in kb.documents()]
    assert ids == ["animals.txt", "cities.html", "fact-1", "fact-2", "space.md"]
    assert kb.config.chunking.size == 24  # --config was applied: several chunks per document
    chunks = len(kb.chunks)
    assert chunks > 5
    build = json.loads((kb.snapshot / "build.json").read_text())
    counts = {
        key: build[key] for key in ("documents", "chunks", "embedded", "reused", "duplicates")
    }
    assert counts == {
        "documents": 5,
        "chunks": chunks,
        "embedded": chunks,
        "reused": 0,
        "duplicates": 0,
    }
    assert build["index_bytes"] > 0 and build["embed_seconds"] > 0


def test_build_prints_counts_and_refuses_an_existing_kb(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    code, out, err = kinject("kb", "build", corpus, "--out", tmp_path / "kb")
    assert code == 0, err
    assert out.splitlines() == [
        "built: 5 documents, 5 chunks (5 added; 5 chunks embedded, 0 reused)",
        f"knowledge base: {tmp_path / 'kb'}",
    ]
    assert err == ""
    assert (tmp_path / "kb" / "kb.json").is_file()
    code, _, err = kinject("kb", "build", corpus, "--out", tmp_path / "kb")
    assert code == 2 and err.startswith("error: ") and "kinject kb update" in err


def test_search_prints_ranked_chunks_with_scores_and_titles(kb_dir):
    for retriever in ("dense", "bm25", "hybrid"):
        code, out, err = kinject(
            "kb",
            "search",
            kb_dir,
            "wildebeest migrate Serengeti",
            "-k",
            "3",
            "--retriever",
            retriever,
        )
        assert code == 0, err
        rows = re.findall(r"│\s+(\d)\s+│\s+(\d+\.\d{4})\s+│\s+(\S+::\d+)", out)
        assert [rank for rank, _, _ in rows] == ["1", "2", "3"][: len(rows)] and rows, out
        assert rows[0][2] == "animals.txt::0", (retriever, out)
        scores = [float(score) for _, score, _ in rows]
        assert scores == sorted(scores, reverse=True)
    _, out, _ = kinject("kb", "search", kb_dir, "harbour city canals", "-k", "1")
    assert "cities.html::0" in out and "Harbour cities" in out  # the HTML <title>
    code, _, err = kinject("kb", "search", kb_dir, "x", "--retriever", "sparse")
    assert (
        code == 2 and err == "error: unknown retriever 'sparse' (expected dense, bm25 or hybrid)\n"
    )
    code, _, err = kinject("kb", "search", kb_dir.parent / "nowhere", "x")
    assert code == 2 and "not a knowledge base" in err and len(err.splitlines()) == 1


def test_eval_prints_recall_and_mrr_for_each_retriever(kb_dir, tmp_path):
    questions = tmp_path / "questions.jsonl"
    rows = [*QUESTIONS, {"id": "q5", "question": "?", "answers": ["x"], "doc_ids": ["gone"]}]
    questions.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    out_json = tmp_path / "quality.json"
    code, out, err = kinject("kb", "eval", kb_dir, "--questions", questions, "--out", out_json)
    assert code == 0, err
    assert "5 questions; 1 name no document in the knowledge base" in out
    for header in ("recall@1", "recall@5", "recall@20", "mrr@20"):
        assert header in out
    header = next(line for line in out.splitlines() if "n = 5" in line)
    columns = [cell.strip() for cell in header.split("┃")[2:-1]]
    assert columns == ["dense", "bm25", "hybrid"]
    recall_1 = next(line for line in out.splitlines() if line.startswith("│ recall@1 "))
    cells = [cell.strip() for cell in recall_1.split("│")[2:-1]]
    results = {row["retriever"]: row for row in json.loads(out_json.read_text())["results"]}
    assert results["bm25"]["n"] == 5
    assert results["dense"]["recall@20"] == 0.8  # every question but the missing one
    for name, cell in zip(columns, cells):
        assert cell.startswith(f"{results[name]['recall@1']:.3f} [")

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "q1", "question": "Where?"}) + "\n", encoding="utf-8")
    code, _, err = kinject("kb", "eval", kb_dir, "--questions", bad)
    assert code == 2 and err.startswith(f"error: {bad}, line 1, field 'doc_ids':")


VALIDATION = [
    {"id": "v1", "question": "Which animals cross the Mara river?", "answers": ["x"], "doc_ids": ["animals.txt"]},
    {"id": "v2", "question": "What are Saturn's rings made of?", "answers": ["x"], "doc_ids": ["space.md"]},
    {"id": "v3", "question": "Does honey spoil?", "answers": ["no"], "doc_ids": ["fact-1"]},
    {"id": "v4", "question": "Which city has the largest port in Germany?", "answers": ["x"], "doc_ids": ["cities.html"]},
]  # fmt: skip


def test_eval_chooses_hybrids_fusion_on_validation_questions(kb_dir, tmp_path):
    def questions(name: str, rows) -> Path:
        path = tmp_path / name
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        return path

    test, validation = questions("test.jsonl", QUESTIONS), questions("val.jsonl", VALIDATION)
    out_json = tmp_path / "quality.json"
    args = ("kb", "eval", kb_dir, "--questions", test, "--out", out_json)
    code, out, err = kinject(*args, "--validation", validation)
    assert code == 0, err
    summary = json.loads(out_json.read_text())
    grid = summary["fusion_grid"]
    assert len(grid) == 18 and {row["n"] for row in grid} == {4}
    (chosen,) = [row for row in grid if row.get("chosen")]
    assert chosen["mrr@20"] == max(row["mrr@20"] for row in grid)
    fusion = f"{chosen['fusion']} dense_weight={chosen['dense_weight']:g}"
    hybrid = next(row for row in summary["results"] if row["retriever"] == "hybrid")
    assert hybrid["fusion"].startswith(fusion) and hybrid["n"] == 4
    assert f"hybrid fuses by {fusion}" in out and "chosen on val.jsonl" in out
    marked = [line for line in out.splitlines() if f"│ {chosen['fusion']} *" in line]
    assert len(marked) == 1 and f" {chosen['dense_weight']:g} │" in marked[0]  # the grid's mark

    code, out, _ = kinject(*args, "--fusion", "convex", "--dense-weight", "0.7")
    assert code == 0
    given = json.loads(out_json.read_text())["results"][2]
    assert given["fusion"] == "convex dense_weight=0.7"
    code, _, err = kinject(*args[:-2], "--validation", test)  # the same questions: refused
    assert code == 2 and "are also in" in err and "choose the fusion on other questions" in err


def test_eval_on_squad_finds_the_paragraph_ids_the_build_made(tmp_path):
    squad = {
        "version": "1.1",
        "data": [
            {
                "title": "Harbour_cities",
                "paragraphs": [
                    {
                        "context": "Amsterdam is built around a ring of canals.",
                        "qas": [{"id": "s1", "question": "What is Amsterdam built around?"}],
                    },
                    {
                        "context": "Hamburg has the largest port in Germany.",
                        "qas": [
                            {"id": "s2", "question": "Which German city has the largest port?"}
                        ],
                    },
                ],
            }
        ],
    }
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(squad), encoding="utf-8")
    code, _, err = kinject("kb", "build", path, "--out", tmp_path / "kb")
    assert code == 0, err
    code, out, err = kinject(
        "kb", "eval", tmp_path / "kb", "--questions", path, "--retriever", "bm25"
    )
    assert code == 0, err
    assert "2 questions; 0 name no document in the knowledge base" in out
    assert re.search(r"n = 2\s+┃\s+bm25 ┃", out), out
    assert re.search(r"recall@1\s+│\s+1\.000 \[", out), out


def test_add_update_and_remove_report_what_changed(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    kb = tmp_path / "kb"
    assert kinject("kb", "build", corpus, "--out", kb)[0] == 0

    (corpus / "space.md").write_text("Mars is red.", encoding="utf-8")
    (corpus / "animals.txt").unlink()
    code, out, err = kinject("kb", "update", kb, corpus)
    assert code == 0, err
    assert out == (
        "updated: 4 documents, 4 chunks (0 added, 1 changed, 1 removed, 3 unchanged; "
        "1 chunks embedded, 3 reused)\n"
    )

    extra = tmp_path / "extra.txt"
    extra.write_text("A new note about volcanoes.", encoding="utf-8")
    code, out, err = kinject("kb", "add", kb, extra)
    assert code == 0, err
    assert out == (
        "added: 5 documents, 5 chunks (1 added, 0 changed, 0 removed, 4 unchanged; "
        "1 chunks embedded, 4 reused)\n"
    )

    code, out, err = kinject("kb", "remove", kb, "fact-1", "no-such-doc")
    assert code == 0
    assert err == f"warning: {kb}: no document 'no-such-doc' in the knowledge base\n"
    assert "1 removed" in out and "4 documents" in out

    code, out, err = kinject("kb", "remove", kb, "no-such-doc", "--strict")
    assert code == 2 and out == ""
    assert err == f"error: {kb}: no document 'no-such-doc' in the knowledge base\n"
    assert [d.id for d in KnowledgeBase.open(kb).documents()] == [
        "cities.html",
        "extra.txt",
        "fact-2",
        "space.md",
    ]


def test_bad_input_with_strict_exits_2_and_leaves_no_kb(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    (corpus / "broken.jsonl").write_text('{"id": "x", "text": "fine"}\nnot json\n', "utf-8")
    out_dir = tmp_path / "kbs" / "docs"
    code, out, err = kinject("kb", "build", corpus, "--out", out_dir, "--strict")
    assert code == 2 and out == ""
    assert err.startswith(f"error: {corpus / 'broken.jsonl'}, line 2: not valid JSON")
    assert len(err.splitlines()) == 1
    assert not out_dir.exists()
    assert not out_dir.parent.exists() or list(out_dir.parent.iterdir()) == []

    # without --strict: the bad line is a warning and the rest is built
    code, out, err = kinject("kb", "build", corpus, "--out", out_dir)
    assert code == 0
    assert err.startswith(f"warning: {corpus / 'broken.jsonl'}, line 2: not valid JSON")
    assert out.startswith("built: 6 documents")
