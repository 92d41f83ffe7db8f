"""NSD preparation on bad or changed inputs: index bases, damaged files, resume keys, NaN trials, the stimulus brick."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import scipy.io
from nsd_fixture import N_VERTICES, make_nsd_tree, write_surface_session, write_volume_session, zscore_average

from training_support import one_torch_thread  # noqa: F401  (autouse)

from training import prepare_nsd
from training.dataset import open_dataset
from training.nsd_spaces import VolumeSpace
from training.session_store import SessionStore

REPO = Path(__file__).resolve().parents[1]
DESIGN = "nsddata/experiments/nsd/nsd_expdesign.mat"
STIMULI = "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"
VOLUME = "nsddata_betas/ppdata/subj01/func1pt8mm/betas_fithrf_GLMdenoise_RR"
SURFACE = "nsddata_betas/ppdata/subj01/fsaverage/betas_fithrf_GLMdenoise_RR"


@pytest.fixture(scope="module")
def nsd(tmp_path_factory):
    return make_nsd_tree(tmp_path_factory.mktemp("nsd"))


@pytest.fixture
def root(nsd, tmp_path):
    """A private copy of the release that a test may damage."""
    copy = tmp_path / "nsd"
    shutil.copytree(nsd.root, copy)
    return copy


def _argv(root, out, *extra):
    return ["--nsd-root", str(root), "--subject", "subj01", "--out", str(out), "--sessions", "3", "--image-size", "0",
            *extra]


def _cli_error(root, out, *extra) -> str:
    """Run the CLI expecting an input error; return its message, checked to be one ``error: ...`` line."""
    with pytest.raises(SystemExit) as err:
        prepare_nsd.main(_argv(root, out, *extra))
    message = str(err.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def _no_dataset(out: Path) -> None:
    """Nothing half-written: no dataset, partial file or subject file; at most finished session results."""
    if out.exists():
        left = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()]
        assert all(p.startswith(".work/") for p in left), left
        assert not [p for p in left if ".tmp" in p], left


def _edit_design(root, **changes):
    path = root / DESIGN
    mat = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
    for key, change in changes.items():
        mat[key] = change(mat[key].astype(np.float64))
    scipy.io.savemat(path, mat)


def _set(index, value):
    def change(a):
        a[index] = value
        return a
    return change


# ---------------------------------------------------------------- experiment design: whole arrays, 1-based


@pytest.mark.parametrize("changes, message", [
    (dict(masterordering=lambda a: a - 1), r"`masterordering` values must be in 1..10000 \(1-based\), got 0..9999"),
    # trials after the sessions used are checked too: a 0 there means the whole array is 0-based or damaged
    (dict(masterordering=_set((0, 29990), 0)), r"`masterordering` values must be in 1..10000 \(1-based\), got 0..10000"),
    (dict(masterordering=lambda a: a + 0.5), r"`masterordering` must hold integers"),
    (dict(subjectim=lambda a: a - 1), r"`subjectim`"),
    (dict(subjectim=_set((7, 5000), 0)), r"`subjectim` values must be in 1..73000 \(1-based\), got 0\.\."),
    (dict(subjectim=_set((2, 10), 73001)), r"`subjectim` values must be in 1..73000 \(1-based\), got 1..73001"),
    (dict(sharedix=lambda a: a - 1), r"`sharedix`"),
    (dict(subjectim=lambda a: a - 1, sharedix=lambda a: a - 1), r"`subjectim` values must be in 1..73000"),
])
def test_design_arrays_are_checked_whole_and_one_based(root, tmp_path, changes, message):
    _edit_design(root, **changes)
    error = _cli_error(root, tmp_path / "out")
    assert str(root / DESIGN) in error and re.search(message, error), error
    assert not (tmp_path / "out").exists()


def test_fixture_design_is_valid_in_every_checked_array(nsd):
    """The checks above refuse only what is wrong: the fixture's arrays pass them (an independent count)."""
    mat = scipy.io.loadmat(nsd.root / DESIGN)
    assert mat["masterordering"].min() == 1 and mat["masterordering"].max() == 10000
    assert mat["subjectim"].min() >= 1 and mat["subjectim"].max() <= 73000
    assert set(mat["subjectim"][0, :1000]) == set(mat["sharedix"][0])


# ---------------------------------------------------------------- damaged files


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _scramble(path: Path) -> None:
    """Overwrite bytes in the middle of the file (a gzip stream then fails its CRC or inflate check)."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = np.random.default_rng(0).integers(0, 256, 64, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def _not_text(path: Path) -> None:
    path.write_bytes(b"\xff\xfe\x00\x81 not a colour table \xc3\x28")


@pytest.mark.parametrize("relative, damage, extra", [
    (DESIGN, _truncate, ()),
    (DESIGN, _scramble, ()),
    (STIMULI, _truncate, ()),
    (f"{VOLUME}/betas_session02.nii.gz", _truncate, ("--betas-format", "nifti")),
    (f"{VOLUME}/betas_session02.nii.gz", _scramble, ("--betas-format", "nifti")),
    (f"{VOLUME}/betas_session03.hdf5", _truncate, ("--betas-format", "hdf5")),
    (f"{VOLUME}/ncsnr.nii.gz", _truncate, ("--betas-format", "nifti")),
    ("nsddata/ppdata/subj01/func1pt8mm/roi/nsdgeneral.nii.gz", _truncate, ()),
    ("nsddata/ppdata/subj01/func1pt8mm/roi/lh.nsdgeneral.nii.gz", _scramble, ()),
    ("nsddata/ppdata/subj01/func1pt8mm/roi/floc-faces.nii.gz", _truncate, ()),
    ("nsddata/freesurfer/subj01/label/floc-faces.mgz.ctab", _not_text, ()),
    (f"{SURFACE}/lh.betas_session02.mgh", _truncate, ("--space", "fsaverage", "--rois", "floc-faces")),
    (f"{SURFACE}/rh.ncsnr.mgh", _truncate, ("--space", "fsaverage", "--rois", "floc-faces")),
    ("nsddata/freesurfer/fsaverage/label/rh.nsdgeneral.mgz", _scramble, ("--space", "fsaverage", "--rois", "floc-faces")),
])
def test_damaged_file_is_one_line_error_naming_it(root, tmp_path, relative, damage, extra):
    damage(root / relative)
    error = _cli_error(root, tmp_path / "out", *extra)
    assert str(root / relative) in error, error
    _no_dataset(tmp_path / "out")
    if "betas_session" not in relative:  # everything but the sessions is read before anything is written
        assert not (tmp_path / "out").exists()


def _short_rh_session(root: Path) -> None:
    path = root / SURFACE / "rh.betas_session02.mgh"
    data = np.asarray(nib.load(path, mmap=False).dataobj)[..., :749]
    nib.save(nib.MGHImage(data, np.eye(4)), str(path))


def _hdf5_in_nifti_order(root: Path) -> None:
    path = root / VOLUME / "betas_session02.hdf5"
    with h5py.File(path, "r") as f:
        betas = f["betas"][()]
    with h5py.File(path, "w") as f:
        f["betas"] = betas.transpose(3, 2, 1, 0)


@pytest.mark.parametrize("damage, relative, extra", [
    (_short_rh_session, f"{SURFACE}/rh.betas_session02.mgh", ("--space", "fsaverage", "--rois", "floc-faces")),
    (_hdf5_in_nifti_order, f"{VOLUME}/betas_session02.hdf5", ("--betas-format", "hdf5")),
])
def test_inconsistent_shapes_are_one_line_errors_naming_the_file(root, tmp_path, damage, relative, extra):
    damage(root)
    error = _cli_error(root, tmp_path / "out", *extra)
    assert str(root / relative) in error and "shape" in error, error
    _no_dataset(tmp_path / "out")


def test_cli_prints_one_error_line_and_no_traceback(root, tmp_path):
    _truncate(root / VOLUME / "betas_session01.nii.gz")
    proc = subprocess.run([sys.executable, "-m", "training.prepare_nsd", *_argv(root, tmp_path / "out", "--betas-format",
                           "nifti")], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Cannot read NSD betas of session 1") and "betas_session01.nii.gz" in last
    assert not (tmp_path / "out").exists()  # no session finished: nothing of this run is left


# ---------------------------------------------------------------- resume keyed on the input files


def _dataset_betas(path):
    """Image ids and betas of both splits, stacked in id order."""
    with open_dataset(path) as ds:
        ids = np.concatenate([ds.image_ids[ds.image_index(s)] for s in ("train", "test")])
        betas = np.concatenate([ds.betas(s) for s in ("train", "test")])
    order = np.argsort(ids)
    return ids[order], betas[order]


def test_resume_recomputes_exactly_the_sessions_whose_files_changed(nsd, root, tmp_path, monkeypatch):
    original = VolumeSpace.read_session
    calls = []
    monkeypatch.setattr(VolumeSpace, "read_session", lambda self, s: calls.append(s) or original(self, s))

    def run():
        calls.clear()
        return prepare_nsd.prepare_nsd(root, "subj01", tmp_path / "out", sessions=3, image_size=0,
                                       betas_format="nifti", work=tmp_path / "work", keep_work=True)

    run()
    assert calls == [1, 2, 3]
    run()
    assert calls == []  # unchanged inputs: every session is reused

    # replace session 2 in place with other betas: it alone is recomputed, and the dataset follows the new file
    rng = np.random.default_rng(5)
    volumes = list(nsd.volume_betas)
    volumes[1] = rng.integers(-900, 900, volumes[1].shape).astype(np.int16)
    write_volume_session(root, 2, volumes[1])
    prepared = run()
    assert calls == [2]
    with open_dataset(prepared.dataset) as ds:
        ijk = ds.file["voxels/ijk"][()]
    trials = [vol[ijk[:, 0], ijk[:, 1], ijk[:, 2]].T / 300.0 for vol in volumes]
    ids, expected = zscore_average(trials, nsd.trial_images)
    got_ids, got = _dataset_betas(prepared.dataset)
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-3)  # float16 storage

    # the same bytes with a new modification time also count as changed (the key is size + times)
    path = root / VOLUME / "betas_session03.nii.gz"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    run()
    assert calls == [3]
    # a damaged result in the work folder is recomputed too
    result = tmp_path / "work" / "session_01.npy"
    result.write_bytes(result.read_bytes()[:1000])
    run()
    assert calls == [1]
    # a changed mask file makes every session stale
    mask = root / "nsddata/ppdata/subj01/func1pt8mm/roi/nsdgeneral.nii.gz"
    os.utime(mask, ns=(mask.stat().st_atime_ns, mask.stat().st_mtime_ns + 10**9))
    run()
    assert calls == [1, 2, 3]


def test_work_folder_keys(tmp_path):
    """Results of an older release (no input keys) are not trusted; another identity is refused; another
    computation version drops the results."""
    work, source = tmp_path / "work", tmp_path / "betas.bin"
    work.mkdir()
    source.write_bytes(b"betas")
    identity = {"subject": "subj01", "n_voxels": 5}
    (work / "manifest.json").write_text(json.dumps(identity))  # the older manifest held the identity only
    np.save(work / "session_01.npy", np.zeros((750, 5), np.float32))
    store = SessionStore(work, identity, [], "v2")
    assert not store.done(1, [source]) and not (work / "session_01.npy").exists()
    store.save(1, np.ones((750, 5)), [source], {"nonfinite_betas": 2})
    assert store.done(1, [source]) and store.info(1) == {"nonfinite_betas": 2}
    with pytest.raises(ValueError, match=r"made for other inputs .*'subject': \('subj01', 'subj02'\)"):
        SessionStore(work, {**identity, "subject": "subj02"}, [], "v2")
    assert store.done(1, [source])  # the refusal changed nothing
    SessionStore(work, identity, [], "v3")
    assert not store.done(1, [source])


# ---------------------------------------------------------------- NaN trials


def test_nan_trials_are_left_out_per_trial_and_voxel(nsd, root, tmp_path, caplog):
    """A NaN beta removes that trial for that voxel only: the image stays valid when it has other finite
    repeats, and only images whose every trial is NaN for a voxel are NaN there."""
    n_trials = len(nsd.trial_images)
    ids, counts = np.unique(nsd.trial_images, return_counts=True)
    repeats = dict(zip(ids, counts))
    once = [t for t in range(750, 1500) if repeats[nsd.trial_images[t]] == 1][:2]    # session 2
    thrice = [t for t in range(750, 1500) if repeats[nsd.trial_images[t]] == 3][:3]
    surface = [b.copy() for b in nsd.surface_betas]
    labels = root / "nsddata/freesurfer/fsaverage/label"
    in_mask = np.flatnonzero(np.concatenate([np.squeeze(np.asarray(nib.load(labels / f"{h}.nsdgeneral.mgz").dataobj))
                                             for h in ("lh", "rh")]) > 0)
    vertex, other = int(in_mask[0]), int(in_mask[in_mask >= N_VERTICES][0])  # one per hemisphere
    holes = [(vertex, t) for t in once + thrice] + [(other, once[0])]
    for unit, t in holes:
        surface[1][unit, t - 750] = np.nan
    surface[1][other, thrice[0] - 750] = np.inf
    write_surface_session(root, 2, surface[1])

    caplog.set_level("INFO", logger="training")
    prepared = prepare_nsd.prepare_nsd(root, 1, tmp_path / "out", sessions=3, space="fsaverage",
                                       rois=["floc-faces"], image_size=0)
    with open_dataset(prepared.dataset) as ds:
        vertices = ds.subject.vertices
    np.testing.assert_array_equal(vertices, in_mask)
    ids, expected = zscore_average([b[vertices].T for b in surface], nsd.trial_images)
    got_ids, got = _dataset_betas(prepared.dataset)
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-3, equal_nan=True)

    # exactly the once-shown images with a NaN trial are NaN, at their voxels; nothing else
    nan_rows, nan_cols = np.nonzero(np.isnan(got))
    found = sorted(zip(got_ids[nan_rows].tolist(), vertices[nan_cols].tolist()))
    assert found == sorted((int(nsd.trial_images[t]), unit) for unit, t in holes if t in once)
    assert np.isfinite(got).sum() == got.size - 3
    # a NaN trial no longer spoils its voxel's session: the session's other images keep their values
    assert np.isfinite(got[:, np.searchsorted(vertices, vertex)]).sum() == len(got_ids) - 2
    assert f"NaN/inf betas left out: {len(holes) + 1} of {n_trials * len(vertices)}" in caplog.text
    assert "image x voxel averages with no finite trial (stored as NaN): 3" in caplog.text
    with open_dataset(prepared.dataset) as ds:
        assert ds.metadata["nonfinite_betas_excluded"] == len(holes) + 1


# ---------------------------------------------------------------- the stimulus brick


def _rewrite_brick(nsd, root: Path, n: int, dtype=np.uint8) -> None:
    """Replace the stimulus file by an ``[n, 24, 24, 3]`` brick holding the shown images below ``n``."""
    shown = np.unique(nsd.trial_images)
    shown = shown[shown < n].tolist()
    with h5py.File(nsd.root / STIMULI, "r") as f:
        shape, pixels = f["imgBrick"].shape, f["imgBrick"][shown]
    with h5py.File(root / STIMULI, "w") as f:
        brick = f.create_dataset("imgBrick", shape=(n,) + shape[1:], dtype=dtype, chunks=(1,) + shape[1:])
        brick[shown] = pixels.astype(dtype)


def test_shorter_brick_covering_the_ids_is_used_and_a_short_one_is_explained(nsd, root, tmp_path):
    max_id = int(nsd.trial_images.max())
    _rewrite_brick(nsd, root, max_id + 1)
    prepared = prepare_nsd.prepare_nsd(root, "subj01", tmp_path / "ok", sessions=3, image_size=0)
    with open_dataset(prepared.dataset) as ds, h5py.File(nsd.root / STIMULI, "r") as full:
        np.testing.assert_array_equal(ds.images[()], full["imgBrick"][ds.image_ids.tolist()])

    _rewrite_brick(nsd, root, max_id)
    error = _cli_error(root, tmp_path / "short")
    assert f"`imgBrick` must be a uint8 array [N, H, W, 3] with N > {max_id}" in error
    assert f"got uint8 [{max_id}, 24, 24, 3]" in error and "73000" not in error
    _rewrite_brick(nsd, root, 73000, np.float32)
    assert "got float32 [73000, 24, 24, 3]" in _cli_error(root, tmp_path / "float")
    assert not (tmp_path / "short").exists() and not (tmp_path / "float").exists()
