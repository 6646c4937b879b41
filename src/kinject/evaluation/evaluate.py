"""``kinject eval``: load tasks and model, score every cell, write the run folder.

The run folder (the contract later tools rely on)::

    config.yaml     the resolved config (absolute paths) of the latest run
    env.json        package versions, seed, torch threads, machine
    cells/<cell>-<digest>.jsonl   finished cells (resume points); the digest hashes what
                    decides the cell's records, so a changed config reuses every cell it
                    did not change and scores only the others
    cells/<cell>-<digest>.cost.json   the cell's scoring time
    records.jsonl   one line per (cell, question)
    metrics.json    {"cells": [{arm, split, shots, k, n, acc, acc_ci, acc_norm, acc_norm_ci}]}
    costs.json      {"cells": [{arm, split, shots, k, seconds, latency_ms, requests, reused}]}
    table.md        the human table

Under ``accelerate launch --num_processes N`` every process runs the evaluation and scores
its share of each cell (:mod:`kinject.scoring.parallel`); the main process alone decides
what is left to score, writes the run folder and shows progress.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from kinject.cache import fingerprint
from kinject.config import EmbedderConfig, EvalConfig, RagConfig, TaskSpec, to_yaml
from kinject.corpus import load_corpus_jsonl
from kinject.errors import KinjectError
from kinject.evaluation.arms import (
    Arm,
    BaseArm,
    Instruction,
    OracleArm,
    RagArm,
    RetrievalCache,
    arm_kind,
    parse_arms,
)
from kinject.evaluation.environment import environment
from kinject.evaluation.fewshot import ExampleSelector, FirstExamples, NearestExamples
from kinject.evaluation.report import markdown_table
from kinject.evaluation.runner import (
    Cell,
    CellStore,
    accuracy,
    cell_metrics,
    score_cell,
    score_open_cell,
)
from kinject.fileio import read_jsonl, write_json, write_jsonl, write_text
from kinject.scoring.parallel import on_main, processes
from kinject.tasks.items import Task
from kinject.tasks.loaders import jsonl_task, mmlu_hf_task, mmlu_task, open_task


@dataclass(frozen=True)
class EvalResult:
    run_dir: Path
    metrics: list[dict]
    select_k_on: str | None = None  # the rag arm's validation task


def load_task(spec: TaskSpec) -> Task:
    if spec.format in ("mmlu_csv", "mmlu_hf"):
        load = mmlu_task if spec.format == "mmlu_csv" else mmlu_hf_task
        task = load(spec.path, spec.dev)
        updates = {"style": spec.style or "letter"}
    elif spec.format == "open_jsonl":
        task = open_task(spec.task_name(), spec.path, spec.dev)
        updates = {}
    else:
        name = spec.task_name()
        task = jsonl_task(name, spec.path, spec.dev, spec.style or "option")
        updates = {}
    if spec.name:
        updates["name"] = spec.name
    if spec.description is not None:
        updates["description"] = spec.description
    return replace(task, **updates)


def build_arms(config: EvalConfig) -> list[Arm]:
    """The arms to score; a rag arm is one arm per K.  Every rag arm (with or without an
    instruction) shares one retrieval cache, every oracle arm one corpus."""
    arms: list[Arm] = []
    corpus, cache = None, None
    for spec in parse_arms(config.arms, config.instructions):
        instruction = None
        if spec.instruction is not None:
            instruction = Instruction(spec.instruction, config.instructions[spec.instruction])
        if spec.kind == "base":
            arms.append(BaseArm(instruction))
        elif spec.kind == "oracle":
            if corpus is None:
                corpus = load_gold_documents(config.corpus)
            arms.append(OracleArm(corpus, config.corpus, instruction))
        elif spec.kind == "rag":
            cache = cache or retrieval_cache(config.rag)
            arms.extend(rag_arms(config.rag, cache, instruction))
    return arms


def load_gold_documents(path: str | Path) -> dict[str, str]:
    """The oracle arm's documents, ``{id: text}``, from a corpus JSONL, a knowledge base (its
    documents, and those it dropped as exact duplicates of one, under their own ids), or any
    file or folder ``kinject kb build`` reads, under the ids it gives them (the path relative
    to the folder: ``guides/install.md``)."""
    from kinject.kb.store import POINTER, KnowledgeBase

    path = Path(path)
    if (path / POINTER).exists():
        documents = KnowledgeBase.open(path).documents(with_duplicates=True)
        return {document.id: document.text for document in documents}
    if path.is_file() and path.suffix == ".jsonl":
        return {document.id: document.text for document in load_corpus_jsonl(path).values()}
    if not path.exists():
        raise KinjectError(f"corpus {path}: no such file or folder")
    from kinject.kb.ingest import ingest

    report = ingest([path])
    if not report.documents:
        raise KinjectError(f"corpus {path}: no document with text in it")
    texts = {document.id: document.text for document in report.documents}
    texts |= {dropped: texts[kept] for dropped, kept in report.duplicates}
    return texts


def retrieval_cache(rag: RagConfig) -> RetrievalCache:
    """The retrieval a rag config names, shared by its arms: each question searched once."""
    from kinject.kb.retrievers import Fusion
    from kinject.kb.store import KnowledgeBase

    kb = KnowledgeBase.open(rag.kb)
    fusion = Fusion(rag.fusion, rag.dense_weight, rag.rrf_k)
    name = f"hybrid {fusion.describe()}" if rag.retriever == "hybrid" else rag.retriever
    if rag.rerank is not None:
        name += f" {rag.rerank.describe()}"
    retriever = kb.retriever(rag.retriever, fusion, rag.rerank)
    return RetrievalCache(kb, retriever, max(rag.k), name)


def rag_arms(
    rag: RagConfig, cache: RetrievalCache | None = None, instruction: Instruction | None = None
) -> list[Arm]:
    """One rag arm per K of ``rag.k``, reading ``cache`` (default: a new one for ``rag``)."""
    cache = cache or retrieval_cache(rag)
    best_last = rag.order == "best_last"
    return [
        RagArm(cache, k, rag.template, rag.chunk_separator, best_last, instruction) for k in rag.k
    ]


def build_selector(config: EvalConfig) -> ExampleSelector:
    if config.fewshot == "first":
        return FirstExamples()
    if config.rag is not None:
        from kinject.kb.store import KnowledgeBase

        kb = KnowledgeBase.open(config.rag.kb)
        return NearestExamples(config.rag.retriever, kb.config.embedder, config.rag.rrf_k)
    return NearestExamples("dense", EmbedderConfig())


def validate_plan(config: EvalConfig, tasks: list[Task], arms: list[Arm]) -> list[str]:
    """Everything that can be wrong with the inputs, found before a model is loaded: an
    error raises, and what may be a mistake comes back as warnings (one line each)."""
    names = [task.name for task in tasks]
    if len(set(names)) != len(names):
        raise KinjectError(f"two tasks share a name in {names}; give them distinct 'name's")
    if config.rag and config.rag.select_k_on and config.rag.select_k_on not in names:
        raise KinjectError(
            f"rag.select_k_on names task '{config.rag.select_k_on}', which is not one of {names}"
        )
    if config.rag and config.rag.select_k_on and names == [config.rag.select_k_on]:
        raise KinjectError(
            f"rag.select_k_on names task '{config.rag.select_k_on}', the only task: K is chosen "
            "on it and no other task is left to score (base and oracle included); add the tasks "
            "to test on, or drop select_k_on to score every K on this one"
        )
    for task in tasks:
        if not task.items:
            raise KinjectError(f"task '{task.name}' ({task.source.get('path')}) has no questions")
        for shots in config.shots:
            if shots > len(task.dev):
                raise KinjectError(
                    f"task '{task.name}' has {len(task.dev)} dev examples; {shots}-shot needs {shots}"
                )
    for arm in arms:  # an arm that cannot serve a question fails now, not mid-run
        for task in tasks:
            arm.prepare(task.items)
            for item in task.items:
                arm.context_for(item)
    rag = next((arm for arm in arms if isinstance(arm, RagArm)), None)
    return [] if rag is None else unknown_gold_warnings(tasks, rag.cache.kb)


def unknown_gold_warnings(tasks: list[Task], kb) -> list[str]:
    """A line per task whose questions name, in ``doc_ids``, no document of ``kb``: their
    retrieval recall would be 0 whatever was retrieved (often ids written without the
    file's suffix)."""
    import difflib

    ids = {row["id"] for row in kb.manifest}
    warnings = []
    for task in tasks:
        unknown = [
            item
            for item in task.items
            if item.doc_ids and not any(doc_id in ids for doc_id in item.doc_ids)
        ]
        if not unknown:
            continue
        first = unknown[0].doc_ids[0]
        close = difflib.get_close_matches(first, sorted(ids), n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        warnings.append(
            f"task '{task.name}': {len(unknown)} of {len(task.items)} questions name in "
            f"doc_ids no document of the knowledge base {kb.folder}, so their retrieval recall "
            f"is 0; question '{unknown[0].id}' names '{first}'{hint}. `kinject kb search` "
            "shows each chunk's document id"
        )
    return warnings


def run_evaluation(
    config: EvalConfig,
    run_dir: str | Path,
    model_and_tokenizer=None,
    show_progress: bool = True,
    warn: Callable[[str], None] | None = None,
) -> EvalResult:
    """Score every (task × arm × shots) cell not yet in ``run_dir`` and write the run files.

    With ``rag.select_k_on``, that task is the validation set of the rag arms alone: each rag
    arm's K grid (``rag``, ``rag+<instruction>``: each its own) is scored there first, and the
    other tasks are then scored at that arm's best K for each number of shots (K is never
    chosen on them).

    Under ``accelerate launch`` every process calls this and gets the same result; only
    the main process writes.  ``warn`` gets each warning about the inputs (one line, before
    any model work).
    """
    run_dir = Path(run_dir)
    group = processes(config.model.device)  # several processes: joined before a model loads
    tasks = [load_task(spec) for spec in config.tasks]  # bad inputs fail before any model work
    if config.rag and config.rag.select_k_on and config.rag.select_k_sample:
        size = config.rag.select_k_sample
        tasks = [
            sample_items(task, size, config.seed) if task.name == config.rag.select_k_on else task
            for task in tasks
        ]
    arms = build_arms(config)
    warnings = validate_plan(config, tasks, arms)
    if warn is not None and (group is None or group.main):
        for line in warnings:
            warn(line)
    session = _ScoringSession(config, run_dir, model_and_tokenizer, show_progress)
    select_on = config.rag.select_k_on if config.rag else None
    grid = [arm for arm in arms if arm.kind == "rag"] if select_on else []
    plan = [
        session.planned(task, arm, shots)
        for task in tasks
        if task.name == select_on
        for arm in grid
        for shots in config.shots
    ]
    session.score(plan)  # the K grid on the validation task
    selected = on_main(lambda: choose_k(session.store, plan)) if select_on else None
    test = [
        session.planned(task, arm, shots)
        for task in tasks
        if task.name != select_on
        for arm in arms
        for shots in config.shots
        if arm not in grid or arm.k == selected[(arm.name, shots)]
    ]
    session.score(test)
    metrics = on_main(lambda: tabulate(run_dir, plan + test, config))
    if warn is not None and (group is None or group.main):
        for line in reading_warnings(metrics, suggest=config.model.path != SUGGESTED_READER):
            warn(line)
    return EvalResult(run_dir, metrics, select_on)


SUGGESTED_READER = "smollm2-135m-instruct"  # the preset a model that does not read is pointed to


def reading_warnings(metrics: list[dict], suggest: bool = True) -> list[str]:
    """A line per model whose oracle arm, the gold document in context, is no better than
    closed book on some (task, shots) where closed book is far from right (below 0.6): the
    model does not answer from text put before the question, so no retrieval can help it
    (the tiny model, pretrained on the synthetic world alone, on ordinary English).
    ``suggest``: name a model that reads."""
    cells = {
        (m.get("model", "base"), m["arm"], m["split"], m["shots"]): m
        for m in metrics
        if not m.get("open") and m.get("selected") is not False
    }
    found: dict[str, list[str]] = {}
    for (model, arm, split, shots), oracle in cells.items():
        base = cells.get((model, "base", split, shots))
        if arm != "oracle" or base is None or base["acc"] >= 0.6:
            continue
        if oracle["acc"] <= base["acc"] + 0.05 and oracle["acc_ci"][0] <= base["acc"]:
            found.setdefault(model, []).append(
                f"'{split}' {shots}-shot ({oracle['acc']:.3f} against {base['acc']:.3f})"
            )
    warnings = []
    for model, where in found.items():
        who = "" if model == "base" else f" of model '{model}'"
        warnings.append(
            f"the oracle arm{who} (the gold document in context) is no better than closed "
            f"book on {', '.join(where)}: this model does not answer from the text before "
            "the question, so retrieval cannot help it"
            + (
                f"; a model that reads English, such as the preset {SUGGESTED_READER}, "
                "measures retrieval on your documents (docs/real-model.md)"
                if suggest
                else ""
            )
        )
    return warnings


@dataclass(frozen=True)
class PlannedCell:
    """A cell to score, and the digest of everything that decides its records."""

    task: Task
    arm: Arm
    shots: int
    cell: Cell
    digest: str


def sample_items(task: Task, size: int, seed: int) -> Task:
    """A validation task cut to ``size`` questions (a seeded sample, in file order)."""
    import random

    if size >= len(task.items):
        return task
    keep = set(random.Random(f"kinject-select-k-{seed}").sample(range(len(task.items)), size))
    return replace(task, items=tuple(item for i, item in enumerate(task.items) if i in keep))


class _ScoringSession:
    """Loads the model on first need (never when every cell is already done) and scores cells."""

    def __init__(self, config: EvalConfig, run_dir: Path, model_and_tokenizer, show_progress):
        self.config = config
        self.run_dir = run_dir
        self.store = CellStore(run_dir)
        self.model_and_tokenizer = model_and_tokenizer
        self.group = processes(config.model.device)
        self.main = self.group is None or self.group.main
        self.show_progress = show_progress and self.main
        self.selector = build_selector(config)
        self._scorer = None
        self._generator = None
        self._chat = None
        self._begun = False

    def _model(self):
        """The model, loaded on first need; the run folder is begun once it has loaded."""
        if self.model_and_tokenizer is None:
            self.model_and_tokenizer = _load(self.config)
        if not self._begun:
            from kinject.tasks.prompts import chat_format

            # a chat template asked of a model without one fails before any file is written
            self._chat = chat_format(self.config.scoring, self.model_and_tokenizer[1])
            if self.main:
                env = environment(self.config.seed)
                if self.group is not None:
                    env["processes"] = self.group.size
                self.run_dir.mkdir(parents=True, exist_ok=True)
                write_text(self.run_dir / "config.yaml", to_yaml(self.config))
                write_json(self.run_dir / "env.json", env)
            self._begun = True
        return self.model_and_tokenizer

    def scorer(self):
        if self._scorer is None:
            from kinject.scoring.batching import batch_options
            from kinject.scoring.loglikelihood import LoglikelihoodScorer, MemoizedScorer
            from kinject.scoring.parallel import ParallelScorer

            model, tokenizer = self._model()
            scoring = self.config.scoring
            scorer = LoglikelihoodScorer(
                model,
                tokenizer,
                **batch_options(scoring, model),
                bf16=scoring.bf16_autocast,
                share_prefix=scoring.share_prefix,
            )
            # the memo outside: every process holds the same memo, so asks for the same rest
            self._scorer = MemoizedScorer(ParallelScorer(scorer, self.group))
        return self._scorer

    def generator(self):
        if self._generator is None:
            from kinject.scoring.batching import batch_options
            from kinject.scoring.generation import GreedyGenerator
            from kinject.scoring.parallel import ParallelGenerator

            model, tokenizer = self._model()
            scoring = self.config.scoring
            generator = GreedyGenerator(
                model,
                tokenizer,
                **batch_options(scoring, model),
                max_new_tokens=scoring.max_new_tokens,
                stop=scoring.stop,
                bf16=scoring.bf16_autocast,
                end_of_turn=scoring.chat_template,
            )
            self._generator = ParallelGenerator(generator, self.group)
        return self._generator

    def chat(self):
        """The chat rendering of prompts when ``scoring.chat_template`` is on, else ``None``."""
        self._model()
        return self._chat

    def planned(self, task: Task, arm: Arm, shots: int) -> PlannedCell:
        from kinject.evaluation.identity import (
            CELL_FORMAT,
            model_identity,
            scoring_identity,
            task_identity,
        )

        config = self.config
        digest = fingerprint(
            CELL_FORMAT,
            model_identity(config.model),
            task_identity(task),
            arm.identity(),
            shots,
            self.selector.identity() if shots else None,
            scoring_identity(config.scoring, task.is_open),
        )
        cell = Cell(arm.name, task.name, shots, arm.k, config.label)
        return PlannedCell(task, arm, shots, cell, digest[:10])

    def score(self, plan: list[PlannedCell]) -> None:
        import time

        from kinject.progress import progress_bar

        # the main process's view of the finished cells, so that every process scores the same
        left = on_main(
            lambda: [i for i, p in enumerate(plan) if not self.store.has(p.cell, p.digest)]
        )
        pending = [plan[i] for i in left]
        if not pending:
            return
        if self.show_progress and len(pending) < len(plan):
            from kinject.progress import output_console

            output_console(stderr=True).print(
                f"resuming in {self.run_dir}: {len(plan) - len(pending)} of {len(plan)} cells "
                f"already scored, {len(pending)} to score",
                highlight=False,
            )
        self._model()  # fails before any file is written
        total = sum(
            1 if p.task.is_open else len(item.choices) for p in pending for item in p.task.items
        )
        with progress_bar("scoring", total=total, enabled=self.show_progress) as bar:
            for number, p in enumerate(pending, 1):
                score = score_open_cell if p.task.is_open else score_cell
                backend = self.generator() if p.task.is_open else self.scorer()
                bar.describe(
                    f"cell {number}/{len(pending)}: {p.cell.column} · {p.task.name} · "
                    f"{p.shots}-shot" + (f" · k={p.arm.k}" if p.arm.k else "")
                )
                memo = backend if hasattr(backend, "computed") else None
                before = (memo.requested, memo.computed) if memo else (0, 0)
                started = time.perf_counter()
                records = score(
                    backend,
                    p.task,
                    p.arm,
                    p.shots,
                    on_batch=bar.advance,
                    selector=self.selector,
                    model=self.config.label,
                    chat=self.chat(),
                )
                seconds = time.perf_counter() - started
                requests = memo.requested - before[0] if memo else len(records)
                computed = memo.computed - before[1] if memo else len(records)
                cost = {
                    "seconds": round(seconds, 3),
                    "questions": len(records),
                    "latency_ms": round(1000 * seconds / len(records), 3),
                    "requests": requests,  # log-likelihoods (or generations) of the cell
                    "reused": requests - computed,  # identical to an earlier cell's: not rescored
                }
                if self.main:
                    self.store.write(p.cell, p.digest, records, cost)


def _load(config: EvalConfig):
    from kinject.models.loading import load_causal_lm

    return load_causal_lm(config.model)


def choose_k(store: CellStore, grid: list[PlannedCell]) -> dict[tuple[str, int], int]:
    """The best K of the validation grid for each rag arm and number of shots: highest acc,
    then the smallest K.  ``{(arm name, shots): k}``."""
    return best_k(
        ((p.arm.name, p.shots), p.arm.k, accuracy(store.read(p.cell, p.digest))) for p in grid
    )


def best_k(entries) -> dict:
    """``{key: k}`` from ``(key, k, acc)`` (key: shots, or arm and shots): the highest acc,
    ties to the smallest K."""
    best: dict = {}
    for key, k, acc in entries:
        if key not in best or (acc, -k) > best[key]:
            best[key] = (acc, -k)
    return {key: -value[1] for key, value in best.items()}


def tabulate(run_dir: Path, plan: list[PlannedCell], config: EvalConfig) -> list[dict]:
    """Rebuild records.jsonl, metrics.json, costs.json and table.md from the finished cells."""
    store = CellStore(run_dir)
    records, metrics, costs = [], [], []
    for p in plan:
        rows = store.read(p.cell, p.digest)
        records.extend(rows)
        metrics.append(cell_metrics(rows, config.seed, config.bootstrap_resamples))
        costs.append({**asdict(p.cell), **store.cost(p.cell, p.digest)})
    write_text(run_dir / "config.yaml", to_yaml(config))
    write_jsonl(run_dir / "records.jsonl", records)
    write_json(run_dir / "costs.json", {"cells": costs})
    return _write_metrics(run_dir, metrics, config)


def _write_metrics(run_dir: Path, metrics: list[dict], config: EvalConfig) -> list[dict]:
    """metrics.json: the cells, and with K selection the K each rag arm chose per shots:
    ``selected_k`` for ``rag``, ``selected_k_by_arm`` for rag arms with an instruction."""
    select_on = config.rag.select_k_on if config.rag else None
    rag_arms = [
        spec.name for spec in parse_arms(config.arms, config.instructions) if spec.kind == "rag"
    ]
    summary: dict = {"cells": metrics}
    if select_on and rag_arms:
        selected = best_k(
            ((m["arm"], m["shots"]), m["k"], m["acc"])
            for m in metrics
            if arm_kind(m["arm"]) == "rag" and m["split"] == select_on
        )
        for metric in metrics:
            if arm_kind(metric["arm"]) == "rag":
                metric["selected"] = metric["k"] == selected[(metric["arm"], metric["shots"])]
        summary["select_k_on"] = select_on
        by_arm = {
            arm: {str(shots): k for (name, shots), k in selected.items() if name == arm}
            for arm in rag_arms
        }
        if "rag" in by_arm:
            summary["selected_k"] = by_arm.pop("rag")
        if by_arm:
            summary["selected_k_by_arm"] = by_arm
    write_json(run_dir / "metrics.json", summary)
    write_text(run_dir / "table.md", markdown_table(metrics, select_on))
    return metrics


def retabulate(run_dir: str | Path) -> EvalResult:
    """Metrics and table again from ``records.jsonl`` alone: no model, no tasks needed."""
    from kinject.config import load_config

    run_dir = Path(run_dir)
    config = load_config(EvalConfig, run_dir / "config.yaml")
    groups: dict[tuple, list[dict]] = {}
    for _, row in read_jsonl(run_dir / "records.jsonl"):
        key = (row.get("model", "base"), row["arm"], row["split"], row["shots"], row["k"])
        groups.setdefault(key, []).append(row)
    metrics = [
        cell_metrics(rows, config.seed, config.bootstrap_resamples) for rows in groups.values()
    ]
    _write_metrics(run_dir, metrics, config)
    return EvalResult(run_dir, metrics, config.rag.select_k_on if config.rag else None)
