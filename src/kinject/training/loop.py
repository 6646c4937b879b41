"""The training loop: one for every kind of training kinject does.

It takes a model and a function ``batch_for(step)`` that returns the batch of a step as a
pure function of the step number.  That makes resuming exact: after a kill the loop reloads
the last checkpoint (weights, optimizer, step) and continues with the very batch that would
have come next.  Checkpoints and the loss log are written atomically.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from kinject import faults
from kinject.errors import KinjectError
from kinject.fileio import atomic_open, write_jsonl
from kinject.models.packing import IGNORE_INDEX


@dataclass(frozen=True)
class Schedule:
    """Linear warm-up, then ``cosine`` decay, or ``wsd`` (warm-up, stable, decay): constant
    until the last ``decay_fraction`` of the steps, then a linear decay.  Both end at
    ``min_lr_ratio`` of the peak.  WSD suits phased training, where a later phase must still
    learn at full rate.  ``constant`` stays at the peak after warm-up: fine-tuning uses it,
    so that the model after epoch e of a 5-epoch run is the model of an e-epoch run."""

    steps: int
    learning_rate: float
    warmup_steps: int = 0
    weight_decay: float = 0.0
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    kind: str = "cosine"  # cosine | wsd | constant
    decay_fraction: float = 0.2

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.learning_rate * (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return self.learning_rate
        if self.kind == "wsd":
            decay_start = self.steps - int(self.decay_fraction * self.steps)
            if step < decay_start:
                return self.learning_rate
            progress = (step - decay_start) / max(1, self.steps - decay_start)
            return self.learning_rate * (1 - (1 - self.min_lr_ratio) * progress)
        span = max(1, self.steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return self.learning_rate * (self.min_lr_ratio + (1 - self.min_lr_ratio) * cosine)


@dataclass
class TrainingResult:
    steps: int
    tokens: int
    seconds: float
    final_loss: float
    resumed_from: int
    bf16: bool = False  # what the loop used (``"auto"`` resolved)
    log: list[dict[str, Any]] = field(default_factory=list)
    validation: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        summary = asdict(self)
        summary.pop("log")
        summary.pop("validation")
        return summary


def autocast_context(device_type: str, bf16: bool):
    import torch

    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16)


Bf16Setting = bool | Literal["auto"]


def native_bf16(device_type: str) -> bool:
    """Whether this device does bf16 arithmetic in hardware: a CUDA GPU that supports it, or
    a CPU with AVX-512 BF16 or AMX.  Elsewhere bf16 is emulated, and training a small model
    under bf16 autocast measured 9-13x slower than fp32 on a 2-core AVX2 CPU."""
    import torch

    if device_type == "cuda":
        try:  # not the emulated bf16 of older GPUs (V100, T4)
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # a torch without the argument
            return bool(torch.cuda.is_bf16_supported())
    if device_type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def resolve_bf16(setting: Bf16Setting, device_type: str) -> bool:
    """A config's ``bf16`` (true, false or ``"auto"``: where :func:`native_bf16`) as used."""
    return native_bf16(device_type) if setting == "auto" else bool(setting)


def with_bf16_resolved(dump: dict) -> dict:
    """A training config's dump for a cache key: ``bf16: auto`` replaced by what it means on
    this machine's default device, so a model trained in bf16 and one trained in fp32 never
    share a key (or a checkpoint to resume)."""
    if dump.get("bf16") != "auto":
        return dump
    from kinject.models.loading import resolve_device

    return {**dump, "bf16": {"auto": resolve_bf16("auto", resolve_device("auto"))}}


@dataclass
class _Progress:
    """What a checkpoint carries besides weights and optimizer state."""

    step: int = 0
    tokens: int = 0
    seconds: float = 0.0
    log: list[dict[str, Any]] = field(default_factory=list)
    validation: list[dict[str, Any]] = field(default_factory=list)
    running: float | None = None  # the smoothed loss (a resumed run's final_loss continues it)


def _trainable(model) -> dict[str, Any]:
    """The parameters being trained (all of them, or a LoRA adapter's)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _optimizer(model, schedule: Schedule):
    import torch

    trainable = list(_trainable(model).values())
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": schedule.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=schedule.learning_rate,
        betas=(0.9, 0.95),
    )


CHECKPOINT_FORMAT = 2  # bump when the checkpoint's contents change


class StaleCheckpoint(KinjectError):
    """A checkpoint this version cannot resume from."""


def _load_checkpoint(path: Path | None, model, optimizer) -> _Progress:
    import pickle

    import torch

    if path is None or not path.exists():
        return _Progress()
    device = next(model.parameters()).device
    try:  # tensors and plain values only: a checkpoint cannot make Python run code
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        raise StaleCheckpoint(
            f"{path} holds objects other than tensors and plain values, so it was not "
            "loaded; delete it to start over"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise StaleCheckpoint(
            f"{path} was written by another version of kinject; delete it to start over"
        )
    missing = set(_trainable(model)) - set(state["model"])
    if missing:
        raise StaleCheckpoint(f"{path} does not hold '{min(missing)}'; delete it to start over")
    model.load_state_dict(state["model"], strict=False)
    optimizer.load_state_dict(state["optimizer"])
    return _Progress(**state["progress"])


def _save_checkpoint(path: Path, model, optimizer, progress: _Progress) -> None:
    import torch

    state = {
        "format": CHECKPOINT_FORMAT,
        "model": {name: p.detach() for name, p in _trainable(model).items()},
        "optimizer": optimizer.state_dict(),
        "progress": asdict(progress),
    }
    with atomic_open(path, "wb") as handle:
        torch.save(state, handle)


def _update(
    model, optimizer, batch, lr: float, schedule: Schedule, bf16: bool, label: str, group
) -> float:
    """One optimizer step; returns the loss (averaged over the processes of a group)."""
    import torch

    for param_group in optimizer.param_groups:
        param_group["lr"] = lr
    forward = group.wrapped if group is not None else model
    with autocast_context(batch["input_ids"].device.type, bf16):
        loss = forward(**batch).loss
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{label}: loss became {loss.item()}")
    loss.backward()  # under DDP: gradients averaged over the processes
    if schedule.grad_clip:
        torch.nn.utils.clip_grad_norm_(list(_trainable(model).values()), schedule.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if group is not None:
        loss = group.accelerator.reduce(loss.detach(), "mean")
    return loss.item()


@dataclass
class _ProcessGroup:
    """Data-parallel training under ``accelerate launch``: every process takes its share of
    the rows of each step's batch (rank r: rows r, r + n, …), so the global batch is the one
    a single process would train on; the main process alone evaluates and writes."""

    accelerator: Any
    wrapped: Any  # the model wrapped for gradient averaging (DDP)

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def size(self) -> int:
        return self.accelerator.num_processes

    def shard(self, batch: dict, step: int) -> dict:
        rows = batch["input_ids"].shape[0]
        if rows % self.size:
            raise KinjectError(
                f"step {step}: a batch of {rows} rows cannot be split over {self.size} "
                "processes; make the batch size a multiple of the number of processes"
            )
        return {key: value[self.rank :: self.size] for key, value in batch.items()}


def is_main_process() -> bool:
    """False in the processes of an ``accelerate launch`` other than the first."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def _process_group(model):
    """A :class:`_ProcessGroup` when started by ``accelerate launch`` with several processes."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import Accelerator

    device = next(model.parameters()).device
    accelerator = Accelerator(cpu=device.type == "cpu")
    return _ProcessGroup(accelerator, accelerator.prepare_model(model))


def train(
    model,
    batch_for: Callable[[int], dict[str, Any]],
    schedule: Schedule,
    *,
    bf16: Bf16Setting = "auto",
    checkpoint_dir: Path | None = None,
    checkpoint_every_s: float = 60.0,
    log_every: int = 10,
    description: str = "training",
    show_progress: bool = True,
    after_step: Callable[[int], None] | None = None,
    evaluate: Callable[[int], dict[str, Any]] | None = None,
    evaluate_every: int = 0,
) -> TrainingResult:
    """Train ``model`` in place for ``schedule.steps`` optimizer steps.

    ``after_step(n)`` is called after the n-th step.  ``evaluate(n)`` is called (model in
    eval mode, no gradients) every ``evaluate_every`` steps and after the last; what it
    returns goes into ``TrainingResult.validation`` and the checkpoint, which is written
    right after, so a resumed run never evaluates the same step twice.  ``bf16``: autocast
    (``"auto"``: where the device does bf16 in hardware, :func:`native_bf16`).
    """
    from kinject.progress import progress_bar

    group = _process_group(model)
    main = group is None or group.accelerator.is_main_process
    device = next(model.parameters()).device
    bf16 = resolve_bf16(bf16, device.type)
    optimizer = _optimizer(model, schedule)
    checkpoint = checkpoint_dir / "checkpoint.pt" if checkpoint_dir else None
    progress = _load_checkpoint(checkpoint, model, optimizer)
    resumed_from = progress.step
    if resumed_from and main:
        from kinject.progress import output_console

        output_console(stderr=True).print(
            f"{description}: resuming from its checkpoint at step {resumed_from} of "
            f"{schedule.steps} ({checkpoint})",
            highlight=False,
            markup=False,  # a folder named [x] is a folder name
        )
    model.train()
    began, last_save = time.perf_counter() - progress.seconds, time.perf_counter()
    running = progress.running
    with progress_bar(description, total=schedule.steps, enabled=show_progress and main) as bar:
        bar.advance(resumed_from)
        for step in range(resumed_from, schedule.steps):
            batch = {k: v.to(device) for k, v in batch_for(step).items()}
            tokens = int(batch["input_ids"].numel())  # the global batch's
            if group is not None:
                batch = group.shard(batch, step)
            progress.step = step + 1
            if "labels" in batch and not bool((batch["labels"] != IGNORE_INDEX).any()):
                value = None  # nothing to learn from (every token masked): skip the update
            else:
                lr = schedule.lr_at(step)
                label = f"{description}, step {step}"
                value = _update(model, optimizer, batch, lr, schedule, bf16, label, group)
                faults.checkpoint("train.step", progress.step)
                running = value if running is None else 0.95 * running + 0.05 * value
                progress.running = running
                progress.tokens += tokens
            progress.seconds = time.perf_counter() - began
            logged = progress.step % log_every == 0 or progress.step == schedule.steps
            if logged and value is not None:
                progress.log.append(
                    {
                        "step": progress.step,
                        "loss": round(value, 5),
                        "lr": lr,
                        "tokens": progress.tokens,
                        "seconds": round(progress.seconds, 2),
                    }
                )
            bar.advance(1, info=f"loss {running:.3f}" if running is not None else None)
            if after_step is not None:
                after_step(progress.step)
            due = evaluate is not None and (
                progress.step == schedule.steps
                or (evaluate_every and progress.step % evaluate_every == 0)
            )
            if due and main:
                progress.validation.append(_evaluated(model, evaluate, progress.step))
            save = checkpoint is not None and (
                due or time.perf_counter() - last_save > checkpoint_every_s
            )
            if group is not None:  # every process saves at the same steps (rank 0's clock)
                save = _agreed(group, save)
            if save:
                if main:
                    _save_checkpoint(checkpoint, model, optimizer, progress)
                last_save = time.perf_counter()
            if group is not None and (save or due):
                group.accelerator.wait_for_everyone()
    model.eval()
    return TrainingResult(
        steps=schedule.steps,
        tokens=progress.tokens,
        seconds=round(progress.seconds, 2),
        final_loss=running if running is not None else float("nan"),
        resumed_from=resumed_from,
        bf16=bf16,
        log=progress.log,
        validation=progress.validation,
    )


def _agreed(group: _ProcessGroup, flag: bool) -> bool:
    """Rank 0's decision, shared with every process."""
    import torch
    from accelerate.utils import broadcast

    value = torch.tensor([int(flag)], device=group.accelerator.device)
    return bool(broadcast(value, from_process=0).item())


def _evaluated(model, evaluate: Callable[[int], dict[str, Any]], step: int) -> dict[str, Any]:
    import torch

    model.eval()
    try:
        with torch.no_grad():
            return {"step": step, **evaluate(step)}
    finally:
        model.train()


def write_training_log(path: Path, result: TrainingResult) -> None:
    write_jsonl(path, result.log)


def load_training_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
