"""Reference-image variations on the demo: FFA pushed up and down from 16 reference images.

References: the demo model's own unguided images of seeds 1000-1015 (no natural images offline). For each
reference, a strength x scale grid (the pipeline's ``image=``/``strength=``, seed 0, all references in one
batch; what ``braindive.variation.variations`` runs per reference); the change is the predicted FFA mean
minus the control's (same reference, strength and seed, no brain guidance).
Full-generation gain: guided minus unguided from pure noise, seeds 0-15.

    python -m benchmarks.variation [--references 16] [--mode fast]

Writes ``benchmarks/results/variation.json`` and the "## Reference-image variations" section of
``benchmarks/RESULTS.md``.
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
SECTION = "## Reference-image variations"
STRENGTHS = (0.2, 0.4, 0.6, 0.8, 1.0)
SCALES = (-20.0, -10.0, 10.0, 20.0)
ROI = "FFA"


def run(n_refs: int, mode: str, strengths=STRENGTHS, scales=SCALES) -> dict:
    import torch

    import braindive as bd
    from braindive import variation as V
    from braindive.presets import PRESETS

    demo = bd.demo.load()
    settings = {**{k: PRESETS["demo"].defaults[k] for k in ("height", "width", "num_inference_steps", "sag_scale")},
                "guidance_mode": mode}
    objective = bd.Objective.maximize(demo.subject.roi(ROI), label=f"max {ROI}")
    load, start = [os.getloadavg()[0]], time.perf_counter()

    def generate(seeds, scale, **kwargs):
        return demo.pipe(objective=objective, generator=[torch.Generator().manual_seed(s) for s in seeds],
                         num_images_per_prompt=len(seeds), brain_guidance_scale=scale, output_type="pt",
                         **settings, **kwargs)

    refs = generate(range(1000, 1000 + n_refs), 0.0).images  # all references batched in every call below
    plain = generate(range(n_refs), 0.0).objective_values
    full = {scale: float((generate(range(n_refs), scale).objective_values - plain).mean()) for scale in scales}
    cells, same_seed = [], [0] * n_refs
    for strength in strengths:
        values = {}
        for scale in (0.0, *scales):
            out = generate(same_seed, scale, image=refs, strength=strength)
            values[scale] = V.measure(objective, out.activations)
            if scale == 0.0:
                continue
            ssim = V.ssim(out.images, refs)
            cosine = V.clip_cosine(demo.encoder, out.images, refs)
            cells += [{"reference": r, "strength": strength, "scale": scale, "control": False,
                       "change_vs_control": float(values[scale][r] - values[0.0][r]), "ssim": float(ssim[r]),
                       "clip_cosine": float(cosine[r])} for r in range(n_refs)]
        load.append(os.getloadavg()[0])
        print(f"strength {strength}: done", flush=True)
    return {"references": n_refs, "strengths": tuple(strengths), "scales": tuple(scales), "roi": ROI, "full_gain": full,
            "settings": settings, "cells": cells, "seconds": time.perf_counter() - start,
            "cpu": cpu_name(), "cores": os.cpu_count(), "load_1min": [min(load), max(load)]}


def summary(report: dict) -> dict:
    """Mean change / SSIM / CLIP cosine per (scale, strength), monotonicity, and the 50%-of-full-gain strength."""
    cells, strengths, scales = report["cells"], report["strengths"], report["scales"]
    n = report["references"]

    def arr(key, scale):  # [n_refs, n_strengths]
        out = np.full((n, len(strengths)), np.nan)
        for c in cells:
            if c["scale"] == scale:
                out[c["reference"], strengths.index(c["strength"])] = c[key]
        return out

    change = {s: arr("change_vs_control", s) for s in scales}
    mean = {s: change[s].mean(0) for s in scales}
    sign = {s: np.sign(s) for s in scales}
    mono_strength = {s: bool(np.all(np.diff(sign[s] * mean[s]) > 0)) for s in scales}
    per_ref_strength = {s: float(np.mean(np.all(np.diff(sign[s] * change[s], axis=1) > 0, axis=1))) for s in scales}
    ups, downs = sorted(s for s in scales if s > 0), sorted((s for s in scales if s < 0), reverse=True)
    mono_scale = [bool(np.all(np.diff([mean[s][j] for s in [*downs[::-1], *ups]]) > 0)) for j in range(len(strengths))]
    half = {}
    for s in scales:
        reached = [j for j in range(len(strengths)) if sign[s] * mean[s][j] >= 0.5 * sign[s] * report["full_gain"][s]]
        j = reached[0] if reached else None
        half[s] = None if j is None else {"strength": strengths[j], "mean_change": float(mean[s][j]),
                                          "ssim": float(np.nanmean(arr("ssim", s)[:, j])),
                                          "clip_cosine": float(np.nanmean(arr("clip_cosine", s)[:, j]))}
    table = {s: {"change": mean[s].tolist(), "ssim": np.nanmean(arr("ssim", s), 0).tolist(),
                 "clip_cosine": np.nanmean(arr("clip_cosine", s), 0).tolist()} for s in scales}
    return {"table": table, "monotone_in_strength": mono_strength, "per_reference_monotone_in_strength": per_ref_strength,
            "monotone_in_scale_per_strength": mono_scale, "half_gain": half}


def markdown(report: dict, summ: dict) -> str:
    st = report["strengths"]
    lines = [SECTION, "",
             f"`python -m benchmarks.variation --references {report['references']} --strengths "
             f"{' '.join(f'{s:g}' for s in st)} --scales {' '.join(f'{s:g}' for s in report['scales'])} "
             f"--mode {report['settings']['guidance_mode']}`: the demo (S1, demo encoder, "
             f"{report['settings']['num_inference_steps']} steps, 128 px, {report['settings']['guidance_mode']} guidance "
             f"(the demo's fast recipe: CPU time)), target max {report['roi']}; "
             f"references: the demo model's unguided images of seeds 1000-{999 + report['references']}; seed 0 for every "
             "variation. *change*: predicted FFA mean minus the control's (same reference, strength and seed, no brain "
             "guidance), mean over references; SSIM and CLIP cosine (the encoder's tower) to the reference. "
             f"{report['cpu']}, {report['cores']} cores, 1-min load {report['load_1min'][0]:.1f}-{report['load_1min'][1]:.1f} "
             f"(shared machine); {report['seconds'] / 60:.1f} min.", "",
             "| scale | " + " | ".join(f"s={s:g}: change / SSIM / CLIP" for s in st) + " | full generation gain |",
             "| --- | " + " | ".join("---" for _ in st) + " | --- |"]
    for scale in report["scales"]:
        t = summ["table"][scale] if scale in summ["table"] else summ["table"][str(scale)]
        cells = " | ".join(f"{c:+.3f} / {s:.2f} / {q:.3f}" for c, s, q in zip(t["change"], t["ssim"], t["clip_cosine"]))
        lines.append(f"| {scale:+g} | {cells} | {report['full_gain'][scale]:+.3f} |")
    lines += ["", "Monotone in strength (mean over references; share of references monotone on their own): " + ", ".join(
        f"scale {s:+g}: {'yes' if summ['monotone_in_strength'][s] else 'no'} "
        f"({100 * summ['per_reference_monotone_in_strength'][s]:.0f}%)" for s in report["scales"]) + ".",
        "Monotone in scale (mean change increasing with the scale at each strength): " + ", ".join(
        f"s={s:g}: {'yes' if ok else 'no'}" for s, ok in zip(st, summ["monotone_in_scale_per_strength"])) + ".",
        "Lowest strength reaching 50% of the full-generation gain: " + "; ".join(
        f"scale {s:+g}: " + ("not reached" if h is None else
                             f"s={h['strength']:g} (change {h['mean_change']:+.3f}, SSIM {h['ssim']:.2f}, CLIP {h['clip_cosine']:.3f})")
        for s, h in summ["half_gain"].items()) + "."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--references", type=int, default=16)
    parser.add_argument("--mode", default="fast", help="guidance mode (the demo's fast recipe by default: CPU time)")
    parser.add_argument("--strengths", type=float, nargs="+", default=STRENGTHS)
    parser.add_argument("--scales", type=float, nargs="+", default=SCALES, help="brain guidance scales (not 0: controls run anyway)")
    parser.add_argument("--from-results", action="store_true", help="only re-write the summary from the results file")
    args = parser.parse_args(argv)
    path = HERE / "results" / "variation.json"
    if args.from_results:
        report = json.loads(path.read_text())
        report["strengths"], report["scales"] = tuple(report["strengths"]), tuple(report["scales"])
        report["full_gain"] = {float(k): v for k, v in report["full_gain"].items()}
    else:
        report = run(args.references, args.mode, tuple(args.strengths), tuple(args.scales))
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps({**report, "full_gain": {str(k): v for k, v in report["full_gain"].items()}}, indent=2))
    summ = summary(report)
    text = markdown(report, summ)
    saved = json.loads(path.read_text())
    saved["summary"] = json.loads(json.dumps(summ, default=str), object_hook=lambda d: {str(k): v for k, v in d.items()})
    path.write_text(json.dumps(saved, indent=2))
    write_section(HERE / "RESULTS.md", SECTION, text)
    print(text)


if __name__ == "__main__":
    main()
