"""The statistics report of stimulus sets: per-image and per-set tables, permutation tests between sets, box plots
and rotationally averaged spectra, and how much of each set's predicted target effect survives equalisation.

A set's *target effect* is its target measure (e.g. FFA's mean for ``max FFA``; A − w × B for a contrast)
averaged over its images minus the same measure averaged over every other set's images. After
equalisation the encoder re-scores every image; ``share_kept`` = effect after / effect before (1: the
effect is untouched by matching the low-level statistics; near 0: it was carried by them).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..evaluation.files import save_figure, write_csv
from .scoring import diversity, target_measure
from .statistics import STATISTICS, as_float_rgb, grey, radial_spectrum, statistics_table

__all__ = ["set_summary", "target_effects", "plot_statistics", "plot_spectra", "write_report", "roi_column"]


def roi_column(roi: str) -> str:
    """``pred_FFA``, ``pred_FFA_lh``: a ROI's prediction column, a valid Python identifier (PsychoPy's rule)."""
    return "pred_" + re.sub(r"\W", "_", roi)


def set_summary(rows: list[dict], sets: list[str], embeddings: np.ndarray | None = None) -> list[dict]:
    """Per set: n, mean and sd of each statistic, the embedding diversity (when embeddings are given)."""
    out = []
    for s in sets:
        members = [i for i, r in enumerate(rows) if r["condition"] == s]
        row = {"set": s, "n": len(members)}
        for name in STATISTICS:
            v = np.array([rows[i][name] for i in members], dtype=float)
            row[f"{name}_mean"] = float(v.mean())
            row[f"{name}_sd"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
        if embeddings is not None:
            row["embedding_diversity"] = diversity(embeddings[members])
        out.append(row)
    return out


def target_effects(stimuli, subject, before, after, sets: list[str]) -> list[dict]:
    """Per set whose images have a target measure: the target effect before and after equalisation, share kept.

    ``before`` / ``after`` are ``Scores`` of the same images (``after`` None: no equalisation).
    """
    out = []
    for s in sets:
        members = [i for i, st in enumerate(stimuli) if st.condition == s and not st.unguided and st.record]
        if not members or len(members) == len(stimuli):
            continue
        record = stimuli[members[0]].record
        others = [i for i, st in enumerate(stimuli) if st.condition != s]

        def effect(scores):
            measure = [target_measure(record, subject, scores.activations[i]) for i in range(len(stimuli))]
            if any(m is None for m in measure):
                return None
            return float(np.mean([measure[i] for i in members]) - np.mean([measure[i] for i in others])), \
                float(np.mean([measure[i] for i in members]))

        first = effect(before)
        if first is None:
            continue
        row = {"set": s, "measure": _measure_name(record), "set_measure": first[1], "effect": first[0]}
        if after is not None:
            second = effect(after)
            row.update(set_measure_equalised=second[1], effect_equalised=second[0],
                       share_kept=second[0] / first[0] if first[0] else float("nan"))
        out.append(row)
    return out


def _measure_name(record: dict) -> str:
    from ..description import describe_record

    return describe_record(record).measure


def plot_statistics(rows: list[dict], sets: list[str], path) -> Path:
    """Box plots of every statistic, one box per set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(14, 6.5))
    for ax, name in zip(axes.ravel(), STATISTICS):
        ax.boxplot([[r[name] for r in rows if r["condition"] == s] for s in sets], tick_labels=sets)
        ax.set_title(name)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_spectra(images, conditions: list[str], sets: list[str], path) -> Path:
    """Rotationally averaged amplitude spectra of the grey images, mean per set (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for s in sets:
        spectra = [radial_spectrum(grey(as_float_rgb(im))) for im, c in zip(images, conditions) if c == s]
        top = min(len(f) for f, _ in spectra)
        ax.loglog(spectra[0][0][:top], np.mean([a[:top] for _, a in spectra], axis=0), label=s)
    ax.set_xlabel("spatial frequency (cycles/image)")
    ax.set_ylabel("mean amplitude")
    ax.set_title("Rotationally averaged amplitude spectra")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def write_report(folder, rows: list[dict], sets: list[str], images, embeddings=None, effects=None,
                 n_permutations: int = 10000, seed: int = 0, equalised_rows: list[dict] | None = None) -> dict:
    """``statistics.csv`` (per image), ``sets.csv``, ``comparison.csv`` (permutation tests), ``equalisation.csv``,
    ``statistics.png`` and ``spectra.png`` in ``folder``; returns the tables and paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    summary = set_summary(rows, sets, embeddings)
    comparison = statistics_table([{**r, "set": r["condition"]} for r in rows], sets, n_permutations, seed)
    paths = {"statistics": write_csv(folder / "statistics.csv", rows),
             "sets": write_csv(folder / "sets.csv", summary),
             "statistics_plot": plot_statistics(rows, sets, folder / "statistics.png"),
             "spectra_plot": plot_spectra(images, [r["condition"] for r in rows], sets, folder / "spectra.png")}
    if comparison:
        paths["comparison"] = write_csv(folder / "comparison.csv", comparison)
    if equalised_rows:
        paths["statistics_equalised"] = write_csv(folder / "statistics_equalised.csv", equalised_rows)
        eq_summary = set_summary(equalised_rows, sets)
        paths["sets_equalised"] = write_csv(folder / "sets_equalised.csv", eq_summary)
    if effects:
        paths["equalisation"] = write_csv(folder / "equalisation.csv", effects)
    return {"sets": summary, "comparison": comparison, "effects": effects or [], "paths": paths}
