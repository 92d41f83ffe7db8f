"""Results catalog: every generated image with its metadata, indexed in SQLite.

Layout under the catalog root::

    images/<id>.png      the image
    images/<id>.json     its full provenance record (see ``braindive.records``)
    images/<id>.npy      optional: the encoder's predicted activity per voxel (float32)
    index.sqlite         one row per image (WAL mode: safe with concurrent writers)

Export writes a ZIP with the PNGs, their JSON, and ``manifest.csv`` — a stimulus list for an fMRI
experiment (file name, subject, target, seed, predicted objective, parameters).
"""
from __future__ import annotations

import csv
import io
import json
import sqlite3
import uuid
import zipfile
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cache import private_tmp

__all__ = ["Catalog", "Entry"]

_SCHEMA = """
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
    run_id TEXT,
    owner TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS images_subject_target ON images (subject, target, created);
"""
MANIFEST_COLUMNS = ("file", "subject", "target", "seed", "predicted_objective", "brain_guidance_scale",
                    "num_inference_steps", "model", "encoder", "created", "id")


@dataclass(frozen=True)
class Entry:
    id: str
    created: str
    subject: str
    target: str
    seed: int
    objective: float | None
    guidance_scale: float | None
    steps: int | None
    model: str
    encoder: str
    run_id: str
    image_path: Path
    record_path: Path
    owner: str = ""  # who made it ("" = shared); History filters by it on a public Space


class Catalog:
    """A folder of generated images with an SQLite index."""

    def __init__(self, root):
        self.root = Path(root)
        (self.root / "images").mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "index.sqlite"
        with closing(self._connect()) as db, db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            if "owner" not in {row["name"] for row in db.execute("PRAGMA table_info(images)")}:  # an older index
                db.execute("ALTER TABLE images ADD COLUMN owner TEXT NOT NULL DEFAULT ''")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.db_path, timeout=30.0)
        db.row_factory = sqlite3.Row
        return db

    def add(self, image, record: dict, run_id: str = "", activations=None, entry_id: str | None = None) -> Entry:
        """Store one image, its record and optionally its predicted activity; files first, then the index row.

        Exactly once per ``entry_id`` (a deterministic id, e.g. from ``braindive.batch``): if that id is already
        indexed nothing is written and the stored entry is returned. Files are written under private names and
        renamed into place, and the row comes last, so an indexed entry always has complete files.
        """
        if entry_id is not None:
            existing = self.find(entry_id)
            if existing is not None:
                return existing
        entry_id = entry_id or uuid.uuid4().hex[:16]
        image_path = self.root / "images" / f"{entry_id}.png"
        record_path = image_path.with_suffix(".json")
        record = {**record, "id": entry_id, "run_id": run_id}
        _atomic(image_path, lambda f: image.save(f, format="PNG"))
        _atomic(record_path, lambda f: f.write(json.dumps(record, indent=2).encode()))
        if activations is not None:
            _atomic(image_path.with_suffix(".npy"), lambda f: np.save(f, np.asarray(activations, dtype=np.float32)))
        params = record.get("parameters", {})
        row = (entry_id, record["created"], record["subject"], record["target"], int(record["seed"]),
               record.get("predicted_objective"), params.get("brain_guidance_scale"), params.get("num_inference_steps"),
               record.get("model", ""), record.get("encoder", ""), run_id, str(record.get("owner", "")))
        columns = ("id", "created", "subject", "target", "seed", "objective", "guidance_scale", "steps", "model",
                   "encoder", "run_id", "owner")
        with closing(self._connect()) as db, db:
            db.execute(f"INSERT OR IGNORE INTO images ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", row)
        return self.get(entry_id)

    def find(self, entry_id: str) -> Entry | None:
        """The entry with ``entry_id``, or None."""
        try:
            return self.get(entry_id)
        except KeyError:
            return None

    def query(self, subject: str | None = None, target: str | None = None, since: str | None = None,
              until: str | None = None, limit: int = 200, owner: str | None = None) -> list[Entry]:
        """Newest first; ``since``/``until`` are ISO dates or timestamps (inclusive); ``owner`` (if not None): only theirs."""
        clauses, args = (["owner = ?"], [owner]) if owner is not None else ([], [])
        for column, op, value in (("subject", "=", subject), ("target", "=", target), ("created", ">=", since),
                                  ("created", "<=", _end_of_day(until))):
            if value:
                clauses.append(f"{column} {op} ?")
                args.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with closing(self._connect()) as db:
            rows = db.execute(f"SELECT * FROM images {where} ORDER BY created DESC, rowid DESC LIMIT ?",
                              (*args, int(limit))).fetchall()
        return [self._entry(dict(r)) for r in rows]

    def activations(self, entry_id: str) -> np.ndarray | None:
        path = self.get(entry_id).image_path.with_suffix(".npy")
        return np.load(path, allow_pickle=False) if path.is_file() else None

    def record(self, entry_id: str) -> dict:
        return json.loads(self.get(entry_id).record_path.read_text())

    def get(self, entry_id: str) -> Entry:
        with closing(self._connect()) as db:
            row = db.execute("SELECT * FROM images WHERE id = ?", (entry_id,)).fetchone()
        if row is None:
            raise KeyError(f"No catalog entry with id {entry_id!r}.")
        return self._entry(dict(row))

    def distinct(self, column: str, owner: str | None = None) -> list[str]:
        if column not in ("subject", "target"):
            raise ValueError(f"`column` must be 'subject' or 'target', got {column!r}.")
        where, args = ("WHERE owner = ?", (owner,)) if owner is not None else ("", ())
        with closing(self._connect()) as db:
            return [r[0] for r in db.execute(f"SELECT DISTINCT {column} FROM images {where} ORDER BY {column}", args)]

    def export_zip(self, entry_ids, path) -> Path:
        """ZIP of the chosen images + JSON records + ``manifest.csv``."""
        entries = [self.get(i) for i in entry_ids]
        if not entries:
            raise ValueError("Nothing to export: select at least one image.")
        path = Path(path)
        manifest = io.StringIO()
        writer = csv.DictWriter(manifest, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        tmp = path.with_name(path.name + ".tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for e in entries:
                name = f"{e.subject}_{e.target}_seed{e.seed:06d}_{e.id}.png"
                zf.write(e.image_path, f"stimuli/{name}")
                zf.write(e.record_path, f"metadata/{Path(name).with_suffix('.json')}")
                writer.writerow({"file": f"stimuli/{name}", "subject": e.subject, "target": e.target, "seed": e.seed,
                                 "predicted_objective": e.objective, "brain_guidance_scale": e.guidance_scale,
                                 "num_inference_steps": e.steps, "model": e.model, "encoder": e.encoder,
                                 "created": e.created, "id": e.id})
            zf.writestr("manifest.csv", manifest.getvalue())
        tmp.replace(path)
        return path

    def _entry(self, row: dict) -> Entry:
        image_path = self.root / "images" / f"{row['id']}.png"
        return Entry(**row, image_path=image_path, record_path=image_path.with_suffix(".json"))


def _atomic(path: Path, write) -> None:
    """``write(file)`` to a private temporary name beside ``path``, then rename it over ``path``."""
    tmp = private_tmp(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _end_of_day(until: str | None) -> str | None:
    """A bare date ``YYYY-MM-DD`` means the whole day."""
    return f"{until}T23:59:59.999999+99:99" if until and len(until) == 10 else until
