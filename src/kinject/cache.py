"""Where kinject keeps what it can rebuild: worlds and locally pretrained base models."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kinject.fileio import exclusive_lock


def cache_dir() -> Path:
    """``$KINJECT_CACHE_DIR``, else ``$XDG_CACHE_HOME/kinject``, else ``~/.cache/kinject``."""
    explicit = os.environ.get("KINJECT_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "kinject"


def fingerprint(*parts: object) -> str:
    """A short stable hash of JSON-serialisable parts (configs as dicts)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@contextmanager
def cache_lock(target: Path) -> Iterator[None]:
    """Hold an exclusive lock for building ``target``: a second process waits, then finds it built."""
    with exclusive_lock(target.with_name(f".{target.name}.lock")):
        yield
