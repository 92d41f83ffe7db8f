"""Distil a tiny decoder (diffusers ``AutoencoderTiny`` layout, like TAESD) from a Stable-Diffusion-family VAE.

    python -m training.distill_decoder --model braindive/assets/demo-sd --out braindive/assets/demo-taesd \\
        --encoder braindive/assets/demo-encoder [--sample 24] [--images DIR] [--steps 450] [--grad-weight 1] [--seed 0]

Training pairs are latents and the full VAE's decode of them. Latents come from the diffusion model
itself (``--sample N``: N unguided DPM-Solver trajectories, every step's guidance decoder input, the
residual-mixed x0 that brain guidance decodes) and/or from images (``--images DIR``, encoded by the VAE).
The tiny decoder is fit on random latent crops (pixel MSE + L1) and, with ``--encoder`` and
``--grad-weight`` > 0, on whole latents to reproduce the VAE's brain-guidance gradients for random voxel
objectives (``training.decoder_gradients``: the term that makes guidance through it work); seeded. The run checkpoints to
``--work`` every ``--save-every`` steps and resumes from there when started again with the same
arguments. The fidelity report (``distill.json`` beside the weights) compares the tiny and the full
decode on held-out trajectories: PSNR, and with ``--encoder`` the encoder's prediction error (RMS
difference of the predicted activity over its spread across images) and the guidance gradients'
cosine and relative error. Like TAESD the decoder takes the
diffusion model's (scaled) latents, so its ``scaling_factor`` is 1; its encoder half is untrained.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from braindive import guidance as G
from braindive.cache import cache_dir, private_tmp
from braindive.tiny_decoder import DISTILL_FILE, load_tiny_decoder

from .decoder_gradients import gradient_fidelity, gradient_loss, random_objectives
from .features import resolve_device
from .logs import cli_errors, configure_logging

__all__ = ["Recipe", "sample_decoder_inputs", "encode_images", "build_decoder", "fidelity", "distill", "main"]


@dataclasses.dataclass
class Recipe:
    """Everything that sets the result (defaults: the demo's decoder, ~1/4 of its VAE decoder's FLOPs)."""

    seed: int = 0
    width: int = 16
    blocks: tuple[int, ...] = (2, 2, 2, 0)
    steps: int = 450
    batch: int = 8
    crop: int = 6  # latent crop side
    lr: float = 2e-3
    grad_weight: float = 1.0  # weight of the guidance-gradient matching loss (needs an encoder; 0: pixels only)
    grad_batch: int = 4  # whole latents per step for that loss
    sample: int = 24  # diffusion trajectories for training (plus `holdout` for the report)
    holdout: int = 4
    sample_steps: int = 25
    size: int | None = None  # image side; default: the model's


# ---------------------------------------------------------------------------------------- data


@torch.no_grad()
def sample_decoder_inputs(unet, scheduler, prompt_embeds, seeds, steps: int, size: int, vae_factor: int) -> torch.Tensor:
    """Every step's guidance decoder input (residual-mixed x0) of unguided DPM-Solver runs, one seed each."""
    scheduler.set_timesteps(steps)
    shape = (1, unet.config.in_channels, size // vae_factor, size // vae_factor)
    latents = torch.cat([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
    latents = latents.to(unet.device) * scheduler.init_noise_sigma  # the same noise on every device
    embeds = prompt_embeds.expand(len(seeds), -1, -1)
    collected = []
    for t in scheduler.timesteps:
        eps = unet(scheduler.scale_model_input(latents, t), t, encoder_hidden_states=embeds).sample
        alpha = scheduler.alphas_cumprod[int(t)]
        collected.append(G.residual_mix(G.predicted_x0(latents, eps, alpha), latents, alpha))
        latents = scheduler.step(eps, t, latents).prev_sample
    collected.append(latents)
    return torch.stack(collected, 1).flatten(0, 1).cpu()  # trajectory-major: [seeds * (steps + 1), C, h, w]


@torch.no_grad()
def encode_images(vae, folder, size: int) -> torch.Tensor:
    """Scaled latents (the VAE posterior's mode) of every image in ``folder``, resized to ``size``."""
    import PIL.Image

    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp"})
    if not files:
        raise ValueError(f"`--images` folder {folder} has no .png/.jpg/.jpeg/.webp images.")
    latents = []
    for path in files:
        image = PIL.Image.open(path).convert("RGB").resize((size, size), PIL.Image.BICUBIC)
        pixels = torch.from_numpy(np.asarray(image, np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
        latents.append(vae.encode(pixels.to(vae.device)).latent_dist.mode().cpu() * vae.config.scaling_factor)
    return torch.cat(latents)


@torch.no_grad()
def full_decode(vae, latents: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """The VAE's decode of scaled latents, in [-1, 1], float16 to halve the memory (on the CPU)."""
    parts = (vae.decode(latents[i:i + chunk].to(vae.device) / vae.config.scaling_factor).sample
             for i in range(0, len(latents), chunk))
    return torch.cat([part.clamp(-1, 1).half().cpu() for part in parts])


# ---------------------------------------------------------------------------------------- model


def build_decoder(recipe: Recipe, vae, init: str | None = None):
    """An ``AutoencoderTiny`` for ``vae``'s latents: ``width`` channels, ``blocks`` per stage, seeded.

    With ``init`` (a folder or Hub id, e.g. ``madebyollin/taesd``) training starts from that decoder
    instead (its own layout; checked against ``vae``), e.g. to fit TAESD to an encoder's gradients.
    """
    from diffusers import AutoencoderTiny

    torch.manual_seed(recipe.seed)
    if init:
        return load_tiny_decoder(init, vae).train().requires_grad_(True)
    stages = len(vae.config.block_out_channels)
    if len(recipe.blocks) != stages:
        raise ValueError(f"`blocks` needs one count per VAE stage ({stages}), got {recipe.blocks}.")
    return AutoencoderTiny(latent_channels=vae.config.latent_channels, decoder_block_out_channels=(recipe.width,) * stages,
                           num_decoder_blocks=tuple(recipe.blocks), encoder_block_out_channels=(8,) * stages,
                           num_encoder_blocks=(1,) * stages, scaling_factor=1.0)


def _crop_batch(latents, targets, recipe: Recipe, step: int, factor: int):
    """Batch ``step``'s random latent crops and the matching target crops (depends on (seed, step) only)."""
    rng = np.random.default_rng([recipe.seed, step])
    index = rng.integers(len(latents), size=recipe.batch)
    h, w = latents.shape[-2:]
    crop = min(recipe.crop, h, w)
    ys, xs = rng.integers(h - crop + 1, size=recipe.batch), rng.integers(w - crop + 1, size=recipe.batch)
    lat = torch.stack([latents[i, :, y:y + crop, x:x + crop] for i, y, x in zip(index, ys, xs)])
    tgt = torch.stack([targets[i, :, y * factor:(y + crop) * factor, x * factor:(x + crop) * factor]
                       for i, y, x in zip(index, ys, xs)])
    return lat, tgt.float()


def _lr(step: int, recipe: Recipe) -> float:
    warmup = min(50, recipe.steps // 10)
    if step < warmup:
        return recipe.lr * (step + 1) / warmup
    return recipe.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, recipe.steps - warmup))))


# ---------------------------------------------------------------------------------------- checkpoints


def _save_checkpoint(work: Path, step: int, decoder, optimizer, losses: list[list[float]]) -> None:
    tensors = {f"model.{k}": v.contiguous().cpu() for k, v in decoder.state_dict().items()}
    for i, state in optimizer.state_dict()["state"].items():
        tensors.update({f"opt.{i}.{k}": torch.as_tensor(v).contiguous().cpu() for k, v in state.items()})
    tmp = private_tmp(work / "checkpoint.safetensors")
    save_file(tensors, str(tmp))
    tmp.replace(work / "checkpoint.safetensors")
    meta = private_tmp(work / "checkpoint.json")
    meta.write_text(json.dumps({"step": step, "losses": losses}))
    meta.replace(work / "checkpoint.json")


def _load_checkpoint(work: Path, decoder, optimizer) -> tuple[int, list[list[float]]]:
    if not (work / "checkpoint.json").is_file():
        return 0, []
    meta = json.loads((work / "checkpoint.json").read_text())
    tensors = load_file(str(work / "checkpoint.safetensors"))
    decoder.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state = optimizer.state_dict()
    opt = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, i, name = key.split(".", 2)
            opt.setdefault(int(i), {})[name] = value
    optimizer.load_state_dict({"state": opt, "param_groups": state["param_groups"]})
    return meta["step"], meta["losses"]


# ---------------------------------------------------------------------------------------- report


def _psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of images in [0, 1]."""
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return -10 * torch.log10(mse)


@torch.no_grad()
def fidelity(decoder, vae, latents: torch.Tensor, encoder=None, chunk: int = 16) -> dict:
    """Tiny vs full decode of ``latents``: PSNR (mean, min) and the encoder's relative prediction error."""
    tiny, full = [], []
    for i in range(0, len(latents), chunk):
        part = latents[i:i + chunk].to(vae.device)
        tiny.append(G.decode_to_unit(decoder, part))
        full.append(G.decode_to_unit(vae, part))
    tiny, full = torch.cat(tiny), torch.cat(full)
    psnr = _psnr(tiny, full)
    report = {"images": len(latents), "psnr_mean_db": float(psnr.mean()), "psnr_min_db": float(psnr.min())}
    if encoder is not None:
        a_tiny = torch.cat([encoder(tiny[i:i + chunk]) for i in range(0, len(tiny), chunk)]).cpu()
        a_full = torch.cat([encoder(full[i:i + chunk]) for i in range(0, len(full), chunk)]).cpu()
        spread = (a_full - a_full.mean(0)).pow(2).mean().sqrt()
        report["encoder_relative_error"] = float((a_tiny - a_full).pow(2).mean().sqrt() / spread)
        report["encoder_correlation"] = float(np.corrcoef(a_tiny.flatten().numpy(), a_full.flatten().numpy())[0, 1])
    return report


def decode_gflop(module, latents: torch.Tensor) -> float:
    """GFLOP of one ``decode`` of ``latents`` (torch's matmul/convolution formulas)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module.decode(latents)
    return counter.get_total_flops() / 1e9


# ---------------------------------------------------------------------------------------- run


def _load_model(model: str, device: torch.device):
    from diffusers import DPMSolverMultistepScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet").eval().requires_grad_(False).to(device)
    scheduler = DPMSolverMultistepScheduler.from_pretrained(model, subfolder="scheduler")
    tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(model, subfolder="text_encoder").eval()
    ids = tokenizer("", padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        embeds = text_encoder(ids)[0]
    return unet, scheduler, embeds.to(device)


def _data(work: Path, model: str, vae, recipe: Recipe, images: str | None):
    """(training latents, their full decodes, held-out latents); computed once and kept in ``work``."""
    path = work / "data.safetensors"
    if path.is_file():
        data = load_file(str(path))
        return data["latents"], data["targets"], data["holdout"]
    unet, scheduler, embeds = _load_model(model, vae.device)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    size = recipe.size or unet.config.sample_size * factor
    seeds = list(range(recipe.sample + recipe.holdout))
    parts = []
    for start in tqdm(range(0, recipe.sample, 8), desc="sample latents", unit="batch"):
        parts.append(sample_decoder_inputs(unet, scheduler, embeds, seeds[start:min(start + 8, recipe.sample)],
                                           recipe.sample_steps, size, factor))
    if images:
        parts.append(encode_images(vae, images, size))
    if not parts:
        raise ValueError("No training data: pass `--sample N` > 0 or `--images DIR`.")
    latents = torch.cat(parts)
    holdout = sample_decoder_inputs(unet, scheduler, embeds, seeds[recipe.sample:], recipe.sample_steps, size, factor)
    holdout = holdout[::4]  # every 4th step of each held-out trajectory
    targets = full_decode(vae, latents)
    tmp = private_tmp(path)
    save_file({"latents": latents.contiguous(), "targets": targets.contiguous(), "holdout": holdout.contiguous()}, str(tmp))
    tmp.replace(path)
    return latents, targets, holdout


def _load_encoder(encoder: str | None, device: torch.device):
    if not encoder:
        return None
    from braindive.encoders import load_encoder

    return load_encoder(encoder, device=device).eval().requires_grad_(False)


def _gradient_batch_loss(decoder, vae, encoder, latents, recipe: Recipe, step: int) -> torch.Tensor:
    """The gradient-matching loss on step ``step``'s whole latents and random objectives (depends on (seed, step) only)."""
    rng = np.random.default_rng([recipe.seed, step, 1])
    index = rng.integers(len(latents), size=recipe.grad_batch)
    weights = random_objectives(rng, recipe.grad_batch, encoder.n_voxels)
    return gradient_loss(decoder, vae, encoder, latents[index].to(vae.device), weights.to(vae.device))


def distill(model: str, out, recipe: Recipe, images: str | None = None, encoder: str | None = None,
            work=None, save_every: int = 100, init: str | None = None, device: str = "auto") -> dict:
    """Fit, save ``out`` (``save_pretrained`` layout + ``distill.json``) and return the report.

    The models run on ``device`` (``"auto"``: CUDA when available); the training data stay on the CPU
    and go over in batches. A run checkpointed on one device resumes on another (float rounding differs).
    """
    from diffusers import AutoencoderKL

    device = resolve_device(device)
    if recipe.grad_weight > 0 and not encoder:
        raise ValueError("`grad_weight` > 0 matches the brain encoder's guidance gradients and needs `encoder`; "
                         "pass `--encoder FOLDER` or `--grad-weight 0` (pixels only).")
    out = Path(out)
    work = Path(work) if work else cache_dir("distill", out.name)
    work.mkdir(parents=True, exist_ok=True)
    args_file = work / "recipe.json"
    recipe_json = json.dumps({"model": str(model), "images": images, "encoder": encoder, "init": init, **dataclasses.asdict(recipe)})
    if args_file.is_file() and args_file.read_text() != recipe_json:
        raise ValueError(f"Work folder {work} holds a run with other arguments; remove it or pass another `--work`.")
    args_file.write_text(recipe_json)
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae").eval().requires_grad_(False).to(device)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    latents, targets, holdout = _data(work, model, vae, recipe, images)
    enc = _load_encoder(encoder, device)
    decoder = build_decoder(recipe, vae, init).to(device)
    optimizer = torch.optim.AdamW(decoder.decoder.parameters(), lr=recipe.lr, weight_decay=0.0)
    start, losses = _load_checkpoint(work, decoder, optimizer)
    decoder.train()
    with tqdm(total=recipe.steps, initial=start, desc="distil decoder", unit="step") as progress:
        for step in range(start, recipe.steps):
            lat, tgt = (t.to(device) for t in _crop_batch(latents, targets, recipe, step, factor))
            for group in optimizer.param_groups:
                group["lr"] = _lr(step, recipe)
            pred = decoder.decode(lat).sample
            pixel = F.mse_loss(pred, tgt) + 0.1 * F.l1_loss(pred, tgt)
            gradient = _gradient_batch_loss(decoder, vae, enc, latents, recipe, step) if recipe.grad_weight > 0 else pixel * 0
            optimizer.zero_grad(set_to_none=True)
            (pixel + recipe.grad_weight * gradient).backward()
            optimizer.step()
            losses.append([round(pixel.item(), 6), round(gradient.item(), 6)])
            progress.update()
            progress.set_postfix(pixel=f"{pixel.item():.4g}", gradient=f"{gradient.item():.4g}")
            if (step + 1) % save_every == 0 or step + 1 == recipe.steps:
                _save_checkpoint(work, step + 1, decoder, optimizer, losses)
    decoder.eval().requires_grad_(False)
    probe = holdout[:1].to(device)
    report = {
        "vae": {"source": str(model), "latent_channels": vae.config.latent_channels,
                "scaling_factor": vae.config.scaling_factor},
        "recipe": dataclasses.asdict(recipe),
        "training_pairs": len(latents),
        "final_pixel_loss": float(np.mean([pixel for pixel, _ in losses[-50:]])) if losses else None,
        "final_gradient_loss": float(np.mean([grad for _, grad in losses[-50:]])) if losses else None,
        "decoder_parameters": sum(p.numel() for p in decoder.decoder.parameters()),
        "vae_decoder_parameters": sum(p.numel() for m in (vae.decoder, vae.post_quant_conv) if m is not None
                                      for p in m.parameters()),
        "decoder_gflop": decode_gflop(decoder, probe),
        "vae_decoder_gflop": decode_gflop(vae, probe / vae.config.scaling_factor),
        "fidelity": {**fidelity(decoder, vae, holdout, enc),
                     **(gradient_fidelity(decoder, vae, enc, holdout, recipe.seed) if enc is not None else {})},
        "encoder": encoder,
        "init": init,
        "device": str(device),
        "note": "decoder half distilled; the encoder half is untrained (guidance only decodes)",
    }
    _save(decoder.cpu(), report, out)
    return report


def _save(decoder, report: dict, out: Path) -> None:
    """Write the folder next to ``out`` then swap it in, so ``out`` is never half-written."""
    tmp = private_tmp(out)
    if tmp.exists():
        shutil.rmtree(tmp)
    decoder.save_pretrained(tmp)
    (tmp / DISTILL_FILE).write_text(json.dumps(report, indent=2) + "\n")
    old = private_tmp(out, ".old")
    if out.exists():
        out.replace(old)
    tmp.replace(out)
    if old.exists():
        shutil.rmtree(old)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m training.distill_decoder", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="SD-layout folder or Hub id whose VAE decoder is distilled")
    parser.add_argument("--out", required=True, help="output folder (AutoencoderTiny save_pretrained layout)")
    parser.add_argument("--images", help="folder of images to encode as extra training latents")
    parser.add_argument("--encoder", help="brain encoder folder whose guidance gradients the decoder learns to "
                        "reproduce (--grad-weight) and that the fidelity report uses")
    parser.add_argument("--init", help="start from this AutoencoderTiny (folder or Hub id, e.g. madebyollin/taesd) "
                        "instead of a new one; --width/--blocks are then its own")
    parser.add_argument("--work", help="checkpoint folder (default: braindive cache, distill/<out name>)")
    parser.add_argument("--save-every", type=int, default=100)
    parser.add_argument("--device", default="auto", help="where the models run: auto (CUDA when available), cpu or cuda[:N]")
    defaults = Recipe()
    for f in dataclasses.fields(Recipe):
        if f.name == "blocks":
            parser.add_argument("--blocks", default=",".join(map(str, defaults.blocks)), help="blocks per stage, e.g. 2,2,2,0")
        else:
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=int if f.type in ("int", "int | None") else float,
                                default=getattr(defaults, f.name))
    args = parser.parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe)}
    values["blocks"] = tuple(int(b) for b in args.blocks.split(","))
    configure_logging()
    with cli_errors():
        report = distill(args.model, args.out, Recipe(**values), args.images, args.encoder, args.work, args.save_every,
                         args.init, args.device)
    print(json.dumps({k: report[k] for k in ("decoder_gflop", "vae_decoder_gflop", "fidelity")}, indent=2))
    return report


if __name__ == "__main__":
    main()
