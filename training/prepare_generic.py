"""Make an encoding dataset from a folder of images and a response matrix (``python -m training.prepare_generic``).

``--responses`` is a ``.npy`` array ``[n_images, n_voxels]`` whose row i belongs to the i-th image
file of ``--images`` in sorted file-name order (Python string order, case-sensitive; only the
folder's top level; extensions .png .jpg .jpeg .bmp .gif .webp .tif .tiff). Columns are the voxels
of the subject (``--subject S1`` or ``--subject-file x.npz``). Images are centre-cropped to a square
and resized to ``--image-size`` px. A seeded random ``--test-fraction`` of the images is the test
split; the noise ceiling is unknown (NaN). ``--rois`` adds or replaces ROIs:
a JSON object ``{"name": [voxel indices], ...}``; a built-in subject then becomes ``NAME+<file stem>``
(e.g. ``S1+custom``: the same voxel space and fingerprint, its own ROIs and label), carried in the
encoder checkpoint as its subject file.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from braindive.subjects import Subject, available_subjects, load_subject

from .dataset import DatasetWriter, SplitSpec
from .images import list_images, load_image
from .logs import cli_errors, configure_logging

__all__ = ["prepare_generic", "read_rois", "main"]

log = logging.getLogger(__name__)


def read_rois(path, subject: Subject) -> dict[str, np.ndarray]:
    """ROIs from a JSON file ``{name: [voxel indices]}``, validated against ``subject``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"`--rois` {path} is not a readable JSON file: {exc}") from exc
    if not isinstance(data, dict) or not data:
        raise ValueError(f"`--rois` {path} must hold a non-empty JSON object {{name: [voxel indices]}}.")
    return {str(name): subject.check_voxels(idx, f"--rois[{name!r}]") for name, idx in data.items()}


def _read_responses(path, n_images: int, n_voxels: int, images) -> np.ndarray:
    try:
        responses = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"`--responses` {path} is not a readable .npy array: {exc}") from exc
    if responses.ndim != 2 or not np.issubdtype(responses.dtype, np.number):
        raise ValueError(f"`--responses` must be a numeric [n_images, n_voxels] array, "
                         f"got {responses.dtype} {responses.shape}.")
    if responses.shape[0] != n_images:
        raise ValueError(f"`--responses` has {responses.shape[0]} rows but `--images` {images} holds {n_images} "
                         "images (rows follow the sorted file names).")
    if responses.shape[1] != n_voxels:
        raise ValueError(f"`--responses` has {responses.shape[1]} columns but the subject has {n_voxels} voxels.")
    return responses.astype(np.float32)


def with_rois(subject: Subject, rois: dict, tag: str) -> Subject:
    """``subject`` with ``rois`` added; a built-in subject is renamed ``NAME+tag`` so that its label differs from
    the built-in one (same voxel space and fingerprint) and apps list it, with its ROIs, beside it."""
    name = f"{subject.name}+{tag}" if subject.name in available_subjects() else subject.name
    return dataclasses.replace(subject, name=name, rois={**subject.rois, **rois})


def prepare_generic(images, responses, out, subject: Subject, *, rois=None, test_fraction: float = 0.1,
                    seed: int = 0, image_size: int = 224) -> Path:
    """Write the dataset ``out`` from an image folder and a ``.npy`` response matrix."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"`--test-fraction` must be between 0 and 1, got {test_fraction}.")
    if image_size < 1:
        raise ValueError(f"`--image-size` must be >= 1, got {image_size}.")
    files = list_images(images)
    values = _read_responses(responses, len(files), subject.n_voxels, images)
    n = len(files)
    n_test = int(round(n * test_fraction))
    if not 1 <= n_test <= n - 1:
        raise ValueError(f"`--test-fraction` {test_fraction} of {n} images leaves an empty train or test split.")
    if rois is not None:
        subject = with_rois(subject, read_rois(rois, subject), Path(rois).stem)
    is_test = np.zeros(n, bool)
    is_test[np.random.default_rng(seed).permutation(n)[:n_test]] = True
    train, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    splits = {"train": SplitSpec(train, np.ones(len(train))), "test": SplitSpec(test, np.ones(len(test)))}
    metadata = {"route": "generic", "images": str(Path(images).resolve()), "responses": str(Path(responses).resolve()),
                "order": "sorted file names", "test_fraction": test_fraction, "seed": seed, "image_size": image_size,
                "crop": "centre square, bicubic resize"}
    with DatasetWriter(out, subject=subject, image_ids=np.arange(n), image_names=[f.name for f in files],
                       image_shape=(image_size, image_size), splits=splits, source="generic",
                       metadata=metadata) as writer:
        for i, f in enumerate(tqdm(files, desc="images", unit="image")):
            writer.write_images(i, load_image(f, image_size)[None])
        writer.write_betas("train", slice(None), values[train])
        writer.write_betas("test", slice(None), values[test])
    log.info("wrote %s: %d train + %d test images, %d voxels", out, len(train), len(test), subject.n_voxels)
    return Path(out)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.prepare_generic", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, help="folder of image files")
    p.add_argument("--responses", required=True, help=".npy array [n_images, n_voxels]")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--subject", help="registered subject name (e.g. S1)")
    who.add_argument("--subject-file", help="subject .npz written by braindive.Subject.save")
    p.add_argument("--rois", default=None, help="JSON {name: [voxel indices]} added to the subject's ROIs")
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0, help="seed of the train/test split")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--out", required=True, help="dataset .h5 to write")
    return p


def main(argv=None) -> Path:
    args = _parser().parse_args(argv)
    configure_logging()
    with cli_errors():
        subject = load_subject(args.subject or args.subject_file)
        return prepare_generic(args.images, args.responses, args.out, subject, rois=args.rois,
                               test_fraction=args.test_fraction, seed=args.seed, image_size=args.image_size)


if __name__ == "__main__":
    main()
