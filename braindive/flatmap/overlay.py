"""Outlines on the pixel grid: anti-aliased level-line contours, their halos, ROI outlines and label spots."""
from __future__ import annotations

import numpy as np


def roi_overlay(grid, masks):
    """Outline alpha, shadow alpha (uint8), label names and label positions of ``masks``, an iterable of
    ``(name, [n_vertices] bool)``; smaller regions are placed first so their labels get the best spots."""
    half = grid.layout.size(1 / 1024)  # 2 px wide lines at width 1024 in the full view
    outline = np.zeros(grid.vertex.shape, np.float32)
    names, points = [], []
    for name, in_roi in sorted(masks, key=lambda item: item[1].sum()):
        outline = np.maximum(outline, contour_alpha(grid.interpolate(in_roi.astype(np.float32)), half))
        region = in_roi[np.maximum(grid.vertex, 0)] & (grid.vertex >= 0)
        if region.any():
            names.append(name)
            points.append(_label_position(region, points, spacing=0.04 * grid.layout.shape[1]))
    order = np.argsort(names)
    label_xy = np.array(points, np.int64).reshape(-1, 2)[order]
    return to_uint8(outline), to_uint8(halo(outline)), [names[i] for i in order], label_xy


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


def halo(alpha: np.ndarray) -> np.ndarray:
    """``alpha`` grown by one pixel in every direction: a thin shadow around a line."""
    from scipy import ndimage

    return ndimage.grey_dilation(alpha, footprint=np.ones((3, 3), bool))


def to_uint8(alpha: np.ndarray) -> np.ndarray:
    return np.round(alpha * 255).astype(np.uint8)


def contour_alpha(field: np.ndarray, half_width: float) -> np.ndarray:
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
