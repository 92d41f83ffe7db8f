"""NSD voxel spaces: which voxels are kept and how their betas, ROIs and ncsnr are read.

* ``VolumeSpace`` (``func1pt8mm``, ``func1mm``): voxels of the mask volume, ordered left hemisphere
  first (from ``lh.<mask>.nii.gz`` when present), C order of (i, j, k) within a hemisphere. It makes
  a volume Subject (ijk, affine and shape of the grid) without a display: NSD ships no pycortex
  database, so a surface and transform are attached later (``Subject.with_display``).
* ``SurfaceSpace`` (``fsaverage``): voxels are fsaverage vertices inside the mask (left then right),
  so the Subject lives on pycortex's ``fsaverage`` and maps straight onto its flatmap.

Integer-typed betas are NSD's int16 percent-signal-change x 300 and are divided by 300; float betas
are taken as percent signal change (the fsaverage files; UNVERIFIED, and irrelevant after z-scoring).
"""
from __future__ import annotations

import logging
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np

from braindive.subjects import Subject

from .nsd_layout import TRIALS_PER_SESSION, NSDLayout, read_ctab, require

__all__ = ["SPACES", "VolumeSpace", "SurfaceSpace", "MERGED_ROIS", "BETAS_FORMATS", "subject_rois", "space_label"]

log = logging.getLogger(__name__)

BETAS_SCALE = 300.0
DEFAULT_MASK = "nsdgeneral"
BETAS_FORMATS = ("auto", "nifti", "hdf5")
# Whole-region ROIs added to the subject next to NSD's labels (all parts that exist are merged).
MERGED_ROIS = {
    "V1": ("V1v", "V1d"),
    "V2": ("V2v", "V2d"),
    "V3": ("V3v", "V3d"),
    "FFA": ("FFA-1", "FFA-2"),
    "FBA": ("FBA-1", "FBA-2"),
    "VWFA": ("VWFA-1", "VWFA-2"),
}


def space_label(space: str, mask: str) -> str:
    """``"func1pt8mm"`` for the default nsdgeneral mask, else ``"func1pt8mm/<mask>"``."""
    return space if mask == DEFAULT_MASK else f"{space}/{mask}"


def _to_percent(data: np.ndarray) -> np.ndarray:
    data = np.asarray(data)
    if np.issubdtype(data.dtype, np.integer):
        return data.astype(np.float32) / BETAS_SCALE
    return data.astype(np.float32)


def _label_names(labels: np.ndarray, table: dict[int, str], family: str) -> dict[int, str]:
    present = sorted(int(v) for v in np.unique(labels) if v > 0)
    return {v: table.get(v, f"{family}-{v}") for v in present}


def subject_rois(roi_labels: dict[str, tuple[np.ndarray, dict[int, str]]]) -> dict[str, np.ndarray]:
    """ROI name -> voxel indices for every labelled region, plus the ``MERGED_ROIS`` that exist."""
    rois = {}
    for labels, names in roi_labels.values():
        for value, name in names.items():
            rois[name] = np.flatnonzero(labels == value)
    for merged, parts in MERGED_ROIS.items():
        found = [rois[p] for p in parts if p in rois]
        if found and merged not in rois:
            rois[merged] = np.unique(np.concatenate(found))
    return {k: v for k, v in rois.items() if len(v)}


class VolumeSpace:
    """Voxels of an NSD functional volume inside ``mask`` (an ROI file, voxels with value > 0)."""

    def __init__(self, layout: NSDLayout, space: str, mask: str, betas_format: str = "auto",
                 roi_dir: Path | None = None):
        if betas_format not in BETAS_FORMATS:
            raise ValueError(f"`--betas-format` must be one of {list(BETAS_FORMATS)}, got {betas_format!r}.")
        self.layout, self.space, self.mask_name, self.betas_format = layout, space, mask, betas_format
        self.betas_dir = layout.betas_dir(space)
        self.roi_dir = Path(roi_dir) if roi_dir else layout.roi_dir(space)
        img = nib.load(require(self.roi_dir / f"{mask}.nii.gz", f"mask ROI --mask {mask!r}"))
        self.volume_shape = tuple(int(s) for s in img.shape[:3])
        self.affine = img.affine
        mask_vol = np.rint(np.asarray(img.dataobj)).reshape(self.volume_shape) > 0
        left, self.hemispheres_known = self._left_hemisphere(mask_vol)
        ijk = [np.argwhere(mask_vol & left), np.argwhere(mask_vol & ~left)]
        self.n_left = len(ijk[0])
        self.ijk = np.concatenate(ijk).astype(np.int64)
        if not len(self.ijk):
            raise ValueError(f"Mask {self.roi_dir / (mask + '.nii.gz')} selects no voxels (no value > 0).")
        self._index = tuple(self.ijk.T)

    def _left_hemisphere(self, mask_vol: np.ndarray) -> tuple[np.ndarray, bool]:
        """Left-hemisphere voxels from ``lh.<mask>.nii.gz``, and whether that file exists."""
        path = self.roi_dir / f"lh.{self.mask_name}.nii.gz"
        if not path.is_file():
            log.warning("%s not found (looked in %s): hemispheres unknown, every voxel is recorded as left.",
                        path.name, path.parent)
            return np.ones_like(mask_vol), False
        return np.rint(self._volume(path, "hemisphere mask")) > 0, True

    @property
    def n_voxels(self) -> int:
        return len(self.ijk)

    def _volume(self, path: Path, what: str) -> np.ndarray:
        data = np.asarray(nib.load(require(path, what)).dataobj)
        if data.shape[:3] != self.volume_shape:
            raise ValueError(f"{path} has shape {data.shape}, expected {self.volume_shape} like the mask.")
        return data.reshape(self.volume_shape)

    def betas_file(self, session: int) -> Path:
        names = {"nifti": f"betas_session{session:02d}.nii.gz", "hdf5": f"betas_session{session:02d}.hdf5"}
        if self.betas_format != "auto":
            return require(self.betas_dir / names[self.betas_format], f"betas of session {session}")
        for fmt in ("hdf5", "nifti"):
            if (self.betas_dir / names[fmt]).is_file():
                return self.betas_dir / names[fmt]
        raise FileNotFoundError(f"NSD betas of session {session} not found: {names['nifti']} or {names['hdf5']} "
                                f"(looked in {self.betas_dir}).")

    def roi_files(self, family: str) -> list[Path]:
        return [require(self.roi_dir / f"{family}.nii.gz", f"ROI file --rois {family!r}")]

    def check_files(self, n_sessions: int, families: list[str]) -> None:
        """Raise for the first missing input before any work starts."""
        for s in range(1, n_sessions + 1):
            self.betas_file(s)
        for family in families:
            self.roi_files(family)
        require(self.betas_dir / "ncsnr.nii.gz", "noise-ceiling SNR")

    def read_session(self, session: int) -> np.ndarray:
        """Betas of one session in percent signal change, ``[750, n_voxels]`` float32."""
        path = self.betas_file(session)
        if path.suffix == ".hdf5":
            with h5py.File(path, "r") as f:
                ds = f["betas"]
                expected = (TRIALS_PER_SESSION,) + self.volume_shape[::-1]
                if ds.shape != expected:
                    raise ValueError(f"{path}: dataset `betas` has shape {ds.shape}, "
                                     f"expected {expected} (trials, Z, Y, X).")
                i, j, k = self._index
                out = np.empty((TRIALS_PER_SESSION, self.n_voxels), np.float32)
                for t0 in range(0, TRIALS_PER_SESSION, 50):
                    out[t0:t0 + 50] = _to_percent(ds[t0:t0 + 50][:, k, j, i])
                return out
        data = np.asarray(nib.load(path).dataobj)
        expected = self.volume_shape + (TRIALS_PER_SESSION,)
        if data.shape != expected:
            raise ValueError(f"{path} has shape {data.shape}, expected {expected} (X, Y, Z, trials).")
        return _to_percent(data[self._index]).T

    def read_labels(self, family: str) -> tuple[np.ndarray, dict[int, str]]:
        """Label per voxel (0 = none) and names, from ``<family>.nii.gz`` and its ctab."""
        volume = self._volume(self.roi_files(family)[0], f"ROI file --rois {family!r}")
        labels = np.rint(volume[self._index]).astype(np.int64)
        labels[labels < 0] = 0
        table = read_ctab(self.layout.label_dir() / f"{family}.mgz.ctab", family)
        return labels, _label_names(labels, table, family)

    def read_ncsnr(self) -> np.ndarray:
        return self._volume(self.betas_dir / "ncsnr.nii.gz", "noise-ceiling SNR")[self._index].astype(np.float64)

    def subject(self, rois: dict[str, np.ndarray]) -> Subject:
        note = "" if self.hemispheres_known else " (hemispheres unknown: all recorded as left)"
        return Subject.from_volume(
            self.layout.subj, self.ijk, self.affine, self.volume_shape, rois,
            is_right=np.arange(self.n_voxels) >= self.n_left, space=space_label(self.space, self.mask_name),
            description=f"NSD {self.layout.subj} {self.space} voxels in {self.mask_name}{note}",
        )

    def voxel_info(self) -> dict:
        return {"ijk": self.ijk, "affine": self.affine, "volume_shape": self.volume_shape}


class SurfaceSpace:
    """fsaverage vertices inside ``mask`` (``{lh,rh}.<mask>.mgz`` > 0); left hemisphere first."""

    HEMIS = ("lh", "rh")

    def __init__(self, layout: NSDLayout, space: str, mask: str, betas_format: str = "auto",
                 roi_dir: Path | None = None):
        if betas_format != "auto":
            raise ValueError(f"`--betas-format` for fsaverage must be 'auto' (MGH files), got {betas_format!r}.")
        self.layout, self.space, self.mask_name = layout, space, mask
        self.betas_dir = layout.betas_dir(space)
        self.roi_dirs = [Path(roi_dir)] if roi_dir else [layout.label_dir(), layout.label_dir("fsaverage")]
        first = nib.load(require(self.betas_dir / "lh.betas_session01.mgh", "betas of session 1"))
        self.n_lh = int(first.shape[0])
        rh = nib.load(require(self.betas_dir / "rh.betas_session01.mgh", "betas of session 1"))
        self.n_hemi = {"lh": self.n_lh, "rh": int(rh.shape[0])}
        masks = [self._surface(p, f"mask ROI --mask {mask!r}") > 0 for p in self.roi_files(mask)]
        self.hemi_vertices = [np.flatnonzero(m) for m in masks]
        self.vertices = np.concatenate([self.hemi_vertices[0], self.n_lh + self.hemi_vertices[1]])
        if not len(self.vertices):
            raise ValueError(f"Mask {mask!r} selects no fsaverage vertices (no value > 0).")

    @property
    def n_voxels(self) -> int:
        return len(self.vertices)

    def _surface(self, path: Path, what: str) -> np.ndarray:
        return np.squeeze(np.asarray(nib.load(require(path, what)).dataobj))

    def roi_files(self, family: str) -> list[Path]:
        """``[lh, rh]`` ROI files with one value per fsaverage vertex, from the first folder that has them."""
        paths = []
        for hemi in self.HEMIS:
            name, wrong = f"{hemi}.{family}.mgz", []
            for folder in self.roi_dirs:
                path = folder / name
                if path.is_file():
                    n = int(nib.load(path).shape[0])
                    if n == self.n_hemi[hemi]:
                        paths.append(path)
                        break
                    wrong.append(f"{path} ({n} vertices)")
            else:
                if wrong:
                    raise ValueError(
                        f"ROI {name} does not match the {self.n_hemi[hemi]} fsaverage vertices of the betas: "
                        f"{', '.join(wrong)}. Subject-native surface ROIs must first be mapped to fsaverage "
                        "(nsdcode: NSDmapdata.fit(subject, 'lh.white', 'fsaverage', file)); pass their folder "
                        "with --roi-dir."
                    )
                raise FileNotFoundError(f"NSD ROI file --rois {family!r} not found: {name} "
                                        f"(looked in {', '.join(str(d) for d in self.roi_dirs)}).")
        return paths

    def betas_files(self, session: int) -> list[Path]:
        return [require(self.betas_dir / f"{h}.betas_session{session:02d}.mgh", f"betas of session {session}")
                for h in self.HEMIS]

    def check_files(self, n_sessions: int, families: list[str]) -> None:
        for s in range(1, n_sessions + 1):
            self.betas_files(s)
        for family in families:
            self.roi_files(family)
        for h in self.HEMIS:
            require(self.betas_dir / f"{h}.ncsnr.mgh", "noise-ceiling SNR")

    def _per_hemi(self, paths: list[Path], what: str) -> np.ndarray:
        parts = []
        for path, verts, hemi in zip(paths, self.hemi_vertices, self.HEMIS):
            data = self._surface(path, what)
            if data.shape[0] != self.n_hemi[hemi]:
                raise ValueError(f"{path} has {data.shape[0]} vertices, expected {self.n_hemi[hemi]}.")
            parts.append(data[verts])
        return np.concatenate(parts)

    def read_session(self, session: int) -> np.ndarray:
        data = self._per_hemi(self.betas_files(session), f"betas of session {session}")
        if data.shape[1:] != (TRIALS_PER_SESSION,):
            raise ValueError(f"fsaverage betas of session {session} have {data.shape[1:]} trials, expected 750.")
        return _to_percent(data).T

    def read_labels(self, family: str) -> tuple[np.ndarray, dict[int, str]]:
        files = self.roi_files(family)
        labels = np.rint(self._per_hemi(files, f"ROI file --rois {family!r}")).astype(np.int64)
        labels[labels < 0] = 0
        table_path = files[0].parent / f"{family}.mgz.ctab"
        if not table_path.is_file():
            table_path = self.layout.label_dir() / f"{family}.mgz.ctab"
        return labels, _label_names(labels, read_ctab(table_path, family), family)

    def read_ncsnr(self) -> np.ndarray:
        paths = [self.betas_dir / f"{h}.ncsnr.mgh" for h in self.HEMIS]
        return self._per_hemi(paths, "noise-ceiling SNR").astype(np.float64)

    def subject(self, rois: dict[str, np.ndarray]) -> Subject:
        return Subject(
            name=self.layout.subj,
            surface="fsaverage",
            vertices=self.vertices,
            n_vertices_lh=self.n_lh,
            n_vertices=self.n_lh + self.n_hemi["rh"],
            rois=rois,
            space=space_label("fsaverage", self.mask_name),
            description=f"NSD {self.layout.subj} fsaverage vertices in {self.mask_name}",
        )

    def voxel_info(self) -> dict:
        return {}


SPACES = {"func1pt8mm": VolumeSpace, "func1mm": VolumeSpace, "fsaverage": SurfaceSpace}
