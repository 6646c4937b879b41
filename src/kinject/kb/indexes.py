"""Search structures over a knowledge base's chunks: a FAISS vector index and a BM25 index.

Both are built from the chunks in their stored order, so a row of either index is a line of
``chunks.jsonl`` (the id mapping); both are rebuilt whole from stored embeddings and texts on
every change, which is what makes an updated knowledge base search exactly like a fresh one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kinject.config import IndexConfig

FAISS_FILE = "dense.faiss"
BM25_FOLDER = "bm25"


def build_dense_index(embeddings: np.ndarray, config: IndexConfig):
    """A FAISS inner-product index over ``embeddings`` ``[n, dim]`` (unit vectors)."""
    import faiss

    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    n, dim = embeddings.shape
    if config.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = config.hnsw_ef_search
    elif config.kind == "ivf":
        nlist = max(1, min(config.ivf_nlist, n // 39))  # FAISS wants >= 39 points per cell
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        if n:
            index.train(embeddings)
        index.nprobe = min(config.ivf_nprobe, nlist)
    else:
        index = faiss.IndexFlatIP(dim)
    if n:
        index.add(embeddings)
    return index


def save_dense_index(index, folder: Path) -> None:
    import faiss

    faiss.write_index(index, str(folder / FAISS_FILE))


def load_dense_index(folder: Path, config: IndexConfig):
    import faiss

    index = faiss.read_index(str(folder / FAISS_FILE))
    if config.kind == "hnsw":
        faiss.downcast_index(index).hnsw.efSearch = config.hnsw_ef_search
    elif config.kind == "ivf":
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = min(config.ivf_nprobe, ivf.nlist)
    return index


def bm25_tokens(texts: Sequence[str]) -> list[list[str]]:
    """Lower-cased words, English stop words removed, Snowball-stemmed (bm25s + PyStemmer)."""
    import bm25s
    import Stemmer

    stemmer = Stemmer.Stemmer("english")
    return bm25s.tokenize(
        list(texts),
        stopwords="en",
        stemmer=stemmer.stemWords,
        return_ids=False,
        show_progress=False,
    )


def build_bm25_index(texts: Sequence[str]):
    import bm25s

    index = bm25s.BM25()
    if texts:
        index.index(bm25_tokens(texts), show_progress=False)
    return index


def save_bm25_index(index, folder: Path) -> None:
    index.save(str(folder / BM25_FOLDER), show_progress=False)


def load_bm25_index(folder: Path):
    import bm25s

    return bm25s.BM25.load(str(folder / BM25_FOLDER), show_progress=False)
