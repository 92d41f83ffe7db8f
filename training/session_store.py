"""Resumable per-session results: one ``session_NN.npy`` per finished session in a work folder.

A session's result is reused only while the input files it was computed from are unchanged: next
to ``session_NN.npy``, ``session_NN.json`` records the size, modification time and inode change
time (ns) of every input file, and ``manifest.json`` the same for the files all sessions depend on
(the voxel mask) plus the computation's version. A changed session file makes that session be
recomputed (so is a result whose size differs from the one recorded); a changed mask or version
makes every session be recomputed. ``manifest.json`` also records what the folder is for (subject,
space, mask, ...): a folder made for other inputs is refused instead of silently mixed in. Files
are written to temporary names and renamed.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

__all__ = ["SessionStore", "file_stamps"]

log = logging.getLogger(__name__)


def file_stamps(paths) -> dict[str, list[int]]:
    """``{absolute path: [size, mtime_ns, ctime_ns]}`` of each file."""
    stamps = {}
    for path in paths:
        st = os.stat(path)
        stamps[str(Path(path).resolve())] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    return stamps


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class SessionStore:
    """Session results in ``folder`` for the inputs named by ``identity``.

    Args:
        folder: the work folder (created if needed).
        identity: what the folder is for; a folder made for another identity is refused.
        shared_files: input files every session depends on; when one changes, all sessions are stale.
        version: the computation's version; results of another version are stale.
    """

    def __init__(self, folder, identity: dict, shared_files=(), version: str = ""):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / "manifest.json"
        manifest = {"identity": identity, "shared_inputs": file_stamps(shared_files), "version": version}
        found = _read_json(path) if path.is_file() else None
        if found is not None:
            found_identity = found.get("identity", found)  # manifests before resume keys held the identity only
            if found_identity != identity:
                keys = sorted(set(found_identity) | set(identity))
                diff = {k: (found_identity.get(k), identity.get(k)) for k in keys
                        if found_identity.get(k) != identity.get(k)}
                raise ValueError(f"Work folder {self.folder} was made for other inputs (found, now): {diff}. "
                                 "Delete it or pass another --work folder.")
        if found != manifest:
            stale = sorted(self.folder.glob("session_*"))
            if stale:
                log.info("work folder %s: its manifest, mask files or method changed since its %d session results "
                         "were computed; recomputing them", self.folder, len([p for p in stale if p.suffix == ".npy"]))
            for p in stale:
                p.unlink()
            _write_json(path, manifest)

    def path(self, session: int) -> Path:
        return self.folder / f"session_{session:02d}.npy"

    def _record(self, session: int) -> Path:
        return self.folder / f"session_{session:02d}.json"

    def done(self, session: int, inputs) -> bool:
        """True if the session's result exists and its input files ``inputs`` are unchanged."""
        record = _read_json(self._record(session)) if self._record(session).is_file() else None
        if record is None or not self.path(session).is_file():
            return False
        if record.get("result_bytes") != self.path(session).stat().st_size:
            log.info("session %d: its saved result is damaged (size differs); recomputing", session)
            return False
        if record.get("inputs") != file_stamps(inputs):
            log.info("session %d: input files changed since its result was computed (size or time); recomputing",
                     session)
            return False
        return True

    def save(self, session: int, values: np.ndarray, inputs, info: dict | None = None) -> None:
        """Store ``values`` computed from the files ``inputs``, with JSON-able ``info`` (see ``info``)."""
        self._record(session).unlink(missing_ok=True)
        tmp = self.folder / f".session_{session:02d}.tmp.npy"
        np.save(tmp, np.ascontiguousarray(values, dtype=np.float32))
        tmp.replace(self.path(session))
        _write_json(self._record(session), {"inputs": file_stamps(inputs), "info": info or {},
                                            "result_bytes": self.path(session).stat().st_size})

    def load(self, session: int) -> np.ndarray:
        """The session's array, memory-mapped (read-only)."""
        return np.load(self.path(session), mmap_mode="r")

    def info(self, session: int) -> dict:
        """The ``info`` saved with the session's result."""
        return (_read_json(self._record(session)) or {}).get("info", {})

    def n_done(self) -> int:
        return len(list(self.folder.glob("session_*.npy")))

    def remove(self) -> None:
        shutil.rmtree(self.folder)
