"""The offline demo bundle: a tiny SD-family model, a demo encoder on S1, the S1 subject.

``load()`` works with no network and no GPU, through the same ``BrainDiVEPipeline.from_pretrained``
path as a real checkpoint. The diffusion model is ``braindive/assets/demo-sd``: a tiny Stable-Diffusion-layout
model (VAE, UNet, CLIP text encoder) trained on procedural toy scenes, coloured shapes on smooth
backgrounds, by ``training.build_demo_diffusion`` (25 min on 2 CPU cores). Without that folder the
same architecture is built from config with fixed random weights (colour textures, not scenes) and
cached. The encoder is ``braindive/assets/demo-encoder`` (fit by ``training.build_demo_encoder`` on a synthetic
subject) when present, otherwise a seeded encoder whose ROIs have distinct tuning. Everything here
is a demo, and says so.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .cache import cache_dir, private_tmp
from .demo_components import DEMO_TOWER_CONFIG, DEMO_TOWER_NAME, build_demo_tower
from .encoders import BrainEncoder, ClipLinearEncoder, EncoderConfig, load_encoder
from .pipeline import BrainDiVEPipeline, FastGuidance
from .subjects import Subject, load_subject

__all__ = ["DemoBundle", "load", "configure_fast", "build_diffusion_bundle", "volume_encoder_folder", "DEMO_LABEL",
           "DEMO_VOLUME_SUBJECT"]

BUNDLE_VERSION = 1
DEMO_LABEL = "DEMO: tiny diffusion model trained on toy shapes + synthetic encoder on pycortex S1 (not real brain data)"
RANDOM_DEMO_LABEL = "DEMO: tiny random-weight diffusion model + synthetic encoder on pycortex S1 (not real brain data)"
ASSETS = Path(__file__).resolve().parent / "assets"
ASSET_ENCODER = ASSETS / "demo-encoder"
ASSET_DIFFUSION = ASSETS / "demo-sd"
ASSET_TINY_DECODER = ASSETS / "demo-taesd"  # training.distill_decoder of its VAE, for fast guidance
DEMO_VOLUME_SUBJECT = "S1-fullhead"  # the built-in volume space; its demo encoder is derived from the S1 one
# The demo's `fast`, picked from the guidance benchmark (benchmarks/RESULTS.md, config `demo`), with the tiny decoder
DEMO_FAST_RECIPE = FastGuidance(skip_unet_backprop=True, guide_every=4, dense_start=0.2, decode_scale=0.5)
# Scale measured on braindive/assets/demo-sd with the demo encoder (128 px, its training size; 25 DPM steps, SAG 0.75,
# seeds 0-5; mean predicted ROI activation at scales 0 / 10 / 20 / 40 / 130):
#   FFA 0.29 / 1.53 / 1.78 / 1.93 / 1.91   PPA -0.72 / 1.35 / 1.67 / 1.79 / 1.83
#   EBA 2.76 / 4.31 / 4.58 / 4.63 / 4.47   RSC 6.02 / 6.75 / 6.87 / 6.89 / 5.93
# 20 reaches 91-98% of the best gain while the scenes keep their shapes; the paper's 130 suits real SD + CLIP.


@dataclass
class DemoBundle:
    pipe: BrainDiVEPipeline
    encoder: BrainEncoder
    subject: Subject
    label: str = DEMO_LABEL  # its defaults (size, steps, scale) are braindive.presets.PRESETS["demo"]


def _tiny_components(seed: int = 0) -> dict:
    """Tiny UNet / VAE (8x downsampling, like SD) / text encoder / tokenizer, seeded."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 32, 32), norm_num_groups=16,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=256,
    )
    torch.manual_seed(seed + 2)
    tokenizer = build_offline_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


def build_offline_tokenizer():
    """A byte-level CLIP tokenizer (no merges) made without downloading anything."""
    import tempfile

    from transformers import CLIPTokenizer

    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = [chr(b) for b in printable] + [chr(256 + n) for n in range(256 - len(printable))]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"), model_max_length=77)


def build_diffusion_bundle(folder, seed: int = 0) -> Path:
    """Write the tiny components in Stable Diffusion's folder layout (``model_index.json`` + subfolders)."""
    return save_diffusion_folder(_tiny_components(seed), folder)


def save_diffusion_folder(parts: dict, folder) -> Path:
    """Save SD components (unet, vae, text_encoder, tokenizer, scheduler) in Stable Diffusion's folder layout.

    Written under a private name beside ``folder`` and renamed into place, so a reader never sees half a model.
    """
    from diffusers import StableDiffusionPipeline

    folder = Path(folder)
    tmp = private_tmp(folder)
    sd = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    sd.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    try:
        tmp.rename(folder)
    except OSError:  # another process wrote the folder first
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / "model_index.json").is_file():
            raise
    return folder


def diffusion_bundle_path() -> Path:
    """``braindive/assets/demo-sd`` (trained), else the seeded random-weight folder in the cache, built on first use."""
    if (ASSET_DIFFUSION / "model_index.json").is_file():
        return ASSET_DIFFUSION
    folder = cache_dir("demo") / f"tiny-sd-v{BUNDLE_VERSION}"
    if not (folder / "model_index.json").is_file():
        build_diffusion_bundle(folder)
    return folder


def seeded_demo_encoder(subject: Subject, seed: int = 0) -> ClipLinearEncoder:
    """An encoder on ``subject`` whose ROIs prefer different directions of the tiny tower's features."""
    config = EncoderConfig.for_subject(
        subject, backbone=DEMO_TOWER_NAME, pretrained=None, backbone_config=DEMO_TOWER_CONFIG, training={"kind": "seeded demo tuning, not fit to data"},
    )
    encoder = ClipLinearEncoder(config, tower=build_demo_tower(seed))
    rng = np.random.default_rng(seed)
    dim = config.embed_dim
    weight = 0.2 * rng.standard_normal((subject.n_voxels, dim))
    for name in subject.roi_names:
        direction = rng.standard_normal(dim)
        weight[subject.rois[name]] += direction / np.linalg.norm(direction)
    with torch.no_grad():
        encoder.head.weight.copy_(torch.from_numpy(weight).float())
        encoder.head.bias.zero_()
    return encoder


def resampled_encoder(encoder: ClipLinearEncoder, source: Subject, target: Subject) -> ClipLinearEncoder:
    """``encoder`` of surface subject ``source`` moved onto ``target``, a voxel space drawn on the same surface.

    Each target voxel's head row (weights and bias) is the mean of the rows of the source voxels on the
    surface vertices that show it (``braindive.flatmap``'s voxel mapping); voxels no source vertex shows
    predict 0. The tower is shared. For the demo: a volume encoder on ``S1-fullhead`` from the S1 demo encoder.
    """
    from .flatmap import voxel_mapping

    if source.kind != "surface" or target.surface != source.surface:
        raise ValueError(f"`source` must be a surface subject on {target.surface!r} (the surface `target` is drawn on), "
                         f"got {source.label!r} on {source.surface!r}.")
    encoder.check_subject(source)
    target_of_vertex = voxel_mapping(target).voxel_of_vertex[source.vertices]
    shown = np.flatnonzero(target_of_vertex >= 0)
    sums = np.zeros((target.n_voxels, encoder.head.in_features + 1))
    rows = np.concatenate([encoder.head.weight.detach().double().numpy(),
                           encoder.head.bias.detach().double().numpy()[:, None]], axis=1)
    np.add.at(sums, target_of_vertex[shown], rows[shown])
    counts = np.bincount(target_of_vertex[shown], minlength=target.n_voxels)[:, None]
    rows = sums / np.maximum(counts, 1)
    config = EncoderConfig.for_subject(target, backbone=encoder.config.backbone, pretrained=encoder.config.pretrained,
                                       backbone_config=encoder.config.backbone_config,
                                       training={**encoder.config.training, "resampled_from": source.label})
    moved = ClipLinearEncoder(config, tower=encoder.tower)
    with torch.no_grad():
        moved.head.weight.copy_(torch.from_numpy(rows[:, :-1]).float())
        moved.head.bias.copy_(torch.from_numpy(rows[:, -1]).float())
    return moved


def volume_encoder_folder(target: str = DEMO_VOLUME_SUBJECT) -> Path:
    """The demo encoder resampled onto the volume subject ``target`` (``resampled_encoder``), as a checkpoint folder.

    Derived from ``assets/demo-encoder`` on first use (a few seconds) and cached, keyed by the source
    checkpoint's files and the target's fingerprint, so a changed asset or voxel space is derived again.
    """
    source_subject, volume = load_subject("S1"), load_subject(target)
    digest = hashlib.sha256(volume.fingerprint.encode())
    for name in ("config.json", "head.safetensors", "backbone.safetensors"):
        path = ASSET_ENCODER / name
        digest.update(path.read_bytes() if path.is_file() else b"seeded")
    folder = cache_dir("demo") / f"encoder-{target}-{digest.hexdigest()[:16]}"
    if not (folder / "config.json").is_file():
        source = (load_encoder(ASSET_ENCODER, subject=source_subject) if (ASSET_ENCODER / "config.json").is_file()
                  else seeded_demo_encoder(source_subject))
        tmp = private_tmp(folder)
        resampled_encoder(source, source_subject, volume).save(tmp)
        try:
            tmp.rename(folder)
        except OSError:  # another process derived it first
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def configure_fast(pipe: BrainDiVEPipeline) -> BrainDiVEPipeline:
    """Give a demo pipeline its measured ``fast`` recipe: ``DEMO_FAST_RECIPE`` through ``braindive/assets/demo-taesd``.

    With the random-weight model (no ``braindive/assets/demo-sd``), or without that decoder, ``fast`` is
    ``FastGuidance()`` through the full VAE: the recipe was measured only on the trained model.
    """
    if (ASSET_TINY_DECODER / "config.json").is_file() and diffusion_bundle_path() == ASSET_DIFFUSION:
        from .tiny_decoder import load_tiny_decoder

        pipe.set_fast_recipe(replace(DEMO_FAST_RECIPE, tiny_decoder=load_tiny_decoder(ASSET_TINY_DECODER, pipe.vae)))
    else:
        pipe.set_tiny_decoder(None)
        pipe.set_fast_recipe(FastGuidance())
    return pipe


def load(device: str | torch.device = "cpu") -> DemoBundle:
    """The offline demo: tiny pipeline + demo encoder + S1."""
    subject = load_subject("S1")
    if (ASSET_ENCODER / "config.json").is_file():
        encoder = load_encoder(ASSET_ENCODER, subject=subject)
    else:
        encoder = seeded_demo_encoder(subject)
    folder = diffusion_bundle_path()
    pipe = BrainDiVEPipeline.from_pretrained(folder, encoder=encoder)
    pipe.set_progress_bar_config(disable=True)
    configure_fast(pipe)
    label = DEMO_LABEL if folder == ASSET_DIFFUSION else RANDOM_DEMO_LABEL
    return DemoBundle(pipe=pipe.to(device), encoder=encoder, subject=subject, label=label)
