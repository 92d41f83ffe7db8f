"""Provenance of generated images: the JSON written beside each PNG (CLI, app catalog)."""
from __future__ import annotations

import datetime as _dt
import importlib.metadata as _md

from .description import GenerationDescription

__all__ = ["package_versions", "generation_record"]

_PACKAGES = ("braindive", "torch", "diffusers", "transformers", "open_clip_torch", "pycortex", "numpy")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape a generated image."""
    from . import __version__

    versions = {"braindive": __version__}
    for name in _PACKAGES[1:]:
        try:
            versions[name] = _md.version(name)
        except _md.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def generation_record(*, seed: int, subject: str, target: str, objective: dict, parameters: dict,
                      objective_value: float, model: str, encoder: str, target_b: str | None = None,
                      subject_space: str = "", baseline_value: float | None = None) -> dict:
    """Everything needed to reproduce and interpret one generated image.

    ``target`` is region A (an ROI name or a custom set's name); ``target_b`` the contrast's region B
    (when None it is read from a ``"A-vs-B"`` target, the older calling convention). ``objective`` is
    ``Objective.describe()``; ``objective_value`` (and ``baseline_value``, the unguided image's) is the
    pipeline's objective value. The record stores them as the signed value of ``objective_measure``
    (``predicted_objective``, ``baseline_measure``; e.g. FFA's mean after minimising FFA), with the
    ``description`` and its ``label``.
    """
    kind = objective["kind"]
    if kind == "contrast" and target_b is None:
        target, _, target_b = target.rpartition("-vs-") if "-vs-" in target else (target, "", "")
    description = GenerationDescription(
        kind=kind, target=target, target_b=target_b or "", weight=float(objective.get("weight", 1.0)), seed=int(seed),
        subject=subject, subject_space=subject_space, encoder=encoder, model=model,
        scheduler=parameters.get("scheduler", ""), mode=parameters.get("guidance_mode", ""),
        scale=parameters.get("brain_guidance_scale"), steps=parameters.get("num_inference_steps"),
        sag=parameters.get("sag_scale"), prompt=parameters.get("prompt") or "",
    )
    record = {
        "seed": int(seed),
        "subject": subject,
        "target": target,
        "label": description.label,
        "description": description.as_dict(),
        "objective": objective,
        "parameters": parameters,
        "objective_measure": description.measure,
        "predicted_objective": description.measure_value(objective_value),
        "model": model,
        "encoder": encoder,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": package_versions(),
    }
    if baseline_value is not None:
        record["baseline_measure"] = description.measure_value(baseline_value)
    return record
