"""Search structures over a knowledge base's chunks: a FAISS vector index and a BM25 index.

Both are built from the chunks in their stored order, so a row of either index is a line of
``chunks.jsonl`` (the id mapping); both are rebuilt whole from stored embeddings and texts on
every change, which is what makes an updated knowledge base search exactly like a fresh one.

Both hold every chunk, so their memory grows with the knowledge base (a flat or HNSW index
4 bytes per dimension per chunk; BM25 8 bytes per distinct stem per chunk); what builds them
does not add a copy of the corpus beside them: vectors are read from ``embeddings.npy`` in
blocks of rows (flat, IVF), and BM25 takes chunk texts in batches, keeping only term ids.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from kinject.config import IndexConfig
from kinject.errors import KinjectError

FAISS_FILE = "dense.faiss"
BM25_FOLDER = "bm25"


def build_dense_index(embeddings: np.ndarray, config: IndexConfig):
    """A FAISS inner-product index over ``embeddings`` ``[n, dim]`` (unit vectors)."""
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    n, dim = embeddings.shape
    index = _empty_dense_index(dim, n, config)
    if n and config.kind == "ivf":
        index.train(embeddings)
    if n:
        index.add(embeddings)
    return index


def build_dense_index_from_file(path: Path, config: IndexConfig, block_rows: int = 8192):
    """The index :func:`build_dense_index` makes of ``np.load(path)`` (an ``embeddings.npy``),
    filled ``block_rows`` rows at a time for flat and IVF, so the vectors are in memory once,
    in the index, rather than twice.  IVF trains on the whole file first (as it did on the
    whole array), then drops it; HNSW reads it whole and adds it in one call, since its graph
    depends on how the adds are split."""
    rows, dim = npy_shape(path)
    if config.kind == "hnsw" or not rows:
        return build_dense_index(np.load(path), config)
    index = _empty_dense_index(dim, rows, config)
    if config.kind == "ivf":
        training = np.load(path)
        index.train(training)
        del training
    for block in npy_row_blocks(path, block_rows):
        index.add(block)
    return index


def _empty_dense_index(dim: int, rows: int, config: IndexConfig):
    import faiss

    if config.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    elif config.kind == "ivf":
        nlist = max(1, min(config.ivf_nlist, rows // 39))  # FAISS wants >= 39 points per cell
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexFlatIP(dim)
    set_search_breadth(index, config)
    return index


def set_search_breadth(index, config: IndexConfig) -> None:
    """How far an approximate index looks per query: HNSW ``efSearch``, IVF ``nprobe`` (at most
    its number of cells); nothing for a flat index."""
    import faiss

    if config.kind == "hnsw":
        faiss.downcast_index(index).hnsw.efSearch = config.hnsw_ef_search
    elif config.kind == "ivf":
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = min(config.ivf_nprobe, ivf.nlist)


def npy_shape(path: Path) -> tuple[int, int]:
    """``(rows, dim)`` of a float32 ``[rows, dim]`` .npy file, from its header."""
    with open(path, "rb") as handle:
        return _npy_header(path, handle)


def npy_row_blocks(path: Path, block_rows: int) -> Iterator[np.ndarray]:
    """The rows of a float32 ``[rows, dim]`` .npy file, ``block_rows`` at a time."""
    with open(path, "rb") as handle:
        rows, dim = _npy_header(path, handle)
        for first in range(0, rows, block_rows):
            count = min(block_rows, rows - first) * dim
            block = np.fromfile(handle, dtype=np.float32, count=count)
            if block.size != count:
                raise KinjectError(f"{path}: ends at row {first + block.size // dim} of {rows}")
            yield block.reshape(-1, dim)


def _npy_header(path: Path, handle) -> tuple[int, int]:
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
    if len(shape) != 2 or fortran or dtype != np.dtype("<f4"):
        raise KinjectError(f"{path}: expected float32 [rows, dim] in C order, got {dtype} {shape}")
    return shape


def save_dense_index(index, folder: Path) -> None:
    import faiss

    faiss.write_index(index, str(folder / FAISS_FILE))


def load_dense_index(folder: Path, config: IndexConfig):
    import faiss

    index = faiss.read_index(str(folder / FAISS_FILE))
    set_search_breadth(index, config)
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
    builder = BM25Builder()
    builder.add(texts)
    return builder.build()


class BM25Builder:
    """A bm25s index over texts given in batches (:meth:`add`), in order: each batch is
    tokenized as it comes and kept as term ids, 4 bytes a token, never as text or token
    strings.  Terms are numbered in order of first appearance, so the same texts make the
    same index files however they were batched (bm25s numbers them in set order, which
    changes from one process to the next)."""

    def __init__(self) -> None:
        self._vocab: dict[str, int] = {}
        self._ids = array("i")  # every text's term ids, one text after another
        self._ends = array("q")  # where each text's ids end

    def __len__(self) -> int:
        return len(self._ends)

    def add(self, texts: Iterable[str]) -> None:
        vocab = self._vocab
        for tokens in bm25_tokens(list(texts)):
            self._ids.extend(vocab.setdefault(token, len(vocab)) for token in tokens)
            self._ends.append(len(self._ids))

    def build(self):
        import bm25s
        from bm25s.tokenization import Tokenized

        index = bm25s.BM25()
        if len(self._ends):
            ids = _TermIds(self._ids, self._ends)
            index.index(Tokenized(ids=ids, vocab=self._vocab), show_progress=False)
        return index


class _TermIds:
    """Each text's term ids as a list, made each time bm25s walks the corpus (it needs its
    length and walks it three times), from the packed arrays."""

    def __init__(self, ids: array, ends: array):
        self._ids = ids
        self._ends = ends

    def __len__(self) -> int:
        return len(self._ends)

    def __iter__(self) -> Iterator[list[int]]:
        start = 0
        for end in self._ends:
            yield self._ids[start:end].tolist()
            start = end


def save_bm25_index(index, folder: Path) -> None:
    index.save(str(folder / BM25_FOLDER), show_progress=False)


def load_bm25_index(folder: Path):
    import bm25s

    return bm25s.BM25.load(str(folder / BM25_FOLDER), show_progress=False)
