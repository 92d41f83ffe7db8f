"""A stimulus package: images at one size and format (optionally equalised), ``conditions.csv``, counterbalanced
runs, a PsychoPy script, the statistics report and a README, written atomically and recorded in the catalog.

Layout of a package folder::

    stimuli/NNNN_<condition>_seedS.png   the images, as shown
    conditions.csv                       one row per image: file, condition, target label, kind, category, seed,
                                         source, every ROI's predicted response, the target measure, statistics
                                         (columns are Python identifiers: PsychoPy's importConditions reads it)
    runs/runNN.csv                       the trial order of each run with onsets (PsychoPy conditions files)
    experiment.py                        PsychoPy script presenting a run (absolute onsets)
    experiment.psyexp                    the same for PsychoPy Builder
    report/                              statistics tables, permutation tests, box plots, spectra, equalisation
    package.json                         what went in, the settings, the counts, package versions
    README.md                            what all this is
    MANIFEST.sha256                      every other file's SHA-256 (``sha256sum -c MANIFEST.sha256``)

The package's hash is the SHA-256 of ``MANIFEST.sha256``. Everything is written to a temporary folder beside
the destination and renamed into place, so a package folder is complete or absent.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image

from ..evaluation.files import write_atomic, write_csv
from .design import Design, balanced, runs
from .equalise import EQUALISATIONS, SPACES, equalise
from .experiment import TRIAL_COLUMNS, check_columns, psyexp, script
from .report import roi_column, target_effects, write_report
from .scoring import category_roi, target_measure
from .sources import UNGUIDED, Stimulus
from .statistics import STATISTICS, image_statistics

__all__ = ["PackageSettings", "Package", "build_package", "FORMATS"]

FORMATS = {"png": ("PNG", ".png"), "jpg": ("JPEG", ".jpg")}


@dataclass(frozen=True)
class PackageSettings:
    """How to package. ``size``: square side in pixels (centre-cropped, then resized; None keeps each image's size);
    ``equalise``: steps of ``braindive.stimuli.equalise.EQUALISATIONS`` in order; ``luminance_mean`` /
    ``luminance_std``: the luminance-matching target (of the ``space`` channel, in [0, 1]; None = the images'
    averages); ``space``: the channel equalised (``braindive.stimuli.equalise.SPACES``)."""

    size: int | None = None
    format: str = "png"
    quality: int = 95
    equalise: tuple[str, ...] = ()
    luminance_mean: float | None = None
    luminance_std: float | None = None
    space: str = "linear"
    design: Design = field(default_factory=Design)
    n_permutations: int = 10000

    def __post_init__(self):
        object.__setattr__(self, "equalise", tuple(self.equalise))
        if self.size is not None and not (isinstance(self.size, int) and 16 <= self.size <= 4096):
            raise ValueError(f"`size` must be an integer in [16, 4096] pixels (or None), got {self.size!r}.")
        if self.format not in FORMATS:
            raise ValueError(f"`format` must be one of {sorted(FORMATS)}, got {self.format!r}.")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"`quality` must be in [1, 100], got {self.quality!r}.")
        bad = [s for s in self.equalise if s not in EQUALISATIONS]
        if bad or len(set(self.equalise)) != len(self.equalise):
            raise ValueError(f"`equalise` must list distinct steps of {sorted(EQUALISATIONS)}, got {list(self.equalise)}.")
        if self.space not in SPACES:
            raise ValueError(f"`space` must be one of {SPACES}, got {self.space!r}.")
        if not 1 <= self.n_permutations <= 1_000_000:
            raise ValueError(f"`n_permutations` must be in [1, 1000000], got {self.n_permutations!r}.")

    def to_dict(self) -> dict:
        return {**asdict(self), "equalise": list(self.equalise)}


@dataclass
class Package:
    path: Path
    id: str
    hash: str
    record: dict
    report: dict
    rows: list[dict]


def _prepare(image: PIL.Image.Image, size: int | None) -> np.ndarray:
    if size is not None:
        w, h = image.size
        side = min(w, h)
        image = image.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
        if side != size:
            image = image.resize((size, size), PIL.Image.Resampling.LANCZOS)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _slug(text: str) -> str:
    text = str(text).replace("×", "x").replace("−", "minus")
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "image"


def _describe(stimulus: Stimulus, subject, roi_table) -> dict:
    """The condition columns of one stimulus (``category`` only where a maximise of an ROI implies one)."""
    from ..description import describe_record
    from ..evaluation.categories import category_of

    if not stimulus.record or stimulus.unguided:
        return {"label": "" if stimulus.unguided or not stimulus.record else stimulus.condition,
                "kind": UNGUIDED if stimulus.unguided else "image", "target": "", "target_b": "", "category": "",
                "category_note": "unguided baseline of the same seed" if stimulus.unguided else "no generation record"}
    d = describe_record(stimulus.record)
    roi = category_roi(stimulus.record, subject) if subject is not None else None
    category, note = "", ""
    if roi is None:
        note = {"minimize": "minimised target: no category implied",
                "contrast": "contrast target: no category implied"}.get(d.kind, "custom voxel set: no category implied")
    else:
        try:
            category = category_of(roi, roi_table)
        except ValueError:
            note = f"{roi} has no category in the ROI table"
    return {"label": d.label, "kind": d.kind, "target": d.target, "target_b": d.target_b, "category": category,
            "category_note": note}


def _score_rows(scorer, images, stimuli) -> tuple[object, list[dict]]:
    if scorer is None:
        return None, [{} for _ in images]
    scores = scorer(images)
    rows = []
    for i, stimulus in enumerate(stimuli):
        measure = None if stimulus.unguided else target_measure(stimulus.record, scorer.subject, scores.activations[i])
        rows.append({"target_measure": "" if measure is None else measure,
                     **{roi_column(r): float(v[i]) for r, v in scores.roi_means.items()}})
    return scores, rows


def build_package(stimuli: list[Stimulus], out, settings: PackageSettings = PackageSettings(), scorer=None,
                  catalog=None, skipped=(), roi_table: dict | None = None, log=None) -> Package:
    """Write the package of ``stimuli`` to the new folder ``out`` (see the module docstring) and record it in
    ``catalog``. ``scorer`` (``braindive.stimuli.scoring.Scorer``) adds every ROI's prediction, the target
    measures, embedding diversity and the share of each set's target effect kept after equalisation."""
    log = log or (lambda message: None)
    out = Path(out)
    if out.exists():
        raise ValueError(f"Package folder {out} exists already; choose a new one.")
    if not stimuli:
        raise ValueError("No stimuli to package.")
    sets = list(dict.fromkeys(s.condition for s in stimuli))
    images = [_prepare(s.image, settings.size) for s in stimuli]
    if "spectrum" in settings.equalise and len({im.shape for im in images}) > 1:
        raise ValueError("Spectrum matching needs one image size: set `size`.")
    log(f"statistics of {len(images)} images in {len(sets)} sets")
    subject = getattr(scorer, "subject", None)
    described = [_describe(s, subject, roi_table) for s in stimuli]
    stats = [image_statistics(im) for im in images]
    scores, score_rows = _score_rows(scorer, images, stimuli)
    shown, equalised_stats, after, after_rows, unmatched = images, None, None, score_rows, {}
    if settings.equalise:
        log(f"equalising: {' then '.join(settings.equalise)}")
        target = {k: v for k, v in (("mean", settings.luminance_mean), ("std", settings.luminance_std)) if v is not None}
        result = equalise(images, settings.equalise, target, settings.space)
        shown, unmatched = result.images, result.unmatched
        equalised_stats = [image_statistics(im) for im in shown]
        after, after_rows = _score_rows(scorer, shown, stimuli)
    fmt, suffix = FORMATS[settings.format]
    files = [f"stimuli/{i + 1:04d}_{_slug(s.condition)}" + (f"_seed{s.seed}" if s.seed is not None else "") + suffix
             for i, s in enumerate(stimuli)]
    rows = []
    for i, s in enumerate(stimuli):
        row = {"file": files[i], "condition": s.condition, **described[i], "seed": "" if s.seed is None else s.seed,
               "source": s.source, **after_rows[i]}
        if settings.equalise and scorer is not None:
            row["target_measure_original"] = score_rows[i]["target_measure"]
        row.update({k: v for k, v in (equalised_stats or stats)[i].items()})
        if settings.equalise:
            row.update({f"{k}_original": v for k, v in stats[i].items()})
            row["luminance_matched"] = int(i not in unmatched.get("luminance", []))
        rows.append(row)
    check_columns(rows[0])
    by_condition = {c: [i for i, s in enumerate(stimuli) if s.condition == c] for c in sets}
    trial_lists = runs(by_condition, settings.design)

    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir(parents=True)
    try:
        (tmp / "stimuli").mkdir()
        for path, image in zip(files, shown):
            kwargs = {"quality": settings.quality} if fmt == "JPEG" else {}
            PIL.Image.fromarray(image).save(tmp / path, format=fmt, **kwargs)
        write_csv(tmp / "conditions.csv", rows)
        (tmp / "runs").mkdir()
        for r, trials in enumerate(trial_lists, 1):
            write_csv(tmp / "runs" / f"run{r:02d}.csv",
                      [{**t, "label": rows[t["item"]]["label"], "category": rows[t["item"]]["category"],
                        "image": files[t["item"]], "seed": rows[t["item"]]["seed"], "source": rows[t["item"]]["source"]}
                       for t in trial_lists[r - 1]], check_columns(TRIAL_COLUMNS))
        side = settings.size or max(max(im.shape[:2]) for im in images)
        write_atomic(tmp / "experiment.py", script(settings.design, len(trial_lists), side))
        write_atomic(tmp / "experiment.psyexp", psyexp(settings.design))
        effects = target_effects(stimuli, subject, scores, after, sets) if scores is not None else []
        stat_rows = [{"file": files[i], "condition": s.condition, **stats[i]} for i, s in enumerate(stimuli)]
        eq_rows = ([{"file": files[i], "condition": s.condition, **equalised_stats[i]} for i, s in enumerate(stimuli)]
                   if equalised_stats else None)
        log("report: tables, permutation tests, plots")
        report = write_report(tmp / "report", stat_rows, sets, images,
                              embeddings=None if scores is None else scores.embeddings, effects=effects,
                              n_permutations=settings.n_permutations, seed=settings.design.seed, equalised_rows=eq_rows)
        package_id = uuid.uuid4().hex[:12]
        created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        counts = {c: len(v) for c, v in by_condition.items()}
        from ..records import package_versions

        record = {"id": package_id, "created": created, "path": str(out.resolve()), "n_images": len(stimuli),
                  "conditions": counts, "inputs": [s.source for s in stimuli], "skipped": [list(x) for x in skipped],
                  "settings": settings.to_dict(), "runs": len(trial_lists),
                  "counterbalanced": balanced(by_condition),
                  "embedding": getattr(scorer, "embedding_name", None), "unmatched": unmatched,
                  "share_kept": {e["set"]: e.get("share_kept") for e in effects}, "versions": package_versions()}
        write_atomic(tmp / "package.json", json.dumps(record, indent=2, default=str))
        write_atomic(tmp / "README.md", _readme(record, settings, report, effects, sets))
        digest = _manifest(tmp)
        record["hash"] = digest
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if catalog is not None:
        catalog.record_package(record)
    log(f"package {out} ({len(stimuli)} images, hash {digest[:12]})")
    return Package(out, package_id, digest, record, report, rows)


def _manifest(folder: Path) -> str:
    """Write ``MANIFEST.sha256`` (every file's SHA-256, sorted by path); its own SHA-256 is the package's hash."""
    lines = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        lines.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.relative_to(folder).as_posix()}\n")
    text = "".join(lines)
    write_atomic(folder / "MANIFEST.sha256", text)
    return hashlib.sha256(text.encode()).hexdigest()


_SPACE = {"linear": "linear luminance Y", "lstar": "CIELAB L* (chroma kept)", "grey": "gamma-encoded grey level"}


def _readme(record: dict, settings: PackageSettings, report: dict, effects: list[dict], sets: list[str]) -> str:
    d = settings.design
    counts = ", ".join(f"{c}: {n}" for c, n in record["conditions"].items())
    timing = (f"each image {d.stim_duration} s, then fixation {d.isi} s" + (f" ± {d.jitter} s (uniform)" if d.jitter else "")
              if d.design == "event" else
              f"blocks of {d.block_size} images, each {d.stim_duration} s with {d.isi} s between, {d.rest} s fixation "
              "after each block")
    lines = [
        "# Stimulus package (BrainDiVE Studio)", "",
        f"{record['n_images']} images in {len(sets)} conditions ({counts}); package id `{record['id']}`, "
        f"created {record['created']}.", "",
        "## Files", "",
        "- `stimuli/`: the images as shown" + (f", {settings.size}x{settings.size} px" if settings.size else "")
        + f", {settings.format.upper()}" + (f", equalised: {' then '.join(settings.equalise)} on the {_SPACE[settings.space]}"
                                             if settings.equalise else
                                             ", not equalised") + ".",
        "- `conditions.csv`: one row per image: file, condition, target label, kind, category (only for images "
        "generated to maximise an ROI: a minimise or contrast target implies no category; see `category_note`), "
        "seed, source id, each ROI's predicted response (`pred_<ROI>`, the encoder's mean over the ROI), the "
        "target measure and the image statistics. Column names are Python identifiers, so PsychoPy's "
        "`data.importConditions('conditions.csv')` reads it.",
        f"- `runs/run01.csv` .. `run{record['runs']:02d}.csv`: trial order and timing per run ({d.design} design; "
        f"{timing}; {d.lead_in} s fixation before and after; seed {d.seed}). Condition order from a balanced Latin "
        "square: over a multiple of the square's rows as runs (the default number of runs), each condition is "
        "equally often at each position and follows each other condition equally often.",
        "- `experiment.py`: a PsychoPy script (`python experiment.py`): waits for the trigger key `t`, shows a "
        "fixation cross and the images at their onsets, logs actual onsets to `data/`. `experiment.psyexp`: the "
        "same for PsychoPy Builder (trigger routine, then a loop over the run's trial file; Builder times each "
        "trial from the end of the previous one, the script from the run's onsets).",
        "- `report/`: `statistics.csv` (per image, before equalisation), `sets.csv` (per set; embedding "
        "diversity = mean pairwise cosine distance of the encoder's image embeddings), `comparison.csv` (per "
        f"statistic and pair of sets: difference of means, two-sided permutation p, {settings.n_permutations} "
        "permutations), `statistics.png` (box plots), `spectra.png` (rotationally averaged amplitude spectra)"
        + (", `statistics_equalised.csv`, `equalisation.csv`" if settings.equalise else "") + ".",
        "- `package.json`: what went in (catalog ids or files), settings, versions. `MANIFEST.sha256`: every "
        "file's SHA-256 (`sha256sum -c MANIFEST.sha256`); the package hash is the SHA-256 of that file.", "",
        "## Statistics", "",
        "Mean luminance and RMS contrast (SD) of the linearised sRGB luminance Y (0-1) and of CIELAB L* (0-100); "
        "Hasler-Süsstrunk colourfulness; slope of the rotationally averaged Fourier amplitude spectrum (log-log; "
        "periodic component; natural images about -1); edge density (share of pixels with a grey-level "
        "gradient above 0.04 per pixel); entropy of the 8-bit grey-level histogram (bits).", ""]
    if record.get("embedding"):
        lines += [f"Embeddings: {record['embedding']}.", ""]
    if effects:
        lines += ["## Predicted target effect", "",
                  "Effect = a set's target measure minus the same measure over every other set's images"
                  + (" — before and after equalisation, and the share kept." if settings.equalise else "."), "",
                  "| set | measure | effect" + (" | after equalisation | share kept |" if settings.equalise else " |"),
                  "|---|---|---" + ("|---|---|" if settings.equalise else "|")]
        for e in effects:
            extra = f" | {e['effect_equalised']:.3f} | {e['share_kept']:.0%} |" if settings.equalise else " |"
            lines.append(f"| {e['set']} | {e['measure']} | {e['effect']:.3f}{extra}")
        lines.append("")
    if not record["counterbalanced"]:
        lines += ["**Not counterbalanced:** the conditions have different numbers of images, so the runs cannot put "
                  "each condition equally often at each position (a condition whose images are used up leaves its "
                  "slots out). Select equally many images per condition for a balanced design.", ""]
    if record["unmatched"]:
        lines += [f"**Not matched within tolerance:** {record['unmatched']} (row indices; `luminance_matched` = 0 in "
                  "conditions.csv): too many pixels at black or white for the target.", ""]
    if record["skipped"]:
        lines += [f"Skipped inputs: {record['skipped']}", ""]
    return "\n".join(lines)
