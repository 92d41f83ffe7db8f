"""The one voxel -> vertex mapping of a subject, through which everything is drawn, picked and painted.

``voxel_mapping(subject)`` is a sparse ``[n_vertices, n_voxels]`` matrix over the subject's display
surface plus, per vertex, its *dominant* voxel (largest weight; -1 where the vertex shows none):

* surface subjects: the identity scatter (vertex ``subject.vertices[v]`` shows voxel ``v``);
* volume subjects: pycortex's own mapper (``braindive.pycortex_db.MAPPER``) for the subject's
  ``transform`` (``line_nearest``: 64 points on the segment from white matter to pial surface, each in
  its nearest grid cell), restricted to the subject's voxels. A vertex shows a voxel only when its
  dominant grid cell is one of the subject's voxels; its value is then the weight-averaged value of the
  subject's voxels it samples. Built once per subject, cached on disk keyed by the subject's fingerprint,
  the surface files, the transform files and the mapper type.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ..cache import cache_dir
from ..pycortex_db import (MAPPER, check_transform, dominant_cells, grid_cells, has_display, pycortex_mapper,
                           transform_digest, voxel_of_cell)
from ..subjects import HEMISPHERES, Subject
from .surfaces import FORMAT_VERSION, cached_arrays, flat_surface, per_subject

__all__ = ["VoxelMapping", "voxel_mapping"]


@dataclass(frozen=True, eq=False)
class VoxelMapping:
    matrix: object  # scipy csr [n_vertices, n_voxels]; rows sum to 1 where a vertex shows a voxel, else empty
    voxel_of_vertex: np.ndarray  # [n_vertices] int64 dominant voxel, -1 where none
    n_vertices_lh: int
    key: str  # identity of the mapping (subject fingerprint, surface, transform, mapper)

    @property
    def n_vertices(self) -> int:
        return len(self.voxel_of_vertex)

    def to_vertices(self, values: np.ndarray) -> np.ndarray:
        """``[n_voxels]`` values -> ``[n_vertices]`` float array, NaN where no voxel is shown."""
        out = self.matrix @ np.asarray(values, np.float64)
        out[self.voxel_of_vertex < 0] = np.nan
        return out

    def vertex_mask(self, voxels) -> np.ndarray:
        """``[n_vertices]`` bool: vertices whose dominant voxel is in ``voxels``."""
        chosen = np.zeros(self.matrix.shape[1] + 1, bool)  # the last entry stands for "no voxel" (-1)
        chosen[np.asarray(voxels, np.int64)] = True
        return chosen[self.voxel_of_vertex]

    def voxels_at(self, vertices) -> np.ndarray:
        """Sorted unique dominant voxels of ``vertices`` (vertices without one are skipped)."""
        voxels = self.voxel_of_vertex[np.asarray(vertices, np.int64)]
        return np.unique(voxels[voxels >= 0]).astype(np.int64)

    def hemisphere_of_vertex(self, vertex: int) -> str:
        return HEMISPHERES[int(vertex >= self.n_vertices_lh)]


def voxel_mapping(subject: Subject) -> VoxelMapping:
    """The subject's voxel -> vertex mapping (see the module docstring); raises if it cannot be drawn."""
    return per_subject(subject, "mapping", _mapping)


def _mapping(subject: Subject) -> VoxelMapping:
    from scipy import sparse

    if not subject.surface or (subject.kind == "volume" and not subject.transform):
        raise ValueError(f"Subject {subject.label!r} cannot be drawn: it has no pycortex surface"
                         f"{' and transform' if subject.kind == 'volume' else ''} (see Subject.with_display).")
    if not has_display(subject.surface):
        raise ValueError(f"Subject {subject.label!r} cannot be drawn: pycortex has no subject {subject.surface!r} "
                         "with a flat map.")
    flat = flat_surface(subject.surface)
    if subject.kind == "surface":
        if subject.n_vertices != flat.n_vertices:
            raise ValueError(f"Subject {subject.label!r} has {subject.n_vertices} vertices but pycortex surface "
                             f"{subject.surface!r} has {flat.n_vertices}.")
        n = subject.n_voxels
        matrix = sparse.csr_matrix((np.ones(n), (subject.vertices, np.arange(n))), shape=(flat.n_vertices, n))
        lookup = np.full(flat.n_vertices, -1, np.int64)
        lookup[subject.vertices] = np.arange(n)
        return VoxelMapping(matrix, lookup, flat.n_vertices_lh, _key(subject.fingerprint, flat.digest))
    check_transform(subject.surface, subject.transform, subject.volume_shape, subject.affine, subject.label)
    key = _key(subject.fingerprint, flat.digest, subject.surface, subject.transform,
               transform_digest(subject.surface, subject.transform), MAPPER)
    path = cache_dir("flatmap") / f"{subject.name}-mapping-{key}.npz"
    data = cached_arrays(path, lambda: _build_volume_mapping(subject))
    matrix = sparse.csr_matrix((data["data"], data["indices"], data["indptr"]),
                               shape=(flat.n_vertices, subject.n_voxels))
    return VoxelMapping(matrix, data["voxel_of_vertex"], flat.n_vertices_lh, key)


def _key(*parts) -> str:
    return hashlib.sha256("|".join(map(str, (*parts, FORMAT_VERSION))).encode()).hexdigest()[:16]


def _build_volume_mapping(subject: Subject) -> dict[str, np.ndarray]:
    from scipy import sparse

    full = pycortex_mapper(subject.surface, subject.transform)
    cells = grid_cells(subject.ijk, subject.volume_shape)
    voxel_of_vertex = voxel_of_cell(cells, full.shape[1])[dominant_cells(full)]
    sub = full[:, cells].tocsr()
    sub = sparse.diags((voxel_of_vertex >= 0).astype(np.float64)) @ sub
    totals = np.asarray(sub.sum(axis=1)).ravel()
    sub = (sparse.diags(np.divide(1.0, totals, out=np.zeros_like(totals), where=totals > 0)) @ sub).tocsr()
    sub.eliminate_zeros()
    return {"data": sub.data, "indices": sub.indices, "indptr": sub.indptr, "voxel_of_vertex": voxel_of_vertex}
