"""Command line: ``python -m braindive generate --preset demo --roi FFA --n 4 --out DIR``.

torch, diffusers and the models are imported inside the commands, so ``--help`` answers at once.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .records import generation_record

__all__ = ["main", "PRESETS", "SD21_MODEL_ID"]

SD21_MODEL_ID = "stabilityai/stable-diffusion-2-1-base"


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
    written = []

    def advance(*_):
        bar.update()
        return {}

    with tqdm(total=args.n * args.steps, desc=f"{target} x{args.n}", unit="step") as bar:
        for k in range(args.n):
            seed = args.seed + k
            result = pipe(objective=objective, generator=torch.Generator().manual_seed(seed),
                          callback_on_step_end=advance, **params)
            stem = out / f"{subject.name}_{target}_seed{seed:06d}"
            result.images[0].save(stem.with_suffix(".png"))
            record = generation_record(
                seed=seed, subject=subject.name, target=target, objective=objective.describe(),
                parameters={**params, "scheduler": args.scheduler}, objective_value=float(result.objective_values[0]),
                model=model_name, encoder=encoder_name,
            )
            stem.with_suffix(".json").write_text(json.dumps(record, indent=2))
            written.append(stem.with_suffix(".png"))
    return written


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
    g.add_argument("--n", type=int, default=4, help="number of images (seeds seed..seed+n-1)")
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
    g.add_argument("--out", required=True)
    return parser


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
    _apply_preset_defaults(args)
    try:
        written = generate(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} images to {args.out}")
    return 0
