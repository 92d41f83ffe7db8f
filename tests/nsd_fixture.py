"""A tiny NSD release in the real file layout, for testing ``training.prepare_nsd``.

Real names, folders, dtypes, index bases and axis orders (see /work/shared/NSD_LAYOUT.md); small
sizes: a 6x7x5 functional volume, ``n_sessions`` sessions of the real 750 trials, a 73000-image
``imgBrick`` of 24x24 px of which only the shown images are written (HDF5 leaves the other chunks
unallocated), and an "fsaverage" of ``n_vertices`` vertices per hemisphere.

Responses are linear in the demo tower's features of the images (so an encoder can be fit), with a
per-session, per-voxel offset and gain (so z-scoring within sessions matters) and trial noise.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import scipy.io
import scipy.stats
import torch

from braindive.demo_components import DEMO_TOWER_CONFIG, DEMO_TOWER_NAME, build_demo_tower
from braindive.encoders import ClipLinearEncoder, EncoderConfig

SHAPE = (6, 7, 5)
IMAGE_SIZE = 24
N_VERTICES = 40
AFFINE = np.diag([1.8, 1.8, 1.8, 1.0])
CTABS = {
    "nsdgeneral": ["nsdgeneral"],
    "prf-visualrois": ["V1v", "V1d", "V2v", "V2d", "V3v", "V3d", "hV4"],
    "floc-faces": ["OFA", "FFA-1", "FFA-2", "mTL-faces", "aTL-faces"],
    "floc-bodies": ["EBA", "FBA-1", "FBA-2", "mTL-bodies"],
    "floc-places": ["OPA", "PPA", "RSC"],
    "floc-words": ["OWFA", "VWFA-1", "VWFA-2", "mfs-words", "mTL-words"],
}
# (repeats, number of images) of the shared and of the subject's own images over 3 sessions (2250 trials)
SHARED_PLAN = ((3, 60), (2, 50), (1, 40))
OWN_PLAN = ((3, 500), (2, 150), (1, 130))


@dataclass
class FakeNSD:
    root: Path
    subject: int
    n_sessions: int
    trial_images: np.ndarray          # [n_trials] 0-based 73k ids
    shared_ids: np.ndarray            # 0-based 73k ids of the shared images shown
    volume_betas: list = field(default_factory=list)   # per session int16 [X, Y, Z, 750]
    surface_betas: list = field(default_factory=list)  # per session float32 [2 * N_VERTICES, 750]
    mask: np.ndarray | None = None    # [X, Y, Z] nsdgeneral values
    ncsnr: np.ndarray | None = None   # [X, Y, Z]


def _design(rng, subject: int, n_sessions: int):
    """nsd_expdesign.mat contents with the first ``n_sessions`` sessions following the plans."""
    n_trials = n_sessions * 750
    assert n_trials == sum(r * n for r, n in SHARED_PLAN + OWN_PLAN), "plans are sized for 3 sessions"
    shared_10k = rng.choice(np.arange(1, 1001), sum(n for _, n in SHARED_PLAN), replace=False)
    own_10k = rng.choice(np.arange(1001, 10001), sum(n for _, n in OWN_PLAN), replace=False)
    trials = []
    for plan, pool in ((SHARED_PLAN, shared_10k), (OWN_PLAN, own_10k)):
        start = 0
        for repeats, count in plan:
            trials += list(np.repeat(pool[start:start + count], repeats))
            start += count
    trials = rng.permutation(np.array(trials))
    masterordering = np.concatenate([trials, rng.integers(1, 10001, 30000 - n_trials)])[None, :]
    ids = rng.permutation(73000)
    shared = ids[:1000]
    subjectim = np.stack([np.concatenate([shared, rng.permutation(ids[1000:])[:9000]]) for _ in range(8)]) + 1
    return masterordering, subjectim, np.sort(shared)[None, :] + 1


def _images(rng, n: int) -> np.ndarray:
    """Smooth random colour images: a colour gradient plus a bright square."""
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] / IMAGE_SIZE
    ramp = xx[None, :, :, None]
    base = rng.uniform(0, 255, (n, 1, 1, 3)) * (1 - ramp) + rng.uniform(0, 255, (n, 1, 1, 3)) * ramp
    out = base.copy()
    for img, (x0, y0, s) in zip(out, rng.integers(0, IMAGE_SIZE // 2, (n, 3))):
        img[y0:y0 + s + 4, x0:x0 + s + 4] = rng.uniform(0, 255, 3)
    return np.clip(out, 0, 255).astype(np.uint8)


def _features(images: np.ndarray) -> np.ndarray:
    tower = build_demo_tower()
    config = EncoderConfig(n_voxels=1, subject="x", voxel_space="x", backbone=DEMO_TOWER_NAME, pretrained=None,
                           backbone_config=DEMO_TOWER_CONFIG)
    encoder = ClipLinearEncoder(config, tower=tower)
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        return encoder.embed(x).numpy().astype(np.float64)


def _responses(rng, trial_features: np.ndarray, n_sessions: int, n_units: int) -> list[np.ndarray]:
    """Per session ``[n_units, 750]`` percent signal change: offset + gain * (signal + noise)."""
    weights = rng.normal(0, 1, (trial_features.shape[1], n_units)) * 4
    signal = trial_features @ weights
    signal = (signal - signal.mean(0)) / signal.std(0)
    out = []
    for s in range(n_sessions):
        rows = slice(s * 750, (s + 1) * 750)
        offset = rng.normal(0, 2, n_units)
        gain = rng.uniform(0.5, 2.0, n_units)
        out.append((offset + gain * (signal[rows] + rng.normal(0, 0.7, (750, n_units)))).T)
    return out


def _save_mgh(path: Path, data: np.ndarray) -> None:
    data = np.asarray(data, np.float32)
    nib.save(nib.MGHImage(data.reshape((data.shape[0], 1, 1) + data.shape[1:]), np.eye(4)), str(path))


def make_nsd_tree(root, *, subject: int = 1, n_sessions: int = 3, seed: int = 0) -> FakeNSD:
    """Write the fake release under ``root`` and return what was written."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    subj = f"subj{subject:02d}"
    masterordering, subjectim, sharedix = _design(rng, subject, n_sessions)
    design_dir = root / "nsddata" / "experiments" / "nsd"
    design_dir.mkdir(parents=True)
    scipy.io.savemat(design_dir / "nsd_expdesign.mat",
                     {"masterordering": masterordering, "subjectim": subjectim, "sharedix": sharedix})
    order = masterordering[0, :n_sessions * 750]
    trial_images = subjectim[subject - 1, order - 1] - 1
    shown = np.unique(trial_images)

    images = _images(rng, len(shown))
    stim_dir = root / "nsddata_stimuli" / "stimuli" / "nsd"
    stim_dir.mkdir(parents=True)
    with h5py.File(stim_dir / "nsd_stimuli.hdf5", "w") as f:
        brick = f.create_dataset("imgBrick", shape=(73000, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8,
                                 chunks=(1, IMAGE_SIZE, IMAGE_SIZE, 3))
        brick[shown] = images
    trial_features = _features(images)[np.searchsorted(shown, trial_images)]

    fake = FakeNSD(root=root, subject=subject, n_sessions=n_sessions, trial_images=trial_images,
                   shared_ids=np.unique(trial_images[order <= 1000]))
    _write_volume(fake, rng, subj, trial_features)
    _write_surface(fake, rng, subj, trial_features)
    label_dir = root / "nsddata" / "freesurfer" / subj / "label"
    label_dir.mkdir(parents=True, exist_ok=True)
    for family, names in CTABS.items():
        lines = ["0 Unknown"] + [f"{i} {n}" for i, n in enumerate(names, 1)]
        (label_dir / f"{family}.mgz.ctab").write_text("\n".join(lines) + "\n")
    return fake


def betas_folder(root, subject: int = 1, space: str = "func1pt8mm") -> Path:
    return Path(root) / "nsddata_betas" / "ppdata" / f"subj{subject:02d}" / space / "betas_fithrf_GLMdenoise_RR"


def write_volume_session(root, session: int, volume: np.ndarray, subject: int = 1) -> None:
    """Write one session's ``[X, Y, Z, 750]`` betas as NSD's .nii.gz and .hdf5 (reversed axes)."""
    betas_dir = betas_folder(root, subject)
    nib.save(nib.Nifti1Image(volume, AFFINE), str(betas_dir / f"betas_session{session:02d}.nii.gz"))
    with h5py.File(betas_dir / f"betas_session{session:02d}.hdf5", "w") as f:
        f["betas"] = volume.transpose(3, 2, 1, 0)


def write_surface_session(root, session: int, betas: np.ndarray, subject: int = 1) -> None:
    """Write one session's ``[2 * n_vertices, 750]`` fsaverage betas as ``{lh,rh}.betas_sessionNN.mgh``."""
    betas_dir = betas_folder(root, subject, "fsaverage")
    half = betas.shape[0] // 2
    for h, hemi in enumerate(("lh", "rh")):
        _save_mgh(betas_dir / f"{hemi}.betas_session{session:02d}.mgh", betas[h * half:(h + 1) * half])


def _write_volume(fake: FakeNSD, rng, subj: str, trial_features: np.ndarray) -> None:
    affine = AFFINE
    roi_dir = fake.root / "nsddata" / "ppdata" / subj / "func1pt8mm" / "roi"
    betas_dir = fake.root / "nsddata_betas" / "ppdata" / subj / "func1pt8mm" / "betas_fithrf_GLMdenoise_RR"
    roi_dir.mkdir(parents=True)
    betas_dir.mkdir(parents=True)
    mask = rng.choice([-1, 0, 1], size=SHAPE, p=[0.2, 0.2, 0.6]).astype(np.int16)
    fake.mask = mask
    left = np.zeros(SHAPE, bool)
    left[: SHAPE[0] // 2] = True
    save = lambda data, path: nib.save(nib.Nifti1Image(data, affine), str(path))  # noqa: E731
    save(mask, roi_dir / "nsdgeneral.nii.gz")
    save(np.where(left, mask, -1).astype(np.int16), roi_dir / "lh.nsdgeneral.nii.gz")
    save(np.where(~left, mask, -1).astype(np.int16), roi_dir / "rh.nsdgeneral.nii.gz")
    for family, names in CTABS.items():
        if family != "nsdgeneral":
            labels = rng.integers(0, len(names) + 1, SHAPE).astype(np.int16)
            save(np.where(mask >= 0, labels, -1).astype(np.int16), roi_dir / f"{family}.nii.gz")
    fake.ncsnr = rng.uniform(0.1, 1.5, SHAPE).astype(np.float32)
    save(fake.ncsnr, betas_dir / "ncsnr.nii.gz")
    n_units = int(np.prod(SHAPE))
    for s, pct in enumerate(_responses(rng, trial_features, fake.n_sessions, n_units), 1):
        vol = np.round(pct * 300).astype(np.int16).reshape(SHAPE + (750,))
        fake.volume_betas.append(vol)
        write_volume_session(fake.root, s, vol, fake.subject)


def _write_surface(fake: FakeNSD, rng, subj: str, trial_features: np.ndarray) -> None:
    fs_labels = fake.root / "nsddata" / "freesurfer" / "fsaverage" / "label"
    native_labels = fake.root / "nsddata" / "freesurfer" / subj / "label"
    betas_dir = fake.root / "nsddata_betas" / "ppdata" / subj / "fsaverage" / "betas_fithrf_GLMdenoise_RR"
    for d in (fs_labels, native_labels, betas_dir):
        d.mkdir(parents=True, exist_ok=True)
    for hemi in ("lh", "rh"):
        _save_mgh(fs_labels / f"{hemi}.nsdgeneral.mgz", (rng.uniform(size=N_VERTICES) < 0.7).astype(np.float32))
        _save_mgh(fs_labels / f"{hemi}.floc-faces.mgz", rng.integers(0, 6, N_VERTICES))
        # subject-native surface ROI (another vertex count), which the fsaverage route must not use
        _save_mgh(native_labels / f"{hemi}.floc-faces.mgz", rng.integers(0, 6, N_VERTICES + 7))
        _save_mgh(betas_dir / f"{hemi}.ncsnr.mgh", rng.uniform(0.1, 1.5, N_VERTICES))
    for s, pct in enumerate(_responses(rng, trial_features, fake.n_sessions, 2 * N_VERTICES), 1):
        fake.surface_betas.append(pct.astype(np.float32))
        write_surface_session(fake.root, s, pct, fake.subject)


def zscore_average(trials_by_session, trial_images):
    """Independent reference: per session and voxel, z-score over the finite trials (scipy), then per image
    the mean of its finite trials (NaN if none)."""
    z = np.concatenate([scipy.stats.zscore(np.where(np.isfinite(t), t, np.nan).astype(np.float64), axis=0,
                                           nan_policy="omit") for t in trials_by_session])
    ids = np.unique(trial_images)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "mean of empty slice": no finite trial -> NaN
        return ids, np.stack([np.nanmean(z[trial_images == image], axis=0) for image in ids])
