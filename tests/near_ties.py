"""Comparing discrete results (a chosen option, "is greedy") that two code paths compute from
floats which agree only up to summation order.

Another batch composition, padding width or packing makes the math libraries pick other
kernels, and on some CPUs (AVX-512, AMX) the logits then differ in their last bits.  An
argmax computed from them is the same unless the two best values are within that rounding of
each other, so these helpers ask for the same choice wherever the reference's margin is
larger than a stated tolerance, and check that a disagreement is a near tie of the reference
(which a real bug would not be).  Each also requires most comparisons to be clear, so that a
test cannot pass by finding everything tied.
"""

from __future__ import annotations

from collections.abc import Sequence

# Two log-likelihoods this close may be ordered either way by another kernel: fp32 sums of a
# few hundred terms agree to ~1e-5 in these tests (the parity bound is 1e-4).
TIE = 1e-4


def margin(values: Sequence[float]) -> float:
    """How far the best value is above the second best (inf for one value)."""
    ordered = sorted(values, reverse=True)
    return ordered[0] - ordered[1] if len(ordered) > 1 else float("inf")


def first_max(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


def assert_same_choice(
    ours: Sequence[float], theirs: Sequence[float], tolerance: float = TIE, label: str = ""
) -> bool:
    """The same argmax as the reference ``theirs``, unless its two best are within
    ``tolerance`` (a near tie: either choice is right).  Returns whether the choice was clear."""
    if margin(theirs) <= tolerance:
        return False
    assert first_max(ours) == first_max(theirs), (label, list(ours), list(theirs))
    return True


def assert_mostly_clear(clear: Sequence[bool], share: float = 0.9) -> None:
    """At least ``share`` of the comparisons were clear, so the test compared something."""
    assert clear and sum(clear) >= share * len(clear), f"{sum(clear)} of {len(clear)} clear"


def greedy_margin(model, context: list[int], continuation: list[int]) -> float:
    """The smallest gap, over the continuation's tokens, between the token's log-probability
    and the best other token's: where it is within rounding, "is greedy" can go either way."""
    import torch

    ids = torch.tensor([(context + continuation)[:-1]])
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(ids, use_cache=False).logits[0].double(), dim=-1)
    rows = logprobs[len(context) - 1 :]
    gaps = []
    for row, token in zip(rows, continuation):
        target = float(row[token])
        row = row.clone()
        row[token] = float("-inf")
        gaps.append(abs(target - float(row.max())))
    return min(gaps)


def assert_same_greedy(
    model, encoded, ours: Sequence[bool], theirs: Sequence[bool], tolerance: float = TIE
) -> None:
    """``is_greedy`` flags agree, but where the reference is a near tie at some token.

    ``encoded``: the requests' ``(context tokens, continuation tokens)``."""
    assert len(ours) == len(theirs) == len(encoded)
    for (context, continuation), a, b in zip(encoded, ours, theirs):
        if a != b:
            gap = greedy_margin(model, context, continuation)
            assert gap <= tolerance, f"is_greedy {a} vs {b} with a margin of {gap:.2e}"


def greedy_passes_a_near_tie(
    model, tokenizer, prompt: str, max_new_tokens: int, stop: str = "\n", tolerance: float = TIE
) -> bool:
    """Whether greedy decoding of ``prompt`` alone (until ``stop`` or EOS) meets a step whose
    two best next tokens are within ``tolerance``: only there can batched generation, whose
    logits differ in their last bits, take another token."""
    import torch

    ids, new = tokenizer(prompt).input_ids, []
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            logits = model(torch.tensor([ids + new]), use_cache=False).logits[0, -1].double()
            best, second = torch.topk(logits, 2).values.tolist()
            if best - second <= tolerance:
                return True
            token = int(logits.argmax())
            if token == tokenizer.eos_token_id:
                return False
            new.append(token)
            if stop and stop in tokenizer.decode(new, skip_special_tokens=True):
                return False
    return False


def assert_same_generations(
    model, tokenizer, prompts: Sequence[str], ours, theirs, max_new_tokens: int
) -> None:
    """The same greedy answers, but where the prompt's greedy decoding meets a near tie."""
    assert len(ours) == len(theirs) == len(prompts)
    for prompt, a, b in zip(prompts, ours, theirs):
        if a != b:
            assert greedy_passes_a_near_tie(model, tokenizer, prompt, max_new_tokens), (a, b)
