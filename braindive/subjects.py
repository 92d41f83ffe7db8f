"""Subjects: a voxel space on a pycortex surface, with named regions of interest.

A *voxel* here is one response unit of an encoder. Every voxel sits on a vertex of a pycortex
surface (``Subject.vertices``), so any per-voxel array can be drawn on the subject's flatmap.

* ``S1`` is pycortex's bundled subject. Its voxels are the surface vertices inside the visual ROIs
  of its ``overlays.svg`` (``VISUAL_ROIS`` that exist there) plus every flat-map vertex within
  ``S1_MARGIN_MM`` millimetres (fiducial surface) of them. Extracting ROI vertices from the SVG takes
  seconds, so the result is cached on disk and rebuilt when ``overlays.svg`` or these settings change.
* Any other subject (e.g. an NSD subject prepared by ``training``) is a ``.npz`` file written by
  ``Subject.save`` and loaded with ``load_subject(path)``.

ROIs are addressed as a whole (``"FFA"``) or per hemisphere (``"FFA.lh"``, ``"FFA.rh"``).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .cache import cache_dir, private_tmp

__all__ = [
    "Subject",
    "load_subject",
    "available_subjects",
    "VISUAL_ROIS",
    "S1_MARGIN_MM",
    "HEMISPHERES",
]

VISUAL_ROIS = ("V1", "V2", "V3", "V3A", "V3B", "V4", "V7", "LO", "OFA", "FFA", "EBA", "PPA", "OPA", "RSC")
S1_MARGIN_MM = 4.0
HEMISPHERES = ("lh", "rh")
_FORMAT_VERSION = 2


@dataclass(frozen=True, eq=False)
class Subject:
    """A voxel space on a pycortex surface subject.

    Attributes:
        name: the subject's name (``"S1"``, ``"subj01"``).
        surface: the pycortex database subject the voxels live on.
        vertices: ``[n_voxels]`` vertex index of each voxel (pycortex order: left then right).
        n_vertices_lh: number of left-hemisphere vertices of ``surface``.
        n_vertices: total number of vertices of ``surface``.
        rois: ROI name -> sorted voxel indices (both hemispheres).
        space: label of the voxel space, recorded in encoder checkpoints.
        description: one line for people.
    """

    name: str
    surface: str
    vertices: np.ndarray
    n_vertices_lh: int
    n_vertices: int
    rois: dict[str, np.ndarray]
    space: str = "surface"
    description: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def n_voxels(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def roi_names(self) -> list[str]:
        """ROI names that have at least one voxel, sorted."""
        return sorted(name for name, idx in self.rois.items() if len(idx))

    @property
    def is_right(self) -> np.ndarray:
        """``[n_voxels]`` bool, True for right-hemisphere voxels."""
        return self.vertices >= self.n_vertices_lh

    def hemisphere_of(self, voxel: int) -> str:
        return HEMISPHERES[int(self.is_right[voxel])]

    def roi(self, name: str) -> np.ndarray:
        """Voxel indices of ROI ``name`` (``"FFA"``) or of one hemisphere of it (``"FFA.lh"``)."""
        base, _, hemi = str(name).partition(".")
        if base not in self.rois or not len(self.rois[base]) or (hemi and hemi not in HEMISPHERES):
            raise ValueError(
                f"`roi` must be one of {self.roi_names} (optionally with .lh or .rh) for subject "
                f"{self.name!r}, got {name!r}."
            )
        idx = self.rois[base]
        if hemi:
            idx = idx[self.is_right[idx] == (hemi == "rh")]
        return idx

    def rois_of_voxel(self, voxel: int) -> list[str]:
        """Names of the ROIs containing ``voxel``."""
        return [name for name in self.roi_names if _contains(self.rois[name], voxel)]

    def check_voxels(self, voxels, argument: str = "voxels") -> np.ndarray:
        """Validate a voxel index set: non-empty, integer, in range. Returns sorted unique indices."""
        return check_voxel_indices(voxels, self.n_voxels, argument)

    def to_surface(self, values: np.ndarray) -> np.ndarray:
        """Scatter ``[n_voxels]`` values to a ``[n_vertices]`` float array (NaN where no voxel)."""
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (self.n_voxels,):
            raise ValueError(
                f"`values` must have shape ({self.n_voxels},) for subject {self.name!r}, got {values.shape}."
            )
        out = np.full(self.n_vertices, np.nan)
        out[self.vertices] = values
        return out

    def save(self, path) -> Path:
        """Write the subject as one ``.npz`` file (no pickle)."""
        path = Path(path)
        meta = {
            "format_version": _FORMAT_VERSION,
            "name": self.name,
            "surface": self.surface,
            "n_vertices_lh": self.n_vertices_lh,
            "n_vertices": self.n_vertices,
            "space": self.space,
            "description": self.description,
            "roi_names": list(self.rois),
            "extra": self.extra,
        }
        arrays = {f"roi__{k}": v.astype(np.int64) for k, v in self.rois.items()}
        tmp = private_tmp(path, ".tmp.npz")
        np.savez_compressed(tmp, meta=np.array(json.dumps(meta)), vertices=self.vertices.astype(np.int64), **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path) -> "Subject":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Subject file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                rois = {name: np.asarray(data[f"roi__{name}"]) for name in meta["roi_names"]}
                vertices = np.asarray(data["vertices"])
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"Subject file {path} is corrupt or not a subject file: {exc}") from exc
        return cls(
            name=meta["name"],
            surface=meta["surface"],
            vertices=vertices,
            n_vertices_lh=int(meta["n_vertices_lh"]),
            n_vertices=int(meta["n_vertices"]),
            rois=rois,
            space=meta.get("space", "surface"),
            description=meta.get("description", ""),
            extra=meta.get("extra", {}),
        )


def check_voxel_indices(voxels, n_voxels: int, argument: str = "voxels") -> np.ndarray:
    """Validate indices into a space of ``n_voxels``; returns sorted unique int64 indices."""
    arr = np.asarray(voxels)
    if arr.size == 0:
        raise ValueError(f"`{argument}` is an empty voxel set; select at least one voxel.")
    if arr.dtype == bool:
        if arr.shape != (n_voxels,):
            raise ValueError(f"`{argument}` boolean mask must have shape ({n_voxels},), got {arr.shape}.")
        arr = np.flatnonzero(arr)
        if arr.size == 0:
            raise ValueError(f"`{argument}` is an empty voxel set; select at least one voxel.")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"`{argument}` must hold integer voxel indices, got dtype {arr.dtype}.")
    arr = np.unique(arr.ravel()).astype(np.int64)
    if arr[0] < 0 or arr[-1] >= n_voxels:
        bad = arr[(arr < 0) | (arr >= n_voxels)]
        raise ValueError(f"`{argument}` has indices out of range [0, {n_voxels}): {bad[:5].tolist()}.")
    return arr


def _contains(sorted_idx: np.ndarray, value: int) -> bool:
    pos = np.searchsorted(sorted_idx, value)
    return bool(pos < len(sorted_idx) and sorted_idx[pos] == value)


# --------------------------------------------------------------------------- pycortex S1


def _pycortex_subject_dir(surface: str) -> Path:
    import cortex  # noqa: F401  (pycortex reads its config on import)
    from cortex.options import config

    return Path(config.get("basic", "filestore")) / surface


def _s1_cache_key(surface: str) -> str:
    import cortex

    svg = (_pycortex_subject_dir(surface) / "overlays.svg").read_bytes()
    parts = [hashlib.sha256(svg).hexdigest(), cortex.__version__, repr(VISUAL_ROIS), repr(S1_MARGIN_MM), str(_FORMAT_VERSION)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _build_pycortex_subject(surface: str) -> Subject:
    """Extract the visual-cortex voxel space of a pycortex subject (slow: reads overlays.svg)."""
    import warnings

    import cortex
    from scipy.spatial import cKDTree

    (lh_flat, lh_faces), (rh_flat, rh_faces) = cortex.db.get_surf(surface, "flat", merge=False)
    n_lh, n_rh = lh_flat.shape[0], rh_flat.shape[0]
    fid_pts, _ = cortex.db.get_surf(surface, "fiducial", merge=True)
    on_flat = np.zeros(n_lh + n_rh, bool)
    on_flat[np.unique(lh_faces)] = True
    on_flat[n_lh + np.unique(rh_faces)] = True

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        roi_verts = cortex.utils.get_roi_verts(surface, mask=False)
    roi_verts = {name: np.asarray(v, np.int64) for name, v in roi_verts.items() if len(v)}
    visual = [name for name in VISUAL_ROIS if name in roi_verts]
    seed = np.unique(np.concatenate([roi_verts[name] for name in visual]))
    seed = seed[on_flat[seed]]

    tree = cKDTree(fid_pts[seed])
    dist, _ = tree.query(fid_pts, k=1, distance_upper_bound=S1_MARGIN_MM)
    vertices = np.flatnonzero(np.isfinite(dist) & on_flat)

    lookup = np.full(n_lh + n_rh, -1, np.int64)
    lookup[vertices] = np.arange(len(vertices))
    rois = {}
    for name in visual:
        idx = lookup[roi_verts[name]]
        idx = np.unique(idx[idx >= 0])
        if len(idx):
            rois[name] = idx
    return Subject(
        name=surface,
        surface=surface,
        vertices=vertices,
        n_vertices_lh=n_lh,
        n_vertices=n_lh + n_rh,
        rois=rois,
        space=f"pycortex:{surface}:visual+{S1_MARGIN_MM:g}mm",
        description=(
            f"pycortex subject {surface}: vertices of visual ROIs {', '.join(visual)} "
            f"plus a {S1_MARGIN_MM:g} mm margin"
        ),
    )


def _load_pycortex_subject(surface: str) -> Subject:
    path = cache_dir("subjects") / f"{surface}-{_s1_cache_key(surface)}.npz"
    if path.is_file():
        try:
            return Subject.load(path)
        except ValueError:
            path.unlink(missing_ok=True)  # corrupt cache: rebuild below
    subject = _build_pycortex_subject(surface)
    subject.save(path)
    return subject


SUBJECTS = {"S1": lambda: _load_pycortex_subject("S1")}


def available_subjects() -> list[str]:
    """Names accepted by ``load_subject`` besides paths to subject files."""
    return sorted(SUBJECTS)


def load_subject(name_or_path) -> Subject:
    """Load a subject by registered name (``"S1"``) or from a ``.npz`` file written by ``Subject.save``."""
    key = str(name_or_path)
    if key in SUBJECTS:
        return _memo(key)
    if key.endswith(".npz") or Path(key).is_file():
        return Subject.load(key)
    raise ValueError(f"`subject` must be one of {available_subjects()} or a subject .npz file, got {key!r}.")


_LOADED: dict[str, Subject] = {}


def _memo(key: str) -> Subject:
    if key not in _LOADED:
        _LOADED[key] = SUBJECTS[key]()
    return _LOADED[key]
