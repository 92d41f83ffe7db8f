"""NSD preparation on a tiny release in the real layout, then train -> eval end to end."""
import json
import shutil

import h5py
import nibabel as nib
import numpy as np
import pytest
import scipy.stats
from nsd_fixture import CTABS, N_VERTICES, SHARED_PLAN, make_nsd_tree

from training_support import one_torch_thread  # noqa: F401  (autouse)

import braindive as bd
from training import eval_encoder, prepare_nsd, train_encoder
from training.dataset import open_dataset
from training.nsd_spaces import VolumeSpace


@pytest.fixture(scope="session")
def nsd(tmp_path_factory):
    return make_nsd_tree(tmp_path_factory.mktemp("nsd"))


@pytest.fixture(scope="session")
def prepared(nsd, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    return prepare_nsd.prepare_nsd(nsd.root, "subj01", out, sessions=3, image_size=0, betas_format="nifti")


def _zscore_average(trials_by_session, trial_images):
    """Independent reference: scipy z-score per session and voxel, then mean over each image's trials."""
    z = np.concatenate([scipy.stats.zscore(t.astype(np.float64), axis=0) for t in trials_by_session])
    ids = np.unique(trial_images)
    return ids, np.stack([z[trial_images == i].mean(0) for i in ids])


def _assert_betas(ds, ids, expected):
    for split in ("train", "test"):
        image_ids = ds.image_ids[ds.image_index(split)]
        rows = np.searchsorted(ids, image_ids)
        np.testing.assert_allclose(ds.betas(split), expected[rows], rtol=2e-3, atol=2e-3)  # float16 storage


def _read(path):
    return np.asarray(nib.load(str(path)).dataobj)


def test_volume_betas_equal_independent_zscore_average(nsd, prepared):
    with open_dataset(prepared.dataset) as ds:
        ijk = ds.file["voxels/ijk"][()]
        assert sorted(map(tuple, ijk)) == sorted(map(tuple, np.argwhere(nsd.mask > 0)))
        n_left = int((ijk[:, 0] < 3).sum())
        assert ds.subject.kind == "volume" and (~ds.subject.is_right).sum() == n_left and np.all(ijk[:n_left, 0] < 3) and np.all(ijk[n_left:, 0] >= 3)
        trials = [vol[ijk[:, 0], ijk[:, 1], ijk[:, 2]].T / 300.0 for vol in nsd.volume_betas]
        ids, expected = _zscore_average(trials, nsd.trial_images)
        _assert_betas(ds, ids, expected)
        counts = dict(zip(*np.unique(nsd.trial_images, return_counts=True)))
        test_ids = ds.image_ids[ds.image_index("test")]
        assert ds.n_repeats("test").tolist() == [counts[i] for i in test_ids]


def test_test_split_is_exactly_the_shared_images(nsd, prepared):
    with open_dataset(prepared.dataset) as ds:
        test = ds.image_ids[ds.image_index("test")]
        train = ds.image_ids[ds.image_index("train")]
    np.testing.assert_array_equal(test, nsd.shared_ids)
    assert len(test) == sum(n for _, n in SHARED_PLAN) == 150
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.unique(nsd.trial_images))
    assert not set(train) & set(test)
    assert sorted(p.name for p in prepared.dataset.parent.iterdir()) == [prepared.dataset.name, prepared.subject.name]


def test_noise_ceiling_follows_the_nsd_formula(nsd, prepared):
    images_with = {repeats: n for repeats, n in SHARED_PLAN}
    a, b, c = images_with[3], images_with[2], images_with[1]  # test images seen 3, 2, 1 times
    with open_dataset(prepared.dataset) as ds:
        ijk = ds.file["voxels/ijk"][()]
        snr = nsd.ncsnr[ijk[:, 0], ijk[:, 1], ijk[:, 2]].astype(np.float64)
        expected = snr**2 / (snr**2 + (a / 3 + b / 2 + c / 1) / (a + b + c))
        np.testing.assert_allclose(ds.noise_ceiling, expected, rtol=1e-6)
        np.testing.assert_allclose(ds.file["voxels/ncsnr"][()], snr, rtol=1e-6)


def test_rois_and_subject_file(nsd, prepared):
    subject = bd.load_subject(prepared.subject)
    assert subject.name == "subj01" and subject.surface == "" and subject.n_voxels == int((nsd.mask > 0).sum())
    roi_dir = nsd.root / "nsddata/ppdata/subj01/func1pt8mm/roi"
    with open_dataset(prepared.dataset) as ds:
        ijk = ds.file["voxels/ijk"][()]
        labels, names = ds.roi_labels()["floc-faces"]
    faces = _read(roi_dir / "floc-faces.nii.gz")[ijk[:, 0], ijk[:, 1], ijk[:, 2]]
    np.testing.assert_array_equal(labels, faces)
    assert names == {i: n for i, n in enumerate(CTABS["floc-faces"], 1)}
    np.testing.assert_array_equal(subject.roi("FFA-1"), np.flatnonzero(faces == 2))
    np.testing.assert_array_equal(subject.roi("FFA"), np.flatnonzero((faces == 2) | (faces == 3)))
    visual = _read(roi_dir / "prf-visualrois.nii.gz")[ijk[:, 0], ijk[:, 1], ijk[:, 2]]
    np.testing.assert_array_equal(subject.roi("V1"), np.flatnonzero((visual == 1) | (visual == 2)))


def test_hdf5_betas_give_the_same_dataset(nsd, prepared, tmp_path):
    other = prepare_nsd.prepare_nsd(nsd.root, "subj01", tmp_path, sessions=3, image_size=0, betas_format="hdf5")
    with open_dataset(prepared.dataset) as a, open_dataset(other.dataset) as b:
        for split in ("train", "test"):
            np.testing.assert_array_equal(a.betas(split), b.betas(split))
        np.testing.assert_array_equal(a.images[()], b.images[()])


def test_fsaverage_route(nsd, tmp_path):
    out = prepare_nsd.prepare_nsd(nsd.root, 1, tmp_path, sessions=3, space="fsaverage", rois=["floc-faces"], image_size=0)
    subject = bd.load_subject(out.subject)
    labels = nsd.root / "nsddata/freesurfer/fsaverage/label"
    mask = np.concatenate([np.squeeze(_read(labels / f"{h}.nsdgeneral.mgz")) for h in ("lh", "rh")]) > 0
    assert subject.surface == "fsaverage" and subject.n_vertices_lh == N_VERTICES
    np.testing.assert_array_equal(subject.vertices, np.flatnonzero(mask))
    faces = np.concatenate([np.squeeze(_read(labels / f"{h}.floc-faces.mgz")) for h in ("lh", "rh")])[mask]
    np.testing.assert_array_equal(subject.roi("OFA"), np.flatnonzero(faces == 1))
    ids, expected = _zscore_average([b[mask].T for b in nsd.surface_betas], nsd.trial_images)
    with open_dataset(out.dataset) as ds:
        _assert_betas(ds, ids, expected)


def test_fsaverage_refuses_subject_native_rois(nsd, tmp_path):
    roi_dir = tmp_path / "rois"
    roi_dir.mkdir()
    for h in ("lh", "rh"):
        shutil.copy(nsd.root / f"nsddata/freesurfer/fsaverage/label/{h}.nsdgeneral.mgz", roi_dir)
        shutil.copy(nsd.root / f"nsddata/freesurfer/subj01/label/{h}.floc-faces.mgz", roi_dir)
    with pytest.raises(ValueError, match=r"lh.floc-faces.mgz does not match the 40 fsaverage vertices.*47 vertices"):
        prepare_nsd.prepare_nsd(nsd.root, 1, tmp_path / "out", sessions=3, space="fsaverage", rois=["floc-faces"],
                                roi_dir=roi_dir)


@pytest.mark.parametrize("relative", [
    "nsddata/experiments/nsd/nsd_expdesign.mat",
    "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5",
    "nsddata_betas/ppdata/subj01/func1pt8mm/betas_fithrf_GLMdenoise_RR/betas_session02.nii.gz",
    "nsddata_betas/ppdata/subj01/func1pt8mm/betas_fithrf_GLMdenoise_RR/ncsnr.nii.gz",
    "nsddata/ppdata/subj01/func1pt8mm/roi/nsdgeneral.nii.gz",
    "nsddata/ppdata/subj01/func1pt8mm/roi/floc-words.nii.gz",
])
def test_missing_file_is_named_with_its_folder(nsd, tmp_path, relative):
    root = tmp_path / "nsd"
    shutil.copytree(nsd.root, root)
    (root / relative).unlink()
    with pytest.raises(FileNotFoundError) as err:
        prepare_nsd.prepare_nsd(root, "subj01", tmp_path / "out", sessions=3, betas_format="nifti")
    missing = root / relative
    assert missing.name in str(err.value) and str(missing.parent) in str(err.value)
    assert not (tmp_path / "out").exists()  # inputs are checked before anything is written


def test_fewer_sessions_than_asked(nsd, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match=r"betas_session04.*looked in .*func1pt8mm/betas_fithrf_GLMdenoise_RR"):
        prepare_nsd.prepare_nsd(nsd.root, "subj01", tmp_path, sessions=4)
    with pytest.raises(ValueError, match=r"subj04 has 30 NSD sessions; `--sessions` must be in 1..30, got 31"):
        prepare_nsd.prepare_nsd(nsd.root, "subj04", tmp_path, sessions=31)
    with pytest.raises(SystemExit, match=r"error: .*betas_session04"):
        prepare_nsd.main(["--nsd-root", str(nsd.root), "--subject", "subj01", "--out", str(tmp_path), "--sessions", "4"])


def _contents(path):
    """Every dataset of an HDF5 file (attrs other than the creation time included)."""
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        out["attrs"] = {k: v for k, v in f.attrs.items() if k != "created"}
    return out


def test_interrupted_run_resumes_and_matches_a_fresh_run(nsd, prepared, tmp_path, monkeypatch):
    original = VolumeSpace.read_session
    calls = []

    def crash_on_3(self, session):
        calls.append(session)
        if session == 3:
            raise RuntimeError("simulated crash")
        return original(self, session)

    monkeypatch.setattr(VolumeSpace, "read_session", crash_on_3)
    kwargs = dict(sessions=3, image_size=0, betas_format="nifti", work=tmp_path / "work")
    with pytest.raises(RuntimeError, match="simulated crash"):
        prepare_nsd.prepare_nsd(nsd.root, "subj01", tmp_path / "out", **kwargs)
    assert sorted(p.name for p in (tmp_path / "work").glob("session_*.npy")) == ["session_01.npy", "session_02.npy"]
    assert not list((tmp_path / "out").glob("*.h5*"))

    calls.clear()
    monkeypatch.setattr(VolumeSpace, "read_session", lambda self, s: calls.append(s) or original(self, s))
    resumed = prepare_nsd.prepare_nsd(nsd.root, "subj01", tmp_path / "out", **kwargs)
    assert calls == [3]
    a, b = _contents(prepared.dataset), _contents(resumed.dataset)
    assert a.keys() == b.keys()
    for key in a:
        if key == "attrs":
            assert json.loads(a[key].pop("metadata")) == json.loads(b[key].pop("metadata"))
            assert {k: str(v) for k, v in a[key].items()} == {k: str(v) for k, v in b[key].items()}
        elif key != "subject/npz":  # npz bytes embed zip timestamps; the subject is compared below
            np.testing.assert_array_equal(a[key], b[key])
    sa, sb = bd.load_subject(prepared.subject), bd.load_subject(resumed.subject)
    np.testing.assert_array_equal(sa.vertices, sb.vertices)
    assert {k: v.tolist() for k, v in sa.rois.items()} == {k: v.tolist() for k, v in sb.rois.items()}
    assert not (tmp_path / "work").exists()


def test_crash_while_writing_leaves_no_dataset(nsd, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(prepare_nsd, "_write_stimuli", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_nsd.prepare_nsd(nsd.root, "subj01", tmp_path, sessions=3, image_size=0)
    assert not list(tmp_path.glob("*.h5*")) and not list(tmp_path.glob("*.npz"))


def test_prepare_train_evaluate_end_to_end(prepared, tmp_path):
    ckpt = tmp_path / "encoder"
    result = train_encoder.main(["--data", str(prepared.dataset), "--out", str(ckpt), "--backbone", "braindive-tiny-vit",
                                 "--pretrained", "none", "--device", "cpu", "--cv", "5"])
    subject = bd.load_subject(prepared.subject)
    encoder = bd.load_encoder(ckpt, subject=subject)
    assert encoder.n_voxels == subject.n_voxels and result.summary["n_train"] == 780
    assert result.summary["n_voxels_fit"] == subject.n_voxels and result.summary["cv_r2"]["median"] > 0.5
    report = eval_encoder.main(["--encoder", str(ckpt), "--data", str(prepared.dataset), "--out", str(tmp_path / "report")])
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["n_test"] == 150 and saved["n_voxels"] == subject.n_voxels
    # signal variance 1 vs trial noise variance 0.49 averaged over 1-3 repeats: R^2 around 0.75
    assert 0.6 < report["r2"]["median"] < 0.95 and report["pearson_r"]["median"] > 0.75
    assert set(saved["rois"]) >= {"V1", "V1v", "FFA", "FFA-1", "EBA", "PPA"}
    assert saved["flatmap"] is None and "no pycortex surface" in saved["flatmap_note"]
    voxels = np.load(tmp_path / "report" / "voxels.npz")
    assert np.isclose(np.median(voxels["r2"]), report["r2"]["median"])
