"""A batch worker: loads the pipeline and encoders once, then turns work units into finished images.

Plain Python (no Ray here): ``runner`` wraps it in a Ray actor, the benchmark runs it in-process. A
unit's seeds run in one pipeline call with one generator per seed, so each image equals the one
``python -m braindive generate`` makes for that seed. An out-of-memory batch is split in half and
retried, down to one seed; the smaller size is kept for the worker's next units.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch

from ..records import generation_record
from .sweep import DEMO, EncoderSpec, Job

__all__ = ["BatchWorker", "Unit", "Faults", "ImageOut", "roi_means"]


@dataclass(frozen=True)
class Unit:
    """Seeds of one job; ``ids[i]`` is the catalog id of ``seeds[i]``."""

    job: Job
    seeds: tuple[int, ...]
    ids: tuple[str, ...]


@dataclass
class ImageOut:
    id: str
    seed: int
    png: bytes
    record: dict
    activations: np.ndarray | None = None


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
                from .. import demo

                bundle = demo.load(self.device)
                self._pipe, self._model_name = bundle.pipe, "demo:tiny-sd"
                self._encoders[DEMO] = (bundle.encoder, bundle.subject,
                                        "demo:" + bundle.encoder.config.training.get("kind", "encoder"))
            else:
                from ..pipeline import BrainDiVEPipeline

                cuda = self.device.startswith("cuda")
                self._pipe = BrainDiVEPipeline.from_pretrained(
                    self.model, torch_dtype=torch.float16 if cuda else torch.float32).to(self.device)
            self._pipe.set_progress_bar_config(disable=True)
        return self._pipe

    def _encoder(self, spec: EncoderSpec):
        self._pipeline()
        if spec.path not in self._encoders:
            from ..encoders import load_encoder
            from ..subjects import load_subject

            subject = load_subject(spec.subject)
            self._encoders[spec.path] = (load_encoder(spec.path, subject=subject), subject, spec.path)
        return self._encoders[spec.path]

    # ------------------------------------------------------------------ work

    def warm_up(self) -> str:
        """Load the pipeline now (the runner calls this once per actor); returns the device."""
        self._pipeline()
        return self.device

    def run(self, unit: Unit, save_activations: bool = True, baseline: bool = True,
            faults: Faults = Faults()) -> list[ImageOut]:
        """All images of ``unit``, with their records (and the unguided objective of each seed if ``baseline``)."""
        self._faults = faults
        encoder, subject, encoder_name = self._encoder(unit.job.encoder)
        pipe = self._pipeline()
        pipe.set_encoder(encoder)
        pipe.set_scheduler(unit.job.settings.scheduler)
        params = unit.job.settings.pipeline_kwargs()
        objective = unit.job.objective
        guided = self._call(objective, unit.seeds, {**params, **unit.job.settings.image_kwargs()})
        unguided = self._call(objective, unit.seeds, {**params, **unit.job.settings.image_kwargs(),
                                                      "brain_guidance_scale": 0.0}) if baseline else None
        out = []
        for k, (seed, entry_id) in enumerate(zip(unit.seeds, unit.ids)):
            image, acts, value = guided[0][k], guided[1][k], float(guided[2][k])
            record = generation_record(
                seed=seed, subject=subject.name, target=unit.job.target, objective=objective.describe(),
                parameters={**params, "scheduler": unit.job.settings.scheduler, **unit.job.settings.image_record()},
                objective_value=value,
                model=self._model_name, encoder=encoder_name)
            record["roi_means"] = roi_means(subject, acts)
            record["batch"] = {"unit_seeds": len(unit.seeds), "pipeline_batch": min(len(unit.seeds), self.max_batch or 10**9)}
            if unguided is not None:
                record["baseline_objective"] = float(unguided[2][k])
            png = io.BytesIO()
            image.save(png, format="PNG")
            out.append(ImageOut(entry_id, seed, png.getvalue(), record, acts if save_activations else None))
        return out

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


def roi_means(subject, activations: np.ndarray) -> dict[str, float]:
    """Mean predicted activity per ROI of ``subject``."""
    return {name: float(np.mean(activations[subject.roi(name)])) for name in subject.roi_names}
