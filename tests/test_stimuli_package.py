"""Stimulus packages: conditions read back column by column, counterbalanced runs, atomic writes, the catalog record,
the CLI and a sweep's ``[stimuli]`` table."""
import csv
import hashlib
import json
import keyword

import numpy as np
import pytest
import torch
from PIL import Image

from braindive.catalog import Catalog
from braindive.cli import main
from braindive.objectives import Objective
from braindive.records import generation_record
from braindive.stimuli.design import Design, balanced_latin_square, runs
from braindive.stimuli.equalise import channel
from braindive.stimuli.package import PackageSettings, build_package
from braindive.stimuli.scoring import load_scorer
from braindive.stimuli.sources import from_catalog
from braindive.stimuli.statistics import image_statistics

TARGETS = {"FFA": ("maximize", None), "PPA": ("maximize", None), "RSC": ("minimize", None), "EBA": ("contrast", "V1")}


@pytest.fixture(scope="module")
def scorer():
    return load_scorer("demo")


def synthetic(seed, tint):
    rng = np.random.default_rng(seed)
    base = np.clip(np.array(tint) + 0.15 * rng.standard_normal((64, 64, 3)), 0, 1)
    return Image.fromarray(np.rint(base * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, scorer):
    """Four targets (max FFA, max PPA, min RSC, EBA − 0.5×V1) x 4 seeds of synthetic images, with unguided images."""
    from ui.activation import save_unguided

    cat = Catalog(tmp_path_factory.mktemp("catalog"))
    subject = scorer.subject
    ids = {}
    for k, (roi, (kind, other)) in enumerate(TARGETS.items()):
        objective = (Objective.contrast(subject.roi(roi), subject.roi(other), 0.5, label=f"{roi}-vs-{other}")
                     if kind == "contrast" else getattr(Objective, kind)(subject.roi(roi), label=roi))
        for seed in range(4):
            record = generation_record(seed=seed, subject="S1", target=roi, objective=objective.describe(),
                                       parameters={"num_inference_steps": 5}, objective_value=1.0, model="demo",
                                       encoder="demo", target_b=other)
            entry = cat.add(synthetic(10 * k + seed, [0.2 + 0.2 * k, 0.5, 0.8 - 0.2 * k]), record)
            save_unguided(entry, synthetic(100 + seed, [0.5, 0.5, 0.5]), np.zeros(subject.n_voxels))
            ids.setdefault(roi, []).append(entry.id)
    return cat, ids


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def predicted(scorer, images):
    """ROI means computed here, independently of the package: the encoder's forward on the written files."""
    x = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1) for im in images])
    with torch.no_grad():
        acts = scorer.encoder(x).double().numpy()
    return {roi: acts[:, scorer.subject.roi(roi)].mean(axis=1) for roi in scorer.subject.roi_names}


def test_conditions_file_read_back_column_by_column(catalog, scorer, tmp_path):
    cat, ids = catalog
    stimuli, skipped = from_catalog(cat, [i for v in ids.values() for i in v])
    package = build_package(stimuli, tmp_path / "pkg", PackageSettings(size=48), scorer, cat)
    rows = read_csv(package.path / "conditions.csv")
    with open(package.path / "conditions.csv", newline="") as f:
        header = next(csv.reader(f))
    # PsychoPy's importConditions rules: identifiers, no keyword, no duplicates
    assert all(h.isidentifier() and not keyword.iskeyword(h) for h in header) and len(set(header)) == len(header)
    assert len(rows) == 16 and not skipped
    images = [Image.open(package.path / r["file"]).convert("RGB") for r in rows]
    assert {im.size for im in images} == {(48, 48)}
    preds = predicted(scorer, images)
    by_id = {i: roi for roi, v in ids.items() for i in v}
    for k, row in enumerate(rows):
        roi = by_id[row["source"]]
        kind, other = TARGETS[roi]
        assert row["kind"] == kind and row["target"] == roi
        assert row["condition"] == row["label"] == {"maximize": f"max {roi}", "minimize": f"min {roi}",
                                                    "contrast": f"{roi} − 0.5×{other}"}[kind]
        # a category only where a maximise of an ROI implies one; the others are flagged
        assert row["category"] == {"FFA": "faces", "PPA": "places"}.get(roi, "")
        assert bool(row["category_note"]) == (kind != "maximize")
        assert int(row["seed"]) == cat.get(row["source"]).seed
        for name, values in preds.items():
            assert float(row[f"pred_{name}"]) == pytest.approx(values[k], abs=1e-4)
        expected = preds[roi][k] - 0.5 * preds[other][k] if kind == "contrast" else preds[roi][k]
        assert float(row["target_measure"]) == pytest.approx(expected, abs=1e-4)
        stats = image_statistics(images[k])
        assert all(float(row[s]) == pytest.approx(v, rel=1e-9, abs=1e-12) for s, v in stats.items() if np.isfinite(v))
    check_builder_file(package.path / "experiment.psyexp")
    compile((package.path / "experiment.py").read_text(), "experiment.py", "exec")
    try:
        from psychopy.data import importConditions
    except ImportError:
        return  # the documented format was checked above
    loaded = importConditions(str(package.path / "conditions.csv"))
    assert len(loaded) == 16 and list(loaded[0]) == header
    assert [r["file"] for r in loaded] == [r["file"] for r in rows]
    trials = importConditions(str(package.path / "runs" / "run01.csv"))
    assert len(trials) == 16 and all((package.path / t["image"]).is_file() for t in trials)


def check_builder_file(path):
    """The Builder file: PsychoPy's own loader and compiler when installed, else its XML structure."""
    import xml.etree.ElementTree as ET

    root = ET.parse(path).getroot()
    assert root.tag == "PsychoPy2experiment"
    assert [r.get("name") for r in root.find("Routines")] == ["wait_trigger", "lead_in", "trial"]
    flow = [(e.tag, e.get("name")) for e in root.find("Flow")]
    assert flow[2:5] == [("LoopInitiator", "trials"), ("Routine", "trial"), ("LoopTerminator", "trials")]
    try:
        from psychopy import experiment
    except ImportError:
        return
    exp = experiment.Experiment()
    exp.loadFromXML(str(path))
    assert exp.flow[2].loop.params["conditionsFile"].val == "$'runs/run%02d.csv' % int(expInfo['run'])"
    script = exp.writeScript(target="PsychoPy")
    compile(script, "experiment_builder.py", "exec")
    assert "data.importConditions('runs/run%02d.csv' % int(expInfo['run']))" in script


def test_balanced_latin_square_is_balanced():
    for k in range(2, 8):
        square = balanced_latin_square(k)
        assert square.shape == (k if k % 2 == 0 else 2 * k, k)
        for column in square.T:  # each condition equally often at each position
            assert np.all(np.bincount(column, minlength=k) == len(square) // k)
        pairs = np.zeros((k, k), int)  # each ordered pair of neighbours equally often
        for row in square:
            for a, b in zip(row[:-1], row[1:]):
                pairs[a, b] += 1
        off = pairs[~np.eye(k, dtype=bool)]
        assert off.min() == off.max() and np.all(np.diag(pairs) == 0)


@pytest.mark.parametrize("design,conditions,n", [("event", 3, 4), ("event", 4, 2), ("block", 3, 4)])
def test_run_orders_are_counterbalanced_per_position(design, conditions, n):
    items = {f"c{c}": [f"c{c}-{i}" for i in range(n)] for c in range(conditions)}
    d = Design(design, block_size=2, seed=5, isi=2.0, jitter=0.5 if design == "event" else 0.0, stim_duration=1.5)
    orders = runs(items, d)
    assert len(orders) == len(balanced_latin_square(conditions))
    for trials in orders:
        # every image exactly once per run; onsets follow the timing
        assert sorted(t["item"] for t in trials) == sorted(i for v in items.values() for i in v)
        for a, b in zip(trials[:-1], trials[1:]):
            assert b["onset"] == pytest.approx(a["onset"] + 1.5 + a["fixation_after"], abs=1e-3)
        if design == "event":
            assert all(1.5 <= t["fixation_after"] <= 2.5 for t in trials)
        else:
            for block in {t["block"] for t in trials}:
                assert len({t["condition"] for t in trials if t["block"] == block}) == 1
    slots = [[t["condition"] for t in trials][:: 1 if design == "event" else 2] for trials in orders]
    for position in range(len(slots[0])):
        counts = {c: sum(s[position] == c for s in slots) for c in items}
        assert len(set(counts.values())) == 1, (position, counts)
    assert runs(items, d) == orders  # seeded


def test_unequal_conditions_still_get_runs_flagged_as_not_counterbalanced(tmp_path):
    from braindive.stimuli.design import balanced
    from braindive.stimuli.sources import from_folder

    items = {"a": [1, 2, 3], "b": [4]}
    orders = runs(items, Design())
    assert not balanced(items) and all(sorted(t["item"] for t in trials) == [1, 2, 3, 4] for trials in orders)
    for name, count in (("dark", 3), ("bright", 2)):  # folders of plain images, no records, no encoder
        (tmp_path / name).mkdir()
        for k in range(count):
            synthetic(k, [0.2, 0.2, 0.2] if name == "dark" else [0.8, 0.8, 0.8]).save(tmp_path / name / f"{k}.png")
    stimuli = from_folder(tmp_path / "dark") + from_folder(tmp_path / "bright", "light")
    package = build_package(stimuli, tmp_path / "pkg", PackageSettings(n_permutations=100))
    assert package.record["counterbalanced"] is False and "Not counterbalanced" in (package.path / "README.md").read_text()
    rows = read_csv(package.path / "conditions.csv")
    assert [r["condition"] for r in rows] == ["dark"] * 3 + ["light"] * 2 and rows[0]["category"] == ""
    sets = {r["set"]: r for r in read_csv(package.path / "report" / "sets.csv")}
    assert float(sets["dark"]["mean_lum_mean"]) < float(sets["light"]["mean_lum_mean"])


def test_package_is_atomic_hashed_and_recorded(catalog, scorer, tmp_path, monkeypatch):
    cat, ids = catalog
    stimuli, _ = from_catalog(cat, ids["FFA"] + ids["PPA"])
    out = tmp_path / "pkg"
    import braindive.stimuli.package as package_module

    def broken(*args, **kwargs):
        raise OSError("disk full")

    before = len(cat.packages())
    with monkeypatch.context() as m:
        m.setattr(package_module, "write_report", broken)
        with pytest.raises(OSError, match="disk full"):
            build_package(stimuli, out, PackageSettings(), scorer, cat)
    assert list(tmp_path.iterdir()) == [] and len(cat.packages()) == before  # nothing half-written, nothing recorded
    package = build_package(stimuli, out, PackageSettings(format="jpg"), scorer, cat)
    manifest = (out / "MANIFEST.sha256").read_text()
    listed = {}
    for line in manifest.splitlines():
        digest, name = line.split("  ", 1)
        listed[name] = digest
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert set(listed) == files - {"MANIFEST.sha256"}
    assert package.hash == hashlib.sha256(manifest.encode()).hexdigest()
    record = cat.packages()[0]
    assert record["hash"] == package.hash and record["path"] == str(out.resolve()) and record["n_images"] == 8
    assert sorted(record["inputs"]) == sorted(ids["FFA"] + ids["PPA"]) and record["settings"]["format"] == "jpg"
    assert all(name.endswith(".jpg") for name in files if name.startswith("stimuli/"))
    assert json.loads((out / "package.json").read_text())["id"] == record["id"]
    with pytest.raises(ValueError, match="exists already"):
        build_package(stimuli, out, PackageSettings(), scorer, cat)


def test_luminance_equalised_package_and_share_kept(catalog, scorer, tmp_path):
    cat, ids = catalog
    stimuli, _ = from_catalog(cat, ids["FFA"] + ids["PPA"], unguided=True)
    assert sum(s.condition == "unguided" for s in stimuli) == 8
    stimuli = [s for s in stimuli if not (s.unguided and s.source.split(".")[0] in ids["PPA"])]  # 4 unguided
    package = build_package(stimuli, tmp_path / "eq", PackageSettings(equalise=("luminance",), luminance_mean=0.3,
                                                                      luminance_std=0.05), scorer, cat)
    rows = read_csv(package.path / "conditions.csv")
    images = [Image.open(package.path / r["file"]).convert("RGB") for r in rows]
    for image in images:
        y = channel(image, "linear")  # linear luminance, the default space
        assert abs(y.mean() - 0.3) <= 1 / 255 and abs(y.std() - 0.05) <= 1 / 255
    # share kept, recomputed from the encoder on the original and the written images
    originals = [s.image for s in stimuli]
    before, after = predicted(scorer, originals), predicted(scorer, images)
    conditions = np.array([s.condition for s in stimuli])
    effects = {r["set"]: r for r in read_csv(package.path / "report" / "equalisation.csv")}
    assert set(effects) == {"max FFA", "max PPA"}  # the unguided set has no target
    for name, roi in (("max FFA", "FFA"), ("max PPA", "PPA")):
        inside = conditions == name
        e0 = before[roi][inside].mean() - before[roi][~inside].mean()
        e1 = after[roi][inside].mean() - after[roi][~inside].mean()
        assert float(effects[name]["effect"]) == pytest.approx(e0, abs=1e-4)
        assert float(effects[name]["share_kept"]) == pytest.approx(e1 / e0, rel=1e-3)
    comparison = read_csv(package.path / "report" / "comparison.csv")
    assert {frozenset((r["set_a"], r["set_b"])) for r in comparison} == {
        frozenset(p) for p in (("max FFA", "max PPA"), ("max FFA", "unguided"), ("max PPA", "unguided"))}
    assert all(0 < float(r["p_permutation"]) <= 1 for r in comparison)
    sets = {r["set"]: r for r in read_csv(package.path / "report" / "sets.csv")}
    assert all(0 <= float(sets[s]["embedding_diversity"]) <= 2 for s in sets)


def test_cli_builds_a_package_from_catalog_ids(catalog, tmp_path, capsys):
    cat, ids = catalog
    out = tmp_path / "cli"
    code = main(["stimuli", *ids["FFA"], *ids["PPA"], "--catalog", str(cat.root), "--out", str(out), "--encoder",
                 "demo", "--equalise", "histogram", "--design", "block", "--block-size", "2", "--permutations", "200"])
    text = capsys.readouterr()
    assert code == 0, text.err
    assert "wrote package" in text.out and "kept after equalisation" in text.out
    assert len(list((out / "runs").glob("run*.csv"))) == 2
    assert main(["stimuli", ids["FFA"][0], "--catalog", str(cat.root), "--out", str(tmp_path / "x"),
                 "--isi", "-1"]) == 2
    assert "`isi` must be" in capsys.readouterr().err


def test_sweep_stimuli_table_is_checked_and_builds_the_runs_package(catalog, tmp_path):
    from braindive.batch.sweep import SweepError, parse_sweep
    from braindive.stimuli.sweep import package_run

    base = ('name = "s"\nmodel = "demo"\nseeds = [0, 1, 2]\n[[encoders]]\nsubject = "S1"\npath = "demo"\n'
            '[targets]\nrois = ["FFA", "PPA"]\n')
    with pytest.raises(SweepError, match=r":11: .*unknown key 'colour'"):
        parse_sweep(base + '[stimuli]\nsize = 32\ncolour = "x"\n')
    with pytest.raises(SweepError, match=r":11: .*`isi` must be"):
        parse_sweep(base + '[stimuli]\nsize = 32\nisi = -2\n')
    with pytest.raises(SweepError, match=r"`equalise` must"):
        parse_sweep(base + '[stimuli]\nequalise = ["blur"]\n')
    assert parse_sweep(base + "[stimuli]\nenabled = false\n").stimuli is None
    sweep = parse_sweep(base + '[stimuli]\nsize = 32\nequalise = ["luminance"]\nn_permutations = 100\n')
    cat = Catalog(tmp_path / "catalog")
    for job in sweep.jobs:  # the run's images, as the runner stores them (synthetic pixels)
        for seed, entry_id in zip(sweep.seeds, sweep.image_ids(job)):
            record = generation_record(seed=seed, subject="S1", target=job.target, objective=job.objective.describe(),
                                       parameters={}, objective_value=float(seed), model="demo", encoder="demo")
            cat.add(synthetic(seed, [0.3, 0.4, 0.5]), record, run_id=sweep.run_id, entry_id=entry_id)
    logs = []
    path = package_run(sweep, cat, log=logs.append)
    assert path == cat.root / "packages" / sweep.run_id
    rows = read_csv(path / "conditions.csv")
    assert sorted(r["condition"] for r in rows) == ["max FFA"] * 3 + ["max PPA"] * 3
    assert cat.packages()[0]["path"] == str(path.resolve())
    assert package_run(sweep, cat, log=logs.append) == path and "left as it is" in logs[-1]
    # the runner calls it at the end of a run (here every image is in the catalog already: no worker starts)
    from braindive.batch.runner import run_sweep

    assert run_sweep(sweep, catalog_dir=cat.root, log=logs.append).package == path


def test_history_panel_builds_a_package_zip(tmp_path):
    import zipfile

    import gradio as gr

    from ui import history
    from ui.service import Service
    from ui.settings import Settings
    from ui.stimuli import build_package_zip

    service = Service(Settings(data_dir=str(tmp_path / "data")))
    encoder = service.encoder_names()[0]
    subject = service.subject_of(encoder)
    ids = []
    for k, roi in enumerate(("FFA", "PPA")):
        for seed in range(2):
            record = generation_record(seed=seed, subject=subject.name, target=roi,
                                       objective=Objective.maximize(subject.roi(roi), label=roi).describe(),
                                       parameters={}, objective_value=0.0, model="demo", encoder=encoder)
            ids.append(service.catalog.add(synthetic(seed + 5 * k, [0.3 + 0.3 * k, 0.4, 0.5]), record).id)
    rows, columns, plot, path, text = build_package_zip(service, ids, unguided=False, size=32, equalise=["luminance"])
    table = {row[0]: dict(zip(columns, row)) for row in rows}
    assert set(table) == {"max FFA", "max PPA"} and table["max FFA"]["n"] == 2
    assert table["max FFA"]["share kept"].endswith("%") and f"Scored with encoder {encoder}" in text
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    assert "stimulus-package/conditions.csv" in names and "stimulus-package/experiment.py" in names
    assert service.catalog.packages()[0]["n_images"] == 4
    with pytest.raises(ValueError, match="`isi`"):
        build_package_zip(service, ids, isi=-1.0)
    with gr.Blocks():  # History mounts the panel
        history.build(service)
