"""``python -m braindive stimuli ITEMS --out PKG``: a stimulus package (statistics, equalisation, PsychoPy files)."""
from __future__ import annotations

import sys

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "stimuli", help="image statistics, equalisation and an experiment package (PsychoPy) from results",
        description="Build a stimulus package: images at one size, optionally equalised (SHINE-style), conditions.csv "
                    "with every ROI's predicted response and the image statistics, counterbalanced runs, a PsychoPy "
                    "script, a statistics report with permutation tests; written atomically, recorded in the catalog.")
    p.add_argument("items", nargs="+", help="catalog ids (with --catalog), folders of generated PNG + JSON, or "
                                            "NAME=FOLDER for a folder of other images (e.g. natural=images/)")
    p.add_argument("--out", required=True, help="new package folder")
    p.add_argument("--catalog", help="catalog root: resolves ids and records the package")
    p.add_argument("--unguided", action="store_true", help="add each catalog entry's unguided image (same seed) as "
                                                           "condition 'unguided'")
    p.add_argument("--encoder", help="score with this encoder ('demo', a checkpoint folder or Hub id): ROI "
                                     "predictions, embedding diversity, the target effect kept after equalisation")
    p.add_argument("--subject", help="the encoder's subject (name or .npz; default: the images' subject)")
    p.add_argument("--size", type=int, help="square side in pixels (centre crop, then resize)")
    p.add_argument("--format", default="png", choices=["png", "jpg"])
    p.add_argument("--equalise", default="", help="comma-separated steps in order: luminance, histogram, spectrum")
    p.add_argument("--space", default="linear", choices=["linear", "lstar", "grey"],
                   help="channel to equalise: linear luminance Y (default), CIELAB L*/100, or grey level (pixel values)")
    p.add_argument("--luminance-mean", type=float, help="luminance-matching target mean, 0-1 (default: average)")
    p.add_argument("--luminance-std", type=float, help="luminance-matching target SD, 0-1 (default: average)")
    p.add_argument("--design", default="event", choices=["event", "block"])
    p.add_argument("--runs", type=int, default=0, help="runs (default: one per row of the balanced Latin square)")
    p.add_argument("--duration", type=float, default=1.0, help="seconds each image is shown")
    p.add_argument("--isi", type=float, default=3.0, help="fixation seconds after each image (within a block)")
    p.add_argument("--jitter", type=float, default=0.0, help="event design: ISI uniform in isi ± jitter")
    p.add_argument("--block-size", type=int, default=4, help="block design: images per block")
    p.add_argument("--rest", type=float, default=12.0, help="block design: fixation seconds after each block")
    p.add_argument("--lead-in", type=float, default=10.0, help="fixation seconds before and after a run")
    p.add_argument("--seed", type=int, default=0, help="seed of the orders and of the permutation tests")
    p.add_argument("--permutations", type=int, default=10000, help="permutations per test")


def run(args) -> int:
    from ..catalog import Catalog
    from .design import Design
    from .package import PackageSettings, build_package
    from .scoring import load_scorer
    from .sources import load_stimuli

    try:
        catalog = Catalog(args.catalog) if args.catalog else None
        stimuli, skipped = load_stimuli(args.items, catalog, args.unguided)
        for item, reason in skipped:
            print(f"skipped {item}: {reason}", file=sys.stderr)
        design = Design(args.design, args.runs, args.duration, args.isi, args.jitter, args.block_size, args.rest,
                        args.lead_in, args.seed)
        settings = PackageSettings(size=args.size, format=args.format,
                                   equalise=tuple(s.strip() for s in args.equalise.split(",") if s.strip()),
                                   luminance_mean=args.luminance_mean, luminance_std=args.luminance_std, space=args.space,
                                   design=design,
                                   n_permutations=args.permutations)
        subject = args.subject or next((s.subject for s in stimuli if s.subject), None)
        scorer = load_scorer(args.encoder, subject) if args.encoder else None
        package = build_package(stimuli, args.out, settings, scorer, catalog, skipped,
                                log=lambda m: print(m, file=sys.stderr))
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for row in package.report["effects"]:
        kept = f", {row['share_kept']:.0%} kept after equalisation" if "share_kept" in row else ""
        print(f"{row['set']}: target effect {row['effect']:.3f} ({row['measure']}){kept}")
    if not package.record["counterbalanced"]:
        print("note: the conditions have different numbers of images, so the runs are not counterbalanced "
              "(see the package README).", file=sys.stderr)
    print(f"wrote package {package.path} ({package.record['n_images']} images, hash {package.hash})")
    return 0
