"""Where braindive keeps derived files (ROI caches, flatmap geometry, the demo bundle)."""
from __future__ import annotations

import os
import threading
from pathlib import Path

__all__ = ["cache_dir", "set_cache_dir", "private_tmp"]

_ROOT: Path | None = None


def set_cache_dir(path) -> None:
    """Use ``path`` as the root of braindive's on-disk caches (``None``: the default)."""
    global _ROOT
    _ROOT = Path(path) if path is not None else None


def cache_dir(*parts: str) -> Path:
    """A cache folder (created); default root ``~/.cache/braindive``."""
    root = _ROOT or Path.home() / ".cache" / "braindive"
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def private_tmp(path: Path, suffix: str = ".tmp") -> Path:
    """A temporary name beside ``path``, unique to this process and thread, to write then rename over ``path``.

    Concurrent builders of the same cache entry (app, CLI, test workers) then never write into each
    other's files; the last rename wins with a complete file.
    """
    return path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}{suffix}")
