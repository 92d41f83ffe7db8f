"""Human study: export (trial lists, counterbalancing, checks), the static page in Chromium, analysis."""
import csv
import json
import shutil
from pathlib import Path

import pytest

from braindive.cli import main
from braindive.evaluation.sets import generated_sets
from braindive.evaluation.study import StudyConfig, export_study, study_warnings
from braindive.targets import Target
from braindive.evaluation.study_analysis import analyze
from browser import CHROME_ARGS, CHROMIUM, playwright_or_skip
from tiny_clip import COLOURS, swatch

ROIS = {"FFA": "faces", "PPA": "places", "EBA": "bodies"}


def _results(root: Path, subject="S1", rois=ROIS, n=4, size=48, kind="maximize", spec=None) -> list[Path]:
    folders = []
    for roi, category in rois.items():
        folder = root / f"{kind}-{roi}"
        folder.mkdir(parents=True)
        for seed in range(n):
            stem = folder / f"{subject}_{roi}_seed{seed:06d}"
            swatch(COLOURS[category], size).save(stem.with_suffix(".png"))
            record = {"seed": seed, "subject": subject, "target": roi, "objective": {"kind": kind}}
            stem.with_suffix(".json").write_text(json.dumps({**record, **({"target_spec": spec} if spec else {})}))
        folders.append(folder)
    return folders


def test_minimised_and_contrast_images_are_no_category_stimuli(tmp_path):
    """A "min PPA" or "PPA − 0.5×FFA" image is not a places stimulus (nor the right answer to one): only maximised
    ROIs are exported, and none of their images is in the study."""
    config = StudyConfig(category_trials_per_roi=2, pair_trials_per_roi=2, attention_checks=0, seed=1)
    contrast = Target.contrast("PPA", "FFA", 0.5).to_dict()
    sets = generated_sets(_results(tmp_path / "max", rois={"FFA": "faces", "EBA": "bodies"})
                          + _results(tmp_path / "min", rois={"PPA": "places"}, kind="minimize")
                          + _results(tmp_path / "con", rois={"PPA": "places"}, kind="contrast", spec=contrast))
    assert sorted(s.target for s in sets) == ["PPA − 0.5×FFA", "max EBA", "max FFA", "min PPA"]
    folder = export_study(sets, tmp_path / "study", config)
    rows = list(csv.DictReader(open(folder / "trials.csv", newline="")))
    assert {r["roi"] for r in rows} == {"FFA", "EBA"} and "places" not in {r["category"] for r in rows}
    sources = {v["source"] for v in json.loads((folder / "study.json").read_text())["images"].values()}
    assert len(sources) == 8 and not any("_PPA_" in s for s in sources)  # 8 = FFA 4 + EBA 4
    with pytest.raises(ValueError, match="No images of a maximised ROI"):
        export_study(generated_sets(_results(tmp_path / "only-min", rois={"PPA": "places"}, kind="minimize")),
                     tmp_path / "study2", config)


def test_too_few_images_for_distinct_pairs_is_a_warning(tmp_path, capsys):
    """FFA 2 images × EBA 2 images = 4 distinct pairs each way: 5 pair trials repeat one, 4 do not."""
    results = _results(tmp_path / "r", rois={"FFA": "faces", "EBA": "bodies"}, n=2)
    config = StudyConfig(category_trials_per_roi=1, pair_trials_per_roi=4, attention_checks=0, seed=3)
    fine = export_study(generated_sets(results), tmp_path / "fine", config)
    assert study_warnings(fine) == []
    pairs = [(r["roi"], frozenset((r["image_a"], r["image_b"]))) for r in _trials(fine)[0] if r["kind"] == "pair"]
    assert len(pairs) == 8 and len(set(pairs)) == 8  # enough images: no pair shown twice
    assert main(["study", "export", *map(str, results), "--out", str(tmp_path / "few"), "--pair-trials", "5",
                 "--category-trials", "1", "--checks", "0"]) == 0
    out = capsys.readouterr().out
    for roi in ("FFA", "EBA"):
        assert (f"warning: {roi}: 5 pair trials from 2 image(s) × 2 of other categories = 4 distinct pair(s), "
                "so pairs repeat") in out
    assert len(study_warnings(tmp_path / "few")) == 2


def _trials(study: Path) -> dict[int, list[dict]]:
    with open(study / "trials.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {k: [r for r in rows if r["list"] == str(k)] for k in (0, 1)}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    config = StudyConfig(category_trials_per_roi=3, pair_trials_per_roi=4, attention_checks=2, seed=1,
                         completion_url="https://app.prolific.com/submissions/complete?cc=EXPORTED")
    return export_study(generated_sets(_results(root / "results")), root / "study", config)


def test_export_trial_lists_are_counterbalanced(study):
    lists = _trials(study)
    zero, one = lists[0], lists[1]
    assert len(zero) == 3 * 3 + 3 * 4 + 2 and [r["position"] for r in zero] == [str(i) for i in range(1, 24)]
    for roi in ROIS:
        pairs = [r for r in zero if r["kind"] == "pair" and r["roi"] == roi]
        assert sorted(r["correct"] for r in pairs) == ["a", "a", "b", "b"]  # correct side balanced per ROI
        assert len([r for r in zero if r["kind"] == "category" and r["roi"] == roi]) == 3
    for a, b in zip(zero, one):  # list 1 = list 0 with the pair sides mirrored
        assert a["trial_id"] == b["trial_id"]
        if a["kind"] == "pair":
            assert (b["image_a"], b["image_b"]) == (a["image_b"], a["image_a"]) and a["correct"] != b["correct"]
        else:
            assert a == {**b, "list": "0"}
    checks = [r for r in zero if r["kind"] == "attention"]
    assert [r["position"] for r in checks] == ["8", "16"] and all((study / "images" / r["image_a"]).is_file() for r in checks)
    meta = json.loads((study / "study.json").read_text())
    for r in zero:  # the image behind each trial belongs to the trial's ROI; names do not reveal it
        if r["kind"] == "category":
            assert meta["images"][r["image_a"]]["roi"] == r["roi"] and r["image_a"].startswith("img_")
        if r["kind"] == "pair":
            own = r["image_a"] if r["correct"] == "a" else r["image_b"]
            other = r["image_b"] if r["correct"] == "a" else r["image_a"]
            assert meta["images"][own]["roi"] == r["roi"] and ROIS[meta["images"][other]["roi"]] != r["category"]
    page = (study / "index.html").read_text()
    assert meta["study_id"] in page
    assert '"correct"' not in page and not any(roi in page for roi in ROIS)  # no answers in the page source


def test_export_bad_input(tmp_path):
    mixed = _results(tmp_path / "a", rois={"FFA": "faces"}) + _results(tmp_path / "b", "subj02", {"PPA": "places"})
    with pytest.raises(ValueError, match=r"mixes subjects \(S1: .*; subj02: .*\)"):
        export_study(generated_sets(mixed), tmp_path / "s")
    sizes = _results(tmp_path / "c", rois={"FFA": "faces"}) + _results(tmp_path / "d", rois={"PPA": "places"}, size=32)
    with pytest.raises(ValueError, match="is 32x32, the study's images are 48x48"):
        export_study(generated_sets(sizes), tmp_path / "s")
    assert not (tmp_path / "s").exists() and not list(tmp_path.glob(".s.*"))  # nothing half-written
    unknown = _results(tmp_path / "e", rois={"V1": "faces"})
    assert main(["study", "export", str(unknown[0]), "--out", str(tmp_path / "s")]) == 2
    with pytest.raises(ValueError, match="ROI 'V1' has no category"):
        export_study(generated_sets(unknown), tmp_path / "s")
    with pytest.raises(ValueError, match="`completion_url` must be an http"):
        StudyConfig(completion_url="prolific.com")


def _answer(trial: dict, fail_checks: bool) -> str:
    """The scripted participant: right on attention checks (unless told to fail) and on positions not divisible
    by 3; wrong otherwise."""
    wrong = trial["kind"] == "attention" and fail_checks or trial["kind"] != "attention" and int(trial["position"]) % 3 == 0
    if trial["kind"] == "pair":
        return {"a": "b", "b": "a"}[trial["correct"]] if wrong else trial["correct"]
    return ("food" if trial["correct"] != "food" else "faces") if wrong else trial["correct"]


def _run_participant(browser, study, pid, query, fail_checks, out: Path) -> tuple[Path, dict]:
    lists = _trials(study)
    page = browser.new_page()
    page.goto((study / "index.html").as_uri() + query)
    page.click("#start-button")
    answered = 0
    while page.locator("#trial.active").count():
        trial_id = page.get_attribute("#trial", "data-trial-id")
        number = json.loads(page.evaluate("JSON.stringify(state.list)"))
        trial = next(t for t in lists[number] if t["trial_id"] == trial_id)
        page.click(f"#trial button.choice[data-choice='{_answer(trial, fail_checks)}']")
        answered += 1
        if answered == 5:  # a reload resumes where the participant was (localStorage)
            page.reload()
            page.click("#start-button")
            assert page.get_attribute("#trial", "data-trial-id") == lists[number][5]["trial_id"]
    assert page.locator("#done.active").count() == 1
    links = {"complete": page.get_attribute("#complete", "href"), "hidden": page.locator("#complete-row").is_hidden()}
    with page.expect_download() as download:
        page.click("#download")
    path = out / f"{pid}.csv"
    download.value.save_as(path)
    page.close()
    return path, {"list": number, **links}


@pytest.mark.browser
def test_scripted_participants_in_chromium_and_analysis(study, tmp_path):
    sync_api = playwright_or_skip()
    responses = study / "responses"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROME_ARGS)
        try:
            good, info = _run_participant(browser, study, "P1", "?PROLIFIC_PID=P1&list=1&completion_url="
                                          "https%3A%2F%2Fapp.prolific.com%2Fsubmissions%2Fcomplete%3Fcc%3DXYZ",
                                          False, responses)
            bad, bad_info = _run_participant(browser, study, "P2", "?PROLIFIC_PID=P2", True, responses)
        finally:
            browser.close()
    assert info["list"] == 1 and info["complete"].endswith("cc=XYZ") and not info["hidden"]
    assert bad_info["complete"].endswith("cc=EXPORTED")  # the exported URL unless the URL parameter overrides it
    lists = _trials(study)
    with open(good, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["position"], r["trial_id"]) for r in rows] == [(t["position"], t["trial_id"]) for t in lists[1]]
    assert {r["participant"] for r in rows} == {"P1"} and all(int(r["rt_ms"]) >= 0 for r in rows)
    expected = {}
    for t in lists[1]:
        if t["kind"] != "attention":
            hit = _answer(t, False) == t["correct"]
            c, n = expected.get((t["roi"], t["kind"]), (0, 0))
            expected[(t["roi"], t["kind"])] = (c + hit, n + 1)
    assert main(["study", "analyze", str(good), str(bad)]) == 0
    with open(study / "analysis" / "per_roi.csv", newline="") as fh:
        got = {(r["roi"], r["kind"]): (int(r["correct"]), int(r["n"])) for r in csv.DictReader(fh)}
    assert got == expected  # P2 failed both checks and is excluded
    with open(study / "analysis" / "participants.csv", newline="") as fh:
        people = {r["participant"]: r for r in csv.DictReader(fh)}
    assert people["P2"]["excluded"] == "True" and people["P2"]["failed_checks"] == "2" and people["P1"]["excluded"] == "False"
    assert (study / "analysis" / "per_roi.png").stat().st_size > 5_000
    # bad response files
    lines = good.read_text().splitlines()
    truncated = tmp_path / "truncated.csv"
    truncated.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:-4])
    with pytest.raises(ValueError, match="truncated"):
        analyze(study, [truncated])
    shutil.copy(good, tmp_path / "copy.csv")
    with pytest.raises(ValueError, match="Participant id 'P1' appears in both"):
        analyze(study, [good, tmp_path / "copy.csv"])
    swapped = tmp_path / "swapped.csv"
    swapped.write_text("\n".join([lines[0], lines[2], lines[1], *lines[3:]]) + "\n")
    with pytest.raises(ValueError, match="position 2 is trial"):
        analyze(study, [swapped])
