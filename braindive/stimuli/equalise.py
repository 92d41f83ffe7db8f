"""SHINE-style equalisation of stimulus sets: luminance/contrast, histogram and Fourier amplitude spectrum matching.

Every method works on one channel in [0, 1], chosen by ``space``:

- ``"linear"`` (default): the linear luminance Y of the linearised sRGB values (the ``mean_lum`` /
  ``rms_lum`` statistics); a change of Y is added equally to the linear R, G and B;
- ``"lstar"``: CIELAB lightness L*/100 (``mean_lstar`` / ``rms_lstar``), each pixel's a*, b* kept;
- ``"grey"``: the Rec. 709 grey level of the gamma-encoded values (pixel values, as SHINE), a change added
  equally to R, G and B.

A grey image stays grey in every space. Results are 8-bit sRGB arrays, and what is checked is what is
written: luminance matching re-measures the 8-bit result and corrects for clipping and rounding until
every image's mean and standard deviation of the channel are within ``LUMINANCE_TOLERANCE`` (half a grey
level, 0.5/255) of the target; an image that cannot get there (too many pixels at black or white) is
reported, never passed off as matched.

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

from .statistics import _LUMA, _encode, as_float_rgb, lab_to_rgb, linear_rgb, rgb_to_lab

__all__ = ["EQUALISATIONS", "SPACES", "Equalised", "equalise", "match_luminance", "match_histograms", "match_spectrum",
           "match_values", "channel", "lightness", "LUMINANCE_TOLERANCE"]

SPACES = ("linear", "lstar", "grey")

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


def channel(image, space: str = "linear") -> np.ndarray:
    """The channel that ``space`` equalises, in [0, 1]."""
    return _split(image, _check(space))[0]


def _check(space: str) -> str:
    if space not in SPACES:
        raise ValueError(f"`space` must be one of {SPACES}, got {space!r}.")
    return space


def _split(image, space: str) -> tuple[np.ndarray, tuple]:
    """(channel, what ``_merge`` needs to rebuild the image from a new channel)."""
    rgb = as_float_rgb(image)
    if space == "lstar":
        lab = rgb_to_lab(rgb)
        return lab[..., 0] / 100.0, (space, lab)
    base = linear_rgb(rgb) if space == "linear" else rgb
    value = base @ _LUMA
    return value, (space, base, value)


def _merge(new: np.ndarray, parts: tuple) -> np.ndarray:
    """An 8-bit sRGB image whose channel is ``new`` (before clipping to the sRGB cube and rounding)."""
    if parts[0] == "lstar":
        lab = parts[1]
        out = lab_to_rgb(np.concatenate([np.clip(new, 0.0, 1.0)[..., None] * 100.0, lab[..., 1:]], axis=-1))
    else:
        space, base, value = parts
        shifted = np.clip(base + (new - value)[..., None], 0.0, 1.0)
        out = _encode(shifted) if space == "linear" else shifted
    return np.rint(out * 255.0).astype(np.uint8)


def match_values(source: np.ndarray, template: np.ndarray) -> np.ndarray:
    """``source`` mapped onto the distribution of ``template`` by cumulative distribution (scikit-image's
    ``_match_cumulative_cdf``: quantiles of the source's distinct values interpolated into the template's)."""
    source, template = np.asarray(source), np.asarray(template)
    values, lookup, counts = np.unique(source.ravel(), return_inverse=True, return_counts=True)
    t_values, t_counts = np.unique(template.ravel(), return_counts=True)
    quantiles = np.cumsum(counts) / source.size
    t_quantiles = np.cumsum(t_counts) / template.size
    return np.interp(quantiles, t_quantiles, t_values)[lookup].reshape(source.shape)


def match_luminance(images, mean: float | None = None, std: float | None = None, space: str = "linear") -> Equalised:
    """Every image's channel mean and standard deviation set to ``mean`` / ``std`` (default: the images' averages)."""
    parts = [_split(im, _check(space)) for im in images]
    if not parts:
        raise ValueError("`images` is empty: nothing to equalise.")
    mean = float(np.mean([c.mean() for c, _ in parts])) if mean is None else float(mean)
    std = float(np.mean([c.std() for c, _ in parts])) if std is None else float(std)
    if not 0 < mean < 1:
        raise ValueError(f"`mean` (target mean of the {space} channel) must be in (0, 1), got {mean}.")
    if not 0 <= std < 0.5:
        raise ValueError(f"`std` (target RMS contrast of the {space} channel) must be in [0, 0.5), got {std}.")
    out, unmatched = [], []
    for k, (values, rebuild) in enumerate(parts):
        spread = values.std()
        current = mean + (values - values.mean()) * (std / spread if spread > 0 else 0.0)
        for _ in range(_ITERATIONS):
            image = _merge(current, rebuild)
            measured = _split(image, space)[0]
            m, s = measured.mean(), measured.std()
            if abs(m - mean) <= LUMINANCE_TOLERANCE and abs(s - std) <= LUMINANCE_TOLERANCE:
                break
            # correct what clipping and rounding changed, around the measured result
            current = mean + (current - m) * (std / s if s > 0 else 1.0)
        else:
            unmatched.append(k)
        out.append(image)
    return Equalised(out, ("luminance",), {"luminance": unmatched} if unmatched else {},
                     {"mean": mean, "std": std, "space": space})


def match_histograms(images, reference=None, space: str = "linear") -> Equalised:
    """Every image's channel histogram matched to the pooled channel of all ``images`` (or of ``reference``)."""
    parts = [_split(im, _check(space)) for im in images]
    if not parts:
        raise ValueError("`images` is empty: nothing to equalise.")
    template = channel(reference, space) if reference is not None else np.concatenate([c.ravel() for c, _ in parts])
    return Equalised([_merge(match_values(c, template), rebuild) for c, rebuild in parts], ("histogram",))


def match_spectrum(images, space: str = "linear") -> Equalised:
    """Every image's Fourier amplitude spectrum of the channel replaced by the images' average, its phase kept."""
    parts = [_split(im, _check(space)) for im in images]
    if not parts:
        raise ValueError("`images` is empty: nothing to equalise.")
    shapes = sorted({c.shape for c, _ in parts})
    if len(shapes) > 1:
        raise ValueError(f"Spectrum matching needs images of one size, got sizes {shapes}; resize them first.")
    spectra = [np.fft.fft2(c) for c, _ in parts]
    amplitude = np.mean([np.abs(s) for s in spectra], axis=0)
    out = [_merge(np.real(np.fft.ifft2(amplitude * np.exp(1j * np.angle(s)))), rebuild)
           for s, (_, rebuild) in zip(spectra, parts)]
    return Equalised(out, ("spectrum",))


EQUALISATIONS = {"luminance": match_luminance, "histogram": match_histograms, "spectrum": match_spectrum}


def equalise(images, steps, luminance_target: dict | None = None, space: str = "linear") -> Equalised:
    """Apply the ``steps`` (names of ``EQUALISATIONS``) in order on the ``space`` channel; ``luminance_target`` =
    {mean, std} of that channel (default: the images' averages)."""
    steps = tuple(steps)
    bad = [s for s in steps if s not in EQUALISATIONS]
    if bad:
        raise ValueError(f"`equalise` steps must be among {sorted(EQUALISATIONS)}, got {bad}.")
    result = Equalised([np.asarray(as_float_rgb(im) * 255.0 + 0.5, dtype=np.uint8) for im in images], ())
    unmatched, target = {}, {}
    for step in steps:
        if step == "luminance":
            result = match_luminance(result.images, **(luminance_target or {}), space=space)
            target = result.target
        else:
            result = EQUALISATIONS[step](result.images, space=space)
        unmatched.update(result.unmatched)
    return Equalised(result.images, steps, unmatched, target)
