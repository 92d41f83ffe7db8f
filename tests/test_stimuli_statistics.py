"""Image statistics and equalisation of ``braindive.stimuli`` against independent computations."""
import numpy as np
import pytest

from braindive.stimuli.equalise import LUMINANCE_TOLERANCE, channel, equalise, match_histograms, match_luminance, \
    match_spectrum, match_values
from braindive.stimuli.statistics import image_statistics, permutation_test, spectrum_slope


def srgb_of_luminance(y):
    """The 8-bit sRGB grey level whose linear luminance is closest to ``y`` (the standard's formula, written out)."""
    encoded = np.where(y <= 0.0031308, 12.92 * y, 1.055 * np.power(y, 1 / 2.4) - 0.055)
    return np.rint(encoded * 255).astype(np.uint8)


def linear_of_level(level):
    c = level / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def grey_image(levels, shape=(64, 64)):
    """An image whose pixels cycle through the grey ``levels`` (equal counts)."""
    flat = np.resize(np.asarray(levels, dtype=np.uint8), shape[0] * shape[1]).reshape(shape)
    return np.repeat(flat[..., None], 3, axis=2)


def test_luminance_and_rms_contrast_of_known_two_level_images():
    # half the pixels at luminance a, half at b: mean (a + b) / 2 and RMS contrast |a - b| / 2
    lo, hi = srgb_of_luminance(0.05), srgb_of_luminance(0.6)
    a, b = linear_of_level(float(lo)), linear_of_level(float(hi))
    stats = image_statistics(grey_image([lo, hi]))
    assert stats["mean_lum"] == pytest.approx((a + b) / 2, abs=1e-9)
    assert stats["rms_lum"] == pytest.approx(abs(a - b) / 2, abs=1e-9)
    # L* = 116 (Y)^(1/3) - 16 above the CIE threshold (Y_n = 1)
    la, lb = 116 * a ** (1 / 3) - 16, 116 * b ** (1 / 3) - 16
    assert stats["mean_lstar"] == pytest.approx((la + lb) / 2, abs=1e-6)
    assert stats["rms_lstar"] == pytest.approx(abs(la - lb) / 2, abs=1e-6)
    # a uniform grey image: no contrast, one grey level (entropy 0), no edges
    flat = image_statistics(grey_image([128]))
    assert flat["rms_lum"] == pytest.approx(0, abs=1e-12) and flat["entropy"] == 0 and flat["edge_density"] == 0
    # every grey level equally often: 8 bits
    assert image_statistics(grey_image(np.arange(256), (64, 64)))["entropy"] == pytest.approx(8.0)


def test_colourfulness_equals_hasler_susstrunk_on_hand_made_images():
    def published(image):
        r, g, b = (image[..., k].astype(float) for k in range(3))
        rg, yb = r - g, 0.5 * (r + g) - b
        return np.sqrt(rg.std() ** 2 + yb.std() ** 2) + 0.3 * np.sqrt(rg.mean() ** 2 + yb.mean() ** 2)

    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    assert image_statistics(np.pad(red, ((12, 12), (12, 12), (0, 0)), mode="wrap"))["colourfulness"] == \
        pytest.approx(0.3 * np.hypot(255, 127.5))  # rg = 255, yb = 127.5 everywhere
    grey = grey_image([10, 200], (32, 32))
    assert image_statistics(grey)["colourfulness"] == pytest.approx(0.0)
    checker = np.zeros((32, 32, 3), np.uint8)
    checker[::2, :, 0] = 255     # red rows
    checker[1::2, :, 2] = 255    # blue rows
    # rg: 255 / 0, yb: 127.5 / -255 in equal shares
    expected = np.hypot(127.5, 191.25) + 0.3 * np.hypot(127.5, -63.75)
    assert image_statistics(checker)["colourfulness"] == pytest.approx(expected)
    rng = np.random.default_rng(1)
    noisy = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    assert image_statistics(noisy)["colourfulness"] == pytest.approx(published(noisy))


def one_over_f(n, a, seed):
    rng = np.random.default_rng(seed)
    fy, fx = np.meshgrid(np.fft.fftfreq(n) * n, np.fft.fftfreq(n) * n, indexing="ij")
    f = np.hypot(fy, fx)
    f[0, 0] = 1
    spectrum = np.fft.fft2(rng.standard_normal((n, n))) * f ** (-a)
    spectrum[0, 0] = 0
    return np.real(np.fft.ifft2(spectrum))


@pytest.mark.parametrize("a", [0.5, 1.0, 1.5, 2.0])
def test_spectrum_slope_recovers_the_exponent_of_one_over_f_noise(a):
    for seed in range(3):
        assert spectrum_slope(one_over_f(256, a, seed)) == pytest.approx(-a, abs=0.05)
    # as an 8-bit grey image (rescaled into 0..255), through the per-image statistics (rounding noise removed)
    x = one_over_f(256, a, 7)
    image = np.repeat(np.rint((x - x.min()) / (x.max() - x.min()) * 255).astype(np.uint8)[..., None], 3, axis=2)
    assert image_statistics(image)["spectrum_slope"] == pytest.approx(-a, abs=0.05)


def test_spectrum_slope_of_a_crop_is_not_biased_by_its_borders():
    # a 128 px crop of a larger 1/f^2 field is not periodic: a plain FFT would flatten the slope towards -1
    slopes = [spectrum_slope(one_over_f(512, 2.0, seed)[:128, :128]) for seed in range(4)]
    assert np.mean(slopes) == pytest.approx(-2.0, abs=0.1)


def test_permutation_test_against_exhaustive_enumeration():
    from itertools import combinations

    a, b = np.array([3.1, 2.9, 3.6, 3.3]), np.array([2.0, 2.4, 3.0, 2.2])
    pooled = np.concatenate([a, b])
    observed = a.mean() - b.mean()
    diffs = [pooled[list(c)].mean() - np.delete(pooled, list(c)).mean() for c in combinations(range(8), 4)]
    exact = np.mean(np.abs(diffs) >= abs(observed) - 1e-12)
    diff, p = permutation_test(a, b, 20000, seed=3)
    assert diff == pytest.approx(observed)
    assert p == pytest.approx(exact, abs=0.01)


def coloured_images(n=6, size=48, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.random(3) * 0.6 + 0.2
        noise = rng.standard_normal((size, size, 3)) * rng.uniform(0.05, 0.2)
        out.append(np.rint(np.clip(base + noise, 0, 1) * 255).astype(np.uint8))
    return out


def independent_channels(image):
    """Y, L*/100 and the grey level of 8-bit pixels, through the standards' formulas written out here."""
    y = linear_of_level(image.astype(float)) @ np.array([0.2126, 0.7152, 0.0722])
    light = np.where(y > (6 / 29) ** 3, 116 * np.cbrt(y) - 16, y * 903.2963) / 100
    return {"linear": y, "lstar": light, "grey": image.astype(float) @ np.array([0.2126, 0.7152, 0.0722]) / 255}


@pytest.mark.parametrize("space,mean,std", [("linear", 0.3, 0.08), ("lstar", 0.55, 0.12), ("grey", 0.5, 0.1)])
def test_luminance_matching_sets_every_mean_and_std_within_a_grey_level(space, mean, std):
    images = coloured_images()
    result = match_luminance(images, mean=mean, std=std, space=space)
    assert not result.unmatched
    for image in result.images:
        assert image.dtype == np.uint8
        values = independent_channels(image)[space]  # measured on the written 8-bit pixels
        assert abs(values.mean() - mean) <= 1 / 255 and abs(values.std() - std) <= 1 / 255
    # default target: the images' average mean and std
    default = match_luminance(images, space=space)
    means = [independent_channels(im)[space].mean() for im in images]
    assert default.target["mean"] == pytest.approx(np.mean(means), abs=1e-4)  # L*: the XYZ matrix vs 709 weights
    assert all(abs(independent_channels(im)[space].mean() - default.target["mean"]) <= 1 / 255
               for im in default.images)
    grey = grey_image([40, 90, 200], (30, 30))  # a grey image stays grey
    out = match_luminance([grey, images[0]], space=space).images[0]
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])


def test_luminance_matching_reports_images_it_cannot_match():
    black = np.zeros((32, 32, 3), np.uint8)
    black[:2] = 255  # almost all black: no shift keeps it black and gets the std to 0.3 at a mean of 0.05
    result = match_luminance([black, coloured_images(1)[0]], mean=0.05, std=0.3)
    assert result.unmatched == {"luminance": [0]} or 0 in result.unmatched.get("luminance", [])
    with pytest.raises(ValueError, match="`mean`"):
        match_luminance([black], mean=1.5)


def test_histogram_matching_equals_scikit_image():
    exposure = pytest.importorskip("skimage.exposure")
    rng = np.random.default_rng(4)
    source, reference = rng.random((40, 50)) ** 2, rng.random((30, 30)) ** 0.5
    np.testing.assert_allclose(match_values(source, reference), exposure.match_histograms(source, reference),
                               atol=1e-12)
    # grey 8-bit images, pooled template, pixel values (SHINE's space): scikit-image on the pixels, then rounded
    greys = [grey_image(rng.integers(0, 256, 7), (24, 24)) for _ in range(3)]
    pooled = match_histograms(greys, space="grey")
    template = np.concatenate([g[..., 0].ravel() for g in greys])[None, :]
    for original, image in zip(greys, pooled.images):
        expected = exposure.match_histograms(original[..., 0], template)
        assert np.array_equal(image[..., 0], np.rint(expected).astype(np.uint8))
    # any space: the channel matched is scikit-image's result on that channel (8-bit rounding aside)
    for space in ("linear", "lstar"):
        matched = match_histograms(greys, reference=greys[0], space=space)
        for original, image in zip(greys, matched.images):
            expected = exposure.match_histograms(channel(original, space), channel(greys[0], space))
            assert np.abs(channel(image, space) - expected).max() <= 0.02


def test_spectrum_matching_gives_every_image_the_average_amplitude_keeping_phase():
    fields = [0.5 + 0.08 * one_over_f(64, a, s) / one_over_f(64, a, s).std() for s, a in enumerate((0.8, 1.6, 2.2))]
    images = [np.repeat(np.rint(np.clip(f, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2) for f in fields]
    matched = match_spectrum(images)
    target = np.mean([np.abs(np.fft.fft2(channel(im))) for im in images], axis=0)
    slopes_before = [spectrum_slope(channel(im)) for im in images]
    slopes_after = [spectrum_slope(channel(im)) for im in matched.images]
    assert np.ptp(slopes_before) > 1.0 and np.ptp(slopes_after) < 0.1
    for original, image in zip(images, matched.images):
        amplitude = np.abs(np.fft.fft2(channel(image)))
        assert np.median(np.abs(amplitude - target) / target) < 0.05
        # the phase is kept: the matched image correlates with its original
        assert np.corrcoef(channel(image).ravel(), channel(original).ravel())[0, 1] > 0.7
    with pytest.raises(ValueError, match="one size"):
        match_spectrum([images[0], images[0][:32]])


def test_equalise_runs_steps_in_order_and_rejects_unknown_steps():
    images = coloured_images(4, 32)
    result = equalise(images, ["spectrum", "luminance"], {"mean": 0.5, "std": 0.1})
    assert result.steps == ("spectrum", "luminance")
    assert all(abs(channel(im).mean() - 0.5) <= LUMINANCE_TOLERANCE for im in result.images)
    with pytest.raises(ValueError, match="among"):
        equalise(images, ["blur"])
