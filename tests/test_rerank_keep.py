"""Re-ranking in the workflow: ``generate --keep`` and the ranking API the app uses."""
import csv
import json

import numpy as np
import PIL.Image
import pytest

import braindive as bd
from braindive.cli import main
from braindive.rerank import rank_scores, score_images


def test_generate_keep_writes_exactly_the_top_fraction_by_recorded_score(tmp_path):
    code = main(["generate", "--preset", "demo", "--roi", "FFA", "--n", "5", "--keep", "0.4", "--steps", "1",
                 "--height", "64", "--width", "64", "--seed", "3", "--out", str(tmp_path)])
    assert code == 0
    with open(tmp_path / "ranking.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(int(r["seed"]) for r in rows) == [3, 4, 5, 6, 7]
    scores = {int(r["seed"]): float(r["score"]) for r in rows}
    best_two = sorted(scores, key=lambda s: -scores[s])[:2]  # ceil(0.4 * 5) = 2
    pngs = sorted(tmp_path.glob("*.png"))
    assert sorted(int(p.stem[-6:]) for p in pngs) == sorted(best_two)
    assert {r["file"] for r in rows if r["kept"] == "1"} == {p.name for p in pngs}
    for rank, seed in enumerate(best_two, start=1):
        record = json.loads((tmp_path / f"S1_FFA_seed{seed:06d}.json").read_text())
        assert record["rerank"]["rank"] == rank and record["rerank"]["n_candidates"] == 5
        assert record["rerank"]["score"] == pytest.approx(scores[seed]) == record["predicted_objective"]
    # the recorded score is the encoder's objective of the image (re-scored from the saved 8-bit PNG)
    demo = bd.demo.load()
    objective = bd.Objective.maximize(demo.subject.roi("FFA"))
    rescored = score_images([PIL.Image.open(p) for p in pngs], demo.encoder, objective)
    np.testing.assert_allclose(rescored.numpy(), [scores[int(p.stem[-6:])] for p in pngs], rtol=0.02, atol=0.02)


def test_keep_must_be_a_fraction(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--keep", "1.5", "--out", str(tmp_path)])
    assert "must be a fraction in (0, 1]" in capsys.readouterr().err


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
