"""The demo's trained diffusion model (braindive/assets/demo-sd) and the tool that trains it."""
import numpy as np
import pytest
import torch

import braindive as bd
from braindive.demo import ASSET_DIFFUSION, DEMO_LABEL, diffusion_bundle_path
from tiny import tiny_encoder
from training.build_demo_diffusion import Recipe, build, toy_scene


def _roughness(images: np.ndarray) -> float:
    """Mean absolute difference between horizontally neighbouring pixels (0: flat; random textures ~0.06)."""
    return float(np.abs(np.diff(images, axis=2)).mean())


def test_demo_uses_the_trained_model_and_it_draws_scenes_not_textures():
    assert diffusion_bundle_path() == ASSET_DIFFUSION
    demo = bd.demo.load()
    assert demo.label == DEMO_LABEL
    out = demo.pipe(objective=bd.Objective.maximize(demo.subject.roi("FFA")), height=128, width=128,
                    num_inference_steps=10, brain_guidance_scale=0.0, num_images_per_prompt=2, output_type="np",
                    generator=[torch.Generator().manual_seed(s) for s in range(2)])
    assert _roughness(out.images) < 0.01  # smooth shapes and backgrounds, like the toy scenes it learnt
    assert out.images.std() > 0.05  # and not a flat colour
    scenes = np.stack([toy_scene(np.random.default_rng(s), 128) for s in range(8)])
    assert _roughness(scenes) < 0.01


def test_toy_scenes_are_seeded_images_in_unit_range():
    a, b = toy_scene(np.random.default_rng(3), 48), toy_scene(np.random.default_rng(3), 48)
    assert a.shape == (48, 48, 3) and a.dtype == np.float32
    assert 0 <= a.min() and a.max() <= 1
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, toy_scene(np.random.default_rng(4), 48))


def test_build_writes_a_loadable_sd_folder(tmp_path):
    recipe = Recipe(image_size=32, vae_steps=3, vae_batch=2, vae_crop=32, n_latents=8, unet_steps=3, unet_batch=4)
    folder = build(tmp_path / "sd", recipe, minutes=5)
    assert not list(tmp_path.glob("*.tmp"))
    pipe = bd.BrainDiVEPipeline.from_pretrained(folder, encoder=tiny_encoder())
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae.config.scaling_factor != pytest.approx(0.18215)  # measured on its own latents
    out = pipe(objective=bd.Objective.maximize(np.arange(8)), height=48, width=48, num_inference_steps=2,
               brain_guidance_scale=10.0, generator=torch.Generator().manual_seed(0), output_type="np")
    assert out.images.shape == (1, 48, 48, 3) and np.isfinite(out.images).all()
