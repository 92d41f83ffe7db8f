"""History without a browser: labels, reopen, run again, selection by thumbnail, paging, bad rows, dates, owners."""
import csv
import io
import sqlite3
import zipfile
from contextlib import closing

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from braindive.targets import Target
from ui import history
from ui.service import GenerationRequest, ImageResult, Service
from ui.settings import Settings
from service_support import demo_service


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    return demo_service(tmp_path_factory.mktemp("history"))


@pytest.fixture(scope="module")
def runs(service):
    """A minimise-FFA and a maximise-FFA generation with the same seed."""
    out = {}
    for kind in ("minimize", "maximize"):
        items = list(service.generate(GenerationRequest(objective=kind, target="FFA", steps=3, seed=5)))
        out[kind] = next(i for i in items if isinstance(i, ImageResult))
    return out


def handler(blocks, name):
    found = [dep.fn for dep in blocks.fns.values() if getattr(dep.fn, "__name__", "") == name]
    assert len(found) == 1, f"{len(found)} handlers named {name!r}"
    return found[0]


def tab(service, owner=None):
    with gr.Blocks() as app:
        parts = history.build(service, owner=owner)
    return app, parts


def select(index):
    return gr.SelectData(None, {"index": index, "value": None, "selected": True})


def test_minimise_is_listed_as_min_ffa_and_exported_with_its_objective_columns(service, runs):
    app, parts = tab(service)
    load = parts["refresh"][0]
    gallery, rows, status, *_ , targets, _enc = load("", "min FFA", "", "", "", 0, [])
    assert [r[0] for r in rows] == ["min FFA"] and gallery[0][1].startswith("min FFA · seed 5 · S1 · demo · exact · ")
    assert "min FFA" in targets["choices"] and "max FFA" in targets["choices"]
    assert [r[-1] for r in load("", "max FFA", "", "", "", 0, [])[1]] == [runs["maximize"].entry.id]
    # the stored value is FFA's predicted mean itself (negative direction), checked against the saved activations
    ffa_mean = float(service.catalog.activations(runs["minimize"].entry.id)[service.subject("S1").roi("FFA")].mean())
    assert rows[0][1] == f"FFA mean {ffa_mean:.2f}"
    path, report = handler(app, "export_all")("", "min FFA", "", "", "")
    with zipfile.ZipFile(path) as zf:
        (row,) = csv.DictReader(io.StringIO(zf.read("manifest.csv").decode()))
    assert (row["objective_kind"], row["label"], row["target"], row["objective"]) == ("minimize", "min FFA", "FFA",
                                                                                      "FFA mean")
    assert float(row["predicted_objective"]) == pytest.approx(ffa_mean, abs=1e-4)
    assert row["scheduler"] == "dpm" and row["guidance_mode"] == "exact" and row["encoder"] == "demo"
    assert report == "Exported 1 image(s)."


def test_open_shows_parameters_map_chart_and_files_and_run_again_reproduces(service, runs):
    app, parts = tab(service)
    load = parts["refresh"][0]
    items = load("", "min FFA", "", "", "", 0, [])[4]
    click = handler(app, "click")
    image, params, activation_map, chart, files, current = click(history.CLICK_OPENS, items, [], select(0))[:6]
    entry_id = runs["minimize"].entry.id
    assert current == entry_id and image.endswith(f"{entry_id}.png")
    assert "### min FFA · seed 5" in params and "| Objective | minimise |" in params and "unguided, same seed" in params
    assert activation_map.ndim == 3 and chart is not None
    assert sorted(p.rsplit(".", 1)[1] for p in files) == ["json", "npy", "npy", "png", "png"]  # + unguided image, map
    assert {str(p) for p in service.catalog.unguided_paths(entry_id)} <= set(files)
    values = handler(app, "run_again_settings")(current)
    assert values["objective"] == "minimize" and values["target"] == "FFA" and values["seed"] == 5
    again = [i for i in service.generate(GenerationRequest(**values)) if isinstance(i, ImageResult)][0]
    np.testing.assert_array_equal(np.asarray(again.image), np.asarray(Image.open(image)))


def test_thumbnails_pick_the_export_selection(service, runs):
    app, parts = tab(service)
    items = parts["refresh"][0]("", "", "", "", "", 0, [])[4]
    click = handler(app, "click")
    picked = []
    for index in (1, 0, 1):  # select two, then unselect the first one again
        _, text, picked, gallery = click(history.CLICK_SELECTS, items, picked, select(index))[6:]  # after the 6 details
    assert [p[2] for p in picked] == [items[0][2]] and text == "1 image(s) selected for export."
    assert gallery[0][1].startswith(history.SELECTED) and not gallery[1][1].startswith(history.SELECTED)
    path = handler(app, "export_zip")("", "", "", "", picked, "")
    with zipfile.ZipFile(path) as zf:
        rows = list(csv.DictReader(io.StringIO(zf.read("manifest.csv").decode())))
    assert [r["id"] for r in rows] == [items[0][2]]


def test_bad_dates_are_clear_errors(service):
    _, parts = tab(service)
    with pytest.warns(UserWarning, match=r"'From' must be a date YYYY-MM-DD .*'2026-02-30'"):
        out = parts["refresh"][0]("", "", "2026-02-30", "", "", 0, [])
    assert "'From' must be a date" in out[2]


def test_pages_bad_rows_and_missing_images(tmp_path):
    svc = Service(Settings(data_dir=str(tmp_path), image_size=64))
    record = {"seed": 0, "subject": "S1", "target": "FFA", "created": "", "predicted_objective": 0.5, "model": "m",
              "encoder": "demo", "parameters": {}, "objective": {"kind": "maximize"}}
    ids = [svc.catalog.add(Image.new("RGB", (4, 4)), {**record, "seed": s, "created": f"2026-11-20T10:00:{s:02d}+00:00"}).id
           for s in range(history.PAGE_SIZE + 5)]
    svc.catalog.get(ids[-1]).image_path.unlink()  # the newest image's file is gone
    with closing(sqlite3.connect(svc.catalog.db_path)) as db, db:
        db.execute("UPDATE images SET objective = 'abc' WHERE id = ?", (ids[0],))  # the oldest row is malformed
    _, parts = tab(svc)
    load = parts["refresh"][0]
    first = load("", "", "", "", "", 0, [])
    assert len(first[0]) == history.PAGE_SIZE - 1 and first[2].startswith(f"Entries 1–40 of {history.PAGE_SIZE + 5}")
    assert f"`{ids[-1]}`: image file missing" in first[2]
    second = load("", "", "", "", "", 1, [])
    assert [r[2] for r in second[1]] == [4, 3, 2, 1] and "`objective` must be a number, got 'abc'" in second[2]
    assert second[2].startswith("Entries 41–45 of 45 · page 2 of 2")


def test_owner_sees_only_their_results(tmp_path):
    svc = Service(Settings(data_dir=str(tmp_path), image_size=64))
    record = {"seed": 1, "subject": "S1", "target": "FFA", "created": "2026-11-20T10:00:00+00:00", "model": "m",
              "encoder": "demo", "parameters": {}, "objective": {"kind": "maximize"}, "predicted_objective": 1.0}
    mine = svc.catalog.add(Image.new("RGB", (4, 4)), record, owner="alice").id
    svc.catalog.add(Image.new("RGB", (4, 4)), {**record, "target": "PPA"}, owner="bob")
    app, parts = tab(svc, owner=lambda request: "alice")
    rows = parts["refresh"][0]("", "", "", "", "", 0, [])[1]
    assert [r[-1] for r in rows] == [mine]
    path, _ = handler(app, "export_all")("", "", "", "", "")
    with zipfile.ZipFile(path) as zf:
        assert [r["id"] for r in csv.DictReader(io.StringIO(zf.read("manifest.csv").decode()))] == [mine]


def test_run_again_fills_explore_whose_generate_reproduces_the_image(service, runs):
    """History's "run again" -> Explore's fields -> Explore's own Generate handler -> the same image as stored."""
    from types import SimpleNamespace

    from ui import explore

    with gr.Blocks() as app:
        parts = explore.build(service, service.settings)
    apply, fields = parts["run_again"]
    original = runs["minimize"].entry
    out = apply(history.run_again_values(service.catalog.record(original.id)))
    value = {i: (v.get("value") if isinstance(v, dict) and v.get("__type__") == "update" else v)
             for i, v in enumerate(out[f] for f in fields)}
    (state, subj, hemi, objective, contrast, weight, encoder, scale, steps, scheduler, seed, n_images, prompt,
     mode) = (value[i] for i in (3, 6, 7, 8, 9, 11, 12, 13, 14, 15, 16, 17, 18, 19))
    assert (subj, state["target"], hemi, objective, seed, n_images) == ("S1 · pycortex:S1:visual+4mm", "FFA", "both",
                                                                         "minimize", 5, 1)
    run = handler(app, "run")
    before = {e.id for e in service.catalog.query()}
    list(run(subj, encoder, state, objective, contrast, weight, scale, steps, scheduler, seed, n_images, 1, prompt,
             mode, explore.act.MAPS[0], explore.act.LIMITS[0], request=SimpleNamespace(session_hash="again", username=None)))
    (new,) = [e for e in service.catalog.query() if e.id not in before]
    assert new.description.label == "min FFA" and new.seed == 5
    np.testing.assert_array_equal(np.asarray(Image.open(new.image_path)), np.asarray(Image.open(original.image_path)))


def test_run_again_refuses_what_explore_cannot_reproduce(service, runs):
    """A variation (start image) or a part-minus-rest contrast would come back as something else: say so."""
    record = service.catalog.record(runs["minimize"].entry.id)
    varied = {**record, "parameters": {**record["parameters"], "strength": 0.5,
                                       "reference": {"file": "cat.png", "sha256": "ab" * 32}}}
    with pytest.raises(ValueError, match=r"started from an image \(cat.png, strength 0.5\)"):
        history.run_again_values(varied)
    part = Target.voxel_set([1, 2, 3], name="OPA·1/2", kind="contrast", region_b="OPA·rest", voxels_b=[4, 5])
    with pytest.raises(ValueError, match="OPA·1/2 against OPA·rest, a voxel set"):
        history.run_again_values({**record, "target_spec": part.to_dict()})
    assert history.run_again_values({**record, "target_spec": Target.voxel_set([1, 2, 3]).to_dict()})["voxels"] == (1, 2, 3)
