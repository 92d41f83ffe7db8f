"""Reference-image variations: the pipeline's image start, the strength x scale grid, SSIM, hashes."""
import numpy as np
import PIL.Image
import pytest
import torch

import braindive as bd
from braindive import variation as V
from braindive.demo import ASSET_DIFFUSION
from braindive.encoders import BrainEncoder
from tiny import SIZE, generators, tiny_pipe

TARGET = np.arange(16)


class BrightnessEncoder(BrainEncoder):
    """Toy encoder with a known gradient: voxel v = sign_v x mean pixel value (d/dpixel = sign_v / (3 H W))."""

    def __init__(self):
        super().__init__()
        self.config = bd.EncoderConfig(n_voxels=4, subject="toy", voxel_space="toy", backbone="toy", pretrained=None)
        self.register_buffer("sign", torch.tensor([1.0, 1.0, -1.0, -1.0]))

    def embed(self, images):
        return torch.nn.functional.normalize(images.mean((2, 3)), dim=-1)

    def forward(self, images):
        return images.mean((1, 2, 3))[:, None] * self.sign[None]


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipe("dpm")


@pytest.fixture(scope="module")
def reference():
    rng = np.random.default_rng(0)
    smooth = rng.uniform(0.2, 0.8, (8, 8, 3))
    return np.kron(smooth, np.ones((SIZE // 8, SIZE // 8, 1))).astype(np.float32)  # blocky [SIZE, SIZE, 3]


def call(pipe, objective, image, strength, scale, seeds=(0,), steps=8, **kwargs):
    return pipe(objective=objective, image=image, strength=strength, num_inference_steps=steps, height=SIZE,
                width=SIZE, brain_guidance_scale=float(scale), generator=generators(seeds),
                num_images_per_prompt=len(seeds), output_type="np", **kwargs)


@pytest.mark.parametrize("scheduler", ["dpm", "ddim", "euler", "pndm"])
def test_strength_zero_returns_the_vae_round_trip(reference, scheduler):
    pipe = tiny_pipe(scheduler)
    out = call(pipe, bd.Objective.maximize(TARGET), reference, 0.0, 300.0)
    with torch.no_grad():  # independently: the VAE's posterior mean, decoded
        x = torch.from_numpy(reference).permute(2, 0, 1)[None] * 2 - 1
        decoded = pipe.vae.decode(pipe.vae.encode(x).latent_dist.mean).sample
    expected = (decoded / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    assert out.steps_completed == 0
    np.testing.assert_allclose(out.images[0], expected, atol=5e-4)  # latents x then / the scaling factor; thread counts


def test_strength_runs_the_last_steps_of_the_schedule(pipe, reference):
    """strength 0.25 of 8 steps: the last 2 timesteps of the full schedule, from the image noised to the first."""
    seen = []
    out = call(pipe, bd.Objective.maximize(TARGET), reference, 0.25, 0,
               callback_on_step_end=lambda p, i, t, tensors: seen.append(int(t)) or {})
    pipe.scheduler.set_timesteps(8)
    assert out.steps_completed == 2 and seen == [int(t) for t in pipe.scheduler.timesteps[-2:]]
    assert call(pipe, bd.Objective.maximize(TARGET), reference, 1.0, 0).steps_completed == 8


def test_a_minimise_variation_lowers_the_target_on_a_toy_encoder_with_a_known_gradient(reference):
    """Minimising voxels 0-1 (= brightness) must darken every guided image against its control. The demo's
    trained diffusion model (a random VAE's decodes barely change brightness), 64 px."""
    pipe = bd.BrainDiVEPipeline.from_pretrained(ASSET_DIFFUSION, encoder=BrightnessEncoder())
    pipe.set_progress_bar_config(disable=True)
    grid = V.variations(pipe, bd.Objective.minimize([0, 1]), reference, [0.5, 1.0], [300.0], seeds=(0, 1),
                        num_inference_steps=8, height=SIZE, width=SIZE, sag_scale=0.0)
    brightness_ref = float(np.asarray(grid.reference, np.float64).mean() / 255)
    assert grid.reference_value == pytest.approx(brightness_ref, abs=2e-3)
    for strength in (0.5, 1.0):
        for seed in (0, 1):
            guided, control = grid.get(strength, 300.0, seed), grid.get(strength, 0.0, seed)
            pixels = np.asarray(guided.image, np.float64) / 255
            assert guided.value == pytest.approx(pixels.mean(), abs=2e-3)  # the measure: the target mean, unsigned
            assert guided.value < control.value - 0.05
            assert guided.change_vs_control == pytest.approx(guided.value - control.value)
            assert guided.change == pytest.approx(guided.value - grid.reference_value)
            assert np.asarray(guided.image, float).mean() < np.asarray(control.image, float).mean()


def test_grid_values_similarities_and_controls_match_independent_computations(pipe, reference):
    objective = bd.Objective.maximize(TARGET)
    grid = V.variations(pipe, objective, reference, [0.5], [300.0, -300.0], seeds=(3,), num_inference_steps=8,
                        height=SIZE, width=SIZE)
    assert sorted(v.scale for v in grid.items) == [-300.0, 0.0, 300.0]
    up, down, control = (grid.get(0.5, s, 3) for s in (300.0, -300.0, 0.0))
    assert down.value < control.value < up.value
    direct = call(pipe, objective, reference, 0.5, 300.0, seeds=(3,))  # the same cell, straight from the pipeline
    assert up.value == pytest.approx(float(direct.objective_values[0]), abs=1e-5)
    image = torch.from_numpy(np.asarray(up.image, np.float32) / 255).permute(2, 0, 1)
    ref = torch.from_numpy(np.asarray(grid.reference, np.float32) / 255).permute(2, 0, 1)
    with torch.no_grad():
        e_img, e_ref = pipe.encoder.embed(image[None]), pipe.encoder.embed(ref[None])
    assert up.clip_cosine == pytest.approx(float(torch.nn.functional.cosine_similarity(e_img, e_ref)), abs=2e-3)
    assert up.ssim == pytest.approx(float(V.ssim(image, ref)), abs=1e-2)
    assert grid.reference_hash == V.image_hash(PIL.Image.fromarray((reference * 255).round().astype(np.uint8)))


def test_ssim_known_answers():
    x = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert float(V.ssim(x, x)) == pytest.approx(1.0)
    a, b = torch.full((3, 16, 16), 0.2, dtype=torch.float64), torch.full((3, 16, 16), 0.6, dtype=torch.float64)  # constant: only the luminance term remains
    c1 = 0.01**2
    assert float(V.ssim(a, b)) == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1), rel=1e-9)
    noisy = (x + 0.3 * torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert 0 < float(V.ssim(x, noisy)) < 0.9


def test_ssim_equals_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(2)
    a = rng.uniform(0, 1, (40, 48, 3))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    expected = metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                             data_range=1.0, channel_axis=-1)
    got = V.ssim(torch.from_numpy(a).permute(2, 0, 1), torch.from_numpy(b).permute(2, 0, 1))
    assert float(got) == pytest.approx(expected, abs=1e-6)


def test_bad_inputs_name_the_field(pipe, reference):
    objective = bd.Objective.maximize(TARGET)
    with pytest.raises(ValueError, match=r"`strength` must be a number in \[0, 1\], got 1.5"):
        call(pipe, objective, reference, 1.5, 1.0)
    with pytest.raises(ValueError, match=r"`strength` must be in \[0, 1\], got -0.1"):
        V.variations(pipe, objective, reference, [-0.1], [1.0])
    with pytest.raises(ValueError, match="`image` values must lie in"):
        call(pipe, objective, reference * 2, 0.5, 1.0)
    with pytest.raises(ValueError, match="`latents` and `image`"):
        call(pipe, objective, reference, 0.5, 1.0, latents=torch.zeros(1, 4, SIZE // 8, SIZE // 8))


def test_image_hash_depends_on_pixels_only(reference):
    as_uint8 = (reference * 255).round().astype(np.uint8)
    assert V.image_hash(PIL.Image.fromarray(as_uint8)) == V.image_hash(as_uint8)
    changed = as_uint8.copy()
    changed[0, 0, 0] ^= 1
    assert V.image_hash(changed) != V.image_hash(as_uint8)


def test_the_generation_routine_starts_guided_and_unguided_images_from_the_start_image(tmp_path):
    """``generate_seed`` with a start image at strength 0: the guided image and its unguided baseline are both the
    reference's VAE round trip (computed here from the VAE), recorded with the strength and the pixel hash."""
    from braindive import demo
    from braindive.generate import GenerationSettings, StartImage, baseline_key, generate_seed, seed_record
    from braindive.presets import PRESETS
    from braindive.targets import Target

    bundle = demo.load()
    rng = np.random.default_rng(1)
    pixels = np.kron(rng.integers(40, 220, (8, 8, 3)), np.ones((8, 8, 1))).astype(np.uint8)  # 64 x 64, blocky
    path = tmp_path / "start.png"
    PIL.Image.fromarray(pixels).save(path)
    settings = GenerationSettings.from_preset(PRESETS["demo"], steps=4, height=64, width=64,
                                              init_image=StartImage.read(path), strength=0.0)
    target = Target.maximize("FFA")
    result = generate_seed(bundle.pipe, target, 3, settings, subject=bundle.subject)
    vae = bundle.pipe.vae
    with torch.no_grad():
        x = torch.from_numpy(pixels / 255.0).float().permute(2, 0, 1)[None] * 2 - 1
        decoded = ((vae.decode(vae.encode(x).latent_dist.mean).sample / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 0) * 255)
    for image in (result.image, result.baseline_image):
        np.testing.assert_allclose(np.asarray(image, np.float64), decoded.numpy(), atol=1.01)
    from_noise = generate_seed(bundle.pipe, target, 3, GenerationSettings.from_preset(
        PRESETS["demo"], steps=4, height=64, width=64), subject=bundle.subject)
    assert np.abs(np.asarray(from_noise.baseline_image, np.float64) - decoded.numpy()).mean() > 10
    record = seed_record(result, target, bundle.subject, settings, model="m", encoder="e")
    assert record["parameters"]["strength"] == 0.0
    assert record["parameters"]["reference"] == {"file": "start.png", "sha256": V.image_hash(pixels)}
    assert record["target_spec"] == target.to_dict()
    assert result.baseline_key == baseline_key("", settings, 3, "", bundle.subject.fingerprint)
