"""Background training jobs: a chain of ``training`` CLI commands run as child processes.

Each job has a folder with ``log.txt`` (stdout and stderr of every command) and ``job.json`` (its
state). A crashed command ends the job as ``failed`` with the log kept; ``cancel`` terminates the
running command's process group. The app keeps running either way.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["TrainingJob", "JobState"]

REPO_ROOT = Path(__file__).resolve().parents[1]
_PERCENT = re.compile(r"(\d{1,3})%\|")


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
    status: str = "queued"  # queued | running | done | failed | cancelled
    step: int = 0
    n_steps: int = 0
    step_name: str = ""
    percent: int = 0
    started: float = field(default_factory=time.time)
    finished: float | None = None
    returncode: int | None = None
    outputs: dict = field(default_factory=dict)


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
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "TrainingJob":
        self._save()
        self._thread.start()
        return self

    def cancel(self) -> None:
        self._cancelled.set()
        proc = self._process
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)

    def wait(self, timeout: float | None = None) -> JobState:
        self._thread.join(timeout)
        return self.state

    @property
    def running(self) -> bool:
        return self.state.status in ("queued", "running")

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.is_file():
            return ""
        text = self.log_path.read_text(errors="replace").replace("\r", "\n")
        return "\n".join(_collapse_progress([line for line in text.splitlines() if line.strip()])[-lines:])

    def _run(self) -> None:
        self.state.status = "running"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO_ROOT)}
        with open(self.log_path, "a") as log:
            for index, (name, argv) in enumerate(self.commands, start=1):
                if self._cancelled.is_set():
                    break
                self.state.step, self.state.step_name, self.state.percent = index, name, 0
                self._save()
                log.write(f"$ {' '.join(argv)}\n")
                log.flush()
                self._process = subprocess.Popen([sys.executable, *argv], stdout=log, stderr=subprocess.STDOUT,
                                                 cwd=REPO_ROOT, env=env, start_new_session=True)
                while self._process.poll() is None:
                    self._update_percent()
                    time.sleep(0.5)
                self.state.returncode = self._process.returncode
                if self._process.returncode != 0:
                    break
        self.state.status = self._final_status()
        self.state.finished = time.time()
        self._save()

    def _final_status(self) -> str:
        if self._cancelled.is_set():
            return "cancelled"
        return "done" if self.state.returncode == 0 else "failed"

    def _update_percent(self) -> None:
        found = _PERCENT.findall(self.log_path.read_text(errors="replace")[-2000:])
        if found:
            self.state.percent = int(found[-1])

    def _save(self) -> None:
        (self.folder / "job.json").write_text(json.dumps(asdict(self.state), indent=2))
