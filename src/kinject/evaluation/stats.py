"""Confidence intervals for accuracies."""

from __future__ import annotations

from collections.abc import Sequence


def bootstrap_ci(
    outcomes: Sequence[float], seed: int, resamples: int = 1000, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``outcomes`` (0/1 per question), seeded."""
    import numpy as np

    values = np.asarray(outcomes, dtype=float)
    if values.size == 0:
        raise ValueError("bootstrap_ci needs at least one outcome")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 256):  # chunks bound memory for large question sets
        stop = min(resamples, start + 256)
        picks = rng.integers(0, values.size, size=(stop - start, values.size))
        means[start:stop] = values[picks].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return round(float(low), 4), round(float(high), 4)
