"""Train the offline demo's tiny Stable-Diffusion-family model on procedural toy scenes (CPU, minutes).

    python -m training.build_demo_diffusion --out braindive/assets/demo-sd [--minutes 20]

Toy scenes are smooth colour fields (flat, linear or radial gradients, low-frequency colour noise)
with a few shapes on top (disks, ellipses, rotated rectangles, blobs), each filled with a flat colour
or a grating. The tiny VAE (8x downsampling, 4 latent channels) is trained first, then the tiny UNet
(epsilon prediction, SD's scaled-linear betas) on its latents, conditioned on the empty prompt
embedding of the demo's text encoder. The result is saved in Stable Diffusion's folder layout, like
``braindive.demo.build_diffusion_bundle``, so ``BrainDiVEPipeline.from_pretrained`` loads it.
Everything is seeded; step counts are fixed and ``--minutes`` only caps the wall time.
"""
from __future__ import annotations

import argparse
import colorsys
import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Recipe", "toy_scene", "toy_batch", "train_vae", "train_unet", "build", "main"]


@dataclass
class Recipe:
    """Everything that sets the result. Defaults fit in ~35 minutes on 2 CPU cores."""

    seed: int = 0
    image_size: int = 128
    vae_steps: int = 3000
    vae_batch: int = 8
    vae_crop: int = 64
    vae_lr: float = 1e-3
    kl_weight: float = 1e-4
    edge_weight: float = 0.5
    colour_weight: float = 1.0
    unet_lr: float = 2e-3
    ema_decay: float = 0.998
    min_snr_gamma: float = 5.0
    unet_steps: int = 6000
    unet_batch: int = 32
    n_latents: int = 12000  # scenes encoded once by the trained VAE, the UNet's training set


# ---------------------------------------------------------------------------------------- toy scenes


def _colour(rng: np.random.Generator) -> np.ndarray:
    """A random RGB colour in [0, 1], usually saturated."""
    return np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.3, 1.0), rng.uniform(0.25, 1.0)))


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1]."""
    axis = (np.arange(size) + 0.5) / size
    return np.meshgrid(axis, axis, indexing="xy")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth colour field ``[size, size, 3]``: flat, linear or radial gradient."""
    x, y = _grid(size)
    kind = rng.choice(3, p=[0.35, 0.4, 0.25])
    if kind == 0:
        return np.broadcast_to(_colour(rng), (size, size, 3)).copy()
    if kind == 1:
        angle = rng.uniform(0, 2 * np.pi)
        ramp = (x - 0.5) * np.cos(angle) + (y - 0.5) * np.sin(angle)
        ramp = (ramp - ramp.min()) / np.ptp(ramp)
    else:
        cx, cy = rng.uniform(0, 1, 2)
        ramp = np.clip(np.hypot(x - cx, y - cy) / rng.uniform(0.5, 1.2), 0, 1)
    a, b = _colour(rng), _colour(rng)
    return a + ramp[..., None] * (b - a)


def _shape_distance(rng: np.random.Generator, size: int) -> np.ndarray:
    """Signed distance (pixels, negative inside) to a random disk, ellipse, rotated rectangle or blob."""
    x, y = _grid(size)
    cx, cy = rng.uniform(0.15, 0.85, 2)
    radius = rng.uniform(0.1, 0.3)
    angle = rng.uniform(0, np.pi)
    u = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
    v = -(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)
    kind = rng.integers(4)
    if kind == 0:
        dist = np.hypot(u, v) - radius
    elif kind == 1:
        aspect = rng.uniform(0.35, 0.8)
        dist = (np.hypot(u, v / aspect) - radius) * aspect
    elif kind == 2:
        half = radius * np.array([1.0, rng.uniform(0.3, 1.0)])
        qu, qv = np.abs(u) - half[0], np.abs(v) - half[1]
        dist = np.hypot(np.maximum(qu, 0), np.maximum(qv, 0)) + np.minimum(np.maximum(qu, qv), 0)
    else:
        theta = np.arctan2(v, u)
        wobble = sum(rng.uniform(0, 0.25) / k * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4))
        dist = np.hypot(u, v) - radius * (1 + wobble)
    return dist * size


def _fill(rng: np.random.Generator, size: int) -> np.ndarray:
    """A shape's fill: a flat colour (90%) or a grating."""
    return np.broadcast_to(_colour(rng), (size, size, 3)) if rng.random() < 0.9 else _grating(rng, size)


def _grating(rng: np.random.Generator, size: int) -> np.ndarray:
    """Two-colour anti-aliased stripes with random orientation and period."""
    x, y = _grid(size)
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(0.12, 0.3)
    phase = ((x * np.cos(angle) + y * np.sin(angle)) / period) % 1.0
    stripes = np.clip((np.abs(phase - 0.5) - 0.25) * period * size + 0.5, 0, 1)
    a, b = _colour(rng), _colour(rng)
    return a + stripes[..., None] * (b - a)


def toy_scene(rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """One toy scene ``[size, size, 3]`` float32 in [0, 1]: a smooth background and 0-3 shapes."""
    image = _background(rng, size)
    for _ in range(rng.choice(4, p=[0.05, 0.45, 0.35, 0.15])):
        alpha = np.clip(0.5 - _shape_distance(rng, size), 0, 1)[..., None]
        image = image + alpha * (_fill(rng, size) - image)
    return image.astype(np.float32)


def toy_batch(rng: np.random.Generator, n: int, size: int) -> torch.Tensor:
    """``n`` toy scenes as a ``[n, 3, size, size]`` tensor in [-1, 1]."""
    images = np.stack([toy_scene(rng, size) for _ in range(n)])
    return torch.from_numpy(images).permute(0, 3, 1, 2).mul(2).sub(1).contiguous()


# ---------------------------------------------------------------------------------------- models


def build_vae():
    """The demo's tiny AutoencoderKL: 4 blocks (8x downsampling), 4 latent channels.

    One norm group (the demo's 16 groups of one channel erase an image's mean colour), and the
    log-variance bias starts at -6 so reconstructions are not drowned in sampling noise early on.
    """
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 32, 32), norm_num_groups=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=128,
    )
    with torch.no_grad():
        vae.encoder.conv_out.bias[4:] = -6.0
    return vae


def build_unet(sample_size: int):
    """The demo's tiny UNet2DConditionModel (self-attention in the mid block, as SAG needs).

    8 norm groups instead of one channel per group, so the UNet can see and predict mean colours.
    """
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    )


def _cosine_lr(step: int, total: int, warmup: int = 100) -> float:
    """Linear warm-up then cosine decay to 5%, as a multiplier of the base learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


def _edges(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


def _random_crop(images: torch.Tensor, crop: int, rng: np.random.Generator) -> torch.Tensor:
    top, left = rng.integers(0, images.shape[-1] - crop + 1, 2)
    return images[..., top:top + crop, left:left + crop]


def vae_loss(vae, images: torch.Tensor, recipe: Recipe) -> tuple[torch.Tensor, dict]:
    """L1 reconstruction + L1 on image gradients (edges) + KL to N(0, I) per element + a colour anchor.

    The anchor pulls latent channels 0-2 towards the 8x8-average RGB: it gives the encoder and decoder
    a strong colour signal from the first step (without it a tiny VAE learns grey images for
    thousands of steps) and makes the latents smooth, which the small UNet finds easy to model.
    """
    posterior = vae.encode(images).latent_dist
    recon = vae.decode(posterior.sample()).sample
    l1 = (recon - images).abs().mean()
    edge = sum((a - b).abs().mean() for a, b in zip(_edges(recon), _edges(images)))
    kl = posterior.kl().mean() / posterior.mean[0].numel()
    colour = (posterior.mean[:, :3] - F.avg_pool2d(images, 8)).pow(2).mean()
    loss = l1 + recipe.edge_weight * edge + recipe.kl_weight * kl + recipe.colour_weight * colour
    return loss, {"l1": l1.item(), "edge": edge.item(), "kl": kl.item(), "colour": colour.item()}


def _train(model, loss_fn, steps: int, lr: float, deadline: float, name: str, ema=None, ema_decay: float = 0.0):
    """AdamW with warm-up + cosine decay; stops early (and says so) at ``deadline``."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    start = time.time()
    for step in range(steps):
        if time.time() > deadline:
            print(f"[{name}] time budget reached after {step}/{steps} steps")
            break
        for group in optimizer.param_groups:
            group["lr"] = lr * _cosine_lr(step, steps)
        loss, logs = loss_fn(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if ema is not None:
            _ema_update(ema, model, min(ema_decay, (1 + step) / (10 + step)))
        if step % 100 == 0 or step == steps - 1:
            detail = " ".join(f"{k}={v:.4f}" for k, v in logs.items())
            print(f"[{name}] step {step:5d} loss={loss.item():.4f} {detail} ({time.time() - start:.0f}s)", flush=True)
    return ema if ema is not None else model


@torch.no_grad()
def _ema_update(ema, model, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1 - decay)


def train_vae(recipe: Recipe, deadline: float):
    """Train the tiny VAE on random crops of fresh toy scenes."""
    torch.manual_seed(recipe.seed)
    vae = build_vae().to(memory_format=torch.channels_last)
    rng = np.random.default_rng(recipe.seed)

    def loss_fn(step):
        images = _random_crop(toy_batch(rng, recipe.vae_batch, recipe.image_size), recipe.vae_crop, rng)
        return vae_loss(vae, images.contiguous(memory_format=torch.channels_last), recipe)

    return _train(vae, loss_fn, recipe.vae_steps, recipe.vae_lr, deadline, "vae").eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------- diffusion


def noise_schedule():
    """SD's training noise schedule (scaled-linear betas 0.00085..0.012, 1000 steps)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


@torch.no_grad()
def empty_prompt_embedding(text_encoder, tokenizer) -> torch.Tensor:
    """The ``[1, 77, D]`` text embedding of ``""`` that the pipeline conditions on."""
    ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return text_encoder(ids)[0]


@torch.no_grad()
def encode_scenes(vae, recipe: Recipe, chunk: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std ``[n, 4, h, w]`` of ``recipe.n_latents`` fresh toy scenes."""
    rng = np.random.default_rng(recipe.seed + 1)
    means, stds = [], []
    for start in range(0, recipe.n_latents, chunk):
        images = toy_batch(rng, min(chunk, recipe.n_latents - start), recipe.image_size)
        posterior = vae.encode(images.contiguous(memory_format=torch.channels_last)).latent_dist
        means.append(posterior.mean.contiguous())
        stds.append(posterior.std.contiguous())
    return torch.cat(means), torch.cat(stds)


def train_unet(latent_mean, latent_std, scaling_factor: float, text_embedding, recipe: Recipe, deadline: float):
    """Epsilon-prediction DDPM training with min-SNR weighting; returns the EMA weights."""
    torch.manual_seed(recipe.seed)
    unet = build_unet(recipe.image_size // 8).to(memory_format=torch.channels_last)
    ema = copy.deepcopy(unet).requires_grad_(False)
    alphas = noise_schedule().alphas_cumprod
    snr = alphas / (1 - alphas)
    context = text_embedding.expand(recipe.unet_batch, -1, -1)
    generator = torch.Generator().manual_seed(recipe.seed)

    def loss_fn(step):
        index = torch.randint(0, len(latent_mean), (recipe.unet_batch,), generator=generator)
        clean = latent_mean[index] + latent_std[index] * torch.randn(latent_mean[index].shape, generator=generator)
        clean = clean * scaling_factor
        noise = torch.randn(clean.shape, generator=generator)
        t = torch.randint(0, len(alphas), (recipe.unet_batch,), generator=generator)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = (a.sqrt() * clean + (1 - a).sqrt() * noise).contiguous(memory_format=torch.channels_last)
        pred = unet(noisy, t, encoder_hidden_states=context).sample
        weight = snr[t].clamp(max=recipe.min_snr_gamma) / snr[t]
        loss = (weight * (pred - noise).pow(2).mean((1, 2, 3))).mean()
        return loss, {}

    return _train(unet, loss_fn, recipe.unet_steps, recipe.unet_lr, deadline, "unet", ema=ema,
                  ema_decay=recipe.ema_decay)


# ---------------------------------------------------------------------------------------- bundle


def build(out, recipe: Recipe | None = None, minutes: float = 35.0) -> Path:
    """Train VAE then UNet within ``minutes`` and save the SD-layout bundle to ``out``."""
    from braindive.demo import _tiny_components, save_diffusion_folder

    recipe = recipe or Recipe()
    torch.set_num_threads(2)
    start = time.time()
    parts = _tiny_components(recipe.seed)
    vae = train_vae(recipe, deadline=start + 0.4 * minutes * 60)
    latent_mean, latent_std = encode_scenes(vae, recipe)
    sample = latent_mean + latent_std * torch.randn(latent_mean.shape, generator=torch.Generator().manual_seed(recipe.seed))
    scaling_factor = round(1.0 / sample.std().item(), 5)
    print(f"[latents] {len(latent_mean)} scenes, scaling_factor={scaling_factor} ({time.time() - start:.0f}s)")
    embedding = empty_prompt_embedding(parts["text_encoder"], parts["tokenizer"])
    unet = train_unet(latent_mean, latent_std, scaling_factor, embedding, recipe, deadline=start + minutes * 60 - 30)
    vae.register_to_config(scaling_factor=scaling_factor)
    parts.update(vae=vae.to(memory_format=torch.contiguous_format), unet=unet.to(memory_format=torch.contiguous_format))
    out = save_diffusion_folder(parts, out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"[done] {out} {size / 1e6:.2f} MB in {(time.time() - start) / 60:.1f} min")
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="braindive/assets/demo-sd", help="output folder (SD layout)")
    parser.add_argument("--minutes", type=float, default=35.0, help="wall-time cap for training")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    build(args.out, Recipe(seed=args.seed), args.minutes)


if __name__ == "__main__":
    main()
