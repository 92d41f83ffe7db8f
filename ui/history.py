"""History tab: browse the results catalog, filter, export a stimulus set as ZIP."""
from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import gradio as gr

from . import evaluate as evaluation_panel
from .service import Service

COLUMNS = ["id", "created", "subject", "target", "seed", "predicted objective", "scale", "steps", "encoder"]
KEEP_EXPORTS = 3  # newest export folders kept in ``Settings.exports_dir``; Gradio copies each file when serving it
EXPORT_NAME = "braindive-stimuli.zip"


def export_stimuli(service: Service, ids, keep: int = KEEP_EXPORTS) -> Path:
    """Write the ZIP of catalog entries ``ids`` to a new folder of ``exports_dir``; drop all but the newest ``keep``.

    Each export gets its own folder (named by time, so they sort oldest first) so that two users exporting at
    once never overwrite each other's file; older folders are removed, so disk use stays bounded.
    """
    root = service.settings.exports_dir
    root.mkdir(parents=True, exist_ok=True)
    now = time.time_ns()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now // 10**9))
    folder = root / f"{stamp}-{now % 10**9:09d}-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    try:
        path = service.catalog.export_zip(ids, folder / EXPORT_NAME)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    for old in sorted(p for p in root.iterdir() if p.is_dir())[:-max(1, keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def build(service: Service) -> None:
    with gr.Row():
        subject = gr.Dropdown([""], value="", label="Subject (any)", allow_custom_value=True, elem_id="history-subject")
        target = gr.Dropdown([""], value="", label="Target (any)", allow_custom_value=True, elem_id="history-target")
        since = gr.Textbox(label="From (YYYY-MM-DD)", placeholder="2026-01-01")
        until = gr.Textbox(label="To (YYYY-MM-DD)")
        refresh = gr.Button("Refresh", elem_id="history-refresh")
    gallery = gr.Gallery(label="Generated images", columns=8, height=300, elem_id="history-gallery", format="png",
                         fit_columns=False, object_fit="contain")
    table = gr.Dataframe(headers=COLUMNS, label="Entries", elem_id="history-table", interactive=False)
    with gr.Row():
        chosen = gr.Dropdown([], multiselect=True, label="Export selection (empty = all shown)", elem_id="history-selection")
        export = gr.Button("Export ZIP (images + metadata + manifest.csv)", elem_id="history-export")
        zip_file = gr.File(label="Stimulus set", elem_id="history-zip")

    def load(subj, tgt, start, end, request: gr.Request = None):
        owner = service.history_owner(request)
        entries = service.catalog.query(subject=subj or None, target=tgt or None, since=start or None, until=end or None,
                                        owner=owner)
        rows = [[e.id, e.created, e.subject, e.target, e.seed, None if e.objective is None else round(e.objective, 4),
                 e.guidance_scale, e.steps, e.encoder]
                for e in entries]
        images = [(str(e.image_path), f"{e.target} · seed {e.seed}") for e in entries]
        ids = [e.id for e in entries]
        return (images, rows, gr.update(choices=ids, value=[]),
                gr.update(choices=[""] + service.catalog.distinct("subject", owner=owner)),
                gr.update(choices=[""] + service.catalog.distinct("target", owner=owner)))

    filters = [subject, target, since, until]
    outputs = [gallery, table, chosen, subject, target]
    refresh.click(load, filters, outputs)

    def export_zip(subj, tgt, start, end, ids, request: gr.Request = None):
        owner = service.history_owner(request)
        if not ids:
            ids = [e.id for e in service.catalog.query(subject=subj or None, target=tgt or None, since=start or None,
                                                       until=end or None, owner=owner)]
        elif owner is not None:  # only one's own results, whatever ids a caller sends
            ids = [i for i in ids if i in {e.id for e in service.catalog.query(owner=owner, limit=10**9)}]
        if not ids:
            raise gr.Error("Nothing to export: no entries match the filters.")
        try:
            return str(export_stimuli(service, ids))
        except (KeyError, ValueError, OSError) as exc:  # e.g. an entry removed from the catalog meanwhile
            raise gr.Error(f"Export failed: {exc}")

    export.click(export_zip, [*filters, chosen], zip_file)
    evaluation_panel.build(service, chosen, filters, lambda s, t, a, b: service.catalog.query(
        subject=s or None, target=t or None, since=a or None, until=b or None))
    return {"refresh": (load, filters, outputs)}
