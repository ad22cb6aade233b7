"""Rank agreement between two scorings of the same architectures (a proxy
and a reference training), with a bootstrap interval: scipy's statistics,
made total (nan where a side is constant, without warnings)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats


def ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks from 1, ties sharing their mean rank."""
    return stats.rankdata(np.asarray(values, dtype=np.float64))


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho; nan when a side is constant."""
    return _defined(stats.spearmanr, x, y)


def kendall(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (ties in either variable corrected); nan when a
    side is constant."""
    return _defined(stats.kendalltau, x, y)


def _defined(statistic: Callable, x, y) -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(statistic(x, y).statistic)


def bootstrap_interval(
    x: Sequence[float],
    y: Sequence[float],
    statistic: Callable[[np.ndarray, np.ndarray], float],
    *,
    samples: int = 1000,
    confidence: float = 0.9,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic(x, y)` over pairs
    resampled with replacement; resamples where it is undefined (a
    constant side) are left out. (nan, nan) when none is defined."""
    rng = np.random.default_rng(seed)
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    values = []
    for _ in range(samples):
        pick = rng.integers(0, len(x), len(x))
        value = statistic(x[pick], y[pick])
        if not math.isnan(value):
            values.append(value)
    if not values:
        return math.nan, math.nan
    tail = (1 - confidence) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return float(low), float(high)
