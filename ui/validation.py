"""Request validation: every number within its range (never silently changed), every choice known.

Messages name the field and the allowed range, e.g. "`steps` must be a whole number from 1 to 100, got 2.5."
The UI passes what the user typed; the server checks it here, so the UI and API reject the same things.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

import braindive as bd
from braindive.pipeline import SCHEDULERS

from .generation import GenerationRequest
from .registry import MAX_NAME, ServiceError

__all__ = ["whole", "real", "check_request", "check_keep", "objective_of", "OBJECTIVES", "MODES", "CUSTOM", "MAX_SEED"]

OBJECTIVES = ("maximize", "minimize", "contrast")
MODES = ("exact", "fast", "reference")  # guidance modes the service accepts; Explore offers exact and fast
CUSTOM = "custom voxel set"
MAX_SEED = 2**31 - 1


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "…"


def whole(value, field: str, lo: int, hi: int) -> int:
    """``value`` as an int in ``[lo, hi]``; a whole float (3.0) or numeric text is accepted, nothing is rounded."""
    number = value
    if isinstance(number, str):
        try:
            number = float(number.strip())
        except ValueError:
            number = None
    if isinstance(number, (float, np.floating)) and math.isfinite(number) and float(number).is_integer():
        number = int(number)
    if isinstance(number, bool) or not isinstance(number, (int, np.integer)) or not lo <= number <= hi:
        raise ServiceError(f"`{field}` must be a whole number from {lo} to {hi}, got {_shown(value)}.")
    return int(number)


def real(value, field: str, lo: float, hi: float) -> float:
    """``value`` as a finite float in ``[lo, hi]`` (numeric text accepted)."""
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or not lo <= number <= hi:
        raise ServiceError(f"`{field}` must be a number from {lo:g} to {hi:g}, got {_shown(value)}.")
    return number


def _choice(value, field: str, choices) -> str:
    if value not in choices:
        raise ServiceError(f"`{field}` must be one of {tuple(choices)}, got {_shown(value)}.")
    return value


def check_request(request: GenerationRequest, settings, default_scale: float) -> GenerationRequest:
    """The request with every field checked and typed; ``scale=None`` becomes the model's default."""
    prompt = request.prompt if isinstance(request.prompt, str) else None
    if prompt is None or len(prompt) > settings.max_prompt:
        size = f"{len(prompt)} characters" if prompt is not None else _shown(request.prompt)
        raise ServiceError(f"`prompt` must be text of at most {settings.max_prompt} characters, got {size}.")
    if not isinstance(request.encoder, str) or not 0 < len(request.encoder) <= MAX_NAME:
        raise ServiceError(f"`encoder` must be an encoder name of 1 to {MAX_NAME} characters, got {_shown(request.encoder)}.")
    return replace(
        request,
        steps=whole(request.steps, "steps", 1, settings.max_steps),
        n_images=whole(request.n_images, "n_images", 1, settings.max_images),
        seed=whole(request.seed, "seed", 0, MAX_SEED),
        scale=real(default_scale if request.scale is None else request.scale, "scale", -1e6, 1e6),
        weight=real(request.weight, "weight", 0, 10),
        sag_scale=real(request.sag_scale, "sag_scale", 0, 5),
        scheduler=_choice(request.scheduler, "scheduler", sorted(SCHEDULERS)),
        objective=_choice(request.objective, "objective", OBJECTIVES),
        mode=_choice(request.mode, "mode", MODES),
    )


def check_keep(value, settings) -> int:
    """Explore's "keep the best k" (re-ranking after the run), checked before anything is generated."""
    return whole(value, "Keep the best k", 1, settings.max_images)


def objective_of(request: GenerationRequest, subject: bd.Subject) -> bd.Objective:
    """The objective of a checked request on ``subject`` (raises ``ValueError`` for unknown ROIs/voxels)."""
    if request.target == CUSTOM:
        if not len(request.voxels):
            raise ValueError("The custom voxel set is empty: click or paint on the flatmap to add voxels.")
        positive = subject.check_voxels(np.asarray(request.voxels, dtype=np.int64), "voxels")
    else:
        positive = subject.roi(request.target)
    label = request.target if request.target != CUSTOM else f"custom({len(positive)} voxels)"
    if request.objective == "contrast":
        negative = subject.roi(request.contrast_target)
        if request.contrast_target == request.target or np.array_equal(np.unique(positive), np.unique(negative)):
            raise ValueError(f"`contrast_target` must differ from the target {label!r}: contrasting a region with "
                             "itself has objective 0 everywhere.")
        return bd.Objective.contrast(positive, negative, request.weight, label=f"{label}-vs-{request.contrast_target}")
    if request.objective == "minimize":
        return bd.Objective.minimize(positive, label=label)
    return bd.Objective.maximize(positive, label=label)
