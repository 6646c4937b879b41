"""``kinject demo``: the whole embedded experiment, offline.

The demo is two experiments (``kinject run``).  The first is on the synthetic world: the
world and the tiny base model are built and cached, then the base model is scored closed
book, with the gold biography (``oracle``) and with retrieval, the fine-tuned models
(FT-reg, FT-par, SFT; each trained with every seed, cached too) closed book and with
retrieval, and FT-par by number of paraphrases.  The second (``pretrained:``) is a real
pretrained model, SmolLM2-135M-Instruct: the built-in public facts it answers right closed
book are its ``known`` and (changed in the knowledge base) ``updated`` questions, some of
the world's fictional people its ``new`` ones; base, oracle, rag and LoRA FT-reg / FT-par.
Each prints its tables (with the ``updated`` split's new value beside its previous value,
per arm), then the checks the base models must pass.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from kinject.cache import cache_dir
from kinject.config import (
    ExperimentConfig,
    ExperimentModel,
    FinetuneRecipe,
    KBConfig,
    KBSetup,
    LoraConfig,
    PretrainConfig,
    RagConfig,
    ScoringConfig,
    SweepConfig,
    TablesConfig,
    TaskSpec,
    TinyModelConfig,
    TrainingData,
    ValidationConfig,
    WorldConfig,
    WorldSetup,
    load_config,
    parse_config,
    to_yaml,
)
from kinject.fileio import write_json, write_text
from kinject.probes.facts import FactsConfig
from kinject.section import Section


class DemoFinetune(Section):
    """The demo's fine-tuned models (FT-reg, FT-par, SFT) and the paraphrase curve."""

    method: Literal["full", "lora"] = Field("full", description="FT-reg and FT-par.")
    learning_rate: list[float] = Field(
        default_factory=lambda: [3e-3],
        min_length=1,
        description="Grid (tiny model; [1e-3, 3e-3] chose 3e-3 for every recipe and seed).",
    )
    epochs: int = Field(5, ge=1, description="At most; the best epoch is chosen on validation.")
    batch_size: int = Field(16, ge=1)
    paraphrases: int = Field(10, ge=1, description="Paraphrases per document for FT-par.")
    curve: list[int] = Field(
        default_factory=lambda: [0, 5, 10],
        description="Paraphrase counts of the accuracy-vs-paraphrases curve (at FT-par's LR).",
    )
    sft_method: Literal["full", "lora"] = "lora"
    sft_learning_rate: list[float] = Field(default_factory=lambda: [3e-3], min_length=1)
    sft_template: str = Field(
        "Question: {instruction}\nAnswer: ",
        description="The SFT prompt; the demo's questions are scored in this same form.",
    )
    lora: LoraConfig = LoraConfig(rank=16, alpha=32.0)
    validation_sample: int | None = Field(
        100, ge=1, description="Validation questions scored after each epoch (null: all)."
    )


DEMO_ARMS = ("base", "oracle", "rag", "ft-reg", "ft-par", "ft-reg+rag", "ft-par+rag", "sft")


PRETRAINED_ARMS = ("base", "oracle", "rag", "ft-reg", "ft-par", "ft-reg+rag", "ft-par+rag")


class PretrainedDemo(Section):
    """The demo's real pretrained model (SmolLM2-135M-Instruct, from its PyPI wheel): its own
    ``known`` facts (checked by scoring, ``kinject probes facts``), the same facts changed in
    the knowledge base as ``updated``, the world's fictional people as ``new``; base, oracle,
    rag and LoRA continued pretraining with and without paraphrases, each trained with every
    seed of the demo."""

    model: str = Field("smollm2-135m-instruct", description="A preset, a folder or a .gguf file.")
    label: str = Field(
        "smollm2",
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Its name in tables, and its run's folder inside the demo's.",
    )
    n_new: int = Field(12, ge=1, description="The world's new people its KB and tests hold.")
    arms: list[Literal["base", "oracle", "rag", "ft-reg", "ft-par", "ft-reg+rag", "ft-par+rag"]] = (
        Field(default_factory=lambda: list(PRETRAINED_ARMS))
    )
    rag_k: list[int] = Field(
        default_factory=lambda: [1, 3], description="K grid, chosen on validation."
    )
    lora: LoraConfig = LoraConfig(
        rank=16, alpha=32.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    learning_rate: list[float] = Field(default_factory=lambda: [3e-3], min_length=1)
    epochs: int = Field(3, ge=1, description="At most; the best epoch is chosen on validation.")
    batch_size: int = Field(4, ge=1)
    block_size: int = Field(128, ge=16)
    paraphrases: int = Field(3, ge=1, description="Paraphrases per document for FT-par.")
    validation_sample: int | None = Field(
        60, ge=1, description="Validation questions K and the epoch are chosen on (null: all)."
    )


class DemoConfig(Section):
    """``kinject demo``: world → tiny base model → fine-tuned models (each trained with every
    training seed) → evaluation."""

    world: WorldConfig = WorldConfig()
    model: TinyModelConfig = TinyModelConfig()
    pretrain: PretrainConfig = PretrainConfig()
    arms: list[
        Literal["base", "oracle", "rag", "ft-reg", "ft-par", "ft-reg+rag", "ft-par+rag", "sft"]
    ] = Field(default_factory=lambda: list(DEMO_ARMS))
    finetune: DemoFinetune = DemoFinetune()
    splits: list[Literal["known", "new", "updated", "reading"]] = Field(
        default_factory=lambda: ["known", "new", "updated"]
    )
    open_splits: list[Literal["known", "new", "updated"]] = Field(
        default_factory=lambda: ["new"],
        description="Splits also asked as open questions (greedy generation; EM, F1, BLEU, ROUGE).",
    )
    kb: KBConfig = Field(
        KBConfig(), description="The knowledge base built from the world's kb.jsonl."
    )
    retriever: Literal["dense", "bm25", "hybrid"] = "dense"
    rag_k: list[int] = Field(
        default_factory=lambda: [0, 1, 2, 3, 4, 5],
        description="K grid; the best K is chosen on the validation questions, never on test.",
    )
    rag_validation_sample: int | None = Field(
        100, ge=1, description="Validation questions the K grid is scored on (null: all 700)."
    )
    shots: list[int] = Field(default_factory=lambda: [0, 5])
    seeds: list[int] = Field(
        default_factory=lambda: [0, 1, 2],
        min_length=1,
        description="Training seeds of every fine-tuning: intervals over seeds and questions.",
    )
    scoring: ScoringConfig = ScoringConfig(batch_size=64)
    pretrained: PretrainedDemo | None = Field(
        PretrainedDemo(),
        description="The real pretrained model's experiment beside the tiny model's (null: "
        "the tiny model alone).",
    )
    bootstrap_resamples: int = Field(1000, ge=100)

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError("seeds must be distinct")
        return value

    @model_validator(mode="after")
    def _pretrained_fits(self) -> DemoConfig:
        real = self.pretrained
        if real is not None and real.n_new > self.world.n_new:
            raise ValueError(
                f"pretrained.n_new is {real.n_new}, but the world has {self.world.n_new} new "
                "people (world.n_new)"
            )
        if real is not None and real.label in ("tiny", "models", "sweeps", "tables"):
            raise ValueError(
                f"pretrained.label '{real.label}' is taken: the tiny model's name, or a "
                "folder of the tiny model's run (the real model's run goes beside them)"
            )
        return self


QUICK_DEMO = {
    "world": {
        "n_known": 12,
        "n_new": 8,
        "n_updated": 4,
        "n_reading": 4,
        "n_dev": 2,
        "n_paraphrases": 2,
    },
    "model": {
        "vocab_size": 600,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_layers": 2,
        "num_heads": 2,
    },
    "pretrain": {
        "steps": 6,
        "batch_size": 4,
        "block_size": 64,
        "warmup_steps": 2,
        "reading_warmup_steps": 2,
    },
    "rag_k": [0, 1, 2],
    "finetune": {
        "learning_rate": [3e-3],
        "sft_learning_rate": [3e-3],
        "epochs": 1,
        "batch_size": 4,
        "paraphrases": 2,
        "curve": [0, 2],
        "validation_sample": 10,
    },
    "bootstrap_resamples": 200,
    "pretrained": None,
}


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
        world=_world_setup(config),
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


def _world_setup(config: DemoConfig) -> WorldSetup:
    return WorldSetup(
        world=config.world, model=config.model, pretrain=config.pretrain, kb=config.kb
    )


def pretrained_experiment(config: DemoConfig) -> ExperimentConfig | None:
    """The real model's grid (``config.pretrained``): its checked facts and the world's new
    people (``${facts}``), a knowledge base of their documents, LoRA FT-reg and FT-par."""
    real = config.pretrained
    if real is None:
        return None
    tasks = "${facts}/tasks"

    def text(n_paraphrases: int) -> FinetuneRecipe:
        return FinetuneRecipe(
            data=TrainingData(
                corpus="${facts}/corpus.jsonl",
                paraphrases="${facts}/paraphrases.jsonl" if n_paraphrases else None,
                n_paraphrases=n_paraphrases,
                block_size=real.block_size,
            ),
            method="lora",
            lora=real.lora,
            learning_rate=real.learning_rate,
            epochs=real.epochs,
            batch_size=real.batch_size,
        )

    finetunes = {"ft-reg": text(0), "ft-par": text(real.paraphrases)}
    used = {arm.split("+")[0] for arm in real.arms}
    return ExperimentConfig(
        name=f"kinject demo: {real.model}",
        seed=config.world.seed,
        seeds=config.seeds,
        world=_world_setup(config),
        facts=FactsConfig(
            model=real.model, world="${world}", n_new=real.n_new, seed=config.world.seed
        ),
        knowledge_base=KBSetup(sources=["${facts}/corpus.jsonl"], config=config.kb),
        models=[ExperimentModel(label=real.label, path=real.model)],
        tasks=[
            TaskSpec(name=split, path=f"{tasks}/{split}.jsonl")
            for split in ("known", "updated", "new")
        ],
        validation=ValidationConfig(
            task=TaskSpec(name="validation", path=f"{tasks}/validation.jsonl"),
            rag_sample=real.validation_sample,
            finetune_sample=real.validation_sample,
        ),
        arms=list(real.arms),
        corpus="${facts}/oracle.jsonl",  # the known facts' true statements too: gold for all
        rag=RagConfig(kb="${kb}", retriever=config.retriever, k=real.rag_k),
        finetunes={name: recipe for name, recipe in finetunes.items() if name in used},
        shots=[0],  # the facts have no dev examples to show
        scoring=config.scoring,
        tables=TablesConfig(forgetting_tasks=["known"]),
        bootstrap_resamples=config.bootstrap_resamples,
        finetune_dir=str(cache_dir() / "finetuned"),
    )


def checks(metrics: list[dict], label: str = "tiny", known: bool = True) -> list[Check]:
    """The base model's promises, on the 0-shot cells the demo scored (``label`` names the
    model in each check; ``known=False`` leaves out the known check: a real model's
    ``known`` facts are the ones it answered right, 1.000 by construction)."""
    acc = {
        (m["arm"], m["split"]): m["acc"]
        for m in metrics
        if m["shots"] == 0 and m.get("model", "base") == "base"
    }
    result = []
    if ("base", "known") in acc and known:
        value = acc[("base", "known")]
        result.append(
            Check(f"{label}: closed-book accuracy on known >= 0.80", value, value >= 0.80)
        )
    if ("base", "new") in acc:
        value = acc[("base", "new")]
        result.append(
            Check(
                f"{label}: closed-book accuracy on new within chance 0.25 +/- 0.10",
                value,
                abs(value - CHANCE) <= 0.10,
            )
        )
    if ("oracle", "new") in acc:
        value = acc[("oracle", "new")]
        result.append(
            Check(f"{label}: oracle-context accuracy on new >= 0.80", value, value >= 0.80)
        )
    return result


def load_demo_config(config_path: Path | None, quick: bool) -> DemoConfig:
    """The demo's settings: the defaults, a YAML file's over them, ``--quick``'s over both
    (except that --quick leaves a ``pretrained:`` section the file sets: a quick run of
    another model)."""
    if config_path is not None:
        config = load_config(DemoConfig, config_path)
    else:
        config = DemoConfig()
    if quick:
        merged = config.model_dump(mode="json")
        for section, values in QUICK_DEMO.items():
            if section in config.model_fields_set and values is None:
                continue
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
    """The tiny model's experiment into ``out``, then the real pretrained model's into
    ``out/<its label>``; each prints its tables as it ends.  Returns the run folder, the cells
    of both (each names its model in ``base_model``) and the checks."""
    from kinject.experiments.runner import run_experiment
    from kinject.progress import output_console
    from kinject.training.loop import is_main_process

    console = output_console()
    config = load_demo_config(config_path, quick)
    run_dir = out or Path("runs") / ("demo-quick" if quick else "demo")
    started = time.perf_counter()
    experiments = [(demo_experiment(config), run_dir, True)]
    real = pretrained_experiment(config)
    if real is not None:
        _check_pretrained(config.pretrained)
        experiments.append((real, run_dir / config.pretrained.label, False))
    metrics, results = [], []
    for experiment, folder, check_known in experiments:
        # no input warnings: the demo writes its own inputs, and its checks below say whether
        # each base model reads its context (oracle >= 0.80)
        result = run_experiment(experiment, folder, show_progress, console, warnings=False)
        cells = result.metrics["cells"]
        label = experiment.models[0].label
        metrics += cells
        results += checks(cells, label, known=check_known)
        if is_main_process():  # under `accelerate launch`, the first process prints
            _print_tables(console, result.metrics, folder, label)
    if not is_main_process():
        return run_dir, metrics, results
    write_text(run_dir / "demo.yaml", to_yaml(config))
    write_json(
        run_dir / "checks.json",
        {"checks": [{"check": c.label, "value": c.value, "passed": c.passed} for c in results]},
    )
    for check in results:
        mark = "[green]PASS[/green]" if check.passed else "[red]FAIL[/red]"
        console.print(f"{mark} {check.label}: {check.value:.3f}")
    console.print(f"run folder: {run_dir}  ({time.perf_counter() - started:.0f} s)")
    return run_dir, metrics, results


def _check_pretrained(real: PretrainedDemo) -> None:
    """Fail before the tiny model's half when the real model cannot be had (a preset whose
    package is not installed, a missing .gguf file)."""
    from kinject.config import ModelSpec
    from kinject.errors import KinjectError
    from kinject.models.gguf import gguf_path

    try:
        gguf_path(ModelSpec(path=real.model))
    except KinjectError as error:
        raise KinjectError(
            f"{error} (or leave the real model out: 'pretrained: null' in a --config file)"
        ) from error


def _print_tables(console, metrics: dict, folder: Path, label: str) -> None:
    from kinject.experiments.tables import UPDATED_NOTE, rich_tables, updated_rich

    costs = json.loads((folder / "costs.json").read_text(encoding="utf-8"))
    from rich.rule import Rule

    console.print(Rule(f"{label}: {folder}"), width=min(console.width, 100))
    for table in rich_tables(metrics, costs):
        console.print(table)
    updated = updated_rich(metrics, costs)
    if updated is not None:  # the updated split: new value beside previous value, per arm
        console.print(updated)
        console.print(UPDATED_NOTE)
