"""Image sets to evaluate: generated results (folders of PNG + JSON, or catalog entries) grouped by target."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import PIL.Image

from ..objectives import Objective
from ..targets import Target

__all__ = ["ImageSet", "generated_sets", "open_rgb", "BRAINDIVE"]

BRAINDIVE = "BrainDiVE"


@dataclass
class ImageSet:
    """Images of one source for one target (ROI or voxel set) of one subject.

    Attributes:
        source: where the images come from (``"BrainDiVE"``, ``"NSD top-50 (measured)"``, ...).
        subject: subject name.
        target: what the images are for, as people read it (a generated set: the target's label, ``"min PPA"``;
            a natural set: the ROI or the generated set's label).
        images: image files (or PIL images).
        ids: one label per image (file name, catalog id, NSD image name).
        objective: the objective the images were generated for (from their records), if known.
        scores: per image, the score that selected it (natural images), if any.
        spec: the ``Target`` (generated sets and their natural comparisons), if known.
    """

    source: str
    subject: str
    target: str
    images: list
    ids: list[str]
    objective: Objective | None = None
    scores: list[float] = field(default_factory=list)
    spec: Target | None = None

    @property
    def category_roi(self) -> str | None:
        """The ROI whose category the images stand for: only a maximised ROI (``Target.category_roi``)."""
        return self.spec.category_roi if self.spec is not None else self.target


def _group(items: list[tuple[str, dict, object]], what: str) -> list[ImageSet]:
    """(label, record, image) triples -> one ``ImageSet`` per target; one subject only."""
    if not items:
        raise ValueError(f"No generated images in {what}: select at least one result.")
    by_subject: dict[str, list[str]] = {}
    for label, record, _ in items:
        by_subject.setdefault(record["subject"], []).append(label)
    if len(by_subject) > 1:  # every image named, by subject
        mixed = "; ".join(f"{subject}: {', '.join(labels)}" for subject, labels in sorted(by_subject.items()))
        raise ValueError(f"The selection mixes subjects ({mixed}); evaluate one subject at a time.")
    subject = next(iter(by_subject))
    sets: dict[str, ImageSet] = {}
    odd: dict[str, list[str]] = {}  # target -> the images whose objective differs from the target's first one
    for label, record, image in items:
        spec = Target.from_record(record)
        target = spec.label  # "max PPA" and "min PPA" are different sets
        objective = Objective.from_description(record["objective"]) if "positive" in record.get("objective", {}) else None
        current = sets.setdefault(target, ImageSet(BRAINDIVE, subject, target, [], [], objective, spec=spec))
        if objective is not None and current.objective is not None and objective.describe() != current.objective.describe():
            odd.setdefault(target, []).append(label)
            continue
        current.images.append(image)
        current.ids.append(label)
    if odd:
        named = "; ".join(f"target {target!r}: {', '.join(labels)} differ from {sets[target].ids[0]}"
                          for target, labels in sorted(odd.items()))
        raise ValueError(f"Images of one target were generated for different objectives ({named}); "
                         "evaluate them separately.")
    return [sets[t] for t in sorted(sets)]


def _read_record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"Result record {path} is not readable JSON: {exc}") from exc
    missing = [k for k in ("subject", "target") if k not in record]
    if missing:
        raise ValueError(f"Result record {path} lacks {missing}; is it a braindive generation record?")
    return record


def generated_sets(results, catalog=None) -> list[ImageSet]:
    """Catalog folders, folders of generated PNG + JSON and/or catalog entry ids (with ``catalog``) -> sets by target
    (its label: ``max PPA`` and ``min PPA`` are two sets)."""
    items = []
    for item in results:
        folder = Path(item)
        if (folder / "index.sqlite").is_file():  # a catalog (``generate --out``, the app's, a sweep's): all its entries
            from ..catalog import Catalog

            found = Catalog(folder)
            items += [(e.id, _read_record(e.record_path), e.image_path) for e in found.query()]
        elif folder.is_dir():
            pngs = sorted(folder.glob("*.png"))
            if not pngs:
                raise ValueError(f"Folder {folder} has no PNG images.")
            for png in pngs:
                record_path = png.with_suffix(".json")
                if not record_path.is_file():
                    raise ValueError(f"Image {png} has no JSON record beside it ({record_path.name}).")
                items.append((png.name, _read_record(record_path), png))
        elif catalog is not None:
            try:
                entry = catalog.get(str(item))
            except KeyError as exc:
                raise ValueError(f"{item!r} is neither a folder of generated images nor an id in catalog "
                                 f"{catalog.root}.") from exc
            items.append((entry.id, _read_record(entry.record_path), entry.image_path))
        else:
            raise ValueError(f"{item!r} is not a folder of generated PNG + JSON (catalog ids need a catalog).")
    return _group(items, ", ".join(map(str, results)) or "the selection")


def open_rgb(image) -> PIL.Image.Image:
    """A PIL image or image file as RGB; a clear error for unreadable files."""
    if isinstance(image, PIL.Image.Image):
        return image.convert("RGB")
    try:
        with PIL.Image.open(image) as im:
            return im.convert("RGB")
    except (OSError, PIL.UnidentifiedImageError) as exc:
        raise ValueError(f"Cannot read image {image}: {exc}") from exc
