"""Logging set-up and error reporting shared by the training command-line tools."""
from __future__ import annotations

import logging
from contextlib import contextmanager

__all__ = ["configure_logging", "cli_errors"]


def configure_logging(level: int = logging.INFO) -> None:
    """Log ``training.*`` messages at ``level`` (other libraries: warnings only) as ``[module] message``."""
    logging.basicConfig(level=logging.WARNING, format="[%(name)s] %(message)s")
    logging.getLogger("training").setLevel(level)


@contextmanager
def cli_errors():
    """Turn input errors (bad value, missing or unreadable file, weights that cannot be fetched) into one
    line ``error: ...``."""
    try:
        yield
    except (ValueError, OSError, RuntimeError) as exc:  # OSError: missing or unreadable files and folders
        raise SystemExit("error: " + " ".join(str(exc).split())) from exc
