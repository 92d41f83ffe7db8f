"""Server paths a form may name: only under the app's data folder and the folders allowed at start-up.

Every refusal is the same message, whether or not the path exists, and names no server folder, so no form
(Train's dataset and backbone, Split region's image folder, an NSD start image's dataset) can be used to
probe the server's files.
"""
from __future__ import annotations

from pathlib import Path

from .registry import ServiceError

__all__ = ["inside_roots", "refused"]


def refused(what: str, value: str) -> ServiceError:
    shown = value if len(value) <= 80 else value[:80] + "…"
    return ServiceError(f"{what} {shown!r} is not available to the app: use a {what.lower()} inside the app's data "
                        "folder or a folder allowed at start-up (--train-roots).")


def inside_roots(settings, raw: str, what: str, want_dir: bool | None) -> Path:
    """``raw`` resolved (symlinks too) when it is an existing folder (``want_dir``), file (not ``want_dir``) or
    either (None) under one of ``settings.allowed_roots``; else ``refused``."""
    try:
        path = Path(raw).expanduser()
        path = (path if path.is_absolute() else Path.cwd() / path).resolve()
        ok = path.exists() if want_dir is None else path.is_dir() if want_dir else path.is_file()
    except (OSError, RuntimeError, ValueError):
        ok = False
    if not ok or not any(path.is_relative_to(root) for root in settings.allowed_roots):
        raise refused(what, raw)
    return path
