"""FLOP projection of the fast recipes for SD 2.1-base at 512 px, with TAESD's layout as the tiny decoder.

    python -m benchmarks.decoder_flops [--steps 50]

Counts (torch's matmul/convolution/attention formulas) one forward, and one forward plus the backward
to the input, of each part of a guided step, on SD 2.1-base's real architectures with random weights
on the ``meta`` device (shapes only, nothing is computed): the UNet, the VAE decoder and TAESD's decoder
(diffusers ``AutoencoderTiny`` defaults = ``madebyollin/taesd``); the OpenCLIP ViT-B/16 tower runs on CPU.
Per-image work is then assembled per recipe with ``recipe_gflop``; the same assembly on the demo's
models is printed beside the demo benchmark's directly counted figures as a check of the formula.
Writes ``results/decoder_flops.json`` and the "Config `sd21 FLOP projection`" part of RESULTS.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import torch

from benchmarks.counters import FlopCount
from benchmarks.guidance import HERE, write_section
from benchmarks.guidance_setups import SD21_UNET, SD21_VAE
from braindive.pipeline import FastGuidance

__all__ = ["RECIPES", "recipe_gflop", "parts_gflop", "main"]

# name -> (skip_unet_backprop, guide_every, decoder: "vae" or "tiny", decode_scale: 1 or 0.5, dense_start)
RECIPES = {
    "reference": None,
    "exact": (False, 1, "vae", 1, 0.0),
    "skip_unet_backprop, guide_every=2 (the default until 2026-11-29), without tiny decoder": (True, 2, "vae", 1, 0.0),
    "FastGuidance() without tiny decoder (skip_unet_backprop, guide_every=4, dense_start=0.2)": (True, 4, "vae", 1, 0.2),
    "tiny_decoder alone": (False, 1, "tiny", 1, 0.0),
    "skip_unet_backprop, guide_every=2, tiny decoder": (True, 2, "tiny", 1, 0.0),
    "FastGuidance() with tiny decoder": (True, 4, "tiny", 1, 0.2),
    "the demo's recipe (skip_unet_backprop, guide_every=4, dense_start=0.2, decode_scale=0.5, tiny decoder)":
        (True, 4, "tiny", 0.5, 0.2),
    "unguided": "unguided",
}


def _gflop(fn) -> float:
    counter = FlopCount()
    with counter:
        fn()
    return counter.flops / 1e9


def parts_gflop(unet, vae, tiny, encoder, latents, embeds, image) -> dict:
    """GFLOP of the forward (``_f``) and forward + input backward (``_fb``) of each part of a step.

    ``_half_fb``: the decoders on latents of half the side (``decode_scale=0.5``).
    """
    def fwd_bwd(fn, x):  # the gradient to the input only, as the pipeline asks for it (no weight gradients)
        x = x.detach().requires_grad_()
        return lambda: torch.autograd.grad(fn(x).float().sum(), x)

    t = torch.tensor([500], device=latents.device)
    unet_fn = lambda x: unet(x, t, encoder_hidden_states=embeds).sample  # noqa: E731
    with torch.no_grad():
        parts = {"unet_f": _gflop(lambda: unet_fn(latents)), "vae_f": _gflop(lambda: vae.decode(latents).sample),
                 "encoder_f": _gflop(lambda: encoder(image))}
    parts.update(unet_fb=_gflop(fwd_bwd(unet_fn, latents)), vae_fb=_gflop(fwd_bwd(lambda x: vae.decode(x).sample, latents)),
                 tiny_fb=_gflop(fwd_bwd(lambda x: tiny.decode(x).sample, latents)),
                 encoder_fb=_gflop(fwd_bwd(encoder, image)))
    half = latents[..., ::2, ::2]
    parts.update(vae_half_fb=_gflop(fwd_bwd(lambda x: vae.decode(x).sample, half)),
                 tiny_half_fb=_gflop(fwd_bwd(lambda x: tiny.decode(x).sample, half)))
    return parts


def recipe_gflop(parts: dict, steps: int, recipe) -> float:
    """Per-image GFLOP of a recipe with SAG on (one extra UNet forward per step), CFG off, final VAE decode + encoder."""
    final = parts["vae_f"] + parts["encoder_f"]
    if recipe == "unguided":
        return steps * 2 * parts["unet_f"] + final
    if recipe is None:  # the published step: UNet, SAG's pass, a second UNet pass with gradients, decode, encoder
        return steps * (2 * parts["unet_f"] + parts["unet_fb"] + parts["vae_fb"] + parts["encoder_fb"]) + final
    skip, every, decoder, scale, dense_start = recipe
    schedule = FastGuidance(guide_every=every, dense_start=dense_start)
    guided = sum(schedule.guides_at(i, steps) for i in range(steps))
    main_pass = (steps - guided) * parts["unet_f"] + guided * (parts["unet_f"] if skip else parts["unet_fb"])
    decode = parts[f"{decoder}_half_fb" if scale == 0.5 else f"{decoder}_fb"]
    return steps * parts["unet_f"] + main_pass + guided * (decode + parts["encoder_fb"]) + final


def _sd21_parts() -> dict:
    from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel

    from braindive.encoders import build_clip_tower

    torch.manual_seed(0)
    tower = build_clip_tower("ViT-B-16", None).eval().requires_grad_(False)  # OpenCLIP cannot build on meta: CPU
    with torch.device("meta"):
        unet, vae, tiny = UNet2DConditionModel(**SD21_UNET), AutoencoderKL(**SD21_VAE), AutoencoderTiny()
        for module in (unet, vae, tiny):
            module.eval().requires_grad_(False)
        latents, embeds = torch.empty(1, 4, 64, 64), torch.empty(1, 77, 1024)
    return parts_gflop(unet, vae, tiny, tower, latents, embeds, torch.rand(1, 3, 224, 224))


def _demo_parts() -> dict:
    import braindive as bd

    pipe = bd.demo.load().pipe
    if pipe.tiny_decoder is None:
        raise ValueError("The demo has no distilled decoder (braindive/assets/demo-taesd); "
                         "run training.distill_decoder first.")
    embeds = pipe.encode_prompt("", None, 1, False)
    return parts_gflop(pipe.unet, pipe.vae, pipe.tiny_decoder, pipe.encoder, torch.randn(1, 4, 16, 16), embeds,
                       torch.rand(1, 3, 128, 128))


def markdown(report: dict) -> str:
    sd, demo = report["sd21"], report.get("demo")
    lines = [
        "### Config `sd21 FLOP projection`", "",
        f"Command: `python -m benchmarks.decoder_flops`. Date: {report['date']}. SD 2.1-base architectures (random "
        f"weights on the meta device: counted, not run), 512 px, {report['steps']} steps, SAG on, CFG off, ViT-B/16 "
        "encoder; tiny decoder = TAESD's layout (`AutoencoderTiny()`, 1.2M decoder parameters). Per step parts "
        f"(GFLOP): UNet forward {sd['parts']['unet_f']:.0f}, UNet forward+backward {sd['parts']['unet_fb']:.0f}, VAE decoder "
        f"forward+backward {sd['parts']['vae_fb']:.0f}, TAESD decoder forward+backward {sd['parts']['tiny_fb']:.0f} "
        f"({sd['parts']['tiny_half_fb']:.0f} at decode_scale 0.5), "
        f"encoder forward+backward {sd['parts']['encoder_fb']:.0f}. Projected work ratio = reference GFLOP / recipe GFLOP "
        "(the images/s ratio a compute-bound GPU would approach).", "",
        "| recipe | GFLOP / image (SD 2.1-base) | projected work ratio vs reference | demo: formula GFLOP / image |",
        "|---|---|---|---|",
    ]
    for name, row in sd["recipes"].items():
        check = "n/a" if not demo else f"{demo['recipes'][name]['gflop']:.4g}"
        lines.append(f"| {name} | {row['gflop']:.0f} | {row['work_ratio']:.2f}x | {check} |")
    if demo:
        lines += ["", f"- The demo column applies the same formula to the demo's models ({report['demo_steps']} steps); "
                  "compare it with the GFLOP / image counted directly in `Config demo`."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.decoder_flops", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--demo-steps", type=int, default=25)
    parser.add_argument("--no-demo", dest="demo", action="store_false", help="skip the formula check on the demo")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--results-md", default=str(HERE / "RESULTS.md"))
    args = parser.parse_args(argv)

    def table(parts, steps):
        ref = recipe_gflop(parts, steps, None)
        recipes = {name: {"gflop": recipe_gflop(parts, steps, r)} for name, r in RECIPES.items()}
        for row in recipes.values():
            row["work_ratio"] = ref / row["gflop"]
        return {"parts": parts, "recipes": recipes}

    report = {"date": datetime.date.today().isoformat(), "steps": args.steps, "demo_steps": args.demo_steps,
              "sd21": table(_sd21_parts(), args.steps)}
    if args.demo:
        report["demo"] = table(_demo_parts(), args.demo_steps)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "decoder_flops.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    if args.results_md:
        write_section(Path(args.results_md), text, "sd21 FLOP projection")
    print(text)
    return report


if __name__ == "__main__":
    main()
