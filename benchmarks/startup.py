"""Start-up and end-to-end speed of the library and the CLI on the offline demo.

Run ``python -m benchmarks.startup``. Measures, in one run on this machine:

* ``python -m braindive --help`` (lazy imports) against the same interpreter importing every name
  ``braindive`` exports, which is what ``--help`` paid before the imports were made lazy;
* one 25-step guided demo image in-process (demo bundle loaded once, warm-up excluded);
* the CLI making 4 demo images (``generate --preset demo --n 4 --steps 25``), start-up included.

Each command runs in a fresh process; wall time is the median over ``--repeats`` (the CLI generation
runs once), peak memory is the child's maximum resident set size. Writes
``benchmarks/results/startup.json`` and the "## Start-up and speed" section of ``benchmarks/RESULTS.md``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SECTION = "## Start-up and speed"
# Runs a command as a child and prints its wall time and peak RSS (KiB): the parent's own start-up is not timed.
_PROBE = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
          "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True); "
          "dt = time.perf_counter() - t; sys.stderr.write(r.stderr[-2000:] if r.returncode else ''); "
          "u = resource.getrusage(resource.RUSAGE_CHILDREN); print(dt, u.ru_maxrss, r.returncode, u.ru_utime + u.ru_stime)")
EAGER_IMPORT = "import braindive as bd; [getattr(bd, name) for name in bd.__all__]"
IMAGE = """
import json, statistics, sys, time
t = time.perf_counter()
import torch
import braindive as bd
from benchmarks.machine import write_section
bundle = bd.demo.load()
load = time.perf_counter() - t
objective = bd.Objective.maximize(bundle.subject.roi("FFA"))
from braindive.presets import PRESETS
kwargs = dict(num_inference_steps=25, guidance_mode="exact", **{k: v for k, v in PRESETS["demo"].defaults.items()
              if k not in ("num_inference_steps", "scheduler")})
times, cpu = [], []
for seed in range(int(sys.argv[1]) + 1):
    t, c = time.perf_counter(), time.process_time()
    bundle.pipe(objective=objective, generator=torch.Generator().manual_seed(seed), **kwargs)
    times.append(time.perf_counter() - t)
    cpu.append(time.process_time() - c)
print(json.dumps({"load_s": load, "image_s": statistics.median(times[1:]), "image_cpu_s": statistics.median(cpu[1:]),
                  "kwargs": kwargs, "torch_threads": torch.get_num_threads()}))
"""


def probe(command: list[str]) -> tuple[float, float, float]:
    """Wall seconds, peak RSS (MiB) and CPU seconds (user + system) of ``command`` in a fresh child process."""
    out = subprocess.run([sys.executable, "-c", _PROBE, *command], cwd=REPO, capture_output=True, text=True, check=True)
    seconds, rss_kib, rc, cpu = out.stdout.split()
    if rc != "0":
        raise RuntimeError(f"{' '.join(command)} failed (exit {rc}): {out.stderr}")
    return float(seconds), int(rss_kib) / 1024, float(cpu)


def median_probe(command: list[str], repeats: int) -> dict:
    runs = [probe(command) for _ in range(repeats)]
    return {"seconds": round(statistics.median(r[0] for r in runs), 3), "peak_rss_mib": round(max(r[1] for r in runs)),
            "cpu_seconds": round(statistics.median(r[2] for r in runs), 3),
            "repeats": repeats, "command": " ".join(["python", *command[1:]])}


def run(repeats: int, image_repeats: int) -> dict:
    py = sys.executable
    result = {"date": datetime.date.today().isoformat(), "machine": {
        "cpus": os.cpu_count(), "python": platform.python_version(), "processor": platform.processor() or platform.machine(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()]}}
    result["help_lazy"] = median_probe([py, "-m", "braindive", "--help"], repeats)
    result["import_eager"] = median_probe([py, "-c", EAGER_IMPORT], repeats)
    image = subprocess.run([py, "-c", IMAGE, str(image_repeats)], cwd=REPO, capture_output=True, text=True, check=True)
    result["demo_image"] = json.loads(image.stdout.strip().splitlines()[-1])
    with tempfile.TemporaryDirectory() as out:
        result["cli_4_images"] = median_probe([py, "-m", "braindive", "generate", "--preset", "demo", "--subject", "S1",
                                               "--roi", "FFA", "--n", "4", "--steps", "25", "--seed", "0", "--out", out], 1)
        result["cli_4_images"]["command"] = result["cli_4_images"]["command"].replace(out, "OUT")
    result["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    return result


def markdown(r: dict) -> str:
    m, help_, eager, image, cli = r["machine"], r["help_lazy"], r["import_eager"], r["demo_image"], r["cli_4_images"]
    return "\n".join([
        SECTION, "",
        f"Machine: {m['cpus']} shared CPU cores ({m['processor']}), no GPU, Python {m['python']}, torch "
        f"{image['torch_threads']} threads; load average {m['load_average_at_start']} at start, "
        f"{m['load_average_at_end']} at end (other engineers' jobs share the cores). Command: "
        f"`python -m benchmarks.startup`. Date: {r['date']}.", "",
        "| What | Command | Wall time | CPU time (user + system) | Peak memory |",
        "|---|---|---|---|---|",
        f"| CLI help (lazy imports) | `{help_['command']}` | {help_['seconds']:.2f} s (median of {help_['repeats']}) | "
        f"{help_['cpu_seconds']:.2f} s | {help_['peak_rss_mib']} MiB |",
        f"| Importing every `braindive` name (what `--help` cost before lazy imports) | `{eager['command']}` | "
        f"{eager['seconds']:.2f} s (median of {eager['repeats']}) | {eager['cpu_seconds']:.2f} s | "
        f"{eager['peak_rss_mib']} MiB |",
        f"| One guided 25-step demo image in-process (exact mode, {image['kwargs']['height']} px, after loading) | "
        f"`pipe(objective=Objective.maximize(FFA), num_inference_steps=25)` | {image['image_s']:.2f} s "
        f"(median of {r['image_repeats']}; loading the demo {image['load_s']:.1f} s) | {image['image_cpu_s']:.2f} s | |",
        f"| CLI, 4 demo images, start-up included | `{cli['command']}` | {cli['seconds']:.1f} s | "
        f"{cli['cpu_seconds']:.1f} s | {cli['peak_rss_mib']} MiB |",
        "",
        "Wall times on this shared machine grow with the other jobs' load (in the header). CPU time grows with it "
        "too (torch's threads spin while they wait for a core), so neither is the idle-machine speed when the load "
        "is high; compare with the demo rows of the guided-generation section, measured at low load.", "",
        f"`--help` is {eager['seconds'] / help_['seconds']:.0f}x faster than the eager import and uses "
        f"{eager['peak_rss_mib'] / max(help_['peak_rss_mib'], 1):.0f}x less memory. The app makes two images per "
        "result (the guided one and the unguided one of the same seed), so a result in Explore takes about twice "
        "the in-process time plus queueing; see the load benchmark for the app under load.", "",
    ])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="runs of each start-up command (median)")
    parser.add_argument("--image-repeats", type=int, default=3, help="timed in-process images after one warm-up")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    result = {**run(args.repeats, args.image_repeats), "image_repeats": args.image_repeats}
    section = markdown(result)
    if not args.no_write:
        (HERE / "results").mkdir(exist_ok=True)
        (HERE / "results" / "startup.json").write_text(json.dumps(result, indent=2))
        write_section(HERE / "RESULTS.md", SECTION, section)
    print(section)
    return result


if __name__ == "__main__":
    main()
