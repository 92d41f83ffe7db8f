"""The guidance benchmark's set-ups: model configs (SD 2.1-base's real architectures, scaled-down ones),
pipelines with their encoders, the demo's trained models, targets and random-weight tiny decoders."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

import braindive as bd
from braindive.demo import _tiny_components, build_offline_tokenizer
from braindive.encoders import build_clip_tower
from braindive.pipeline import BrainDiVEPipeline

SD21_UNET = {
    "act_fn": "silu", "attention_head_dim": [5, 10, 20, 20], "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "dual_cross_attention": False, "flip_sin_to_cos": True, "freq_shift": 0,
    "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
    "num_class_embeds": None, "only_cross_attention": False, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "use_linear_projection": True,
}
SD21_VAE = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
    "sample_size": 512, "up_block_types": ["UpDecoderBlock2D"] * 4,
}
SD21_TEXT = {
    "attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "gelu", "hidden_size": 1024, "initializer_factor": 1.0,
    "initializer_range": 0.02, "intermediate_size": 4096, "layer_norm_eps": 1e-05, "max_position_embeddings": 77,
    "num_attention_heads": 16, "num_hidden_layers": 23, "projection_dim": 512, "vocab_size": 49408,
}
SD21_SCHEDULER = {
    "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
    "num_train_timesteps": 1000, "prediction_type": "epsilon", "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1,
}
SMALL_VIT = {  # a ViT-S/16-like OpenCLIP tower for the medium config
    "embed_dim": 256,
    "vision_cfg": {"image_size": 224, "layers": 6, "width": 384, "patch_size": 16, "head_width": 64},
    "text_cfg": {"context_length": 77, "vocab_size": 1000, "width": 64, "heads": 2, "layers": 1},
}
TINY_VIT = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "patch_size": 32, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 1000, "width": 32, "heads": 2, "layers": 1},
}


@dataclasses.dataclass(frozen=True)
class Config:
    """One benchmark set-up: model sizes, image size, defaults for steps/seeds/batch, guidance scale."""

    name: str
    size: int
    steps: int
    seeds: int
    batch: int
    scale: float
    n_voxels: int
    n_target: int
    tiny_decoder_width: int  # channels of the random AutoencoderTiny timed as fast's tiny_decoder


CONFIGS = {
    "tiny": Config("tiny", size=64, steps=6, seeds=8, batch=8, scale=300.0, n_voxels=1000, n_target=50,
                   tiny_decoder_width=8),
    "demo": Config("demo", size=128, steps=25, seeds=16, batch=8, scale=20.0, n_voxels=37926, n_target=0,
                   tiny_decoder_width=8),
    "medium": Config("medium", size=256, steps=10, seeds=4, batch=4, scale=300.0, n_voxels=20000, n_target=300,
                     tiny_decoder_width=16),
    "sd21": Config("sd21", size=512, steps=50, seeds=16, batch=8, scale=130.0, n_voxels=30000, n_target=300,
                   tiny_decoder_width=64),
}


def _medium_components() -> dict:
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(64, 128, 256),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=128, attention_head_dim=(2, 4, 8), use_linear_projection=True,
    )
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64, 128, 128),
                        layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=256, norm_num_groups=32)
    tokenizer = build_offline_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                scheduler=PNDMScheduler.from_config(SD21_SCHEDULER))


def _sd21_components() -> dict:
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    tokenizer = build_offline_tokenizer()
    text = CLIPTextConfig(**SD21_TEXT, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id)
    return dict(unet=UNet2DConditionModel(**SD21_UNET), vae=AutoencoderKL(**SD21_VAE),
                text_encoder=CLIPTextModel(text), tokenizer=tokenizer, scheduler=PNDMScheduler.from_config(SD21_SCHEDULER))


def _encoder(config: Config) -> bd.ClipLinearEncoder:
    """A CLIP+linear encoder with seeded random tower and head (``n_voxels`` voxels)."""
    backbone, tower_config = {"tiny": ("braindive-bench-tiny-vit", TINY_VIT),
                              "medium": ("braindive-bench-small-vit", SMALL_VIT),
                              "sd21": ("ViT-B-16", None)}[config.name]
    torch.manual_seed(1)
    tower = build_clip_tower(backbone, None, tower_config)
    encoder_config = bd.EncoderConfig(n_voxels=config.n_voxels, subject="bench", voxel_space="bench",
                                      backbone=backbone, pretrained=None, backbone_config=tower_config)
    encoder = bd.ClipLinearEncoder(encoder_config, tower=tower)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        encoder.head.weight.copy_(torch.from_numpy(rng.standard_normal(encoder.head.weight.shape)).float())
        encoder.head.bias.zero_()
    return encoder.eval()


def build(config: Config, device: str, model: str | None = None) -> BrainDiVEPipeline:
    """The config's pipeline (DPM-Solver, the paper's scheduler) with its encoder, on ``device``."""
    if config.name == "demo":
        return bd.demo.load(device).pipe
    if model:
        pipe = BrainDiVEPipeline.from_pretrained(model)
    else:
        parts = {"tiny": _tiny_components, "medium": _medium_components, "sd21": _sd21_components}[config.name]()
        pipe = BrainDiVEPipeline(**parts)
        pipe.set_scheduler("dpm")
    pipe.set_encoder(_encoder(config))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def target(config: Config, roi: str = "FFA") -> bd.Objective:
    """Maximise ``roi`` of S1 for the demo config, else the mean of the first ``n_target`` voxels."""
    if config.name == "demo":
        return bd.Objective.maximize(bd.load_subject("S1").roi(roi), label=roi)
    return bd.Objective.maximize(np.arange(config.n_target), label="bench target")


def tiny_decoder(config: Config, device: str):
    """A random-weight AutoencoderTiny (TAESD's architecture at ``tiny_decoder_width`` channels): speed only."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(2)
    width = (config.tiny_decoder_width,) * 4
    return AutoencoderTiny(encoder_block_out_channels=width, decoder_block_out_channels=width).to(device).eval()
