"""S1 voxel space, ROIs per hemisphere, the on-disk ROI cache, subject files."""
import shutil

import numpy as np
import pytest

import braindive as bd
from braindive import pycortex_subjects as pcs
from braindive import subjects


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
    with pytest.raises(ValueError, match=r"`subject` must be one of \['S1', 'S1-fullhead'\] or a subject .npz file, "
                                         r"got 'subj99'"):
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
    src = pcs.pycortex_dir("S1")
    (tmp_path / "S1").mkdir()
    shutil.copy(src / "overlays.svg", tmp_path / "S1" / "overlays.svg")
    monkeypatch.setattr(pcs, "pycortex_dir", lambda surface: tmp_path / surface)
    key = pcs._cache_key("S1")
    assert key == pcs._cache_key("S1")
    with open(tmp_path / "S1" / "overlays.svg", "a") as f:
        f.write("<!-- edited -->")
    assert pcs._cache_key("S1") != key


def test_corrupt_cache_is_rebuilt(tmp_path, monkeypatch, s1):
    bd.set_cache_dir(tmp_path)
    try:
        cached = bd.cache_dir("subjects") / f"S1-{pcs.cache_key('S1')}.npz"
        s1.save(cached)
        build = subjects.SUBJECTS["S1"]
        np.testing.assert_array_equal(build().vertices, s1.vertices)  # read from the cache
        cached.write_bytes(b"corrupt")
        fields = dict(name="S1", surface="S1", vertices=s1.vertices, n_vertices_lh=s1.n_vertices_lh,
                      n_vertices=s1.n_vertices, rois=s1.rois, space=s1.space, description="rebuilt")
        monkeypatch.setattr(pcs, "surface_fields", lambda surface: fields)
        assert build().description == "rebuilt" and bd.Subject.load(cached).description == "rebuilt"
    finally:
        from conftest import REPO

        bd.set_cache_dir(REPO / ".cache" / "braindive")


# --------------------------------------------------------------------------- volume subjects and identity

AFFINE = np.array([[-2.0, 0, 0, 10.0], [0, 2.0, 0, -20.0], [0, 0, 3.0, 5.0], [0, 0, 0, 1]])


def _volume(name="subj01", space="func1pt8mm", affine=AFFINE, shape=(6, 5, 4), **kwargs):
    ijk = np.array([[0, 0, 0], [1, 2, 3], [5, 4, 3], [2, 2, 2]])
    return bd.Subject.from_volume(name, ijk, affine, shape, {"A": [0, 3], "B": [1]}, space=space, **kwargs)


def test_volume_subject_fields_and_scatter():
    s = _volume()
    assert s.kind == "volume" and s.vertices is None and s.n_voxels == 4 and s.label == "subj01 · func1pt8mm"
    # default hemisphere: scanner x > 0 (RAS+); x = -2 i + 10 -> voxels with i < 5 are right
    np.testing.assert_array_equal(s.is_right, [True, True, False, True])
    vol = s.to_volume(np.array([1.0, 2.0, 3.0, 4.0]))
    assert vol.shape == (6, 5, 4) and vol[1, 2, 3] == 2.0 and vol[5, 4, 3] == 3.0 and np.isfinite(vol).sum() == 4
    assert not s.drawable
    with pytest.raises(ValueError, match="is a volume"):
        s.to_surface(np.zeros(4))


def _sha(header: dict, voxels) -> str:
    import hashlib
    import json

    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    digest.update(np.asarray(voxels, "<i8").tobytes())
    return digest.hexdigest()


def test_fingerprint_is_the_documented_hash_of_kind_grid_and_voxels(s1):
    s = _volume()
    header = {"kind": "volume", "volume_shape": [6, 5, 4],
              "affine_1e-4": [-20000, 0, 0, 100000, 0, 20000, 0, -200000, 0, 0, 30000, 50000, 0, 0, 0, 10000]}
    assert s.fingerprint == _sha(header, s.ijk)
    surface_header = {"kind": "surface", "surface": "S1", "n_vertices": 304380}
    assert s1.fingerprint == _sha(surface_header, s1.vertices)


def test_fingerprint_ignores_names_rois_and_display_but_not_the_grid():
    s = _volume()
    assert _volume(name="someone", space="other", is_right=np.zeros(4, bool)).fingerprint == s.fingerprint
    assert _volume(affine=AFFINE + 1e-6).fingerprint == s.fingerprint  # below the 1e-4 rounding
    assert _volume(affine=AFFINE + np.diag([0.01, 0, 0, 0])).fingerprint != s.fingerprint
    assert _volume(shape=(6, 5, 5)).fingerprint != s.fingerprint
    reordered = bd.Subject.from_volume("subj01", s.ijk[::-1], AFFINE, (6, 5, 4), {}, space="func1pt8mm")
    assert reordered.fingerprint != s.fingerprint  # voxel order is part of the space (encoder columns)


def test_volume_subject_file_round_trip(tmp_path):
    s = _volume(description="d", extra={"k": 1})
    again = bd.load_subject(str(s.save(tmp_path / "v.npz")))
    assert again.kind == "volume" and again.fingerprint == s.fingerprint and again.label == s.label
    np.testing.assert_array_equal(again.ijk, s.ijk)
    np.testing.assert_array_equal(again.is_right, s.is_right)
    np.testing.assert_array_equal(again.roi("A"), [0, 3])
    assert again.volume_shape == (6, 5, 4) and again.extra == {"k": 1}


def test_format_2_file_still_loads(tmp_path):
    """A file as written before volume subjects: surface-only meta, ``vertices`` array."""
    import json

    meta = {"format_version": 2, "name": "old", "surface": "", "n_vertices_lh": 2, "n_vertices": 5, "space": "nsd:x",
            "description": "", "roi_names": ["A"], "extra": {"volume_shape": [2, 2, 2]}}
    np.savez(tmp_path / "old.npz", meta=np.array(json.dumps(meta)), vertices=np.arange(5), roi__A=np.array([1, 4]))
    old = bd.Subject.load(tmp_path / "old.npz")
    assert old.kind == "surface" and old.n_voxels == 5 and old.label == "old · nsd:x" and not old.drawable
    np.testing.assert_array_equal(old.is_right, [False, False, True, True, True])
    np.testing.assert_array_equal(old.roi("A.rh"), [4])


def test_bad_volume_input_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"2 voxels lie outside the grid \(6, 5, 4\), e.g. voxel 1 at ijk \[6, 0, 0\]"):
        bd.Subject.from_volume("x", [[0, 0, 0], [6, 0, 0], [0, -1, 0]], AFFINE, (6, 5, 4), {})
    with pytest.raises(ValueError, match="`ijk` must be an integer"):
        bd.Subject.from_volume("x", [[0.5, 0, 0]], AFFINE, (6, 5, 4), {})
    with pytest.raises(ValueError, match="lists a grid cell twice"):
        bd.Subject.from_volume("x", [[1, 1, 1], [1, 1, 1]], AFFINE, (6, 5, 4), {})
    with pytest.raises(ValueError, match=r"ROI 'A' of subject 'x' has voxel indices outside \[0, 1\)"):
        bd.Subject.from_volume("x", [[1, 1, 1]], AFFINE, (6, 5, 4), {"A": [1]})


def test_with_display_checks_pycortex_transform_and_grid():
    import cortex

    reference = cortex.db.get_xfm("S1", "fullhead").reference
    s = bd.Subject.from_volume("S1", [[50, 50, 15]], reference.affine, reference.shape[:3], {}, space="fullhead")
    shown = s.with_display("S1", "fullhead")
    assert shown.drawable and shown.fingerprint == s.fingerprint
    assert (shown.surface, shown.transform) == ("S1", "fullhead")
    with pytest.raises(ValueError, match=r"has no transform 'nope'.*transforms there: \['fullhead', 'retinotopy'\]"):
        s.with_display("S1", "nope")
    with pytest.raises(ValueError, match=r"has no subject 'NoSuchSubject'"):
        s.with_display("NoSuchSubject", "fullhead")
    with pytest.raises(ValueError, match=r"reference.nii.gz\) has grid shape \(100, 100, 31\), but subject "
                                         r"'subj01 · func1pt8mm' has volume_shape \(6, 5, 4\)"):
        _volume().with_display("S1", "fullhead")
    shifted = bd.Subject.from_volume("S1", [[50, 50, 15]], reference.affine + np.diag([0.5, 0, 0, 0]),
                                     reference.shape[:3], {}, space="fullhead")
    with pytest.raises(ValueError, match="has a different affine than subject"):
        shifted.with_display("S1", "fullhead")


def test_encoder_matches_subjects_by_fingerprint(caplog):
    from tiny import tiny_encoder

    a, b = _volume(), _volume(name="subj01", space="fsaverage", shape=(6, 5, 5))
    assert a.label != b.label and a.name == b.name
    encoder = tiny_encoder(n_voxels=4, subject="subj01")
    encoder.config = bd.EncoderConfig.for_subject(a, backbone=encoder.config.backbone)
    encoder.check_subject(_volume(name="renamed"))  # same space, other name: fine
    with pytest.raises(ValueError, match=r"fit on voxel space 'subj01 · func1pt8mm' .*subject 'subj01 · fsaverage' "
                                         "is a different voxel space"):
        encoder.check_subject(b)
    old = tiny_encoder(n_voxels=4, subject="subj01")  # no fingerprint recorded: name + voxel count, with a warning
    with caplog.at_level("WARNING"):
        old.check_subject(b)
    assert "records no subject fingerprint" in caplog.text


# --------------------------------------------------------------------------- S1-fullhead: a volume subject offline


@pytest.fixture(scope="module")
def fullhead():
    return bd.load_subject("S1-fullhead")


def test_s1_fullhead_is_a_volume_on_the_fullhead_grid(fullhead, s1):
    import cortex

    reference = cortex.db.get_xfm("S1", "fullhead").reference
    assert fullhead.kind == "volume" and fullhead.volume_shape == (100, 100, 31) == reference.shape[:3]
    np.testing.assert_allclose(fullhead.affine, reference.affine)
    assert (fullhead.surface, fullhead.transform) == ("S1", "fullhead") and fullhead.drawable
    assert fullhead.label == "S1-fullhead · fullhead" and fullhead.fingerprint != s1.fingerprint
    assert fullhead.roi_names == s1.roi_names and 3000 < fullhead.n_voxels < 8000
    order = np.lexsort(fullhead.ijk.T[::-1])
    np.testing.assert_array_equal(order, np.arange(fullhead.n_voxels))  # C order of (i, j, k)
    assert 0.4 < fullhead.is_right.mean() < 0.6


def test_s1_fullhead_roi_voxels_lie_on_that_rois_vertices(fullhead):
    """Each ROI voxel's centre, taken back to the anatomy through the inverse transform, is within a
    voxel half-diagonal plus a cortical thickness of a vertex of that ROI (in its hemisphere)."""
    import cortex
    from scipy.spatial import cKDTree

    fid, _ = cortex.db.get_surf("S1", "fiducial", merge=True)
    centres = cortex.db.get_xfm("S1", "fullhead").inv(fullhead.ijk.astype(float))
    n_lh = len(cortex.db.get_surf("S1", "fiducial", "lh")[0])
    for name, verts in cortex.utils.get_roi_verts("S1", roi=["V1", "FFA", "PPA"], mask=False).items():
        for hemi, side in (("lh", verts[verts < n_lh]), ("rh", verts[verts >= n_lh])):
            distance, _ = cKDTree(fid[side]).query(centres[fullhead.roi(f"{name}.{hemi}")])
            assert distance.max() < 6.0, (name, hemi, distance.max())


def test_is_built_in_needs_the_same_space_and_rois(s1, fullhead):
    import dataclasses

    assert bd.subjects.is_built_in(s1) and bd.subjects.is_built_in(fullhead)
    custom = dataclasses.replace(s1, rois={**s1.rois, "mine": np.array([1, 2, 3])})
    assert not bd.subjects.is_built_in(custom)  # train_encoder then stores the subject file in the checkpoint
    assert not bd.subjects.is_built_in(_volume(name="S1"))


def test_guidance_on_the_volume_subject(fullhead, s1):
    """The pipeline with an encoder on S1-fullhead raises the predicted FFA response; the encoder refuses S1."""
    import torch

    from tiny import SIZE, generators, tiny_encoder, tiny_pipe

    encoder = tiny_encoder(n_voxels=fullhead.n_voxels, subject=fullhead.name)
    encoder.config = bd.EncoderConfig.for_subject(fullhead, backbone=encoder.config.backbone)
    encoder.check_subject(fullhead)
    with pytest.raises(ValueError, match=r"'S1-fullhead · fullhead'.*'S1 · pycortex:S1:visual\+4mm'"):
        encoder.check_subject(s1)
    pipe = tiny_pipe(encoder=encoder)
    objective = bd.Objective.maximize(fullhead.roi("FFA"))
    run = lambda scale: pipe(objective=objective, num_inference_steps=3, height=SIZE, width=SIZE,  # noqa: E731
                             brain_guidance_scale=scale, generator=generators([0]), output_type="np")
    plain, guided = run(0.0), run(300.0)
    assert (guided.objective_values > plain.objective_values).all()
    with torch.no_grad():
        again = encoder(torch.from_numpy(guided.images).permute(0, 3, 1, 2))[:, fullhead.roi("FFA")].mean(1)
    np.testing.assert_allclose(again.numpy(), guided.objective_values, rtol=1e-4, atol=1e-5)


def test_hub_snapshot_brings_the_subject_file(tmp_path, monkeypatch, fullhead):
    """``load_encoder("user/repo")`` asks the Hub for config, weights and subject.npz."""
    import fnmatch

    import huggingface_hub

    from tiny import tiny_encoder

    encoder = tiny_encoder(n_voxels=fullhead.n_voxels, subject=fullhead.name)
    encoder.config = bd.EncoderConfig.for_subject(fullhead, backbone=encoder.config.backbone,
                                                  pretrained=None, backbone_config=encoder.config.backbone_config)
    repo = encoder.save(tmp_path / "repo")
    fullhead.save(repo / "subject.npz")
    (repo / "README.md").write_text("not needed")
    asked = {}

    def fake_snapshot(repo_id, allow_patterns=None, **kwargs):
        asked["patterns"] = allow_patterns
        out = tmp_path / "snapshot"
        out.mkdir()
        for path in repo.iterdir():
            if any(fnmatch.fnmatch(path.name, p) for p in allow_patterns):
                (out / path.name).write_bytes(path.read_bytes())
        return str(out)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    loaded = bd.load_encoder("someone/encoder")
    folder = tmp_path / "snapshot"
    assert sorted(p.name for p in folder.iterdir()) == ["backbone.safetensors", "config.json", "head.safetensors",
                                                        "subject.npz"]
    subject = bd.load_subject(str(folder / "subject.npz"))
    loaded.check_subject(subject)
    assert subject.fingerprint == fullhead.fingerprint


def test_volume_hemispheres_come_from_the_display(fullhead):
    """Without ``is_right``, a displayed volume takes each voxel's hemisphere from the surface: it agrees
    with the hemisphere of the vertex nearest to the voxel centre (inverse transform)."""
    import cortex
    from scipy.spatial import cKDTree

    again = bd.Subject.from_volume("v", fullhead.ijk, fullhead.affine, fullhead.volume_shape, {},
                                   surface="S1", transform="fullhead")
    np.testing.assert_array_equal(again.is_right, fullhead.is_right)
    fid, _ = cortex.db.get_surf("S1", "fiducial", merge=True)
    n_lh = len(cortex.db.get_surf("S1", "fiducial", "lh")[0])
    _, nearest = cKDTree(fid).query(cortex.db.get_xfm("S1", "fullhead").inv(fullhead.ijk.astype(float)))
    assert ((nearest >= n_lh) == fullhead.is_right).mean() > 0.97
    with pytest.raises(ValueError, match="has no transform 'nope'"):
        bd.Subject.from_volume("v", fullhead.ijk, fullhead.affine, fullhead.volume_shape, {}, surface="S1",
                               transform="nope")
