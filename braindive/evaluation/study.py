"""Human-study export: a self-contained folder (images, trial lists, a static HTML+JS page) from results.

Designs (per ROI): *category* trials ("which category best describes this image?", the five
categories) and *pair* trials (an image generated for ROI A beside one generated for an ROI of
another category: "which image shows more <A's category>?", i.e. which image drives region A more).
Attention checks are category trials whose image names the answer. There are two trial lists:
list 1 mirrors list 0's left/right sides; within a list the correct side is balanced per ROI, and
the trial order is shuffled (seeded) with the checks spread evenly. Participants are assigned a list
by the ``list`` URL parameter, else by their id.

Folder::

    index.html     the task (no server; open it from disk or any static host). URL parameters:
                   PROLIFIC_PID (or participant), completion_url (overrides the exported one), list
    study.json     study id, settings, both trial lists (also embedded in index.html)
    trials.csv     the trial lists as a table (analysis input)
    images/        img_0001.png ... (names do not reveal the ROI), check_01.png ...
    responses/     put the participants' downloaded CSVs here for ``study analyze``
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import random
import shutil
import uuid
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import PIL.Image
import PIL.ImageDraw

from ..cache import private_tmp
from .categories import CATEGORIES, category_of, load_roi_table
from .files import csv_text
from .sets import ImageSet, open_rgb

__all__ = ["StudyConfig", "export_study", "study_warnings", "zip_folder", "TRIAL_COLUMNS", "RESPONSE_COLUMNS", "LABELS"]

TRIAL_COLUMNS = ("list", "position", "trial_id", "kind", "roi", "category", "image_a", "image_b", "correct")
RESPONSE_COLUMNS = ("study_id", "participant", "list", "position", "trial_id", "choice", "rt_ms")
LABELS = {"faces": "Faces", "places": "Places / scenes", "bodies": "Bodies", "words": "Words / text", "food": "Food"}
PAGE = Path(__file__).with_name("study_page.html")
N_LISTS = 2
log = logging.getLogger(__name__)


@dataclass
class StudyConfig:
    """Settings of an exported study.

    Attributes:
        title: shown to participants.
        category_trials_per_roi: images per ROI shown as category trials (at most the ROI's images).
        pair_trials_per_roi: two-alternative trials per ROI (needs ROIs of at least two categories).
        attention_checks: attention-check trials per list.
        completion_url: Prolific completion URL (``https://app.prolific.com/submissions/complete?cc=...``).
        seed: seeds image naming, pairing and trial order.
    """

    title: str = "Which images show what?"
    category_trials_per_roi: int = 10
    pair_trials_per_roi: int = 10
    attention_checks: int = 4
    completion_url: str = ""
    seed: int = 0

    def __post_init__(self):
        for name in ("category_trials_per_roi", "pair_trials_per_roi", "attention_checks"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be an integer >= 0, got {getattr(self, name)!r}.")
        if self.completion_url and not self.completion_url.startswith(("https://", "http://")):
            raise ValueError(f"`completion_url` must be an http(s) URL, got {self.completion_url!r}.")


def _check_image(image, size: tuple | None, label: str) -> PIL.Image.Image:
    im = open_rgb(image)
    if size is not None and im.size != size:
        raise ValueError(f"Image {label} is {im.size[0]}x{im.size[1]}, the study's images are {size[0]}x{size[1]}; "
                         "a study needs images of one size.")
    return im


def _attention_image(category: str, size: tuple) -> PIL.Image.Image:
    im = PIL.Image.new("RGB", size, (235, 235, 235))
    draw = PIL.ImageDraw.Draw(im)
    text = f"ATTENTION CHECK\nPlease choose\n{LABELS[category].upper()}"
    draw.multiline_text((size[0] // 2, size[1] // 2), text, fill=(0, 0, 0), anchor="mm", align="center",
                        font_size=max(10, size[1] // 12))
    return im


def _pairs(by_roi: dict, roi: str, categories: dict, n: int, rng: random.Random) -> list[tuple[str, str]]:
    """``n`` (image of ``roi``, image of an ROI of another category) pairs, cycling through the own images; each
    own image meets the others in a shuffled order, so pairs are distinct while ``n`` <= own × others."""
    others = [name for r, names in by_roi.items() if categories[r] != categories[roi] for name in names]
    if not others or n == 0:
        return []
    own = by_roi[roi]
    rng.shuffle(others)
    return [(own[k % len(own)], others[(k % len(own) + k // len(own)) % len(others)]) for k in range(n)]


def _repeat_warnings(by_roi: dict, categories: dict, config: StudyConfig) -> list[str]:
    """One message per ROI whose pair trials must repeat a pair: fewer distinct pairs than trials asked for."""
    warnings = []
    for roi, own in by_roi.items():
        n_others = sum(len(names) for r, names in by_roi.items() if categories[r] != categories[roi])
        distinct = len(own) * n_others
        if n_others and config.pair_trials_per_roi > distinct:
            warnings.append(f"{roi}: {config.pair_trials_per_roi} pair trials from {len(own)} image(s) × {n_others} "
                            f"of other categories = {distinct} distinct pair(s), so pairs repeat; choose more images "
                            "or fewer pair trials per ROI.")
    return warnings


def study_warnings(folder) -> list[str]:
    """The warnings an exported study recorded (e.g. repeated pairs), for the CLI and the app to show."""
    return list(json.loads((Path(folder) / "study.json").read_text()).get("warnings", []))


def _trials(by_roi: dict, categories: dict, config: StudyConfig, checks: list[str]) -> list[dict]:
    """List 0 in presentation order (ids t001..., checks c01...); the correct pair side balanced per ROI."""
    rng = random.Random(config.seed)
    main = []
    for roi, names in by_roi.items():
        for name in names[:config.category_trials_per_roi]:
            main.append({"kind": "category", "roi": roi, "category": categories[roi], "image_a": name, "image_b": "",
                         "correct": categories[roi]})
        sides = (["a", "b"] * config.pair_trials_per_roi)[:config.pair_trials_per_roi]  # balanced (odd: one extra a)
        rng.shuffle(sides)
        for (own, other), side in zip(_pairs(by_roi, roi, categories, config.pair_trials_per_roi, rng), sides):
            a, b = (own, other) if side == "a" else (other, own)
            main.append({"kind": "pair", "roi": roi, "category": categories[roi], "image_a": a, "image_b": b,
                         "correct": side})
    for k, trial in enumerate(main, start=1):
        trial["trial_id"] = f"t{k:03d}"
    rng.shuffle(main)
    step = len(main) / (len(checks) + 1)
    for k, (category, name) in reversed(list(enumerate(checks))):
        main.insert(round(step * (k + 1)), {"trial_id": f"c{k + 1:02d}", "kind": "attention", "roi": "",
                                            "category": category, "image_a": name, "image_b": "", "correct": category})
    return main


def _page_data(study: dict) -> dict:
    """What the page needs, without answers or ROI names (participants can read the page source)."""
    def shown(t: dict) -> dict:
        out = {k: t[k] for k in ("trial_id", "position", "kind", "image_a", "image_b")}
        return {**out, "category": t["category"]} if t["kind"] == "pair" else out

    keep = ("study_id", "title", "categories", "labels", "response_columns")
    return {**{k: study[k] for k in keep}, "settings": {"completion_url": study["settings"]["completion_url"]},
            "lists": [[shown(t) for t in trials] for trials in study["lists"]]}


def _mirror(trial: dict) -> dict:
    if trial["kind"] != "pair":
        return dict(trial)
    return {**trial, "image_a": trial["image_b"], "image_b": trial["image_a"],
            "correct": "b" if trial["correct"] == "a" else "a"}


def export_study(sets: list[ImageSet], out, config: StudyConfig | None = None, roi_table: dict | None = None) -> Path:
    """Write the study folder ``out`` (must not exist or be empty) from generated image sets of one subject.

    Only images of a maximised ROI are stimuli (``ImageSet.category_roi``). When too few images were chosen for
    distinct pair trials, pairs repeat: logged and kept in ``study.json``'s ``warnings`` (``study_warnings``)."""
    config = config or StudyConfig()
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"Study folder {out} exists and is not empty; choose a new folder.")
    if not sets or not any(s.images for s in sets):
        raise ValueError("No images to put in a study: select at least one result.")
    subjects = sorted({s.subject for s in sets})
    if len(subjects) > 1:
        raise ValueError(f"The selection mixes subjects {subjects}; a study covers one subject.")
    table = load_roi_table() if roi_table is None else roi_table
    sets = [s for s in sets if s.images and s.category_roi is not None]  # a "min PPA" image is no places stimulus
    if not sets:
        raise ValueError("No images of a maximised ROI in the selection: a study's stimuli stand for their ROI's "
                         "category, which a minimised region, a contrast or a voxel set does not.")
    categories = {s.category_roi: category_of(s.category_roi, table) for s in sets}
    tmp = private_tmp(out)
    (tmp / "images").mkdir(parents=True)
    (tmp / "responses").mkdir()
    try:
        rng = random.Random(config.seed)
        flat = [(s.category_roi, image, label) for s in sets for image, label in zip(s.images, s.ids)]
        size = _check_image(flat[0][1], None, flat[0][2]).size
        order = list(range(len(flat)))
        rng.shuffle(order)  # file numbers carry no information about the ROI
        by_roi: dict[str, list[str]] = {s.category_roi: [] for s in sets}
        sources = {}
        for number, i in enumerate(order, start=1):
            roi, image, label = flat[i]
            name = f"img_{number:04d}.png"
            _check_image(image, size, label).save(tmp / "images" / name)
            by_roi[roi].append(name)
            sources[name] = {"roi": roi, "source": str(label)}
        for names in by_roi.values():
            names.sort()
        checks = [CATEGORIES[k % len(CATEGORIES)] for k in range(config.attention_checks)]
        for k, category in enumerate(checks, start=1):
            _attention_image(category, size).save(tmp / "images" / f"check_{k:02d}.png")
        base = _trials(by_roi, categories, config,
                       [(c, f"check_{k:02d}.png") for k, c in enumerate(checks, start=1)])
        lists = [base, [_mirror(t) for t in base]]
        warnings = _repeat_warnings(by_roi, categories, config)
        for warning in warnings:
            log.warning("study export: %s", warning)
        study = {"study_id": uuid.uuid4().hex[:12], "title": config.title, "subject": subjects[0],
                 "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                 "settings": asdict(config), "categories": list(CATEGORIES), "labels": LABELS,
                 "roi_categories": categories, "response_columns": list(RESPONSE_COLUMNS),
                 "lists": [[{**t, "position": p} for p, t in enumerate(trials, start=1)] for trials in lists],
                 "images": sources, "image_size": list(size), "warnings": warnings}
        (tmp / "study.json").write_text(json.dumps(study, indent=1))
        (tmp / "trials.csv").write_text(csv_text([{**t, "list": k} for k, trials in enumerate(study["lists"])
                                                    for t in trials], TRIAL_COLUMNS))
        page = PAGE.read_text().replace("/*STUDY_JSON*/null", json.dumps(_page_data(study)).replace("</", "<\\/"))
        (tmp / "index.html").write_text(page)
        if out.exists():
            out.rmdir()
        tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def zip_folder(folder, path) -> Path:
    """ZIP ``folder``'s files (paths relative to it), written atomically to ``path``."""
    folder, path = Path(folder), Path(path)
    tmp = private_tmp(path)
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                zf.write(file, f"{folder.name}/{file.relative_to(folder)}")
    tmp.replace(path)
    return path
