"""Gradio's image cache written atomically, so a download never meets a file being rewritten.

Gradio (6.31) saves every image a callback returns (previews, gallery, activation maps) under a
name derived from its bytes, and rewrites that file in place when the same bytes come again
(``Path.write_bytes`` truncates first). Under load two runs with the same settings and seed make
the same images; a client fetching the first copy while the second is written gets fewer bytes
than the Content-Length it was promised ("peer closed connection without sending complete message
body" in ``benchmarks/load.py``). ``install`` replaces that one function by a version that writes
a new file under a private name and renames it into place, and leaves an existing copy alone.
"""
from __future__ import annotations

import os
from pathlib import Path

import gradio as gr
from gradio import processing_utils

from braindive.cache import private_tmp

from .service import storage_error

__all__ = ["install", "save_pil_to_cache"]


def save_pil_to_cache(img, cache_dir: str, name: str = "image", format: str = "webp") -> str:
    """Gradio's ``processing_utils.save_pil_to_cache``, with the file never rewritten in place."""
    data = processing_utils.encode_pil_to_bytes(img, format)
    folder = Path(cache_dir) / processing_utils.hash_bytes(data)
    folder.mkdir(exist_ok=True, parents=True)
    path = (folder / f"{name}.{format}").resolve()
    if path.exists():  # the same bytes: keep the copy clients may be reading; touch it, as Gradio does for
        os.utime(path)  # files (delete_cache ages them by ctime)
        return str(path)
    tmp = private_tmp(path)
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as exc:  # e.g. a full disk: no partial file stays, and the page says why
        raise gr.Error(str(storage_error(exc))) from exc
    finally:
        tmp.unlink(missing_ok=True)
    return str(path)


def install() -> None:
    """Make Gradio's components save images with ``save_pil_to_cache`` (they call it through the module)."""
    processing_utils.save_pil_to_cache = save_pil_to_cache
