"""``kinject demo``: the whole embedded experiment from one seed, offline.

1. write the synthetic world (cached by its config);
2. pretrain the tiny base model on it (cached; a progress bar while it trains);
3. evaluate it closed-book (``base``) and with the gold biography in context (``oracle``);
4. print the table and the three checks the base model must pass, and write the run folder.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from kinject.cache import cache_dir, cache_lock, fingerprint
from kinject.config import (
    DEMO_ARMS,
    QUICK_DEMO,
    ContaminationConfig,
    DemoConfig,
    EvalConfig,
    FinetuneConfig,
    ModelSpec,
    RagConfig,
    SelectionConfig,
    TaskSpec,
    TrainingData,
    load_config,
    parse_config,
    to_yaml,
)
from kinject.evaluation.runner import column_name
from kinject.fileio import write_json, write_text

CHANCE = 0.25


@dataclass(frozen=True)
class Check:
    label: str
    value: float
    passed: bool


def world_dir(config: DemoConfig) -> Path:
    from kinject.world.build import WORLD_FORMAT, build_world, write_world

    key = fingerprint(WORLD_FORMAT, config.world.model_dump(mode="json"))
    folder = cache_dir() / "worlds" / f"world-{key}"
    with cache_lock(folder):
        if not (folder / "world.json").exists():
            write_world(build_world(config.world), folder)
    return folder


def world_kb(config: DemoConfig, world: Path, show_progress: bool = True) -> Path:
    """The world's kb.jsonl as a knowledge base (cached by the world's and the KB's config)."""
    from kinject.kb.store import SourceOptions, build_kb

    key = fingerprint(config.world.model_dump(mode="json"), config.kb.model_dump(mode="json"))
    folder = cache_dir() / "kbs" / f"world-kb-{key}"
    with cache_lock(folder):
        if not (folder / "kb.json").exists():
            shutil.rmtree(folder, ignore_errors=True)
            options = SourceOptions(strict=True, show_progress=show_progress)
            build_kb([world / "kb.jsonl"], folder, config.kb, options)
    return folder


def eval_config(
    config: DemoConfig,
    world: Path,
    model: ModelSpec,
    kb: Path | None,
    label: str = "base",
    arms: list[str] | None = None,
    splits: list[str] | None = None,
    shots: list[int] | None = None,
) -> EvalConfig:
    """Test splits for every arm; with rag, the validation questions first, to choose K."""
    arms = arms or [arm for arm in config.arms if arm in ("base", "oracle", "rag")]
    splits_given = splits
    splits = list(splits or config.splits)
    if "rag" in arms:
        splits.insert(0, "validation")
    tasks = [
        TaskSpec(
            name=split,
            path=str(world / "tasks" / f"{split}.jsonl"),
            dev=str(world / "tasks" / "dev.jsonl"),
        )
        for split in splits
    ]
    if splits_given is None:
        tasks += [
            TaskSpec(
                name=f"{split}_open",
                format="open_jsonl",
                path=str(world / "tasks" / f"{split}_open.jsonl"),
                dev=str(world / "tasks" / "dev_open.jsonl"),
            )
            for split in config.open_splits
        ]
    rag = None
    if "rag" in arms:
        rag = RagConfig(
            kb=str(kb),
            retriever=config.retriever,
            k=config.rag_k,
            select_k_on="validation",
            select_k_sample=config.rag_validation_sample,
        )
    return EvalConfig(
        seed=config.world.seed,
        model=model,
        label=label,
        tasks=tasks,
        arms=arms,
        corpus=str(world / "kb.jsonl") if "oracle" in arms else None,
        rag=rag,
        shots=shots or config.shots,
        scoring=config.scoring,
        bootstrap_resamples=config.bootstrap_resamples,
    )


FINETUNE_RECIPE = 1  # bump when the demo's fine-tuning changes meaning


def finetune_job(
    config: DemoConfig,
    world: Path,
    base: Path,
    name: str,
    n_paraphrases: int | None = None,
    learning_rate: list[float] | None = None,
) -> FinetuneConfig:
    """FT-reg and FT-par: the KB text (± paraphrases); SFT: the world's QA pairs (LoRA)."""
    tune = config.finetune
    if name == "sft":
        data = TrainingData(kind="qa", qa=str(world / "sft.jsonl"), template=tune.sft_template)
        method, rates = tune.sft_method, tune.sft_learning_rate
    else:
        if n_paraphrases is None:
            n_paraphrases = tune.paraphrases if name == "ft-par" else 0
        data = TrainingData(
            corpus=str(world / "kb.jsonl"),
            paraphrases=str(world / "paraphrases.jsonl") if n_paraphrases else None,
            n_paraphrases=n_paraphrases,
            block_size=config.pretrain.block_size,
        )
        method, rates = tune.method, tune.learning_rate
    tasks = world / "tasks"

    def task(split: str) -> TaskSpec:
        return TaskSpec(
            name=split, path=str(tasks / f"{split}.jsonl"), dev=str(tasks / "dev.jsonl")
        )

    return FinetuneConfig(
        seed=config.world.seed,
        model=ModelSpec(path=str(base)),
        data=data,
        method=method,
        lora=tune.lora,
        learning_rate=learning_rate or rates,
        epochs=tune.epochs,
        batch_size=tune.batch_size,
        bf16=config.pretrain.bf16,
        selection=SelectionConfig(task=task("validation"), sample=tune.validation_sample),
        contamination=ContaminationConfig(tasks=[task(split) for split in config.splits]),
        scoring=config.scoring,
    )


def ensure_finetuned(job: FinetuneConfig, name: str, show_progress: bool = True):
    """``(model spec, selection, was_cached)``, fine-tuning first (into the cache) if needed."""
    from kinject.training.finetune import finetuned_model_spec, run_finetune

    key = fingerprint(FINETUNE_RECIPE, job.model_dump(mode="json"))
    folder = cache_dir() / "finetuned" / f"{name}-{key}"
    with cache_lock(folder):
        cached = (folder / "selection.json").exists()
        if not cached:
            run_finetune(job, folder, show_progress)
    selection = json.loads((folder / "selection.json").read_text(encoding="utf-8"))
    return finetuned_model_spec(folder), selection, cached


def checks(metrics: list[dict]) -> list[Check]:
    """The base model's three promises, on the 0-shot cells the demo scored."""
    acc = {
        (m["arm"], m["split"]): m["acc"]
        for m in metrics
        if m["shots"] == 0 and m.get("model", "base") == "base"
    }
    result = []
    if ("base", "known") in acc:
        value = acc[("base", "known")]
        result.append(Check("closed-book accuracy on known >= 0.80", value, value >= 0.80))
    if ("base", "new") in acc:
        value = acc[("base", "new")]
        result.append(
            Check(
                "closed-book accuracy on new within chance 0.25 +/- 0.10",
                value,
                abs(value - CHANCE) <= 0.10,
            )
        )
    if ("oracle", "new") in acc:
        value = acc[("oracle", "new")]
        result.append(Check("oracle-context accuracy on new >= 0.80", value, value >= 0.80))
    return result


def load_demo_config(config_path: Path | None, quick: bool) -> DemoConfig:
    if config_path is not None:
        config = load_config(DemoConfig, config_path)
    else:
        config = DemoConfig()
    if quick:
        merged = config.model_dump(mode="json")
        for section, values in QUICK_DEMO.items():
            if isinstance(values, dict):
                merged[section] = {**merged[section], **values}
            else:
                merged[section] = values
        config = parse_config(DemoConfig, merged)
    return config


def run_demo(
    out: Path | None = None,
    config_path: Path | None = None,
    quick: bool = False,
    show_progress: bool = True,
) -> tuple[Path, list[dict], list[Check]]:
    from rich.console import Console

    from kinject.evaluation.evaluate import run_evaluation
    from kinject.models.base_model import ensure_base_model

    console = Console()
    config = load_demo_config(config_path, quick)
    run_dir = out or Path("runs") / ("demo-quick" if quick else "demo")
    started = time.perf_counter()
    world = world_dir(config)
    console.print(f"world: {world}")
    model_dir, cached = ensure_base_model(
        config.world, config.model, config.pretrain, show_progress
    )
    console.print(f"base model: {model_dir} ({'cached' if cached else 'pretrained now'})")
    needs_kb = any(arm == "rag" or arm.endswith("+rag") for arm in config.arms)
    kb = world_kb(config, world, show_progress) if needs_kb else None
    if kb is not None:
        console.print(f"knowledge base: {kb}")
    finetuning: dict[str, dict] = {}
    for label, spec, arms in _models(config, world, model_dir, console, show_progress, finetuning):
        eval_run = eval_config(config, world, spec, kb, label, arms)
        run_evaluation(eval_run, run_dir / "models" / label, show_progress=show_progress)
    if "ft-par" in finetuning and config.finetune.curve:
        finetuning["curve"] = _paraphrase_curve(
            config, world, model_dir, finetuning, run_dir, console, show_progress
        )
    write_text(run_dir / "demo.yaml", to_yaml(config))
    write_json(run_dir / "finetuning.json", finetuning)
    metrics = tabulate_demo(run_dir)
    results = checks(metrics)
    write_json(
        run_dir / "checks.json",
        {"checks": [{"check": c.label, "value": c.value, "passed": c.passed} for c in results]},
    )
    for table in demo_tables(run_dir):
        console.print(table)
    for check in results:
        mark = "[green]PASS[/green]" if check.passed else "[red]FAIL[/red]"
        console.print(f"{mark} {check.label}: {check.value:.3f}")
    console.print(f"run folder: {run_dir}  ({time.perf_counter() - started:.0f} s)")
    return run_dir, metrics, results


FINETUNED = ("ft-reg", "ft-par", "sft")


def _models(config: DemoConfig, world, model_dir, console, show_progress, finetuning):
    """``(label, model spec, arms)`` for the base model and every fine-tuned model asked for."""
    base_arms = [arm for arm in config.arms if arm in ("base", "oracle", "rag")]
    if base_arms:
        yield "base", ModelSpec(path=str(model_dir)), base_arms
    for name in FINETUNED:
        arms = [arm for arm in ("base", "rag") if column_name(name, arm) in config.arms]
        if not arms:
            continue
        job = finetune_job(config, world, model_dir, name)
        spec, selection, cached = ensure_finetuned(job, name, show_progress)
        finetuning[name] = _chosen(selection, spec)
        console.print(
            f"{name}: lr {selection['learning_rate']:g}, epoch {selection['epoch']} "
            f"({'cached' if cached else 'fine-tuned now'})"
        )
        yield name, spec, arms


def _chosen(selection: dict, spec: ModelSpec) -> dict:
    return {
        "learning_rate": selection["learning_rate"],
        "epoch": selection["epoch"],
        "validation_acc": selection["validation_acc"],
        "model": spec.model_dump(mode="json"),
    }


def _paraphrase_curve(
    config, world, model_dir, finetuning, run_dir, console, show_progress
) -> list[dict]:
    """Accuracy on ``new`` (0-shot) by the number of paraphrases, at FT-par's learning rate."""
    from kinject.evaluation.evaluate import run_evaluation

    rate = finetuning["ft-par"]["learning_rate"]
    points = []
    for count in config.finetune.curve:
        label = f"paraphrases-{count}"
        same = _same_training(config, finetuning, count, rate)
        if same is not None:  # FT-par (or FT-reg) at this learning rate: already trained
            chosen = finetuning[same]
            console.print(f"{label}: the {same} model")
        else:
            job = finetune_job(config, world, model_dir, "ft-par", count, [rate])
            spec, selection, cached = ensure_finetuned(job, f"ft-par{count}", show_progress)
            chosen = _chosen(selection, spec)
            console.print(
                f"{label}: epoch {selection['epoch']} ({'cached' if cached else 'fine-tuned now'})"
            )
        spec = ModelSpec(**chosen["model"])
        eval_run = eval_config(config, world, spec, None, label, ["base"], ["new"], [0])
        run_evaluation(eval_run, run_dir / "curve" / label, show_progress=show_progress)
        points.append({"paraphrases": count, **chosen})
    return points


def _same_training(config: DemoConfig, finetuning: dict, count: int, rate: float) -> str | None:
    """The fine-tuned model that already is this curve point's training, if any: the best
    epoch of FT-par's (or FT-reg's) candidate at ``rate`` is what a run at ``rate`` alone
    would choose."""
    if count == config.finetune.paraphrases:
        return "ft-par"
    reg = finetuning.get("ft-reg")
    if count == 0 and reg is not None and reg["learning_rate"] == rate:
        return "ft-reg"
    return None


def tabulate_demo(run_dir: Path) -> list[dict]:
    """The demo's metrics.json, records.jsonl and table.md from its models' run folders."""
    from kinject.evaluation.evaluate import retabulate
    from kinject.evaluation.report import demo_markdown

    finetuning = json.loads((run_dir / "finetuning.json").read_text(encoding="utf-8"))
    cells, records, selected_k = [], [], {}
    for folder in _model_runs(run_dir):
        result = retabulate(folder)
        cells += result.metrics
        summary = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        if "selected_k" in summary:
            selected_k[folder.name] = summary["selected_k"]
        records += (folder / "records.jsonl").read_text(encoding="utf-8").splitlines()
    cells.sort(key=_column_order)
    curve = []
    for point in finetuning.get("curve", []):
        label = f"paraphrases-{point['paraphrases']}"
        metric = retabulate(run_dir / "curve" / label).metrics[0]
        curve.append({**point, **{k: metric[k] for k in ("n", "acc", "acc_ci")}})
    summary = {"cells": cells, "select_k_on": "validation", "selected_k": selected_k}
    summary["finetuning"] = {k: v for k, v in finetuning.items() if k != "curve"}
    summary["paraphrase_curve"] = curve
    write_json(run_dir / "metrics.json", summary)
    write_text(run_dir / "records.jsonl", "".join(line + "\n" for line in records))
    write_text(run_dir / "table.md", demo_markdown(cells, curve))
    return cells


def _model_runs(run_dir: Path) -> list[Path]:
    order = {"base": 0, **{name: i + 1 for i, name in enumerate(FINETUNED)}}
    folders = [f for f in (run_dir / "models").iterdir() if (f / "config.yaml").exists()]
    return sorted(folders, key=lambda f: (order.get(f.name, len(order)), f.name))


def _column_order(metric: dict) -> int:
    name = column_name(metric.get("model", "base"), metric["arm"])
    return DEMO_ARMS.index(name) if name in DEMO_ARMS else len(DEMO_ARMS)


def demo_tables(run_dir: Path) -> list:
    """The terminal's tables, from the demo's metrics.json."""
    from kinject.evaluation.report import arm_table, curve_table, forgetting_table, rich_tables

    summary = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    cells = summary["cells"]
    tables = [arm_table(cells, "validation", "kinject demo: accuracy [95% CI]")]
    tables += rich_tables(cells, "validation")[1:]  # the K grid
    forgetting = forgetting_table(cells)
    if forgetting is not None:
        tables.append(forgetting)
    if summary["paraphrase_curve"]:
        tables.append(curve_table(summary["paraphrase_curve"]))
    return tables
