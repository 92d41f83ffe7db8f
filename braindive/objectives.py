"""Objectives: what to maximise in predicted brain activity.

An ``Objective`` maps encoder predictions ``[B, n_voxels]`` to one number per image ``[B]``:

* ``Objective.maximize(idx)``: mean activation of the voxels ``idx``;
* ``Objective.minimize(idx)``: minus that mean;
* ``Objective.contrast(pos, neg, weight)``: mean over ``pos`` minus ``weight`` x mean over ``neg``.

Brain guidance ascends the objective (descends it for a negative guidance scale).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .subjects import check_voxel_indices

__all__ = ["Objective", "OBJECTIVE_KINDS"]

OBJECTIVE_KINDS = ("maximize", "minimize", "contrast")


@dataclass(frozen=True, eq=False)
class Objective:
    kind: str
    positive: np.ndarray
    negative: np.ndarray | None = None
    weight: float = 1.0
    label: str = ""

    @classmethod
    def maximize(cls, voxels, label: str = "") -> "Objective":
        return cls("maximize", _indices(voxels, "voxels"), label=label)

    @classmethod
    def minimize(cls, voxels, label: str = "") -> "Objective":
        return cls("minimize", _indices(voxels, "voxels"), label=label)

    @classmethod
    def contrast(cls, positive, negative, weight: float = 1.0, label: str = "") -> "Objective":
        if not np.isfinite(weight):
            raise ValueError(f"`weight` must be a finite number, got {weight!r}.")
        return cls("contrast", _indices(positive, "positive"), _indices(negative, "negative"), float(weight), label)

    def check(self, n_voxels: int) -> None:
        """Raise if any index is outside an encoder's ``n_voxels``."""
        check_voxel_indices(self.positive, n_voxels, "positive" if self.kind == "contrast" else "voxels")
        if self.negative is not None:
            check_voxel_indices(self.negative, n_voxels, "negative")

    def __call__(self, activations: torch.Tensor) -> torch.Tensor:
        """``[B, n_voxels]`` predictions -> ``[B]`` objective values."""
        pos = _take_mean(activations, self.positive)
        if self.kind == "maximize":
            return pos
        if self.kind == "minimize":
            return -pos
        return pos - self.weight * _take_mean(activations, self.negative)

    def describe(self) -> dict:
        """JSON-ready description for metadata files, voxel indices included (enough to rebuild it)."""
        out = {"kind": self.kind, "label": self.label, "n_positive": int(len(self.positive)),
               "positive": self.positive.tolist()}
        if self.negative is not None:
            out.update(n_negative=int(len(self.negative)), weight=self.weight, negative=self.negative.tolist())
        return out

    @classmethod
    def from_description(cls, description: dict) -> "Objective":
        """The objective a ``describe()`` dict was written from."""
        negative = description.get("negative")
        return cls(description["kind"], _indices(description["positive"], "positive"),
                   None if negative is None else _indices(negative, "negative"),
                   float(description.get("weight", 1.0)), description.get("label", ""))


def _indices(voxels, argument: str) -> np.ndarray:
    arr = np.asarray(voxels)
    if arr.size == 0:
        raise ValueError(f"`{argument}` is an empty voxel set; select at least one voxel.")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"`{argument}` must hold integer voxel indices, got dtype {arr.dtype}.")
    if arr.min() < 0:
        raise ValueError(f"`{argument}` has negative voxel indices: {arr[arr < 0][:5].tolist()}.")
    return np.unique(arr.ravel()).astype(np.int64)


def _take_mean(activations: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
    index = torch.as_tensor(idx, device=activations.device)
    return activations.index_select(1, index).mean(dim=1)
