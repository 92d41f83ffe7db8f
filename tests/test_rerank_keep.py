"""Re-ranking in the workflow: ``generate --keep`` and the ranking API the app uses."""
import csv

import numpy as np
import PIL.Image
import pytest

import braindive as bd
from braindive.catalog import Catalog
from braindive.catalog_export import export_zip
from braindive.cli import main
from braindive.rerank import rank_scores, score_images


@pytest.mark.parametrize("minimize", [False, True])
def test_generate_keep_catalogs_exactly_the_best_fraction_in_the_direction_asked(tmp_path, minimize):
    code = main(["generate", "--preset", "demo", "--roi", "FFA", "--n", "5", "--keep", "0.4", "--steps", "1",
                 "--height", "64", "--width", "64", "--seed", "3", "--no-baseline", "--out", str(tmp_path),
                 *(["--minimize"] if minimize else [])])
    assert code == 0
    (ranking,) = tmp_path.glob("runs/*/ranking.csv")
    with open(ranking, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(int(r["seed"]) for r in rows) == [3, 4, 5, 6, 7]
    measures = {int(r["seed"]): float(r["measure"]) for r in rows}
    # ceil(0.4 * 5) = 2: the highest FFA means, or the lowest after minimising FFA
    best_two = sorted(measures, key=lambda s: measures[s] if minimize else -measures[s])[:2]
    catalog = Catalog(tmp_path)
    entries = catalog.query()
    assert sorted(e.seed for e in entries) == sorted(best_two)
    assert {r["id"] for r in rows if r["kept"] == "1"} == {e.id for e in entries}
    for rank, seed in enumerate(best_two, start=1):
        record = catalog.record([e.id for e in entries if e.seed == seed][0])
        assert record["rerank"]["rank"] == rank and record["rerank"]["n_candidates"] == 5
        assert record["rerank"]["measure"] == pytest.approx(measures[seed]) == record["predicted_objective"]
    # the recorded measure is the encoder's FFA mean of the image (re-scored from the saved 8-bit PNG)
    demo = bd.demo.load()
    objective = bd.Objective.maximize(demo.subject.roi("FFA"))
    rescored = score_images([PIL.Image.open(e.image_path) for e in entries], demo.encoder, objective)
    np.testing.assert_allclose(rescored.numpy(), [measures[e.seed] for e in entries], rtol=0.02, atol=0.02)


def test_keep_must_be_a_fraction(tmp_path, capsys):
    assert main(["generate", "--keep", "1.5", "--out", str(tmp_path)]) == 2
    assert "`Keep fraction` must be a number from 0.001 to 1, got 1.5." in capsys.readouterr().err


def test_rank_scores_ranks_every_candidate_and_keeps_top_k():
    ranking = rank_scores([0.5, 2.0, -1.0, 2.0, 0.7], top_k=3)
    assert ranking.ranks == [4, 1, 5, 2, 3]  # tie at 2.0: the earlier candidate ranks first
    assert ranking.indices == [1, 3, 4] and ranking.scores == [2.0, 2.0, 0.7]
    assert ranking.kept == [False, True, False, True, True]
    assert rank_scores([1.0, 3.0, 2.0], keep=0.5).indices == [1, 2]  # ceil(1.5) = 2
    assert rank_scores([1.0] * 10, keep=0.2).indices == [0, 1]  # 0.2 * 10 is 2, not 3 by rounding
    with pytest.raises(ValueError, match="`top_k` must be an integer in \\[1, 3\\]"):
        rank_scores([1.0, 2.0, 3.0], top_k=4)
    with pytest.raises(ValueError, match="exactly one"):
        rank_scores([1.0], keep=None)
    with pytest.raises(ValueError, match="must be finite"):
        rank_scores([1.0, float("nan")])


def _manifest(catalog: Catalog, ids, path) -> dict:
    """The exported ``manifest.csv`` rows by id."""
    import zipfile

    export_zip(catalog, ids, path)
    with zipfile.ZipFile(path) as zf:
        return {r["id"]: r for r in csv.DictReader(zf.read("manifest.csv").decode().splitlines())}


def test_cli_manifest_carries_rank_and_kept(tmp_path):
    assert main(["generate", "--preset", "demo", "--roi", "FFA", "--n", "3", "--keep", "0.5", "--steps", "1",
                 "--height", "64", "--width", "64", "--no-baseline", "--out", str(tmp_path)]) == 0
    catalog = Catalog(tmp_path)
    ids = [e.id for e in catalog.query()]
    rows = _manifest(catalog, ids, tmp_path / "cli.zip")
    # ceil(0.5 * 3) = 2 kept and stored, ranked 1 and 2 by their FFA mean
    by_measure = sorted(ids, key=lambda i: -catalog.get(i).objective)
    assert [(rows[i]["rank"], rows[i]["kept"]) for i in by_measure] == [("1", "1"), ("2", "1")]


def test_explore_keep_best_records_rank_and_kept_in_records_and_manifest(tmp_path):
    """Explore's Generate (the handler the button calls): 3 images of "min PPA", keep the best 2."""
    from types import SimpleNamespace

    from service_support import demo_service
    from ui import build_app, explore

    service = demo_service(tmp_path / "data")
    blocks = build_app(service, service.settings)
    (run,) = [d.fn for d in blocks.fns.values() if getattr(d.fn, "__name__", "") == "run"]
    args = ["S1", "demo", {"target": "PPA", "voxels": [], "results": []}, "minimize", "EBA", 1.0, 20.0, 2, "dpm",
            5, 3, 2, "", "exact", explore.act.MAPS[0], explore.act.LIMITS[0]]
    for _ in run(*args, request=SimpleNamespace(session_hash="ui", username=None)):
        pass
    catalog = service.catalog
    entries = catalog.query()
    assert len(entries) == 3
    # independent expectation: the stored PPA mean of each image's predicted activity, lowest first
    ppa = service.subject("S1").roi("PPA")
    means = {e.id: float(catalog.activations(e.id)[ppa].mean()) for e in entries}
    order = sorted(means, key=means.get)
    for rank, entry_id in enumerate(order, start=1):
        rerank = catalog.record(entry_id)["rerank"]
        assert rerank == {"rank": rank, "n_candidates": 3, "measure": pytest.approx(means[entry_id], abs=1e-4),
                          "keep": 2, "kept": rank <= 2}
    rows = _manifest(catalog, order, tmp_path / "app.zip")
    assert [(rows[i]["rank"], rows[i]["kept"]) for i in order] == [("1", "1"), ("2", "1"), ("3", "0")]
    # the index still describes the same generation after the record was rewritten
    assert [catalog.get(i).label for i in order] == ["min PPA"] * 3
