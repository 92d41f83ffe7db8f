"""Every part of a split guided with the same seeds, the encoder's cross-prediction, and the parts' records.

``cross_prediction`` runs the one generation routine (``braindive.generate.generate_seeds``) for each part's
``Target`` (``subregions.part_target``: maximised, minimised, or contrasted with the rest of the region) on the
same seeds. The unguided image of a seed does not depend on the target, so it is made once and shared by all
parts (kept in ``baselines``: the catalog in the app and the CLI). ``store`` writes each part's images to a
catalog with the part's target and the split that made it, so History, manifests and evaluation read them
like any other result. The app's "Split region…" and ``python -m braindive subregions`` both use these.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .generate import BaselineStore, GenerationSettings, SeedResult, generate_seeds, image_id, seed_record
from .subregions import Split, part_target
from .targets import Target

__all__ = ["CrossPrediction", "cross_prediction", "store"]


@dataclass(frozen=True)
class CrossPrediction:
    """``gains[i, j, s]``: predicted mean of part j for part i's guided image of seed s, minus the same for
    the unguided image of seed s. ``results[i]`` are part i's ``SeedResult``s (with the unguided baseline),
    ``targets[i]`` what part i's images were guided by."""

    split: Split = field(repr=False)
    kind: str
    seeds: tuple[int, ...]
    targets: tuple[Target, ...] = field(repr=False)
    results: list = field(repr=False)
    gains: np.ndarray = field(repr=False)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.split.parts)

    @property
    def images(self) -> list[list]:
        return [[r.image for r in part] for part in self.results]

    @property
    def baseline(self) -> list:
        """The unguided image of each seed (the same for every part)."""
        return [r.baseline_image for r in self.results[0]]

    @property
    def matrix(self) -> np.ndarray:
        """``[k, k]`` mean gain over seeds (rows: images of part i; columns: part j measured)."""
        return self.gains.mean(-1)

    @property
    def margins(self) -> np.ndarray:
        """``[k, n_seeds]``: own gain minus the largest gain of another part, per image."""
        k = len(self.names)
        own = self.gains[np.arange(k), np.arange(k)]
        other = np.stack([np.delete(self.gains[i], i, axis=0).max(0) for i in range(k)])
        return own - other

    def table(self) -> list[dict]:
        """One row per part: mean gain in each part, share of seeds whose own gain is largest, mean margin."""
        margins = self.margins
        return [{"images for": name, **{f"gain {other}": float(self.matrix[i, j]) for j, other in enumerate(self.names)},
                 "own largest": float((margins[i] > 0).mean()), "margin": float(margins[i].mean())}
                for i, name in enumerate(self.names)]


def cross_prediction(pipe, split: Split, seeds, settings: GenerationSettings, *, subject, kind: str = "maximize",
                     baselines=None, model: str = "", encoder: str = "", batch_size: int = 8) -> CrossPrediction:
    """Generate each part's images with the same ``seeds`` through ``pipe`` (``settings``: how, as for any
    generation) and measure every part's predicted mean on them and on the unguided image of each seed.
    ``baselines`` (a ``Catalog``, say) keeps the unguided images, keyed by ``model``, ``encoder`` (its identity),
    the settings and the seed; without one they are kept for this call only."""
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("`seeds` must name at least one seed.")
    split.check_subject(subject)
    store_ = BaselineStore() if baselines is None else baselines
    targets = tuple(part_target(split, i, kind) for i in range(split.k))
    results = []
    for target in targets:
        part_results = []
        for start in range(0, len(seeds), batch_size):
            part_results += generate_seeds(pipe, target, seeds[start:start + batch_size], settings, subject=subject,
                                           baselines=store_, model=model, encoder=encoder)
        results.append(part_results)
    gains = np.array([[[r.activations[p.voxels].mean() - r.baseline_activations[p.voxels].mean() for r in part]
                       for p in split.parts] for part in results], dtype=np.float64)
    return CrossPrediction(split, kind, seeds, targets, results, gains)


def store(cp: CrossPrediction, catalog, subject, settings: GenerationSettings, *, model: str, encoder: str,
          identity: str = "", run_id: str, owner: str = "") -> list:
    """Catalog every part's images (``seed_record`` + the split: roi, k, by, axis, seed, part, kind and the
    image's gain in every part); returns the entries. ``identity`` (the encoder's, as in baseline keys) gives
    deterministic entry ids, as ``generate`` and sweeps use; without it ids are random (the app's)."""
    split, entries = cp.split, []
    for i, (target, part_results) in enumerate(zip(cp.targets, cp.results)):
        for s, result in enumerate(part_results):
            record = seed_record(result, target, subject, settings, model=model, encoder=encoder)
            record["subregion"] = {"roi": split.roi, "k": split.k, "by": split.by, "axis": split.axis,
                                   "seed": split.seed, "part": split.parts[i].name, "kind": cp.kind,
                                   "gains": {name: float(cp.gains[i, j, s]) for j, name in enumerate(cp.names)}}
            entry_id = image_id(model, identity, target, subject, settings, result.seed) if identity else None
            entries.append(catalog.add(result.image, record, run_id=run_id, activations=result.activations,
                                       owner=owner, entry_id=entry_id))
    return entries
