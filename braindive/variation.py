"""Reference-image variations (BrainACTIV-style): push a region's predicted response up or down from a real image.

``variations`` runs the pipeline's image start (``image=``, ``strength=``: the reference's VAE latents noised
to the strength, then guided denoising from there) over a strength x scale grid, each cell with the same
seeds, plus the control of each strength (the same seeds, no brain guidance). Every image comes with its
predicted target measure, the change from the reference's own predicted measure and from its control,
and its similarity to the reference: SSIM (``ssim``) and the cosine of the encoder's image-tower
embeddings (``clip_cosine``). Strength 0 gives the reference's VAE round trip.

The measure is signed as people read it (``measure``): the target mean for maximise and minimise
(a successful minimise lowers it), mean A - weight x mean B for a contrast.
"""
from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from .objectives import Objective
from .pipeline import image_tensor

__all__ = ["variations", "VariationGrid", "Variation", "ssim", "clip_cosine", "measure", "image_hash",
           "check_strengths"]


@dataclass(frozen=True)
class Variation:
    """One image of the grid (``scale`` 0: the control of its strength and seed)."""

    strength: float
    scale: float
    seed: int
    image: PIL.Image.Image = field(repr=False)
    value: float  # predicted target measure
    change: float  # value - the reference's value
    change_vs_control: float  # value - the control's value (same strength and seed)
    ssim: float
    clip_cosine: float
    activations: np.ndarray | None = field(default=None, repr=False, compare=False)  # [V] predicted activity

    @property
    def control(self) -> bool:
        return self.scale == 0


@dataclass(frozen=True)
class VariationGrid:
    reference: PIL.Image.Image = field(repr=False)  # resized to the generation size
    reference_hash: str
    reference_value: float
    items: tuple[Variation, ...]

    def table(self) -> list[dict]:
        """One row per image: strength, scale, seed, control, value, changes, SSIM, CLIP cosine."""
        return [{"strength": v.strength, "scale": v.scale, "seed": v.seed, "control": v.control, "value": v.value,
                 "change": v.change, "change_vs_control": v.change_vs_control, "ssim": v.ssim,
                 "clip_cosine": v.clip_cosine} for v in self.items]

    def get(self, strength: float, scale: float, seed: int) -> Variation:
        for v in self.items:
            if v.strength == strength and v.scale == scale and v.seed == seed:
                return v
        raise KeyError((strength, scale, seed))


def check_strengths(strengths, field_name: str = "strength") -> tuple[float, ...]:
    """Strengths as floats in [0, 1]; a clear error naming ``field_name`` otherwise."""
    values = tuple(strengths) if isinstance(strengths, (list, tuple, np.ndarray)) else (strengths,)
    if not values:
        raise ValueError(f"`{field_name}` must list at least one value in [0, 1].")
    for s in values:
        if isinstance(s, bool) or not isinstance(s, (int, float, np.floating, np.integer)) or not 0 <= s <= 1:
            raise ValueError(f"`{field_name}` must be in [0, 1], got {s!r}.")
    return tuple(float(s) for s in values)


def variations(pipe, objective: Objective, reference, strengths, scales, seeds=(0,), control: bool = True,
               **call_kwargs) -> VariationGrid:
    """Every strength x scale (and, with ``control``, scale 0) from ``reference`` with ``seeds``.

    ``reference`` is anything the pipeline's ``image=`` takes (one image); ``call_kwargs`` go to the pipeline
    (``num_inference_steps``, ``height``, ``width``, ``guidance_mode``, ...)."""
    strengths = check_strengths(strengths)
    scales = tuple(float(s) for s in scales)
    if not scales or not all(np.isfinite(scales)):
        raise ValueError(f"`scales` must list finite brain guidance scales, got {scales!r}.")
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("`seeds` must name at least one seed.")
    default = pipe.unet.config.sample_size * pipe.vae_scale_factor
    height, width = call_kwargs.pop("height", default), call_kwargs.pop("width", default)
    ref = image_tensor(reference, height, width)
    if len(ref) != 1:
        raise ValueError(f"`reference` must be one image, got {len(ref)}.")
    ref_embed, ref_value = _embed_and_value(pipe.encoder, objective, ref)
    grid_scales = ((0.0,) if control and 0.0 not in scales else ()) + scales
    items = []
    for strength in strengths:
        values = {}
        for scale in grid_scales:
            out = pipe(objective=objective, image=ref, strength=strength, brain_guidance_scale=scale,
                       generator=[torch.Generator().manual_seed(s) for s in seeds], num_images_per_prompt=len(seeds),
                       height=height, width=width, output_type="pt", **call_kwargs)
            values[scale] = measure(objective, out.activations).numpy()
            acts = out.activations.float().cpu().numpy()
            embeds = _embed(pipe.encoder, out.images)
            for b, seed in enumerate(seeds):
                items.append(dict(strength=strength, scale=scale, seed=seed, pixels=out.images[b],
                                  value=float(values[scale][b]), ssim=float(ssim(out.images[b], ref[0])),
                                  clip_cosine=float(embeds[b] @ ref_embed[0]), activations=acts[b]))
        for item in items[-len(grid_scales) * len(seeds):]:
            control_value = values[0.0][seeds.index(item["seed"])] if 0.0 in values else np.nan
            item["change_vs_control"] = float(item["value"] - control_value)
    out_items = tuple(Variation(strength=i["strength"], scale=i["scale"], seed=i["seed"], image=_pil(i["pixels"]),
                                value=i["value"], change=i["value"] - ref_value,
                                change_vs_control=i["change_vs_control"], ssim=i["ssim"],
                                clip_cosine=i["clip_cosine"], activations=i["activations"]) for i in items)
    return VariationGrid(_pil(ref[0]), image_hash(reference), ref_value, out_items)


def measure(objective: Objective, activations: torch.Tensor) -> torch.Tensor:
    """The signed measure people read: the target mean for maximise *and* minimise, A - w B for a contrast."""
    values = objective(activations)
    return -values if objective.kind == "minimize" else values


def _device(module: torch.nn.Module) -> torch.device:
    return next(itertools.chain(module.parameters(), module.buffers()), torch.empty(0)).device


def _embed(encoder, pixels: torch.Tensor) -> torch.Tensor:
    device = _device(encoder)
    with torch.no_grad():
        return encoder.embed(pixels.to(device)).float().cpu()


def _embed_and_value(encoder, objective, pixels) -> tuple[torch.Tensor, float]:
    device = _device(encoder)
    with torch.no_grad():
        acts = encoder(pixels.to(device)).float().cpu()
    return _embed(encoder, pixels), float(measure(objective, acts)[0])


def clip_cosine(encoder, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine of the encoder's (unit) image-tower embeddings of ``[B, 3, H, W]`` images ``a`` and ``b`` in [0, 1]."""
    return (_embed(encoder, a) * _embed(encoder, b)).sum(-1)


def ssim(a: torch.Tensor, b: torch.Tensor, sigma: float = 1.5, win_size: int = 11) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) of ``[3, H, W]`` (or ``[B, 3, H, W]``) images in [0, 1].

    Gaussian window (``sigma`` 1.5, ``win_size`` 11), K1 0.01, K2 0.03, population statistics, the mean over
    the window positions that fit in the image and over channels: what ``skimage.metrics.structural_similarity(
    a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=-1)`` computes."""
    a, b = (torch.as_tensor(x, dtype=torch.float64) for x in (a, b))
    single = a.ndim == 3
    a, b = (x[None] if single else x for x in (a, b))
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"`ssim` needs two images of the same [B, C, H, W] shape, got {tuple(a.shape)}, {tuple(b.shape)}.")
    if min(a.shape[-2:]) < win_size:
        raise ValueError(f"`ssim` needs images at least {win_size} px on a side, got {tuple(a.shape[-2:])}.")
    x = torch.arange(win_size, dtype=torch.float64) - (win_size - 1) / 2
    g = torch.exp(-x**2 / (2 * sigma**2))
    g = g / g.sum()
    c = a.shape[1]
    window = (g[:, None] * g[None]).expand(c, 1, win_size, win_size)

    def filt(img):
        return F.conv2d(img, window, groups=c)

    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a**2
    var_b = filt(b * b) - mu_b**2
    cov = filt(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    out = s.mean(dim=(1, 2, 3))
    return out[0] if single else out


def image_hash(image) -> str:
    """sha256 hex of an image's RGB pixels (uint8) and size: the same picture gives the same hash from any file."""
    pixels = image_tensor(image, *_size(image))
    data = (pixels * 255).round().to(torch.uint8).numpy()
    digest = hashlib.sha256(repr(tuple(data.shape)).encode())
    digest.update(np.ascontiguousarray(data).tobytes())
    return digest.hexdigest()


def _size(image) -> tuple[int, int]:
    if isinstance(image, PIL.Image.Image):
        return image.height, image.width
    shape = np.shape(image)
    return (shape[-3], shape[-2]) if shape[-1] == 3 else (shape[-2], shape[-1])


def _pil(pixels: torch.Tensor) -> PIL.Image.Image:
    return PIL.Image.fromarray((pixels.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8))
