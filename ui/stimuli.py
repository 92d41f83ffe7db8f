"""History's stimulus-package panel: the selection's image statistics per set (with permutation tests in the
report), optional SHINE-style equalisation, and a PsychoPy-ready package as a ZIP (``braindive.stimuli``).

The images are scored by the encoder that made them (the first selected entry's), so the table shows how much
of each set's predicted target effect equalisation keeps. The package is recorded in the catalog.
"""
from __future__ import annotations

import re
import shutil

import gradio as gr

from braindive.evaluation.study import zip_folder
from braindive.stimuli.design import Design
from braindive.stimuli.package import PackageSettings, build_package
from braindive.stimuli.scoring import Scorer
from braindive.stimuli.sources import from_catalog

from .evaluate import new_export_folder
from .service import Service, ServiceError

__all__ = ["build", "build_package_zip", "LABELS", "EQUALISE_CHOICES"]

EQUALISE_CHOICES = ["spectrum", "histogram", "luminance"]  # applied in this order (SHINE's spec + lum order)
LABELS = {"size": "Image size (px, 0 = as generated)", "format": "Format", "equalise": "Equalise", "space": "Equalise on",
          "design": "Design", "stim_duration": "Image duration (s)", "isi": "Fixation after each image (s)",
          "runs": "Runs (0 = one per Latin-square row)", "seed": "Order seed"}
_COLUMNS = ["set", "n", "mean_lum_mean", "rms_lum_mean", "colourfulness_mean", "spectrum_slope_mean",
            "edge_density_mean", "entropy_mean", "embedding_diversity"]


def _labelled(exc: ValueError) -> str:
    """A library error with its `field` names replaced by the panel's labels."""
    return re.sub(r"`(\w+)`", lambda m: f"'{LABELS[m.group(1)]}'" if m.group(1) in LABELS else m.group(0), str(exc))


def _scorer(service: Service, stimuli) -> tuple[Scorer | None, str]:
    encoder = next((s.record.get("description", {}).get("encoder") or s.record.get("encoder") for s in stimuli
                    if s.record), None)
    if not encoder:
        return None, "No encoder recorded: statistics only."
    try:
        return Scorer(service.encoder(encoder), service.subject_of(encoder)), f"Scored with encoder {encoder}."
    except (ServiceError, ValueError) as exc:
        return None, f"Not scored ({exc}): statistics only."


def build_package_zip(service: Service, ids: list[str], unguided: bool = False, size: int = 0, format: str = "png",
                      equalise=(), design: str = "event", stim_duration: float = 1.0, isi: float = 3.0, runs: int = 0,
                      seed: int = 0, space: str = "linear"):
    """The package of catalog entries ``ids`` in a new folder of ``exports_dir``, zipped; returns
    (per-set rows, columns, box-plot path, ZIP path, report text)."""
    for name, value in (("size", size), ("runs", runs), ("seed", seed)):
        if value is None or int(value) != value:
            raise ValueError(f"`{name}` must be a whole number, got {value!r}.")
    settings = PackageSettings(size=int(size) or None, format=format,
                               equalise=[s for s in EQUALISE_CHOICES if s in (equalise or ())], space=space,
                               design=Design(design, int(runs), float(stim_duration), float(isi), seed=int(seed)),
                               n_permutations=5000)
    stimuli, skipped = from_catalog(service.catalog, ids, unguided)
    if not stimuli:
        raise ValueError("None of the selected entries can be read.")
    scorer, note = _scorer(service, stimuli)
    folder = new_export_folder(service.settings.exports_dir)
    try:
        package = build_package(stimuli, folder / "stimulus-package", settings, scorer, service.catalog, skipped)
        path = zip_folder(package.path, folder / "braindive-stimulus-package.zip")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    effects = {e["set"]: e for e in package.report["effects"]}
    columns = _COLUMNS + ["target effect", "share kept"]
    rows = []
    for s in package.report["sets"]:
        e = effects.get(s["set"], {})
        rows.append([round(s[c], 4) if isinstance(s.get(c), float) else s.get(c, "") for c in _COLUMNS]
                    + [round(e["effect"], 3) if e else "", f"{e['share_kept']:.0%}" if "share_kept" in e else ""])
    text = (f"{note} Package `{package.id}` (hash `{package.hash[:12]}`): {len(stimuli)} images, "
            f"{package.record['runs']} run(s); permutation tests in `report/comparison.csv`.")
    if not package.record["counterbalanced"]:
        text += " **The conditions have different numbers of images: the runs are not counterbalanced.**"
    if skipped:
        text += " Skipped: " + "; ".join(f"`{i}`: {r}" for i, r in skipped)
    return rows, columns, str(package.report["paths"]["statistics_plot"]), str(path), text


def build(service: Service, selection, filters: list, chosen_ids) -> None:
    """Mount the panel under History (``filters`` and ``chosen_ids`` as in ``ui.evaluate.build``)."""
    with gr.Accordion("Stimulus package: image statistics, equalisation, PsychoPy", open=False, elem_id="stimuli-panel"):
        with gr.Row():
            unguided = gr.Checkbox(label="Add the unguided image of each seed (condition 'unguided')", value=True,
                                   elem_id="stimuli-unguided")
            equalise = gr.CheckboxGroup(EQUALISE_CHOICES, label=LABELS["equalise"] + " (applied in this order)",
                                        elem_id="stimuli-equalise")
            space = gr.Radio(["linear", "lstar", "grey"], value="linear", label=LABELS["space"],
                             info="linear luminance Y, CIELAB L* (chroma kept), or grey level (pixel values)",
                             elem_id="stimuli-space")
            size = gr.Number(0, label=LABELS["size"], precision=0, elem_id="stimuli-size")
            fmt = gr.Radio(["png", "jpg"], value="png", label=LABELS["format"], elem_id="stimuli-format")
        with gr.Row():
            design = gr.Radio(["event", "block"], value="event", label=LABELS["design"], elem_id="stimuli-design")
            duration = gr.Number(1.0, label=LABELS["stim_duration"], elem_id="stimuli-duration")
            isi = gr.Number(3.0, label=LABELS["isi"], elem_id="stimuli-isi")
            runs = gr.Number(0, label=LABELS["runs"], precision=0, elem_id="stimuli-runs")
            seed = gr.Number(0, label=LABELS["seed"], precision=0, elem_id="stimuli-seed")
        run = gr.Button("Statistics + stimulus package (ZIP)", elem_id="stimuli-run")
        report = gr.Markdown(elem_id="stimuli-report")
        table = gr.Dataframe(label="Per set: statistics means, embedding diversity, predicted target effect and the "
                                   "share kept after equalisation", interactive=False, elem_id="stimuli-table")
        with gr.Row():
            plot = gr.Image(label="Statistics per set (box plots)", type="filepath", elem_id="stimuli-plot")
            zip_file = gr.File(label="Stimulus package", elem_id="stimuli-zip")

    def on_run(ids, subj, label, since, until, encoder, add_unguided, steps, side, form, kind, seconds, gap, n_runs,
               order_seed, channel, request: gr.Request = None):
        ids = chosen_ids(request, ids, subj, label, since, until, encoder)
        if not ids:
            raise gr.Error("Nothing selected: no entries match the filters.")
        try:
            rows, columns, plot_path, path, text = build_package_zip(service, ids, add_unguided, side, form, steps, kind,
                                                                     seconds, gap, n_runs, order_seed, channel)
        except ValueError as exc:
            raise gr.Error(f"Stimulus package: {_labelled(exc)}")
        except OSError as exc:
            raise gr.Error(f"Stimulus package failed: {exc}")
        return text, gr.update(value=rows, headers=columns), plot_path, path

    run.click(on_run, [selection, *filters, unguided, equalise, size, fmt, design, duration, isi, runs, seed, space],
              [report, table, plot, zip_file])
