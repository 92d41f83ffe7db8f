"""Sub-regions and start images through the doors: sweep files and the command line."""
import json

import numpy as np
import PIL.Image
import pytest

import braindive as bd
from braindive import subregions as sr
from braindive.batch.sweep import SweepError, parse_sweep
from braindive.cli import main
from braindive.demo import ASSET_ENCODER
from braindive.variation import image_hash

SWEEP = """
name = "sub"
model = "demo"
seeds = {{ start = 0, count = 2 }}
[[encoders]]
subject = "S1"
path = "demo"
[targets]
rois = ["FFA"]
subregions = [{{ roi = "OPA", k = 2, by = "weights" }}, {{ roi = "FFA", k = 3, by = "anatomy", axis = "ventral-dorsal" }}]
[settings]
{settings}
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "ref.png"
    rng = np.random.default_rng(0)
    PIL.Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(path)
    return path


def test_sweep_subregions_are_the_library_splits_and_old_ids_are_kept(tmp_path):
    sweep = parse_sweep(SWEEP.format(settings="steps = 2"), base_dir=tmp_path)
    subject = bd.load_subject("S1")
    weights = sr.split_region(subject, "OPA", 2, "weights", encoder=bd.load_encoder(ASSET_ENCODER, subject=subject))
    anatomy = sr.split_region(subject, "FFA", 3, "anatomy", axis="ventral-dorsal")
    jobs = {j.target: j for j in sweep.jobs}
    assert list(jobs) == ["FFA", "OPA·1/2", "OPA·2/2", "FFA·ven→dor 1/3", "FFA·ven→dor 2/3", "FFA·ven→dor 3/3"]
    for part in (*weights.parts, *anatomy.parts):
        assert jobs[part.name].objective.kind == "maximize"
        np.testing.assert_array_equal(jobs[part.name].objective.positive, part.voxels)
    # no start image: the settings key is the one sweeps had before start images existed
    assert set(jobs["FFA"].key()["settings"]) == {"mode", "scale", "steps", "scheduler", "sag", "prompt", "cfg",
                                                  "height", "width"}


def test_sweep_start_images_times_strengths(tmp_path, reference):
    text = SWEEP.format(settings=f'steps = 2\ninit_images = ["{reference}"]\nstrength = [0.3, 0.6]')
    sweep = parse_sweep(text, base_dir=tmp_path)
    settings = sorted({(j.settings.init_image, j.settings.strength) for j in sweep.jobs})
    assert settings == [(str(reference), 0.3), (str(reference), 0.6)]
    s = sweep.jobs[0].settings
    assert s.key()["init_image"] == image_hash(PIL.Image.open(reference))
    assert s.image_record() == {"strength": s.strength, "reference": {"file": "ref.png", "sha256": image_hash(PIL.Image.open(reference))}}
    assert s.image_kwargs()["strength"] == s.strength
    with pytest.raises(SweepError, match=r"strength"):
        parse_sweep(SWEEP.format(settings="strength = 0.5"), base_dir=tmp_path)
    with pytest.raises(SweepError, match=r"settings.strength"):
        parse_sweep(SWEEP.format(settings=f'init_images = ["{reference}"]\nstrength = 1.5'), base_dir=tmp_path)
    with pytest.raises(SweepError, match=r"subregions.k"):
        parse_sweep(SWEEP.format(settings="").replace("k = 2", "k = 9"), base_dir=tmp_path)


def test_cli_subregions_writes_the_split_and_generate_starts_from_an_image(tmp_path, reference, capsys):
    out = tmp_path / "split"
    assert main(["subregions", "--roi", "OPA", "--k", "2", "--by", "anatomy", "--out", str(out)]) == 0
    saved = json.loads((out / "split.json").read_text())
    expected = sr.split_region(bd.load_subject("S1"), "OPA", 2, "anatomy")
    assert [p["name"] for p in saved["parts"]] == ["OPA·post", "OPA·ant"]
    assert [p["voxels"] for p in saved["parts"]] == [p.voxels.tolist() for p in expected.parts]
    assert saved["report"][0]["n_lh"] + saved["report"][0]["n_rh"] == len(expected.parts[0].voxels)

    gen = tmp_path / "gen"
    assert main(["generate", "--roi", "FFA", "--n", "1", "--steps", "2", "--init-image", str(reference),
                 "--strength", "0.5", "--out", str(gen)]) == 0
    record = json.loads(next(gen.glob("*.json")).read_text())
    assert record["parameters"]["strength"] == 0.5
    assert record["parameters"]["reference"] == {"file": "ref.png", "sha256": image_hash(PIL.Image.open(reference))}
    assert main(["generate", "--roi", "FFA", "--n", "1", "--init-image", str(reference), "--strength", "2",
                 "--out", str(gen)]) == 2
    assert "--strength" in capsys.readouterr().err
