"""Provenance of generated images: the JSON written beside each PNG (CLI, app catalog)."""
from __future__ import annotations

import datetime as _dt
import importlib.metadata as _md

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
                      objective_value: float, model: str, encoder: str) -> dict:
    """Everything needed to reproduce and interpret one generated image."""
    return {
        "seed": int(seed),
        "subject": subject,
        "target": target,
        "objective": objective,
        "parameters": parameters,
        "predicted_objective": float(objective_value),
        "model": model,
        "encoder": encoder,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": package_versions(),
    }
