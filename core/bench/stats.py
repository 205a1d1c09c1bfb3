"""Statistics shared by the benchmarks: every standard error is over the sampled unit (an identity, a prompt), so
per-image figures are averaged per unit first."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def mean_sem(per_unit) -> tuple[float, float]:
    """Mean and standard error (ddof=1) of one value per sampled unit (NaN s.e. for fewer than 2 units)."""
    x = np.asarray(per_unit, dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan")
    sem = float(x.std(ddof=1) / np.sqrt(x.size)) if x.size > 1 else float("nan")
    return float(x.mean()), sem


def identity_mean_sem(per_identity: Sequence[Sequence[float]]) -> tuple[float, float]:
    """(mean, standard error) over IDENTITIES: each identity's values are averaged first (identities without values
    are left out), then :func:`mean_sem` of those means."""
    return mean_sem([float(np.mean(v)) for v in per_identity if len(v)])
