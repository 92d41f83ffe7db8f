"""Train tab: fit and evaluate an encoder in a background process, then use it in Explore."""
from __future__ import annotations

import json
import time
from pathlib import Path

import gradio as gr

from .service import Service, ServiceError
from .updates import unchanged

# label -> (dataset kind, the built-in subject a synthetic dataset is drawn on)
DATASETS = {"Synthetic demo subject (S1)": ("synthetic", "S1"),
            "Synthetic demo subject (S1-fullhead, volume)": ("synthetic", "S1-fullhead"),
            "Prepared NSD subject (.h5)": ("nsd", "S1"), "Generic image folder dataset (.h5)": ("generic", "S1")}


# scrolls the log box to its last line once the page has drawn it (also when the Train tab is opened: a hidden box
# has no height to scroll)
FOLLOW_LOG_JS = ("() => { setTimeout(() => { const box = document.querySelector('#train-log textarea'); "
                 "if (box) box.scrollTop = box.scrollHeight; }, 100); }")


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


def overall_percent(step: int, n_steps: int, done: bool = False) -> int:
    """Share of the job's commands that have finished (the running one, 1-based ``step``, has not): 100 only when done.

    A command's own progress bars are not used: one command shows several bars, each from 0 to 100.
    """
    if done:
        return 100
    if n_steps < 1 or step < 1:
        return 0
    return int((step - 1) / n_steps * 100)


def progress_text(state, now: float | None = None) -> str:
    """The job's stage as people read it: ``step 2/3: train encoder · 1 of 3 steps done (33%) · 41 s``."""
    elapsed = round(((state.finished or now or time.time()) - state.started))
    done = state.status == "done"
    finished_steps = state.n_steps if done else max(state.step - 1, 0)
    stage = f"step {state.step}/{state.n_steps}: {state.step_name}" if state.step else "starting"
    return (f"**{state.title}** — {state.status} · {stage} · {finished_steps} of {state.n_steps} steps done "
            f"({overall_percent(state.step, state.n_steps, done)}%) · {elapsed} s")


def build(service: Service, explore: dict) -> dict:
    """Build the tab; returns the page-load handler that shows the latest job (``restore``)."""
    gr.Markdown("Fit a CLIP + linear encoder with voxelwise ridge regression (himalaya), then evaluate it on the "
                "held-out test images. Runs as a background process; the app stays usable. The synthetic demo subject "
                "is the simulated brain the demo encoder was fit on (S1, the demo's tiny tower with fixed random "
                "weights), so an encoder trained on it agrees with `demo`; on S1-fullhead the same ROI tuning lives on "
                "the volume voxels of S1's `fullhead` transform (Explore's `demo-fullhead`).")
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
    timer = gr.Timer(1.0, active=False)

    def launch(kind, file, enc_name, n, folds, bb, tag):
        dataset_kind, subject = DATASETS[kind]
        try:
            job = service.start_training(dataset_kind, file, enc_name, n_train=int(n), n_test=max(100, int(n) // 4),
                                         backbone=bb, pretrained=tag, cv=int(folds), subject=subject)
        except ServiceError as exc:
            raise gr.Error(str(exc))
        return job.state.id, f"Started **{job.state.title}**…", gr.Timer(active=True), None, None

    start.click(launch, [dataset, path, name, n_train, cv, backbone, pretrained],
                [job_id, status, timer, r2_map, table])
    refresh_lists = explore["refresh"][0]

    def job_view(job) -> tuple[dict, str]:
        """Status, log and (for a finished job) its R² map and table; and what went wrong, if anything."""
        s = job.state
        text = progress_text(s)
        update = {status: text, log_box: job.log_tail()}
        if job.running:
            return update, ""
        update[timer] = gr.Timer(active=False)
        if s.status != "done":
            problem = f"Training job {s.status}{f' ({s.error})' if s.error else ''}; see the log."
            return {**update, status: f"{text}\n\n{problem}"}, problem
        try:
            png, rows, summary = _report_outputs(job)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:  # report missing or malformed
            problem = f"The job finished but its evaluation report could not be read ({type(exc).__name__}: {exc})."
            return {**update, status: f"{text}\n\n{problem}"}, problem
        done = f"{text}\n\n{summary} Encoder **{s.outputs['encoder']}** is now selectable in Explore."
        return {**update, status: done, r2_map: png, table: rows}, ""

    def poll(jid, subj, enc):
        job = service.jobs.get(jid)
        if job is None:
            return {timer: gr.Timer(active=False)}
        update, problem = job_view(job)
        if problem:
            gr.Warning(problem)  # once: the timer stops here
        if job.running or problem:
            return update
        subjects, encoders = refresh_lists(subj, enc)
        return {**update, explore["subject"]: subjects, explore["encoder"]: encoders}

    # follow the log's last line (Gradio's autoscroll does not, for a value set by the server): scroll once it is drawn
    log_box.change(None, None, None, js=FOLLOW_LOG_JS)
    timer.tick(poll, [job_id, explore["subject"], explore["encoder"]],
               [status, log_box, r2_map, table, timer, explore["subject"], explore["encoder"]])

    def restore():
        """After a page load: the latest job as it is now (still running: polled again; finished: its results)."""
        jobs = sorted(service.jobs.values(), key=lambda job: job.state.started)
        if not jobs:
            return unchanged(outputs)
        job = jobs[-1]
        return {job_id: job.state.id, **job_view(job)[0], timer: gr.Timer(active=job.running)}

    outputs = [job_id, status, log_box, r2_map, table, timer]

    def stop(jid):
        job = service.jobs.get(jid)
        if job is None or not job.running:
            return "No running job."
        job.cancel()
        return "Cancelling…"

    cancel.click(stop, job_id, status, queue=False)
    return {"restore": (restore, None, outputs)}
