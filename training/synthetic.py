"""A synthetic subject with known ground truth, on S1's voxels (``python -m training.synthetic``).

Images are procedural (gratings, shapes, colour blobs; 224 px, fixed seed). Responses are a known
linear function of the demo tower's L2-normalised features ``f`` plus Gaussian noise::

    y_v = f @ w_v + b_v + noise,   noise ~ N(0, sigma_v^2)

Each ROI prefers its own signed combination ``m`` of the top principal directions of the features
(``ROI_TUNING``), so different regions prefer different visual content; voxels outside the ROIs get
weak random tuning. Inside an ROI the preference drifts along a posterior-to-anterior gradient (modelled
on the one reported within OPA): voxel v's direction is ``cos(a_v) m + sin(a_v) d``, where ``d`` is a
signed combination of the top principal directions that ``m`` does not use (``ROI_GRADIENT``) and
``a_v = GRADIENT_ANGLE * t_v``, ``t_v`` in [-1, 1] the voxel's position along the posterior-anterior axis
within its ROI and hemisphere (its rank on the y coordinate the anatomical split uses,
``braindive.subregions.voxel_coordinates``, mapped linearly: posterior end -1, anterior end +1). ``d``
cancels over the ROI (``t`` is symmetric), so the ROI as a whole prefers ``m`` as before; ``m`` also
dominates (``|a_v| < 45 deg``) the middle 82% of each ROI and each half on average (mean ``|a_v|`` 27.5 deg),
while the posterior and anterior halves prefer different content. ``GRADIENT_ANGLE`` (55 deg) is the
smallest of those tried (35, 45, 55, 65 deg) with which, on the demo, maximising either half of FFA or OPA
raises it more than the other half on >= 80% of 16 seeds (``benchmarks/subregions.py``); ``d`` mixes two
directions because the demo's unguided images already spread along a single one (e.g. the first) about as far as
guidance can push it, so the half turned that way gains less than the other on a quarter of the seeds.
``w_v`` is scaled so the signal has unit variance and
``sigma_v^2 = (1 - c_v) / c_v`` for a target ceiling ``c_v``. The best possible test R^2 of voxel v
is then known: ``var_test(f @ w_v) / (var_test(f @ w_v) + sigma_v^2)``, stored as the dataset's
noise ceiling.

The simulated brain (``w``, ``b``, ``c``) is one fixed brain per subject, whatever dataset is drawn
from it: the principal directions and the unit-variance scaling come from a fixed reference set
(``REFERENCE_IMAGES`` procedural images of seed ``REFERENCE_SEED``, the images the shipped demo
encoder ``braindive/assets/demo-encoder`` was fit on), never from the dataset's own images, whose
principal directions (and their signs) change with its size and seed. So an encoder trained in the app's Train
tab on any synthetic dataset agrees with the demo encoder. ``seed`` picks the images and the noise.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

import braindive
from braindive.cache import cache_dir, private_tmp
from braindive.demo_components import DEMO_TOWER_NAME
from braindive.subjects import load_subject
from braindive.subregions import voxel_coordinates

from .dataset import DatasetWriter, SplitSpec
from .features import build_encoder, embed_images, encoder_key
from .logs import cli_errors, configure_logging

__all__ = ["ROI_TUNING", "ROI_GRADIENT", "GRADIENT_ANGLE", "SyntheticTruth", "axis_positions", "procedural_images",
           "simulated_brain", "reference_statistics", "make_synthetic", "main"]

log = logging.getLogger(__name__)

IMAGE_SIZE = 224
# ROI -> {principal direction index: sign/weight}
ROI_TUNING = {
    "V1": {0: 1.0}, "V2": {0: 0.7, 1: 0.7}, "V3": {1: 1.0}, "OFA": {0: -0.7, 2: 0.7}, "FFA": {2: 1.0},
    "EBA": {2: -0.7, 3: 0.7}, "PPA": {0: -1.0}, "OPA": {1: -1.0}, "RSC": {3: 1.0},
}
# ROI -> the signed combination of principal directions its posterior->anterior gradient turns toward: the first two
# of the top three that its ROI_TUNING leaves out, the first minus the second (V2 and OFA leave only one)
ROI_GRADIENT = {
    "V1": {1: 0.7, 2: -0.7}, "V2": {2: 1.0}, "V3": {0: 0.7, 2: -0.7}, "OFA": {1: 1.0}, "FFA": {0: 0.7, 1: -0.7},
    "EBA": {0: 0.7, 1: -0.7}, "PPA": {1: 0.7, 2: -0.7}, "OPA": {0: 0.7, 2: -0.7}, "RSC": {0: 0.7, 1: -0.7},
}
GRADIENT_ANGLE = np.deg2rad(55.0)  # rotation at the posterior (-) and anterior (+) ends; the middle voxel keeps m
ROI_CEILING = (0.4, 0.85)      # target ceilings drawn uniformly, voxels in an ROI
OUTSIDE_CEILING = (0.05, 0.3)  # voxels outside every ROI
_BATCH = 128
REFERENCE_SEED = 0
REFERENCE_IMAGES = 2300  # the demo encoder's 2000 training + 300 test images
REFERENCE_ASSET = Path(braindive.__file__).resolve().parent / "assets" / "demo-encoder" / "reference.npz"


@dataclass
class SyntheticTruth:
    """The generating model: ``y = features @ weights + bias + N(0, noise_var)``."""

    weights: np.ndarray    # [n_features, n_voxels]
    bias: np.ndarray       # [n_voxels]
    noise_var: np.ndarray  # [n_voxels]
    ceiling: np.ndarray    # [n_voxels] best possible test R^2


def _grid(size: int):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    return yy, xx


def _grating(rng, yy, xx):
    theta, freq, phase = rng.uniform(0, np.pi), rng.uniform(2, 16), rng.uniform(0, 2 * np.pi)
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
    a, b = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    return wave[..., None] * a + (1 - wave[..., None]) * b


def _shapes(rng, yy, xx):
    image = np.broadcast_to(rng.uniform(0, 1, 3), yy.shape + (3,)).copy()
    for _ in range(rng.integers(1, 5)):
        cy, cx, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.3)
        if rng.uniform() < 0.5:
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        else:
            inside = (np.abs(yy - cy) < r) & (np.abs(xx - cx) < r * rng.uniform(0.3, 1.5))
        image[inside] = rng.uniform(0, 1, 3)
    return image


def _blobs(rng, yy, xx):
    image = np.zeros(yy.shape + (3,), np.float32) + rng.uniform(0, 0.3, 3)
    for _ in range(rng.integers(2, 7)):
        cy, cx, s = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.25)
        image += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s**2))[..., None] * rng.uniform(0, 1, 3)
    return image


_KINDS = (_grating, _shapes, _blobs)


def procedural_images(n: int, seed: int, size: int = IMAGE_SIZE, start: int = 0) -> np.ndarray:
    """Images ``start..start+n`` of the procedural sequence for ``seed``: uint8 ``[n, size, size, 3]``.

    Image ``i`` depends only on ``(seed, i)``, so the sequence can be generated in batches.
    """
    yy, xx = _grid(size)
    out = np.empty((n, size, size, 3), np.uint8)
    for k in range(n):
        rng = np.random.default_rng([seed, start + k])
        image = _KINDS[rng.integers(len(_KINDS))](rng, yy, xx)
        out[k] = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
    return out


def _tuning(reference: dict, subject, rng) -> tuple[np.ndarray, np.ndarray]:
    """Unit-variance voxel weights ``[n_features, n_voxels]`` and target ceilings ``[n_voxels]``.

    ``reference``: the reference features' principal directions (rows) and covariance."""
    directions, cov = reference["directions"], reference["covariance"]
    n_feat, n_vox = cov.shape[0], subject.n_voxels
    weights = rng.normal(0, 0.15 / np.sqrt(n_feat), (n_feat, n_vox))
    in_roi = np.zeros(n_vox, bool)
    y = voxel_coordinates(subject)[:, 1]
    for roi, combo in ROI_TUNING.items():
        if roi not in subject.rois:
            continue
        idx = subject.rois[roi]
        main, second = (_unit(directions, c) for c in (combo, ROI_GRADIENT[roi]))
        angle = GRADIENT_ANGLE * axis_positions(y[idx], subject.is_right[idx])
        weights[:, idx] += np.outer(main, np.cos(angle)) + np.outer(second, np.sin(angle))
        in_roi[idx] = True
    weights /= np.sqrt(np.einsum("fv,fg,gv->v", weights, cov, weights))  # std of features @ w over the reference
    ceiling = np.where(in_roi, rng.uniform(*ROI_CEILING, n_vox), rng.uniform(*OUTSIDE_CEILING, n_vox))
    return weights, ceiling


def _unit(directions: np.ndarray, combo: dict) -> np.ndarray:
    """The unit vector of a signed combination ``{principal direction index: weight}``."""
    v = sum(w * directions[k] for k, w in combo.items())
    return v / np.linalg.norm(v)


def axis_positions(values: np.ndarray, is_right: np.ndarray) -> np.ndarray:
    """Each voxel's position in [-1, 1] along ``values`` (e.g. y, posterior -> anterior) within its hemisphere:
    its rank (ties averaged) mapped linearly, lowest -1, highest +1. Each hemisphere's positions are symmetric
    about 0, negative for the lower half by ``values`` (the anatomical split's first part)."""
    positions = np.zeros(len(values))
    for hemi in (False, True):
        members = np.flatnonzero(is_right == hemi)
        if len(members) > 1:
            positions[members] = 2 * (rankdata(values[members]) - 1) / (len(members) - 1) - 1
    return positions


def reference_statistics(encoder) -> dict:
    """Principal directions and covariance of the tower's features of the reference images.

    Shipped for the demo tower beside the demo encoder (``braindive/assets/demo-encoder/reference.npz``,
    written by ``build_demo_encoder``); for any other tower computed once (2,300 images) and cached on disk."""
    key = encoder_key(encoder)
    cached = cache_dir("synthetic") / f"reference-{key[:20]}.npz"
    for path in (REFERENCE_ASSET, cached):
        if path.is_file():
            with np.load(path) as stored:
                if str(stored["tower"]) == key and int(stored["n_images"]) == REFERENCE_IMAGES:
                    return {"directions": stored["directions"], "covariance": stored["covariance"]}
    log.info("reference statistics: features of %d reference images (once; cached)", REFERENCE_IMAGES)
    features = _embed_procedural(encoder, REFERENCE_IMAGES, REFERENCE_SEED, IMAGE_SIZE).astype(np.float64)
    centred = features - features.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    stats = {"directions": vt, "covariance": centred.T @ centred / len(centred)}
    save_reference_statistics(stats, key, cached)
    return stats


def save_reference_statistics(stats: dict, tower_key: str, path) -> None:
    path = Path(path)
    tmp = private_tmp(path, ".npz")
    np.savez(tmp, tower=tower_key, n_images=REFERENCE_IMAGES, **stats)
    tmp.replace(path)


def _embed_procedural(encoder, n: int, seed: int, image_size: int, writer=None) -> np.ndarray:
    """Features of procedural images ``0..n-1`` of ``seed`` (written to ``writer`` too, if given)."""
    features = np.empty((n, encoder.config.embed_dim), np.float32)
    for start in range(0, n, _BATCH):
        images = procedural_images(min(_BATCH, n - start), seed, image_size, start=start)
        if writer is not None:
            writer.write_images(start, images)
        features[start:start + len(images)] = embed_images(encoder, images, device="cpu")
    return features


def simulated_brain(subject, encoder) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The subject's fixed simulated brain: weights ``[n_features, n_voxels]``, target ceilings and biases."""
    rng = np.random.default_rng([REFERENCE_SEED, 1])
    weights, ceiling = _tuning(reference_statistics(encoder), subject, rng)
    bias = rng.normal(0, 0.5, subject.n_voxels).astype(np.float32)
    return weights.astype(np.float32), ceiling, bias


def make_synthetic(path, subject=None, *, n_train: int = 2000, n_test: int = 300, seed: int = 0,
                   image_size: int = IMAGE_SIZE) -> SyntheticTruth:
    """Write the synthetic dataset for ``subject`` (default S1) to ``path``; return its ground truth.

    ``image_size`` below 224 makes a smaller file (the encoder resizes images to 224 itself).
    """
    if n_train < 2 or n_test < 2:
        raise ValueError(f"`n_train` and `n_test` must be >= 2, got {n_train} and {n_test}.")
    subject = subject if subject is not None else load_subject("S1")
    encoder = build_encoder(subject, DEMO_TOWER_NAME, None)
    n = n_train + n_test
    splits = {"train": SplitSpec(np.arange(n_train), np.ones(n_train)),
              "test": SplitSpec(np.arange(n_train, n), np.ones(n_test))}
    metadata = {"route": "synthetic", "seed": seed, "image_size": image_size, "tower": DEMO_TOWER_NAME,
                "roi_tuning": ROI_TUNING,
                "roi_gradient": {"axis": "posterior-anterior", "toward": ROI_GRADIENT,
                                 "angle_degrees": float(np.rad2deg(GRADIENT_ANGLE))},
                "reference": {"seed": REFERENCE_SEED, "n_images": REFERENCE_IMAGES},
                "model": "y = f @ w + b + N(0, sigma^2); noise_ceiling = best test R^2"}
    names = [f"synthetic-{i:05d}" for i in range(n)]
    with DatasetWriter(path, subject=subject, image_ids=np.arange(n), image_names=names,
                       image_shape=(image_size, image_size), splits=splits, source="synthetic",
                       metadata=metadata) as writer:
        features = _embed_procedural(encoder, n, seed, image_size, writer)
        weights, target, bias = simulated_brain(subject, encoder)
        signal = features @ weights
        noise_var = ((1 - target) / target).astype(np.float32)
        rng = np.random.default_rng([seed, 2])
        responses = signal + bias + rng.standard_normal(signal.shape, dtype=np.float32) * np.sqrt(noise_var)
        test_var = signal[n_train:].var(0)
        ceiling = test_var / (test_var + noise_var)
        writer.write_betas("train", slice(None), responses[:n_train])
        writer.write_betas("test", slice(None), responses[n_train:])
        writer.write_voxels(noise_ceiling=ceiling)
    log.info("synthetic dataset %s: %d train + %d test images, %d voxels, mean ceiling %.3f",
             path, n_train, n_test, subject.n_voxels, ceiling.mean())
    return SyntheticTruth(weights=weights, bias=bias, noise_var=noise_var, ceiling=ceiling)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.synthetic", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="dataset .h5 to write")
    p.add_argument("--subject", default="S1", help="subject name or .npz file (default S1)")
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-test", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=IMAGE_SIZE)
    return p


def main(argv=None) -> SyntheticTruth:
    args = _parser().parse_args(argv)
    configure_logging()
    with cli_errors():
        return make_synthetic(args.out, load_subject(args.subject), n_train=args.n_train, n_test=args.n_test,
                              seed=args.seed, image_size=args.image_size)


if __name__ == "__main__":
    main()
