"""Request validation: every number within its range (never silently changed), every choice known.

Numbers are checked against ``braindive.presets.LIMITS`` — the table the CLI and sweep files use — so
every door rejects a value with the same message, naming the field's UI label and range, e.g.
"`Steps` must be a whole number from 1 to 200, got 2.5.". The UI passes what the user typed; the
server checks it here, so the UI and API reject the same things. ``target_of`` turns a checked
request into its ``braindive.targets.Target``.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

import braindive as bd
from braindive.pipeline import SCHEDULERS
from braindive.presets import LIMITS, LimitError, check_voxels
from braindive.targets import Target

from .generation import GenerationRequest
from .registry import MAX_NAME, ServiceError

__all__ = ["whole", "check_request", "target_of", "OBJECTIVES", "MODES", "CUSTOM", "MAX_SEED"]

OBJECTIVES = ("maximize", "minimize", "contrast")
MODES = ("exact", "fast", "reference")  # guidance modes the service accepts; Explore offers exact and fast
CUSTOM = "custom voxel set"
MAX_SEED = int(LIMITS["seed"].hi)


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


def _choice(value, field: str, choices) -> str:
    if value not in choices:
        raise ServiceError(f"`{field}` must be one of {tuple(choices)}, got {_shown(value)}.")
    return value


def _limit(field: str, value, cap: int | None = None):
    """``LIMITS[field]`` (with this server's lower ``cap`` where set), as a ``ServiceError``."""
    limit = LIMITS[field]
    if cap is not None and cap < limit.hi:
        limit = replace(limit, hi=cap)
    try:
        return limit.check(value)
    except LimitError as exc:
        raise ServiceError(str(exc)) from None


def check_request(request: GenerationRequest, settings, default_scale: float) -> GenerationRequest:
    """The request with every field checked and typed; ``scale=None`` becomes the model's default."""
    if not isinstance(request.encoder, str) or not 0 < len(request.encoder) <= MAX_NAME:
        raise ServiceError(f"`encoder` must be an encoder name of 1 to {MAX_NAME} characters, got {_shown(request.encoder)}.")
    voxels = request.voxels
    if request.target == CUSTOM:
        try:
            voxels = check_voxels(request.voxels)
        except LimitError as exc:
            raise ServiceError(str(exc)) from None
    return replace(
        request,
        prompt=_limit("prompt", request.prompt, settings.max_prompt),
        steps=_limit("steps", request.steps, settings.max_steps),
        n_images=_limit("n_images", request.n_images, settings.max_images),
        seed=_limit("seed", request.seed),
        scale=_limit("scale", default_scale if request.scale is None else request.scale),
        weight=_limit("weight", request.weight),
        sag_scale=_limit("sag", request.sag_scale),
        scheduler=_choice(request.scheduler, "scheduler", sorted(SCHEDULERS)),
        objective=_choice(request.objective, "objective", OBJECTIVES),
        mode=_choice(request.mode, "mode", MODES),
        voxels=voxels,
    )


def target_of(request: GenerationRequest, subject: bd.Subject) -> Target:
    """The ``Target`` of a checked request, checked on ``subject`` (raises ``ValueError`` for unknown ROIs/voxels)."""
    if request.target == CUSTOM and not len(request.voxels):
        raise ValueError("The custom voxel set is empty: click or paint on the flatmap to add voxels.")
    region_b = request.contrast_target if request.objective == "contrast" else ""
    if request.objective == "contrast":
        subject.roi(region_b)  # "" or an unknown ROI: the subject's message lists its ROIs
    if request.target == CUSTOM:
        target = Target.voxel_set(request.voxels, kind=request.objective, region_b=region_b, weight=request.weight)
    elif request.objective == "contrast":
        if request.contrast_target == request.target:
            raise ValueError(f"`contrast_target` must differ from the target {request.target!r}: contrasting a region "
                             "with itself has objective 0 everywhere.")
        target = Target.contrast(request.target, request.contrast_target, request.weight)
    else:
        target = Target(request.objective, request.target)
    target.indices(subject)  # unknown ROIs, voxels out of range, B equal to A: a message now, before the queue
    return target
