"""The Train tab's synthetic subject and the shipped demo encoder describe the same simulated brain."""
import numpy as np
import pytest
import torch

import braindive as bd
from braindive.demo import ASSET_ENCODER
from braindive.demo_components import DEMO_TOWER_NAME
from training.synthetic import make_synthetic, procedural_images
from training.train_encoder import train_encoder

from training_support import one_torch_thread  # noqa: F401

pytestmark = pytest.mark.skipif(not (ASSET_ENCODER / "config.json").is_file(), reason="no demo encoder (package data)")


@pytest.fixture(scope="module")
def fresh_encoder(s1, tmp_path_factory):
    """What the Train tab does, smaller: a new synthetic dataset (another seed and size than the demo's),
    then a fit with the demo tower."""
    root = tmp_path_factory.mktemp("fresh")
    make_synthetic(root / "syn.h5", s1, n_train=300, n_test=40, seed=11, image_size=64)
    train_encoder(root / "syn.h5", root / "enc", backbone=DEMO_TOWER_NAME, pretrained="none", device="cpu", cv=3)
    return bd.load_encoder(root / "enc")


def _roi_means(encoder, images, subject) -> np.ndarray:
    """``[n_rois, n_images]`` predicted ROI means."""
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        acts = encoder(pixels).numpy()
    return np.stack([acts[:, subject.rois[name]].mean(1) for name in subject.roi_names])


def test_fresh_encoder_agrees_with_the_demo_encoder(fresh_encoder, s1):
    demo = bd.load_encoder(ASSET_ENCODER)
    images = procedural_images(24, seed=987, size=128)  # images neither encoder was fit on
    ours, shipped = _roi_means(fresh_encoder, images, s1), _roi_means(demo, images, s1)
    # same sign per ROI (averaged over the images) wherever the demo's mean is clearly non-zero
    clear = np.abs(shipped.mean(1)) > 0.05
    assert clear.sum() >= 5
    assert np.array_equal(np.sign(ours.mean(1))[clear], np.sign(shipped.mean(1))[clear]), (s1.roi_names, ours.mean(1),
                                                                                          shipped.mean(1))
    # the same ROI profile image by image: ROI means correlate, and so do their image-to-image changes
    assert np.corrcoef(ours.ravel(), shipped.ravel())[0, 1] > 0.95
    ours_c, shipped_c = ours - ours.mean(1, keepdims=True), shipped - shipped.mean(1, keepdims=True)
    assert np.corrcoef(ours_c.ravel(), shipped_c.ravel())[0, 1] > 0.9


def test_the_simulated_brain_does_not_depend_on_the_dataset(fresh_encoder, s1, tmp_path):
    a = make_synthetic(tmp_path / "a.h5", s1, n_train=4, n_test=2, seed=1, image_size=32)
    b = make_synthetic(tmp_path / "b.h5", s1, n_train=6, n_test=3, seed=2, image_size=32)
    np.testing.assert_array_equal(a.weights, b.weights)
    np.testing.assert_array_equal(a.bias, b.bias)
