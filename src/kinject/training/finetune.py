"""``kinject finetune``: full or LoRA fine-tuning with learning rate and epochs chosen on
validation questions, through the one training loop.

The run folder::

    config.yaml            the resolved FinetuneConfig
    env.json               package versions, machine
    inputs.json            the files trained on, by content (a resumed run must see the same)
    contamination.json     what the guard last checked and found (and whether it was allowed)
    candidates/lr-5e-05/   one training per learning rate of the grid
      checkpoint/          resume point while it trains (removed when done)
      best/                the weights (or adapter) after its best epoch on validation
      best.json            that epoch and its validation figures
      training_log.jsonl   training loss by step
      validation.jsonl     validation accuracy and loss after every epoch
      done.json            summary (steps, tokens, seconds, peak memory)
    selection.json         every (learning rate, epoch) scored, and the one chosen
    model/                 the chosen weights: a model folder (full) or a LoRA adapter
    merged/                LoRA with lora.merge: the adapter merged into the base weights

A killed run resumes: finished candidates are kept, an unfinished one continues from its
checkpoint with the very batches it would have seen.  Running a finished run again with other
evaluation tasks to guard against only checks them: the guard does not change the training.  The learning rate is constant after
warm-up, so the model after epoch e of the run is the model an e-epoch run would give, and
choosing the epoch by validation is choosing the number of epochs.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from kinject.config import FinetuneConfig, ModelSpec, load_config, to_yaml
from kinject.errors import KinjectError
from kinject.fileio import read_jsonl, replace_dir, staging_dir, write_json, write_jsonl, write_text
from kinject.models.loading import load_tokenizer
from kinject.tasks.items import Task
from kinject.training.data import TrainingSet
from kinject.training.loop import is_main_process


@dataclass(frozen=True)
class FinetuneResult:
    run_dir: Path
    model: ModelSpec  # how to load the chosen fine-tuned model (for eval, FT+RAG)
    selection: dict


def _lr_name(lr: float) -> str:
    return f"lr-{lr:g}"


def finetuned_model_spec(
    run_dir: str | Path, learning_rate: float | None = None, epoch: int | None = None
) -> ModelSpec:
    """The fine-tuned model of a finished run folder, ready for ``kinject eval``: the one its
    validation chose, or (a run that kept every epoch) the one after ``epoch`` at
    ``learning_rate``."""
    run_dir = Path(run_dir)
    if not (run_dir / "selection.json").exists():
        raise KinjectError(f"{run_dir} holds no finished fine-tuning (no selection.json)")
    config = load_config(FinetuneConfig, run_dir / "config.yaml")
    if learning_rate is not None:
        weights = epoch_folder(run_dir / "candidates" / _lr_name(learning_rate), epoch)
        if not weights.exists():
            raise KinjectError(
                f"{run_dir}: no weights after epoch {epoch} at learning rate {learning_rate:g} "
                "(a run keeps every epoch only with keep_epochs)"
            )
        if config.method == "full":
            return config.model.model_copy(update={"path": str(weights), "adapter": None})
        return config.model.model_copy(update={"adapter": str(weights)})
    if config.method == "full":
        return config.model.model_copy(update={"path": str(run_dir / "model"), "adapter": None})
    if config.lora.merge:
        return config.model.model_copy(update={"path": str(run_dir / "merged"), "adapter": None})
    return config.model.model_copy(update={"adapter": str(run_dir / "model")})


def epoch_folder(candidate: Path, epoch: int) -> Path:
    """Where a run with ``keep_epochs`` keeps a candidate's weights after ``epoch``."""
    return candidate / "epochs" / str(epoch)


def load_tasks_for(config: FinetuneConfig) -> tuple[Task | None, list[Task]]:
    """The validation task (sampled) and the tasks the contamination guard checks."""
    from kinject.evaluation.evaluate import load_task, sample_items

    validation = None
    if config.selection.task is not None:
        validation = load_task(config.selection.task)
        if max(config.selection.shot_counts()) > len(validation.dev):
            raise KinjectError(
                f"validation task '{validation.name}' has {len(validation.dev)} dev examples; "
                f"selection.shots is {config.selection.shots}"
            )
        if config.selection.sample:
            seed = config.selection.sample_seed
            validation = sample_items(
                validation, config.selection.sample, config.seed if seed is None else seed
            )
    checked = [load_task(spec) for spec in config.contamination.tasks]
    if validation is not None:
        checked.append(validation)
    return validation, checked


def guard_contamination(training: TrainingSet, tasks: list[Task], config: FinetuneConfig):
    from kinject.training.contamination import check_contamination

    guard = config.contamination
    report = check_contamination(training.texts(), tasks, guard.ngram, guard.threshold)
    if report.contaminated and not guard.allow:
        raise KinjectError(report.message())
    return {**report.to_json(), "allowed": guard.allow}


def training_identity(config: FinetuneConfig) -> dict:
    """What decides the trained model, as the config says it: everything but the contamination
    guard (it only checks the data), the checkpoint interval (a resumed run sees the very
    batches an unbroken one would), and how validation scoring packs and batches a question's
    options (the same scores to float rounding)."""
    exclude = {
        "contamination": True,
        "checkpoint_every_s": True,
        "scoring": {"share_prefix", "memory_budget_gb"},
    }
    from kinject.training.loop import with_bf16_resolved

    return with_bf16_resolved(config.model_dump(mode="json", exclude=exclude))


def input_identity(config: FinetuneConfig) -> dict:
    """The files training reads, by content: a regenerated corpus is another training."""
    from kinject.evaluation.identity import file_identity, model_identity

    def data_identity(path: str | None) -> dict | None:
        if path is not None and (Path(path) / "kb.json").exists():
            from kinject.kb.store import KnowledgeBase

            return KnowledgeBase.open(path).identity()
        return file_identity(path)

    data = config.data
    task = config.selection.task
    return {
        "model": model_identity(config.model),
        "data": {key: data_identity(getattr(data, key)) for key in _DATA_FILES},
        "validation": None
        if task is None
        else {"path": file_identity(task.path), "dev": file_identity(task.dev)},
    }


_DATA_FILES = ("corpus", "paraphrases", "qa", "replay")


def guard_identity(config: FinetuneConfig, checked: list[Task]) -> str:
    """What the guard checks: its settings and the questions of every checked task."""
    from kinject.cache import fingerprint
    from kinject.evaluation.identity import task_identity

    guard = config.contamination.model_dump(mode="json", exclude={"tasks"})
    return fingerprint(guard, [task_identity(task) for task in checked])


def is_finished(run_dir: str | Path) -> bool:
    """``selection.json`` is written last: the chosen weights are in place."""
    return (Path(run_dir) / "selection.json").exists()


def run_finetune(
    config: FinetuneConfig, run_dir: str | Path, show_progress: bool = True
) -> FinetuneResult | None:
    """Train every learning rate of the grid (resuming), choose on validation, write the run.

    A finished run is not trained again: only the contamination guard runs, when the tasks
    it checks changed.  Under ``accelerate launch`` every process trains its share of each
    batch; the first writes the run folder and returns the result, the others return None."""
    from kinject.evaluation.environment import environment

    run_dir = Path(run_dir)
    saved = run_dir / "config.yaml"
    inputs = input_identity(config)
    if saved.exists():
        _check_same_training(config, inputs, run_dir)
    validation, checked = load_tasks_for(config)
    guarded = guard_identity(config, checked)
    main = is_main_process()  # under `accelerate launch`, the first process writes
    if is_finished(run_dir):
        if _guarded(run_dir) != guarded:
            training = TrainingSet(config.data, config.seed)
            contamination = guard_contamination(training, checked, config)
            if main:
                write_text(saved, to_yaml(config))
                write_json(run_dir / "contamination.json", {**contamination, "guard": guarded})
        return FinetuneResult(run_dir, finetuned_model_spec(run_dir), _selection(run_dir))
    training = TrainingSet(config.data, config.seed)  # bad inputs fail before anything is written
    contamination = guard_contamination(training, checked, config)
    _blocks(config, training, load_tokenizer(config.model))  # enough text for one block?
    if main:
        write_text(saved, to_yaml(config))
        write_json(run_dir / "inputs.json", inputs)
        write_json(run_dir / "env.json", environment(config.seed))
        write_json(run_dir / "contamination.json", {**contamination, "guard": guarded})
    candidates = []
    for lr in config.learning_rate:
        folder = run_dir / "candidates" / _lr_name(lr)
        if not (folder / "done.json").exists():
            _train_candidate(config, training, validation, lr, folder, show_progress)
        elif main:  # killed between done.json and removing its checkpoint: remove it now
            shutil.rmtree(folder / "checkpoint", ignore_errors=True)
        candidates.append((lr, folder))
    if not main:
        return None
    selection = _select(candidates)
    _publish(config, run_dir, run_dir / "candidates" / _lr_name(selection["learning_rate"]))
    write_json(run_dir / "selection.json", selection)  # last: the run is finished
    return FinetuneResult(run_dir, finetuned_model_spec(run_dir), selection)


def _check_same_training(config: FinetuneConfig, inputs: dict, run_dir: Path) -> None:
    """Refuse to resume (or reuse) a run folder that trains something else."""
    previous = load_config(FinetuneConfig, run_dir / "config.yaml")
    if training_identity(previous) != training_identity(config):
        raise KinjectError(
            f"{run_dir} holds a fine-tuning with a different config; choose another --out "
            "(or delete the folder to start over)"
        )
    recorded = run_dir / "inputs.json"
    if recorded.exists() and _read_json(recorded) != json_roundtrip(inputs):
        raise KinjectError(
            f"{run_dir}: the model or the files it trains on changed since this fine-tuning "
            "started; choose another --out (or delete the folder to start over)"
        )


def _guarded(run_dir: Path) -> str | None:
    path = run_dir / "contamination.json"
    return _read_json(path).get("guard") if path.exists() else None


def _selection(run_dir: Path) -> dict:
    return _read_json(run_dir / "selection.json")


def _read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def json_roundtrip(value):
    """``value`` as it reads back from a JSON file (tuples become lists)."""
    return json.loads(json.dumps(value))


def prepare_model(config: FinetuneConfig):
    """``(model, tokenizer)``: the base model, wrapped in a fresh LoRA adapter if asked."""
    import torch

    from kinject.models.loading import load_causal_lm, peft_wrapping

    model, tokenizer = load_causal_lm(config.model)
    torch.manual_seed(config.seed)  # dropout (the data order is TrainingSet's)
    if config.method == "lora":
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(config.seed)  # the adapter's initial weights
        lora = config.lora
        target = "all-linear" if lora.target_modules == ["all-linear"] else lora.target_modules
        try:
            with peft_wrapping():
                model = get_peft_model(
                    model,
                    LoraConfig(
                        r=lora.rank,
                        lora_alpha=lora.alpha,
                        lora_dropout=lora.dropout,
                        target_modules=target,
                        task_type="CAUSAL_LM",
                    ),
                )
        except ValueError as error:  # e.g. target modules not found in the model
            raise KinjectError(f"lora: {error}") from None
    return model, tokenizer


def _train_candidate(config, training, validation, lr, folder: Path, show_progress) -> None:
    from kinject.training.loop import Schedule, train

    model, tokenizer = prepare_model(config)
    blocks = _blocks(config, training, tokenizer)
    steps_per_epoch = math.ceil(blocks.blocks_in_epoch(0) / config.batch_size)
    schedule = Schedule(
        steps=steps_per_epoch * config.epochs,
        learning_rate=lr,
        warmup_steps=math.ceil(config.warmup_ratio * steps_per_epoch),
        weight_decay=config.weight_decay,
        kind="constant",
    )
    keeper = _BestKeeper(folder, model, tokenizer, config, validation, steps_per_epoch)
    _reset_peak_memory(model)
    result = train(
        model,
        blocks.batch_for,
        schedule,
        bf16=config.bf16,
        checkpoint_dir=folder / "checkpoint",
        checkpoint_every_s=config.checkpoint_every_s,
        log_every=max(1, min(10, steps_per_epoch)),
        description=f"fine-tuning, lr {lr:g}",
        show_progress=show_progress,
        evaluate=keeper.evaluate,
        evaluate_every=steps_per_epoch,
    )
    if not is_main_process():
        return
    write_jsonl(folder / "training_log.jsonl", result.log)
    write_jsonl(folder / "validation.jsonl", result.validation)
    last_epoch = [
        row["loss"] for row in result.log if row["step"] > schedule.steps - steps_per_epoch
    ]
    write_json(
        folder / "done.json",
        {
            **result.summary(),
            "learning_rate": lr,
            "steps_per_epoch": steps_per_epoch,
            "last_epoch_loss": round(sum(last_epoch) / len(last_epoch), 5) if last_epoch else None,
            "vocab_size": int(model.get_output_embeddings().weight.shape[0]),
            **_peak_memory(model),
        },
    )
    shutil.rmtree(folder / "checkpoint", ignore_errors=True)


def _on_cuda(model) -> bool:
    import torch

    return torch.cuda.is_available() and next(model.parameters()).device.type == "cuda"


def _reset_peak_memory(model) -> None:
    """Start the CUDA peak afresh for one candidate (a process's peak RSS cannot be reset)."""
    import torch

    if _on_cuda(model):
        torch.cuda.reset_peak_memory_stats(next(model.parameters()).device)


def _peak_memory(model) -> dict:
    """``peak_memory_mb`` and what it measured, ``peak_memory_kind``: on CUDA the most memory
    torch allocated since :func:`_reset_peak_memory` (``cuda_allocated``); on CPU the peak
    resident set of the whole process so far (``process_peak_rss``), which also counts what
    ran before this candidate in the same process."""
    import torch

    if _on_cuda(model):
        device = next(model.parameters()).device
        peak, kind = torch.cuda.max_memory_allocated(device) / 2**20, "cuda_allocated"
    else:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        peak = rss / 2**20 if sys.platform == "darwin" else rss / 2**10
        kind = "process_peak_rss"
    return {"peak_memory_mb": round(peak, 1), "peak_memory_kind": kind}


def _blocks(config: FinetuneConfig, training: TrainingSet, tokenizer):
    """The packed blocks of the training text; too little text for one block is an error."""
    from kinject.models.packing import PackedBlocks

    data = config.data
    blocks = PackedBlocks(
        tokenizer, training.for_epoch, data.block_size, config.batch_size, data.isolate_documents
    )
    try:
        blocks.blocks_in_epoch(0)
    except ValueError:
        source = data.corpus if data.kind == "text" else data.qa
        raise KinjectError(
            f"{source}: the training text is shorter than one block of {data.block_size} "
            "tokens; lower data.block_size or add text"
        ) from None
    return blocks


class _BestKeeper:
    """After every epoch: score the validation questions; keep the best epoch's weights."""

    def __init__(self, folder: Path, model, tokenizer, config, validation, steps_per_epoch):
        self.folder = folder
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.validation = validation
        self.steps_per_epoch = steps_per_epoch
        from kinject.tasks.prompts import chat_format

        # validation prompts as the evaluation renders them; a missing template fails now,
        # before the first epoch, not after it
        self.chat = chat_format(config.scoring, tokenizer)

    def evaluate(self, step: int) -> dict:
        epoch = step // self.steps_per_epoch
        figures = {"epoch": epoch, **self._score()}
        best = self.folder / "best.json"
        previous = None
        if best.exists():
            previous = json.loads(best.read_text(encoding="utf-8"))
        if self.config.keep_epochs:
            self._save(figures, epoch_folder(self.folder, epoch))
        if previous is None or _better(figures, previous):
            self._save(figures, self.folder / "best")
            write_json(best, figures)
        return figures

    def _score(self) -> dict:
        if self.validation is None:
            return {}
        from kinject.evaluation.arms import BaseArm
        from kinject.evaluation.runner import accuracy, score_cell
        from kinject.scoring.batching import batch_options
        from kinject.scoring.loglikelihood import LoglikelihoodScorer

        scoring = self.config.scoring
        scorer = LoglikelihoodScorer(
            self.model,
            self.tokenizer,
            **batch_options(scoring, self.model),
            bf16=scoring.bf16_autocast,
            share_prefix=scoring.share_prefix,
        )
        by_shots = {}
        for shots in self.config.selection.shot_counts():
            records = score_cell(scorer, self.validation, BaseArm(), shots, chat=self.chat)
            loss = sum(-r["loglikelihoods"][r["answer"]] for r in records) / len(records)
            by_shots[shots] = (accuracy(records), loss, len(records))
        if len(by_shots) == 1:
            acc, loss, n = by_shots[next(iter(by_shots))]
            return {"acc": acc, "loss": round(loss, 5), "n": n}
        # several shot counts: the mean over them decides, each one's accuracy beside it
        figures = list(by_shots.values())
        return {
            "acc": round(sum(acc for acc, _, _ in figures) / len(figures), 4),
            "loss": round(sum(loss for _, loss, _ in figures) / len(figures), 5),
            "n": figures[0][2],
            "acc_by_shots": {str(shots): acc for shots, (acc, _, _) in by_shots.items()},
        }

    def _save(self, figures: dict, target: Path) -> None:
        """The weights (and with full fine-tuning the tokenizer) and their figures, at once."""
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = staging_dir(target.parent, f".{target.name}.")
        try:
            self.model.save_pretrained(staging)
            if self.config.method == "full":
                self.tokenizer.save_pretrained(staging)
            write_json(staging / "best.json", figures)
            replace_dir(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def _better(new: dict, old: dict) -> bool:
    """Higher validation accuracy, then lower validation loss; without validation, later."""
    if "acc" not in new:
        return True
    return (new["acc"], -new["loss"]) > (old["acc"], -old["loss"])


def _select(candidates: list[tuple[float, Path]]) -> dict:
    """The best (learning rate, epoch) over every candidate; ties go to the earlier in the grid.
    Without validation questions every candidate's best is its last epoch: the first LR wins."""
    scored = []
    chosen = None
    for lr, folder in candidates:
        best = json.loads((folder / "best.json").read_text(encoding="utf-8"))
        for _, row in read_jsonl(folder / "validation.jsonl"):
            scored.append({"learning_rate": lr, **row})
        if chosen is None or ("acc" in best and _better(best, chosen[1])):
            chosen = (lr, best)
    lr, best = chosen
    return {
        "learning_rate": lr,
        "epoch": best["epoch"],
        "validation_acc": best.get("acc"),
        "validation_loss": best.get("loss"),
        "scored": scored,
        "warnings": [line for _, folder in candidates if (line := _loss_warning(folder))],
    }


def _loss_warning(folder: Path) -> str | None:
    """A line when the candidate's last epoch trained at a loss above ln(vocabulary), the loss
    of a uniform guess over every token: whatever it learned, it was not this text.  The
    epoch's loss is the mean of its logged steps (every min(10, steps per epoch) steps)."""
    done = json.loads((folder / "done.json").read_text(encoding="utf-8"))
    loss, vocab = done.get("last_epoch_loss"), done.get("vocab_size")
    if loss is None or vocab is None or loss <= math.log(vocab):
        return None
    return (
        f"{folder.parent.parent.name} (lr {done['learning_rate']:g}): the last epoch's logged "
        f"training loss is {loss:.2f}, above ln({vocab}) = {math.log(vocab):.2f}, the loss of a uniform "
        "guess over the vocabulary: the model did not learn this text (a learning rate too "
        "high, or text its tokenizer and pretraining do not fit)"
    )


def _publish(config: FinetuneConfig, run_dir: Path, chosen: Path) -> None:
    """Copy the chosen candidate's best weights to ``model/`` (and ``merged/`` for LoRA)."""
    staging = staging_dir(run_dir, ".model.")
    try:
        shutil.rmtree(staging)
        shutil.copytree(chosen / "best", staging)
        replace_dir(staging, run_dir / "model")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if config.method == "lora" and config.lora.merge:
        _merge(config, run_dir)


def _merge(config: FinetuneConfig, run_dir: Path) -> None:
    from kinject.models.loading import load_causal_lm

    spec = config.model.model_copy(update={"adapter": str(run_dir / "model"), "device": "cpu"})
    model, tokenizer = load_causal_lm(spec)  # loading with an adapter merges it
    staging = staging_dir(run_dir, ".merged.")
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        replace_dir(staging, run_dir / "merged")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
