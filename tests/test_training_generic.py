"""Generic route (image folder + responses.npy), bad voxels in the fit, stats and ridge building blocks."""
import json

import h5py
import numpy as np
import open_clip
import pytest
import scipy.stats
import torch
from PIL import Image

from training_support import one_torch_thread  # noqa: F401  (autouse)

import braindive as bd
from braindive.demo_components import DEMO_TOWER_CONFIG, DEMO_TOWER_NAME, build_demo_tower
from braindive.subjects import Subject
from training import stats, train_encoder
from training.dataset import open_dataset
from training.features import build_encoder
from training.prepare_generic import main as prepare_main
from training.prepare_generic import prepare_generic
from training.ridge import fit_ridge_cv, parse_alphas

N_IMAGES, N_VOXELS = 60, 12


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """60 flat-colour images (names shuffled against creation order), a 12-voxel subject, linear responses."""
    root = tmp_path_factory.mktemp("generic")
    rng = np.random.default_rng(0)
    folder = root / "images"
    folder.mkdir()
    colours = rng.integers(0, 256, (N_IMAGES, 3))
    names = [f"img_{i:03d}.png" for i in rng.permutation(N_IMAGES)]
    for name, colour in zip(names, colours):
        Image.fromarray(np.broadcast_to(colour.astype(np.uint8), (40, 48, 3)).copy()).save(folder / name)
    order = np.argsort(names)  # rows of the response matrix follow sorted file names
    responses = (colours[order] / 255.0) @ rng.normal(size=(3, N_VOXELS)) + 0.05 * rng.normal(size=(N_IMAGES, N_VOXELS))
    np.save(root / "responses.npy", responses.astype(np.float32))
    subject = Subject(name="toy", surface="", vertices=np.arange(N_VOXELS), n_vertices_lh=6, n_vertices=N_VOXELS,
                      rois={"A": np.arange(4)}, space="toy-space")
    subject.save(root / "toy.npz")
    (root / "rois.json").write_text(json.dumps({"B": [4, 5, 6]}))
    return {"root": root, "folder": folder, "responses": responses, "colours": colours[order], "subject": subject}


def test_generic_dataset_follows_sorted_file_names(toy, tmp_path):
    out = prepare_main(["--images", str(toy["folder"]), "--responses", str(toy["root"] / "responses.npy"),
                        "--subject-file", str(toy["root"] / "toy.npz"), "--rois", str(toy["root"] / "rois.json"),
                        "--test-fraction", "0.2", "--image-size", "16", "--out", str(tmp_path / "toy.h5")])
    with open_dataset(out) as ds:
        names = ds.file["images/names"].asstr()[()]
        assert list(names) == sorted(names) and len(names) == N_IMAGES
        train, test = ds.image_index("train"), ds.image_index("test")
        assert len(test) == 12 and len(train) == 48 and not set(train) & set(test)
        np.testing.assert_allclose(ds.betas("train"), toy["responses"][train], rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(ds.betas("test"), toy["responses"][test], rtol=1e-3, atol=1e-3)
        np.testing.assert_array_equal(ds.images[:, 0, 0], toy["colours"])  # centre crop of a flat colour
        assert ds.images.shape[1:] == (16, 16, 3) and np.isnan(ds.noise_ceiling).all()
        assert ds.subject.roi("B").tolist() == [4, 5, 6] and ds.subject.roi("A").tolist() == [0, 1, 2, 3]


def test_count_mismatch_is_reported(toy, tmp_path, s1):
    np.save(tmp_path / "short.npy", toy["responses"][:-1])
    with pytest.raises(ValueError, match=r"`--responses` has 59 rows but `--images` .* holds 60 images"):
        prepare_generic(toy["folder"], tmp_path / "short.npy", tmp_path / "x.h5", toy["subject"])
    with pytest.raises(ValueError, match=r"has 12 columns but the subject has 37926 voxels"):
        prepare_generic(toy["folder"], toy["root"] / "responses.npy", tmp_path / "x.h5", s1)


def test_unreadable_image_is_named_and_nothing_is_written(toy, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for f in sorted(toy["folder"].iterdir())[:10]:
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "img_005.png").write_bytes(b"not an image at all")
    np.save(tmp_path / "r.npy", toy["responses"][:10])
    with pytest.raises(ValueError, match=r"Cannot read image .*img_005.png"):
        prepare_generic(folder, tmp_path / "r.npy", tmp_path / "x.h5", toy["subject"], test_fraction=0.2)
    assert not list(tmp_path.glob("x.h5*"))


def test_bad_rois_and_split_are_reported(toy, tmp_path):
    (tmp_path / "rois.json").write_text(json.dumps({"C": [3, 99]}))
    with pytest.raises(ValueError, match=r"--rois\['C'\].*out of range \[0, 12\): \[99\]"):
        prepare_generic(toy["folder"], toy["root"] / "responses.npy", tmp_path / "x.h5", toy["subject"],
                        rois=tmp_path / "rois.json")
    with pytest.raises(ValueError, match=r"`--test-fraction` must be between 0 and 1, got 1.5"):
        prepare_generic(toy["folder"], toy["root"] / "responses.npy", tmp_path / "x.h5", toy["subject"], test_fraction=1.5)


def test_nan_and_constant_voxels_are_dropped_and_reported(toy, tmp_path):
    responses = toy["responses"].copy()
    responses[0:6, 3] = np.nan
    responses[:, 7] = 2.5
    responses[10:16, 9] = np.inf
    np.save(tmp_path / "bad.npy", responses)
    data = prepare_generic(toy["folder"], tmp_path / "bad.npy", tmp_path / "bad.h5", toy["subject"],
                           test_fraction=0.2, image_size=16)
    result = train_encoder.train_encoder(data, tmp_path / "enc", backbone="braindive-tiny-vit", pretrained="none",
                                         device="cpu", alphas="logspace:-3:3:7")
    assert result.summary["dropped_voxels"] == {"nan": [3, 9], "constant": [7]}
    assert result.summary["n_voxels_fit"] == N_VOXELS - 3

    encoder = bd.load_encoder(tmp_path / "enc", subject=toy["subject"])
    weight, bias = encoder.head.weight.detach().numpy(), encoder.head.bias.detach().numpy()
    dropped = [3, 9, 7]
    assert np.all(weight[dropped] == 0) and bias[7] == 2.5
    # the other voxels get the ridge model of an independent computation: the saved tower's own embedding
    # of the stored pixels, closed-form ridge in float64 numpy, alpha per voxel by 5-fold CV R^2
    with open_dataset(data) as ds:
        pixels = ds.images[()][ds.image_index("train")]
        Y = ds.betas("train").astype(np.float64)
    with torch.no_grad():
        X = encoder.embed(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255).double().numpy()
    good = [v for v in range(N_VOXELS) if v not in dropped]
    ref_weight, ref_bias, ref_alpha = _closed_form_ridge_cv(X, Y[:, good], 10.0 ** np.arange(-3, 4))
    np.testing.assert_allclose(weight[good], ref_weight.T, rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose(bias[good], ref_bias, rtol=2e-3, atol=2e-4)
    alphas, counts = np.unique(ref_alpha, return_counts=True)
    assert result.summary["best_alpha_counts"] == {f"{a:g}": int(c) for a, c in zip(alphas, counts)}
    with torch.no_grad():  # and the checkpoint predicts what that model predicts
        predicted = encoder(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255).double().numpy()
    np.testing.assert_allclose(predicted[:, good], X @ ref_weight + ref_bias, atol=1e-3)
    for v in (3, 9):
        column = Y[:, v]
        assert np.isclose(bias[v], column[np.isfinite(column)].mean(), rtol=1e-3)


def _closed_form_ridge_cv(X, Y, alphas, k=5):
    """Oracle: ``W = (Xc'Xc + a I)^-1 Xc'Yc`` on centred data, ``b = mean(Y) - mean(X) W``; each voxel's ``a``
    maximises the mean validation R^2 over the folds of sklearn's ``KFold(k, shuffle=True, random_state=0)``
    (indices shuffled by ``RandomState(0)``, the first ``n % k`` folds one longer)."""
    n = len(X)
    order = np.arange(n)
    np.random.RandomState(0).shuffle(order)
    sizes = np.full(k, n // k) + (np.arange(k) < n % k)
    folds = np.split(order, np.cumsum(sizes)[:-1])

    def fit(rows, alpha_per_voxel):
        xm, ym = X[rows].mean(0), Y[rows].mean(0)
        xc = X[rows] - xm
        w = np.stack([np.linalg.solve(xc.T @ xc + a * np.eye(X.shape[1]), xc.T @ (Y[rows, v] - ym[v]))
                      for v, a in enumerate(alpha_per_voxel)], axis=1)
        return w, ym - xm @ w

    r2 = np.zeros((len(alphas), Y.shape[1]))
    for fold in folds:
        rows = np.setdiff1d(np.arange(n), fold)
        for i, a in enumerate(alphas):
            w, b = fit(rows, np.full(Y.shape[1], a))
            y = Y[fold]
            r2[i] += 1 - ((y - X[fold] @ w - b) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)
    best = np.asarray(alphas)[r2.argmax(0)]
    return (*fit(np.arange(n), best), best)


def test_non_dataset_files_are_refused(toy, tmp_path):
    with pytest.raises(ValueError, match=r"toy.npz is not a readable HDF5 file"):
        open_dataset(toy["root"] / "toy.npz")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(ValueError, match=r"other.h5 is not a braindive-encoding-dataset file .*None"):
        open_dataset(tmp_path / "other.h5")
    with pytest.raises(FileNotFoundError, match="Dataset file not found"):
        open_dataset(tmp_path / "missing.h5")


def test_noise_ceiling_formula():
    snr = np.array([0.0, 0.5, 1.0, 2.0])
    repeats = np.array([3] * 515 + [2] * 251 + [1] * 141)  # NSD's shared images: 515 x3, 251 x2, 141 x1
    mean_inverse = (515 / 3 + 251 / 2 + 141) / 907
    np.testing.assert_allclose(stats.noise_ceiling(snr, repeats), snr**2 / (snr**2 + mean_inverse))
    np.testing.assert_allclose(stats.noise_ceiling(np.array([1.0]), np.array([3, 3])), [0.75])
    with pytest.raises(ValueError, match="n_repeats"):
        stats.noise_ceiling(snr, np.array([0, 1]))


def test_scores_and_bad_columns():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(50, 4))
    pred = y + rng.normal(size=(50, 4))
    r2 = 1 - ((y - pred) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)
    np.testing.assert_allclose(stats.r2_columns(y, pred), r2)
    np.testing.assert_allclose(stats.pearson_columns(y, pred), [np.corrcoef(y[:, i], pred[:, i])[0, 1] for i in range(4)])
    # a NaN response (an image without finite trials for that voxel) leaves only that row out of that column
    holed = y.copy()
    holed[[4, 9], 0] = np.nan
    rest = np.setdiff1d(np.arange(50), [4, 9])
    r2_rest = 1 - ((y[rest, 0] - pred[rest, 0]) ** 2).sum() / ((y[rest, 0] - y[rest, 0].mean()) ** 2).sum()
    np.testing.assert_allclose(stats.r2_columns(holed, pred), np.r_[r2_rest, r2[1:]])
    np.testing.assert_allclose(stats.pearson_columns(holed, pred)[0], np.corrcoef(y[rest, 0], pred[rest, 0])[0, 1])
    y[:, 1] = 3.0
    y[5, 2] = np.nan
    nan, constant = stats.bad_columns(y)
    assert nan.tolist() == [2] and constant.tolist() == [1]
    z = stats.zscore_columns(y)
    assert np.isnan(z[:, 1]).all() and np.allclose(z[:, 0].mean(), 0) and np.allclose(z[:, 0].std(), 1)
    # a NaN entry is left out of its column's mean and std and stays NaN; the column's other rows are kept
    np.testing.assert_allclose(z[:, 2], scipy.stats.zscore(y[:, 2], nan_policy="omit"), equal_nan=True)
    assert np.isnan(z[:, 2]).sum() == 1


def test_ridge_recovers_a_known_linear_map():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(400, 8)).astype(np.float32)
    W = rng.normal(size=(8, 5))
    Y = (X @ W + 3.0 + 0.01 * rng.normal(size=(400, 5))).astype(np.float32)
    fit = fit_ridge_cv(X, Y, parse_alphas("1e-3,1e-1,10,1000"), progress=False)
    np.testing.assert_allclose(fit.weights, W, atol=5e-3)
    np.testing.assert_allclose(fit.bias, 3.0, atol=5e-3)
    assert np.all(fit.best_alphas <= 0.1) and np.all(fit.cv_r2 > 0.999)


@pytest.mark.parametrize("spec, message", [("logspace:1:2", "logspace:START:STOP:NUM"), ("0,1", "positive"),
                                           ("a,b", "comma-separated")])
def test_bad_alphas(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_alphas(spec)


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_pretrained_none_backbones_are_seeded(tmp_path):
    subject = Subject(name="t", surface="", vertices=np.arange(3), n_vertices_lh=3, n_vertices=3, rois={})
    # the demo's tower: both spellings give the demo's own seed-0 tower (not just any tower), and its config
    for spelling in ("none", None):
        demo = build_encoder(subject, DEMO_TOWER_NAME, spelling)
        assert _same_weights(demo.tower, build_demo_tower(0)) and not _same_weights(demo.tower, build_demo_tower(1))
        assert demo.config.pretrained is None and demo.config.backbone_config == DEMO_TOWER_CONFIG
    # any other OpenCLIP architecture: OpenCLIP's own random init after torch.manual_seed(0), whatever the caller's seed
    (tmp_path / "test-seeded-vit.json").write_text(json.dumps(DEMO_TOWER_CONFIG))
    open_clip.add_model_config(tmp_path / "test-seeded-vit.json")
    torch.manual_seed(123)
    other = build_encoder(subject, "test-seeded-vit", "none")
    torch.manual_seed(0)
    expected = open_clip.create_model("test-seeded-vit").visual
    assert _same_weights(other.tower, expected) and other.config.pretrained is None
    with pytest.raises(ValueError, match="`--pretrained` must be 'none' for 'braindive-tiny-vit'"):
        build_encoder(subject, "braindive-tiny-vit", "laion2b_s34b_b88k")
