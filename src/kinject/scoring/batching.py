"""How many sequences a forward pass takes: a row cap, and a memory budget.

Batches are cut from sequences sorted longest first, so a batch is padded to its first
sequence's width and no further.  Under a memory budget the rows of a batch are as many as
the budget holds at that width: short sequences go many to a pass, long ones few.

The memory of a pass is estimated from the model's configuration (inference: no gradients,
one layer's activations alive at a time, plus every layer's keys and values when a cache is
kept)::

    per row = dtype bytes × ( width × (6 × hidden + 3 × intermediate)      activations
                            + heads × width × (cached + width)             attention scores
                            + 2 × layers × kv width × (cached + width) )   keys and values
              + 2 × 4 bytes × kept positions × vocabulary                  fp32 logits, log-softmax

The attention term is that of the plain (math) kernel, the largest; fused kernels use less.
The estimate is checked against measured peaks by ``bench/batch_memory.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

# Rows of one pass under a budget at most: more gains nothing on any device.
MAX_AUTO_ROWS = 512


def activation_bytes(config, width: int, cached: int = 0, kept: int | None = None) -> int:
    """Estimated bytes one row of ``width`` tokens needs in a forward pass (see the module)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = _first(text, "hidden_size", "n_embd", "d_model")
    layers = _first(text, "num_hidden_layers", "n_layer", "num_layers")
    heads = _first(text, "num_attention_heads", "n_head", "num_heads")
    intermediate = _first(text, "intermediate_size", "n_inner", "ffn_dim", default=4 * hidden)
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    vocab = _first(text, "vocab_size")
    dtype = getattr(text, "dtype", None) or getattr(text, "torch_dtype", None)
    size = 2 if str(dtype).endswith(("bfloat16", "float16")) else 4
    keys = cached + width
    per_row = size * (
        width * (6 * hidden + 3 * intermediate)
        + heads * width * keys
        + 2 * layers * kv_heads * head_dim * keys
    )
    return per_row + 2 * 4 * (width if kept is None else kept) * vocab


def _first(config, *names: str, default: int | None = None) -> int:
    for name in names:
        value = getattr(config, name, None)
        if value:
            return int(value)
    if default is not None:
        return default
    raise ValueError(f"the model's configuration has none of {', '.join(names)}")


def default_budget(device) -> int:
    """Bytes a forward pass may use when the config names no budget: 80% of the device
    memory free now (CUDA), or a quarter of the RAM available now (CPU)."""
    if getattr(device, "type", device) == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.8)
    import psutil

    return psutil.virtual_memory().available // 4


def batch_options(scoring, model) -> dict:
    """The scorer's ``batch_size`` and ``memory_budget`` a
    :class:`~kinject.config.ScoringConfig` asks for: ``batch_size`` rows at most (``auto``:
    no cap), under ``memory_budget_gb`` (unset with ``auto``: the device's default)."""
    rows = None if scoring.batch_size == "auto" else scoring.batch_size
    if scoring.memory_budget_gb is not None:
        budget = int(scoring.memory_budget_gb * 2**30)
    elif rows is None:
        budget = default_budget(next(model.parameters()).device)
    else:
        budget = None
    return {"batch_size": rows, "memory_budget": budget}


class BatchPlan:
    """Rows per forward pass: at most ``max_rows``; under ``budget`` bytes, as many as the
    model's estimated memory at the batch's width allows (at least one)."""

    def __init__(self, config, max_rows: int | None, budget: int | None):
        if max_rows is None and budget is None:
            raise ValueError("a batch plan needs a row cap, a memory budget or both")
        self.config = config
        self.max_rows = max_rows
        self.budget = budget

    def rows(self, width: int, cached: int = 0, kept: int | None = None) -> int:
        cap = self.max_rows or MAX_AUTO_ROWS
        if self.budget is None:
            return cap
        fits = self.budget // max(1, activation_bytes(self.config, width, cached, kept))
        return max(1, min(cap, fits))

    def batches(
        self, widths: Sequence[int], cached: int = 0, kept: Sequence[int] | None = None
    ) -> list[list[int]]:
        """Indices of ``widths`` in batches, longest first; each batch as many rows as fit
        at its first (widest) row's width."""
        order = sorted(range(len(widths)), key=lambda i: -widths[i])
        batches, begin = [], 0
        while begin < len(order):
            first = order[begin]
            rows = self.rows(widths[first], cached, None if kept is None else max(kept))
            batches.append(order[begin : begin + rows])
            begin += rows
        return batches
