"""Tiny, seeded model components for the offline demo bundle and the tests.

Everything is built from config with fixed seeds, so the same code gives the same weights on every
machine. Nothing here is downloaded.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["DEMO_TOWER_NAME", "DEMO_TOWER_CONFIG", "build_demo_tower"]

DEMO_TOWER_NAME = "braindive-tiny-vit"
DEMO_TOWER_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "patch_size": 32, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 1000, "width": 32, "heads": 2, "layers": 1},
}


def build_demo_tower(seed: int = 0) -> nn.Module:
    """The demo's tiny OpenCLIP ViT image tower with seeded random weights (224 px input, 32-d)."""
    from .encoders import build_clip_tower

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build_clip_tower(DEMO_TOWER_NAME, None, DEMO_TOWER_CONFIG)
