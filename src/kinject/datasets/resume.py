"""Per-unit results of a long generation, kept beside the output until it is finished.

``OUT.partial.jsonl`` gets one line per finished unit (a chunk, or a paraphrase of one),
written and fsynced as soon as the unit is done, so a killed run redoes no finished unit.
Lines carry a fingerprint of everything that decides the results (model, prompts, options)
and the unit's text hash: a line from other settings or an edited chunk is not reused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kinject.errors import DataError
from kinject.fileio import write_jsonl


class PartialResults:
    def __init__(self, output: Path, fingerprint: str):
        self.path = output.with_name(output.name + ".partial.jsonl")
        self.fingerprint = fingerprint
        self._done: dict[tuple[str, str], Any] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        # "\n" only: str.splitlines() would also break a line at U+2028/U+0085 inside a text
        lines = self.path.read_text(encoding="utf-8").split("\n")
        while lines and not lines[-1].strip():
            lines.pop()
        rows, torn = [], False
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):  # the line being written when the run was killed
                    torn = True
                    continue
                raise DataError(self.path, number, None, "not valid JSON") from None
            rows.append(row)
        if torn:
            write_jsonl(self.path, rows)
        for row in rows:
            if row.get("fingerprint") == self.fingerprint:
                self._done[(row["unit"], row["sha256"])] = row["result"]

    def get(self, unit: str, sha256: str) -> Any | None:
        return self._done.get((unit, sha256))

    def __len__(self) -> int:
        return len(self._done)

    def add(self, unit: str, sha256: str, result: Any) -> None:
        row = {"fingerprint": self.fingerprint, "unit": unit, "sha256": sha256, "result": result}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self._done[(unit, sha256)] = result

    def finish(self) -> None:
        """The output is written: the partial results are no longer needed."""
        self.path.unlink(missing_ok=True)
