"""Tiny decoders for the guidance decode: loading, compatibility checks, and what the benchmark measured.

A tiny decoder is a diffusers ``AutoencoderTiny`` (TAESD's layout) that decodes the diffusion model's
latents into [-1, 1] images at a fraction of the VAE decoder's work. ``guidance_mode="fast"`` uses one
for the brain gradient only; the final image is always decoded by the full VAE. TAESD
(``madebyollin/taesd``, MIT) serves SD 1.x/2.x; ``python -m training.distill_decoder`` fits one for any
other VAE (the demo's is ``braindive/assets/demo-taesd``). A decoder folder may carry ``distill.json``, which
records the VAE it was fit for (latent channels, scaling factor) so a mismatch is caught on load.
"""
from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import torch

__all__ = ["TAESD_FOR_SCALING_FACTOR", "DISTILL_FILE", "load_tiny_decoder", "hub_tiny_decoder", "check_tiny_decoder",
           "decoder_name", "describe_recipe", "fast_description"]

logger = logging.getLogger(__name__)

# Published TAESD weights by the latent scaling factor of the VAE they reproduce (the SD 1.x/2.x VAE: 0.18215).
TAESD_FOR_SCALING_FACTOR = {0.18215: "madebyollin/taesd"}
DISTILL_FILE = "distill.json"
# Written by ``python -m benchmarks.guidance --config demo``; package data, so an installed braindive reads it too
RESULTS = Path(__file__).resolve().parent / "assets" / "measured" / "guidance_demo.json"


_OWN_KEY_WARNING = re.compile(r"The config attributes \{'block_out_channels': \[[\d, ]*\]\} were passed to AutoencoderTiny,")


def _own_config_key(record: logging.LogRecord) -> bool:
    """Drop diffusers' warning on ``block_out_channels``, a key ``AutoencoderTiny`` itself writes into its config."""
    return not _OWN_KEY_WARNING.match(record.getMessage())


def load_tiny_decoder(source, vae=None, **kwargs):
    """``AutoencoderTiny.from_pretrained(source)`` in eval mode, without gradients; checked against ``vae`` if given.

    ``source`` is a Hub id or a folder (``save_pretrained`` layout). The VAE it was fit for comes from the
    folder's ``distill.json``, or from ``TAESD_FOR_SCALING_FACTOR`` for the published TAESD ids.
    """
    from diffusers import AutoencoderTiny

    config_logger = logging.getLogger("diffusers.configuration_utils")
    config_logger.addFilter(_own_config_key)
    try:
        decoder = AutoencoderTiny.from_pretrained(source, **kwargs).eval().requires_grad_(False)
    finally:
        config_logger.removeFilter(_own_config_key)
    decoder.name_or_path = str(source)
    record = Path(source) / DISTILL_FILE
    if record.is_file():
        decoder.fit_for = json.loads(record.read_text())["vae"]
    else:
        scale = next((s for s, hub_id in TAESD_FOR_SCALING_FACTOR.items() if hub_id == str(source)), None)
        decoder.fit_for = None if scale is None else {"latent_channels": 4, "scaling_factor": scale}
    if vae is not None:
        check_tiny_decoder(decoder, vae)
    return decoder


def hub_tiny_decoder(vae):
    """The published TAESD for ``vae`` (by its scaling factor) from the Hub, or None when none fits or it cannot load."""
    scale = vae.config.get("scaling_factor")
    hub_id = next((i for s, i in TAESD_FOR_SCALING_FACTOR.items() if scale and math.isclose(s, scale)), None)
    if hub_id is None or vae.config.get("latent_channels") != 4:
        return None
    try:
        return load_tiny_decoder(hub_id, vae)
    except (OSError, ValueError) as error:  # offline and not cached, or no such files
        logger.warning("Tiny decoder %s unavailable (%s); fast guidance decodes with the full VAE.", hub_id, error)
        return None


def decoder_name(decoder) -> str:
    """A tiny decoder's name for messages: where it was loaded from, else its class."""
    return getattr(decoder, "name_or_path", None) or type(decoder).__name__


def _upsampling(decoder) -> int | None:
    config = getattr(decoder, "config", None)
    if config is None or "decoder_block_out_channels" not in config:
        return None
    return config["upsampling_scaling_factor"] ** (len(config["decoder_block_out_channels"]) - 1)


def check_tiny_decoder(decoder, vae) -> None:
    """Raise ``ValueError`` naming ``decoder`` if it cannot decode ``vae``'s latents like ``vae`` does.

    Checks the latent channels, the spatial upsampling (the VAE's ``2 ** (blocks - 1)``), RGB output and,
    when recorded, the latent scaling factor the decoder was fit for.
    """
    name, config = decoder_name(decoder), getattr(decoder, "config", {})
    if not callable(getattr(decoder, "decode", None)):
        raise ValueError(f"Tiny decoder {name} has no `decode` method; use a diffusers AutoencoderTiny.")
    channels = config.get("latent_channels")
    if channels is not None and channels != vae.config.latent_channels:
        raise ValueError(f"Tiny decoder {name} takes {channels} latent channels; the model's VAE has "
                         f"{vae.config.latent_channels}.")
    vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    factor = _upsampling(decoder)
    if factor is not None and factor != vae_factor:
        raise ValueError(f"Tiny decoder {name} upsamples latents {factor}x; the model's VAE {vae_factor}x.")
    if config.get("out_channels", 3) != 3:
        raise ValueError(f"Tiny decoder {name} outputs {config['out_channels']} channels; guidance needs RGB (3).")
    fit_for = getattr(decoder, "fit_for", None)
    if fit_for and not math.isclose(fit_for["scaling_factor"], vae.config.scaling_factor, rel_tol=1e-4):
        raise ValueError(f"Tiny decoder {name} was fit for latents with scaling factor {fit_for['scaling_factor']}; "
                         f"the model's VAE uses {vae.config.scaling_factor}.")


def describe_recipe(options: dict) -> str:
    """A fast recipe's switches in words (``fast_options`` as the guidance benchmark records them)."""
    parts = ["tiny decoder on the gradient path"] if options.get("tiny_decoder") else []
    if options.get("skip_unet_backprop"):
        parts.append("no UNet backprop")
    every, dense = options.get("guide_every", 1), options.get("dense_start", 0.0)
    if every > 1:
        nth = {2: "2nd", 3: "3rd"}.get(every, f"{every}th")
        parts.append(f"gradient at every step for the first {dense:.0%}, then every {nth} step" if dense > 0
                     else f"gradient every {nth} step")
    if options.get("decode_scale", 1.0) < 1:
        parts.append(f"guidance decode at {options['decode_scale']:g}x size")
    return ", ".join(parts) or "no approximation"


def _measured_regions(results: Path) -> list[dict]:
    """The demo benchmark's reports: ``results`` (FFA) first, then its per-region siblings (``<stem>_<ROI>.json``)."""
    paths = [results, *sorted(results.parent.glob(f"{results.stem}_*.json"))]
    return [json.loads(path.read_text()) for path in paths if path.is_file()]


def fast_description(results=RESULTS) -> str:
    """What ``fast`` is and kept on the demo, per region, from the guidance benchmark's results files."""
    try:
        reports = _measured_regions(Path(results))
        rows = [(report["target"], report["modes"]["fast"]) for report in reports]
        recipe = describe_recipe(rows[0][1]["options"].get("fast_options") or {})
        gains = ", ".join(f"{row['gain_fraction_of_reference']:.0%} ({target})" for target, row in rows)
        speeds = sorted(row["speedup_vs_reference"] for _, row in rows)
        works = [row["work_ratio_vs_reference"] for _, row in rows if row.get("work_ratio_vs_reference")]
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return "Fast: approximate guidance (not measured on this install)."
    speed = f"{speeds[0]:.1f}x" if f"{speeds[0]:.1f}" == f"{speeds[-1]:.1f}" else f"{speeds[0]:.1f}-{speeds[-1]:.1f}x"
    work_text = f", {min(works):.1f}x less work" if works else ""
    return (f"Fast ({recipe}): kept {gains} of the published computation's gain at {speed} its images/s{work_text} "
            f"(demo model, {len(reports[0]['seeds'])} seeds, {reports[0]['date']}).")
