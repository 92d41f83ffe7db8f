"""Logging set-up and error reporting shared by the training command-line tools."""
from __future__ import annotations

import logging
import sys
from contextlib import contextmanager

__all__ = ["configure_logging", "cli_errors"]


def configure_logging(level: int = logging.INFO) -> None:
    """Log ``training.*`` messages at ``level`` (other libraries: warnings only) as ``[module] message``.

    Under ``python -m training.X`` the tool's own logger is ``__main__``: it logs at ``level`` too, under its
    module's name.
    """
    logging.basicConfig(level=logging.WARNING, format="[%(name)s] %(message)s")
    logging.getLogger("training").setLevel(level)
    main = logging.getLogger("__main__")
    main.setLevel(level)
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and not any(isinstance(f, _ModuleName) for f in main.filters):
        main.addFilter(_ModuleName(spec.name))


class _ModuleName(logging.Filter):
    """Names the records of the ``__main__`` logger by the module that runs as ``__main__``."""

    def __init__(self, name: str):
        super().__init__()
        self.module = name

    def filter(self, record: logging.LogRecord) -> bool:
        record.name = self.module
        return True


@contextmanager
def cli_errors():
    """Turn input errors (bad value, missing or unreadable file, weights that cannot be fetched) into one
    line ``error: ...``."""
    try:
        yield
    except (ValueError, OSError, RuntimeError) as exc:  # OSError: missing or unreadable files and folders
        raise SystemExit("error: " + " ".join(str(exc).split())) from exc
