"""History tab: browse the results catalog page by page, reopen a result, pick images for a stimulus-set ZIP.

Every entry is labelled by what was optimised (``min FFA``, ``FFA − 1.0×PPA``), never as a plain ROI
run. Clicking a thumbnail opens the result (image, parameters, predicted-activation map, ROI chart,
files, the settings to run it again) or, in selection mode, adds it to / removes it from the export
selection. Rows that cannot be read and images whose files are missing are skipped and reported.
"""
from __future__ import annotations

import shutil
import time
import uuid
from datetime import date, datetime
from typing import Callable

import gradio as gr

from braindive import catalog_export
from braindive.catalog import Entry, Page
from braindive.catalog_export import Export
from braindive.description import describe_record, measured_baseline
from braindive.targets import Target

from . import activation as act
from . import evaluate as evaluation_panel
from . import stimuli as stimuli_panel
from .charts import roi_chart
from .registry import subject_label as subject_label_of
from .service import CUSTOM, Service, ServiceError, storage_error

__all__ = ["build", "export_stimuli", "run_again_values", "find", "status_text", "PAGE_SIZE"]

COLUMNS = ["label", "predicted (measure)", "seed", "subject", "encoder", "scale", "steps", "scheduler", "mode",
           "created", "id"]
PAGE_SIZE = 40
KEEP_EXPORTS = 3  # newest export folders kept in ``Settings.exports_dir``; Gradio copies each file when serving it
EXPORT_NAME = "braindive-stimuli.zip"
CLICK_OPENS, CLICK_SELECTS = "open it", "add it to / remove it from the export selection"
SELECTED = "✓ "


def export_stimuli(service: Service, ids, keep: int = KEEP_EXPORTS) -> Export:
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
        export = catalog_export.export_zip(service.catalog, ids, folder / EXPORT_NAME)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    for old in sorted(p for p in root.iterdir() if p.is_dir())[:-max(1, keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return export


def check_dates(since, until) -> tuple[str, str]:
    """The From / To filters stripped; ``ValueError`` naming the field (by its label) for a bad or reversed date."""
    dates = []
    for value, label in ((since, "From"), (until, "To")):
        text = str(value or "").strip()
        if text:
            try:
                (date.fromisoformat if len(text) == 10 else datetime.fromisoformat)(text)
            except ValueError:
                raise ValueError(f"'{label}' must be a date YYYY-MM-DD (or an ISO timestamp), got {text[:40]!r}.") from None
        dates.append(text)
    if dates[0] and dates[1] and dates[0][:10] > dates[1][:10]:
        raise ValueError(f"'From' ({dates[0]}) is after 'To' ({dates[1]}): no date can match; swap them.")
    return dates[0], dates[1]


def thumbnail_caption(entry: Entry) -> str:
    """What tells thumbnails apart: target, seed, subject, encoder, guidance mode, prompt and date."""
    d = entry.description
    prompt = (d.prompt or "").strip()
    prompt = f' · "{prompt[:24]}{"…" if len(prompt) > 24 else ""}"' if prompt else ""
    return (f"{entry.caption} · {d.subject} · {d.encoder} · {d.mode or 'exact'}{prompt} · "
            f"{str(entry.created)[:16].replace('T', ' ')}")


def find(service: Service, subject="", label="", since="", until="", encoder="", page: int = 0,
         owner: str | None = None, page_size: int = PAGE_SIZE) -> Page:
    """One page of matching entries (``page`` from 0; ``page_size`` None: all); a bad date is a ``ValueError``.

    ``subject`` is a voxel-space fingerprint (what the subject list offers: two spaces of one person stay
    apart), or a subject name for entries recorded without one."""
    since, until = check_dates(since, until)
    space = subject if _is_fingerprint(subject) else None
    return service.catalog.page(subject=None if space else subject or None, subject_space=space,
                                label=label or None, encoder=encoder or None,
                                since=since or None, until=until or None,
                                limit=page_size, offset=max(0, int(page)) * (page_size or 0), owner=owner)


def status_text(page: Page, page_size: int = PAGE_SIZE) -> str:
    """``Entries 41–80 of 311 · page 2 of 8`` plus every skipped row with its reason."""
    if not page.total:
        text = "No entries match these filters."
    else:
        pages = -(-page.total // page_size)
        last = min(page.offset + page_size, page.total)
        text = (f"Entries {page.offset + 1}–{last} of {page.total} · page {page.offset // page_size + 1} of {pages}"
                if page.offset < page.total else f"Page {page.offset // page_size + 1} is past the last page ({pages}).")
    if page.skipped:
        reasons = "; ".join(f"`{i}`: {reason}" for i, reason in page.skipped)
        text += f"\n\n**{len(page.skipped)} entr{'y' if len(page.skipped) == 1 else 'ies'} skipped** — {reasons}"
    return text


def run_again_values(record: dict) -> dict:
    """The ``GenerationRequest`` fields (= the Explore fields) that reproduce a catalog record (one image, same seed).

    The record's ``Target`` gives the objective fields (a voxel set comes back as ``target=CUSTOM`` with its
    voxels); ``subject_space`` (the voxel-space fingerprint) says which space the subject must be.
    """
    d, t = describe_record(record), Target.from_record(record)
    reference = (record.get("parameters") or {}).get("reference")
    if reference:
        raise ValueError(f"This result started from an image ({reference.get('file') or 'an upload'}, strength "
                         f"{record['parameters'].get('strength')}); Explore's Generate starts from noise. Use "
                         "\"Start from an image\" with that image instead.")
    if t.voxels_b is not None:
        raise ValueError(f"This result guides {t.region_a} against {t.region_b}, a voxel set Explore's contrast cannot "
                         "name; use \"Split region…\" with \"Each part: contrast\" instead.")
    values = dict(subject=d.subject, subject_space=d.subject_space, encoder=d.encoder,
                  target=CUSTOM if t.voxels is not None else t.region_a, voxels=t.voxels or (),
                  objective=t.kind, contrast_target=t.region_b, weight=t.weight, scale=d.scale, steps=d.steps,
                  scheduler=d.scheduler, seed=d.seed, n_images=1, prompt=d.prompt, sag_scale=d.sag, mode=d.mode)
    return {k: v for k, v in values.items() if v is not None and v != ""}


def _is_fingerprint(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _parameters(entry: Entry, record: dict) -> str:
    d = entry.description
    baseline = measured_baseline(record)
    unguided = "" if baseline is None else f" (unguided, same seed: {baseline:.2f})"
    rows = [("Objective", {"maximize": "maximise", "minimize": "minimise", "contrast": "contrast"}[d.kind]),
            ("Target", d.target + (f" − {d.weight:g} × {d.target_b}" if d.kind == "contrast" else "")),
            ("Hemisphere", d.hemisphere), ("Subject", d.subject + (f" (space {d.subject_space})" if d.subject_space else "")),
            ("Encoder", d.encoder), ("Model", d.model), ("Scheduler", d.scheduler), ("Guidance mode", d.mode),
            ("Brain guidance scale", d.scale), ("Steps", d.steps), ("SAG scale", d.sag), ("Prompt", d.prompt or "(empty)"),
            ("Seed", d.seed), ("Created", entry.created), ("Id", entry.id)]
    table = "\n".join(f"| {k} | {'' if v is None else str(v).replace('|', '/')} |" for k, v in rows)
    return f"### {d.label} · seed {d.seed}\n**{entry.value_text}**{unguided}\n\n| | |\n|---|---|\n{table}"


def _activation_map(service: Service, entry: Entry):
    """The entry's predicted-activation flatmap as Explore shows it (``ui.activation.result_map``), or None."""
    try:
        maps = act.load_maps(service.catalog, entry.id)
    except ValueError as exc:  # a damaged .npy: the rest of the result still opens
        gr.Warning(str(exc))
        return None
    except (KeyError, OSError):  # no activations stored
        return None
    try:
        subject = service.subject_in_space(entry.subject, entry.description.subject_space)
        return act.result_map(service, subject_label_of(subject), maps, "guided", act.LIMITS[0])
    except (ServiceError, ValueError, KeyError, OSError) as exc:
        gr.Warning(f"No activation map for {entry.id}: {exc}")
        return None


def build(service: Service, owner: Callable[[gr.Request | None], str | None] | None = None) -> dict:
    """Build the tab; ``owner(request)`` names whose results a visitor sees (None: everyone's)."""

    def owner_of(request) -> str | None:
        return owner(request) if owner is not None else None

    with gr.Row():
        subject = gr.Dropdown([""], value="", label="Subject (any)", allow_custom_value=True, elem_id="history-subject")
        target = gr.Dropdown([""], value="", label="Objective (any)", allow_custom_value=True, elem_id="history-target")
        encoder = gr.Dropdown([""], value="", label="Encoder (any)", allow_custom_value=True, elem_id="history-encoder")
        since = gr.Textbox(label="From (YYYY-MM-DD)", placeholder="2026-01-01", elem_id="history-since")
        until = gr.Textbox(label="To (YYYY-MM-DD)", elem_id="history-until")
        refresh = gr.Button("Refresh", elem_id="history-refresh")
    status = gr.Markdown(elem_id="history-status")
    click_mode = gr.Radio([CLICK_OPENS, CLICK_SELECTS], value=CLICK_OPENS, label="Clicking a thumbnail will",
                          elem_id="history-click-mode")
    gallery = gr.Gallery(label="Generated images", columns=8, height=300, elem_id="history-gallery", format="png",
                         fit_columns=False, object_fit="contain", allow_preview=False)
    with gr.Row():
        previous = gr.Button("◀ Previous page", size="sm", elem_id="history-previous")
        next_ = gr.Button("Next page ▶", size="sm", elem_id="history-next")
    page_index = gr.State(0)
    shown = gr.State([])      # [(image path, caption, id)] of the page on screen
    selected = gr.State([])   # [(image path, caption, id)] picked for export, in click order
    with gr.Accordion("Result", open=True, elem_id="history-detail"):
        with gr.Row():
            image = gr.Image(label="Image", interactive=False, elem_id="history-image", height=280)
            parameters = gr.Markdown("Click a thumbnail to open it.", elem_id="history-params")
        with gr.Row():
            # no label over the map, as in Explore: it would hide the hemisphere names in its top corners
            activation_map = gr.Image(label="Predicted activation (guided image)", show_label=False, buttons=[],
                                      interactive=False, elem_id="history-map", format="png")
            chart = gr.Plot(label="Per-ROI prediction", elem_id="history-chart")
        files = gr.File(label="Image, record (JSON), predicted activation (.npy), unguided image and activation",
                        file_count="multiple",
                        elem_id="history-files")
        run_again = gr.Button("Run again with these settings", elem_id="history-run-again")
        run_again_json = gr.JSON(label="Settings for Explore (GenerationRequest fields)", elem_id="history-run-again-values")
    table = gr.Dataframe(headers=COLUMNS, label="Entries on this page", elem_id="history-table", interactive=False)
    with gr.Row():
        selection_gallery = gr.Gallery(label="Export selection (click an image to remove it)", columns=10, height=140,
                                       elem_id="history-selected", allow_preview=False, format="png")
        with gr.Column():
            selection_text = gr.Markdown("No image selected.", elem_id="history-selection-text")
            clear = gr.Button("Clear selection", size="sm", elem_id="history-clear")
    with gr.Row():
        export = gr.Button("Export selection (ZIP: images + metadata + manifest.csv)", elem_id="history-export")
        export_all_button = gr.Button("Export all matching entries", elem_id="history-export-all")
        zip_file = gr.File(label="Stimulus set", elem_id="history-zip")
    export_report = gr.Markdown(elem_id="history-export-report")

    def gallery_items(items, picked) -> list:
        chosen = {i for _, _, i in picked}
        return [(path, (SELECTED if i in chosen else "") + caption) for path, caption, i in items]

    def load(subj, tgt, start, end, enc="", page=0, picked=(), request: gr.Request = None):
        who = owner_of(request)
        try:
            result = find(service, subj, tgt, start, end, enc, page, owner=who)
        except ValueError as exc:  # a bad date: said where the entries would be, the page stays as it is
            gr.Warning(str(exc))
            return tuple(f"**{exc}**" if component is status else gr.skip() for component in page_outputs)
        items = [(str(e.image_path), thumbnail_caption(e), e.id) for e in result.entries]
        rows = [[e.label, e.value_text, e.seed, e.subject, e.encoder, e.guidance_scale, e.steps,
                 e.description.scheduler, e.description.mode, e.created, e.id] for e in result.entries]
        choices = {c: [""] + service.catalog.distinct(c, owner=who) for c in ("label", "encoder")}
        spaces = [("", "")] + [(f"{name} · space {space[:8]}" if space else name, space or name)
                               for name, space in service.catalog.subject_spaces(owner=who)]
        return (gallery_items(items, picked or []), rows, status_text(result), page, items,
                gr.update(choices=spaces), gr.update(choices=choices["label"]),
                gr.update(choices=choices["encoder"]))

    filters = [subject, target, since, until, encoder]
    page_outputs = [gallery, table, status, page_index, shown, subject, target, encoder]

    def first_page(subj, tgt, start, end, enc, picked, request: gr.Request = None):
        return load(subj, tgt, start, end, enc, 0, picked, request)

    def turn_page(step):
        def turn(subj, tgt, start, end, enc, page, picked, request: gr.Request = None):
            return load(subj, tgt, start, end, enc, max(0, page + step), picked, request)
        return turn

    refresh.click(first_page, [*filters, selected], page_outputs)
    for box in (since, until):
        box.submit(first_page, [*filters, selected], page_outputs)
    for dropdown in (subject, target, encoder):
        dropdown.input(first_page, [*filters, selected], page_outputs)
    previous.click(turn_page(-1), [*filters, page_index, selected], page_outputs)
    next_.click(turn_page(+1), [*filters, page_index, selected], page_outputs)

    def open_entry(entry_id: str):
        try:
            entry = service.catalog.get(entry_id)
            record = service.catalog.record(entry_id)
        except (KeyError, ValueError, OSError) as exc:
            raise gr.Error(f"Cannot open {entry_id}: {exc}")
        plot = (roi_chart(record["roi_means"], record["baseline_roi_means"], Target.from_record(record))
                if "roi_means" in record and "baseline_roi_means" in record else None)
        npy = entry.image_path.with_suffix(".npy")
        unguided = [p for p in service.catalog.unguided_paths(entry_id) if p is not None]
        downloads = [str(p) for p in (entry.image_path, entry.record_path, npy, *unguided) if p.is_file()]
        return str(entry.image_path), _parameters(entry, record), _activation_map(service, entry), plot, downloads, entry_id

    current = gr.State("")
    detail_outputs = [image, parameters, activation_map, chart, files, current]
    selection_outputs = [selection_gallery, selection_text, selected, gallery]

    def selection_view(items, picked):
        text = f"{len(picked)} image(s) selected for export." if picked else "No image selected."
        return [(p, c) for p, c, _ in picked], text, picked, gallery_items(items, picked)

    def click(mode, items, picked, evt: gr.SelectData):
        index = evt.index if isinstance(evt.index, int) else -1
        if not 0 <= index < len(items):
            gr.Warning("That thumbnail is no longer on this page; press Refresh.")
            return (gr.skip(),) * (len(detail_outputs) + len(selection_outputs))
        if mode == CLICK_OPENS:
            return (*open_entry(items[index][2]), *(gr.skip(),) * len(selection_outputs))
        ids = [i for _, _, i in picked]
        picked = [p for p in picked if p[2] != items[index][2]] if items[index][2] in ids else [*picked, tuple(items[index])]
        return (*(gr.skip(),) * len(detail_outputs), *selection_view(items, picked))

    gallery.select(click, [click_mode, shown, selected], [*detail_outputs, *selection_outputs])

    def unselect(items, picked, evt: gr.SelectData):
        index = evt.index if isinstance(evt.index, int) else -1
        return selection_view(items, [p for k, p in enumerate(picked) if k != index])

    selection_gallery.select(unselect, [shown, selected], selection_outputs)
    clear.click(lambda items: selection_view(items, []), [shown], selection_outputs)

    def run_again_settings(entry_id: str):
        if not entry_id:
            raise gr.Error("Open a result first (click its thumbnail).")
        try:
            return run_again_values(service.catalog.record(entry_id))
        except ValueError as exc:
            raise gr.Error(str(exc)) from exc

    run_again.click(run_again_settings, [current], [run_again_json])

    def _export(ids) -> tuple[str, str]:
        try:
            result = export_stimuli(service, ids)
        except OSError as exc:
            raise gr.Error(f"Export failed: {storage_error(exc)}")
        except (KeyError, ValueError) as exc:
            raise gr.Error(f"Export failed: {exc}")
        report = f"Exported {len(result.exported)} image(s)."
        if result.skipped:
            report += f" Skipped {len(result.skipped)} (listed in skipped.csv): " + "; ".join(
                f"`{i}`: {reason}" for i, reason in result.skipped)
            gr.Warning(report)
        return str(result.path), report

    def all_matching(subj, tgt, start, end, enc, request, skipped: bool = False) -> list[str]:
        """Every matching readable id; ``skipped``: the skipped ones too (an export lists them, as History does)."""
        try:
            page = find(service, subj, tgt, start, end, enc, owner=owner_of(request), page_size=None)
        except ValueError as exc:
            raise gr.Error(str(exc))
        return [e.id for e in page.entries] + ([i for i, _ in page.skipped] if skipped else [])

    def visible(request, ids) -> list[str]:
        """The ids of a selection that this visitor may see (any ids a caller sends, on a per-user History)."""
        ids = [i[2] if isinstance(i, (list, tuple)) else i for i in ids or []]
        if owner_of(request) is None or not ids:
            return ids
        own = set(all_matching("", "", "", "", "", request))
        return [i for i in ids if i in own]

    def export_zip(subj, tgt, start, end, ids, enc="", request: gr.Request = None):
        """The selection's ZIP path; with no selection, every entry matching the filters."""
        ids = visible(request, ids) if ids else all_matching(subj, tgt, start, end, enc, request, skipped=True)
        if not ids:
            raise gr.Error("Nothing to export: no entries match the filters.")
        return _export(ids)[0]

    def export_all(subj, tgt, start, end, enc, request: gr.Request = None):
        ids = all_matching(subj, tgt, start, end, enc, request, skipped=True)
        if not ids:
            raise gr.Error("Nothing to export: no entries match the filters.")
        return _export(ids)

    export.click(export_zip, [subject, target, since, until, selected, encoder], zip_file)
    export_all_button.click(export_all, filters, [zip_file, export_report])
    chosen = lambda request, ids, *values: visible(request, ids) or all_matching(*values, request)  # noqa: E731
    evaluation_panel.build(service, selected, filters, chosen)
    stimuli_panel.build(service, selected, filters, chosen)
    return {"refresh": (load, [*filters, page_index, selected], page_outputs), "run_again": (run_again, run_again_json)}
