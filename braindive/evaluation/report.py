"""CLIP 5-way evaluation of image sets: per-image probabilities, per-set accuracy (Wilson 95% interval),
confusion matrices, the comparison table (one row per target, one column group per source, like the
paper's table), its plot, and storage beside a catalog (``<catalog>/evaluations/<id>.json``)."""
from __future__ import annotations

import datetime as _dt
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .categories import category_of, load_roi_table
from .files import csv_text, save_figure, write_atomic
from .sets import ImageSet
from .stats import Accuracy, accuracy, confusion_matrix

__all__ = ["SetResult", "Evaluation", "evaluate", "write_report", "plot", "store", "stored"]

EVALUATIONS_DIR = "evaluations"


@dataclass
class SetResult:
    """One image set classified: ``probabilities[i, j]`` is image i's probability of category j."""

    source: str
    subject: str
    target: str
    category: str
    ids: list[str]
    probabilities: np.ndarray
    predicted: list[str]
    accuracy: Accuracy


@dataclass
class Evaluation:
    """Results for several sets with the settings that produced them."""

    categories: list[str]
    results: list[SetResult]
    settings: dict
    id: str = ""
    created: str = ""

    @property
    def sources(self) -> list[str]:
        return list(dict.fromkeys(r.source for r in self.results))

    @property
    def targets(self) -> list[str]:
        return list(dict.fromkeys(r.target for r in self.results))

    def confusion(self, source: str) -> np.ndarray:
        """Counts ``[n_categories, n_categories]`` over all targets of ``source``: row true, column predicted."""
        rows = [r for r in self.results if r.source == source]
        true = [r.category for r in rows for _ in r.predicted]
        return confusion_matrix(true, [p for r in rows for p in r.predicted], self.categories)

    def table(self) -> list[dict]:
        """The comparison table: one row per target; accuracy (%) and its interval per source."""
        out = []
        for target in self.targets:
            rows = {r.source: r for r in self.results if r.target == target}
            first = next(iter(rows.values()))
            row = {"subject": first.subject, "target": target, "category": first.category}
            for source in self.sources:
                acc = rows.get(source)
                row[f"{source} accuracy %"] = "" if acc is None else round(100 * acc.accuracy.value, 1)
                row[f"{source} 95% CI"] = "" if acc is None else \
                    f"{100 * acc.accuracy.low:.1f}-{100 * acc.accuracy.high:.1f}"
                row[f"{source} n"] = "" if acc is None else acc.accuracy.n
            out.append(row)
        return out

    def to_dict(self) -> dict:
        return {"id": self.id, "created": self.created, "categories": self.categories, "settings": self.settings,
                "results": [{"source": r.source, "subject": r.subject, "target": r.target, "category": r.category,
                             "ids": r.ids, "probabilities": np.round(r.probabilities, 6).tolist(),
                             "predicted": r.predicted, "correct": r.accuracy.correct, "n": r.accuracy.n,
                             "ci": [r.accuracy.low, r.accuracy.high], "confidence": r.accuracy.confidence}
                            for r in self.results]}


def evaluate(sets: list[ImageSet], classifier, roi_table: dict | None = None, confidence: float = 0.95) -> Evaluation:
    """Classify every image of ``sets``; a set is correct where the prediction is its target's category."""
    if not sets:
        raise ValueError("Nothing to evaluate: no image sets.")
    table = load_roi_table() if roi_table is None else roi_table
    categories = list(classifier.categories)
    results = []
    for s in sets:
        if s.category_roi is None:
            raise ValueError(f"Target {s.target!r} has no CLIP category: only a maximised ROI stands for one "
                             "(a minimised region, a contrast or a voxel set does not); leave it out of the evaluation.")
        category = category_of(s.category_roi, table)
        if category not in categories:
            raise ValueError(f"Target {s.target!r} is category {category!r}, which the classifier's categories "
                             f"{categories} lack; add it to `class_names`.")
        if not s.images:
            raise ValueError(f"Image set {s.source} / {s.target} is empty.")
        probs = classifier.predict_proba(s.images)
        predicted = [categories[i] for i in probs.argmax(1)]
        results.append(SetResult(s.source, s.subject, s.target, category, list(s.ids), probs, predicted,
                                 accuracy([p == category for p in predicted], confidence)))
    settings = {"zero_shot": classifier.config.to_dict(), "roi_table": table, "confidence": confidence,
                "interval": "Wilson score"}
    return Evaluation(categories, results, settings, id=uuid.uuid4().hex[:12],
                      created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))


def per_image_rows(evaluation: Evaluation) -> list[dict]:
    return [{"source": r.source, "subject": r.subject, "target": r.target, "category": r.category, "image": image,
             **{f"p_{c}": round(float(p), 6) for c, p in zip(evaluation.categories, probs)},
             "predicted": pred, "correct": int(pred == r.category)}
            for r in evaluation.results for image, probs, pred in zip(r.ids, r.probabilities, r.predicted)]


def write_report(evaluation: Evaluation, out_dir) -> dict[str, Path]:
    """``comparison.csv`` (the table), ``per_image.csv``, ``confusion.csv``, ``evaluation.json``, ``evaluation.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    confusion = [{"source": s, "true": t, **{f"predicted {c}": int(v) for c, v in zip(evaluation.categories, row)}}
                 for s in evaluation.sources for t, row in zip(evaluation.categories, evaluation.confusion(s))]
    paths = {"comparison": write_atomic(out / "comparison.csv", csv_text(evaluation.table())),
             "per_image": write_atomic(out / "per_image.csv", csv_text(per_image_rows(evaluation))),
             "confusion": write_atomic(out / "confusion.csv", csv_text(confusion)),
             "json": write_atomic(out / "evaluation.json", json.dumps(evaluation.to_dict(), indent=1))}
    paths["plot"] = plot(evaluation, out / "evaluation.png")
    return paths


def plot(evaluation: Evaluation, path) -> Path:
    """Accuracy per target and source with interval bars, and the confusion matrix of the first source."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources, targets = evaluation.sources, evaluation.targets
    fig, (ax, cm_ax) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.4, 1]})
    width = 0.8 / len(sources)
    for k, source in enumerate(sources):
        rows = {r.target: r.accuracy for r in evaluation.results if r.source == source}
        xs = [i + (k - (len(sources) - 1) / 2) * width for i, t in enumerate(targets) if t in rows]
        acc = [rows[t] for t in targets if t in rows]
        values = np.array([100 * a.value for a in acc])
        err = np.array([[100 * (a.value - a.low) for a in acc], [100 * (a.high - a.value) for a in acc]])
        ax.bar(xs, values, width, yerr=err, capsize=3, label=source)
    ax.axhline(100 / len(evaluation.categories), color="grey", lw=0.8, ls="--", label="chance")
    categories = {r.target: r.category for r in evaluation.results}
    ax.set_xticks(range(len(targets)), [f"{t}\n({categories[t]})" for t in targets])
    ax.set_ylabel("CLIP 5-way accuracy (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    ax.set_title(f"Accuracy, {int(100 * evaluation.settings['confidence'])}% Wilson intervals")
    matrix = evaluation.confusion(sources[0])
    cm_ax.imshow(matrix, cmap="Blues")
    for (i, j), v in np.ndenumerate(matrix):
        cm_ax.text(j, i, str(v), ha="center", va="center", fontsize=8,
                   color="white" if v > matrix.max() / 2 else "black")
    cm_ax.set_xticks(range(len(evaluation.categories)), evaluation.categories, rotation=30)
    cm_ax.set_yticks(range(len(evaluation.categories)), evaluation.categories)
    cm_ax.set_xlabel("predicted")
    cm_ax.set_ylabel("true (ROI category)")
    cm_ax.set_title(f"Confusion: {sources[0]}")
    fig.tight_layout()
    return save_figure(fig, path)


def store(evaluation: Evaluation, catalog_root) -> Path:
    """Write the evaluation with its settings as ``<catalog_root>/evaluations/<id>.json`` (atomically)."""
    folder = Path(catalog_root) / EVALUATIONS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return write_atomic(folder / f"{evaluation.id}.json", json.dumps(evaluation.to_dict(), indent=1))


def stored(catalog_root) -> list[dict]:
    """Stored evaluations of a catalog, newest first (unreadable files are skipped)."""
    out = []
    for path in (Path(catalog_root) / EVALUATIONS_DIR).glob("*.json"):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return sorted(out, key=lambda e: e.get("created", ""), reverse=True)
