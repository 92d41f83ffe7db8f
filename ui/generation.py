"""Generation streaming: pipeline slots with a cancellable FIFO queue, the worker, and its item stream.

``Slots`` hands out the backend's pipelines (``Settings.concurrency`` of them) in arrival order; a
request waits on a condition variable (no polling), learns how many generations are before it, and
leaves the queue at once when cancelled. ``Runner.stream`` runs one request on one pipeline in a
worker thread and yields its ``Progress`` / ``GeneratedImage`` items as they arrive. Each image is
``braindive.generate.generate_seed`` (the routine of the CLI and batch); the unguided baseline of a seed
is kept in the catalog, so a second region on the same seed skips the unguided stage.
"""
from __future__ import annotations

import errno
import logging
import queue
import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import PIL.Image
import torch

from braindive.generate import GenerationSettings, generate_seed
from braindive.targets import Target

from .registry import ServiceError

__all__ = ["Slots", "Runner", "Waiting", "Progress", "GeneratedImage", "GenerationRequest", "PREVIEW_SIZE"]

log = logging.getLogger(__name__)
PREVIEW_SIZE = 256
_END = object()  # the worker's last item; never leaves ``Runner.stream``


@dataclass
class GenerationRequest:
    subject: str = "S1"
    encoder: str = "demo"
    target: str = "FFA"                 # ROI name, or CUSTOM with ``voxels``
    voxels: tuple = ()
    objective: str = "maximize"
    contrast_target: str = ""
    weight: float = 1.0
    scale: float | None = None          # None: the model's default
    steps: int = 25
    scheduler: str = "dpm"
    seed: int = 0
    n_images: int = 1
    prompt: str = ""
    sag_scale: float = 0.75
    mode: str = "exact"               # the published computation, executed well (benchmarks/RESULTS.md)
    subject_space: str = ""           # the subject's voxel-space fingerprint, when known: it must match the encoder's


@dataclass
class Waiting:
    """The request is queued: ``ahead`` generations run or wait before it."""

    ahead: int

    @property
    def message(self) -> str:
        return f"Waiting for {self.ahead} other generation{'s' if self.ahead != 1 else ''}…"


@dataclass
class Progress:
    image_index: int
    n_images: int
    step: int
    total_steps: int
    preview: PIL.Image.Image | None
    stage: str = "brain-guided"  # or "unguided comparison": the same seed without guidance, for the baseline


@dataclass
class GeneratedImage:
    """A finished image as the GPU worker hands it over (plain data: it may cross a process boundary).

    ``measure`` / ``baseline_measure``: the target's signed measure (``Target.measure``) of the guided and the
    unguided image; ``baseline_reused``: the unguided image came from the catalog (same seed, another target).
    """

    index: int
    seed: int
    image: PIL.Image.Image
    baseline_image: PIL.Image.Image
    measure: float
    baseline_measure: float
    activations: np.ndarray
    baseline_activations: np.ndarray
    baseline_key: str
    baseline_reused: bool


class Slots:
    """``n`` pipeline slots shared first come, first served; waiting requests can leave before they start."""

    def __init__(self, n: int):
        self.n = n
        self._free = list(range(n))
        self._queue: list[object] = []
        self._cond = threading.Condition()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return self.n - len(self._free)

    def join(self) -> object:
        """A ticket at the end of the queue."""
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
        return ticket

    def wait(self, ticket, cancel: threading.Event, seen: int | None) -> tuple[int | None, int]:
        """Block until the ticket gets a slot (returns it), ``cancel`` is set, or the number ahead is not ``seen``.

        Returns ``(slot or None, generations ahead)``; the ticket leaves the queue when it gets a slot.
        """
        with self._cond:
            while True:
                position = self._queue.index(ticket)
                if cancel.is_set():
                    return None, self.running + position
                if position < len(self._free):
                    self._queue.remove(ticket)
                    self._cond.notify_all()
                    return self._free.pop(0), 0
                ahead = self.running + position
                if ahead != seen:
                    return None, ahead
                self._cond.wait()

    def leave(self, ticket) -> None:
        with self._cond:
            if ticket in self._queue:
                self._queue.remove(ticket)
                self._cond.notify_all()

    def release(self, slot: int) -> None:
        with self._cond:
            self._free.append(slot)
            self._cond.notify_all()

    def wake(self) -> None:
        """Let waiting requests re-check their cancel flags."""
        with self._cond:
            self._cond.notify_all()


class Runner:
    """Runs requests on the registry's pipelines; ``stream`` is the GPU task (plain-data arguments and items)."""

    def __init__(self, registry, settings, catalog=None):
        self.registry = registry
        self.settings = settings
        self.catalog = catalog  # keeps the unguided baselines (braindive.generate.baseline_key)

    def generation_settings(self, request: GenerationRequest) -> GenerationSettings:
        """The checked request's ``GenerationSettings`` (image size from the app's settings or the model)."""
        defaults = self.registry.backend().defaults
        size = self.settings.image_size
        return GenerationSettings(mode=request.mode, scale=float(request.scale), steps=request.steps,
                                  scheduler=request.scheduler, sag=float(request.sag_scale), prompt=request.prompt,
                                  height=size or defaults["height"], width=size or defaults["width"])

    def stream(self, request: GenerationRequest, target: Target, slot: int) -> Iterator:
        """Run the request on pipeline ``slot`` in a worker thread; yield its items as they arrive.

        Ends after the last image, or with one ``ServiceError`` item. Closing it stops the worker after
        the pipeline's current step and returns once the worker has let go of the pipeline.
        """
        stop = threading.Event()
        events: queue.Queue = queue.Queue()
        worker = threading.Thread(target=self._work, args=(request, target, slot, stop, events), daemon=True)
        worker.start()
        try:
            while (item := events.get()) is not _END:  # the worker always ends with _END
                yield item
                if isinstance(item, ServiceError):
                    return
        finally:
            stop.set()
            worker.join()

    def _work(self, request, target, slot, stop, events) -> None:
        """The worker: every image of the request, then ``_END`` (always), errors as ``ServiceError`` items."""
        try:
            pipe = self.registry.backend().pipes[slot]
            pipe.set_encoder(self.registry.encoder(request.encoder))
            for k in range(request.n_images):
                generated = None if stop.is_set() else self._one_image(pipe, request, target, k, stop, events)
                if generated is None:
                    break
                events.put(generated)
        except Exception as exc:  # every failure reaches the user as a message
            events.put(user_error(exc, request))
        finally:
            events.put(_END)

    def _one_image(self, pipe, request, target, k, stop, events) -> GeneratedImage | None:
        """The guided image of seed ``seed + k`` and its unguided baseline (from the catalog when kept); None if stopped."""

        def progress(stage, preview):
            def on_step(pipe, i, t, tensors):
                if stop.is_set():
                    pipe.interrupt()
                total = len(pipe.scheduler.timesteps)  # PNDM runs one step more than asked
                events.put(Progress(k, request.n_images, i + 1, total,
                                    _preview(tensors["x0_preview"]) if preview else None, stage))
                return {}
            return on_step

        subject = self.registry.subject_of(request.encoder)
        result = generate_seed(pipe, target, request.seed + k, self.generation_settings(request), subject=subject,
                               baselines=self.catalog, model=self.registry.backend().name,
                               encoder=self.registry.identity(request.encoder), on_step=progress("brain-guided", True),
                               on_baseline_step=progress("unguided comparison", True), preview=True)
        if result is None:
            return None
        return GeneratedImage(k, result.seed, result.image, result.baseline_image, result.measure,
                              result.baseline_measure, result.activations, result.baseline_activations,
                              result.baseline_key, result.baseline_reused)


def user_error(exc: Exception, request: GenerationRequest) -> ServiceError:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        torch.cuda.empty_cache()
        return ServiceError(f"The GPU ran out of memory generating {request.n_images} image(s) with {request.steps} "
                            "steps. Try fewer images; the model is still loaded and ready.")
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, (ValueError, FileNotFoundError, FloatingPointError, KeyError)):
        return ServiceError(str(exc))
    if isinstance(exc, OSError):  # the unguided baseline could not be stored
        return storage_error(exc)
    log.exception("generation failed")
    return ServiceError(f"Generation failed ({type(exc).__name__}: {exc}). The app is still running.")


DISK_FULL = "The disk of the server is full: nothing was saved. Free some space in the data folder and try again."


def storage_error(exc: OSError) -> ServiceError:
    """A failed write as a message for people: a full disk says so; no server path is shown."""
    if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return ServiceError(DISK_FULL)
    return ServiceError(f"The result could not be saved: {exc.strerror or type(exc).__name__}.")


def _preview(pixels: torch.Tensor) -> PIL.Image.Image:
    array = (pixels[0].permute(1, 2, 0).float().cpu().numpy() * 255).round().clip(0, 255).astype(np.uint8)
    image = PIL.Image.fromarray(array)
    if max(image.size) > PREVIEW_SIZE:
        image.thumbnail((PREVIEW_SIZE, PREVIEW_SIZE))
    return image
