"""Reading NSD's files with one-line errors that name the file.

Every read of an NSD input (NIfTI / MGH volumes, HDF5 betas and stimuli, the design ``.mat``) goes
through ``reading`` or the helpers here, so a truncated or corrupt file ends in
``ValueError("Cannot read NSD <what> <path>: <reason>")`` instead of a library traceback.
Gzipped volumes (``.nii.gz``, ``.mgz``) are read to the end of the stream, so gzip's CRC and length
check catches corruption that the decoded bytes alone would not show.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

__all__ = ["FILE_ERRORS", "reading", "read_header", "read_volume", "read_array"]

# What libraries raise on damaged files (FileNotFoundError is reported by ``nsd_layout.require``).
FILE_ERRORS = (EOFError, OSError, zlib.error, struct.error)
# nibabel also reports a damaged header as a bad dtype code (KeyError) or an impossible value.
_IMAGE_ERRORS = FILE_ERRORS + (ImageFileError, HeaderDataError, KeyError, ValueError)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "no details"
    return f"{type(exc).__name__}: {text}"


@contextmanager
def reading(path, what: str, errors: tuple = FILE_ERRORS):
    """Turn ``errors`` raised while reading ``path`` into a one-line ``ValueError`` naming the file."""
    try:
        yield
    except FileNotFoundError:
        raise
    except errors as exc:
        raise ValueError(f"Cannot read NSD {what} {Path(path)} (truncated or corrupt?): {_one_line(exc)}") from exc


def read_header(path, what: str):
    """The nibabel image of ``path`` without its data (shape, affine), or a one-line error."""
    with reading(path, what, _IMAGE_ERRORS):
        return nib.load(str(path))


def read_volume(path, what: str) -> np.ndarray:
    """The full data array of a NIfTI / MGH file; gzipped files are checked to the end of the stream."""
    path = Path(path)
    with reading(path, what, _IMAGE_ERRORS):
        image = nib.load(str(path), mmap=False)  # a memory map would fault if the file changed under it
        if path.suffix not in (".gz", ".mgz"):
            return np.asarray(image.dataobj)
        with gzip.open(path, "rb") as stream:
            holders = {name: nib.FileHolder(fileobj=stream) for name in image.file_map}
            data = np.asarray(type(image).from_file_map(holders).dataobj)
            while stream.read(1 << 20):  # reaching the end makes gzip verify the CRC and length
                pass
        return data


def read_array(path, what: str) -> np.ndarray:
    """A ``.npy`` array (never unpickled), or a one-line error naming the file."""
    with reading(path, what, FILE_ERRORS + (ValueError,)):  # numpy: ValueError for a short or bad header
        return np.load(path, allow_pickle=False)
