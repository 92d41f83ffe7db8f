"""Cortical flatmaps: draw per-voxel values on a subject's flattened cortex, and map pixels back to voxels.

This package is the only place that draws with pycortex surfaces. One job per module:

* ``surfaces``: flat coordinates, curvature and mesh graph of a pycortex surface (cached per surface);
* ``mapping``: the subject's voxel -> vertex mapping (identity for surface subjects, pycortex's mapper
  through the transform for volume subjects), built once and cached on disk;
* ``raster``: image layout and the pixel grid (triangle, barycentric weights and nearest vertex of
  every pixel, curvature background, ROI outlines), rasterised once per subject, width and view and
  cached on disk (``cache_dir("flatmap")``); ``overlay``: contour lines and label spots;
* ``render``: ``render_flatmap`` / ``save_flatmap`` (a gather, a colour lookup, alpha compositing);
* ``selection``: ``pick``, ``voxels_in_mask``, ``grow``, ``roi_centroids``.

Image layout (``flatmap_shape``): a title band on top, both hemispheres side by side as in pycortex's
quickflat (left hemisphere on the left, image row 0 = largest flat ``y``), and a colour-bar band
below. The map shows one of ``VIEWS``: ``"full"``, the whole flat surface, or ``"voxels"``, the bounding
box of the subject's voxels (a zoom on them). Every pixel-space function takes the same ``view=``;
``pick`` and ``voxels_in_mask`` take pixel coordinates of an image of that view, at any width.
"""
from .mapping import VoxelMapping, voxel_mapping
from .raster import DEFAULT_WIDTH, VIEWS
from .render import HIGHLIGHT_STYLES, flatmap_shape, render_flatmap, save_flatmap
from .selection import Pick, grow, pick, roi_centroids, voxels_in_mask

__all__ = [
    "Pick",
    "render_flatmap",
    "save_flatmap",
    "pick",
    "voxels_in_mask",
    "grow",
    "flatmap_shape",
    "roi_centroids",
    "voxel_mapping",
    "VoxelMapping",
    "DEFAULT_WIDTH",
    "VIEWS",
    "HIGHLIGHT_STYLES",
]
