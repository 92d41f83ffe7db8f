"""Training jobs: logs, cancel, kill -9, ending with the app, one job at a time, and allowed data roots."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ui.jobs import TrainingJob
from ui.launcher import TrainingLauncher
from ui.registry import ServiceError
from ui.settings import Settings

REPO = Path(__file__).resolve().parents[1]
SLEEP = ["-c", "import time; time.sleep(120)"]


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped counts as ended)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] != "Z"


def _until(condition, timeout=60.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_training_job_crash_is_reported_with_log(tmp_path):
    job = TrainingJob(tmp_path, "crash", [("boom", ["-c", "import sys; print('about to fail'); sys.exit(3)"])]).start()
    state = job.wait(60)
    assert state.status == "failed" and state.returncode == 3
    assert "about to fail" in job.log_tail()


def test_training_log_tail_keeps_the_latest_progress_line(tmp_path):
    script = ("import sys\nprint('Inkscape not found. Some tests will be skipped. If you are on a Mac ...')\n"
              "for i in (10, 50, 100): sys.stdout.write(f'fit: {i:3d}%|##| {i}/100\\r')\nprint()\nprint('done')")
    job = TrainingJob(tmp_path, "bars", [("bars", ["-c", script])]).start()
    assert job.wait(60).status == "done"
    assert job.log_tail().splitlines()[-2:] == ["fit: 100%|##| 100/100", "done"]
    assert not [line for line in job.log_tail().splitlines() if line.startswith("Inkscape")]  # pycortex's notice


def test_training_job_cancel(tmp_path):
    job = TrainingJob(tmp_path, "slow", [("sleep", SLEEP), ("never", ["-c", "print('ran')"])]).start()
    assert _until(lambda: job.state.pid is not None)
    job.cancel()
    state = job.wait(30)
    assert state.status == "cancelled" and "ran" not in job.log_tail() and not _alive(state.pid)


def test_a_job_killed_with_kill_9_says_killed(tmp_path):
    script = "import sys, time\nsys.stdout.write('fit: 100%|##| 1/1\\n'); sys.stdout.flush(); time.sleep(120)"
    job = TrainingJob(tmp_path, "victim", [("fit", ["-c", script]), ("never", ["-c", "print('ran')"])]).start()
    assert _until(lambda: job.state.pid is not None and "100%" in job.log_tail())
    os.kill(job.state.pid, signal.SIGKILL)
    state = job.wait(30)
    assert state.status == "killed" and state.error == "killed by signal SIGKILL"
    assert "job killed by signal SIGKILL" in job.log_tail() and "ran" not in job.log_tail()


_APP = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("jobs", {jobs!r})  # ui/jobs.py alone: no gradio import
jobs = sys.modules["jobs"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(jobs)
TrainingJob = jobs.TrainingJob
job = TrainingJob({root!r}, "orphan?", [("sleep", ["-c", "import time; time.sleep(120)"])]).start()
while job.state.pid is None:
    time.sleep(0.05)
print(job.state.pid, flush=True)
sys.stdin.readline()  # the test ends this "app" by closing stdin (normal exit) or by a signal
"""


@pytest.mark.parametrize("ending", ["exit", signal.SIGTERM, signal.SIGKILL])
def test_training_processes_end_with_the_app(tmp_path, ending):
    app = subprocess.Popen([sys.executable, "-c", _APP.format(jobs=str(REPO / "ui" / "jobs.py"), root=str(tmp_path))],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    child = None
    try:
        child = int(app.stdout.readline())
        assert _alive(child)
        if ending == "exit":
            app.stdin.close()
        else:
            app.send_signal(ending)
        app.wait(30)
        assert _until(lambda: not _alive(child), 30), f"training process {child} outlived the app ({ending})"
    finally:
        app.kill()
        if child is not None and _alive(child):
            os.kill(child, signal.SIGKILL)


@pytest.fixture
def launcher(tmp_path, monkeypatch):
    """A launcher whose jobs are built but not run (their commands are inspected)."""
    monkeypatch.setattr(TrainingJob, "start", lambda self: self)
    (tmp_path / "data").mkdir()
    (tmp_path / "lab").mkdir()
    return TrainingLauncher(Settings(data_dir=str(tmp_path / "data"), train_roots=str(tmp_path / "lab")))


def _argv(job, step: str) -> list[str]:
    return dict(job.commands)[step]


def test_datasets_and_backbones_are_read_only_from_allowed_roots(launcher, tmp_path):
    inside = tmp_path / "lab" / "subj01.h5"
    inside.write_bytes(b"h5")
    (tmp_path / "data" / "backbones" / "vit").mkdir(parents=True)
    job = launcher.start("nsd", str(inside), "ok-1", backbone=f"local-dir:{tmp_path / 'data/backbones/vit'}")
    argv = _argv(job, "train encoder")
    assert argv[argv.index("--data") + 1] == str(inside.resolve())
    assert argv[argv.index("--backbone") + 1] == f"local-dir:{(tmp_path / 'data/backbones/vit').resolve()}"
    job.state.status = "done"


def test_every_refused_path_gets_the_same_message(launcher, tmp_path):
    outside = tmp_path / "outside.h5"
    outside.write_bytes(b"h5")
    (tmp_path / "data" / "link.h5").symlink_to("/etc/passwd")
    refused = ["/etc/passwd", "/etc/no-such-file.h5", str(outside), str(tmp_path / "data" / "link.h5"),
               str(tmp_path / "data" / ".." / "outside.h5"), str(tmp_path / "data"), ""]
    messages = set()
    for path in refused:
        with pytest.raises(ServiceError) as err:
            launcher.start("generic", path, "x")
        head, tail = str(err.value).split("' is not available to the app", 1)
        assert head.startswith("Dataset '")
        messages.add(tail)  # all but the path as typed: the same whether the file exists or not
    assert len(messages) == 1
    for backbone, pretrained in (("local-dir:/etc", "none"), (f"local-dir:{tmp_path}", "none"),
                                 ("ViT-B-16", "/etc/passwd"), ("../../etc", "none")):
        with pytest.raises(ServiceError, match="is not available to the app"):
            launcher.start("synthetic", name="x", backbone=backbone, pretrained=pretrained)
    assert launcher.jobs == {}  # nothing started, no slot held


@pytest.mark.parametrize("kwargs,message", [
    (dict(dataset_kind="mri"), "`dataset` must be synthetic, nsd or generic, got 'mri'."),
    (dict(name="bad name!"), "`name` must be 1 to 64 letters, digits, '-' or '_', got 'bad name!'"),
    (dict(name="e" * 300), "(300 characters)"),
    (dict(cv=1), "`cv` must be a whole number from 2 to 20, got 1."),
    (dict(n_train=2.5), "`n_train` must be a whole number from 10 to 100000, got 2.5."),
])
def test_bad_training_requests_are_clear_errors(launcher, kwargs, message):
    kwargs = {"dataset_kind": "synthetic", "name": "x", **kwargs}
    with pytest.raises(ServiceError) as err:
        launcher.start(**kwargs)
    assert message in str(err.value)


def test_only_one_of_many_simultaneous_starts_runs(launcher):
    start = threading.Barrier(8)
    outcomes = []

    def press(i):
        start.wait(30)
        try:
            outcomes.append(launcher.start("synthetic", name=f"race-{i % 2}"))
        except ServiceError as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=press, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    jobs = [o for o in outcomes if isinstance(o, TrainingJob)]
    assert len(outcomes) == 8 and len(jobs) == 1 and list(launcher.jobs.values()) == jobs
    assert all("already running" in o for o in outcomes if isinstance(o, str))


def test_refusals_name_no_server_folder_and_never_depend_on_what_exists(launcher, tmp_path):
    """A refusal lists no allowed folder; a pretrained value is judged by its text (app.py exists, apq.py not)."""
    messages = []
    for pretrained in ("app.py", "apq.py", "ui/service.py", "ui/servicf.py"):
        with pytest.raises(ServiceError) as err:
            launcher.start("synthetic", name="x", pretrained=pretrained)
        messages.append(str(err.value).replace(repr(pretrained), "VALUE"))
        assert str(tmp_path) not in str(err.value) and "/" not in messages[-1]
    assert len(set(messages)) == 1, messages
    for tag in ("Makefile", "Makefilx", "laion2b_s34b_b88k"):  # bare tags are tags, whatever the folder holds
        job = launcher.start("synthetic", name=f"t-{tag}", pretrained=tag)
        assert _argv(job, "train encoder")[-3] == tag
        job.state.status = "done"


def test_the_app_asks_for_a_report_naming_files_relative_to_the_data_folder(launcher, tmp_path):
    from training.eval_encoder import public_name

    job = launcher.start("synthetic", name="rel")
    argv = _argv(job, "evaluate")
    base = argv[argv.index("--relative-to") + 1]
    assert Path(base).resolve() == (tmp_path / "data").resolve()
    assert public_name(argv[argv.index("--encoder") + 1], base) == "encoders/rel"
    assert public_name(argv[argv.index("--data") + 1], base) == "jobs/data-rel/synthetic.h5"
    assert public_name("/etc/hosts", base) == "hosts"  # outside the data folder: its name only
