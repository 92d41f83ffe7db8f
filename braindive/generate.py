"""The one generation routine: a target's guided image of a seed, its unguided baseline, and their record.

The app's runner, ``python -m braindive generate`` and the batch worker all call ``generate_seeds``
(``generate_seed`` for one seed), so one request gives the same image, record, baseline value and
unguided map at every door. The unguided image does not depend on the target or the brain scale,
only on (model, settings without the scale, seed, encoder, subject's voxel space): ``baseline_key``
names it, and a ``baselines`` store (``braindive.catalog.Catalog``) computes it once per seed and
reuses it for every target.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePath

import numpy as np

from .presets import LIMITS, MODE_NAMES, SCHEDULER_NAMES, LimitError, Preset
from .records import generation_record
from .targets import Target

__all__ = ["GenerationSettings", "StartImage", "SeedResult", "BaselineStore", "generate_seed", "generate_seeds",
           "baseline_key", "seed_record", "roi_means", "unguided_seeds", "reference_name", "image_id", "image_id_from_key", "target_key",
           "encoder_identity"]


NSD_SPEC = re.compile(r"nsd:(-?\d+)")  # a start image named by its NSD id (0-based 73k id)


@dataclass(frozen=True)
class StartImage:
    """A start image as a request carries it: read once where the request is made, never again by path (a Ray
    worker on another machine needs no copy of the file).

    ``file`` names it in records (``reference_name``), ``sha256`` is its pixel hash (``variation.image_hash``:
    what ids and baseline keys use, so a re-saved or moved copy keeps them) and ``png`` its RGB pixels, lossless.
    """

    file: str
    sha256: str
    png: bytes = field(repr=False, compare=False)

    @classmethod
    def read(cls, path, name=None) -> "StartImage":
        """The image file at ``path``, named ``name`` (default: ``path``) as the request wrote it; ``ValueError``
        naming the file when it is missing or not a readable image."""
        from .evaluation.sets import open_rgb

        return cls.from_image(open_rgb(Path(path)), reference_name(path if name is None else name))

    @classmethod
    def from_image(cls, image, name: str) -> "StartImage":
        """A PIL image (an upload, an NSD image) named ``name`` in records."""
        from .variation import image_hash

        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")
        return cls(name, image_hash(image), buffer.getvalue())

    @classmethod
    def resolve(cls, spec: str, base=".", nsd_dataset=None) -> "StartImage":
        """What a request names: an image file (relative to ``base``, named as written) or ``nsd:<id>``, the image
        of that 0-based NSD 73k id in the prepared NSD dataset ``nsd_dataset`` (named ``nsd-<id>``)."""
        match = NSD_SPEC.fullmatch(str(spec).strip())
        if not match:
            return cls.read(Path(base) / spec, name=spec)
        if not nsd_dataset:
            raise ValueError(f"{spec!r} names an NSD image: give the prepared NSD dataset it is read from "
                             "(--nsd-dataset, or `nsd_dataset` in a sweep's [settings]).")
        from .prepared import nsd_image, nsd_reference_name

        nsd_id = int(match.group(1))
        return cls.from_image(nsd_image(Path(base) / nsd_dataset, nsd_id), nsd_reference_name(nsd_id))

    def image(self):
        """The pixels as an RGB PIL image."""
        from PIL import Image

        with Image.open(io.BytesIO(self.png)) as image:
            return image.convert("RGB")


def reference_name(path) -> str:
    """How records name a start image: the path as the request wrote it when relative (to the sweep file, or to
    the folder ``generate`` ran in; POSIX separators), only the file name when absolute (machine-specific)."""
    path = PurePath(path)
    return path.name if path.is_absolute() else path.as_posix()


@dataclass(frozen=True)
class GenerationSettings:
    """How an image is made (field names as sweep files use them); ``checked()`` applies ``presets.LIMITS``."""

    mode: str = "exact"
    scale: float = 130.0
    steps: int = 50
    scheduler: str = "dpm"
    sag: float = 0.75
    prompt: str = ""
    cfg: float = 0.0
    height: int = 512
    width: int = 512
    init_image: StartImage | None = None  # the image generation starts from (None: from noise)
    strength: float = 1.0  # how far the start image is noised (1: all the way)

    @classmethod
    def from_preset(cls, preset: Preset, **overrides) -> "GenerationSettings":
        """The preset's defaults; ``overrides`` that are None keep the default (an explicit value is checked)."""
        base = dict(scale=preset.scale, steps=preset.steps, scheduler=preset.scheduler, sag=preset.sag,
                    cfg=preset.cfg, height=preset.height, width=preset.width)
        return cls(**{**base, **{k: v for k, v in overrides.items() if v is not None}}).checked()

    def checked(self) -> "GenerationSettings":
        """These settings with every number checked against ``LIMITS`` (``LimitError`` names the field's label)."""
        if self.mode not in MODE_NAMES:
            raise LimitError(f"`Guidance computation` must be one of {MODE_NAMES}, got {self.mode!r}.")
        if self.scheduler not in SCHEDULER_NAMES:
            raise LimitError(f"`Scheduler` must be one of {SCHEDULER_NAMES}, got {self.scheduler!r}.")
        return replace(self, **{f: LIMITS[f].check(getattr(self, f))
                                for f in ("scale", "steps", "sag", "prompt", "cfg", "height", "width", "strength")})

    def pipeline_kwargs(self) -> dict:
        """Keyword arguments of ``BrainDiVEPipeline.__call__`` (the names records store under ``parameters``)."""
        return dict(num_inference_steps=self.steps, brain_guidance_scale=self.scale, sag_scale=self.sag,
                    guidance_scale=self.cfg, prompt=self.prompt, height=self.height, width=self.width,
                    guidance_mode=self.mode)

    def image_kwargs(self) -> dict:
        """The pipeline's ``image``/``strength`` for a start image (nothing when generating from noise)."""
        return {"image": self.init_image.image(), "strength": self.strength} if self.init_image else {}

    def image_record(self) -> dict:
        """What records keep of the start image: the strength, its name and pixel hash (nothing from noise)."""
        if not self.init_image:
            return {}
        return {"strength": self.strength, "reference": {"file": self.init_image.file, "sha256": self.init_image.sha256}}

    def key(self) -> dict:
        """The settings as ids use them: a start image by its pixel hash (not its name or path); from noise neither it
        nor the strength is in the key, so ids made before start images existed stay the same."""
        out = {f: getattr(self, f) for f in self.__dataclass_fields__}
        start, strength = out.pop("init_image"), out.pop("strength")
        if start:
            out.update(init_image=start.sha256, strength=strength)
        return out


def baseline_key(model: str, settings: GenerationSettings, seed: int, encoder: str, subject_space: str) -> str:
    """Id of a seed's unguided image: everything it depends on (the brain scale is not among them)."""
    fields = {k: v for k, v in settings.key().items() if k != "scale"}
    text = json.dumps({"model": model, "settings": fields, "seed": int(seed), "encoder": encoder,
                       "subject_space": subject_space}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def target_key(target: Target, subject) -> dict:
    """What identifies a target's images on ``subject``: kind, weight and the voxels themselves (not names)."""
    a, b = target.indices(subject)
    voxels = hashlib.sha256(np.asarray(a, np.int64).tobytes() + (b"" if b is None else b"|" + np.asarray(b, np.int64).tobytes()))
    return {"objective": target.kind, "weight": target.weight if target.kind == "contrast" else 1.0,
            "voxels": voxels.hexdigest(), "subject_space": subject.fingerprint}


def image_id(model: str, encoder: str, target: Target, subject, settings: GenerationSettings, seed: int) -> str:
    """Deterministic catalog id of one image (CLI and batch): model, encoder identity, target voxels and the
    subject's voxel space, settings and seed."""
    return image_id_from_key(model, encoder, target_key(target, subject), settings, seed)


def image_id_from_key(model: str, encoder: str, key: dict, settings: GenerationSettings, seed: int) -> str:
    """``image_id`` from a ``target_key`` already computed (a sweep computes it once per job)."""
    text = json.dumps({"model": model, "encoder": encoder, **key, "settings": settings.key(), "seed": int(seed)},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def encoder_identity(path: str, subject, folder=None) -> str:
    """An encoder's identity for ids: a hash of a local checkpoint's files (moving it keeps the ids) and the
    subject's voxel space, else of its name (a Hub id) and the space."""
    folder = Path(folder or path)
    digest = hashlib.sha256(f"{path}|{subject.fingerprint}".encode())
    if (folder / "config.json").is_file():
        digest = hashlib.sha256(subject.fingerprint.encode())
        for file in sorted(folder.glob("*.safetensors")) + [folder / "config.json"]:
            with open(file, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


@dataclass
class SeedResult:
    """One seed's guided image and (when asked for) its unguided baseline, with the target's signed measures."""

    seed: int
    image: object                 # PIL image
    activations: np.ndarray       # [V] predicted activity of the guided image
    measure: float
    baseline_image: object = None
    baseline_activations: np.ndarray | None = None
    baseline_measure: float | None = None
    baseline_key: str | None = None
    baseline_reused: bool = False  # True when the unguided image came from the store, not a pipeline run


class BaselineStore(dict):
    """Unguided baselines kept in memory, for ``generate_seeds``'s ``baselines``; ``made``: those put here."""

    def __init__(self, known=()):
        super().__init__(known)
        self.made = {}

    def get_baseline(self, key):
        return self.get(key)

    def put_baseline(self, key, image, activations):
        self[key] = self.made[key] = (image, activations)


def generate_seed(pipe, target: Target, seed: int, settings: GenerationSettings, **kwargs) -> SeedResult | None:
    """``generate_seeds`` for one seed (None if interrupted)."""
    results = generate_seeds(pipe, target, [seed], settings, **kwargs)
    return None if results is None else results[0]


def generate_seeds(pipe, target: Target, seeds, settings: GenerationSettings, *, subject, baseline: bool = True,
                   baselines=None, model: str = "", encoder: str = "", on_step=None, on_baseline_step=None,
                   batch=None, preview: bool = False) -> list[SeedResult] | None:
    """Guided images of ``seeds`` (one generator per seed) and their unguided baselines, on ``pipe``'s encoder.

    ``batch(objective, seeds, params, callback)`` may replace the plain pipeline call (the batch worker
    splits on out-of-memory); it returns ``(images, activations [B, V], interrupted)``. ``baselines`` (with
    ``get_baseline(key)`` / ``put_baseline(key, image, activations)``) keeps unguided images keyed by
    ``baseline_key(model, settings, seed, encoder, subject.fingerprint)``. ``on_step`` gets the pipeline's
    ``x0_preview`` if ``preview`` (``on_baseline_step`` too). Returns None if interrupted.
    """
    objective = target.build(subject)
    pipe.set_scheduler(settings.scheduler)
    run = batch or (lambda obj, s, p, callback: _call(pipe, obj, s, p, callback, preview))
    images, acts, interrupted = run(objective, list(seeds), {**settings.pipeline_kwargs(), **settings.image_kwargs()},
                                    on_step)
    if interrupted:
        return None
    results = [SeedResult(int(s), images[k], acts[k], target.measure(acts[k], subject)) for k, s in enumerate(seeds)]
    if not baseline:
        return results
    found = unguided_seeds(pipe, target, seeds, settings, subject=subject, baselines=baselines, model=model,
                           encoder=encoder, on_baseline_step=on_baseline_step, batch=batch, preview=preview)
    if found is None:
        return None
    for result in results:
        key, image, a, reused = found[result.seed]
        result.baseline_image, result.baseline_activations, result.baseline_key = image, a, key
        result.baseline_measure, result.baseline_reused = target.measure(a, subject), reused
    return results


def unguided_seeds(pipe, target: Target, seeds, settings: GenerationSettings, *, subject, baselines=None,
                   model: str = "", encoder: str = "", on_baseline_step=None, batch=None,
                   preview: bool = False) -> dict | None:
    """``{seed: (key, image, activations, reused)}``: the unguided images of ``seeds``, from ``baselines`` where
    stored, else made (brain scale 0; the target only names the pipeline's objective, it changes no pixel)
    and stored (``on_baseline_step`` gets ``x0_preview`` if ``preview``). None if interrupted."""
    keys = {int(s): baseline_key(model, settings, s, encoder, subject.fingerprint) for s in seeds}
    stored = {s: baselines.get_baseline(k) if baselines is not None else None for s, k in keys.items()}
    missing = [s for s in keys if stored[s] is None]
    if missing:
        pipe.set_scheduler(settings.scheduler)
        run = batch or (lambda obj, s, p, callback: _call(pipe, obj, s, p, callback, preview))
        params = {**settings.pipeline_kwargs(), **settings.image_kwargs(), "brain_guidance_scale": 0.0}
        images, acts, interrupted = run(target.build(subject), missing, params, on_baseline_step)
        if interrupted:
            return None
        for s, image, a in zip(missing, images, acts):
            stored[s] = (image, a)
            if baselines is not None:
                baselines.put_baseline(keys[s], image, a)
    return {s: (keys[s], *stored[s], s not in missing) for s in keys}


def _call(pipe, objective, seeds, params, callback, preview: bool = False):
    """One pipeline call, one generator per seed; ``preview``: the callback gets ``x0_preview`` (a VAE decode)."""
    import torch

    kwargs = {}
    if callback is not None:
        kwargs = dict(callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["x0_preview"] if preview else [])
    out = pipe(objective=objective, num_images_per_prompt=len(seeds),
               generator=[torch.Generator().manual_seed(int(s)) for s in seeds], **kwargs, **params)
    return out.images, out.activations.float().cpu().numpy().astype(np.float32), bool(out.interrupted)


def seed_record(result: SeedResult, target: Target, subject, settings: GenerationSettings, *, model: str,
                encoder: str) -> dict:
    """The catalog record of one ``SeedResult`` (the same at every door)."""
    record = generation_record(
        seed=result.seed, subject=subject, target=target, objective=target.build(subject).describe(),
        parameters={**settings.pipeline_kwargs(), "scheduler": settings.scheduler, **settings.image_record()},
        measure=result.measure,
        model=model, encoder=encoder, baseline_measure=result.baseline_measure)
    record["roi_means"] = roi_means(subject, result.activations)
    if result.baseline_activations is not None:
        record["baseline_roi_means"] = roi_means(subject, result.baseline_activations)
        record["baseline_key"] = result.baseline_key
    return record


def roi_means(subject, activations: np.ndarray) -> dict[str, float]:
    """Mean predicted activity per ROI of ``subject``."""
    return {name: float(np.mean(activations[subject.roi(name)])) for name in subject.roi_names}
