"""Sub-regions and start images through the doors: sweep files and the command line."""
import json

import numpy as np
import PIL.Image
import pytest

import braindive as bd
from braindive import subregions as sr
from dataclasses import replace

from braindive.batch.sweep import SweepError, parse_sweep
from braindive.catalog import Catalog
from braindive.cli import main
from braindive.generate import baseline_key
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
    jobs = {j.target.label: j for j in sweep.jobs}
    assert list(jobs) == ["max FFA", "max OPA·1/2", "max OPA·2/2", "max FFA·ven→dor 1/3", "max FFA·ven→dor 2/3",
                          "max FFA·ven→dor 3/3"]
    for part in (*weights.parts, *anatomy.parts):
        target = jobs[f"max {part.name}"].target
        assert (target.kind, target.name, target.voxels) == ("maximize", part.name, tuple(part.voxels.tolist()))
        np.testing.assert_array_equal(target.build(subject).positive, part.voxels)
    # no start image: the settings key is the one sweeps had before start images existed
    assert set(jobs["max FFA"].key()["settings"]) == {"mode", "scale", "steps", "scheduler", "sag", "prompt", "cfg",
                                                      "height", "width"}


def test_sweep_subregions_by_responses_and_kind(tmp_path):
    """``by = "responses"`` reads an image folder relative to the sweep file: the library's split of those images."""
    folder = tmp_path / "natural"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(6):
        PIL.Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    text = SWEEP.format(settings="steps = 2").split("[targets]")[0] + (
        '[targets]\nsubregions = [{ roi = "OPA", k = 2, by = "responses", images = "natural", kind = "contrast" }]\n')
    sweep = parse_sweep(text, base_dir=tmp_path)
    subject = bd.load_subject("S1")
    expected = sr.split_region(subject, "OPA", 2, "responses", encoder=bd.load_encoder(ASSET_ENCODER, subject=subject),
                               images=folder)
    targets = [j.target for j in sweep.jobs]
    assert [t.label for t in targets] == ["OPA·1/2 − 1.0×OPA·rest", "OPA·2/2 − 1.0×OPA·rest"]
    for i, (target, part) in enumerate(zip(targets, expected.parts)):
        assert target.voxels == tuple(part.voxels.tolist())
        assert target.voxels_b == tuple(expected.parts[1 - i].voxels.tolist())
    with pytest.raises(SweepError, match=r"`subregions.images` .* is needed with by = \"responses\""):
        parse_sweep(text.replace(', images = "natural"', ""), base_dir=tmp_path)
    with pytest.raises(SweepError, match=r"only then; got by 'weights'"):
        parse_sweep(text.replace('by = "responses"', 'by = "weights"'), base_dir=tmp_path)
    with pytest.raises(SweepError, match=r"Image folder \(or prepared NSD dataset\) not found"):
        parse_sweep(text.replace('"natural"', '"missing"'), base_dir=tmp_path)
    with pytest.raises(SweepError, match=r"`subregions.kind` must be one of"):
        parse_sweep(text.replace('"contrast"', '"max"'), base_dir=tmp_path)


def test_sweep_start_images_times_strengths(tmp_path, reference):
    text = SWEEP.format(settings=f'steps = 2\ninit_images = ["{reference}"]\nstrength = [0.3, 0.6]')
    sweep = parse_sweep(text, base_dir=tmp_path)
    settings = sorted({(j.settings.init_image.file, j.settings.strength) for j in sweep.jobs})
    assert settings == [("ref.png", 0.3), ("ref.png", 0.6)]  # written as an absolute path: named by its file name
    s = sweep.jobs[0].settings
    assert s.key()["init_image"] == image_hash(PIL.Image.open(reference))
    assert s.image_record() == {"strength": s.strength, "reference": {"file": "ref.png", "sha256": image_hash(PIL.Image.open(reference))}}
    assert s.image_kwargs()["strength"] == s.strength
    # the control of a variation is the unguided baseline of its start image and strength (any brain scale)
    key = baseline_key("m", s, 0, "e", "space")
    assert key == baseline_key("m", replace(s, scale=0.0), 0, "e", "space")
    assert key != baseline_key("m", replace(s, strength=0.9), 0, "e", "space")
    assert key != baseline_key("m", replace(s, init_image=None, strength=1.0), 0, "e", "space")
    with pytest.raises(SweepError, match=r"strength"):
        parse_sweep(SWEEP.format(settings="strength = 0.5"), base_dir=tmp_path)
    with pytest.raises(SweepError, match=r"`Strength` must be a number from 0 to 1, got 1.5"):
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
    # an anatomical split's parts compared by the encoder's weight profiles: mean cosines computed here
    head = bd.load_encoder(ASSET_ENCODER).head.weight.detach().double().numpy()
    post, ant = (head[p.voxels] / np.linalg.norm(head[p.voxels], axis=1, keepdims=True) for p in expected.parts)
    within = post @ post.T
    assert saved["report"][0]["within"] == pytest.approx((within.sum() - len(post)) / (len(post) * (len(post) - 1)))
    assert saved["report"][0]["between"] == pytest.approx((post @ ant.T).mean())

    gen = tmp_path / "gen"
    assert main(["generate", "--roi", "FFA", "--n", "1", "--steps", "2", "--init-image", str(reference),
                 "--strength", "0.5", "--out", str(gen)]) == 0
    catalog = Catalog(gen)
    (entry,) = catalog.query()
    record = catalog.record(entry.id)
    assert record["target_spec"]["kind"] == "maximize" and record["target_spec"]["region_a"] == "FFA"
    assert record["parameters"]["strength"] == 0.5
    assert record["parameters"]["reference"] == {"file": "ref.png", "sha256": image_hash(PIL.Image.open(reference))}
    assert main(["generate", "--roi", "FFA", "--n", "1", "--init-image", str(reference), "--strength", "2",
                 "--out", str(gen)]) == 2
    assert "`Strength` must be a number from 0 to 1, got 2" in capsys.readouterr().err
    assert main(["generate", "--roi", "FFA", "--n", "1", "--strength", "0.5", "--out", str(gen)]) == 2
    assert "--strength needs --init-image" in capsys.readouterr().err


def test_cli_subregions_generate_records_each_part_as_a_voxel_set(tmp_path):
    out = tmp_path / "parts"
    assert main(["subregions", "--roi", "OPA", "--k", "2", "--by", "anatomy", "--generate", "1", "--steps", "2",
                 "--out", str(out)]) == 0
    expected = sr.split_region(bd.load_subject("S1"), "OPA", 2, "anatomy")
    catalog = Catalog(out)
    records = {catalog.record(e.id)["label"]: catalog.record(e.id) for e in catalog.query()}
    assert sorted(records) == ["max OPA·ant", "max OPA·post"]
    for part in expected.parts:
        spec = records[f"max {part.name}"]["target_spec"]
        assert spec["kind"] == "maximize" and list(spec["voxels"]) == part.voxels.tolist()
        assert records[f"max {part.name}"]["subregion"]["part"] == part.name
    # both parts' images share the seed's one unguided image, which History shows beside them
    assert len({r["baseline_key"] for r in records.values()}) == 1
    assert len(list((out / "unguided").glob("*.png"))) == 1
    assert (out / "cross_prediction.csv").is_file()
    assert main(["subregions", "--roi", "OPA", "--generate", "0", "--out", str(out)]) == 2


def test_the_paper_preset_splits_and_varies_on_tiny_models(tmp_path, reference):
    """``--preset sd21`` (the GPU path: paper scale 130, DPM) with a tiny SD-layout model and the demo encoder as
    local folders, on the CPU: each part's images and a start-image variation, recorded as that preset made them."""
    from braindive.demo import ASSET_DIFFUSION as ASSET_SD, ASSET_ENCODER

    models = ["--preset", "sd21", "--model", str(ASSET_SD), "--encoder", str(ASSET_ENCODER), "--subject", "S1",
              "--steps", "2", "--height", "64", "--width", "64"]
    out = tmp_path / "split"
    assert main(["subregions", *models, "--roi", "OPA", "--k", "2", "--by", "weights", "--generate", "1",
                 "--out", str(out)]) == 0
    catalog = Catalog(out)
    records = [catalog.record(e.id) for e in catalog.query()]
    assert sorted(r["label"] for r in records) == ["max OPA·1/2", "max OPA·2/2"]
    assert {(r["model"], r["parameters"]["brain_guidance_scale"], r["parameters"]["scheduler"]) for r in records} == \
        {(str(ASSET_SD), 130.0, "dpm")}
    gen = tmp_path / "vary"
    assert main(["generate", *models, "--roi", "FFA", "--minimize", "--n", "1", "--init-image", str(reference),
                 "--strength", "0.5", "--out", str(gen)]) == 0
    (entry,) = Catalog(gen).query()
    record = Catalog(gen).record(entry.id)
    assert record["label"] == "min FFA" and record["parameters"]["strength"] == 0.5
    assert record["parameters"]["reference"]["sha256"] == image_hash(PIL.Image.open(reference))


def test_a_part_minus_the_rest_is_the_same_request_from_the_cli_and_a_sweep(tmp_path):
    """Same split, kind, seed and settings: the CLI's catalog ids are the sweep's ids (ids hash the target's voxels on
    both sides, the settings and the encoder identity), and the labels and target specs agree."""
    out = tmp_path / "cli"
    assert main(["subregions", "--roi", "OPA", "--k", "2", "--by", "weights", "--kind", "contrast", "--generate", "1",
                 "--gen-seed", "3", "--steps", "2", "--out", str(out)]) == 0
    catalog = Catalog(out)
    cli = {catalog.record(e.id)["label"]: (e.id, catalog.record(e.id)["target_spec"]) for e in catalog.query()}
    text = SWEEP.format(settings="steps = 2").replace("seeds = { start = 0, count = 2 }", "seeds = [3]")
    text = text.split("[targets]")[0] + '[targets]\nsubregions = [{ roi = "OPA", k = 2, by = "weights", kind = "contrast" }]\n' \
        + "[settings]\nsteps = 2\n"
    sweep = parse_sweep(text, base_dir=tmp_path)
    swept = {j.target.label: (sweep.image_ids(j)[0], j.target.to_dict()) for j in sweep.jobs}
    assert sorted(swept) == sorted(cli) == ["OPA·1/2 − 1.0×OPA·rest", "OPA·2/2 − 1.0×OPA·rest"]
    assert swept == cli
