"""``kinject run --dry-run``: check an experiment's inputs and size its grid without a model.

Every file the experiment reads is opened (task files loaded and validated, the knowledge
base's ``kb.json`` read, each fine-tuning's training text assembled), and the grid is counted
as the run would plan it: cells, log-likelihood requests (one per question and option; one
generation per open question) and training tokens.  Nothing is downloaded and nothing is
written.  Tokens are counted with the model's tokenizer when the model is a local folder;
for a hub id they are estimated at 4 characters per token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kinject.config import ExperimentConfig, ExperimentModel, TaskSpec, TrainingData
from kinject.errors import KinjectError

CHARS_PER_TOKEN = 4  # the estimate for a tokenizer that is not on disk


@dataclass(frozen=True)
class Check:
    kind: str  # model, task, knowledge base, corpus, fine-tuning
    name: str
    ok: bool
    detail: str


@dataclass
class DryRun:
    checks: list[Check] = field(default_factory=list)
    cells: int = 0
    requests: int = 0  # log-likelihood requests (and generations) of every cell
    finetuning_requests: int = 0  # validation scoring after every epoch of every candidate
    training_tokens: int = 0
    tokens_estimated: bool = False  # some counts are characters / CHARS_PER_TOKEN
    unknown: list[str] = field(default_factory=list)  # what cannot be sized before the run

    @property
    def problems(self) -> list[Check]:
        return [check for check in self.checks if not check.ok]


def dry_run(config: ExperimentConfig) -> DryRun:
    from kinject.experiments.runner import (
        all_task_specs,
        eval_config,
        model_runs,
        swept,
        training_seeds,
    )
    from kinject.experiments.setup import cached_setup

    result = DryRun()
    config, built, missing, failed = cached_setup(config)
    for section in missing:
        result.unknown.append(f"{section}: not built yet (the first run builds it)")
    for section, reason in failed.items():
        result.checks.append(Check("setup", f"{section}:", False, reason))
    for section, values in built.items():
        for name, path in values.items():
            result.checks.append(Check("setup", f"{section}: ${{{name}}}", True, path))
    sizes = {}  # task name -> (questions, requests per pass) or None when it cannot be read
    for spec in all_task_specs(config):
        sizes[spec.task_name()] = _check_task(spec, max(config.shots), result)
    _check_kb(config, result)
    if config.corpus is not None:
        _check_file(result, "corpus", "oracle corpus", config.corpus)
    seeds = len(training_seeds(config))  # every training and its model's cells, per seed
    for model in config.models:
        _check_model(model, result)
        tokens_of = _token_counter(model)
        for run in model_runs(config, model):
            if run.finetune is not None:
                recipe = config.finetunes[run.finetune]
                candidates = len(recipe.learning_rate)
                if run.sweep is not None:
                    sweep = next(s for s in config.sweeps if s.name == run.sweep["name"])
                    recipe, candidates = swept(config, sweep, run.sweep["value"]), 1
                name = run.finetune if run.sweep is None else run.label.split(".")[-1]
                per_epoch = _training_tokens(recipe.data, name, model.label, tokens_of, result)
                if run.sweep is None or not _same_as_named(config, recipe):
                    result.training_tokens += per_epoch * recipe.epochs * candidates * seeds
                    validation = _validation_requests(config, sizes)
                    result.finetuning_requests += validation * recipe.epochs * candidates * seeds
            if not run.arms:
                continue
            run.spec = model.spec()
            evaluation = eval_config(config, run)
            for _ in range(seeds if run.finetune is not None else 1):
                _count_cells(evaluation, sizes, result)
    return result


def _placeholder(value: str | None) -> bool:
    return value is not None and "${" in value


def _check_task(spec: TaskSpec, shots: int, result: DryRun) -> tuple[int, int, int] | None:
    """``(questions, requests, dev examples)`` of a task, after checking it loads and has the
    dev examples for ``shots`` (the most shots of the grid; sweeps ask no more)."""
    from kinject.evaluation.evaluate import load_task

    name = spec.task_name()
    if _placeholder(spec.path) or _placeholder(spec.dev):
        result.unknown.append(f"task '{name}': made by a setup section on the first run")
        return None
    try:
        task = load_task(spec)
    except KinjectError as error:
        result.checks.append(Check("task", name, False, str(error)))
        return None
    requests = sum(1 if task.is_open else len(item.choices) for item in task.items)
    detail = f"{len(task.items)} questions, {len(task.dev)} dev examples, {spec.format}"
    ok = len(task.dev) >= shots
    if not ok:
        detail += f": {shots}-shot needs {shots} dev examples"
    result.checks.append(Check("task", name, ok, detail))
    return len(task.items), requests, len(task.dev)


def _check_kb(config: ExperimentConfig, result: DryRun) -> None:
    if config.rag is None:
        return
    if _placeholder(config.rag.kb):
        result.unknown.append("knowledge base: made by a setup section on the first run")
        return
    manifest = Path(config.rag.kb) / "kb.json"
    if not manifest.is_file():
        detail = f"{config.rag.kb}: no knowledge base here (no kb.json); build it with kinject kb"
        result.checks.append(Check("knowledge base", "rag.kb", False, detail))
        return
    from kinject.kb.store import KnowledgeBase

    try:
        kb = KnowledgeBase.open(config.rag.kb)
    except KinjectError as error:
        result.checks.append(Check("knowledge base", "rag.kb", False, str(error)))
        return
    detail = f"{len(kb.chunks)} chunks, embedder {kb.config.embedder.model}, K in {config.rag.k}"
    result.checks.append(Check("knowledge base", str(config.rag.kb), True, detail))


def _check_file(result: DryRun, kind: str, name: str, path: str) -> bool:
    if _placeholder(path):
        result.unknown.append(f"{name}: made by a setup section on the first run")
        return False
    ok = Path(path).exists()
    result.checks.append(Check(kind, name, ok, path if ok else f"{path}: not found"))
    return ok


def _check_model(model: ExperimentModel, result: DryRun) -> None:
    if _placeholder(model.path):
        result.unknown.append(f"model '{model.label}': made by a setup section on the first run")
        return
    from kinject.models.gguf import MARKER, cache_folder, gguf_path

    try:
        gguf = gguf_path(model)
    except KinjectError as error:
        result.checks.append(Check("model", model.label, False, str(error)))
        return
    local = Path(model.path).expanduser()
    if gguf is not None:
        ok, detail = True, f"{gguf} (GGUF: dequantized once on the first run, then cached)"
        if (cache_folder(gguf) / MARKER).exists():
            detail = f"{gguf} (GGUF, converted in {cache_folder(gguf)})"
    elif local.is_dir():
        ok = (local / "config.json").is_file()
        detail = str(local) if ok else f"{local}: a folder without config.json"
    elif _looks_local(model.path):
        from kinject.models.loading import missing_folder_message

        ok, detail = False, missing_folder_message(local)
    else:
        ok, detail = True, f"hub id {model.path} (downloaded on the first run, not now)"
    result.checks.append(Check("model", model.label, ok, detail))
    if model.adapter is not None:
        _check_file(result, "model", f"{model.label} adapter", model.adapter)


def _looks_local(path: str) -> bool:
    """A path no hub id can be: absolute, ``./``/``../``/``~``, or more than one ``/``."""
    return path.startswith(("/", ".", "~")) or path.count("/") > 1


def _token_counter(model: ExperimentModel):
    """Counts tokens with the model's own tokenizer when it is on disk (a GGUF model's once
    converted); else ``None``."""
    from kinject.models.gguf import MARKER, cache_folder, gguf_path
    from kinject.models.loading import load_tokenizer

    if _placeholder(model.path):
        return None
    try:
        gguf = gguf_path(model)
    except KinjectError:
        return None  # reported by the model check
    if gguf is not None:
        if not (cache_folder(gguf) / MARKER).exists():
            return None
    elif not (Path(model.path).expanduser() / "config.json").is_file():
        return None
    tokenizer = load_tokenizer(model.spec())
    return lambda texts: sum(len(ids) for ids in tokenizer(texts)["input_ids"])


def _training_tokens(data: TrainingData, name: str, model: str, tokens_of, result: DryRun) -> int:
    """Tokens of one epoch of ``data`` (with replay) in ``model``'s tokenizer, or 0 when its
    files cannot be read (reported once per fine-tuning, not once per model)."""
    from kinject.training.data import TrainingSet

    files = [getattr(data, key) for key in ("corpus", "paraphrases", "qa", "replay")]
    if any(_placeholder(path) for path in files):
        if f"'{name}': its training text is made by a setup section" not in result.unknown:
            result.unknown.append(f"'{name}': its training text is made by a setup section")
        return 0
    try:
        training = TrainingSet(data)
    except KinjectError as error:
        problem = Check("fine-tuning", name, False, str(error))
        if problem not in result.checks:
            result.checks.append(problem)
        return 0
    texts = training.texts()
    replay = 1 + data.replay_ratio
    if tokens_of is None:
        result.tokens_estimated = True
        tokens = int(sum(map(len, texts)) * replay / CHARS_PER_TOKEN)
    else:
        tokens = int(tokens_of(texts) * replay)
    detail = f"{len(texts)} training texts, {tokens:,} tokens per epoch for {model}"
    result.checks.append(Check("fine-tuning", name, True, detail))
    return tokens


def _same_as_named(config: ExperimentConfig, recipe) -> bool:
    """A sweep point trained like a named fine-tuning reuses it (see the runner)."""
    from kinject.experiments.runner import _same_training

    return any(_same_training(recipe, named) for named in config.finetunes.values())


def _validation_requests(config: ExperimentConfig, sizes: dict) -> int:
    """Requests of one validation pass during fine-tuning (the sampled validation task)."""
    if config.validation is None:
        return 0
    size = sizes.get(config.validation.task.task_name())
    if size is None:
        return 0
    questions, requests, _ = size
    sample = config.validation.finetune_sample
    passes = len(config.validation.finetune_shots)  # one pass per shot count
    if sample and sample < questions:
        requests = round(requests * sample / questions)
    return requests * passes


def _count_cells(evaluation, sizes: dict, result: DryRun) -> None:
    """The cells the evaluation would plan: with validation, each rag arm's K grid (rag,
    rag+<instruction>) on the (sampled) validation task, then every test task at the chosen K."""
    from kinject.evaluation.arms import arm_kind

    rag = evaluation.rag
    select_on = rag.select_k_on if rag is not None else None
    plain = [arm for arm in evaluation.arms if arm_kind(arm) != "rag"]
    rag_arms = len(evaluation.arms) - len(plain)
    ks = list(rag.k) if rag is not None and rag_arms else []
    for spec in evaluation.tasks:
        name = spec.task_name()
        size = sizes.get(name)
        if name == select_on:
            arms = len(ks) * rag_arms
            if size is not None and rag.select_k_sample:
                size = (
                    min(size[0], rag.select_k_sample),
                    round(size[1] * min(1, rag.select_k_sample / max(1, size[0]))),
                    size[2],
                )
        else:
            arms = len(plain) + rag_arms * (1 if ks and select_on else len(ks))
        cells = arms * len(evaluation.shots)
        result.cells += cells
        if size is not None:
            _, requests, _ = size
            result.requests += requests * cells


def dry_run_lines(result: DryRun) -> list[str]:
    """The dry run as text: every check, then the grid's size."""
    lines = []
    for check in result.checks:
        mark = "ok     " if check.ok else "PROBLEM"
        lines.append(f"{mark} {check.kind} '{check.name}': {check.detail}")
    lines += [f"unknown {what}" for what in result.unknown]
    approx = f" (≈ {CHARS_PER_TOKEN} characters per token)" if result.tokens_estimated else ""
    lines += [
        f"cells: {result.cells:,}",
        (
            "log-likelihood requests (one per question and option, one generation per open "
            f"question): {result.requests:,} in the cells, {result.finetuning_requests:,} "
            "validating the fine-tunings"
        ),
        (
            "training tokens (every epoch of every learning-rate candidate and seed): "
            f"{result.training_tokens:,}{approx}"
        ),
    ]
    if result.problems:
        lines.append(f"{len(result.problems)} problem(s): nothing was run")
    return lines
