"""Drawing: per-voxel values, ROI outlines, highlighted voxel sets, labels, colour bar and title."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from ..subjects import Subject
from .mapping import voxel_mapping
from .overlay import contour_alpha, halo
from .raster import DEFAULT_WIDTH, Grid, Layout, check_view, check_width, layout, pixel_grid

HIGHLIGHT_STYLES = ("fill", "outline")

# Colours (RGB 0-255).
_OUTLINE = np.array([255, 255, 255], np.float32)
_HIGHLIGHT = np.array([255, 214, 0], np.float32)  # highlight (region A): yellow
_HIGHLIGHT_B = np.array([0, 200, 255], np.float32)  # highlight_b (region B of a contrast): cyan
_HIGHLIGHT_TINT = 0.45
_TEXT = (255, 255, 255)
_TEXT_STROKE = (30, 30, 30)
_INK = (40, 40, 40)
_MUTED = (120, 120, 120)


def flatmap_shape(subject: Subject, width: int = DEFAULT_WIDTH, *, view: str = "full") -> tuple[int, int]:
    """``(H, W)`` of the images ``render_flatmap`` draws for ``subject`` at ``width`` in ``view``."""
    return layout(subject, check_width(width), check_view(view)).shape


def render_flatmap(
    values,
    subject: Subject,
    *,
    rois: bool = True,
    highlight=None,
    highlight_b=None,
    highlight_style: str = "fill",
    cmap="RdBu_r",
    vmin: float | None = None,
    vmax: float | None = None,
    title: str | None = None,
    width: int = DEFAULT_WIDTH,
    view: str = "full",
    colorbar: bool = True,
) -> np.ndarray:
    """Draw ``values`` on the subject's flatmap; returns an ``H x W x 3`` uint8 image.

    Args:
        values: ``[n_voxels]`` (or ``[n_vertices]`` of the display surface) numbers, NaN or inf = no
            data (curvature shows through); ``None`` draws curvature and ROIs only.
        subject: the subject the values belong to (surface or volume; see ``voxel_mapping``).
        rois: outline and label the subject's ROIs.
        highlight: an ROI name (``"FFA"``, ``"FFA.lh"``) or voxel indices, drawn in yellow.
        highlight_b: a second ROI name or voxel set (e.g. region B of a contrast), drawn in cyan.
        highlight_style: ``"fill"`` (tint and contour) or ``"outline"`` (contour only, the values stay
            visible), for both highlights.
        cmap: a matplotlib colormap name or object.
        vmin, vmax: colour limits; by default the 1st-99th percentiles of the values, made symmetric
            around 0 when the values have both signs.
        colorbar: draw the colour bar under the map (off for categories with a legend of their own).
        title: text drawn above the map.
        width: image width in pixels (the height follows the map's aspect ratio).
        view: ``"full"`` (the whole flat surface) or ``"voxels"`` (zoomed on the subject's voxels).
    """
    if highlight_style not in HIGHLIGHT_STYLES:
        raise ValueError(f"`highlight_style` must be one of {list(HIGHLIGHT_STYLES)}, got {highlight_style!r}.")
    grid = pixel_grid(subject, check_width(width), check_view(view))
    surface_values = None if values is None else _vertex_values(subject, values)
    highlights = [(_highlight_vertices(subject, chosen, argument), colour)
                  for chosen, argument, colour in ((highlight, "highlight", _HIGHLIGHT),
                                                   (highlight_b, "highlight_b", _HIGHLIGHT_B)) if chosen is not None]
    colormap = _colormap(cmap)

    image = grid.background.astype(np.float32)
    if surface_values is not None:
        vmin, vmax = _limits(surface_values, vmin, vmax)
        _paint_values(image, grid, surface_values, colormap, vmin, vmax)
    if rois:
        _blend(image, grid.outline_shadow, 0.0, strength=0.5)
        _blend(image, grid.outline, _OUTLINE)
    for mask, colour in highlights:
        _paint_highlight(image, grid, mask, colour, fill=highlight_style == "fill")
    image = np.clip(image + 0.5, 0, 255).astype(np.uint8)

    from PIL import Image, ImageDraw

    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    _draw_hemisphere_names(draw, grid.layout)
    if rois:
        _draw_labels(draw, grid)
    if surface_values is not None and colorbar:
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


def _vertex_values(subject: Subject, values) -> np.ndarray:
    """``values`` as a ``[n_vertices]`` float array of the display surface (NaN where no data)."""
    try:
        values = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"`values` must be numbers, got {type(values).__name__}: {exc}") from exc
    mapping = voxel_mapping(subject)
    if values.shape == (subject.n_voxels,):
        values = mapping.to_vertices(values)
    elif values.shape != (mapping.n_vertices,):
        raise ValueError(
            f"`values` must have length {subject.n_voxels} (one per voxel of subject {subject.name!r}) "
            f"or {mapping.n_vertices} (one per surface vertex), got shape {values.shape}."
        )
    values = np.where(np.isinf(values), np.nan, values)
    if np.isnan(values).all():
        raise ValueError("`values`: all values are NaN; pass values=None to draw the bare flatmap.")
    return values


def _highlight_vertices(subject: Subject, chosen, argument: str) -> np.ndarray:
    """``[n_vertices]`` bool mask of an ROI name or a voxel index set."""
    if isinstance(chosen, str):
        try:
            voxels = subject.roi(chosen)
        except ValueError as exc:
            raise ValueError(f"`{argument}` is not an ROI of subject {subject.name!r}: {exc}") from exc
    else:
        voxels = subject.check_voxels(chosen, argument)
    return voxel_mapping(subject).vertex_mask(voxels)


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


def _paint_values(image, grid: Grid, values, colormap, vmin, vmax) -> None:
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


def _paint_highlight(image, grid: Grid, in_set: np.ndarray, colour: np.ndarray, fill: bool) -> None:
    """Draw a bright contour around the vertex set (tinted inside when ``fill``), in its bounding box only."""
    field = np.nan_to_num(grid.interpolate(in_set.astype(np.float32)))
    rows, cols = np.nonzero(field > 0)
    if not len(rows):
        return
    m = 8  # margin for the contour and its halo
    box = np.s_[max(rows.min() - m, 0) : rows.max() + m + 1, max(cols.min() - m, 0) : cols.max() + m + 1]
    field, patch = field[box], image[box]
    if fill:
        inside = field > 0.5
        patch[inside] = patch[inside] * (1 - _HIGHLIGHT_TINT) + colour * _HIGHLIGHT_TINT
    contour = contour_alpha(field, grid.layout.size(1.5 / 1024))  # 3 px wide at width 1024 in the full view
    _blend(patch, halo(contour), 0.0, strength=0.6)
    _blend(patch, contour, colour)


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


def _draw_labels(draw, grid: Grid) -> None:
    font = _font(max(9, round(grid.layout.size(0.0125))), bold=True)
    for name, (x, y) in zip(grid.label_names, grid.label_xy):
        draw.text((int(x), int(y)), name.partition(".")[0], font=font, fill=_TEXT, anchor="mm",
                  stroke_width=2, stroke_fill=_TEXT_STROKE)


def _draw_colorbar(draw, shape: Layout, colormap, vmin: float, vmax: float) -> None:
    """A horizontal colour bar with round-number ticks, centred in the band under the map."""
    width = shape.shape[1]
    bar_w, bar_h = round(0.28 * width), max(6, round(0.014 * width))
    x0 = (width - bar_w) // 2
    y0 = shape.top + shape.map_height + round(0.014 * width)
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


def _draw_title(draw, shape: Layout, title: str) -> None:
    font = _font(max(10, round(0.019 * shape.shape[1])), bold=True)
    draw.text((shape.shape[1] // 2, shape.top // 2 + 2), title, font=font, fill=_INK, anchor="mm")


def _draw_hemisphere_names(draw, shape: Layout) -> None:
    font = _font(max(9, round(0.012 * shape.shape[1])))
    y = shape.top // 2 + 2
    draw.text((shape.left, y), "Left hemisphere", font=font, fill=_MUTED, anchor="lm")
    draw.text((shape.left + shape.map_width, y), "Right hemisphere", font=font, fill=_MUTED, anchor="rm")
