"""The offline demo bundle, the generate CLI, and encoder re-ranking."""
import json

import numpy as np
import pytest
import torch

import braindive as bd
from braindive.cli import main
from tiny import tiny_encoder


@pytest.fixture(scope="module")
def demo():
    return bd.demo.load()


def test_demo_bundle_is_offline_labelled_and_on_s1(demo):
    assert demo.subject.name == "S1" and demo.encoder.n_voxels == demo.subject.n_voxels
    assert demo.label.startswith("DEMO")
    demo.encoder.check_subject(demo.subject)
    assert type(demo.pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"


def test_demo_guidance_raises_ffa_over_unguided(demo):
    obj = bd.Objective.maximize(demo.subject.roi("FFA"))
    kw = dict(objective=obj, num_inference_steps=6, height=128, width=128, generator=[torch.Generator().manual_seed(0)],
              output_type="np")
    base = demo.pipe(brain_guidance_scale=0.0, **kw).objective_values
    guided = demo.pipe(brain_guidance_scale=demo.defaults["brain_guidance_scale"], **kw).objective_values
    assert guided[0] > base[0]


def test_cli_generate_writes_png_and_provenance_json(tmp_path, capsys):
    code = main(["generate", "--preset", "demo", "--roi", "PPA", "--n", "2", "--steps", "3", "--height", "64",
                 "--width", "64", "--seed", "7", "--out", str(tmp_path)])
    assert code == 0
    pngs = sorted(tmp_path.glob("*.png"))
    assert [p.name for p in pngs] == ["S1_PPA_seed000007.png", "S1_PPA_seed000008.png"]
    record = json.loads(pngs[0].with_suffix(".json").read_text())
    assert record["seed"] == 7 and record["subject"] == "S1" and record["target"] == "PPA"
    assert record["parameters"]["num_inference_steps"] == 3 and record["parameters"]["scheduler"] == "dpm"
    assert record["objective"]["n_positive"] == len(bd.load_subject("S1").roi("PPA"))
    assert np.isfinite(record["predicted_objective"]) and record["versions"]["diffusers"]
    assert "wrote 2 images" in capsys.readouterr().out


def test_cli_bad_roi_and_missing_encoder(tmp_path, capsys):
    assert main(["generate", "--roi", "V9", "--n", "1", "--steps", "1", "--out", str(tmp_path)]) == 2
    assert "`roi` must be one of" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="needs --encoder"):
        main(["generate", "--preset", "sd21", "--out", str(tmp_path)])


def test_rerank_keeps_top_fraction_sorted():
    encoder = tiny_encoder()
    images = torch.rand(10, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    obj = bd.Objective.maximize(np.arange(8))
    ranked = bd.rerank(list(images), encoder, obj, keep=0.2)
    with torch.no_grad():
        scores = obj(encoder(images))
    assert ranked.indices == torch.argsort(scores, descending=True)[:2].tolist()
    np.testing.assert_allclose(ranked.scores, scores[ranked.indices].numpy(), atol=1e-6)
    assert bd.rerank(images, encoder, obj, keep=0.01).indices == ranked.indices[:1]
    with pytest.raises(ValueError, match="`keep` must be in"):
        bd.rerank(images, encoder, obj, keep=0)
