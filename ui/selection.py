"""Explore's target selection: ROI / hemisphere / custom voxel set, its text, and the maps that show it.

A subject that cannot be drawn (no pycortex surface, a missing transform, a broken database) still
has its ROIs listed and generates; where a map would be, a note says why there is none.
"""
from __future__ import annotations

import logging

import numpy as np

from .service import CUSTOM

__all__ = ["HEMISPHERES", "HEMISPHERE_CHOICE", "PAINT_WIDTH", "default_roi", "target_name", "highlight", "selection_text",
           "selection_map", "safe_map", "painter_value", "subject_label", "subject_choices"]

log = logging.getLogger(__name__)
HEMISPHERES = {"both": "", "left (.lh)": ".lh", "right (.rh)": ".rh"}
HEMISPHERE_CHOICE = {"lh": "left (.lh)", "rh": "right (.rh)"}
PAINT_WIDTH = 760  # the paint canvas's image width: fits the editor at 100% zoom


def default_roi(roi_names) -> str:
    """The ROI selected when nothing else is: FFA where the subject has it, else its first."""
    return "FFA" if "FFA" in roi_names else roi_names[0]


def target_name(st: dict) -> str:
    """The selection as the service's target: ``"FFA"``, ``"FFA.lh"`` or the custom set."""
    return CUSTOM if st["target"] == CUSTOM else st["target"] + HEMISPHERES[st.get("hemi", "both")]


def highlight(st: dict):
    return np.asarray(st["voxels"], dtype=np.int64) if st["target"] == CUSTOM else target_name(st)


def selection_text(service, subject_name: str, st: dict) -> str:
    """What is selected, with its voxel count per hemisphere."""
    subject = service.subject(subject_name)
    voxels = np.asarray(st["voxels"], np.int64) if st["target"] == CUSTOM else subject.roi(target_name(st))
    n_right = int(subject.is_right[voxels].sum()) if len(voxels) else 0
    what = "custom voxel set" if st["target"] == CUSTOM else target_name(st)
    return f"**Selected:** {what} — {len(voxels)} voxels ({len(voxels) - n_right} left, {n_right} right)"


def subject_label(service, name: str) -> str:
    """The subject as people read it (its space too, when the subject has one: ``subj01 · func1pt8mm``)."""
    return getattr(service.subject(name), "label", name)


def subject_choices(service, names) -> list[tuple[str, str]]:
    return [(subject_label(service, name), name) for name in names]


def safe_map(service, subject_name: str, draw) -> tuple[np.ndarray | None, str]:
    """``draw()``'s image and no note, or no image and a note saying why the subject has no map."""
    subject = service.subject(subject_name)
    if not getattr(subject, "drawable", True):
        return None, _no_map_note(service, subject_name, "its voxel space has no pycortex surface to draw on")
    try:
        return draw(), ""
    except Exception as exc:  # any drawing failure (pycortex KeyError, missing files): the tab keeps working
        log.warning("no flatmap for %s: %r", subject_name, exc)
        return None, _no_map_note(service, subject_name, f"{type(exc).__name__}: {exc}")


def _no_map_note(service, subject_name: str, why: str) -> str:
    return (f"**No flatmap for {subject_label(service, subject_name)}** ({why}). Choose the target from the ROI "
            "list; generation works as usual.")


def selection_map(service, subject_name: str, st: dict, contrast: str | None = None) -> np.ndarray:
    """The selection flatmap: the target highlighted, region B of a contrast outlined in a second colour."""
    return service.flatmap(subject_name, highlight=highlight(st), highlight_b=contrast or None)


def painter_value(service, subject_name: str) -> dict | None:
    """The paint canvas: the flatmap as its background, no paint (None for a subject without a map)."""
    image, _ = safe_map(service, subject_name, lambda: service.flatmap(subject_name, rois=True, width=PAINT_WIDTH))
    return None if image is None else {"background": image, "layers": [], "composite": None}
