"""Brain-guidance gradients through a decoder: the distillation's gradient-matching loss and its report.

Brain guidance follows ``d objective(encoder(decode(z))) / d z``. A tiny decoder that only matches the
VAE's pixels can still bend that gradient: a decoder fit on pixels alone (19 dB PSNR) kept a third of the
guidance gain on the demo. So the distillation also matches the gradient itself, for random linear voxel
objectives ``w . encoder(image)`` (``w`` Gaussian over voxels, so every direction the encoder's voxels can
ask for is trained), with the loss ``|g_tiny - g_vae|^2 / |g_vae|^2`` per latent. ``g_tiny`` is
differentiated again with respect to the decoder's weights (double backpropagation; attention runs in
PyTorch's math kernel, the only one with a second derivative).
"""
from __future__ import annotations

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from braindive import guidance as G

__all__ = ["random_objectives", "guidance_gradient", "gradient_loss", "gradient_fidelity"]


def random_objectives(rng: np.random.Generator, count: int, n_voxels: int) -> torch.Tensor:
    """``count`` voxel weightings, standard normal: ``[count, n_voxels]``."""
    return torch.from_numpy(rng.standard_normal((count, n_voxels)).astype(np.float32))


def guidance_gradient(decoder, encoder, latents: torch.Tensor, weights: torch.Tensor,
                      create_graph: bool = False) -> torch.Tensor:
    """``d sum_i weights_i . encoder(decode(latents_i)) / d latents``, each latent with its own objective.

    ``decoder`` is the VAE or a tiny decoder (both decode scaled latents through ``decode_to_unit``, as
    the pipeline's guidance does). With ``create_graph`` the result stays differentiable in the decoder's weights.
    """
    latents = latents.detach().requires_grad_()
    with torch.enable_grad(), sdpa_kernel([SDPBackend.MATH]):
        predicted = encoder(G.decode_to_unit(decoder, latents))
        objective = (predicted * weights.to(predicted)).sum()
        return torch.autograd.grad(objective, latents, create_graph=create_graph)[0]


def _relative_errors(tiny: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    return (tiny - full).pow(2).flatten(1).sum(1) / full.pow(2).flatten(1).sum(1).clamp_min(1e-20)


def gradient_loss(decoder, vae, encoder, latents: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean relative squared error of ``decoder``'s guidance gradients against ``vae``'s (differentiable)."""
    target = guidance_gradient(vae, encoder, latents, weights).detach()
    return _relative_errors(guidance_gradient(decoder, encoder, latents, weights, create_graph=True), target).mean()


def gradient_fidelity(decoder, vae, encoder, latents: torch.Tensor, seed: int = 0, chunk: int = 8) -> dict:
    """Tiny vs full guidance gradients on ``latents`` (one seeded random objective each): cosine and relative error."""
    weights = random_objectives(np.random.default_rng([seed, 7]), len(latents), encoder.n_voxels)
    device = next(vae.parameters()).device
    cosines, errors = [], []
    for i in range(0, len(latents), chunk):
        part, w = latents[i:i + chunk].to(device), weights[i:i + chunk].to(device)
        tiny = guidance_gradient(decoder, encoder, part, w).flatten(1).cpu()
        full = guidance_gradient(vae, encoder, part, w).flatten(1).cpu()
        cosines.append(torch.nn.functional.cosine_similarity(tiny, full, dim=1))
        errors.append(_relative_errors(tiny, full).sqrt())
    cosine, error = torch.cat(cosines), torch.cat(errors)
    return {"gradient_cosine_mean": float(cosine.mean()), "gradient_cosine_min": float(cosine.min()),
            "gradient_relative_error": float(error.mean())}
