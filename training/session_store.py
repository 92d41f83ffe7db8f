"""Resumable per-session results: one ``session_NN.npy`` per finished session in a work folder.

Each file is written to a temporary name and renamed, so a file that exists is complete; a rerun
skips those sessions. ``manifest.json`` records what the files were computed from, and a work folder
made for other inputs is refused instead of silently mixed in.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

__all__ = ["SessionStore"]


class SessionStore:
    def __init__(self, folder, manifest: dict):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / "manifest.json"
        if path.is_file():
            found = json.loads(path.read_text())
            if found != manifest:
                keys = sorted(set(found) | set(manifest))
                diff = {k: (found.get(k), manifest.get(k)) for k in keys if found.get(k) != manifest.get(k)}
                raise ValueError(f"Work folder {self.folder} was made for other inputs (found, now): {diff}. "
                                 "Delete it or pass another --work folder.")
        else:
            path.write_text(json.dumps(manifest, indent=2, sort_keys=True))

    def path(self, session: int) -> Path:
        return self.folder / f"session_{session:02d}.npy"

    def done(self, session: int) -> bool:
        return self.path(session).is_file()

    def save(self, session: int, values: np.ndarray) -> None:
        tmp = self.folder / f".session_{session:02d}.tmp.npy"
        np.save(tmp, np.ascontiguousarray(values, dtype=np.float32))
        tmp.replace(self.path(session))

    def load(self, session: int) -> np.ndarray:
        """The session's array, memory-mapped (read-only)."""
        return np.load(self.path(session), mmap_mode="r")

    def remove(self) -> None:
        shutil.rmtree(self.folder)
