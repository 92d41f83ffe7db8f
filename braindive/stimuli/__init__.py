"""Stimulus sets for experiments: image statistics, SHINE-style equalisation, and experiment packages.

- ``statistics``: per-image luminance, contrast, colourfulness, spectrum slope, edge density, entropy;
  permutation tests between sets.
- ``equalise``: luminance/contrast, histogram and spectrum matching (on linear luminance, L* or grey level).
- ``scoring``: the encoder's ROI predictions, target measures and embedding diversity of a set.
- ``sources``: stimuli from catalog entries (with unguided baselines) and folders.
- ``design``: counterbalanced block / event-related orders (balanced Latin square) with timing.
- ``experiment``: PsychoPy conditions-file rules and the PsychoPy script.
- ``report``: tables, plots, the share of each set's target effect kept after equalisation.
- ``package``: the package folder, written atomically and recorded in the catalog.
"""
import importlib

# names -> submodule, imported on first use, so ``python -m braindive --help`` loads none of them
_LAZY = {"Design": "design", "equalise": "equalise", "Package": "package", "PackageSettings": "package",
         "build_package": "package", "Stimulus": "sources", "load_stimuli": "sources", "STATISTICS": "statistics",
         "image_statistics": "statistics"}
__all__ = list(_LAZY)


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
