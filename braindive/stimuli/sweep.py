"""A sweep's ``[stimuli]`` table: the run ends in a ready stimulus package.

```toml
[stimuli]
out = "outputs/packages/demo-run"   # default: <catalog>/packages/<run id>
size = 128                          # square side in pixels (default: as generated)
format = "png"                      # png | jpg
equalise = ["luminance"]            # steps in order: luminance, histogram, spectrum
space = "linear"                    # channel equalised: linear (luminance Y), lstar (L*), grey (pixel values)
design = "event"                    # event | block; timing: runs, stim_duration, isi, jitter, block_size, rest, lead_in
kept_only = false                   # only the images re-ranking keeps ([rerank])
score = true                        # the sweep's (first) encoder scores every image: ROI predictions, share kept
```

Each job is one condition (the job's target label, e.g. ``max FFA``; with several settings, the job's label).
A package folder that exists already is left as it is (a re-run of a finished sweep writes nothing new).
"""
from __future__ import annotations

import math
from pathlib import Path

__all__ = ["STIMULI_KEYS", "read_stimuli_table", "package_run"]

_DESIGN_KEYS = {"design": str, "runs": int, "stim_duration": float, "isi": float, "jitter": float, "block_size": int,
                "rest": float, "lead_in": float, "seed": int}
_PACKAGE_KEYS = {"size": int, "format": str, "equalise": list, "luminance_mean": float, "luminance_std": float,
                 "space": str, "n_permutations": int}
STIMULI_KEYS = {"enabled", "out", "kept_only", "score", *_DESIGN_KEYS, *_PACKAGE_KEYS}


def read_stimuli_table(table, fail) -> dict | None:
    """The checked ``[stimuli]`` table (None when absent or ``enabled = false``); ``fail(message, key)`` reports an
    error at the key's line."""
    if table is None:
        return None
    if not isinstance(table, dict):
        fail("`stimuli` must be a [stimuli] table.", None)
    for key in table:
        if key not in STIMULI_KEYS:
            fail(f"unknown key {key!r} in [stimuli]; allowed: {sorted(STIMULI_KEYS)}.", key)
    for key in ("enabled", "kept_only", "score"):
        if key in table and not isinstance(table[key], bool):
            fail(f"`stimuli.{key}` must be true or false, got {table[key]!r}.", key)
    if not table.get("enabled", True):
        return None
    for key, kind in {**_DESIGN_KEYS, **_PACKAGE_KEYS, "out": str}.items():
        value = table.get(key)
        ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
                               isinstance(value, kind) and not isinstance(value, bool))
        if not ok:
            fail(f"`stimuli.{key}` must be {_KIND[kind]}, got {value!r}.", key)
    try:
        settings(table)
    except ValueError as exc:
        bad = next((k for k in table if f"`{k}`" in str(exc)), None)
        fail(f"[stimuli] {exc}", bad)
    return dict(table)


_KIND = {str: "a string", int: "an integer", float: "a number", list: "a list"}


def settings(table: dict):
    """``PackageSettings`` of a checked table (``ValueError`` naming the field for values out of range)."""
    from .design import Design
    from .package import PackageSettings

    design = Design(**{k: table[k] for k in _DESIGN_KEYS if k in table})
    return PackageSettings(**{k: table[k] for k in _PACKAGE_KEYS if k in table}, design=design)


def package_run(sweep, catalog, log=print):
    """Build the run's package from its images in ``catalog`` (``braindive.batch`` calls this at the end of a run);
    returns the package folder, or None with a logged reason when it cannot be built."""
    from ..batch.summary import job_results
    from .package import build_package
    from .scoring import load_scorer
    from .sources import from_catalog

    table = sweep.stimuli
    out = Path(table.get("out") or catalog.root / "packages" / sweep.run_id)
    if out.exists():
        log(f"stimulus package {out} exists already; left as it is.")
        return out
    groups = job_results(sweep, catalog)
    several = len({job.settings for job in sweep.jobs}) > 1
    stimuli, skipped = [], []
    for job in sweep.jobs:
        rows = groups.get(job.label, [])
        if table.get("kept_only") and sweep.rerank_keep:
            rows = rows[:max(1, math.ceil(round(sweep.rerank_keep * len(rows), 9)))]  # as braindive.rerank.n_kept
        found, missing = from_catalog(catalog, [r["id"] for r in rows])
        for s in found:
            s.condition = job.label if several else s.condition
        stimuli += found
        skipped += missing
    if not stimuli:
        log("stimulus package skipped: the run has no images in the catalog.")
        return None
    try:
        encoder = sweep.encoders[0]
        scorer = load_scorer(encoder.path, encoder.subject) if table.get("score", True) else None
        package = build_package(stimuli, out, settings(table), scorer, catalog, skipped, log=log)
    except (ValueError, OSError, RuntimeError) as exc:
        log(f"stimulus package failed: {exc}")
        return None
    return package.path
