"""Batch generation on Ray: images/s against the number of workers, on the demo.

``python -m benchmarks.batch`` runs the same sweep (demo model, FFA, 128 px, 25 DPM-Solver steps, exact
mode, batches of 8) three ways on one machine and writes the "## Batch generation (Ray)" section of
``benchmarks/RESULTS.md`` and ``benchmarks/results/batch.json``:

* single process: ``BatchWorker`` in this process (the pipeline ``generate`` uses, seeds in batches),
  all cores as torch threads: the baseline; and the same with one torch thread;
* Ray, 1 worker with all cores; Ray, one worker per core.

Steady-state images/s counts from the moment the workers have loaded their models to the last image
in the catalog (the Ray rows include writing the catalog); start-up (Ray and the workers' model
loading) is reported separately.
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
SECTION = "## Batch generation (Ray)"
SWEEP = """\
name = "bench"
model = "demo"
seeds = {{ start = 0, count = {seeds} }}
[[encoders]]
subject = "S1"
path = "demo"
[targets]
rois = ["FFA"]
[settings]
steps = {steps}
[execution]
batch_size = {batch}
cpus_per_worker = {cpus}
baseline = false
"""


def _sweep(folder: Path, seeds: int, steps: int, batch: int, cpus: int):
    from braindive.batch import load_sweep

    path = folder / f"sweep_{cpus}.toml"
    path.write_text(SWEEP.format(seeds=seeds, steps=steps, batch=batch, cpus=cpus))
    return load_sweep(path)


def single_process(sweep, threads: int) -> dict:
    """The baseline: one process, the sweep's units in a row, ``threads`` torch threads."""
    from braindive.batch.runner import plan_units
    from braindive.batch.worker import BatchWorker
    from braindive.catalog import Catalog

    t0 = time.perf_counter()
    worker = BatchWorker("demo", threads=threads)
    worker.warm_up()
    ready = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        units, _ = plan_units(sweep, Catalog(tmp))
        n = sum(len(worker.run(unit, save_activations=False, baseline=False)) for unit in units)
    end = time.perf_counter()
    return {"workers": f"1 process, {threads} thread(s)", "cpus_each": threads, "images": n, "startup_s": ready - t0,
            "steady_s": end - ready, "images_per_s": n / (end - ready)}


def on_ray(sweep, workers: int) -> dict:
    import ray

    from braindive.batch.runner import WorkerPool, run_sweep

    t0 = time.perf_counter()
    pool = WorkerPool("demo", workers, cpus_per_worker=sweep.cpus_per_worker)
    ray.get([a.warm_up.remote() for a in pool.actors])
    ready = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            report = run_sweep(sweep, catalog_dir=tmp, pool=pool, log=lambda m: None)
        end = time.perf_counter()
    finally:
        pool.close()
    return {"workers": f"Ray, {workers}", "cpus_each": sweep.cpus_per_worker, "images": report.added,
            "startup_s": ready - t0, "steady_s": end - ready, "images_per_s": report.added / (end - ready)}


def machine() -> dict:
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()}


def markdown(report: dict) -> str:
    m, base = report["machine"], report["rows"][0]["images_per_s"]  # the first row is the baseline
    lines = [
        SECTION, "",
        f"CPU only ({m['cpu']}, {m['cores']} cores shared with other jobs; load average {report['load_start']} at "
        f"start, {report['load_end']} at end). Command: `{report['command']}`. Date: {report['date']}. Demo model, "
        f"FFA, 128 px, {report['steps']} DPM-Solver steps, exact mode, SAG 0.75, {report['seeds']} seeds in units of "
        f"{report['batch']} (one pipeline call per unit), no unguided baseline pass. Ratios are from this one run.",
        "",
        "| execution | CPUs per worker | images | start-up (s) | steady time (s) | images / s | vs single process |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(f"| {r['workers']} | {r['cpus_each']} | {r['images']} | {r['startup_s']:.1f} | {r['steady_s']:.1f} | "
                     f"{r['images_per_s']:.3g} | {r['images_per_s'] / base:.2f}x |")
    if report["load_start"] > m["cores"]:
        lines += ["", f"The machine was oversubscribed (load {report['load_start']} on {m['cores']} cores): torch's "
                  "threads of one process then wait on each other, so one-thread workers can beat one multi-thread "
                  "process by far more than the core count; compare rows with the same CPUs per worker."]
    lines += ["", "Start-up is Ray's and each worker's model loading, paid once per run (the workers load in "
              "parallel). On a GPU machine expect one worker per GPU, each at the single-GPU rate of "
              "`python -m benchmarks.guidance --config sd21 --device cuda` for its batch size; not measured here "
              "(no GPU was lent to this work).", ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.batch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=32)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--results-md", default=str(HERE / "RESULTS.md"), help="RESULTS.md to update ('' = none)")
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    if args.seeds < cores * args.batch:
        parser.error(f"--seeds must be at least cores x --batch ({cores} x {args.batch}) so that every worker gets a unit.")

    import braindive as bd
    from braindive.batch.runner import connect

    bd.set_cache_dir(HERE.parent / ".cache" / "braindive")
    report = {"command": "python -m benchmarks.batch " + " ".join(argv if argv is not None else sys.argv[1:]),
              "date": dt.date.today().isoformat(), "machine": machine(), "seeds": args.seeds, "steps": args.steps,
              "batch": args.batch, "load_start": round(os.getloadavg()[0], 1), "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        report["rows"].append(single_process(_sweep(folder, args.seeds, args.steps, args.batch, cores), cores))
        if cores > 1:
            report["rows"].append(single_process(_sweep(folder, args.seeds, args.steps, args.batch, 1), 1))
        connect(num_cpus=cores)
        report["rows"].append(on_ray(_sweep(folder, args.seeds, args.steps, args.batch, cores), 1))
        if cores > 1:
            report["rows"].append(on_ray(_sweep(folder, args.seeds, args.steps, args.batch, 1), cores))
    import ray

    ray.shutdown()
    report["load_end"] = round(os.getloadavg()[0], 1)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "batch.json").write_text(json.dumps(report, indent=2))
    section = markdown(report)
    print(section)
    if args.results_md:
        write_section(Path(args.results_md), SECTION, section)
    return report


if __name__ == "__main__":
    main()
