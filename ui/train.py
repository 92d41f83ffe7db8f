"""Train tab: fit and evaluate an encoder in a background process, then use it in Explore."""
from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

from .service import Service, ServiceError

DATASETS = {"Synthetic demo subject (S1)": "synthetic", "Prepared NSD subject (.h5)": "nsd",
            "Generic image folder dataset (.h5)": "generic"}


def _report_outputs(job):
    """R^2 flatmap path and per-ROI rows from a finished job's report."""
    report_dir = Path(job.state.outputs["report"])
    report = json.loads((report_dir / "report.json").read_text())
    rows = [[name, r["n_voxels"], *(None if r[k] is None else round(r[k], 3)
                                    for k in ("median_r2", "median_r", "median_r2_normalized"))]
            for name, r in report["rois"].items()]
    png = report_dir / "r2_flatmap.png"
    summary = (f"Test R² median {report['r2']['median']:.3f}, Pearson r median {report['pearson_r']['median']:.3f} "
               f"over {report['n_voxels']} voxels and {report['n_test']} test images.")
    return (str(png) if png.is_file() else None), rows, summary


def overall_percent(step: int, n_steps: int, step_percent: int) -> int:
    """Progress of the whole job from the running command's index (1-based) and its own percentage."""
    if n_steps < 1 or step < 1:
        return 0
    return int((step - 1 + min(max(step_percent, 0), 100) / 100) / n_steps * 100)


def build(service: Service, explore: dict) -> None:
    gr.Markdown("Fit a CLIP + linear encoder with voxelwise ridge regression (himalaya), then evaluate it on the "
                "held-out test images. Runs as a background process; the app stays usable. The synthetic demo subject "
                "is the simulated brain the demo encoder was fit on (S1, the demo's tiny tower with fixed random "
                "weights), so an encoder trained on it agrees with `demo`.")
    with gr.Row():
        with gr.Column():
            dataset = gr.Radio(list(DATASETS), value=list(DATASETS)[0], label="Dataset", elem_id="train-dataset")
            path = gr.Textbox(label="Dataset file (.h5 from training.prepare_nsd / prepare_generic)",
                              placeholder="outputs/nsd/subj01.h5")
            name = gr.Textbox(label="Encoder name", placeholder="my-encoder", elem_id="train-name")
            with gr.Row():
                n_train = gr.Slider(100, 3000, value=300, step=100, label="Synthetic training images")
                cv = gr.Slider(2, 10, value=5, step=1, label="Cross-validation folds")
            with gr.Row():
                backbone = gr.Textbox(value="braindive-tiny-vit", label="Backbone (ViT-B-16 for real data)")
                pretrained = gr.Textbox(value="none", label="Pretrained tag (laion2b_s34b_b88k for real data)")
            with gr.Row():
                start = gr.Button("Train + evaluate", variant="primary", elem_id="train-start")
                cancel = gr.Button("Cancel", variant="stop", elem_id="train-cancel")
        with gr.Column():
            status = gr.Markdown("No training job yet.", elem_id="train-status")
            log_box = gr.Textbox(label="Log (tail)", lines=14, max_lines=14, interactive=False, elem_id="train-log")
    with gr.Row():
        r2_map = gr.Image(label="Test R² on the flatmap", interactive=False, elem_id="train-r2")
        table = gr.Dataframe(headers=["ROI", "voxels", "median R²", "median r", "median R²/ceiling"],
                             label="Per-ROI medians", elem_id="train-table")
    job_id = gr.State(None)
    shown_percent = gr.State(0)  # overall progress shown so far: it only moves forward
    timer = gr.Timer(1.0, active=False)

    def launch(kind, file, enc_name, n, folds, bb, tag):
        try:
            job = service.start_training(DATASETS[kind], file, enc_name, n_train=int(n), n_test=max(100, int(n) // 4),
                                         backbone=bb, pretrained=tag, cv=int(folds))
        except ServiceError as exc:
            raise gr.Error(str(exc))
        return job.state.id, f"Started **{job.state.title}**…", gr.Timer(active=True)

    start.click(lambda *a: (*launch(*a), 0), [dataset, path, name, n_train, cv, backbone, pretrained],
                [job_id, status, timer, shown_percent])
    refresh_lists = explore["refresh"][0]

    def poll(jid, subj, enc, shown):
        job = service.jobs.get(jid)
        if job is None:
            return {timer: gr.Timer(active=False)}
        s = job.state
        shown = max(shown, 100 if s.status == "done" else overall_percent(s.step, s.n_steps, s.percent))
        text = f"**{s.title}** — {s.status} · step {s.step}/{s.n_steps} ({s.step_name}) · {shown}% overall"
        update = {status: text, log_box: job.log_tail(), shown_percent: shown}
        if job.running:
            return update
        update[timer] = gr.Timer(active=False)
        if s.status != "done":
            gr.Warning(f"Training job {s.status}{f' ({s.error})' if s.error else ''}; see the log.")
            return update
        try:
            png, rows, summary = _report_outputs(job)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:  # report missing or malformed
            message = f"The job finished but its evaluation report could not be read ({type(exc).__name__}: {exc})."
            gr.Warning(message)  # once: the timer stops here
            return {**update, status: f"{text}\n\n{message}"}
        subjects, encoders = refresh_lists(subj, enc)
        done = f"{text}\n\n{summary} Encoder **{s.outputs['encoder']}** is now selectable in Explore."
        return {**update, status: done,
                r2_map: png, table: rows, explore["subject"]: subjects, explore["encoder"]: encoders}

    timer.tick(poll, [job_id, explore["subject"], explore["encoder"], shown_percent],
               [status, log_box, r2_map, table, timer, shown_percent, explore["subject"], explore["encoder"]])

    def stop(jid):
        job = service.jobs.get(jid)
        if job is None or not job.running:
            return "No running job."
        job.cancel()
        return "Cancelling…"

    cancel.click(stop, job_id, status, queue=False)
