"""``kinject run``: every cell of an experiment, resumable, each result stored as it finishes.

The grid is models × arms × tasks × shots × K × fine-tuning sweeps.  For each base model:

1. the base model is scored with the arms that need no training (base, oracle, rag); rag
   scores its K grid on the validation questions first and the test tasks at the best K;
2. each named fine-tuning is trained (LR grid, best epoch on validation; kept in
   ``finetune_dir`` under a hash of its whole config, so it is trained once) and scored
   closed book and with rag;
3. each sweep trains one model per value at the fine-tuning's chosen LR (reusing any
   fine-tuned model that is the same training) and scores it closed book.

Run folder::

    experiment.yaml        the resolved experiment (includes merged, absolute paths)
    env.json               package versions, machine
    models/<label>/        one `kinject eval` run folder per evaluated model (cells, records)
    sweeps/<label>/        the same, per sweep point
    finetuned/<name>-<hash>/   fine-tuning runs (unless finetune_dir says elsewhere)
    plan.json              the evaluated models: base model, fine-tuning, sweep point, training
    records.jsonl          every question of every cell
    metrics.json           accuracies with CIs, K chosen, McNemar tests, gains, sweeps
    costs.json             training tokens/time/memory, index build, scoring latency
    table.md, tables/*.csv the paper's Table 1 and Table 2 layouts, costs, every cell

Every cell is keyed by a digest of what decides it, so rerunning after a kill resumes, and
rerunning after changing one axis scores only the cells that axis touches.

Under ``accelerate launch --num_processes N`` every process runs the experiment: they train
each fine-tuning together (data parallel) and score each cell together
(:mod:`kinject.scoring.parallel`); the main process alone builds the world's caches, writes
the run folder and prints.
"""

from __future__ import annotations

import re
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from kinject.cache import cache_dir, cache_lock, fingerprint
from kinject.config import (
    ContaminationConfig,
    EvalConfig,
    ExperimentConfig,
    ExperimentModel,
    FinetuneConfig,
    FinetuneRecipe,
    ModelSpec,
    SelectionConfig,
    SweepConfig,
    TaskSpec,
    WorldSetup,
    parse_config,
    to_yaml,
)
from kinject.errors import KinjectError
from kinject.evaluation.arms import ArmSpec, arm_instruction, arm_kind, parse_arms
from kinject.fileio import write_json, write_text
from kinject.scoring.parallel import on_main, processes

FINETUNE_RECIPE = 1  # bump when fine-tuning changes meaning: every fine-tuning is trained again


@dataclass
class ModelRun:
    """One model to evaluate: a base model, a fine-tuned one, or a sweep point."""

    label: str  # its name in records and tables
    base_model: str  # the experiment model it comes from
    arms: list[str]  # base, oracle, rag, each maybe +<instruction>; a bare <instruction>
    finetune: str | None = None
    sweep: dict | None = None  # {name, key, value}
    spec: ModelSpec | None = None  # known once trained
    training: dict = field(default_factory=dict)  # chosen LR, epoch, fine-tuning folder
    seed: int | None = None  # the training seed, when the experiment trains several
    group: str | None = None  # then the label its seeds share in the tables

    def folder(self, run_dir: Path) -> Path:
        return run_dir / ("sweeps" if self.sweep else "models") / self.label


@dataclass(frozen=True)
class ExperimentResult:
    run_dir: Path
    metrics: dict


def check_inputs(config: ExperimentConfig) -> None:
    """The other files the run reads — each fine-tuning's training text, the oracle corpus,
    the knowledge base — opened now: a bad one fails before the run folder is made, not
    after the trainings before it."""
    from kinject.evaluation.evaluate import load_gold_documents
    from kinject.kb.store import KnowledgeBase
    from kinject.training.data import TrainingSet

    for recipe in config.finetunes.values():
        TrainingSet(recipe.data)
    if config.corpus is not None:
        load_gold_documents(config.corpus)
    if config.rag is not None:
        KnowledgeBase.open(config.rag.kb)


def run_experiment(
    config: ExperimentConfig,
    run_dir: str | Path,
    show_progress: bool = True,
    console=None,
    warnings: bool = True,
) -> ExperimentResult:
    from kinject.evaluation.environment import environment
    from kinject.evaluation.evaluate import load_task, run_evaluation
    from kinject.experiments.setup import resolve_setup
    from kinject.experiments.tabulate import tabulate_experiment
    from kinject.progress import output_console

    group = processes(config.models[0].device)  # joined before any model is loaded
    main = group is None or group.main
    console = console or output_console()
    if not main:
        console, show_progress = output_console(quiet=True), False
    run_dir = Path(run_dir)
    config = on_main(lambda: resolve_setup(config, show_progress, console))
    for spec in all_task_specs(config):
        load_task(spec)  # bad inputs fail before any model work
    for sweep in config.sweeps:
        for value in sweep.values:
            swept(config, sweep, value)  # a bad key or value fails now, not after hours
    check_inputs(config)
    if main:
        env = environment(config.seed)
        if group is not None:
            env["processes"] = group.size
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / "experiment.yaml", to_yaml(config))
        write_json(run_dir / "env.json", env)
    warned: set[str] = set()

    def warn(line: str) -> None:  # once per run, though every model's evaluation checks
        if warnings and line not in warned:
            warned.add(line)
            output_console(stderr=True).print(
                f"warning: {line}", style="yellow", highlight=False, markup=False
            )

    runs: list[ModelRun] = []
    stages = stage_count(config)
    stage = 0
    for model in config.models:
        for run in model_runs(config, model):
            stage += 1
            console.print(f"[{stage}/{stages}] {_describe(run, training_seeds(config))}")
            if run.sweep is None and run.finetune is not None:
                recipe = config.finetunes[run.finetune]
                members = train_seeds(config, model, run, recipe, run.finetune, run_dir, console)
            elif run.sweep is not None:
                members = _train_sweep_point(config, model, run, runs, run_dir, console)
            else:
                run.spec = model.spec()
                members = [run]
            for member in members:
                for line in (member.training or {}).get("warnings", []):
                    warn(line)
                runs.append(member)
                if member.arms:
                    evaluation = eval_config(config, member)
                    folder = member.folder(run_dir)
                    run_evaluation(evaluation, folder, show_progress=show_progress, warn=warn)
    plan = {"runs": [_plan_row(run, run_dir) for run in runs]}
    if main:
        write_json(run_dir / "plan.json", plan)
    metrics = on_main(lambda: tabulate_experiment(run_dir))
    return ExperimentResult(run_dir, metrics)


def prepare_world(setup: WorldSetup, show_progress: bool = True, console=None) -> dict[str, str]:
    """``{world, world_model, world_kb}``: the world's folder, its pretrained base model and a
    knowledge base of its kb.jsonl, each built once and cached by its config."""
    from kinject.models.base_model import ensure_base_model

    world = world_dir(setup)
    model, cached = ensure_base_model(setup.world, setup.model, setup.pretrain, show_progress)
    kb = world_kb(setup, world, show_progress)
    if console is not None:
        console.print(f"world: {world}")
        console.print(f"base model: {model} ({'cached' if cached else 'pretrained now'})")
        console.print(f"knowledge base: {kb}")
    return {"world": str(world), "world_model": str(model), "world_kb": str(kb)}


def cached_world(setup: WorldSetup) -> dict[str, str] | None:
    """The ``{world, world_model, world_kb}`` of :func:`prepare_world` when all three are
    already built, else None (builds nothing)."""
    from kinject.models.base_model import base_model_dir

    world, kb = _world_folder(setup), _world_kb_folder(setup)
    model = base_model_dir(setup.world, setup.model, setup.pretrain)
    built = [world / "world.json", model / "config.json", kb / "kb.json"]
    if not all(path.exists() for path in built):
        return None
    return {"world": str(world), "world_model": str(model), "world_kb": str(kb)}


def _world_folder(setup: WorldSetup) -> Path:
    from kinject.world.build import WORLD_FORMAT

    key = fingerprint(WORLD_FORMAT, setup.world.model_dump(mode="json"))
    return cache_dir() / "worlds" / f"world-{key}"


def _world_kb_folder(setup: WorldSetup) -> Path:
    key = fingerprint(setup.world.model_dump(mode="json"), setup.kb.model_dump(mode="json"))
    return cache_dir() / "kbs" / f"world-kb-{key}"


def world_dir(setup: WorldSetup) -> Path:
    from kinject.world.build import build_world, write_world

    folder = _world_folder(setup)
    with cache_lock(folder):
        if not (folder / "world.json").exists():
            write_world(build_world(setup.world), folder)
    return folder


def world_kb(setup: WorldSetup, world: Path, show_progress: bool = True) -> Path:
    """The world's kb.jsonl as a knowledge base (cached by the world's and the KB's config)."""
    import shutil

    from kinject.kb.store import SourceOptions, build_kb

    folder = _world_kb_folder(setup)
    with cache_lock(folder):
        if not (folder / "kb.json").exists():
            shutil.rmtree(folder, ignore_errors=True)
            options = SourceOptions(strict=True, show_progress=show_progress)
            build_kb([world / "kb.jsonl"], folder, setup.kb, options)
    return folder


def all_task_specs(config: ExperimentConfig) -> list[TaskSpec]:
    specs = list(config.tasks)
    if config.validation is not None:
        specs.append(config.validation.task)
    return specs


def task_name(spec: TaskSpec) -> str:
    return spec.task_name()


def model_runs(config: ExperimentConfig, model: ExperimentModel) -> list[ModelRun]:
    """The models to evaluate for one base model, in order: itself, its fine-tunings, sweeps.

    Each is scored with the arms its columns name: ``rag+rename`` is the base model's arm
    ``rag+rename``; ``ft-reg+rename`` the ft-reg model's arm ``rename`` (base with the
    instruction), ``ft-reg+rag+rename`` its ``rag+rename``."""
    several = len(config.models) > 1
    prefix = f"{model.label}." if several else ""
    runs = []
    specs = parse_arms(config.arms, config.instructions, config.finetunes)
    base_arms = [spec.name for spec in specs if spec.finetune is None]
    if base_arms:
        runs.append(ModelRun(model.label if several else "base", model.label, base_arms))
    for name in config.finetunes:
        mine = [spec for spec in specs if spec.finetune == name]
        # closed book, then rag (as before instructions), then the instruction arms as listed
        plain = [kind for kind in ("base", "rag") if ArmSpec(name, kind) in mine]
        arms = plain + [spec.name for spec in mine if spec.instruction is not None]
        if arms:
            runs.append(ModelRun(prefix + name, model.label, arms, name))
    for sweep in config.sweeps:
        for value in sweep.values:
            label = f"{prefix}{sweep.name}-{_slug(value)}"
            point = {"name": sweep.name, "key": sweep.key, "value": value}
            runs.append(ModelRun(label, model.label, ["base"], sweep.finetune, point))
    return runs


def stage_count(config: ExperimentConfig) -> int:
    return sum(len(model_runs(config, model)) for model in config.models)


def _slug(value) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(value))


def _describe(run: ModelRun, seeds: list[int]) -> str:
    several = f", seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else ""
    if run.sweep is not None:
        sweep = run.sweep
        return f"{run.label}: {run.finetune} with {sweep['key']} = {sweep['value']}{several}"
    if run.finetune is not None:
        return f"{run.label}: fine-tune {run.base_model} ({run.finetune}){several}, arms {run.arms}"
    return f"{run.label}: {run.base_model}, arms {run.arms}"


def _training_line(training: dict) -> str:
    state = "cached" if training.get("cached") else "trained now"
    return f"lr {training['learning_rate']:g}, epoch {training['epoch']} ({state})"


def training_seeds(config: ExperimentConfig) -> list[int]:
    """The seeds every fine-tuning is trained with: ``seeds``, or the experiment's seed."""
    return list(config.seeds) if config.seeds else [config.seed]


def finetune_config(
    config: ExperimentConfig,
    model: ExperimentModel,
    recipe: FinetuneRecipe,
    seed: int | None = None,
) -> FinetuneConfig:
    """A fine-tuning of ``model`` by ``recipe`` with training seed ``seed`` (default: the
    experiment's): chosen on validation, guarded against the test tasks.  When the experiment
    trains several seeds, each keeps every epoch's weights (the epoch is chosen on the seeds'
    mean) and is validated on the same sample of questions."""
    validation = config.validation
    guard = config.contamination
    several = len(training_seeds(config)) > 1
    return FinetuneConfig(
        **recipe.model_dump(),
        seed=config.seed if seed is None else seed,
        keep_epochs=several,
        model=model.spec(),
        selection=SelectionConfig(
            task=validation.task,
            sample=validation.finetune_sample,
            sample_seed=config.seed if several else None,
            shots=validation.finetune_shots,
        ),
        contamination=ContaminationConfig(
            tasks=list(config.tasks),
            ngram=guard.ngram,
            threshold=guard.threshold,
            allow=guard.allow,
        ),
        scoring=config.scoring,
    )


def finetune_root(config: ExperimentConfig, run_dir: Path) -> Path:
    return Path(config.finetune_dir) if config.finetune_dir else run_dir / "finetuned"


def ensure_finetuned(
    config: ExperimentConfig, job: FinetuneConfig, name: str, run_dir: Path
) -> tuple[ModelSpec, dict]:
    """The fine-tuned model and what chose it, training first if no finished run exists.

    The folder is named by a hash of what decides the trained model (the config, the model
    and the files trained on, by content): the same training is found again by any experiment
    sharing ``finetune_dir``; a killed one resumes.  The contamination guard is not part of
    it: a new test task is checked against the finished run's training text, not trained
    again."""
    from kinject.training.finetune import (
        input_identity,
        is_finished,
        run_finetune,
        training_identity,
    )
    from kinject.training.loop import is_main_process

    key = fingerprint(FINETUNE_RECIPE, training_identity(job), input_identity(job))
    folder = finetune_root(config, run_dir) / f"{name}-{key}"
    # Under `accelerate launch` every process trains (data parallel) and the main one writes:
    # it alone holds the lock, and the others start once it does (on_main waits for it).
    with cache_lock(folder) if is_main_process() else nullcontext():
        cached = on_main(lambda: is_finished(folder))
        result = run_finetune(job, folder)  # None in the other processes
        model, selection = on_main(lambda: (result.model, result.selection))
    training = {
        "learning_rate": selection["learning_rate"],
        "epoch": selection["epoch"],
        "validation_acc": selection["validation_acc"],
        "folder": str(folder),
        "cached": cached,
        "warnings": selection.get("warnings", []),  # a run finished before they existed: none
    }
    return model, training


def train_seeds(
    config: ExperimentConfig,
    model: ExperimentModel,
    run: ModelRun,
    recipe: FinetuneRecipe,
    name: str,
    run_dir: Path,
    console,
) -> list[ModelRun]:
    """``run`` trained by ``recipe``: itself with one training seed; with several, one model
    per seed (``<label>.seed-<s>``), each trained and cached on its own, all at the learning
    rate and epoch that are best on the seeds' mean validation accuracy."""
    from dataclasses import replace

    from kinject.experiments.seeds import seed_label, select_over_seeds
    from kinject.training.finetune import finetuned_model_spec

    seeds = training_seeds(config)
    if len(seeds) == 1:
        job = finetune_config(config, model, recipe, seeds[0])
        run.spec, run.training = ensure_finetuned(config, job, name, run_dir)
        console.print(f"    {_training_line(run.training)}")
        return [run]
    trainings = []
    for seed in seeds:
        job = finetune_config(config, model, recipe, seed)
        trainings.append(ensure_finetuned(config, job, name, run_dir)[1])
    choice = select_over_seeds(
        [scored_choices(training["folder"]) for training in trainings], recipe.learning_rate
    )
    members = []
    for seed, training in zip(seeds, trainings):
        member = replace(run, label=seed_label(run.label, seed), seed=seed, group=run.label)
        rate, epoch = choice["learning_rate"], choice["epoch"]
        member.spec = finetuned_model_spec(training["folder"], rate, epoch)
        member.training = {
            **training,
            "learning_rate": rate,
            "epoch": epoch,
            "validation_acc": choice["validation_acc"],
            "seed": seed,
        }
        members.append(member)
    state = "cached" if all(t["cached"] for t in trainings) else "trained now"
    margin = "" if choice["margin"] is None else f", margin {choice['margin']:+.3f}"
    console.print(
        f"    lr {choice['learning_rate']:g}, epoch {choice['epoch']} ({state}), chosen on the "
        f"mean of {len(seeds)} seeds: validation acc {choice['validation_acc']:.3f}{margin}"
    )
    return members


def scored_choices(folder: str | Path) -> list[dict]:
    """Every (learning rate, epoch) a finished fine-tuning scored on validation."""
    import json

    selection = Path(folder) / "selection.json"
    return json.loads(selection.read_text(encoding="utf-8"))["scored"]


def swept(config: ExperimentConfig, sweep: SweepConfig, value) -> FinetuneRecipe:
    """The sweep's recipe with ``key`` set to ``value``."""
    data = config.finetunes[sweep.finetune].model_dump(mode="json")
    *parents, last = sweep.key.split(".")
    node = data
    for part in parents:
        if not isinstance(node.get(part), dict):
            raise KinjectError(f"sweep '{sweep.name}': '{sweep.key}' is not a fine-tuning key")
        node = node[part]
    if last not in node or last == "learning_rate":
        raise KinjectError(
            f"sweep '{sweep.name}': '{sweep.key}' is not a fine-tuning key one can sweep "
            "(the learning rate is the recipe's chosen one)"
        )
    node[last] = value
    try:
        return parse_config(FinetuneRecipe, data)
    except KinjectError as error:
        raise KinjectError(f"sweep '{sweep.name}', {sweep.key} = {value!r}: {error}") from None


def _same_training(a: FinetuneRecipe, b: FinetuneRecipe) -> bool:
    """Whether two recipes train the same model at a learning rate both grids hold."""

    def identity(recipe: FinetuneRecipe) -> dict:
        data = recipe.model_dump(mode="json", exclude={"learning_rate", "checkpoint_every_s"})
        if data["data"]["n_paraphrases"] == 0:
            data["data"]["paraphrases"] = None  # no paraphrase is read
        return data

    return identity(a) == identity(b)


def _train_sweep_point(config, model, run: ModelRun, runs, run_dir, console) -> list[ModelRun]:
    """A sweep point (one model per training seed): the fine-tuned models of this experiment
    that are the same training, or new trainings at the recipe's chosen learning rate."""
    from dataclasses import replace

    from kinject.experiments.seeds import seed_label

    recipe_run = next(
        (
            r
            for r in runs
            if r.base_model == model.label
            and r.finetune == run.finetune
            and r.sweep is None
            and r.training
        ),
        None,
    )
    if recipe_run is None:  # the recipe is only swept: choose its LR first
        quiet = replace(run, sweep=None, arms=[])
        recipe = config.finetunes[run.finetune]
        rate = train_seeds(config, model, quiet, recipe, run.finetune, run_dir, console)[0]
        rate = rate.training["learning_rate"]
    else:
        rate = recipe_run.training["learning_rate"]
    sweep = next(s for s in config.sweeps if s.name == run.sweep["name"])
    recipe = swept(config, sweep, run.sweep["value"])
    for other in runs:
        if other.base_model != model.label or other.sweep is not None or not other.training:
            continue
        if (
            _same_training(recipe, config.finetunes[other.finetune])
            and other.training["learning_rate"] == rate
        ):
            group = other.group or other.label
            same = [r for r in runs if (r.group or r.label) == group and r.sweep is None]
            console.print(
                f"    the {group} model{'s' if len(same) > 1 else ''} (the same training)"
            )
            return [
                replace(
                    run,
                    label=run.label if r.seed is None else seed_label(run.label, r.seed),
                    seed=r.seed,
                    group=None if r.seed is None else run.label,
                    spec=r.spec,
                    training={**r.training, "same_as": r.label},
                )
                for r in same
            ]
    point = recipe.model_copy(update={"learning_rate": [rate]})
    name = f"{run.finetune}-{sweep.name}-{_slug(run.sweep['value'])}"
    return train_seeds(config, model, run, point, name, run_dir, console)


def eval_config(config: ExperimentConfig, run: ModelRun) -> EvalConfig:
    """The `kinject eval` config of one model: test tasks (a sweep's subset), and with rag
    the validation questions first, where K is chosen; the instructions its arms use."""
    tasks = list(config.tasks)
    shots = config.shots
    if run.sweep is not None:
        sweep = next(s for s in config.sweeps if s.name == run.sweep["name"])
        if sweep.tasks:
            tasks = [spec for spec in tasks if task_name(spec) in sweep.tasks]
        shots = sweep.shots
    kinds = {arm_kind(arm) for arm in run.arms}
    named = {arm_instruction(arm) for arm in run.arms}
    used = [name for name in config.instructions if name in named]
    rag = None
    if "rag" in kinds:
        rag = config.rag
        if config.validation is not None:
            tasks.insert(0, config.validation.task)
            rag = rag.model_copy(
                update={
                    "select_k_on": task_name(config.validation.task),
                    "select_k_sample": config.validation.rag_sample,
                }
            )
    return EvalConfig(
        seed=config.seed,
        model=run.spec,
        label=run.label,
        tasks=tasks,
        arms=run.arms,
        instructions={name: config.instructions[name] for name in used},
        corpus=config.corpus if "oracle" in kinds else None,
        rag=rag,
        shots=shots,
        fewshot=config.fewshot,
        scoring=config.scoring,
        bootstrap_resamples=config.bootstrap_resamples,
    )


def _plan_row(run: ModelRun, run_dir: Path) -> dict:
    training = {k: v for k, v in run.training.items() if k != "cached"}
    if "folder" in training:
        folder = Path(training["folder"]).resolve()
        if folder.is_relative_to(run_dir.resolve()):
            training["folder"] = str(folder.relative_to(run_dir.resolve()))
    row = {
        "label": run.label,
        "base_model": run.base_model,
        "finetune": run.finetune,
        "sweep": run.sweep,
        "arms": run.arms,
        "folder": str(Path("sweeps" if run.sweep else "models") / run.label),
        "training": training,  # its folder relative to the run folder when inside it
    }
    if run.group is not None:  # one seed's model of a fine-tuning trained with several
        row.update({"seed": run.seed, "group": run.group})
    return row
