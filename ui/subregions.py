"""Explore's "Split region…" and "Start from an image" panels (``braindive.subregions``, ``braindive.variation``).

The work runs on one of the service's pipeline slots (the same first-come queue as *Generate*).
"""
from __future__ import annotations

import threading
import uuid
from contextlib import contextmanager
from dataclasses import replace

import gradio as gr
import numpy as np
from matplotlib.colors import ListedColormap

from braindive import subregions as sr
from braindive import variation as V
from braindive.generate import GenerationSettings, SeedResult, StartImage, seed_record
from braindive.subregion_images import cross_prediction, store
from braindive.targets import Target

from .generation import storage_error
from .paths import inside_roots
from .service import Service, ServiceError

PART_COLOURS = ("#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#a65628", "#f781bf", "#17becf")
BY_CHOICES = {"response profile (encoder weights)": "weights", "response profile (predicted for images)": "responses",
              "anatomy": "anatomy"}
KINDS = ("maximize", "minimize")
SCHEDULER = "dpm"  # what these panels run (the records say so)


def panel_settings(service: Service, mode: str, scale=None, strength: float = 1.0) -> GenerationSettings:
    """The backend's defaults at the app's image size (``--image-size``), as *Generate* uses them, with the
    panel's guidance computation (and scale, strength); checked against ``presets.LIMITS``."""
    defaults, size = service.backend().defaults, service.settings.image_size
    try:
        return GenerationSettings(
            mode=mode, scale=float(defaults["brain_guidance_scale"] if scale is None else scale),
            steps=defaults["num_inference_steps"], scheduler=SCHEDULER, sag=defaults["sag_scale"],
            height=size or defaults["height"], width=size or defaults["width"], strength=strength).checked()
    except (TypeError, ValueError) as exc:
        raise ServiceError(str(exc)) from exc


@contextmanager
def pipeline_slot(service: Service, encoder_name: str):
    """A pipeline of the service's queue with ``encoder_name``'s encoder, held for the block."""
    ticket, slot, ahead = service.slots.join(), None, None
    try:
        while slot is None:
            slot, ahead = service.slots.wait(ticket, threading.Event(), ahead)
        pipe = service.backend().pipes[slot]
        pipe.set_encoder(service.encoder(encoder_name))
        pipe.set_scheduler(SCHEDULER)
        yield pipe
    finally:
        service.slots.leave(ticket)
        if slot is not None:
            service.slots.release(slot)


def split(service: Service, subject_label: str, encoder_name: str, roi: str, k, by: str, axis: str, folder: str):
    """The split and its per-part report rows; library errors become ``ServiceError``."""
    subject = service.subject(subject_label)
    by = BY_CHOICES.get(by, by)
    images = inside_roots(service.settings, folder, "Image folder", want_dir=None) if by == "responses" else None
    try:
        parts = sr.split_region(subject, roi, int(k), by, encoder=service.encoder(encoder_name), images=images,
                                axis=axis)
    except (ValueError, FileNotFoundError) as exc:
        raise ServiceError(str(exc)) from exc
    return parts, sr.report(parts, subject, encoder=service.encoder(encoder_name))


def parts_map(service: Service, subject_label: str, parts: sr.Split) -> np.ndarray:
    """The flatmap with part i filled in ``PART_COLOURS[i]``."""
    values = np.full(service.subject(subject_label).n_voxels, np.nan)
    for i, part in enumerate(parts.parts):
        values[part.voxels] = i
    return service.flatmap(subject_label, values, title=f"{parts.roi} in {parts.k} parts ({parts.by})",
                           cmap=ListedColormap(PART_COLOURS[:parts.k]), vmin=-0.5, vmax=parts.k - 0.5,
                           colorbar=False)  # categories: the legend names them


def legend(parts: sr.Split, rows: list[dict]) -> str:
    """HTML legend: a swatch, the part's name and its voxels per hemisphere."""
    items = [f'<span class="part-swatch" style="display:inline-block;width:12px;height:12px;background:{PART_COLOURS[i]}">'
             f"</span> <b>{row['part']}</b> {row['n_voxels']} voxels (lh {row['n_lh']}, rh {row['n_rh']})"
             for i, row in enumerate(rows)]
    return '<div id="part-legend">' + " &nbsp; ".join(items) + "</div>"


def report_table(rows: list[dict]) -> list[list]:
    return [[r["part"], r["n_voxels"], r["n_lh"], r["n_rh"], round(r["within"], 3), round(r["between"], 3)] for r in rows]


def cross_predict(service: Service, encoder_name: str, parts: sr.Split, n_seeds: int, seed: int, kind: str,
                  mode: str, owner: str = "") -> tuple[list, list[list]]:
    """Each part's images (same seeds) as gallery items and the cross-prediction table; the images go to the
    catalog (History) with the part's target and the split, the unguided ones are shared with *Generate*."""
    settings, subject = panel_settings(service, mode), service.subject_of(encoder_name)
    model = service.backend().name
    try:
        with pipeline_slot(service, encoder_name) as pipe:
            cp = cross_prediction(pipe, parts, range(int(seed), int(seed) + int(n_seeds)), settings, subject=subject,
                                  kind=kind, baselines=service.catalog, model=model,
                                  encoder=service.models.identity(encoder_name))
    except ValueError as exc:  # e.g. parts of another subject's voxels than this encoder's
        raise ServiceError(str(exc)) from exc
    try:
        store(cp, service.catalog, subject, settings, model=model, encoder=encoder_name, owner=owner,
              run_id=f"split-{uuid.uuid4().hex[:10]}")
    except OSError as exc:  # nothing of a failed image is kept (Catalog.add); a full disk says so
        raise storage_error(exc) from exc
    gallery = [(image, f"{name} · seed {s}") for name, images in zip(cp.names, cp.images)
               for s, image in zip(cp.seeds, images)]
    table = [[row["images for"], *[round(row[f"gain {n}"], 4) for n in cp.names], f"{100 * row['own largest']:.0f}%",
              round(row["margin"], 4)] for row in cp.table()]
    return gallery, table


def start_image(service: Service, upload, nsd_dataset: str = "", nsd_id=None) -> StartImage:
    """The reference image as a request carries it: an upload (no file name: records name it by its pixel hash), or
    the image of NSD id ``nsd_id`` (0-based 73k id) in a prepared NSD dataset under the allowed folders (``nsd-<id>``)."""
    from_nsd = str(nsd_id if nsd_id is not None else "").strip() != ""
    if (upload is None) == (not from_nsd):
        raise ServiceError("Start from one image: upload one, or give an NSD image id and its prepared dataset"
                           + (", not both." if from_nsd else "."))
    if not from_nsd:
        return StartImage.from_image(upload, "")
    path = inside_roots(service.settings, nsd_dataset or "", "Dataset", want_dir=False)
    try:
        text = str(nsd_id).strip()
        if not text.lstrip("-").isdigit():
            raise ValueError(f"`NSD image id` must be a whole number, got {text!r}.")
        start = StartImage.resolve(f"nsd:{int(text)}", nsd_dataset=path)
    except (ValueError, OSError) as exc:
        raise ServiceError(str(exc).replace(str(path), path.name)) from exc  # no server folder in the answer
    return start


def vary(service: Service, subject_label: str, encoder_name: str, roi: str, kind: str, image, strength, scale, seed,
         mode: str, owner: str = "", nsd_dataset: str = "", nsd_id=None) -> tuple:
    """Reference (VAE-sized), control and guided images from ``image`` (or an NSD image, ``start_image``) at
    ``strength``, and a summary line. The guided image goes to the catalog (History) with the strength and the
    reference's name and pixel hash."""
    start = start_image(service, image, nsd_dataset, nsd_id)
    subject = service.subject(subject_label)
    try:
        target = (Target.maximize if kind == "maximize" else Target.minimize)(roi)
        objective = target.build(subject)
    except ValueError as exc:
        raise ServiceError(str(exc)) from exc
    settings = replace(panel_settings(service, mode, scale, strength), init_image=start)
    strength = settings.strength
    call = {k: v for k, v in settings.pipeline_kwargs().items() if k != "brain_guidance_scale"}
    with pipeline_slot(service, encoder_name) as pipe:
        grid = V.variations(pipe, objective, start.image(), [strength], [settings.scale], seeds=(int(seed),), **call)
    guided, control = grid.get(strength, settings.scale, int(seed)), grid.get(strength, 0.0, int(seed))
    result = SeedResult(int(seed), guided.image, guided.activations, target.measure(guided.activations, subject),
                        baseline_activations=control.activations,
                        baseline_measure=target.measure(control.activations, subject))
    # the strength and the reference's name and pixel hash come from ``settings.image_record``, as at every door
    record = seed_record(result, target, subject, settings, model=service.backend().name, encoder=encoder_name)
    record.pop("baseline_key", None)  # the control was made here, not taken from the baseline store
    service.catalog.add(guided.image, record, run_id=uuid.uuid4().hex[:10], owner=owner)
    text = (f"{roi} mean: reference {grid.reference_value:+.3f} → control {control.value:+.3f} → guided "
            f"{guided.value:+.3f} (change {guided.change:+.3f}; vs control {guided.change_vs_control:+.3f}). "
            f"Similarity to the reference: SSIM {guided.ssim:.2f}, CLIP cosine {guided.clip_cosine:.3f}. "
            f"Strength {strength:g}, scale {settings.scale:g}, seed {int(seed)}; reference sha256 {grid.reference_hash[:16]}…")
    return grid.reference, control.image, guided.image, text


def build(service: Service, settings, subject: gr.Dropdown, encoder: gr.Dropdown, roi: gr.Dropdown) -> None:
    """The two panels, under the Explore tab's results; ``subject``/``encoder``/``roi`` are Explore's inputs."""
    state = gr.State(None)
    with gr.Accordion("Split region…", open=False, elem_id="split-region"):
        with gr.Row():
            k = gr.Slider(sr.K_RANGE[0], sr.K_RANGE[1], value=2, step=1, label="Parts (k)", elem_id="split-k")
            by = gr.Radio(list(BY_CHOICES), value=next(iter(BY_CHOICES)), label="Split by", elem_id="split-by")
            axis = gr.Dropdown(list(sr.AXES), value="posterior-anterior", label="Anatomical axis", elem_id="split-axis")
            folder = gr.Textbox(label="Image folder or prepared NSD dataset (.h5: its shared images)",
                                elem_id="split-folder")
            split_button = gr.Button("Split", elem_id="split-button")
        parts_image = gr.Image(label="Parts", show_label=False, interactive=False, format="png", elem_id="parts-map")
        parts_legend = gr.HTML("", elem_id="parts-legend")
        parts_report = gr.Dataframe(headers=["part", "voxels", "lh", "rh", "within", "between"], interactive=False,
                                    elem_id="parts-report", label="Profile similarity (mean cosine within / between parts)")
        with gr.Row():
            n_seeds = gr.Slider(1, 8, value=2, step=1, label="Images per part (same seeds)", elem_id="split-seeds")
            first_seed = gr.Number(value=0, precision=0, minimum=0, label="First seed")
            kind = gr.Radio(list(sr.PART_KINDS), value="maximize", label="Each part", elem_id="split-kind")
            split_mode = gr.Radio(["exact", "fast"], value="exact", label="Guidance computation")
            split_generate = gr.Button("Generate for each part", variant="primary", elem_id="split-generate")
        parts_gallery = gr.Gallery(label="Images per part", columns=8, height=220, format="png", elem_id="parts-gallery",
                                   fit_columns=False, object_fit="contain")
        cross_table = gr.Dataframe(headers=["images for", "gain per part", "own largest", "margin"], interactive=False,
                                   elem_id="cross-table",
                                   label="Cross-prediction: gain of each part (columns) for each part's images (rows)")

    with gr.Accordion("Start from an image", open=False, elem_id="start-image"):
        with gr.Row():
            with gr.Column():
                reference = gr.Image(type="pil", label="Reference image", elem_id="reference-image", format="png")
                with gr.Row():
                    nsd_id = gr.Textbox(label="…or NSD image id (nsdId, 0-based)", placeholder="e.g. 2950",
                                        elem_id="nsd-id")  # text: an empty box is "none" (a Number sends 0)
                    nsd_dataset = gr.Textbox(label="Prepared NSD dataset (.h5)", placeholder="outputs/nsd/subj01.h5",
                                             elem_id="nsd-dataset")
            with gr.Column():
                var_kind = gr.Radio(list(KINDS), value="maximize", label="Push the selected ROI", elem_id="var-kind")
                strength = gr.Slider(0, 1, value=0.5, step=0.05, label="Strength", elem_id="strength")
                var_scale = gr.Number(value=service.backend().defaults["brain_guidance_scale"], label="Brain guidance scale")
                var_seed = gr.Number(value=0, precision=0, minimum=0, label="Seed")
                var_mode = gr.Radio(["exact", "fast"], value="exact", label="Guidance computation")
                vary_button = gr.Button("Generate from the image", variant="primary", elem_id="vary-button")
        with gr.Row():
            ref_out = gr.Image(label="Reference (VAE size)", interactive=False, format="png", elem_id="var-reference")
            control_out = gr.Image(label="Control (same seed, no brain guidance)", interactive=False, format="png",
                                   elem_id="var-control")
            guided_out = gr.Image(label="Brain-guided", interactive=False, format="png", elem_id="var-guided")
        var_text = gr.Markdown("", elem_id="var-summary")

    def do_split(subj, enc, name, k_, by_, axis_, folder_):
        parts, rows = _guard(lambda: split(service, subj, enc, name, k_, by_, axis_, folder_))
        return parts, _guard(lambda: parts_map(service, subj, parts)), legend(parts, rows), report_table(rows)

    def do_generate(enc, parts, n, s0, kind_, mode_, request: gr.Request):
        if parts is None:
            raise gr.Error("Split a region first.")
        gallery, table = _guard(lambda: cross_predict(service, enc, parts, n, s0, kind_, mode_,
                                                      owner=service.owner_of(request)))
        headers = ["images for", *[f"gain {p.name}" for p in parts.parts], "own largest", "margin"]
        return gallery, gr.Dataframe(value=table, headers=headers)

    split_button.click(do_split, [subject, encoder, roi, k, by, axis, folder],
                       [state, parts_image, parts_legend, parts_report])
    split_generate.click(do_generate, [encoder, state, n_seeds, first_seed, kind, split_mode], [parts_gallery, cross_table],
                         concurrency_limit=settings.concurrency + settings.queue_size, concurrency_id="gpu")
    def do_vary(subj, enc, name, kind_, image, strength_, scale_, seed_, mode_, dataset_, id_, request: gr.Request):
        # named parameters, not *args: Gradio passes `request` only to a function whose inputs it can count
        return _guard(lambda: vary(service, subj, enc, name, kind_, image, strength_, scale_, seed_, mode_,
                                   owner=service.owner_of(request), nsd_dataset=dataset_, nsd_id=id_))

    vary_button.click(do_vary,
                      [subject, encoder, roi, var_kind, reference, strength, var_scale, var_seed, var_mode, nsd_dataset,
                       nsd_id],
                      [ref_out, control_out, guided_out, var_text],
                      concurrency_limit=settings.concurrency + settings.queue_size, concurrency_id="gpu")


def _guard(compute):
    try:
        return compute()
    except ServiceError as exc:
        raise gr.Error(str(exc)) from exc
