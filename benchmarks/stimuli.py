"""Stimulus statistics, equalisation and packages on the demo: max FFA vs max PPA vs unguided.

    python -m benchmarks.stimuli [--seeds 16] [--package-images 300]

Generates ``--seeds`` images per set with the demo preset (128 px, 25 DPM steps, scale 20, SAG 0.75; the
unguided set is the same seeds at scale 0), then: the statistics table per set with permutation tests, the
share of each set's predicted target effect kept by each equalisation, and the time to build a package of
``--package-images`` images (the generated images cycled through the 8 flips/rotations of the square, so the
images are distinct; content does not change the work). Writes ``benchmarks/results/stimuli.json`` and the
"Stimulus packages" section of ``benchmarks/RESULTS.md``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from .machine import cpu_name, write_section

RESULTS = Path(__file__).resolve().parent / "results"
EQUALISATIONS = [("luminance",), ("histogram",), ("spectrum",), ("spectrum", "luminance")]
SHOWN = ["mean_lum", "rms_lum", "mean_lstar", "rms_lstar", "colourfulness", "spectrum_slope", "edge_density",
         "entropy"]


def generate(seeds: int):
    """max FFA, max PPA and the unguided image of each seed, made by the generation routine every door uses."""
    from braindive import demo
    from braindive.generate import GenerationSettings, generate_seed, seed_record
    from braindive.presets import PRESETS
    from braindive.stimuli.sources import UNGUIDED, Stimulus
    from braindive.targets import Target

    bundle = demo.load()
    settings = GenerationSettings.from_preset(PRESETS["demo"])
    stimuli, unguided = [], []
    t0 = time.perf_counter()
    for roi in ("FFA", "PPA"):
        target = Target.maximize(roi)
        for seed in range(seeds):
            # one unguided image per seed: made with max FFA, the same pixels for any target
            result = generate_seed(bundle.pipe, target, seed, settings, subject=bundle.subject, baseline=roi == "FFA",
                                   model="demo:tiny-sd", encoder="demo")
            record = seed_record(result, target, bundle.subject, settings, model="demo:tiny-sd", encoder="demo")
            stimuli.append(Stimulus(result.image, target.label, f"{roi}-seed{seed}", seed, record))
            if roi == "FFA":
                unguided.append(Stimulus(result.baseline_image, UNGUIDED, f"unguided-seed{seed}", seed, record, True))
    return bundle, stimuli + unguided, time.perf_counter() - t0


def share_kept(stimuli, scorer, sets):
    from braindive.stimuli.equalise import equalise
    from braindive.stimuli.report import target_effects

    images = [np.asarray(s.image) for s in stimuli]
    before = scorer(images)
    rows = {}
    for steps in EQUALISATIONS:
        t0 = time.perf_counter()
        result = equalise(images, steps)
        seconds = time.perf_counter() - t0
        effects = target_effects(stimuli, scorer.subject, before, scorer(result.images), sets)
        rows[" + ".join(steps)] = {"seconds": round(seconds, 2), "unmatched": result.unmatched,
                                   "sets": {e["set"]: {k: e[k] for k in ("effect", "effect_equalised", "share_kept")}
                                            for e in effects}}
    return rows


def dihedral(image, k: int):
    from PIL import Image

    out = image.rotate(90 * (k % 4))
    return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if k >= 4 else out


def time_package(stimuli, scorer, n_images: int, equalise_steps, folder: Path) -> dict:
    from braindive.catalog import Catalog
    from braindive.stimuli.package import PackageSettings, build_package
    from braindive.stimuli.sources import Stimulus

    sets = list(dict.fromkeys(s.condition for s in stimuli))
    per_set = n_images // len(sets)
    many = []
    for condition in sets:
        members = [s for s in stimuli if s.condition == condition]
        for i in range(per_set):
            s = members[i % len(members)]
            many.append(Stimulus(dihedral(s.image, i // len(members)), condition, f"{s.source}-v{i}", s.seed, s.record,
                                 s.unguided))
    stages, t0 = [], time.perf_counter()
    catalog = Catalog(folder / "catalog")
    package = build_package(many, folder / f"package-{len(equalise_steps)}", PackageSettings(equalise=equalise_steps),
                            scorer, catalog, log=lambda m: stages.append((round(time.perf_counter() - t0, 2), m)))
    seconds = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in package.path.rglob("*") if p.is_file())
    return {"images": len(many), "equalise": list(equalise_steps), "seconds": round(seconds, 2),
            "stages": stages, "megabytes": round(size / 2**20, 1)}


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = ["## Stimulus packages", "",
             f"Machine: {m['cpu']}, {m['cores']} cores shared with other helpers' jobs, no GPU; load average "
             f"{m['load_start']} at start, {m['load_end']} at end; torch {m.get('torch_threads', 2)} thread(s). Command: `python -m benchmarks.stimuli --seeds "
             f"{result['seeds']} --package-images {result['package_images']}`. Date: {result['date']}. Demo preset "
             "(128 px, 25 DPM steps, brain guidance 20, SAG 0.75); unguided = the same seeds at scale 0; generating "
             f"the {3 * result['seeds']} images took {result['generation_seconds']:.0f} s.", "",
             "### Statistics per set (mean ± sd)", "",
             "| statistic | " + " | ".join(result["sets"]) + " |", "|---|" + "---|" * len(result["sets"])]
    for name in SHOWN:
        cells = [f"{v[name + '_mean']:.3g} ± {v[name + '_sd']:.2g}" for v in result["sets"].values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| embedding diversity | " + " | ".join(f"{v['embedding_diversity']:.3f}"
                                                        for v in result["sets"].values()) + " |")
    lines += ["", f"Permutation tests ({result['n_permutations']} permutations, two-sided; difference of means, p):", "",
              "| statistic | " + " | ".join(result["pairs"]) + " |", "|---|" + "---|" * len(result["pairs"])]
    for name in SHOWN:
        cells = [f"{result['tests'][name][p]['difference']:+.3g} (p {result['tests'][name][p]['p']:.3g})"
                 for p in result["pairs"]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    sets = [s for s in next(iter(result["equalisation"].values()))["sets"]]
    lines += ["", "### Predicted target effect kept after equalisation", "",
              "Effect = the set's target measure (max FFA: FFA mean; max PPA: PPA mean) minus the same measure over "
              "the other two sets' images, from the demo encoder; share kept = effect after / before.", "",
              "| equalisation | seconds | " + " | ".join(f"{s}: effect after (share kept)" for s in sets) + " |",
              "|---|---|" + "---|" * len(sets)]
    first = next(iter(result["equalisation"].values()))["sets"]
    lines.append("| none | | " + " | ".join(f"{first[s]['effect']:.3f} (100%)" for s in sets) + " |")
    for name, row in result["equalisation"].items():
        lines.append(f"| {name} | {row['seconds']} | " + " | ".join(
            f"{row['sets'][s]['effect_equalised']:.3f} ({row['sets'][s]['share_kept']:.0%})" for s in sets) + " |")
    lowest = {s: min(result["equalisation"].items(), key=lambda kv: kv[1]["sets"][s]["share_kept"]) for s in sets}
    lines += ["", "Lowest share kept: " + "; ".join(f"{s} {row['sets'][s]['share_kept']:.0%} ({name})"
                                                   for s, (name, row) in lowest.items()) + "."]
    lines += ["", f"### Building a {result['package_images']}-image package", "",
              "| equalisation | images | seconds | size (MiB) | stages (s from start) |", "|---|---|---|---|---|"]
    for row in result["packages"]:
        stages = "; ".join(f"{t}: {'written' if msg.startswith('package') else msg.split(':')[0]}"
                           for t, msg in row["stages"])
        lines.append(f"| {' + '.join(row['equalise']) or 'none'} | {row['images']} | {row['seconds']} | "
                     f"{row['megabytes']} | {stages} |")
    lines += ["", "A package build scores every image with the encoder (twice when equalised), computes the "
              "statistics, runs the permutation tests (10000 per statistic and pair of sets) and writes the images, "
              "tables, plots, runs and manifest. Times are on the shared machine at the load above."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--package-images", type=int, default=300)
    parser.add_argument("--permutations", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: on a shared, oversubscribed machine "
                                                                  "torch's threads otherwise wait on each other)")
    parser.add_argument("--render", action="store_true", help="only rewrite RESULTS.md from results/stimuli.json")
    args = parser.parse_args(argv)
    if args.render:
        result = json.loads((RESULTS / "stimuli.json").read_text())
        write_section(RESULTS.parent / "RESULTS.md", "## Stimulus packages", markdown(result))
        return result
    from braindive.stimuli.report import set_summary
    from braindive.stimuli.scoring import Scorer
    from braindive.stimuli.statistics import image_statistics, statistics_table

    import torch

    torch.set_num_threads(args.threads)
    load_start = [round(v, 2) for v in os.getloadavg()]
    bundle, stimuli, generation = generate(args.seeds)
    print(f"generated {len(stimuli)} images in {generation:.0f} s", flush=True)
    scorer = Scorer(bundle.encoder, bundle.subject)
    sets = list(dict.fromkeys(s.condition for s in stimuli))
    rows = [{"condition": s.condition, **image_statistics(s.image)} for s in stimuli]
    summary = set_summary(rows, sets, scorer([np.asarray(s.image) for s in stimuli]).embeddings)
    tests = statistics_table([{**r, "set": r["condition"]} for r in rows], sets, args.permutations)
    pairs = list(dict.fromkeys(f"{t['set_a']} vs {t['set_b']}" for t in tests))
    result = {"date": dt.date.today().isoformat(), "seeds": args.seeds, "package_images": args.package_images,
              "n_permutations": args.permutations, "generation_seconds": round(generation, 1),
              "sets": {s["set"]: s for s in summary}, "pairs": pairs,
              "tests": {name: {f"{t['set_a']} vs {t['set_b']}": {"difference": t["difference"], "p": t["p_permutation"]}
                               for t in tests if t["statistic"] == name} for name in SHOWN},
              "equalisation": share_kept(stimuli, scorer, sets)}
    with tempfile.TemporaryDirectory() as tmp:
        print("equalisation effects done; timing packages", flush=True)
        result["packages"] = [time_package(stimuli, scorer, args.package_images, steps, Path(tmp))
                              for steps in ((), ("spectrum", "luminance"))]
    result["machine"] = {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                         "torch_threads": args.threads,
                         "load_start": load_start, "load_end": [round(v, 2) for v in os.getloadavg()]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "stimuli.json").write_text(json.dumps(result, indent=2, default=float))
    write_section(RESULTS.parent / "RESULTS.md", "## Stimulus packages", markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
