"""The image layout and the pixel grid of a subject's flatmap, rasterised once and cached on disk.

For every pixel of an image of a given width and view: the covering flat-map triangle, its barycentric
weights and nearest vertex; plus the thresholded curvature background and the ROI outlines and label
positions. Grids live in ``cache_dir("flatmap")``, keyed by the subject's mapping, ROIs, view and layout.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cache import cache_dir
from ..subjects import HEMISPHERES, Subject
from .mapping import voxel_mapping
from .surfaces import FORMAT_VERSION, box, cached_arrays, flat_surface, per_subject, surface_info

DEFAULT_WIDTH = 1024
MIN_WIDTH = 256

# Layout, as fractions of the image width (unless noted).
_PAD = 0.012
_TITLE_BAND = 0.045
_COLORBAR_BAND = 0.062
_VOXEL_MARGIN = 0.04  # around the voxels in the "voxels" view, as a fraction of their bounding box's larger side

_BACKGROUND = 255
_CURVATURE_GREYS = (96, 159)  # sulci, gyri: pycortex's thresholded curvature (contrast 0.25, brightness 0.5)


@dataclass(frozen=True)
class Layout:
    shape: tuple[int, int]  # (H, W) of the image
    left: int  # first column of the map
    top: int  # first row of the map
    map_width: int
    map_height: int
    zoom: float  # the map's scale relative to the full view's

    def size(self, fraction: float) -> float:
        """``fraction`` of the image width, grown gently with the zoom: widths of lines, label text."""
        return fraction * self.shape[1] * self.zoom**0.25

    @property
    def map_box(self) -> tuple[np.ndarray, np.ndarray]:
        """(column, row) of the map's first and last pixel."""
        first = np.array([self.left, self.top])
        return first, first + [self.map_width - 1, self.map_height - 1]


def layout(subject: Subject, width: int, view: str) -> Layout:
    """The image layout of ``view`` at ``width``: the map keeps the aspect ratio of the view's bounds."""
    flat_width, flat_height = np.ptp(bounds(subject, view), axis=0)
    zoom = float(np.ptp(bounds(subject, "full")[:, 0]) / flat_width)
    pad = round(_PAD * width)
    top = round(_TITLE_BAND * width)
    map_width = width - 2 * pad
    map_height = round(map_width * float(flat_height / flat_width))
    height = top + map_height + round(_COLORBAR_BAND * width)
    return Layout((height, width), pad, top, map_width, map_height, zoom)


def bounds(subject: Subject, view: str) -> np.ndarray:
    """``[2, 2]`` lowest and highest flat (x, y) that the map of ``view`` shows."""
    voxel_mapping(subject)  # first: a clear error for a subject that cannot be drawn
    return per_subject(subject, f"bounds-{view}", _VIEW_BOUNDS[view])


def _voxel_bounds(subject: Subject) -> np.ndarray:
    """The bounding box of the vertices showing the subject's voxels, with a margin."""
    flat = flat_surface(subject.surface)
    frame = box(flat.xy[flat.on_map & (voxel_mapping(subject).voxel_of_vertex >= 0)])
    margin = _VOXEL_MARGIN * (frame[1] - frame[0]).max()
    return frame + [[-margin], [margin]]


_VIEW_BOUNDS = {"full": lambda subject: flat_surface(subject.surface).bounds, "voxels": _voxel_bounds}
VIEWS = tuple(_VIEW_BOUNDS)


def check_view(view) -> str:
    if not isinstance(view, str) or view not in VIEWS:
        raise ValueError(f"`view` must be one of {list(VIEWS)}, got {view!r}.")
    return view


def check_width(width) -> int:
    if not is_int(width) or width < MIN_WIDTH:
        raise ValueError(f"`width` must be an integer >= {MIN_WIDTH}, got {width!r}.")
    return int(width)


def is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_image_shape(subject: Subject, shape, argument: str, view: str) -> tuple[int, int]:
    """Validate the shape of an image drawn by ``render_flatmap`` in ``view``; returns ``(H, W)``."""
    try:
        shape = tuple(int(n) for n in shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) not in (2, 3) or min(shape[:2]) < 1:
        raise ValueError(f"`{argument}` must be (H, W) or (H, W, 3) of a flatmap image, got {shape!r}.")
    height, width = shape[:2]
    expected = round(width * layout(subject, DEFAULT_WIDTH, view).shape[0] / DEFAULT_WIDTH)
    if abs(height - expected) > max(2, 0.02 * expected):
        raise ValueError(
            f"`{argument}` of shape {shape[:2]} is not a flatmap of subject {subject.name!r} in view {view!r}: "
            f"an image {width} wide is {expected} high (see flatmap_shape)."
        )
    return height, width


# --------------------------------------------------------------------------- pixel grid (per subject, width, view)


@dataclass(frozen=True, eq=False)
class Grid:
    layout: Layout
    vertex: np.ndarray  # [H, W] int32 nearest vertex of the covering triangle, -1 off the cortex
    pixels: np.ndarray  # [n] flat indices of the cortex pixels
    corners: np.ndarray  # [n, 3] int32 vertices of the triangle covering each cortex pixel
    weights: np.ndarray  # [n, 3] float32 barycentric weights
    vertex_pixel: np.ndarray  # [n_vertices] int32 flat index of the pixel each vertex lies in, -1 if none
    background: np.ndarray | None = None  # [H, W, 3] uint8 curvature on white
    outline: np.ndarray | None = None  # [H, W] uint8 alpha of the ROI outlines
    outline_shadow: np.ndarray | None = None  # [H, W] uint8 alpha of their dark shadow
    label_names: tuple[str, ...] = ()  # "FFA.lh", ...
    label_xy: np.ndarray | None = None  # [n_labels, 2] int (column, row) of each label

    def interpolate(self, per_vertex: np.ndarray) -> np.ndarray:
        """``[H, W]`` float image of a per-vertex array, linear within triangles, NaN off the cortex."""
        out = np.full(self.vertex.size, np.nan, np.float32)
        out[self.pixels] = np.einsum("ij,ij->i", per_vertex[self.corners], self.weights)
        return out.reshape(self.vertex.shape)


GRIDS: dict[Path, Grid] = {}  # in memory, by cache file


def pixel_grid(subject: Subject, width: int, view: str, build: bool = True) -> Grid | None:
    """The pixel grid of ``subject`` at ``width`` in ``view``: from memory, else disk, else built (unless
    ``build``)."""
    path = grid_path(subject, width, view)
    if path not in GRIDS:
        if not build and not path.is_file():
            return None
        arrays = cached_arrays(path, lambda: _build_grid(subject, width, view))
        names = tuple(str(name) for name in arrays.pop("label_names"))
        GRIDS[path] = Grid(layout=layout(subject, width, view), label_names=names, **arrays)
    return GRIDS[path]


def grid_for(subject: Subject, shape, argument: str, view: str) -> tuple[Grid, tuple[float, float]]:
    """A grid for an image of ``view`` and ``shape`` (checked, named ``argument`` in errors): its own
    width's if cached, else the default one, and the (row, column) scale from image to grid pixels."""
    view = check_view(view)
    height, width = check_image_shape(subject, shape, argument, view)
    grid = pixel_grid(subject, width, view, build=False) if width >= MIN_WIDTH else None
    grid = grid or pixel_grid(subject, DEFAULT_WIDTH, view)
    return grid, (grid.vertex.shape[0] / height, grid.vertex.shape[1] / width)


def grid_path(subject: Subject, width: int, view: str) -> Path:
    """Cache file of a grid: keyed by the subject's mapping and ROIs, the view, layout and format version."""
    shape = layout(subject, width, view)
    key = hashlib.sha256(f"{_subject_digest(subject)}|{view}|{shape}|{FORMAT_VERSION}".encode()).hexdigest()[:16]
    return cache_dir("flatmap") / f"{subject.name}-{view}-w{width}-{key}.npz"


def _subject_digest(subject: Subject) -> str:
    """What a pixel grid depends on: the subject's voxel mapping (space, surface, transform) and ROIs."""

    def compute(subject):
        digest = hashlib.sha256(voxel_mapping(subject).key.encode())
        for name in sorted(subject.rois):
            digest.update(name.encode() + np.ascontiguousarray(subject.rois[name], np.int64).tobytes())
        digest.update(np.ascontiguousarray(subject.is_right).tobytes())
        return digest.hexdigest()[:16]

    return per_subject(subject, "digest", compute)


def _build_grid(subject: Subject, width: int, view: str) -> dict[str, np.ndarray]:
    """Rasterise the flat surface, then draw the curvature background and the ROI outlines on it."""
    from .overlay import roi_overlay

    flat = flat_surface(subject.surface)
    shape = layout(subject, width, view)
    frame = bounds(subject, view)
    points = _to_pixels(flat.xy, frame, shape)
    triangle, weights = _rasterise(points, flat.faces, shape)
    pixels = np.flatnonzero(triangle >= 0)
    corners = flat.faces[triangle[pixels]].astype(np.int32)
    weights = weights[pixels].astype(np.float32)
    vertex = np.full(triangle.size, -1, np.int32)
    vertex[pixels] = corners[np.arange(len(pixels)), weights.argmax(1)]
    shown = flat.on_map & ((flat.xy >= frame[0]) & (flat.xy <= frame[1])).all(1)
    vertex_pixel = _vertex_pixels(points, shown, shape)
    raster = Grid(shape, vertex.reshape(shape.shape), pixels, corners, weights, vertex_pixel)

    outline, shadow, names, label_xy = roi_overlay(raster, _roi_vertex_masks(subject))
    return {
        "vertex": raster.vertex,
        "pixels": pixels,
        "corners": corners,
        "weights": weights,
        "vertex_pixel": vertex_pixel,
        "background": _curvature_background(raster, surface_info(subject.surface).curvature),
        "outline": outline,
        "outline_shadow": shadow,
        "label_names": np.array(names, dtype=str),
        "label_xy": label_xy,
    }


def _roi_vertex_masks(subject: Subject):
    """Yield ``("FFA.lh", [n_vertices] bool)`` for every ROI and hemisphere with voxels."""
    mapping = voxel_mapping(subject)
    for base in subject.roi_names:
        for hemi in HEMISPHERES:
            voxels = subject.roi(f"{base}.{hemi}")
            if len(voxels):
                yield f"{base}.{hemi}", mapping.vertex_mask(voxels)


def _to_pixels(xy: np.ndarray, frame: np.ndarray, shape: Layout) -> np.ndarray:
    """Flat coordinates -> (column, row) pixel coordinates, pixel centres at integers, y up; ``frame``
    (lowest and highest flat x, y) spans the map's width and height."""
    lo, hi = frame
    scale = shape.map_width / (hi[0] - lo[0])
    col = shape.left - 0.5 + (xy[:, 0] - lo[0]) * scale
    row = shape.top - 0.5 + (hi[1] - xy[:, 1]) * scale
    return np.stack([col, row], axis=1)


def _vertex_pixels(points: np.ndarray, shown: np.ndarray, shape: Layout) -> np.ndarray:
    """Flat index of the map pixel containing (on the map's edge: nearest to) each ``shown`` vertex, -1
    for the others."""
    first, last = shape.map_box
    col, row = np.clip(np.round(points), first, last).astype(np.int64).T
    return np.where(shown, row * shape.shape[1] + col, -1).astype(np.int32)


def _rasterise(points: np.ndarray, faces: np.ndarray, shape: Layout) -> tuple[np.ndarray, np.ndarray]:
    """For every pixel centre of the image: the index of a triangle covering it (-1: none, and outside
    the map area, which clips the triangles) and its barycentric weights ``[H*W, 3]``."""
    height, width = shape.shape
    first, last = shape.map_box
    tri = points[faces]  # [F, 3, 2]
    lo = np.maximum(np.ceil(tri.min(1)).astype(np.int64), first)
    hi = np.minimum(np.floor(tri.max(1)).astype(np.int64), last)
    span = hi - lo + 1
    a, e1, e2 = tri[:, 0], tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    drawn = np.flatnonzero((span > 0).all(1) & (det != 0))  # triangles with pixel centres on the map

    triangle = np.full(height * width, -1, np.int64)
    weights = np.zeros((height * width, 3))
    for dy in range(int(span[drawn, 1].max(initial=0))):
        for dx in range(int(span[drawn, 0].max(initial=0))):
            idx = drawn[(span[drawn, 0] > dx) & (span[drawn, 1] > dy)]
            px = lo[idx] + [dx, dy]
            d = px - a[idx]
            w1 = (d[:, 0] * e2[idx, 1] - d[:, 1] * e2[idx, 0]) / det[idx]
            w2 = (e1[idx, 0] * d[:, 1] - e1[idx, 1] * d[:, 0]) / det[idx]
            w0 = 1.0 - w1 - w2
            inside = (w0 >= -1e-9) & (w1 >= -1e-9) & (w2 >= -1e-9)
            flat_px = px[inside, 1] * width + px[inside, 0]
            triangle[flat_px] = idx[inside]
            weights[flat_px] = np.stack([w0, w1, w2], axis=1)[inside]
    return triangle, weights


def _curvature_background(grid: Grid, curvature: np.ndarray) -> np.ndarray:
    """Binary sulcus/gyrus greys on the cortex, white elsewhere, as pycortex's quickflat draws it."""
    curv = grid.interpolate(curvature)
    grey = np.where(curv > 0, _CURVATURE_GREYS[1], _CURVATURE_GREYS[0]).astype(np.uint8)
    grey[np.isnan(curv)] = _BACKGROUND
    return np.repeat(grey[:, :, None], 3, axis=2)
