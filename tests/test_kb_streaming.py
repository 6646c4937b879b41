"""A knowledge base is built as a stream: documents wait on disk (a text spool), chunks are
embedded and written a batch at a time, and the indexes are filled from the files.  The real
MiniLM embedder and tokenizer, real FAISS and bm25s, real files; the batch size must never
change a byte of what is written."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from kinject.config import EmbedderConfig, IndexConfig, KBConfig
from kinject.errors import KinjectError
from kinject.kb import embedders
from kinject.kb.embedders import SentenceTransformerEmbedder
from kinject.kb.indexes import (
    BM25Builder,
    bm25_tokens,
    build_bm25_index,
    build_dense_index,
    build_dense_index_from_file,
    npy_row_blocks,
    save_bm25_index,
)
from kinject.kb.ingest import SpooledDocument, TextSpool, ingest
from kinject.kb.store import KnowledgeBase, SourceOptions, build_kb

FIXTURES = Path(__file__).parent / "fixtures" / "wikipedia"
CONFIG = KBConfig(chunking={"size": 48, "overlap": 12})
BATCH = 16

SENTENCES = [
    "The harbour was dredged in the spring to let larger ships reach the quay.",
    "A new bridge now links the old town with the island.",
    "Fishermen sell their catch at dawn on the stone steps.",
    "The lighthouse keeper logs every passing vessel by hand.",
    "Storms in November flood the lower streets twice a year.",
    "The museum keeps a model of every ship built in the yard.",
    "Tourists arrive by ferry and leave before the evening tide.",
    "The market hall was rebuilt after the fire of 1902.",
    "Gulls nest on the roofs of the warehouses along the canal.",
    "A narrow railway once carried coal from the hills to the port.",
    "The school teaches sailing to every child over nine.",
    "Salt from the marshes was the town's first export.",
]
# Several chunks, then a last sentence that differs: documents built on it share their first
# chunks, so the same chunk text comes more than once (one vector, copied to the other rows).
SHARED = " ".join(SENTENCES[:8])


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def make_corpus(folder: Path) -> Path:
    rng = random.Random(7)
    write(folder / "a-shared.txt", SHARED + " The first ending sentence is short.")
    write(folder / "b-shared.txt", SHARED + " A second and different ending follows.")
    for number in range(14):
        sentences = [rng.choice(SENTENCES) for _ in range(rng.randint(3, 9))]
        write(folder / f"m-{number:02d}.txt", " ".join(sentences) + f" Document {number} ends.")
    write(folder / "m-copy.txt", (folder / "m-03.txt").read_text(encoding="utf-8"))
    write(folder / "z-shared.txt", SHARED + " Yet another last sentence, far away.")
    facts = [{"id": f"fact-{i}", "text": SENTENCES[i], "title": f"Fact {i}"} for i in range(3)]
    write(folder / "facts.jsonl", "".join(json.dumps(row) + "\n" for row in facts))
    return folder


class CountingEmbedder(SentenceTransformerEmbedder):
    """The real MiniLM embedder, noting how many texts each call embeds."""

    def __init__(self, config: EmbedderConfig):
        super().__init__(config)
        self.calls: list[int] = []

    def embed(self, texts):
        self.calls.append(len(texts))
        return super().embed(texts)


@pytest.fixture(scope="module")
def counting() -> CountingEmbedder:
    return CountingEmbedder(EmbedderConfig())


def files_of(kb_dir: Path) -> dict[str, bytes]:
    """Every file of the KB's snapshot by relative path; build.json without its timings."""
    snapshot = KnowledgeBase.open(kb_dir).snapshot
    files = {}
    for path in sorted(snapshot.rglob("*")):
        if path.is_file():
            files[path.relative_to(snapshot).as_posix()] = path.read_bytes()
    build = json.loads(files.pop("build.json"))
    for key in ("embed_seconds", "index_seconds"):
        assert build.pop(key) >= 0
    files["build.json (no timings)"] = json.dumps(build).encode()
    return files


def test_a_build_embeds_in_batches_and_writes_what_one_batch_writes(
    tmp_path, monkeypatch, counting
):
    corpus = make_corpus(tmp_path / "corpus")
    monkeypatch.setattr(embedders, "make_embedder", lambda config, show_progress=False: counting)
    quiet = {"show_progress": False}

    counting.calls = []
    streamed = build_kb(
        [corpus], tmp_path / "streamed", CONFIG, SourceOptions(batch=BATCH, **quiet)
    )
    streamed_calls = counting.calls
    counting.calls = []
    whole = build_kb([corpus], tmp_path / "whole", CONFIG, SourceOptions(batch=10_000, **quiet))

    # one call per batch of 16 chunks (a batch embeds only its texts not met before) ...
    assert streamed.chunks > 2 * BATCH and len(streamed_calls) == -(-streamed.chunks // BATCH)
    assert max(streamed_calls) <= BATCH and sum(streamed_calls) == streamed.embedded
    # ... against one call for everything
    assert counting.calls == [whole.embedded] == [streamed.embedded]
    assert streamed.embedded < streamed.chunks  # shared chunk texts were embedded once
    assert KnowledgeBase.open(tmp_path / "streamed").duplicates == {"m-copy.txt": "m-03.txt"}

    # the same text in two rows of one batch, and in rows of different batches (read back)
    kb = KnowledgeBase.open(tmp_path / "streamed")
    rows: dict[str, list[int]] = {}
    for row, chunk in enumerate(kb.chunks):
        rows.setdefault(chunk.sha256, []).append(row)
    repeats = [r for r in rows.values() if len(r) > 1]
    assert any(r[0] // BATCH == r[1] // BATCH for r in repeats)
    assert any(r[0] // BATCH != r[-1] // BATCH for r in repeats)

    assert files_of(tmp_path / "streamed") == files_of(tmp_path / "whole")
    # the appended embeddings.npy is byte for byte what np.save writes of the same array
    vectors = kb.embeddings()
    saved = io.BytesIO()
    np.save(saved, vectors)
    assert (kb.snapshot / "embeddings.npy").read_bytes() == saved.getvalue()
    for repeat in repeats:
        assert all(np.array_equal(vectors[repeat[0]], vectors[row]) for row in repeat)
    # nothing beside the KB: the spool had no name, the staging folder was renamed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "streamed", "whole"]


def test_batch_must_be_positive():
    with pytest.raises(KinjectError, match="batch must be at least 1"):
        SourceOptions(batch=0)


def test_a_spool_holds_the_texts_and_forgets_a_file_that_fails_part_way(tmp_path):
    folder = tmp_path / "sources"
    write(folder / "notes.txt", "Meeting notes: the survey starts on Monday.")
    write(folder / "facts.jsonl", '{"id": "f1", "text": "Honey never spoils."}\n')
    write(folder / "z-copy.txt", "Honey never spoils.")
    xml = (FIXTURES / "enwiki-pages-articles-sample.xml").read_text(encoding="utf-8")
    lines = xml.splitlines(keepends=True)
    assert lines[67].strip() == "</page>" and "Hurricane Idalia" in lines[14]
    # a dump cut after its first article: that article is read, then the XML breaks
    write(folder / "cut.xml", "".join(lines[:68]) + "  <page>\n    <title>Cut")

    plain = ingest([folder])
    with closing(TextSpool(tmp_path)) as spool:
        spooled = ingest([folder], spool=spool)
        assert all(isinstance(d, SpooledDocument) for d in spooled.documents + spooled.dropped)

        def fields(report):
            return [
                (d.id, d.text, d.title, d.source, d.root, d.sha256, d.chars)
                for d in report.documents + report.dropped
            ]

        assert fields(spooled) == fields(plain)
        assert [d.id for d in spooled.documents] == ["f1", "notes.txt"]
        assert spooled.duplicates == plain.duplicates == [("z-copy.txt", "f1")]
        assert spooled.warnings == plain.warnings
        assert len(plain.warnings) == 1 and "cut.xml" in plain.warnings[0]
        # Hurricane Idalia's text went to the spool and was taken back out with its file
        assert spool.size == sum(d.length for d in spooled.documents + spooled.dropped)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sources"]


BM25_TEXTS = [
    "Zebras graze on the savanna grasslands.",
    "Penguins huddle together on Antarctic ice; penguins dive deep.",
    "The and of.",  # stop words only: a text with no terms
    "Volcanoes erupt molten lava and ash over the grasslands.",
    "Glaciers carve deep valleys through mountains.",
    "Running runners ran: stemming joins run and running.",
]
BM25_QUERIES = ["penguins on ice", "grassland zebra", "deep valleys", "run", "lava glaciers"]

HASH_BM25 = """
import hashlib, sys, tempfile
from pathlib import Path
from kinject.kb.indexes import build_bm25_index, save_bm25_index
folder = Path(tempfile.mkdtemp())
save_bm25_index(build_bm25_index(sys.argv[1:]), folder)
print(hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.rglob("*.*")))).hexdigest())
"""


def bm25_files(index, folder: Path) -> dict[str, bytes]:
    save_bm25_index(index, folder)
    return {p.name: p.read_bytes() for p in sorted((folder / "bm25").iterdir())}


def test_bm25_from_batches_is_the_same_index_in_every_process_and_ranks_as_bm25s(tmp_path):
    import bm25s

    expected = bm25_files(build_bm25_index(BM25_TEXTS), tmp_path / "all")
    for sizes in ([1] * 6, [2, 3, 1], [5, 1]):
        builder = BM25Builder()
        start = 0
        for size in sizes:
            builder.add(BM25_TEXTS[start : start + size])
            start += size
        assert len(builder) == len(BM25_TEXTS)
        assert bm25_files(builder.build(), tmp_path / f"batches-{sizes}") == expected, sizes

    # terms are numbered in order of first appearance: the files do not depend on the
    # process's string hashing (bm25s's own numbering does)
    digests = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        command = [sys.executable, "-c", HASH_BM25, *BM25_TEXTS]
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
        digests.add(result.stdout.strip())
    local = hashlib.sha256(b"".join(expected[name] for name in sorted(expected))).hexdigest()
    assert digests == {local}

    # the same scores for every query as bm25s's index built from the token strings
    ours = build_bm25_index(BM25_TEXTS)
    reference = bm25s.BM25()
    reference.index(bm25_tokens(BM25_TEXTS), show_progress=False)
    for query in BM25_QUERIES:
        tokens = bm25_tokens([query])[0]
        assert np.array_equal(ours.get_scores(tokens), reference.get_scores(tokens)), query


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_the_dense_index_read_from_embeddings_npy_in_blocks_is_the_one_built_in_memory(
    tmp_path, kind
):
    import faiss

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((300, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    np.save(tmp_path / "embeddings.npy", vectors)
    blocks = list(npy_row_blocks(tmp_path / "embeddings.npy", 7))
    assert [len(b) for b in blocks] == [7] * 42 + [6]
    assert np.array_equal(np.concatenate(blocks), vectors)

    config = IndexConfig(kind=kind, ivf_nprobe=2, hnsw_ef_search=20)
    in_memory = build_dense_index(vectors, config)
    from_file = build_dense_index_from_file(tmp_path / "embeddings.npy", config, block_rows=7)
    assert from_file.ntotal == 300
    if kind == "hnsw":  # one add of every vector either way; HNSW's graph is built in threads
        assert faiss.downcast_index(from_file).hnsw.efSearch == 20
        queries = vectors[:30] + 0.01 * rng.standard_normal((30, 16)).astype(np.float32)
        assert np.array_equal(from_file.search(queries, 1)[1], in_memory.search(queries, 1)[1])
    else:
        assert np.array_equal(faiss.serialize_index(from_file), faiss.serialize_index(in_memory))
    if kind == "ivf":
        assert faiss.extract_index_ivf(from_file).nlist == 300 // 39
        assert faiss.extract_index_ivf(from_file).nprobe == 2


@pytest.mark.parametrize("array", [np.zeros((3, 4)), np.zeros(12, dtype=np.float32)])
def test_embeddings_that_are_not_float32_rows_are_refused(tmp_path, array):
    np.save(tmp_path / "other.npy", array)
    with pytest.raises(KinjectError, match=r"other\.npy: expected float32 \[rows, dim\]"):
        list(npy_row_blocks(tmp_path / "other.npy", 2))
