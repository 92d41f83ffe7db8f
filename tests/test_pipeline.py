"""BrainDiVEPipeline on tiny seeded models: schedulers, guidance direction, the published step, I/O."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import braindive as bd
from braindive.pipeline import SCHEDULERS
from tiny import N_VOXELS, SIZE, generators, tiny_encoder, tiny_pipe

TARGET = np.arange(16)


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipe("dpm")


def run(pipe, scale, seeds=(0,), steps=4, **kwargs):
    return pipe(objective=bd.Objective.maximize(TARGET), num_inference_steps=steps, height=SIZE, width=SIZE,
                brain_guidance_scale=float(scale), generator=generators(seeds), num_images_per_prompt=len(seeds),
                **{"output_type": "np", **kwargs})


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_runs_and_guidance_raises_objective(name):
    pipe = tiny_pipe(name)
    plain, guided = run(pipe, 0, steps=4), run(pipe, 300, steps=4)
    assert plain.images.shape == (1, SIZE, SIZE, 3)
    assert np.isfinite(guided.images).all() and 0 <= guided.images.min() and guided.images.max() <= 1
    assert guided.objective_values[0] > plain.objective_values[0]


def test_positive_scale_raises_and_negative_lowers_target_for_8_seeds(pipe):
    seeds = range(8)
    base = run(pipe, 0, seeds, steps=8).objective_values
    up = run(pipe, 300, seeds, steps=8).objective_values
    down = run(pipe, -300, seeds, steps=8).objective_values
    assert (up > base).all(), (up, base)
    assert (down < base).all(), (down, base)
    assert (up - base).mean() > 0.03 and (base - down).mean() > 0.03


def test_objective_values_match_encoder_on_returned_images(pipe):
    out = pipe(
        objective=bd.Objective.maximize(TARGET), num_inference_steps=3, height=SIZE, width=SIZE,
        brain_guidance_scale=300.0, generator=generators([3]), output_type="pt")
    with torch.no_grad():
        acts = pipe.encoder(out.images)
    assert out.activations.shape == (1, N_VOXELS)
    torch.testing.assert_close(out.activations, acts, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.objective_values, acts[:, TARGET].mean(1), atol=1e-5, rtol=1e-5)


def test_same_seed_same_result_and_batch_equals_single_runs(pipe):
    a, b = run(pipe, 300, seeds=(5,)), run(pipe, 300, seeds=(5,))
    np.testing.assert_array_equal(a.images, b.images)
    batch = run(pipe, 300, seeds=(5, 6))
    single6 = run(pipe, 300, seeds=(6,))
    np.testing.assert_allclose(batch.images[0], a.images[0], atol=1e-4)
    np.testing.assert_allclose(batch.images[1], single6.images[0], atol=1e-4)
    assert not np.allclose(batch.images[0], batch.images[1])


def test_contrast_and_minimize_objectives(pipe):
    pos, neg = np.arange(0, 16), np.arange(16, 40)
    out = pipe(objective=bd.Objective.contrast(pos, neg, weight=0.5), num_inference_steps=2, height=SIZE,
               width=SIZE, brain_guidance_scale=10.0, generator=generators([0]), output_type="np")
    acts = out.activations
    expected = acts[:, pos].mean(1) - 0.5 * acts[:, neg].mean(1)
    torch.testing.assert_close(out.objective_values, expected)
    assert float(bd.Objective.minimize(pos)(acts)) == pytest.approx(-float(acts[:, pos].mean()))


# ---------------------------------------------------------------- the published step, independently


def _mid_attn_probs(attn, hidden):
    """Self-attention probabilities of diffusers' Attention module, computed by hand."""
    b, n, _ = hidden.shape
    q, k = attn.to_q(hidden), attn.to_k(hidden)
    q = q.reshape(b, n, attn.heads, -1).permute(0, 2, 1, 3).reshape(b * attn.heads, n, -1)
    k = k.reshape(b, n, attn.heads, -1).permute(0, 2, 1, 3).reshape(b * attn.heads, n, -1)
    return torch.softmax(q @ k.transpose(1, 2) * attn.scale, dim=-1)


def _blur(x):
    t = torch.linspace(-4, 4, 9)
    k = torch.exp(-0.5 * t**2)
    k = (k / k.sum()).to(x.dtype)
    k2 = (k[:, None] * k[None, :]).expand(x.shape[1], 1, 9, 9)
    return F.conv2d(F.pad(x, [4] * 4, mode="reflect"), k2, groups=x.shape[1])


def _independent_latents(pipe, seed, scale, sag, steps, run_steps, prompt="", cfg=0.0):
    """The published BrainDiVE loop written out from its formulas (DPM/DDIM-type and LMS-type).

    With classifier-free guidance (``cfg`` > 1, as diffusers' SAG pipeline): eps = eps_u + cfg (eps_c - eps_u);
    SAG works on the unconditional pass (its attention, x0 and re-noising from eps_u, degraded pass with the
    empty prompt); the brain gradient's extra UNet pass uses the prompt.
    """
    unet, vae, enc = pipe.unet, pipe.vae, pipe.encoder
    sched = copy.deepcopy(pipe.scheduler)
    sched.set_timesteps(steps)
    sigma_type = isinstance(sched, (bd.pipeline.LMSDiscreteScheduler, bd.pipeline.EulerDiscreteScheduler))

    def embed(text):
        ids = pipe.tokenizer([text], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            return pipe.text_encoder(ids)[0]

    emb = embed(prompt)  # the prompt: the only embedding without CFG, the conditional one with it
    base_emb = embed("") if cfg > 1 else emb  # what SAG's passes see
    lat = torch.randn((1, 4, SIZE // 8, SIZE // 8), generator=torch.Generator().manual_seed(seed)) * sched.init_noise_sigma
    attn1 = unet.mid_block.attentions[0].transformer_blocks[0].attn1
    captured = []
    hook = attn1.register_forward_pre_hook(lambda mod, args: captured.append(args[0].detach()))
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    try:
        for i, t in enumerate(sched.timesteps[:run_steps]):
            a = sched.alphas_cumprod[int(t)]
            captured.clear()
            with torch.no_grad():
                model_input = sched.scale_model_input(lat, t)
                base = unet(model_input, t, encoder_hidden_states=base_emb).sample  # captured[0] is this pass
                eps = base
                if cfg > 1:
                    eps = base + cfg * (unet(model_input, t, encoder_hidden_states=emb).sample - base)
                if sag > 0:
                    probs = _mid_attn_probs(attn1, captured[0])
                    n = probs.shape[1]
                    side = int(round(n**0.5))
                    mask = probs.reshape(1, attn1.heads, n, n).mean(1).sum(1) > 1.0
                    mask = mask.reshape(1, 1, side, side).repeat(1, 4, 1, 1).float()
                    mask = F.interpolate(mask, lat.shape[-2:])
                    x0 = (lat - (1 - a).sqrt() * base) / a.sqrt()
                    degraded = _blur(x0) * mask + x0 * (1 - mask)
                    degraded = sched.add_noise(degraded, base, t[None])
                    eps = eps + sag * (base - unet(degraded, t, encoder_hidden_states=base_emb).sample)
            x = lat.detach().clone().requires_grad_()
            with torch.enable_grad():
                e2 = unet(sched.scale_model_input(x, t), t, encoder_hidden_states=emb).sample
                if sigma_type:
                    sigma = sched.sigmas[i]
                    s = x - sigma * e2
                else:
                    x0g = (x - (1 - a).sqrt() * e2) / a.sqrt()
                    s = x0g * (1 - a).sqrt() + x * (1 - (1 - a).sqrt())
                img = (vae.decode(s / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
                img = (F.interpolate(img, size=224, mode="bilinear") - mean) / std
                acts = F.normalize(enc.tower(img), dim=-1) @ enc.head.weight.T + enc.head.bias
                loss = -scale * acts[:, TARGET].mean()
                g = -torch.autograd.grad(loss, x)[0]
            if sigma_type:
                lat = lat + sigma**2 * g
            else:
                eps = eps - (1 - a).sqrt() * g
            lat = sched.step(eps, t, lat).prev_sample
    finally:
        hook.remove()
    return lat


@pytest.mark.parametrize("scheduler,sag,prompt,cfg", [("dpm", 0.75, "", 0.0), ("ddim", 0.75, "", 0.0),
                                                     ("lms", 0.0, "", 0.0), ("dpm", 0.75, "a face", 5.0),
                                                     ("ddim", 0.0, "a house", 3.0)])
def test_reference_mode_matches_independent_published_computation(scheduler, sag, prompt, cfg):
    pipe = tiny_pipe(scheduler)
    seen = {}

    def grab(p, i, t, tensors):
        if i == 2:
            seen["latents"] = tensors["latents"].clone()
            p.interrupt()
        return {}

    out = pipe(objective=bd.Objective.maximize(TARGET), num_inference_steps=6, height=SIZE, width=SIZE,
               brain_guidance_scale=300.0, sag_scale=sag, generator=torch.Generator().manual_seed(11),
               guidance_mode="reference", callback_on_step_end=grab, output_type="latent", prompt=prompt,
               guidance_scale=cfg)
    expected = _independent_latents(pipe, seed=11, scale=300.0, sag=sag, steps=6, run_steps=3, prompt=prompt, cfg=cfg)
    assert out.interrupted and out.steps_completed == 3
    torch.testing.assert_close(seen["latents"], expected, atol=1e-4, rtol=0)
    assert (expected - _independent_latents(pipe, 11, 0.0, sag, 6, 3, prompt, cfg)).abs().max() > 1e-3  # guidance mattered
    if cfg:  # and so did classifier-free guidance
        assert (expected - _independent_latents(pipe, 11, 300.0, sag, 6, 3, prompt, 0.0)).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["ddim", "lms", "euler"])
def test_clean_estimate_matches_the_schedulers_own_x0(name):
    """SAG and the step previews estimate x0 in the scheduler's own parameterisation (sigma for LMS/Euler)."""
    pipe = tiny_pipe(name)
    pipe.scheduler.set_timesteps(10)
    i, t = 3, pipe.scheduler.timesteps[3]
    gen = torch.Generator().manual_seed(0)
    latents, eps = torch.randn(2, 4, 8, 8, generator=gen) * 3, torch.randn(2, 4, 8, 8, generator=gen)
    scheduler = copy.deepcopy(pipe.scheduler)
    scheduler.scale_model_input(latents, t)  # LMS/Euler expect it before step
    expected = scheduler.step(eps, t, latents).pred_original_sample
    torch.testing.assert_close(pipe._clean_estimate(latents, eps, t, i), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_sag_with_nothing_salient_gives_back_the_noise_prediction(name):
    """Uniform attention masks nothing: x0 re-noised is x_t again, so SAG must not change eps (any scheduler)."""
    pipe = tiny_pipe(name)
    pipe.scheduler.set_timesteps(10)
    i, t = 3, pipe.scheduler.timesteps[3]
    latents = torch.randn(2, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(0)) * 5
    embeds = pipe.encode_prompt("", None, 2, False)
    positions = (SIZE // 16) ** 2  # the tiny UNet's mid block works at half the latent side
    uniform = torch.full((2 * pipe._sag_attention().heads, positions, positions), 1.0 / positions)
    with torch.no_grad():
        eps = pipe._unet(pipe.scheduler.scale_model_input(latents, t), t, embeds)
        corrected = pipe._sag_correction(latents, eps, eps, t, i, uniform, embeds, 0.75)
    torch.testing.assert_close(corrected, eps, atol=1e-4, rtol=0)


def test_non_square_images_with_sag(pipe):
    out = pipe(
        objective=bd.Objective.maximize(TARGET), num_inference_steps=2, height=SIZE, width=2 * SIZE,
        brain_guidance_scale=100.0, sag_scale=0.75, generator=generators([0]), output_type="np")
    assert out.images.shape == (1, SIZE, 2 * SIZE, 3) and np.isfinite(out.images).all()


@pytest.mark.parametrize("positions,latent,expected", [(64, (8, 8), (8, 8)), (96, (64, 96), (8, 12)),
                                                       (72, (65, 64), (9, 8)), (16, (8, 8), (4, 4))])
def test_attention_map_size(positions, latent, expected):
    assert bd.guidance.attention_map_size(positions, *latent) == expected


def test_attention_map_size_rejects_impossible_maps():
    with pytest.raises(ValueError, match="No downsampling of 8x8 latents has 7 positions"):
        bd.guidance.attention_map_size(7, 8, 8)


# ---------------------------------------------------------------- callback, interrupt, prompts


def test_callback_receives_every_step_and_preview(pipe):
    calls = []

    def cb(p, i, t, tensors):
        calls.append((i, int(t), tuple(tensors["x0_preview"].shape), float(tensors["x0_preview"].min())))
        return {}

    out = run(pipe, 100, steps=5, callback_on_step_end=cb, callback_on_step_end_tensor_inputs=["latents", "x0_preview"])
    assert [c[0] for c in calls] == list(range(5))
    assert len({c[1] for c in calls}) == 5
    assert all(c[2] == (1, 3, SIZE, SIZE) and c[3] >= 0 for c in calls)
    assert out.steps_completed == 5 and not out.interrupted


def test_latents_returned_by_the_callback_are_the_ones_used():
    """Replacing the latents mid-run continues from them (DDIM keeps no state between steps: the run then
    ends exactly where the run they came from ends), and at the last step they are what gets decoded."""
    pipe = tiny_pipe("ddim")
    recorded = {}

    def record(p, i, t, tensors):
        if i == 1:
            recorded["latents"] = tensors["latents"].clone()
        return {}

    source = run(pipe, 100, seeds=(0,), steps=4, output_type="pt", callback_on_step_end=record)
    swapped = run(pipe, 100, seeds=(1,), steps=4, output_type="pt",
                  callback_on_step_end=lambda p, i, t, d: {"latents": recorded["latents"]} if i == 1 else {})
    other = run(pipe, 100, seeds=(1,), steps=4, output_type="pt")
    torch.testing.assert_close(swapped.images, source.images, atol=1e-5, rtol=0)
    assert (other.images - source.images).abs().max() > 1e-2  # the seeds alone give different images

    final = torch.randn(1, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(9))
    out = run(pipe, 100, steps=3, output_type="pt", callback_on_step_end=lambda p, i, t, d: {"latents": final} if i == 2 else {})
    with torch.no_grad():
        decoded = (pipe.vae.decode(final / pipe.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
        expected_values = pipe.encoder(decoded)[:, TARGET].mean(1)
    torch.testing.assert_close(out.images, decoded, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.objective_values, expected_values, atol=1e-5, rtol=1e-5)


def test_interrupt_stops_after_current_step_and_returns_partial_result(pipe):
    def stop_at_1(p, i, t, tensors):
        if i == 1:
            p.interrupt()
        return {}

    out = run(pipe, 100, steps=10, callback_on_step_end=stop_at_1)
    assert out.interrupted and out.steps_completed == 2
    assert out.images.shape == (1, SIZE, SIZE, 3)
    assert not run(pipe, 100, steps=3).interrupted  # the flag resets on the next call


def test_prompt_and_classifier_free_guidance_change_the_result(pipe):
    plain = run(pipe, 100, steps=3)
    cfg = run(pipe, 100, steps=3, prompt="a face", guidance_scale=5.0)
    assert np.isfinite(cfg.images).all()
    assert not np.allclose(plain.images, cfg.images)


# ---------------------------------------------------------------- save / load


def test_pipeline_save_pretrained_from_pretrained_round_trip(tmp_path, pipe):
    pipe.save_pretrained(tmp_path / "sd")
    loaded = bd.BrainDiVEPipeline.from_pretrained(tmp_path / "sd", encoder=pipe.encoder)
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(run(loaded, 300).images, run(pipe, 300).images, atol=1e-6)


def test_loads_stable_diffusion_folder_layout(tmp_path):
    """A folder saved by diffusers' StableDiffusionPipeline (the Hub layout of SD 2.1-base) loads."""
    from braindive.demo import build_diffusion_bundle

    folder = build_diffusion_bundle(tmp_path / "sd")
    assert '"StableDiffusionPipeline"' in (folder / "model_index.json").read_text()
    loaded = bd.BrainDiVEPipeline.from_pretrained(folder, encoder=tiny_encoder())
    assert type(loaded.scheduler).__name__ == "DPMSolverMultistepScheduler"
    loaded.set_progress_bar_config(disable=True)
    assert run(loaded, 300).objective_values[0] > run(loaded, 0).objective_values[0]


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs,message", [
    (dict(height=60), "`height` must be a positive multiple of 8, got 60"),
    (dict(width=0), "`width` must be a positive multiple of 8, got 0"),
    (dict(num_inference_steps=0), "`num_inference_steps` must be an integer >= 1, got 0"),
    (dict(guidance_mode="turbo"), "`guidance_mode` must be one of"),
    (dict(output_type="jpg"), "`output_type` must be one of"),
    (dict(brain_guidance_scale=float("nan")), "`brain_guidance_scale` must be finite"),
    (dict(sag_scale=-1.0), "`sag_scale` must be >= 0"),
    (dict(sag_scale=0.5, height=32), "32x64 px gives 4x8"),
    (dict(num_images_per_prompt=2, generator=[torch.Generator()]), "`generator` list has 1 generators for 2 images"),
    (dict(objective=bd.Objective.maximize([3, N_VOXELS + 5])), f"indices out of range [0, {N_VOXELS})"),
    (dict(objective="FFA"), "`objective` must be a braindive Objective"),
    (dict(callback_on_step_end_tensor_inputs=["bogus"]), "`callback_on_step_end_tensor_inputs` must be among"),
])
def test_bad_arguments_raise_naming_argument_and_value(pipe, kwargs, message):
    args = dict(objective=bd.Objective.maximize(TARGET), num_inference_steps=2, height=SIZE, width=SIZE)
    args.update(kwargs)
    with pytest.raises(ValueError) as err:
        pipe(**args)
    assert message in str(err.value)


def test_unsupported_scheduler_is_rejected(pipe):
    with pytest.raises(ValueError, match=r"`scheduler` must be one of \['ddim', 'dpm', 'euler', 'lms', 'pndm'\], got 'heun'"):
        pipe.set_scheduler("heun")


def test_missing_encoder_is_a_clear_error():
    pipe = tiny_pipe()
    pipe.encoder = None
    with pytest.raises(ValueError, match="No brain encoder"):
        pipe(objective=bd.Objective.maximize(TARGET), num_inference_steps=1, height=SIZE, width=SIZE)


def test_nan_encoder_output_is_a_clear_error():
    encoder = tiny_encoder()
    with torch.no_grad():
        encoder.head.bias[5] = float("nan")
    pipe = tiny_pipe(encoder=encoder)
    with pytest.raises(FloatingPointError, match="returned 1 NaN/inf values at step 0"):
        pipe(objective=bd.Objective.maximize(TARGET), num_inference_steps=2, height=SIZE, width=SIZE)


@pytest.mark.parametrize("factory,message", [
    (lambda: bd.Objective.maximize([]), "`voxels` is an empty voxel set"),
    (lambda: bd.Objective.contrast([1, 2], [], 1.0), "`negative` is an empty voxel set"),
    (lambda: bd.Objective.maximize([-1, 2]), "`voxels` has negative voxel indices: [-1]"),
    (lambda: bd.Objective.maximize([0.5]), "`voxels` must hold integer voxel indices"),
    (lambda: bd.Objective.contrast([1], [2], float("inf")), "`weight` must be a finite number"),
])
def test_bad_objectives(factory, message):
    with pytest.raises(ValueError) as err:
        factory()
    assert message in str(err.value)


@pytest.mark.parametrize("objective", [
    bd.Objective.maximize([7, 3, 40], label="custom(3 voxels)"),
    bd.Objective.minimize([5], label="FFA"),
    bd.Objective.contrast([1, 2], [9, 10, 11], weight=0.25, label="A-vs-B"),
])
def test_a_described_objective_can_be_rebuilt_from_its_json(objective):
    import json

    rebuilt = bd.Objective.from_description(json.loads(json.dumps(objective.describe())))
    acts = torch.randn(3, 64)
    torch.testing.assert_close(rebuilt(acts), objective(acts))
    assert rebuilt.describe() == objective.describe()
