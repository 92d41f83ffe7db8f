"""The end of a sweep: per-target objective vs unguided, re-ranking, a contact sheet, the evaluation stage.

Written from the catalog (so a resumed or repeated run summarises everything it holds) under
``<catalog>/runs/<run id>/``: ``summary.json``, ``summary.md`` and ``contact_sheet.png`` (one row per
job: its best images, best first). Values are each target's signed *measure* (``Target.measure``: FFA's
mean for max and min FFA), for the guided and the unguided image alike; "best" follows the direction
asked (lowest first for a minimise), and re-ranking keeps the best ``keep`` fraction of each job.
"""
from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..cache import private_tmp
from ..catalog import Catalog
from ..description import measured_baseline
from .sweep import Sweep

__all__ = ["write_summary", "job_results", "contact_sheet", "run_evaluation", "EVALUATION_HOOK"]

EVALUATION_HOOK = ("braindive.evaluation", "evaluate_batch")  # evaluate_batch(catalog, groups, **options) -> dict
_THUMB, _LABEL_W, _TOP = 96, 150, 8


def job_results(sweep: Sweep, catalog: Catalog) -> dict[str, list[dict]]:
    """Per job label: ``{id, seed, objective, baseline, target}`` of each of its images (``objective`` and
    ``baseline`` are the target's signed measure), best first in the direction the target asks."""
    groups = {}
    for job in sweep.jobs:
        rows = []
        for seed, entry_id in zip(sweep.seeds, sweep.image_ids(job)):
            entry = catalog.find(entry_id)
            if entry is not None:
                rows.append({"id": entry_id, "seed": seed, "objective": entry.objective, "target": job.target.to_dict(),
                             "baseline": measured_baseline(catalog.record(entry_id))})
        groups[job.label] = sorted(rows, key=lambda r: -job.target.score(r["objective"]))  # best first
    return groups


def _stats(values) -> dict:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if not v.size:
        return {"n": 0}
    return {"n": int(v.size), "mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "median": float(np.median(v)), "q25": float(np.quantile(v, 0.25)), "q75": float(np.quantile(v, 0.75))}


def contact_sheet(catalog: Catalog, groups: dict[str, list[dict]], path: Path, top: int = _TOP) -> Path | None:
    """One row per job: its ``top`` images by objective, labelled; None when there is nothing to show."""
    rows = [(label, rows[:top]) for label, rows in groups.items() if rows]
    if not rows:
        return None
    sheet = Image.new("RGB", (_LABEL_W + top * _THUMB, len(rows) * _THUMB), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (label, items) in enumerate(rows):
        draw.text((4, r * _THUMB + 4), label, fill="black")
        draw.text((4, r * _THUMB + 20), f"best {items[0]['objective']:.3g}", fill="gray")
        for c, item in enumerate(items):
            with Image.open(catalog.get(item["id"]).image_path) as im:
                sheet.paste(im.convert("RGB").resize((_THUMB, _THUMB)), (_LABEL_W + c * _THUMB, r * _THUMB))
    _atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"))
    return path


def run_evaluation(sweep: Sweep, catalog: Catalog, groups: dict, log) -> dict | None:
    """Call the evaluation stage if this installation has it; otherwise say why it is skipped."""
    module_name, function = EVALUATION_HOOK
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        log(f"evaluation skipped: {module_name} is not part of this installation.")
        return None
    evaluate = getattr(module, function, None)
    if evaluate is None:
        log(f"evaluation skipped: {module_name} has no {function}(catalog, groups, **options).")
        return None
    try:
        return evaluate(catalog, groups, **sweep.evaluation)
    except (ValueError, RuntimeError, OSError) as exc:  # e.g. no CLIP weights offline: the images stay, say why
        log(f"evaluation failed: {exc}")
        return None


def write_summary(sweep: Sweep, catalog: Catalog, log=print) -> Path:
    """Write the run's summary files; returns ``summary.md``."""
    folder = catalog.root / "runs" / sweep.run_id
    folder.mkdir(parents=True, exist_ok=True)
    groups = job_results(sweep, catalog)
    summary = {"run_id": sweep.run_id, "sweep": sweep.source, "model": sweep.model, "seeds": len(sweep.seeds), "jobs": {}}
    lines = [f"# Run {sweep.run_id}", "", f"Sweep `{sweep.source}`, model `{sweep.model}`, {len(sweep.seeds)} seeds per job.",
             "Values are each target's measure (the region's mean for max and min; A − w·B for a contrast); "
             "best = highest, lowest for a minimise.",
             "", "| job | images | measure mean ± sd | median | unguided mean ± sd | change | kept (re-rank) |",
             "|---|---|---|---|---|---|---|"]
    jobs = {job.label: job for job in sweep.jobs}
    for label, rows in groups.items():
        guided, unguided = _stats(r["objective"] for r in rows), _stats(r["baseline"] for r in rows)
        kept = rows[:max(1, math.ceil(sweep.rerank_keep * len(rows)))] if sweep.rerank_keep and rows else []
        summary["jobs"][label] = {"objective": guided, "unguided": unguided, "top": [r["id"] for r in rows[:_TOP]],
                                  "kept": [r["id"] for r in kept], **jobs[label].settings.image_record()}
        gain = guided.get("mean", math.nan) - unguided.get("mean", math.nan)
        lines.append(f"| {label} | {guided['n']} | {_fmt(guided)} | {guided.get('median', math.nan):.4g} | "
                     f"{_fmt(unguided)} | {gain:+.4g} | {len(kept) if sweep.rerank_keep else 'off'} |")
    starts = sorted({job.settings.init_image for job in sweep.jobs if job.settings.init_image}, key=lambda s: s.file)
    if starts:
        lines += ["", "Start images (named as in the sweep file, with their pixel sha256): "
                  + ", ".join(f"`{s.file}` {s.sha256[:16]}…" for s in starts)]
    sheet = contact_sheet(catalog, groups, folder / "contact_sheet.png")
    if sheet:
        lines += ["", f"Best images per job: `{sheet}`"]
    if sweep.evaluation is not None:
        table = run_evaluation(sweep, catalog, groups, log)
        if table:
            summary["evaluation"] = table
            lines += ["", "## Evaluation", "", "```", json.dumps(table, indent=2, default=str), "```"]
    text = "\n".join(lines) + "\n"
    _atomic_write(folder / "summary.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=2)))
    _atomic_write(folder / "summary.md", lambda tmp: tmp.write_text(text))
    log(text)
    return folder / "summary.md"


def _fmt(stats: dict) -> str:
    return f"{stats['mean']:.4g} ± {stats['sd']:.2g}" if stats.get("n") else "n/a"


def _atomic_write(path: Path, write) -> None:
    tmp = private_tmp(path)
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
