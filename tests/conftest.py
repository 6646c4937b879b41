"""Shared fixtures: tiny real models built from configs, with tokenizers trained here."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _shared_data() -> Path:
    """``$KINJECT_SHARED_DATA``, else the nearest ``shared/data`` above the checkout, or above
    the checkout it was cloned from (CI runs in a clean clone of a local repository)."""
    explicit = os.environ.get("KINJECT_SHARED_DATA")
    if explicit:
        return Path(explicit)
    here = Path(__file__).resolve().parent
    starts = [here]
    origin = subprocess.run(
        ["git", "config", "--get", "remote.origin.url"],
        cwd=here,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if origin and Path(origin).is_dir():
        starts.append(Path(origin).resolve())
    for start in starts:
        for parent in [start, *start.parents]:
            candidate = parent / "shared" / "data"
            if candidate.is_dir():
                return candidate
    return here.parent.parent / "shared" / "data"


SHARED_DATA = _shared_data()
MMLU_DIR = SHARED_DATA / "mmlu"
MMLU_SUBJECTS = ("anatomy", "astronomy", "college_biology", "college_chemistry", "prehistory")


class _DeprecationLog(logging.Handler):
    """What transformers says is deprecated through its logger (``warning_once``, which no
    warnings filter sees): ``past_key_values``/``cache_params`` are deprecated, say."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "deprecat" in message.lower():
            self.messages.append(message)


@pytest.fixture(autouse=True)
def _no_deprecation_logged():
    """A test whose code makes transformers log a deprecation fails, as a FutureWarning or
    DeprecationWarning does (pyproject.toml's filterwarnings)."""
    handler = _DeprecationLog()
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    yield
    logger.removeHandler(handler)
    assert not handler.messages, f"transformers logged a deprecation: {handler.messages}"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's ~/.cache/kinject from a test."""
    monkeypatch.setenv("KINJECT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kinject-cache"))


def _training_text() -> list[str]:
    from kinject.config import WorldConfig
    from kinject.world.build import build_world, kb_documents, task_questions

    world = build_world(WorldConfig(n_known=20, n_new=10, n_updated=5, n_reading=5, n_dev=5))
    texts = [d["text"] for d in kb_documents(world)]
    texts += [q["question"] + " " + " ".join(q["choices"]) for q in task_questions(world, "new")]
    if MMLU_DIR.exists():
        for path in sorted(MMLU_DIR.glob("*/*.csv")):
            texts.append(path.read_text(encoding="utf-8"))
    return texts


@pytest.fixture(scope="session")
def bpe_tokenizer():
    """A real byte-level BPE that prepends <s>, like Llama's."""
    from kinject.models.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(_training_text(), vocab_size=600)


def tiny_llama(tokenizer, seed: int = 0, hidden_size: int = 64):
    """A random 2-layer Llama (grouped-query attention) sized for ``tokenizer``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, bpe_tokenizer) -> Path:
    model = tiny_llama(bpe_tokenizer)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    bpe_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    """A tiny GPT-2 whose tokenizer adds no BOS (empty contexts fall back to EOS)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(
        _training_text(),
        trainers.BpeTrainer(
            vocab_size=500,
            special_tokens=["<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>")
    torch.manual_seed(1)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tokenizer),
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=1024,
            bos_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module: fast when other processes share the cores, and the
    same numerics as subprocesses started with OMP_NUM_THREADS=1."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


REPO = Path(__file__).resolve().parent.parent
QUICK_EXPERIMENT = REPO / "examples" / "quick" / "experiment.yaml"


@pytest.fixture(scope="session")
def quick_experiment_run(tmp_path_factory) -> Path:
    """A finished `kinject run` of examples/quick/experiment.yaml (every kind of arm, a sweep);
    tests copy it before changing anything in it."""
    import torch

    from kinject.experiments.files import load_experiment
    from kinject.experiments.runner import run_experiment

    run_dir = tmp_path_factory.mktemp("quick-experiment") / "run"
    cache = str(tmp_path_factory.getbasetemp() / "kinject-cache")  # as _isolated_cache
    previous = os.environ.get("KINJECT_CACHE_DIR")
    os.environ["KINJECT_CACHE_DIR"] = cache  # session fixtures run before _isolated_cache
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_experiment(load_experiment(QUICK_EXPERIMENT), run_dir, show_progress=False)
    finally:
        torch.set_num_threads(threads)
        if previous is None:
            os.environ.pop("KINJECT_CACHE_DIR", None)
        else:
            os.environ["KINJECT_CACHE_DIR"] = previous
    return run_dir


def pytest_terminal_summary(terminalreporter):
    """The figures a test module keeps in a module-level ``SUMMARY`` list of lines (what
    test_safety.py checked), printed once at the end of the session."""
    import sys

    modules = [m for n, m in sorted(sys.modules.items()) if n.startswith("test_")]
    lines = [line for module in modules for line in getattr(module, "SUMMARY", [])]
    if lines:
        terminalreporter.section("kinject figures")
        for line in lines:
            terminalreporter.write_line(line)
