"""braindive.targets: labels, signed measures, objectives, storage and migration of old record formats."""
import json

import numpy as np
import pytest
import torch

from braindive.subjects import load_subject
from braindive.targets import Target


@pytest.fixture(scope="module")
def s1():
    return load_subject("S1")


def test_labels_as_people_read_them():
    assert Target.maximize("FFA").label == "max FFA"
    assert Target.minimize("PPA").label == "min PPA"
    assert Target.contrast("FFA", "PPA", 0.5).label == "FFA − 0.5×PPA"
    assert Target.contrast("FFA", "PPA").label == "FFA − 1.0×PPA"
    assert Target.maximize("FFA.lh").label == "max FFA.lh"
    assert Target.voxel_set([5, 3, 3, 9]).label == "max voxels (3)"
    assert Target.voxel_set([1], name="OPA·1/2", kind="minimize").label == "min OPA·1/2"


def test_fields_and_category_roi():
    t = Target.maximize("FFA.lh")
    assert (t.kind, t.region_a, t.region_b, t.hemisphere, t.voxels, t.name) == ("maximize", "FFA.lh", "", "lh", None, "FFA.lh")
    assert t.category_roi == "FFA"
    assert Target.maximize("PPA").category_roi == "PPA"
    assert Target.minimize("PPA").category_roi is None  # a min-PPA image is no "places" stimulus
    assert Target.contrast("FFA", "PPA", 0.5).category_roi is None
    assert Target.voxel_set([1, 2]).category_roi is None
    assert Target.voxel_set([4, 2]).voxels == (2, 4)


def test_measure_is_signed_and_matches_hand_computed_means(s1):
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(3, s1.n_voxels)).astype(np.float32)
    ffa, ppa = acts[:, s1.roi("FFA")].mean(1), acts[:, s1.roi("PPA")].mean(1)
    for target, expected in [(Target.maximize("FFA"), ffa), (Target.minimize("FFA"), ffa),
                             (Target.contrast("FFA", "PPA", 0.5), ffa - 0.5 * ppa)]:
        np.testing.assert_allclose(target.measure(acts, s1), expected, rtol=1e-5)
        assert target.measure(acts[1], s1) == pytest.approx(expected[1], rel=1e-5)
        # the objective the pipeline ascends: the measure for max/contrast, minus it for min
        objective = target.build(s1)
        values = objective(torch.from_numpy(acts)).numpy()
        np.testing.assert_allclose(target.measure_of(values), expected, rtol=1e-5)
        np.testing.assert_allclose(values, -expected if target.kind == "minimize" else expected, rtol=1e-5)
    lh = s1.roi("FFA.lh")
    assert Target.maximize("FFA.lh").measure(acts[0], s1) == pytest.approx(acts[0, lh].mean(), rel=1e-5)
    assert Target.voxel_set([0, 7]).measure(acts[2]) == pytest.approx(acts[2, [0, 7]].mean(), rel=1e-5)


def test_voxel_set_contrast_against_a_voxel_set(s1):
    """A sub-region against the rest of its region: both sides voxel sets, measured and built alike."""
    rng = np.random.default_rng(1)
    acts = rng.normal(size=(4, s1.n_voxels))
    part, rest = [5, 9, 11], [2, 3, 40, 41]
    target = Target.voxel_set(part, name="OPA·1/2", kind="contrast", region_b="OPA·rest", weight=0.5, voxels_b=rest)
    expected = acts[:, part].mean(1) - 0.5 * acts[:, rest].mean(1)
    assert target.label == "OPA·1/2 − 0.5×OPA·rest" and target.regions == () and target.category_roi is None
    np.testing.assert_allclose(target.measure(acts), expected)  # voxel sets only: no subject needed
    np.testing.assert_allclose(target.measure(acts, s1), expected)
    np.testing.assert_allclose(target.build(s1)(torch.from_numpy(acts)).numpy(), expected, rtol=1e-6)
    assert Target.from_dict(json.loads(json.dumps(target.to_dict()))) == target
    assert target.key()["b"] == rest  # identity by voxels, not names
    with pytest.raises(ValueError, match="`voxels_b` must differ"):
        Target.voxel_set(part, kind="contrast", voxels_b=part)
    with pytest.raises(ValueError, match="only for a contrast"):
        Target("maximize", "x", "", 1.0, (1,), (2,))
    with pytest.raises(ValueError, match="`voxels_b` is an empty voxel set"):
        Target.voxel_set(part, kind="contrast", voxels_b=[])


def test_measure_without_subject_is_an_error(s1):
    target = Target.maximize("FFA")
    target.build(s1)  # building on a subject leaves nothing behind: the measure still needs the subject
    with pytest.raises(ValueError, match="needs the subject"):
        target.measure(np.zeros(10))
    with pytest.raises(ValueError, match="needs the subject"):
        Target.voxel_set([1, 2], kind="contrast", region_b="PPA").measure(np.zeros(10))


@pytest.mark.parametrize("target", [Target.maximize("FFA"), Target.minimize("PPA"), Target.contrast("FFA", "PPA", 0.25),
                                    Target.maximize("FFA.rh"), Target.voxel_set([3, 1], name="mine", kind="minimize"),
                                    Target.voxel_set([3, 1], kind="contrast", region_b="PPA", weight=2.0)])
def test_dict_round_trip_through_json(target):
    again = Target.from_dict(json.loads(json.dumps(target.to_dict())))
    assert again == target and again.label == target.label


@pytest.mark.parametrize("bad, message", [
    ({"kind": "max", "region_a": "FFA"}, "`kind`"),
    ({"kind": "contrast", "region_a": "FFA"}, "`region_b`"),
    ({"kind": "maximize", "region_a": "FFA", "region_b": "PPA"}, "`region_b`"),
    ({"kind": "contrast", "region_a": "FFA", "region_b": "FFA"}, "must differ"),
    ({"kind": "contrast", "region_a": "FFA", "region_b": "PPA", "weight": float("nan")}, "`weight`"),
    ({"kind": "maximize", "region_a": "x", "voxels": [1.5, 2]}, "whole voxel indices"),
    ({"kind": "maximize", "region_a": "x", "voxels": [True, 2]}, "whole voxel indices"),
    ({"kind": "maximize", "region_a": "x", "voxels": ["3"]}, "whole voxel indices"),
    ({"kind": "maximize", "region_a": "x", "voxels": []}, "empty"),
    ({"kind": "maximize", "region_a": ""}, "`region_a`"),
    ({"kind": "maximize", "region_a": "FFA", "colour": "red"}, "unknown target field"),
])
def test_bad_dicts_are_rejected_by_field(bad, message):
    with pytest.raises(ValueError, match=message):
        Target.from_dict(bad)


def test_migrates_every_old_record_format():
    # app records before targets: contrast target split from "A-vs-B" inside the description
    app_contrast = {"target": "FFA", "description": {"kind": "contrast", "target": "FFA", "target_b": "PPA", "weight": 0.5,
                                                      "seed": 1}, "objective": {"kind": "contrast", "weight": 0.5}}
    assert Target.from_record(app_contrast) == Target.contrast("FFA", "PPA", 0.5)
    # the oldest records: only "objective" and an "A-vs-B" target string
    assert Target.from_record({"target": "FFA-vs-PPA", "objective": {"kind": "contrast", "weight": 2.0}}) == \
        Target.contrast("FFA", "PPA", 2.0)
    # batch minimise jobs were recorded as target "EBA-min"
    batch_min = {"target": "EBA-min", "description": {"kind": "minimize", "target": "EBA-min", "seed": 0},
                 "objective": {"kind": "minimize", "label": "EBA-min"}}
    assert Target.from_record(batch_min) == Target.minimize("EBA")
    # custom voxel sets were "custom(N voxels)" with the indices in the objective
    custom = {"target": "custom(3 voxels)", "objective": {"kind": "maximize", "positive": [4, 8, 15]}}
    assert Target.from_record(custom) == Target.voxel_set([4, 8, 15]) and Target.from_record(custom).label == "max voxels (3)"
    # plain ROI record and the new format
    assert Target.from_record({"target": "FFA.lh", "objective": {"kind": "maximize"}}) == Target.maximize("FFA.lh")
    spec = Target.minimize("PPA").to_dict()
    assert Target.from_record({"target_spec": spec, "target": "ignored"}) == Target.minimize("PPA")
