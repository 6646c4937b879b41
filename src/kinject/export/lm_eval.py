"""``kinject export lm-eval``: kinject's questions, prompts and retrieved contexts as
lm-evaluation-harness tasks, so ``lm_eval`` scores exactly what kinject scored.

The export folder (written in a staging folder beside it, then renamed into place)::

    DIR/
      manifest.json              format, source, and per task: name, YAML, data files, questions,
                                 num_fewshot, the model and cell it reproduces, the lm_eval command
      README.md                  the same for people
      <task>.yaml                one lm-eval task: dataset_path json, absolute data_files
      data/<task>.test.jsonl     {"id", "query", "choices", "answer", "context"} per question
      data/<task>.dev.jsonl      the k-shot examples: kinject's dev items, in kinject's order

How lm-eval rebuilds kinject's prompt (:func:`kinject.tasks.prompts.build_prompt`)::

    description + (dev query + " " + choices[answer] + "\\n\\n") × num_fewshot + query   + " " + choice
    └─ YAML ──┘   └─ fewshot_split: dev, sampler first_n, target/fewshot delimiters ┘   └─ doc ─┘
    query = [context + "\\n\\n"] + the question in the task's style (letter: "…\\nAnswer:";
            cloze: the text as it is, lm-eval's plain-continuation layout)

``doc_to_text: query``, ``doc_to_choice: choices`` and ``doc_to_target: answer`` name document
fields, which lm-eval takes verbatim (no Jinja), so every byte of the prompt is kinject's.

A task file exports as one lm-eval task; ``--num_fewshot`` is left to the command line (the
first k dev items, as kinject's static k-shot).  A run folder (``kinject eval`` or ``kinject
run``) exports one task per cell (model × arm × task × shots × K) with ``num_fewshot`` fixed:

* the questions are the cell's, in its order (a K-selection sample stays a sample);
* rag: the context is rebuilt from the chunk ids the cell's records hold (what was retrieved
  then, not a new search) with the run's template, separator and order; oracle: the gold
  documents from the run's corpus;
* dynamic ("nearest") k-shot examples differ per question, so they are put into the query
  and the task is 0-shot for lm-eval (the description still comes first, as in kinject);
* an arm's instruction (``rag+rename``) is lm-eval's ``--system_instruction``, which a task
  YAML cannot hold; lm-eval joins it to the description into one system prompt
  (:func:`kinject.tasks.prompts.system_prompt`), so the YAML's ``description`` is that joined
  text, and the plain ``lm_eval`` command reproduces the cell; the manifest also keeps the
  instruction and the description apart (``system_instruction``, ``task_description``) for
  ``--system_instruction`` with the task's own description.

Before anything is written, every cell's digest (model files, task files, knowledge-base
snapshot, arm, shots, scoring) is computed again from the run's config and must name a cell
file of the run: an export never pairs records with inputs that changed after scoring.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

from kinject.config import EvalConfig, ModelSpec, TaskSpec, load_config, parse_config
from kinject.errors import KinjectError
from kinject.fileio import read_jsonl, staging_dir, write_json, write_jsonl, write_text
from kinject.tasks.items import MCItem, Task
from kinject.tasks.prompts import build_prompt, system_prompt

EXPORT_FORMAT = 1
TASK_PREFIX = "kinject_"
_JINJA_MARKERS = ("{{", "{%", "{#")


@dataclass
class LmEvalTask:
    """One lm-eval task to write: its documents, k-shot pool and what it reproduces."""

    name: str
    description: str
    test: list[dict]
    dev: list[dict]
    num_fewshot: int | None  # fixed for a run's cell; None: left to the command line
    shots: list[int]  # the --num_fewshot values the manifest gives commands for
    model: ModelSpec | None = None
    cell: dict | None = None  # {model, arm, split, shots, k} of a run's cell
    fewshot: str = "first_n"  # first_n (lm-eval's sampler) | in_query (dynamic examples)
    origin: dict = field(default_factory=dict)  # task files, run folder, cell file
    instruction: str | None = None  # the arm's, opening ``description`` (--system_instruction)
    task_description: str = ""  # the task's own description, without the instruction
    chat_template: dict | None = None  # {"multiturn": bool}: scored with the chat template


@dataclass(frozen=True)
class ExportResult:
    out: Path
    tasks: list[dict]  # the manifest's task entries
    skipped: list[dict]  # cells lm-eval's multiple_choice cannot express (open questions)


def export_lm_eval(
    source: str | Path,
    out: str | Path,
    *,
    dev: str | Path | None = None,
    format: str | None = None,
    style: str | None = None,
    name: str | None = None,
    description: str | None = None,
    shots: tuple[int, ...] | None = None,
    model: str | None = None,
) -> ExportResult:
    """Export a task file (with the TaskSpec options) or a run folder to lm-eval tasks in ``out``.

    ``shots`` (task file; default 0) only chooses which lm_eval commands the manifest lists.
    ``out`` must not exist or be an empty folder; it appears complete or not at all.
    """
    source = Path(source)
    out = Path(out).absolute()
    _check_target(out)
    if source.is_dir():
        if any(v is not None for v in (dev, format, style, name, description, shots, model)):
            raise KinjectError(
                f"{source} is a run folder: --dev, --format, --style, --name, --description, "
                "--shots and --model apply to a task file only (a run names its own)"
            )
        tasks, skipped = run_tasks(source)
        kind = "experiment" if (source / "plan.json").exists() else "eval_run"
    elif source.is_file():
        fields = {
            "path": str(source.resolve()),
            "dev": str(Path(dev).resolve()) if dev is not None else None,
            "format": format or _format_of(source),
            "style": style,
            "name": name,
            "description": description,
        }
        spec = parse_config(TaskSpec, {key: v for key, v in fields.items() if v is not None})
        tasks, skipped, kind = [task_export(spec, list(shots or (0,)), model)], [], "task"
    else:
        raise KinjectError(f"{source}: no such task file or run folder")
    if not tasks:
        raise KinjectError(f"{source}: nothing to export (no multiple-choice cells)")
    names = [task.name for task in tasks]
    if len(set(names)) != len(names):
        raise KinjectError(f"two exported tasks would share a name in {names}")
    return _write(tasks, skipped, out, {"kind": kind, "path": str(source.resolve())})


# ---------------------------------------------------------------------------------------------
# a task file


def task_export(spec: TaskSpec, shots: list[int], model: str | None) -> LmEvalTask:
    """A task file as one lm-eval task; ``shots`` only lists commands (all need ≤ dev items)."""
    from kinject.evaluation.evaluate import load_task

    task = load_task(spec)
    if task.is_open:
        raise KinjectError(
            f"{spec.path}: open questions are scored by generation; only multiple-choice "
            "tasks export to lm-eval (output_type multiple_choice)"
        )
    if not task.items:
        raise KinjectError(f"{spec.path}: no questions")
    for count in shots:
        if count < 0 or count > len(task.dev):
            raise KinjectError(
                f"task '{task.name}' has {len(task.dev)} dev examples; {count}-shot needs {count}"
                + ("" if task.dev else " (give the dev file with --dev)")
            )
    spec_model = None
    if model is not None:
        local = Path(model)
        spec_model = ModelSpec(path=str(local.resolve()) if local.exists() else model)
    return LmEvalTask(
        name=lm_eval_name(task.name),
        description=task.description,
        test=[document(task, item, None) for item in task.items],
        dev=[document(task, item, None) for item in task.dev],
        num_fewshot=None,
        shots=sorted(set(shots)),
        model=spec_model,
        origin={"task": task.source, "style": task.style},
    )


def document(
    task: Task, item: MCItem, context: str | None, examples: list[MCItem] | None = None
) -> dict:
    """An lm-eval document: ``query`` is kinject's prompt without description and static
    k-shot examples (lm-eval adds those), with the context and any dynamic examples inside."""
    bare = replace(task, description="")
    prompt = build_prompt(bare, item, len(examples or []), context, examples or [])
    return {
        "id": item.id,
        "query": prompt.context,
        "choices": list(prompt.choice_texts),
        "answer": item.answer,
        "context": context or "",
    }


def lm_eval_name(raw: str) -> str:
    return TASK_PREFIX + re.sub(r"[^A-Za-z0-9_-]", "_", raw)


# ---------------------------------------------------------------------------------------------
# a run folder


def run_tasks(run_dir: Path) -> tuple[list[LmEvalTask], list[dict]]:
    """Every cell of a `kinject eval` folder, or of each model folder of a `kinject run`."""
    plan = run_dir / "plan.json"
    if plan.exists():
        tasks, skipped = [], []
        for row in json.loads(plan.read_text(encoding="utf-8"))["runs"]:
            if row["arms"]:
                more, left = eval_run_tasks(run_dir / row["folder"])
                tasks += more
                skipped += left
        return tasks, skipped
    if (run_dir / "config.yaml").exists() and (run_dir / "records.jsonl").exists():
        return eval_run_tasks(run_dir)
    raise KinjectError(
        f"{run_dir} is not a finished run folder (no plan.json, nor config.yaml with "
        "records.jsonl); run `kinject eval` or `kinject run` first"
    )


def eval_run_tasks(folder: Path) -> tuple[list[LmEvalTask], list[dict]]:
    """One lm-eval task per cell in ``records.jsonl``, checked against its cell file."""
    from kinject.evaluation.evaluate import (
        _ScoringSession,
        build_arms,
        load_task,
        sample_items,
    )

    config = load_config(EvalConfig, folder / "config.yaml")
    rag = config.rag
    tasks = {}
    for spec in config.tasks:
        task = load_task(spec)
        if rag and rag.select_k_on == task.name and rag.select_k_sample:
            task = sample_items(task, rag.select_k_sample, config.seed)  # as the run did
        tasks[task.name] = task
    arms = build_arms(config)
    session = _ScoringSession(config, folder, None, show_progress=False)
    cells: dict[tuple, int] = {}
    for _, row in read_jsonl(folder / "records.jsonl"):
        key = (row.get("model", "base"), row["arm"], row["split"], row["shots"], row["k"])
        cells[key] = cells.get(key, 0) + 1
    exported, skipped = [], []
    for model, arm_name, split, shots, k in cells:
        cell = {"model": model, "arm": arm_name, "split": split, "shots": shots, "k": k}
        if split not in tasks:
            raise KinjectError(f"{folder}: records name task '{split}', not in its config.yaml")
        task = tasks[split]
        if task.is_open:
            skipped.append({**cell, "run": str(folder), "reason": "open questions (generation)"})
            continue
        arm = next((a for a in arms if a.name == arm_name and a.k == k), None)
        if arm is None:
            raise KinjectError(f"{folder}: records name arm {arm_name} k={k}, not in its config")
        planned = session.planned(task, arm, shots)
        path = session.store.path(planned.cell, planned.digest)
        if not path.exists():
            raise KinjectError(
                f"{folder}: cell {planned.cell.key} was scored with other inputs than the files "
                "its config names now (task, model, knowledge base or corpus changed); run "
                "`kinject eval`/`kinject run` again before exporting"
            )
        records = session.store.read(planned.cell, planned.digest)
        export = _cell_task(config, task, arm, shots, records, session.selector, cell)
        export.origin = {"run": str(folder.resolve()), "cell_file": str(path.resolve())}
        exported.append(export)
    return exported, skipped


def _cell_task(config: EvalConfig, task: Task, arm, shots: int, records, selector, cell):
    by_id = {item.id: item for item in task.items}
    items = [by_id[record["question_id"]] for record in records]
    chunks = {c.id: c.indexed for c in arm.cache.kb.chunks} if arm.kind == "rag" else {}
    contexts = [_context(arm, item, record, chunks) for item, record in zip(items, records)]
    dynamic = config.fewshot != "first" and shots > 0
    if dynamic:  # per-question examples: inside the query, lm-eval 0-shot
        examples = selector.examples(task, items, shots)
        test = [document(task, *args) for args in zip(items, contexts, examples)]
    else:
        test = [document(task, item, context) for item, context in zip(items, contexts)]
    return LmEvalTask(
        name=lm_eval_name(_cell_key(cell)),
        description=system_prompt(arm.instruction_text, task.description),
        test=test,
        dev=[] if dynamic else [document(task, item, None) for item in task.dev],
        num_fewshot=0 if dynamic else shots,
        shots=[0 if dynamic else shots],
        model=config.model,
        cell={**cell, "bf16_autocast": config.scoring.bf16_autocast},
        fewshot="in_query" if dynamic else "first_n",
        instruction=arm.instruction_text,
        task_description=task.description,
        chat_template={"multiturn": config.scoring.fewshot_as_multiturn}
        if config.scoring.chat_template
        else None,
    )


def _cell_key(cell: dict) -> str:
    from kinject.evaluation.runner import Cell

    return Cell(cell["arm"], cell["split"], cell["shots"], cell["k"], cell["model"]).key


def _context(arm, item: MCItem, record: dict, chunks: dict[str, str]) -> str | None:
    """What the arm put before this question when the record was scored."""
    if arm.kind == "rag":
        return rag_context(arm, record, chunks)
    context = arm.context_for(item)  # base: None; oracle: the gold documents from the corpus
    return context.text if context else None


def rag_context(arm, record: dict, chunks: dict[str, str]) -> str:
    """The rag arm's context rebuilt from the record's chunk ids (``chunks``: id → text), as
    RagArm.context_for joins them: best first (or reversed for best_last), the separator
    between, the template around."""
    texts = []
    for hit in record.get("retrieved", []):
        if hit["chunk"] not in chunks:
            raise KinjectError(
                f"question '{record['question_id']}': chunk '{hit['chunk']}' is not in "
                f"{arm.cache.kb.folder}"
            )
        texts.append(chunks[hit["chunk"]])
    if arm.best_last:
        texts.reverse()
    if not texts:
        return ""
    return arm.template.replace("{context}", arm.separator.join(texts))


# ---------------------------------------------------------------------------------------------
# writing


def task_yaml(task: LmEvalTask, data_files: dict[str, Path]) -> str:
    """The lm-eval task config; ``data_files`` are absolute paths."""
    description = task.description
    if any(marker in description for marker in _JINJA_MARKERS):  # lm-eval renders it
        description = "{% raw %}" + description + "{% endraw %}"
    config: dict = {
        "task": task.name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {split: str(p) for split, p in data_files.items()}},
        "test_split": "test",
    }
    if "dev" in data_files:
        config["fewshot_split"] = "dev"
        config["fewshot_config"] = {"sampler": "first_n"}
    config.update(
        {
            "output_type": "multiple_choice",
            "description": description,
            "doc_to_text": "query",
            "doc_to_choice": "choices",
            "doc_to_target": "answer",
            "target_delimiter": " ",
            "fewshot_delimiter": "\n\n",
        }
    )
    if task.num_fewshot is not None:
        config["num_fewshot"] = task.num_fewshot
    config["metric_list"] = [
        {"metric": metric, "aggregation": "mean", "higher_is_better": True}
        for metric in ("acc", "acc_norm")
    ]
    config["metadata"] = {"version": float(EXPORT_FORMAT)}
    import yaml

    return yaml.dump(
        config, Dumper=_yaml_dumper(), sort_keys=False, allow_unicode=True, width=1 << 16
    )


def _yaml_dumper():
    import yaml

    class Dumper(yaml.SafeDumper):
        """Strings with line breaks or edge spaces double-quoted ("\\n\\n"), as people write
        them in lm-eval task files."""

    def string(dumper, value: str):
        quoted = "\n" in value or value != value.strip()
        return dumper.represent_scalar(
            "tag:yaml.org,2002:str", value, style='"' if quoted else None
        )

    Dumper.add_representer(str, string)
    return Dumper


def model_args(model: ModelSpec | None) -> str:
    if model is None:
        return "pretrained=MODEL,dtype=float32"
    from kinject.models.gguf import gguf_path

    gguf = gguf_path(model)
    if gguf is None:
        parts = [f"pretrained={model.path}", f"dtype={model.dtype}"]
    else:  # lm-eval reads GGUF files itself (HFLM's gguf_file)
        parts = [f"pretrained={gguf.parent}", f"gguf_file={gguf.name}", f"dtype={model.dtype}"]
    if model.revision:
        parts.append(f"revision={model.revision}")
    if model.adapter:
        parts.append(f"peft={model.adapter}")
    return ",".join(parts)


def lm_eval_command(task: LmEvalTask, out: Path, shots: int) -> str:
    chat = []
    if task.chat_template is not None:
        chat = ["--apply_chat_template"]
        if not task.chat_template["multiturn"]:
            chat.append("--fewshot_as_multiturn=false")
    return shlex.join(
        [
            "lm_eval",
            "--model",
            "hf",
            "--model_args",
            model_args(task.model),
            "--tasks",
            task.name,
            "--include_path",
            str(out),
            "--num_fewshot",
            str(shots),
            *chat,
            "--log_samples",
            "--output_path",
            str(out / "results"),
        ]
    )


def _entry(task: LmEvalTask, out: Path, files: dict[str, Path]) -> dict:
    entry = {
        "name": task.name,
        "yaml": f"{task.name}.yaml",
        "data": {split: str(path.relative_to(out)) for split, path in files.items()},
        "questions": len(task.test),
        "dev_examples": len(task.dev),
        "num_fewshot": task.num_fewshot,
        "fewshot": task.fewshot,
        "model": None if task.model is None else task.model.model_dump(mode="json"),
        "cell": task.cell,
        **task.origin,
        "commands": {str(k): lm_eval_command(task, out, k) for k in task.shots},
    }
    if task.chat_template is not None:
        entry["chat_template"] = task.chat_template
    if task.instruction is not None:
        entry["system_instruction"] = task.instruction
        entry["task_description"] = task.task_description
    return entry


def _format_of(source: Path) -> str:
    """A task file's format by its suffix: MMLU CSV, cais/mmlu parquet, else kinject JSONL."""
    suffix = source.suffix.lower()
    return {".csv": "mmlu_csv", ".parquet": "mmlu_hf"}.get(suffix, "jsonl")


def _check_target(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise KinjectError(
            f"{out} already exists and is not an empty folder; export into a new folder"
        )


def _write(tasks: list[LmEvalTask], skipped: list[dict], out: Path, source: dict) -> ExportResult:
    from kinject import __version__

    staging = staging_dir(out.parent, f".{out.name}.staging-")
    try:
        entries = []
        for task in tasks:
            files = {"test": out / "data" / f"{task.name}.test.jsonl"}
            if task.dev:
                files["dev"] = out / "data" / f"{task.name}.dev.jsonl"
            rows = {"test": task.test, "dev": task.dev}
            for split, path in files.items():
                write_jsonl(staging / path.relative_to(out), rows[split])
            write_text(staging / f"{task.name}.yaml", task_yaml(task, files))
            entries.append(_entry(task, out, files))
        manifest = {
            "format": EXPORT_FORMAT,
            "kinject_version": __version__,
            "source": source,
            "include_path": str(out),
            "tasks": entries,
            "skipped": skipped,
        }
        write_json(staging / "manifest.json", manifest)
        write_text(staging / "README.md", readme(manifest))
        _check_target(out)  # nobody wrote there meanwhile
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(out, entries, skipped)


def readme(manifest: dict) -> str:
    lines = [
        "# lm-evaluation-harness export of kinject",
        "",
        f"Source: `{manifest['source']['path']}` ({manifest['source']['kind']}).",
        "",
        (
            "Each `*.yaml` here is an lm-eval task whose prompts are byte for byte the prompts "
            "kinject scored (description, k-shot examples, retrieved context, question, choices). "
            "The data files are named by absolute paths: export again after moving this folder."
        ),
        "",
        (
            "Run a task with the command listed for it (lm-eval 0.4.x, `pip install lm-eval`); "
            "with `--log_samples`, each question's `filtered_resps` are the choices' "
            "log-likelihoods and their argmax is kinject's `pred` for that question (`doc.id` is "
            "kinject's `question_id`)."
        ),
        "",
    ]
    if any(t["model"] is None for t in manifest["tasks"]):
        lines += ["Replace `MODEL` with your model's path or hub id.", ""]
    if any((t["cell"] or {}).get("bf16_autocast") for t in manifest["tasks"]):
        lines += [
            (
                "Note: the run scored with bf16 autocast, lm-eval scores in the dtype named; "
                "questions whose choices are near ties may then differ."
            ),
            "",
        ]
    for task in manifest["tasks"]:
        cell = task["cell"]
        about = (
            f"{cell['model']} · {cell['arm']} · {cell['split']} · {cell['shots']}-shot · "
            f"k={cell['k']}"
            if cell
            else "any number of shots up to the dev examples"
        )
        lines += [f"## {task['name']}", "", f"{task['questions']} questions; {about}.", ""]
        if task["fewshot"] == "in_query":
            lines += ["The per-question k-shot examples are inside each query (0-shot).", ""]
        if "system_instruction" in task:
            lines += [
                (
                    "The arm's instruction opens the task's `description`, joined as lm-eval "
                    "joins `--system_instruction` to a description (manifest: "
                    "`system_instruction`, `task_description`)."
                ),
                "",
            ]
        lines += ["```", *task["commands"].values(), "```", ""]
    if manifest["skipped"]:
        lines += ["## Not exported", ""]
        for cell in manifest["skipped"]:
            lines.append(
                f"- {cell['model']} · {cell['arm']} · {cell['split']} · {cell['shots']}-shot"
                f" · k={cell['k']}: {cell['reason']}"
            )
        lines.append("")
    return "\n".join(lines)
