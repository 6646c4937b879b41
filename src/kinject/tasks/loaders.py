"""Task loaders: kinject's multiple-choice JSONL, and MMLU in the original hendrycks CSV layout
or the Hugging Face ``cais/mmlu`` layout (parquet or JSON lines).

Every bad row fails with a :class:`DataError` naming the file, the line and the field.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from kinject.errors import DataError
from kinject.fileio import read_bytes, read_jsonl
from kinject.tasks.items import MCItem, OpenItem, Task

MMLU_LETTERS = ("A", "B", "C", "D")


def _require(obj: dict, key: str, kind: type, path: Path, line: int) -> Any:
    if key not in obj:
        raise DataError(path, line, key, "missing")
    value = obj[key]
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise DataError(path, line, key, f"expected {kind.__name__}, got {type(value).__name__}")
    return value


def _doc_ids(obj: dict, path: Path, line: int) -> tuple[str, ...]:
    doc_ids = obj.get("doc_ids", [])
    if not isinstance(doc_ids, list) or not all(isinstance(d, str) for d in doc_ids):
        raise DataError(path, line, "doc_ids", "expected a list of strings")
    return tuple(doc_ids)


def _answer_index(obj: dict, choices: list[str], path: Path, line: int) -> int:
    """``answer``: the 0-based index of the right choice; a letter or a choice's text gets an
    error that says which index it means."""
    if "answer" not in obj:
        raise DataError(path, line, "answer", "missing (the 0-based index of the right choice)")
    answer = obj["answer"]
    if isinstance(answer, str):
        letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[: len(choices)]
        if answer.strip().upper() in letters and len(answer.strip()) == 1:
            meant = f"; for choice {answer.strip().upper()} write {letters.index(answer.strip().upper())}"
        elif answer in choices:
            meant = f"; for the choice '{answer}' write {choices.index(answer)}"
        else:
            meant = ""
        raise DataError(
            path,
            line,
            "answer",
            f"expected the 0-based index of the right choice (0 for the first), got the string "
            f"'{answer}'{meant}",
        )
    if isinstance(answer, bool) or not isinstance(answer, int):
        raise DataError(
            path, line, "answer", f"expected the 0-based index of the right choice, got {answer!r}"
        )
    if not 0 <= answer < len(choices):
        raise DataError(
            path,
            line,
            "answer",
            f"{answer} is out of range for {len(choices)} choices (0-based: 0 to {len(choices) - 1})",
        )
    return answer


def _check_unique(items: list[MCItem], path: Path, lines: list[int]) -> None:
    seen: dict[str, int] = {}
    for item, line in zip(items, lines):
        if item.id in seen:
            raise DataError(
                path, line, "id", f"duplicate id '{item.id}' (first on line {seen[item.id]})"
            )
        seen[item.id] = line


def _previous(obj: dict, answer: int, n_choices: int, path: Path, line: int) -> int | None:
    """The optional index of the choice that was right before the knowledge changed."""
    if obj.get("previous") is None:
        return None
    previous = _require(obj, "previous", int, path, line)
    if not 0 <= previous < n_choices:
        raise DataError(
            path, line, "previous", f"{previous} is out of range for {n_choices} choices"
        )
    if previous == answer:
        raise DataError(
            path, line, "previous", f"{previous} is the answer itself; it must name another choice"
        )
    return previous


def load_mc_jsonl(path: str | Path) -> list[MCItem]:
    """``{"id", "question", "choices": [...], "answer": int, "subject"?, "doc_ids"?,
    "previous"?: int}`` per line (``previous``: the choice that was right before the knowledge
    changed, another choice than ``answer``)."""
    path = Path(path)
    items, lines = [], []
    allowed = {"id", "question", "choices", "answer", "subject", "doc_ids", "previous"}
    for line, obj in read_jsonl(path):
        for key in obj:
            if key not in allowed:
                raise DataError(path, line, key, "unknown field")
        item_id = _require(obj, "id", str, path, line)
        if not item_id:
            raise DataError(path, line, "id", "empty")
        question = _require(obj, "question", str, path, line)
        choices = _require(obj, "choices", list, path, line)
        if len(choices) < 2:
            raise DataError(
                path, line, "choices", f"needs at least two choices, has {len(choices)}"
            )
        for choice in choices:
            if not isinstance(choice, str):
                raise DataError(path, line, "choices", "every choice must be a string")
        answer = _answer_index(obj, choices, path, line)
        subject = obj.get("subject")
        if subject is not None and not isinstance(subject, str):
            raise DataError(path, line, "subject", "expected a string")
        doc_ids = _doc_ids(obj, path, line)
        previous = _previous(obj, answer, len(choices), path, line)
        items.append(MCItem(item_id, question, tuple(choices), answer, subject, doc_ids, previous))
        lines.append(line)
    _check_unique(items, path, lines)
    return items


def load_open_jsonl(path: str | Path) -> list[OpenItem]:
    """``{"id", "question", "answers": [str, …], "doc_ids"?}`` per line (open questions)."""
    path = Path(path)
    items, lines = [], []
    for line, obj in read_jsonl(path):
        for key in obj:
            if key not in ("id", "question", "answers", "doc_ids"):
                raise DataError(path, line, key, "unknown field")
        item_id = _require(obj, "id", str, path, line)
        if not item_id:
            raise DataError(path, line, "id", "empty")
        question = _require(obj, "question", str, path, line)
        answers = _require(obj, "answers", list, path, line)
        if not answers or not all(isinstance(a, str) and a.strip() for a in answers):
            raise DataError(path, line, "answers", "expected a non-empty list of non-empty strings")
        items.append(OpenItem(item_id, question, tuple(answers), _doc_ids(obj, path, line)))
        lines.append(line)
    _check_unique(items, path, lines)
    return items


def _questions(items: list, path: str | Path) -> tuple:
    """A task's questions: an empty test file (or split) is an error, not a task of none."""
    if not items:
        raise DataError(path, None, None, "no questions")
    return tuple(items)


def open_task(name: str, path: str | Path, dev_path: str | Path | None = None) -> Task:
    items = _questions(load_open_jsonl(path), path)  # the test file's errors first
    dev = load_open_jsonl(dev_path) if dev_path is not None else []
    return Task(
        name=name,
        items=items,
        dev=tuple(dev),
        source={
            "format": "open_jsonl",
            "path": str(path),
            "dev": str(dev_path) if dev_path else None,
        },
    )


def load_mmlu_csv(path: str | Path, subject: str | None = None) -> list[MCItem]:
    """Rows ``question,A,B,C,D,answer`` with no header; ids are ``{subject}-{row index}``."""
    path = Path(path)
    subject = subject or mmlu_subject(path)
    raw = read_bytes(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(path, line, None, f"invalid UTF-8 at byte {error.start}") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    items: list[MCItem] = []
    start = 1
    while True:
        line = start
        try:
            row = next(reader, None)
        except csv.Error as error:  # a field over csv.field_size_limit(), a stray quote
            raise DataError(path, line, None, f"not a readable CSV row ({error})") from None
        if row is None:
            break
        start = reader.line_num + 1
        if not row:
            continue
        if len(row) != 6:
            raise DataError(
                path, line, None, f"expected 6 columns (question,A,B,C,D,answer), found {len(row)}"
            )
        answer = row[5].strip()
        if answer not in MMLU_LETTERS:
            shown = repr(row[5]) if len(row[5]) <= 20 else repr(row[5][:20]) + "…"
            raise DataError(path, line, "answer", f"{shown} is not one of A, B, C, D")
        items.append(
            MCItem(
                id=f"{subject}-{len(items)}",
                question=row[0],
                choices=tuple(row[1:5]),
                answer=MMLU_LETTERS.index(answer),
                subject=subject,
            )
        )
    return items


def mmlu_subject(path: Path) -> str:
    """``anatomy_test.csv`` → ``anatomy``."""
    stem = path.stem
    for suffix in ("_test", "_dev", "_val"):
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def mmlu_description(subject: str) -> str:
    """lm-eval's ``mmlu_{subject}`` description."""
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def mmlu_task(test_csv: str | Path, dev_csv: str | Path | None = None) -> Task:
    """An MMLU subject: test rows, the dev rows for k-shot, lm-eval's description, letter style."""
    test_csv = Path(test_csv)
    subject = mmlu_subject(test_csv)
    if dev_csv is None:
        guess = test_csv.parent.parent / "dev" / f"{subject}_dev.csv"
        dev_csv = guess if guess.exists() else None
    items = _questions(load_mmlu_csv(test_csv, subject), test_csv)  # test's errors first
    dev = load_mmlu_csv(dev_csv, subject) if dev_csv is not None else []
    return Task(
        name=f"mmlu_{subject}",
        items=items,
        dev=tuple(dev),
        description=mmlu_description(subject),
        style="letter",
        source={
            "format": "mmlu_csv",
            "path": str(test_csv),
            "dev": str(dev_csv) if dev_csv else None,
        },
    )


def load_mmlu_hf(path: str | Path, subject: str | None = None) -> list[MCItem]:
    """One split of the Hugging Face ``cais/mmlu`` layout: rows ``{"question", "subject",
    "choices": [4 strings], "answer": 0..3}`` in a parquet file (``test-00000-of-00001.parquet``)
    or JSON lines; ids are ``{subject}-{row index}`` as for the CSV layout."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, None, "file not found")
    rows = _parquet_rows(path) if path.suffix == ".parquet" else [r for _, r in read_jsonl(path)]
    items: list[MCItem] = []
    for index, row in enumerate(rows):
        line = index + 1  # the JSONL line; the parquet row number counted from 1
        if not isinstance(row, dict):
            raise DataError(path, line, None, "expected an object")
        question = _require(row, "question", str, path, line)
        choices = _require(row, "choices", list, path, line)
        if len(choices) != 4 or not all(isinstance(c, str) for c in choices):
            raise DataError(path, line, "choices", "expected 4 strings")
        answer = _require(row, "answer", int, path, line)
        if not 0 <= answer < 4:
            raise DataError(path, line, "answer", f"{answer} is not one of 0, 1, 2, 3")
        if not isinstance(row.get("subject", ""), str):
            raise DataError(path, line, "subject", "expected a string")
        name = subject or row.get("subject") or mmlu_hf_subject(path)
        items.append(
            MCItem(
                id=f"{name}-{len(items)}",
                question=question,
                choices=tuple(choices),
                answer=answer,
                subject=name,
            )
        )
    return items


def _parquet_rows(path: Path) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            path, None, None, "reading parquet needs pyarrow (pip install pyarrow)"
        ) from None
    try:
        return pq.read_table(path).to_pylist()
    except (OSError, ValueError) as error:  # pyarrow's ArrowIOError / ArrowInvalid
        raise DataError(path, None, None, f"not a readable parquet file ({error})") from None


def mmlu_hf_files(path: Path) -> tuple[Path, Path | None]:
    """The test split and its dev split: ``path`` is a subject folder of the layout
    (``anatomy/test-….parquet``, ``anatomy/dev-….parquet``) or a test file itself, whose dev
    file is the sibling named with ``dev`` for ``test``."""
    if path.is_dir():
        tests = sorted(p for p in path.iterdir() if p.name.startswith("test") and _hf_data(p))
        if len(tests) != 1:
            found = ", ".join(p.name for p in tests) or "none"
            raise DataError(path, None, None, f"expected one test-* data file, found {found}")
        test = tests[0]
    else:
        test = path
    dev = test.with_name(test.name.replace("test", "dev", 1))
    return test, dev if dev != test and dev.is_file() else None


def _hf_data(path: Path) -> bool:
    return path.is_file() and path.suffix in (".parquet", ".jsonl", ".json")


def mmlu_hf_subject(path: Path) -> str:
    """``…/anatomy/test-00000-of-00001.parquet`` → ``anatomy``; ``anatomy_test.jsonl`` → ``anatomy``."""
    if path.is_dir():
        return path.name
    if path.name.startswith(("test", "dev", "validation")):
        return path.parent.name
    return mmlu_subject(path)


def mmlu_hf_task(path: str | Path, dev: str | Path | None = None) -> Task:
    """An MMLU subject in the ``cais/mmlu`` layout: the same task as :func:`mmlu_task` makes
    from the CSVs (name, description, letter style, ids)."""
    path = Path(path)
    subject = mmlu_hf_subject(path)
    test, guessed = mmlu_hf_files(path)
    dev_path = Path(dev) if dev is not None else guessed
    return Task(
        name=f"mmlu_{subject}",
        items=_questions(load_mmlu_hf(test, subject), test),
        dev=tuple(load_mmlu_hf(dev_path, subject)) if dev_path is not None else (),
        description=mmlu_description(subject),
        style="letter",
        source={
            "format": "mmlu_hf",
            "path": str(test),
            "dev": str(dev_path) if dev_path else None,
        },
    )


def jsonl_task(
    name: str,
    path: str | Path,
    dev_path: str | Path | None = None,
    style: str = "option",
    description: str = "",
) -> Task:
    items = _questions(load_mc_jsonl(path), path)  # the test file's errors first
    dev = load_mc_jsonl(dev_path) if dev_path is not None else []
    return Task(
        name=name,
        items=items,
        dev=tuple(dev),
        description=description,
        style=style,
        source={"format": "jsonl", "path": str(path), "dev": str(dev_path) if dev_path else None},
    )
