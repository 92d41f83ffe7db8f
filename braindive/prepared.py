"""Reading the prepared encoding datasets (``training/dataset.py``'s HDF5 format) from ``braindive``.

``training.prepare_nsd`` / ``prepare_generic`` write them; ``braindive`` never imports ``training``, so the
few reads it needs are here: ``open_dataset`` (checked), ``dataset_subject``, ``nsd_image`` (an image
by its NSD id) and ``test_images`` (the test split: for NSD, the shared images). NSD ids are the 0-based "73k" ids (``nsdId`` in ``nsd_stim_info_merged.csv``, the row of
``nsd_stimuli.hdf5``); the experiment design file's ``subjectim`` and ``sharedix`` are 1-based.
"""
from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import PIL.Image

from .subjects import Subject

__all__ = ["DATASET_FORMAT", "open_dataset", "dataset_subject", "nsd_image", "nsd_reference_name", "test_images"]

DATASET_FORMAT = "braindive-encoding-dataset"


@contextmanager
def open_dataset(path):
    """The dataset file at ``path`` open for reading (h5py); a clear error when missing, unreadable or another format."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NSD dataset file not found: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"NSD dataset {path} is not a readable HDF5 file: {exc}") from exc
    with f:
        if f.attrs.get("format") != DATASET_FORMAT:
            raise ValueError(f"{path} is not a {DATASET_FORMAT} file; prepare it with training.prepare_nsd.")
        yield f


def dataset_subject(f) -> Subject:
    """The subject (voxel space) stored in an open dataset."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "subject.npz"
        path.write_bytes(f["subject/npz"][()].tobytes())
        return Subject.load(path)


def nsd_reference_name(nsd_id: int) -> str:
    """How records name an NSD start image: ``nsd-<73k id>`` (the dataset's own image name)."""
    return f"nsd-{int(nsd_id)}"


def nsd_image(dataset, nsd_id) -> PIL.Image.Image:
    """The image of NSD id ``nsd_id`` (0-based 73k id) in the prepared NSD ``dataset``."""
    if isinstance(nsd_id, bool) or not isinstance(nsd_id, (int, np.integer)) or not 0 <= nsd_id < 73000:
        raise ValueError(f"`NSD image id` must be a 0-based 73k id (nsdId), an integer from 0 to 72999, got {nsd_id!r}.")
    with open_dataset(dataset) as f:
        if (f.attrs.get("source") or "") != "nsd":
            raise ValueError(f"{Path(dataset).name} was not prepared from NSD (source {f.attrs.get('source')!r}); "
                             "NSD image ids name images of a dataset from training.prepare_nsd.")
        ids = f["images/ids"][()]
        rows = np.flatnonzero(ids == int(nsd_id))
        if not len(rows):
            near = "" if not (ids == int(nsd_id) - 1).any() else \
                f"; {int(nsd_id) - 1} is (a 1-based id from subjectim/sharedix is one more than the 0-based nsdId)"
            raise ValueError(f"NSD image {int(nsd_id)} is not in {Path(dataset).name}: it holds {len(ids)} images, "
                             f"ids {int(ids.min())}..{int(ids.max())}{near}.")
        return PIL.Image.fromarray(f["images/pixels"][int(rows[0])])


def test_images(dataset) -> list[PIL.Image.Image]:
    """The test split's images of ``dataset`` in its order (NSD: the shared images the subject saw)."""
    with open_dataset(dataset) as f:
        rows = f["test/image_index"][()]
        return [PIL.Image.fromarray(f["images/pixels"][int(r)]) for r in rows]
