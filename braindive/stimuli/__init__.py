"""Stimulus sets for experiments: image statistics, SHINE-style equalisation, and experiment packages.

- ``statistics``: per-image luminance, contrast, colourfulness, spectrum slope, edge density, entropy;
  permutation tests between sets.
- ``equalise``: luminance/contrast, histogram and spectrum matching (on L*, chroma kept).
- ``scoring``: the encoder's ROI predictions, target measures and embedding diversity of a set.
- ``sources``: stimuli from catalog entries (with unguided baselines) and folders.
- ``design``: counterbalanced block / event-related orders (balanced Latin square) with timing.
- ``experiment``: PsychoPy conditions-file rules and the PsychoPy script.
- ``report``: tables, plots, the share of each set's target effect kept after equalisation.
- ``package``: the package folder, written atomically and recorded in the catalog.
"""
from .design import Design
from .equalise import equalise
from .package import Package, PackageSettings, build_package
from .sources import Stimulus, load_stimuli
from .statistics import STATISTICS, image_statistics

__all__ = ["Design", "equalise", "Package", "PackageSettings", "build_package", "Stimulus", "load_stimuli",
           "STATISTICS", "image_statistics"]
