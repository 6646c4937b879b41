"""Batches cut by a memory budget: as many rows as fit at each batch's width, the same scores
as fixed batches, and `batch_size: auto` in a config."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from kinject.config import ScoringConfig
from kinject.scoring.batching import BatchPlan, activation_bytes, batch_options
from kinject.scoring.generation import GreedyGenerator
from kinject.scoring.loglikelihood import LoglikelihoodScorer
from near_ties import assert_same_generations, assert_same_greedy


def _requests() -> list[tuple[str, str]]:
    """Questions of very different lengths, options of one and several tokens."""
    requests = []
    for q in range(12):
        context = "Ada Lenz was born in Riga and studied in Oslo. " * (1 + 3 * q) + "Answer:"
        for option in (" Riga", " Oslo, in Norway", " B"):
            requests.append((context, option))
    return requests


def test_a_plan_fits_more_short_rows_than_long_ones_and_covers_every_sequence(tiny_llama_dir):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_llama_dir)
    budget = 40 * activation_bytes(config, 64)
    plan = BatchPlan(config, None, budget)
    assert plan.rows(64) == 40
    assert plan.rows(640) < plan.rows(64) / 10  # attention grows with the square
    assert plan.rows(64, cached=640) < plan.rows(64)  # the keys of a cached prefix count
    assert BatchPlan(config, None, 1).rows(64) == 1  # never fewer than one row
    assert BatchPlan(config, 8, budget).rows(64) == 8  # the row cap holds under the budget
    widths = [64, 640, 5, 300, 64, 1000, 12]
    batches = plan.batches(widths)
    assert sorted(i for batch in batches for i in batch) == list(range(len(widths)))
    firsts = [widths[batch[0]] for batch in batches]
    assert firsts == sorted(firsts, reverse=True)  # longest first
    for batch in batches:
        assert all(widths[i] <= widths[batch[0]] for i in batch)
        assert len(batch) == 1 or len(batch) * activation_bytes(config, widths[batch[0]]) <= budget


def test_a_memory_budget_gives_the_fixed_batches_scores(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    requests = _requests()
    fixed = LoglikelihoodScorer(model, tokenizer, batch_size=4).loglikelihood(requests)
    rows: list[tuple[int, int, int, int | None]] = []

    def record(module, args, kwargs, output):
        ids = kwargs.get("input_ids", args[0] if args else None)
        cache = kwargs.get("cache")
        keep = kwargs.get("logits_to_keep")
        kept = None if keep is None else keep.shape[-1] if hasattr(keep, "shape") else keep
        cached = cache.get_seq_length() - ids.shape[1] if cache else 0  # after the update
        rows.append((ids.shape[0], ids.shape[1], cached, kept))

    hook = model.register_forward_hook(record, with_kwargs=True)
    budget = 6 * activation_bytes(model.config, 40)
    planned = LoglikelihoodScorer(model, tokenizer, batch_size=None, memory_budget=budget)
    scores = planned.loglikelihood(requests)
    hook.remove()
    assert max(abs(a.logprob - b.logprob) for a, b in zip(scores, fixed)) <= 1e-4
    encoded = [planned.encode_pair(context, option) for context, option in requests]
    assert_same_greedy(model, encoded, [a.is_greedy for a in scores], [b.is_greedy for b in fixed])
    assert len({n for n, *_ in rows}) > 1  # short batches took more rows than long ones
    for n, width, cached, kept in rows:
        assert n == 1 or n * activation_bytes(model.config, width, cached, kept) <= budget

    generator = GreedyGenerator(model, tokenizer, None, max_new_tokens=4, memory_budget=budget)
    answers = generator.generate([context for context, _ in requests[::3]])
    prompts = [context for context, _ in requests[::3]]
    fixed_answers = GreedyGenerator(model, tokenizer, 3, max_new_tokens=4).generate(prompts)
    assert_same_generations(model, tokenizer, prompts, answers, fixed_answers, 4)


def test_batch_size_auto_takes_the_default_budget_and_bad_sizes_are_refused(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    auto = batch_options(ScoringConfig(batch_size="auto"), model)
    assert auto["batch_size"] is None and auto["memory_budget"] > 0
    capped = batch_options(ScoringConfig(batch_size=8, memory_budget_gb=0.5), model)
    assert capped == {"batch_size": 8, "memory_budget": 2**29}
    assert batch_options(ScoringConfig(), model) == {"batch_size": 32, "memory_budget": None}
    for bad in (0, "big", -3):
        with pytest.raises(ValidationError, match="batch_size"):
            ScoringConfig(batch_size=bad)
