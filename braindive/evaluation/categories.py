"""The paper's semantic categories and the ROI -> category table (data, editable)."""
from __future__ import annotations

import json
import re
from pathlib import Path

__all__ = ["CATEGORIES", "DEFAULT_ROI_TABLE", "load_roi_table", "category_of", "check_category"]

CATEGORIES = ("faces", "places", "bodies", "words", "food")
DEFAULT_ROI_TABLE = Path(__file__).with_name("roi_categories.json")
_VARIANT = re.compile(r"^(?P<base>.+?)(?:[-_ ]?\d+)?$")


def check_category(name: str, categories=CATEGORIES) -> str:
    if name not in categories:
        raise ValueError(f"Category must be one of {list(categories)}, got {name!r}.")
    return name


def load_roi_table(path=None, categories=CATEGORIES) -> dict[str, str]:
    """Read an ROI -> category JSON object (keys starting with ``_`` are comments); categories are checked."""
    path = Path(path) if path is not None else DEFAULT_ROI_TABLE
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"ROI table {path} is not a readable JSON object: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"ROI table {path} must be a JSON object {{roi: category}}, got {type(data).__name__}.")
    table = {}
    for roi, category in data.items():
        if roi.startswith("_"):
            continue
        if category not in categories:
            raise ValueError(f"ROI table {path}: category of {roi!r} must be one of {list(categories)}, got {category!r}.")
        table[roi] = category
    return table


def category_of(roi: str, table: dict[str, str] | None = None) -> str:
    """The category of ``roi``: exact name, else without ``.lh``/``.rh`` or a part number (``FFA-1``).
    Case-insensitive. Raises ``ValueError`` naming the table's ROIs. A target's ROI is
    ``Target.category_roi`` (a contrast or a minimised region has none: nothing is parsed out of a label)."""
    table = load_roi_table() if table is None else table
    lower = {k.lower(): v for k, v in table.items()}
    for candidate in (roi, re.sub(r"\.(lh|rh)$", "", roi)):
        for key in (candidate, _VARIANT.match(candidate).group("base")):
            if key.lower() in lower:
                return lower[key.lower()]
    raise ValueError(f"ROI {roi!r} has no category in the ROI table (known: {sorted(table)}); add it to the table.")
