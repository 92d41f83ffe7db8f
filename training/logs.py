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
    """Turn input errors (bad value, missing file, weights that cannot be fetched) into ``error: ...``."""
    try:
        yield
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise SystemExit(f"error: {exc}") from exc
