"""Sub-region cross-prediction on the demo: S1's FFA and OPA split in 2 by weights and by anatomy.

For each split, each part's guided images (the same seeds for every part) are scored by the encoder on every
part; the gain is the part's predicted mean minus its mean for the unguided image of the same seed. A seed
counts for part i when its own gain is the largest. Two guidance targets per part: the part's mean (the
paper's sub-ROI runs) and the part's mean minus the other part's (``kind="contrast"``).

    python -m benchmarks.subregions [--seeds 16] [--mode fast]

Writes ``benchmarks/results/subregions.json`` and the "## Sub-regions" section of ``benchmarks/RESULTS.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import cpu_name, write_section

HERE = Path(__file__).resolve().parent
SECTION = "## Sub-regions"
SPLITS = [("FFA", "weights"), ("OPA", "weights"), ("FFA", "anatomy"), ("OPA", "anatomy")]
KINDS = ("maximize", "contrast")


def run(n_seeds: int, mode: str, contrast_for=("weights", "anatomy")) -> dict:
    import braindive as bd
    from braindive import subregions as sr
    from braindive.demo import DEMO_DEFAULTS

    demo = bd.demo.load()
    rows, load = [], [os.getloadavg()[0]]
    start = time.perf_counter()
    for roi, by in SPLITS:
        split = sr.split_region(demo.subject, roi, 2, by, encoder=demo.encoder, seed=0)
        similarity = sr.report(split, demo.subject, sr.weight_profiles(demo.encoder, split.voxels))
        for kind in [k for k in KINDS if k != "contrast" or by in contrast_for]:
            cp = sr.cross_prediction(demo.pipe, split.parts, range(n_seeds), kind=kind, batch_size=n_seeds,
                                     guidance_mode=mode, **DEMO_DEFAULTS)
            load.append(os.getloadavg()[0])
            for i, row in enumerate(cp.table()):
                rows.append({"roi": roi, "by": by, "guided": kind, **row, **similarity[i],
                             "margin_min": float(cp.margins[i].min()), "margin_max": float(cp.margins[i].max())})
            print(roi, by, kind, [(r["images for"], r["own largest"], r["margin"]) for r in cp.table()], flush=True)
    return {"seeds": n_seeds, "settings": {**DEMO_DEFAULTS, "guidance_mode": mode}, "rows": rows,
            "seconds": time.perf_counter() - start, "cpu": cpu_name(), "cores": os.cpu_count(),
            "load_1min": [min(load), max(load)]}


def markdown(report: dict) -> str:
    lines = [SECTION, "",
             f"`python -m benchmarks.subregions --seeds {report['seeds']}`: the demo (S1, demo encoder, "
             f"{report['settings']['num_inference_steps']} steps, scale {report['settings']['brain_guidance_scale']:g}, "
             f"128 px, {report['settings']['guidance_mode']} guidance), each region split in 2, seeds 0-{report['seeds'] - 1} for every part. "
             "*own largest*: share of seeds whose image raised its own part more than the other part (gain = predicted "
             "part mean minus that of the unguided image of the same seed); *margin*: own gain minus the other part's "
             "gain (mean, min..max over seeds). *within/between*: mean cosine of the unit weight profiles inside a part "
             "and across parts. "
             f"{report['cpu']}, {report['cores']} cores, 1-min load {report['load_1min'][0]:.1f}-{report['load_1min'][1]:.1f} "
             f"(shared machine); {report['seconds'] / 60:.1f} min.", "",
             "| region | split | guided by | part | voxels (lh/rh) | within / between | gain own | gain other | own largest | margin (min..max) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["rows"]:
        gains = {k[5:]: v for k, v in r.items() if k.startswith("gain ")}
        own = gains.pop(r["images for"])
        other = next(iter(gains.values()))
        lines.append(f"| {r['roi']} | {r['by']} | {r['guided']} | {r['images for']} | {r['n_voxels']} ({r['n_lh']}/{r['n_rh']}) "
                     f"| {r['within']:.3f} / {r['between']:.3f} | {own:.4f} | {other:.4f} | {100 * r['own largest']:.0f}% "
                     f"| {r['margin']:+.4f} ({r['margin_min']:+.4f}..{r['margin_max']:+.4f}) |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--mode", default="fast", help="guidance mode (the demo's fast recipe by default: CPU time)")
    parser.add_argument("--contrast-for", nargs="*", default=["weights", "anatomy"],
                        help="split kinds whose parts are also guided as contrasts (part - other part)")
    args = parser.parse_args(argv)
    report = run(args.seeds, args.mode, tuple(args.contrast_for))
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "subregions.json").write_text(json.dumps(report, indent=2))
    write_section(HERE / "RESULTS.md", SECTION, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
