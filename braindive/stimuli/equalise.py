"""SHINE-style equalisation of stimulus sets: luminance/contrast, histogram and Fourier amplitude spectrum matching.

Every method works on one lightness channel, CIELAB L*/100 in [0, 1], and keeps each pixel's chroma
(a*, b*); a grey image stays grey. Results are 8-bit sRGB arrays, and what is checked is what is
written: luminance matching re-measures the 8-bit result and corrects for clipping and rounding until
every image's mean and standard deviation of L*/100 are within ``LUMINANCE_TOLERANCE`` (half a grey
level, i.e. 0.5/255) of the target; an image that cannot get there (too many pixels at black or white)
is reported, never passed off as matched.

- ``luminance``: each image's channel scaled and shifted to the target mean and standard deviation
  (default: the averages over the images, as SHINE's ``lumMatch``).
- ``histogram``: each image's channel mapped onto a template distribution by its cumulative
  distribution, exactly as scikit-image's ``exposure.match_histograms`` does for one channel; the
  template is every image's channel pooled (default) or a reference image's.
- ``spectrum``: each image keeps its Fourier phase and takes the average amplitude spectrum of the
  images (SHINE's ``specMatch``); all images must have one size.

``equalise(images, steps)`` applies methods in order, e.g. ``("spectrum", "luminance")``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .statistics import as_float_rgb, lab_to_rgb, rgb_to_lab

__all__ = ["EQUALISATIONS", "Equalised", "equalise", "match_luminance", "match_histograms", "match_spectrum",
           "match_values", "lightness", "LUMINANCE_TOLERANCE"]

LUMINANCE_TOLERANCE = 0.5 / 255
_ITERATIONS = 30


@dataclass
class Equalised:
    """8-bit images after equalisation, and the images (indices) a step could not match, per step."""

    images: list[np.ndarray]
    steps: tuple[str, ...]
    unmatched: dict[str, list[int]] = field(default_factory=dict)
    target: dict = field(default_factory=dict)   # the luminance target used (mean, std of L*/100)


def lightness(image) -> np.ndarray:
    """L*/100 of an image, in [0, 1]."""
    return rgb_to_lab(as_float_rgb(image))[..., 0] / 100.0


def _merge(channel: np.ndarray, lab: np.ndarray) -> np.ndarray:
    """An 8-bit sRGB image from an L*/100 channel and the chroma of ``lab``."""
    out = np.concatenate([np.clip(channel, 0.0, 1.0)[..., None] * 100.0, lab[..., 1:]], axis=-1)
    return np.rint(lab_to_rgb(out) * 255.0).astype(np.uint8)


def _split(image) -> tuple[np.ndarray, np.ndarray]:
    lab = rgb_to_lab(as_float_rgb(image))
    return lab[..., 0] / 100.0, lab


def match_values(source: np.ndarray, template: np.ndarray) -> np.ndarray:
    """``source`` mapped onto the distribution of ``template`` by cumulative distribution (scikit-image's
    ``_match_cumulative_cdf``: quantiles of the source's distinct values interpolated into the template's)."""
    source, template = np.asarray(source), np.asarray(template)
    values, lookup, counts = np.unique(source.ravel(), return_inverse=True, return_counts=True)
    t_values, t_counts = np.unique(template.ravel(), return_counts=True)
    quantiles = np.cumsum(counts) / source.size
    t_quantiles = np.cumsum(t_counts) / template.size
    return np.interp(quantiles, t_quantiles, t_values)[lookup].reshape(source.shape)


def match_luminance(images, mean: float | None = None, std: float | None = None) -> Equalised:
    """Every image's L*/100 mean and standard deviation set to ``mean`` / ``std`` (default: the images' averages)."""
    parts = [_split(im) for im in images]
    if not parts:
        raise ValueError("`images` is empty: nothing to equalise.")
    mean = float(np.mean([c.mean() for c, _ in parts])) if mean is None else float(mean)
    std = float(np.mean([c.std() for c, _ in parts])) if std is None else float(std)
    if not 0 < mean < 1:
        raise ValueError(f"`mean` (target mean of L*/100) must be in (0, 1), got {mean}.")
    if not 0 <= std < 0.5:
        raise ValueError(f"`std` (target RMS contrast of L*/100) must be in [0, 0.5), got {std}.")
    out, unmatched = [], []
    for k, (channel, lab) in enumerate(parts):
        spread = channel.std()
        current = mean + (channel - channel.mean()) * (std / spread if spread > 0 else 0.0)
        for _ in range(_ITERATIONS):
            image = _merge(current, lab)
            measured = lightness(image)
            m, s = measured.mean(), measured.std()
            if abs(m - mean) <= LUMINANCE_TOLERANCE and abs(s - std) <= LUMINANCE_TOLERANCE:
                break
            # correct what clipping and rounding changed, around the measured result
            current = mean + (current - m) * (std / s if s > 0 else 1.0)
        else:
            unmatched.append(k)
        out.append(image)
    return Equalised(out, ("luminance",), {"luminance": unmatched} if unmatched else {}, {"mean": mean, "std": std})


def match_histograms(images, reference=None) -> Equalised:
    """Every image's L*/100 histogram matched to the pooled channel of all ``images`` (or of ``reference``)."""
    parts = [_split(im) for im in images]
    if not parts:
        raise ValueError("`images` is empty: nothing to equalise.")
    template = lightness(reference) if reference is not None else np.concatenate([c.ravel() for c, _ in parts])
    return Equalised([_merge(match_values(c, template), lab) for c, lab in parts], ("histogram",))


def match_spectrum(images) -> Equalised:
    """Every image's Fourier amplitude spectrum of L*/100 replaced by the images' average, its phase kept."""
    parts = [_split(im) for im in images]
    if not parts:
        raise ValueError("`images` is empty: nothing to equalise.")
    shapes = sorted({c.shape for c, _ in parts})
    if len(shapes) > 1:
        raise ValueError(f"Spectrum matching needs images of one size, got sizes {shapes}; resize them first.")
    spectra = [np.fft.fft2(c) for c, _ in parts]
    amplitude = np.mean([np.abs(s) for s in spectra], axis=0)
    out = [_merge(np.real(np.fft.ifft2(amplitude * np.exp(1j * np.angle(s)))), lab) for s, (_, lab) in zip(spectra, parts)]
    return Equalised(out, ("spectrum",))


EQUALISATIONS = {"luminance": match_luminance, "histogram": match_histograms, "spectrum": match_spectrum}


def equalise(images, steps, luminance_target: dict | None = None) -> Equalised:
    """Apply the ``steps`` (names of ``EQUALISATIONS``) in order; ``luminance_target`` = {mean, std} of L*/100."""
    steps = tuple(steps)
    bad = [s for s in steps if s not in EQUALISATIONS]
    if bad:
        raise ValueError(f"`equalise` steps must be among {sorted(EQUALISATIONS)}, got {bad}.")
    result = Equalised([np.asarray(as_float_rgb(im) * 255.0 + 0.5, dtype=np.uint8) for im in images], ())
    unmatched, target = {}, {}
    for step in steps:
        if step == "luminance":
            result = match_luminance(result.images, **(luminance_target or {}))
            target = result.target
        else:
            result = EQUALISATIONS[step](result.images)
        unmatched.update(result.unmatched)
    return Equalised(result.images, steps, unmatched, target)
