"""Subjects: a voxel space with named regions of interest, and its identity.

A *voxel* is one response unit of an encoder. A subject's voxels are one of two ``KINDS``:

* ``"surface"``: voxels are vertices of a pycortex surface (``Subject.vertices``), e.g. S1 or
  fsaverage. The surface is part of the space's identity.
* ``"volume"``: voxels are cells of a reference grid (``Subject.ijk`` in NIfTI axis order, the grid's
  ``volume_shape`` and ``affine`` voxel -> scanner mm), e.g. NSD's func1pt8mm. Such a subject can be
  *displayed* on a pycortex surface through a pycortex transform (``surface``, ``transform``); the
  display is not part of its identity (``with_display``).

``Subject.fingerprint`` identifies the voxel space; encoders record it, and everything that pairs
voxel indices with an encoder compares fingerprints, never names.

Registered subjects (``available_subjects``) are built from pycortex's bundled database (read by
``braindive.pycortex_subjects``) and cached on disk; any other subject is a ``.npz`` file written by
``Subject.save`` and loaded with ``load_subject(path)``.

ROIs are addressed as a whole (``"FFA"``) or per hemisphere (``"FFA.lh"``, ``"FFA.rh"``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from . import pycortex_subjects
from .cache import cache_dir, private_tmp
from .pycortex_db import check_transform, display_hemispheres, has_display

__all__ = [
    "Subject",
    "load_subject",
    "available_subjects",
    "is_built_in",
    "check_voxel_indices",
    "HEMISPHERES",
    "KINDS",
]

HEMISPHERES = ("lh", "rh")
KINDS = ("surface", "volume")
_FORMAT_VERSION = 3  # 2: surface-only files (still read); 3: adds kind, transform and the volume grid


@dataclass(frozen=True, eq=False)
class Subject:
    """A voxel space: surface vertices or cells of a volume grid, with ROIs.

    Attributes:
        name: the person's name (``"S1"``, ``"subj01"``); for people only, never for matching.
        surface: pycortex subject the voxels are drawn on (``""``: no display).
        vertices: surface kind: ``[n_voxels]`` vertex index of each voxel (pycortex order: left then
            right); volume kind: ``None``.
        n_vertices_lh, n_vertices: surface kind: left-hemisphere and total vertex count of ``surface``.
        rois: ROI name -> sorted voxel indices (both hemispheres).
        space: short label of the voxel space (``"func1pt8mm"``, ``"fsaverage"``).
        description: one line for people.
        kind: one of ``KINDS``.
        transform: volume kind: pycortex transform from ``surface`` to the grid (``""``: none).
        ijk: volume kind: ``[n_voxels, 3]`` int grid coordinates (NIfTI order i, j, k).
        volume_shape: volume kind: grid shape ``(ni, nj, nk)``.
        affine: volume kind: ``[4, 4]`` grid voxel -> scanner mm.
        right: volume kind: ``[n_voxels]`` bool, True for right-hemisphere voxels.
    """

    name: str
    surface: str = ""
    vertices: np.ndarray | None = None
    n_vertices_lh: int = 0
    n_vertices: int = 0
    rois: dict[str, np.ndarray] = field(default_factory=dict)
    space: str = "surface"
    description: str = ""
    extra: dict = field(default_factory=dict)
    kind: str = "surface"
    transform: str = ""
    ijk: np.ndarray | None = None
    volume_shape: tuple[int, int, int] | None = None
    affine: np.ndarray | None = None
    right: np.ndarray | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"`kind` must be one of {list(KINDS)}, got {self.kind!r}.")
        if self.kind == "surface":
            self._check_surface()
        else:
            self._check_volume()
        rois = {str(k): np.asarray(v, np.int64) for k, v in self.rois.items()}
        for roi, idx in rois.items():
            if len(idx) and (idx.min() < 0 or idx.max() >= self.n_voxels):
                raise ValueError(
                    f"ROI {roi!r} of subject {self.name!r} has voxel indices outside [0, {self.n_voxels})."
                )
        object.__setattr__(self, "rois", rois)

    def _check_surface(self) -> None:
        if self.vertices is None:
            raise ValueError(f"Surface subject {self.name!r} needs `vertices`.")
        vertices = np.asarray(self.vertices, np.int64).ravel()
        if len(vertices) and (vertices.min() < 0 or vertices.max() >= max(self.n_vertices, 1)):
            raise ValueError(f"`vertices` of subject {self.name!r} must lie in [0, {self.n_vertices}).")
        object.__setattr__(self, "vertices", vertices)
        object.__setattr__(self, "n_vertices_lh", int(self.n_vertices_lh))
        object.__setattr__(self, "n_vertices", int(self.n_vertices))

    def _check_volume(self) -> None:
        if self.ijk is None or self.volume_shape is None or self.affine is None:
            raise ValueError(f"Volume subject {self.name!r} needs `ijk`, `volume_shape` and `affine`.")
        shape = tuple(int(s) for s in self.volume_shape)
        ijk = np.asarray(self.ijk)
        affine = np.asarray(self.affine, np.float64)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"`volume_shape` must be 3 positive sizes, got {self.volume_shape!r}.")
        if ijk.ndim != 2 or ijk.shape[1] != 3 or not np.issubdtype(ijk.dtype, np.integer):
            raise ValueError(f"`ijk` must be an integer [n_voxels, 3] array, got {ijk.dtype} {ijk.shape}.")
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise ValueError(f"`affine` must be a finite 4x4 matrix, got shape {affine.shape}.")
        outside = np.flatnonzero(((ijk < 0) | (ijk >= np.array(shape))).any(axis=1))
        if len(outside):
            raise ValueError(f"Volume subject {self.name!r}: {len(outside)} voxels lie outside the grid {shape}, "
                             f"e.g. voxel {outside[0]} at ijk {ijk[outside[0]].tolist()}.")
        flat = np.ravel_multi_index(tuple(ijk.T), shape)
        if len(np.unique(flat)) != len(flat):
            raise ValueError(f"Volume subject {self.name!r}: `ijk` lists a grid cell twice.")
        right = np.zeros(len(ijk), bool) if self.right is None else np.asarray(self.right, bool).ravel()
        if right.shape != (len(ijk),):
            raise ValueError(f"`is_right` must have shape ({len(ijk)},), got {right.shape}.")
        fields = {"ijk": ijk.astype(np.int64), "volume_shape": shape, "affine": affine, "right": right}
        for key, value in fields.items():
            object.__setattr__(self, key, value)

    @classmethod
    def from_volume(cls, name, ijk, affine, volume_shape, rois, *, is_right=None, surface="", transform="",
                    space="", description="", extra=None) -> "Subject":
        """A volume subject. Without ``is_right``, hemispheres come from the display (the hemisphere of the
        vertices that show each voxel; the transform is checked first) or, with no display, from the
        voxel centre lying at scanner x > 0 (RAS+)."""
        ijk = np.asarray(ijk)
        if is_right is None and ijk.ndim == 2 and ijk.shape[-1] == 3 and np.issubdtype(ijk.dtype, np.integer):
            if surface and transform:
                bare = cls.from_volume(name, ijk, affine, volume_shape, rois, is_right=np.zeros(len(ijk), bool))
                bare.with_display(surface, transform)  # checks the transform against the grid
                is_right = display_hemispheres(ijk, volume_shape, surface, transform)
            else:
                xyz = np.c_[ijk, np.ones(len(ijk))] @ np.asarray(affine, np.float64).T
                is_right = xyz[:, 0] > 0
        return cls(name=name, surface=surface, rois=rois, space=space or "volume", description=description,
                   extra=dict(extra or {}), kind="volume", transform=transform, ijk=ijk, volume_shape=volume_shape,
                   affine=affine, right=is_right)

    def with_display(self, surface: str, transform: str = "") -> "Subject":
        """This voxel space drawn on pycortex ``surface`` (through ``transform`` for volumes); same fingerprint."""
        if self.kind == "surface":
            if surface != self.surface or transform:
                raise ValueError(f"Surface subject {self.name!r} is drawn on its own surface {self.surface!r}; "
                                 f"got surface={surface!r}, transform={transform!r}.")
            return self
        if bool(surface) != bool(transform):
            raise ValueError(f"A volume subject needs both `surface` and `transform` to be drawn (or neither), "
                             f"got surface={surface!r}, transform={transform!r}.")
        if surface:
            check_transform(surface, transform, self.volume_shape, self.affine, self.label)
        return dataclasses.replace(self, surface=surface, transform=transform)

    @property
    def n_voxels(self) -> int:
        return int(len(self.vertices) if self.kind == "surface" else len(self.ijk))

    @property
    def roi_names(self) -> list[str]:
        """ROI names that have at least one voxel, sorted."""
        return sorted(name for name, idx in self.rois.items() if len(idx))

    @property
    def is_right(self) -> np.ndarray:
        """``[n_voxels]`` bool, True for right-hemisphere voxels."""
        return self.vertices >= self.n_vertices_lh if self.kind == "surface" else self.right

    @cached_property
    def fingerprint(self) -> str:
        """Hex sha256 of the voxel space: kind, surface (name, vertex count) or grid (shape, affine
        rounded to 1e-4 mm), and the voxel list. Names, ROIs and a volume's display are not part of it."""
        if self.kind == "surface":
            header = {"kind": "surface", "surface": self.surface, "n_vertices": self.n_vertices}
            voxels = self.vertices
        else:
            header = {"kind": "volume", "volume_shape": list(self.volume_shape),
                      "affine_1e-4": np.rint(self.affine * 1e4).astype(np.int64).ravel().tolist()}
            voxels = self.ijk
        digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
        digest.update(np.ascontiguousarray(voxels, "<i8").tobytes())
        return digest.hexdigest()

    @property
    def label(self) -> str:
        """Name and space for people, e.g. ``"subj01 · func1pt8mm"``."""
        return f"{self.name} · {self.space}" if self.space else self.name

    @property
    def drawable(self) -> bool:
        """True when the pycortex surface (and, for volumes, the transform) to draw this subject exists."""
        if not self.surface or (self.kind == "volume" and not self.transform):
            return False
        return has_display(self.surface, self.transform if self.kind == "volume" else "")

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

    def _check_values(self, values) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (self.n_voxels,):
            raise ValueError(
                f"`values` must have shape ({self.n_voxels},) for subject {self.name!r}, got {values.shape}."
            )
        return values

    def to_surface(self, values: np.ndarray) -> np.ndarray:
        """Surface kind: scatter ``[n_voxels]`` values to a ``[n_vertices]`` array (NaN where no voxel).

        Volume subjects reach their surface through ``braindive.flatmap.voxel_mapping``."""
        if self.kind != "surface":
            raise ValueError(f"Subject {self.label!r} is a volume; map it to a surface with "
                             "braindive.flatmap.voxel_mapping(subject).to_vertices(values).")
        out = np.full(self.n_vertices, np.nan)
        out[self.vertices] = self._check_values(values)
        return out

    def to_volume(self, values: np.ndarray) -> np.ndarray:
        """Volume kind: scatter ``[n_voxels]`` values into a ``volume_shape`` array (NaN elsewhere)."""
        if self.kind != "volume":
            raise ValueError(f"Subject {self.label!r} is a surface subject and has no volume grid.")
        out = np.full(self.volume_shape, np.nan)
        out[tuple(self.ijk.T)] = self._check_values(values)
        return out

    def save(self, path) -> Path:
        """Write the subject as one ``.npz`` file (no pickle), atomically."""
        path = Path(path)
        meta = {
            "format_version": _FORMAT_VERSION, "name": self.name, "kind": self.kind, "surface": self.surface,
            "transform": self.transform, "n_vertices_lh": self.n_vertices_lh, "n_vertices": self.n_vertices,
            "space": self.space, "description": self.description, "roi_names": list(self.rois),
            "extra": self.extra, "volume_shape": list(self.volume_shape) if self.kind == "volume" else None,
        }
        arrays = {f"roi__{k}": v.astype(np.int64) for k, v in self.rois.items()}
        if self.kind == "surface":
            arrays["vertices"] = self.vertices.astype(np.int64)
        else:
            arrays.update(ijk=self.ijk.astype(np.int64), affine=self.affine, is_right=self.right)
        tmp = private_tmp(path, ".tmp.npz")
        np.savez_compressed(tmp, meta=np.array(json.dumps(meta)), **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path) -> "Subject":
        """Read a file written by ``save`` (format 3, or the surface-only format 2)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Subject file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                version = int(meta.get("format_version", 1))
                if version > _FORMAT_VERSION:
                    raise ValueError(f"format version {version} is newer than this braindive ({_FORMAT_VERSION})")
                arrays = {k: np.asarray(data[k]) for k in data.files if k != "meta"}
                rois = {name: arrays[f"roi__{name}"] for name in meta["roi_names"]}
        except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"Subject file {path} is corrupt or not a subject file: {exc}") from exc
        common = dict(name=meta["name"], rois=rois, space=meta.get("space", "surface"),
                      description=meta.get("description", ""), extra=meta.get("extra", {}))
        try:
            if meta.get("kind", "surface") == "volume":
                return cls.from_volume(ijk=arrays["ijk"], affine=arrays["affine"], volume_shape=meta["volume_shape"],
                                       is_right=arrays["is_right"], surface=meta["surface"],
                                       transform=meta["transform"], **common)
            return cls(surface=meta["surface"], vertices=arrays["vertices"], n_vertices_lh=int(meta["n_vertices_lh"]),
                       n_vertices=int(meta["n_vertices"]), **common)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"Subject file {path} is not a valid subject: {exc}") from exc


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


def _registered(name: str):
    def build() -> Subject:
        """The built-in subject ``name`` from pycortex's database, cached on disk (a corrupt file is rebuilt)."""
        surface, transform = pycortex_subjects.BUILT_IN[name]
        path = cache_dir("subjects") / f"{name}-{pycortex_subjects.cache_key(surface, transform)}.npz"
        if path.is_file():
            try:
                return Subject.load(path)
            except ValueError:
                path.unlink(missing_ok=True)
        if transform:
            base = load_subject(surface)
            subject = Subject.from_volume(**pycortex_subjects.volume_fields(surface, transform, base.vertices,
                                                                            base.rois))
        else:
            subject = Subject(**pycortex_subjects.surface_fields(surface))
        subject.save(path)
        return subject

    return build


SUBJECTS = {name: _registered(name) for name in pycortex_subjects.BUILT_IN}


def available_subjects() -> list[str]:
    """Names accepted by ``load_subject`` besides paths to subject files."""
    return sorted(SUBJECTS)


def is_built_in(subject: Subject) -> bool:
    """True when ``load_subject(subject.name)`` gives this subject back: a registered name, the same
    voxel space and the same ROIs (a built-in subject with added ROIs needs its own file)."""
    if subject.name not in SUBJECTS:
        return False
    registered = load_subject(subject.name)
    return registered.fingerprint == subject.fingerprint and registered.rois.keys() == subject.rois.keys() and all(
        np.array_equal(registered.rois[k], v) for k, v in subject.rois.items())


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
