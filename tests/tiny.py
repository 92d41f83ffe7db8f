"""Tiny seeded models for the tests (built from config, as diffusers' own tests do)."""
import numpy as np
import torch

import braindive as bd
from braindive.demo import _tiny_components
from braindive.demo_components import DEMO_TOWER_CONFIG, DEMO_TOWER_NAME, build_demo_tower

N_VOXELS = 64
SIZE = 64  # image side in pixels -> 8x8 latents


def tiny_encoder(n_voxels: int = N_VOXELS, subject: str = "tiny", seed: int = 0) -> bd.ClipLinearEncoder:
    config = bd.EncoderConfig(n_voxels=n_voxels, subject=subject, voxel_space="test", backbone=DEMO_TOWER_NAME,
                              pretrained=None, backbone_config=DEMO_TOWER_CONFIG)
    encoder = bd.ClipLinearEncoder(config, tower=build_demo_tower(seed))
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        encoder.head.weight.copy_(torch.from_numpy(rng.standard_normal((n_voxels, config.embed_dim))).float())
        encoder.head.bias.copy_(torch.from_numpy(rng.standard_normal(n_voxels)).float() * 0.1)
    return encoder.eval()


def tiny_pipe(scheduler: str = "dpm", encoder=None) -> bd.BrainDiVEPipeline:
    pipe = bd.BrainDiVEPipeline(**_tiny_components(seed=0))
    pipe.set_scheduler(scheduler)
    pipe.set_encoder(encoder if encoder is not None else tiny_encoder())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generators(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]
