"""Encoders to fit and their image features, extracted once and cached on disk.

The features are exactly what ``ClipLinearEncoder.embed`` returns (L2-normalised image embeddings),
so a head fit on them is the head of that encoder. The cache file is keyed by the dataset's image
hash and the tower's identity (name, pretrained tag, and a hash of its weights when they are not a
published checkpoint).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time

import numpy as np
import torch
from tqdm import tqdm

from braindive.cache import cache_dir
from braindive.demo_components import DEMO_TOWER_CONFIG, DEMO_TOWER_NAME, build_demo_tower
from braindive.encoders import ClipLinearEncoder, EncoderConfig, build_clip_tower

__all__ = ["build_encoder", "resolve_device", "encoder_key", "embed_images", "dataset_features"]

log = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; any other value is used as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"`--device` must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}.") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"`--device` {device!r} asked for CUDA, but no CUDA device is available.")
    return resolved


def build_encoder(subject, backbone: str, pretrained: str | None) -> ClipLinearEncoder:
    """A ``ClipLinearEncoder`` for ``subject`` with a zero head.

    ``pretrained`` "none" (or None) means random tower weights, seeded with 0, that are then saved in
    the checkpoint; ``braindive-tiny-vit`` is the demo's tiny tower (``build_demo_tower``).
    """
    pretrained = None if pretrained in (None, "", "none", "None") else pretrained
    backbone_config = None
    if backbone == DEMO_TOWER_NAME:
        if pretrained is not None:
            raise ValueError(f"`--pretrained` must be 'none' for {DEMO_TOWER_NAME!r}, got {pretrained!r}.")
        tower, backbone_config = build_demo_tower(), DEMO_TOWER_CONFIG
        log.info("%s is the offline demo's tiny stand-in for OpenCLIP ViT-B/16: its weights are random by design "
                 "(seed 0, identical on every machine), so open_clip's 'Model initialized randomly' is expected. "
                 "Real encoders use --backbone ViT-B-16 --pretrained laion2b_s34b_b88k.", DEMO_TOWER_NAME)
    else:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            tower = build_clip_tower(backbone, pretrained)
    config = EncoderConfig.for_subject(subject, backbone=backbone, pretrained=pretrained,
                                       backbone_config=backbone_config)
    encoder = ClipLinearEncoder(config, tower=tower)
    torch.nn.init.zeros_(encoder.head.weight)
    torch.nn.init.zeros_(encoder.head.bias)
    return encoder


def encoder_key(encoder: ClipLinearEncoder) -> str:
    """Identity of the encoder's feature extractor (tower + preprocessing)."""
    c = encoder.config
    parts = {"backbone": c.backbone, "pretrained": c.pretrained, "backbone_config": c.backbone_config,
             "input_size": list(encoder.input_size), "mean": encoder.mean.flatten().tolist(),
             "std": encoder.std.flatten().tolist()}
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode())
    if c.pretrained is None:
        for name, tensor in sorted(encoder.tower.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def embed_images(encoder: ClipLinearEncoder, images, rows: np.ndarray | None = None, *, batch_size: int = 64,
                 device: str = "auto") -> np.ndarray:
    """``encoder.embed`` of ``images[rows]`` (uint8 ``[n, H, W, 3]`` array or h5py dataset) as float32 ``[n, dim]``.

    Batched, with mixed precision (fp16 autocast) on CUDA.
    """
    if batch_size < 1:
        raise ValueError(f"`--batch-size` must be >= 1, got {batch_size}.")
    rows = np.arange(images.shape[0]) if rows is None else np.asarray(rows)
    dev = resolve_device(device)
    encoder = encoder.to(dev).eval()
    out = np.empty((len(rows), encoder.config.embed_dim), np.float32)
    for start in tqdm(range(0, len(rows), batch_size), desc="features", unit="batch"):
        x = torch.from_numpy(np.ascontiguousarray(images[rows[start:start + batch_size]])).to(dev)
        x = x.permute(0, 3, 1, 2).float().div_(255)
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=dev.type == "cuda"):
            out[start:start + len(x)] = encoder.embed(x).float().cpu().numpy()
    return out


def dataset_features(encoder: ClipLinearEncoder, dataset, split: str, *, batch_size: int = 64, device: str = "auto",
                     use_cache: bool = True) -> np.ndarray:
    """Features of the images of ``split`` of an ``EncodingDataset``, cached in ``cache_dir("features")``."""
    rows = dataset.image_index(split)
    images_key = hashlib.sha256(dataset.images_sha256.encode() + rows.astype(np.int64).tobytes()).hexdigest()
    path = cache_dir("features") / f"{images_key[:16]}-{encoder_key(encoder)[:16]}-{split}.npy"
    if use_cache and path.is_file():
        log.info("%s features from cache %s", split, path)
        return np.load(path)
    start = time.perf_counter()
    out = embed_images(encoder, dataset.images, rows, batch_size=batch_size, device=device)
    log.info("%s features of %d images in %.1f s", split, len(rows), time.perf_counter() - start)
    if use_cache:
        tmp = path.with_name(f".{path.name}.tmp.npy")
        np.save(tmp, out)
        tmp.replace(path)
    return out
