"""The SQL of a catalog's ``index.sqlite``: schema, the columns of a description, the migration of older indexes,
and filters as WHERE clauses (``braindive.catalog.Catalog`` owns the connections and the files)."""
from __future__ import annotations

import datetime as dt
import logging
import sqlite3

from .description import GenerationDescription, describe_record, measured_value

__all__ = ["SCHEMA", "FILTERS", "COLUMN_OF", "DESCRIPTION_FIELDS", "columns", "migrate", "where"]

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,
    created TEXT NOT NULL,
    subject TEXT NOT NULL,
    target TEXT NOT NULL,
    seed INTEGER NOT NULL,
    objective REAL,
    guidance_scale REAL,
    steps INTEGER,
    model TEXT,
    encoder TEXT,
    run_id TEXT
);
CREATE INDEX IF NOT EXISTS images_subject_target ON images (subject, target, created);
CREATE TABLE IF NOT EXISTS packages (
    id TEXT PRIMARY KEY,
    created TEXT NOT NULL,
    path TEXT NOT NULL,
    hash TEXT NOT NULL,
    n_images INTEGER NOT NULL,
    record TEXT NOT NULL
);
"""
# columns added after the first release (migrated with ALTER TABLE; ``kind IS NULL`` marks rows to backfill)
_NEW_COLUMNS = {"kind": "TEXT", "target_b": "TEXT", "weight": "REAL", "hemisphere": "TEXT", "label": "TEXT",
                "subject_space": "TEXT", "scheduler": "TEXT", "mode": "TEXT", "sag": "REAL", "prompt": "TEXT",
                "owner": "TEXT NOT NULL DEFAULT ''"}
COLUMN_OF = {"scale": "guidance_scale"}  # description field -> index column, where the names differ
DESCRIPTION_FIELDS = tuple(GenerationDescription.__dataclass_fields__)
FILTERS = ("subject", "subject_space", "target", "label", "kind", "encoder")


def columns(description: GenerationDescription, value: float | None) -> dict:
    """Index columns of a description and its measured value."""
    values = description.as_dict()
    return {**{COLUMN_OF.get(f, f): values[f] for f in (*DESCRIPTION_FIELDS, "hemisphere", "label")},
            "objective": value}


def migrate(db: sqlite3.Connection, read_record) -> None:
    """Add the description columns to an older index and fill them from each row's record (``read_record(id)``)."""
    db.execute("BEGIN IMMEDIATE")  # one process migrates; the others then find nothing to do
    try:
        have = {r[1] for r in db.execute("PRAGMA table_info(images)")}
        for name, sql_type in _NEW_COLUMNS.items():
            if name not in have:
                db.execute(f"ALTER TABLE images ADD COLUMN {name} {sql_type}")
        db.execute("CREATE INDEX IF NOT EXISTS images_owner_label ON images (owner, label, created)")
        for (entry_id,) in db.execute("SELECT id FROM images WHERE kind IS NULL").fetchall():
            try:
                record = read_record(entry_id)
                values = columns(describe_record(record), measured_value(record))
            except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
                log.warning("catalog row %s keeps no objective kind: its record cannot be read (%s)", entry_id, exc)
                values = {"kind": ""}
            db.execute(f"UPDATE images SET {', '.join(f'{c} = ?' for c in values)} WHERE id = ?",
                       (*values.values(), entry_id))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def where(since=None, until=None, owner=None, **filters) -> tuple[str, list]:
    """``WHERE ...`` and its arguments: equal ``filters`` (empty ones ignored), the owner (None: anyone's) and the
    creation dates ``since``/``until`` (``YYYY-MM-DD``, a bare date meaning the whole day, or ISO timestamps)."""
    clauses, args = [], []
    for name, value in filters.items():
        if value:
            clauses.append(f"{name} = ?")
            args.append(str(value))
    if owner is not None:
        clauses.append("owner = ?")
        args.append(str(owner))
    start, end = _check_date(since, "since"), _check_date(until, "until")
    if start and end and start[:10] > end[:10]:
        raise ValueError(f"`since` ({since}) is after `until` ({until}): no date can match.")
    for op, value in ((">=", start), ("<=", _end_of_day(end))):
        if value:
            clauses.append(f"created {op} ?")
            args.append(value)
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), args


def _check_date(value, argument: str) -> str | None:
    """``value`` if it is a date ``YYYY-MM-DD`` or an ISO timestamp; ``ValueError`` naming ``argument`` otherwise."""
    if value is None or str(value).strip() == "":
        return None
    value = str(value).strip()
    try:
        if len(value) == 10:
            dt.date.fromisoformat(value)
        else:
            dt.datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)  # "Z": Python 3.10
    except ValueError:
        raise ValueError(f"`{argument}` must be a date YYYY-MM-DD (e.g. 2026-11-29), got {value!r}.") from None
    return value


def _end_of_day(until: str | None) -> str | None:
    """A bare date ``YYYY-MM-DD`` means the whole day."""
    return f"{until}T23:59:59.999999+99:99" if until and len(until) == 10 else until
