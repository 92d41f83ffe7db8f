"""braindive.presets: the one limits table (labels, ranges, no clamping) and the preset registry."""
import re

import numpy as np
import pytest

from braindive.presets import LIMITS, PRESETS, LimitError, check, check_voxels


def test_in_range_values_pass_typed_and_unchanged():
    assert check("steps", 1) == 1 and check("steps", 200) == 200 and check("steps", "7") == 7
    assert check("steps", 3.0) == 3 and isinstance(check("steps", np.int64(4)), int)
    assert check("scale", -1000) == -1000.0  # minimising by a negative scale is allowed everywhere
    assert check("weight", 0.5) == 0.5 and check("seed", 2**31 - 1) == 2**31 - 1
    assert check("prompt", "x" * 300) == "x" * 300
    assert check("height", 128) == 128


@pytest.mark.parametrize("field, value, expected", [
    ("steps", 0, "`Steps` must be a whole number from 1 to 200, got 0."),
    ("steps", 201, "`Steps` must be a whole number from 1 to 200, got 201."),
    ("steps", 2.5, "`Steps` must be a whole number from 1 to 200, got 2.5."),
    ("seed", 2.5, "`Seed` must be a whole number from 0 to 2147483647, got 2.5."),
    ("seed", -1, "`Seed` must be a whole number from 0 to 2147483647, got -1."),
    ("seed", True, "`Seed` must be a whole number from 0 to 2147483647, got True."),
    ("scale", float("nan"), "`Brain guidance scale` must be a number from -1000 to 1000, got nan."),
    ("scale", "lots", "`Brain guidance scale` must be a number from -1000 to 1000, got 'lots'."),
    ("weight", -0.1, "`Weight of B` must be a number from 0 to 10, got -0.1."),
    ("sag", 6, "`SAG scale` must be a number from 0 to 5, got 6."),
    ("n_images", 0, "`Generate N images` must be a whole number from 1 to 1000, got 0."),
    ("prompt", "x" * 301, "`Prompt` must be text of at most 300 characters, got 301 characters."),
    ("height", 100, "`Image height` must be a whole number from 32 to 2048 (a multiple of 8), got 100."),
    ("keep", 0, "`Keep fraction` must be a number from 0.001 to 1, got 0."),
])
def test_out_of_range_is_rejected_by_label_and_range(field, value, expected):
    with pytest.raises(LimitError) as info:
        check(field, value)
    assert str(info.value) == expected


@pytest.mark.parametrize("voxels", [[1.0, 2.0], [True], ["3"], "12", [], [-1]])
def test_voxel_lists_of_non_integers_are_rejected(voxels):
    with pytest.raises(LimitError, match="`Custom voxels`"):
        check_voxels(voxels)


def test_voxel_list_is_sorted_unique_ints():
    assert check_voxels(np.array([5, 2, 5])) == (2, 5)


def test_every_limit_has_a_label_and_a_sane_range():
    for name, limit in LIMITS.items():
        assert limit.field == name and limit.label and limit.lo <= limit.hi
        with pytest.raises(LimitError, match=re.escape(f"`{limit.label}`")):
            check(name, 10**12 if limit.kind is not str else "x" * (int(limit.hi) + 1))


def test_presets_hold_the_paper_and_demo_defaults():
    sd21 = PRESETS["sd21"]
    assert (sd21.model_id, sd21.height, sd21.steps, sd21.scheduler, sd21.sag, sd21.scale, sd21.cfg) == \
        ("stabilityai/stable-diffusion-2-1-base", 512, 50, "dpm", 0.75, 130.0, 0.0)
    demo = PRESETS["demo"]
    assert (demo.height, demo.steps, demo.scale) == (128, 25, 20.0)
    for preset in PRESETS.values():  # the defaults themselves are within the limits
        for field, value in [("steps", preset.steps), ("scale", preset.scale), ("sag", preset.sag), ("cfg", preset.cfg),
                             ("height", preset.height), ("width", preset.width)]:
            assert check(field, value) == value


def test_demo_preset_loads_the_demo_bundle():
    loaded = PRESETS["demo"].load("cpu")
    assert loaded.model_name == "demo:tiny-sd" and loaded.subject.name == "S1"
    assert loaded.pipe.encoder is loaded.encoder
