"""Atomic text and CSV writes (temp file + rename): a crash never leaves a half-written file."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from ..cache import private_tmp

__all__ = ["write_atomic", "csv_text", "write_csv", "save_figure"]


def write_atomic(path, data: str | bytes) -> Path:
    path = Path(path)
    tmp = private_tmp(path)
    tmp.write_bytes(data) if isinstance(data, bytes) else tmp.write_text(data)
    tmp.replace(path)
    return path


def csv_text(rows: list[dict], columns=None) -> str:
    """CSV of ``rows`` with ``columns`` (default: the first row's keys; other keys are ignored)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns or rows[0]), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_csv(path, rows: list[dict], columns=None) -> Path:
    return write_atomic(path, csv_text(rows, columns))


def save_figure(fig, path) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    tmp = private_tmp(path, ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
