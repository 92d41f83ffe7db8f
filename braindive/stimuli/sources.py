"""Stimuli to package: catalog entries (with their unguided baselines of the same seeds), folders of generated
results (PNG + JSON) and folders of other images (e.g. natural images), each with its condition.

A generated image's condition is its description's ``label`` (``max FFA``, ``min PPA``, ``FFA − 1.0×PPA``);
an unguided baseline's is ``unguided``; an image without a record takes its folder's name.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import PIL.Image

from ..description import describe_record
from ..evaluation.sets import open_rgb

__all__ = ["Stimulus", "UNGUIDED", "from_catalog", "from_folder", "load_stimuli", "IMAGE_SUFFIXES"]

UNGUIDED = "unguided"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class Stimulus:
    image: PIL.Image.Image      # RGB
    condition: str              # the set it belongs to
    source: str                 # catalog id or file path
    seed: int | None = None
    record: dict | None = None  # the generation record (None for images without one)
    unguided: bool = False      # the unguided image of ``record``'s seed

    @property
    def subject(self) -> str:
        return describe_record(self.record).subject if self.record else ""


def from_catalog(catalog, ids, unguided: bool = False) -> tuple[list[Stimulus], list[tuple[str, str]]]:
    """Stimuli of catalog entries ``ids`` (and, with ``unguided``, each one's stored unguided image); the entries
    skipped, with why (gone, unreadable, no unguided image stored)."""
    out, skipped = [], []
    for entry_id in dict.fromkeys(ids):
        try:
            entry = catalog.get(entry_id)
            record = catalog.record(entry_id)
            image = open_rgb(entry.image_path)
        except (KeyError, ValueError, OSError) as exc:
            skipped.append((entry_id, str(exc).strip("'\"")))
            continue
        out.append(Stimulus(image, entry.label, entry_id, entry.seed, record))
        if unguided:
            baseline, _ = catalog.unguided_paths(entry_id)  # the seed's unguided image, kept by the catalog
            if baseline is not None:
                out.append(Stimulus(open_rgb(baseline), UNGUIDED, f"{entry_id}.unguided", entry.seed, record, True))
            else:
                skipped.append((f"{entry_id}.unguided", "no unguided image stored (a run without baselines)"))
    return out, skipped


def from_folder(folder, condition: str | None = None) -> list[Stimulus]:
    """Images of ``folder``: with a JSON record beside them, conditioned by its label; others by ``condition`` or the
    folder's name."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and ".unguided" not in p.name) \
        if folder.is_dir() else []
    if not files:
        raise ValueError(f"{folder} is not a folder of images ({', '.join(IMAGE_SUFFIXES)}).")
    out = []
    for path in files:
        record_path = path.with_suffix(".json")
        record = None
        if record_path.is_file():
            try:
                record = json.loads(record_path.read_text())
                label = describe_record(record).label
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"Record {record_path} is not a readable generation record: {exc}") from exc
        out.append(Stimulus(open_rgb(path), condition or (label if record else folder.name), str(path),
                            describe_record(record).seed if record else None, record))
    return out


def load_stimuli(items, catalog=None, unguided: bool = False) -> tuple[list[Stimulus], list[tuple[str, str]]]:
    """Folders (``NAME=FOLDER`` names the condition of a folder without records) and catalog ids -> stimuli."""
    stimuli, ids = [], []
    for item in items:
        name, sep, rest = str(item).partition("=")
        if sep and Path(rest).is_dir():
            stimuli += from_folder(rest, name)
        elif Path(item).is_dir():
            stimuli += from_folder(item)
        elif catalog is not None:
            ids.append(str(item))
        else:
            raise ValueError(f"{item!r} is not a folder of images (catalog ids need a catalog).")
    skipped = []
    if ids:
        more, skipped = from_catalog(catalog, ids, unguided)
        stimuli += more
    if not stimuli:
        raise ValueError("No stimuli: select at least one readable image.")
    subjects = sorted({s.subject for s in stimuli if s.subject})
    if len(subjects) > 1:
        raise ValueError(f"The stimuli mix subjects {subjects}; build one package per subject.")
    return stimuli, skipped
