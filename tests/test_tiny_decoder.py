"""Tiny decoders: compatibility errors, NaN, resumable distillation, and the demo's distilled decoder's efficacy."""
import dataclasses
import json
import logging

import numpy as np
import pytest
import torch
from diffusers import AutoencoderTiny

import braindive as bd
from braindive import tiny_decoder as T
from braindive.demo import ASSET_TINY_DECODER
from braindive.pipeline import FastGuidance
from tiny import SIZE, generators, tiny_encoder, tiny_pipe

OFF = FastGuidance(skip_unet_backprop=False, guide_every=1, decode_scale=1.0, dense_start=0.0)


def _decoder(**kwargs):
    torch.manual_seed(0)
    config = dict(encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4)
    config.update(kwargs)
    return AutoencoderTiny(**config).eval()


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipe("dpm")


def _run(pipe, options, seeds=(0,), steps=2):
    return pipe(objective=bd.Objective.maximize(np.arange(16)), num_inference_steps=steps, height=SIZE, width=SIZE,
                brain_guidance_scale=300.0, generator=generators(seeds), num_images_per_prompt=len(seeds),
                guidance_mode="fast", fast_options=options, output_type="np")


@pytest.mark.parametrize("kwargs,message", [
    (dict(latent_channels=3), "takes 3 latent channels; the model's VAE has 4"),
    (dict(encoder_block_out_channels=(8,) * 3, decoder_block_out_channels=(8,) * 3, num_encoder_blocks=(1, 1, 1),
          num_decoder_blocks=(1, 1, 1)), "upsamples latents 4x; the model's VAE 8x"),
    (dict(out_channels=1), "outputs 1 channels"),
])
def test_mismatched_decoder_is_refused_by_name(pipe, kwargs, message):
    decoder = _decoder(**kwargs)
    decoder.name_or_path = "my/decoder"
    with pytest.raises(ValueError, match=f"Tiny decoder my/decoder {message}"):
        _run(pipe, dataclasses.replace(OFF, tiny_decoder=decoder))
    with pytest.raises(ValueError, match="my/decoder"):
        pipe.set_tiny_decoder(decoder)


def test_scaling_factor_recorded_at_distillation_must_match(pipe, tmp_path):
    decoder = _decoder()
    decoder.save_pretrained(tmp_path)
    (tmp_path / T.DISTILL_FILE).write_text(json.dumps({"vae": {"latent_channels": 4, "scaling_factor": 1.5}}))
    with pytest.raises(ValueError, match=r"fit for latents with scaling factor 1.5; the model's VAE uses 0.18215"):
        T.load_tiny_decoder(tmp_path, pipe.vae)
    loaded = T.load_tiny_decoder(tmp_path)  # no VAE given: loads, and the pipeline refuses it
    with pytest.raises(ValueError, match=str(tmp_path)):
        pipe.set_tiny_decoder(loaded)


def test_loading_warns_about_unknown_config_keys_only(tmp_path):
    """diffusers warns that AutoencoderTiny's own ``block_out_channels`` is unexpected; other keys still warn."""
    _decoder().save_pretrained(tmp_path)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    config_logger = logging.getLogger("diffusers.configuration_utils")
    config_logger.addHandler(handler)
    try:
        T.load_tiny_decoder(tmp_path)
        assert records == []
        config = json.loads((tmp_path / "config.json").read_text())
        (tmp_path / "config.json").write_text(json.dumps({**config, "typo_channels": 3}))
        T.load_tiny_decoder(tmp_path)
        assert any("typo_channels" in record.getMessage() for record in records)
    finally:
        config_logger.removeHandler(handler)


def test_nan_decoder_raises_naming_it(pipe):
    decoder = _decoder()
    with torch.no_grad():
        decoder.decoder.layers[0].weight.fill_(float("nan"))
    decoder.name_or_path = "broken-taesd"
    with pytest.raises(FloatingPointError, match="Tiny decoder broken-taesd returned NaN/inf at step 0"):
        _run(pipe, dataclasses.replace(OFF, tiny_decoder=decoder))


def test_default_fast_uses_the_attached_decoder_and_final_image_is_the_vae(pipe):
    decoder = _decoder()
    pipe.set_tiny_decoder(decoder)
    try:
        attached = _run(pipe, None)
        explicit = _run(pipe, FastGuidance(tiny_decoder=decoder))
        without = _run(pipe, FastGuidance())
    finally:
        pipe.set_tiny_decoder(None)
    np.testing.assert_array_equal(attached.images, explicit.images)
    assert not np.allclose(attached.images, without.images, atol=1e-4)
    # the returned image is the VAE's decode of the final latents, not the tiny decoder's
    latents = pipe(objective=bd.Objective.maximize(np.arange(16)), num_inference_steps=2, height=SIZE, width=SIZE,
                   brain_guidance_scale=300.0, generator=generators((0,)), guidance_mode="fast",
                   fast_options=FastGuidance(tiny_decoder=decoder), output_type="latent").images
    with torch.no_grad():
        vae_image = bd.guidance.decode_to_unit(pipe.vae, latents).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(explicit.images, vae_image, atol=1e-5)


def test_fast_description_reads_the_results_files(tmp_path):
    def report(target, gain, speed):
        return json.dumps({"target": target, "seeds": list(range(16)), "date": "2026-11-29", "modes": {"fast": {
            "gain_fraction_of_reference": gain, "speedup_vs_reference": speed, "work_ratio_vs_reference": 5.5,
            "options": {"guidance_mode": "fast", "fast_options": {"skip_unet_backprop": True, "guide_every": 2,
                                                                  "decode_scale": 0.5, "tiny_decoder": "demo-taesd"}}}}})

    results = tmp_path / "guidance_demo.json"
    results.write_text(report("FFA", 0.934, 8.26))
    (tmp_path / "guidance_demo_PPA.json").write_text(report("PPA", 0.912, 8.61))
    text = T.fast_description(results)
    assert "93% (FFA), 91% (PPA)" in text and "8.3-8.6x" in text and "5.5x less work" in text and "16 seeds" in text
    assert ("tiny decoder on the gradient path, no UNet backprop, gradient every 2nd step, guidance decode at 0.5x size"
            in text)
    assert "not measured" in T.fast_description(tmp_path / "missing.json")
    assert (T.describe_recipe({"skip_unet_backprop": False, "guide_every": 4, "dense_start": 0.2})
            == "gradient at every step for the first 20%, then every 4th step")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from braindive.demo import _tiny_components, save_diffusion_folder

    return save_diffusion_folder(_tiny_components(seed=0), tmp_path_factory.mktemp("sd") / "sd")


def test_distillation_resumes_to_the_same_weights(tmp_path, monkeypatch, tiny_model):
    from training import distill_decoder as D

    model = tiny_model
    encoder = str(tiny_encoder().save(tmp_path / "encoder"))
    recipe = D.Recipe(steps=4, batch=2, crop=4, sample=1, holdout=1, sample_steps=2, size=SIZE, width=8,
                      blocks=(1, 1, 1, 0), grad_batch=2)
    with pytest.raises(ValueError, match="needs `encoder`"):
        D.distill(model, tmp_path / "a", recipe, work=tmp_path / "work_a")
    straight = D.distill(model, tmp_path / "a", recipe, encoder=encoder, work=tmp_path / "work_a", save_every=2)
    real_lr = D._lr

    def crash_at_3(step, r):
        if step == 3:
            raise KeyboardInterrupt
        return real_lr(step, r)

    monkeypatch.setattr(D, "_lr", crash_at_3)
    with pytest.raises(KeyboardInterrupt):
        D.distill(model, tmp_path / "b", recipe, encoder=encoder, work=tmp_path / "work_b", save_every=2)
    assert not (tmp_path / "b").exists()  # nothing half-written
    monkeypatch.setattr(D, "_lr", real_lr)
    resumed = D.distill(model, tmp_path / "b", recipe, encoder=encoder, work=tmp_path / "work_b", save_every=2)
    a, b = (AutoencoderTiny.from_pretrained(tmp_path / x) for x in ("a", "b"))
    for (name, p), q in zip(a.decoder.state_dict().items(), b.decoder.state_dict().values()):
        torch.testing.assert_close(p, q, msg=name)
    assert resumed["fidelity"] == straight["fidelity"]
    assert straight["final_gradient_loss"] > 0 and -1 <= straight["fidelity"]["gradient_cosine_mean"] <= 1
    record = json.loads((tmp_path / "b" / T.DISTILL_FILE).read_text())
    assert record["vae"]["scaling_factor"] == pytest.approx(0.18215) and record["device"] == "cpu"  # auto, no CUDA here
    with pytest.raises(ValueError, match="holds a run with other arguments"):
        D.distill(model, tmp_path / "b", dataclasses.replace(recipe, steps=5), encoder=encoder, work=tmp_path / "work_b")


@pytest.mark.parametrize("device,message", [("tpu", "must be 'auto', 'cpu' or 'cuda"), ("cuda:0", "no CUDA device")])
def test_distillation_refuses_a_device_this_machine_lacks(tmp_path, tiny_model, device, message):
    from training import distill_decoder as D

    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit, match=f"error: `--device` .*{message}"):
        D.main(["--model", str(tiny_model), "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"),
                "--grad-weight", "0", "--device", device])
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


def test_distillation_starts_from_a_given_decoder(tmp_path, tiny_model):
    from training import distill_decoder as D

    recipe = D.Recipe(steps=0, sample=1, holdout=1, sample_steps=2, size=SIZE, grad_weight=0)
    _decoder().save_pretrained(tmp_path / "start")
    D.distill(tiny_model, tmp_path / "out", recipe, init=str(tmp_path / "start"), work=tmp_path / "work")
    start, out = (AutoencoderTiny.from_pretrained(tmp_path / x) for x in ("start", "out"))
    for (name, p), q in zip(start.decoder.state_dict().items(), out.decoder.state_dict().values()):
        torch.testing.assert_close(p, q, msg=name)
    _decoder(latent_channels=3).save_pretrained(tmp_path / "bad")
    with pytest.raises(ValueError, match="takes 3 latent channels"):
        D.distill(tiny_model, tmp_path / "out2", recipe, init=str(tmp_path / "bad"), work=tmp_path / "work2")


def test_guidance_gradient_matches_finite_differences(pipe):
    """The gradient the distillation matches, against central differences of the objective along random directions."""
    from training.decoder_gradients import guidance_gradient, random_objectives

    decoder = _decoder().double()
    encoder = tiny_encoder().double()
    latents = torch.randn(2, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    weights = random_objectives(np.random.default_rng(0), 2, encoder.n_voxels).double()
    grad = guidance_gradient(decoder, encoder, latents, weights)

    def objective(z):
        with torch.no_grad():
            return (encoder(bd.guidance.decode_to_unit(decoder, z).double()) * weights).sum(1)

    for seed in range(3):
        direction = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        h = 1e-4  # ReLU and clamp kinks and decode_to_unit's float32 output limit the agreement to ~1%
        numeric = (objective(latents + h * direction) - objective(latents - h * direction)) / (2 * h)
        np.testing.assert_allclose((grad * direction).flatten(1).sum(1), numeric, rtol=2e-2, atol=1e-6)


@pytest.fixture(scope="module")
def demo():
    if not (ASSET_TINY_DECODER / "config.json").is_file():
        pytest.skip("braindive/assets/demo-taesd is not built")
    bundle = bd.demo.load()
    bundle.pipe.tiny_decoder = T.load_tiny_decoder(ASSET_TINY_DECODER, bundle.pipe.vae)
    return bundle


def test_demo_decoder_reproduces_the_full_decode_within_its_reported_psnr(demo):
    from training.distill_decoder import fidelity, sample_decoder_inputs

    reported = json.loads((ASSET_TINY_DECODER / T.DISTILL_FILE).read_text())["fidelity"]
    pipe = demo.pipe
    embeds = pipe.encode_prompt("", None, 1, False)
    latents = sample_decoder_inputs(pipe.unet, pipe.scheduler.__class__.from_config(pipe.scheduler.config), embeds,
                                    [1000, 1001], 10, 128, 8)  # seeds never used in training
    measured = fidelity(pipe.tiny_decoder, pipe.vae, latents)
    assert measured["psnr_mean_db"] >= reported["psnr_mean_db"] - 1.0, (measured, reported)


@pytest.mark.parametrize("roi", ["FFA", "PPA"])
def test_demo_decoder_keeps_the_gain(demo, roi):
    objective = bd.Objective.maximize(demo.subject.roi(roi))

    def mean_objective(**kwargs):  # seeds the distillation never sampled (it used 0-27)
        return demo.pipe(objective=objective, height=128, width=128, num_inference_steps=10, output_type="pt",
                         generator=generators(range(1000, 1004)), num_images_per_prompt=4,
                         **kwargs).objective_values.mean()

    base, exact = mean_objective(brain_guidance_scale=0.0), mean_objective(brain_guidance_scale=20.0)
    tiny = mean_objective(brain_guidance_scale=20.0, guidance_mode="fast",
                          fast_options=dataclasses.replace(OFF, tiny_decoder=demo.pipe.tiny_decoder))
    assert exact - base > 1.0
    assert (tiny - base) / (exact - base) >= 0.9
