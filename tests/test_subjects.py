"""S1 voxel space, ROIs per hemisphere, the on-disk ROI cache, subject files."""
import shutil

import numpy as np
import pytest

import braindive as bd
from braindive import subjects as subj


def test_s1_voxels_are_visual_rois_plus_margin(s1):
    assert s1.name == "S1" and s1.surface == "S1"
    assert s1.roi_names == ["EBA", "FFA", "OFA", "OPA", "PPA", "RSC", "V1", "V2", "V3"]
    assert 30000 < s1.n_voxels < 45000  # documented subset of S1's 304,380 vertices
    assert s1.n_vertices == 304380 and s1.n_vertices_lh == 152893
    assert np.all(np.diff(s1.vertices) > 0)
    union = np.unique(np.concatenate([s1.rois[n] for n in s1.roi_names]))
    assert 0.6 * s1.n_voxels < len(union) < s1.n_voxels  # the rest is the margin


def test_roi_hemispheres_partition_the_roi(s1):
    for name in s1.roi_names:
        lh, rh = s1.roi(name + ".lh"), s1.roi(name + ".rh")
        assert len(lh) and len(rh)
        np.testing.assert_array_equal(np.sort(np.concatenate([lh, rh])), s1.roi(name))
        assert not s1.is_right[lh].any() and s1.is_right[rh].all()
    assert s1.hemisphere_of(int(s1.roi("FFA.rh")[0])) == "rh"
    assert "FFA" in s1.rois_of_voxel(int(s1.roi("FFA")[3]))


def test_ffa_voxels_map_to_pycortex_ffa_vertices(s1):
    import cortex

    verts = cortex.utils.get_roi_verts("S1", roi="FFA", mask=False)["FFA"]
    assert set(s1.vertices[s1.roi("FFA")]) <= set(verts)
    assert len(s1.roi("FFA")) >= 0.98 * len(verts)


@pytest.mark.parametrize("name", ["XYZ", "FFA.mid", "V4"])
def test_unknown_roi_lists_valid_names(s1, name):
    with pytest.raises(ValueError, match=rf"`roi` must be one of \['EBA', 'FFA'.*got '{name}'"):
        s1.roi(name)


def test_unknown_subject_lists_valid_names():
    with pytest.raises(ValueError, match=r"`subject` must be one of \['S1'\] or a subject .npz file, got 'subj99'"):
        bd.load_subject("subj99")


def test_check_voxels(s1):
    np.testing.assert_array_equal(s1.check_voxels([5, 3, 3]), [3, 5])
    with pytest.raises(ValueError, match="`voxels` is an empty voxel set"):
        s1.check_voxels([])
    with pytest.raises(ValueError, match=r"out of range \[0, 37926\): \[37926\]"):
        s1.check_voxels([1, 37926])


def test_to_surface_scatters_and_checks_length(s1):
    surf = s1.to_surface(np.arange(s1.n_voxels, dtype=float))
    assert surf.shape == (s1.n_vertices,) and np.isnan(surf).sum() == s1.n_vertices - s1.n_voxels
    assert surf[s1.vertices[10]] == 10
    with pytest.raises(ValueError, match=r"`values` must have shape \(37926,\)"):
        s1.to_surface(np.zeros(5))


def test_subject_file_round_trip_and_corrupt_file(tmp_path, s1):
    path = s1.save(tmp_path / "s1.npz")
    again = bd.load_subject(str(path))
    np.testing.assert_array_equal(again.vertices, s1.vertices)
    np.testing.assert_array_equal(again.roi("PPA.lh"), s1.roi("PPA.lh"))
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(ValueError, match="corrupt or not a subject file"):
        bd.Subject.load(tmp_path / "bad.npz")


def test_roi_cache_key_follows_overlays_svg(tmp_path, monkeypatch):
    src = subj._pycortex_subject_dir("S1")
    (tmp_path / "S1").mkdir()
    shutil.copy(src / "overlays.svg", tmp_path / "S1" / "overlays.svg")
    monkeypatch.setattr(subj, "_pycortex_subject_dir", lambda surface: tmp_path / surface)
    key = subj._s1_cache_key("S1")
    assert key == subj._s1_cache_key("S1")
    with open(tmp_path / "S1" / "overlays.svg", "a") as f:
        f.write("<!-- edited -->")
    assert subj._s1_cache_key("S1") != key


def test_corrupt_cache_is_rebuilt(tmp_path, monkeypatch, s1):
    bd.set_cache_dir(tmp_path)
    try:
        cached = bd.cache_dir("subjects") / f"S1-{subj._s1_cache_key('S1')}.npz"
        s1.save(cached)
        np.testing.assert_array_equal(subj._load_pycortex_subject("S1").vertices, s1.vertices)
        cached.write_bytes(b"corrupt")
        monkeypatch.setattr(subj, "_build_pycortex_subject", lambda surface: s1)
        assert subj._load_pycortex_subject("S1") is s1 and cached.stat().st_size > 1000
    finally:
        from conftest import REPO

        bd.set_cache_dir(REPO / ".cache" / "braindive")
