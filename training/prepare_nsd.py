"""Prepare one NSD subject as an encoding dataset (``python -m training.prepare_nsd``).

Per session: read the betas of the masked voxels, z-score every voxel over the session's 750 trials,
save the result in the work folder (a rerun skips finished sessions). Then average the z-scored
trials of each image, split into train (the subject's own images) and test (the shared images,
``masterordering <= 1000``), and write ``<out>/<subjXX>_<space>_<mask>.h5`` plus the matching
``.subject.npz`` (loadable with ``braindive.load_subject(path)``). See training/README.md.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import scipy.sparse
from PIL import Image
from tqdm import tqdm

from .dataset import DatasetWriter, SplitSpec
from .images import square
from .logs import cli_errors, configure_logging
from .nsd_io import reading
from .nsd_layout import NSD_SESSIONS, Design, NSDLayout, parse_subject, read_design, require
from .nsd_spaces import BETAS_FORMATS, SPACES, subject_rois
from .session_store import SessionStore
from .stats import noise_ceiling, zscore_columns

__all__ = ["DEFAULT_ROIS", "Prepared", "ImageTable", "image_table", "prepare_nsd", "main"]

log = logging.getLogger(__name__)

DEFAULT_ROIS = ("prf-visualrois", "floc-faces", "floc-places", "floc-bodies", "floc-words")
_CHUNK_ELEMENTS = 1 << 25  # trials x voxels per assembly block (128 MB of float32, 3 float64 copies)
# Version of the per-session computation stored in the work folder; results of another version are redone.
_SESSION_METHOD = "zscore-finite-trials-v2"
_IMAGE_BATCH = 64


@dataclass
class Prepared:
    dataset: Path
    subject: Path


@dataclass
class ImageTable:
    """The distinct images of a design, sorted by 73k id.

    Attributes:
        image_ids: ``[n_images]`` 0-based 73k ids, ascending.
        trial_rows: ``[n_trials]`` row of ``image_ids`` shown on each trial.
        n_repeats: ``[n_images]`` trials per image.
        is_test: ``[n_images]`` True for shared images (the test split).
    """

    image_ids: np.ndarray
    trial_rows: np.ndarray
    n_repeats: np.ndarray
    is_test: np.ndarray

    def trials_matrix(self) -> scipy.sparse.csr_matrix:
        """Sparse ``[n_images, n_trials]`` 0/1 matrix: entry (i, t) is 1 if trial t showed image i."""
        n_trials = len(self.trial_rows)
        return scipy.sparse.csr_matrix((np.ones(n_trials), (self.trial_rows, np.arange(n_trials))),
                                       shape=(len(self.image_ids), n_trials))


def image_table(design: Design) -> ImageTable:
    ids, rows, counts = np.unique(design.trial_images, return_inverse=True, return_counts=True)
    is_test = np.zeros(len(ids), bool)
    is_test[rows[design.trial_shared]] = True
    return ImageTable(image_ids=ids, trial_rows=rows, n_repeats=counts, is_test=is_test)


def _check_sessions(subject: int, sessions: int | None) -> int:
    available = NSD_SESSIONS[subject]
    if sessions is None:
        return available
    if not 1 <= sessions <= available:
        raise ValueError(f"subj{subject:02d} has {available} NSD sessions; `--sessions` must be in 1..{available}, "
                         f"got {sessions}.")
    return sessions


def _brick_shape(stimuli: Path, max_id: int) -> tuple:
    """Shape of ``imgBrick``, checked to be uint8 ``[N, H, W, 3]`` with ``N > max_id`` (NSD's has N = 73000)."""
    with reading(stimuli, "stimuli"), h5py.File(stimuli, "r") as f:
        if "imgBrick" not in f:
            raise ValueError(f"{stimuli} has no dataset `imgBrick` (found {list(f)}).")
        shape, dtype = f["imgBrick"].shape, f["imgBrick"].dtype
    if len(shape) != 4 or shape[3] != 3 or shape[0] <= max_id or dtype != np.uint8:
        raise ValueError(f"{stimuli}: `imgBrick` must be a uint8 array [N, H, W, 3] with N > {max_id} (the largest "
                         f"0-based image id used), got {dtype} {list(shape)}.")
    return shape


def _write_stimuli(writer: DatasetWriter, stimuli: Path, image_ids: np.ndarray, size: int) -> None:
    with reading(stimuli, "stimuli"), h5py.File(stimuli, "r") as f:
        brick = f["imgBrick"]
        for start in tqdm(range(0, len(image_ids), _IMAGE_BATCH), desc="stimuli", unit="batch"):
            pixels = brick[image_ids[start:start + _IMAGE_BATCH]]
            if size:
                pixels = np.stack([square(Image.fromarray(p), size) for p in pixels])
            writer.write_images(start, pixels)


def _write_betas(writer: DatasetWriter, store: SessionStore, n_sessions: int, table: ImageTable,
                 n_voxels: int) -> int:
    """Average each image's finite z-scored trials per voxel; return the image x voxel averages left NaN."""
    trials = table.trials_matrix()
    rows = {"train": np.flatnonzero(~table.is_test), "test": np.flatnonzero(table.is_test)}
    sessions = [store.load(s) for s in range(1, n_sessions + 1)]
    step = max(1, _CHUNK_ELEMENTS // len(table.trial_rows))
    n_empty = 0
    for c0 in tqdm(range(0, n_voxels, step), desc="average repeats", unit="block"):
        cols = slice(c0, min(c0 + step, n_voxels))
        block = np.concatenate([s[:, cols] for s in sessions])
        valid = np.isfinite(block)
        counts = trials @ valid.astype(np.float64)
        sums = trials @ np.where(valid, block, 0.0).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(counts > 0, sums / counts, np.nan)
        n_empty += int((counts == 0).sum())
        for split, idx in rows.items():
            writer.write_betas(split, cols, mean[idx])
    return n_empty


def _zscore_sessions(store: SessionStore, voxels, n_sessions: int) -> None:
    """Z-score each session whose result is missing or stale and save it in ``store``."""
    for s in tqdm(range(1, n_sessions + 1), desc="sessions", unit="session"):
        files = voxels.session_files(s)
        if store.done(s, files):
            continue
        betas = voxels.read_session(s)
        z = zscore_columns(betas)
        bad = ~np.isfinite(betas)
        info = {"nonfinite_betas": int(bad.sum()), "voxels_with_nonfinite": int(bad.any(axis=0).sum()),
                "voxels_without_variance": int(np.isnan(z).all(axis=0).sum())}
        if info["nonfinite_betas"]:
            log.warning("session %d: %d betas (trial x voxel) are NaN/inf in %d voxels; those trials are left out "
                        "of the voxel's z-score and average", s, info["nonfinite_betas"], info["voxels_with_nonfinite"])
        store.save(s, z, files, info)


def _excluded(store: SessionStore, n_sessions: int) -> dict:
    """Totals of the per-session ``info`` counts."""
    infos = [store.info(s) for s in range(1, n_sessions + 1)]
    keys = ("nonfinite_betas", "voxels_without_variance")
    return {k: int(sum(i.get(k, 0) for i in infos)) for k in keys}


def _discard_empty_outputs(store: SessionStore, created: list[Path]) -> None:
    """After a failure with no session finished, remove the work and output folders this run created."""
    if store.n_done():
        return
    store.remove()
    for folder in created:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def prepare_nsd(nsd_root, subject, out, *, sessions: int | None = None, space: str = "func1pt8mm",
                mask: str = "nsdgeneral", rois=DEFAULT_ROIS, betas_format: str = "auto", roi_dir=None,
                image_size: int = 224, work=None, keep_work: bool = False) -> Prepared:
    """Prepare ``subject`` from the NSD release at ``nsd_root`` into the folder ``out``."""
    if space not in SPACES:
        raise ValueError(f"`--space` must be one of {sorted(SPACES)}, got {space!r}.")
    if image_size < 0:
        raise ValueError(f"`--image-size` must be >= 0 (0 keeps the stimulus size), got {image_size}.")
    root = Path(nsd_root)
    if not root.is_dir():
        raise FileNotFoundError(f"`--nsd-root` folder not found: {root}")
    number = parse_subject(subject)
    n_sessions = _check_sessions(number, sessions)
    layout = NSDLayout(root, number)
    design = read_design(layout.expdesign, number, n_sessions)
    table = image_table(design)
    if not table.is_test.any():
        raise ValueError(f"{layout.subj}'s first {n_sessions} sessions show no shared image: the test split is empty.")
    stimuli = require(layout.stimuli, "stimuli")
    brick_shape = _brick_shape(stimuli, int(table.image_ids.max()))
    voxels = SPACES[space](layout, space, mask, betas_format, roi_dir)
    families = list(rois)
    voxels.check_files(n_sessions, families)
    # ROI labels and ncsnr are small: read before the long part, so that a damaged file fails fast
    labels = {family: voxels.read_labels(family) for family in families}
    ncsnr = voxels.read_ncsnr()

    name = f"{layout.subj}_{space}_{mask}"
    out = Path(out)
    work_dir = Path(work) if work else out / ".work" / name
    created = [p for p in (work_dir.parent, out) if not p.exists()]
    out.mkdir(parents=True, exist_ok=True)
    identity = {"nsd_root": str(root.resolve()), "subject": layout.subj, "space": space, "mask": mask,
                "roi_dir": str(roi_dir or ""), "n_voxels": voxels.n_voxels}
    store = SessionStore(work_dir, identity, voxels.mask_files(), _SESSION_METHOD)
    log.info("%s %s: %d voxels in %s, %d sessions", layout.subj, space, voxels.n_voxels, mask, n_sessions)
    try:
        _zscore_sessions(store, voxels, n_sessions)
    except BaseException:
        _discard_empty_outputs(store, created)
        raise
    excluded = _excluded(store, n_sessions)

    subj = voxels.subject(subject_rois(labels))
    test_repeats = table.n_repeats[table.is_test]
    splits = {"train": SplitSpec(np.flatnonzero(~table.is_test), table.n_repeats[~table.is_test]),
              "test": SplitSpec(np.flatnonzero(table.is_test), test_repeats)}
    image_shape = (image_size, image_size) if image_size else brick_shape[1:3]
    metadata = {
        "route": "nsd", "nsd_root": str(root.resolve()), "subject": layout.subj, "space": space, "mask": mask,
        "roi_families": families, "sessions": n_sessions, "n_trials": int(len(design.trial_images)),
        "betas": "betas_fithrf_GLMdenoise_RR; integer betas / 300 = % signal change; z-scored per voxel per "
                 "session over its finite trials (ddof=0); finite repeats averaged (NaN if none)",
        "nonfinite_betas_excluded": excluded["nonfinite_betas"],
        "test_split": "shared images (masterordering <= 1000) seen in the sessions used",
        "noise_ceiling": "ncsnr^2 / (ncsnr^2 + mean(1/n_repeats of test images)), fraction",
        "stimuli_shape": list(brick_shape), "image_size": int(image_shape[0]), "surface": subj.surface,
    }
    dataset_path = out / f"{name}.h5"
    with DatasetWriter(dataset_path, subject=subj, image_ids=table.image_ids,
                       image_names=[f"nsd-{i:05d}" for i in table.image_ids], image_shape=image_shape,
                       splits=splits, source="nsd", metadata=metadata) as writer:
        n_empty = _write_betas(writer, store, n_sessions, table, voxels.n_voxels)
        _write_stimuli(writer, stimuli, table.image_ids, image_size)
        writer.write_voxels(noise_ceiling=noise_ceiling(ncsnr, test_repeats), ncsnr=ncsnr, roi_labels=labels,
                            **voxels.voxel_info())
    subject_path = subj.save(out / f"{name}.subject.npz")
    if not keep_work:
        store.remove()
        if work is None and not any((out / ".work").iterdir()):
            (out / ".work").rmdir()
    log.info("wrote %s (%d train, %d test images) and %s", dataset_path, len(splits["train"].image_index),
             len(test_repeats), subject_path)
    log.info("NaN/inf betas left out: %d of %d (trial x voxel); voxel-sessions without variance: %d; "
             "image x voxel averages with no finite trial (stored as NaN): %d", excluded["nonfinite_betas"],
             len(design.trial_images) * voxels.n_voxels, excluded["voxels_without_variance"], n_empty)
    return Prepared(dataset=dataset_path, subject=subject_path)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.prepare_nsd", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nsd-root", required=True, help="folder holding nsddata/, nsddata_betas/, nsddata_stimuli/")
    p.add_argument("--subject", required=True, help="subj01..subj08")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--sessions", type=int, default=None, help="use the first N sessions (default: all of the subject's)")
    p.add_argument("--space", default="func1pt8mm", choices=sorted(SPACES))
    p.add_argument("--mask", default="nsdgeneral", help="ROI file whose voxels > 0 are kept (default nsdgeneral)")
    p.add_argument("--rois", default=",".join(DEFAULT_ROIS), help="comma-separated ROI files to label voxels with")
    p.add_argument("--roi-dir", default=None, help="folder with the ROI files (default: NSD's)")
    p.add_argument("--betas-format", default="auto", choices=BETAS_FORMATS)
    p.add_argument("--image-size", type=int, default=224, help="stored stimulus size in px (0: keep 425)")
    p.add_argument("--work", default=None, help="work folder for per-session results (default OUT/.work/NAME)")
    p.add_argument("--keep-work", action="store_true", help="keep the per-session results after success")
    return p


def main(argv=None) -> Prepared:
    args = _parser().parse_args(argv)
    configure_logging()
    rois = [r.strip() for r in args.rois.split(",") if r.strip()]
    with cli_errors():
        return prepare_nsd(args.nsd_root, args.subject, args.out, sessions=args.sessions, space=args.space,
                           mask=args.mask, rois=rois, betas_format=args.betas_format, roi_dir=args.roi_dir,
                           image_size=args.image_size, work=args.work, keep_work=args.keep_work)


if __name__ == "__main__":
    main()
