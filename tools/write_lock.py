"""Write requirements.lock: the exact version of every package installed in this Python.

    python tools/write_lock.py requirements.lock

`make lock` runs it in a fresh virtual environment, after the test suite has passed there;
`make test`, `make demo` and CI install with the file as pip constraints.  kinject itself is
left out; torch's local version label (``+cpu``) is dropped, so that the pin also matches
the build of the same release a machine with a GPU installs.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
from importlib.metadata import distributions
from pathlib import Path


def pins() -> list[str]:
    found = {}
    for dist in distributions():
        name = dist.metadata["Name"]
        if name and name.lower() != "kinject":
            found[name.lower()] = f"{name}=={dist.version.split('+')[0]}"
    return [found[key] for key in sorted(found)]


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    target = Path(sys.argv[1])
    header = [
        "# The versions `make test` passed with; written by `make lock` (tools/write_lock.py).",
        f"# Python {platform.python_version()}, {platform.system()} {platform.machine()}.",
        "# Installed as constraints: pip install -c requirements.lock -e '.[dev]'",
    ]
    text = "\n".join(header + pins()) + "\n"
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(temporary, target)
    print(f"{target}: {len(text.splitlines()) - len(header)} packages")


if __name__ == "__main__":
    main()
