"""Explore's activation view: the predicted response maps of one result, read at a glance.

Three maps per result: ``guided``, ``unguided`` (same seed, brain guidance off) and their difference.
The target is outlined (region B of a contrast too, in a second colour) rather than filled, the colour
limits are chosen for the view (robust over the map, or fitted to the target), the colour bar says
what the numbers are, a click gives the values under it (a volume voxel's grid position and scanner
coordinates too), and the maps download as ``.npy`` (and GIfTI for surface subjects, NIfTI on the grid
for volume subjects). The unguided image and activations belong to the catalog (one per seed, shared by
every target: ``Catalog.unguided_paths``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from braindive.cache import private_tmp
from braindive.flatmap.render import _HIGHLIGHT, _HIGHLIGHT_B
from braindive.targets import Target

from .registry import ServiceError

__all__ = ["MAPS", "LIMITS", "ResultMaps", "load_maps", "units", "target_sets", "color_limits",
           "render", "result_map", "values_at", "voxel_name", "map_formats", "export_maps", "outline_kwargs",
           "COLOUR_B"]

MAPS = ("guided − unguided", "guided", "unguided")
LIMITS = ("robust: 2nd–98th percentile of the map", "fit the target region")
COLOUR_A = tuple(int(c) for c in _HIGHLIGHT)    # the target, as braindive.flatmap outlines it
COLOUR_B = tuple(int(c) for c in _HIGHLIGHT_B)  # region B of a contrast
UNITS = {"synthetic": "simulated response units (demo)", "nsd": "z-scored betas",
         "generic": "the dataset's response units"}
# braindive.flatmap draws outlines itself from this version on (helper "voxel"); before, this module draws them


@dataclass
class ResultMaps:
    """One cataloged result: its record and the per-voxel predictions with and without guidance."""

    entry_id: str
    record: dict
    guided: np.ndarray
    unguided: np.ndarray | None  # None for results cataloged before unguided maps were stored
    image_path: Path
    unguided_image: Path | None

    def values(self, kind: str) -> np.ndarray:
        if kind not in MAPS:
            raise ValueError(f"`kind` must be one of {MAPS}, got {kind!r}.")
        if kind == "guided":
            return self.guided
        if self.unguided is None:
            raise ValueError("This result has no unguided map stored (it was generated before they were kept).")
        return self.unguided if kind == "unguided" else self.guided - self.unguided


def load_maps(catalog, entry_id: str) -> ResultMaps:
    """A cataloged result's maps; ``KeyError`` / ``ValueError`` when it is gone or has no activations."""
    entry = catalog.get(entry_id)
    guided = catalog.activations(entry_id)
    if guided is None:
        raise ValueError(f"Result {entry_id} has no stored activations.")
    png, npy = catalog.unguided_paths(entry_id)
    unguided = np.load(npy, allow_pickle=False) if npy is not None else None
    return ResultMaps(entry_id, catalog.record(entry_id), guided, unguided, entry.image_path, png)


def units(encoder_config) -> str:
    """What the encoder's predictions are measured in, from what it was trained on."""
    training = getattr(encoder_config, "training", {}) or {}
    return training.get("units") or UNITS.get(training.get("dataset_source", ""), "z-scored betas")


def target_sets(record: dict, subject) -> tuple[object, object]:
    """The target (A) and contrast region (B) of a result: ROI names of its ``Target``, voxel indices for a voxel
    set (or an ROI this subject does not have, from the record's objective)."""
    target, objective = Target.from_record(record), record.get("objective") or {}

    def region(name, voxels):
        if name and target.voxels is None and name.split(".")[0] in subject.roi_names:
            return name
        return np.asarray(voxels, np.int64) if voxels is not None and len(voxels) else None

    b = target.region_b if target.region_b and target.region_b.split(".")[0] in subject.roi_names else None
    return region(target.region_a, objective.get("positive", target.voxels)), b or region("", objective.get("negative"))


def _voxels(subject, region) -> np.ndarray:
    return subject.roi(region) if isinstance(region, str) else np.asarray(region, np.int64)


def color_limits(values: np.ndarray, choice: str, subject=None, target=None) -> tuple[float, float]:
    """Symmetric limits: the 2nd-98th percentile range of the map, or the target's range (98th pct of |v|)."""
    finite = values[np.isfinite(values)]
    if choice == LIMITS[1] and target is not None:
        inside = values[_voxels(subject, target)]
        finite = inside[np.isfinite(inside)] if np.isfinite(inside).any() else finite
        bound = float(np.percentile(np.abs(finite), 98))
    else:
        lo, hi = np.percentile(finite, [2, 98])
        bound = float(max(abs(lo), abs(hi)))
    bound = bound if bound > 0 else 1.0
    return -bound, bound


def outline_kwargs(target, region_b) -> dict:
    """``render_flatmap`` keywords that outline A (and B)."""
    return {"highlight": target, "highlight_style": "outline", "highlight_b": region_b}


def render(service, subject_name: str, maps: ResultMaps, kind: str, limits: str, unit: str) -> np.ndarray:
    """The map ``kind`` of a result with its target outlined and the units under the colour bar."""
    subject = service.subject(subject_name)
    target, region_b = target_sets(maps.record, subject)
    values = maps.values(kind)
    vmin, vmax = color_limits(values, limits, subject, target)
    title = f"{kind} · seed {maps.record.get('seed')} · {Target.from_record(maps.record).label}"
    image = service.flatmap(subject_name, values, vmin=vmin, vmax=vmax, title=title, **outline_kwargs(target, region_b))
    return _with_units(image, f"colour: {kind} predicted response · {unit}")


def result_map(service, subject_name: str, maps: ResultMaps, kind: str, limits: str) -> np.ndarray:
    """``render`` with the units of the encoder that made the result: the one activation view of Explore and History."""
    try:
        unit = units(service.encoder(maps.record.get("encoder", "")).config)
    except ServiceError:  # the encoder is gone or cannot load: say what is usual
        unit = "z-scored betas"
    return render(service, subject_name, maps, kind, limits, unit)


def _font(size: int):
    """DejaVu Sans (the flatmap's font) from matplotlib's copy."""
    import matplotlib
    from PIL import ImageFont

    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), size)


def _with_units(image: np.ndarray, text: str) -> np.ndarray:
    """``image`` with a line of text in a white band under it (the flatmap's rows keep their positions)."""
    height, width = image.shape[:2]
    band = max(18, round(0.024 * width))
    canvas = Image.new("RGB", (width, height + band), "white")
    canvas.paste(Image.fromarray(image), (0, 0))
    ImageDraw.Draw(canvas).text((width // 2, height + band // 2 - 2), text, font=_font(max(10, round(0.013 * width))),
                                fill=(40, 40, 40), anchor="mm")
    return np.asarray(canvas)


def values_at(service, subject_name: str, maps: ResultMaps, x: float, y: float) -> str:
    """Markdown: the voxel under pixel ``(x, y)`` of the map and its values, and its ROIs' means."""
    shape = service.flatmap_shape(subject_name)
    if y >= shape[0]:
        return "Click on the cortex to read values."
    hit = service.pick(subject_name, x, y, shape)
    if hit is None or hit.voxel is None:
        return "No voxel of this subject at that point; click on the coloured cortex."
    subject = service.subject(subject_name)
    lines = [f"**{voxel_name(subject, hit.voxel)}** ({hit.hemisphere}"
             f"{', ' + ', '.join(hit.rois) if hit.rois else ', no ROI'}): " + _triple(maps, lambda v: float(v[hit.voxel]))]
    for roi in hit.rois:
        region = subject.roi(f"{roi}.{hit.hemisphere}")
        lines.append(f"**{roi}.{hit.hemisphere} mean** ({len(region)} voxels): "
                     + _triple(maps, lambda v: float(v[region].mean())))
    return "  \n".join(lines)


def voxel_name(subject, voxel: int) -> str:
    """``Voxel 12``; for a volume subject with its grid position and scanner coordinates:
    ``Voxel 12 · (i, j, k) = (40, 52, 30) · (x, y, z) = (-12.0, 4.5, 8.0) mm``."""
    text = f"Voxel {voxel}"
    if getattr(subject, "kind", "surface") != "volume" or subject.ijk is None:
        return text
    ijk = np.asarray(subject.ijk[voxel], np.int64)
    xyz = np.asarray(subject.affine, np.float64) @ np.r_[ijk, 1.0]
    return (f"{text} · (i, j, k) = ({', '.join(str(int(c)) for c in ijk)}) · "
            f"(x, y, z) = ({', '.join(f'{c:.1f}' for c in xyz[:3])}) mm")


def map_formats(subject) -> str:
    """The map file formats written for ``subject`` (``export_maps``), as the downloads' header names them."""
    return ".npy, NIfTI" if getattr(subject, "kind", "surface") == "volume" else ".npy, GIfTI"


def _triple(maps: ResultMaps, reduce) -> str:
    guided = reduce(maps.guided)
    if maps.unguided is None:
        return f"guided {guided:+.3f}"
    unguided = reduce(maps.unguided)
    return f"guided {guided:+.3f} · unguided {unguided:+.3f} · guided − unguided {guided - unguided:+.3f}"


def export_maps(maps: ResultMaps, subject, folder) -> list[str]:
    """Write the maps as ``.npy`` per voxel (and per-hemisphere GIfTI for surface subjects); returns the paths.

    A result never changes, so files already written are reused."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{maps.record.get('subject', subject.name)}_seed{maps.record.get('seed')}_{maps.entry_id}"
    arrays = {"guided": maps.guided}
    if maps.unguided is not None:
        arrays.update(unguided=maps.unguided, guided_minus_unguided=maps.guided - maps.unguided)
    paths = []
    for name, values in arrays.items():
        path = folder / f"{stem}_{name}.npy"
        if not path.is_file():
            tmp = private_tmp(path, ".npy")
            np.save(tmp, np.asarray(values, np.float32))
            tmp.replace(path)
        paths.append(str(path))
    if getattr(subject, "kind", "surface") == "surface" and subject.vertices is not None:
        paths += _gifti(arrays, subject, folder, stem)
    elif getattr(subject, "kind", "surface") == "volume" and subject.ijk is not None:
        paths += _nifti(arrays, subject, folder, stem)
    return paths


def _nifti(arrays: dict, subject, folder: Path, stem: str) -> list[str]:
    """One ``.nii.gz`` per map on the subject's grid (its shape and affine; NaN outside its voxels)."""
    import nibabel as nib

    paths = []
    i, j, k = np.asarray(subject.ijk, np.int64).T
    for name, values in arrays.items():
        path = folder / f"{stem}_{name}.nii.gz"
        paths.append(str(path))
        if path.is_file():
            continue
        grid = np.full(tuple(subject.volume_shape), np.nan, np.float32)
        grid[i, j, k] = np.asarray(values, np.float32)
        image = nib.Nifti1Image(grid, np.asarray(subject.affine, np.float64))
        image.header.set_xyzt_units("mm")
        tmp = private_tmp(path, ".nii.gz")
        nib.save(image, tmp)
        tmp.replace(path)
    return paths


def _gifti(arrays: dict, subject, folder: Path, stem: str) -> list[str]:
    """One ``.func.gii`` per hemisphere with a data array per map (NaN at vertices without a voxel)."""
    import nibabel as nib

    paths = []
    for hemi, structure, part in (("lh", "CortexLeft", slice(0, subject.n_vertices_lh)),
                                  ("rh", "CortexRight", slice(subject.n_vertices_lh, subject.n_vertices))):
        path = folder / f"{stem}.{hemi}.func.gii"
        paths.append(str(path))
        if path.is_file():
            continue
        image = nib.gifti.GiftiImage(meta=nib.gifti.GiftiMetaData({"AnatomicalStructurePrimary": structure}))
        for name, values in arrays.items():
            data = subject.to_surface(np.asarray(values, np.float64))[part].astype(np.float32)
            image.add_gifti_data_array(nib.gifti.GiftiDataArray(
                data, intent="NIFTI_INTENT_ESTIMATE", datatype="NIFTI_TYPE_FLOAT32",
                meta=nib.gifti.GiftiMetaData({"Name": name})))
        tmp = private_tmp(path, ".gii")
        nib.save(image, tmp)
        tmp.replace(path)
    return paths
