"""Batch sweeps on a local Ray instance (num_cpus=2) with the demo: exactly once, resumable, same pixels as generate."""
import errno
import json

import numpy as np
import pytest
from PIL import Image

from braindive.batch import SweepError, load_sweep, parse_sweep
from braindive.batch.worker import Faults
from braindive.catalog import Catalog
from braindive.cli import main

ray = pytest.importorskip("ray")

SWEEP = """\
name = "test-sweep"
model = "demo"
seeds = { start = 0, count = 6 }

[[encoders]]
subject = "S1"
path = "demo"

[targets]
rois = ["FFA", "PPA"]
minimize = ["EBA"]

[settings]
steps = 4
height = 64
width = 64

[execution]
batch_size = 3
cpus_per_worker = 1

[rerank]
keep = 0.5
"""


@pytest.fixture(scope="module")
def sweep_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sweep") / "sweep.toml"
    path.write_text(SWEEP)
    return path


def catalog_ids(root):
    import sqlite3

    with sqlite3.connect(root / "index.sqlite") as db:
        return [r[0] for r in db.execute("SELECT id FROM images")]


@pytest.fixture(scope="module")
def pool(local_ray):
    """Two one-CPU demo workers, shared by this module's runs (a worker's start-up is most of a run here)."""
    from braindive.batch.runner import WorkerPool

    workers = WorkerPool("demo", 2, cpus_per_worker=1, max_retries=3)
    yield workers
    workers.close()


@pytest.fixture(scope="module")
def first_run(pool, sweep_file, tmp_path_factory):
    from braindive.batch.runner import run_sweep

    root = tmp_path_factory.mktemp("catalog")
    sweep = load_sweep(sweep_file)
    return sweep, root, run_sweep(sweep, catalog_dir=root, pool=pool, log=lambda m: None)


def test_sweep_makes_exactly_one_entry_per_target_and_seed(first_run):
    sweep, root, report = first_run
    ids = catalog_ids(root)
    assert len(ids) == 18 and len(set(ids)) == 18 and report.added == 18 and report.workers == 2
    expected = {i for job in sweep.jobs for i in sweep.image_ids(job)}
    assert set(ids) == expected
    cat = Catalog(root)
    pairs = sorted((e.label, e.seed) for e in cat.query(limit=100))
    assert pairs == sorted((t, s) for t in ("max FFA", "max PPA", "min EBA") for s in range(6))
    # one unguided image per seed, shared by the three targets (not three per seed)
    assert len(list((root / "unguided").glob("*.png"))) == 6
    keys = {cat.record(e.id)["baseline_key"] for e in cat.query(limit=100) if e.seed == 2}
    assert len(keys) == 1
    entry = cat.query(target="FFA", limit=1)[0]
    record = cat.record(entry.id)
    assert entry.run_id == sweep.run_id and record["parameters"]["num_inference_steps"] == 4
    # the recorded objective is the mean predicted activity over the target's voxels
    acts = cat.activations(entry.id)
    assert acts.shape == (37926,)
    assert np.isclose(record["predicted_objective"], acts[record["objective"]["positive"]].mean(), atol=1e-5)
    # the unguided image's map gives the recorded baseline measure, and the chart's unguided bars
    unguided = np.load(cat.unguided_paths(entry.id)[1])
    assert np.isclose(record["baseline_measure"], unguided[record["objective"]["positive"]].mean(), atol=1e-5)
    assert np.isclose(record["baseline_roi_means"]["FFA"], record["baseline_measure"], atol=1e-5)
    minimised = cat.record(cat.query(label="min EBA", limit=1)[0].id)
    assert minimised["target_spec"]["region_a"] == "EBA" and minimised["label"] == "min EBA"
    assert np.isclose(minimised["predicted_objective"], minimised["roi_means"]["EBA"], atol=1e-5)  # EBA's mean, signed


def test_summary_compares_with_unguided_and_reranks(first_run):
    sweep, root, report = first_run
    summary = json.loads((root / "runs" / sweep.run_id / "summary.json").read_text())
    cat = Catalog(root)
    assert set(summary["jobs"]) == {"demo/max FFA", "demo/max PPA", "demo/min EBA"}
    for label, job in summary["jobs"].items():
        minimise = label.endswith("min EBA")
        values = sorted((cat.get(i).objective for i in (e for j in sweep.jobs if j.label == label
                                                         for e in sweep.image_ids(j))), reverse=not minimise)
        assert job["objective"]["n"] == 6 and np.isclose(job["objective"]["mean"], np.mean(values))
        assert [cat.get(i).objective for i in job["kept"]] == values[:3]  # keep = 0.5: the best in the asked direction
        if minimise:  # guidance lowers EBA's mean below the unguided images' (same seeds)
            assert job["objective"]["mean"] < job["unguided"]["mean"]
        else:
            assert job["objective"]["mean"] > job["unguided"]["mean"]
    with Image.open(root / "runs" / sweep.run_id / "contact_sheet.png") as sheet:
        assert sheet.size[1] == 3 * 96


def test_rerun_adds_nothing_and_starts_no_worker(first_run):
    from braindive.batch.runner import run_sweep

    sweep, root, _ = first_run
    report = run_sweep(sweep, catalog_dir=root, log=lambda m: None)
    assert report.added == 0 and report.existing == 18 and report.workers == 0
    assert len(catalog_ids(root)) == 18


def test_batch_image_equals_generate(first_run, tmp_path):
    sweep, root, _ = first_run
    entry = [e for e in Catalog(root).query(label="min EBA", limit=100) if e.seed == 4][0]
    assert main(["generate", "--roi", "EBA", "--minimize", "--n", "1", "--seed", "4", "--steps", "4", "--height", "64",
                 "--width", "64", "--out", str(tmp_path)]) == 0
    (single_entry,) = Catalog(tmp_path).query()
    assert single_entry.id == entry.id  # one request, one image id, whichever door made it
    single = np.asarray(Image.open(single_entry.image_path), dtype=int)
    batched = np.asarray(Image.open(entry.image_path), dtype=int)  # made in a unit of 3 seeds
    assert np.abs(single - batched).max() <= 1


def test_full_disk_then_killed_worker_and_oom_still_end_exactly_once(first_run, pool, sweep_file, tmp_path,
                                                                       monkeypatch):
    """A full disk, then Ctrl-C, stop runs cleanly; the last resumed run loses a worker (killed through Ray
    mid-unit) and has its batches fail out of memory, and still ends with each image once, equal to the
    undisturbed run's."""
    from braindive.batch.runner import run_sweep

    sweep, clean_root, _ = first_run
    real_add, calls = Catalog.add, []

    def add_until_full(self, *args, **kwargs):
        if len(calls) == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        calls.append(1)
        return real_add(self, *args, **kwargs)

    monkeypatch.setattr(Catalog, "add", add_until_full)
    report = run_sweep(sweep, catalog_dir=tmp_path, pool=pool, log=lambda m: None)
    assert report.stopped.startswith("disk full") and len(catalog_ids(tmp_path)) == 4
    assert not list((tmp_path / "images").glob(".*"))  # no half-written file left behind
    monkeypatch.setattr(Catalog, "add", real_add)

    def ctrl_c(report, actors):
        raise KeyboardInterrupt

    report = run_sweep(sweep, catalog_dir=tmp_path, pool=pool, on_unit=ctrl_c, log=lambda m: None)
    saved = len(catalog_ids(tmp_path))
    assert report.stopped == "Ctrl-C" and 4 < saved < 18 and report.added == saved - 4

    before, killed = set(catalog_ids(tmp_path)), []

    def kill_once(report, actors):
        if not killed:  # this actor has the next unit queued or running: Ray restarts it and retries the unit
            ray.kill(actors[0], no_restart=False)
            killed.append(report.added)

    report = run_sweep(sweep, catalog_dir=tmp_path, pool=pool, faults=Faults(oom_above_batch=1), on_unit=kill_once,
                       log=lambda m: None)
    ids = catalog_ids(tmp_path)
    assert killed and not report.failed and report.existing == saved and report.added == 18 - saved
    assert len(ids) == 18 and set(ids) == set(catalog_ids(clean_root))
    resumed, clean = Catalog(tmp_path), Catalog(clean_root)
    for entry_id in ids:
        mine = np.asarray(Image.open(resumed.get(entry_id).image_path), dtype=int)
        theirs = np.asarray(Image.open(clean.get(entry_id).image_path), dtype=int)
        assert np.abs(mine - theirs).max() <= 1
    batches = [resumed.record(i)["batch"] for i in set(ids) - before]
    assert max(b["unit_seeds"] for b in batches) == 3  # units of 3 seeds failed out of memory ...
    assert all(b["pipeline_batch"] == 1 for b in batches)  # ... and were rerun one seed at a time


def test_catalog_add_is_exactly_once_per_entry_id(tmp_path):
    cat = Catalog(tmp_path)
    record = {"seed": 1, "subject": "S1", "target": "FFA", "created": "2026-11-29T10:00:00+00:00",
              "predicted_objective": 1.0, "parameters": {}}
    first = cat.add(Image.new("RGB", (8, 8), (9, 0, 0)), record, entry_id="abc")
    again = cat.add(Image.new("RGB", (8, 8), (200, 0, 0)), {**record, "predicted_objective": 5.0}, entry_id="abc")
    assert first == again and catalog_ids(tmp_path) == ["abc"]
    assert np.asarray(Image.open(first.image_path))[0, 0, 0] == 9 and cat.get("abc").objective == 1.0


# ---------------------------------------------------------------- validation, before anything runs

@pytest.mark.parametrize("change, line, words", [
    (("steps = 4", "steps = 0"), 14, "`Steps` must be a whole number from 1 to 200, got 0."),
    (("rois = [\"FFA\", \"PPA\"]", "rois = [\"FFA\",\n  \"XYZ\"]"), 11, "unknown ROI 'XYZ'"),
    (("width = 64", "width = 64\nwidht = 64"), 17, "unknown key 'widht' in [settings]"),
    (("keep = 0.5", "keep = 1.5"), 23, "`Keep fraction` must be a number from 0.001 to 1, got 1.5."),
    (("seeds = { start = 0, count = 6 }", "seeds = { start = 0, count = 0 }"), 3, "`seeds.count`"),
    (("seeds = { start = 0, count = 6 }", "seeds = [0, 2.5]"), 3, "`Seed` must be a whole number from 0 to 2147483647, got 2.5."),
    (("[execution]", "[execution]\nbatch = 2"), 19, "unknown key 'batch'"),
    (("height = 64", "height = 60"), 15, "multiple of 8"),
])
def test_bad_sweep_is_rejected_naming_the_line(change, line, words):
    with pytest.raises(SweepError) as err:
        parse_sweep(SWEEP.replace(*change), source="s.toml")
    assert str(err.value).startswith(f"s.toml:{line}:") and words in str(err.value)


def test_encoder_of_another_voxel_space_is_rejected(tmp_path):
    folder = tmp_path / "enc"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"voxel_space": "nsd:subj01:func1pt8mm", "n_voxels": 15724,
                                                    "subject": "subj01"}))
    text = SWEEP.replace('model = "demo"', 'model = "some/model"').replace('path = "demo"', 'path = "enc"')
    with pytest.raises(SweepError, match=r"s.toml:6: encoder .* voxel space 'nsd:subj01:func1pt8mm'"):
        parse_sweep(text, source="s.toml", base_dir=tmp_path)


def test_cli_check_and_bad_file(tmp_path, capsys, sweep_file):
    assert main(["batch", str(sweep_file), "--check"]) == 0
    assert "3 jobs x 6 seeds = 18 images" in capsys.readouterr().out
    negative = tmp_path / "negative.toml"  # minimising by a negative scale is allowed, as in the app
    negative.write_text(SWEEP.replace("steps = 4", "steps = 4\nscale = -20"))
    assert main(["batch", str(negative), "--check"]) == 0
    bad = tmp_path / "bad.toml"
    bad.write_text(SWEEP.replace("steps = 4", "steps = 4\nscale = -2000"))
    assert main(["batch", str(bad)]) == 2
    assert "bad.toml:15: `Brain guidance scale` must be a number from -1000 to 1000, got -2000." in capsys.readouterr().err


def test_evaluation_stage_is_pluggable_and_skipped_with_a_message(tmp_path, monkeypatch):
    import sys
    import types

    from braindive.batch import summary

    sweep = parse_sweep(SWEEP + "\n[evaluation]\nenabled = true\noptions = { classes = 5 }\n", source="s.toml")
    messages = []
    monkeypatch.setattr(summary, "EVALUATION_HOOK", ("braindive.no_such_stage", "evaluate_batch"))
    summary.write_summary(sweep, Catalog(tmp_path), log=messages.append)
    assert "evaluation skipped: braindive.no_such_stage is not part of this installation." in messages
    fake = types.ModuleType("fake_evaluation")
    fake.evaluate_batch = lambda catalog, groups, classes: {label: {"classes": classes, "n": len(rows)}
                                                            for label, rows in groups.items()}
    monkeypatch.setitem(sys.modules, "fake_evaluation", fake)
    monkeypatch.setattr(summary, "EVALUATION_HOOK", ("fake_evaluation", "evaluate_batch"))
    summary.write_summary(sweep, Catalog(tmp_path), log=messages.append)
    written = json.loads((tmp_path / "runs" / sweep.run_id / "summary.json").read_text())
    assert written["evaluation"] == {"demo/max FFA": {"classes": 5, "n": 0}, "demo/max PPA": {"classes": 5, "n": 0},
                                     "demo/min EBA": {"classes": 5, "n": 0}}


def test_settings_lists_multiply_jobs_with_distinct_labels_and_ids():
    sweep = parse_sweep(SWEEP.replace("steps = 4", 'steps = [4, 6]\nprompt = ["", "a face"]'))
    assert len(sweep.jobs) == 12 and sweep.n_images == 72
    assert len({j.label for j in sweep.jobs}) == 12 and "demo/max FFA [steps=6,prompt='a face']" in {j.label for j in sweep.jobs}
    ids = [i for job in sweep.jobs for i in sweep.image_ids(job)]
    assert len(set(ids)) == 72
    again = parse_sweep(SWEEP.replace("steps = 4", 'steps = [4, 6]\nprompt = ["", "a face"]'))
    assert [i for job in again.jobs for i in again.image_ids(job)] == ids  # the same on every parse


def test_a_start_image_sweep_equals_generate_from_the_image(pool, tmp_path):
    """``[settings] init_images`` x ``strength`` through the batch worker: the same id, image and baseline as
    ``generate --init-image --strength`` (both doors run the one generation routine)."""
    from braindive.batch.runner import run_sweep
    from braindive.variation import image_hash

    rng = np.random.default_rng(2)
    pixels = np.kron(rng.integers(40, 220, (8, 8, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "ref.png")
    (tmp_path / "start.toml").write_text('name = "start"\nmodel = "demo"\nseeds = [4]\n[[encoders]]\nsubject = "S1"\n'
                                         'path = "demo"\n[targets]\nrois = ["FFA"]\n[settings]\nsteps = 4\n'
                                         'height = 64\nwidth = 64\ninit_images = ["ref.png"]\nstrength = 0.5\n')
    root = tmp_path / "batch"
    run_sweep(load_sweep(tmp_path / "start.toml"), catalog_dir=root, pool=pool, log=lambda m: None)
    (batched,) = Catalog(root).query()
    assert main(["generate", "--roi", "FFA", "--n", "1", "--seed", "4", "--steps", "4", "--height", "64", "--width",
                 "64", "--init-image", str(tmp_path / "ref.png"), "--strength", "0.5", "--out", str(tmp_path / "cli")]) == 0
    (single,) = Catalog(tmp_path / "cli").query()
    assert single.id == batched.id
    a, b = (np.asarray(Image.open(e.image_path), dtype=int) for e in (single, batched))
    assert np.abs(a - b).max() <= 1
    record = Catalog(root).record(batched.id)
    assert record["parameters"]["strength"] == 0.5
    assert record["parameters"]["reference"] == {"file": "ref.png", "sha256": image_hash(pixels)}
    assert record["baseline_key"] == Catalog(tmp_path / "cli").record(single.id)["baseline_key"]
