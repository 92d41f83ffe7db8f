"""Re-ranking: score images with the encoder and keep the best fraction (the paper keeps 20%).

``rank_scores`` ranks scores that already exist (the pipeline returns ``objective_values`` from the
encoder call on its final decoded pixels, so the CLI and the app rank those: no second preprocessing
path); ``rerank`` scores images with the encoder first (e.g. images loaded from disk).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .encoders import BrainEncoder
from .objectives import Objective

__all__ = ["rerank", "rank_scores", "Ranked", "Ranking", "images_to_tensor"]


@dataclass
class Ranking:
    """Every candidate's score and rank, and which candidates are kept.

    Attributes:
        all_scores: the score of every candidate, in input order.
        ranks: the rank of every candidate in input order (1 = best; ties keep input order).
        indices: input positions of the kept candidates, best first.
    """

    all_scores: list[float]
    ranks: list[int]
    indices: list[int]

    @property
    def scores(self) -> list[float]:
        """Scores of the kept candidates, best first."""
        return [self.all_scores[i] for i in self.indices]

    @property
    def kept(self) -> list[bool]:
        """Per candidate in input order: is it kept?"""
        keep = set(self.indices)
        return [i in keep for i in range(len(self.ranks))]

    def record(self, i: int) -> dict:
        """What an image's JSON record stores about candidate ``i``'s ranking (CLI and app alike)."""
        return {"rank": self.ranks[i], "score": self.all_scores[i], "n_candidates": len(self.ranks),
                "n_kept": len(self.indices)}


@dataclass
class Ranked(Ranking):
    """A ``Ranking`` with the kept images, best first."""

    images: list = None


def n_kept(n: int, keep: float | None = None, top_k: int | None = None) -> int:
    """How many of ``n`` candidates a fraction ``keep`` (at least one) or a count ``top_k`` keeps."""
    if (keep is None) == (top_k is None):
        raise ValueError("Give exactly one of `keep` (a fraction) and `top_k` (a count).")
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or not 1 <= top_k <= n:
            raise ValueError(f"`top_k` must be an integer in [1, {n}] (the number of candidates), got {top_k!r}.")
        return int(top_k)
    if not 0 < keep <= 1:
        raise ValueError(f"`keep` must be in (0, 1], got {keep!r}.")
    return max(1, math.ceil(round(keep * n, 9)))


def rank_scores(scores, keep: float | None = 0.2, top_k: int | None = None) -> Ranking:
    """Rank ``scores`` (higher is better) and keep the top fraction ``keep`` or the best ``top_k``."""
    values = np.asarray(torch.as_tensor(scores).detach().cpu().double() if isinstance(scores, torch.Tensor)
                        else scores, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError("`scores` is empty: nothing to rank.")
    if not np.isfinite(values).all():
        raise ValueError(f"`scores` must be finite, got {int((~np.isfinite(values)).sum())} NaN/inf values.")
    count = n_kept(values.size, keep=None if top_k is not None else keep, top_k=top_k)
    order = np.argsort(-values, kind="stable")
    ranks = np.empty(values.size, dtype=np.int64)
    ranks[order] = np.arange(1, values.size + 1)
    return Ranking(all_scores=values.tolist(), ranks=ranks.tolist(), indices=order[:count].tolist())


def images_to_tensor(images) -> torch.Tensor:
    """PIL images, ``[B,H,W,3]`` arrays in [0,1], or ``[B,3,H,W]`` tensors (or lists of ``[3,H,W]``) -> ``[B,3,H,W]``."""
    if isinstance(images, torch.Tensor):
        return images.float()
    if isinstance(images, list) and images and isinstance(images[0], torch.Tensor):
        return torch.stack(images).float()
    if isinstance(images, np.ndarray):
        return torch.from_numpy(images).float().permute(0, 3, 1, 2)
    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


@torch.no_grad()
def score_images(images, encoder: BrainEncoder, objective: Objective, batch_size: int = 16) -> torch.Tensor:
    """The objective of each image under ``encoder`` (the same forward the pipeline guides with)."""
    pixels = images_to_tensor(images)
    if len(pixels) == 0:
        raise ValueError("`images` is empty.")
    objective.check(encoder.n_voxels)
    device = next(encoder.parameters()).device
    return torch.cat([objective(encoder(chunk.to(device))).float().cpu() for chunk in pixels.split(batch_size)])


def rerank(images, encoder: BrainEncoder, objective: Objective, keep: float | None = 0.2, top_k: int | None = None,
           batch_size: int = 16) -> Ranked:
    """Score ``images`` with the encoder and keep the ``keep`` fraction (at least one) or the best ``top_k``."""
    n_kept(len(images), keep=None if top_k is not None else keep, top_k=top_k)  # argument errors before any work
    ranking = rank_scores(score_images(images, encoder, objective, batch_size), keep=keep, top_k=top_k)
    pick = (lambda i: images[i]) if isinstance(images, list) else (lambda i: images[i : i + 1])
    return Ranked(all_scores=ranking.all_scores, ranks=ranking.ranks, indices=ranking.indices,
                  images=[pick(i) for i in ranking.indices])
