"""Voxelwise ridge regression with a per-voxel alpha chosen by cross-validation.

Two solvers give the same model (same folds, same R^2 scoring, best alpha = highest mean CV R^2):

* ``"svd"`` (default): primal SVD of the centred training features per fold. With ``A = X_val V``,
  ``C = U^T Y_train`` and ``d = s / (s^2 + alpha)``, the validation predictions are ``A diag(d) C``
  and their squared error per voxel is ``|y|^2 - 2 d.(A^T y * C) + z.(A^T A z)`` with
  ``z = diag(d) C``: per alpha this costs ``n_features^2 x n_voxels`` operations, against
  ``n_val x n_train x n_voxels`` for himalaya's ``solve_ridge_cv_svd``, which multiplies the
  ``[n_val, n_train]`` hat matrix of each alpha with Y (see benchmarks/training.py).
* ``"himalaya"``: ``himalaya.ridge.solve_ridge_cv_svd`` itself (the reference).

Both run on a himalaya backend (``"torch"`` on CPU, ``"torch_cuda"`` on GPU), in float32, with an
intercept: features and targets are centred on the training mean of each fold and of the final
refit; the bias is ``mean(Y) - mean(X) @ W``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from himalaya.backend import get_backend, set_backend
from himalaya.ridge import solve_ridge_cv_svd
from himalaya.scoring import r2_score
from tqdm import tqdm

__all__ = ["DEFAULT_ALPHAS", "RidgeFit", "SOLVERS", "cv_splits", "fit_ridge_cv", "parse_alphas"]

DEFAULT_ALPHAS = "logspace:-2:5:15"


def parse_alphas(spec: str) -> np.ndarray:
    """``"logspace:START:STOP:NUM"`` (powers of ten) or comma-separated positive values -> sorted array."""
    try:
        if spec.startswith("logspace:"):
            start, stop, num = spec.split(":")[1:]
            alphas = np.logspace(float(start), float(stop), int(num))
        else:
            alphas = np.array([float(a) for a in spec.split(",") if a.strip()])
    except ValueError as exc:
        raise ValueError(f"`--alphas` must be 'logspace:START:STOP:NUM' or comma-separated numbers, "
                         f"got {spec!r}.") from exc
    if alphas.size == 0 or np.any(alphas <= 0) or not np.all(np.isfinite(alphas)):
        raise ValueError(f"`--alphas` must be positive finite numbers, got {spec!r}.")
    return np.unique(alphas)


def cv_splits(n_samples: int, n_splits: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Shuffled K-fold ``(train, validation)`` index pairs with a fixed seed.

    Shuffled because image order may follow file names or categories; the folds are those of
    scikit-learn's ``KFold(n_splits, shuffle=True, random_state=0)``.
    """
    if not 2 <= n_splits <= n_samples:
        raise ValueError(f"`--cv` must be between 2 and the {n_samples} training images, got {n_splits}.")
    folds = np.array_split(np.random.RandomState(0).permutation(n_samples), n_splits)
    everything = np.arange(n_samples)
    return [(np.setdiff1d(everything, fold), np.sort(fold)) for fold in folds]


@dataclass
class RidgeFit:
    """A fitted voxelwise ridge model: ``Y ~ X @ weights + bias``."""

    weights: np.ndarray      # [n_features, n_targets]
    bias: np.ndarray         # [n_targets]
    best_alphas: np.ndarray  # [n_targets]
    cv_r2: np.ndarray        # [n_targets] mean CV R^2 at the chosen alpha


def _numpy(x) -> np.ndarray:
    return np.asarray(get_backend().to_numpy(x), dtype=np.float64)


def _solve_svd(X, Y, alphas, splits, n_targets_batch: int, progress: bool) -> RidgeFit:
    B = get_backend()
    n_targets = Y.shape[1]
    batches = [slice(s, min(s + n_targets_batch, n_targets)) for s in range(0, n_targets, n_targets_batch)]
    scores = np.zeros((len(alphas), n_targets))
    bar = tqdm(total=len(splits) * len(batches), desc="ridge CV", unit="block", disable=not progress)
    alphas_b = B.asarray(alphas, dtype="float32")
    for train, val in splits:
        x_mean = X[train].mean(0)
        U, s, Vt = B.svd(B.asarray(X[train] - x_mean), full_matrices=False)
        a = B.asarray(X[val] - x_mean) @ Vt.T  # validation features in the SVD basis
        gram = a.T @ a
        d = s[None, :] / (s[None, :] ** 2 + alphas_b[:, None])  # [n_alphas, k] ridge shrinkage
        for cols in batches:
            y_mean = Y[train, cols].mean(0)
            c = U.T @ B.asarray(Y[train, cols] - y_mean)
            y_val = B.asarray(Y[val, cols] - y_mean)
            # SSE of pred = a @ z for all alphas at once, without forming pred: |y|^2 - 2 y.pred + |pred|^2
            z = d[:, :, None] * c[None]
            sse = (y_val**2).sum(0) - 2 * (d @ ((a.T @ y_val) * c)) + ((gram @ z) * z).sum(1)
            sst = ((y_val - y_val.mean(0)) ** 2).sum(0)
            scores[:, cols] += _numpy(1 - sse / sst)
            bar.update()
    bar.close()
    scores /= len(splits)
    best = np.argmax(scores, axis=0)

    x_mean = X.mean(0)
    U, s, Vt = B.svd(B.asarray(X - x_mean), full_matrices=False)
    weights = np.zeros((X.shape[1], n_targets), np.float32)
    bias = np.zeros(n_targets, np.float32)
    best_alphas = np.asarray(alphas)[best]
    for cols in batches:
        y_mean = Y[:, cols].mean(0)
        shrink = s[:, None] / (s[:, None] ** 2 + B.asarray(best_alphas[cols], dtype="float32")[None, :])
        weights[:, cols] = _numpy(Vt.T @ (shrink * (U.T @ B.asarray(Y[:, cols] - y_mean))))
        bias[cols] = y_mean - x_mean @ weights[:, cols]
    return RidgeFit(weights, bias, best_alphas, scores[best, np.arange(n_targets)])


def _solve_himalaya(X, Y, alphas, splits, n_targets_batch: int, progress: bool) -> RidgeFit:
    B = get_backend()
    best_alphas, coefs, cv_scores, intercept = solve_ridge_cv_svd(
        B.asarray(X), B.asarray(Y), alphas=B.asarray(alphas, dtype="float32"), fit_intercept=True,
        score_func=r2_score, cv=splits, n_targets_batch=n_targets_batch, warn=False)
    return RidgeFit(_numpy(coefs).astype(np.float32), _numpy(intercept).astype(np.float32),
                    _numpy(best_alphas), _numpy(cv_scores))


SOLVERS = {"svd": _solve_svd, "himalaya": _solve_himalaya}


def fit_ridge_cv(X: np.ndarray, Y: np.ndarray, alphas, *, cv: int = 5, solver: str = "svd", backend: str = "torch",
                 n_targets_batch: int = 4096, progress: bool = True) -> RidgeFit:
    """Fit ``Y [n, n_targets] ~ X [n, n_features]`` with the best of ``alphas`` per target (K-fold CV R^2).

    Targets must be finite and non-constant (see ``training.stats.bad_columns``).
    """
    if solver not in SOLVERS:
        raise ValueError(f"`solver` must be one of {sorted(SOLVERS)}, got {solver!r}.")
    if n_targets_batch < 1:
        raise ValueError(f"`n_targets_batch` must be >= 1, got {n_targets_batch}.")
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"Features have {X.shape[0]} rows but responses have {Y.shape[0]}.")
    if not np.all(np.isfinite(Y)):
        raise ValueError("Responses passed to fit_ridge_cv must be finite; drop NaN voxels first.")
    set_backend(backend, on_error="raise")
    X = np.ascontiguousarray(X, dtype=np.float32)
    Y = np.ascontiguousarray(Y, dtype=np.float32)
    splits = cv_splits(X.shape[0], cv)
    return SOLVERS[solver](X, Y, np.asarray(alphas, dtype=np.float64), splits, n_targets_batch, progress)
