"""Background training jobs: a chain of ``training`` CLI commands run as child processes.

Each command runs with the app's Python in the app's working directory (so relative data paths mean
the same to both) and imports ``training`` and ``braindive`` as installed packages (``pip install -e .``,
which ``make run`` does); no ``PYTHONPATH`` is set.

Each job has a folder with ``log.txt`` (stdout and stderr of every command) and ``job.json`` (its
state). A crashed command ends the job as ``failed`` with the log kept; so does an error of the job
runner itself (a command that cannot be started, an unwritable job folder), with the error in
``JobState.error`` and the log. ``cancel`` terminates the running command's process group; a cancel
that lands while a command is being started still stops it. The app keeps running either way.

Jobs end with the app: on Linux each command gets ``PR_SET_PDEATHSIG`` (SIGTERM when the app dies, even
by ``kill -9``), and ``shutdown_jobs`` (registered with ``atexit``) terminates every running job on a
normal exit. A command killed by a signal it was not sent by ``cancel`` ends the job as ``killed``; so
does a job whose ``job.json`` still says running after its app died (``read_job``, ``mark_orphans``).
"""
from __future__ import annotations

import atexit
import ctypes
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path

from braindive.cache import process_alive

__all__ = ["TrainingJob", "JobState", "shutdown_jobs", "read_job", "mark_orphans"]

log = logging.getLogger(__name__)
# pycortex prints this on import; braindive draws ROI outlines itself, so it only confuses a training log
_NOTICES = ("Inkscape not found. Some tests will be skipped.",)
_PERCENT = re.compile(r"(\d{1,3})%\|")
_LIVE: "weakref.WeakSet[TrainingJob]" = weakref.WeakSet()  # started jobs, for shutdown_jobs
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: have the kernel SIGTERM this process when the app (its parent) dies, however it dies."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the app died before prctl took effect
        os._exit(1)


def shutdown_jobs() -> None:
    """Cancel every running job (called at exit: training processes never outlive the app)."""
    for job in list(_LIVE):
        if job.running:
            job.cancel()


atexit.register(shutdown_jobs)


def _collapse_progress(lines: list[str]) -> list[str]:
    """Keep only the latest line of each run of progress-bar updates (same text before the percentage)."""
    kept: list[str] = []
    for line in lines:
        bar = _PERCENT.search(line)
        if bar and kept and _PERCENT.search(kept[-1]) and kept[-1][: bar.start()].strip() == line[: bar.start()].strip():
            kept[-1] = line
        else:
            kept.append(line)
    return kept


@dataclass
class JobState:
    id: str
    title: str
    status: str = "queued"  # queued | running | done | failed | cancelled | killed
    step: int = 0
    n_steps: int = 0
    step_name: str = ""
    percent: int = 0
    started: float = field(default_factory=time.time)
    finished: float | None = None
    returncode: int | None = None
    pid: int | None = None  # of the running command
    outputs: dict = field(default_factory=dict)
    error: str = ""  # why the job runner itself failed (not a command's non-zero exit)
    app_pid: int = field(default_factory=os.getpid)  # the app that runs the job (its commands die with it)


ORPHANED = "killed: the app stopped while the job ran"


def read_job(folder) -> JobState:
    """The state saved in ``folder/job.json``; a job left queued or running by an app that is gone is ``killed``.

    ``OSError`` / ``ValueError`` when the file cannot be read.
    """
    saved = json.loads((Path(folder) / "job.json").read_text())
    known = {k: v for k, v in saved.items() if k in JobState.__dataclass_fields__}
    known.setdefault("app_pid", None)  # written before app_pid existed: judged by its command's process
    state = JobState(**known)
    if state.status in ("queued", "running") and not process_alive(state.app_pid or state.pid):
        state.status, state.error = "killed", ORPHANED
    return state


def mark_orphans(root) -> list[JobState]:
    """Save as ``killed`` every job under ``root`` whose app died while it ran (e.g. ``kill -9`` of the app)."""
    marked = []
    for path in sorted(Path(root).glob("*/job.json")):
        try:
            state = read_job(path.parent)
            if state.error == ORPHANED and json.loads(path.read_text()).get("status") != "killed":
                state.finished = state.finished or path.stat().st_mtime
                path.write_text(json.dumps(asdict(state), indent=2))
                marked.append(state)
        except (OSError, ValueError, TypeError) as exc:
            log.warning("training job state %s cannot be read: %s", path, exc)
    return marked


class TrainingJob:
    """Run ``commands`` (lists of argv, each a ``python -m ...`` module call) one after another."""

    def __init__(self, root, title: str, commands: list[tuple[str, list[str]]], outputs: dict | None = None):
        self.state = JobState(id=uuid.uuid4().hex[:10], title=title, n_steps=len(commands), outputs=outputs or {})
        self.folder = Path(root) / self.state.id
        self.folder.mkdir(parents=True, exist_ok=True)
        self.log_path = self.folder / "log.txt"
        self.commands = commands
        self._process: subprocess.Popen | None = None
        self._cancelled = threading.Event()
        self._lock = threading.Lock()  # orders cancel() against starting a command
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "TrainingJob":
        try:
            self._save()
        except Exception as exc:  # e.g. an unwritable jobs folder: the job ends at once, as failed
            self._fail(exc)
            return self
        _LIVE.add(self)
        self._thread.start()
        return self

    def cancel(self) -> None:
        # Under the lock a cancel either precedes the runner's check (the next command never starts)
        # or follows its Popen (the command just started is killed): none slips in between.
        with self._lock:
            self._cancelled.set()
            self._kill()

    def _kill(self) -> None:
        """SIGTERM the running command's process group, if any (call with ``_lock`` held)."""
        proc = self._process
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):  # it exited after poll() (macOS: PermissionError)
                pass

    def wait(self, timeout: float | None = None) -> JobState:
        if self._thread.ident is not None:  # never started when start() failed
            self._thread.join(timeout)
        return self.state

    @property
    def running(self) -> bool:
        return self.state.status in ("queued", "running")

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").replace("\r", "\n")
        except OSError:  # not written yet, or unreadable: nothing to show
            return ""
        kept = [line for line in text.splitlines() if line.strip() and not line.startswith(_NOTICES)]
        return "\n".join(_collapse_progress(kept)[-lines:])

    def _run(self) -> None:
        try:
            self.state.status = "running"
            self._run_commands()
            self.state.status = self._final_status()
            if self.state.status == "killed":
                self.state.error = f"killed by signal {signal.Signals(-self.state.returncode).name}"
                with open(self.log_path, "a") as out:
                    out.write(f"\njob {self.state.error} (not by Cancel)\n")
        except Exception as exc:  # the runner itself failed: the job must still end, as failed
            with self._lock:
                self._kill()  # leave no command running unwatched
            self._fail(exc)
        finally:
            self.state.finished = time.time()
            try:
                self._save()
            except Exception:
                log.exception("could not save the state of training job %s", self.state.id)

    def _fail(self, exc: Exception) -> None:
        """End the job as ``failed`` with ``exc`` as its error, also appended to the log when possible."""
        log.error("training job %s failed: %r", self.state.id, exc, exc_info=exc)
        self.state.status = "failed"
        self.state.error = f"{type(exc).__name__}: {exc}"
        self.state.finished = time.time()
        try:
            with open(self.log_path, "a") as out:
                out.write(f"\njob failed: {self.state.error}\n")
        except OSError:
            pass

    def _run_commands(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "a") as out:
            for index, (name, argv) in enumerate(self.commands, start=1):
                if self._cancelled.is_set():
                    break
                self.state.step, self.state.step_name, self.state.percent = index, name, 0
                self._save()
                out.write(f"$ {Path(sys.executable).name} {' '.join(argv)}\n")  # the interpreter by name, not path
                out.flush()
                with self._lock:
                    if self._cancelled.is_set():
                        break
                    self._process = subprocess.Popen([sys.executable, *argv], stdout=out, stderr=subprocess.STDOUT,
                                                     env=env, start_new_session=True,
                                                     preexec_fn=_die_with_parent if sys.platform == "linux" else None)
                process = self._process
                self.state.pid = process.pid
                self._save()
                while process.poll() is None:
                    self._update_percent()
                    time.sleep(0.5)
                self.state.returncode = process.returncode
                if process.returncode != 0:
                    break

    def _final_status(self) -> str:
        if self._cancelled.is_set():
            return "cancelled"
        code = self.state.returncode
        return "done" if code == 0 else "killed" if code is not None and code < 0 else "failed"

    def _update_percent(self) -> None:
        try:  # the percentage is cosmetic: a log that cannot be read now must not end the job
            found = _PERCENT.findall(self.log_path.read_text(errors="replace")[-2000:])
        except OSError:
            return
        if found:
            self.state.percent = int(found[-1])

    def _save(self) -> None:
        (self.folder / "job.json").write_text(json.dumps(asdict(self.state), indent=2))
