"""Human-study analysis: validate response CSVs against the exported trial lists, exclude participants
who failed attention checks, and report accuracy per ROI and design with Wilson 95% intervals.

Accuracy pools the trials of all included participants (each trial one Bernoulli outcome); the
interval therefore ignores between-participant variability, as the per-participant table shows.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from .files import save_figure, write_csv
from .stats import Accuracy, accuracy
from .study import RESPONSE_COLUMNS

__all__ = ["StudyAnalysis", "analyze", "write_analysis", "default_study_folder"]


@dataclass
class StudyAnalysis:
    per_roi: list[dict]  # roi, category, kind, correct, n, accuracy, ci_low, ci_high
    participants: list[dict]  # participant, list, file, failed_checks, accuracy, excluded
    max_failed_checks: int

    @property
    def included(self) -> list[str]:
        return [p["participant"] for p in self.participants if not p["excluded"]]


def default_study_folder(response_files) -> Path:
    """The study folder of ``<study>/responses/*.csv``."""
    folder = Path(response_files[0]).resolve().parent.parent
    if not (folder / "study.json").is_file():
        raise FileNotFoundError(f"No study.json in {folder}; give the study folder (--study).")
    return folder


def _read_study(folder: Path) -> dict:
    path = Path(folder) / "study.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"Study file {path} is missing or not JSON: {exc}") from exc


def _read_responses(path: Path, study: dict) -> tuple[str, int, list[dict]]:
    """(participant, list, rows in order) of one response CSV; every mismatch with the trial list is an error."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # spreadsheet programs may add a byte-order mark
    except OSError as exc:
        raise ValueError(f"Cannot read response file {path}: {exc}") from exc
    rows = list(csv.reader(text.splitlines()))
    if not rows or tuple(rows[0]) != RESPONSE_COLUMNS:
        raise ValueError(f"{path}: header must be {','.join(RESPONSE_COLUMNS)}, got {','.join(rows[0]) if rows else 'nothing'}.")
    body = rows[1:]
    for number, row in enumerate(body, start=2):
        if len(row) != len(RESPONSE_COLUMNS):
            raise ValueError(f"{path}: line {number} has {len(row)} fields, expected {len(RESPONSE_COLUMNS)} (truncated file?).")
    records = [dict(zip(RESPONSE_COLUMNS, row)) for row in body]
    if not records:
        raise ValueError(f"{path}: no responses.")
    for key in ("study_id", "participant", "list"):
        values = sorted({r[key] for r in records})
        if len(values) != 1:
            raise ValueError(f"{path}: column {key!r} must hold one value, got {values}.")
    if records[0]["study_id"] != study["study_id"]:
        raise ValueError(f"{path}: responses are for study {records[0]['study_id']!r}, this study is {study['study_id']!r}.")
    lists = study["lists"]
    if records[0]["list"] not in {str(i) for i in range(len(lists))}:
        raise ValueError(f"{path}: list must be one of {list(range(len(lists)))}, got {records[0]['list']!r}.")
    trials = lists[int(records[0]["list"])]
    if len(records) != len(trials):
        raise ValueError(f"{path}: {len(records)} responses for a list of {len(trials)} trials (truncated or extra rows).")
    for record, trial in zip(records, trials):
        if record["trial_id"] != trial["trial_id"] or record["position"] != str(trial["position"]):
            raise ValueError(f"{path}: position {record['position']} is trial {record['trial_id']!r}, the trial list "
                             f"has {trial['trial_id']!r} at position {trial['position']}.")
        allowed = ["a", "b"] if trial["kind"] == "pair" else study["categories"]
        if record["choice"] not in allowed:
            raise ValueError(f"{path}: trial {trial['trial_id']} choice must be one of {allowed}, got {record['choice']!r}.")
    return records[0]["participant"], int(records[0]["list"]), records


def analyze(study_folder, response_files, max_failed_checks: int = 0, confidence: float = 0.95) -> StudyAnalysis:
    """Per-ROI accuracy of the participants who failed at most ``max_failed_checks`` attention checks."""
    if not response_files:
        raise ValueError("No response files given.")
    study = _read_study(study_folder)
    seen: dict[str, Path] = {}
    participants, outcomes = [], {}
    for path in map(Path, response_files):
        pid, number, records = _read_responses(path, study)
        if pid in seen:
            raise ValueError(f"Participant id {pid!r} appears in both {seen[pid]} and {path}; keep one file per participant.")
        seen[pid] = path
        trials = study["lists"][number]
        correct = [r["choice"] == t["correct"] for r, t in zip(records, trials)]
        failed = sum(not c for c, t in zip(correct, trials) if t["kind"] == "attention")
        main = [c for c, t in zip(correct, trials) if t["kind"] != "attention"]
        participants.append({"participant": pid, "list": number, "file": path.name, "failed_checks": failed,
                             "accuracy": round(sum(main) / len(main), 4) if main else "",
                             "excluded": failed > max_failed_checks})
        if failed > max_failed_checks:
            continue
        for c, t in zip(correct, trials):
            if t["kind"] != "attention":
                outcomes.setdefault((t["roi"], t["category"], t["kind"]), []).append(c)
    per_roi = []
    for (roi, category, kind), flags in sorted(outcomes.items()):
        acc: Accuracy = accuracy(flags, confidence)
        per_roi.append({"roi": roi, "category": category, "kind": kind, "correct": acc.correct, "n": acc.n,
                        "accuracy": round(acc.value, 4), "ci_low": round(acc.low, 4), "ci_high": round(acc.high, 4)})
    return StudyAnalysis(per_roi, participants, max_failed_checks)


def write_analysis(analysis: StudyAnalysis, out) -> dict[str, Path]:
    """``per_roi.csv``, ``participants.csv`` (with exclusions) and ``per_roi.png`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not analysis.per_roi:
        raise ValueError("Every participant was excluded (failed attention checks); nothing to analyse.")
    paths = {"per_roi": write_csv(out / "per_roi.csv", analysis.per_roi),
             "participants": write_csv(out / "participants.csv", analysis.participants)}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted({r["kind"] for r in analysis.per_roi})
    rois = list(dict.fromkeys(r["roi"] for r in analysis.per_roi))
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(rois), 3.8))
    width = 0.8 / len(kinds)
    for k, kind in enumerate(kinds):
        rows = {r["roi"]: r for r in analysis.per_roi if r["kind"] == kind}
        xs = [i + (k - (len(kinds) - 1) / 2) * width for i, roi in enumerate(rois) if roi in rows]
        vals = [rows[roi] for roi in rois if roi in rows]
        ax.bar(xs, [100 * r["accuracy"] for r in vals], width, label=f"{kind} trials",
               yerr=[[100 * (r["accuracy"] - r["ci_low"]) for r in vals], [100 * (r["ci_high"] - r["accuracy"]) for r in vals]],
               capsize=3)
    ax.set_xticks(range(len(rois)), rois)
    ax.set_ylim(0, 105)
    ax.set_ylabel("human accuracy (%)")
    ax.set_title(f"{len(analysis.included)} participants ({sum(p['excluded'] for p in analysis.participants)} excluded); "
                 "Wilson 95% CI", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths["plot"] = save_figure(fig, out / "per_roi.png")
    return paths
