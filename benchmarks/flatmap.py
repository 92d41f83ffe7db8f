"""Flatmap timings on the surface subject S1 and the volume subject S1-fullhead: cache builds, render,
pick, paint, grow, in each view.

Run ``python -m benchmarks.flatmap``. For each subject (``--subject``) and view (``--view``, default
all) builds the caches in a temporary folder (cold), then times the warm operations; writes
``benchmarks/results/flatmap.json`` and the "## Flatmaps" section of ``benchmarks/RESULTS.md``.
``--figures`` also redraws the flatmaps in ``docs/``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import braindive as bd
from braindive import flatmap
from braindive.flatmap import mapping, raster, surfaces
from benchmarks.machine import cpu_name, write_section

HERE = Path(__file__).resolve().parent
DOCS = HERE.parent / "docs"
SECTION = "## Flatmaps"
SUBJECTS = ("S1", "S1-fullhead")


def timed(fn, repeats: int = 1) -> tuple[float, object]:
    """Median wall time in seconds over ``repeats`` calls, and the last result."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def _clear() -> None:
    surfaces.surface_info.cache_clear()
    surfaces._PER_SUBJECT.clear()
    raster.GRIDS.clear()


def run(name: str, width: int, repeats: int, view: str, seed: int = 0) -> dict:
    subject = bd.load_subject(name)
    rng = np.random.default_rng(seed)
    values = rng.standard_normal(subject.n_voxels)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        bd.set_cache_dir(tmp)
        try:
            _clear()
            mapping.pycortex_mapper.cache_clear()
            results["build_surface_cache_s"], _ = timed(lambda: surfaces.surface_info(subject.surface))
            results["build_mapping_s"], _ = timed(lambda: flatmap.voxel_mapping(subject))
            results["build_grid_cache_s"], _ = timed(lambda: raster.pixel_grid(subject, width, view))
            _clear()
            results["load_caches_s"], _ = timed(lambda: raster.pixel_grid(subject, width, view))
            render = dict(width=width, view=view)
            results["render_base_s"], _ = timed(lambda: bd.render_flatmap(None, subject, **render), repeats)
            results["render_values_s"], image = timed(
                lambda: bd.render_flatmap(values, subject, title="random", **render), repeats
            )
            results["render_values_highlight_s"], _ = timed(
                lambda: bd.render_flatmap(values, subject, highlight="FFA", **render), repeats
            )
            points = rng.integers(0, image.shape[1::-1], size=(200, 2))
            points = iter(np.concatenate([points] * repeats))
            results["pick_s"], _ = timed(lambda: bd.pick(subject, *next(points), image.shape, view=view), 200)
            mask = np.zeros(image.shape[:2], bool)
            mask[image.shape[0] // 3 : image.shape[0] // 2, image.shape[1] // 3 : image.shape[1] // 2] = True
            results["voxels_in_mask_s"], painted = timed(
                lambda: bd.voxels_in_mask(subject, mask, view=view), repeats
            )
            voxel = int(subject.roi("FFA.lh")[0])
            results["grow_10mm_s"], grown = timed(lambda: bd.grow(subject, voxel, 10.0), repeats)
        finally:
            bd.set_cache_dir(None)
            _clear()
    results["image_shape"] = list(image.shape)
    results["voxels_painted"] = int(len(painted))
    results["voxels_grown_10mm"] = int(len(grown))
    return results


def machine() -> str:
    return f"{cpu_name()}, {os.cpu_count()} CPU cores, no GPU use, Python {platform.python_version()}, numpy {np.__version__}"


def markdown(report: dict) -> str:
    """The "## Flatmaps" section: one row per operation, one time column per view."""
    ms = lambda s: f"{s * 1000:.3g} ms"  # noqa: E731
    repeats = report["repeats"]
    rows = [
        ("Build surface cache (curvature + mesh graph, once per surface)",
         lambda r: f"{r['build_surface_cache_s']:.2f} s"),
        ("Build voxel -> vertex mapping (once per subject; volumes: pycortex line_nearest mapper)",
         lambda r: f"{r['build_mapping_s']:.2f} s"),
        (f"Build pixel grid cache (once per subject, view and width {report['width']})",
         lambda r: f"{r['build_grid_cache_s']:.2f} s"),
        ("Load mapping + pixel grid caches from disk", lambda r: ms(r["load_caches_s"])),
        (f"Render base map (curvature + ROIs), median of {repeats}", lambda r: ms(r["render_base_s"])),
        (f"Render values + ROIs + colour bar + title, median of {repeats}", lambda r: ms(r["render_values_s"])),
        (f"Render values + FFA highlight, median of {repeats}", lambda r: ms(r["render_values_highlight_s"])),
        ("pick (median of 200 random pixels)", lambda r: ms(r["pick_s"])),
        ("voxels_in_mask (a rectangle of 1/6 x 1/6 of the image)",
         lambda r: f"{ms(r['voxels_in_mask_s'])} ({r['voxels_painted']} voxels)"),
        ("grow 10 mm", lambda r: f"{ms(r['grow_10mm_s'])} ({r['voxels_grown_10mm']} voxels)"),
    ]
    results = report["results"]
    views = list(results)
    header = [f'{key.replace(" ", ", view=")}, {r["image_shape"][1]} x {r["image_shape"][0]} px'
              for key, r in results.items()]
    subjects = ", ".join(f"{name} ({n} voxels)" for name, n in report["n_voxels"].items())
    lines = [
        SECTION,
        "",
        f"Subjects {subjects}, image width {report['width']} px. Machine: {report['machine']}, "
        f"load average {report['load_average']} at start (other jobs share the cores). "
        f"Command: `{report['command']}`. Date: {report['date']}.",
        "",
        "| Operation | " + " | ".join(header) + " |",
        "|---|" + "---|" * len(views),
        *[f"| {name} | " + " | ".join(cell(results[view]) for view in views) + " |" for name, cell in rows],
        "",
    ]
    return "\n".join(lines)


def figures(folder: Path = DOCS) -> list[Path]:
    """The flatmaps shown in the docs. S1: base map, a smooth demo value map, FFA highlighted; and zoomed
    on the voxels: base map, FFA highlighted on the demo values. S1-fullhead (volume): the same demo
    values at the voxel centres, ROIs, and FFA highlighted where a click on its label selects it."""
    import cortex

    subject = bd.load_subject("S1")
    fiducial, _ = cortex.db.get_surf(subject.surface, "fiducial", merge=True)
    y, z = fiducial[subject.vertices, 1], fiducial[subject.vertices, 2]
    demo = np.sin(y / 15.0) * np.cos(z / 20.0)
    volume = bd.load_subject("S1-fullhead")
    # voxel centres in the surface's coordinates: the inverse of pycortex's anatomy -> grid transform
    centres = cortex.db.get_xfm("S1", "fullhead").inv(volume.ijk.astype(float))
    volume_demo = np.sin(centres[:, 1] / 15.0) * np.cos(centres[:, 2] / 20.0)
    x, y = bd.roi_centroids(volume, view="voxels")["FFA.rh"]
    clicked = bd.pick(volume, x, y, bd.flatmap_shape(volume, view="voxels"), view="voxels")
    return [
        bd.save_flatmap(volume_demo, volume, folder / "flatmap_s1_fullhead.png", vmin=-1, vmax=1,
                        highlight=clicked.rois[0], view="voxels",
                        title=f"{volume.label}: {volume.n_voxels} grid voxels; clicked {clicked.rois[0]}"),
        bd.save_flatmap(None, subject, folder / "flatmap_s1.png", title="S1 visual ROIs"),
        bd.save_flatmap(demo, subject, folder / "flatmap_s1_demo.png", vmin=-1, vmax=1,
                        title="Demo values: sin(y / 15 mm) cos(z / 20 mm)"),
        bd.save_flatmap(None, subject, folder / "flatmap_s1_ffa.png", highlight="FFA", title="S1: FFA selected"),
        bd.save_flatmap(None, subject, folder / "flatmap_s1_zoom.png", title="S1 visual ROIs", view="voxels"),
        bd.save_flatmap(demo, subject, folder / "flatmap_s1_zoom_ffa.png", vmin=-1, vmax=1, highlight="FFA",
                        title="S1: FFA selected, on demo values", view="voxels"),
    ]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=flatmap.DEFAULT_WIDTH)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--view", nargs="+", choices=flatmap.VIEWS, default=list(flatmap.VIEWS),
                        help="the views to time (default: all)")
    parser.add_argument("--subject", nargs="+", choices=SUBJECTS, default=list(SUBJECTS),
                        help="the subjects to time (default: all)")
    parser.add_argument("--figures", action="store_true", help="also redraw docs/flatmap_s1*.png")
    args = parser.parse_args(argv)
    if args.figures:
        print("wrote", ", ".join(str(path) for path in figures()))
    report = {
        "width": args.width,
        "repeats": args.repeats,
        "n_voxels": {name: bd.load_subject(name).n_voxels for name in args.subject},
        "machine": machine(),
        "load_average": [round(load, 2) for load in os.getloadavg()],
        "command": " ".join(["python -m benchmarks.flatmap", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.date.today().isoformat(),
        "results": {f"{name} {view}": run(name, args.width, args.repeats, view)
                    for name in args.subject for view in args.view},
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "flatmap.json").write_text(json.dumps(report, indent=2) + "\n")
    section = markdown(report)
    write_section(HERE / "RESULTS.md", SECTION, section)
    print(section)


if __name__ == "__main__":
    main()
