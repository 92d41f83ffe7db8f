"""The app's service layer: owns the models, runs generations in a worker, streams progress.

UI tabs call these methods and never touch models. Library errors become ``ServiceError`` with a
message for people; the UI shows it with ``gr.Error``.
"""
from __future__ import annotations

import logging
import queue
import threading
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import PIL.Image
import torch

import braindive as bd
from braindive.catalog import Catalog, Entry
from braindive.pipeline import SCHEDULERS
from braindive.records import generation_record

from .activation import save_unguided
from .jobs import TrainingJob
from .settings import Settings
from .zerogpu import gpu_task

__all__ = ["Service", "ServiceError", "GenerationRequest", "Progress", "ImageResult", "Finished", "OBJECTIVES", "MODES"]

log = logging.getLogger(__name__)
OBJECTIVES = ("maximize", "minimize", "contrast")
MODES = ("exact", "fast", "reference")  # guidance modes the service accepts; Explore offers exact and fast
CUSTOM = "custom voxel set"
VIEW = "voxels"  # flatmaps zoomed to the subject's voxels
DEMO_ENCODER = "demo"
PREVIEW_SIZE = 256


class ServiceError(Exception):
    """A problem to show to the user; the app keeps running."""


@dataclass
class GenerationRequest:
    subject: str = "S1"
    encoder: str = DEMO_ENCODER
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
    """A finished image as the GPU worker hands it over (plain data: it may cross a process boundary)."""

    index: int
    seed: int
    image: PIL.Image.Image
    baseline_image: PIL.Image.Image
    objective: float
    baseline_objective: float
    activations: np.ndarray
    baseline_activations: np.ndarray


@dataclass
class ImageResult(GeneratedImage):
    """A generated image once cataloged: what the UI shows."""

    roi_means: dict
    baseline_roi_means: dict
    entry: Entry
    target: str


_END = object()  # the worker's last item; never leaves ``_stream``


@dataclass
class Finished:
    results: list
    interrupted: bool
    message: str


@dataclass
class _Backend:
    """A diffusion pipeline and how to call it."""

    pipe: bd.BrainDiVEPipeline
    name: str
    label: str
    defaults: dict
    lock: threading.Lock = field(default_factory=threading.Lock)


class Service:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.catalog = Catalog(settings.catalog_dir)
        self._backend: _Backend | None = None
        self._encoders: dict[str, bd.BrainEncoder] = {}
        self._subjects: dict[str, bd.Subject] = {}
        self._cancel: dict[str, threading.Event] = {}
        self.jobs: dict[str, TrainingJob] = {}
        self._load_lock = threading.Lock()
        self._stream = gpu_task(self._stream)
        settings.models_dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ models

    @property
    def preset(self) -> str:
        if self.settings.preset != "auto":
            return self.settings.preset
        return "sd21" if torch.cuda.is_available() and self.settings.encoder else "demo"

    def backend(self) -> _Backend:
        with self._load_lock:
            if self._backend is None:
                self._backend = self._load_backend()
            return self._backend

    def _load_backend(self) -> _Backend:
        if self.preset == "demo":
            bundle = bd.demo.load()
            self._encoders[DEMO_ENCODER] = bundle.encoder
            self._subjects[bundle.subject.name] = bundle.subject
            return _Backend(bundle.pipe, "demo:tiny-sd", bundle.label, bundle.defaults)
        if not self.settings.encoder:
            raise ServiceError("The sd21 preset needs an encoder: start the app with --encoder PATH_OR_HUB_ID "
                               "(train one in the Train tab or with `python -m training.train_encoder`).")
        cuda = torch.cuda.is_available()
        pipe = bd.BrainDiVEPipeline.from_pretrained(self.settings.model, torch_dtype=torch.float16 if cuda else torch.float32)
        pipe.to("cuda" if cuda else "cpu")
        pipe.set_progress_bar_config(disable=True)
        defaults = {"height": 512, "width": 512, "num_inference_steps": 50, "brain_guidance_scale": 130.0, "sag_scale": 0.75}
        return _Backend(pipe, self.settings.model, f"{self.settings.model} + your encoder", defaults)

    def label(self) -> str:
        return self.backend().label

    def encoder_names(self) -> list[str]:
        names = [DEMO_ENCODER] if self.preset == "demo" else []
        if self.settings.encoder:
            names.append(self.settings.encoder)
        names += sorted(p.name for p in self.settings.models_dir.iterdir() if (p / "config.json").is_file())
        return names

    def encoder(self, name: str) -> bd.BrainEncoder:
        self.backend()
        if name not in self._encoders:
            if name not in self.encoder_names():
                raise ServiceError(f"Unknown encoder {name!r}; available: {self.encoder_names()}.")
            path = self.settings.models_dir / name if (self.settings.models_dir / name).is_dir() else name
            try:
                self._encoders[name] = bd.load_encoder(path)
            except (ValueError, FileNotFoundError, RuntimeError) as exc:
                raise ServiceError(f"Could not load encoder {name!r}: {exc}") from exc
        return self._encoders[name]

    def subject_of(self, encoder_name: str) -> bd.Subject:
        """The encoder's subject: built in by name, else ``--subject``, else the file in its checkpoint."""
        config = self.encoder(encoder_name).config
        if config.subject in bd.available_subjects():
            return self.subject(config.subject)
        folder = self.settings.models_dir / encoder_name
        folder = folder if folder.is_dir() else Path(encoder_name)
        recorded = folder / config.training.get("subject_file", bd.encoders.SUBJECT_NAME)
        for source in (self.settings.subject, recorded):
            if source and Path(source).is_file():
                return self.subject(str(source), expected=config.subject)
        raise ServiceError(f"Encoder {encoder_name!r} is for subject {config.subject!r}, which is not built in and "
                           f"has no subject file ({recorded} is missing): start the app with --subject SUBJECT.npz "
                           "(written by training.prepare_nsd).")

    def subject(self, name: str, expected: str | None = None) -> bd.Subject:
        """A subject by built-in name, by file path, or by the name of one loaded from a file before."""
        if name not in self._subjects:
            try:
                self._subjects[name] = bd.load_subject(name)
            except (ValueError, FileNotFoundError) as exc:
                raise ServiceError(str(exc)) from exc
            self._subjects.setdefault(self._subjects[name].name, self._subjects[name])
        subject = self._subjects[name]
        if expected and subject.name != expected:
            raise ServiceError(f"Subject file {name!r} is for {subject.name!r}, the encoder for {expected!r}.")
        return subject

    def subject_names(self) -> list[str]:
        names = []
        for encoder_name in self.encoder_names():
            try:
                names.append(self.subject_of(encoder_name).name)
            except ServiceError as exc:
                log.warning("skipping encoder %s: %s", encoder_name, exc)
        return sorted(set(names))

    def encoders_for(self, subject_name: str) -> list[str]:
        return [n for n in self.encoder_names() if self._encoder_subject_name(n) == subject_name]

    def _encoder_subject_name(self, name: str) -> str | None:
        try:
            return self.subject_of(name).name
        except ServiceError:
            return None

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

    # ------------------------------------------------------------------ generation

    def validate(self, request: GenerationRequest) -> tuple[GenerationRequest, bd.Objective, bd.Subject]:
        """Re-check every bound the UI enforces; returns the completed request and its objective."""
        s = self.settings
        backend = self.backend()
        request = replace(request, scale=backend.defaults["brain_guidance_scale"] if request.scale is None else request.scale)
        checks = [
            (isinstance(request.steps, int) and 1 <= request.steps <= s.max_steps, f"`steps` must be 1..{s.max_steps}, got {request.steps!r}."),
            (isinstance(request.n_images, int) and 1 <= request.n_images <= s.max_images, f"`n_images` must be 1..{s.max_images}, got {request.n_images!r}."),
            (isinstance(request.seed, int) and 0 <= request.seed < 2**31, f"`seed` must be 0..2^31-1, got {request.seed!r}."),
            (np.isfinite(request.scale) and abs(request.scale) <= 1e6, f"`scale` must be a finite number within ±1e6, got {request.scale!r}."),
            (0 <= request.sag_scale <= 5, f"`sag_scale` must be 0..5, got {request.sag_scale!r}."),
            (request.scheduler in SCHEDULERS, f"`scheduler` must be one of {sorted(SCHEDULERS)}, got {request.scheduler!r}."),
            (request.objective in OBJECTIVES, f"`objective` must be one of {OBJECTIVES}, got {request.objective!r}."),
            (request.mode in MODES, f"`mode` must be one of {MODES}, got {request.mode!r}."),
            (len(request.prompt) <= 300, "`prompt` must be at most 300 characters."),
        ]
        for ok, message in checks:
            if not ok:
                raise ServiceError(message)
        encoder = self.encoder(request.encoder)
        subject = self.subject_of(request.encoder)
        if subject.name != request.subject:
            raise ServiceError(f"Encoder {request.encoder!r} is for subject {subject.name!r}, not {request.subject!r}.")
        try:
            encoder.check_subject(subject)
            return request, self._objective(request, subject), subject
        except ValueError as exc:
            raise ServiceError(str(exc)) from exc

    def _objective(self, request: GenerationRequest, subject: bd.Subject) -> bd.Objective:
        if request.target == CUSTOM:
            if not len(request.voxels):
                raise ValueError("The custom voxel set is empty: click or paint on the flatmap to add voxels.")
            positive = subject.check_voxels(np.asarray(request.voxels, dtype=np.int64), "voxels")
        else:
            positive = subject.roi(request.target)
        label = request.target if request.target != CUSTOM else f"custom({len(positive)} voxels)"
        if request.objective == "contrast":
            negative = subject.roi(request.contrast_target)
            return bd.Objective.contrast(positive, negative, request.weight, label=f"{label}-vs-{request.contrast_target}")
        if request.objective == "minimize":
            return bd.Objective.minimize(positive, label=label)
        return bd.Objective.maximize(positive, label=label)

    def cancel(self, session: str) -> bool:
        event = self._cancel.get(session)
        if event is None:
            return False
        event.set()
        return True

    def generate(self, request: GenerationRequest, session: str = "default") -> Iterator[Progress | ImageResult | Finished]:
        """Stream ``Progress`` per step, an ``ImageResult`` per finished image, then ``Finished``.

        The GPU work runs in ``_stream`` (on a ZeroGPU Space: in a GPU process, so its arguments and
        items are plain data). ``cancel(session)`` or the consumer going away closes that stream,
        which stops the pipeline after its current step; images already finished are kept.
        """
        request, objective, subject = self.validate(request)
        cancel = threading.Event()
        self._cancel[session] = cancel
        run_id = uuid.uuid4().hex[:10]
        results: list[ImageResult] = []
        stream = self._stream(request, objective)
        try:
            for item in stream:
                if isinstance(item, ServiceError):
                    raise item
                if isinstance(item, GeneratedImage):
                    item = self._store(item, request, objective, subject, run_id)
                    results.append(item)
                yield item
                if cancel.is_set():
                    break
        finally:
            stream.close()
            if self._cancel.get(session) is cancel:
                del self._cancel[session]
        interrupted = len(results) < request.n_images
        message = f"Stopped: kept {len(results)} finished image(s)." if interrupted else f"Done: {len(results)} image(s)."
        yield Finished(results, interrupted, message)

    def _stream(self, request: GenerationRequest, objective: bd.Objective) -> Iterator:
        """Run the pipeline in a worker thread and yield its ``Progress`` / ``GeneratedImage`` items.

        Ends after the last image, or with one ``ServiceError`` item; closing it stops the worker
        after the pipeline's current step.
        """
        stop = threading.Event()
        events: queue.Queue = queue.Queue()
        worker = threading.Thread(target=self._work, args=(request, objective, stop, events), daemon=True)
        worker.start()
        try:
            while True:
                try:
                    item = events.get(timeout=1.0)
                except queue.Empty:
                    if worker.is_alive() or not events.empty():
                        continue
                    yield ServiceError("Generation ended without a result; the app is still running, please retry.")
                    return
                if item is _END:
                    return
                yield item
                if isinstance(item, ServiceError):
                    return
        finally:
            stop.set()

    def _work(self, request, objective, stop, events) -> None:
        """The worker: every image of the request, then ``_END`` (always), errors as ``ServiceError`` items."""
        try:
            backend = self.backend()
            with backend.lock:
                pipe = backend.pipe
                pipe.set_encoder(self.encoder(request.encoder))
                pipe.set_scheduler(request.scheduler)
                for k in range(request.n_images):
                    generated = None if stop.is_set() else self._one_image(backend, request, objective, k, stop, events)
                    if generated is None:
                        break
                    events.put(generated)
        except Exception as exc:  # every failure reaches the user as a message
            events.put(self._user_error(exc, request))
        finally:
            events.put(_END)

    def _call_params(self, request: GenerationRequest, backend: _Backend) -> dict:
        size = self.settings.image_size
        return dict(num_inference_steps=request.steps, brain_guidance_scale=float(request.scale),
                    sag_scale=float(request.sag_scale), prompt=request.prompt, guidance_mode=request.mode,
                    height=size or backend.defaults["height"], width=size or backend.defaults["width"])

    def _one_image(self, backend, request, objective, k, stop, events) -> GeneratedImage | None:
        """The guided image of seed ``seed + k`` and its unguided baseline; None if stopped."""
        seed = request.seed + k
        params = self._call_params(request, backend)

        def stop_if_asked(pipe, i, t, tensors):
            if stop.is_set():
                pipe.interrupt()
            return {}

        def on_step(pipe, i, t, tensors):
            stop_if_asked(pipe, i, t, tensors)
            total = len(pipe.scheduler.timesteps)  # PNDM runs one step more than asked
            events.put(Progress(k, request.n_images, i + 1, total, _preview(tensors["x0_preview"])))
            return {}

        out = backend.pipe(objective=objective, generator=torch.Generator().manual_seed(seed),
                           callback_on_step_end=on_step, callback_on_step_end_tensor_inputs=["x0_preview"], **params)
        if out.interrupted:
            return None

        def on_baseline_step(pipe, i, t, tensors):
            stop_if_asked(pipe, i, t, tensors)
            events.put(Progress(k, request.n_images, i + 1, len(pipe.scheduler.timesteps), None, "unguided comparison"))
            return {}

        baseline = backend.pipe(objective=objective, generator=torch.Generator().manual_seed(seed),
                                callback_on_step_end=on_baseline_step, **{**params, "brain_guidance_scale": 0.0})
        if baseline.interrupted:
            return None
        return GeneratedImage(k, seed, out.images[0], baseline.images[0], float(out.objective_values[0]),
                              float(baseline.objective_values[0]), out.activations[0].numpy(),
                              baseline.activations[0].numpy())

    def _store(self, generated: GeneratedImage, request, objective, subject, run_id) -> ImageResult:
        """Catalog a finished image with its record; the ``ImageResult`` the UI shows."""
        backend = self.backend()
        record = generation_record(
            seed=generated.seed, subject=subject.name, target=objective.label, objective=objective.describe(),
            parameters={**self._call_params(request, backend), "scheduler": request.scheduler},
            objective_value=generated.objective, model=backend.name, encoder=request.encoder,
        )
        record["baseline_objective"] = generated.baseline_objective
        record["roi_means"] = _roi_means(subject, generated.activations)
        record["baseline_roi_means"] = _roi_means(subject, generated.baseline_activations)
        entry = self.catalog.add(generated.image, record, run_id=run_id, activations=generated.activations)
        save_unguided(entry, generated.baseline_image, generated.baseline_activations)
        return ImageResult(**vars(generated), roi_means=record["roi_means"],
                           baseline_roi_means=record["baseline_roi_means"], entry=entry, target=objective.label)

    def _user_error(self, exc: Exception, request: GenerationRequest) -> ServiceError:
        if isinstance(exc, torch.cuda.OutOfMemoryError):
            torch.cuda.empty_cache()
            return ServiceError(f"The GPU ran out of memory generating {request.n_images} image(s) with {request.steps} "
                                "steps. Try fewer images; the model is still loaded and ready.")
        if isinstance(exc, ServiceError):
            return exc
        if isinstance(exc, (ValueError, FileNotFoundError, FloatingPointError, KeyError)):
            return ServiceError(str(exc))
        log.exception("generation failed")
        return ServiceError(f"Generation failed ({type(exc).__name__}: {exc}). The app is still running.")

    # ------------------------------------------------------------------ training jobs

    def start_training(self, dataset_kind: str, dataset_path: str = "", name: str = "", n_train: int = 600,
                       n_test: int = 150, backbone: str = "braindive-tiny-vit", pretrained: str = "none",
                       cv: int = 5) -> TrainingJob:
        """Launch dataset preparation (synthetic) + ``train_encoder`` + ``eval_encoder`` in the background."""
        if any(job.running for job in self.jobs.values()):
            raise ServiceError("A training job is already running; wait for it or cancel it.")
        name = name.strip() or f"encoder-{uuid.uuid4().hex[:6]}"
        if not name.replace("-", "").replace("_", "").isalnum():
            raise ServiceError(f"Encoder name may use letters, digits, '-' and '_' only, got {name!r}.")
        checkpoint = self.settings.models_dir / name
        if checkpoint.exists():
            raise ServiceError(f"An encoder named {name!r} already exists; choose another name.")
        work = self.settings.jobs_dir / f"data-{name}"
        commands = []
        if dataset_kind == "synthetic":
            data = work / "synthetic.h5"
            commands.append(("synthetic dataset", ["-m", "training.synthetic", "--out", str(data), "--n-train",
                                                   str(int(n_train)), "--n-test", str(int(n_test))]))
        elif dataset_kind in ("nsd", "generic"):
            data = Path(dataset_path)
            if not data.is_file():
                raise ServiceError(f"Dataset file not found: {dataset_path!r} (prepare it with training.prepare_nsd "
                                   "or training.prepare_generic).")
        else:
            raise ServiceError(f"`dataset` must be synthetic, nsd or generic, got {dataset_kind!r}.")
        report = self.settings.jobs_dir / f"report-{name}"
        commands.append(("train encoder", ["-m", "training.train_encoder", "--data", str(data), "--out", str(checkpoint),
                                           "--backbone", backbone, "--pretrained", pretrained, "--cv", str(int(cv))]))
        commands.append(("evaluate", ["-m", "training.eval_encoder", "--encoder", str(checkpoint), "--data", str(data),
                                      "--out", str(report)]))
        job = TrainingJob(self.settings.jobs_dir, f"{name} on {dataset_kind}", commands,
                          outputs={"encoder": name, "checkpoint": str(checkpoint), "report": str(report)})
        self.jobs[job.state.id] = job
        return job.start()


def _preview(pixels: torch.Tensor) -> PIL.Image.Image:
    array = (pixels[0].permute(1, 2, 0).float().cpu().numpy() * 255).round().clip(0, 255).astype(np.uint8)
    image = PIL.Image.fromarray(array)
    if max(image.size) > PREVIEW_SIZE:
        image.thumbnail((PREVIEW_SIZE, PREVIEW_SIZE))
    return image


def _roi_means(subject: bd.Subject, activations: np.ndarray) -> dict:
    return {name: float(activations[subject.rois[name]].mean()) for name in subject.roi_names}
