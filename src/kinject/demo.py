"""``kinject demo``: the whole embedded experiment from one seed, offline.

The demo is an experiment (``kinject run``) on the synthetic world: the world and the tiny
base model are built and cached, then the base model is scored closed book, with the gold
biography (``oracle``) and with retrieval, the fine-tuned models (FT-reg, FT-par, SFT; cached
too) closed book and with retrieval, and FT-par by number of paraphrases.  It prints the
tables (with the ``updated`` split's new value beside its previous value, per arm) and the
three checks the base model must pass.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from kinject.cache import cache_dir
from kinject.config import (
    QUICK_DEMO,
    DemoConfig,
    ExperimentConfig,
    ExperimentModel,
    FinetuneRecipe,
    RagConfig,
    SweepConfig,
    TablesConfig,
    TaskSpec,
    TrainingData,
    ValidationConfig,
    WorldSetup,
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


def demo_experiment(config: DemoConfig) -> ExperimentConfig:
    """The demo as an experiment on the synthetic world (examples/demo/experiment.yaml is the
    same grid as a file): the base model's arms, FT-reg, FT-par and SFT, the paraphrase
    sweep; K, learning rates and epochs chosen on the validation questions."""
    tune = config.finetune
    tasks = "${world}/tasks"

    def task(split: str, open_questions: bool = False) -> TaskSpec:
        if open_questions:
            return TaskSpec(
                name=f"{split}_open",
                format="open_jsonl",
                path=f"{tasks}/{split}_open.jsonl",
                dev=f"{tasks}/dev_open.jsonl",
            )
        return TaskSpec(name=split, path=f"{tasks}/{split}.jsonl", dev=f"{tasks}/dev.jsonl")

    def text(n_paraphrases: int) -> TrainingData:
        return TrainingData(
            corpus="${world}/kb.jsonl",
            paraphrases="${world}/paraphrases.jsonl" if n_paraphrases else None,
            n_paraphrases=n_paraphrases,
            block_size=config.pretrain.block_size,
        )

    common = {"epochs": tune.epochs, "batch_size": tune.batch_size, "bf16": config.pretrain.bf16}
    finetunes = {
        "ft-reg": FinetuneRecipe(
            data=text(0),
            method=tune.method,
            lora=tune.lora,
            learning_rate=tune.learning_rate,
            **common,
        ),
        "ft-par": FinetuneRecipe(
            data=text(tune.paraphrases),
            method=tune.method,
            lora=tune.lora,
            learning_rate=tune.learning_rate,
            **common,
        ),
        "sft": FinetuneRecipe(
            data=TrainingData(kind="qa", qa="${world}/sft.jsonl", template=tune.sft_template),
            method=tune.sft_method,
            lora=tune.lora,
            learning_rate=tune.sft_learning_rate,
            **common,
        ),
    }
    used = {arm.split("+")[0] for arm in config.arms}
    sweeps = []
    if "ft-par" in used and tune.curve:
        sweeps.append(
            SweepConfig(
                name="paraphrases",
                finetune="ft-par",
                key="data.n_paraphrases",
                values=tune.curve,
                tasks=["new"],
                shots=[0],
            )
        )
    return ExperimentConfig(
        name="kinject demo",
        seed=config.world.seed,
        seeds=config.seeds,
        world=WorldSetup(
            world=config.world, model=config.model, pretrain=config.pretrain, kb=config.kb
        ),
        models=[ExperimentModel(label="tiny", path="${world_model}")],
        tasks=[task(s) for s in config.splits] + [task(s, True) for s in config.open_splits],
        validation=ValidationConfig(
            task=task("validation"),
            rag_sample=config.rag_validation_sample,
            finetune_sample=tune.validation_sample,
            finetune_shots=config.shots,  # chosen for the shots it is tested with
        ),
        arms=list(config.arms),
        corpus="${world}/kb.jsonl",
        rag=RagConfig(kb="${world_kb}", retriever=config.retriever, k=config.rag_k),
        finetunes={name: recipe for name, recipe in finetunes.items() if name in used},
        sweeps=sweeps,
        shots=config.shots,
        scoring=config.scoring,
        tables=TablesConfig(forgetting_tasks=["known"] if "known" in config.splits else []),
        bootstrap_resamples=config.bootstrap_resamples,
        finetune_dir=str(cache_dir() / "finetuned"),
    )


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

    from kinject.experiments.runner import run_experiment
    from kinject.experiments.tables import UPDATED_NOTE, rich_tables, updated_rich
    from kinject.training.loop import is_main_process

    console = Console()
    config = load_demo_config(config_path, quick)
    run_dir = out or Path("runs") / ("demo-quick" if quick else "demo")
    started = time.perf_counter()
    result = run_experiment(demo_experiment(config), run_dir, show_progress, console)
    metrics = result.metrics["cells"]
    results = checks(metrics)
    if not is_main_process():  # under `accelerate launch`, the first process writes and prints
        return run_dir, metrics, results
    write_text(run_dir / "demo.yaml", to_yaml(config))
    write_json(
        run_dir / "checks.json",
        {"checks": [{"check": c.label, "value": c.value, "passed": c.passed} for c in results]},
    )
    costs = json.loads((run_dir / "costs.json").read_text(encoding="utf-8"))
    for table in rich_tables(result.metrics, costs):
        console.print(table)
    updated = updated_rich(result.metrics, costs)
    if updated is not None:  # the updated split: new value beside previous value, per arm
        console.print(updated)
        console.print(UPDATED_NOTE)
    for check in results:
        mark = "[green]PASS[/green]" if check.passed else "[red]FAIL[/red]"
        console.print(f"{mark} {check.label}: {check.value:.3f}")
    console.print(f"run folder: {run_dir}  ({time.perf_counter() - started:.0f} s)")
    return run_dir, metrics, results
