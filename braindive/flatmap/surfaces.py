"""pycortex surfaces as the flatmap needs them, cached per surface: flat coordinates, curvature, mesh graph.

Also the two small caches the package shares: arrays kept on disk (``cached_arrays``) and values kept
per ``Subject`` object (``per_subject``).
"""
from __future__ import annotations

import hashlib
import warnings
import weakref
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..cache import cache_dir, private_tmp
from ..subjects import HEMISPHERES, Subject

FORMAT_VERSION = 1  # of every cache file of this package


@dataclass(frozen=True)
class FlatSurface:
    xy: np.ndarray  # [n_vertices, 2] flat coordinates, hemispheres nudged apart as in quickflat
    faces: np.ndarray  # [n_faces, 3] triangles of the flat map (cuts removed)
    on_map: np.ndarray  # [n_vertices] bool: the vertex belongs to a triangle
    bounds: np.ndarray  # [2, 2] lowest and highest (x, y) of those vertices
    n_vertices_lh: int
    digest: str  # hash of the surface files

    @property
    def n_vertices(self) -> int:
        return len(self.xy)


@lru_cache(maxsize=8)
def flat_surface(surface: str) -> FlatSurface:
    import cortex

    (lh, _), _ = cortex.db.get_surf(surface, "flat", merge=False)
    pts, faces = cortex.db.get_surf(surface, "flat", merge=True, nudge=True)
    xy = np.asarray(pts[:, :2], np.float64)
    on_map = np.zeros(len(xy), bool)
    on_map[faces] = True
    return FlatSurface(xy=xy, faces=np.asarray(faces, np.int64), on_map=on_map, bounds=box(xy[on_map]),
                       n_vertices_lh=len(lh), digest=surface_digest(surface))


def box(points: np.ndarray) -> np.ndarray:
    """``[[x_min, y_min], [x_max, y_max]]`` of ``points``."""
    return np.stack([points.min(0), points.max(0)])


def surface_digest(surface: str) -> str:
    """Hash of pycortex's version and the surface files of ``surface``."""
    import cortex

    paths = cortex.db.get_paths(surface)["surfs"]
    digest = hashlib.sha256(cortex.__version__.encode())
    for kind in ("flat", "fiducial", "pia", "wm"):
        for hemi in HEMISPHERES:
            if hemi in paths.get(kind, {}):
                digest.update(Path(paths[kind][hemi]).read_bytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class SurfaceInfo:
    curvature: np.ndarray  # [n_vertices] smoothed mean curvature of the fiducial surface
    graph: object  # sparse [n_vertices, n_vertices] edge lengths (mm) of the fiducial mesh


@lru_cache(maxsize=8)
def surface_info(surface: str) -> SurfaceInfo:
    from scipy import sparse

    path = cache_dir("flatmap") / f"{surface}-{flat_surface(surface).digest}-v{FORMAT_VERSION}-surface.npz"
    data = cached_arrays(path, lambda: _build_surface_info(surface))
    n = int(data["n_vertices"])
    graph = sparse.csr_matrix((data["lengths"], data["indices"], data["indptr"]), shape=(n, n))
    return SurfaceInfo(curvature=data["curvature"], graph=graph)


def _build_surface_info(surface: str) -> dict[str, np.ndarray]:
    """Curvature as pycortex computes it (smoothing 20) and the fiducial mesh's edge graph."""
    import cortex
    from cortex import polyutils
    from scipy import sparse

    curvature = []
    for pts, faces in cortex.db.get_surf(surface, "fiducial"):
        mesh = polyutils.Surface(pts, faces)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", sparse.SparseEfficiencyWarning)
            curvature.append(mesh.smooth(mesh.mean_curvature(), 20.0))
    pts, faces = cortex.db.get_surf(surface, "fiducial", merge=True)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = np.unique(np.sort(edges, axis=1), axis=0)
    lengths = np.linalg.norm(pts[edges[:, 0]] - pts[edges[:, 1]], axis=1)
    n = len(pts)
    graph = sparse.coo_matrix((lengths, (edges[:, 0], edges[:, 1])), shape=(n, n)).tocsr()
    return {
        "curvature": np.concatenate(curvature).astype(np.float32),
        "n_vertices": np.array(n),
        "indptr": graph.indptr,
        "indices": graph.indices,
        "lengths": graph.data.astype(np.float32),
    }


def cached_arrays(path: Path, build) -> dict[str, np.ndarray]:
    """The arrays stored in ``path``; made by ``build()`` and saved first (atomically) if missing or unreadable."""
    if path.is_file():
        try:
            with np.load(path) as data:
                return {name: data[name] for name in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            pass  # a damaged file: rebuild it
    arrays = build()
    tmp = private_tmp(path, ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return arrays


_PER_SUBJECT: "weakref.WeakKeyDictionary[Subject, dict]" = weakref.WeakKeyDictionary()


def per_subject(subject: Subject, name: str, compute):
    """``compute(subject)``, computed once per subject object."""
    memo = _PER_SUBJECT.setdefault(subject, {})
    if name not in memo:
        memo[name] = compute(subject)
    return memo[name]
