"""Re-ranking: score images with the encoder and keep the best fraction (the paper keeps 20%)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .encoders import BrainEncoder
from .objectives import Objective

__all__ = ["rerank", "Ranked", "images_to_tensor"]


@dataclass
class Ranked:
    """Images sorted by objective, best first, truncated to the kept fraction."""

    indices: list[int]  # positions in the input
    scores: list[float]  # objective value of each kept image
    images: list


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
def rerank(images, encoder: BrainEncoder, objective: Objective, keep: float = 0.2, batch_size: int = 16) -> Ranked:
    """Keep the ``keep`` fraction (at least one) of ``images`` with the highest objective."""
    if not 0 < keep <= 1:
        raise ValueError(f"`keep` must be in (0, 1], got {keep!r}.")
    pixels = images_to_tensor(images)
    if len(pixels) == 0:
        raise ValueError("`images` is empty.")
    objective.check(encoder.n_voxels)
    device = next(encoder.parameters()).device
    scores = torch.cat([objective(encoder(chunk.to(device))).cpu() for chunk in pixels.split(batch_size)])
    order = torch.argsort(scores, descending=True)[: max(1, math.ceil(keep * len(pixels)))].tolist()
    pick = (lambda i: images[i]) if isinstance(images, list) else (lambda i: images[i : i + 1])
    return Ranked(indices=order, scores=[float(scores[i]) for i in order], images=[pick(i) for i in order])
