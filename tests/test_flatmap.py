"""Flatmaps of S1: placement against pycortex, picking, painting, highlighting, growing, caching, errors,
in both views (tests that use the ``view`` fixture run once per view)."""
import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

import braindive as bd
from braindive import flatmap


@pytest.fixture(scope="module", params=flatmap.VIEWS)
def view(request):
    return request.param


@pytest.fixture(scope="module")
def shape(s1, view):
    return bd.flatmap_shape(s1, view=view)


@pytest.fixture(scope="module")
def vertex_image(s1, view):
    """``[H, W]`` vertex drawn at each pixel (-1 off the cortex), from the flatmap's pixel grid."""
    return flatmap._grid(s1, flatmap.DEFAULT_WIDTH, view).vertex


@pytest.fixture(scope="module")
def regions(s1, view, vertex_image):
    """``{"FFA.lh": [H, W] bool}``: the pixels showing a vertex of each ROI."""
    return {name: np.isin(vertex_image, s1.vertices[s1.roi(name)]) for name in bd.roi_centroids(s1, view=view)}


def centroid_pixel(region):
    """The region's pixel centroid, or the region pixel nearest to it when it falls outside."""
    rows, cols = np.nonzero(region)
    cy, cx = rows.mean(), cols.mean()
    if region[int(round(cy)), int(round(cx))]:
        return int(round(cx)), int(round(cy))
    nearest = np.argmin((rows - cy) ** 2 + (cols - cx) ** 2)
    return int(cols[nearest]), int(rows[nearest])


def test_base_map_is_curvature_on_white_with_left_hemisphere_left_and_top_up(s1):
    shape = bd.flatmap_shape(s1)
    vertex_image = flatmap._grid(s1, flatmap.DEFAULT_WIDTH, "full").vertex
    image = bd.render_flatmap(None, s1)
    assert image.shape == (*shape, 3) and image.dtype == np.uint8
    assert shape == (631, 1024)
    cortex = vertex_image >= 0
    assert 0.4 < cortex.mean() < 0.5
    assert (image[~cortex] >= 230).all(axis=-1).mean() > 0.97  # white margins (titles, labels aside)
    greys = np.isin(image[cortex][:, 0], (96, 159)) & (image[cortex].std(axis=1) == 0)
    assert greys.mean() > 0.9  # thresholded curvature; the rest is ROI outlines and labels
    assert 0.3 < (image[cortex][:, 0] == 159).mean() < 0.7

    import cortex as pycortex

    flat, _ = pycortex.db.get_surf("S1", "flat", merge=True, nudge=True)
    rows, cols = np.nonzero(cortex)
    top = vertex_image[rows.min(), cols[rows == rows.min()][0]]
    bottom = vertex_image[rows.max(), cols[rows == rows.max()][0]]
    assert flat[top, 1] > flat[bottom, 1] + 350  # row 0 is the top of the flat map (largest y)
    left_of_middle = vertex_image[:, : shape[1] // 2]
    assert (left_of_middle[left_of_middle >= 0] < s1.n_vertices_lh).mean() > 0.99


def test_data_placement_matches_pycortex_quickflat(s1, tmp_path, monkeypatch):
    """Same values, same pixels as ``cortex.quickflat`` (a private pycortex database so that its cache
    files land in tmp_path)."""
    import cortex
    import cortex.quickflat.utils as quickflat_utils

    real = Path(cortex.db.get_paths("S1")["surfs"]["flat"]["lh"]).parents[1]
    (tmp_path / "S1").mkdir()
    for name in ("surfaces", "transforms", "anatomicals", "overlays.svg"):
        (tmp_path / "S1" / name).symlink_to(real / name)
    monkeypatch.setattr(quickflat_utils, "db", cortex.database.Database(str(tmp_path)))
    fid, _ = cortex.db.get_surf("S1", "fiducial", merge=True)
    values = np.sin(fid[s1.vertices, 1] / 15.0) * np.cos(fid[s1.vertices, 2] / 20.0)
    reference, _ = quickflat_utils.make_flatmap_image(cortex.Vertex(s1.to_surface(values), "S1"), height=512)

    width = 1004  # a map 980 x 512 pixels, as quickflat's at height 512
    layout = flatmap._layout(s1, width, "full")
    assert (layout.map_height, layout.map_width) == reference.shape
    grid = flatmap._grid(s1, width, "full")
    mine = s1.to_surface(values)[grid.vertex]
    mine[grid.vertex < 0] = np.nan
    mine = mine[layout.top : layout.top + layout.map_height, layout.left : layout.left + layout.map_width]
    ours, theirs = np.isfinite(mine), np.isfinite(reference)
    assert (ours & theirs).sum() / (ours | theirs).sum() > 0.97
    both = ours & theirs
    assert np.abs(mine[both] - reference[both]).mean() < 0.01


def test_full_view_is_unchanged_by_the_views(s1):
    """Checksums of the full view taken before the "voxels" view existed: the text-free map area of a
    render, the cached grid (curvature, outlines, label positions), and the mean colour of a whole image."""

    def digest(*arrays):
        return hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)).hexdigest()[:16]

    ramp = np.linspace(-2, 3, s1.n_voxels)
    grid = flatmap._grid(s1, flatmap.DEFAULT_WIDTH, "full")
    layout = grid.layout
    image = bd.render_flatmap(ramp, s1, rois=False, highlight="FFA", view="full")
    assert digest(image[layout.top : layout.top + layout.map_height]) == "4d29811961194c0d"
    assert digest(grid.vertex, grid.background, grid.outline, grid.outline_shadow, grid.label_xy) == "1134779dadac3aa6"
    image = bd.render_flatmap(ramp, s1, highlight="FFA", title="ramp")
    assert np.allclose(image.mean(axis=(0, 1)), [200.664, 199.194, 199.318], atol=0.3)  # text may vary by font
    assert layout.zoom == 1.0


def test_voxel_view_frames_the_voxels_and_clips_the_cortex_at_the_map_edges(s1):
    grid = flatmap._grid(s1, flatmap.DEFAULT_WIDTH, "voxels")
    layout = grid.layout
    assert bd.flatmap_shape(s1, view="voxels") == layout.shape == (1006, 1024)
    assert 2.4 < layout.zoom < 2.7  # the visual-cortex voxels span 36% of the flat map's width
    (left, top), (right, bottom) = layout.map_box
    rows, cols = np.divmod(grid.vertex_pixel[s1.vertices], layout.shape[1])
    assert (grid.vertex_pixel[s1.vertices] >= 0).all()
    assert min(cols.min() - left, right - cols.max(), rows.min() - top, bottom - rows.max()) > 30  # the margin
    assert cols[~s1.is_right].max() <= cols[s1.is_right].min()  # left hemisphere on the left

    cortex = grid.vertex >= 0
    on_map = np.zeros_like(cortex)
    on_map[top : bottom + 1, left : right + 1] = True
    assert not (cortex & ~on_map).any()  # nothing drawn in the title, padding or colour-bar bands
    edges = cortex[top, left:right], cortex[bottom, left:right], cortex[top:bottom, left], cortex[top:bottom, right]
    assert min(edge.mean() for edge in edges) > 0.3  # the cortex runs up to the map's edges
    # Every cortex pixel, edges included, shows the flat point under its centre: triangles are clipped, not smeared.
    lo, hi = flatmap._bounds(s1, "voxels")
    scale = layout.map_width / (hi[0] - lo[0])
    rows, cols = np.divmod(grid.pixels, layout.shape[1])
    centres = np.stack([lo[0] + (cols - left + 0.5) / scale, hi[1] - (rows - top + 0.5) / scale], axis=1)
    drawn = np.einsum("ij,ijk->ik", grid.weights, flatmap._flat_surface("S1").xy[grid.corners])
    assert np.abs(drawn - centres).max() * scale < 0.01
    assert grid.weights.min() > -1e-4


def test_pick_at_each_roi_centroid_returns_that_roi(s1, view, shape, regions):
    assert sorted(regions) == sorted(f"{r}.{h}" for r in s1.roi_names for h in ("lh", "rh"))
    for name, region in regions.items():
        base, hemi = name.split(".")
        for x, y in (centroid_pixel(region), bd.roi_centroids(s1, view=view)[name]):
            hit = bd.pick(s1, x, y, shape, view=view)
            assert hit is not None and hit.hemisphere == hemi and base in hit.rois, (name, x, y, hit)
            assert hit.voxel in s1.roi(name) and s1.vertices[hit.voxel] == hit.vertex


def test_pick_scales_to_other_widths_and_returns_none_off_the_map(s1, view, shape, regions, vertex_image):
    x, y = centroid_pixel(regions["FFA.rh"])
    half = (shape[0] // 2, shape[1] // 2, 3)
    assert "FFA" in bd.pick(s1, x / 2, y / 2, half, view=view).rois
    for x, y in [(-1, 10), (shape[1], 10), (10, shape[0]), (0, 0), (np.nan, 5), (5, np.inf), (shape[1] // 2, 5)]:
        assert bd.pick(s1, x, y, shape, view=view) is None
    rows, cols = np.nonzero((vertex_image >= 0) & ~np.isin(vertex_image, s1.vertices))
    off_voxels = bd.pick(s1, cols[0], rows[0], shape, view=view)  # cortex outside S1's visual voxel space
    assert off_voxels.voxel is None and off_voxels.rois == [] and off_voxels.vertex == vertex_image[rows[0], cols[0]]


def test_painting_an_roi_selects_its_voxels(s1, view, regions):
    for name, region in regions.items():
        roi = s1.roi(name)
        got = bd.voxels_in_mask(s1, region, view=view)
        assert len(np.intersect1d(got, roi)) >= 0.95 * len(roi), name
        assert len(np.setdiff1d(got, roi)) <= 0.05 * len(roi), name  # border voxels only
    ffa = regions["FFA.rh"]
    half = bd.voxels_in_mask(s1, ffa[::2, ::2], view=view)  # painted on an image rendered at half width
    assert len(np.intersect1d(half, s1.roi("FFA.rh"))) >= 0.85 * len(s1.roi("FFA.rh"))
    assert len(np.setdiff1d(half, s1.roi("FFA.rh"))) <= 0.1 * len(s1.roi("FFA.rh"))  # coarser border
    assert bd.voxels_in_mask(s1, np.zeros_like(regions["V1.lh"]), view=view).tolist() == []
    bands_only = np.zeros_like(regions["V1.lh"])
    bands_only[:5] = bands_only[-5:] = True
    assert bd.voxels_in_mask(s1, bands_only, view=view).size == 0


def colour_values(image, cmap="RdBu_r"):
    """``[H, W]`` value in [0, 1] whose colormap colour is nearest to each reddish pixel (else 0)."""
    import matplotlib

    lut = matplotlib.colormaps[cmap](np.linspace(0, 1, 256))[:, :3] * 255
    out = np.zeros(image.shape[:2])
    reddish = image[..., 0].astype(int) > image[..., 1].astype(int) + 40
    pixels = image[reddish].astype(float)
    out[reddish] = np.argmin(((pixels[:, None, :] - lut[None]) ** 2).sum(-1), axis=1) / 255
    return out


def test_one_hot_roi_colour_lies_inside_its_outline(s1, view, regions, vertex_image):
    values = np.zeros(s1.n_voxels)
    values[s1.roi("FFA")] = 1.0
    ffa = regions["FFA.lh"] | regions["FFA.rh"]
    near = ndimage.binary_dilation(ffa, iterations=2)
    for rois in (False, True):
        image = bd.render_flatmap(values, s1, vmin=0, vmax=1, rois=rois, view=view)
        hot = (colour_values(image) > 0.5) & (vertex_image >= 0)  # on the map, not the colour bar
        assert (hot & near).sum() / hot.sum() > 0.99
        assert (hot & ffa).sum() > (0.4 if rois else 0.9) * ffa.sum()  # the "FFA" labels cover half of it


def test_highlight_tints_and_outlines_the_roi_only(s1, view, regions):
    base = bd.render_flatmap(None, s1, rois=False, view=view)
    by_name = bd.render_flatmap(None, s1, rois=False, highlight="FFA", view=view)
    assert np.array_equal(by_name, bd.render_flatmap(None, s1, rois=False, highlight=s1.roi("FFA"), view=view))
    changed = np.abs(by_name.astype(int) - base).sum(-1) > 0
    ffa = regions["FFA.lh"] | regions["FFA.rh"]
    assert (changed & ffa).sum() > 0.9 * ffa.sum()
    assert (changed & ~ndimage.binary_dilation(ffa, iterations=6)).sum() == 0
    yellowish = (by_name[..., 0] > 200) & (by_name[..., 1] > 150) & (by_name[..., 2] < 90)
    assert yellowish.sum() > 300 and (yellowish & ~ndimage.binary_dilation(ffa, iterations=4)).sum() == 0


def test_vertex_values_and_voxel_values_draw_the_same_image_and_save_writes_it(s1, tmp_path):
    values = np.linspace(-2, 3, s1.n_voxels)
    image = bd.render_flatmap(values, s1, title="ramp")
    assert np.array_equal(image, bd.render_flatmap(s1.to_surface(values), s1, title="ramp"))
    path = bd.save_flatmap(values, s1, tmp_path / "ramp.png", title="ramp")
    assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), image)
    assert not np.array_equal(image, bd.render_flatmap(values, s1))  # the title is drawn


def test_grid_cache_is_built_once_then_reused(s1):
    width = 640
    path = flatmap._grid_path(s1, width, "full")
    assert flatmap._grid_path(s1, width, "voxels") != path  # the view is part of the cache key
    path.unlink(missing_ok=True)
    flatmap._GRIDS.pop(path, None)
    values = np.cos(np.arange(s1.n_voxels) / 500.0)
    start = time.perf_counter()
    first = bd.render_flatmap(values, s1, width=width)
    build = time.perf_counter() - start
    assert path.is_file()
    start = time.perf_counter()
    second = bd.render_flatmap(values, s1, width=width)
    again = time.perf_counter() - start
    flatmap._GRIDS.pop(path)
    from_disk = bd.render_flatmap(values, s1, width=width)
    assert first.shape == (*bd.flatmap_shape(s1, width), 3)
    assert np.array_equal(first, second) and np.array_equal(first, from_disk)
    assert again < build / 3 and again < 1.0


def test_grow_is_a_growing_connected_patch_on_the_surface(s1):
    import cortex
    from scipy.sparse.csgraph import connected_components

    fid, _ = cortex.db.get_surf("S1", "fiducial", merge=True)
    graph = flatmap._surface_info("S1").graph
    voxel = int(s1.roi("FFA.lh")[len(s1.roi("FFA.lh")) // 2])
    assert bd.grow(s1, voxel, 0).tolist() == [voxel]
    previous = np.array([voxel])
    for radius in (2.0, 4.0, 8.0):
        start = time.perf_counter()
        patch = bd.grow(s1, voxel, radius)
        assert time.perf_counter() - start < 0.5
        assert len(patch) > len(previous) and np.isin(previous, patch).all()
        distance = np.linalg.norm(fid[s1.vertices[patch]] - fid[s1.vertices[voxel]], axis=1)
        assert distance.max() <= radius + 1e-6 and distance.max() > 0.6 * radius
        assert not s1.is_right[patch].any()
        vertices = s1.vertices[patch]
        assert connected_components(graph[vertices][:, vertices], directed=False)[0] == 1
        previous = patch


def test_bad_inputs_raise_clear_errors(s1):
    shape = bd.flatmap_shape(s1)
    with pytest.raises(ValueError, match=r"`values` must have length 37926"):
        bd.render_flatmap(np.zeros(10), s1)
    with pytest.raises(ValueError, match="all values are NaN"):
        bd.render_flatmap(np.full(s1.n_voxels, np.nan), s1)
    with pytest.raises(ValueError, match=r"`highlight`.*'FFA', 'OFA'.*got 'FFX'"):
        bd.render_flatmap(None, s1, highlight="FFX")
    with pytest.raises(ValueError, match=r"`highlight` has indices out of range"):
        bd.render_flatmap(None, s1, highlight=[0, 10**6])
    with pytest.raises(ValueError, match="`cmap`"):
        bd.render_flatmap(np.zeros(s1.n_voxels), s1, cmap="no-such-map")
    with pytest.raises(ValueError, match="`vmin` must be below `vmax`"):
        bd.render_flatmap(np.zeros(s1.n_voxels), s1, vmin=1, vmax=0)
    with pytest.raises(ValueError, match="`width` must be an integer >= 256"):
        bd.render_flatmap(None, s1, width=100)
    with pytest.raises(ValueError, match=r"`mask` of shape \(10, 10\) is not a flatmap"):
        bd.voxels_in_mask(s1, np.ones((10, 10), bool))
    with pytest.raises(ValueError, match="`mask` must be a 2-D"):
        bd.voxels_in_mask(s1, np.ones((*shape, 3), bool))
    with pytest.raises(ValueError, match="but the image has shape"):
        bd.voxels_in_mask(s1, np.ones(shape, bool), image_shape=(shape[0] // 2, shape[1] // 2))
    with pytest.raises(ValueError, match="`image_shape`"):
        bd.pick(s1, 1, 1, (5,))
    with pytest.raises(ValueError, match=r"not a flatmap of subject 'S1' in view 'voxels': an image 1024 wide is 1006"):
        bd.pick(s1, 1, 1, shape, view="voxels")  # an image of the full view
    for call in (lambda: bd.render_flatmap(None, s1, view="zoom"), lambda: bd.flatmap_shape(s1, view=None),
                 lambda: bd.roi_centroids(s1, view="zoom"), lambda: bd.pick(s1, 1, 1, shape, view=["voxels"]),
                 lambda: bd.voxels_in_mask(s1, np.ones(shape, bool), view="zoom")):
        with pytest.raises(ValueError, match=r"`view` must be one of \['full', 'voxels'\], got "):
            call()
    with pytest.raises(ValueError, match=r"`voxel` must be an integer in \[0, 37926\)"):
        bd.grow(s1, 37926, 2.0)
    with pytest.raises(ValueError, match="`radius_mm` must be a finite number >= 0"):
        bd.grow(s1, 0, -1)
