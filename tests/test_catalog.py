"""Results catalog: store, filter, concurrent writers, ZIP export with a manifest."""
import csv
import io
import json
import multiprocessing as mp
import sqlite3
import zipfile
from contextlib import closing

import pytest
from PIL import Image

from braindive.catalog import Catalog
from braindive.catalog_export import export_zip


def record(subject="S1", target="FFA", seed=0, created="2026-11-20T10:00:00+00:00", value=0.5):
    return {"seed": seed, "subject": subject, "target": target, "created": created, "predicted_objective": value,
            "parameters": {"brain_guidance_scale": 130.0, "num_inference_steps": 25}, "model": "m", "encoder": "e"}


def image(shade=0):
    return Image.new("RGB", (8, 8), (shade, 0, 0))


def test_add_and_query_by_subject_target_and_date(tmp_path):
    cat = Catalog(tmp_path)
    cat.add(image(), record(target="FFA", created="2026-11-20T10:00:00+00:00"))
    ppa = cat.add(image(), record(target="PPA", created="2026-11-21T10:00:00+00:00"), activations=[0.5, -1.0])
    cat.add(image(), record(subject="subj01", target="FFA", created="2026-11-22T10:00:00+00:00"))
    assert [e.target for e in cat.query()] == ["FFA", "PPA", "FFA"]  # newest first
    assert [e.subject for e in cat.query(target="FFA")] == ["subj01", "S1"]
    assert [e.target for e in cat.query(subject="S1", since="2026-11-21")] == ["PPA"]
    assert [e.created[:10] for e in cat.query(until="2026-11-21")] == ["2026-11-21", "2026-11-20"]
    assert cat.distinct("target") == ["FFA", "PPA"]
    e = cat.query(target="PPA")[0]
    assert e.image_path.is_file() and json.loads(e.record_path.read_text())["id"] == e.id
    assert Catalog(tmp_path).get(e.id).objective == 0.5  # persists across instances
    assert cat.activations(ppa.id).tolist() == [0.5, -1.0] and cat.activations(cat.query(target="FFA")[0].id) is None
    assert cat.record(ppa.id)["target"] == "PPA"


def _writer(root, k):
    cat = Catalog(root)
    for i in range(10):
        cat.add(image(k), record(seed=100 * k + i))


def test_concurrent_writers_lose_nothing(tmp_path):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), k)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    seeds = sorted(e.seed for e in Catalog(tmp_path).query(limit=1000))
    assert seeds == sorted(100 * k + i for k in range(4) for i in range(10))


def test_export_zip_has_images_metadata_and_manifest(tmp_path):
    cat = Catalog(tmp_path / "cat")
    ids = [cat.add(image(), record(seed=s, value=s / 10)).id for s in (3, 4)]
    export = export_zip(cat, ids, tmp_path / "out.zip")
    assert export.exported == ids and export.skipped == []
    with zipfile.ZipFile(export.path) as zf:
        names = zf.namelist()
        rows = list(csv.DictReader(io.StringIO(zf.read("manifest.csv").decode())))
    assert sum(n.startswith("stimuli/") for n in names) == 2 and sum(n.startswith("metadata/") for n in names) == 2
    assert [r["seed"] for r in rows] == ["3", "4"] and rows[1]["predicted_objective"] == "0.4"
    assert all(r["file"] in names for r in rows)
    with pytest.raises(ValueError, match="Nothing to export"):
        export_zip(cat, [], tmp_path / "empty.zip")
    with pytest.raises(KeyError, match="No catalog entry with id 'nope'"):
        cat.get("nope")


OLD_SCHEMA = """CREATE TABLE images (id TEXT PRIMARY KEY, created TEXT NOT NULL, subject TEXT NOT NULL, target TEXT NOT NULL,
    seed INTEGER NOT NULL, objective REAL, guidance_scale REAL, steps INTEGER, model TEXT, encoder TEXT, run_id TEXT);"""


def old_row(root, entry_id, target, kind, value, created, weight=None, write_json=True):
    """A row + files as the first release wrote them: minimise stored its objective (= -mean), contrasts 'A-vs-B'."""
    objective = {"kind": kind, "label": target, "positive": [0, 1]}
    if weight is not None:
        objective.update(weight=weight, negative=[2, 3])
    stored = {**record(target=target, created=created, value=value), "objective": objective, "id": entry_id}
    image().save(root / "images" / f"{entry_id}.png")
    if write_json:
        (root / "images" / f"{entry_id}.json").write_text(json.dumps(stored))
    return (entry_id, created, "S1", target, 0, value, 130.0, 25, "m", "e", "")


def test_catalog_of_the_first_release_is_migrated(tmp_path):
    (tmp_path / "images").mkdir()
    rows = [old_row(tmp_path, "min1", "FFA", "minimize", 2.79, "2026-11-20T10:00:00+00:00"),
            old_row(tmp_path, "max1", "FFA", "maximize", 1.5, "2026-11-21T10:00:00+00:00"),
            old_row(tmp_path, "con1", "FFA-vs-PPA", "contrast", 0.5, "2026-11-22T10:00:00+00:00", weight=0.5),
            old_row(tmp_path, "lost", "PPA", "maximize", 1.0, "2026-11-23T10:00:00+00:00", write_json=False)]
    with closing(sqlite3.connect(tmp_path / "index.sqlite")) as db, db:
        db.executescript(OLD_SCHEMA)
        db.executemany("INSERT INTO images VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
    cat = Catalog(tmp_path)
    page = cat.page()
    assert [(e.id, e.label, e.objective) for e in page.entries] == [
        ("con1", "FFA − 0.5×PPA", 0.5), ("max1", "max FFA", 1.5), ("min1", "min FFA", -2.79)]
    assert cat.get("min1").value_text == "FFA mean -2.79" and cat.get("con1").target == "FFA"
    assert page.total == 4 and [i for i, _ in page.skipped] == ["lost"] and "`kind` is missing" in page.skipped[0][1]
    assert [e.id for e in Catalog(tmp_path).query(label="min FFA")] == ["min1"]  # reopening: migrated once, same rows


def test_bad_rows_and_missing_files_are_skipped_and_reported(tmp_path):
    cat = Catalog(tmp_path / "cat")
    good, gone = (cat.add(image(), record(seed=s)).id for s in (1, 2))
    with closing(sqlite3.connect(cat.db_path)) as db, db:
        db.execute("INSERT INTO images (id, created, subject, target, seed, objective, kind, label) "
                   "VALUES ('bad', '2026-11-25T00:00:00+00:00', 'S1', 'FFA', 3, 'abc', 'maximize', 'max FFA')")
    cat.get(gone).image_path.unlink()
    page = cat.page()
    assert [e.id for e in page.entries] == [good] and page.total == 3
    reasons = dict(page.skipped)
    assert "`objective` must be a number, got 'abc'" in reasons["bad"] and "image file missing" in reasons[gone]
    export = export_zip(cat, ["bad", gone, good, "nope"], tmp_path / "out.zip")
    assert export.exported == [good] and [i for i, _ in export.skipped] == ["bad", gone, "nope"]
    with zipfile.ZipFile(export.path) as zf:
        assert sum(n.startswith("stimuli/") for n in zf.namelist()) == 1
        assert [r["id"] for r in csv.DictReader(io.StringIO(zf.read("skipped.csv").decode()))] == ["bad", gone, "nope"]
    with pytest.raises(ValueError, match="none of the 2 selected image"):
        export_zip(cat, ["bad", gone], tmp_path / "none.zip")
    assert not (tmp_path / "none.zip").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["cat", "out.zip"]


def test_pages_cover_every_row_without_a_cap(tmp_path):
    cat = Catalog(tmp_path)
    for s in range(230):
        cat.add(image(), record(seed=s, created=f"2026-11-20T10:{s // 60:02d}:{s % 60:02d}+00:00"))
    assert len(cat.query()) == 230
    pages = [cat.page(limit=100, offset=o) for o in (0, 100, 200)]
    assert [len(p.entries) for p in pages] == [100, 100, 30] and {p.total for p in pages} == {230}
    assert [e.seed for p in pages for e in p.entries] == list(range(229, -1, -1))


def test_owner_scopes_queries_and_filter_lists(tmp_path):
    cat = Catalog(tmp_path)
    cat.add(image(), record(target="FFA"), owner="alice")
    cat.add(image(), record(target="PPA"), owner="bob")
    cat.add(image(), record(target="EBA"))
    assert [e.target for e in cat.query(owner="alice")] == ["FFA"] and cat.get(cat.query(owner="bob")[0].id).owner == "bob"
    assert sorted(e.target for e in cat.query()) == ["EBA", "FFA", "PPA"]  # owner=None: everyone's
    assert cat.distinct("target", owner="bob") == ["PPA"] and cat.distinct("label") == ["max EBA", "max FFA", "max PPA"]


@pytest.mark.parametrize("since, until, message", [
    ("2026-13-01", None, "`since` must be a date YYYY-MM-DD .*got '2026-13-01'"),
    (None, "yesterday", "`until` must be a date YYYY-MM-DD .*got 'yesterday'"),
    ("2026-11-22", "2026-11-21", "`since` .2026-11-22. is after `until` .2026-11-21."),
])
def test_bad_dates_are_errors_not_empty_lists(tmp_path, since, until, message):
    with pytest.raises(ValueError, match=message):
        Catalog(tmp_path).page(since=since, until=until)


def test_iso_timestamps_with_z_are_dates_on_every_python(tmp_path):
    """Python 3.10 (ZeroGPU's) rejects a trailing "Z" in ``datetime.fromisoformat``; 3.11 accepts it."""
    assert Catalog(tmp_path).page(since="2026-11-29T10:00:00Z", until="2026-11-30").entries == []
