"""Synthetic ground-truth subject on S1: the fitted encoder reaches the known ceiling and matches himalaya."""
import json
import os

import numpy as np
import pytest
from himalaya.backend import set_backend
from himalaya.ridge import RidgeCV
from himalaya.scoring import r2_score
from training_support import one_torch_thread  # noqa: F401  (autouse)

import braindive as bd
from training import eval_encoder, train_encoder
from training.dataset import open_dataset
from training.features import build_encoder, dataset_features
from training.ridge import DEFAULT_ALPHAS, cv_splits, parse_alphas
from training.stats import r2_columns
from training.synthetic import ROI_TUNING, make_synthetic, procedural_images

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "braindive", "assets", "demo-encoder")


@pytest.fixture(scope="module")
def synthetic(s1, tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    truth = make_synthetic(root / "syn.h5", s1, n_train=1000, n_test=200, seed=3, image_size=64)
    train_encoder.train_encoder(root / "syn.h5", root / "enc", backbone="braindive-tiny-vit", pretrained="none",
                                device="cpu")
    report = eval_encoder.evaluate(root / "enc", root / "syn.h5", root / "report", device="cpu")
    return {"root": root, "truth": truth, "report": report}


def test_fit_reaches_the_known_ceiling(synthetic, s1):
    report, ceiling = synthetic["report"], synthetic["truth"].ceiling
    voxels = np.load(synthetic["root"] / "report" / "voxels.npz")
    np.testing.assert_allclose(voxels["noise_ceiling"], ceiling, rtol=1e-6)
    assert report["r2"]["mean"] >= 0.9 * ceiling.mean()
    for roi in ROI_TUNING:  # every tuned region, not only on average
        idx = s1.roi(roi)
        assert voxels["r2"][idx].mean() >= 0.9 * ceiling[idx].mean(), roi
    assert report["r2"]["mean"] <= ceiling.mean() + 0.02  # cannot beat the truth by more than sampling noise
    png = synthetic["root"] / "report" / "r2_flatmap.png"
    assert report["flatmap"] == png.name and png.stat().st_size > 10_000


def test_a_report_for_the_app_names_no_absolute_server_path(synthetic):
    root = synthetic["root"]
    eval_encoder.main(["--encoder", str(root / "enc"), "--data", str(root / "syn.h5"), "--out", str(root / "served"),
                       "--device", "cpu", "--relative-to", str(root)])
    text = (root / "served" / "report.json").read_text()
    report = json.loads(text)
    assert (report["encoder"], report["dataset"]) == ("enc", "syn.h5")
    assert str(root) not in text and str(root.resolve()) not in text


def test_fit_recovers_the_generating_weights(synthetic):
    encoder = bd.load_encoder(synthetic["root"] / "enc")
    weight = encoder.head.weight.detach().numpy().T
    truth = synthetic["truth"].weights
    strong = synthetic["truth"].ceiling > 0.6
    cosine = (weight * truth).sum(0) / np.linalg.norm(weight, axis=0) / np.linalg.norm(truth, axis=0)
    assert np.median(cosine[strong]) > 0.95


def test_fit_matches_himalaya_ridgecv(synthetic, s1):
    with open_dataset(synthetic["root"] / "syn.h5") as ds:
        encoder = build_encoder(s1, "braindive-tiny-vit", None)
        x_train, x_test = dataset_features(encoder, ds, "train"), dataset_features(encoder, ds, "test")
        voxels = np.random.default_rng(0).choice(s1.n_voxels, 3000, replace=False)
        y_train, y_test = ds.betas("train")[:, voxels], ds.betas("test")[:, voxels]
    set_backend("torch")
    model = RidgeCV(alphas=parse_alphas(DEFAULT_ALPHAS), fit_intercept=True, cv=cv_splits(len(x_train), 5),
                    solver_params={"score_func": r2_score}).fit(x_train, y_train)
    reference = r2_columns(y_test, np.asarray(model.predict(x_test)))
    ours = np.load(synthetic["root"] / "report" / "voxels.npz")["r2"][voxels]
    assert abs(ours.mean() - reference.mean()) < 0.01
    assert np.quantile(np.abs(ours - reference), 0.99) < 0.01


def test_training_metadata(synthetic):
    config = json.loads((synthetic["root"] / "enc" / "config.json").read_text())
    training = config["training"]
    assert training["n_train"] == 1000 and training["n_voxels_fit"] == 37926 and training["cv_folds"] == 5
    assert training["alphas"] == parse_alphas(DEFAULT_ALPHAS).tolist()
    assert sum(training["best_alpha_counts"].values()) == 37926
    assert 0.3 < training["cv_r2"]["median"] < 0.7 and training["dropped_voxels"] == {"nan": [], "constant": []}
    assert set(training["versions"]) >= {"torch", "open_clip", "himalaya", "numpy", "braindive"}
    assert config["pretrained"] is None and config["backbone"] == "braindive-tiny-vit"


def test_procedural_images_are_seeded_and_batch_independent():
    a = procedural_images(6, seed=1, size=32)
    b = np.concatenate([procedural_images(2, seed=1, size=32), procedural_images(4, seed=1, size=32, start=2)])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, procedural_images(6, seed=2, size=32))
    assert len({img.tobytes() for img in a}) == 6 and a.std() > 20


@pytest.mark.skipif(not os.path.isdir(DEMO), reason="braindive/assets/demo-encoder not built")
def test_demo_encoder_asset(s1):
    encoder = bd.load_encoder(DEMO, subject=s1)
    training = encoder.config.training
    assert encoder.n_voxels == s1.n_voxels == 37926
    assert training["synthetic_test"]["r2_mean"] >= 0.9 * training["synthetic_test"]["ceiling_mean"]
    assert os.path.getsize(os.path.join(DEMO, "head.safetensors")) < 6e6
    # different ROIs prefer different images among the procedural ones
    import torch

    with torch.no_grad():
        images = torch.from_numpy(procedural_images(64, seed=99)).permute(0, 3, 1, 2).float() / 255
        pred = encoder(images).numpy()
    best = {roi: int(np.argmax(pred[:, s1.roi(roi)].mean(1))) for roi in ("V1", "FFA", "PPA", "OPA")}
    assert len(set(best.values())) >= 3, best
