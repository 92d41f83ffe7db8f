"""Subjects built from a pycortex database (the database reads themselves: ``braindive.pycortex_db``).

* ``S1``: pycortex's bundled subject as a surface space. Its voxels are the surface vertices inside the
  visual ROIs of its ``overlays.svg`` (``VISUAL_ROIS`` that exist there) plus every flat-map vertex
  within ``S1_MARGIN_MM`` millimetres (fiducial surface) of them.
* ``S1-fullhead``: a volume space on the grid of S1's functional transform ``fullhead`` (reference
  volume 100 x 100 x 31, 2.24 x 2.24 x 4.13 mm): the grid cells that are the dominant cell
  (``braindive.pycortex_db.MAPPER``) of one of S1's voxels (vertices) above, in C order of
  (i, j, k). An ROI is the dominant cells of that ROI's vertices; hemispheres: ``display_hemispheres``.
  Displayed on S1 through ``fullhead``: the offline stand-in for an NSD
  func1pt8mm subject.

Extracting ROI vertices from the SVG takes seconds, so each built-in subject is cached on disk
(``cache_dir("subjects")``) and rebuilt when ``overlays.svg`` or these settings change.
"""
from __future__ import annotations

import hashlib
import warnings

import numpy as np

from .cache import cache_dir
from .pycortex_db import (MAPPER, dominant_cells, grid_cells, pycortex_dir, pycortex_mapper, transform_digest,
                          voxel_of_cell)
from .subjects import S1_MARGIN_MM, VISUAL_ROIS, Subject

__all__ = ["BUILT_IN", "load_surface_subject", "load_volume_subject"]

_BUILD_VERSION = 2  # part of the cache key: bump when a build changes


def _cache_key(surface: str, *parts) -> str:
    import cortex

    svg = (pycortex_dir(surface) / "overlays.svg").read_bytes()
    fields = [hashlib.sha256(svg).hexdigest(), cortex.__version__, repr(VISUAL_ROIS), repr(S1_MARGIN_MM),
              str(_BUILD_VERSION), *map(str, parts)]
    return hashlib.sha256("|".join(fields).encode()).hexdigest()[:16]


def _roi_vertices(surface: str) -> dict[str, np.ndarray]:
    """Vertex indices of the visual ROIs of ``surface``'s overlays.svg that exist (slow)."""
    import cortex

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        roi_verts = cortex.utils.get_roi_verts(surface, mask=False)
    return {name: np.asarray(roi_verts[name], np.int64) for name in VISUAL_ROIS if len(roi_verts.get(name, []))}


def _build_surface_subject(surface: str) -> Subject:
    """The visual-cortex vertices of a pycortex subject (+ margin), with ROIs."""
    import cortex
    from scipy.spatial import cKDTree

    (lh_flat, lh_faces), (rh_flat, rh_faces) = cortex.db.get_surf(surface, "flat", merge=False)
    n_lh, n_rh = lh_flat.shape[0], rh_flat.shape[0]
    fid_pts, _ = cortex.db.get_surf(surface, "fiducial", merge=True)
    on_flat = np.zeros(n_lh + n_rh, bool)
    on_flat[np.unique(lh_faces)] = True
    on_flat[n_lh + np.unique(rh_faces)] = True

    roi_verts = _roi_vertices(surface)
    seed = np.unique(np.concatenate(list(roi_verts.values())))
    seed = seed[on_flat[seed]]
    dist, _ = cKDTree(fid_pts[seed]).query(fid_pts, k=1, distance_upper_bound=S1_MARGIN_MM)
    vertices = np.flatnonzero(np.isfinite(dist) & on_flat)

    lookup = np.full(n_lh + n_rh, -1, np.int64)
    lookup[vertices] = np.arange(len(vertices))
    rois = {}
    for name, verts in roi_verts.items():
        idx = lookup[verts]
        idx = np.unique(idx[idx >= 0])
        if len(idx):
            rois[name] = idx
    return Subject(
        name=surface, surface=surface, vertices=vertices, n_vertices_lh=n_lh, n_vertices=n_lh + n_rh, rois=rois,
        space=f"pycortex:{surface}:visual+{S1_MARGIN_MM:g}mm",
        description=(f"pycortex subject {surface}: vertices of visual ROIs {', '.join(rois)} "
                     f"plus a {S1_MARGIN_MM:g} mm margin"),
    )


def _cached(name: str, key: str, build) -> Subject:
    path = cache_dir("subjects") / f"{name}-{key}.npz"
    if path.is_file():
        try:
            return Subject.load(path)
        except ValueError:
            path.unlink(missing_ok=True)  # corrupt cache: rebuild below
    subject = build()
    subject.save(path)
    return subject


def load_surface_subject(surface: str) -> Subject:
    return _cached(surface, _cache_key(surface), lambda: _build_surface_subject(surface))


def _build_volume_subject(surface: str, transform: str) -> Subject:
    """The grid cells of ``transform`` that S1-style surface voxels of ``surface`` map onto (see above)."""
    import cortex

    base = load_surface_subject(surface)
    reference = cortex.db.get_xfm(surface, transform).reference
    shape = tuple(int(n) for n in reference.shape[:3])
    full = pycortex_mapper(surface, transform)
    cells = dominant_cells(full)[base.vertices]
    k, j, i = np.unravel_index(np.unique(cells[cells >= 0]), shape[::-1])
    ijk = np.stack([i, j, k], axis=1)[np.lexsort((k, j, i))]
    voxel_of_base = voxel_of_cell(grid_cells(ijk, shape), full.shape[1])[cells]  # -1: maps onto no voxel
    rois = {}
    for name, idx in base.rois.items():
        found = voxel_of_base[idx]
        rois[name] = np.unique(found[found >= 0])
    return Subject.from_volume(
        f"{surface}-{transform}", ijk, reference.affine, shape, rois, surface=surface, transform=transform,
        space=transform,
        description=(f"pycortex {surface}, transform {transform}: grid voxels under the visual ROIs "
                     f"{', '.join(rois)} plus a {S1_MARGIN_MM:g} mm margin (a volume subject for offline tests)"),
    )


def load_volume_subject(surface: str, transform: str) -> Subject:
    key = _cache_key(surface, transform, transform_digest(surface, transform), MAPPER, "display-hemispheres")
    return _cached(f"{surface}-{transform}", key, lambda: _build_volume_subject(surface, transform))


BUILT_IN = {"S1": lambda: load_surface_subject("S1"), "S1-fullhead": lambda: load_volume_subject("S1", "fullhead")}
