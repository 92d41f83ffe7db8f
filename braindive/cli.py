"""Command line: ``python -m braindive generate --preset demo --roi FFA --n 4 --out DIR``.

torch, diffusers and the models are imported inside the commands, so ``--help`` answers at once.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .batch import cli as batch_cli
from .presets import PRESETS, SD21_MODEL_ID
from .stimuli import cli as stimuli_cli

__all__ = ["main", "build_target", "check_limits"]

RANKING_CSV = "ranking.csv"  # every candidate's score and rank, in the run's folder of the catalog
# flags checked against braindive.presets.LIMITS (read as text, so nothing is rounded or defaulted by argparse)
_LIMITED = {"steps": "steps", "scale": "scale", "sag": "sag", "cfg": "cfg", "height": "height", "width": "width",
            "seed": "seed", "n": "n_images", "keep": "keep", "weight": "weight", "prompt": "prompt",
            "strength": "strength"}
_SUBREGION_LIMITED = {"steps": "steps", "scale": "scale", "sag": "sag", "cfg": "cfg", "height": "height",
                      "width": "width", "prompt": "prompt", "seed": "seed", "gen_seed": "seed", "generate": "n_images"}


def build_target(args):
    """The ``Target`` of --roi/--voxels, --minimize, --contrast/--weight."""
    from .targets import Target

    kind = "contrast" if args.contrast else "minimize" if args.minimize else "maximize"
    if args.voxels:
        return Target.voxel_set(np.load(args.voxels, allow_pickle=False), name=Path(args.voxels).stem, kind=kind,
                                region_b=args.contrast or "", weight=args.weight)
    if args.contrast:
        return Target.contrast(args.roi, args.contrast, args.weight)
    return Target(kind, args.roi)


def check_limits(args, flags: dict = _LIMITED) -> None:
    """Every limited flag through ``presets.LIMITS`` (``LimitError`` names the field's label and range)."""
    from .presets import LIMITS, LimitError, check

    for flag, field in flags.items():
        value = getattr(args, flag)
        if value is not None:
            setattr(args, flag, check(field, value))
    if flags is not _LIMITED:
        return
    if args.strength is not None and not args.init_image:
        raise LimitError("--strength needs --init-image (the image the generation starts from).")
    if args.nsd_dataset and not args.init_image:
        raise LimitError("--nsd-dataset needs --init-image nsd:<id> (the NSD image the generation starts from).")
    last = args.seed + args.n - 1
    if last > LIMITS["seed"].hi:
        raise LimitError(f"the last seed (`Seed` + `Generate N images` − 1) must be at most {LIMITS['seed'].hi}, got {last}.")


def generate(args) -> list:
    """Generate ``--n`` seeds of one target into the catalog ``--out`` (the routine the app and batch use)."""
    from .catalog import Catalog
    from .evaluation.files import write_csv
    from .generate import StartImage, generate_seed, image_id, seed_record
    from .presets import get_preset
    from .rerank import rank_scores
    from tqdm.auto import tqdm

    preset = get_preset(args.preset)
    start = StartImage.resolve(args.init_image, nsd_dataset=args.nsd_dataset) if args.init_image else None
    settings = _settings(args, preset, init_image=start, strength=args.strength)
    target = build_target(args)
    loaded, identity = _load(args, preset)
    subject = loaded.subject
    catalog = Catalog(args.out)
    seeds = [args.seed + k for k in range(args.n)]
    ids = [image_id(loaded.model_name, identity, target, subject, settings, s) for s in seeds]
    run_id = "generate-" + ids[0][:8]
    results = []

    def advance(*_):
        bar.update()
        return {}

    with tqdm(total=args.n * settings.steps, desc=f"{target.label} x{args.n}", unit="step") as bar:
        for seed in seeds:
            results.append(generate_seed(loaded.pipe, target, seed, settings, subject=subject, baseline=args.baseline,
                                         baselines=catalog, model=loaded.model_name, encoder=identity,
                                         on_step=advance))
    # rank by the signed measure, best = the direction asked for (lowest first for a minimise)
    ranking = rank_scores([target.score(r.measure) for r in results], keep=args.keep)
    rows, written = [], []
    for i, (result, entry_id) in enumerate(zip(results, ids)):
        kept = ranking.kept[i]
        rows.append({"rank": ranking.ranks[i], "seed": result.seed, "measure": result.measure, "kept": int(kept),
                     "id": entry_id if kept else ""})
        if not kept:
            continue
        record = seed_record(result, target, subject, settings, model=loaded.model_name, encoder=loaded.encoder_name)
        record["rerank"] = {"rank": ranking.ranks[i], "n_candidates": len(results), "measure": result.measure,
                            "keep": args.keep, "kept": True, "ranking": f"runs/{run_id}/{RANKING_CSV}"}
        entry = catalog.add(result.image, record, run_id=run_id, activations=result.activations, entry_id=entry_id)
        written.append(entry.image_path)
    (catalog.root / "runs" / run_id).mkdir(parents=True, exist_ok=True)
    write_csv(catalog.root / "runs" / run_id / RANKING_CSV, sorted(rows, key=lambda r: r["rank"]))
    return written


def subregions(args) -> Path:
    """Split an ROI (``braindive.subregions``), write ``split.json``; with ``--generate N`` also each part's
    images (the same seeds for every part) into the catalog ``--out`` and ``cross_prediction.csv``."""
    import json

    from . import subregions as sr
    from .catalog import Catalog
    from .evaluation.files import write_atomic, write_csv
    from .presets import get_preset
    from .subregion_images import cross_prediction, store

    preset = get_preset(args.preset)
    loaded, identity = _load(args, preset)
    pipe, subject = loaded.pipe, loaded.subject
    split = sr.split_region(subject, args.roi, args.k, args.by, encoder=pipe.encoder, images=args.images,
                            axis=args.axis, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = sr.report(split, subject, encoder=pipe.encoder)
    write_atomic(out / "split.json", json.dumps({**split.to_dict(), "subject": subject.name, "report": rows}, indent=2))
    for row in rows:
        print(", ".join(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}" for k, v in row.items()))
    if not args.generate:
        return out / "split.json"
    settings = _settings(args, preset)
    catalog = Catalog(out)
    cp = cross_prediction(pipe, split, range(args.gen_seed, args.gen_seed + args.generate), settings, subject=subject,
                          kind=args.kind, baselines=catalog, model=loaded.model_name, encoder=identity)
    store(cp, catalog, subject, settings, model=loaded.model_name, encoder=loaded.encoder_name, identity=identity,
          run_id=f"subregions-{split.roi}-{split.k}-{split.by}")
    write_csv(out / "cross_prediction.csv", cp.table())
    for row in cp.table():
        print(f"{row['images for']}: own gain largest on {100 * row['own largest']:.0f}% of seeds, margin {row['margin']:+.4f}")
    return out / "cross_prediction.csv"


def evaluate(args) -> Path:
    """CLIP 5-way evaluation of generated results (+ natural-image baselines) -> CSV + PNG in ``--out``."""
    from .evaluation import ZeroShotClassifier, ZeroShotConfig, load_roi_table
    from .evaluation.natural import comparison_sets
    from .evaluation.report import evaluate as run, store, write_report
    from .evaluation.sets import generated_sets

    catalog = _catalog(args.catalog)
    table = load_roi_table(args.roi_table)
    sets = generated_sets(args.results, catalog)
    encoder = None
    if args.natural_folder:
        from .encoders import load_encoder

        if not args.encoder:
            raise ValueError("--natural-folder needs --encoder CKPT to rank the folder's images.")
        encoder = load_encoder(args.encoder)
    sets = comparison_sets(sets, args.nsd_dataset, args.natural_folder, encoder, args.top_n)
    config = (ZeroShotConfig.from_json(args.zeroshot_config) if args.zeroshot_config
              else ZeroShotConfig(model=args.clip_model, pretrained=args.clip_pretrained))
    evaluation = run(sets, ZeroShotClassifier(config), table, args.confidence)
    paths = write_report(evaluation, args.out)
    if catalog is not None:
        store(evaluation, catalog.root)
    for row in evaluation.table():
        print(", ".join(f"{k}: {v}" for k, v in row.items()))
    return paths["comparison"]


def _catalog(path):
    from .catalog import Catalog

    if not path:
        return None
    if not (Path(path) / "index.sqlite").is_file():
        raise FileNotFoundError(f"--catalog {path} is not a results catalog (no index.sqlite).")
    return Catalog(path)


def study(args) -> str:
    """``study export``: results -> study folder; ``study analyze``: response CSVs -> per-ROI accuracy."""
    from .evaluation import load_roi_table

    if args.study_command == "export":
        from .evaluation.sets import generated_sets
        from .evaluation.study import StudyConfig, export_study, study_warnings

        config = StudyConfig(title=args.title, category_trials_per_roi=args.category_trials,
                             pair_trials_per_roi=args.pair_trials, attention_checks=args.checks,
                             completion_url=args.completion_url, seed=args.seed)
        folder = export_study(generated_sets(args.results, _catalog(args.catalog)), args.out, config,
                              load_roi_table(args.roi_table))
        warnings = "".join(f"warning: {w}\n" for w in study_warnings(folder))
        return (f"{warnings}wrote study {folder} (open {folder / 'index.html'}; "
                f"put response CSVs in {folder / 'responses'})")
    from .evaluation.study_analysis import analyze, default_study_folder, write_analysis

    folder = Path(args.study) if args.study else default_study_folder(args.responses)
    analysis = analyze(folder, args.responses, args.max_failed_checks)
    paths = write_analysis(analysis, args.out or folder / "analysis")
    for row in analysis.per_roi:
        print(f"{row['roi']} {row['kind']}: {row['correct']}/{row['n']} = {100 * row['accuracy']:.1f}% "
              f"[{100 * row['ci_low']:.1f}, {100 * row['ci_high']:.1f}]")
    excluded = [p["participant"] for p in analysis.participants if p["excluded"]]
    return f"wrote {paths['per_roi']}; excluded {len(excluded)} participant(s) {excluded} for failed attention checks"


def _load(args, preset):
    """``preset.load`` on the GPU when there is one (the demo: always the CPU) with --encoder/--subject/--model, and
    the encoder's identity in ids and baseline keys (``generate.encoder_identity``)."""
    import torch

    from .demo import ASSET_ENCODER
    from .generate import encoder_identity

    loaded = preset.load("cuda" if torch.cuda.is_available() and args.preset != "demo" else "cpu",
                         encoder=args.encoder, subject=args.subject, model=args.model)
    if args.preset == "demo" and args.subject != loaded.subject.name:
        raise SystemExit(f"--preset demo uses subject {loaded.subject.name!r}, got --subject {args.subject!r}.")
    return loaded, encoder_identity(loaded.encoder_name, loaded.subject, ASSET_ENCODER if args.preset == "demo" else None)


def _settings(args, preset, **more):
    """``GenerationSettings`` of the generation flags (``_generation_flags``) on ``preset``'s defaults."""
    from .generate import GenerationSettings

    return GenerationSettings.from_preset(preset, mode=args.mode, scale=args.scale, steps=args.steps,
                                          scheduler=args.scheduler, sag=args.sag, prompt=args.prompt, cfg=args.cfg,
                                          height=args.height, width=args.width, **more)


def _generation_flags(parser) -> None:
    """How images are made (read as text: ``check_limits`` applies ``presets.LIMITS``; None = the preset's)."""
    parser.add_argument("--steps", help="denoising steps (default: the preset's)")
    parser.add_argument("--scale", help="brain guidance scale (default: the preset's; paper: ~130 for ViT-B/16)")
    parser.add_argument("--sag", help="self-attention guidance scale (default: the preset's, 0.75)")
    parser.add_argument("--cfg", help="classifier-free guidance scale (default 0 = off, paper)")
    parser.add_argument("--prompt", default="")
    parser.add_argument("--height", help="image height (default: the preset's)")
    parser.add_argument("--width", help="image width (default: the preset's)")
    parser.add_argument("--scheduler", help="dpm (default), ddim, pndm, lms or euler")
    parser.add_argument("--mode", default="exact", help="guidance mode: exact (default), reference or fast")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m braindive", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate brain-guided images into a results catalog (PNG + JSON + maps)")
    g.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    g.add_argument("--model", help=f"diffusers model id or folder (sd21 preset; default {SD21_MODEL_ID})")
    g.add_argument("--encoder", help="encoder checkpoint folder or Hub repo id (needed for sd21)")
    g.add_argument("--subject", default="S1", help="subject name or subject .npz file")
    target = g.add_mutually_exclusive_group()
    target.add_argument("--roi", default="FFA", help="ROI to drive, e.g. FFA, PPA, FFA.lh")
    target.add_argument("--voxels", help=".npy file of voxel indices to drive instead of an ROI")
    g.add_argument("--minimize", action="store_true", help="push the target's activity down")
    g.add_argument("--contrast", help="second ROI: maximise target minus weight x this ROI")
    g.add_argument("--weight", default=1.0, help="weight of the --contrast ROI")
    g.add_argument("--n", default=4, help="number of candidate images (seeds seed..seed+n-1)")
    g.add_argument("--keep", default=1.0,
                   help="keep the encoder's top fraction of the candidates (paper: 0.2); all are ranked in ranking.csv")
    _generation_flags(g)
    g.add_argument("--seed", default=0)
    g.add_argument("--init-image", help="start from this image (img2img): its VAE latents noised to --strength; records "
                   "name it as given (by file name when the path is absolute) with its pixel hash. nsd:<id> names the "
                   "image of that 0-based NSD 73k id (nsdId) in --nsd-dataset")
    g.add_argument("--nsd-dataset", help="prepared NSD dataset (.h5, training.prepare_nsd) that --init-image nsd:<id> "
                   "is read from")
    g.add_argument("--strength", help="with --init-image: noise level in [0, 1] (0 = the image's VAE round trip, "
                   "1 = from the noisiest step; default 1)")
    g.add_argument("--no-baseline", dest="baseline", action="store_false",
                   help="skip the unguided image of each seed (kept in the catalog and shared by every target)")
    g.add_argument("--out", required=True, help="catalog folder (created if needed; the app and batch use the same format)")

    r = sub.add_parser("subregions", help="split an ROI into parts by weights, responses or anatomy; "
                       "optionally generate for each part and cross-predict")
    r.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    r.add_argument("--model", help=f"diffusers model id or folder (sd21 preset; default {SD21_MODEL_ID})")
    r.add_argument("--encoder", help="encoder checkpoint folder or Hub repo id (needed for sd21)")
    r.add_argument("--subject", default="S1", help="subject name or subject .npz file")
    r.add_argument("--roi", required=True, help="ROI to split, e.g. OPA or OPA.lh")
    r.add_argument("--k", type=int, default=2, help="number of parts, 2-8")
    r.add_argument("--by", default="weights", help="weights (k-means on encoder weights), responses (k-means on "
                   "predicted responses to --images) or anatomy (equal-count bins along --axis)")
    r.add_argument("--axis", default="posterior-anterior", help="posterior-anterior, ventral-dorsal or medial-lateral")
    r.add_argument("--images", help="for --by responses: a folder of images, or a prepared NSD dataset (.h5; its "
                   "shared test images)")
    r.add_argument("--seed", default=0, help="k-means seed")
    r.add_argument("--generate", help="images per part (seeds --gen-seed..); omitted: split only")
    r.add_argument("--gen-seed", default=0)
    r.add_argument("--kind", default="maximize", help="per part: maximize, minimize, or contrast (part - rest of the ROI)")
    _generation_flags(r)
    r.add_argument("--out", required=True, help="folder for split.json and cross_prediction.csv; the parts' images "
                   "go to the catalog in it")

    e = sub.add_parser("evaluate", help="CLIP 5-way zero-shot evaluation of generated images vs top natural images")
    e.add_argument("results", nargs="+", help="folders of generated PNG + JSON, or catalog ids (with --catalog)")
    e.add_argument("--catalog", help="catalog root (e.g. outputs/catalog): resolves ids and stores the evaluation")
    e.add_argument("--out", required=True, help="folder for comparison.csv, per_image.csv, confusion.csv, evaluation.png")
    e.add_argument("--clip-model", default="ViT-B-16", help="OpenCLIP model name")
    e.add_argument("--clip-pretrained", default="laion2b_s34b_b88k", help="OpenCLIP pretrained tag (Hub, first use)")
    e.add_argument("--zeroshot-config", help="JSON of ZeroShotConfig fields (model, prompts, templates) instead")
    e.add_argument("--roi-table", help="JSON {roi: category} replacing the built-in ROI -> category table")
    e.add_argument("--nsd-dataset", help="prepared NSD dataset (.h5): add its top-N test images by measured response")
    e.add_argument("--natural-folder", help="image folder: add its top-N images by encoder prediction (needs --encoder)")
    e.add_argument("--encoder", help="encoder checkpoint folder or Hub id (for --natural-folder)")
    e.add_argument("--top-n", type=_positive, default=50, help="natural images per target (default 50)")
    e.add_argument("--confidence", type=float, default=0.95, help="confidence level of the Wilson intervals")

    st = sub.add_parser("study", help="human study: export a static study page, analyse its responses")
    ssub = st.add_subparsers(dest="study_command", required=True)
    x = ssub.add_parser("export", help="results -> self-contained study folder (images, trials, index.html)")
    x.add_argument("results", nargs="+", help="folders of generated PNG + JSON, or catalog ids (with --catalog)")
    x.add_argument("--catalog", help="catalog root to resolve ids")
    x.add_argument("--out", required=True, help="new study folder")
    x.add_argument("--title", default="Which images show what?")
    x.add_argument("--category-trials", type=int, default=10, help="category trials per ROI")
    x.add_argument("--pair-trials", type=int, default=10, help="two-alternative trials per ROI")
    x.add_argument("--checks", type=int, default=4, help="attention checks per participant")
    x.add_argument("--completion-url", default="", help="Prolific completion URL (URL parameter completion_url overrides)")
    x.add_argument("--roi-table", help="JSON {roi: category} replacing the built-in table")
    x.add_argument("--seed", type=int, default=0)
    a = ssub.add_parser("analyze", help="response CSVs -> per-ROI accuracy with intervals, exclusions, plot")
    a.add_argument("responses", nargs="+", help="participants' response CSVs (e.g. STUDY/responses/*.csv)")
    a.add_argument("--study", help="the study folder (default: the folder above the responses' folder)")
    a.add_argument("--out", help="output folder (default STUDY/analysis)")
    a.add_argument("--max-failed-checks", type=int, default=0, help="exclude participants failing more checks")
    batch_cli.add_parser(sub)
    stimuli_cli.add_parser(sub)
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "batch":
        return batch_cli.run(args)
    if args.command == "stimuli":
        return stimuli_cli.run(args)
    try:
        if args.command == "evaluate":
            print(f"wrote {evaluate(args)} and the plot beside it")
        elif args.command == "study":
            print(study(args))
        elif args.command == "subregions":
            check_limits(args, _SUBREGION_LIMITED)
            print(f"wrote {subregions(args)}")
        else:
            check_limits(args)
            written = generate(args)
            print(f"wrote {len(written)} images to {args.out}")
    except (ValueError, FileNotFoundError, FloatingPointError, RuntimeError) as exc:  # LimitError too
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
