"""One description of a generation: what was asked, used for labels, captions, filters, records and manifests.

``GenerationDescription`` holds the objective (kind, region A, region B and weight for a contrast,
hemisphere), where it was measured (subject, its voxel-space fingerprint, encoder) and how the image
was made (model, scheduler, guidance mode, scale, steps, SAG, prompt, seed). Its ``label`` says what
was optimised: ``"max FFA"``, ``"min FFA"``, ``"max FFA.lh"``, ``"FFA − 1.0×PPA"``; a minimise or
contrast run is never labelled as a plain ROI run.

Objective values are reported as a *measure* with its sign stated: the predicted mean of region A
for maximise and minimise (``"FFA mean -2.79"`` after minimising FFA), and mean A − weight × mean B for
a contrast. ``measure_value`` turns the pipeline's objective value (which minimise negates) into it.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .targets import TARGET_KINDS as OBJECTIVE_KINDS
from .targets import Target

__all__ = ["GenerationDescription", "OBJECTIVE_KINDS", "FIELDS", "describe_record", "measured_value", "measured_baseline"]


@dataclass(frozen=True)
class GenerationDescription:
    kind: str                       # maximize | minimize | contrast
    target: str                     # region A: ROI name ("FFA", "FFA.lh") or a custom voxel set's name
    seed: int
    target_b: str = ""              # contrast only: the region subtracted
    weight: float = 1.0             # contrast only: objective = mean A - weight x mean B
    subject: str = ""
    subject_space: str = ""         # fingerprint of the subject's voxel space ("" when not known)
    encoder: str = ""
    model: str = ""
    scheduler: str = ""
    mode: str = ""                  # guidance computation: exact | fast | reference
    scale: float | None = None      # brain guidance scale
    steps: int | None = None
    sag: float | None = None
    prompt: str = ""

    def __post_init__(self):
        if self.kind not in OBJECTIVE_KINDS:
            raise ValueError(f"`kind` must be one of {OBJECTIVE_KINDS}, got {self.kind!r}.")
        if not self.target:
            raise ValueError("`target` must name the region that was optimised, got ''.")
        if (self.kind == "contrast") != bool(self.target_b):
            raise ValueError(f"`target_b` must be set for a contrast and only then, got kind {self.kind!r} "
                             f"and target_b {self.target_b!r}.")
        if not math.isfinite(self.weight):
            raise ValueError(f"`weight` must be a finite number, got {self.weight!r}.")

    # ------------------------------------------------------------------ what people read

    @property
    def target_spec(self) -> Target:
        """The ``braindive.targets.Target`` this description's objective fields name (labels and measures live there)."""
        return Target(self.kind, self.target, self.target_b, self.weight if self.kind == "contrast" else 1.0)

    @property
    def hemisphere(self) -> str:
        """``lh`` / ``rh`` for a one-hemisphere target (``FFA.lh``), else ``both``."""
        return self.target_spec.hemisphere

    @property
    def label(self) -> str:
        """What was optimised: ``max FFA``, ``min FFA.lh``, ``FFA − 1.0×PPA``."""
        return self.target_spec.label

    @property
    def measure(self) -> str:
        """The quantity objective values are reported as: ``FFA mean`` or ``FFA mean − 1.0×PPA mean``."""
        return self.target_spec.measure_name

    def measure_value(self, objective_value: float) -> float:
        """The pipeline's objective value (maximised quantity) as the signed ``measure``."""
        return self.target_spec.measure_of(objective_value)

    def value_text(self, measured: float | None) -> str:
        """``FFA mean -2.79``; ``FFA mean − 1.0×PPA mean = 0.53`` (``measured`` as from ``measure_value``)."""
        return self.target_spec.value_text(measured)

    def caption(self, measured: float | None = None) -> str:
        """A short gallery caption: ``min FFA · seed 3`` (plus the measured value when given)."""
        text = f"{self.label} · seed {self.seed}"
        return text if measured is None else f"{text} · {measured:.2f}"

    # ------------------------------------------------------------------ flat rows (records, catalog, manifest)

    def as_dict(self) -> dict:
        """Every field plus the derived ``hemisphere`` and ``label`` (JSON- and CSV-ready)."""
        return {**dataclasses.asdict(self), "hemisphere": self.hemisphere, "label": self.label}

    @classmethod
    def from_dict(cls, row: dict) -> "GenerationDescription":
        """Rebuild from ``as_dict()`` output, a catalog row or a manifest row (values may be strings).

        Raises ``ValueError`` naming the field when a value is missing or malformed.
        """
        values = {}
        for f in FIELDS:
            raw = row.get(f)
            if raw is None or raw == "":
                if f in _REQUIRED:
                    raise ValueError(f"`{f}` is missing.")
                continue
            try:
                values[f] = _CAST[f](raw)
            except (TypeError, ValueError):
                raise ValueError(f"`{f}` must be {_CAST_NAME[f]}, got {raw!r}.") from None
        return cls(**values)


FIELDS = tuple(f.name for f in dataclasses.fields(GenerationDescription))
_REQUIRED = ("kind", "target", "seed")
_CAST = {f: str for f in FIELDS} | {"seed": int, "steps": int, "weight": float, "scale": float, "sag": float}
_CAST_NAME = {f: "a number" if cast is float else "an integer" if cast is int else "text" for f, cast in _CAST.items()}


def describe_record(record: dict) -> GenerationDescription:
    """The description of a generation record, including records written before descriptions existed.

    The objective fields come from ``Target.from_record`` (which migrates ``FFA-vs-PPA``, ``EBA-min`` and
    ``custom(N voxels)`` targets); old records keep the scheduler, mode and scales among ``parameters``.
    """
    target = Target.from_record(record)
    fields = {"kind": target.kind, "target": target.region_a, "target_b": target.region_b,
              "weight": target.weight if target.kind == "contrast" else 1.0}
    if "description" in record:
        return GenerationDescription.from_dict({**record["description"], **fields})
    params = record.get("parameters") or {}
    return GenerationDescription.from_dict({
        **fields, "seed": record.get("seed"), "subject": record.get("subject", ""), "encoder": record.get("encoder", ""),
        "model": record.get("model", ""), "scheduler": params.get("scheduler", ""),
        "mode": params.get("guidance_mode", ""), "scale": params.get("brain_guidance_scale"),
        "steps": params.get("num_inference_steps"), "sag": params.get("sag_scale"), "prompt": params.get("prompt", ""),
    })


def measured_value(record: dict) -> float | None:
    """The record's predicted value of its ``measure``; old records stored the objective (minimise negated)."""
    value = record.get("predicted_objective")
    if value is None:
        return None
    if "objective_measure" in record:
        return float(value)
    return describe_record(record).measure_value(value)


def measured_baseline(record: dict) -> float | None:
    """The unguided image's value of the record's ``measure`` (``baseline_objective`` is the raw objective)."""
    if "baseline_measure" in record:
        return float(record["baseline_measure"])
    if record.get("baseline_objective") is None:
        return None
    return describe_record(record).measure_value(record["baseline_objective"])
