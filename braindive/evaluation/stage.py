"""The evaluation stage of a batch sweep (``[evaluation]`` in a sweep file): CLIP 5-way per job.

``braindive.batch`` calls ``evaluate_batch(catalog, groups, **options)`` with the run's jobs (label ->
rows holding catalog ``id``s); options are ``ZeroShotConfig`` fields plus ``roi_table`` (a JSON path) and
``confidence``. Each job is one set (its label is the set's source), so jobs of one target with other
settings stay apart. The evaluation is stored in the catalog like the app's and its report written beside it.
"""
from __future__ import annotations

from dataclasses import fields

from .categories import load_roi_table
from .report import EVALUATIONS_DIR, evaluate, store, write_report
from .sets import generated_sets
from .zeroshot import ZeroShotConfig, load_classifier

__all__ = ["evaluate_batch"]

_CONFIG_FIELDS = {f.name for f in fields(ZeroShotConfig)}


def evaluate_batch(catalog, groups: dict, roi_table: str | None = None, confidence: float = 0.95, **options) -> dict:
    """Classify every job's images; returns ``{"id", "report", "table"}`` (the comparison table's rows)."""
    unknown = sorted(set(options) - _CONFIG_FIELDS)
    if unknown:
        raise ValueError(f"[evaluation] options {unknown} are unknown; use ZeroShotConfig fields "
                         f"{sorted(_CONFIG_FIELDS)}, `roi_table` or `confidence`.")
    sets = []
    for label, rows in groups.items():
        if not rows:
            continue
        for image_set in generated_sets([row["id"] for row in rows], catalog):
            image_set.source = label
            if image_set.category_roi is not None:  # a minimise, contrast or voxel set stands for no category
                sets.append(image_set)
    if not sets:
        raise ValueError("The evaluation stage found no images of a maximised ROI (the targets a CLIP category "
                         "stands for) in this run's catalog entries.")
    evaluation = evaluate(sets, load_classifier(ZeroShotConfig(**options)), load_roi_table(roi_table), confidence)
    store(evaluation, catalog.root)
    report = write_report(evaluation, catalog.root / EVALUATIONS_DIR / evaluation.id)
    return {"id": evaluation.id, "report": str(report["comparison"]), "table": evaluation.table()}
