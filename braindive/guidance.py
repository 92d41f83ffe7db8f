"""Pure tensor functions of one brain-guided denoising step (BrainDiVE, published computation).

With ``a_t`` the cumulative alpha of timestep ``t``, ``x_t`` the latents and ``eps`` the UNet's noise
prediction, the published code:

1. forms ``x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)`` and ``s = x0 sqrt(1 - a_t) + x_t (1 - sqrt(1 - a_t))``
   (``residual_mix``); for sigma (LMS/Euler) schedulers ``s = x_t - sigma_t eps`` (``sigma_x0``);
2. decodes ``s`` with the VAE into an image in [0, 1] (``decode_to_unit``);
3. the encoder predicts activity; ``loss = -scale * objective``; ``g = -d loss / d x_t``;
4. ``eps_guided = eps - sqrt(1 - a_t) g`` (``guided_eps``), or for sigma schedulers
   ``x_t <- x_t + sigma_t^2 g`` (``sigma_update``).

Self-attention guidance (SAG, Hong et al. 2022) helpers follow the same published code.

The exact and fast modes add ``objective_head`` (the encoder head restricted to the objective's
voxels: the same numbers for far less work) and ``resize_latents`` (the fast mode's lower-resolution
decode).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "predicted_x0",
    "residual_mix",
    "sigma_x0",
    "decode_to_unit",
    "guided_eps",
    "sigma_update",
    "brain_loss",
    "gaussian_blur_2d",
    "sag_attention_mask",
    "attention_map_size",
    "sag_degrade",
    "objective_head",
    "resize_latents",
]


def predicted_x0(latents: torch.Tensor, eps: torch.Tensor, alpha_prod_t) -> torch.Tensor:
    """DDIM estimate of the clean latents from ``x_t`` and the noise prediction."""
    return (latents - (1 - alpha_prod_t) ** 0.5 * eps) / alpha_prod_t**0.5


def residual_mix(x0: torch.Tensor, latents: torch.Tensor, alpha_prod_t) -> torch.Tensor:
    """The published decoder input ``x0 sqrt(1-a_t) + x_t (1 - sqrt(1-a_t))``."""
    fac = (1 - alpha_prod_t) ** 0.5
    return x0 * fac + latents * (1 - fac)


def sigma_x0(latents: torch.Tensor, eps: torch.Tensor, sigma) -> torch.Tensor:
    """Clean-latent estimate for sigma-parameterised (LMS, Euler) schedulers."""
    return latents - sigma * eps


def decode_to_unit(vae, sample: torch.Tensor) -> torch.Tensor:
    """VAE-decode latents to images in [0, 1] (clamped), as float32."""
    image = vae.decode(sample / vae.config.scaling_factor).sample
    return (image / 2 + 0.5).clamp(0, 1).float()


def brain_loss(objective_values: torch.Tensor, scale: float) -> torch.Tensor:
    """``-scale * objective``, summed over the batch so each image's gradient is its own."""
    return -scale * objective_values.sum()


def guided_eps(eps: torch.Tensor, grad: torch.Tensor, alpha_prod_t) -> torch.Tensor:
    """Shift the noise prediction along the brain gradient ``g = -d loss / d x_t``."""
    return eps - (1 - alpha_prod_t) ** 0.5 * grad


def sigma_update(latents: torch.Tensor, grad: torch.Tensor, sigma) -> torch.Tensor:
    """The published update for sigma schedulers: ``x_t + sigma_t^2 g``."""
    return latents + grad * sigma**2


def gaussian_blur_2d(img: torch.Tensor, kernel_size: int = 9, sigma: float = 1.0) -> torch.Tensor:
    """Per-channel Gaussian blur with reflect padding (SAG's degradation)."""
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, steps=kernel_size)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    kernel1d = (pdf / pdf.sum()).to(device=img.device, dtype=img.dtype)
    kernel2d = torch.mm(kernel1d[:, None], kernel1d[None, :])
    kernel2d = kernel2d.expand(img.shape[-3], 1, kernel_size, kernel_size)
    pad = [kernel_size // 2] * 4
    return F.conv2d(F.pad(img, pad, mode="reflect"), kernel2d, groups=img.shape[-3])


def sag_attention_mask(attn_probs: torch.Tensor, heads: int, latent_shape) -> torch.Tensor:
    """Binary mask of latent positions that many queries attend to (SAG), upsampled to the latents.

    The threshold is taken in float32 so mixed precision does not flip mask entries.
    """
    bh, hw1, hw2 = attn_probs.shape
    b, channels, latent_h, latent_w = latent_shape
    map_h, map_w = attention_map_size(hw1, latent_h, latent_w)
    attn = attn_probs.float().reshape(b, heads, hw1, hw2)
    mask = attn.mean(1, keepdim=False).sum(1, keepdim=False) > 1.0
    mask = mask.reshape(b, map_h, map_w).unsqueeze(1).repeat(1, channels, 1, 1).to(attn_probs.dtype)
    return F.interpolate(mask, (latent_h, latent_w))


def attention_map_size(positions: int, latent_h: int, latent_w: int) -> tuple[int, int]:
    """``(h, w)`` of a UNet feature map with ``positions`` entries for ``latent_h x latent_w`` latents.

    Each UNet downsampling halves a side, rounding up; the map is the one whose area matches.
    """
    factor = 1
    while factor <= max(latent_h, latent_w):
        h, w = -(-latent_h // factor), -(-latent_w // factor)
        if h * w == positions:
            return h, w
        factor *= 2
    raise ValueError(f"No downsampling of {latent_h}x{latent_w} latents has {positions} positions.")


def sag_degrade(x0: torch.Tensor, attn_probs: torch.Tensor, heads: int, eps: torch.Tensor, add_noise) -> torch.Tensor:
    """Blur ``x0`` where the self-attention mask is on, then re-noise it with ``eps``."""
    mask = sag_attention_mask(attn_probs, heads, x0.shape)
    degraded = gaussian_blur_2d(x0, kernel_size=9, sigma=1.0)
    degraded = degraded * mask + x0 * (1 - mask)
    return add_noise(degraded, eps)


def objective_head(encoder, objective) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``images -> (activations of the objective's voxels, objective values)``.

    For a CLIP+linear encoder only the head rows of the voxels the objective reads are computed
    (identical numbers: each voxel is its own row); other encoders run in full.
    """
    head = getattr(encoder, "head", None)
    if not (hasattr(encoder, "embed") and isinstance(head, torch.nn.Linear)):
        def full(images):
            activations = encoder(images)
            return activations, objective(activations)
        return full
    parts = [objective.positive] + ([objective.negative] if objective.negative is not None else [])
    voxels = np.unique(np.concatenate(parts))
    index = torch.as_tensor(voxels, device=head.weight.device)
    weight, bias = head.weight.index_select(0, index), head.bias.index_select(0, index)
    remapped = dataclasses.replace(
        objective, positive=np.searchsorted(voxels, objective.positive),
        negative=None if objective.negative is None else np.searchsorted(voxels, objective.negative))

    def restricted(images):
        activations = F.linear(encoder.embed(images), weight, bias)
        return activations, remapped(activations)
    return restricted


def resize_latents(latents: torch.Tensor, scale: float) -> torch.Tensor:
    """Area-resample latents by ``scale`` (the fast mode's cheaper decode); identity for 1."""
    if scale == 1:
        return latents
    size = [max(1, round(side * scale)) for side in latents.shape[-2:]]
    return F.interpolate(latents, size=size, mode="area")
