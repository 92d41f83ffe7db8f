"""Faults (issue 22, items 6-8): a full disk, writers killed with kill -9, damaged catalog files."""
import csv
import errno
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image
from training_support import one_torch_thread  # noqa: F401  (autouse)

import braindive.catalog as catalog_module
from braindive.cache import private_tmp
from braindive.catalog import Catalog
from ui import history
from ui.jobs import TrainingJob, read_job
from ui.launcher import TrainingLauncher
from ui.service import GenerationRequest, ImageResult, Service, ServiceError
from ui.settings import Settings
from service_support import demo_service

RECORD = {"created": "2026-01-01T00:00:00+00:00", "subject": "S1", "target": "FFA", "seed": 0}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    return demo_service(tmp_path_factory.mktemp("faults"))


def _rows(catalog: Catalog) -> int:
    with sqlite3.connect(catalog.db_path) as db:
        return db.execute("SELECT COUNT(*) FROM images").fetchone()[0]


def _leftovers(folder: Path, ids: set[str]) -> list[str]:
    """Temporary files, and files of entries that are not in ``ids``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.split(".")[0] not in ids)


def _indexed(catalog: Catalog) -> set[str]:
    with sqlite3.connect(catalog.db_path) as db:
        return {r[0] for r in db.execute("SELECT id FROM images")}


# ---------------------------------------------------------------- 6: full disk

@pytest.mark.parametrize("failing", [".png", ".json", "unguided.npy", "index"])
def test_a_full_disk_fails_the_request_with_a_clear_message_and_leaves_nothing(service, monkeypatch, failing):
    """ENOSPC injected into the second image's writes (after part of the file is written), or into SQLite."""
    catalog = service.catalog
    before, rows = _indexed(catalog), _rows(catalog)
    writes = []
    real_atomic, real_connect = catalog_module._atomic, Catalog._connect

    def atomic(path, write):
        writes.append(path)
        if _suffix(path) == failing and [_suffix(p) for p in writes].count(failing) == 2:
            def partial(f):
                f.write(b"\0" * 100)
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_atomic(path, partial)
        return real_atomic(path, write)

    class FullDB:
        def __init__(self, db):
            self.db = db

        def __getattr__(self, name):
            return getattr(self.db, name)

        def __enter__(self):
            return self.db.__enter__()

        def __exit__(self, *exc):
            return self.db.__exit__(*exc)

        def execute(self, sql, *args):
            if sql.startswith("INSERT") and [_suffix(p) for p in writes].count(".png") == 2:
                raise sqlite3.OperationalError("database or disk is full")
            return self.db.execute(sql, *args)

    monkeypatch.setattr(catalog_module, "_atomic", atomic)
    if failing == "index":
        monkeypatch.setattr(Catalog, "_connect", lambda self: FullDB(real_connect(self)))
    with pytest.raises(ServiceError) as err:
        # seeds whose unguided baselines no earlier case stored, so the catalog writes them now
        list(service.generate(GenerationRequest(steps=2, seed=50 if failing == "unguided.npy" else 5, n_images=2)))
    assert "disk" in str(err.value) and "full" in str(err.value) and "/" not in str(err.value)
    monkeypatch.undo()
    assert _rows(catalog) == rows and _indexed(catalog) == before  # the first image's row went too
    assert _leftovers(catalog.root / "images", before) == []
    assert not [p.name for p in (catalog.root / "unguided").glob("*") if p.name.startswith(".")]  # no temp files
    assert {e.id for e in history.find(service, page_size=None).entries} == before  # History reads as before


def _suffix(path: Path) -> str:
    """``.png`` / ``.json`` / ``.npy`` of an image's files; ``unguided.npy`` for a seed's stored unguided map."""
    suffix = "." + path.name.split(".", 1)[1]
    return "unguided" + suffix if path.parent.name == "unguided" else suffix


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    return done.returncode == 0


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_a_really_full_disk_keeps_history_readable_and_recovers(tmp_path):
    """A real full file system (a 4 MB tmpfs; needs root, else skipped): SQLite cannot even open its index."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "4m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        service = demo_service(disk / "data")
        first = [i for i in service.generate(GenerationRequest(steps=2, seed=1)) if isinstance(i, ImageResult)]
        filler = _fill(disk)
        with pytest.raises(ServiceError, match="disk of the server is full"):
            list(service.generate(GenerationRequest(steps=2, seed=2)))
        page = history.find(service, page_size=None)  # SQLite: "disk I/O error" when it opens the index normally
        assert [e.id for e in page.entries] == [first[0].entry.id] and page.skipped == []
        assert _leftovers(service.catalog.root / "images", {first[0].entry.id}) == []
        restarted = Service(service.settings)  # the app restarted while the disk is full: History still reads
        assert [e.id for e in history.find(restarted, page_size=None).entries] == [first[0].entry.id]
        filler.unlink()
        again = [i for i in service.generate(GenerationRequest(steps=2, seed=3)) if isinstance(i, ImageResult)]
        assert len(history.find(service, page_size=None).entries) == 2 and again
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_the_image_cache_leaves_no_partial_file_on_a_full_disk(tmp_path, monkeypatch):
    from ui import image_cache

    real = Path.write_bytes

    def full(self, data):
        real(self, data[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(gr.Error, match="disk of the server is full"):
        image_cache.save_pil_to_cache(Image.new("RGB", (8, 8), "red"), str(tmp_path), format="png")
    monkeypatch.undo()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


# ---------------------------------------------------------------- 7: kill -9 leftovers, orphaned jobs

_KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from braindive.cache import private_tmp
target = Path(sys.argv[1])
with open(private_tmp(target), "wb") as f:  # as Catalog.add writes, killed before the rename
    f.write(b"half a png")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_catalog_removes_temp_files_of_killed_writers_when_it_opens(tmp_path):
    catalog = Catalog(tmp_path / "catalog")
    entry = catalog.add(Image.new("RGB", (4, 4)), RECORD)
    run = catalog.root / "runs" / "run-1"
    run.mkdir(parents=True)
    for target in (catalog.root / "images" / "0123456789abcdef.png", run / "summary.json"):
        done = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(target)], cwd=Path(__file__).parents[1])
        assert done.returncode == -signal.SIGKILL
    left = sorted(p.name for p in (catalog.root / "images").iterdir() if p.name.startswith("."))
    assert len(left) == 1 and len(list(run.iterdir())) == 1
    mine = private_tmp(catalog.root / "images" / "fedcba9876543210.png")  # a writer that is alive: kept
    mine.write_bytes(b"being written")
    elsewhere = catalog.root / "images" / ".aaaa.png.4242-1@another-host.tmp"  # another host's, recent: kept
    elsewhere.write_bytes(b"x")
    old = catalog.root / "images" / ".bbbb.png.4243-1@another-host.tmp"  # another host's, two days old: stale
    old.write_bytes(b"x")
    os.utime(old, (old.stat().st_mtime - 2 * 86400,) * 2)
    Catalog(catalog.root)
    assert sorted(p.name for p in (catalog.root / "images").iterdir()) == sorted(
        [mine.name, elsewhere.name, entry.image_path.name, entry.record_path.name])
    assert list(run.iterdir()) == []


def test_the_app_removes_a_zip_export_left_half_written_by_kill_9(tmp_path):
    settings = Settings(data_dir=str(tmp_path))
    folder = settings.exports_dir / "20261206-000000-000000000-abcdef"
    folder.mkdir(parents=True)
    done = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(folder / history.EXPORT_NAME)],
                          cwd=Path(__file__).parents[1])
    assert done.returncode == -signal.SIGKILL and len(list(folder.iterdir())) == 1
    Service(settings)
    assert list(folder.iterdir()) == []


_APP = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("jobs", sys.argv[2])  # ui/jobs.py alone: no gradio import
jobs = sys.modules["jobs"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(jobs)
TrainingJob = jobs.TrainingJob
job = TrainingJob(sys.argv[1], "orphan", [("sleep", ["-c", "import time; time.sleep(120)"])]).start()
while job.state.pid is None:
    time.sleep(0.05)
print(job.state.id, flush=True)
time.sleep(120)
"""


def test_a_job_of_an_app_killed_with_kill_9_is_shown_as_killed(tmp_path):
    jobs_py = Path(__file__).parents[1] / "ui" / "jobs.py"
    app = subprocess.Popen([sys.executable, "-c", _APP, str(tmp_path / "jobs"), str(jobs_py)], stdout=subprocess.PIPE,
                           text=True)
    try:
        job_id = app.stdout.readline().strip()
        folder = tmp_path / "jobs" / job_id
        assert json.loads((folder / "job.json").read_text())["status"] == "running"
        app.send_signal(signal.SIGKILL)
        app.wait(30)
    finally:
        app.kill()
    assert json.loads((folder / "job.json").read_text())["status"] == "running"  # what the dead app left
    assert read_job(folder).status == "killed"
    TrainingLauncher(Settings(data_dir=str(tmp_path)))  # the next app start saves it as killed
    saved = json.loads((folder / "job.json").read_text())
    assert saved["status"] == "killed" and "app stopped" in saved["error"]
    live = TrainingJob(tmp_path / "jobs", "alive", [("sleep", ["-c", "import time; time.sleep(60)"])]).start()
    try:  # a job of a running app is left alone
        TrainingLauncher(Settings(data_dir=str(tmp_path)))
        assert read_job(live.folder).status in ("queued", "running") and live.running
    finally:
        live.cancel()
        live.wait(30)


# ---------------------------------------------------------------- 8: skipped entries, damaged files

def _export_rows(path) -> list[dict]:
    with zipfile.ZipFile(path) as zf:
        if "skipped.csv" not in zf.namelist():
            return []
        return list(csv.DictReader(io.StringIO(zf.read("skipped.csv").decode())))


def _service(tmp_path) -> Service:
    """A service for the catalog and History only (no model is loaded)."""
    return Service(Settings(data_dir=str(tmp_path)))


def test_history_and_the_export_skip_the_same_entries_for_the_same_reasons(tmp_path):
    service = _service(tmp_path)
    catalog = service.catalog
    entries = [catalog.add(Image.new("RGB", (4, 4)), {**RECORD, "seed": k}, activations=np.zeros(3)) for k in range(5)]
    entries[0].image_path.unlink()
    entries[1].record_path.unlink()
    entries[2].record_path.write_text('{"seed": 2, "subj')  # cut off mid-write
    with sqlite3.connect(catalog.db_path) as db:
        db.execute("UPDATE images SET objective = 'oops' WHERE id = ?", (entries[3].id,))
    page = history.find(service, page_size=None)
    shown = dict(page.skipped)
    assert set(shown) == {e.id for e in entries[:4]} and [e.id for e in page.entries] == [entries[4].id]
    assert "corrupt" in shown[entries[2].id] and entries[2].record_path.name in shown[entries[2].id]
    assert not any(str(tmp_path) in reason for reason in shown.values())  # names, never server paths
    text = history.status_text(page)
    assert all(i in text for i in shown) and str(tmp_path) not in text
    export = history.export_stimuli(service, [e.id for e in entries])
    assert {r["id"]: r["reason"] for r in _export_rows(export.path)} == shown
    assert export.exported == [entries[4].id]


def test_export_all_lists_what_history_skips(tmp_path):
    from types import SimpleNamespace

    service = _service(tmp_path)
    good = service.catalog.add(Image.new("RGB", (4, 4)), RECORD)
    bad = service.catalog.add(Image.new("RGB", (4, 4)), {**RECORD, "seed": 1})
    bad.record_path.write_text("not json")
    with gr.Blocks() as blocks:
        history.build(service)
    export_all = next(d.fn for d in blocks.fns.values() if getattr(d.fn, "__name__", "") == "export_all")
    path, report = export_all("", "", "", "", "", request=SimpleNamespace(session_hash="s", username=None))
    assert [r["id"] for r in _export_rows(path)] == [bad.id] and bad.id in report
    with zipfile.ZipFile(path) as zf:
        stimuli = [n for n in zf.namelist() if n.startswith("stimuli/")]
    assert len(stimuli) == 1 and good.id in stimuli[0]


def test_a_truncated_activation_file_is_a_clear_message_on_open(tmp_path):
    service = _service(tmp_path)
    entry = service.catalog.add(Image.new("RGB", (4, 4)), RECORD, activations=np.arange(5000, dtype=np.float32))
    npy = entry.image_path.with_suffix(".npy")
    npy.write_bytes(npy.read_bytes()[:300])
    with pytest.raises(ValueError, match=rf"activations of {entry.id} \({npy.name}\) cannot be read: the file is "
                                         r"truncated or corrupt"):
        service.catalog.activations(entry.id)
    warnings = []
    with gr.Blocks() as blocks:
        history.build(service)
    click = next(d.fn for d in blocks.fns.values() if getattr(d.fn, "__name__", "") == "click")
    original = gr.Warning
    gr.Warning = lambda message, *a, **k: warnings.append(message)
    try:
        shown = click(history.CLICK_OPENS, [(str(entry.image_path), "", entry.id)], [],
                      gr.SelectData(None, {"index": 0, "value": None}))
    finally:
        gr.Warning = original
    assert shown[0] == str(entry.image_path) and shown[2] is None  # the result opens, without its map
    assert any("truncated or corrupt" in w for w in warnings)
