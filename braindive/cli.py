"""Command line: ``python -m braindive generate --preset demo --roi FFA --n 4 --out DIR``.

torch, diffusers and the models are imported inside the commands, so ``--help`` answers at once.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np

from .batch import cli as batch_cli
from .records import generation_record

__all__ = ["main", "PRESETS", "SD21_MODEL_ID"]

SD21_MODEL_ID = "stabilityai/stable-diffusion-2-1-base"
RANKING_CSV = "ranking.csv"  # every candidate's score and rank, beside the kept images


def _load_demo(args):
    from . import demo

    bundle = demo.load()
    return bundle.pipe, bundle.subject, "demo:tiny-sd", "demo:" + bundle.encoder.config.training.get("kind", "encoder")


def _load_sd21(args):
    import torch

    from .encoders import load_encoder
    from .pipeline import BrainDiVEPipeline
    from .subjects import load_subject

    if not args.encoder:
        raise SystemExit("--preset sd21 needs --encoder PATH_OR_HUB_ID (an encoder checkpoint from training.train_encoder).")
    subject = load_subject(args.subject)
    encoder = load_encoder(args.encoder, subject=subject)
    cuda = torch.cuda.is_available()
    pipe = BrainDiVEPipeline.from_pretrained(args.model or SD21_MODEL_ID, encoder=encoder,
                                             torch_dtype=torch.float16 if cuda else torch.float32)
    pipe.to("cuda" if cuda else "cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe, subject, args.model or SD21_MODEL_ID, str(args.encoder)


PRESETS = {"demo": _load_demo, "sd21": _load_sd21}


def build_objective(subject, args):
    """The ``Objective`` and a short target name from --roi/--voxels, --minimize, --contrast/--weight."""
    from .objectives import Objective

    if args.voxels:
        positive, target = np.load(args.voxels, allow_pickle=False), Path(args.voxels).stem
    else:
        positive, target = subject.roi(args.roi), args.roi
    if args.contrast:
        return Objective.contrast(positive, subject.roi(args.contrast), args.weight, label=f"{target}-vs-{args.contrast}"), f"{target}-vs-{args.contrast}"
    if args.minimize:
        return Objective.minimize(positive, label=target), target
    return Objective.maximize(positive, label=target), target


def generate(args) -> list[Path]:
    import torch

    from .evaluation.files import write_atomic, write_csv
    from .rerank import rank_scores
    from tqdm.auto import tqdm

    pipe, subject, model_name, encoder_name = PRESETS[args.preset](args)
    if args.preset == "demo" and args.subject != subject.name:
        raise SystemExit(f"--preset demo uses subject {subject.name!r}, got --subject {args.subject!r}.")
    pipe.set_scheduler(args.scheduler)
    objective, target = build_objective(subject, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    params = dict(num_inference_steps=args.steps, brain_guidance_scale=args.scale, sag_scale=args.sag,
                  guidance_scale=args.cfg, prompt=args.prompt, height=args.height, width=args.width,
                  guidance_mode=args.mode)
    image, reference = _init_image(args)
    candidates = []

    def advance(*_):
        bar.update()
        return {}

    with tqdm(total=args.n * args.steps, desc=f"{target} x{args.n}", unit="step") as bar:
        for k in range(args.n):
            seed = args.seed + k
            result = pipe(objective=objective, generator=torch.Generator().manual_seed(seed),
                          callback_on_step_end=advance, **params, **image)
            candidates.append((seed, result.images[0], float(result.objective_values[0])))
    # The pipeline's objective values come from the encoder call on its final decoded pixels: rank those.
    ranking = rank_scores([score for _, _, score in candidates], keep=args.keep)
    rows, written = [], []
    for i, (seed, image, score) in enumerate(candidates):
        stem = out / f"{subject.name}_{target}_seed{seed:06d}"
        kept = ranking.kept[i]
        rows.append({"rank": ranking.ranks[i], "seed": seed, "score": score, "kept": int(kept),
                     "file": stem.with_suffix(".png").name if kept else ""})
        if not kept:
            continue
        record = generation_record(
            seed=seed, subject=subject.name, target=target, objective=objective.describe(),
            parameters={**params, "scheduler": args.scheduler, **reference}, objective_value=score,
            model=model_name, encoder=encoder_name,
        )
        record["rerank"] = {**ranking.record(i), "keep": args.keep, "ranking": RANKING_CSV}
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        write_atomic(stem.with_suffix(".png"), buffer.getvalue())
        write_atomic(stem.with_suffix(".json"), json.dumps(record, indent=2))
        written.append(stem.with_suffix(".png"))
    write_csv(out / RANKING_CSV, sorted(rows, key=lambda r: r["rank"]))
    return written


def _init_image(args) -> tuple[dict, dict]:
    """``--init-image``/``--strength``: the pipeline's ``image``/``strength`` and what the record keeps of them."""
    if args.init_image is None:
        if args.strength is not None:
            raise ValueError("--strength needs --init-image (the image the generation starts from).")
        return {}, {}
    from .evaluation.sets import open_rgb
    from .variation import check_strengths, image_hash

    strength = check_strengths(1.0 if args.strength is None else args.strength, "--strength")[0]
    image = open_rgb(Path(args.init_image))
    return ({"image": image, "strength": strength},
            {"strength": strength, "reference": {"file": Path(args.init_image).name, "sha256": image_hash(image)}})


def subregions(args) -> Path:
    """Split an ROI (``braindive.subregions``), write ``split.json``; with ``--generate N`` also each part's
    images (the same seeds for every part) and ``cross_prediction.csv``."""
    import torch

    from . import subregions as sr
    from .evaluation.files import write_atomic, write_csv

    pipe, subject, model_name, encoder_name = PRESETS[args.preset](args)
    split = sr.split_region(subject, args.roi, args.k, args.by, encoder=pipe.encoder, images=args.images,
                            axis=args.axis, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    features = split.features if split.features is not None else sr.weight_profiles(pipe.encoder, split.voxels)
    rows = sr.report(split, subject, features)
    write_atomic(out / "split.json", json.dumps({**split.to_dict(), "subject": subject.name, "report": rows}, indent=2))
    for row in rows:
        print(", ".join(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}" for k, v in row.items()))
    if not args.generate:
        return out / "split.json"
    pipe.set_scheduler(args.scheduler)
    params = dict(num_inference_steps=args.steps, brain_guidance_scale=args.scale, sag_scale=args.sag,
                  height=args.height, width=args.width, guidance_mode=args.mode)
    seeds = range(args.gen_seed, args.gen_seed + args.generate)
    cp = sr.cross_prediction(pipe, split.parts, seeds, kind=args.kind, **params)
    for i, part in enumerate(split.parts):
        rest = np.concatenate([p.voxels for j, p in enumerate(split.parts) if j != i])
        objective = sr.part_objective(part, args.kind, rest)
        for seed, image, gain, value in zip(seeds, cp.images[i], cp.gains[i, i], cp.objective_values[i]):
            stem = out / f"{subject.name}_{part.name.replace('/', 'of')}_seed{seed:06d}"
            record = generation_record(seed=seed, subject=subject.name, target=part.name, objective=objective.describe(),
                                       parameters={**params, "scheduler": args.scheduler}, objective_value=float(value),
                                       model=model_name, encoder=encoder_name)
            record["subregion"] = {"roi": split.roi, "k": split.k, "by": split.by, "axis": split.axis,
                                   "seed": split.seed, "part": part.name, "own_gain": float(gain)}
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            write_atomic(stem.with_suffix(".png"), buffer.getvalue())
            write_atomic(stem.with_suffix(".json"), json.dumps(record, indent=2))
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
        from .evaluation.study import StudyConfig, export_study

        config = StudyConfig(title=args.title, category_trials_per_roi=args.category_trials,
                             pair_trials_per_roi=args.pair_trials, attention_checks=args.checks,
                             completion_url=args.completion_url, seed=args.seed)
        folder = export_study(generated_sets(args.results, _catalog(args.catalog)), args.out, config,
                              load_roi_table(args.roi_table))
        return f"wrote study {folder} (open {folder / 'index.html'}; put response CSVs in {folder / 'responses'})"
    from .evaluation.study_analysis import analyze, default_study_folder, write_analysis

    folder = Path(args.study) if args.study else default_study_folder(args.responses)
    analysis = analyze(folder, args.responses, args.max_failed_checks)
    paths = write_analysis(analysis, args.out or folder / "analysis")
    for row in analysis.per_roi:
        print(f"{row['roi']} {row['kind']}: {row['correct']}/{row['n']} = {100 * row['accuracy']:.1f}% "
              f"[{100 * row['ci_low']:.1f}, {100 * row['ci_high']:.1f}]")
    excluded = [p["participant"] for p in analysis.participants if p["excluded"]]
    return f"wrote {paths['per_roi']}; excluded {len(excluded)} participant(s) {excluded} for failed attention checks"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m braindive", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate brain-guided images and write PNG + JSON per image")
    g.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    g.add_argument("--model", help=f"diffusers model id or folder (sd21 preset; default {SD21_MODEL_ID})")
    g.add_argument("--encoder", help="encoder checkpoint folder or Hub repo id (needed for sd21)")
    g.add_argument("--subject", default="S1", help="subject name or subject .npz file")
    target = g.add_mutually_exclusive_group()
    target.add_argument("--roi", default="FFA", help="ROI to drive, e.g. FFA, PPA, FFA.lh")
    target.add_argument("--voxels", help=".npy file of voxel indices to drive instead of an ROI")
    g.add_argument("--minimize", action="store_true", help="push the target's activity down")
    g.add_argument("--contrast", help="second ROI: maximise target minus weight x this ROI")
    g.add_argument("--weight", type=float, default=1.0)
    g.add_argument("--n", type=_positive, default=4, help="number of candidate images (seeds seed..seed+n-1)")
    g.add_argument("--keep", type=_fraction, default=1.0,
                   help="keep the encoder's top fraction of the candidates (paper: 0.2); all are ranked in ranking.csv")
    g.add_argument("--steps", type=int, default=None)
    g.add_argument("--scale", type=float, default=None, help="brain guidance scale (paper: ~130 for ViT-B/16)")
    g.add_argument("--sag", type=float, default=0.75)
    g.add_argument("--cfg", type=float, default=0.0, help="classifier-free guidance scale (0 = off, paper)")
    g.add_argument("--prompt", default="")
    g.add_argument("--height", type=int, default=None)
    g.add_argument("--width", type=int, default=None)
    g.add_argument("--scheduler", default="dpm")
    g.add_argument("--mode", default="exact", help="guidance mode: exact (default), reference or fast")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--init-image", help="start from this image (img2img): its VAE latents noised to --strength")
    g.add_argument("--strength", type=float, help="with --init-image: noise level in [0, 1] (0 = the image's VAE "
                   "round trip, 1 = from the noisiest step; default 1)")
    g.add_argument("--out", required=True)

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
    r.add_argument("--images", help="folder of images for --by responses")
    r.add_argument("--seed", type=int, default=0, help="k-means seed")
    r.add_argument("--generate", type=int, default=0, help="images per part (seeds --gen-seed..); 0: split only")
    r.add_argument("--gen-seed", type=int, default=0)
    r.add_argument("--kind", default="maximize", help="per part: maximize, minimize, or contrast (part - rest of the ROI)")
    r.add_argument("--steps", type=int, default=None)
    r.add_argument("--scale", type=float, default=None)
    r.add_argument("--sag", type=float, default=0.75)
    r.add_argument("--height", type=int, default=None)
    r.add_argument("--width", type=int, default=None)
    r.add_argument("--scheduler", default="dpm")
    r.add_argument("--mode", default="exact", help="guidance mode: exact (default), reference or fast")
    r.add_argument("--out", required=True)

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
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1], got {text}")
    return value


def _apply_preset_defaults(args) -> None:
    from .demo import DEMO_DEFAULTS

    defaults = DEMO_DEFAULTS if args.preset == "demo" else {"height": 512, "width": 512, "num_inference_steps": 50,
                                                              "brain_guidance_scale": 130.0}
    args.steps = args.steps or defaults["num_inference_steps"]
    args.scale = defaults["brain_guidance_scale"] if args.scale is None else args.scale
    args.height = args.height or defaults["height"]
    args.width = args.width or defaults["width"]


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "batch":
        return batch_cli.run(args)
    try:
        if args.command == "evaluate":
            print(f"wrote {evaluate(args)} and the plot beside it")
        elif args.command == "study":
            print(study(args))
        elif args.command == "subregions":
            _apply_preset_defaults(args)
            print(f"wrote {subregions(args)}")
        else:
            _apply_preset_defaults(args)
            written = generate(args)
            print(f"wrote {len(written)} images to {args.out}")
    except (ValueError, FileNotFoundError, FloatingPointError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
