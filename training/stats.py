"""Per-voxel statistics: session z-scoring, NSD noise ceiling, prediction scores.

All functions take ``[n_samples, n_voxels]`` arrays and work column-wise (one voxel per column).
"""
from __future__ import annotations

import warnings

import numpy as np

__all__ = ["zscore_columns", "noise_ceiling", "r2_columns", "pearson_columns", "bad_columns"]


def zscore_columns(x: np.ndarray) -> np.ndarray:
    """Z-score each column over its finite entries (population std, ddof=0) in float64.

    NaN/inf entries stay NaN and do not affect the column's mean and std; a column with fewer than
    two distinct finite values (constant, or all NaN) becomes NaN.
    """
    x = np.asarray(x, dtype=np.float64)
    x = np.where(np.isfinite(x), x, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        varies = np.nanmax(x, axis=0) > np.nanmin(x, axis=0)
        return (x - np.nanmean(x, axis=0)) / np.where(varies, np.nanstd(x, axis=0), np.nan)


def noise_ceiling(ncsnr: np.ndarray, n_repeats: np.ndarray) -> np.ndarray:
    """NSD noise ceiling as a fraction of variance for the test-split averages.

    ``ncsnr**2 / (ncsnr**2 + mean(1/n))`` where ``n`` is the number of trials averaged per test
    image: with A, B, C images seen 3, 2, 1 times this is the NSD manual's
    ``(A/3 + B/2 + C/1) / (A + B + C)`` (multiply by 100 for NSD's percent).
    """
    n_repeats = np.asarray(n_repeats)
    if n_repeats.size == 0 or np.any(n_repeats < 1):
        raise ValueError(f"`n_repeats` must be >= 1 for every test image, got {np.unique(n_repeats).tolist()}.")
    signal = np.asarray(ncsnr, dtype=np.float64) ** 2
    return signal / (signal + np.mean(1.0 / n_repeats))


def _finite_rows(a, b) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``a`` and ``b`` as float64 with the rows where either is NaN/inf zeroed per column, the mask and its count."""
    a = np.asarray(a, dtype=np.float64)
    b = np.broadcast_to(np.asarray(b, dtype=np.float64), a.shape)
    ok = np.isfinite(a) & np.isfinite(b)
    return np.where(ok, a, 0.0), np.where(ok, b, 0.0), ok, ok.sum(0)


def r2_columns(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Coefficient of determination per column, ``1 - SSE / SS_tot``, over the rows where both are finite
    (an NSD image with no finite trial for a voxel is left out of that voxel's score); NaN for constant targets."""
    y, p, ok, n = _finite_rows(y_true, y_pred)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = y.sum(0) / n
        sse = ((y - p) ** 2).sum(0)
        sst = (np.where(ok, y - mean, 0.0) ** 2).sum(0)
        return 1.0 - sse / np.where(sst > 0, sst, np.nan)


def pearson_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation per column over the rows where both are finite (NaN where either is constant)."""
    a, b, ok, n = _finite_rows(a, b)
    with np.errstate(invalid="ignore", divide="ignore"):
        a = np.where(ok, a - a.sum(0) / n, 0.0)
        b = np.where(ok, b - b.sum(0) / n, 0.0)
        den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
        return (a * b).sum(0) / np.where(den > 0, den, np.nan)


def bad_columns(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of columns holding any NaN/inf, and of finite columns that are constant."""
    finite = np.isfinite(y).all(axis=0)
    constant = finite & (np.ptp(np.where(np.isfinite(y), y, 0), axis=0) == 0)
    return np.flatnonzero(~finite), np.flatnonzero(constant)
