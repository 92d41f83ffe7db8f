"""CLIP 5-way zero-shot evaluation on a tiny OpenCLIP model whose answers are known by construction."""
import csv
import json

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

import braindive as bd
from braindive.cli import main
from braindive.evaluation import ZeroShotClassifier, ZeroShotConfig, accuracy, category_of, load_roi_table
from braindive.evaluation.report import evaluate, store, stored, write_report
from braindive.evaluation.sets import ImageSet, generated_sets
from braindive.rerank import images_to_tensor
from braindive.subjects import Subject
from tiny import tiny_encoder
from tiny_clip import COLOURS, expected_probabilities, swatch, tiny_config

CATS = list(COLOURS)


@pytest.fixture(scope="module")
def clip_config(tmp_path_factory):
    return tiny_config(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def classifier(clip_config):
    return ZeroShotClassifier(clip_config, device="cpu")


def test_probabilities_equal_the_hand_computation(classifier):
    mixed = (200, 140, 60)  # between the faces and words colours
    colours = [*COLOURS.values(), mixed]
    probs = classifier.predict_proba([swatch(c) for c in colours])
    expected = np.stack([expected_probabilities(c) for c in colours])
    np.testing.assert_allclose(probs, expected, atol=1e-4)
    assert classifier.classify([swatch(c) for c in COLOURS.values()]) == CATS


def test_set_accuracy_wilson_interval_and_confusion(classifier):
    images = [swatch(COLOURS["faces"])] * 7 + [swatch(COLOURS["places"])] * 2 + [swatch(COLOURS["food"])]
    sets = [ImageSet("BrainDiVE", "S1", "FFA-1.lh", images, [f"im{i}" for i in range(10)]),
            ImageSet("BrainDiVE", "S1", "PPA", [swatch(COLOURS["places"])] * 3, ["a", "b", "c"])]
    result = evaluate(sets, classifier)
    ffa = result.results[0]
    assert ffa.category == "faces" and (ffa.accuracy.correct, ffa.accuracy.n) == (7, 10)
    # Wilson 95% interval of 7/10, by hand: centre (p + z^2/2n)/(1 + z^2/n), half-width z sqrt(p(1-p)/n + z^2/4n^2)/(1 + z^2/n)
    assert (ffa.accuracy.low, ffa.accuracy.high) == pytest.approx((0.39678, 0.89221), abs=1e-5)
    ci = binomtest(7, 10).proportion_ci(0.95, method="wilson")
    assert (ffa.accuracy.low, ffa.accuracy.high) == pytest.approx((ci.low, ci.high), abs=1e-9)
    assert (result.results[1].accuracy.low, result.results[1].accuracy.high) == pytest.approx((0.43850, 1.0), abs=1e-5)
    confusion = result.confusion("BrainDiVE")
    assert confusion[CATS.index("faces")].tolist() == [7, 2, 0, 0, 1]
    assert confusion[CATS.index("places")].tolist() == [0, 3, 0, 0, 0] and confusion.sum() == 13
    row = result.table()[0]
    assert row["BrainDiVE accuracy %"] == 70.0 and row["BrainDiVE 95% CI"] == "39.7-89.2"


def test_accuracy_at_the_edges():
    zero = accuracy([False] * 4)
    assert zero.low == 0.0 and zero.high == pytest.approx(binomtest(0, 4).proportion_ci(method="wilson").high)
    with pytest.raises(ValueError, match="`n` must be >= 1"):
        accuracy([])


def test_roi_table_variants_and_bad_names(tmp_path):
    table = load_roi_table()
    assert [category_of(r, table) for r in ("FFA", "FFA-1", "OFA.rh", "VWFA-2.lh", "mTL-bodies", "RSC", "food",
                                            "FBA-2", "owfa")] == \
        ["faces", "faces", "faces", "words", "bodies", "places", "food", "bodies", "words"]
    with pytest.raises(ValueError, match="ROI 'V1' has no category"):
        category_of("V1", table)
    with pytest.raises(ValueError, match="has no category"):  # a contrast's label is no ROI: its Target has none
        category_of("PPA-vs-FFA", table)
    bad = tmp_path / "table.json"
    bad.write_text(json.dumps({"FFA": "faces", "LO": "objects"}))
    with pytest.raises(ValueError, match="category of 'LO' must be one of"):
        load_roi_table(bad)
    with pytest.raises(ValueError, match="`class_names` categories must be among"):
        ZeroShotConfig(class_names={"faces": ["face"], "cars": ["car"]})


def _result_folder(folder, subject, target, voxels, colours):
    folder.mkdir(parents=True, exist_ok=True)
    objective = bd.Objective.maximize(voxels, label=target).describe()
    for seed, colour in enumerate(colours):
        stem = folder / f"{subject}_{target}_seed{seed:06d}"
        swatch(colour).save(stem.with_suffix(".png"))
        stem.with_suffix(".json").write_text(json.dumps({"seed": seed, "subject": subject, "target": target,
                                                         "objective": objective}))
    return folder


TINY_SUBJECT = Subject(name="tiny", surface="S1", vertices=np.arange(64), n_vertices_lh=32, n_vertices=64,
                       rois={"FFA": np.arange(0, 8), "PPA": np.arange(8, 16)})


def _nsd_dataset(path):
    """A prepared-dataset file (the real format): FFA voxels respond to face swatches, PPA voxels to places."""
    from training.dataset import DatasetWriter, SplitSpec

    colours = [COLOURS[c] for c in ("bodies", "food", "faces", "places", "faces", "bodies", "places", "words")]
    pixels = np.stack([np.asarray(swatch(c, 16)) for c in colours])
    test = np.arange(2, 8)
    betas = np.zeros((len(test), 64), dtype=np.float32)
    for row, i in enumerate(test):
        betas[row, 0:8] = 2.0 if colours[i] == COLOURS["faces"] else 0.1 * row
        betas[row, 8:16] = 1.5 if colours[i] == COLOURS["places"] else -0.1 * row
    with DatasetWriter(path, subject=TINY_SUBJECT, image_ids=np.arange(8), image_names=[f"nsd-{i}" for i in range(8)],
                       image_shape=(16, 16), source="test", metadata={},
                       splits={"train": SplitSpec(np.arange(2), np.ones(2)), "test": SplitSpec(test, np.ones(6))}) as w:
        w.write_images(0, pixels)
        w.write_betas("train", slice(None), np.zeros((2, 64)))
        w.write_betas("test", slice(None), betas)
    return path


def test_cli_evaluate_against_nsd_and_encoder_ranked_natural_images(tmp_path, clip_config, capsys):
    ffa = _result_folder(tmp_path / "ffa", "tiny", "FFA", np.arange(0, 8),
                         [COLOURS["faces"]] * 3 + [COLOURS["words"]])
    ppa = _result_folder(tmp_path / "ppa", "tiny", "PPA", np.arange(8, 16), [COLOURS["places"], COLOURS["food"]])
    settings = tmp_path / "zeroshot.json"
    settings.write_text(json.dumps({**clip_config.to_dict(), "weights": "clip/tiny-clip.safetensors"}))
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "tiny-clip.safetensors").write_bytes(open(clip_config.weights, "rb").read())
    encoder = tiny_encoder(subject="tiny", seed=3)
    encoder.save(tmp_path / "encoder")
    natural = tmp_path / "natural"
    natural.mkdir()
    for k, (name, colour) in enumerate(COLOURS.items()):
        swatch(colour, 24 if k % 2 else 32).save(natural / f"{name}.png")  # two sizes: batched by size
    nsd = _nsd_dataset(tmp_path / "nsd.h5")
    out = tmp_path / "report"
    code = main(["evaluate", str(ffa), str(ppa), "--zeroshot-config", str(settings), "--nsd-dataset", str(nsd),
                 "--natural-folder", str(natural), "--encoder", str(tmp_path / "encoder"), "--top-n", "2",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    with open(out / "comparison.csv", newline="") as fh:
        rows = {r["target"]: r for r in csv.DictReader(fh)}  # targets as labelled everywhere
    assert rows["max FFA"]["BrainDiVE accuracy %"] == "75.0" and rows["max FFA"]["BrainDiVE n"] == "4"
    assert rows["max PPA"]["BrainDiVE accuracy %"] == "50.0"
    assert rows["max FFA"]["NSD top-2 (measured) accuracy %"] == "100.0"
    assert rows["max PPA"]["NSD top-2 (measured) accuracy %"] == "100.0"
    # the encoder's top-2 natural images, scored here one by one
    for target, voxels in (("FFA", np.arange(0, 8)), ("PPA", np.arange(8, 16))):
        with torch.no_grad():
            scores = {name: float(encoder(images_to_tensor([swatch(c, 24 if k % 2 else 32)]))[0, voxels].mean())
                      for k, (name, c) in enumerate(COLOURS.items())}
        top = sorted(scores, key=lambda n: -scores[n])[:2]
        expected = 100.0 * sum(category_of(target) == name for name in top) / 2
        assert float(rows[f"max {target}"]["top-2 by encoder (natural) accuracy %"]) == expected
    with open(out / "per_image.csv", newline="") as fh:
        per_image = list(csv.DictReader(fh))
    assert len(per_image) == 4 + 2 + 2 * 2 + 2 * 2
    assert (out / "evaluation.png").stat().st_size > 10_000
    assert json.loads((out / "evaluation.json").read_text())["settings"]["interval"] == "Wilson score"


def test_selection_errors(tmp_path, classifier):
    a = _result_folder(tmp_path / "a", "S1", "FFA", [1, 2], [COLOURS["faces"]])
    b = _result_folder(tmp_path / "b", "subj02", "FFA", [1, 2], [COLOURS["faces"]])
    with pytest.raises(ValueError, match=r"mixes subjects \(S1: .*; subj02: .*\)") as mixed:
        generated_sets([a, b])
    assert all(png.name in str(mixed.value) for png in [*a.glob("*.png"), *b.glob("*.png")])  # every image named
    with pytest.raises(ValueError, match="No generated images"):
        generated_sets([])
    next(a.glob("*.json")).unlink()
    with pytest.raises(ValueError, match="has no JSON record beside it"):
        generated_sets([a])
    with pytest.raises(ValueError, match="'deadbeef' is not a folder"):
        generated_sets(["deadbeef"])
    v1 = _result_folder(tmp_path / "v1", "S1", "V1", [1, 2], [COLOURS["faces"]])
    assert main(["evaluate", str(v1), "--zeroshot-config", "/nonexistent.json", "--out", str(tmp_path / "o")]) == 2


def test_catalog_ids_and_stored_evaluation(tmp_path, classifier):
    from braindive.catalog import Catalog

    catalog = Catalog(tmp_path / "catalog")
    record = {"created": "2026-01-01T00:00:00+00:00", "subject": "S1", "target": "EBA", "seed": 0,
              "objective": bd.Objective.maximize([3, 4]).describe(), "parameters": {}}
    ids = [catalog.add(swatch(c), {**record, "seed": k}).id for k, c in enumerate([COLOURS["bodies"], COLOURS["food"]])]
    sets = generated_sets(ids, catalog)
    assert [s.target for s in sets] == ["max EBA"] and sets[0].ids == ids and sets[0].category_roi == "EBA"
    result = evaluate(sets, classifier)
    path = store(result, catalog.root)
    assert path == tmp_path / "catalog" / "evaluations" / f"{result.id}.json"
    saved = stored(catalog.root)[0]
    assert saved["settings"]["zero_shot"]["model"] == classifier.config.model
    assert saved["results"][0]["predicted"] == ["bodies", "food"] and saved["results"][0]["correct"] == 1
    paths = write_report(result, tmp_path / "out")
    assert paths["plot"].is_file() and not list((tmp_path / "out").glob(".*tmp*"))


def test_classifier_from_a_model_object_matches_loading_it(classifier):
    from tiny_clip import build_model

    direct = ZeroShotClassifier(classifier.config, device="cpu", model=build_model())
    images = [swatch(c) for c in COLOURS.values()]
    np.testing.assert_allclose(direct.predict_proba(images), classifier.predict_proba(images), atol=1e-6)
    with pytest.raises(ValueError, match="need `weights`"):
        ZeroShotClassifier(ZeroShotConfig(model=classifier.config.model, pretrained=None,
                                          model_config=classifier.config.model_config))


def test_batch_evaluation_stage_classifies_each_job(tmp_path, clip_config):
    """The sweep's ``[evaluation]`` stage: one set per job, accuracy as constructed, stored in the catalog."""
    from braindive.catalog import Catalog
    from braindive.evaluation import evaluate_batch

    catalog = Catalog(tmp_path / "catalog")
    record = {"created": "2026-01-01T00:00:00+00:00", "subject": "S1", "seed": 0, "parameters": {}}
    jobs = {"demo/max FFA": ("FFA", "maximize", ["faces", "faces", "places"]),
            "demo/max PPA": ("PPA", "maximize", ["places", "food"]),
            "demo/min PPA": ("PPA", "minimize", ["places", "places"])}  # no category: left out, never scored as places
    groups = {label: [{"id": catalog.add(swatch(COLOURS[c]), {**record, "target": roi, "seed": k,
                                                              "objective": getattr(bd.Objective, kind)([1]).describe()}).id}
                      for k, c in enumerate(colours)]
              for label, (roi, kind, colours) in jobs.items()}
    out = evaluate_batch(catalog, groups, **clip_config.to_dict())
    rows = {row["target"]: row for row in out["table"]}
    assert set(rows) == {"max FFA", "max PPA"}
    assert rows["max FFA"]["demo/max FFA accuracy %"] == round(100 * 2 / 3, 1) and rows["max FFA"]["demo/max FFA n"] == 3
    assert rows["max PPA"]["demo/max PPA accuracy %"] == 50.0 and rows["max PPA"]["demo/max PPA n"] == 2
    assert [e["id"] for e in stored(catalog.root)] == [out["id"]]
    assert (catalog.root / "evaluations" / out["id"] / "comparison.csv").is_file()
    with pytest.raises(ValueError, match="unknown"):
        evaluate_batch(catalog, groups, classes=5)


@pytest.mark.parametrize("n", [5, 10, 13, 17])  # sizes whose Wilson bounds round past 0 or 1
def test_sets_at_zero_and_full_accuracy_evaluate_end_to_end(tmp_path, clip_config, capsys, n):
    from braindive.catalog import Catalog

    low, high = accuracy([False] * n), accuracy([True] * n)
    assert (low.low, high.high) == (0.0, 1.0)
    assert low.high == pytest.approx(binomtest(0, n).proportion_ci(method="wilson").high, abs=1e-12)
    catalog = Catalog(tmp_path / "catalog")
    record = {"created": "2026-01-01T00:00:00+00:00", "subject": "S1", "seed": 0, "parameters": {}}
    ids = [catalog.add(swatch(COLOURS["faces"]), {**record, "target": "FFA", "seed": k,  # faces for FFA: n of n
                                                  "objective": bd.Objective.maximize([1]).describe()}).id
           for k in range(n)]
    ids += [catalog.add(swatch(COLOURS["food"]), {**record, "target": "PPA", "seed": k,  # food for PPA: 0 of n
                                                  "objective": bd.Objective.maximize([2]).describe()}).id
            for k in range(n)]
    settings = tmp_path / "zeroshot.json"
    settings.write_text(json.dumps(clip_config.to_dict()))
    out = tmp_path / "report"
    code = main(["evaluate", *ids, "--catalog", str(catalog.root), "--zeroshot-config", str(settings), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    with open(out / "comparison.csv", newline="") as fh:
        rows = {r["target"]: r for r in csv.DictReader(fh)}
    assert (rows["max FFA"]["BrainDiVE accuracy %"], rows["max PPA"]["BrainDiVE accuracy %"]) == ("100.0", "0.0")
    assert (out / "evaluation.png").stat().st_size > 10_000 and len(stored(catalog.root)) == 1
