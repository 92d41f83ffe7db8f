"""Low- and mid-level image statistics of stimuli, per image and per set, and permutation tests between sets.

Every statistic is computed from an 8-bit sRGB image (``[H, W, 3]`` uint8 or floats in [0, 1]):

- ``mean_lum`` / ``rms_lum``: mean and standard deviation (RMS contrast) of the linear luminance
  Y = 0.2126 R + 0.7152 G + 0.0722 B of the linearised sRGB values (IEC 61966-2-1), in [0, 1];
- ``mean_lstar`` / ``rms_lstar``: the same on CIELAB lightness L* (D65 white, Y_n = 1), in [0, 100];
- ``colourfulness``: Hasler & Süsstrunk (2003), M = σ_rgyb + 0.3 μ_rgyb with rg = R − G and
  yb = (R + G)/2 − B on the 0-255 sRGB values;
- ``spectrum_slope``: slope of log amplitude against log spatial frequency of the rotationally averaged
  Fourier amplitude spectrum of the grey image (below), fit over the frequencies in ``SLOPE_BAND``;
  the image's periodic component is used (Moisan's periodic + smooth decomposition), so its borders add
  no spurious 1/f cross, and the power of an 8-bit image's rounding noise is subtracted (else steep
  spectra read flatter at high frequencies); natural images are near −1, white noise 0, 1/f^a
  (amplitude) noise −a (within ±0.05 at 256 px for a in [0.5, 2]);
- ``edge_density``: share of pixels whose grey-level gradient (Sobel, after a Gaussian of σ = 1 px)
  exceeds ``EDGE_THRESHOLD`` per pixel;
- ``entropy``: Shannon entropy (bits) of the histogram of the 8-bit grey levels.

The grey image is the Rec. 709-weighted sum of the gamma-encoded sRGB values (for a grey image, its pixel
values), as SHINE and most image-statistics work use.

A set's embedding diversity (mean pairwise cosine distance of encoder image embeddings) is computed by
``braindive.stimuli.scoring``; this module needs only numpy and scipy.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["STATISTICS", "image_statistics", "statistics_table", "linear_rgb", "luminance", "lstar",
           "rgb_to_lab", "lab_to_rgb", "colourfulness", "radial_spectrum", "spectrum_slope", "edge_density",
           "entropy", "grey", "permutation_test", "as_float_rgb", "SLOPE_BAND", "EDGE_THRESHOLD"]

STATISTICS = ("mean_lum", "rms_lum", "mean_lstar", "rms_lstar", "colourfulness", "spectrum_slope", "edge_density",
              "entropy")
SLOPE_BAND = (0.02, 0.4)   # fitted frequencies, as fractions of the image side in cycles (i.e. 2.6-51 c/img at 128 px)
EDGE_THRESHOLD = 0.04      # grey-level change per pixel (about 10 of 255)
_WHITE = np.array([0.95047, 1.0, 1.08883])  # D65
_RGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]])
_LUMA = np.array([0.2126, 0.7152, 0.0722])


def as_float_rgb(image) -> np.ndarray:
    """``[H, W, 3]`` floats in [0, 1] from a PIL image, a uint8 array or a float array (checked); a 2-D array is a
    grey image."""
    if hasattr(image, "convert"):
        image = np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"`image` must be an RGB image [H, W, 3] or a grey image [H, W], got shape {array.shape}.")
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    array = array.astype(np.float64)
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
        raise ValueError("`image` floats must be finite and in [0, 1].")
    return array


def linear_rgb(rgb: np.ndarray) -> np.ndarray:
    """sRGB values in [0, 1] -> linear RGB (the IEC 61966-2-1 transfer function inverted)."""
    return np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)


def _encode(linear: np.ndarray) -> np.ndarray:
    linear = np.clip(linear, 0.0, 1.0)
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Linear luminance Y in [0, 1] of sRGB values in [0, 1]."""
    return linear_rgb(rgb) @ _LUMA


def _f(t):
    return np.where(t > (6 / 29) ** 3, np.cbrt(t), t / (3 * (6 / 29) ** 2) + 4 / 29)


def _f_inv(t):
    return np.where(t > 6 / 29, t ** 3, 3 * (6 / 29) ** 2 * (t - 4 / 29))


def lstar(rgb: np.ndarray) -> np.ndarray:
    """CIELAB lightness L* in [0, 100] of sRGB values in [0, 1]."""
    return 116.0 * _f(luminance(rgb)) - 16.0


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] -> CIELAB (D65), ``[..., 3]`` = L*, a*, b*."""
    xyz = linear_rgb(rgb) @ _RGB_TO_XYZ.T / _WHITE
    fx, fy, fz = (_f(xyz[..., k]) for k in range(3))
    return np.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], axis=-1)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """CIELAB (D65) -> sRGB in [0, 1] (out-of-gamut colours clipped to the sRGB cube)."""
    fy = (lab[..., 0] + 16) / 116
    xyz = np.stack([_f_inv(fy + lab[..., 1] / 500), _f_inv(fy), _f_inv(fy - lab[..., 2] / 200)], axis=-1) * _WHITE
    return _encode(xyz @ np.linalg.inv(_RGB_TO_XYZ).T)


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler & Süsstrunk's M on the 0-255 sRGB values."""
    r, g, b = (rgb[..., k] * 255.0 for k in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def grey(rgb: np.ndarray) -> np.ndarray:
    """Grey level in [0, 1]: Rec. 709 weights on the gamma-encoded sRGB values (a grey pixel keeps its value)."""
    return rgb @ _LUMA


def _periodic_spectrum(channel: np.ndarray) -> np.ndarray:
    """FFT of the periodic component of ``channel`` (Moisan 2011): the image's borders add no cross of energy."""
    x = channel - channel.mean()
    h, w = x.shape
    v = np.zeros_like(x)
    v[0, :] += x[-1, :] - x[0, :]
    v[-1, :] += x[0, :] - x[-1, :]
    v[:, 0] += x[:, -1] - x[:, 0]
    v[:, -1] += x[:, 0] - x[:, -1]
    denominator = (2 * np.cos(2 * np.pi * np.arange(h) / h)[:, None] + 2 * np.cos(2 * np.pi * np.arange(w) / w)[None, :]
                   - 4)
    denominator[0, 0] = 1.0
    smooth = np.fft.fft2(v) / denominator
    smooth[0, 0] = 0.0
    return np.fft.fft2(x) - smooth


def radial_spectrum(channel: np.ndarray, noise: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Rotationally averaged amplitude spectrum of a 2-D array: (frequency in cycles/image, RMS amplitude).

    The mean is removed and the periodic component taken (periodic + smooth decomposition), so a
    non-periodic image's borders do not bias it; the power of white noise of variance ``noise`` per pixel
    (e.g. 8-bit rounding) is subtracted before the square root (NaN where nothing is left). Frequencies
    are the integer radii 1 .. min(H, W)/2 (the DC term and the corners beyond Nyquist are left out); a
    non-square image's frequencies are scaled to its shorter side.
    """
    channel = np.asarray(channel, dtype=np.float64)
    h, w = channel.shape
    power = np.abs(_periodic_spectrum(channel)) ** 2
    side = min(h, w)
    fy, fx = np.meshgrid(np.fft.fftfreq(h) * side, np.fft.fftfreq(w) * side, indexing="ij")
    radius = np.rint(np.hypot(fy, fx)).astype(int)
    top = side // 2
    sums = np.bincount(radius.ravel(), power.ravel(), minlength=top + 1)
    counts = np.bincount(radius.ravel(), minlength=top + 1)
    mean_power = sums[1:top + 1] / np.maximum(counts[1:top + 1], 1) - noise * h * w
    with np.errstate(invalid="ignore"):
        return np.arange(1, top + 1, dtype=float), np.where(mean_power > 0, np.sqrt(np.maximum(mean_power, 0)), np.nan)


def spectrum_slope(channel: np.ndarray, band=SLOPE_BAND, noise: float = 0.0) -> float:
    """Least-squares slope of log RMS amplitude vs log frequency over the integer radii in ``band``
    (fractions of the shorter side, in cycles/image), ``noise`` as in ``radial_spectrum``. 1/f^a noise
    gives -a; a uniform image NaN."""
    freqs, amplitude = radial_spectrum(channel, noise)
    side = min(np.shape(channel))
    band_pick = (freqs >= max(band[0] * side, 1.0)) & (freqs <= band[1] * side)
    if band_pick.sum() < 3:
        raise ValueError(f"Image of side {side} px is too small for a spectrum slope (needs >= 16 px).")
    pick = band_pick & (amplitude > 1e-12) & np.isfinite(amplitude)
    if pick.sum() < 3:
        return float("nan")
    return float(np.polyfit(np.log(freqs[pick]), np.log(amplitude[pick]), 1)[0])


def edge_density(level: np.ndarray, threshold: float = EDGE_THRESHOLD) -> float:
    """Share of pixels of a grey image in [0, 1] whose smoothed Sobel gradient exceeds ``threshold`` per pixel."""
    smooth = ndimage.gaussian_filter(np.asarray(level, dtype=np.float64), 1.0, mode="reflect")
    grad = np.hypot(ndimage.sobel(smooth, 0, mode="reflect"), ndimage.sobel(smooth, 1, mode="reflect")) / 8.0
    return float((grad > threshold).mean())


def entropy(level: np.ndarray) -> float:
    """Shannon entropy in bits of the histogram of 8-bit grey levels (``level`` in [0, 1], rounded to 0..255)."""
    counts = np.bincount(np.rint(np.clip(level, 0, 1) * 255).astype(int).ravel(), minlength=256)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def rounding_noise(rgb: np.ndarray) -> float:
    """Variance of the grey level's 8-bit rounding noise: 1/12 grey level² for a grey image (R = G = B), the
    Rec. 709 weights' sum of squares times that for colour (channels rounded independently)."""
    grey_image = np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])
    return (1.0 if grey_image else float(_LUMA @ _LUMA)) / (12 * 255.0**2)


def image_statistics(image) -> dict[str, float]:
    """Every statistic of ``STATISTICS`` for one image (an 8-bit image's spectrum has its rounding noise removed)."""
    eight_bit = hasattr(image, "convert") or np.asarray(image).dtype == np.uint8
    rgb = as_float_rgb(image)
    y = luminance(rgb)
    light = 116.0 * _f(y) - 16.0
    level = grey(rgb)
    return {"mean_lum": float(y.mean()), "rms_lum": float(y.std()), "mean_lstar": float(light.mean()),
            "rms_lstar": float(light.std()), "colourfulness": colourfulness(rgb),
            "spectrum_slope": spectrum_slope(level, noise=rounding_noise(rgb) if eight_bit else 0.0), "edge_density": edge_density(level), "entropy": entropy(level)}


def statistics_table(rows: list[dict], sets: list[str], n_permutations: int = 10000, seed: int = 0) -> list[dict]:
    """Per statistic and pair of sets: each set's mean and sd, the difference of means and its permutation p.

    ``rows`` are per-image dicts holding ``set`` and the ``STATISTICS`` values.
    """
    out = []
    for name in STATISTICS:
        values = {s: np.array([r[name] for r in rows if r["set"] == s], dtype=float) for s in sets}
        for i, a in enumerate(sets):
            for b in sets[i + 1:]:
                if not len(values[a]) or not len(values[b]):
                    continue
                diff, p = permutation_test(values[a], values[b], n_permutations, seed)
                out.append({"statistic": name, "set_a": a, "set_b": b, "mean_a": values[a].mean(),
                            "sd_a": values[a].std(ddof=1) if len(values[a]) > 1 else 0.0, "mean_b": values[b].mean(),
                            "sd_b": values[b].std(ddof=1) if len(values[b]) > 1 else 0.0, "difference": diff,
                            "p_permutation": p, "n_permutations": n_permutations})
    return out


def permutation_test(a, b, n_permutations: int = 10000, seed: int = 0) -> tuple[float, float]:
    """Difference of means ``mean(a) - mean(b)`` and its two-sided permutation p-value, (1 + #extreme) / (1 + n)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if n_permutations < 1:
        raise ValueError(f"`n_permutations` must be >= 1, got {n_permutations}.")
    pooled = np.concatenate([a, b])
    observed = a.mean() - b.mean()
    rng = np.random.default_rng(seed)
    extreme = 0
    for start in range(0, n_permutations, 2000):
        k = min(2000, n_permutations - start)
        perm = rng.permuted(np.broadcast_to(pooled, (k, pooled.size)), axis=1)
        d = perm[:, :a.size].mean(axis=1) - perm[:, a.size:].mean(axis=1)
        extreme += int((np.abs(d) >= abs(observed) - 1e-12).sum())
    return float(observed), (1 + extreme) / (1 + n_permutations)
