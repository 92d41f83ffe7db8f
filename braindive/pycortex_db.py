"""Low-level reads of pycortex's database: where a subject lives, its transforms, and pycortex's mapper.

Imports neither ``braindive.subjects`` nor ``braindive.flatmap``: both build on it (as does
``braindive.pycortex_subjects``), so none of them imports another in a circle. pycortex itself is
imported only inside the functions that need it.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["MAPPER", "pycortex_dir", "has_display", "check_transform", "transform_digest", "pycortex_mapper",
           "dominant_cells", "grid_cells", "voxel_of_cell", "display_hemispheres"]

MAPPER = "line_nearest"  # pycortex's mapper for volumes: 64 points from white matter to pial surface, nearest cell


def pycortex_dir(surface: str) -> Path:
    """The pycortex database folder of ``surface`` (which may not exist)."""
    import cortex  # noqa: F401  (pycortex reads its config on import)
    from cortex.options import config

    return Path(config.get("basic", "filestore")) / surface


def _transform_dir(surface: str, transform: str) -> Path:
    return pycortex_dir(surface) / "transforms" / transform


def has_display(surface: str, transform: str = "") -> bool:
    """True when pycortex's database holds ``surface`` (with a flat map) and, if given, its ``transform``."""
    folder = pycortex_dir(surface)
    if not (folder / "surfaces").is_dir() or not any((folder / "surfaces").glob("flat_*")):
        return False
    return not transform or (_transform_dir(surface, transform) / "matrices.xfm").is_file()


def check_transform(surface: str, transform: str, volume_shape, affine, label: str) -> None:
    """Raise unless pycortex's ``surface``/``transform`` exists and its reference grid is ``volume_shape`` with
    ``affine`` (the grid of the volume subject called ``label`` in messages)."""
    import nibabel as nib

    folder = _transform_dir(surface, transform)
    if not has_display(surface):
        raise ValueError(f"pycortex database {pycortex_dir(surface)} has no subject {surface!r} with a flat map.")
    if not (folder / "matrices.xfm").is_file():
        names = sorted(p.name for p in folder.parent.glob("*") if (p / "matrices.xfm").is_file())
        raise ValueError(f"pycortex subject {surface!r} has no transform {transform!r} "
                         f"({folder / 'matrices.xfm'} missing); transforms there: {names}.")
    reference = folder / "reference.nii.gz"
    try:
        image = nib.load(str(reference))
    except Exception as exc:  # nibabel raises several types for missing/corrupt files
        raise ValueError(f"Reference volume {reference} of transform {transform!r} is unreadable: {exc}") from exc
    shape = tuple(int(s) for s in image.shape[:3])
    if shape != tuple(volume_shape):
        raise ValueError(f"Transform {surface}/{transform} ({reference}) has grid shape {shape}, but subject "
                         f"{label!r} has volume_shape {tuple(volume_shape)}.")
    if not np.allclose(image.affine, affine, atol=1e-3):
        raise ValueError(f"Transform {surface}/{transform} ({reference}) has a different affine than subject "
                         f"{label!r}: {np.round(image.affine, 3).tolist()} vs {np.round(affine, 3).tolist()}.")


def transform_digest(surface: str, transform: str) -> str:
    """Hash of the transform's matrix and reference volume files."""
    folder = _transform_dir(surface, transform)
    digest = hashlib.sha256()
    for name in ("matrices.xfm", "reference.nii.gz"):
        if (folder / name).is_file():
            digest.update((folder / name).read_bytes())
    return digest.hexdigest()[:16]


def grid_cells(ijk: np.ndarray, volume_shape) -> np.ndarray:
    """Column of each voxel in pycortex's mapper: C order of the (k, j, i) volume pycortex uses."""
    return np.ravel_multi_index((ijk[:, 2], ijk[:, 1], ijk[:, 0]), tuple(volume_shape)[::-1])


def voxel_of_cell(cells: np.ndarray, n_cells: int) -> np.ndarray:
    """``[n_cells + 1]`` voxel index of each grid cell (-1: none); index -1 (no cell) maps to -1 too."""
    lookup = np.full(n_cells + 1, -1, np.int64)
    lookup[cells] = np.arange(len(cells))
    return lookup


@lru_cache(maxsize=2)
def pycortex_mapper(surface: str, transform: str, kind: str = MAPPER):
    """pycortex's ``kind`` mapper of ``surface``/``transform`` as a csr ``[n_vertices, n_grid_cells]``.

    Built with pycortex's own mapper classes (as ``cortex.get_mapper`` does), written to a temporary
    file rather than pycortex's database cache, which may be shared and read-only."""
    from cortex.mapper import line, point
    from scipy import sparse

    classes = {"nearest": point.PointNN, "line_nearest": line.LineNN}
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        mapper = classes[kind]._cache(str(Path(tmp) / "mapper.npz"), surface, transform)
    return sparse.vstack(mapper.masks).tocsr()


def dominant_cells(full) -> np.ndarray:
    """``[n_vertices]`` column of the largest weight of each row of a csr matrix, -1 for empty rows."""
    counts = np.diff(full.indptr)
    out = np.full(full.shape[0], -1, np.int64)
    rows = np.flatnonzero(counts)
    if len(rows):
        best = np.asarray(full[rows].argmax(axis=1)).ravel()
        out[rows] = best
    return out


def display_hemispheres(ijk: np.ndarray, volume_shape, surface: str, transform: str) -> np.ndarray:
    """``[n_voxels]`` is_right of grid voxels shown on ``surface`` through ``transform``: the hemisphere of
    most of the vertices whose dominant cell (pycortex's mapper) the voxel is; a voxel no vertex shows
    takes the hemisphere of the nearest voxel (in grid steps) that one does."""
    import cortex
    from scipy.spatial import cKDTree

    full = pycortex_mapper(surface, transform)
    voxels = voxel_of_cell(grid_cells(ijk, volume_shape), full.shape[1])[dominant_cells(full)]
    shown = voxels >= 0
    (lh, _), _ = cortex.db.get_surf(surface, "flat", merge=False)
    side = np.where(np.arange(len(voxels)) >= len(lh), 1.0, -1.0)
    votes = np.bincount(voxels[shown], weights=side[shown], minlength=len(ijk))
    counted = np.bincount(voxels[shown], minlength=len(ijk)) > 0
    if not counted.any():
        raise ValueError(f"No voxel of this grid is shown on pycortex {surface!r} through {transform!r}.")
    if not counted.all():
        _, nearest = cKDTree(ijk[counted]).query(ijk[~counted])
        votes[~counted] = votes[counted][nearest]
    return votes > 0
