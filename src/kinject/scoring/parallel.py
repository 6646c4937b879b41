"""Data-parallel scoring across processes: ``accelerate launch`` (or ``torchrun``) with N
processes scores every cell N ways at once.

The program runs the same on every process (SPMD): each builds the same prompts, in the
same order.  A scoring call is cut into N shards, each process scores its own with the
wrapped scorer, and every shard's results are gathered back into request order on every
process, so what follows (records, memo, the K chosen) is the same everywhere::

    requests   r0 r1 r2 r3 | r4 r5 r6 r7 | r8 r9 r10 r11      (three contexts, 4 options each)
    shards     process 0: r0..r3, r8..r11    process 1: r4..r7
    gathered   r0 .. r11 on both processes, in request order

A shard holds whole context groups (the requests whose context encodes to the same tokens),
so a question's options are still packed into one sequence; groups are dealt longest first
to the least-loaded process (by tokens), which is deterministic.  The processes exchange
Python objects over a gloo group of their own (on CPU and GPU alike).

Scores equal one process's up to float summation order: a process batches other sequences
together than one process does, finds other shared prefixes among its shard's questions, and
a matrix product of another shape can round the last bit differently (with
``scoring.batch_size: 1`` and ``share_prefix: false`` every pass is one (context, option)
sequence, and the scores are identical to the bit).

Work that only the main process may do (building caches, writing the run folder, choosing
K from written cells) goes through :func:`on_main`: the main process runs it as if it ran
alone, and the others wait for its result.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from kinject.errors import KinjectError

T = TypeVar("T")

# How long a process waits for the others: the main process may build a knowledge base or
# pretrain the synthetic world's model alone (see on_main) while the others wait.
WAIT = timedelta(days=1)


@dataclass(frozen=True)
class Processes:
    """This process's place among the processes of one launch."""

    rank: int
    size: int
    group: Any  # a torch.distributed gloo group, for Python objects

    @property
    def main(self) -> bool:
        return self.rank == 0

    def gather(self, value: T) -> list[T]:
        """Every process's ``value``, by rank, on every process."""
        import torch.distributed as dist

        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value, group=self.group)
        return values

    def share(self, value: T) -> T:
        """The main process's ``value`` on every process (the others pass anything)."""
        import torch.distributed as dist

        holder = [value]
        dist.broadcast_object_list(holder, src=0, group=self.group)
        return holder[0]


_started: Processes | None = None


def processes(device: str = "auto") -> Processes | None:
    """This launch's processes when there are several (``WORLD_SIZE`` > 1), else None.

    The first call joins the processes (accelerate's ``PartialState``: gloo on CPU, NCCL on
    GPU with each process on its own device), so make it before a model is loaded;
    ``device`` is the model's (``cpu``: the processes join over gloo)."""
    global _started
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    if _started is None:
        import torch.distributed as dist
        from accelerate import PartialState

        from kinject.models.loading import resolve_device

        state = PartialState(cpu=resolve_device(device) == "cpu")
        if state.num_processes != world:
            raise KinjectError(
                f"WORLD_SIZE is {world} but accelerate joined {state.num_processes} "
                f"process(es) for device '{device}'; launch with `accelerate launch` or "
                "`torchrun` on a machine with that device"
            )
        group = dist.new_group(backend="gloo", timeout=WAIT)
        _started = Processes(state.process_index, state.num_processes, group)
    return _started


def on_main(compute: Callable[[], T]) -> T:
    """``compute()`` run by the main process alone, its result returned on every process.

    For work only one process may do: writing files, building caches, reading what the main
    process wrote.  The main process runs it as if launched alone (a training inside it
    uses no other process) while the others wait; if it fails, the others fail too."""
    group = processes()
    if group is None:
        return compute()
    if not group.main:
        done, value = group.share(None)
        if not done:
            raise KinjectError(f"the main process failed: {value}")
        return value
    try:
        with _alone():
            value = compute()
    except BaseException as error:
        group.share((False, f"{type(error).__name__}: {error}"))
        raise
    return group.share((True, value))[1]


@contextmanager
def _alone() -> Iterator[None]:
    """This process as the only one: ``WORLD_SIZE`` is what this module and the training
    loop (``kinject.training.loop``) read to find other processes."""
    saved = os.environ["WORLD_SIZE"]
    os.environ["WORLD_SIZE"] = "1"
    try:
        yield
    finally:
        os.environ["WORLD_SIZE"] = saved


def shard_requests(keys: Sequence[Hashable], lengths: Sequence[int], n: int) -> list[list[int]]:
    """The request indices each of ``n`` processes scores: requests sharing a key stay
    together; groups go, heaviest first (the sum of their requests' ``lengths``; ties: the
    earlier group), to the least-loaded process (ties: the lower rank); each shard is in
    request order.  Deterministic: every process computes the same shards."""
    if n < 1:
        raise ValueError(f"cannot shard over {n} processes")
    if len(keys) != len(lengths):
        raise ValueError(f"{len(keys)} keys but {len(lengths)} lengths")
    groups: dict[Hashable, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    members = list(groups.values())
    load = [sum(lengths[i] for i in group) for group in members]
    totals = [0] * n
    shards: list[list[int]] = [[] for _ in range(n)]
    for g in sorted(range(len(members)), key=lambda g: (-load[g], g)):
        rank = min(range(n), key=lambda r: (totals[r], r))
        shards[rank].extend(members[g])
        totals[rank] += load[g]
    return [sorted(shard) for shard in shards]


def _spread(group: Processes, shards: list[list[int]], mine: list, total: int) -> list:
    """Every shard's results, gathered from the processes, in request order."""
    results: list[Any] = [None] * total
    for shard, values in zip(shards, group.gather(mine)):
        if len(values) != len(shard):
            raise RuntimeError(f"a process returned {len(values)} results for {len(shard)}")
        for index, value in zip(shard, values):
            results[index] = value
    return results


class ParallelScorer:
    """A :class:`~kinject.scoring.loglikelihood.LoglikelihoodScorer` whose calls are split
    over the launch's processes; with one process (``group`` None) it is the scorer."""

    def __init__(self, scorer, group: Processes | None):
        self.scorer = scorer
        self.group = group

    def loglikelihood(
        self,
        requests: Sequence[tuple[str, str]],
        on_batch: Callable[[int], None] | None = None,
    ) -> list:
        if self.group is None:
            return self.scorer.loglikelihood(requests, on_batch)
        # Encoded once, as the scorer would: the context tokens are the packing key.
        encoded = [self.scorer.encode_pair(context, option) for context, option in requests]
        keys = [tuple(context) for context, _ in encoded]
        lengths = [len(context) + len(option) for context, option in encoded]
        shards = shard_requests(keys, lengths, self.group.size)
        shard = shards[self.group.rank]
        mine = (
            self.scorer.loglikelihood_tokens([encoded[i] for i in shard], on_batch) if shard else []
        )
        results = _spread(self.group, shards, mine, len(requests))
        if on_batch is not None and len(requests) > len(shard):
            on_batch(len(requests) - len(shard))  # the other processes' share, now done
        return results


class ParallelGenerator:
    """A :class:`~kinject.scoring.generation.GreedyGenerator` whose prompts are split over
    the launch's processes (balanced by tokens); with one process it is the generator."""

    def __init__(self, generator, group: Processes | None):
        self.generator = generator
        self.group = group

    def generate(
        self, prompts: Sequence[str], on_batch: Callable[[int], None] | None = None
    ) -> list[str]:
        if self.group is None:
            return self.generator.generate(prompts, on_batch)
        lengths = [len(self.generator.tokenizer.encode(prompt)) for prompt in prompts]
        shards = shard_requests(range(len(prompts)), lengths, self.group.size)
        shard = shards[self.group.rank]
        mine = self.generator.generate([prompts[i] for i in shard], on_batch) if shard else []
        results = _spread(self.group, shards, mine, len(prompts))
        if on_batch is not None and len(prompts) > len(shard):
            on_batch(len(prompts) - len(shard))
        return results
