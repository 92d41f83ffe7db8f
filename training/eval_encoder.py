"""Evaluate an encoder on the test split of a dataset (``python -m training.eval_encoder``).

Writes to ``--out``: ``report.json`` (summary, per-ROI medians), ``voxels.npz`` (per-voxel R^2,
Pearson r, noise ceiling and normalised R^2) and ``r2_flatmap.png`` when the subject lives on a
pycortex surface and ``braindive.flatmap`` can draw it (otherwise the report says why not).
Noise-ceiling-normalised R^2 is ``R^2 / NC`` for voxels whose ceiling NC (a fraction) is known and > 0.
"""
from __future__ import annotations

import argparse
import json
import logging
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from braindive.encoders import load_encoder

from .dataset import open_dataset
from .features import dataset_features
from .logs import cli_errors, configure_logging
from .stats import pearson_columns, r2_columns

__all__ = ["evaluate", "save_r2_flatmap", "main"]

log = logging.getLogger(__name__)

FSAVERAGE_HINT = ("pycortex needs the fsaverage subject: python -c \"import cortex; "
                  "cortex.utils.download_subject('fsaverage')\"")


def _median(values: np.ndarray) -> float | None:
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else None


def _summary(values: np.ndarray) -> dict:
    finite = values[np.isfinite(values)]
    return {"median": _median(values), "mean": float(finite.mean()) if finite.size else None, "n": int(finite.size)}


def save_r2_flatmap(r2: np.ndarray, subject, path: Path) -> tuple[str | None, str | None]:
    """Draw ``r2`` on the subject's flatmap; returns (file name, None) or (None, why it was skipped)."""
    if not subject.drawable:
        hint = f"; {FSAVERAGE_HINT}" if subject.surface == "fsaverage" else ""
        return None, f"subject {subject.label!r} has no pycortex surface/transform to draw on: no flatmap{hint}"
    try:
        from braindive.flatmap import save_flatmap
    except ImportError as exc:
        return None, f"braindive.flatmap is not available ({exc}): no flatmap"
    finite = r2[np.isfinite(r2)]
    vmax = max(0.05, float(np.quantile(finite, 0.99))) if finite.size else 1.0
    try:
        save_flatmap(r2, subject, path, rois=True, cmap="inferno", vmin=0.0, vmax=vmax,
                     title=f"{subject.name}: test R^2")
    except Exception as exc:  # pycortex failures (missing subject, no flat surface) must not lose the report
        hint = f"; {FSAVERAGE_HINT}" if subject.surface == "fsaverage" else ""
        return None, f"flatmap failed: {type(exc).__name__}: {exc}{hint}"
    return path.name, None


def public_name(path, base) -> str:
    """``path`` as a report names it: relative to ``base`` when inside it, else its file name (None: as given)."""
    if base is None:
        return str(path)
    resolved, base = Path(path).resolve(), Path(base).resolve()
    return resolved.relative_to(base).as_posix() if resolved.is_relative_to(base) else resolved.name


def evaluate(encoder_path, data, out, *, device: str = "auto", batch_size: int = 64, relative_to=None) -> dict:
    """Score encoder ``encoder_path`` on the test split of ``data``; write the report into ``out``.

    ``relative_to`` (the app's data folder): the report names the encoder and dataset relative to it (or by
    file name when outside it), never by an absolute server path, since the app serves the report.
    """
    out = Path(out)
    with open_dataset(data) as ds:
        subject = ds.subject
        encoder = load_encoder(encoder_path, subject=subject)
        features = dataset_features(encoder, ds, "test", batch_size=batch_size, device=device)
        y_true = ds.betas("test")
        ceiling = ds.noise_ceiling
    with torch.no_grad():
        head = encoder.head.cpu().float()
        y_pred = head(torch.from_numpy(features)).numpy()
    r2 = r2_columns(y_true, y_pred)
    r = pearson_columns(y_true, y_pred)
    known = np.isfinite(ceiling) & (ceiling > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r2_norm = np.where(known, r2 / np.where(known, ceiling, 1.0), np.nan)
    rois = {}
    for name in subject.roi_names:
        idx = subject.roi(name)
        rois[name] = {"n_voxels": int(len(idx)), "median_r2": _median(r2[idx]), "median_r": _median(r[idx]),
                      "median_noise_ceiling": _median(ceiling[idx]), "median_r2_normalized": _median(r2_norm[idx])}
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "voxels.npz", r2=r2, pearson_r=r, noise_ceiling=ceiling, r2_normalized=r2_norm)
    flatmap, note = save_r2_flatmap(r2, subject, out / "r2_flatmap.png")
    if note:
        log.info("%s", note)
    report = {
        "encoder": public_name(encoder_path, relative_to if Path(encoder_path).exists() else None),  # else a Hub id
        "dataset": public_name(data, relative_to) if relative_to else str(Path(data).resolve()), "subject": subject.name,
        "n_test": int(y_true.shape[0]), "n_voxels": int(y_true.shape[1]),
        "r2": _summary(r2), "pearson_r": _summary(r), "noise_ceiling": _summary(ceiling),
        "r2_normalized": _summary(r2_norm), "rois": rois, "flatmap": flatmap, "flatmap_note": note,
        "files": {"voxels": "voxels.npz"}, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    log.info("test R^2 median %.3f, Pearson r median %.3f over %d voxels (%d test images); report in %s",
             report["r2"]["median"] or float("nan"), report["pearson_r"]["median"] or float("nan"),
             y_true.shape[1], y_true.shape[0], out)
    return report


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.eval_encoder", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", required=True, help="checkpoint folder or Hub repo id")
    p.add_argument("--data", required=True, help="dataset .h5 from training.prepare_*")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--relative-to", default=None, help="name the encoder and dataset relative to this folder "
                   "(the app's data folder), never by absolute path")
    return p


def main(argv=None) -> dict:
    args = _parser().parse_args(argv)
    configure_logging()
    with cli_errors():
        return evaluate(args.encoder, args.data, args.out, device=args.device, batch_size=args.batch_size,
                        relative_to=args.relative_to)


if __name__ == "__main__":
    main()
