"""Subjects built from a pycortex database, and checks of a volume subject's display transform.

* ``S1``: pycortex's bundled subject as a surface space. Its voxels are the surface vertices inside the
  visual ROIs of its ``overlays.svg`` (``VISUAL_ROIS`` that exist there) plus every flat-map vertex
  within ``S1_MARGIN_MM`` millimetres (fiducial surface) of them.

Extracting ROI vertices from the SVG takes seconds, so each built-in subject is cached on disk
(``cache_dir("subjects")``) and rebuilt when ``overlays.svg`` or these settings change.
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np

from .cache import cache_dir
from .subjects import S1_MARGIN_MM, VISUAL_ROIS, Subject

__all__ = ["BUILT_IN", "check_transform", "has_display", "pycortex_dir"]

_BUILD_VERSION = 2  # part of the cache key: bump when a build changes


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


def check_transform(subject: Subject, surface: str, transform: str) -> None:
    """Raise unless pycortex's ``surface``/``transform`` exists and its reference grid is ``subject``'s grid."""
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
    if shape != tuple(subject.volume_shape):
        raise ValueError(f"Transform {surface}/{transform} ({reference}) has grid shape {shape}, but subject "
                         f"{subject.label!r} has volume_shape {tuple(subject.volume_shape)}.")
    if not np.allclose(image.affine, subject.affine, atol=1e-3):
        raise ValueError(f"Transform {surface}/{transform} ({reference}) has a different affine than subject "
                         f"{subject.label!r}: {np.round(image.affine, 3).tolist()} vs "
                         f"{np.round(subject.affine, 3).tolist()}.")


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


BUILT_IN = {"S1": lambda: load_surface_subject("S1")}
