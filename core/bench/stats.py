"""Statistics shared by the benchmarks: every standard error is over the sampled unit (an identity, a prompt), so
per-image figures are averaged per unit first."""
from __future__ import annotations

import numpy as np


def mean_sem(per_unit) -> tuple[float, float]:
    """Mean and standard error of the mean of one value per sampled unit (NaN s.e. for fewer than 2 units)."""
    x = np.asarray(per_unit, dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan")
    sem = float(x.std(ddof=1) / np.sqrt(x.size)) if x.size > 1 else float("nan")
    return float(x.mean()), sem


def per_unit_means(values, units) -> np.ndarray:
    """The mean of ``values`` within each unit (``units[i]`` names the unit of ``values[i]``), in first-seen order."""
    order, sums, counts = [], {}, {}
    for v, u in zip(np.asarray(values, dtype=np.float64), units):
        if u not in sums:
            order.append(u)
            sums[u], counts[u] = 0.0, 0
        sums[u] += v
        counts[u] += 1
    return np.asarray([sums[u] / counts[u] for u in order])
