"""The synthetic subject's posterior-to-anterior gradient inside its ROIs (``training.synthetic``): positions by
hand, the truth's and the shipped demo encoder's weight splits of S1's regions against the posterior/anterior
halves computed from the coordinates, and the ROIs' overall preference left as ``ROI_TUNING`` says."""
import numpy as np
import pytest

import braindive as bd
from braindive import subregions as sr
from braindive.demo import ASSET_ENCODER
from training import synthetic
from training.synthetic import ROI_GRADIENT, ROI_TUNING, axis_positions, reference_statistics, simulated_brain

pytestmark = pytest.mark.skipif(not (ASSET_ENCODER / "config.json").is_file(), reason="no demo encoder (package data)")
CATEGORY_ROIS = ("FFA", "OPA", "PPA", "EBA")


@pytest.fixture(scope="module")
def encoder(s1):
    return bd.load_encoder(ASSET_ENCODER, subject=s1)


@pytest.fixture(scope="module")
def halves(s1):
    """ROI -> True for the voxels (of ``s1.roi``) posterior of their hemisphere's median y in that ROI."""
    y = sr.voxel_coordinates(s1)[:, 1]
    out = {}
    for roi in ROI_TUNING:
        voxels = s1.roi(roi)
        right = s1.is_right[voxels]
        median = np.where(right, np.median(y[voxels][right]), np.median(y[voxels][~right]))
        out[roi] = y[voxels] < median
    return out


def agreement(labels, posterior) -> float:
    """Share of voxels on which a 2-part split and the halves agree, whichever part is called posterior."""
    same = float(np.mean((labels == 0) == posterior))
    return max(same, 1 - same)


def test_axis_positions_are_ranks_per_hemisphere_mapped_to_minus_one_one():
    values = np.array([5.0, 1.0, 3.0, 3.0, 10.0, -2.0, 7.0])
    right = np.array([0, 0, 0, 0, 1, 1, 1], bool)
    # left: 1 < 3 = 3 < 5, ranks 1, 2.5, 2.5, 4 of 4; right: -2 < 7 < 10, ranks 1, 2, 3 of 3
    np.testing.assert_allclose(axis_positions(values, right), [1, -1, 0, 0, 1, -1, 0])


def test_the_truth_and_the_demo_encoder_split_regions_into_posterior_and_anterior(s1, encoder, halves, monkeypatch):
    truth = simulated_brain(s1, encoder)[0].T  # [n_voxels, n_features]
    for roi in CATEGORY_ROIS:
        by_truth = sr.split_region(s1, roi, 2, "weights", encoder=truth)
        by_encoder = sr.split_region(s1, roi, 2, "weights", encoder=encoder)
        assert agreement(by_truth.labels, halves[roi]) > 0.95, roi
        assert agreement(by_encoder.labels, halves[roi]) > 0.9, roi
    # the same brain without the gradient (every voxel of an ROI one direction plus noise): chance
    monkeypatch.setattr(synthetic, "GRADIENT_ANGLE", 0.0)
    flat = simulated_brain(s1, encoder)[0].T
    for roi in CATEGORY_ROIS:
        assert agreement(sr.split_region(s1, roi, 2, "weights", encoder=flat).labels, halves[roi]) < 0.65, roi


def test_each_roi_still_prefers_its_tuning_direction_overall(s1, encoder):
    assert set(ROI_GRADIENT) == set(ROI_TUNING)
    assert all(not set(ROI_GRADIENT[roi]) & set(combo) for roi, combo in ROI_TUNING.items())  # orthogonal to the tuning
    weights = simulated_brain(s1, encoder)[0]
    directions = reference_statistics(encoder)["directions"]
    for roi, combo in ROI_TUNING.items():
        main = sum(w * directions[k] for k, w in combo.items())
        rows = weights[:, s1.roi(roi)]
        mean = (rows / np.linalg.norm(rows, axis=0)).mean(1)
        cosine = mean @ main / np.linalg.norm(mean) / np.linalg.norm(main)
        assert cosine > 0.97, (roi, cosine)
