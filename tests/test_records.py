"""One description of a generation: record -> label -> filter -> manifest round trip for every objective kind."""
import csv
import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from braindive.catalog import Catalog
from braindive.catalog_export import description_from_manifest, export_zip
from braindive.description import GenerationDescription, describe_record
from braindive.records import generation_record
from braindive.targets import Target

PARAMS = {"num_inference_steps": 25, "brain_guidance_scale": 20.0, "sag_scale": 0.75, "prompt": "a photo, of a face",
          "guidance_mode": "exact", "scheduler": "ddim", "height": 128, "width": 128}
RNG = np.random.default_rng(0)
ACTIVATIONS = RNG.standard_normal(40).astype(np.float32)
ACTIVATIONS[:10] -= 2.5  # FFA's mean is negative: minimising it reports a negative mean, never +|mean|
A, A_LH, B = np.arange(0, 10), np.arange(0, 5), np.arange(20, 30)

# (target, target A, target B, expected label, expected measured value computed with numpy)
CASES = {
    "maximize": (Target.maximize("FFA"), "FFA", None, "max FFA", ACTIVATIONS[A].mean()),
    "maximize.lh": (Target.maximize("FFA.lh"), "FFA.lh", None, "max FFA.lh", ACTIVATIONS[A_LH].mean()),
    "minimize": (Target.minimize("FFA"), "FFA", None, "min FFA", ACTIVATIONS[A].mean()),
    "contrast": (Target.contrast("FFA", "PPA", 1.0), "FFA", "PPA", "FFA − 1.0×PPA",
                 ACTIVATIONS[A].mean() - ACTIVATIONS[B].mean()),
    "contrast 0.25": (Target.contrast("FFA", "PPA", 0.25), "FFA", "PPA", "FFA − 0.25×PPA",
                      ACTIVATIONS[A].mean() - 0.25 * ACTIVATIONS[B].mean()),
}


class Subject:
    """A 40-voxel space with FFA, FFA.lh and PPA."""

    name, fingerprint = "S1", "surface:S1:abc123"

    def roi(self, name):
        return {"FFA": A, "FFA.lh": A_LH, "PPA": B}[name]

    def check_voxels(self, voxels, argument="voxels"):
        return np.asarray(voxels)

MEASURES = {"FFA − 1.0×PPA": "FFA mean − 1.0×PPA mean", "FFA − 0.25×PPA": "FFA mean − 0.25×PPA mean",
            "max FFA.lh": "FFA.lh mean"}


def make_record(case, seed=7):
    target, subject = CASES[case][0], Subject()
    return generation_record(seed=seed, subject=subject, target=target, objective=target.build(subject).describe(),
                             parameters=PARAMS, measure=target.measure(ACTIVATIONS, subject), model="demo:tiny-sd",
                             encoder="demo")


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    cat = Catalog(tmp_path_factory.mktemp("cat"))
    ids = {case: cat.add(Image.new("RGB", (8, 8), (40 * k, 0, 0)), make_record(case, seed=k)).id
           for k, case in enumerate(CASES)}
    return cat, ids


@pytest.mark.parametrize("case", CASES)
def test_record_states_what_was_optimised_with_its_sign(case):
    _, target, target_b, label, expected = CASES[case]
    record = make_record(case)
    assert record["label"] == label and record["target"] == target
    assert record["predicted_objective"] == pytest.approx(expected, abs=1e-5)  # minimise: FFA's (signed) mean
    description = describe_record(record)
    assert (description.kind, description.target, description.target_b) == (case.split()[0].split(".")[0], target,
                                                                            target_b or "")
    assert description.hemisphere == ("lh" if case == "maximize.lh" else "both")
    assert (description.scheduler, description.mode, description.prompt, description.steps) == ("ddim", "exact",
                                                                                                "a photo, of a face", 25)
    assert description.subject_space == "surface:S1:abc123" and description.seed == 7


@pytest.mark.parametrize("case", CASES)
def test_label_filter_and_manifest_round_trip(catalog, case, tmp_path):
    cat, ids = catalog
    _, _, _, label, expected = CASES[case]
    found = cat.query(label=label)
    assert [e.id for e in found] == [ids[case]]  # the label filter separates min from max FFA and the contrasts
    entry = found[0]
    assert entry.caption.startswith(label) and entry.objective == pytest.approx(expected, abs=1e-5)
    export = export_zip(cat, [entry.id], tmp_path / "one.zip")
    with zipfile.ZipFile(export.path) as zf:
        (row,) = csv.DictReader(io.StringIO(zf.read("manifest.csv").decode()))
    assert row["label"] == label and row["objective_kind"] == entry.kind
    assert float(row["predicted_objective"]) == pytest.approx(expected, abs=1e-5)
    assert row["objective"] == MEASURES.get(label, "FFA mean")
    assert row["target_b"] == ("PPA" if entry.kind == "contrast" else "") and row["scheduler"] == "ddim"
    assert description_from_manifest(row) == describe_record(make_record(case, seed=entry.seed))


def test_minimise_is_never_shown_as_a_plain_roi_run(catalog):
    cat, ids = catalog
    entry = cat.get(ids["minimize"])
    assert ACTIVATIONS[A].mean() < -1 and entry.value_text == f"FFA mean {ACTIVATIONS[A].mean():.2f}"
    assert entry.value_text.startswith("FFA mean -")
    assert entry.label == "min FFA" and "max" not in entry.caption
    assert sorted(cat.distinct("label")) == sorted(c[3] for c in CASES.values())
    assert [e.id for e in cat.query(target="FFA", kind="minimize")] == [ids["minimize"]]


def test_records_before_targets_read_with_their_contrast_region_and_measure():
    old = {"seed": 1, "subject": "S1", "target": "FFA-vs-PPA", "objective": {"kind": "contrast", "weight": 2.0},
           "parameters": PARAMS, "predicted_objective": 0.5, "model": "m", "encoder": "e"}
    d = describe_record(old)
    assert (d.target, d.target_b, d.label, d.measure) == ("FFA", "PPA", "FFA − 2.0×PPA", "FFA mean − 2.0×PPA mean")
    assert make_record("contrast")["target_spec"] == Target.contrast("FFA", "PPA").to_dict()


@pytest.mark.parametrize("row, message", [
    ({"kind": "maximise", "target": "FFA", "seed": 1}, "`kind` must be one of"),
    ({"kind": "contrast", "target": "FFA", "seed": 1}, "`target_b` must be set for a contrast"),
    ({"kind": "maximize", "target": "FFA", "seed": "x"}, "`seed` must be an integer, got 'x'"),
    ({"kind": "maximize", "target": "FFA", "seed": 1, "scale": "big"}, "`scale` must be a number, got 'big'"),
    ({"kind": "maximize", "seed": 1}, "`target` is missing"),
])
def test_bad_descriptions_name_the_field(row, message):
    with pytest.raises(ValueError, match=message):
        GenerationDescription.from_dict(row)
