"""The encoding dataset: one HDF5 file with stimuli, responses and voxel information.

Every preparation route (NSD, a generic image folder, the synthetic subject) writes this format and
``train_encoder`` / ``eval_encoder`` read it::

    attrs    format="braindive-encoding-dataset", format_version, source, created,
             images_sha256 (hash of /images/pixels), metadata (JSON: route-specific provenance)
    /images/pixels         uint8 [n_images, H, W, 3]  (gzip, one chunk per image)
    /images/ids            int64 [n_images]   NSD: 0-based 73k id; generic/synthetic: 0..n-1
    /images/names          str   [n_images]   file names (generic) or "nsd-<73k id>"
    /train|test/image_index int64 [n]          rows of /images, ascending
    /train|test/betas      float16 [n, n_voxels]
    /train|test/n_repeats  int16 [n]           trials averaged per image
    /voxels/noise_ceiling  float32 [n_voxels]  fraction of variance for the test split; NaN = unknown
    /voxels/ncsnr          float32 [n_voxels]  (NSD only)
    /voxels/ijk            int32 [n_voxels, 3] (volume spaces only; attrs affine, volume_shape)
    /rois/<family>         int16 [n_voxels]    label per voxel; attrs names = JSON {id: name}
    /subject/npz           uint8 bytes of the braindive Subject file (``Subject.save``)

The file is written to ``<path>.partial`` and renamed when complete, so a crash never leaves a
truncated dataset under the final name.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from braindive.subjects import Subject

__all__ = ["FORMAT", "SPLITS", "SplitSpec", "DatasetWriter", "EncodingDataset", "open_dataset"]

FORMAT = "braindive-encoding-dataset"
FORMAT_VERSION = 1
SPLITS = ("train", "test")
_FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclass
class SplitSpec:
    """Which images a split holds (rows of ``/images``) and how many trials each averages."""

    image_index: np.ndarray
    n_repeats: np.ndarray


def _subject_bytes(subject: Subject) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        path = subject.save(Path(tmp) / "subject.npz")
        return np.frombuffer(path.read_bytes(), dtype=np.uint8)


def _subject_from_bytes(data: np.ndarray) -> Subject:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "subject.npz"
        path.write_bytes(data.tobytes())
        return Subject.load(path)


class DatasetWriter:
    """Create a dataset file piece by piece; ``commit()`` (or leaving the ``with`` block) publishes it."""

    def __init__(self, path, *, subject: Subject, image_ids, image_names, image_shape, splits: dict,
                 source: str, metadata: dict):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        missing = [s for s in SPLITS if s not in splits]
        if missing:
            raise ValueError(f"`splits` must define {list(SPLITS)}, missing {missing}.")
        n_images = len(image_ids)
        indices = {name: np.asarray(splits[name].image_index, dtype=np.int64) for name in SPLITS}
        for name, index in indices.items():
            if np.any(np.diff(index) <= 0) or (index.size and (index[0] < 0 or index[-1] >= n_images)):
                raise ValueError(f"`splits[{name!r}].image_index` must be ascending rows of the {n_images} images.")
        h, w = (int(v) for v in image_shape)
        self.n_voxels = subject.n_voxels
        self.file = h5py.File(self.partial, "w")
        f = self.file
        f.attrs.update(format=FORMAT, format_version=FORMAT_VERSION, source=source,
                       created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       metadata=json.dumps(metadata, sort_keys=True))
        f.create_dataset("images/pixels", shape=(n_images, h, w, 3), dtype=np.uint8,
                         chunks=(1, h, w, 3), compression="gzip", compression_opts=1)
        f["images/ids"] = np.asarray(image_ids, dtype=np.int64)
        f["images/names"] = np.asarray([str(n) for n in image_names], dtype=object).astype(h5py.string_dtype())
        for name, index in indices.items():
            f[f"{name}/image_index"] = index
            f[f"{name}/n_repeats"] = np.asarray(splits[name].n_repeats, dtype=np.int16)
            f.create_dataset(f"{name}/betas", shape=(len(index), self.n_voxels), dtype=np.float16,
                             chunks=(max(1, min(len(index), 64)), min(self.n_voxels, 4096)))
        f["subject/npz"] = _subject_bytes(subject)

    def write_images(self, start: int, pixels: np.ndarray) -> None:
        """Write ``pixels`` (uint8 ``[n, H, W, 3]``) at rows ``start..start+n``."""
        self.file["images/pixels"][start:start + len(pixels)] = pixels

    def write_betas(self, split: str, columns: slice, values: np.ndarray) -> None:
        """Write responses ``[n_split_images, n_columns]`` of voxels ``columns`` (stored as float16)."""
        values = np.asarray(values)
        big = np.abs(values[np.isfinite(values)]).max(initial=0.0)
        if big > _FLOAT16_MAX:
            raise ValueError(f"Responses must fit float16 (|x| <= {_FLOAT16_MAX:g}); got |x| = {big:g}. "
                             "Rescale them (e.g. z-score) first.")
        self.file[f"{split}/betas"][:, columns] = values.astype(np.float16)

    def write_voxels(self, *, noise_ceiling=None, ncsnr=None, ijk=None, affine=None, volume_shape=None,
                     roi_labels: dict | None = None) -> None:
        """Per-voxel information: noise ceiling (fraction), NSD ncsnr, volume coordinates, ROI labels."""
        nc = np.full(self.n_voxels, np.nan) if noise_ceiling is None else noise_ceiling
        self._voxel_array("voxels/noise_ceiling", nc, np.float32)
        if ncsnr is not None:
            self._voxel_array("voxels/ncsnr", ncsnr, np.float32)
        if ijk is not None:
            ds = self._voxel_array("voxels/ijk", ijk, np.int32)
            ds.attrs.update(affine=np.asarray(affine, np.float64), volume_shape=np.asarray(volume_shape, np.int64))
        for family, (labels, names) in (roi_labels or {}).items():
            ds = self._voxel_array(f"rois/{family}", labels, np.int16)
            ds.attrs["names"] = json.dumps({str(k): v for k, v in sorted(names.items())})

    def _voxel_array(self, name: str, values, dtype):
        values = np.asarray(values, dtype=dtype)
        if values.shape[0] != self.n_voxels:
            raise ValueError(f"`{name}` must have {self.n_voxels} rows (one per voxel), got shape {values.shape}.")
        return self.file.create_dataset(name, data=values)

    def commit(self) -> Path:
        """Hash the images, close the file and move it to its final name."""
        if "voxels/noise_ceiling" not in self.file:
            self.write_voxels()
        self.file.attrs["images_sha256"] = _hash_images(self.file["images/pixels"])
        self.file.close()
        self.partial.replace(self.path)
        return self.path

    def abort(self) -> None:
        """Close and delete the partial file."""
        if self.file.id.valid:
            self.file.close()
        self.partial.unlink(missing_ok=True)

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def _hash_images(pixels: h5py.Dataset, rows: int = 256) -> str:
    digest = hashlib.sha256(repr(pixels.shape).encode())
    for start in range(0, pixels.shape[0], rows):
        digest.update(np.ascontiguousarray(pixels[start:start + rows]).tobytes())
    return digest.hexdigest()


class EncodingDataset:
    """Read access to a dataset file; responses are loaded as float32 on request."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"Dataset file not found: {self.path}")
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as exc:
            raise ValueError(f"Dataset {self.path} is not a readable HDF5 file: {exc}") from exc
        fmt = self.file.attrs.get("format")
        if fmt != FORMAT:
            self.file.close()
            raise ValueError(f"{self.path} is not a {FORMAT} file (attrs['format'] = {fmt!r}); "
                             "create it with training.prepare_nsd or training.prepare_generic.")
        self.subject = _subject_from_bytes(self.file["subject/npz"][()])
        self.metadata = json.loads(self.file.attrs["metadata"])
        self.source = str(self.file.attrs["source"])
        self.images_sha256 = str(self.file.attrs["images_sha256"])

    @property
    def images(self) -> h5py.Dataset:
        """uint8 ``[n_images, H, W, 3]`` (read lazily)."""
        return self.file["images/pixels"]

    @property
    def image_ids(self) -> np.ndarray:
        return self.file["images/ids"][()]

    @property
    def n_voxels(self) -> int:
        return self.subject.n_voxels

    def image_index(self, split: str) -> np.ndarray:
        return self.file[f"{self._check(split)}/image_index"][()]

    def n_repeats(self, split: str) -> np.ndarray:
        return self.file[f"{self._check(split)}/n_repeats"][()]

    def betas(self, split: str) -> np.ndarray:
        """Responses of ``split`` as float32 ``[n_images, n_voxels]``."""
        return self.file[f"{self._check(split)}/betas"][()].astype(np.float32)

    @property
    def noise_ceiling(self) -> np.ndarray:
        return self.file["voxels/noise_ceiling"][()].astype(np.float64)

    def roi_labels(self) -> dict[str, tuple[np.ndarray, dict[int, str]]]:
        """ROI family -> (label per voxel, {label id: name})."""
        group = self.file.get("rois", {})
        return {name: (ds[()], {int(k): v for k, v in json.loads(ds.attrs["names"]).items()})
                for name, ds in group.items()}

    def _check(self, split: str) -> str:
        if split not in SPLITS:
            raise ValueError(f"`split` must be one of {list(SPLITS)}, got {split!r}.")
        return split

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "EncodingDataset":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_dataset(path) -> EncodingDataset:
    """Open a dataset written by ``DatasetWriter``."""
    return EncodingDataset(path)
