"""Results catalog: every generated image with its metadata, indexed in SQLite.

Layout under the catalog root::

    images/<id>.png      the image
    images/<id>.json     its full provenance record (see ``braindive.records``)
    images/<id>.npy      optional: the encoder's predicted activity per voxel (float32)
    unguided/<key>.png   the unguided image of a seed, and ``.npy`` its activity: shared by every target of that
                         seed (``key``: ``braindive.generate.baseline_key``, named by the record's ``baseline_key``)
    index.sqlite         one row per image (WAL mode: safe with concurrent writers), one per stimulus package

Each row holds the generation's ``GenerationDescription`` (objective kind, regions, hemisphere, label,
encoder, subject space, scheduler, mode, scales, prompt, seed), its owner and the predicted value of
its measure (e.g. FFA's mean, negative after minimising FFA); ``braindive.catalog_index`` holds the SQL,
and migrates catalogs written before these columns existed on open, from their JSON records. Rows that
cannot be read and images whose files are missing are skipped and reported, never fatal (History and
``braindive.catalog_export``, the ZIP export, skip the same entries for the same reasons).
"""
from __future__ import annotations

import errno
import json
import logging
import re
import sqlite3
import uuid
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import catalog_index as index
from .cache import private_tmp, remove_stale_temp_files
from .description import GenerationDescription, describe_record, measured_value

__all__ = ["Catalog", "Entry", "Page"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    id: str
    created: str
    description: GenerationDescription
    objective: float | None            # predicted value of ``description.measure`` (sign as measured)
    run_id: str
    owner: str
    image_path: Path
    record_path: Path

    subject = property(lambda self: self.description.subject)
    target = property(lambda self: self.description.target)
    seed = property(lambda self: self.description.seed)
    kind = property(lambda self: self.description.kind)
    label = property(lambda self: self.description.label)
    encoder = property(lambda self: self.description.encoder)
    model = property(lambda self: self.description.model)
    guidance_scale = property(lambda self: self.description.scale)
    steps = property(lambda self: self.description.steps)

    @property
    def caption(self) -> str:
        return self.description.caption()

    @property
    def value_text(self) -> str:
        return self.description.value_text(self.objective)


@dataclass
class Page:
    """One page of a query: readable entries, the rows skipped (id, reason) and the number of matching rows."""

    entries: list[Entry]
    skipped: list[tuple[str, str]]
    total: int
    offset: int = 0


class Catalog:
    """A folder of generated images with an SQLite index."""

    def __init__(self, root):
        self.root = Path(root)
        (self.root / "images").mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "index.sqlite"
        for folder in (self.root / "images", self.root / "unguided", self.root / "evaluations", *(self.root / "runs").glob("*/")):
            for path in remove_stale_temp_files(folder):  # left by a killed writer (kill -9 of the app, batch driver)
                log.info("removed a stale temporary file: %s", path.relative_to(self.root))
        try:
            with closing(self._connect()) as db:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(index.SCHEMA)
                index.migrate(db, self._read_record)
        except sqlite3.OperationalError as exc:  # a full disk: SQLite cannot create its WAL files
            if "disk" not in str(exc) or not self.db_path.is_file():
                raise
            log.warning("catalog %s opened for reading only (%s); new results cannot be stored", self.root, exc)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.db_path, timeout=30.0)
        db.row_factory = sqlite3.Row
        return db

    def _reader(self) -> sqlite3.Connection:
        """A connection to read with. On a full disk SQLite cannot create its WAL files to open the index
        ("disk I/O error"): then the index file itself is read, as immutable, so History stays readable."""
        db = self._connect()
        try:
            db.execute("SELECT 1 FROM images LIMIT 1").fetchall()
            return db
        except sqlite3.OperationalError as exc:
            db.close()
            if not self.db_path.is_file():
                raise
            log.warning("catalog index read as immutable: %s", exc)
            db = sqlite3.connect(f"{self.db_path.resolve().as_uri()}?immutable=1", uri=True)
            db.row_factory = sqlite3.Row
            return db

    def add(self, image, record: dict, run_id: str = "", activations=None, owner: str = "",
            entry_id: str | None = None, extra: dict | None = None) -> Entry:
        """Store one image, its record and optionally its predicted activity; files first, then the index row.

        ``record`` is a ``generation_record``; ``owner`` scopes History on a shared server ('' = anyone's).
        Exactly once per ``entry_id`` (a deterministic id, e.g. from ``braindive.batch``): if that id is already
        indexed nothing is written and the stored entry is returned. Files are written under private names and
        renamed into place, and the row comes last, so an indexed entry always has complete files. ``extra``
        maps more file suffixes (``".unguided.png"``) to ``write(file)`` functions. If anything fails (e.g. a
        full disk: ``OSError`` ENOSPC, also when SQLite reports it) the entry's files are removed and no row is added.
        """
        if entry_id is not None:
            existing = self.find(entry_id)
            if existing is not None:
                return existing
        entry_id = entry_id or uuid.uuid4().hex[:16]
        image_path = self._image_path(entry_id)
        record_path = image_path.with_suffix(".json")
        description = describe_record(record)
        # the owner lives in the index only: records are served and exported, an owner may be a secret's hash
        record = {**{k: v for k, v in record.items() if k != "owner"}, "id": entry_id, "run_id": run_id}
        files = {".png": lambda f: image.save(f, format="PNG"),
                 ".json": lambda f: f.write(json.dumps(record, indent=2).encode()), **(extra or {})}
        if activations is not None:
            files[".npy"] = lambda f: np.save(f, np.asarray(activations, dtype=np.float32))
        row = {"id": entry_id, "created": record["created"], "run_id": run_id, "owner": owner,
               **index.columns(description, measured_value(record))}
        try:
            for suffix, write in files.items():
                _atomic(image_path.with_name(entry_id + suffix), write)
            with closing(self._connect()) as db, db:
                db.execute(f"INSERT OR IGNORE INTO images ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                           tuple(row.values()))
        except BaseException as exc:
            for suffix in files:
                image_path.with_name(entry_id + suffix).unlink(missing_ok=True)
            if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc):
                raise OSError(errno.ENOSPC, f"catalog index: {exc}") from exc
            raise
        return self.get(entry_id)

    def remove(self, entry_ids) -> None:
        """Delete entries (e.g. the results of a request that failed): their files first (space for SQLite on a
        full disk), then their rows."""
        entry_ids = list(entry_ids)
        if not entry_ids:
            return
        for entry_id in entry_ids:
            for path in self._image_path(entry_id).parent.glob(f"{entry_id}.*"):
                path.unlink(missing_ok=True)
        with closing(self._connect()) as db, db:
            db.executemany("DELETE FROM images WHERE id = ?", [(i,) for i in entry_ids])

    def hash_owners(self, keyed, prefix: str) -> int:
        """Replace every owner stored in the clear (not starting with ``prefix``) by ``keyed(owner)``; returns how many rows.

        Their records lose the ``owner`` field older versions wrote there (records are served and exported).
        """
        with closing(self._reader()) as db:
            rows = db.execute("SELECT id, owner FROM images WHERE owner != '' AND substr(owner, 1, ?) != ?",
                              (len(prefix), prefix)).fetchall()
        for row in rows:
            path = self._image_path(row["id"]).with_suffix(".json")
            try:
                record = json.loads(path.read_text())
                if isinstance(record, dict) and "owner" in record:
                    del record["owner"]
                    _atomic(path, lambda f: f.write(json.dumps(record, indent=2).encode()))
            except (OSError, ValueError) as exc:
                log.warning("catalog record %s keeps its owner field: %s", row["id"], exc)
            with closing(self._connect()) as db, db:
                db.execute("UPDATE images SET owner = ? WHERE id = ?", (keyed(row["owner"]), row["id"]))
        return len(rows)

    def find(self, entry_id: str) -> Entry | None:
        """The entry with ``entry_id``, or None."""
        try:
            return self.get(entry_id)
        except KeyError:
            return None

    def page(self, subject=None, target=None, since=None, until=None, limit: int | None = None, offset: int = 0, *,
             label=None, kind=None, encoder=None, subject_space=None, owner: str | None = None) -> Page:
        """Matching entries, newest first, ``limit`` of them from ``offset`` (None: all).

        ``since``/``until`` are dates ``YYYY-MM-DD`` or ISO timestamps (inclusive); ``owner`` None means
        everyone's. Rows that cannot be read and entries whose image file is missing are in ``skipped``.
        """
        where, args = index.where(subject=subject, target=target, label=label, kind=kind, encoder=encoder,
                                  subject_space=subject_space, owner=owner, since=since, until=until)
        if limit is not None and (int(limit) < 0 or int(offset) < 0):
            raise ValueError(f"`limit` and `offset` must be >= 0, got {limit!r} and {offset!r}.")
        with closing(self._reader()) as db:
            total = db.execute(f"SELECT COUNT(*) FROM images {where}", args).fetchone()[0]
            rows = db.execute(f"SELECT * FROM images {where} ORDER BY created DESC, rowid DESC LIMIT ? OFFSET ?",
                              (*args, -1 if limit is None else int(limit), int(offset))).fetchall()
        entries, skipped = [], []
        for row in rows:
            try:
                entry = self._entry(dict(row))
            except ValueError as exc:
                skipped.append((row["id"], f"unreadable catalog row: {exc}"))
                continue
            _sort(entry, entries, skipped)
        return Page(entries, skipped, total, int(offset))

    def readable(self, entry_ids) -> tuple[list[Entry], list[tuple[str, str]]]:
        """The entries of ``entry_ids`` that History shows, in order, and ``(id, reason)`` for each of the others
        (gone, an unreadable row, a missing or corrupt file: the reasons ``page`` gives)."""
        entries, skipped = [], []
        for entry_id in entry_ids:
            try:
                _sort(self.get(entry_id), entries, skipped)
            except KeyError as exc:
                skipped.append((entry_id, str(exc).strip("'\"")))
            except ValueError as exc:
                skipped.append((entry_id, f"unreadable catalog row: {exc}"))
        return entries, skipped

    def query(self, subject=None, target=None, since=None, until=None, limit: int | None = None, **filters) -> list[Entry]:
        """``page(...).entries``: readable entries with their images, newest first; skipped rows are logged."""
        page = self.page(subject, target, since, until, limit, **filters)
        for entry_id, reason in page.skipped:
            log.warning("catalog entry %s skipped: %s", entry_id, reason)
        return page.entries

    def activations(self, entry_id: str) -> np.ndarray | None:
        """The stored predicted activity (None if none was stored); ``ValueError`` when its file is damaged."""
        path = self.get(entry_id).image_path.with_suffix(".npy")
        if not path.is_file():
            return None
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise ValueError(f"The predicted activations of {entry_id} ({path.name}) cannot be read: the file is "
                             f"truncated or corrupt ({type(exc).__name__}).") from None

    def record(self, entry_id: str) -> dict:
        return json.loads(self.get(entry_id).record_path.read_text())

    def _read_record(self, entry_id: str) -> dict:
        """The JSON record of an id, read without its index row (migration: the row lacks the description)."""
        return json.loads(self._image_path(entry_id).with_suffix(".json").read_text())

    def update_record(self, entry_id: str, changes: dict) -> dict:
        """Set top-level fields of a stored record (e.g. ``rerank``); the JSON is rewritten atomically and the
        index row rewritten from it, so indexed columns stay in sync. Returns the new record."""
        record = {**self.record(entry_id), **changes, "id": entry_id}
        values = index.columns(describe_record(record), measured_value(record))
        _atomic(self._image_path(entry_id).with_suffix(".json"),
                lambda f: f.write(json.dumps(record, indent=2).encode()))
        with closing(self._connect()) as db, db:
            db.execute(f"UPDATE images SET {', '.join(f'{c} = ?' for c in values)} WHERE id = ?",
                       (*values.values(), entry_id))
        return record

    # ------------------------------------------------------------------ unguided baselines (one per seed, any target)

    def baseline_paths(self, key: str) -> tuple[Path, Path]:
        if not re.fullmatch(r"[0-9a-f]{16}", str(key)):
            raise ValueError(f"`key` must be a baseline key (16 hex digits), got {key!r}.")
        return self.root / "unguided" / f"{key}.png", self.root / "unguided" / f"{key}.npy"

    def get_baseline(self, key: str):
        """``(PIL image, activations)`` stored under ``key``, or None."""
        from PIL import Image

        png, npy = self.baseline_paths(key)
        if not (png.is_file() and npy.is_file()):
            return None
        with Image.open(png) as image:
            return image.convert("RGB"), np.load(npy, allow_pickle=False)

    def put_baseline(self, key: str, image, activations) -> None:
        """Store a seed's unguided image and activations (map first: a PNG present means both are)."""
        png, npy = self.baseline_paths(key)
        png.parent.mkdir(exist_ok=True)
        _atomic(npy, lambda f: np.save(f, np.asarray(activations, dtype=np.float32)))
        _atomic(png, lambda f: image.save(f, format="PNG"))

    def unguided_paths(self, entry_id: str) -> tuple[Path | None, Path | None]:
        """The entry's unguided image and map, where stored (older entries kept them beside their image)."""
        key = self.record(entry_id).get("baseline_key")
        image_path = self.get(entry_id).image_path
        png, npy = self.baseline_paths(key) if key else (image_path.with_suffix(".unguided.png"),
                                                         image_path.with_suffix(".unguided.npy"))
        return (png if png.is_file() else None), (npy if npy.is_file() else None)

    def get(self, entry_id: str) -> Entry:
        """The entry ``entry_id``; ``KeyError`` if absent, ``ValueError`` if its row cannot be read."""
        with closing(self._reader()) as db:
            row = db.execute("SELECT * FROM images WHERE id = ?", (entry_id,)).fetchone()
        if row is None:
            raise KeyError(f"No catalog entry with id {entry_id!r}.")
        return self._entry(dict(row))

    def distinct(self, column: str, owner: str | None = None) -> list[str]:
        """Distinct non-empty values of a filter column (``subject``, ``target``, ``label``, ``kind``, ``encoder``)."""
        if column not in index.FILTERS:
            raise ValueError(f"`column` must be one of {sorted(index.FILTERS)}, got {column!r}.")
        where, args = index.where(owner=owner)
        where = f"{where} AND" if where else "WHERE"
        with closing(self._reader()) as db:
            rows = db.execute(f"SELECT DISTINCT {column} FROM images {where} {column} IS NOT NULL AND {column} != '' "
                              f"ORDER BY {column}", args)
            return [str(r[0]) for r in rows]

    def record_package(self, record: dict) -> None:
        """Index a stimulus package (``braindive.stimuli``): ``record`` holds its ``id``, ``created``, ``path``,
        ``hash`` (SHA-256 of its file list with each file's SHA-256), ``n_images``, what went in and the settings."""
        missing = [k for k in ("id", "created", "path", "hash", "n_images") if k not in record]
        if missing:
            raise ValueError(f"A package record needs {missing}.")
        with closing(self._connect()) as db, db:
            db.execute("INSERT INTO packages (id, created, path, hash, n_images, record) VALUES (?, ?, ?, ?, ?, ?)",
                       (record["id"], record["created"], str(record["path"]), record["hash"], int(record["n_images"]),
                        json.dumps(record, default=str)))

    def packages(self) -> list[dict]:
        """Every recorded stimulus package's record, newest first."""
        with closing(self._connect()) as db:
            rows = db.execute("SELECT record FROM packages ORDER BY created DESC, rowid DESC").fetchall()
        return [json.loads(r["record"]) for r in rows]

    def subject_spaces(self, owner: str | None = None) -> list[tuple[str, str]]:
        """Distinct ``(subject name, voxel-space fingerprint)`` pairs ('' for entries recorded without one)."""
        where, args = index.where(owner=owner)
        with closing(self._reader()) as db:
            rows = db.execute(f"SELECT DISTINCT subject, COALESCE(subject_space, '') FROM images {where} "
                              "ORDER BY subject, 2", args)
            return [(str(a), str(b)) for a, b in rows]

    # ------------------------------------------------------------------ internals

    def _image_path(self, entry_id: str) -> Path:
        return self.root / "images" / f"{entry_id}.png"

    def _entry(self, row: dict) -> Entry:
        """An ``Entry`` from an index row; ``ValueError`` naming the bad field."""
        description = GenerationDescription.from_dict({f: row.get(index.COLUMN_OF.get(f, f)) for f in index.DESCRIPTION_FIELDS})
        objective = row.get("objective")
        if objective is not None and not isinstance(objective, (int, float)):
            raise ValueError(f"`objective` must be a number, got {objective!r}.")
        image_path = self._image_path(row["id"])
        return Entry(row["id"], str(row["created"]), description, None if objective is None else float(objective),
                     row.get("run_id") or "", row.get("owner") or "", image_path, image_path.with_suffix(".json"))


def _sort(entry: Entry, entries: list, skipped: list) -> None:
    """Append ``entry`` to ``entries`` if History can show it, else ``(id, reason)`` to ``skipped``."""
    problem = _problem(entry)
    if problem:
        skipped.append((entry.id, problem))
    else:
        entries.append(entry)


def _problem(entry: Entry) -> str | None:
    """Why History and exports skip an entry (one reason for both, naming files by name only), or None."""
    for path, what in ((entry.image_path, "image"), (entry.record_path, "record")):
        if not path.is_file():
            return f"{what} file missing: {path.name}"
    try:
        if not isinstance(json.loads(entry.record_path.read_text()), dict):
            raise ValueError("not a JSON object")
    except OSError as exc:
        return f"record {entry.record_path.name} cannot be read: {exc.strerror or type(exc).__name__}"
    except ValueError as exc:
        return f"record {entry.record_path.name} is corrupt: {exc}"
    return None


def _atomic(path: Path, write) -> None:
    """``write(file)`` to a private temporary name beside ``path``, then rename it over ``path``."""
    tmp = private_tmp(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
