"""Loading any Hugging Face causal LM and its tokenizer, from a local folder or a hub id."""

from __future__ import annotations

from pathlib import Path

from kinject.config import ModelSpec
from kinject.errors import KinjectError


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def quiet_transformers() -> None:
    """kinject draws its own progress bars; transformers' per-shard bars would interleave."""
    from transformers.utils import logging

    logging.disable_progress_bar()


def load_tokenizer(spec: ModelSpec):
    """The model's tokenizer alone (cheap: no weights are read)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(spec.path, revision=spec.revision)
    except OSError as error:
        reason = " ".join(str(error).split())
        raise KinjectError(f"cannot load the tokenizer of '{spec.path}': {reason}") from None


def load_causal_lm(spec: ModelSpec):
    """``(model, tokenizer)`` in eval mode on the requested device and dtype."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    source = spec.path
    looks_local = source.startswith((".", "/", "~")) or Path(source).exists()
    if looks_local and not Path(source).expanduser().exists():
        raise KinjectError(f"model folder '{source}' does not exist")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        spec.dtype
    ]
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=spec.revision)
        model = AutoModelForCausalLM.from_pretrained(source, revision=spec.revision, dtype=dtype)
    except OSError as error:
        reason = " ".join(str(error).split())  # transformers' messages span lines
        raise KinjectError(f"cannot load model '{source}': {reason}") from None
    if spec.adapter is not None:
        model = _merged_adapter(model, spec.adapter)
    model.to(resolve_device(spec.device))
    model.eval()
    return model, tokenizer


def _merged_adapter(model, adapter: str):
    """The model with a LoRA adapter folder applied and merged into its weights."""
    from peft import PeftModel

    if not (Path(adapter) / "adapter_config.json").exists():
        raise KinjectError(f"adapter folder '{adapter}' has no adapter_config.json")
    return PeftModel.from_pretrained(model, adapter).merge_and_unload()
