"""The SD 2.1 FLOP projection's per-recipe formula, checked against FLOPs counted on whole demo generations."""
import dataclasses

import pytest
import torch

import braindive as bd
from benchmarks import decoder_flops
from benchmarks.counters import FlopCount
from braindive.pipeline import FastGuidance

STEPS = 5  # dense_start=0.2 of 5 steps: step 0, then every 4th (1): 2 guided steps


@pytest.fixture(scope="module")
def demo():
    bundle = bd.demo.load()
    if bundle.pipe.tiny_decoder is None:
        pytest.skip("braindive/assets/demo-taesd is not built")
    return bundle


@pytest.fixture(scope="module")
def parts(demo):
    return decoder_flops._demo_parts()


def _counted_gflop(demo, **call) -> float:
    counter = FlopCount()
    with counter:
        demo.pipe(**{**dict(objective=bd.Objective.maximize(demo.subject.roi("FFA")), height=128, width=128,
                            num_inference_steps=STEPS, sag_scale=0.75, brain_guidance_scale=20.0, output_type="pt",
                            generator=[torch.Generator().manual_seed(0)]), **call})
    return counter.flops / 1e9


@pytest.mark.parametrize("recipe,call", [
    ("unguided", dict(guidance_mode="reference", brain_guidance_scale=0.0)),
    (None, dict(guidance_mode="reference")),
    ((False, 1, "vae", 1, 0.0), dict(guidance_mode="exact")),
    ((True, 4, "tiny", 0.5, 0.2), dict(guidance_mode="fast", fast_options=FastGuidance(
        skip_unet_backprop=True, guide_every=4, dense_start=0.2, decode_scale=0.5))),
], ids=["unguided", "reference", "exact", "tiny decoder, half decode, dense start"])
def test_formula_matches_the_flops_of_a_whole_generation(demo, parts, recipe, call):
    if "fast_options" in call:  # a copy: the parameter's dict stays as collected
        call = {**call, "fast_options": dataclasses.replace(call["fast_options"], tiny_decoder=demo.pipe.tiny_decoder)}
    assert decoder_flops.recipe_gflop(parts, STEPS, recipe) == pytest.approx(_counted_gflop(demo, **call), rel=0.01)
