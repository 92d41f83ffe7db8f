"""ZIP export of catalog entries: the PNGs, their JSON records, their unguided image and map, and ``manifest.csv``.

``manifest.csv`` is a stimulus list for an fMRI experiment: file name, the description's columns, the measure and
its predicted value, the strength and start image (its name as the request wrote it, its pixel hash) of a variation,
and the re-ranking's rank and kept flag where the entry was re-ranked. Entries that are gone, unreadable or missing a
file are skipped and listed in ``skipped.csv`` (the reasons History gives), never fatal.
"""
from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from .cache import private_tmp
from .catalog import Catalog, Entry
from .description import GenerationDescription

__all__ = ["export_zip", "Export", "MANIFEST_COLUMNS", "description_from_manifest"]

# manifest column -> description field, where the names differ
_MANIFEST_FIELD = {"objective_kind": "kind", "guidance_mode": "mode", "brain_guidance_scale": "scale",
                   "num_inference_steps": "steps", "sag_scale": "sag"}
MANIFEST_COLUMNS = ("file", "id", "created", "label", "objective_kind", "target", "target_b", "weight", "hemisphere",
                    "objective", "predicted_objective", "subject", "subject_space", "encoder", "model", "scheduler",
                    "guidance_mode", "brain_guidance_scale", "num_inference_steps", "sag_scale", "prompt", "seed",
                    "strength", "start_image", "start_image_sha256", "run_id", "rank", "kept")


@dataclass
class Export:
    path: Path
    exported: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def export_zip(catalog: Catalog, entry_ids, path) -> Export:
    """ZIP of the chosen entries + JSON records + ``manifest.csv`` (+ ``skipped.csv`` naming what was left out).

    Entries that are gone, unreadable or missing a file are skipped and reported; ``ValueError`` if
    nothing can be exported. Written to a temporary name, then renamed.
    """
    entry_ids = list(dict.fromkeys(entry_ids))
    if not entry_ids:
        raise ValueError("Nothing to export: select at least one image.")
    entries, skipped = catalog.readable(entry_ids)
    if not entries:
        reasons = "; ".join(f"{i}: {r}" for i, r in skipped[:3])
        raise ValueError(f"Nothing to export: none of the {len(entry_ids)} selected image(s) is readable ({reasons}).")
    path = Path(path)
    rows = []
    tmp = private_tmp(path)
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for e in entries:
                name = f"{_slug(e.subject)}_{_slug(e.label)}_seed{e.seed:06d}_{e.id}.png"
                zf.write(e.image_path, f"stimuli/{name}")
                zf.write(e.record_path, f"metadata/{Path(name).with_suffix('.json')}")
                for file in catalog.unguided_paths(e.id):
                    if file is not None:
                        zf.write(file, f"unguided/{Path(name).stem}{file.suffix}")
                rows.append(manifest_row(e, f"stimuli/{name}", json.loads(e.record_path.read_text())))
            zf.writestr("manifest.csv", _csv(MANIFEST_COLUMNS, rows))
            if skipped:
                zf.writestr("skipped.csv", _csv(("id", "reason"), [dict(id=i, reason=r) for i, r in skipped]))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return Export(path, [e.id for e in entries], skipped)


def manifest_row(entry: Entry, file: str, record: dict) -> dict:
    """A manifest row; ``rank``/``kept`` from the record's ``rerank`` (empty when not re-ranked; the CLI stores
    only the kept candidates, so a ``rerank`` without ``kept`` was kept); ``strength``, ``start_image`` (its name
    as the request gave it) and ``start_image_sha256`` (its pixel hash) from a variation's ``parameters``."""
    rerank = record.get("rerank") if isinstance(record.get("rerank"), dict) else {}
    parameters = record.get("parameters") if isinstance(record.get("parameters"), dict) else {}
    reference = parameters.get("reference") if isinstance(parameters.get("reference"), dict) else {}
    values = entry.description.as_dict()
    if entry.kind != "contrast":
        values["weight"] = ""  # a weight only means something for a contrast
    fields = {column: values[_MANIFEST_FIELD.get(column, column)] for column in MANIFEST_COLUMNS
              if _MANIFEST_FIELD.get(column, column) in values}
    return {**fields, "file": file, "id": entry.id, "created": entry.created, "objective": entry.description.measure,
            "predicted_objective": entry.objective, "run_id": entry.run_id, "rank": rerank.get("rank", ""),
            "kept": int(bool(rerank.get("kept", True))) if rerank else "",
            "strength": parameters.get("strength", "") if reference else "", "start_image": reference.get("file", ""),
            "start_image_sha256": reference.get("sha256", "")}


def description_from_manifest(row: dict) -> GenerationDescription:
    """The description a ``manifest.csv`` row was written from."""
    return GenerationDescription.from_dict({_MANIFEST_FIELD.get(k, k): v for k, v in row.items()})


def _csv(columns, rows) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def _slug(text: str) -> str:
    """A file-name-safe form of a label: ``min FFA`` -> ``min-FFA``, ``FFA − 1.0×PPA`` -> ``FFA-1.0xPPA``."""
    text = str(text).replace("×", "x").replace("−", "")
    return re.sub(r"-{2,}", "-", re.sub(r"[^A-Za-z0-9.]+", "-", text)).strip("-") or "image"
