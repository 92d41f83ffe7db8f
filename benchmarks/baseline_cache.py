"""The unguided-baseline cache: a 5-region sweep makes one unguided image per seed, not five.

``python -m benchmarks.baseline_cache`` generates 5 regions x N seeds with the demo preset on the CPU
through ``braindive.generate.generate_seeds`` (the routine of the app, ``generate`` and the batch
worker), twice: with the catalog as the baseline store (the default at every door) and without one
(each target makes its own unguided image, as before). It counts the unguided pipeline runs, checks
that both ways record the same baseline measures, and writes the "## Unguided baseline cache" section
of ``benchmarks/RESULTS.md`` and ``benchmarks/results/baseline_cache.json``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.machine import cpu_name, write_section

HERE = Path(__file__).resolve().parent
SECTION = "## Unguided baseline cache"
REGIONS = ("FFA", "PPA", "EBA", "OPA", "RSC")


def run(bundle, seeds, settings, store) -> dict:
    """Every region x seed; returns seconds, unguided runs and the baseline measures by (region, seed)."""
    from braindive.generate import _call, generate_seeds
    from braindive.targets import Target

    counts = {"unguided": 0, "guided": 0, "unguided_s": 0.0, "guided_s": 0.0, "unguided_each": [], "guided_each": []}

    def counted(objective, batch_seeds, params, callback):
        kind = "unguided" if params["brain_guidance_scale"] == 0 else "guided"
        t = time.perf_counter()
        out = _call(bundle.pipe, objective, batch_seeds, params, callback)
        counts[kind] += len(batch_seeds)
        counts[f"{kind}_s"] += time.perf_counter() - t
        counts[f"{kind}_each"].append((time.perf_counter() - t) / len(batch_seeds))
        return out

    baselines, t0 = {}, time.perf_counter()
    for seed in seeds:  # a sweep's order does not matter for the count; seed-major is what the app sees
        for region in REGIONS:
            (result,) = generate_seeds(bundle.pipe, Target.maximize(region), [seed], settings, subject=bundle.subject,
                                       baselines=store, model="demo:tiny-sd", encoder="demo", batch=counted)
            baselines[f"{region}/{seed}"] = result.baseline_measure
    return {"seconds": time.perf_counter() - t0, **counts, "baselines": baselines}


def markdown(report: dict) -> str:
    m, cached, plain = report["machine"], report["cached"], report["uncached"]
    saved = plain["seconds"] - cached["seconds"]
    guided, unguided = report["median_guided_s"], report["median_unguided_s"]
    n = report["n_seeds"] * len(REGIONS)
    model_saved = (plain["unguided"] - cached["unguided"]) * unguided
    model_total = n * guided + plain["unguided"] * unguided
    return "\n".join([
        SECTION, "",
        f"CPU only ({m['cpu']}, {m['cores']} cores shared with other jobs; load average {report['load_start']} at "
        f"start; {report['threads']} torch thread). Command: `{report['command']}`. Date: {report['date']}. Demo preset "
        f"({report['size']} px, "
        f"{report['steps']} DPM-Solver steps, exact mode, SAG 0.75, brain scale 20), {len(REGIONS)} regions "
        f"({', '.join(REGIONS)}) x {report['n_seeds']} seeds through `braindive.generate.generate_seeds`, the routine of "
        "the app, `generate` and the batch worker. Ratios are from this one run.", "",
        "| baseline store | guided images | unguided images | time in guided runs (s) | time in unguided runs (s) "
        "| total (s) |",
        "|---|---|---|---|---|---|",
        *(f"| {name} | {r['guided']} | {r['unguided']} | {r['guided_s']:.1f} | {r['unguided_s']:.1f} | {r['seconds']:.1f} |"
          for name, r in (("catalog (default)", cached), ("none (one unguided image per target)", plain))),
        "",
        f"The cache makes {cached['unguided'] / report['n_seeds']:.0f} unguided image per seed instead of "
        f"{plain['unguided'] / report['n_seeds']:.0f}. Median time per image over both passes: guided {guided:.2f} s, "
        f"unguided {unguided:.2f} s; so the sweep saves {plain['unguided'] - cached['unguided']} x {unguided:.2f} = "
        f"{model_saved:.1f} s of about {model_total:.1f} s ({100 * model_saved / model_total:.0f}%; "
        f"{model_total / (model_total - model_saved):.2f}x). Measured totals of this run: {saved:+.1f} s "
        f"({plain['seconds']:.1f} s uncached vs {cached['seconds']:.1f} s cached). "
        f"Baseline measures are identical both ways (largest difference {report['max_baseline_difference']:.2g}). An "
        "unguided run costs much less than a guided one (no gradient through the UNet, VAE and encoder), so the total "
        "saving is far below 4/5 of the time, and on a machine shared with other jobs the totals are noisy: the "
        "per-image medians are the robust numbers. In the app a second region on the same seed skips its unguided stage "
        "the same way (`tests/test_service.py`).", ""])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.baseline_cache", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=None, help="image side (default: the demo preset's, 128)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: fastest on a shared machine)")
    parser.add_argument("--results-md", default=str(HERE / "RESULTS.md"), help="RESULTS.md to update ('' = none)")
    args = parser.parse_args(argv)

    import braindive as bd
    from braindive.catalog import Catalog
    from braindive.generate import GenerationSettings
    from braindive.presets import PRESETS

    import torch

    torch.set_num_threads(args.threads)
    bd.set_cache_dir(HERE.parent / ".cache" / "braindive")
    bundle = bd.demo.load("cpu")
    settings = GenerationSettings.from_preset(PRESETS["demo"], steps=args.steps, height=args.size, width=args.size)
    seeds = list(range(args.seeds))
    load_start = round(os.getloadavg()[0], 1)
    run(bundle, [10**6], GenerationSettings.from_preset(PRESETS["demo"], steps=1, height=args.size, width=args.size),
        None)  # warm-up, not counted
    with tempfile.TemporaryDirectory() as tmp:
        cached = run(bundle, seeds, settings, Catalog(tmp))
    plain = run(bundle, seeds, settings, None)
    difference = max(abs(cached["baselines"][k] - plain["baselines"][k]) for k in cached["baselines"])
    median = {kind: float(sorted(cached[f"{kind}_each"] + plain[f"{kind}_each"])[
        len(cached[f"{kind}_each"] + plain[f"{kind}_each"]) // 2]) for kind in ("guided", "unguided")}
    report = {"command": "python -m benchmarks.baseline_cache " + " ".join(argv if argv is not None else sys.argv[1:]),
              "date": dt.date.today().isoformat(), "load_start": load_start,
              "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()},
              "n_seeds": args.seeds, "steps": args.steps, "threads": args.threads, "size": settings.height, "regions": list(REGIONS),
              "cached": cached, "uncached": plain, "max_baseline_difference": difference,
              "median_guided_s": median["guided"], "median_unguided_s": median["unguided"]}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "baseline_cache.json").write_text(json.dumps(report, indent=2))
    if args.results_md:
        write_section(Path(args.results_md), SECTION, markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
