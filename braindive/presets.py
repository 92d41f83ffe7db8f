"""Presets (model + paper/demo defaults + ``load``) and the one table of limits every door enforces.

``PRESETS["demo"]`` is the offline bundle, ``PRESETS["sd21"]`` the paper's setup (SD 2.1-base, 512 px,
DPM-Solver, 50 steps, SAG 0.75, brain scale 130, CFG off). ``LIMITS`` holds each request field's UI
label and allowed range; the app's UI and API (``ui.validation``), the CLI and sweep files all call
``check(field, value)``, so they accept and reject the same values with the same message, e.g.
"`Steps` must be a whole number from 1 to 200, got 0.". Nothing is clamped, rounded or defaulted: a
whole float (``3.0``) or numeric text is read as its number, ``2.5`` for a whole field is an error.

This module imports no torch until ``Preset.load`` runs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Limit", "LIMITS", "LimitError", "check", "check_voxels", "Preset", "PRESETS", "Loaded", "get_preset",
           "SD21_MODEL_ID", "SCHEDULER_NAMES", "MODE_NAMES"]

SD21_MODEL_ID = "stabilityai/stable-diffusion-2-1-base"
SCHEDULER_NAMES = ("dpm", "ddim", "pndm", "lms", "euler")  # as braindive.pipeline.SCHEDULERS
MODE_NAMES = ("exact", "fast", "reference")  # as braindive.pipeline.GUIDANCE_MODES


class LimitError(ValueError):
    """A request value outside its field's range; the message names the field's UI label and the range."""


@dataclass(frozen=True)
class Limit:
    """One field: its UI ``label``, ``kind`` (int, float or str: a text length) and inclusive range."""

    field: str
    label: str
    kind: type
    lo: float
    hi: float
    multiple: int = 1  # ints: must be a multiple of this (image sides: 8)

    @property
    def range_text(self) -> str:
        if self.kind is str:
            return f"text of at most {self.hi:g} characters"
        what = "a whole number" if self.kind is int else "a number"
        extra = f" (a multiple of {self.multiple})" if self.multiple > 1 else ""
        return f"{what} from {_num(self.lo)} to {_num(self.hi)}{extra}"

    def error(self, value) -> LimitError:
        if self.kind is str and isinstance(value, str):
            shown = f"{len(value)} characters"
        elif isinstance(value, str) and _number(value) is not None:
            shown = value.strip()  # numeric text (a command-line flag) reads as the number the API would show
        else:
            shown = _shown(value)
        return LimitError(f"`{self.label}` must be {self.range_text}, got {shown}.")

    def check(self, value):
        """``value`` as ``kind`` within range, else ``LimitError`` (numeric text is read, never rounded)."""
        if self.kind is str:
            if not isinstance(value, str) or len(value) > self.hi:
                raise self.error(value)
            return value
        number = _number(value)
        if number is None or not self.lo <= number <= self.hi:
            raise self.error(value)
        if self.kind is int:
            if not float(number).is_integer() or int(number) % self.multiple:
                raise self.error(value)
            return int(number)
        return float(number)


def _number(value) -> float | None:
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value):
        return None
    return value


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "…"


MAX_SEED = 2**31 - 1  # torch generators take more; the app's seed box and image ids use this
LIMITS = {limit.field: limit for limit in (
    Limit("steps", "Steps", int, 1, 200),
    Limit("n_images", "Generate N images", int, 1, 1000),
    Limit("keep_k", "…keep the best k", int, 1, 1000),
    Limit("keep", "Keep fraction", float, 0.001, 1.0),
    Limit("seed", "Seed", int, 0, MAX_SEED),
    Limit("scale", "Brain guidance scale", float, -1000.0, 1000.0),  # negative: descend the objective
    Limit("weight", "Weight of B", float, 0.0, 10.0),
    Limit("sag", "SAG scale", float, 0.0, 5.0),
    Limit("cfg", "Classifier-free guidance scale", float, 0.0, 30.0),
    Limit("prompt", "Prompt", str, 0, 300),
    Limit("height", "Image height", int, 32, 2048, multiple=8),
    Limit("width", "Image width", int, 32, 2048, multiple=8),
    Limit("strength", "Strength", float, 0.0, 1.0),  # start image: how far it is noised (1: from noise)
)}


def check(field: str, value):
    """``LIMITS[field].check(value)``."""
    return LIMITS[field].check(value)


def check_voxels(value, label: str = "Custom voxels") -> tuple[int, ...]:
    """A voxel list as sorted unique ints; floats, bools, strings or an empty list are rejected by ``label``."""
    from .targets import voxel_tuple

    try:
        return voxel_tuple(value)
    except ValueError as exc:
        raise LimitError(str(exc).replace("`voxels`", f"`{label}`")) from None


# ---------------------------------------------------------------------- presets


@dataclass
class Loaded:
    """What ``Preset.load`` returns: the pipeline, its subject and encoder, and the names records store."""

    pipe: object
    subject: object
    encoder: object
    model_name: str
    encoder_name: str  # what records store: "demo" for the demo encoder (as the app and sweeps name it)
    label: str


@dataclass(frozen=True)
class Preset:
    name: str
    model_id: str
    height: int
    width: int
    steps: int
    scheduler: str
    sag: float
    scale: float
    cfg: float = 0.0

    @property
    def defaults(self) -> dict:
        """The defaults under the pipeline's argument names (``num_inference_steps``, ``brain_guidance_scale``...)."""
        return {"height": self.height, "width": self.width, "num_inference_steps": self.steps,
                "brain_guidance_scale": self.scale, "sag_scale": self.sag, "guidance_scale": self.cfg,
                "scheduler": self.scheduler}

    def load(self, device: str = "cpu", encoder: str | None = None, subject: str | None = None,
             model: str | None = None) -> Loaded:
        """Load the pipeline (and, for ``sd21``, ``encoder`` on ``subject``) onto ``device``."""
        if self.name == "demo":
            from . import demo

            bundle = demo.load(device)
            return Loaded(bundle.pipe, bundle.subject, bundle.encoder, self.model_id, "demo", bundle.label)
        from .encoders import load_encoder
        from .subjects import load_subject

        if not encoder:
            raise ValueError("The sd21 preset needs an encoder checkpoint (folder or Hub id) from training.train_encoder.")
        the_subject = load_subject(subject or "S1")
        the_encoder = load_encoder(encoder, subject=the_subject)
        pipe = self.pipeline(device, model)
        pipe.set_encoder(the_encoder)
        return Loaded(pipe, the_subject, the_encoder, model or self.model_id, str(encoder),
                      f"{model or self.model_id} + your encoder")

    def pipeline(self, device: str = "cpu", model: str | None = None):
        """The diffusion pipeline alone (``model`` or this preset's; fp16 on CUDA), encoders set later
        (``set_encoder``): the app and batch workers share one across encoders."""
        import torch

        from .pipeline import BrainDiVEPipeline

        cuda = str(device).startswith("cuda")
        pipe = BrainDiVEPipeline.from_pretrained(model or self.model_id, torch_dtype=torch.float16 if cuda else torch.float32)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(device)


PRESETS = {p.name: p for p in (
    # demo: measured on assets/demo-sd with the demo encoder (see braindive.demo)
    Preset("demo", "demo:tiny-sd", 128, 128, 25, "dpm", 0.75, 20.0),
    Preset("sd21", SD21_MODEL_ID, 512, 512, 50, "dpm", 0.75, 130.0),
)}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"`preset` must be one of {sorted(PRESETS)}, got {name!r}.")
    return PRESETS[name]
