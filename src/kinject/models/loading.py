"""Loading any Hugging Face causal LM and its tokenizer, from a local folder or a hub id.

Safe by default (``ModelSpec``): ``trust_remote_code`` is passed as the spec says (off
unless set), and weights come from safetensors files only.  Pickle weights
(``pytorch_model.bin``, ``adapter_model.bin``, ``*.pt`` …) can run code when unpickled, so a
model or adapter that has only those is refused with a message naming its folder and the
``allow_pickle`` switch, unless the spec turns that switch on.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kinject.config import ModelSpec, local_model_path
from kinject.errors import KinjectError
from kinject.models.gguf import materialized

PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle")
ALLOW_PICKLE_HINT = (
    "convert the weights to safetensors, or set 'allow_pickle: true' in the config's model "
    "section if you trust these files (unpickling can run code)"
)


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
    """The model's tokenizer alone (cheap: no weights are read, except to convert a GGUF file
    on its first use)."""
    from transformers import AutoTokenizer

    quiet_transformers()
    spec = materialized(spec)
    try:
        return AutoTokenizer.from_pretrained(
            spec.path, revision=spec.revision, trust_remote_code=spec.trust_remote_code
        )
    except OSError as error:
        reason = " ".join(str(error).split())
        raise KinjectError(f"cannot load the tokenizer of '{spec.path}': {reason}") from None
    except ValueError as error:  # transformers refusing to run the repository's code
        if "trust_remote_code" in str(error):
            raise _remote_code_refused(spec.path) from None
        raise


def load_causal_lm(spec: ModelSpec):
    """``(model, tokenizer)`` in eval mode on the requested device and dtype (a GGUF file or
    preset: from its converted folder, see :mod:`kinject.models.gguf`)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    spec = materialized(spec)
    source = spec.path
    local = local_model_path(source, Path.cwd())  # None: a hub id
    if local is not None and not local.exists():
        raise KinjectError(missing_folder_message(local))
    if local is not None and not spec.allow_pickle:
        refuse_pickle_only(Path(source).expanduser(), "model folder", "model.safetensors")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        spec.dtype
    ]
    trust = spec.trust_remote_code
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, revision=spec.revision, trust_remote_code=trust
        )
        model = AutoModelForCausalLM.from_pretrained(
            source,
            revision=spec.revision,
            dtype=dtype,
            trust_remote_code=trust,
            use_safetensors=None if spec.allow_pickle else True,
        )
    except OSError as error:
        reason = " ".join(str(error).split())  # transformers' messages span lines
        if not spec.allow_pickle and "safetensors" in reason:
            reason += f" (kinject reads safetensors weights only: {ALLOW_PICKLE_HINT})"
        raise KinjectError(f"cannot load model '{source}': {reason}") from None
    except ValueError as error:  # transformers refusing to run the repository's code
        if "trust_remote_code" in str(error):
            raise _remote_code_refused(source) from None
        raise
    if spec.adapter is not None:
        model = _merged_adapter(model, spec.adapter, spec.allow_pickle)
    model.to(resolve_device(spec.device))
    model.eval()
    return model, tokenizer


def missing_folder_message(path: Path) -> str:
    """Why a local model folder cannot be loaded: it does not exist (named, with the closest
    name in the nearest folder that does, as a typo is the usual cause)."""
    import difflib

    message = f"model folder '{path}' does not exist (a local path: not looked up on the hub)"
    parent = path.parent
    while not parent.is_dir() and parent != parent.parent:
        parent = parent.parent
    if parent.is_dir():
        names = sorted(child.name for child in parent.iterdir() if child.is_dir())
        wanted = path.relative_to(parent).parts[0]
        close = difflib.get_close_matches(wanted, names, n=1, cutoff=0.5)
        if close:
            message += f"; did you mean {parent / close[0]}?"
    return message


def _remote_code_refused(source: str) -> KinjectError:
    return KinjectError(
        f"model '{source}' ships its own Python code (an auto_map in its config), which "
        "kinject does not run: set 'trust_remote_code: true' in the config's model section "
        "only if you trust that code (it runs with your permissions)"
    )


def refuse_pickle_only(folder: Path, what: str, expected: str) -> None:
    """Raise when ``folder`` holds pickle weights and no safetensors file."""
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickles = sorted({child.name for pattern in PICKLE_WEIGHTS for child in folder.glob(pattern)})
    if pickles:
        raise KinjectError(
            f"{what} '{folder}' has pickle weights only ({', '.join(pickles)}) and no "
            f"{expected}: {ALLOW_PICKLE_HINT}"
        )


@contextmanager
def peft_wrapping() -> Iterator[None]:
    """Around wrapping a model in a peft adapter: peft 0.21 reads transformers 5.24's
    deprecated ``is_gradient_checkpointing``, which is not kinject's to mend and would print
    a FutureWarning on every LoRA run (the only warning silenced here)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning
        )
        yield


def _merged_adapter(model, adapter: str, allow_pickle: bool):
    """The model with a LoRA adapter folder applied and merged into its weights."""
    from peft import PeftModel

    folder = Path(adapter)
    if not (folder / "adapter_config.json").exists():
        raise KinjectError(f"adapter folder '{adapter}' has no adapter_config.json")
    if not allow_pickle:
        refuse_pickle_only(folder, "adapter folder", "adapter_model.safetensors")
    with peft_wrapping():
        return PeftModel.from_pretrained(model, adapter).merge_and_unload()
