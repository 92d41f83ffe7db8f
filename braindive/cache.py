"""Where braindive keeps derived files (ROI caches, flatmap geometry, the demo bundle)."""
from __future__ import annotations

import os
import re
import socket
import threading
import time
from pathlib import Path

__all__ = ["cache_dir", "set_cache_dir", "private_tmp", "remove_stale_temp_files", "process_alive"]

_ROOT: Path | None = None
_HOST = re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname())[:64] or "host"
# private_tmp's names: .<name>.<pid>-<thread>@<host><suffix> (before 2026-12: without @<host>)
_TEMP = re.compile(r"\.(?P<name>.+?)\.(?P<pid>\d+)-\d+(?:@(?P<host>[A-Za-z0-9_-]+))?(?P<suffix>\.[A-Za-z0-9.]+)")


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
    other's files; the last rename wins with a complete file. The name says which process on which host
    writes it, so ``remove_stale_temp_files`` can tell a leftover from a file being written.
    """
    return path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}@{_HOST}{suffix}")


def process_alive(pid) -> bool:
    """Whether process ``pid`` runs on this machine (a pid that is not a positive int: no)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_files(folder, max_age: float = 86400.0) -> list[Path]:
    """Remove ``private_tmp`` files in ``folder`` left by a process that died (``kill -9``, a crash); returns them.

    A temporary file is stale when its writer was on this host and is no longer running, or (a writer on
    another host sharing the folder) when it is older than ``max_age`` seconds. Other files are left alone.
    """
    removed = []
    try:
        names = list(Path(folder).iterdir())
    except OSError:
        return removed
    now = time.time()
    for path in names:
        match = _TEMP.fullmatch(path.name)
        if match is None or path.is_dir():
            continue
        try:
            here = match["host"] in (None, _HOST)
            if (here and not process_alive(int(match["pid"]))) or now - path.lstat().st_mtime > max_age:
                path.unlink()
                removed.append(path)
        except OSError:
            continue
    return removed
