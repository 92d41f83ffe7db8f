"""Explore tab: pick a region on the flatmap, generate, watch the denoising, inspect predicted activity."""
from __future__ import annotations

import random

import gradio as gr
import numpy as np

from braindive.presets import LIMITS, LimitError
from braindive.rerank import rank_scores
from braindive.targets import Target
from braindive.tiny_decoder import fast_description

from . import activation as act
from . import selection as sel
from . import subregions as subregion_panels
from .charts import roi_chart
from .memory import trim_heap
from .updates import unchanged
from .generation import storage_error
from .service import CUSTOM, OBJECTIVES, Finished, GenerationRequest, ImageResult, Progress, Service, ServiceError, Waiting

CLICK_MODES = ("Select ROI", "Grow voxel set")
MAP_MIN_WIDTH = 560  # px of a map column; with the 320 px of the column beside it, a window under ~960 px stacks them


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
    """Build the tab inside the current Blocks; returns components other tabs refresh and the page-load refresh.

    Raises ``ServiceError`` when no encoder's subject can be loaded (nothing to explore).
    """
    subjects = service.subject_names()
    encoders0 = service.encoders_for(subjects[0]) if subjects else []
    if not encoders0:
        raise _no_subject_error(service)
    subject0 = subjects[0]
    roi_names = service.subject(subject0).roi_names
    defaults = service.backend().defaults
    first = {"target": sel.default_roi(roi_names), "hemi": "both", "voxels": [], "results": [],
             "shown": None}
    map0, note0 = sel.safe_map(service, subject0, lambda: sel.selection_map(service, subject0, first))

    # the map column needs room for readable ROI labels: narrower than both minimum widths, the columns stack
    with gr.Row():
        with gr.Column(scale=3, min_width=MAP_MIN_WIDTH):
            with gr.Row():
                subject = gr.Dropdown(sel.subject_choices(service, subjects), value=subject0, label="Subject",
                                      elem_id="subject")
                encoder = gr.Dropdown(encoders0, value=encoders0[0], label="Encoder", elem_id="encoder")
            map_note = gr.Markdown(note0, visible=bool(note0), elem_id="map-note")
            # no label or buttons over the image: they would hide the hemisphere names in its top corners
            flatmap = gr.Image(map0, label="Cortical flatmap — click a region", show_label=False, buttons=[],
                               interactive=False, elem_id="flatmap", visible=map0 is not None)
            with gr.Row():
                click_mode = gr.Radio(CLICK_MODES, value=CLICK_MODES[0], label="Clicking", elem_id="click-mode")
                radius = gr.Slider(1, 20, value=6, step=1, label="Grow radius (mm)")
            selection = gr.Markdown(sel.selection_text(service, subject0, first), elem_id="selection")
            with gr.Row():
                roi = gr.Dropdown(roi_names, value=first["target"], label="…or choose an ROI", elem_id="roi-list")
                hemi = gr.Radio(list(sel.HEMISPHERES), value="both", label="Hemisphere", elem_id="hemisphere")
                clear = gr.Button("Clear voxel set", size="sm")
            with gr.Accordion("Paint a voxel set", open=False, visible=map0 is not None) as paint_box:
                painter = gr.ImageEditor(value=sel.painter_value(service, subject0), type="numpy",
                                         label="Paint on cortex (the bin clears the paint only)",
                                         brush=gr.Brush(colors=["#ffd400"], default_size=14), layers=False,
                                         transforms=(), sources=(), canvas_size=(sel.PAINT_WIDTH, sel.PAINT_WIDTH),
                                         height=sel.PAINT_WIDTH + 60, elem_id="painter")
                use_paint = gr.Button("Use painted area", size="sm")
        with gr.Column(scale=2):
            objective = gr.Radio(list(OBJECTIVES), value="maximize", label="Objective", elem_id="objective")
            with gr.Row(visible=False) as contrast_box:
                contrast = gr.Dropdown(roi_names, value=roi_names[0], label="Contrast against (B, outlined cyan)",
                                       elem_id="contrast")
                weight = gr.Number(value=1.0, label=LIMITS["weight"].label)
            scale = gr.Number(value=defaults["brain_guidance_scale"], label="Brain guidance scale", elem_id="scale")
            steps = gr.Number(value=defaults["num_inference_steps"], label=LIMITS["steps"].label, elem_id="steps")
            with gr.Row():
                scheduler = gr.Dropdown(["dpm", "ddim", "pndm", "lms", "euler"], value="dpm", label="Scheduler")
                seed = gr.Number(value=0, label=LIMITS["seed"].label, elem_id="seed")
                dice = gr.Button("Random seed", size="sm", min_width=80)
            with gr.Row():
                n_images = gr.Number(value=1, label=LIMITS["n_images"].label, elem_id="n-images")
                keep = gr.Number(value=settings.max_images, elem_id="keep", label=LIMITS["keep_k"].label)
            mode = gr.Radio(["exact", "fast"], value="exact", label="Guidance computation", elem_id="mode",
                            info="exact: the published computation (same numbers, batched). " + fast_description())
            prompt = gr.Textbox(value="", label="Prompt (optional; the paper uses none)", max_length=300)
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id="generate")
                stop = gr.Button("Stop", variant="stop", elem_id="stop")
            step_counter = gr.Markdown("Idle.", elem_id="step-counter")
            preview = gr.Image(label="Denoising preview (predicted clean image)", interactive=False, elem_id="preview",
                               format="png", height=280)
    gallery = gr.Gallery(label="Results, best first — click an image to inspect it", columns=6, height=260,
                         elem_id="gallery", format="png", fit_columns=False, object_fit="contain", allow_preview=False)
    with gr.Row():
        with gr.Column(scale=3, min_width=MAP_MIN_WIDTH):
            activation_map = gr.Image(label="Predicted activation — click for values", show_label=False, buttons=[],
                                      interactive=False, elem_id="activation-map", format="png")
            with gr.Row():
                map_kind = gr.Radio(list(act.MAPS), value=act.MAPS[0], label="Map", elem_id="map-kind")
                limits = gr.Radio(list(act.LIMITS), value=act.LIMITS[0], label="Colour limits", elem_id="map-limits")
            values = gr.Markdown("", elem_id="map-values")
        with gr.Column(scale=2):
            with gr.Row():
                guided_image = gr.Image(label="Brain-guided", interactive=False, elem_id="result-guided", format="png")
                unguided_image = gr.Image(label="Unguided (same seed)", interactive=False, elem_id="result-unguided",
                                          format="png")
            chart = gr.Plot(label="Per-ROI prediction vs unguided baseline", elem_id="roi-chart")
            files = gr.File(label=_downloads_label(service, subject0), file_count="multiple", elem_id="downloads")
    state = gr.State(first)
    view = [activation_map, guided_image, unguided_image, chart, files, values]
    subregion_panels.build(service, settings, subject, encoder, roi)  # Split region…, Start from an image

    def show(subj, entry_id, kind, lim) -> dict:
        """The activation view of one result."""
        maps = act.load_maps(service.catalog, entry_id)
        image, note = sel.safe_map(service, subj, lambda: act.result_map(service, subj, maps, kind, lim))
        spec = Target.from_record(maps.record)
        out_dir = service.settings.catalog_dir / "images" / "maps" / entry_id  # served: catalog images are allowed
        downloads = [str(maps.image_path), str(maps.image_path.with_suffix(".json"))]
        downloads += act.export_maps(maps, service.subject(subj), out_dir)
        return {activation_map: image, guided_image: str(maps.image_path),
                unguided_image: None if maps.unguided_image is None else str(maps.unguided_image),
                chart: roi_chart(maps.record["roi_means"], maps.record["baseline_roi_means"], spec),
                files: downloads, values: note or "Click the map to read the values under the pointer."}

    # ------------------------------------------------------------ selection
    def redraw(subj, st, obj, con) -> dict:
        image, note = sel.safe_map(service, subj, lambda: sel.selection_map(service, subj, st,
                                                                            con if obj == "contrast" else None))
        return {flatmap: gr.update(value=image, visible=image is not None),
                map_note: gr.update(value=note, visible=bool(note)),
                selection: sel.selection_text(service, subj, st), state: st,
                **({roi: gr.update(value=None)} if st["target"] == CUSTOM else {})}  # no ROI shown for a custom set

    select_outputs = [flatmap, map_note, selection, state, roi, hemi]

    def select_on_map(subj, mode, rad, st, obj, con, evt: gr.SelectData):
        index = getattr(evt, "index", None)
        if not isinstance(index, (list, tuple)) or len(index) != 2:
            raise gr.Error(f"A flatmap click needs the click position [x, y] in pixels, got {index!r}.")
        x, y = index
        hit = service.pick(subj, x, y, service.flatmap_shape(subj))
        if hit is None:
            gr.Info("That point is outside the cortex.")
            return unchanged(select_outputs)
        if mode == CLICK_MODES[0]:
            if not hit.rois:
                gr.Info(f"No ROI at that point ({hit.hemisphere}); switch to 'Grow voxel set' to build a custom set.")
                return unchanged(select_outputs)
            # "both" stays; a one-hemisphere choice follows the hemisphere clicked
            hemi_choice = "both" if st.get("hemi", "both") == "both" else sel.HEMISPHERE_CHOICE[hit.hemisphere]
            st = {**st, "target": hit.rois[0], "hemi": hemi_choice, "voxels": []}
            return {**redraw(subj, st, obj, con), roi: hit.rois[0], hemi: hemi_choice}
        if hit.voxel is None:
            gr.Info("No voxel of this subject at that point (this subject's voxels cover the outlined regions and a "
                    "margin around them); click closer to an outlined region.")
            return unchanged(select_outputs)
        grown = service.grow(subj, hit.voxel, rad)
        st = {**st, "target": CUSTOM, "voxels": sorted(set(st["voxels"]) | set(grown.tolist()))}
        return redraw(subj, st, obj, con)

    flatmap.select(select_on_map, [subject, click_mode, radius, state, objective, contrast], select_outputs)

    def choose_roi(subj, name, hemisphere, st, obj, con):
        if not name:
            return unchanged(select_outputs)
        return redraw(subj, {**st, "target": name, "hemi": hemisphere, "voxels": []}, obj, con)

    roi.input(choose_roi, [subject, roi, hemi, state, objective, contrast], select_outputs)
    hemi.input(choose_roi, [subject, roi, hemi, state, objective, contrast], select_outputs)

    def clear_voxels(subj, name, hemisphere, st, obj, con):
        """Back to an ROI: the one listed, else the subject's first (FFA where it has one)."""
        name = name or sel.default_roi(service.subject(subj).roi_names)
        return {**choose_roi(subj, name, hemisphere, st, obj, con), roi: name}

    clear.click(clear_voxels, [subject, roi, hemi, state, objective, contrast], select_outputs)

    def use_painted(subj, edited, st, obj, con):
        if not edited or (edited.get("layers") is None and edited.get("composite") is None):
            raise gr.Error("Paint on the flatmap first.")
        try:
            voxels = service.painted_voxels(subj, _painted_mask(edited))
        except ServiceError as exc:
            raise gr.Error(str(exc))
        voxels = sorted(set(st["voxels"]) | set(voxels.tolist()))
        return redraw(subj, {**st, "target": CUSTOM, "voxels": voxels}, obj, con)

    use_paint.click(use_painted, [subject, painter, state, objective, contrast], select_outputs)
    # the editor's bin empties the whole canvas: put the flatmap back, so only the paint is cleared
    # outside the queue: the picture (rendered once per subject and cached) is back as soon as it is sent
    painter.clear(lambda subj: sel.painter_value(service, subj), subject, painter, queue=False, show_progress="hidden")

    def change_objective(subj, st, obj, con):
        return {**redraw(subj, st, obj, con), contrast_box: gr.update(visible=obj == "contrast")}

    objective.change(change_objective, [subject, state, objective, contrast], [*select_outputs, contrast_box])
    contrast.input(redraw, [subject, state, objective, contrast], select_outputs)

    def change_subject(subj, obj):
        names = service.subject(subj).roi_names
        encs = service.encoders_for(subj)
        st = {"target": sel.default_roi(names), "hemi": "both", "voxels": [], "results": [], "shown": None}
        painted = sel.painter_value(service, subj)
        # the results belong to the previous subject: clear them and everything shown about them
        return {**redraw(subj, st, obj, names[0]), roi: gr.update(choices=names, value=st["target"]), hemi: "both",
                contrast: gr.update(choices=names, value=names[0]),
                encoder: gr.update(choices=encs, value=encs[0] if encs else None),
                painter: painted, paint_box: gr.update(visible=painted is not None), gallery: [], preview: None,
                **{component: None for component in view[:4]}, values: "",
                files: gr.update(value=None, label=_downloads_label(service, subj))}

    subject.input(change_subject, [subject, objective],
                  [*select_outputs, contrast, encoder, painter, paint_box, gallery, preview, *view])

    def refresh_lists(subj, enc):
        """Subjects and encoders as they are now (an encoder trained in another tab, or before a reload)."""
        names = service.subject_names()
        subj = subj if subj in names else (names[0] if names else None)
        encs = service.encoders_for(subj) if subj else []
        return (gr.update(choices=sel.subject_choices(service, names), value=subj),
                gr.update(choices=encs, value=enc if enc in encs else (encs[0] if encs else None)))

    def run_again(values: dict):
        """History's "run again": every field set to a stored result's settings (one image, same seed)."""
        if not values:
            return unchanged(run_again_outputs)
        space = values.get("subject_space")  # the voxel space, when recorded; names are for people
        labels = [label for label in service.subject_names()
                  if (service.subject(label).fingerprint == space if space
                      else service.subject(label).name == values.get("subject"))]
        if not labels:
            raise gr.Error(f"Subject {values.get('subject')!r} of that result (voxel space {str(space)[:12]}) is not "
                           "available in this app.")
        subj, obj = labels[0], values.get("objective", "maximize")
        names = service.subject(subj).roi_names
        base, _, side = str(values.get("target", "")).partition(".")
        st = {"target": base, "hemi": sel.HEMISPHERE_CHOICE.get(side, "both"), "voxels": list(values.get("voxels", ())),
              "results": [], "shown": None}
        con = values.get("contrast_target") or names[0]
        encs = service.encoders_for(subj)
        mode_value = values.get("mode")
        return {**redraw(subj, st, obj, con), subject: subj, roi: gr.update(choices=names, value=base if base in names
                                                                             else names[0]),
                hemi: st["hemi"], objective: obj, contrast: gr.update(choices=names, value=con),
                contrast_box: gr.update(visible=obj == "contrast"), weight: values.get("weight", 1.0),
                encoder: gr.update(choices=encs, value=values.get("encoder") if values.get("encoder") in encs else encs[0]),
                scale: values.get("scale", defaults["brain_guidance_scale"]), steps: values.get("steps", steps.value),
                scheduler: values.get("scheduler", "dpm"), seed: values.get("seed", 0), n_images: 1,
                prompt: values.get("prompt", ""), mode: mode_value if mode_value in ("exact", "fast") else "exact",
                files: gr.update(label=_downloads_label(service, subj))}

    run_again_outputs = [*select_outputs, subject, hemi, objective, contrast, contrast_box, weight, encoder, scale, steps,
                         scheduler, seed, n_images, prompt, mode, files]
    encoder.focus(refresh_lists, [subject, encoder], [subject, encoder], queue=False)
    dice.click(lambda: random.randint(0, 2**31 - 1), None, seed)

    # ------------------------------------------------------------ generation
    def run(subj, enc, st, obj, con, w, sc, n_steps, sched, sd, n, k, text, guidance, kind, lim, request: gr.Request):
        # numbers go to the service as typed: it rejects, never rounds or clamps (the same checks as the API)
        req = GenerationRequest(subject=subj, encoder=enc, target=sel.target_name(st), voxels=tuple(st["voxels"]),
                                objective=obj, contrast_target=con, weight=_number(w, LIMITS["weight"].label),
                                scale=sc, steps=_number(n_steps, LIMITS["steps"].label),
                                scheduler=sched, seed=_number(sd, LIMITS["seed"].label),
                                n_images=_number(n, LIMITS["n_images"].label), prompt=text or "",
                                mode=guidance)
        keep_k = _keep_best(k)
        results: list[ImageResult] = []
        try:
            for item in service.generate(req, session=request.session_hash, owner=service.owner_of(request)):
                if isinstance(item, Waiting):
                    yield {step_counter: item.message}
                elif isinstance(item, Progress):
                    counter = (f"Image {item.image_index + 1}/{item.n_images} · {item.stage} · "
                               f"step {item.step}/{item.total_steps}")
                    yield {step_counter: counter, **({} if item.preview is None else {preview: item.preview})}
                elif isinstance(item, ImageResult):
                    results.append(item)
                    st = {**st, "results": [r.entry.id for r in results]}
                    update = {step_counter: f"Finished image {item.index + 1}/{req.n_images}",
                              gallery: [(r.image, _caption(r)) for r in results], state: st}
                    if len(results) == 1:  # the first result is shown at once, not only when its thumbnail is clicked
                        update.update(show(subj, item.entry.id, kind, lim))
                        st = update[state] = {**st, "shown": item.entry.id}
                    yield update
                elif isinstance(item, Finished):
                    ranked = _rank(service.catalog, results, keep_k) if results else []
                    st = {**st, "results": [r.entry.id for r, _ in ranked]}
                    kept = (f" Kept the best {len(ranked)} of {len(results)}, ranked by the encoder."
                            if len(ranked) < len(results) else "")
                    update = {step_counter: item.message + kept, state: st,
                              gallery: [(r.image, _caption(r, rank)) for rank, (r, _) in enumerate(ranked, 1)]}
                    if item.interrupted:  # the partial image of the stopped step is not a result: do not leave it up
                        update[preview] = None
                    if ranked and ranked[0][0].entry.id != st.get("shown"):  # show the best one
                        update.update(show(subj, ranked[0][0].entry.id, kind, lim))
                        update[state] = {**st, "shown": ranked[0][0].entry.id}
                    yield update
        except ServiceError as exc:
            raise gr.Error(str(exc))
        finally:
            trim_heap()  # a generation frees its buffers in many threads' malloc arenas: give the pages back

    inputs = [subject, encoder, state, objective, contrast, weight, scale, steps, scheduler, seed, n_images, keep, prompt,
              mode, map_kind, limits]
    # every request enters the service's queue at once (it shows its place there and can be stopped while waiting);
    # the service runs ``settings.concurrency`` of them at a time
    # ``preprocess=False``: values arrive as sent, so a wrong type is the service's message naming the field, not
    # Gradio's bare "Error", and nothing is rounded on the way (a Number's precision would round 2.5 to 2)
    generate.click(run, inputs, [preview, step_counter, gallery, state, *view], preprocess=False,
                   concurrency_limit=settings.concurrency + settings.queue_size, concurrency_id="gpu")

    def stop_run(request: gr.Request):
        gr.Info("Stopping after the current step…" if service.cancel(request.session_hash) else "Nothing is running.")

    stop.click(stop_run, None, None, queue=False)

    def inspect(subj, st, kind, lim, evt: gr.SelectData):
        results = st.get("results") or []
        index = evt.index
        if not isinstance(index, int) or not 0 <= index < len(results):  # a click on a gallery that changed since
            gr.Warning("That image is no longer among the results; generate again to inspect it.")
            return unchanged([*view, state])
        return _guarded(lambda: {**show(subj, results[index], kind, lim), state: {**st, "shown": results[index]}},
                        [*view, state])

    gallery.select(inspect, [subject, state, map_kind, limits], [*view, state])

    def rerender(subj, st, kind, lim):
        return _guarded(lambda: show(subj, st["shown"], kind, lim), view) if st.get("shown") else unchanged(view)

    map_kind.input(rerender, [subject, state, map_kind, limits], view)
    limits.input(rerender, [subject, state, map_kind, limits], view)

    def read_values(subj, st, evt: gr.SelectData):
        if not st.get("shown"):
            return gr.skip()
        return _guarded(lambda: act.values_at(service, subj, act.load_maps(service.catalog, st["shown"]), *evt.index),
                        [values])

    activation_map.select(read_values, [subject, state], values)
    return {"encoder": encoder, "subject": subject, "refresh": (refresh_lists, [subject, encoder], [subject, encoder]),
            "run_again": (run_again, run_again_outputs)}


def _guarded(compute, outputs):
    """``compute()``, or a warning and no change to ``outputs`` when the result is gone or unreadable."""
    try:
        return compute()
    except (KeyError, OSError, ValueError, ServiceError) as exc:  # entry gone from the catalog, unreadable files
        gr.Warning(f"Cannot show that result: {exc}")
        return unchanged(outputs)


def _downloads_label(service: Service, subject_name: str) -> str:
    """The downloads' header, naming the map formats written for this subject (GIfTI only where GIfTI is written)."""
    return f"Download: PNG, metadata JSON, maps ({act.map_formats(service.subject(subject_name))})"


def _caption(result: ImageResult, rank: int | None = None) -> str:
    return (f"#{rank} · " if rank else "") + result.caption


def _rank(catalog, results: list, keep: int) -> list[tuple[ImageResult, float]]:
    """The results best first by the target's measure in the direction asked (lowest first for a minimise); each
    result's record gets its ``rerank`` (rank, candidates, measure, keep, kept) as the CLI writes it."""
    ranking = rank_scores([r.target.score(r.measure) for r in results], keep=None, top_k=min(keep, len(results)))
    try:
        for i, r in enumerate(results):
            catalog.update_record(r.entry.id, {"rerank": {"rank": ranking.ranks[i], "n_candidates": len(results),
                                                          "measure": r.measure, "keep": keep, "kept": ranking.kept[i]}})
    except OSError as exc:  # the images are stored; only their ranks could not be written
        gr.Warning(f"The ranking was not saved in the records: {storage_error(exc)}")
    return [(results[i], results[i].measure) for i in ranking.indices]


def _keep_best(value) -> int:
    """The 'keep the best k' field, checked by ``presets.LIMITS`` (a message naming it, never rounded)."""
    try:
        return LIMITS["keep_k"].check(_number(value, LIMITS["keep_k"].label))
    except LimitError as exc:
        raise gr.Error(str(exc)) from None


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
