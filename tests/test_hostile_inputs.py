"""Hostile and broken inputs, fed to every entry point that reads a user's files.

A table of cases, each run through the real command line (typer's CliRunner, in process):
the bad input (a file of ``tests/fixtures/hostile/``, copied into ``tmp_path``, or a large one
generated here: a 50 MB single line, megabytes of random bytes), the command, and what must
come of it: exit status 2 and one line ``error: …`` naming the file, and the line and field
where there is one — or, for ``kinject kb build`` without ``--strict``, the documented
warning-and-skip.  Either way nothing is left half-written: the listing of ``tmp_path``
(hidden files included) is the same before and after a refused command.

Then property-based tests (hypothesis): the loaders, given arbitrary bytes or JSON lines of
any shape, load or raise ``KinjectError`` and never anything else; configs likewise; and the
chunker over arbitrary text loses nothing and repeats nothing beyond its declared overlap.

The examples are derandomized (the same on every run); ``KINJECT_HYPOTHESIS=explore`` draws
new random ones, ten times as many.  ``hostile_summary`` prints how many inputs were tried.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from kinject.cli import app
from kinject.errors import KinjectError

pytest_plugins = ["hostile_summary"]


def tried(kind: str) -> None:
    """Count one bad input for the summary line (``files``: a table case; ``generated``: a
    hypothesis example).  Imported here, once pytest has loaded the plugin."""
    import hostile_summary

    hostile_summary.COUNTS[kind] += 1


FIXTURES = Path(__file__).parent / "fixtures" / "hostile"
GOOD_TEXT = "A good file: the Nile flows north into the Mediterranean Sea."
PROGRESS = re.compile(r"^\S.*\s\d+/\d+\s+\d+:\d\d:\d\d")  # a rich progress bar's last frame
MB = 1_000_000


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    """``args`` and ``error`` may name ``{in}`` (the copied fixtures) and ``{out}`` (where
    the command would write); ``error`` is a regex the whole error line must match after
    ``error: `` (``{in}`` stands for the escaped folder).  ``setup`` writes what the case
    needs beyond the fixtures (a config naming the bad file, a generated file)."""

    name: str
    args: tuple[str, ...]
    error: str
    setup: Callable[[Path], None] | None = None


def big_line(path: Path, head: bytes, size: int = 50 * MB) -> None:
    """A file of one line of ``size`` bytes starting with ``head`` (written in blocks)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        handle.write(head)
        block = b"x" * MB
        left = size - len(head)
        while left > 0:
            handle.write(block[: min(left, MB)])
            left -= MB


def noise(path: Path, size: int, seed: int = 0) -> None:
    """``size`` random bytes (seeded, so the first NUL byte is always at the same offset)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(random.Random(seed).randbytes(size))


def source(bad: str | None = None, generate=None):
    """A SOURCE folder ``{in}/source/``: a good text file beside the bad input, copied from
    the fixtures (``bad``) or generated (``generate(path)``, named by ``bad``)."""

    def setup(inputs: Path) -> None:
        folder = inputs / "source"
        folder.mkdir()
        (folder / "good.txt").write_text(GOOD_TEXT, encoding="utf-8")
        if generate is not None:
            generate(folder / bad)
        elif bad is not None:
            shutil.copy(inputs / bad, folder / Path(bad).name)

    return setup


def eval_config(tasks: list[dict], **extra):
    """``{in}/eval.yaml``: a hub model (never loaded: the inputs fail first) and ``tasks``;
    a task given as ``{"generate": (name, function)}`` is generated first."""

    def setup(inputs: Path) -> None:
        specs = []
        for task in tasks:
            task = dict(task)
            if "generate" in task:
                name, generate = task.pop("generate")
                generate(inputs / name)
                task["path"] = name
            specs.append(task)
        config = {"model": {"path": "org/model"}, "tasks": specs, **extra}
        (inputs / "eval.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")

    return setup


def kb_case(name: str, bad: str, message: str, generate=None) -> Case:
    """``kinject kb build --strict`` over a folder holding ``bad``; the error names it."""
    args = ("kb", "build", "{in}/source", "--out", "{out}/kb", "--strict")
    error = "{in}/source/" + re.escape(Path(bad).name) + message
    return Case(name, args, error, source(bad, generate))


def eval_case(name: str, task: dict, message: str, where: str | None = None, **extra) -> Case:
    """``kinject eval`` of a config whose task is ``task``; the error names ``where`` (the
    task's file by default)."""
    args = ("eval", "--config", "{in}/eval.yaml", "--out", "{out}/run")
    where = where or task.get("path") or task["generate"][0]
    return Case(name, args, "{in}/" + re.escape(where) + message, eval_config([task], **extra))


def config_case(
    name: str, command: str, config: str, message: str, where: str | None = None
) -> Case:
    """``kinject eval|kb build|run|finetune`` with the config file ``config``; the error
    names ``where`` (the config by default; "" when ``message`` is the whole line)."""
    args = {
        "eval": ("eval", "--config", f"{{in}}/{config}", "--out", "{out}/run"),
        "kb": ("kb", "build", "{in}/source", "--out", "{out}/kb", "--config", f"{{in}}/{config}"),
        "run": ("run", f"{{in}}/{config}", "--out", "{out}/run"),
        "finetune": ("finetune", "--config", f"{{in}}/{config}", "--out", "{out}/ft"),
    }[command]
    where = config if where is None else where
    error = ("{in}/" + re.escape(where) if where else "") + message
    return Case(name, args, error, source() if command == "kb" else None)


MISSING = r": missing or not a non-empty string"
TOO_LARGE = r": too large \({} MB > 20 MB; raise max_file_mb in the KB config\)"
OUT_OF_RANGE = r", line 2, field 'answer': 4 is out of range for 4 choices \(0-based: 0 to 3\)"
NO_UNIT = r", line 2, field 'id': 'nobody' names no training unit"

CASES = [
    # kinject kb build --strict: corpus files
    kb_case("kb-binary", "corpus/binary.txt", r": binary file \(NUL byte at offset 8\)"),
    kb_case("kb-invalid-utf8", "corpus/latin1.txt", ", line 2: invalid UTF-8 at byte 15"),
    kb_case("kb-empty", "corpus/empty.txt", ": empty file"),
    kb_case("kb-whitespace-only", "corpus/blank.md", ": no text after cleaning"),
    kb_case("kb-script-only-html", "corpus/script-only.html", ": no visible text after cleaning"),
    kb_case("kb-jsonl-wrong-type", "corpus/wrong-types.jsonl", ", line 2, field 'id'" + MISSING),
    kb_case(
        "kb-jsonl-missing-field", "corpus/missing-text.jsonl", ", line 1, field 'text'" + MISSING
    ),
    kb_case(
        "kb-jsonl-duplicate-id",
        "corpus/duplicate-ids.jsonl",
        r", line 2, field 'id': duplicate id 'd1' \(first on line 1\)",
    ),
    kb_case("kb-jsonl-deeply-nested", "corpus/deep.jsonl", ", line 1: JSON nested too deeply"),
    kb_case(
        "kb-jsonl-lone-surrogate",
        "corpus/surrogate.jsonl",
        r", line 1, field 'id': lone surrogate \\ud800 in a string \(not valid Unicode\)",
    ),
    kb_case(
        "kb-jsonl-huge-number",
        "corpus/huge-number.jsonl",
        ", line 1: a JSON number of more than 4300 digits",
    ),
    kb_case(
        "kb-json-not-squad",
        "corpus/not-squad.json",
        r": not a SQuAD-format JSON file \(expected .*\)",
    ),
    kb_case(
        "kb-json-truncated",
        "corpus/truncated.json",
        r", line 2: not valid JSON \(Expecting value, column 1\)",
    ),
    kb_case("kb-pdf-broken", "corpus/broken.pdf", r": unreadable PDF \(PdfStreamError: .*\)"),
    kb_case(
        "kb-bz2-not-bzip2", "corpus/fake.xml.bz2", r": cannot read the dump \(Invalid data stream\)"
    ),
    kb_case(
        "kb-xml-truncated",
        "corpus/truncated.xml",
        r", line 1: not well-formed XML \(no element found: .*\)",
    ),
    kb_case(
        "kb-wikiextractor-no-title",
        "corpus/wiki_00",
        ", line 1, field 'title': missing or empty, page skipped",
    ),
    kb_case(
        "kb-50mb-single-line", "big.txt", TOO_LARGE.format("50.0"), lambda p: big_line(p, b"A: ")
    ),
    kb_case(
        "kb-random-bytes",
        "noise.txt",
        r": binary file \(NUL byte at offset \d+\)",
        lambda p: noise(p, 2 * MB),
    ),
    kb_case(
        "kb-random-pdf-25mb", "noise.pdf", TOO_LARGE.format("25.0"), lambda p: noise(p, 25 * MB, 1)
    ),
    Case(
        "kb-nothing-but-bad",
        ("kb", "build", "{in}/corpus/empty.txt", "--out", "{out}/kb"),
        r"no documents found in {in}/corpus/empty\.txt "
        r"\(1 warning, the first: {in}/corpus/empty\.txt: empty file\)",
    ),
    # kinject kb build --config: the knowledge base's config
    config_case(
        "kb-config-unknown-key",
        "kb",
        "configs/kb-unknown-key.yaml",
        r": unknown key 'chunkin' \(did you mean 'chunking'\?\)",
    ),
    config_case(
        "kb-config-negative-size",
        "kb",
        "configs/kb-negative-size.yaml",
        ": key 'chunking.size': Input should be greater than or equal to 8",
    ),
    config_case(
        "kb-config-negative-max-mb",
        "kb",
        "configs/kb-negative-max-mb.yaml",
        ": key 'max_file_mb': Input should be greater than 0",
    ),
    config_case(
        "kb-config-infinite-max-mb",
        "kb",
        "configs/kb-infinite-max-mb.yaml",
        ": key 'max_file_mb': Input should be a finite number",
    ),
    config_case(
        "kb-config-overlap-too-big",
        "kb",
        "configs/kb-overlap-too-big.yaml",
        ": key 'chunking': overlap must be smaller than size",
    ),
    config_case(
        "kb-config-wrong-type",
        "kb",
        "configs/kb-wrong-type.yaml",
        ": key 'chunking.size': Input should be a valid integer, .*",
    ),
    # kinject eval: task files (refused before any model is loaded)
    eval_case(
        "task-answer-out-of-range", {"path": "tasks/mc-answer-out-of-range.jsonl"}, OUT_OF_RANGE
    ),
    eval_case(
        "task-negative-answer",
        {"path": "tasks/mc-negative-answer.jsonl"},
        r", line 1, field 'answer': -1 is out of range for 4 choices \(0-based: 0 to 3\)",
    ),
    eval_case(
        "task-one-choice",
        {"path": "tasks/mc-one-choice.jsonl"},
        ", line 2, field 'choices': needs at least two choices, has 1",
    ),
    eval_case(
        "task-no-choices",
        {"path": "tasks/mc-no-choices.jsonl"},
        ", line 1, field 'choices': needs at least two choices, has 0",
    ),
    eval_case(
        "task-missing-question",
        {"path": "tasks/mc-missing-question.jsonl"},
        ", line 2, field 'question': missing",
    ),
    eval_case(
        "task-answer-string",
        {"path": "tasks/mc-answer-string.jsonl"},
        r", line 1, field 'answer': expected the 0-based index of the right choice \(0 for the "
        r"first\), got the string 'A'; for choice A write 0",
    ),
    eval_case(
        "task-answer-bool",
        {"path": "tasks/mc-answer-bool.jsonl"},
        ", line 1, field 'answer': expected the 0-based index of the right choice, got True",
    ),
    eval_case(
        "task-choice-not-a-string",
        {"path": "tasks/mc-choices-not-strings.jsonl"},
        ", line 1, field 'choices': every choice must be a string",
    ),
    eval_case(
        "task-duplicate-id",
        {"path": "tasks/mc-duplicate-id.jsonl"},
        r", line 3, field 'id': duplicate id 'q1' \(first on line 1\)",
    ),
    eval_case(  # the id's line break is shown escaped: the error stays one line
        "task-duplicate-id-with-newline",
        {"path": "tasks/mc-duplicate-id-newline.jsonl"},
        r", line 2, field 'id': duplicate id 'q\\n1' \(first on line 1\)",
    ),
    eval_case(
        "task-unknown-field",
        {"path": "tasks/mc-unknown-field.jsonl"},
        ", line 1, field 'answr': unknown field",
    ),
    eval_case("task-empty-id", {"path": "tasks/mc-empty-id.jsonl"}, ", line 1, field 'id': empty"),
    eval_case(
        "task-doc-ids-a-string",
        {"path": "tasks/mc-doc-ids-string.jsonl"},
        ", line 1, field 'doc_ids': expected a list of strings",
    ),
    eval_case("task-empty-file", {"path": "tasks/mc-empty.jsonl"}, ": no questions"),
    eval_case("task-whitespace-only", {"path": "tasks/mc-blank.jsonl"}, ": no questions"),
    eval_case(
        "task-binary", {"path": "tasks/mc-binary.jsonl"}, ", line 1: invalid UTF-8 at byte 4"
    ),
    eval_case(
        "task-not-an-object",
        {"path": "tasks/mc-not-object.jsonl"},
        ", line 1: expected a JSON object",
    ),
    eval_case(
        "task-not-json",
        {"path": "tasks/mc-not-json.jsonl"},
        r", line 1: not valid JSON \(Expecting property name enclosed in double quotes\)",
    ),
    eval_case(
        "task-deeply-nested", {"path": "tasks/mc-deep.jsonl"}, ", line 1: JSON nested too deeply"
    ),
    eval_case(
        "task-lone-surrogate",
        {"path": "tasks/mc-surrogate.jsonl"},
        r", line 1, field 'question': lone surrogate \\udc00 in a string \(not valid Unicode\)",
    ),
    eval_case(
        "task-huge-number",
        {"path": "tasks/mc-huge-number.jsonl"},
        ", line 1: a JSON number of more than 4300 digits",
    ),
    eval_case(
        "task-50mb-single-line",
        {"generate": ("big.jsonl", lambda p: big_line(p, b'{"id": "q1", "question": "'))},
        r", line 1: not valid JSON \(Unterminated string starting at\)",
    ),
    eval_case("task-is-a-folder", {"path": "tasks"}, ": is a folder, not a file"),
    eval_case("task-missing-file", {"path": "tasks/no-such-file.jsonl"}, ": file not found"),
    eval_case(
        "task-bad-dev-file",
        {"path": "tasks/good.jsonl", "dev": "tasks/mc-one-choice.jsonl"},
        ", line 2, field 'choices': needs at least two choices, has 1",
        where="tasks/mc-one-choice.jsonl",
    ),
    eval_case(
        "task-open-empty-answers",
        {"format": "open_jsonl", "path": "tasks/open-empty-answers.jsonl"},
        ", line 2, field 'answers': expected a non-empty list of non-empty strings",
    ),
    eval_case(
        "task-mmlu-csv-five-columns",
        {"format": "mmlu_csv", "path": "tasks/mmlu_five_columns_test.csv"},
        r", line 2: expected 6 columns \(question,A,B,C,D,answer\), found 5",
    ),
    eval_case(
        "task-mmlu-csv-answer-e",
        {"format": "mmlu_csv", "path": "tasks/mmlu_answer_e_test.csv"},
        ", line 1, field 'answer': 'E' is not one of A, B, C, D",
    ),
    eval_case(
        "task-mmlu-csv-invalid-utf8",
        {"format": "mmlu_csv", "path": "tasks/mmlu_invalid_utf8_test.csv"},
        ", line 2: invalid UTF-8 at byte 26",
    ),
    eval_case(
        "task-mmlu-csv-empty",
        {"format": "mmlu_csv", "path": "tasks/mmlu_empty_test.csv"},
        ": no questions",
    ),
    eval_case(
        "task-mmlu-csv-50mb-single-line",
        {"format": "mmlu_csv", "generate": ("big_test.csv", lambda p: big_line(p, b"What "))},
        r", line 1: not a readable CSV row \(field larger than field limit \(131072\)\)",
    ),
    eval_case(
        "task-mmlu-hf-answer-out-of-range",
        {"format": "mmlu_hf", "path": "tasks/mmlu_hf_answer"},
        ", line 1, field 'answer': 4 is not one of 0, 1, 2, 3",
        where="tasks/mmlu_hf_answer/test-00000-of-00001.jsonl",
    ),
    eval_case(
        "task-mmlu-hf-broken-parquet",
        {"format": "mmlu_hf", "path": "tasks/mmlu_hf_parquet"},
        r": not a readable parquet file \(.*\)",
        where="tasks/mmlu_hf_parquet/test-00000-of-00001.parquet",
    ),
    eval_case(
        "oracle-corpus-wrong-type",
        {"path": "tasks/good.jsonl"},
        ", line 2, field 'id'" + MISSING,
        where="corpus/wrong-types.jsonl",
        arms=["base", "oracle"],
        corpus="corpus/wrong-types.jsonl",
    ),
    eval_case(
        "rag-kb-damaged",
        {"path": "tasks/good.jsonl"},
        r", line 1: not valid JSON \(Expecting value, column 27\)",
        where="tasks/kb-damaged/kb.json",
        arms=["base", "rag"],
        rag={"kb": "tasks/kb-damaged"},
    ),
    # kinject eval --config: the config itself
    config_case(
        "eval-config-unknown-key",
        "eval",
        "configs/eval-unknown-key.yaml",
        r": unknown key 'modle' \(did you mean 'model'\?\)",
    ),
    config_case(
        "eval-config-negative-shots",
        "eval",
        "configs/eval-negative-shots.yaml",
        ": shots must be >= 0",
    ),
    config_case(
        "eval-config-negative-batch",
        "eval",
        "configs/eval-negative-batch.yaml",
        r": key 'scoring': batch_size must be at least 1 \(or auto\)",
    ),
    config_case(
        "eval-config-tasks-not-a-list",
        "eval",
        "configs/eval-tasks-not-list.yaml",
        ": key 'tasks': Input should be a valid list",
    ),
    config_case(
        "eval-config-top-level-list",
        "eval",
        "configs/eval-top-level-list.yaml",
        ": expected a mapping at the top level",
    ),
    config_case(
        "eval-config-python-tag",
        "eval",
        "configs/eval-python-tag.yaml",
        r", line 1: not valid YAML \(could not determine a constructor for the tag "
        r"'tag:yaml.org,2002:python/object/apply:os.system', column 8\)",
    ),
    config_case(
        "eval-config-duplicate-key",
        "eval",
        "configs/eval-duplicate-key.yaml",
        r", line 4, field 'shots': written twice in one mapping \(first on line 3\)",
    ),
    config_case(
        "eval-config-tab",
        "eval",
        "configs/eval-tab.yaml",
        r", line 2: not valid YAML \(found character '\\t' that cannot start any token, column 1\)",
    ),
    config_case(
        "eval-config-invalid-utf8",
        "eval",
        "configs/eval-invalid-utf8.yaml",
        ", line 2: invalid UTF-8 at byte 35",
    ),
    config_case(
        "eval-config-lone-surrogate",
        "eval",
        "configs/eval-surrogate.yaml",
        r", field 'model.path': lone surrogate \\ud800 in a string \(not valid Unicode\)",
    ),
    config_case(
        "eval-config-missing", "eval", "configs/no-such-config.yaml", ": config file not found"
    ),
    # kinject run: experiment files and their includes
    config_case(
        "experiment-include-invalid-utf8",
        "run",
        "configs/exp-include-invalid-utf8.yaml",
        ", line 2: invalid UTF-8 at byte 35",
        where="configs/eval-invalid-utf8.yaml",
    ),
    config_case(
        "experiment-include-cycle",
        "run",
        "configs/exp-include-cycle-a.yaml",
        r"include cycle: {in}/configs/exp-include-cycle-a\.yaml -> "
        r"{in}/configs/exp-include-cycle-b\.yaml -> {in}/configs/exp-include-cycle-a\.yaml",
        where="",
    ),
    config_case(
        "experiment-include-missing",
        "run",
        "configs/exp-include-missing.yaml",
        r": experiment file not found \(included from {in}/configs/exp-include-missing\.yaml\)",
        where="configs/no-such-base.yaml",
    ),
    config_case(
        "experiment-include-not-a-mapping",
        "run",
        "configs/exp-include-list.yaml",
        ": expected a mapping at the top level",
        where="configs/eval-top-level-list.yaml",
    ),
    config_case(
        "experiment-negative-batch",
        "run",
        "configs/exp-negative-batch.yaml",
        ": key 'finetunes.ft.batch_size': Input should be greater than or equal to 1",
    ),
    config_case(
        "experiment-nul-in-path",
        "run",
        "configs/exp-nul-path.yaml",
        r", field 'tasks\[0\].path': a NUL character in a string \(no path can hold one\)",
    ),
    config_case(
        "experiment-unknown-arm",
        "run",
        "configs/exp-unknown-arm.yaml",
        r": arm 'ft-typo': expected base, oracle, rag, <finetune> or <finetune>\+rag with "
        r"<finetune> one of the finetunes \(none given\)",
    ),
    config_case(
        "experiment-bad-task-file",
        "run",
        "configs/exp-bad-task.yaml",
        OUT_OF_RANGE,
        where="tasks/mc-answer-out-of-range.jsonl",
    ),
    config_case(  # refused before the run folder is made, not after the trainings before it
        "experiment-bad-paraphrases",
        "run",
        "configs/exp-bad-paraphrases.yaml",
        NO_UNIT,
        where="training/paraphrases-unknown-id.jsonl",
    ),
    # kinject finetune: the config and the training text (read before any model)
    config_case(
        "finetune-negative-block-size",
        "finetune",
        "training/ft-negative-block.yaml",
        ": key 'data.block_size': Input should be greater than or equal to 16",
    ),
    config_case(
        "finetune-zero-epochs",
        "finetune",
        "training/ft-zero-epochs.yaml",
        ": key 'epochs': Input should be greater than or equal to 1",
    ),
    config_case(
        "finetune-nan-learning-rate",
        "finetune",
        "training/ft-nan-lr.yaml",
        ": key 'learning_rate.0': Input should be a finite number",
    ),
    config_case(
        "finetune-paraphrase-names-no-unit",
        "finetune",
        "training/ft-unknown-paraphrase-id.yaml",
        NO_UNIT,
        where="training/paraphrases-unknown-id.jsonl",
    ),
    config_case(
        "finetune-paraphrases-empty",
        "finetune",
        "training/ft-empty-paraphrases.yaml",
        ": no paraphrases in the file",
        where="training/paraphrases-empty.jsonl",
    ),
    config_case(
        "finetune-paraphrases-not-a-list",
        "finetune",
        "training/ft-paraphrases-not-list.yaml",
        ", line 1, field 'paraphrases': expected a list of non-empty strings",
        where="training/paraphrases-not-list.jsonl",
    ),
    config_case(
        "finetune-qa-missing-output",
        "finetune",
        "training/ft-qa-missing-output.yaml",
        ", line 1, field 'output'" + MISSING,
        where="training/qa-missing-output.jsonl",
    ),
    config_case(
        "finetune-qa-no-pairs",
        "finetune",
        "training/ft-qa-empty.yaml",
        ": no QA pairs",
        where="training/qa-empty.jsonl",
    ),
    config_case(
        "finetune-corpus-binary",
        "finetune",
        "training/ft-corpus-binary.yaml",
        ", line 1: invalid UTF-8 at byte 0",
        where="corpus/binary.txt",
    ),
    config_case(
        "finetune-corpus-duplicate-ids",
        "finetune",
        "training/ft-corpus-duplicate-ids.yaml",
        r", line 2, field 'id': duplicate id 'd1' \(first on line 1\)",
        where="corpus/duplicate-ids.jsonl",
    ),
    config_case(
        "finetune-corpus-missing",
        "finetune",
        "training/ft-corpus-missing.yaml",
        ": file not found",
        where="training/no-such-corpus.jsonl",
    ),
    config_case(
        "finetune-replay-is-a-folder",
        "finetune",
        "training/ft-replay-folder.yaml",
        ": is a folder, not a file",
        where="corpus",
    ),
]


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folder`` (hidden ones too): size and modification time."""
    found = {}
    for path in sorted(folder.rglob("*")):
        stat = path.lstat()
        found[path.relative_to(folder).as_posix()] = (stat.st_size, stat.st_mtime_ns)
    return found


def kinject(*args: str):
    """Run the CLI in process; a traceback (any exception but the CLI's own exit) fails."""
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"kinject {' '.join(args)} raised instead of refusing") from (
            result.exception
        )
    stderr = [line for line in result.stderr.splitlines() if not PROGRESS.match(line)]
    return result.exit_code, result.stdout, stderr


@pytest.fixture
def inputs(tmp_path) -> Path:
    """The fixtures, copied: a command may only read them, and writes would show."""
    folder = tmp_path / "in"
    shutil.copytree(FIXTURES, folder)
    return folder


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_a_bad_input_is_refused_in_one_line_naming_it_and_nothing_is_written(
    case, inputs, tmp_path
):
    if case.setup is not None:
        case.setup(inputs)
    places = {"{in}": str(inputs), "{out}": str(tmp_path / "out")}
    args = [_fill(arg, places) for arg in case.args]
    before = listing(tmp_path)

    code, stdout, stderr = kinject(*args)
    tried("files")

    assert code == 2, (code, stdout, stderr)
    assert len(stderr) == 1, stderr  # one line: no warning, log line or traceback beside it
    expected = "error: " + case.error.replace("{in}", re.escape(str(inputs)))
    assert re.fullmatch(expected, stderr[0]), stderr[0]
    assert listing(tmp_path) == before  # nothing written, nothing left half-written
    assert not (tmp_path / "out").exists()


def _fill(arg: str, places: dict[str, str]) -> str:
    for placeholder, value in places.items():
        arg = arg.replace(placeholder, value)
    return arg


DRY_RUNS = [
    (
        "configs/exp-bad-task.yaml",
        r"PROBLEM task 'mc-answer-out-of-range': {in}/tasks/mc-answer-out-of-range\.jsonl"
        + OUT_OF_RANGE,
    ),
    (
        "configs/exp-bad-paraphrases.yaml",
        r"PROBLEM fine-tuning 'ft-par': {in}/training/paraphrases-unknown-id\.jsonl" + NO_UNIT,
    ),
]


@pytest.mark.parametrize(("experiment", "problem"), DRY_RUNS, ids=[e for e, _ in DRY_RUNS])
def test_the_dry_run_names_a_bad_input_among_its_checks_and_writes_nothing(
    experiment, problem, inputs, tmp_path
):
    """``kinject run --dry-run`` reports every check, one line each: the bad input is a
    PROBLEM line naming file, line and field, and the exit status is 2."""
    before = listing(tmp_path)
    code, stdout, stderr = kinject("run", str(inputs / experiment), "--dry-run")
    tried("files")

    assert code == 2 and stderr == [], (stdout, stderr)
    lines = stdout.splitlines()
    expected = problem.replace("{in}", re.escape(str(inputs)))
    assert [line for line in lines if line.startswith("PROBLEM")] == [
        next(line for line in lines if re.fullmatch(expected, line))
    ]
    assert lines[-1] == "1 problem(s): nothing was run"
    assert listing(tmp_path) == before


def test_without_strict_every_bad_file_is_a_warning_and_the_good_ones_are_built(inputs, tmp_path):
    """The documented policy of ``kinject kb build``: each bad file (or JSONL line) skipped
    with a one-line warning naming it; the good documents — and the good lines of a file
    with bad ones — built; no partial files beside the knowledge base.  Then ``kinject kb
    eval`` of it with question files that are missing or broken."""
    corpus = inputs / "corpus"
    (corpus / "good.txt").write_text(GOOD_TEXT, encoding="utf-8")
    big_line(corpus / "big.txt", b"One line: ")
    noise(corpus / "noise.txt", 2 * MB)
    out = tmp_path / "out" / "kb"

    code, _, stderr = kinject("kb", "build", str(corpus), "--out", str(out))
    tried("files")

    assert code == 0, stderr
    c = re.escape(str(corpus))
    expected = [
        rf"{c}/big\.txt: too large \(50\.0 MB > 20 MB; raise max_file_mb in the KB config\)",
        rf"{c}/binary\.txt: binary file \(NUL byte at offset 8\)",
        rf"{c}/blank\.md: no text after cleaning",
        rf"{c}/broken\.pdf: unreadable PDF \(PdfStreamError: .*\)",
        rf"{c}/deep\.jsonl, line 1: JSON nested too deeply",
        rf"{c}/duplicate-ids\.jsonl, line 2, field 'id': duplicate id 'd1' \(first on line 1\)",
        rf"{c}/empty\.txt: empty file",
        rf"{c}/fake\.xml\.bz2: cannot read the dump \(Invalid data stream\)",
        rf"{c}/huge-number\.jsonl, line 1: a JSON number of more than 4300 digits",
        rf"{c}/latin1\.txt, line 2: invalid UTF-8 at byte 15",
        rf"{c}/missing-text\.jsonl, line 1, field 'text': missing or not a non-empty string",
        rf"{c}/noise\.txt: binary file \(NUL byte at offset \d+\)",
        rf"{c}/not-squad\.json: not a SQuAD-format JSON file \(.*\)",
        rf"{c}/script-only\.html: no visible text after cleaning",
        rf"{c}/surrogate\.jsonl, line 1, field 'id': lone surrogate \\ud800 in a string .*",
        rf"{c}/truncated\.json, line 2: not valid JSON \(Expecting value, column 1\)",
        rf"{c}/truncated\.xml, line 1: not well-formed XML \(no element found: .*\)",
        rf"{c}/wiki_00, line 1, field 'title': missing or empty, page skipped",
        rf"{c}/wiki_00: no article pages with text",
        rf"{c}/wrong-types\.jsonl, line 2, field 'id': missing or not a non-empty string",
    ]
    warnings = [line.removeprefix("warning: ") for line in stderr if line.startswith("warning:")]
    assert len(warnings) == len(stderr)  # nothing but warnings on stderr
    assert len(warnings) == len(expected), warnings
    for pattern, warning in zip(expected, sorted(warnings)):
        assert re.fullmatch(pattern, warning), (pattern, warning)

    from kinject.kb.store import KnowledgeBase

    kb = KnowledgeBase.open(out)
    ids = [document.id for document in kb.documents()]
    assert ids == ["b1", "b2", "d1", "deep.html", "good.txt", "w1"]  # BOM + CRLF JSONL is read
    deep = next(d for d in kb.documents() if d.id == "deep.html")
    assert deep.text == "Deep inside the page."  # 3,000 nested elements: no recursion error
    assert sorted(p.name for p in out.parent.iterdir()) == ["kb"]  # no staging folder left
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]

    # the knowledge base asked with question files that are not there or not SQuAD
    for questions, message in (
        ("missing.json", ": file not found"),
        ("corpus/truncated.json", r", line 2: not valid JSON \(Expecting value, column 1\)"),
        ("corpus/surrogate.jsonl", r", line 1, field 'id': lone surrogate \\ud800 .*"),
    ):
        before = listing(tmp_path)
        code, _, stderr = kinject("kb", "eval", str(out), "--questions", str(inputs / questions))
        tried("files")
        assert code == 2 and len(stderr) == 1, stderr
        assert re.fullmatch(f"error: {re.escape(str(inputs / questions))}{message}", stderr[0])
        assert listing(tmp_path) == before


# --------------------------------------------------------------------------- properties

# Derandomized: the same examples on every run (CI); "explore" draws new ones, ten times as
# many.  No example database is written (nothing appears in the checkout).
settings.register_profile(
    "hostile",
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "hostile-explore", settings.get_profile("hostile"), max_examples=1200, derandomize=False
)
PROFILE = settings.get_profile(
    "hostile-explore" if os.environ.get("KINJECT_HYPOTHESIS") == "explore" else "hostile"
)

# JSON values of every kind, with the ones that broke loaders: lone surrogates, numbers too
# long to convert, NaN and infinities, nesting.
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 10),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(["", " ", "\ud800", "a\udfffb", "\x00", "\u2028", "q1", "\n"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
FIELDS = ("id", "question", "choices", "answer", "subject", "doc_ids", "answers", "text", "title",
          "source", "meta", "instruction", "input", "output", "paraphrases")  # fmt: skip
GOOD_ROWS = (
    {"id": "q1", "question": "Which?", "choices": ["a", "b", "c", "d"], "answer": 1},
    {"id": "o1", "question": "Which?", "answers": ["a"]},
    {"id": "d1", "text": "Some text.", "title": "T"},
    {"instruction": "Say a.", "output": "a"},
    {"id": "d1", "paraphrases": ["Other text."]},
    {"question": "Which?", "subject": "s", "choices": ["a", "b", "c", "d"], "answer": 3},
)
ROWS = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), VALUES, max_size=6),
    st.builds(  # a good row with one field replaced by anything
        lambda row, key, value: {**row, key: value},
        st.sampled_from(GOOD_ROWS),
        st.sampled_from(FIELDS),
        VALUES,
    ),
    st.sampled_from(GOOD_ROWS),
)


@st.composite
def jsonl_files(draw) -> bytes:
    """JSON lines of any shape, some cut short, nested past the parser's limit or holding a
    number too long to convert, joined by LF or CRLF, sometimes after a byte order mark;
    encoded with surrogates passed through (invalid UTF-8)."""
    lines = []
    for row in draw(st.lists(ROWS, max_size=5)):
        line = json.dumps(row, ensure_ascii=draw(st.booleans()))
        mangle = draw(st.sampled_from(["none"] * 6 + ["cut", "deep", "huge", "array", "blank"]))
        if mangle == "cut":
            line = line[: draw(st.integers(0, len(line)))]
        elif mangle == "deep":
            line = "[" * draw(st.integers(500, 5000)) + "]" * draw(st.integers(0, 10))
        elif mangle == "huge":  # more digits than Python converts to an int
            line = line[:-1] + ', "n": ' + "9" * draw(st.integers(4301, 6000)) + "}"
        elif mangle == "array":
            line = json.dumps([row])
        elif mangle == "blank":
            line = draw(st.sampled_from(["", " ", "\t"]))
        lines.append(line)
    text = draw(st.sampled_from(["\n", "\r\n"])).join(lines) + draw(st.sampled_from(["", "\n"]))
    bom = draw(st.sampled_from(["", "\ufeff"]))
    return (bom + text).encode("utf-8", "surrogatepass")


ANY_BYTES = st.one_of(
    st.binary(max_size=2000), jsonl_files(), st.text(max_size=500).map(str.encode)
)


def refused_or_loaded(load, *args):
    """What ``load(*args)`` returns, or None when it refuses with a KinjectError; any other
    exception is the bug these tests look for, and propagates."""
    try:
        return load(*args)
    except KinjectError as error:
        assert "\n" not in str(error)  # one line, whatever the input held
        return None


def utf8_safe(*values: str | None) -> bool:
    """Whether these strings can be written to a UTF-8 file (no lone surrogates)."""
    try:
        for value in values:
            if value is not None:
                value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@PROFILE
@given(content=ANY_BYTES)
def test_task_and_training_loaders_load_or_refuse_any_file(tmp_path_factory, content):
    from kinject.corpus import load_corpus_jsonl
    from kinject.kb.quality import load_queries
    from kinject.tasks.loaders import (
        jsonl_task,
        load_mmlu_csv,
        load_mmlu_hf,
        load_open_jsonl,
        mmlu_task,
        open_task,
    )
    from kinject.training.data import Unit, load_paraphrases, load_qa_pairs, load_replay

    tried("generated")
    folder = tmp_path_factory.mktemp("loaders")
    for name in ("t.jsonl", "t.txt", "anatomy_test.csv"):
        (folder / name).write_bytes(content)
    jsonl, text, csv = folder / "t.jsonl", folder / "t.txt", folder / "anatomy_test.csv"

    task = refused_or_loaded(jsonl_task, "t", jsonl)
    if task is not None:  # what loads is a valid task
        assert task.items and len({item.id for item in task.items}) == len(task.items)
        for item in task.items:
            assert len(item.choices) >= 2 and 0 <= item.answer < len(item.choices)
            assert all(isinstance(choice, str) for choice in item.choices)
            assert utf8_safe(item.id, item.question, *item.choices, item.subject, *item.doc_ids)
    opened = refused_or_loaded(open_task, "t", jsonl)
    if opened is not None:
        assert all(item.answers and utf8_safe(item.id, *item.answers) for item in opened.items)
    refused_or_loaded(load_open_jsonl, jsonl)
    refused_or_loaded(load_mmlu_hf, jsonl, "anatomy")
    for loaded in (refused_or_loaded(load_mmlu_csv, csv), refused_or_loaded(mmlu_task, csv)):
        items = loaded.items if hasattr(loaded, "items") else loaded or []
        assert all(len(item.choices) == 4 and 0 <= item.answer < 4 for item in items)
    corpus = refused_or_loaded(load_corpus_jsonl, jsonl)
    if corpus is not None:
        assert all(doc.id and doc.text and utf8_safe(doc.id, doc.text) for doc in corpus.values())
    units = [Unit("d1", "d1", "Some text."), Unit("q1", "q1", "Other.")]
    refused_or_loaded(load_paraphrases, jsonl, units)
    refused_or_loaded(load_qa_pairs, jsonl)
    refused_or_loaded(load_replay, jsonl)
    refused_or_loaded(load_replay, text)
    refused_or_loaded(load_queries, jsonl)


KB_NAMES = ("doc.txt", "doc.html", "doc.jsonl", "doc.jsonl", "doc.json", "wiki_00", "dump.xml")


@PROFILE
@given(
    content=st.one_of(jsonl_files(), ANY_BYTES),  # JSON lines half the time: most readers parse
    name=st.sampled_from(KB_NAMES),
)
def test_kb_ingest_reads_skips_or_refuses_any_file(tmp_path_factory, content, name):
    """Without --strict a bad file is a warning and never an exception; with it, a
    KinjectError.  Every document read has cleaned, non-empty text that can be written."""
    from kinject.kb.ingest import clean_text, ingest

    tried("generated")
    folder = tmp_path_factory.mktemp("ingest")
    (folder / name).write_bytes(content)

    report = ingest([folder])  # never raises for a bad file
    assert all("\n" not in warning for warning in report.warnings)
    for document in report.documents:
        assert document.text and clean_text(document.text) == document.text
        assert utf8_safe(document.id, document.text, document.title)
    strict = refused_or_loaded(lambda: ingest([folder], strict=True))
    if strict is not None:
        assert [d.id for d in strict.documents] == [d.id for d in report.documents]


YAML_KEYS = ("model", "path", "tasks", "shots", "arms", "corpus", "rag", "kb", "k", "chunking",
             "size", "overlap", "max_file_mb", "data", "learning_rate", "epochs", "batch_size",
             "include", "models", "label", "finetunes", "scoring", "task")  # fmt: skip
YAML_VALUES = st.recursive(
    st.one_of(SCALARS, st.sampled_from(["t.jsonl", "org/model", "base", "rag", -1, 0, 8, 1e-4])),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(YAML_KEYS) | st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def yaml_files(draw) -> bytes:
    data = draw(st.dictionaries(st.sampled_from(YAML_KEYS), YAML_VALUES, max_size=6))
    text = yaml.safe_dump(data, allow_unicode=draw(st.booleans()))
    if draw(st.booleans()):  # damage it: cut, or a tab where YAML forbids one
        cut = draw(st.integers(0, len(text)))
        text = (
            text[:cut] + draw(st.sampled_from(["", "\t", ": :", "\n- x\n", "&a *a"])) + text[cut:]
        )
    return text.encode("utf-8", "surrogatepass")


@PROFILE
@given(
    content=st.one_of(yaml_files(), st.binary(max_size=300), st.text(max_size=200).map(str.encode))
)
def test_configs_and_experiments_load_or_refuse_any_yaml(tmp_path_factory, content):
    from kinject.config import EvalConfig, FinetuneConfig, KBConfig, load_config
    from kinject.experiments.files import load_experiment

    tried("generated")
    path = tmp_path_factory.mktemp("configs") / "config.yaml"
    path.write_bytes(content)
    for model in (KBConfig, EvalConfig, FinetuneConfig):
        refused_or_loaded(load_config, model, path)
    refused_or_loaded(load_experiment, path)


# --------------------------------------------------------------------------- the chunker

WORDS = st.sampled_from(["word", "a", "The", "x" * 40, "naïve", "東京", "🙂", "e\u0301", "Dr.",
                         ".", "!", "?", '."', "...", ")", " ", "  ", "\n", "\n\n", "\t", "\u200d",
                         "\ufffd", "\x00", "1234567890"])  # fmt: skip
TEXTS = st.one_of(st.text(max_size=400), st.lists(WORDS, max_size=150).map("".join))


@pytest.fixture(scope="module", params=["minilm-wordpiece", "byte-level-bpe"])
def chunk_tokenizer(request):
    """The default embedder's tokenizer, and a byte-level BPE (GPT-2 style: a word's token
    carries the space before it, and a character can take several tokens)."""
    if request.param == "minilm-wordpiece":
        from kinject.config import KBConfig
        from kinject.kb.store import make_chunker

        return make_chunker(KBConfig()).tokenizer
    return request.getfixturevalue("bpe_tokenizer")


@PROFILE
@given(text=TEXTS, clean=st.booleans(), size=st.integers(8, 48), overlap=st.integers(0, 47))
def test_chunking_loses_nothing_and_repeats_only_the_overlap(
    chunk_tokenizer, text, clean, size, overlap
):
    """The chunker's promise, for any text, size >= 8 (the config's minimum) and overlap
    below size: every chunk is the exact span ``text[start:end]``, starts and ends after the
    one before it, and holds at most ``size`` of the text's tokens; consecutive chunks share
    at most ``overlap`` tokens; and the chunks, each without the part it shares with the
    one before, with the whitespace between them put back, are the text again — nothing
    lost, nothing repeated but the overlap.  (A text of which the tokenizer reads nothing,
    such as a lone control character, gives no chunks.)"""
    from kinject.kb.chunking import Chunker
    from kinject.kb.ingest import clean_text

    tried("generated")
    overlap = min(overlap, size - 1)
    text = clean_text(text) if clean else text
    chunks = Chunker(chunk_tokenizer, size, overlap).chunk("doc", text)
    encoded = chunk_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    tokens = [(a, b) for a, b in encoded["offset_mapping"] if b > a]

    def tokens_within(start: int, end: int) -> int:
        return sum(1 for a, b in tokens if start <= a and b <= end)

    if not tokens:
        assert chunks == []
        return
    rebuilt, position = [], 0
    for index, chunk in enumerate(chunks):
        assert chunk.id == f"doc::{index}" and chunk.index == index and chunk.doc_id == "doc"
        assert chunk.text == text[chunk.start : chunk.end] and chunk.text.strip() == chunk.text
        assert tokens_within(chunk.start, chunk.end) <= size
        if index:
            before = chunks[index - 1]
            assert chunk.start > before.start and chunk.end > before.end
            assert tokens_within(chunk.start, before.end) <= overlap
        gap = text[position : chunk.start]
        assert gap.strip() == "", (gap, chunks)  # only whitespace falls between chunks
        rebuilt.append(gap + chunk.text[max(0, position - chunk.start) :])
        position = chunk.end
    assert text[position:].strip() == ""
    assert "".join(rebuilt) + text[position:] == text
