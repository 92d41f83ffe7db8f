"""Top-N natural images for a target: by measured test-set response (a prepared NSD dataset) or by
encoder prediction over any image folder. They are the paper's baseline for the generated images.

The dataset is the HDF5 encoding dataset written by ``training.prepare_nsd`` (format
``braindive-encoding-dataset``; see ``training/dataset.py``), read through ``braindive.prepared``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import torch

from ..objectives import Objective
from ..prepared import dataset_subject, open_dataset
from ..rerank import score_images
from .sets import ImageSet, open_rgb

__all__ = ["top_measured", "top_predicted", "comparison_sets", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _check_n(n: int) -> None:
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"`n` (top-N natural images) must be an integer >= 1, got {n!r}.")


def top_measured(dataset, target: str, objective: Objective, subject: str, n: int = 50) -> ImageSet:
    """The ``n`` test-split images of ``dataset`` whose measured response has the highest ``objective``.

    The objective (voxel indices of the generated images' subject) is applied to the averaged test
    betas; the dataset must be of the same subject and voxel space.
    """
    _check_n(n)
    path = Path(dataset)
    with open_dataset(path) as f:
        data_subject = dataset_subject(f)
        if data_subject.name != subject:
            raise ValueError(f"NSD dataset {path} is subject {data_subject.name!r}, the images are subject {subject!r}.")
        objective.check(data_subject.n_voxels)
        betas = f["test/betas"]
        if betas.shape[0] == 0:
            raise ValueError(f"NSD dataset {path} has no test images.")
        scores = np.concatenate([objective(torch.from_numpy(betas[start:start + 256].astype(np.float32))).numpy()
                                 for start in range(0, betas.shape[0], 256)])  # row chunks: bounded memory
        scores = np.nan_to_num(scores, nan=-np.inf)  # voxels without data never select an image
        order = np.argsort(-scores, kind="stable")[: min(n, len(scores))]
        rows = f["test/image_index"][()][order]
        names = f["images/names"].asstr()[()]
        images = [PIL.Image.fromarray(f["images/pixels"][int(r)]) for r in rows]
    return ImageSet(f"NSD top-{n} (measured)", subject, target, images, [str(names[r]) for r in rows], objective,
                    [float(scores[i]) for i in order])


def top_predicted(folder, target: str, objective: Objective, encoder, subject: str, n: int = 50,
                  batch_size: int = 16) -> ImageSet:
    """The ``n`` images of ``folder`` (recursively) with the highest objective under ``encoder``."""
    _check_n(n)
    if encoder.config.subject != subject:
        raise ValueError(f"Encoder was fit for subject {encoder.config.subject!r}, the images are subject {subject!r}.")
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Natural image folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"Folder {folder} has no images ({', '.join(IMAGE_SUFFIXES)}).")
    scores = np.empty(len(files))
    by_size: dict[tuple, list[int]] = {}
    for i, path in enumerate(files):  # headers only; pixels are read chunk by chunk below
        by_size.setdefault(_size(path), []).append(i)
    for members in by_size.values():  # same-size images batch together; the encoder resizes each batch itself
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            pixels = [open_rgb(files[i]) for i in chunk]
            scores[chunk] = score_images(pixels, encoder, objective, batch_size).numpy()
    order = np.argsort(-scores, kind="stable")[: min(n, len(files))]
    return ImageSet(f"top-{n} by encoder ({folder.name})", subject, target, [files[i] for i in order],
                    [str(files[i].relative_to(folder)) for i in order], objective, [float(scores[i]) for i in order])



def _size(path: Path) -> tuple[int, int]:
    try:
        with PIL.Image.open(path) as im:
            return im.size
    except (OSError, PIL.UnidentifiedImageError) as exc:
        raise ValueError(f"Cannot read image {path}: {exc}") from exc


def comparison_sets(generated: list[ImageSet], nsd_dataset=None, folder=None, encoder=None, n: int = 50) -> list[ImageSet]:
    """``generated`` followed by, per target, its top-``n`` NSD test images (measured) and/or the top-``n``
    images of ``folder`` by ``encoder`` prediction, selected with the generated images' own objective."""
    if folder is not None and encoder is None:
        raise ValueError("Ranking a natural image folder needs an encoder (--encoder).")
    out = list(generated)
    for s in generated:
        if (nsd_dataset or folder) and s.objective is None:
            raise ValueError(f"The records of target {s.target!r} carry no voxel indices; cannot select natural images.")
        naturals = ([top_measured(nsd_dataset, s.target, s.objective, s.subject, n)] if nsd_dataset is not None else []) \
            + ([top_predicted(folder, s.target, s.objective, encoder, s.subject, n)] if folder is not None else [])
        for natural in naturals:
            natural.spec = s.spec  # selected for the same target: the same category (or none)
        out += naturals
    return out
