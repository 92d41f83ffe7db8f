"""Sweep start images (``init_images`` x ``strength``): read once by the driver, carried by the jobs as pixels, named in
records, manifest and summary as written in the sweep file, identified by their pixel hash wherever the sweep lives."""
import csv
import hashlib
import io
import json
import pickle
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image

from braindive.batch import SweepError, load_sweep
from braindive.catalog import Catalog
from braindive.catalog_export import export_zip
from braindive.cli import main

SWEEP = """\
name = "start"
model = "demo"
seeds = [4]

[[encoders]]
subject = "S1"
path = "demo"

[targets]
rois = ["FFA"]

[settings]
steps = 4
height = 64
width = 64
init_images = [{images}]
strength = {strength}
"""


def pixel_hash(pixels: np.ndarray) -> str:
    """sha256 of (1, 3, H, W) and the uint8 pixels channel-first: what records call the start image's sha256."""
    h, w, _ = pixels.shape
    digest = hashlib.sha256(repr((1, 3, h, w)).encode())
    digest.update(np.ascontiguousarray(pixels.transpose(2, 0, 1)).tobytes())
    return digest.hexdigest()


def blocky(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.kron(rng.integers(40, 220, (8, 8, 3)), np.ones((8, 8, 1))).astype(np.uint8)  # 64 x 64


def write_sweep(folder, images: dict, strength="0.5", listed=None):
    """``folder/start.toml`` starting from ``listed`` (default: ``images``, {relative path: pixels} saved as PNG)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, pixels in images.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / name)
    text = SWEEP.format(images=", ".join(f'"{n}"' for n in (listed or images)), strength=strength)
    (folder / "start.toml").write_text(text)
    return folder / "start.toml"


@pytest.fixture(scope="module")
def pool(local_ray):
    from braindive.batch.runner import WorkerPool

    workers = WorkerPool("demo", 1, cpus_per_worker=1, max_retries=1)
    yield workers
    workers.close()


def test_a_sweep_from_another_folder_names_the_start_image_as_written_and_moving_it_keeps_the_ids(
        pool, tmp_path, monkeypatch):
    from braindive.batch.runner import run_sweep

    pixels = blocky(2)
    sweeps = tmp_path / "project" / "sweeps"
    write_sweep(sweeps, {"refs/face.png": pixels})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    sweep = load_sweep("../project/sweeps/start.toml")
    root = tmp_path / "catalog"
    report = run_sweep(sweep, catalog_dir=root, pool=pool, log=lambda m: None)
    assert report.added == 1 and not report.failed
    catalog = Catalog(root)
    (entry,) = catalog.query()
    record = catalog.record(entry.id)
    expected = {"file": "refs/face.png", "sha256": pixel_hash(pixels)}
    assert record["parameters"]["strength"] == 0.5 and record["parameters"]["reference"] == expected

    export = export_zip(catalog, [entry.id], tmp_path / "out.zip")
    with zipfile.ZipFile(export.path) as zf:
        manifest = zf.read("manifest.csv").decode()
    (row,) = csv.DictReader(io.StringIO(manifest))
    assert (row["strength"], row["start_image"], row["start_image_sha256"]) == ("0.5", "refs/face.png", expected["sha256"])
    run = root / "runs" / sweep.run_id
    summary = json.loads((run / "summary.json").read_text())
    assert summary["jobs"]["demo/max FFA"]["reference"] == expected
    assert "`refs/face.png` " + expected["sha256"][:16] in (run / "summary.md").read_text()
    for text in (entry.record_path.read_text(), manifest, (run / "summary.json").read_text(),
                 (run / "summary.md").read_text()):
        assert str(sweeps) not in text and str(sweeps.resolve()) not in text  # no machine-specific path

    # the same request through `generate`, run in the sweep's folder with the path as the sweep writes it
    monkeypatch.chdir(sweeps)
    assert main(["generate", "--roi", "FFA", "--n", "1", "--seed", "4", "--steps", "4", "--height", "64", "--width",
                 "64", "--init-image", "refs/face.png", "--strength", "0.5", "--out", str(tmp_path / "cli")]) == 0
    (single,) = Catalog(tmp_path / "cli").query()
    assert single.id == entry.id
    assert Catalog(tmp_path / "cli").record(single.id)["parameters"] == record["parameters"]
    a, b = (np.asarray(Image.open(e.image_path), dtype=int) for e in (single, entry))
    assert np.abs(a - b).max() <= 1

    # the sweep folder moved elsewhere: the same ids and run id, and the re-run finds everything made
    shutil.copytree(tmp_path / "project", tmp_path / "moved" / "project")
    shutil.rmtree(tmp_path / "project")
    monkeypatch.chdir(elsewhere)
    moved = load_sweep("../moved/project/sweeps/start.toml")
    assert moved.run_id == sweep.run_id
    assert [moved.image_ids(j) for j in moved.jobs] == [sweep.image_ids(j) for j in sweep.jobs]
    again = run_sweep(moved, catalog_dir=root, pool=pool, log=lambda m: None)
    assert (again.existing, again.added, again.total) == (1, 0, 1) and len(catalog.query()) == 1


def test_jobs_carry_the_pixels_so_deleting_the_file_after_loading_changes_nothing(pool, tmp_path):
    from braindive.batch.runner import plan_units, run_sweep

    pixels = blocky(5)
    folder = tmp_path / "sweep"
    sweep = load_sweep(write_sweep(folder, {"ref.png": pixels}, strength="[0.3, 0.6]"))
    units, _ = plan_units(sweep, Catalog(tmp_path / "catalog"))
    assert len(units) == 2
    blob = pickle.dumps(units)  # what Ray sends to a worker
    assert str(folder).encode() not in blob and str(folder.resolve()).encode() not in blob
    for unit in units:
        np.testing.assert_array_equal(np.asarray(unit.job.settings.init_image.image()), pixels)
    assert len(blob) < 64 * 1024  # a 64 x 64 PNG per job, not the file's path

    shutil.rmtree(folder)  # neither the driver nor a worker opens the path again
    report = run_sweep(sweep, catalog_dir=tmp_path / "catalog", pool=pool, log=lambda m: None)
    assert report.added == 2 and not report.failed
    catalog = Catalog(tmp_path / "catalog")
    records = sorted((catalog.record(e.id)["parameters"] for e in catalog.query()), key=lambda p: p["strength"])
    assert [(p["strength"], p["reference"]) for p in records] == [
        (s, {"file": "ref.png", "sha256": pixel_hash(pixels)}) for s in (0.3, 0.6)]


def test_bad_start_images_are_refused_when_the_sweep_is_loaded_naming_the_file_and_line(tmp_path):
    pixels = blocky(7)
    missing = write_sweep(tmp_path / "a", {"refs/face.png": pixels}, listed=["refs/face.png", "refs/gone.png"])
    line = next(n for n, text in enumerate(missing.read_text().splitlines(), 1) if "gone.png" in text)
    with pytest.raises(SweepError, match=rf"start\.toml:{line}: init image 'refs/gone\.png': Cannot read image"):
        load_sweep(missing)

    corrupt = write_sweep(tmp_path / "b", {"face.png": pixels}, listed=["face.png", "bad.png"])
    (tmp_path / "b" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(SweepError, match=r"start\.toml:\d+: init image 'bad\.png': Cannot read image"):
        load_sweep(corrupt)

    # the same pixels under two names (here a lossless BMP copy) would give the same image ids twice
    twice = write_sweep(tmp_path / "c", {"face.png": pixels}, listed=["face.png", "copy.bmp"])
    Image.fromarray(pixels).save(tmp_path / "c" / "copy.bmp")
    with pytest.raises(SweepError, match=r"init images 'face\.png' and 'copy\.bmp' have the same pixels"):
        load_sweep(twice)

    # two absolute paths ending in the same file name would be one name in records and job labels
    for k, folder in enumerate(("x", "y")):
        (tmp_path / folder).mkdir()
        Image.fromarray(blocky(10 + k)).save(tmp_path / folder / "face.png")
    same_name = write_sweep(tmp_path / "d", {}, listed=[str(tmp_path / f / "face.png") for f in ("x", "y")])
    with pytest.raises(SweepError, match=r"two init images are named 'face\.png'"):
        load_sweep(same_name)
