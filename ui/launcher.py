"""Starting training jobs from the app: checked names, allowed data roots, one job at a time.

The Train tab may read datasets and backbones only under the data folder and the folders named at
start-up (``Settings.train_roots``), checked by ``ui.paths``.
"""
from __future__ import annotations

import re
import threading
import uuid

from .jobs import TrainingJob, mark_orphans
from .paths import inside_roots, refused
from .registry import ServiceError
from .validation import whole

__all__ = ["TrainingLauncher", "DATASET_KINDS"]

DATASET_KINDS = ("synthetic", "nsd", "generic")
SYNTHETIC_SUBJECTS = ("S1", "S1-fullhead")  # built-in voxel spaces a synthetic dataset can be drawn on
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,99}")  # an OpenCLIP pretrained tag; anything else is a file path
_MODEL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")  # an OpenCLIP model name
_HUB = re.compile(r"hf-hub:[A-Za-z0-9_.-]{1,96}/[A-Za-z0-9_.-]{1,96}")


class TrainingLauncher:
    def __init__(self, settings):
        self.settings = settings
        self.jobs: dict[str, TrainingJob] = {}
        self._lock = threading.Lock()  # the "already running" check, the name check and the start are one step
        mark_orphans(settings.jobs_dir)  # jobs of an app that was killed: their job.json said "running"

    def _backbone(self, backbone: str, pretrained: str) -> tuple[str, str]:
        """The backbone and pretrained arguments, with any local path checked against the allowed roots."""
        backbone, pretrained = backbone.strip(), (pretrained.strip() or "none")
        if backbone.startswith("local-dir:"):
            local = inside_roots(self.settings, backbone[len("local-dir:"):], "Backbone", want_dir=True)
            backbone = f"local-dir:{local}"
        elif not (_MODEL.fullmatch(backbone) or _HUB.fullmatch(backbone)):
            raise refused("Backbone", backbone)
        if not _TAG.fullmatch(pretrained):  # decided by the text alone: the answer never says what exists
            pretrained = str(inside_roots(self.settings, pretrained, "Pretrained file", want_dir=False))
        return backbone, pretrained

    def start(self, dataset_kind: str, dataset_path: str = "", name: str = "", n_train: int = 600, n_test: int = 150,
              backbone: str = "braindive-tiny-vit", pretrained: str = "none", cv: int = 5,
              subject: str = "S1") -> TrainingJob:
        """Launch dataset preparation (synthetic, on ``subject``) + ``train_encoder`` + ``eval_encoder`` in the background."""
        if dataset_kind not in DATASET_KINDS:
            raise ServiceError(f"`dataset` must be synthetic, nsd or generic, got {str(dataset_kind)[:40]!r}.")
        if subject not in SYNTHETIC_SUBJECTS:
            raise ServiceError(f"`subject` of a synthetic dataset must be one of {SYNTHETIC_SUBJECTS}, "
                               f"got {str(subject)[:40]!r}.")
        name = (name or "").strip() or f"encoder-{uuid.uuid4().hex[:6]}"
        if not _NAME.fullmatch(name):
            shown = name if len(name) <= 40 else name[:40] + "…"
            raise ServiceError(f"`name` must be 1 to 64 letters, digits, '-' or '_', got {shown!r} ({len(name)} characters).")
        n_train, n_test = whole(n_train, "n_train", 10, 100_000), whole(n_test, "n_test", 10, 100_000)
        cv = whole(cv, "cv", 2, 20)
        backbone, pretrained = self._backbone(backbone, pretrained)
        data = None
        if dataset_kind != "synthetic":
            data = inside_roots(self.settings, dataset_path or "", "Dataset", want_dir=False)
        with self._lock:
            if any(job.running for job in self.jobs.values()):
                raise ServiceError("A training job is already running; wait for it or cancel it.")
            checkpoint = self.settings.models_dir / name
            if checkpoint.exists():
                raise ServiceError(f"An encoder named {name!r} already exists; choose another name.")
            job = self._job(dataset_kind, data, name, n_train, n_test, backbone, pretrained, cv, subject)
            self.jobs[job.state.id] = job
            return job.start()

    def _job(self, dataset_kind, data, name, n_train, n_test, backbone, pretrained, cv, subject) -> TrainingJob:
        s = self.settings
        checkpoint, report = s.models_dir / name, s.reports_dir / name
        commands = []
        if data is None:
            data = s.jobs_dir / f"data-{name}" / "synthetic.h5"
            commands.append(("synthetic dataset", ["-m", "training.synthetic", "--out", str(data), "--subject", subject,
                                                   "--n-train", str(n_train), "--n-test", str(n_test)]))
        commands.append(("train encoder", ["-m", "training.train_encoder", "--data", str(data), "--out", str(checkpoint),
                                           "--backbone", backbone, "--pretrained", pretrained, "--cv", str(cv)]))
        commands.append(("evaluate", ["-m", "training.eval_encoder", "--encoder", str(checkpoint), "--data", str(data),
                                      "--out", str(report), "--relative-to", str(s.data_dir)]))
        on = f"synthetic {subject}" if dataset_kind == "synthetic" else dataset_kind
        return TrainingJob(s.jobs_dir, f"{name} on {on}", commands,
                           outputs={"encoder": name, "checkpoint": str(checkpoint), "report": str(report)})
