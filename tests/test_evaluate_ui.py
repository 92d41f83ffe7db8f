"""History's evaluation panel: CLIP table + stored evaluation, human-study ZIP, the offline weights message."""
import json
import zipfile

import gradio as gr
import pytest

import braindive as bd
from braindive.evaluation import ZeroShotConfig, load_classifier
from tiny_clip import COLOURS, swatch, tiny_config
from ui import history
from ui.evaluate import evaluate_selection, export_study_zip
from ui.service import Service
from ui.settings import Settings


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    svc = Service(Settings(data_dir=str(tmp_path_factory.mktemp("evalui"))))
    for k, (target, colour) in enumerate([("FFA", "faces"), ("FFA", "faces"), ("FFA", "food"), ("PPA", "places")]):
        record = {"created": f"2026-01-01T00:00:0{k}+00:00", "subject": "S1", "target": target, "seed": k,
                  "objective": bd.Objective.maximize([1, 2]).describe(), "parameters": {}}
        svc.catalog.add(swatch(COLOURS[colour]), record)
    return svc


def test_evaluate_selected_entries_stores_the_evaluation(service, tmp_path):
    ids = [e.id for e in service.catalog.query()]
    rows, columns, plot, evaluation = evaluate_selection(service, ids, tiny_config(tmp_path))
    table = {row[columns.index("target")]: dict(zip(columns, row)) for row in rows}
    assert table["max FFA"]["BrainDiVE accuracy %"] == pytest.approx(66.7) and table["max FFA"]["BrainDiVE n"] == 3
    assert table["max PPA"]["BrainDiVE accuracy %"] == 100.0
    stored = json.loads((service.catalog.root / "evaluations" / f"{evaluation.id}.json").read_text())
    assert stored["settings"]["zero_shot"]["weights"].endswith("tiny-clip.safetensors")
    assert sorted(stored["results"][0]["ids"]) == sorted(e.id for e in service.catalog.query(target="FFA"))
    assert plot.is_file() and plot.parent.name == evaluation.id


def test_export_human_study_zip(service):
    path = export_study_zip(service, [e.id for e in service.catalog.query()])
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    assert {"study/index.html", "study/trials.csv", "study/study.json"} <= set(names)
    assert sum(n.startswith("study/images/img_") for n in names) == 4
    with pytest.raises(ValueError, match="neither a folder of generated images nor an id"):
        export_study_zip(service, ["missing-id"])
    assert len(list(service.settings.exports_dir.iterdir())) == 1  # the failed export left nothing behind


def test_offline_demo_says_the_weights_are_needed(service):
    try:
        load_classifier(ZeroShotConfig())
    except RuntimeError as exc:
        assert "needs the OpenCLIP weights ViT-B-16/laion2b_s34b_b88k" in str(exc)
    else:
        pytest.skip("the real OpenCLIP weights are cached on this machine")
    with gr.Blocks():  # History mounts the panel
        history.build(service)


def test_history_study_export_shows_repeated_pairs_warning(service, monkeypatch):
    """3 FFA images × 1 PPA image give 3 distinct pairs, the default asks 10 per ROI: History's button warns."""
    from ui import evaluate

    with gr.Blocks() as blocks:
        selection, filters = gr.State([]), [gr.Textbox() for _ in range(5)]
        evaluate.build(service, selection, filters, lambda request, ids, *values: ids)
    (on_study,) = [d.fn for d in blocks.fns.values() if getattr(d.fn, "__name__", "") == "on_study"]
    shown = []
    monkeypatch.setattr(evaluate.gr, "Warning", shown.append)
    path = on_study([e.id for e in service.catalog.query()], "", "", "", "", "")
    assert path.endswith(".zip") and len(shown) == 2
    assert "FFA: 10 pair trials from 3 image(s) × 1 of other categories = 3 distinct pair(s)" in shown[0] + shown[1]
