"""Accuracy with a binomial confidence interval (Wilson score) and confusion matrices."""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

__all__ = ["Accuracy", "accuracy", "wilson_interval", "confusion_matrix"]


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (well-behaved at 0 and n, unlike the normal interval)."""
    if n <= 0:
        raise ValueError(f"`n` must be >= 1 to give an interval, got {n}.")
    if not 0 <= successes <= n:
        raise ValueError(f"`successes` must be in [0, {n}], got {successes}.")
    if not 0 < confidence < 1:
        raise ValueError(f"`confidence` must be in (0, 1), got {confidence!r}.")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # the interval contains p, exactly at 0/n and n/n (rounding gives e.g. 2.8e-17 for 0/5, which plots as a
    # negative error bar)
    return min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))


@dataclass(frozen=True)
class Accuracy:
    """``correct`` of ``n`` with a Wilson interval at ``confidence``."""

    correct: int
    n: int
    low: float
    high: float
    confidence: float = 0.95

    @property
    def value(self) -> float:
        return self.correct / self.n


def accuracy(correct, confidence: float = 0.95) -> Accuracy:
    """Accuracy of a sequence of booleans with its Wilson interval."""
    flags = np.asarray(correct, dtype=bool).reshape(-1)
    k, n = int(flags.sum()), int(flags.size)
    low, high = wilson_interval(k, n, confidence)
    return Accuracy(k, n, low, high, confidence)


def confusion_matrix(true, predicted, labels) -> np.ndarray:
    """Counts ``[len(labels), len(labels)]``: row = true label, column = predicted label."""
    index = {name: i for i, name in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in zip(true, predicted, strict=True):
        for name in (t, p):
            if name not in index:
                raise ValueError(f"Label must be one of {list(labels)}, got {name!r}.")
        matrix[index[t], index[p]] += 1
    return matrix
