"""A batch worker: loads the pipeline and encoders once, then turns work units into finished images.

Plain Python (no Ray here): ``runner`` wraps it in a Ray actor, the benchmark runs it in-process. A
unit runs ``braindive.generate.generate_seeds`` (the routine of the app and ``generate``): its seeds in
one pipeline call with one generator per seed, so a one-seed unit's image and record equal the ones
``python -m braindive generate`` makes. Unguided baselines come with the unit (the driver made them
once per seed with ``unguided``); one missing is made here and returned. An out-of-memory batch is
split in half and retried, down to one seed; the smaller size is kept for the worker's next units.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import torch

from ..generate import BaselineStore, generate_seeds, seed_record, unguided_seeds
from .sweep import DEMO, EncoderSpec, Job

__all__ = ["BatchWorker", "Unit", "Faults", "ImageOut", "BaselineOut"]


@dataclass(frozen=True)
class Unit:
    """Seeds of one job; ``ids[i]`` is the catalog id of ``seeds[i]``; ``baselines``: ``{key: (png, activations)}``
    of the seeds' unguided images already made."""

    job: Job
    seeds: tuple[int, ...]
    ids: tuple[str, ...]
    baselines: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass
class BaselineOut:
    key: str
    png: bytes
    activations: np.ndarray


@dataclass
class ImageOut:
    id: str
    seed: int
    png: bytes
    record: dict
    activations: np.ndarray | None = None
    baseline: BaselineOut | None = None  # the seed's unguided image when this unit made it


@dataclass(frozen=True)
class Faults:
    """Fault injection for tests and drills (0 = off).

    Attributes:
        oom_above_batch: pipeline calls with more seeds than this raise an out-of-memory error.
    """

    oom_above_batch: int = 0


@dataclass
class BatchWorker:
    model: str
    cache_root: str | None = None  # braindive's cache folder, so workers reuse the driver's ROI caches
    device: str = "auto"
    threads: int | None = None
    max_batch: int | None = None  # lowered after an out-of-memory error

    def __post_init__(self):
        from ..cache import set_cache_dir

        if self.cache_root:
            set_cache_dir(self.cache_root)
        if self.threads:
            torch.set_num_threads(self.threads)
        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self._pipe, self._encoders, self._model_name, self._faults = None, {}, self.model, Faults()

    # ------------------------------------------------------------------ loading, once

    def _pipeline(self):
        if self._pipe is None:
            if self.model == DEMO:
                from ..presets import PRESETS

                loaded = PRESETS["demo"].load(self.device)
                self._pipe, self._model_name = loaded.pipe, loaded.model_name
                self._encoders[DEMO] = (loaded.encoder, loaded.subject)
            else:
                from ..presets import PRESETS

                self._pipe = PRESETS["sd21"].pipeline(self.device, self.model)
            self._pipe.set_progress_bar_config(disable=True)
        return self._pipe

    def _encoder(self, spec: EncoderSpec):
        self._pipeline()
        if spec.path not in self._encoders:
            from ..encoders import load_encoder
            from ..subjects import load_subject

            subject = load_subject(spec.subject)
            self._encoders[spec.path] = (load_encoder(spec.path, subject=subject), subject)
        return self._encoders[spec.path]

    # ------------------------------------------------------------------ work

    def warm_up(self) -> str:
        """Load the pipeline now (the runner calls this once per actor); returns the device."""
        self._pipeline()
        return self.device

    def run(self, unit: Unit, save_activations: bool = True, baseline: bool = True,
            faults: Faults = Faults()) -> list[ImageOut]:
        """All images of ``unit`` with their records (and each seed's unguided baseline if ``baseline``)."""
        self._faults = faults
        job, (encoder, subject) = unit.job, self._encoder(unit.job.encoder)
        pipe = self._pipeline()
        pipe.set_encoder(encoder)
        store = BaselineStore({k: (_image(png), acts) for k, (png, acts) in unit.baselines.items()})
        results = generate_seeds(pipe, job.target, unit.seeds, job.settings, subject=subject, baseline=baseline,
                                 baselines=store, model=self._model_name, encoder=job.encoder.identity,
                                 batch=self._batch)
        out = []
        for result, entry_id in zip(results, unit.ids):
            record = seed_record(result, job.target, subject, job.settings, model=self._model_name,
                                 encoder=job.encoder.name)
            record["batch"] = {"unit_seeds": len(unit.seeds), "pipeline_batch": min(len(unit.seeds), self.max_batch or 10**9)}
            made = store.made.get(result.baseline_key)
            out.append(ImageOut(entry_id, result.seed, _png(result.image), record,
                                result.activations if save_activations else None,
                                None if made is None else BaselineOut(result.baseline_key, _png(made[0]), made[1])))
        return out

    def unguided(self, job: Job, seeds: tuple[int, ...]) -> list[BaselineOut]:
        """The unguided images of ``seeds`` under ``job``'s encoder and settings (any target of them gives the same)."""
        encoder, subject = self._encoder(job.encoder)
        pipe = self._pipeline()
        pipe.set_encoder(encoder)
        found = unguided_seeds(pipe, job.target, seeds, job.settings, subject=subject, model=self._model_name,
                               encoder=job.encoder.identity, batch=self._batch)
        return [BaselineOut(key, _png(image), acts) for key, image, acts, _ in found.values()]

    def _batch(self, objective, seeds, params, callback=None):
        images, acts, _ = self._call(objective, tuple(seeds), params)
        return images, acts, False

    def _call(self, objective, seeds, params) -> tuple[list, np.ndarray, np.ndarray]:
        """``(PIL images, activations [B, V], objective values [B])``, split in halves on out-of-memory."""
        size = min(len(seeds), self.max_batch or len(seeds))
        if size < len(seeds):
            parts = [self._call(objective, seeds[i:i + size], params) for i in range(0, len(seeds), size)]
            return [im for p in parts for im in p[0]], np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])
        try:
            if self._faults.oom_above_batch and len(seeds) > self._faults.oom_above_batch:
                raise torch.OutOfMemoryError(f"simulated out-of-memory error at batch {len(seeds)}")
            out = self._pipeline()(objective=objective, num_images_per_prompt=len(seeds),
                                   generator=[torch.Generator().manual_seed(int(s)) for s in seeds], **params)
        except torch.OutOfMemoryError:
            if len(seeds) == 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self.max_batch = max(1, len(seeds) // 2)
            return self._call(objective, seeds, params)
        return out.images, out.activations.numpy().astype(np.float32), out.objective_values.numpy()


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _image(png: bytes):
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        return image.convert("RGB")
