"""Tiny decoders: compatibility errors, NaN, resumable distillation, and the demo's distilled decoder's efficacy."""
import dataclasses
import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderTiny

import braindive as bd
from braindive import tiny_decoder as T
from braindive.demo import ASSET_TINY_DECODER
from braindive.pipeline import FastGuidance
from tiny import SIZE, generators, tiny_pipe

OFF = FastGuidance(skip_unet_backprop=False, guide_every=1, decode_scale=1.0)


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


def test_fast_description_reads_the_results_file(tmp_path):
    results = tmp_path / "guidance_demo.json"
    results.write_text(json.dumps({"target": "FFA", "seeds": list(range(16)), "date": "2026-11-29", "modes": {
        "fast": {"gain_fraction_of_reference": 0.934, "speedup_vs_reference": 8.26, "work_ratio_vs_reference": 5.5}}}))
    text = T.fast_description(results)
    assert "93%" in text and "8.3x" in text and "5.5x less work" in text and "16 seeds" in text
    assert "not measured" in T.fast_description(tmp_path / "missing.json")


def test_distillation_resumes_to_the_same_weights(tmp_path, monkeypatch):
    from braindive.demo import _tiny_components, save_diffusion_folder
    from training import distill_decoder as D

    model = save_diffusion_folder(_tiny_components(seed=0), tmp_path / "sd")
    recipe = D.Recipe(steps=4, batch=2, crop=4, sample=1, holdout=1, sample_steps=2, size=SIZE, width=8,
                      blocks=(1, 1, 1, 0))
    straight = D.distill(model, tmp_path / "a", recipe, work=tmp_path / "work_a", save_every=2)
    real_lr = D._lr

    def crash_at_3(step, r):
        if step == 3:
            raise KeyboardInterrupt
        return real_lr(step, r)

    monkeypatch.setattr(D, "_lr", crash_at_3)
    with pytest.raises(KeyboardInterrupt):
        D.distill(model, tmp_path / "b", recipe, work=tmp_path / "work_b", save_every=2)
    assert not (tmp_path / "b").exists()  # nothing half-written
    monkeypatch.setattr(D, "_lr", real_lr)
    resumed = D.distill(model, tmp_path / "b", recipe, work=tmp_path / "work_b", save_every=2)
    a, b = (AutoencoderTiny.from_pretrained(tmp_path / x) for x in ("a", "b"))
    for (name, p), q in zip(a.decoder.state_dict().items(), b.decoder.state_dict().values()):
        torch.testing.assert_close(p, q, msg=name)
    assert resumed["fidelity"] == straight["fidelity"]
    record = json.loads((tmp_path / "b" / T.DISTILL_FILE).read_text())
    assert record["vae"]["scaling_factor"] == pytest.approx(0.18215)
    with pytest.raises(ValueError, match="holds a run with other arguments"):
        D.distill(model, tmp_path / "b", dataclasses.replace(recipe, steps=5), work=tmp_path / "work_b")


@pytest.fixture(scope="module")
def demo():
    if not (ASSET_TINY_DECODER / "config.json").is_file():
        pytest.skip("assets/demo-taesd is not built")
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


@pytest.mark.xfail(strict=True, reason="target not reached: the 150-step assets/demo-taesd (PSNR 19 dB) kept 34% of "
                   "the gain (FFA, 4 seeds, 10 steps); it needs a longer distillation")
def test_demo_decoder_keeps_the_gain(demo):
    objective = bd.Objective.maximize(demo.subject.roi("FFA"))

    def mean_objective(**kwargs):
        return demo.pipe(objective=objective, height=128, width=128, num_inference_steps=10, output_type="pt",
                         generator=generators(range(4)), num_images_per_prompt=4, **kwargs).objective_values.mean()

    base, exact = mean_objective(brain_guidance_scale=0.0), mean_objective(brain_guidance_scale=20.0)
    tiny = mean_objective(brain_guidance_scale=20.0, guidance_mode="fast",
                          fast_options=dataclasses.replace(OFF, tiny_decoder=demo.pipe.tiny_decoder))
    assert exact - base > 1.0
    assert (tiny - base) / (exact - base) >= 0.9
