"""History's evaluation panel: CLIP 5-way zero-shot table + confusion chart of the selected results, and a
human-study export (ZIP). Evaluations are stored with their settings in ``<catalog>/evaluations/``."""
from __future__ import annotations

import logging
import shutil
import time
import uuid
from pathlib import Path

import gradio as gr

from braindive.evaluation import ZeroShotConfig
from braindive.evaluation.zeroshot import weights_unavailable
from braindive.evaluation.sets import generated_sets
from braindive.evaluation.study import StudyConfig, export_study, study_warnings, zip_folder

from .service import Service

__all__ = ["build", "evaluate_selection", "export_study_zip", "WEIGHTS_NOTE"]

log = logging.getLogger(__name__)
STUDY_ZIP = "braindive-study.zip"
WEIGHTS_NOTE = ("CLIP zero-shot classification needs the OpenCLIP weights {model} / {pretrained}, downloaded from "
                "the Hugging Face Hub on first use (about 600 MB). They are not part of the offline demo: without "
                "network access (and no cached copy) the evaluation cannot run. The human-study export works offline.")


def evaluate_selection(service: Service, ids: list[str], config: ZeroShotConfig | None = None):
    """Classify the catalog entries ``ids`` through the service (cached classifier, GPU task), stored in the catalog;
    return (table rows, columns, plot path, evaluation)."""
    evaluation, paths = service.evaluate(ids, config)
    table = evaluation.table()
    return [list(row.values()) for row in table], list(table[0]), paths["plot"], evaluation


def new_export_folder(root: Path) -> Path:
    """A new, uniquely named folder of ``root`` (time-ordered, so History's cleanup of old exports applies)."""
    root.mkdir(parents=True, exist_ok=True)
    now = time.time_ns()
    folder = root / f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now // 10**9))}-{now % 10**9:09d}-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    return folder


def export_study_zip(service: Service, ids: list[str], config: StudyConfig | None = None) -> Path:
    """A study folder for the entries ``ids`` zipped into a new folder of ``exports_dir`` (History's cleanup applies)."""
    folder = new_export_folder(service.settings.exports_dir)
    try:
        study = export_study(generated_sets(ids, service.catalog), folder / "study", config)
        return zip_folder(study, folder / STUDY_ZIP)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def build(service: Service, selection, filters: list, chosen_ids) -> None:
    """Mount the panel under History's table.

    ``filters`` are History's (subject, label, since, until, encoder); ``chosen_ids(request, selection, *filters)``:
    the ids to use, those of the selection this visitor may see, or (empty selection) every entry the filters show.
    """
    config = ZeroShotConfig()
    unavailable = weights_unavailable(config)  # checked once: the button is off when the evaluation cannot run
    with gr.Accordion("Evaluate selection: CLIP 5-way zero-shot, human study", open=False, elem_id="evaluate-panel"):
        note = WEIGHTS_NOTE.format(model=config.model, pretrained=config.pretrained)
        off = f"**Evaluate is off:** {unavailable}. " if unavailable else ""
        gr.Markdown(off + ("**Demo:** " if service.preset == "demo" else "") + note, elem_id="evaluate-note")
        with gr.Row():
            run = gr.Button("Evaluate selected (CLIP 5-way)", elem_id="evaluate-run", interactive=not unavailable)
            study = gr.Button("Export human study (ZIP)", elem_id="evaluate-study")
        # shown once there are results: an empty table would show placeholder headers
        table = gr.Dataframe(label="Accuracy per target (% classified as the ROI's category, Wilson 95% CI)",
                             interactive=False, elem_id="evaluate-table", visible=False)
        chart = gr.Image(label="Accuracy and confusion matrix", type="filepath", elem_id="evaluate-chart",
                         visible=False)
        study_file = gr.File(label="Human study (open index.html; Prolific: ?PROLIFIC_PID=...&completion_url=...)",
                             elem_id="evaluate-study-zip")

    def chosen(ids, values, request):
        ids = chosen_ids(request, ids, *values)
        if not ids:
            raise gr.Error("Nothing selected: no entries match the filters.")
        return ids

    def on_run(ids, subj, label, since, until, encoder, request: gr.Request = None):
        values = (subj, label, since, until, encoder)
        try:
            rows, columns, plot, _ = evaluate_selection(service, chosen(ids, values, request), config)
        except RuntimeError as exc:  # the OpenCLIP weights could not be loaded: the Hub's own error goes to the log
            log.warning("CLIP evaluation could not load its weights: %s", exc)
            raise gr.Error(note)
        except (KeyError, ValueError, OSError) as exc:
            raise gr.Error(f"Evaluation failed: {exc}")
        return gr.update(value=rows, headers=columns, visible=True), gr.update(value=str(plot), visible=True)

    def on_study(ids, subj, label, since, until, encoder, request: gr.Request = None):
        values = (subj, label, since, until, encoder)
        try:
            path = export_study_zip(service, chosen(ids, values, request))
            for warning in study_warnings(path.parent / "study"):
                gr.Warning(f"Study exported with a warning: {warning}")
            return str(path)
        except (KeyError, ValueError, OSError) as exc:
            raise gr.Error(f"Study export failed: {exc}")

    run.click(on_run, [selection, *filters], [table, chart], concurrency_id="gpu")
    study.click(on_study, [selection, *filters], study_file)
