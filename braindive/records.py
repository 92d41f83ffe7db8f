"""Provenance of generated images: the JSON written beside each PNG (CLI, app catalog)."""
from __future__ import annotations

import datetime as _dt
import importlib.metadata as _md

from .description import GenerationDescription
from .targets import Target

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


def generation_record(*, seed: int, subject, target: Target, objective: dict, parameters: dict, measure: float,
                      model: str, encoder: str, baseline_measure: float | None = None) -> dict:
    """Everything needed to reproduce and interpret one generated image.

    ``subject`` is the ``Subject`` (its name and voxel-space fingerprint are stored), ``target`` the
    ``braindive.targets.Target`` (stored as ``target_spec``: data, never a string to parse back),
    ``objective`` is ``Objective.describe()``; ``measure`` and ``baseline_measure`` (the unguided image's)
    are the target's signed measure, stored as ``predicted_objective`` / ``baseline_measure``.
    """
    description = GenerationDescription(
        kind=target.kind, target=target.region_a, target_b=target.region_b,
        weight=target.weight if target.kind == "contrast" else 1.0, seed=int(seed),
        subject=subject.name, subject_space=subject.fingerprint, encoder=encoder, model=model,
        scheduler=parameters.get("scheduler", ""), mode=parameters.get("guidance_mode", ""),
        scale=parameters.get("brain_guidance_scale"), steps=parameters.get("num_inference_steps"),
        sag=parameters.get("sag_scale"), prompt=parameters.get("prompt") or "",
    )
    record = {
        "seed": int(seed),
        "subject": subject.name,
        "subject_space": subject.fingerprint,
        "target": target.region_a,
        "target_spec": target.to_dict(),
        "label": target.label,
        "description": description.as_dict(),
        "objective": objective,
        "parameters": parameters,
        "objective_measure": target.measure_name,
        "predicted_objective": float(measure),
        "model": model,
        "encoder": encoder,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": package_versions(),
    }
    if baseline_measure is not None:
        record["baseline_measure"] = float(baseline_measure)
    return record
