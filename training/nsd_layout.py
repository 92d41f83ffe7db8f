"""Where NSD keeps its files, and the experiment design (which image each trial showed).

Paths follow the NSD data release (``/work/shared/NSD_LAYOUT.md``); every lookup of a required file
goes through ``require`` so a missing file is reported by name together with the folder searched.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
from scipy.io.matlab import MatReadError

from .nsd_io import FILE_ERRORS, reading

__all__ = [
    "NSD_SESSIONS",
    "TRIALS_PER_SESSION",
    "N_SHARED",
    "NSDLayout",
    "Design",
    "parse_subject",
    "require",
    "read_design",
    "read_ctab",
]

log = logging.getLogger(__name__)

NSD_SESSIONS = {1: 40, 2: 40, 3: 32, 4: 30, 5: 40, 6: 32, 7: 40, 8: 30}
TRIALS_PER_SESSION = 750
N_SHARED = 1000  # the first 1000 columns of subjectim are the shared images


def parse_subject(subject) -> int:
    """``"subj01"``, ``"1"`` or ``1`` -> 1; anything else raises."""
    match = re.fullmatch(r"(?:subj)?0*([1-8])", str(subject).strip())
    if not match:
        raise ValueError(f"`--subject` must be subj01..subj08 (or 1..8), got {subject!r}.")
    return int(match.group(1))


def require(path: Path, what: str) -> Path:
    """Return ``path`` if it exists, else raise naming the file and the folder searched."""
    if not path.exists():
        raise FileNotFoundError(f"NSD {what} not found: {path.name} (looked in {path.parent}).")
    return path


@dataclass(frozen=True)
class NSDLayout:
    """The NSD release rooted at ``root`` (the folder holding ``nsddata``, ``nsddata_betas``, ...)."""

    root: Path
    subject: int

    @property
    def subj(self) -> str:
        return f"subj{self.subject:02d}"

    @property
    def expdesign(self) -> Path:
        return self.root / "nsddata" / "experiments" / "nsd" / "nsd_expdesign.mat"

    @property
    def stimuli(self) -> Path:
        return self.root / "nsddata_stimuli" / "stimuli" / "nsd" / "nsd_stimuli.hdf5"

    def betas_dir(self, space: str) -> Path:
        return self.root / "nsddata_betas" / "ppdata" / self.subj / space / "betas_fithrf_GLMdenoise_RR"

    def roi_dir(self, space: str) -> Path:
        return self.root / "nsddata" / "ppdata" / self.subj / space / "roi"

    def label_dir(self, surface: str | None = None) -> Path:
        return self.root / "nsddata" / "freesurfer" / (surface or self.subj) / "label"


@dataclass
class Design:
    """The trials of one subject's first ``n_sessions`` sessions.

    Attributes:
        trial_images: ``[n_trials]`` 0-based 73k image id shown on each trial.
        trial_shared: ``[n_trials]`` True where the image is one of the 1000 shared images.
    """

    trial_images: np.ndarray
    trial_shared: np.ndarray


_N_IMAGES = 10000  # images per subject (columns of subjectim)
_N_STIMULI = 73000  # images in the NSD stimulus set


def _mat_array(mat: dict, key: str, shape: tuple, high: int, path: Path) -> np.ndarray:
    """``mat[key]`` checked over the WHOLE array: ``shape``, integer values in 1..``high`` (1-based)."""
    if key not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(f"{path} has no variable {key!r} (found {found}).")
    arr = np.asarray(mat[key])
    if len(shape) == 1 and arr.size == shape[0]:  # a vector stored as a row or a column
        arr = arr.reshape(shape)
    if arr.shape != shape:
        raise ValueError(f"{path}: `{key}` must have shape {shape}, got {arr.shape}.")
    if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
        raise ValueError(f"{path}: `{key}` must hold integers (1-based indices), got dtype {arr.dtype} "
                         "with non-integer values.")
    arr = arr.astype(np.int64)
    low_found, high_found = int(arr.min()), int(arr.max())
    if low_found < 1 or high_found > high:
        hint = " (0-based indices? NSD's are 1-based)" if low_found == 0 else ""
        raise ValueError(f"{path}: `{key}` values must be in 1..{high} (1-based), got {low_found}..{high_found}{hint}.")
    return arr


def read_design(path: Path, subject: int, n_sessions: int) -> Design:
    """Trials of ``subject``'s first ``n_sessions`` sessions from ``nsd_expdesign.mat`` (1-based indices).

    ``masterordering``, ``subjectim`` and (when present) ``sharedix`` are range-checked as whole
    arrays, and the subject's first 1000 images must be exactly ``sharedix``: a 0-based or shifted
    array is refused instead of silently selecting wrong images and a wrong test split.
    """
    require(path, "experiment design")
    errors = FILE_ERRORS + (ValueError, TypeError, NotImplementedError, MatReadError)
    with reading(path, "experiment design", errors):
        mat = scipy.io.loadmat(str(path))
    masterordering = _mat_array(mat, "masterordering", (30000,), _N_IMAGES, path)
    subjectim = _mat_array(mat, "subjectim", (8, _N_IMAGES), _N_STIMULI, path)
    images = subjectim[subject - 1]
    if "sharedix" in mat:
        sharedix = _mat_array(mat, "sharedix", (N_SHARED,), _N_STIMULI, path)
        if not np.array_equal(np.sort(images[:N_SHARED]), np.sort(sharedix)):
            n_diff = len(np.setdiff1d(images[:N_SHARED], sharedix))
            raise ValueError(f"{path}: the first {N_SHARED} columns of `subjectim` row {subject} (the shared images) "
                             f"must be the 73k ids in `sharedix`; {n_diff} are not (arrays with different index bases?).")
    order = masterordering[: n_sessions * TRIALS_PER_SESSION]  # 1-based index into the subject's 10k images
    return Design(trial_images=images[order - 1] - 1, trial_shared=order <= N_SHARED)


def read_ctab(path: Path, family: str) -> dict[int, str]:
    """``{label id: name}`` from a FreeSurfer colour table (``id name ...`` lines), without 0 (Unknown).

    A missing table gives generic names ``<family>-<id>`` (logged), since labels are still usable.
    """
    if not path.is_file():
        log.warning("ROI label table %s not found (looked in %s); naming %s labels by number.",
                    path.name, path.parent, family)
        return {}
    with reading(path, "ROI label table", FILE_ERRORS + (UnicodeDecodeError,)):
        text = path.read_text()
    names = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].lstrip("-").isdigit() and int(parts[0]) > 0:
            names[int(parts[0])] = parts[1]
    return names
