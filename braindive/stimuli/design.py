"""Counterbalanced trial orders for block and event-related designs, with timing.

Condition orders come from a balanced Latin square (Williams design): every condition is equally often
at every position, and follows every other condition equally often. For k conditions the square has k
rows (even k) or 2k rows (odd k, the square and its mirror). Run r starts at row r of the (seeded)
square and every following cycle of k slots takes the next row, so over any multiple of the square's
rows as runs, each condition is equally often at each slot of the run. Slots are trials (event-related)
or blocks of ``block_size`` trials (block design). Each run shows every image of a condition once, in a
seeded order of its own. Conditions with unequal numbers of images still get runs (a condition whose
images are used up leaves its slots out), but then positions are not balanced: ``balanced`` says so.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Design", "balanced_latin_square", "runs", "balanced", "DESIGNS"]

DESIGNS = ("event", "block")


@dataclass(frozen=True)
class Design:
    """Design and timing (seconds). ``runs`` 0 = one per row of the Latin square."""

    design: str = "event"
    runs: int = 0
    stim_duration: float = 1.0     # each image on screen
    isi: float = 3.0               # fixation after each image (event) or between images of a block
    jitter: float = 0.0            # event design: the ISI drawn uniformly from [isi − jitter, isi + jitter]
    block_size: int = 4            # block design: images per block
    rest: float = 12.0             # block design: fixation after each block
    lead_in: float = 10.0          # fixation before the first and after the last trial
    seed: int = 0

    def __post_init__(self):
        checks = [("design", self.design in DESIGNS, f"one of {DESIGNS}"),
                  ("runs", isinstance(self.runs, int) and 0 <= self.runs <= 100, "an integer in [0, 100]"),
                  ("stim_duration", 0 < self.stim_duration <= 60, "in (0, 60] seconds"),
                  ("isi", 0 <= self.isi <= 60, "in [0, 60] seconds"),
                  ("jitter", 0 <= self.jitter <= self.isi, f"in [0, isi = {self.isi}] seconds"),
                  ("block_size", isinstance(self.block_size, int) and 1 <= self.block_size <= 100, "an integer in [1, 100]"),
                  ("rest", 0 <= self.rest <= 120, "in [0, 120] seconds"),
                  ("lead_in", 0 <= self.lead_in <= 120, "in [0, 120] seconds")]
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"`{name}` must be {allowed}, got {getattr(self, name)!r}.")


def balanced_latin_square(k: int) -> np.ndarray:
    """Williams' balanced Latin square of ``k`` conditions: ``[k, k]`` for even k, ``[2k, k]`` for odd k."""
    if k < 1:
        raise ValueError(f"`k` must be >= 1, got {k}.")
    first, low, high = [0], 1, k - 1
    while len(first) < k:
        first.append(low)
        low += 1
        if len(first) < k:
            first.append(high)
            high -= 1
    square = (np.array(first)[None, :] + np.arange(k)[:, None]) % k
    return square if k % 2 == 0 else np.concatenate([square, square[:, ::-1]])


def balanced(images_by_condition: dict[str, list]) -> bool:
    """Whether ``runs`` can balance positions: every condition has the same number of images."""
    return len({len(v) for v in images_by_condition.values()}) == 1


def runs(images_by_condition: dict[str, list], design: Design) -> list[list[dict]]:
    """Trial lists of every run: ``{trial, onset, duration, fixation_after, block, condition, item}`` where ``item``
    is one of ``images_by_condition[condition]``. In a block design ``block_size`` must divide every condition's
    number of images."""
    conditions = list(images_by_condition)
    counts = {c: len(v) for c, v in images_by_condition.items()}
    if not conditions or min(counts.values()) == 0:
        raise ValueError("Every condition needs at least one image.")
    if design.design == "block" and any(n % design.block_size for n in counts.values()):
        raise ValueError(f"`block_size` ({design.block_size}) must divide the images per condition ({counts}).")
    n = max(counts.values())
    rng = np.random.default_rng(design.seed)
    square = balanced_latin_square(len(conditions))
    square = square[rng.permutation(len(square))]                      # seeded row order
    names = [conditions[i] for i in rng.permutation(len(conditions))]  # seeded condition -> column symbol
    n_runs = design.runs or len(square)
    cycles = n if design.design == "event" else n // design.block_size
    per_slot = 1 if design.design == "event" else design.block_size
    out = []
    for r in range(n_runs):
        queues = {c: [images_by_condition[c][i] for i in rng.permutation(counts[c])] for c in conditions}
        trials, t = [], design.lead_in
        for cycle in range(cycles):
            for slot, symbol in enumerate(square[(r + cycle) % len(square)]):
                condition = names[symbol]
                if not queues[condition]:
                    continue  # unequal counts: this condition's images are used up
                block = cycle * len(conditions) + slot + 1
                for j in range(per_slot):
                    last_in_block = j == per_slot - 1
                    gap = (design.rest if design.design == "block" and last_in_block else
                           design.isi + (rng.uniform(-design.jitter, design.jitter) if design.jitter else 0.0))
                    trials.append({"trial": len(trials) + 1, "onset": round(t, 4), "duration": design.stim_duration,
                                   "fixation_after": round(gap, 4), "block": block, "condition": condition,
                                   "item": queues[condition].pop()})
                    t += design.stim_duration + gap
        out.append(trials)
    return out
