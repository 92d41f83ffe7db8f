"""From the flatmap back to voxels: pick a pixel, paint a mask, grow a patch, find ROI label spots."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..subjects import Subject
from .mapping import voxel_mapping
from .raster import DEFAULT_WIDTH, check_view, check_width, grid_for, is_int, pixel_grid
from .surfaces import surface_info


@dataclass(frozen=True)
class Pick:
    """What lies under a flatmap pixel.

    Attributes:
        voxel: index into the subject's voxels that dominates the pixel, or ``None`` when the pixel
            shows cortex that carries no voxel of this subject (e.g. outside S1's visual voxels).
        vertex: the surface vertex drawn at that pixel (pycortex order, left then right hemisphere).
        rois: names of the ROIs containing the voxel (empty when ``voxel`` is ``None``).
        hemisphere: ``"lh"`` or ``"rh"`` (of the voxel, else of the vertex).
    """

    voxel: int | None
    vertex: int
    rois: list[str]
    hemisphere: str


def pick(subject: Subject, x: float, y: float, image_shape, *, view: str = "full") -> Pick | None:
    """The voxel under pixel column ``x``, row ``y`` of a flatmap image of shape ``image_shape``.

    The pixel's voxel is the one with the largest summed barycentric weight over the corners of the
    triangle under it, provided its nearest vertex shows a voxel (the pixels ``render_flatmap``
    colours). ``image_shape`` is ``(H, W)`` or ``(H, W, 3)`` of an image drawn in ``view`` at any width
    (coordinates are scaled to the cached grid). Returns ``None`` for points outside the image or off
    the cortex (margins, cuts, medial wall); never raises for odd coordinates (NaN, strings).
    """
    grid, scale = grid_for(subject, image_shape, "image_shape", view)
    try:
        col, row = (float(x) + 0.5) * scale[1] - 0.5, (float(y) + 0.5) * scale[0] - 0.5
    except (TypeError, ValueError):
        return None
    if not (np.isfinite(col) and np.isfinite(row)):
        return None
    col, row = int(round(col)), int(round(row))
    height, width = grid.vertex.shape
    if not (0 <= row < height and 0 <= col < width) or grid.vertex[row, col] < 0:
        return None
    mapping = voxel_mapping(subject)
    vertex = int(grid.vertex[row, col])
    if mapping.voxel_of_vertex[vertex] < 0:
        return Pick(voxel=None, vertex=vertex, rois=[], hemisphere=mapping.hemisphere_of_vertex(vertex))
    at = np.searchsorted(grid.pixels, row * width + col)
    voxels = mapping.voxel_of_vertex[grid.corners[at]]
    weights = np.where(voxels >= 0, grid.weights[at], 0.0)
    candidates = np.unique(voxels[voxels >= 0])
    voxel = int(candidates[np.argmax([weights[voxels == v].sum() for v in candidates])])
    return Pick(voxel=voxel, vertex=vertex, rois=subject.rois_of_voxel(voxel), hemisphere=subject.hemisphere_of(voxel))


def voxels_in_mask(subject: Subject, mask, image_shape=None, *, view: str = "full") -> np.ndarray:
    """Sorted indices of the voxels under the painted pixels of ``mask``: the voxels of the vertices
    shown at a painted pixel and of those whose flat-map position lies in one (vertices are denser
    than pixels).

    ``mask`` is an ``H x W`` array (nonzero = painted) over a flatmap image of ``view`` and of shape
    ``image_shape`` (default ``mask.shape``). A mask that covers no voxel gives an empty array; the
    caller decides whether that is an error.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"`mask` must be a 2-D (H, W) array over the flatmap image, got shape {mask.shape}.")
    if image_shape is not None and tuple(image_shape)[:2] != mask.shape:
        raise ValueError(f"`mask` has shape {mask.shape} but the image has shape {tuple(image_shape)[:2]}.")
    grid, scale = grid_for(subject, mask.shape, "mask", view)
    rows = np.minimum(((np.arange(grid.vertex.shape[0]) + 0.5) / scale[0]).astype(np.int64), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(grid.vertex.shape[1]) + 0.5) / scale[1]).astype(np.int64), mask.shape[1] - 1)
    painted = (mask[np.ix_(rows, cols)] != 0).reshape(-1)
    drawn = grid.vertex.reshape(-1)[painted]  # the vertex shown at each painted pixel
    inside = np.flatnonzero((grid.vertex_pixel >= 0) & painted[grid.vertex_pixel])  # vertices lying in one
    return voxel_mapping(subject).voxels_at(np.concatenate([drawn[drawn >= 0], inside]))


def grow(subject: Subject, voxel: int, radius_mm: float) -> np.ndarray:
    """Sorted indices of the voxels within ``radius_mm`` of ``voxel``; always contains ``voxel``.

    Surface subjects: distance along the cortical surface (shortest paths along the edges of the
    fiducial mesh, slightly longer than true geodesics), in the voxel's hemisphere. Volume subjects:
    straight-line distance in millimetres between voxel centres (through the subject's affine), a
    ball that may reach across a sulcus or the midline; no display is needed.
    """
    if not is_int(voxel) or not 0 <= voxel < subject.n_voxels:
        raise ValueError(f"`voxel` must be an integer in [0, {subject.n_voxels}), got {voxel!r}.")
    try:
        radius = float(radius_mm)
    except (TypeError, ValueError):
        radius = float("nan")
    if not (np.isfinite(radius) and radius >= 0):
        raise ValueError(f"`radius_mm` must be a finite number >= 0, got {radius_mm!r}.")
    if subject.kind == "volume":
        xyz = subject.ijk @ subject.affine[:3, :3].T
        return np.flatnonzero(np.linalg.norm(xyz - xyz[voxel], axis=1) <= radius + 1e-9).astype(np.int64)
    from scipy.sparse.csgraph import dijkstra

    dist = dijkstra(surface_info(subject.surface).graph, directed=False, indices=int(subject.vertices[voxel]),
                    limit=radius)
    return voxel_mapping(subject).voxels_at(np.flatnonzero(dist <= radius))


def roi_centroids(
    subject: Subject, width: int = DEFAULT_WIDTH, *, view: str = "full"
) -> dict[str, tuple[int, int]]:
    """``{"FFA.lh": (x, y), ...}``: where each ROI's label is drawn in ``view``, a pixel inside the ROI."""
    grid = pixel_grid(subject, check_width(width), check_view(view))
    return {name: (int(x), int(y)) for name, (x, y) in zip(grid.label_names, grid.label_xy)}
