"""A tiny base model pretrained on a text (an experiment's ``text_model:`` section).

The synthetic world has its own pretraining mix (:mod:`kinject.models.base_model`); this is
the plain case: a text, cut at blank lines into documents, shuffled every pass, packed into
blocks and trained on with next-token loss by the one training loop.  The folder is cached
under a hash of the text's content, the model shape and the pretraining config; a killed
pretraining resumes from ``<cache>.partial/checkpoint.pt``, and the finished model appears
only once complete.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

from kinject.cache import cache_dir, cache_lock, fingerprint
from kinject.config import TextModelSetup, TextPretrainConfig
from kinject.errors import KinjectError

TEXT_RECIPE_VERSION = 1  # bump when the documents or the loop change meaning


def text_model_dir(setup: TextModelSetup) -> Path:
    from kinject.fileio import sha256_of
    from kinject.training.loop import with_bf16_resolved

    key = fingerprint(
        TEXT_RECIPE_VERSION,
        sha256_of(_existing(setup.corpus)),
        setup.model.model_dump(mode="json"),
        with_bf16_resolved(setup.pretrain.model_dump(mode="json")),
    )
    return cache_dir() / "base-models" / f"text-llama-{key}"


def _existing(corpus: str) -> Path:
    path = Path(corpus)
    if not path.is_file():
        raise KinjectError(f"text_model.corpus: {corpus}: no such file")
    return path


def corpus_texts(corpus: str) -> list[str]:
    """The texts of a plain text file (one text) or of a corpus JSONL (one per record)."""
    from kinject.corpus import load_corpus_jsonl
    from kinject.fileio import read_bytes

    path = _existing(corpus)
    if path.suffix == ".jsonl":
        return [document.text for document in load_corpus_jsonl(path).values()]
    raw = read_bytes(path)
    try:
        return [raw.decode("utf-8")]
    except UnicodeDecodeError as error:
        raise KinjectError(
            f"{path}: not UTF-8 text (byte {error.start}); text_model.corpus needs a text file"
        ) from None


def split_documents(text: str, size: int) -> list[str]:
    """``text`` cut at blank lines into pieces of about ``size`` characters (a piece holds
    whole paragraphs; one longer than ``size`` is a piece of its own)."""
    pieces: list[str] = []
    current: list[str] = []
    length = 0
    for paragraph in text.split("\n\n"):
        if not paragraph.strip():
            continue
        if current and length + len(paragraph) > size:
            pieces.append("\n\n".join(current))
            current, length = [], 0
        current.append(paragraph.strip("\n"))
        length += len(paragraph) + 2
    if current:
        pieces.append("\n\n".join(current))
    return pieces


def pretraining_documents(texts: list[str], config: TextPretrainConfig) -> list[str]:
    documents = [piece for text in texts for piece in split_documents(text, config.document_chars)]
    if not documents:
        raise KinjectError("text_model.corpus holds no text")
    return documents


def pretrain_text_model(setup: TextModelSetup, out_dir: Path, show_progress: bool = True) -> Path:
    """Train a BPE tokenizer and a tiny Llama on ``setup.corpus``; write the model folder."""
    from kinject.models.base_model import pretrain_tiny_llama, save_model_folder
    from kinject.models.packing import PackedBlocks
    from kinject.models.tokenizer import train_bpe_tokenizer

    config = setup.pretrain
    documents = pretraining_documents(corpus_texts(setup.corpus), config)
    tokenizer = train_bpe_tokenizer(documents, setup.model.vocab_size)

    def epoch_documents(epoch: int) -> list[str]:
        order = list(documents)
        random.Random(f"kinject-text-{config.seed}-{epoch}").shuffle(order)
        return order

    blocks = PackedBlocks(tokenizer, epoch_documents, config.block_size, config.batch_size)
    partial = out_dir.with_name(out_dir.name + ".partial")
    model, result = pretrain_tiny_llama(
        setup.model,
        tokenizer,
        config,
        blocks.batch_for,
        partial,
        "pretraining base model on text",
        show_progress,
    )
    recipe = {
        "corpus": str(Path(setup.corpus).resolve()),
        "model": setup.model.model_dump(mode="json"),
        "pretrain": config.model_dump(mode="json"),
    }
    extra = {"recipe_version": TEXT_RECIPE_VERSION, "documents": len(documents)}
    save_model_folder(model, tokenizer, result, out_dir, recipe, extra, made_by="kinject run")
    shutil.rmtree(partial)
    return out_dir


def ensure_text_model(setup: TextModelSetup, show_progress: bool = True) -> tuple[Path, bool]:
    """The cached model folder, pretraining it first if needed; ``(path, was_cached)``."""
    out_dir = text_model_dir(setup)
    with cache_lock(out_dir):  # two runs at once: one trains, the other waits and reuses
        if (out_dir / "config.json").exists():
            return out_dir, True
        pretrain_text_model(setup, out_dir, show_progress)
    return out_dir, False
