"""Explore tab: pick a region on the flatmap, generate, watch the denoising, inspect predicted activity."""
from __future__ import annotations

import random

import gradio as gr
import numpy as np

from .charts import roi_chart
from .service import CUSTOM, OBJECTIVES, Finished, GenerationRequest, ImageResult, Progress, Service, ServiceError, Waiting

CLICK_MODES = ("Select ROI", "Grow voxel set")


def _selection_text(state: dict) -> str:
    if state["target"] == CUSTOM:
        return f"**Selected:** custom voxel set ({len(state['voxels'])} voxels)"
    return f"**Selected:** {state['target']}"


def _highlight(state: dict):
    return np.asarray(state["voxels"], dtype=np.int64) if state["target"] == CUSTOM else state["target"]


def _no_subject_error(service: Service) -> ServiceError:
    """Why no encoder can be used: each encoder with the reason its subject cannot be loaded."""
    reasons = []
    for name in service.encoder_names():
        try:
            service.subject_of(name)
        except ServiceError as exc:
            reasons.append(f"encoder {name!r}: {exc}")
    found = "; ".join(reasons) if reasons else "no encoder is configured"
    return ServiceError(
        f"No encoder whose subject can be loaded ({found}). Pass --subject SUBJECT.npz (for a prepared NSD subject, "
        "the .subject.npz that training.prepare_nsd wrote beside the dataset) or use an encoder trained with "
        "`python -m training.train_encoder`, which records its subject file.")


def build(service: Service, settings) -> dict:
    """Build the tab inside the current Blocks; returns components other tabs refresh.

    Raises ``ServiceError`` when no encoder's subject can be loaded (nothing to explore).
    """
    subjects = service.subject_names()
    encoders0 = service.encoders_for(subjects[0]) if subjects else []
    if not encoders0:
        raise _no_subject_error(service)
    subject0 = subjects[0]
    roi_names = service.subject(subject0).roi_names
    defaults = service.backend().defaults
    first = {"target": "FFA" if "FFA" in roi_names else roi_names[0], "voxels": [], "results": []}

    with gr.Row():
        with gr.Column(scale=3):
            with gr.Row():
                subject = gr.Dropdown(subjects, value=subject0, label="Subject", elem_id="subject")
                encoder = gr.Dropdown(encoders0, value=encoders0[0], label="Encoder", elem_id="encoder")
            flatmap = gr.Image(service.flatmap(subject0, highlight=first["target"]), label="Cortical flatmap — click a region",
                               interactive=False, elem_id="flatmap", buttons=["fullscreen"])
            with gr.Row():
                click_mode = gr.Radio(CLICK_MODES, value=CLICK_MODES[0], label="Clicking", elem_id="click-mode")
                radius = gr.Slider(1, 20, value=6, step=1, label="Grow radius (mm)")
            with gr.Row():
                selection = gr.Markdown(_selection_text(first), elem_id="selection")
                roi = gr.Dropdown(roi_names, value=first["target"], label="…or choose an ROI", elem_id="roi-list")
                clear = gr.Button("Clear voxel set", size="sm")
            with gr.Accordion("Paint a voxel set", open=False):
                painter = gr.ImageEditor(value=service.flatmap(subject0, rois=True), type="numpy", label="Paint on cortex",
                                         brush=gr.Brush(colors=["#ffd400"], default_size=14), layers=False,
                                         transforms=(), sources=(), elem_id="painter")
                use_paint = gr.Button("Use painted area", size="sm")
        with gr.Column(scale=2):
            objective = gr.Radio(list(OBJECTIVES), value="maximize", label="Objective", elem_id="objective")
            with gr.Row():
                contrast = gr.Dropdown(roi_names, value=roi_names[0], label="Contrast against (B)")
                weight = gr.Slider(0, 3, value=1.0, step=0.1, label="Weight of B")
            scale = gr.Number(value=defaults["brain_guidance_scale"], label="Brain guidance scale", elem_id="scale")
            steps = gr.Slider(1, settings.max_steps, value=defaults["num_inference_steps"], step=1, label="Steps", elem_id="steps")
            with gr.Row():
                scheduler = gr.Dropdown(["dpm", "ddim", "pndm", "lms", "euler"], value="dpm", label="Scheduler")
                seed = gr.Number(value=0, precision=0, minimum=0, maximum=2**31 - 1, label="Seed", elem_id="seed")
                dice = gr.Button("Random seed", size="sm", min_width=80)
            n_images = gr.Slider(1, settings.max_images, value=1, step=1, label="Images", elem_id="n-images")
            mode = gr.Radio(["exact", "fast"], value="exact", label="Guidance computation", elem_id="mode",
                            info="exact: the published computation (same numbers, batched); fast: no UNet backprop, "
                                 "gradient every 2nd step (kept 92% of the gain on the demo model, ~2x faster)")
            prompt = gr.Textbox(value="", label="Prompt (optional; the paper uses none)", max_length=300)
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id="generate")
                stop = gr.Button("Stop", variant="stop", elem_id="stop")
            step_counter = gr.Markdown("Idle.", elem_id="step-counter")
            preview = gr.Image(label="Denoising preview (predicted clean image)", interactive=False, elem_id="preview",
                               format="png", height=280)
    gallery = gr.Gallery(label="Results — click an image to inspect it", columns=8, height=240, elem_id="gallery",
                         format="png", fit_columns=False, object_fit="contain", allow_preview=False)
    with gr.Row():
        activation_map = gr.Image(label="Predicted activation (selected image)", show_label=False, interactive=False,
                                  elem_id="activation-map")
        with gr.Column():
            chart = gr.Plot(label="Per-ROI prediction vs unguided baseline", elem_id="roi-chart")
            files = gr.File(label="Download PNG + metadata JSON", file_count="multiple", elem_id="downloads")
    state = gr.State(first)

    # ------------------------------------------------------------ selection
    def select_on_map(subj, mode, rad, st, evt: gr.SelectData):
        index = getattr(evt, "index", None)
        if not isinstance(index, (list, tuple)) or len(index) != 2:
            raise gr.Error(f"A flatmap click needs the click position [x, y] in pixels, got {index!r}.")
        x, y = index
        hit = service.pick(subj, x, y, service.flatmap_shape(subj))
        if hit is None:
            gr.Info("That point is outside the cortex.")
            return gr.skip(), gr.skip(), gr.skip(), st
        if mode == CLICK_MODES[0]:
            if not hit.rois:
                gr.Info(f"No ROI at that point ({hit.hemisphere}); switch to 'Grow voxel set' to build a custom set.")
                return gr.skip(), gr.skip(), gr.skip(), st
            st = {**st, "target": hit.rois[0], "voxels": []}
            roi_value = hit.rois[0]
        else:
            if hit.voxel is None:
                gr.Info("That point has no voxel of this subject; click inside the coloured region.")
                return gr.skip(), gr.skip(), gr.skip(), st
            grown = service.grow(subj, hit.voxel, rad)
            st = {**st, "target": CUSTOM, "voxels": sorted(set(st["voxels"]) | set(grown.tolist()))}
            roi_value = gr.skip()
        return service.flatmap(subj, highlight=_highlight(st)), _selection_text(st), roi_value, st

    flatmap.select(select_on_map, [subject, click_mode, radius, state], [flatmap, selection, roi, state])

    def choose_roi(subj, name, st):
        if not name or (st["target"] == name):
            return gr.skip(), gr.skip(), st
        st = {**st, "target": name, "voxels": []}
        return service.flatmap(subj, highlight=name), _selection_text(st), st

    roi.input(choose_roi, [subject, roi, state], [flatmap, selection, state])

    def clear_set(subj, name, st):
        st = {**st, "target": name, "voxels": []}
        return service.flatmap(subj, highlight=name), _selection_text(st), st

    clear.click(clear_set, [subject, roi, state], [flatmap, selection, state])

    def use_painted(subj, edited, st):
        if edited is None or edited.get("layers") is None and edited.get("composite") is None:
            raise gr.Error("Paint on the flatmap first.")
        mask = _painted_mask(edited)
        try:
            voxels = service.painted_voxels(subj, mask)
        except ServiceError as exc:
            raise gr.Error(str(exc))
        st = {**st, "target": CUSTOM, "voxels": sorted(set(st["voxels"]) | set(voxels.tolist()))}
        return service.flatmap(subj, highlight=_highlight(st)), _selection_text(st), st

    use_paint.click(use_painted, [subject, painter, state], [flatmap, selection, state])

    def change_subject(subj):
        names = service.subject(subj).roi_names
        encs = service.encoders_for(subj)
        st = {"target": names[0], "voxels": [], "results": []}
        # the results belong to the previous subject: clear them and everything shown about them
        return (service.flatmap(subj, highlight=names[0]), gr.update(choices=names, value=names[0]),
                gr.update(choices=names, value=names[0]), gr.update(choices=encs, value=encs[0] if encs else None),
                _selection_text(st), service.flatmap(subj), st, [], None, None, None)

    subject.input(change_subject, [subject], [flatmap, roi, contrast, encoder, selection, painter, state,
                                             gallery, activation_map, chart, files])
    dice.click(lambda: random.randint(0, 2**31 - 1), None, seed)

    # ------------------------------------------------------------ generation
    def run(subj, enc, st, obj, con, w, sc, n_steps, sched, sd, n, text, guidance, request: gr.Request):
        # numbers go to the service as typed: it rejects, never rounds or clamps (the same checks as the API)
        req = GenerationRequest(subject=subj, encoder=enc, target=st["target"], voxels=tuple(st["voxels"]),
                                objective=obj, contrast_target=con, weight=_number(w, "Weight of B"),
                                scale=sc, steps=_number(n_steps, "Steps"),
                                scheduler=sched, seed=_number(sd, "Seed"), n_images=_number(n, "Images"), prompt=text or "",
                                mode=guidance)
        results = []
        gallery_items = []
        try:
            for item in service.generate(req, session=request.session_hash, owner=service.owner_of(request)):
                if isinstance(item, Waiting):
                    yield gr.skip(), item.message, gr.skip(), st
                elif isinstance(item, Progress):
                    yield (item.preview, f"Image {item.image_index + 1}/{item.n_images} · step {item.step}/{item.total_steps}",
                           gr.skip(), st)
                elif isinstance(item, ImageResult):
                    results.append(item.entry.id)
                    gallery_items.append((item.image, f"seed {item.seed} · objective {item.objective:+.3f}"))
                    st = {**st, "results": results}
                    yield gr.skip(), f"Finished image {item.index + 1}/{n}", list(gallery_items), st
                elif isinstance(item, Finished):
                    yield gr.skip(), item.message, list(gallery_items), st
        except ServiceError as exc:
            raise gr.Error(str(exc))

    inputs = [subject, encoder, state, objective, contrast, weight, scale, steps, scheduler, seed, n_images, prompt, mode]
    # every request enters the service's queue at once (it shows its place there and can be stopped while waiting);
    # the service runs ``settings.concurrency`` of them at a time
    generate.click(run, inputs, [preview, step_counter, gallery, state],
                   concurrency_limit=settings.concurrency + settings.queue_size, concurrency_id="gpu")

    def stop_run(request: gr.Request):
        gr.Info("Stopping after the current step…" if service.cancel(request.session_hash) else "Nothing is running.")

    stop.click(stop_run, None, None, queue=False)

    def inspect(subj, st, evt: gr.SelectData):
        results = st.get("results") or []
        index = evt.index
        if not isinstance(index, int) or not 0 <= index < len(results):  # a click on a gallery that changed since
            gr.Warning("That image is no longer among the results; generate again to inspect it.")
            return gr.skip(), gr.skip(), gr.skip()
        try:
            return _inspect(service, subj, results[index])
        except (KeyError, OSError, ValueError, ServiceError) as exc:  # entry gone from the catalog, unreadable files
            gr.Warning(f"Cannot show that result: {exc}")
            return gr.skip(), gr.skip(), gr.skip()

    gallery.select(inspect, [subject, state], [activation_map, chart, files])
    return {"encoder": encoder, "subject": subject}


def _inspect(service: Service, subject_name: str, entry_id: str):
    """Activation flatmap, ROI chart and download files for one catalog entry."""
    record = service.catalog.record(entry_id)
    acts = service.catalog.activations(entry_id)
    entry = service.catalog.get(entry_id)
    limit = float(np.nanmax(np.abs(acts))) or 1.0
    target = record["target"]
    highlight = target.split("-vs-")[0] if not target.startswith("custom") else None
    image = service.flatmap(subject_name, acts, highlight=highlight if highlight in service.subject(subject_name).roi_names else None,
                            vmin=-limit, vmax=limit, title=f"Predicted activation · seed {record['seed']} · {target}")
    chart = roi_chart(record["roi_means"], record["baseline_roi_means"], target)
    return image, chart, [str(entry.image_path), str(entry.record_path)]


def _painted_mask(edited: dict) -> np.ndarray:
    """Pixels the user painted: where any layer is opaque."""
    layers = edited.get("layers") or []
    alphas = [layer[..., 3] > 0 for layer in layers if layer is not None and layer.ndim == 3 and layer.shape[-1] == 4]
    if not alphas:
        raise gr.Error("Paint on the flatmap first.")
    return np.logical_or.reduce(alphas)


def _number(value, label: str):
    """A number field's value as typed (the service checks it); an emptied field is a message naming it."""
    if value is None or value == "":
        raise gr.Error(f"'{label}' is empty: enter a number.")
    return value
