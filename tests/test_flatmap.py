"""Flatmaps of the surface subject S1 and the volume subject S1-fullhead (S1's grid voxels shown through
its ``fullhead`` transform): placement against pycortex, the voxel -> vertex mapping against an
independent line sampling, picking, painting, highlighting, growing, caching, errors, in both views
(tests that use the ``subject`` / ``view`` fixtures run once per subject / view)."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

import braindive as bd
from braindive import flatmap
from braindive.flatmap import raster, surfaces

SUBJECTS = ("S1", "S1-fullhead")


@pytest.fixture(scope="module", params=SUBJECTS)
def subject(request):
    return bd.load_subject(request.param)


@pytest.fixture(scope="module")
def fullhead():
    return bd.load_subject("S1-fullhead")


@pytest.fixture(scope="module", params=flatmap.VIEWS)
def view(request):
    return request.param


def _line_samples(surface, transform):
    """``[n_vertices, 64]`` grid cell (C order of pycortex's (k, j, i) volume) of 64 points evenly spaced
    strictly between the white-matter and pial surfaces, -1 outside the grid: computed from the surface
    files and the transform matrix, without pycortex's mapper."""
    import cortex

    xfm = cortex.db.get_xfm(surface, transform)
    pia, _ = cortex.db.get_surf(surface, "pia", merge=True)
    wm, _ = cortex.db.get_surf(surface, "wm", merge=True)
    ni, nj, nk = xfm.reference.shape[:3]
    cells = np.full((len(pia), 64), -1, np.int64)
    for n, t in enumerate(np.linspace(0, 1, 66)[1:-1]):
        i, j, k = np.rint(xfm(wm + t * (pia - wm))).T.astype(np.int64)
        ok = (i >= 0) & (i < ni) & (j >= 0) & (j < nj) & (k >= 0) & (k < nk)
        cells[ok, n] = (k[ok] * nj + j[ok]) * ni + i[ok]
    return cells


@pytest.fixture(scope="module")
def expected_voxel_of_vertex(subject):
    """Independent voxel shown by each vertex: surface subjects from ``vertices``; volume subjects the
    most frequent grid cell of the vertex's line samples, when that cell is one of the subject's voxels."""
    import cortex

    n = len(cortex.db.get_surf("S1", "fiducial", merge=True)[0])
    out = np.full(n, -1, np.int64)
    if subject.kind == "surface":
        out[subject.vertices] = np.arange(subject.n_voxels)
        return out
    cells = _line_samples(subject.surface, subject.transform)
    ni, nj, _ = subject.volume_shape
    voxel_cells = (subject.ijk[:, 2] * nj + subject.ijk[:, 1]) * ni + subject.ijk[:, 0]
    order = np.argsort(voxel_cells)
    for v in np.flatnonzero(np.isin(cells, voxel_cells).any(1)):  # the others cannot show a subject voxel
        values, counts = np.unique(cells[v][cells[v] >= 0], return_counts=True)
        cell = values[np.argmax(counts)]
        at = np.searchsorted(voxel_cells[order], cell)
        if at < len(order) and voxel_cells[order][at] == cell:
            out[v] = order[at]
    return out


@pytest.fixture(scope="module")
def shape(subject, view):
    return bd.flatmap_shape(subject, view=view)


@pytest.fixture(scope="module")
def vertex_image(subject, view):
    """``[H, W]`` vertex drawn at each pixel (-1 off the cortex), from the flatmap's pixel grid."""
    return raster.pixel_grid(subject, flatmap.DEFAULT_WIDTH, view).vertex


@pytest.fixture(scope="module")
def voxel_image(vertex_image, expected_voxel_of_vertex):
    """``[H, W]`` voxel shown at each pixel by the independent mapping (-1: none)."""
    return np.where(vertex_image >= 0, expected_voxel_of_vertex[vertex_image], -1)


@pytest.fixture(scope="module")
def regions(subject, view, voxel_image):
    """``{"FFA.lh": [H, W] bool}``: the pixels showing a voxel of each ROI."""
    return {name: np.isin(voxel_image, subject.roi(name)) for name in bd.roi_centroids(subject, view=view)}


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
    vertex_image = raster.pixel_grid(s1, flatmap.DEFAULT_WIDTH, "full").vertex
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
    layout = raster.layout(s1, width, "full")
    assert (layout.map_height, layout.map_width) == reference.shape
    grid = raster.pixel_grid(s1, width, "full")
    mine = s1.to_surface(values)[grid.vertex]
    mine[grid.vertex < 0] = np.nan
    mine = mine[layout.top : layout.top + layout.map_height, layout.left : layout.left + layout.map_width]
    ours, theirs = np.isfinite(mine), np.isfinite(reference)
    assert (ours & theirs).sum() / (ours | theirs).sum() > 0.97
    both = ours & theirs
    assert np.abs(mine[both] - reference[both]).mean() < 0.01


def test_volume_mapping_matches_independent_line_sampling(fullhead):
    """Each vertex shows the subject voxel that most of its white-to-pial line samples fall in."""
    import cortex

    mapping = flatmap.voxel_mapping(fullhead)
    cells = _line_samples("S1", "fullhead")
    ni, nj, _ = fullhead.volume_shape
    lookup = {int((k * nj + j) * ni + i): v for v, (i, j, k) in enumerate(fullhead.ijk)}
    rng = np.random.default_rng(0)
    shown = np.flatnonzero(mapping.voxel_of_vertex >= 0)
    agree = 0
    for v in rng.choice(shown, 2000, replace=False):
        values, counts = np.unique(cells[v][cells[v] >= 0], return_counts=True)
        agree += lookup.get(int(values[np.argmax(counts)]), -1) == mapping.voxel_of_vertex[v]
        row = mapping.matrix[v]
        expected = {lookup[int(c)]: n for c, n in zip(values, counts) if int(c) in lookup}
        assert dict(zip(row.indices.tolist(), np.round(row.data * sum(expected.values())).astype(int).tolist())) \
            == expected  # weights: the share of the vertex's samples (among the subject's voxels) in each voxel
    assert agree >= 0.99 * 2000  # ties between equally frequent cells may resolve either way
    # Voxel centres lie where the vertices that show them are (ijk in NIfTI order, the reference's affine).
    fid, _ = cortex.db.get_surf("S1", "fiducial", merge=True)
    ijk_of_vertex = cortex.db.get_xfm("S1", "fullhead")(fid[shown])
    assert np.median(np.abs(ijk_of_vertex - fullhead.ijk[mapping.voxel_of_vertex[shown]]), axis=0).max() < 0.6
    values = np.arange(fullhead.n_voxels, dtype=float)
    on_vertices = mapping.to_vertices(values)
    assert np.isnan(on_vertices[mapping.voxel_of_vertex < 0]).all()
    single = np.diff(mapping.matrix.indptr) == 1
    np.testing.assert_allclose(on_vertices[single], mapping.voxel_of_vertex[single], rtol=1e-12)


def test_full_view_frames_the_whole_flat_surface(subject):
    grid = raster.pixel_grid(subject, flatmap.DEFAULT_WIDTH, "full")
    layout = grid.layout
    assert layout.zoom == 1.0 and layout.shape == bd.flatmap_shape(bd.load_subject("S1"))
    rows, cols = np.nonzero(grid.vertex >= 0)
    (left, top), (right, bottom) = layout.map_box
    assert abs(cols.min() - left) <= 1 and abs(cols.max() - right) <= 1
    assert abs(rows.min() - top) <= 1 and abs(rows.max() - bottom) <= 1


def test_voxel_view_frames_the_voxels_and_clips_the_cortex_at_the_map_edges(subject, expected_voxel_of_vertex):
    grid = raster.pixel_grid(subject, flatmap.DEFAULT_WIDTH, "voxels")
    layout = grid.layout
    assert bd.flatmap_shape(subject, view="voxels") == layout.shape
    assert 2.3 < layout.zoom < 2.8  # the visual-cortex voxels span ~36% of the flat map's width
    (left, top), (right, bottom) = layout.map_box
    showing = np.flatnonzero((expected_voxel_of_vertex >= 0) & surfaces.flat_surface("S1").on_map)
    rows, cols = np.divmod(grid.vertex_pixel[showing], layout.shape[1])
    assert (grid.vertex_pixel[showing] >= 0).mean() > 0.999
    assert min(cols.min() - left, right - cols.max(), rows.min() - top, bottom - rows.max()) > 30  # the margin
    is_right = showing >= bd.load_subject("S1").n_vertices_lh
    assert cols[~is_right].max() <= cols[is_right].min()  # left hemisphere on the left

    cortex = grid.vertex >= 0
    on_map = np.zeros_like(cortex)
    on_map[top : bottom + 1, left : right + 1] = True
    assert not (cortex & ~on_map).any()  # nothing drawn in the title, padding or colour-bar bands
    edges = cortex[top, left:right], cortex[bottom, left:right], cortex[top:bottom, left], cortex[top:bottom, right]
    touching = sum(edge.mean() > 0.3 for edge in edges)  # the cortex runs up to the map's edges
    assert touching == 4 if subject.kind == "surface" else touching >= 3  # volumes: a few far-off vertices
    # Every cortex pixel, edges included, shows the flat point under its centre: triangles are clipped, not smeared.
    lo, hi = raster.bounds(subject, "voxels")
    scale = layout.map_width / (hi[0] - lo[0])
    rows, cols = np.divmod(grid.pixels, layout.shape[1])
    centres = np.stack([lo[0] + (cols - left + 0.5) / scale, hi[1] - (rows - top + 0.5) / scale], axis=1)
    drawn = np.einsum("ij,ijk->ik", grid.weights, surfaces.flat_surface("S1").xy[grid.corners])
    assert np.abs(drawn - centres).max() * scale < 0.01
    assert grid.weights.min() > -1e-4


def test_pick_at_each_roi_centroid_returns_that_roi(subject, view, shape, regions, voxel_image):
    assert sorted(regions) == sorted(f"{r}.{h}" for r in subject.roi_names for h in ("lh", "rh")
                                     if len(subject.roi(f"{r}.{h}")))
    for name, region in regions.items():
        base, hemi = name.split(".")
        for x, y in (centroid_pixel(region), bd.roi_centroids(subject, view=view)[name]):
            hit = bd.pick(subject, x, y, shape, view=view)
            assert hit is not None and hit.hemisphere == hemi and base in hit.rois, (name, x, y, hit)
            assert hit.voxel in subject.roi(name)
    if subject.kind == "surface":
        assert subject.vertices[hit.voxel] == hit.vertex
    # The picked voxel is the one shown at the pixel (for volumes: away from voxel borders).
    inner = voxel_image >= 0
    if subject.kind == "volume":
        inner &= ndimage.maximum_filter(voxel_image, size=3) == ndimage.minimum_filter(voxel_image, size=3)
    rows, cols = np.nonzero(inner)
    for at in np.random.default_rng(1).choice(len(rows), 50, replace=False):
        assert bd.pick(subject, cols[at], rows[at], shape, view=view).voxel == voxel_image[rows[at], cols[at]]


def test_pick_scales_to_other_widths_and_returns_none_off_the_map(subject, view, shape, regions, voxel_image,
                                                                   vertex_image):
    x, y = centroid_pixel(regions["FFA.rh"])
    half = (shape[0] // 2, shape[1] // 2, 3)
    assert "FFA" in bd.pick(subject, x / 2, y / 2, half, view=view).rois
    for x, y in [(-1, 10), (shape[1], 10), (10, shape[0]), (0, 0), (np.nan, 5), (5, np.inf), (shape[1] // 2, 5)]:
        assert bd.pick(subject, x, y, shape, view=view) is None
    rows, cols = np.nonzero((vertex_image >= 0) & (voxel_image < 0))
    off_voxels = bd.pick(subject, cols[0], rows[0], shape, view=view)  # cortex outside the visual voxel space
    assert off_voxels.voxel is None and off_voxels.rois == [] and off_voxels.vertex == vertex_image[rows[0], cols[0]]


def _near(voxels, region, pixels, subject, view, expected_voxel_of_vertex):
    """Whether each of ``voxels`` has a vertex (that shows it) within ``pixels`` pixels of ``region``."""
    vertex_pixel = raster.pixel_grid(subject, flatmap.DEFAULT_WIDTH, view).vertex_pixel
    near = ndimage.binary_dilation(region, iterations=pixels).ravel()
    vertices = np.flatnonzero(np.isin(expected_voxel_of_vertex, voxels) & (vertex_pixel >= 0))
    return np.isin(voxels, expected_voxel_of_vertex[vertices[near[vertex_pixel[vertices]]]]).all()


def test_painting_an_roi_selects_its_voxels(subject, view, regions, expected_voxel_of_vertex):
    for name, region in regions.items():
        roi = subject.roi(name)
        got = bd.voxels_in_mask(subject, region, view=view)
        assert len(np.intersect1d(got, roi)) >= 0.95 * len(roi), name
        extra = np.setdiff1d(got, roi)  # border voxels only
        assert _near(extra, region, 2, subject, view, expected_voxel_of_vertex), name
        if subject.kind == "surface":  # (a volume's border voxels are few but large: a sizeable share of small ROIs)
            assert len(extra) <= 0.05 * len(roi), name
    ffa = regions["FFA.rh"]
    half = bd.voxels_in_mask(subject, ffa[::2, ::2], view=view)  # painted on an image rendered at half width
    assert len(np.intersect1d(half, subject.roi("FFA.rh"))) >= 0.85 * len(subject.roi("FFA.rh"))
    assert _near(np.setdiff1d(half, subject.roi("FFA.rh")), ffa, 4, subject, view, expected_voxel_of_vertex)
    assert bd.voxels_in_mask(subject, np.zeros_like(regions["V1.lh"]), view=view).tolist() == []
    bands_only = np.zeros_like(regions["V1.lh"])
    bands_only[:5] = bands_only[-5:] = True
    assert bd.voxels_in_mask(subject, bands_only, view=view).size == 0


def colour_values(image, cmap="RdBu_r"):
    """``[H, W]`` value in [0, 1] whose colormap colour is nearest to each reddish pixel (else 0)."""
    import matplotlib

    lut = matplotlib.colormaps[cmap](np.linspace(0, 1, 256))[:, :3] * 255
    out = np.zeros(image.shape[:2])
    reddish = image[..., 0].astype(int) > image[..., 1].astype(int) + 40
    pixels = image[reddish].astype(float)
    out[reddish] = np.argmin(((pixels[:, None, :] - lut[None]) ** 2).sum(-1), axis=1) / 255
    return out


def test_one_hot_roi_colour_lies_inside_its_outline(subject, view, regions, vertex_image):
    values = np.zeros(subject.n_voxels)
    values[subject.roi("FFA")] = 1.0
    ffa = regions["FFA.lh"] | regions["FFA.rh"]
    near = ndimage.binary_dilation(ffa, iterations=2)
    for rois in (False, True):
        image = bd.render_flatmap(values, subject, vmin=0, vmax=1, rois=rois, view=view)
        hot = (colour_values(image) > 0.5) & (vertex_image >= 0)  # on the map, not the colour bar
        assert (hot & near).sum() / hot.sum() > 0.99
        assert (hot & ffa).sum() > (0.4 if rois else 0.9) * ffa.sum()  # the "FFA" labels cover half of it


def test_highlight_tints_and_outlines_the_roi_only(subject, view, regions):
    base = bd.render_flatmap(None, subject, rois=False, view=view)
    by_name = bd.render_flatmap(None, subject, rois=False, highlight="FFA", view=view)
    by_index = bd.render_flatmap(None, subject, rois=False, highlight=subject.roi("FFA"), view=view)
    assert np.array_equal(by_name, by_index)
    changed = np.abs(by_name.astype(int) - base).sum(-1) > 0
    ffa = regions["FFA.lh"] | regions["FFA.rh"]
    assert (changed & ffa).sum() > 0.9 * ffa.sum()
    assert (changed & ~ndimage.binary_dilation(ffa, iterations=6)).sum() == 0
    yellowish = (by_name[..., 0] > 200) & (by_name[..., 1] > 150) & (by_name[..., 2] < 90)
    assert yellowish.sum() > 300 and (yellowish & ~ndimage.binary_dilation(ffa, iterations=4)).sum() == 0


def test_outline_highlights_keep_the_values_and_mark_both_regions(subject, view, regions):
    values = np.linspace(-1, 1, subject.n_voxels)
    plain = bd.render_flatmap(values, subject, rois=False, view=view)
    drawn = bd.render_flatmap(values, subject, rois=False, highlight="FFA", highlight_b="PPA",
                              highlight_style="outline", view=view)
    ffa, ppa = (regions[f"{r}.lh"] | regions[f"{r}.rh"] for r in ("FFA", "PPA"))
    changed = np.abs(drawn.astype(int) - plain).sum(-1) > 0
    for region in (ffa, ppa):
        interior = ndimage.binary_erosion(region, iterations=6)
        assert interior.sum() > 50 and not changed[interior].any()  # the values stay visible inside
        ring = ndimage.binary_dilation(region, iterations=3) & ~ndimage.binary_erosion(region, iterations=3)
        assert changed[ring].mean() > 0.3
    yellow = (drawn[..., 0] > 200) & (drawn[..., 1] > 150) & (drawn[..., 2] < 90)
    cyan = (drawn[..., 0] < 80) & (drawn[..., 1] > 150) & (drawn[..., 2] > 200)
    assert (yellow & ndimage.binary_dilation(ffa, iterations=4)).sum() > 0.9 * yellow.sum() > 0
    assert (cyan & ndimage.binary_dilation(ppa, iterations=4)).sum() > 0.9 * cyan.sum() > 0
    filled = bd.render_flatmap(values, subject, rois=False, highlight="FFA", view=view)  # the default fills
    assert (np.abs(filled.astype(int) - plain).sum(-1) > 0)[ndimage.binary_erosion(ffa, iterations=6)].all()


def test_vertex_values_and_voxel_values_draw_the_same_image_and_save_writes_it(subject, tmp_path):
    values = np.linspace(-2, 3, subject.n_voxels)
    image = bd.render_flatmap(values, subject, title="ramp")
    on_vertices = flatmap.voxel_mapping(subject).to_vertices(values)
    assert np.array_equal(image, bd.render_flatmap(on_vertices, subject, title="ramp"))
    path = bd.save_flatmap(values, subject, tmp_path / "ramp.png", title="ramp")
    assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), image)
    assert not np.array_equal(image, bd.render_flatmap(values, subject))  # the title is drawn


def test_grid_and_mapping_caches_are_built_once_then_reused(subject, monkeypatch):
    width = 640
    path = raster.grid_path(subject, width, "full")
    assert raster.grid_path(subject, width, "voxels") != path  # the view is part of the cache key
    path.unlink(missing_ok=True)
    raster.GRIDS.pop(path, None)
    values = np.cos(np.arange(subject.n_voxels) / 500.0)
    first = bd.render_flatmap(values, subject, width=width)
    assert path.is_file()
    builds = []
    real = raster._build_grid
    monkeypatch.setattr(raster, "_build_grid", lambda *args: builds.append(args) or real(*args))
    second = bd.render_flatmap(values, subject, width=width)  # from memory
    raster.GRIDS.pop(path)
    from_disk = bd.render_flatmap(values, subject, width=width)
    assert builds == [] and first.shape == (*bd.flatmap_shape(subject, width), 3)
    assert np.array_equal(first, second) and np.array_equal(first, from_disk)
    path.write_bytes(b"damaged")
    raster.GRIDS.pop(path)
    assert np.array_equal(bd.render_flatmap(values, subject, width=width), first) and len(builds) == 1
    if subject.kind == "volume":  # the mapping is cached on disk too, keyed by fingerprint + display
        from braindive.flatmap import mapping

        files = list(bd.cache_dir("flatmap").glob(f"{subject.name}-mapping-*.npz"))
        assert files
        monkeypatch.setattr(mapping, "pycortex_mapper", lambda *a: pytest.fail("mapping rebuilt"))
        copy = bd.Subject.load(subject.save(Path(bd.cache_dir("flatmap")) / "copy-test.npz"))
        assert np.array_equal(flatmap.voxel_mapping(copy).voxel_of_vertex,
                              flatmap.voxel_mapping(subject).voxel_of_vertex)


def test_grow_is_a_growing_connected_patch_on_the_surface(s1):
    import cortex
    from scipy.sparse.csgraph import connected_components

    fid, _ = cortex.db.get_surf("S1", "fiducial", merge=True)
    graph = surfaces.surface_info("S1").graph
    voxel = int(s1.roi("FFA.lh")[len(s1.roi("FFA.lh")) // 2])
    assert bd.grow(s1, voxel, 0).tolist() == [voxel]
    previous = np.array([voxel])
    for radius in (2.0, 4.0, 8.0):
        patch = bd.grow(s1, voxel, radius)
        assert len(patch) > len(previous) and np.isin(previous, patch).all()
        distance = np.linalg.norm(fid[s1.vertices[patch]] - fid[s1.vertices[voxel]], axis=1)
        assert distance.max() <= radius + 1e-6 and distance.max() > 0.6 * radius
        assert not s1.is_right[patch].any()
        vertices = s1.vertices[patch]
        assert connected_components(graph[vertices][:, vertices], directed=False)[0] == 1
        previous = patch


def test_grow_on_a_volume_is_a_ball_in_millimetres(fullhead):
    from nibabel.affines import apply_affine
    from scipy.spatial import cKDTree

    mm = apply_affine(fullhead.affine, fullhead.ijk)
    voxel = int(fullhead.roi("FFA.rh")[len(fullhead.roi("FFA.rh")) // 2])
    assert bd.grow(fullhead, voxel, 0).tolist() == [voxel]
    previous = np.array([voxel])
    for radius in (3.0, 6.0, 12.0):
        patch = bd.grow(fullhead, voxel, radius)
        ball = np.array(sorted(cKDTree(mm).query_ball_point(mm[voxel], radius + 1e-6)))
        np.testing.assert_array_equal(patch, ball)
        assert len(patch) > len(previous) and np.isin(previous, patch).all()
        previous = patch


def test_bad_inputs_raise_clear_errors(subject):
    shape = bd.flatmap_shape(subject)
    n = subject.n_voxels
    with pytest.raises(ValueError, match=rf"`values` must have length {n}"):
        bd.render_flatmap(np.zeros(10), subject)
    with pytest.raises(ValueError, match="all values are NaN"):
        bd.render_flatmap(np.full(n, np.nan), subject)
    with pytest.raises(ValueError, match=r"`highlight`.*'FFA', 'OFA'.*got 'FFX'"):
        bd.render_flatmap(None, subject, highlight="FFX")
    with pytest.raises(ValueError, match=r"`highlight_b` has indices out of range"):
        bd.render_flatmap(None, subject, highlight_b=[0, 10**6])
    with pytest.raises(ValueError, match=r"`highlight_style` must be one of \['fill', 'outline'\], got 'dashed'"):
        bd.render_flatmap(None, subject, highlight="FFA", highlight_style="dashed")
    with pytest.raises(ValueError, match="`cmap`"):
        bd.render_flatmap(np.zeros(n), subject, cmap="no-such-map")
    with pytest.raises(ValueError, match="`vmin` must be below `vmax`"):
        bd.render_flatmap(np.zeros(n), subject, vmin=1, vmax=0)
    with pytest.raises(ValueError, match="`width` must be an integer >= 256"):
        bd.render_flatmap(None, subject, width=100)
    with pytest.raises(ValueError, match=r"`mask` of shape \(10, 10\) is not a flatmap"):
        bd.voxels_in_mask(subject, np.ones((10, 10), bool))
    with pytest.raises(ValueError, match="`mask` must be a 2-D"):
        bd.voxels_in_mask(subject, np.ones((*shape, 3), bool))
    with pytest.raises(ValueError, match="but the image has shape"):
        bd.voxels_in_mask(subject, np.ones(shape, bool), image_shape=(shape[0] // 2, shape[1] // 2))
    with pytest.raises(ValueError, match="`image_shape`"):
        bd.pick(subject, 1, 1, (5,))
    voxels_shape = bd.flatmap_shape(subject, view="voxels")
    with pytest.raises(ValueError, match=rf"not a flatmap of subject '{subject.name}' in view 'voxels': an image "
                                         rf"1024 wide is {voxels_shape[0]}"):
        bd.pick(subject, 1, 1, shape, view="voxels")  # an image of the full view
    for call in (lambda: bd.render_flatmap(None, subject, view="zoom"), lambda: bd.flatmap_shape(subject, view=None),
                 lambda: bd.roi_centroids(subject, view="zoom"), lambda: bd.pick(subject, 1, 1, shape, view=["voxels"]),
                 lambda: bd.voxels_in_mask(subject, np.ones(shape, bool), view="zoom")):
        with pytest.raises(ValueError, match=r"`view` must be one of \['full', 'voxels'\], got "):
            call()
    with pytest.raises(ValueError, match=rf"`voxel` must be an integer in \[0, {n}\)"):
        bd.grow(subject, n, 2.0)
    with pytest.raises(ValueError, match="`radius_mm` must be a finite number >= 0"):
        bd.grow(subject, 0, -1)


def test_subjects_without_a_display_say_why(fullhead):
    bare = bd.Subject.from_volume("subj01", fullhead.ijk, fullhead.affine, fullhead.volume_shape, fullhead.rois,
                                  is_right=fullhead.is_right, space="func1pt8mm")
    assert not bare.drawable and bare.fingerprint == fullhead.fingerprint
    with pytest.raises(ValueError, match=r"Subject 'subj01 · func1pt8mm' cannot be drawn: it has no pycortex "
                                         r"surface and transform \(see Subject.with_display\)"):
        bd.render_flatmap(None, bare)
    assert len(bd.grow(bare, 0, 5.0)) > 1  # growing a volume needs no display
    shown = bare.with_display("S1", "fullhead")
    assert np.array_equal(bd.render_flatmap(None, shown), bd.render_flatmap(None, fullhead))
    stale = bd.Subject.from_volume("subj01", fullhead.ijk, fullhead.affine, fullhead.volume_shape, {},
                                   is_right=fullhead.is_right, surface="S1", transform="retinotopy")  # as in a file
    with pytest.raises(ValueError, match=r"Transform S1/retinotopy .* has grid shape \(72, 72, 22\), but subject"):
        bd.render_flatmap(None, stale)
    with pytest.raises(ValueError, match=r"Transform S1/retinotopy .* has grid shape \(72, 72, 22\), but subject"):
        bd.Subject.from_volume("subj01", fullhead.ijk, fullhead.affine, fullhead.volume_shape, {}, surface="S1",
                               transform="retinotopy")  # hemispheres from a display: checked first


def test_colorbar_can_be_left_out_and_only_the_bar_changes():
    """Categories (sub-region parts) carry their own legend: ``colorbar=False`` leaves the map as it was."""
    s1 = bd.load_subject("S1")
    values = np.where(np.arange(s1.n_voxels) % 2, 1.0, 0.0)
    with_bar = flatmap.render_flatmap(values, s1, vmin=-0.5, vmax=1.5)
    without = flatmap.render_flatmap(values, s1, vmin=-0.5, vmax=1.5, colorbar=False)
    rows = np.flatnonzero((with_bar != without).any(axis=(1, 2)))
    assert rows.size and rows.min() > 0.85 * with_bar.shape[0]  # the bar's band under the map, nothing else
    band = without[rows.min():rows.max() + 1]
    assert (band == band[0, 0]).all()  # the band left blank
