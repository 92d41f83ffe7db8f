"""Results catalog: store, filter, concurrent writers, ZIP export with a manifest."""
import csv
import io
import json
import multiprocessing as mp
import zipfile

import pytest
from PIL import Image

from braindive.catalog import Catalog


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
    path = cat.export_zip(ids, tmp_path / "out.zip")
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        rows = list(csv.DictReader(io.StringIO(zf.read("manifest.csv").decode())))
    assert sum(n.startswith("stimuli/") for n in names) == 2 and sum(n.startswith("metadata/") for n in names) == 2
    assert [r["seed"] for r in rows] == ["3", "4"] and rows[1]["predicted_objective"] == "0.4"
    assert all(r["file"] in names for r in rows)
    with pytest.raises(ValueError, match="Nothing to export"):
        cat.export_zip([], tmp_path / "empty.zip")
    with pytest.raises(KeyError, match="No catalog entry with id 'nope'"):
        cat.get("nope")
