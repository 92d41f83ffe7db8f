"""The app's service: what the UI tabs call. It never holds models itself.

It composes the model registry (``ui.registry``), request validation (``ui.validation``), the
generation queue and worker (``ui.generation``), the results catalog and training jobs
(``ui.launcher``). Library errors become ``ServiceError`` with a message for people; the UI shows
it with ``gr.Error``.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

import braindive as bd
from braindive.cache import private_tmp, remove_stale_temp_files
from braindive.catalog import Catalog, Entry
from braindive.generate import SeedResult, seed_record
from braindive.targets import Target

from .generation import GeneratedImage, GenerationRequest, Progress, Runner, Slots, Waiting, storage_error
from .launcher import TrainingLauncher
from .registry import DEMO_ENCODER, ModelRegistry, ServiceError, subject_label
from .settings import Settings
from .validation import CUSTOM, MODES, OBJECTIVES, check_request, target_of
from .zerogpu import gpu_duration, gpu_task

__all__ = ["Service", "ServiceError", "GenerationRequest", "Progress", "Waiting", "ImageResult", "Finished",
           "OBJECTIVES", "MODES", "CUSTOM", "DEMO_ENCODER"]

log = logging.getLogger(__name__)
VIEW = "voxels"  # flatmaps zoomed to the subject's voxels
OWNER_PREFIX = "key:"  # a catalog owner that is a keyed hash (``Service.owner_of``)
EVALUATION_GPU_SECONDS = 120  # ZeroGPU budget of one CLIP evaluation of a selection


@dataclass
class ImageResult(GeneratedImage):
    """A generated image once cataloged: what the UI shows."""

    roi_means: dict
    baseline_roi_means: dict
    entry: Entry
    target: Target

    @property
    def caption(self) -> str:
        """``seed 0 · min PPA · PPA mean -1.72 (unguided 1.40)``: the label and the signed measure, as records keep them."""
        return (f"seed {self.seed} · {self.target.label} · {self.target.value_text(self.measure)} "
                f"(unguided {self.baseline_measure:.2f})")


@dataclass
class Finished:
    results: list
    interrupted: bool
    message: str


class Service:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.catalog = Catalog(settings.catalog_dir)
        self.models = ModelRegistry(settings)
        self.runner = Runner(self.models, settings, self.catalog)
        self.slots = Slots(settings.concurrency)
        self.training = TrainingLauncher(settings)
        self.jobs = self.training.jobs
        self._cancel: dict[str, threading.Event] = {}
        self._stream = gpu_task(self.runner.stream, duration=self.gpu_seconds)
        self._classify = gpu_task(_classify, duration=EVALUATION_GPU_SECONDS)
        settings.models_dir.mkdir(parents=True, exist_ok=True)
        self._owner_secret = owner_secret(settings.owner_key_path)
        self.catalog.hash_owners(self._keyed, OWNER_PREFIX)  # catalogs written when owners were stored in the clear
        for folder in settings.exports_dir.glob("*/"):  # ZIPs being written when the app was killed
            remove_stale_temp_files(folder)

    # ------------------------------------------------------------------ models (see ui.registry)

    @property
    def preset(self) -> str:
        return self.models.preset

    def backend(self):
        return self.models.backend()

    def label(self) -> str:
        return self.backend().label

    def encoder_names(self) -> list[str]:
        return self.models.encoder_names()

    def encoder(self, name: str) -> bd.BrainEncoder:
        return self.models.encoder(name)

    def subject_of(self, encoder_name: str) -> bd.Subject:
        return self.models.subject_of(encoder_name)

    def subject(self, name: str) -> bd.Subject:
        return self.models.subject(name)

    def subject_names(self) -> list[str]:
        return self.models.subject_names()

    def subject_in_space(self, name: str, fingerprint: str = "") -> bd.Subject:
        """The subject a record names, by its voxel-space fingerprint (names are for people; "" : by name)."""
        return self.models.subject_in_space(name, fingerprint)

    def encoders_for(self, subject_label: str) -> list[str]:
        return self.models.encoders_for(subject_label)

    # ------------------------------------------------------------------ flatmaps and selection

    def flatmap(self, subject_name: str, values=None, highlight=None, title=None, **kwargs) -> np.ndarray:
        subject = self.subject(subject_name)
        try:
            return bd.render_flatmap(values, subject, highlight=highlight, title=title, view=VIEW, **kwargs)
        except ValueError as exc:
            raise ServiceError(str(exc)) from exc

    def flatmap_shape(self, subject_name: str) -> tuple[int, int]:
        return bd.flatmap_shape(self.subject(subject_name), view=VIEW)

    def pick(self, subject_name: str, x: float, y: float, image_shape) -> bd.Pick | None:
        try:
            return bd.pick(self.subject(subject_name), x, y, image_shape, view=VIEW)
        except ValueError as exc:
            raise ServiceError(str(exc)) from exc

    def grow(self, subject_name: str, voxel: int, radius_mm: float) -> np.ndarray:
        return bd.grow(self.subject(subject_name), voxel, radius_mm)

    def painted_voxels(self, subject_name: str, mask: np.ndarray) -> np.ndarray:
        try:
            voxels = bd.voxels_in_mask(self.subject(subject_name), mask, view=VIEW)
        except ValueError as exc:
            raise ServiceError(str(exc)) from exc
        if len(voxels) == 0:
            raise ServiceError("The painted area covers no voxels of this subject; paint over the coloured cortex.")
        return voxels

    # ------------------------------------------------------------------ who sees which results

    def owner_of(self, request) -> str:
        """The owner recorded in the catalog index and used to filter History: "" when History is shared.

        ``session``: the browser session; ``account``: the signed-in user (else the session). A session id
        is a bearer secret (it can stop runs, read the session's state), so only its keyed hash
        (``owner_key``) is stored: never the id, and never in a served record.
        """
        mode = self.settings.history
        if mode == "shared" or request is None:
            return ""
        user = getattr(request, "username", None) if mode == "account" else None
        return self._keyed(f"user:{user}" if user else f"session:{getattr(request, 'session_hash', None) or 'anonymous'}")

    def _keyed(self, owner: str) -> str:
        return OWNER_PREFIX + hmac.new(self._owner_secret, owner.encode(), hashlib.sha256).hexdigest()

    def history_owner(self, request) -> str | None:
        """The ``owner=`` filter for the catalog: None (everyone's results) when History is shared."""
        return self.owner_of(request) if self.settings.history != "shared" else None

    # ------------------------------------------------------------------ generation

    def validate(self, request: GenerationRequest) -> tuple[GenerationRequest, Target, bd.Subject]:
        """Re-check every bound the UI enforces; returns the completed request, its target and subject."""
        request = check_request(request, self.settings, self.backend().defaults["brain_guidance_scale"])
        encoder = self.encoder(request.encoder)
        subject = self.subject_of(request.encoder)
        if request.subject not in (subject.name, subject_label(subject)):
            raise ServiceError(f"Encoder {request.encoder!r} is for subject {subject_label(subject)!r}, "
                               f"not {str(request.subject)[:60]!r}.")
        if request.subject_space and request.subject_space != subject.fingerprint:  # names are for people
            raise ServiceError(f"Encoder {request.encoder!r} is in voxel space {subject.fingerprint[:12]}… of "
                               f"{subject_label(subject)!r}, not the requested space {str(request.subject_space)[:12]}….")
        try:
            encoder.check_subject(subject)
            return request, target_of(request, subject), subject
        except ValueError as exc:
            raise ServiceError(str(exc)) from exc

    def gpu_seconds(self, request: GenerationRequest, target=None, slot=None) -> int:
        """The ZeroGPU budget of one request: guided + unguided run of every image, every step."""
        return gpu_duration(request.steps, request.n_images, self.settings.gpu_step_seconds)

    def cancel(self, session: str) -> bool:
        event = self._cancel.get(session)
        if event is None:
            return False
        event.set()
        self.slots.wake()
        return True

    def generate(self, request: GenerationRequest, session: str = "default",
                 owner: str = "") -> Iterator[Waiting | Progress | ImageResult | Finished]:
        """Stream ``Waiting`` while queued, ``Progress`` per step, an ``ImageResult`` per image, then ``Finished``.

        The GPU work runs in ``runner.stream`` (on a ZeroGPU Space: in a GPU process, so its arguments
        and items are plain data) on a pipeline slot. ``cancel(session)`` takes a waiting request out
        of the queue, or stops a running one after its current step; images already finished are kept.
        """
        request, target, subject = self.validate(request)
        if self.slots.waiting >= self.settings.queue_size and self.slots.running >= self.slots.n:
            raise ServiceError(f"The queue is full ({self.slots.waiting} generations waiting); please retry shortly.")
        cancel = threading.Event()
        self._cancel[session] = cancel
        run_id = uuid.uuid4().hex[:10]
        results: list[ImageResult] = []
        ticket, slot = self.slots.join(), None
        try:
            ahead = None
            while slot is None and not cancel.is_set():
                slot, ahead = self.slots.wait(ticket, cancel, ahead)
                if slot is None and not cancel.is_set():
                    yield Waiting(ahead)
            if slot is not None:
                yield from self._run(request, target, subject, slot, run_id, owner, cancel, results)
        finally:
            self.slots.leave(ticket)
            if slot is not None:
                self.slots.release(slot)
            if self._cancel.get(session) is cancel:
                del self._cancel[session]
        if slot is None:
            yield Finished([], True, "Stopped while waiting: nothing was generated.")
            return
        interrupted = len(results) < request.n_images
        message = f"Stopped: kept {len(results)} finished image(s)." if interrupted else f"Done: {len(results)} image(s)."
        yield Finished(results, interrupted, message)

    def _run(self, request, target, subject, slot, run_id, owner, cancel, results) -> Iterator:
        stream = self._stream(request, target, slot)
        try:
            for item in stream:
                if isinstance(item, ServiceError):  # a request that fails leaves no results behind
                    self._discard(results)
                    raise item
                if isinstance(item, GeneratedImage):
                    try:
                        item = self._store(item, request, target, subject, run_id, owner)
                    except ServiceError:  # a request that fails leaves no results behind
                        self._discard(results)
                        raise
                    results.append(item)
                yield item
                if cancel.is_set():
                    break
        finally:
            stream.close()

    def _discard(self, results: list) -> None:
        try:
            self.catalog.remove([r.entry.id for r in results])
        except (OSError, sqlite3.Error) as exc:
            log.warning("results of a failed request stay in the catalog: %s", exc)
        results.clear()

    def _store(self, generated: GeneratedImage, request, target, subject, run_id, owner) -> ImageResult:
        """Catalog a finished image with its record (``braindive.generate.seed_record``, as the CLI and batch)."""
        result = SeedResult(generated.seed, generated.image, generated.activations, generated.measure,
                            generated.baseline_image, generated.baseline_activations, generated.baseline_measure,
                            generated.baseline_key, generated.baseline_reused)
        record = seed_record(result, target, subject, self.runner.generation_settings(request),
                             model=self.backend().name, encoder=request.encoder)
        try:
            entry = self.catalog.add(generated.image, record, run_id=run_id, activations=generated.activations, owner=owner)
        except OSError as exc:  # nothing of this image is kept (Catalog.add); a full disk says so
            raise storage_error(exc) from exc
        return ImageResult(**vars(generated), roi_means=record["roi_means"],
                           baseline_roi_means=record["baseline_roi_means"], entry=entry, target=target)

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, ids, config=None):
        """CLIP 5-way evaluation of the catalog entries ``ids``: the classifier is built once per settings and runs
        as a GPU task; the evaluation is stored in the catalog. Returns ``(evaluation, report paths)``."""
        from braindive.evaluation import ZeroShotConfig
        from braindive.evaluation.report import EVALUATIONS_DIR, store, write_report
        from braindive.evaluation.sets import generated_sets

        evaluation = self._classify(generated_sets(ids, self.catalog), config or ZeroShotConfig())
        store(evaluation, self.catalog.root)
        return evaluation, write_report(evaluation, self.catalog.root / EVALUATIONS_DIR / evaluation.id)

    # ------------------------------------------------------------------ training jobs (see ui.launcher)

    def start_training(self, *args, **kwargs):
        return self.training.start(*args, **kwargs)


def owner_secret(path: Path) -> bytes:
    """The server's secret for owner hashes, created once (mode 0600) in the data folder, which is never served."""
    if not path.exists():
        tmp = private_tmp(path)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
            os.link(tmp, path)  # atomic, and never over a key another process made first
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    try:
        secret = bytes.fromhex(path.read_text().strip())
    except ValueError:
        secret = b""
    if len(secret) < 32:
        raise ServiceError(f"The owner key {path.name} in the data folder is damaged: delete it (History's "
                           "per-session owners then start afresh).")
    return secret


def _classify(sets, config):
    """The GPU part of an evaluation: classify every image set with the (cached) zero-shot classifier."""
    from braindive.evaluation import load_classifier
    from braindive.evaluation.report import evaluate

    return evaluate(sets, load_classifier(config))
