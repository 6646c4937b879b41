"""``kinject demo``: the whole embedded experiment from one seed, offline.

1. write the synthetic world (cached by its config);
2. pretrain the tiny base model on it (cached; a progress bar while it trains);
3. evaluate it closed-book (``base``) and with the gold biography in context (``oracle``);
4. print the table and the three checks the base model must pass, and write the run folder.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from kinject.cache import cache_dir, cache_lock, fingerprint
from kinject.config import (
    QUICK_DEMO,
    DemoConfig,
    EvalConfig,
    ModelSpec,
    RagConfig,
    TaskSpec,
    load_config,
    parse_config,
    to_yaml,
)
from kinject.fileio import write_json, write_text

CHANCE = 0.25


@dataclass(frozen=True)
class Check:
    label: str
    value: float
    passed: bool


def world_dir(config: DemoConfig) -> Path:
    from kinject.world.build import build_world, write_world

    folder = cache_dir() / "worlds" / f"world-{fingerprint(config.world.model_dump(mode='json'))}"
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


def eval_config(config: DemoConfig, world: Path, model: Path, kb: Path | None) -> EvalConfig:
    """Test splits for every arm; with rag, the validation questions first, to choose K."""
    splits = list(config.splits)
    if "rag" in config.arms:
        splits.insert(0, "validation")
    tasks = [
        TaskSpec(
            name=split,
            path=str(world / "tasks" / f"{split}.jsonl"),
            dev=str(world / "tasks" / "dev.jsonl"),
        )
        for split in splits
    ]
    rag = None
    if kb is not None:
        rag = RagConfig(
            kb=str(kb),
            retriever=config.retriever,
            k=config.rag_k,
            select_k_on="validation",
            select_k_sample=config.rag_validation_sample,
        )
    return EvalConfig(
        seed=config.world.seed,
        model=ModelSpec(path=str(model)),
        tasks=tasks,
        arms=config.arms,
        corpus=str(world / "kb.jsonl"),
        rag=rag,
        shots=config.shots,
        scoring=config.scoring,
        bootstrap_resamples=config.bootstrap_resamples,
    )


def checks(metrics: list[dict]) -> list[Check]:
    """The base model's three promises, on the 0-shot cells the demo scored."""
    acc = {(m["arm"], m["split"]): m["acc"] for m in metrics if m["shots"] == 0}
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
    from kinject.evaluation.report import rich_tables
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
    kb = world_kb(config, world, show_progress) if "rag" in config.arms else None
    if kb is not None:
        console.print(f"knowledge base: {kb}")
    result = run_evaluation(
        eval_config(config, world, model_dir, kb), run_dir, show_progress=show_progress
    )
    write_text(run_dir / "demo.yaml", to_yaml(config))
    results = checks(result.metrics)
    write_json(
        run_dir / "checks.json",
        {"checks": [{"check": c.label, "value": c.value, "passed": c.passed} for c in results]},
    )
    title = "kinject demo: accuracy [95% CI]"
    for table in rich_tables(result.metrics, result.select_k_on, title):
        console.print(table)
    for check in results:
        mark = "[green]PASS[/green]" if check.passed else "[red]FAIL[/red]"
        console.print(f"{mark} {check.label}: {check.value:.3f}")
    console.print(f"run folder: {run_dir}  ({time.perf_counter() - started:.0f} s)")
    return run_dir, result.metrics, results
