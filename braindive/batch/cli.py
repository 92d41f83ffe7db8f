"""``python -m braindive batch SWEEP.toml``: the batch subcommand's arguments and entry point."""
from __future__ import annotations

import sys

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> None:
    b = subparsers.add_parser("batch", help="run a sweep file on Ray into the catalog (docs/batch.md)",
                              description="Generate every image of a sweep on Ray; re-running resumes.")
    b.add_argument("sweep", help="sweep file (TOML), e.g. examples/sweep_demo.toml")
    b.add_argument("--address", help="join this Ray cluster ('auto' = the one on this node); default: a local instance")
    b.add_argument("--catalog", help="catalog folder (default: the sweep's `catalog`)")
    b.add_argument("--workers", type=int, help="at most this many workers (default: as many as resources allow)")
    b.add_argument("--check", action="store_true", help="validate the sweep and print its plan, run nothing")


def run(args) -> int:
    from .sweep import SweepError, load_sweep

    try:
        sweep = load_sweep(args.sweep)
    except SweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(f"{args.sweep}: ok: {len(sweep.jobs)} jobs x {len(sweep.seeds)} seeds = {sweep.n_images} images, "
              f"run id {sweep.run_id}")
        return 0
    from .runner import run_sweep

    try:
        report = run_sweep(sweep, catalog_dir=args.catalog, address=args.address, workers=args.workers)
    except KeyboardInterrupt:  # before the workers ran (during start-up): nothing was written
        print("stopped by Ctrl-C; run the same command again to resume.", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if report.stopped:
        return 130 if report.stopped == "Ctrl-C" else 1
    if report.failed:
        print(f"error: {len(report.failed)} unit(s) failed; re-run to retry them.", file=sys.stderr)
        return 1
    print(f"run {report.run_id}: {report.added} new, {report.existing + report.added}/{report.total} images in the "
          f"catalog; summary {report.summary}" + (f"; stimulus package {report.package}" if report.package else ""))
    return 0
