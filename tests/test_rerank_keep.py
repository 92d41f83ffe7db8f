"""Re-ranking in the workflow: ``generate --keep`` and the ranking API the app uses."""
import csv

import numpy as np
import PIL.Image
import pytest

import braindive as bd
from braindive.catalog import Catalog
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
