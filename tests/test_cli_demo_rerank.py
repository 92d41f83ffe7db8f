"""The offline demo bundle, the generate CLI, and encoder re-ranking."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import braindive as bd
from braindive.catalog import Catalog
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


def _ffa_of_pngs(demo, folder):
    """Independent score of the cataloged files: the demo encoder on the PNG pixels, mean over FFA's voxels."""
    entries = sorted(Catalog(folder).query(), key=lambda e: e.seed)
    pngs = [e.image_path for e in entries]
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in pngs]).astype(np.float32) / 255
    with torch.no_grad():
        acts = demo.encoder(torch.from_numpy(pixels).permute(0, 3, 1, 2)).numpy()
    recorded = [json.loads(p.with_suffix(".json").read_text())["predicted_objective"] for p in pngs]
    return acts[:, demo.subject.roi("FFA")].mean(1), np.array(recorded)


def test_cli_guided_images_raise_ffa_over_unguided(demo, tmp_path):
    common = ["generate", "--preset", "demo", "--roi", "FFA", "--n", "2", "--steps", "6", "--seed", "0"]
    assert main([*common, "--scale", "0", "--out", str(tmp_path / "plain")]) == 0
    assert main([*common, "--out", str(tmp_path / "guided")]) == 0  # the demo's default brain scale
    plain, plain_recorded = _ffa_of_pngs(demo, tmp_path / "plain")
    guided, guided_recorded = _ffa_of_pngs(demo, tmp_path / "guided")
    assert (guided > plain).all(), (guided, plain)  # same seeds: only the guidance differs
    # the recorded objective is the encoder's score of the saved image (up to 8-bit rounding)
    np.testing.assert_allclose(np.concatenate([plain_recorded, guided_recorded]), np.concatenate([plain, guided]),
                               atol=0.05)


def test_cli_generate_writes_a_catalog_with_provenance_and_baselines(tmp_path, capsys):
    args = ["generate", "--preset", "demo", "--roi", "PPA", "--n", "2", "--steps", "3", "--height", "64",
            "--width", "64", "--seed", "7", "--out", str(tmp_path)]
    assert main(args) == 0
    catalog = Catalog(tmp_path)
    entries = sorted(catalog.query(), key=lambda e: e.seed)
    assert [(e.seed, e.label) for e in entries] == [(7, "max PPA"), (8, "max PPA")]
    record = catalog.record(entries[0].id)
    assert record["seed"] == 7 and record["subject"] == "S1" and record["target"] == "PPA"
    assert record["subject_space"] == bd.load_subject("S1").fingerprint
    # the unguided image of each seed is in the catalog, and its map gives the recorded baseline
    png, npy = catalog.unguided_paths(entries[0].id)
    assert png is not None and np.load(npy)[bd.load_subject("S1").roi("PPA")].mean() == \
        pytest.approx(record["baseline_measure"], abs=1e-5)
    assert main(args) == 0 and len(catalog.query()) == 2  # deterministic ids: a re-run adds nothing
    assert record["parameters"]["num_inference_steps"] == 3 and record["parameters"]["scheduler"] == "dpm"
    assert record["objective"]["n_positive"] == len(bd.load_subject("S1").roi("PPA"))
    assert np.isfinite(record["predicted_objective"]) and record["versions"]["diffusers"]
    assert "wrote 2 images" in capsys.readouterr().out


def test_cli_bad_roi_and_missing_encoder(tmp_path, capsys):
    assert main(["generate", "--roi", "V9", "--n", "1", "--steps", "1", "--out", str(tmp_path)]) == 2
    assert "`roi` must be one of" in capsys.readouterr().err
    assert main(["generate", "--preset", "sd21", "--out", str(tmp_path)]) == 2
    assert "needs an encoder" in capsys.readouterr().err


def test_rerank_keeps_the_best_fraction_of_an_independent_ordering():
    encoder = tiny_encoder()
    arrays = np.random.default_rng(0).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    target = np.arange(8)
    scores = []  # each image scored alone from its own pixels, mean over the target voxels
    for a in arrays:
        with torch.no_grad():
            acts = encoder(torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255)
        scores.append(float(acts[0, target].mean()))
    best_first = sorted(range(10), key=lambda i: -scores[i])
    images = [Image.fromarray(a) for a in arrays]
    for keep, n_kept in [(0.2, 2), (0.25, 3), (0.01, 1), (1.0, 10)]:  # at least one, rounding up
        ranked = bd.rerank(images, encoder, bd.Objective.maximize(target), keep=keep, batch_size=3)
        assert ranked.indices == best_first[:n_kept]
        np.testing.assert_allclose(ranked.scores, [scores[i] for i in best_first[:n_kept]], atol=1e-5)
        np.testing.assert_array_equal(np.stack([np.asarray(im) for im in ranked.images]), arrays[best_first[:n_kept]])
    lowest = bd.rerank(images, encoder, bd.Objective.minimize(target), keep=0.2)
    assert lowest.indices == best_first[::-1][:2]
    with pytest.raises(ValueError, match="`keep` must be in"):
        bd.rerank(images, encoder, bd.Objective.maximize(target), keep=0)
