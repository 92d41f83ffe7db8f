"""The app's failure paths: start-up without a usable subject, stale UI state, broken training jobs, exports."""
import dataclasses
import json
import shutil
import threading
import zipfile
from types import SimpleNamespace
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from training_support import one_torch_thread  # noqa: F401  (autouse)

import app as app_module
import braindive as bd
import ui.jobs
from training.dataset import DatasetWriter, SplitSpec
from training.train_encoder import train_encoder
from ui import build_app, explore, history
from ui.jobs import TrainingJob
from ui.registry import ModelRegistry
from ui.service import GenerationRequest, ImageResult, Service, ServiceError
from ui.settings import Settings
from service_support import demo_service

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    return demo_service(tmp_path_factory.mktemp("robust"))


@pytest.fixture(scope="module")
def app(service):
    return build_app(service, service.settings)


@pytest.fixture(scope="module")
def entry_id(service):
    items = list(service.generate(GenerationRequest(steps=2, seed=1)))
    return [i for i in items if isinstance(i, ImageResult)][0].entry.id


def handler(blocks, name):
    """The event function named ``name`` and its dependency (inputs/outputs) in the built app."""
    found = [dep for dep in blocks.fns.values() if getattr(dep.fn, "__name__", "") == name]
    assert len(found) == 1, f"{len(found)} handlers named {name!r}"
    return found[0].fn, found[0]


# ---------------------------------------------------------------- 9: no loadable subject; subject file of trained encoders

def _encoder_of_unknown_subject(folder: Path, subject_name: str) -> Path:
    """The demo encoder (S1's voxels) relabelled as an encoder of ``subject_name``, which is not built in."""
    shutil.copytree(REPO / "braindive" / "assets" / "demo-encoder", folder)
    config = json.loads((folder / "config.json").read_text())
    config["subject"] = subject_name
    config["training"].pop("subject_file", None)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture
def sd21_settings(service, tmp_path, monkeypatch):
    """sd21 settings with one NSD-style encoder whose subject file is unknown (the demo model stands in for SD)."""
    monkeypatch.setattr(ModelRegistry, "_load_backend", lambda self: service.backend())
    encoder = _encoder_of_unknown_subject(tmp_path / "subj01-encoder", "subj01")
    return Settings(preset="sd21", encoder=str(encoder), data_dir=str(tmp_path / "app"))


def test_explore_without_a_loadable_subject_names_what_is_missing(sd21_settings):
    with pytest.raises(ServiceError) as err, gr.Blocks():
        explore.build(Service(sd21_settings), sd21_settings)
    message = str(err.value)
    assert "No encoder whose subject can be loaded" in message and "--subject" in message
    assert sd21_settings.encoder in message and "'subj01'" in message


def test_app_start_without_a_loadable_subject_exits_with_the_message(sd21_settings):
    argv = ["--preset", "sd21", "--encoder", sd21_settings.encoder, "--data-dir", sd21_settings.data_dir]
    with pytest.raises(SystemExit) as err:
        app_module.main(argv)
    assert str(err.value).startswith("BrainDiVE Studio cannot start: No encoder whose subject can be loaded")


def test_explore_builds_once_the_subject_file_is_given(sd21_settings, s1, tmp_path):
    subject_file = dataclasses.replace(s1, name="subj01").save(tmp_path / "subj01.subject.npz")
    settings = dataclasses.replace(sd21_settings, subject=str(subject_file))
    with gr.Blocks():
        parts = explore.build(Service(settings), settings)
    assert parts["subject"].value == "subj01 · pycortex:S1:visual+4mm" and parts["encoder"].value == settings.encoder


def _toy_dataset(path: Path, s1) -> bd.Subject:
    """A small dataset of a subject that is not built in: 200 of S1's vertices, random responses."""
    subject = bd.Subject(name="toy", surface=s1.surface, vertices=s1.vertices[:200], n_vertices_lh=s1.n_vertices_lh,
                         n_vertices=s1.n_vertices, rois={"A": np.arange(0, 60), "B": np.arange(60, 150)})
    rng = np.random.default_rng(0)
    n_train, n_test = 40, 10
    splits = {"train": SplitSpec(np.arange(n_train), np.ones(n_train)),
              "test": SplitSpec(np.arange(n_train, n_train + n_test), np.ones(n_test))}
    n = n_train + n_test
    with DatasetWriter(path, subject=subject, image_ids=np.arange(n), image_names=[f"{i}.png" for i in range(n)],
                       image_shape=(32, 32), splits=splits, source="test", metadata={}) as writer:
        writer.write_images(0, rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
        writer.write_betas("train", slice(None), rng.normal(size=(n_train, subject.n_voxels)))
        writer.write_betas("test", slice(None), rng.normal(size=(n_test, subject.n_voxels)))
    return subject


def test_trained_encoder_records_its_subject_file_and_the_app_finds_it(s1, tmp_path):
    _toy_dataset(tmp_path / "data" / "toy.h5", s1)
    checkpoint = tmp_path / "app" / "encoders" / "toy-encoder"
    result = train_encoder(tmp_path / "data" / "toy.h5", checkpoint, backbone="braindive-tiny-vit", pretrained="none",
                           device="cpu", cv=2)
    training = bd.load_encoder(checkpoint).config.training
    assert training["subject_file"] == result.summary["subject_file"] == "subject.npz"
    assert bd.load_subject(checkpoint / "subject.npz").name == "toy"
    shutil.rmtree(tmp_path / "data")  # the checkpoint does not depend on the dataset folder
    moved = tmp_path / "elsewhere"
    shutil.move(tmp_path / "app", moved)  # nor on where it was written
    svc = Service(Settings(data_dir=str(moved)))
    assert svc.subject_names() == ["S1 · pycortex:S1:visual+4mm", "S1-fullhead · fullhead", "toy · surface"]
    assert svc.encoders_for("toy · surface") == ["toy-encoder"]
    assert svc.subject_of("toy-encoder").roi_names == ["A", "B"]


# ---------------------------------------------------------------- 10: stale gallery after a subject change

def test_changing_subject_clears_the_gallery(app):
    change_subject, _ = handler(app, "change_subject")
    outputs = {component.elem_id: value for component, value in change_subject("S1", "maximize").items()}
    assert outputs["gallery"] == [] and outputs["activation-map"] is None and outputs["roi-chart"] is None
    assert outputs["downloads"]["value"] is None and outputs["downloads"]["label"].endswith("(.npy, GIfTI)")
    assert outputs["preview"] is None  # issue 22.17: the old subject's preview goes too


def test_stale_gallery_click_is_a_warning_not_an_error(app, service, entry_id):
    inspect, _ = handler(app, "inspect")
    click = gr.SelectData(None, {"index": 0, "value": None})
    view = (explore.act.MAPS[0], explore.act.LIMITS[0])
    with pytest.warns(UserWarning, match="no longer among the results"):
        out = inspect("S1", {"target": "FFA", "voxels": [], "results": []}, *view, click)
    assert out and all(value == gr.skip() for value in out.values())  # every output left as it is, none blanked
    out = {c.elem_id: v for c, v in inspect("S1", {"target": "FFA", "voxels": [], "results": [entry_id]}, *view, click).items()}
    files = out["downloads"]
    assert out["activation-map"].ndim == 3 and [Path(f).suffix for f in files[:2]] == [".png", ".json"]
    assert {Path(f).name.rsplit("_", 1)[-1] for f in files[2:]} >= {"guided.npy", "unguided.npy"}


@pytest.mark.parametrize("position,label", [(7, "Steps"), (10, "Generate N images"), (5, "Weight of B")])
def test_an_emptied_number_field_is_named(app, position, label):
    run, _ = handler(app, "run")
    args = ["S1", "demo", {"target": "FFA", "voxels": [], "results": []}, "maximize", "EBA", 1.0, 20.0, 3, "dpm",
            0, 1, 1, "", "exact", explore.act.MAPS[0], explore.act.LIMITS[0]]
    args[position] = None
    with pytest.raises(gr.Error, match=f"'{label}' is empty"):
        next(run(*args, request=None))


def test_step_counter_counts_the_steps_the_scheduler_runs(service):
    progress = [i for i in service.generate(GenerationRequest(steps=3, scheduler="pndm")) if hasattr(i, "total_steps")]
    steps = [(1, 4), (2, 4), (3, 4), (4, 4)]  # PLMS: one warm-up step
    assert [(p.step, p.total_steps) for p in progress] == steps + steps  # guided, then the unguided comparison
    assert [p.stage for p in progress] == ["brain-guided"] * 4 + ["unguided comparison"] * 4


# ---------------------------------------------------------------- 11: training jobs always end

def test_job_whose_command_cannot_start_fails_and_frees_the_queue(service, monkeypatch):
    def no_python(*args, **kwargs):
        raise FileNotFoundError("no python here")

    monkeypatch.setattr(ui.jobs.subprocess, "Popen", no_python)
    first = service.start_training("synthetic", name="cannot-start-1")
    state = first.wait(30)
    assert state.status == "failed" and state.error == "FileNotFoundError: no python here"
    assert "job failed: FileNotFoundError: no python here" in first.log_tail()
    assert json.loads((first.folder / "job.json").read_text())["status"] == "failed"
    second = service.start_training("synthetic", name="cannot-start-2")  # not refused as "already running"
    assert second.wait(30).status == "failed"


def test_job_whose_state_cannot_be_saved_still_ends(tmp_path):
    job = TrainingJob(tmp_path, "unsaveable", [("never", ["-c", "print('FIN' + 'ISHED')"])])
    save, calls = job._save, []

    def disk_full():
        calls.append(1)
        if len(calls) > 1:
            raise OSError("disk full")
        save()

    job._save = disk_full
    state = job.start().wait(30)
    assert state.status == "failed" and state.error == "OSError: disk full" and not job.running
    assert state.finished is not None and "FINISHED" not in job.log_tail()


def test_cancel_after_the_process_exited_does_not_raise(tmp_path, monkeypatch):
    class Exited:  # poll() still said "running", then the process group was gone
        pid = 2**22 + 12345

        def poll(self):
            return None

    def gone(pgid, sig):
        raise ProcessLookupError(3, "No such process")

    monkeypatch.setattr(ui.jobs.os, "killpg", gone)
    job = TrainingJob(tmp_path, "exited", [])
    job._process = Exited()
    job.cancel()
    assert job._cancelled.is_set()


def test_cancel_while_a_command_is_starting_stops_that_command(tmp_path, monkeypatch):
    popen = ui.jobs.subprocess.Popen
    job = TrainingJob(tmp_path, "racy", [("slow", ["-c", "import time; time.sleep(8); print('FIN' + 'ISHED')"])])

    def cancel_during_start(*args, **kwargs):
        # the user's cancel arrives after the runner checked for one and before the process exists
        canceller = threading.Thread(target=job.cancel)
        canceller.start()
        canceller.join(0.3)
        return popen(*args, **kwargs)

    monkeypatch.setattr(ui.jobs.subprocess, "Popen", cancel_during_start)
    state = job.start().wait(30)
    assert state.status == "cancelled" and state.returncode != 0 and "FINISHED" not in job.log_tail()


# ---------------------------------------------------------------- 12: finished job without a readable report

@pytest.mark.parametrize("report", [None, "{not json", "{}"])
def test_poll_of_a_done_job_without_a_readable_report_stops_the_timer(app, service, tmp_path, report):
    report_dir = tmp_path / "report"
    if report is not None:
        report_dir.mkdir()
        (report_dir / "report.json").write_text(report)
    job = TrainingJob(tmp_path, "no report", [("ok", ["-c", "pass"])],
                      outputs={"encoder": "x", "checkpoint": str(tmp_path / "x"), "report": str(report_dir)})
    assert job.start().wait(30).status == "done"
    service.jobs[job.state.id] = job
    poll, _ = handler(app, "poll")
    with pytest.warns(UserWarning, match="report could not be read"):
        out = poll(job.state.id, "S1", "demo")
    timer = next(v for c, v in out.items() if isinstance(c, gr.Timer))
    status = next(v for c, v in out.items() if c.elem_id == "train-status")
    assert timer.active is False and "report could not be read" in status


# ---------------------------------------------------------------- 13: ZIP exports do not pile up

def test_exports_go_to_the_data_dir_and_only_the_latest_are_kept(app, service, entry_id, monkeypatch):
    def no_temp_dirs(*args, **kwargs):
        raise AssertionError("exports must not create temporary folders")

    monkeypatch.setattr("tempfile.mkdtemp", no_temp_dirs)
    export, _ = handler(app, "export_zip")
    root = service.settings.exports_dir
    paths = [Path(export("", "", "", "", [entry_id])) for _ in range(history.KEEP_EXPORTS + 2)]
    assert all(p.parent.parent == root and p.name == "braindive-stimuli.zip" for p in paths)
    kept = sorted(p for p in root.iterdir())
    assert kept == [p.parent for p in paths[-history.KEEP_EXPORTS:]]
    with zipfile.ZipFile(paths[-1]) as zf:
        assert "manifest.csv" in zf.namelist()


# ---------------------------------------------------------------- issue 14: bad numbers in the UI, per-user History

@pytest.mark.parametrize("position,value,message", [
    (7, 2.5, "`Steps` must be a whole number from 1 to 50, got 2.5."),
    (7, 100000, "`Steps` must be a whole number from 1 to 50, got 100000."),
    (10, 50, "`Generate N images` must be a whole number from 1 to 4, got 50."),
    (9, "abc", "`Seed` must be a whole number from 0 to 2147483647, got 'abc'."),
    (9, 2.5, "`Seed` must be a whole number from 0 to 2147483647, got 2.5."),
    (11, 0, "`…keep the best k` must be a whole number from 1 to 1000, got 0."),
    (12, "x" * 10_000, "`Prompt` must be text of at most 300 characters, got 10000 characters."),
    (4, "FFA", "`contrast_target` must differ from the target 'FFA'"),
])
def test_the_generate_button_rejects_what_the_api_rejects(app, position, value, message):
    run, _ = handler(app, "run")
    args = ["S1", "demo", {"target": "FFA", "voxels": [], "results": []}, "contrast", "EBA", 1.0, 20.0, 3, "dpm",
            0, 1, 1, "", "exact", explore.act.MAPS[0], explore.act.LIMITS[0]]
    args[position] = value
    with pytest.raises(gr.Error) as err:
        next(run(*args, request=SimpleNamespace(session_hash="ui", username=None)))
    assert message in str(err.value)


@pytest.mark.parametrize("event", [None, gr.SelectData(None, {"index": None, "value": None}),
                                   gr.SelectData(None, {"index": 3, "value": None})])
def test_a_flatmap_click_without_click_data_is_named(app, event):
    select_on_map, _ = handler(app, "select_on_map")
    with pytest.raises(gr.Error, match=r"A flatmap click needs the click position \[x, y\] in pixels"):
        select_on_map("S1", "Select ROI", 6, {"target": "FFA", "voxels": [], "results": []}, "maximize", "", event)


def test_history_shows_each_session_only_its_own_results(app, service, entry_id, monkeypatch):
    load = next(dep.fn for dep in app.fns.values() if getattr(dep.fn, "__name__", "") == "load")  # Refresh and tab
    export, _ = handler(app, "export_zip")
    alice, bob = SimpleNamespace(session_hash="alice", username=None), SimpleNamespace(session_hash="bob", username=None)
    monkeypatch.setattr(service.settings, "history", "session")
    items = list(service.generate(GenerationRequest(steps=1, seed=77), session="alice", owner=service.owner_of(alice)))
    mine = [i for i in items if isinstance(i, ImageResult)][0].entry.id
    assert "owner" not in service.catalog.record(mine)  # records are served: the owner is in the index only
    assert service.catalog.get(mine).owner == service.owner_of(alice) != service.owner_of(bob)
    assert "alice" not in service.owner_of(alice)  # a keyed hash, not the session id
    assert [row[-1] for row in load("", "", "", "", request=alice)[1]] == [mine]
    assert load("", "", "", "", request=bob)[1] == []
    with pytest.raises(gr.Error, match="Nothing to export"):
        export("", "", "", "", [mine], request=bob)  # another session's id is not exported
    monkeypatch.setattr(service.settings, "history", "shared")  # a lab server: everyone's results
    assert {mine, entry_id} <= {row[-1] for row in load("", "", "", "", request=bob)[1]}
