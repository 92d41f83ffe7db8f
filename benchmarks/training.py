"""Encoder-training benchmark (``python -m benchmarks.training``).

1. Feature extraction: the demo's tiny tower on procedural images, and the ViT-B-16 architecture
   with random weights for a few batches, extrapolated to one NSD subject (10,000 images).
2. Ridge at NSD scale: 9,000 train / 1,000 test images, 512-d CLIP-like features (L2-normalised,
   power-law spectrum), 30,000 voxels with known ceilings; ``training.ridge`` (per-voxel alpha,
   5-fold CV, 15 alphas).
3. On a voxel subset, the same fit against himalaya's ``RidgeCV`` called directly (time measured at
   two subset sizes and extrapolated linearly to 30,000 voxels) and against the published recipe's
   AdamW-trained linear head (lr 3e-4, weight decay 1.5e-2, batch 64, MSE, lr decayed to half).

Writes ``benchmarks/results/training.json`` and the "## Encoder training" section of
``benchmarks/RESULTS.md`` (other sections are left as they are).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from himalaya.backend import set_backend
from himalaya.ridge import RidgeCV
from himalaya.scoring import r2_score

from braindive.subjects import Subject
from training.features import build_encoder, embed_images
from training.ridge import DEFAULT_ALPHAS, cv_splits, fit_ridge_cv, parse_alphas
from training.stats import r2_columns
from training.synthetic import procedural_images
from training.train_encoder import versions
from benchmarks.machine import cpu_name, write_section

HERE = Path(__file__).resolve().parent
RESULTS_JSON = HERE / "results" / "training.json"
RESULTS_MD = HERE / "RESULTS.md"
SECTION = "## Encoder training"


def _machine() -> dict:
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average_at_start": [round(v, 2) for v in os.getloadavg()], "python": platform.python_version(),
            **versions()}


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def bench_features(vit_batches: int) -> dict:
    probe = Subject(name="probe", surface="", vertices=np.arange(1), n_vertices_lh=1, n_vertices=1, rois={})
    images = procedural_images(256, seed=0)
    tiny = build_encoder(probe, "braindive-tiny-vit", "none")
    embed_images(tiny, images[:8], device="cpu")  # warm-up
    _, tiny_s = _timed(lambda: embed_images(tiny, images, batch_size=64, device="cpu"))
    vit = build_encoder(probe, "ViT-B-16", "none")
    batch = 16
    embed_images(vit, images[:2], device="cpu")
    n_vit = vit_batches * batch
    _, vit_s = _timed(lambda: embed_images(vit, images[:n_vit], batch_size=batch, device="cpu"))
    return {
        "tiny_tower": {"images": len(images), "batch_size": 64, "seconds": round(tiny_s, 2),
                       "images_per_s": round(len(images) / tiny_s, 1)},
        "vit_b_16_random_weights": {"images": n_vit, "batch_size": batch, "seconds": round(vit_s, 2),
                                    "images_per_s": round(n_vit / vit_s, 2),
                                    "extrapolated_10000_images_min": round(10000 / (n_vit / vit_s) / 60, 1)},
    }


def clip_like_problem(n_train=9000, n_test=1000, dim=512, n_voxels=30000, seed=0) -> dict:
    """L2-normalised features with a shared mean direction and power-law spectrum; known linear voxels."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    mean = rng.standard_normal(dim)
    x = rng.standard_normal((n, dim)).astype(np.float32) * np.sqrt(1.0 / np.arange(1, dim + 1)).astype(np.float32)
    x += (2.0 * mean / np.linalg.norm(mean)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    w = rng.standard_normal((dim, n_voxels)).astype(np.float32)
    signal = x @ w
    signal /= signal[:n_train].std(0)
    ceiling = rng.uniform(0.05, 0.6, n_voxels).astype(np.float32)
    y = signal + rng.standard_normal(signal.shape, dtype=np.float32) * np.sqrt((1 - ceiling) / ceiling)
    test_var = signal[n_train:].var(0)
    best = test_var / (test_var + (1 - ceiling) / ceiling)
    return {"x_train": x[:n_train], "x_test": x[n_train:], "y_train": y[:n_train], "y_test": y[n_train:],
            "ceiling": best}


def _ours(p, voxels, alphas) -> dict:
    fit, seconds = _timed(lambda: fit_ridge_cv(p["x_train"], p["y_train"][:, voxels], alphas, cv=5, progress=False))
    r2 = r2_columns(p["y_test"][:, voxels], p["x_test"] @ fit.weights + fit.bias)
    return {"seconds": round(seconds, 2), "test_r2_mean": round(float(r2.mean()), 4), "r2": r2}


def _himalaya(p, voxels, alphas) -> dict:
    set_backend("torch")
    model = RidgeCV(alphas=alphas, fit_intercept=True, cv=cv_splits(len(p["x_train"]), 5),
                    solver_params={"score_func": r2_score})
    _, seconds = _timed(lambda: model.fit(p["x_train"], p["y_train"][:, voxels]))
    r2 = r2_columns(p["y_test"][:, voxels], np.asarray(model.predict(p["x_test"])))
    return {"seconds": round(seconds, 2), "test_r2_mean": round(float(r2.mean()), 4), "r2": r2}


def _adamw(p, voxels, epochs: int, batch: int = 64, lr: float = 3e-4, weight_decay: float = 1.5e-2) -> dict:
    """The published recipe's head training (BrainDiVE encoder_trainer.py) on precomputed features."""
    torch.manual_seed(0)
    x = torch.from_numpy(p["x_train"])
    y = torch.from_numpy(np.ascontiguousarray(p["y_train"][:, voxels]))
    head = torch.nn.Linear(x.shape[1], y.shape[1])
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)

    def train():
        for epoch in range(1, epochs + 1):
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 ** (epoch / epochs)
            order = torch.randperm(len(x))
            for start in range(0, len(x), batch):
                idx = order[start:start + batch]
                loss = torch.nn.functional.mse_loss(head(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

    _, seconds = _timed(train)
    with torch.no_grad():
        pred = head(torch.from_numpy(p["x_test"])).numpy()
    r2 = r2_columns(p["y_test"][:, voxels], pred)
    return {"epochs": epochs, "seconds": round(seconds, 2), "test_r2_mean": round(float(r2.mean()), 4), "r2": r2}


def bench_ridge(n_voxels: int, subset: int, adamw_epochs: int) -> dict:
    alphas = parse_alphas(DEFAULT_ALPHAS)
    problem, make_s = _timed(lambda: clip_like_problem(n_voxels=n_voxels))
    everything = np.arange(n_voxels)
    full = _ours(problem, everything, alphas)
    sub = np.random.default_rng(1).choice(n_voxels, subset, replace=False)
    half = sub[: subset // 2]
    ours_sub = _ours(problem, sub, alphas)
    him_half, him_sub = _himalaya(problem, half, alphas), _himalaya(problem, sub, alphas)
    per_voxel = (him_sub["seconds"] - him_half["seconds"]) / (len(sub) - len(half))
    fixed = max(0.0, him_sub["seconds"] - per_voxel * len(sub))
    adamw = _adamw(problem, sub, adamw_epochs)
    ceiling = problem["ceiling"]
    drop = lambda d: {k: v for k, v in d.items() if k != "r2"}  # noqa: E731
    return {
        "problem": {"n_train": 9000, "n_test": 1000, "n_features": 512, "n_voxels": n_voxels, "alphas": len(alphas),
                    "cv_folds": 5, "ceiling_mean": round(float(ceiling.mean()), 4), "make_seconds": round(make_s, 1)},
        "ours_all_voxels": {**drop(full), "test_r2_over_ceiling": round(float(full["r2"].mean() / ceiling.mean()), 4)},
        "subset": {
            "n_voxels": len(sub), "ceiling_mean": round(float(ceiling[sub].mean()), 4),
            "ours": drop(ours_sub),
            "himalaya_ridgecv": {**drop(him_sub), f"seconds_{len(half)}_voxels": him_half["seconds"],
                                 f"extrapolated_{n_voxels}_voxels_s": round(fixed + per_voxel * n_voxels, 1),
                                 "mean_abs_r2_difference_vs_ours": float(np.abs(him_sub["r2"] - ours_sub["r2"]).mean()),
                                 "max_abs_r2_difference_vs_ours": float(np.abs(him_sub["r2"] - ours_sub["r2"]).max())},
            "adamw_recipe": {**drop(adamw), "extrapolated_100_epochs_all_voxels_min":
                             round(adamw["seconds"] * 100 / adamw_epochs * n_voxels / len(sub) / 60, 1)},
        },
    }


def _markdown(result: dict, command: str) -> str:
    m, f, r = result["machine"], result["features"], result["ridge"]
    s, p = r["subset"], r["problem"]
    tiny, vit = f["tiny_tower"], f["vit_b_16_random_weights"]
    him, adamw = s["himalaya_ridgecv"], s["adamw_recipe"]
    ext = next(v for k, v in him.items() if k.startswith("extrapolated_"))
    lines = [
        SECTION, "",
        f"Machine: {m['cpu']}, {m['cores']} CPU cores, torch {m['torch']} with {m['torch_threads']} thread(s), "
        f"load average {m['load_average_at_start']} at start (other jobs share the cores). **No GPU is available in "
        f"this task**: every number is CPU; feature extraction on a GPU uses fp16 autocast and the ridge the "
        f"`torch_cuda` backend, not measured here. Command: `{command}`. Date: {result['date']}.", "",
        "| Step | Setting | Time | Test R^2 (mean) |", "|---|---|---|---|",
        f"| Features, tiny demo tower | {tiny['images']} images, batch {tiny['batch_size']} | {tiny['seconds']} s "
        f"({tiny['images_per_s']} img/s) | |",
        f"| Features, ViT-B-16 (random weights) | {vit['images']} images, batch {vit['batch_size']} | {vit['seconds']} s "
        f"({vit['images_per_s']} img/s; 10,000 images ~ {vit['extrapolated_10000_images_min']} min) | |",
        f"| Ridge, `training.ridge` (ours) | {p['n_train']} x {p['n_features']} features -> {p['n_voxels']} voxels, "
        f"{p['alphas']} alphas, {p['cv_folds']}-fold CV | {r['ours_all_voxels']['seconds']} s | "
        f"{r['ours_all_voxels']['test_r2_mean']} (ceiling {p['ceiling_mean']}) |",
        f"| Ridge, ours | {s['n_voxels']}-voxel subset | {s['ours']['seconds']} s | {s['ours']['test_r2_mean']} |",
        f"| himalaya `RidgeCV` called directly | same subset, same folds | {him['seconds']} s "
        f"(~{ext} s for {p['n_voxels']} voxels, extrapolated) | {him['test_r2_mean']} "
        f"(per-voxel R^2 differs from ours by {him['mean_abs_r2_difference_vs_ours']:.1e} on average, "
        f"{him['max_abs_r2_difference_vs_ours']:.1e} at most) |",
        f"| AdamW linear head (published recipe) | same subset, {adamw['epochs']} epochs, batch 64 | "
        f"{adamw['seconds']} s (100 epochs, all voxels ~ {adamw['extrapolated_100_epochs_all_voxels_min']} min) | "
        f"{adamw['test_r2_mean']} |", "",
        f"Subset ceiling mean {s['ceiling_mean']}. Features and responses are synthetic with known ceilings (see "
        "`clip_like_problem`); the recipe's image augmentation cannot apply to precomputed features. "
        "himalaya's time for all voxels is a straight line through its two subset timings, so it moves with the "
        "load of the shared machine (885 s and 1525 s in two runs on the same day); its per-fold hat matrix costs "
        "n_val x n_train x n_voxels per alpha against n_features^2 x n_voxels for ours.", "",
    ]
    return "\n".join(lines)


def write_results(result: dict, command: str) -> None:
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_JSON.write_text(json.dumps(result, indent=2))
    write_section(RESULTS_MD, SECTION, _markdown(result, command))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.training", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--voxels", type=int, default=30000)
    p.add_argument("--subset", type=int, default=2000, help="voxels for the himalaya and AdamW comparisons")
    p.add_argument("--adamw-epochs", type=int, default=20)
    p.add_argument("--vit-batches", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = {"machine": _machine(), "date": date.today().isoformat()}
    result["features"] = bench_features(args.vit_batches)
    result["ridge"] = bench_ridge(args.voxels, args.subset, args.adamw_epochs)
    result["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    command = " ".join(["python -m benchmarks.training", *(sys.argv[1:] if argv is None else argv)])
    print(json.dumps(result, indent=2))
    if not args.no_write:
        write_results(result, command)
    return result


if __name__ == "__main__":
    main()
