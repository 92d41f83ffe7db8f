"""Fit a CLIP + linear encoder on an encoding dataset (``python -m training.train_encoder``).

Features of the training images are extracted once (cached), then a voxelwise ridge regression with
a per-voxel alpha chosen by K-fold CV is fit (``training.ridge``), and the result is saved as a
``ClipLinearEncoder`` checkpoint that ``braindive.load_encoder`` reads. Voxels with NaN/inf or
constant training responses are left out of the fit: their head rows are zero and their bias is
their mean response; they are listed in ``config.training["dropped_voxels"]``.

An encoder of a subject that is not built in (e.g. a prepared NSD subject, or S1 with ROIs added by
``prepare_generic --rois``: ``braindive.subjects.is_built_in``) gets that subject's file
in its checkpoint folder (``subject.npz``, the subject stored in the dataset), named in
``config.training["subject_file"]`` relative to the folder, so the checkpoint can be moved or
uploaded with it; the app finds the subject there.
"""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from braindive.encoders import SUBJECT_NAME
from braindive.subjects import is_built_in

from .dataset import open_dataset
from .features import build_encoder, dataset_features, resolve_device
from .logs import cli_errors, configure_logging
from .ridge import DEFAULT_ALPHAS, SOLVERS, fit_ridge_cv, parse_alphas
from .stats import bad_columns

__all__ = ["TrainResult", "train_encoder", "versions", "main"]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    path: Path
    summary: dict


def versions() -> dict:
    """Versions of the packages that determine a fit."""
    import himalaya
    import open_clip

    import braindive

    return {"braindive": braindive.__version__, "torch": torch.__version__, "open_clip": open_clip.__version__,
            "himalaya": himalaya.__version__, "numpy": np.__version__}


def _quantiles(values: np.ndarray) -> dict:
    values = values[np.isfinite(values)]
    if not values.size:
        return {"n": 0}
    return {"n": int(values.size), "mean": float(values.mean()), "median": float(np.median(values)),
            "p90": float(np.quantile(values, 0.9)), "max": float(values.max())}


def _fallback_bias(y: np.ndarray) -> np.ndarray:
    """Mean of the finite values of each column (0 where there are none)."""
    finite = np.isfinite(y)
    total = np.where(finite, y, 0).sum(0)
    count = finite.sum(0)
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def train_encoder(data, out, *, backbone: str = "ViT-B-16", pretrained: str | None = "laion2b_s34b_b88k",
                  device: str = "auto", batch_size: int = 64, alphas: str = DEFAULT_ALPHAS, cv: int = 5,
                  solver: str = "svd", n_targets_batch: int = 4096) -> TrainResult:
    """Fit an encoder on dataset ``data`` and save the checkpoint folder ``out``."""
    alpha_grid = parse_alphas(alphas)
    dev = resolve_device(device)
    with open_dataset(data) as ds:
        encoder = build_encoder(ds.subject, backbone, pretrained)
        t0 = time.perf_counter()
        X = dataset_features(encoder, ds, "train", batch_size=batch_size, device=str(dev))
        feature_seconds = time.perf_counter() - t0
        Y = ds.betas("train")
        subject = ds.subject
        dataset_info = {"dataset": str(Path(data).resolve()), "dataset_images_sha256": ds.images_sha256,
                        "dataset_source": ds.source, "subject": subject.name}
    nan_voxels, constant_voxels = bad_columns(Y)
    good = np.ones(Y.shape[1], bool)
    good[nan_voxels] = good[constant_voxels] = False
    if not good.any():
        raise ValueError(f"No voxel of {data} has finite, non-constant training responses.")
    if len(nan_voxels) or len(constant_voxels):
        log.warning("dropped from the fit: %d voxels with NaN/inf, %d constant voxels",
                    len(nan_voxels), len(constant_voxels))

    t0 = time.perf_counter()
    fit = fit_ridge_cv(X, Y[:, good], alpha_grid, cv=cv, solver=solver, n_targets_batch=n_targets_batch,
                       backend="torch_cuda" if dev.type == "cuda" else "torch")
    fit_seconds = time.perf_counter() - t0

    weight = np.zeros((Y.shape[1], X.shape[1]), np.float32)
    bias = _fallback_bias(Y).astype(np.float32)
    weight[good] = fit.weights.T
    bias[good] = fit.bias
    encoder = encoder.cpu()
    encoder.head.weight.data = torch.from_numpy(weight)
    encoder.head.bias.data = torch.from_numpy(bias)

    chosen, counts = np.unique(fit.best_alphas, return_counts=True)
    summary = {
        **dataset_info,
        "n_train": int(Y.shape[0]), "n_voxels": int(Y.shape[1]), "n_voxels_fit": int(good.sum()),
        "n_features": int(X.shape[1]), "alphas": [float(a) for a in alpha_grid],
        "best_alpha_counts": {f"{a:g}": int(c) for a, c in zip(chosen, counts)},
        "cv_folds": cv, "cv_splits": "shuffled K-fold, seed 0 (= sklearn KFold(shuffle=True, random_state=0))",
        "cv_r2": _quantiles(fit.cv_r2),
        "solver": solver, "device": str(dev), "batch_size": batch_size,
        "feature_seconds": round(feature_seconds, 3), "fit_seconds": round(fit_seconds, 3),
        "dropped_voxels": {"nan": nan_voxels.tolist(), "constant": constant_voxels.tolist()},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "versions": versions(),
    }
    if not is_built_in(subject):  # e.g. an NSD subject, or S1 with ROIs added by prepare_generic --rois
        Path(out).mkdir(parents=True, exist_ok=True)
        subject.save(Path(out) / SUBJECT_NAME)
        summary["subject_file"] = SUBJECT_NAME
    encoder.config.training = summary
    path = encoder.save(out)
    log.info("encoder saved to %s: %d/%d voxels fit on %d images; CV R^2 median %.3f (mean %.3f); "
             "features %.1f s, ridge %.1f s", path, good.sum(), Y.shape[1], Y.shape[0],
             summary["cv_r2"].get("median", float("nan")), summary["cv_r2"].get("mean", float("nan")),
             feature_seconds, fit_seconds)
    return TrainResult(path=path, summary=summary)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.train_encoder", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset .h5 from training.prepare_*")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--backbone", default="ViT-B-16", help="OpenCLIP model name, or braindive-tiny-vit")
    p.add_argument("--pretrained", default="laion2b_s34b_b88k", help="OpenCLIP pretrained tag, or 'none'")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--alphas", default=DEFAULT_ALPHAS, help="'logspace:START:STOP:NUM' or a comma list")
    p.add_argument("--cv", type=int, default=5, help="number of CV folds")
    p.add_argument("--solver", default="svd", choices=sorted(SOLVERS))
    p.add_argument("--targets-batch", type=int, default=4096, help="voxels per ridge block (memory)")
    return p


def main(argv=None) -> TrainResult:
    args = _parser().parse_args(argv)
    configure_logging()
    with cli_errors():
        return train_encoder(args.data, args.out, backbone=args.backbone, pretrained=args.pretrained,
                             device=args.device, batch_size=args.batch_size, alphas=args.alphas, cv=args.cv,
                             solver=args.solver, n_targets_batch=args.targets_batch)


if __name__ == "__main__":
    main()
