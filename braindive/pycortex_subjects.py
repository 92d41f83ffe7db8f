"""The built-in subjects' voxel spaces, read from pycortex's database (reads: ``braindive.pycortex_db``).

Returns the fields of a ``Subject`` rather than one, so that this module does not import
``braindive.subjects``: ``subjects.load_subject`` builds the ``Subject`` from them and caches it.

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
(``cache_dir("subjects")``, by ``subjects``) and rebuilt when ``cache_key`` changes: ``overlays.svg``,
pycortex, these settings, and for volumes the transform's files and the mapper.
"""
from __future__ import annotations

import hashlib
import warnings

import numpy as np

from .pycortex_db import (MAPPER, dominant_cells, grid_cells, pycortex_dir, pycortex_mapper, transform_digest,
                          voxel_of_cell)

__all__ = ["BUILT_IN", "VISUAL_ROIS", "S1_MARGIN_MM", "cache_key", "surface_fields", "volume_fields"]

VISUAL_ROIS = ("V1", "V2", "V3", "V3A", "V3B", "V4", "V7", "LO", "OFA", "FFA", "EBA", "PPA", "OPA", "RSC")
S1_MARGIN_MM = 4.0
BUILT_IN = {"S1": ("S1", ""), "S1-fullhead": ("S1", "fullhead")}  # name -> pycortex surface, transform
_BUILD_VERSION = 2  # part of the cache key: bump when a build changes


def cache_key(surface: str, transform: str = "") -> str:
    """What a built-in subject of ``surface`` (through ``transform`` for a volume) is built from, hashed."""
    if not transform:
        return _cache_key(surface)
    return _cache_key(surface, transform, transform_digest(surface, transform), MAPPER, "display-hemispheres")


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


def surface_fields(surface: str) -> dict:
    """``Subject`` fields of the visual-cortex vertices of a pycortex subject (+ margin), with ROIs."""
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
    return dict(
        name=surface, surface=surface, vertices=vertices, n_vertices_lh=n_lh, n_vertices=n_lh + n_rh, rois=rois,
        space=f"pycortex:{surface}:visual+{S1_MARGIN_MM:g}mm",
        description=(f"pycortex subject {surface}: vertices of visual ROIs {', '.join(rois)} "
                     f"plus a {S1_MARGIN_MM:g} mm margin"),
    )


def volume_fields(surface: str, transform: str, vertices: np.ndarray, base_rois: dict) -> dict:
    """``Subject.from_volume`` arguments: the grid cells of ``transform`` that the voxels (``vertices``, ROIs
    ``base_rois``) of ``surface``'s built-in surface subject map onto (see above)."""
    import cortex

    reference = cortex.db.get_xfm(surface, transform).reference
    shape = tuple(int(n) for n in reference.shape[:3])
    full = pycortex_mapper(surface, transform)
    cells = dominant_cells(full)[vertices]
    k, j, i = np.unravel_index(np.unique(cells[cells >= 0]), shape[::-1])
    ijk = np.stack([i, j, k], axis=1)[np.lexsort((k, j, i))]
    voxel_of_base = voxel_of_cell(grid_cells(ijk, shape), full.shape[1])[cells]  # -1: maps onto no voxel
    rois = {}
    for name, idx in base_rois.items():
        found = voxel_of_base[idx]
        rois[name] = np.unique(found[found >= 0])
    return dict(
        name=f"{surface}-{transform}", ijk=ijk, affine=reference.affine, volume_shape=shape, rois=rois,
        surface=surface, transform=transform, space=transform,
        description=(f"pycortex {surface}, transform {transform}: grid voxels under the visual ROIs "
                     f"{', '.join(rois)} plus a {S1_MARGIN_MM:g} mm margin (a volume subject for offline tests)"),
    )
