"""What a request asks for: one ``Target`` (maximise / minimise an ROI or a voxel set, or contrast A − w·B).

Every door (app, API, CLI, batch) builds a ``Target``; records, sweeps and the API store ``to_dict()``
and read it back with ``from_dict``. Nothing parses a label back: ``Target.from_record`` migrates the
older record formats (``"FFA-vs-PPA"`` strings, batch ``"EBA-min"`` targets, ``"custom(N voxels)"``,
``objective``/``description`` dicts) in this one place.

* ``label``: what people read — ``"max FFA"``, ``"min PPA"``, ``"FFA − 0.5×PPA"``, ``"max FFA.lh"``,
  ``"max voxels (231)"``.
* ``measure(activations)``: the signed quantity shown to people — region A's mean for maximise *and*
  minimise, mean A − weight × mean B for a contrast. ``build(subject)`` is what the pipeline ascends
  (minimise negates); ``measure_of(objective_value)`` converts the pipeline's value into the measure.
* ``category_roi``: the ROI whose CLIP category the target stands for (a maximised ROI only).

This module imports neither torch nor the objectives until ``build`` is called.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

__all__ = ["Target", "TARGET_KINDS", "HEMISPHERES"]

TARGET_KINDS = ("maximize", "minimize", "contrast")
HEMISPHERES = ("lh", "rh")
_PREFIX = {"maximize": "max", "minimize": "min"}
_CUSTOM = re.compile(r"custom\((\d+) voxels\)")


@dataclass(frozen=True)
class Target:
    """One optimisation target; build with ``maximize``/``minimize``/``contrast``/``voxel_set``.

    ``region_a`` is an ROI name, optionally one hemisphere (``"FFA.lh"``), or a voxel set's name when
    ``voxels`` holds its indices. ``region_b`` and ``weight`` are a contrast's subtracted region and weight:
    an ROI, or a voxel set's name when ``voxels_b`` holds its indices (a sub-region against the rest).
    """

    kind: str
    region_a: str
    region_b: str = ""
    weight: float = 1.0
    voxels: tuple[int, ...] | None = None
    voxels_b: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.kind not in TARGET_KINDS:
            raise ValueError(f"`kind` must be one of {TARGET_KINDS}, got {self.kind!r}.")
        if not isinstance(self.region_a, str) or not self.region_a:
            raise ValueError(f"`region_a` must name a region, got {self.region_a!r}.")
        if (self.kind == "contrast") != bool(self.region_b):
            raise ValueError(f"`region_b` must be set for a contrast and only then, got kind {self.kind!r} "
                             f"and region_b {self.region_b!r}.")
        if not isinstance(self.region_b, str):
            raise ValueError(f"`region_b` must be an ROI name, got {self.region_b!r}.")
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or not math.isfinite(self.weight):
            raise ValueError(f"`weight` must be a finite number, got {self.weight!r}.")
        object.__setattr__(self, "weight", float(self.weight))
        if self.voxels is not None:
            object.__setattr__(self, "voxels", voxel_tuple(self.voxels))
        if self.voxels_b is not None:
            if self.kind != "contrast":
                raise ValueError(f"`voxels_b` (region B's voxels) is only for a contrast, got kind {self.kind!r}.")
            object.__setattr__(self, "voxels_b", voxel_tuple(self.voxels_b, "voxels_b"))
        if self.voxels_b is not None and self.voxels_b == self.voxels:
            raise ValueError(f"`voxels_b` must differ from region A {self.region_a!r}: a voxel set contrasted with "
                             "itself is 0 everywhere.")
        if self.kind == "contrast" and self.voxels is None and self.region_a == self.region_b:
            raise ValueError(f"`region_b` must differ from region A {self.region_a!r}: a region contrasted with "
                             "itself is 0 everywhere.")

    # ------------------------------------------------------------------ constructors

    @classmethod
    def maximize(cls, roi: str) -> "Target":
        return cls("maximize", roi)

    @classmethod
    def minimize(cls, roi: str) -> "Target":
        return cls("minimize", roi)

    @classmethod
    def contrast(cls, region_a: str, region_b: str, weight: float = 1.0) -> "Target":
        return cls("contrast", region_a, region_b, weight)

    @classmethod
    def voxel_set(cls, indices, name: str | None = None, kind: str = "maximize", region_b: str = "",
                  weight: float = 1.0, voxels_b=None) -> "Target":
        """A custom voxel set (``kind`` maximize/minimize, or contrast with ``region_b``: an ROI, or the name of
        the voxel set ``voxels_b``); default names ``voxels (N)``."""
        voxels = voxel_tuple(indices)
        if voxels_b is not None:
            voxels_b = voxel_tuple(voxels_b, "voxels_b")
            region_b = region_b or f"voxels ({len(voxels_b)})"
        return cls(kind, name or f"voxels ({len(voxels)})", region_b, weight, voxels, voxels_b)

    # ------------------------------------------------------------------ what people read

    @property
    def name(self) -> str:
        """Region A as people read it: the ROI (``FFA.lh``) or the voxel set's name."""
        return self.region_a

    @property
    def hemisphere(self) -> str:
        """``lh`` / ``rh`` for a one-hemisphere ROI target (``FFA.lh``), else ``both``."""
        base, _, hemi = self.region_a.rpartition(".")
        return hemi if self.voxels is None and base and hemi in HEMISPHERES else "both"

    @property
    def label(self) -> str:
        """``max FFA``, ``min PPA``, ``FFA − 0.5×PPA``, ``max FFA.lh``, ``max voxels (231)``."""
        if self.kind == "contrast":
            return f"{self.region_a} − {format_weight(self.weight)}×{self.region_b}"
        return f"{_PREFIX[self.kind]} {self.region_a}"

    @property
    def measure_name(self) -> str:
        """The quantity ``measure`` returns: ``FFA mean`` or ``FFA mean − 0.5×PPA mean``."""
        if self.kind == "contrast":
            return f"{self.region_a} mean − {format_weight(self.weight)}×{self.region_b} mean"
        return f"{self.region_a} mean"

    def value_text(self, measured: float | None) -> str:
        """``FFA mean -2.79``; ``FFA mean − 1.0×PPA mean = 0.53``; ``FFA mean: not recorded``."""
        if measured is None:
            return f"{self.measure_name}: not recorded"
        return f"{self.measure_name}{' =' if self.kind == 'contrast' else ''} {measured:.2f}"

    @property
    def category_roi(self) -> str | None:
        """The ROI whose CLIP category this target stands for (hemisphere dropped): a maximised ROI only."""
        if self.kind != "maximize" or self.voxels is not None:
            return None
        base, _, hemi = self.region_a.rpartition(".")
        return base if base and hemi in HEMISPHERES else self.region_a

    @property
    def regions(self) -> tuple[str, ...]:
        """The ROI names involved (voxel sets are not ROIs), for charts and outlines."""
        a = () if self.voxels is not None else (self.region_a,)
        return a + ((self.region_b,) if self.region_b and self.voxels_b is None else ())

    # ------------------------------------------------------------------ numbers

    def indices(self, subject) -> tuple[np.ndarray, np.ndarray | None]:
        """Voxel indices of region A and region B (None unless a contrast) on ``subject``."""
        a = subject.check_voxels(np.asarray(self.voxels, dtype=np.int64), "voxels") if self.voxels is not None \
            else subject.roi(self.region_a)
        b = subject.check_voxels(np.asarray(self.voxels_b, dtype=np.int64), "voxels_b") if self.voxels_b is not None \
            else subject.roi(self.region_b) if self.region_b else None
        if b is not None and np.array_equal(np.unique(a), np.unique(b)):
            raise ValueError(f"`region_b` must differ from region A {self.region_a!r}: a region contrasted with "
                             "itself is 0 everywhere.")
        return a, b

    def build(self, subject):
        """The ``braindive.objectives.Objective`` the pipeline ascends, on ``subject``'s voxels."""
        from .objectives import Objective

        a, b = self.indices(subject)
        if self.kind == "contrast":
            return Objective.contrast(a, b, self.weight, label=self.label)
        return getattr(Objective, self.kind)(a, label=self.label)

    def measure(self, activations, subject=None):
        """The signed measure of ``activations`` ``[V]`` (-> float) or ``[B, V]`` (-> ``[B]`` array).

        ``subject`` names the ROIs' voxels; a target of voxel sets only may leave it out.
        """
        if subject is not None:
            a, b = self.indices(subject)
        elif self.voxels is not None and (not self.region_b or self.voxels_b is not None):
            a = np.asarray(self.voxels, dtype=np.int64)
            b = None if self.voxels_b is None else np.asarray(self.voxels_b, dtype=np.int64)
        else:
            raise ValueError(f"measuring {self.label!r} needs the subject whose ROIs it names: pass subject=.")
        acts = np.asarray(activations, dtype=np.float64)
        value = acts[..., a].mean(axis=-1)
        if b is not None:
            value = value - self.weight * acts[..., b].mean(axis=-1)
        return float(value) if acts.ndim == 1 else value

    def measure_of(self, objective_value):
        """The pipeline's objective value (minimise negates) as this target's signed measure."""
        if objective_value is None:
            return None
        if isinstance(objective_value, np.ndarray):
            return -objective_value if self.kind == "minimize" else objective_value
        return -float(objective_value) if self.kind == "minimize" else float(objective_value)

    def score(self, measure):
        """How good a signed measure is in the direction asked (higher is better; a minimise negates): what
        re-ranking orders by. The inverse of ``measure_of``, which is the same negation."""
        return self.measure_of(measure)

    def key(self) -> dict:
        """What identifies the target in image ids (independent of names for voxel sets)."""
        return {"kind": self.kind, "a": list(self.voxels) if self.voxels is not None else self.region_a,
                "b": list(self.voxels_b) if self.voxels_b is not None else self.region_b, "weight": self.weight}

    # ------------------------------------------------------------------ storage

    def to_dict(self) -> dict:
        """JSON-ready; ``label`` and ``hemisphere`` are included for readers and ignored by ``from_dict``."""
        return {"kind": self.kind, "region_a": self.region_a, "region_b": self.region_b, "weight": self.weight,
                "hemisphere": self.hemisphere, "voxels": None if self.voxels is None else list(self.voxels),
                "voxels_b": None if self.voxels_b is None else list(self.voxels_b), "label": self.label}

    @classmethod
    def from_dict(cls, data: dict) -> "Target":
        """The target ``to_dict`` wrote (raises ``ValueError`` naming the bad field)."""
        if not isinstance(data, dict):
            raise ValueError(f"a target must be a dict with `kind` and `region_a`, got {data!r}.")
        unknown = set(data) - {"kind", "region_a", "region_b", "weight", "voxels", "voxels_b", "hemisphere", "label"}
        if unknown:
            raise ValueError(f"unknown target field(s) {sorted(unknown)}.")
        return cls(data.get("kind"), data.get("region_a"), data.get("region_b") or "", data.get("weight", 1.0),
                   data.get("voxels"), data.get("voxels_b"))

    @classmethod
    def from_record(cls, record: dict) -> "Target":
        """The target of a generation record, of any format this project has written."""
        if record.get("target_spec"):
            return cls.from_dict(record["target_spec"])
        objective = record.get("objective") or {}
        desc = record.get("description") or {}
        kind = desc.get("kind") or objective.get("kind") or "maximize"
        a = str(desc.get("target") or record.get("target") or objective.get("label") or "")
        b = str(desc.get("target_b") or "")
        weight = float(desc.get("weight", objective.get("weight", 1.0)) if kind == "contrast" else 1.0)
        if kind == "contrast" and not b and "-vs-" in a:
            a, _, b = a.rpartition("-vs-")
        if kind == "minimize" and a.endswith("-min"):  # batch sweeps before targets: "EBA-min"
            a = a[: -len("-min")]
        custom = _CUSTOM.fullmatch(a)
        if custom and objective.get("positive") is not None:
            return cls.voxel_set(objective["positive"], kind=kind, region_b=b, weight=weight)
        return cls(kind, a, b, weight)


def voxel_tuple(indices, what: str = "voxels") -> tuple[int, ...]:
    """Sorted unique voxel indices as a tuple; a list of floats, bools or strings is an error, not converted."""
    values = indices.tolist() if isinstance(indices, np.ndarray) else indices
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(f"`{what}` must be a list of whole voxel indices, got {_shown(indices)}.")
    values = list(values)
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, np.integer))]
    if bad:
        raise ValueError(f"`{what}` must be a list of whole voxel indices, got {_shown(bad[0])} among them.")
    if not values:
        raise ValueError(f"`{what}` is an empty voxel set; select at least one voxel.")
    if min(values) < 0:
        raise ValueError(f"`{what}` has negative voxel indices: {[v for v in values if v < 0][:5]}.")
    return tuple(sorted({int(v) for v in values}))


def format_weight(weight: float) -> str:
    """``1.0``, ``0.5``, ``0.25``: one decimal at least, no float noise."""
    return f"{weight:.1f}" if round(weight, 1) == weight else f"{weight:g}"


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "…"
