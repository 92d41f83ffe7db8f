"""Guided generation: every guidance mode side by side, on the same seeds, in one run.

    python -m benchmarks.guidance --config tiny|demo|medium|sd21 [--seeds N] [--batch B] [--steps S] [--repeats R]

For each mode it times complete generations (seconds per image, images per second), records the peak
memory (process RSS on CPU, ``torch.cuda.max_memory_allocated`` on GPU), counts the work (GFLOP per
image: torch's matmul/convolution/attention formulas, backward included, on one warm-up image) and
scores the images: mean target activation per mode and for an unguided baseline, and each mode's
share of the reference's gain over that baseline. The reference runs one image per call, as
published; the other modes run ``--batch`` seeds per call. Modes are interleaved chunk by chunk, so
a busy machine slows them alike; ``--repeats R`` times R such passes and reports medians, the
speed-up as the median of the per-pass ratios to the reference. Each fast-mode approximation is also
timed on its own; ``fast`` is the pipeline's default recipe, which on the demo includes its distilled
tiny decoder (``braindive/assets/demo-taesd``), also combined with the other switches. ``--roi`` picks the
demo's target region (FFA by default; other regions write ``guidance_demo_<ROI>.json`` and their own part of
RESULTS.md).

Configs: ``tiny`` (the demo bundle's architecture, random weights, < 1 minute on CPU), ``demo``
(the demo's *trained* toy-scene model and its encoder, FFA of S1, its default scale: the one config
whose efficacy figures come from trained models, a few minutes on CPU), ``medium`` (a scaled-down SD:
UNet (64, 128, 256) with cross-attention, VAE (32, 64, 128, 128), 256 px, a small ViT encoder) and
``sd21`` (SD 2.1-base's UNet/VAE/text encoder and OpenCLIP ViT-B/16, random weights unless ``--model``
names a local SD folder; meaningful on a GPU, a ``--steps 2 --seeds 1`` smoke test on CPU).

Writes ``results/guidance_<config>.json`` and ``.md`` and the config's part of the "## Guided
generation" section of ``benchmarks/RESULTS.md``. The ``demo`` config's files go to
``braindive/assets/measured/`` instead: the library reads them (``braindive.tiny_decoder.fast_description``),
so they are package data.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import braindive as bd
from braindive.pipeline import Acceleration, FastGuidance
from braindive.tiny_decoder import RESULTS as DEMO_RESULTS, decoder_name, describe_recipe, load_tiny_decoder
from benchmarks.counters import FlopCount, PeakMemory
from benchmarks.guidance_setups import CONFIGS, Config, build, target, tiny_decoder
from benchmarks.machine import cpu_name

HERE = Path(__file__).resolve().parent
SECTION = "## Guided generation"
OFF = FastGuidance(skip_unet_backprop=False, guide_every=1, decode_scale=1.0, dense_start=0.0)
# One approximation at a time (`fast: <flags>` rows); the schedule row is FastGuidance()'s gradient schedule alone
SINGLE_FLAGS = ({"skip_unet_backprop": True}, {"guide_every": 2}, {"dense_start": 0.2, "guide_every": 4},
                {"decode_scale": 0.5})

# ---------------------------------------------------------------------------------------- modes


def modes(config: Config, batch: int, pipe, reference_pipe, with_tiny_decoder: bool) -> dict[str, dict]:
    """Mode name -> pipeline, call arguments, batch size, note.

    ``fast: <flags>`` rows switch on one approximation of ``SINGLE_FLAGS`` at a time.
    ``fast`` is the pipeline's default recipe (``default_fast_options``: with its tiny decoder when it has one,
    then ``fast without tiny_decoder`` is timed too). A trained tiny decoder (the demo's distilled one) is
    also combined with the other switches (``fast + tiny_decoder: ...`` rows).
    The reference and the unguided baseline run on ``reference_pipe`` (plain modules, the pipeline's dtype).
    """
    def row(call, batch_size=batch, on=pipe, note=""):
        return dict(pipe=on, call=call, batch=batch_size, note=note)

    default, recipe = FastGuidance(), pipe.default_fast_options()
    trained = recipe.tiny_decoder
    if trained is None and config.name == "demo" and (bd.demo.ASSET_TINY_DECODER / "config.json").is_file():
        trained = load_tiny_decoder(bd.demo.ASSET_TINY_DECODER, pipe.vae).to(pipe.device)  # rows, not the default
    table = {
        "unguided": row(dict(guidance_mode="reference", brain_guidance_scale=0.0), on=reference_pipe),
        "reference": row(dict(guidance_mode="reference"), 1, on=reference_pipe),
        "exact": row(dict(guidance_mode="exact")),
    }
    if batch > 1:
        table["exact (batch 1)"] = row(dict(guidance_mode="exact"), 1)
    table["fast"] = row(dict(guidance_mode="fast", fast_options=recipe), note="the pipeline's fast recipe: " + describe_recipe(
        {f.name: getattr(recipe, f.name) for f in dataclasses.fields(recipe)}))
    if recipe.tiny_decoder is not None:
        without = dataclasses.replace(recipe, tiny_decoder=None)
        table["fast without tiny_decoder"] = row(dict(guidance_mode="fast", fast_options=without))
    if dataclasses.replace(recipe, tiny_decoder=None) != default:
        table["FastGuidance() (the library's default recipe)"] = row(dict(guidance_mode="fast", fast_options=default))
    for flags in SINGLE_FLAGS:
        table["fast: " + _flags_name(flags)] = row(dict(guidance_mode="fast", fast_options=dataclasses.replace(OFF, **flags)))
    if trained is not None:
        table["fast: tiny_decoder"] = row(dict(guidance_mode="fast", fast_options=dataclasses.replace(OFF, tiny_decoder=trained)),
                                          note=f"distilled decoder {_decoder_label(trained)}")
        for flags in (dict(skip_unet_backprop=True), dict(guide_every=2), dict(decode_scale=0.5),
                      dict(skip_unet_backprop=True, guide_every=2), dict(skip_unet_backprop=True, decode_scale=0.5),
                      dict(skip_unet_backprop=True, guide_every=2, decode_scale=0.5),
                      dict(skip_unet_backprop=True, guide_every=4, dense_start=0.2),
                      dict(skip_unet_backprop=True, guide_every=4, dense_start=0.2, decode_scale=0.5)):
            options = dataclasses.replace(OFF, tiny_decoder=trained, **flags)
            if options == recipe and recipe.tiny_decoder is trained:
                continue  # that is the `fast` row
            table["fast + tiny_decoder: " + _flags_name(flags)] = row(dict(guidance_mode="fast", fast_options=options))
    elif with_tiny_decoder:
        options = dataclasses.replace(OFF, tiny_decoder=tiny_decoder(config, pipe.device))
        table["fast: tiny_decoder"] = row(dict(guidance_mode="fast", fast_options=options),
                                          note="random-weight AutoencoderTiny: speed only, its gain means nothing")
    return table


def _flags_name(flags: dict) -> str:
    return " + ".join(f"{k}={v}" for k, v in flags.items())


# ---------------------------------------------------------------------------------------- measuring


def generate(pipe, objective, config: Config, steps: int, seeds, call: dict) -> torch.Tensor:
    """One pipeline call on ``seeds`` (one image each); returns their objective values."""
    args = dict(objective=objective, height=config.size, width=config.size, num_inference_steps=steps,
                brain_guidance_scale=config.scale, sag_scale=0.75, output_type="pt")
    args.update(call)
    out = pipe(**args, generator=[torch.Generator().manual_seed(s) for s in seeds], num_images_per_prompt=len(seeds))
    return out.objective_values


def measure(objective, config: Config, steps: int, seeds: list[int], table: dict, device: str,
            warm_up: bool = True, compiled: bool = False, repeats: int = 1) -> dict:
    """A FLOP-counted warm-up image per mode (``warm_up``), then ``repeats`` timed passes over all seeds.

    Within a pass the modes run interleaved chunk by chunk, in an order rotated per chunk, so that a
    change in the machine's load slows them alike; each pass gives each mode one time (``pass_seconds``).
    """
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    stats = {name: dict(pass_seconds=[0.0] * repeats, values=[], peak_mb=0.0, gflop=None) for name in table}
    for name, mode in (table.items() if warm_up else []):
        counter = contextlib.nullcontext() if compiled else FlopCount()  # FLOP counting would break compilation
        with counter:
            generate(mode["pipe"], objective, config, steps, seeds[:1], mode["call"])
        stats[name]["gflop"] = None if compiled else counter.flops / 1e9
    chunk_size = max(mode["batch"] for mode in table.values())
    names = list(table)
    chunks = [seeds[start:start + chunk_size] for start in range(0, len(seeds), chunk_size)]
    for k, (repeat, chunk) in enumerate((r, c) for r in range(repeats) for c in chunks):
        for name in names[k % len(names):] + names[:k % len(names)]:  # rotate the order per chunk
            pipe, call, batch = table[name]["pipe"], table[name]["call"], table[name]["batch"]
            with PeakMemory(device) as memory:
                for sub in range(0, len(chunk), batch):
                    sync()
                    begin = time.perf_counter()
                    values = generate(pipe, objective, config, steps, chunk[sub:sub + batch], call)
                    sync()
                    stats[name]["pass_seconds"][repeat] += time.perf_counter() - begin
                    if repeat == 0:  # the same seeds give the same images in every pass
                        stats[name]["values"].extend(values.tolist())
            stats[name]["peak_mb"] = max(stats[name]["peak_mb"], memory.peak)
    return stats


def summarise(stats: dict, table: dict, n_seeds: int) -> dict:
    """Per-mode figures, with speed-up, work ratio and gain relative to the reference.

    Times are medians over the passes; the speed-up is the median of the per-pass ratios to the
    reference's time in the same pass, with their range.
    """
    base = np.mean(stats["unguided"]["values"])
    ref = stats["reference"]
    ref_gain = np.mean(ref["values"]) - base
    rows = {}
    for name, s in stats.items():
        values = np.asarray(s["values"])
        gain = float(values.mean() - base)
        seconds = float(np.median(s["pass_seconds"]))
        speedups = np.asarray(ref["pass_seconds"]) / np.asarray(s["pass_seconds"])
        rows[name] = {
            "batch": table[name]["batch"],
            "seconds_per_image": seconds / n_seeds,
            "images_per_second": n_seeds / seconds,
            "speedup_vs_reference": float(np.median(speedups)),
            "speedup_range": [float(speedups.min()), float(speedups.max())],
            "pass_seconds": s["pass_seconds"],
            "gflop_per_image": s["gflop"],
            "work_ratio_vs_reference": (ref["gflop"] / s["gflop"]) if s["gflop"] else None,
            "peak_memory_mb": s["peak_mb"],
            "objective_mean": float(values.mean()),
            "objective_std": float(values.std()),
            "objective_per_seed": values.tolist(),
            "gain_over_unguided": gain,
            "gain_fraction_of_reference": gain / ref_gain if name != "unguided" and ref_gain else None,
            "options": _describe(table[name]["call"]),
            "note": table[name].get("note", ""),
        }
    return rows


def _decoder_label(decoder) -> str:
    """A tiny decoder's name; a folder inside the project relative to it."""
    name = decoder_name(decoder)
    path = Path(name)
    return str(path.relative_to(HERE.parent)) if path.is_absolute() and path.is_relative_to(HERE.parent) else name


def _describe(call: dict) -> dict:
    """JSON-ready call arguments (a tiny decoder by its class name)."""
    out = dict(call)
    options = out.pop("fast_options", None)
    if options is not None:
        out["fast_options"] = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
        if options.tiny_decoder is not None:
            out["fast_options"]["tiny_decoder"] = _decoder_label(options.tiny_decoder)
    return out


# ---------------------------------------------------------------------------------------- reporting


def machine(device: str) -> dict:
    gpu = torch.cuda.get_device_name() if device.startswith("cuda") else None
    return {"cpu": cpu_name(), "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "device": device, "python": platform.python_version(), "torch": torch.__version__,
            "load_average_start": None, "load_average_end": None}


def markdown(report: dict, name: str) -> str:
    m, r = report["machine"], report["modes"]
    where = f"GPU {m['gpu']}" if m["gpu"] else f"CPU only ({m['cpu']}, {m['cpu_cores']} cores, {m['torch_threads']} torch threads)"
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    lines = [
        f"### Config `{name}`",
        "",
        f"{where}; torch {m['torch']}. Model: {report['model']}. Command: `{report['command']}`. "
        f"Date: {report['date']}. "
        f"{report['size']} px, {report['steps']} DPM-Solver steps, SAG 0.75, brain scale {report['scale']}, "
        f"{len(report['seeds'])} seeds (same for every mode), objective: mean of {report['n_target']} of "
        f"{report['n_voxels']} voxels ({report['target']}). {_passes(report.get('repeats', 1))}"
        f"Load average {m['load_average_start']} at start, {m['load_average_end']} at end.",
        "",
        "| mode | batch | s / image | images / s | speed-up vs reference | GFLOP / image | work ratio | "
        "peak memory (MB) | objective (mean ± sd) | gain over unguided | share of reference gain |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in r.items():
        low, high = row["speedup_range"]
        spread = f" ({low:.1f}-{high:.1f})" if len(row["pass_seconds"]) > 1 else ""
        lines.append(
            f"| {name} | {row['batch']} | {row['seconds_per_image']:.3g} | {row['images_per_second']:.3g} | "
            f"{row['speedup_vs_reference']:.2f}x{spread} | {fmt(row['gflop_per_image'], '.4g')} | "
            f"{fmt(row['work_ratio_vs_reference'], '.2f')} | {row['peak_memory_mb']:.0f} | "
            f"{row['objective_mean']:.4f} ± {row['objective_std']:.4f} | {row['gain_over_unguided']:+.4f} | "
            f"{fmt(row['gain_fraction_of_reference'], '.0%')} |")
    notes = [f"- {name}: {row['note']}" for name, row in r.items() if row["note"]]
    return "\n".join(lines + ([""] + notes if notes else []) + [""])


def _passes(repeats: int) -> str:
    if repeats == 1:
        return ""
    return (f"Timed in {repeats} passes over all seeds: times are medians, a speed-up is the median of the per-pass "
            "ratios to the reference (range in brackets). ")


def write_section(path: Path, subsection: str, config: str) -> None:
    """Replace (or add) this config's part of the "## Guided generation" section; leave the rest alone."""
    text = path.read_text() if path.is_file() else "# Benchmark results\n"
    if SECTION + "\n" not in text:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n"
    start = text.index(SECTION + "\n")
    end = text.find("\n## ", start)
    end = len(text) if end < 0 else end + 1
    body, tail = text[start:end].rstrip("\n") + "\n", text[end:]
    heading = f"### Config `{config}`\n"
    if heading in body:
        first = body.index(heading)
        after = body.find("\n### ", first)
        body = body[:first] + subsection.rstrip("\n") + "\n" + ("" if after < 0 else body[after:])
    else:
        body += "\n" + subsection.rstrip("\n") + "\n"
    path.write_text(text[:start] + body + ("\n" + tail if tail else ""))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.guidance", description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    parser.add_argument("--seeds", type=int, help="number of seeds (0..N-1), the same for every mode")
    parser.add_argument("--batch", type=int, help="images per call for every mode but the reference")
    parser.add_argument("--steps", type=int, help="denoising steps")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", help="local SD folder with real weights (sd21 config)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--compile", action="store_true", help="torch.compile in exact and fast modes")
    parser.add_argument("--modes", help="comma-separated subset of the modes (unguided and reference are always run)")
    parser.add_argument("--no-warm-up", dest="warm_up", action="store_false",
                        help="skip the FLOP-counted warm-up image per mode (CPU smoke runs of sd21)")
    parser.add_argument("--no-tiny-decoder", dest="tiny_decoder", action="store_false")
    parser.add_argument("--repeats", type=int, default=1, help="timed passes over all seeds (medians are reported)")
    parser.add_argument("--roi", default="FFA", help="demo config: the S1 region to maximise (FFA, PPA, EBA, ...)")
    parser.add_argument("--out", help="folder for guidance_<config>.json/.md (default: benchmarks/results; the demo "
                        "config: braindive/assets/measured, which the library reads)")
    parser.add_argument("--results-md", default=str(HERE / "RESULTS.md"), help="RESULTS.md to update ('' = none)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    config = CONFIGS[args.config]
    seeds = list(range(args.seeds or config.seeds))
    steps, batch = args.steps or config.steps, min(args.batch or config.batch, len(seeds))
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine(args.device)
    info["load_average_start"] = round(os.getloadavg()[0], 1)
    started = time.perf_counter()
    pipe = build(config, args.device, args.model)
    pipe.set_acceleration(Acceleration(compile=args.compile))
    acceleration = pipe.acceleration.resolve(pipe.device)
    changes_modules = acceleration.channels_last or acceleration.compile
    reference_pipe = build(config, args.device, args.model) if changes_modules else pipe
    objective = target(config, args.roi)
    table = modes(config, batch, pipe, reference_pipe, args.tiny_decoder)
    if args.modes:
        keep = {"unguided", "reference", *args.modes.split(",")}
        table = {name: mode for name, mode in table.items() if name in keep}
    stats = measure(objective, config, steps, seeds, table, args.device, args.warm_up, args.compile, args.repeats)
    info["load_average_end"] = round(os.getloadavg()[0], 1)
    report = {
        "config": config.name, "command": "python -m benchmarks.guidance " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.date.today().isoformat(), "machine": info, "size": config.size, "steps": steps,
        "scale": config.scale, "batch": batch, "seeds": seeds, "repeats": args.repeats, "n_voxels": config.n_voxels,
        "n_target": len(objective.positive), "target": objective.label,
        "model": args.model or ("braindive/assets/demo-sd (trained on toy scenes)" if config.name == "demo"
                                else "random weights"), "compile": args.compile,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "modes": summarise(stats, table, len(seeds)),
    }
    out = Path(args.out or (DEMO_RESULTS.parent if config.name == "demo" else HERE / "results"))
    out.mkdir(parents=True, exist_ok=True)
    name = config.name if args.roi == "FFA" or config.name != "demo" else f"{config.name}_{args.roi}"
    (out / f"guidance_{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report, name)
    (out / f"guidance_{name}.md").write_text(text)
    if args.results_md:
        write_section(Path(args.results_md), text, name)
    print(text)
    return report


if __name__ == "__main__":
    main()
