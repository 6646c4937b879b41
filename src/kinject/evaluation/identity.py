"""What determines a cell's records, as JSON-able dicts hashed into the cell's file name.

A finished cell is reused only while everything that decides its per-question records is
unchanged: the model (its spec and its files), the task (its questions, dev examples, style),
the arm (what it puts before a question), the shots and the scoring settings that change a
prediction.  Change one of them and only the cells it touches are scored again; settings that
cannot change a record (batch size, device, the bootstrap) are left out on purpose.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

from kinject.config import ModelSpec, ScoringConfig
from kinject.fileio import sha256_of
from kinject.tasks.items import Task

CELL_FORMAT = 1  # bump when a record's meaning changes: every cell is then scored again

_WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.gguf")


def file_identity(path: str | Path | None) -> dict | None:
    """A local file or folder by content of its small files and size/mtime of its weights."""
    if path is None:
        return None
    path = Path(path)
    if not path.exists():
        return {"name": str(path)}  # a hub id: the revision (in the spec) pins it
    if path.is_file():
        return {"name": str(path.resolve()), "sha256": sha256_of(path)}
    files = {}
    for child in sorted(path.iterdir()):
        if not child.is_file():
            continue
        if any(child.match(pattern) for pattern in _WEIGHT_FILES):
            stat = child.stat()
            files[child.name] = [stat.st_size, stat.st_mtime_ns]
        elif child.suffix in (".json", ".txt", ".model", ".yaml", ".jinja"):
            files[child.name] = sha256_of(child)
    return {"name": str(path.resolve()), "files": files}


def model_identity(spec: ModelSpec) -> dict:
    """The model by what it computes: a GGUF file (or preset) by its content hash."""
    from kinject.models.gguf import gguf_identity

    return {
        "model": gguf_identity(spec) or file_identity(spec.path),
        "dtype": spec.dtype,
        "revision": spec.revision,
        "adapter": file_identity(spec.adapter),
    }


def task_identity(task: Task) -> dict:
    """The questions as loaded (after any sampling), the dev examples and how they are shown."""
    digest = hashlib.sha256()
    for part in (task.items, task.dev):
        for item in part:
            fields = asdict(item)
            if fields.get("previous", 0) is None:  # unset: the digest an item had before it
                del fields["previous"]
            digest.update(repr(fields).encode())
        digest.update(b"\x00")
    return {
        "name": task.name,
        "items": digest.hexdigest(),
        "style": task.style,
        "description": task.description,
    }


def scoring_identity(scoring: ScoringConfig, is_open: bool) -> dict:
    identity: dict = {"bf16_autocast": scoring.bf16_autocast}
    if is_open:
        identity.update(max_new_tokens=scoring.max_new_tokens, stop=list(scoring.stop))
    if scoring.chat_template:  # absent when off: cells scored before it existed stay valid
        identity["chat_template"] = {"multiturn": scoring.fewshot_as_multiturn}
    return identity
