"""Cortical flatmaps: draw per-voxel values on a subject's flattened cortex, and map pixels back to voxels.

This is the only module that reads pycortex surfaces for rendering. The first use of a subject at a
given image width rasterises its flat surface once into a pixel grid cached on disk
(``cache_dir("flatmap")``): for every pixel the covering flat-map triangle, its barycentric weights
and nearest vertex, the thresholded curvature background and the ROI outlines. A render is then a
gather, a colour lookup and some alpha compositing; a pick is one array lookup.

Image layout (``flatmap_shape``): a title band on top, both hemispheres side by side as in pycortex's
quickflat (left hemisphere on the left, image row 0 = largest flat ``y``), and a colour-bar band
below. The map shows one of ``VIEWS``: ``"full"``, the whole flat surface, or ``"voxels"``, the bounding
box of the subject's voxels (a zoom on them). Every pixel-space function takes the same ``view=``;
``pick`` and ``voxels_in_mask`` take pixel coordinates of an image of that view, at any width.
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

from .cache import cache_dir, private_tmp
from .subjects import HEMISPHERES, Subject

__all__ = [
    "Pick",
    "render_flatmap",
    "save_flatmap",
    "pick",
    "voxels_in_mask",
    "grow",
    "flatmap_shape",
    "roi_centroids",
    "DEFAULT_WIDTH",
    "VIEWS",
]

DEFAULT_WIDTH = 1024
MIN_WIDTH = 256
_FORMAT_VERSION = 1

# Layout, as fractions of the image width (unless noted).
_PAD = 0.012
_TITLE_BAND = 0.045
_COLORBAR_BAND = 0.062
_VOXEL_MARGIN = 0.04  # around the voxels in the "voxels" view, as a fraction of their bounding box's larger side

# Colours (RGB 0-255).
_BACKGROUND = 255
_CURVATURE_GREYS = (96, 159)  # sulci, gyri: pycortex's thresholded curvature (contrast 0.25, brightness 0.5)
_OUTLINE = np.array([255, 255, 255], np.float32)
_HIGHLIGHT = np.array([255, 214, 0], np.float32)
_HIGHLIGHT_TINT = 0.45
_TEXT = (255, 255, 255)
_TEXT_STROKE = (30, 30, 30)
_INK = (40, 40, 40)
_MUTED = (120, 120, 120)


@dataclass(frozen=True)
class Pick:
    """What lies under a flatmap pixel.

    Attributes:
        voxel: index into the subject's voxels, or ``None`` when the pixel shows cortex that carries no
            voxel of this subject (e.g. outside S1's visual-cortex voxel space).
        vertex: the surface vertex drawn at that pixel (pycortex order, left then right hemisphere).
        rois: names of the ROIs containing the voxel (empty when ``voxel`` is ``None``).
        hemisphere: ``"lh"`` or ``"rh"``.
    """

    voxel: int | None
    vertex: int
    rois: list[str]
    hemisphere: str


# --------------------------------------------------------------------------- public API


def flatmap_shape(subject: Subject, width: int = DEFAULT_WIDTH, *, view: str = "full") -> tuple[int, int]:
    """``(H, W)`` of the images ``render_flatmap`` draws for ``subject`` at ``width`` in ``view``."""
    return _layout(subject, _check_width(width), _check_view(view)).shape


def render_flatmap(
    values,
    subject: Subject,
    *,
    rois: bool = True,
    highlight=None,
    cmap="RdBu_r",
    vmin: float | None = None,
    vmax: float | None = None,
    title: str | None = None,
    width: int = DEFAULT_WIDTH,
    view: str = "full",
) -> np.ndarray:
    """Draw ``values`` on the subject's flatmap; returns an ``H x W x 3`` uint8 image.

    Args:
        values: ``[n_voxels]`` (or ``[n_vertices]``) numbers, NaN or inf = no data (curvature shows through);
            ``None`` draws curvature and ROIs only.
        subject: the subject the values belong to.
        rois: outline and label the subject's ROIs.
        highlight: an ROI name (``"FFA"``, ``"FFA.lh"``) or voxel indices, drawn with a bright contour
            and tint.
        cmap: a matplotlib colormap name or object.
        vmin, vmax: colour limits; by default the 1st-99th percentiles of the values, made symmetric
            around 0 when the values have both signs.
        title: text drawn above the map.
        width: image width in pixels (the height follows the map's aspect ratio).
        view: ``"full"`` (the whole flat surface) or ``"voxels"`` (zoomed on the subject's voxels).
    """
    grid = _grid(subject, _check_width(width), _check_view(view))
    surface_values = None if values is None else _vertex_values(subject, values)
    highlight_mask = None if highlight is None else _highlight_vertices(subject, highlight)
    colormap = _colormap(cmap)

    image = grid.background.astype(np.float32)
    if surface_values is not None:
        vmin, vmax = _limits(surface_values, vmin, vmax)
        _paint_values(image, grid, surface_values, colormap, vmin, vmax)
    if rois:
        _blend(image, grid.outline_shadow, 0.0, strength=0.5)
        _blend(image, grid.outline, _OUTLINE)
    if highlight_mask is not None:
        _paint_highlight(image, grid, highlight_mask)
    image = np.clip(image + 0.5, 0, 255).astype(np.uint8)

    from PIL import Image, ImageDraw

    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    _draw_hemisphere_names(draw, grid.layout)
    if rois:
        _draw_labels(draw, grid)
    if surface_values is not None:
        _draw_colorbar(draw, grid.layout, colormap, vmin, vmax)
    if title:
        _draw_title(draw, grid.layout, str(title))
    return np.asarray(canvas)


def save_flatmap(values, subject: Subject, path, **kwargs) -> Path:
    """Render like ``render_flatmap`` (same keywords, ``view=`` included) and write the image (format
    from the suffix, e.g. ``.png``)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(render_flatmap(values, subject, **kwargs)).save(path)
    return path


def pick(subject: Subject, x: float, y: float, image_shape, *, view: str = "full") -> Pick | None:
    """The voxel under pixel column ``x``, row ``y`` of a flatmap image of shape ``image_shape``.

    ``image_shape`` is ``(H, W)`` or ``(H, W, 3)`` of an image drawn by ``render_flatmap`` in ``view`` at
    any width (coordinates are scaled to the cached grid). Returns ``None`` for points outside the image
    or off the cortex (margins, cuts, medial wall), and a ``Pick`` with ``voxel=None`` on cortex that
    carries no voxel of this subject; never raises for odd coordinates (NaN, strings).
    """
    grid, scale = _grid_for(subject, image_shape, "image_shape", view)
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
    vertex = int(grid.vertex[row, col])
    voxel = int(_voxel_of_vertex(subject)[vertex])
    hemisphere = HEMISPHERES[int(vertex >= subject.n_vertices_lh)]
    if voxel < 0:
        return Pick(voxel=None, vertex=vertex, rois=[], hemisphere=hemisphere)
    return Pick(voxel=voxel, vertex=vertex, rois=subject.rois_of_voxel(voxel), hemisphere=hemisphere)


def voxels_in_mask(subject: Subject, mask, image_shape=None, *, view: str = "full") -> np.ndarray:
    """Sorted indices of the voxels under the painted pixels of ``mask``: those shown at a painted pixel
    and those whose flat-map position lies in one (vertices are denser than pixels).

    ``mask`` is an ``H x W`` array (nonzero = painted) over a flatmap image of ``view`` and of shape
    ``image_shape`` (default ``mask.shape``). A mask that covers no voxel gives an empty array; the
    caller decides whether that is an error.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"`mask` must be a 2-D (H, W) array over the flatmap image, got shape {mask.shape}.")
    if image_shape is not None and tuple(image_shape)[:2] != mask.shape:
        raise ValueError(f"`mask` has shape {mask.shape} but the image has shape {tuple(image_shape)[:2]}.")
    grid, scale = _grid_for(subject, mask.shape, "mask", view)
    rows = np.minimum(((np.arange(grid.vertex.shape[0]) + 0.5) / scale[0]).astype(np.int64), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(grid.vertex.shape[1]) + 0.5) / scale[1]).astype(np.int64), mask.shape[1] - 1)
    painted = (mask[np.ix_(rows, cols)] != 0).reshape(-1)
    drawn = grid.vertex.reshape(-1)[painted]  # the vertex shown at each painted pixel
    inside = np.flatnonzero((grid.vertex_pixel >= 0) & painted[grid.vertex_pixel])  # vertices lying in one
    voxels = _voxel_of_vertex(subject)[np.concatenate([drawn[drawn >= 0], inside])]
    return np.unique(voxels[voxels >= 0]).astype(np.int64)


def grow(subject: Subject, voxel: int, radius_mm: float) -> np.ndarray:
    """Sorted indices of the voxels within ``radius_mm`` of ``voxel`` along the cortical surface.

    Distances are shortest paths along the edges of the fiducial mesh (slightly longer than true
    geodesics); the set stays in the voxel's hemisphere and always contains ``voxel``.
    """
    if not _is_int(voxel) or not 0 <= voxel < subject.n_voxels:
        raise ValueError(f"`voxel` must be an integer in [0, {subject.n_voxels}), got {voxel!r}.")
    try:
        radius = float(radius_mm)
    except (TypeError, ValueError):
        radius = float("nan")
    if not (np.isfinite(radius) and radius >= 0):
        raise ValueError(f"`radius_mm` must be a finite number >= 0, got {radius_mm!r}.")
    from scipy.sparse.csgraph import dijkstra

    graph = _surface_info(subject.surface).graph
    dist = dijkstra(graph, directed=False, indices=int(subject.vertices[voxel]), limit=radius)
    voxels = _voxel_of_vertex(subject)[np.flatnonzero(dist <= radius)]
    return np.unique(voxels[voxels >= 0]).astype(np.int64)


def roi_centroids(
    subject: Subject, width: int = DEFAULT_WIDTH, *, view: str = "full"
) -> dict[str, tuple[int, int]]:
    """``{"FFA.lh": (x, y), ...}``: where each ROI's label is drawn in ``view``, a pixel inside the ROI."""
    grid = _grid(subject, _check_width(width), _check_view(view))
    return {name: (int(x), int(y)) for name, (x, y) in zip(grid.label_names, grid.label_xy)}


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class _Layout:
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


def _layout(subject: Subject, width: int, view: str) -> _Layout:
    """The image layout of ``view`` at ``width``: the map keeps the aspect ratio of the view's bounds."""
    flat_width, flat_height = np.ptp(_bounds(subject, view), axis=0)
    zoom = float(np.ptp(_bounds(subject, "full")[:, 0]) / flat_width)
    pad = round(_PAD * width)
    top = round(_TITLE_BAND * width)
    map_width = width - 2 * pad
    map_height = round(map_width * float(flat_height / flat_width))
    height = top + map_height + round(_COLORBAR_BAND * width)
    return _Layout((height, width), pad, top, map_width, map_height, zoom)


def _check_view(view) -> str:
    if not isinstance(view, str) or view not in VIEWS:
        raise ValueError(f"`view` must be one of {list(VIEWS)}, got {view!r}.")
    return view


def _check_width(width) -> int:
    if not _is_int(width) or width < MIN_WIDTH:
        raise ValueError(f"`width` must be an integer >= {MIN_WIDTH}, got {width!r}.")
    return int(width)


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_image_shape(subject: Subject, shape, argument: str, view: str) -> tuple[int, int]:
    """Validate the shape of an image drawn by ``render_flatmap`` in ``view``; returns ``(H, W)``."""
    try:
        shape = tuple(int(n) for n in shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) not in (2, 3) or min(shape[:2]) < 1:
        raise ValueError(f"`{argument}` must be (H, W) or (H, W, 3) of a flatmap image, got {shape!r}.")
    height, width = shape[:2]
    expected = round(width * flatmap_shape(subject, DEFAULT_WIDTH, view=view)[0] / DEFAULT_WIDTH)
    if abs(height - expected) > max(2, 0.02 * expected):
        raise ValueError(
            f"`{argument}` of shape {shape[:2]} is not a flatmap of subject {subject.name!r} in view {view!r}: "
            f"an image {width} wide is {expected} high (see flatmap_shape)."
        )
    return height, width


# --------------------------------------------------------------------------- surfaces (cached per surface)


@dataclass(frozen=True)
class _FlatSurface:
    xy: np.ndarray  # [n_vertices, 2] flat coordinates, hemispheres nudged apart as in quickflat
    faces: np.ndarray  # [n_faces, 3] triangles of the flat map (cuts removed)
    on_map: np.ndarray  # [n_vertices] bool: the vertex belongs to a triangle
    bounds: np.ndarray  # [2, 2] lowest and highest (x, y) of those vertices
    digest: str  # hash of the surface files


@lru_cache(maxsize=8)
def _flat_surface(surface: str) -> _FlatSurface:
    import cortex

    pts, faces = cortex.db.get_surf(surface, "flat", merge=True, nudge=True)
    xy = np.asarray(pts[:, :2], np.float64)
    on_map = np.zeros(len(xy), bool)
    on_map[faces] = True
    return _FlatSurface(xy=xy, faces=np.asarray(faces, np.int64), on_map=on_map, bounds=_box(xy[on_map]),
                        digest=_surface_digest(surface))


def _box(points: np.ndarray) -> np.ndarray:
    """``[[x_min, y_min], [x_max, y_max]]`` of ``points``."""
    return np.stack([points.min(0), points.max(0)])


def _bounds(subject: Subject, view: str) -> np.ndarray:
    """``[2, 2]`` lowest and highest flat (x, y) that the map of ``view`` shows."""
    return _memo(subject, f"bounds-{view}", _VIEW_BOUNDS[view])


def _voxel_bounds(subject: Subject) -> np.ndarray:
    """The bounding box of the subject's voxels on the flat map, with a margin."""
    flat = _flat_surface(subject.surface)
    vertices = subject.vertices[flat.on_map[subject.vertices]]
    box = _box(flat.xy[vertices])
    margin = _VOXEL_MARGIN * (box[1] - box[0]).max()
    return box + [[-margin], [margin]]


_VIEW_BOUNDS = {"full": lambda subject: _flat_surface(subject.surface).bounds, "voxels": _voxel_bounds}
VIEWS = tuple(_VIEW_BOUNDS)


def _surface_digest(surface: str) -> str:
    import cortex

    paths = cortex.db.get_paths(surface)["surfs"]
    digest = hashlib.sha256(cortex.__version__.encode())
    for kind in ("flat", "fiducial", "pia", "wm"):
        for hemi in HEMISPHERES:
            if hemi in paths.get(kind, {}):
                digest.update(Path(paths[kind][hemi]).read_bytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class _SurfaceInfo:
    curvature: np.ndarray  # [n_vertices] smoothed mean curvature of the fiducial surface
    graph: object  # sparse [n_vertices, n_vertices] edge lengths (mm) of the fiducial mesh


@lru_cache(maxsize=8)
def _surface_info(surface: str) -> _SurfaceInfo:
    from scipy import sparse

    path = cache_dir("flatmap") / f"{surface}-{_flat_surface(surface).digest}-v{_FORMAT_VERSION}-surface.npz"
    data = _cached_arrays(path, lambda: _build_surface_info(surface))
    n = int(data["n_vertices"])
    graph = sparse.csr_matrix((data["lengths"], data["indices"], data["indptr"]), shape=(n, n))
    return _SurfaceInfo(curvature=data["curvature"], graph=graph)


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


# --------------------------------------------------------------------------- pixel grid (per subject, width, view)


@dataclass(frozen=True, eq=False)
class _Grid:
    layout: _Layout
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


_GRIDS: dict[Path, _Grid] = {}


def _grid(subject: Subject, width: int, view: str, build: bool = True) -> _Grid | None:
    """The pixel grid of ``subject`` at ``width`` in ``view``: from memory, else disk, else built (unless
    ``build``)."""
    path = _grid_path(subject, width, view)
    if path not in _GRIDS:
        if not build and not path.is_file():
            return None
        arrays = _cached_arrays(path, lambda: _build_grid(subject, width, view))
        names = tuple(str(name) for name in arrays.pop("label_names"))
        _GRIDS[path] = _Grid(layout=_layout(subject, width, view), label_names=names, **arrays)
    return _GRIDS[path]


def _grid_for(subject: Subject, shape, argument: str, view: str) -> tuple[_Grid, tuple[float, float]]:
    """A grid for an image of ``view`` and ``shape`` (checked, named ``argument`` in errors): its own
    width's if cached, else the default one, and the (row, column) scale from image to grid pixels."""
    view = _check_view(view)
    height, width = _check_image_shape(subject, shape, argument, view)
    grid = _grid(subject, width, view, build=False) if width >= MIN_WIDTH else None
    grid = grid or _grid(subject, DEFAULT_WIDTH, view)
    return grid, (grid.vertex.shape[0] / height, grid.vertex.shape[1] / width)


def _grid_path(subject: Subject, width: int, view: str) -> Path:
    """Cache file of a grid: keyed by subject (surfaces, voxels, ROIs), view, layout and format version."""
    layout = _layout(subject, width, view)
    key = hashlib.sha256(f"{_subject_digest(subject)}|{view}|{layout}|{_FORMAT_VERSION}".encode()).hexdigest()[:16]
    return cache_dir("flatmap") / f"{subject.name}-{view}-w{width}-{key}.npz"


def _cached_arrays(path: Path, build) -> dict[str, np.ndarray]:
    """The arrays stored in ``path``; made by ``build()`` and saved first if missing or unreadable."""
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


def _build_grid(subject: Subject, width: int, view: str) -> dict[str, np.ndarray]:
    """Rasterise the flat surface, then draw the curvature background and the ROI outlines on it."""
    flat = _flat_surface(subject.surface)
    layout = _layout(subject, width, view)
    bounds = _bounds(subject, view)
    points = _to_pixels(flat.xy, bounds, layout)
    triangle, weights = _rasterise(points, flat.faces, layout)
    pixels = np.flatnonzero(triangle >= 0)
    corners = flat.faces[triangle[pixels]].astype(np.int32)
    weights = weights[pixels].astype(np.float32)
    vertex = np.full(triangle.size, -1, np.int32)
    vertex[pixels] = corners[np.arange(len(pixels)), weights.argmax(1)]
    shown = flat.on_map & ((flat.xy >= bounds[0]) & (flat.xy <= bounds[1])).all(1)
    vertex_pixel = _vertex_pixels(points, shown, layout)
    raster = _Grid(layout, vertex.reshape(layout.shape), pixels, corners, weights, vertex_pixel)

    outline, shadow, names, label_xy = _roi_overlay(raster, subject)
    return {
        "vertex": raster.vertex,
        "pixels": pixels,
        "corners": corners,
        "weights": weights,
        "vertex_pixel": vertex_pixel,
        "background": _curvature_background(raster, _surface_info(subject.surface).curvature),
        "outline": outline,
        "outline_shadow": shadow,
        "label_names": np.array(names, dtype=str),
        "label_xy": label_xy,
    }


def _to_pixels(xy: np.ndarray, bounds: np.ndarray, layout: _Layout) -> np.ndarray:
    """Flat coordinates -> (column, row) pixel coordinates, pixel centres at integers, y up; ``bounds``
    (lowest and highest flat x, y) span the map's width and height."""
    lo, hi = bounds
    scale = layout.map_width / (hi[0] - lo[0])
    col = layout.left - 0.5 + (xy[:, 0] - lo[0]) * scale
    row = layout.top - 0.5 + (hi[1] - xy[:, 1]) * scale
    return np.stack([col, row], axis=1)


def _vertex_pixels(points: np.ndarray, shown: np.ndarray, layout: _Layout) -> np.ndarray:
    """Flat index of the map pixel containing (on the map's edge: nearest to) each ``shown`` vertex, -1
    for the others."""
    first, last = layout.map_box
    col, row = np.clip(np.round(points), first, last).astype(np.int64).T
    return np.where(shown, row * layout.shape[1] + col, -1).astype(np.int32)


def _rasterise(points: np.ndarray, faces: np.ndarray, layout: _Layout) -> tuple[np.ndarray, np.ndarray]:
    """For every pixel centre of the image: the index of a triangle covering it (-1: none, and outside
    the map area, which clips the triangles) and its barycentric weights ``[H*W, 3]``."""
    height, width = layout.shape
    first, last = layout.map_box
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


def _curvature_background(grid: _Grid, curvature: np.ndarray) -> np.ndarray:
    """Binary sulcus/gyrus greys on the cortex, white elsewhere, as pycortex's quickflat draws it."""
    curv = grid.interpolate(curvature)
    grey = np.where(curv > 0, _CURVATURE_GREYS[1], _CURVATURE_GREYS[0]).astype(np.uint8)
    grey[np.isnan(curv)] = _BACKGROUND
    return np.repeat(grey[:, :, None], 3, axis=2)


def _roi_overlay(grid: _Grid, subject: Subject):
    """Outline alpha, shadow alpha (uint8), label names and label positions of the subject's ROIs."""
    half = grid.layout.size(1 / 1024)  # 2 px wide lines at width 1024 in the full view
    outline = np.zeros(grid.vertex.shape, np.float32)
    names, points = [], []
    for name, in_roi in sorted(_roi_vertex_masks(subject), key=lambda item: item[1].sum()):
        field = grid.interpolate(in_roi.astype(np.float32))
        outline = np.maximum(outline, _contour_alpha(field, half))
        region = in_roi[np.maximum(grid.vertex, 0)] & (grid.vertex >= 0)
        if region.any():
            names.append(name)
            points.append(_label_position(region, points, spacing=0.04 * grid.layout.shape[1]))
    order = np.argsort(names)
    label_xy = np.array(points, np.int64).reshape(-1, 2)[order]
    return _to_uint8(outline), _to_uint8(_halo(outline)), [names[i] for i in order], label_xy


def _label_position(region: np.ndarray, taken: list, spacing: float) -> tuple[int, int]:
    """A (column, row) deep inside ``region``, preferably ``spacing`` pixels away from ``taken`` labels."""
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    rows, cols = np.nonzero(depth >= 0.5 * depth.max())
    score = depth[rows, cols]
    if taken:
        gap = np.hypot(cols[:, None] - np.array(taken)[:, 0], rows[:, None] - np.array(taken)[:, 1]).min(1)
        score = score + 2.0 * np.minimum(gap, spacing)
    best = int(np.argmax(score))
    return int(cols[best]), int(rows[best])


def _halo(alpha: np.ndarray) -> np.ndarray:
    """``alpha`` grown by one pixel in every direction: a thin shadow around a line."""
    from scipy import ndimage

    return ndimage.grey_dilation(alpha, footprint=np.ones((3, 3), bool))


def _to_uint8(alpha: np.ndarray) -> np.ndarray:
    return np.round(alpha * 255).astype(np.uint8)


def _roi_vertex_masks(subject: Subject):
    """Yield ``("FFA.lh", [n_vertices] bool)`` for every ROI and hemisphere with voxels."""
    for base in subject.roi_names:
        for hemi in HEMISPHERES:
            voxels = subject.roi(f"{base}.{hemi}")
            if len(voxels):
                mask = np.zeros(subject.n_vertices, bool)
                mask[subject.vertices[voxels]] = True
                yield f"{base}.{hemi}", mask


def _contour_alpha(field: np.ndarray, half_width: float) -> np.ndarray:
    """Anti-aliased alpha of the 0.5 level line of ``field`` (NaN = 0), ``half_width`` pixels each side.

    The field is blurred by one pixel first so that its gradient, which turns the distance to the level
    into pixels, is smooth (a raw linear-in-triangle field gives a dotted line)."""
    from scipy import ndimage

    field = ndimage.gaussian_filter(np.nan_to_num(field, nan=0.0), sigma=1.0)
    gy, gx = np.gradient(field)
    slope = np.hypot(gx, gy)
    with np.errstate(divide="ignore", invalid="ignore"):
        distance = np.where(slope > 1e-6, np.abs(field - 0.5) / slope, np.inf)
    return np.clip(half_width + 0.5 - distance, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------- per-subject lookups


_PER_SUBJECT: "weakref.WeakKeyDictionary[Subject, dict]" = weakref.WeakKeyDictionary()


def _memo(subject: Subject, name: str, compute):
    """``compute(subject)``, computed once per subject object."""
    memo = _PER_SUBJECT.setdefault(subject, {})
    if name not in memo:
        memo[name] = compute(subject)
    return memo[name]


def _voxel_of_vertex(subject: Subject) -> np.ndarray:
    """``[n_vertices]`` voxel index of each vertex, -1 where the subject has no voxel."""

    def compute(subject):
        lookup = np.full(subject.n_vertices, -1, np.int64)
        lookup[subject.vertices] = np.arange(subject.n_voxels)
        return lookup

    return _memo(subject, "voxel_of_vertex", compute)


def _subject_digest(subject: Subject) -> str:
    """Hash of the subject's surface files, voxels and ROIs: what a pixel grid depends on."""

    def compute(subject):
        digest = hashlib.sha256(_flat_surface(subject.surface).digest.encode())
        digest.update(np.ascontiguousarray(subject.vertices, np.int64).tobytes())
        for name in sorted(subject.rois):
            digest.update(name.encode() + np.ascontiguousarray(subject.rois[name], np.int64).tobytes())
        return digest.hexdigest()[:16]

    return _memo(subject, "digest", compute)


# --------------------------------------------------------------------------- rendering helpers


def _vertex_values(subject: Subject, values) -> np.ndarray:
    """``values`` as a ``[n_vertices]`` float array (NaN where no data)."""
    try:
        values = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"`values` must be numbers, got {type(values).__name__}: {exc}") from exc
    if values.shape == (subject.n_voxels,):
        values = subject.to_surface(values)
    elif values.shape != (subject.n_vertices,):
        raise ValueError(
            f"`values` must have length {subject.n_voxels} (one per voxel of subject {subject.name!r}) "
            f"or {subject.n_vertices} (one per surface vertex), got shape {values.shape}."
        )
    values = np.where(np.isinf(values), np.nan, values)
    if np.isnan(values).all():
        raise ValueError("`values`: all values are NaN; pass values=None to draw the bare flatmap.")
    return values


def _highlight_vertices(subject: Subject, highlight) -> np.ndarray:
    """``[n_vertices]`` bool mask of an ROI name or a voxel index set."""
    if isinstance(highlight, str):
        try:
            voxels = subject.roi(highlight)
        except ValueError as exc:
            raise ValueError(f"`highlight` is not an ROI of subject {subject.name!r}: {exc}") from exc
    else:
        voxels = subject.check_voxels(highlight, "highlight")
    mask = np.zeros(subject.n_vertices, bool)
    mask[subject.vertices[voxels]] = True
    return mask


def _colormap(cmap):
    import matplotlib

    if isinstance(cmap, matplotlib.colors.Colormap):
        return cmap
    try:
        return matplotlib.colormaps[cmap]
    except (KeyError, TypeError):
        raise ValueError(f"`cmap` must be a matplotlib colormap name such as 'RdBu_r', got {cmap!r}.") from None


def _limits(values: np.ndarray, vmin, vmax) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if vmin is None or vmax is None:
        lo, hi = np.percentile(finite, [1, 99])
        if lo == hi:
            lo, hi = finite.min(), finite.max()
        if lo < 0 < hi and vmin is None and vmax is None:
            lo, hi = -max(-lo, hi), max(-lo, hi)
        if lo == hi:
            lo, hi = lo - 1.0, hi + 1.0
        vmin = lo if vmin is None else vmin
        vmax = hi if vmax is None else vmax
    vmin, vmax = float(vmin), float(vmax)
    if not (np.isfinite(vmin) and np.isfinite(vmax) and vmin < vmax):
        raise ValueError(f"`vmin` must be below `vmax` (both finite), got vmin={vmin!r}, vmax={vmax!r}.")
    return vmin, vmax


def _lookup_table(colormap) -> np.ndarray:
    return (colormap(np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.float32)


def _paint_values(image, grid: _Grid, values, colormap, vmin, vmax) -> None:
    """Colour the cortex pixels whose nearest vertex has a value (linear interpolation inside)."""
    corner_values = values[grid.corners]
    known = np.isfinite(corner_values)
    weights = np.where(known, grid.weights, 0.0)
    total = weights.sum(1)
    nearest_known = np.isfinite(values[grid.vertex.reshape(-1)[grid.pixels]])
    keep = nearest_known & (total > 0)
    pixel_values = (np.where(known, corner_values, 0.0) * weights).sum(1)[keep] / total[keep]
    index = np.clip((pixel_values - vmin) / (vmax - vmin) * 255 + 0.5, 0, 255).astype(np.intp)
    image.reshape(-1, 3)[grid.pixels[keep]] = _lookup_table(colormap)[index]


def _paint_highlight(image, grid: _Grid, in_set: np.ndarray) -> None:
    """Tint the voxel set and draw a bright contour around it (computed in its bounding box only)."""
    field = np.nan_to_num(grid.interpolate(in_set.astype(np.float32)))
    rows, cols = np.nonzero(field > 0)
    if not len(rows):
        return
    m = 8  # margin for the contour and its halo
    box = np.s_[max(rows.min() - m, 0) : rows.max() + m + 1, max(cols.min() - m, 0) : cols.max() + m + 1]
    field, patch = field[box], image[box]
    inside = field > 0.5
    patch[inside] = patch[inside] * (1 - _HIGHLIGHT_TINT) + _HIGHLIGHT * _HIGHLIGHT_TINT
    contour = _contour_alpha(field, grid.layout.size(1.5 / 1024))  # 3 px wide at width 1024 in the full view
    _blend(patch, _halo(contour), 0.0, strength=0.6)
    _blend(patch, contour, _HIGHLIGHT)


def _blend(image, alpha, colour, strength: float = 1.0) -> None:
    """``image = image * (1 - a) + colour * a`` with ``a = alpha * strength`` (alpha uint8 or float)."""
    alpha = alpha.astype(np.float32) * (strength / 255.0 if alpha.dtype == np.uint8 else strength)
    where = alpha > 0
    a = alpha[where][:, None]
    image[where] = image[where] * (1 - a) + np.asarray(colour, np.float32) * a


@lru_cache(maxsize=32)
def _font(size: int, bold: bool = False):
    """DejaVu Sans from the system, else the copy matplotlib ships; PIL's default font as a last resort."""
    import matplotlib
    from PIL import ImageFont

    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    for folder in (Path("/usr/share/fonts/truetype/dejavu"), Path(matplotlib.get_data_path()) / "fonts" / "ttf"):
        if (folder / name).is_file():
            return ImageFont.truetype(str(folder / name), size)
    return ImageFont.load_default(size)


def _draw_labels(draw, grid: _Grid) -> None:
    font = _font(max(9, round(grid.layout.size(0.0125))), bold=True)
    for name, (x, y) in zip(grid.label_names, grid.label_xy):
        draw.text((int(x), int(y)), name.partition(".")[0], font=font, fill=_TEXT, anchor="mm",
                  stroke_width=2, stroke_fill=_TEXT_STROKE)


def _draw_colorbar(draw, layout: _Layout, colormap, vmin: float, vmax: float) -> None:
    """A horizontal colour bar with round-number ticks, centred in the band under the map."""
    width = layout.shape[1]
    bar_w, bar_h = round(0.28 * width), max(6, round(0.014 * width))
    x0 = (width - bar_w) // 2
    y0 = layout.top + layout.map_height + round(0.014 * width)
    lut = _lookup_table(colormap).astype(np.uint8)
    for i in range(bar_w):
        draw.line([(x0 + i, y0), (x0 + i, y0 + bar_h - 1)], fill=tuple(int(c) for c in lut[i * 255 // (bar_w - 1)]))
    draw.rectangle([x0 - 1, y0 - 1, x0 + bar_w, y0 + bar_h], outline=_INK)
    font = _font(max(9, round(0.012 * width)))
    for tick, text in _ticks(vmin, vmax):
        x = round(x0 + (tick - vmin) / (vmax - vmin) * (bar_w - 1))
        draw.line([(x, y0 + bar_h), (x, y0 + bar_h + 3)], fill=_INK)
        draw.text((x, y0 + bar_h + 5), text, font=font, fill=_INK, anchor="mt")


def _ticks(vmin: float, vmax: float) -> list[tuple[float, str]]:
    """Ticks at both ends and at round numbers between them (not too close to the ends), with labels."""
    from matplotlib.ticker import MaxNLocator

    inner = MaxNLocator(nbins=4).tick_values(vmin, vmax)
    margin = 0.12 * (vmax - vmin)
    inner = inner[(inner > vmin + margin) & (inner < vmax - margin)]
    return [(float(t), f"{t + 0.0:.3g}") for t in (vmin, *inner, vmax)]


def _draw_title(draw, layout: _Layout, title: str) -> None:
    font = _font(max(10, round(0.019 * layout.shape[1])), bold=True)
    draw.text((layout.shape[1] // 2, layout.top // 2 + 2), title, font=font, fill=_INK, anchor="mm")


def _draw_hemisphere_names(draw, layout: _Layout) -> None:
    font = _font(max(9, round(0.012 * layout.shape[1])))
    y = layout.top // 2 + 2
    draw.text((layout.left, y), "Left hemisphere", font=font, fill=_MUTED, anchor="lm")
    draw.text((layout.left + layout.map_width, y), "Right hemisphere", font=font, fill=_MUTED, anchor="rm")
