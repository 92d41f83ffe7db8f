"""Brain encoders: images -> predicted fMRI activity per voxel.

``ClipLinearEncoder`` is the paper's encoder: a frozen OpenCLIP image tower, its preprocessing done
in torch (differentiable bilinear resize to the tower's input size, its mean/std), the L2-normalised
image embedding, then a linear voxelwise head with bias.

A checkpoint is a folder (or a Hugging Face Hub repo with the same files)::

    config.json          EncoderConfig as JSON (backbone, pretrained tag, subject name, label and
                         fingerprint of its voxel space, training)
    head.safetensors     weight [n_voxels, embed_dim], bias [n_voxels]
    backbone.safetensors image-tower weights; only when ``pretrained`` is None (e.g. the demo's tiny
                         tower), otherwise OpenCLIP fetches the ``pretrained`` weights itself
    subject.npz          the subject file, when the subject is not built in

An encoder belongs to the voxel space whose ``Subject.fingerprint`` it records; ``check_subject``
compares fingerprints (checkpoints from before fingerprints: name and voxel count, with a warning).

Weights are read only from safetensors; nothing is unpickled.
"""
from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import threading
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .cache import private_tmp

__all__ = ["EncoderConfig", "BrainEncoder", "ClipLinearEncoder", "PatchEmbedding", "load_encoder", "ENCODERS",
           "resolve_checkpoint", "read_config", "TowerCache"]

CONFIG_NAME = "config.json"
HEAD_NAME = "head.safetensors"
BACKBONE_NAME = "backbone.safetensors"
SUBJECT_NAME = "subject.npz"  # beside the weights when the subject is not built in
_FORMAT_VERSION = 1

log = logging.getLogger(__name__)


@dataclass
class EncoderConfig:
    """Everything needed to rebuild an encoder, stored as ``config.json`` beside its weights."""

    n_voxels: int
    subject: str
    voxel_space: str
    backbone: str = "ViT-B-16"
    pretrained: str | None = "laion2b_s34b_b88k"
    backbone_config: dict | None = None  # OpenCLIP model config for towers not in OpenCLIP's registry
    embed_dim: int | None = None
    encoder_type: str = "clip_linear"
    training: dict = field(default_factory=dict)
    subject_fingerprint: str = ""  # Subject.fingerprint of the voxel space ("" in older checkpoints)
    subject_label: str = ""  # Subject.label, for messages
    format_version: int = _FORMAT_VERSION

    @classmethod
    def for_subject(cls, subject, **kwargs) -> "EncoderConfig":
        """A config whose voxels are ``subject``'s (name, space, label, fingerprint and voxel count)."""
        return cls(n_voxels=subject.n_voxels, subject=subject.name, voxel_space=subject.space,
                   subject_fingerprint=subject.fingerprint, subject_label=subject.label, **kwargs)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "EncoderConfig":
        known = set(cls.__dataclass_fields__)
        missing = [k for k in ("n_voxels", "subject", "voxel_space") if k not in data]
        if missing:
            raise ValueError(f"Encoder config is missing required fields {missing}.")
        return cls(**{k: v for k, v in data.items() if k in known})


class BrainEncoder(nn.Module):
    """Base class: ``forward(images [B,3,H,W] in [0,1]) -> [B, n_voxels]``."""

    config: EncoderConfig

    @property
    def n_voxels(self) -> int:
        return self.config.n_voxels

    def check_subject(self, subject) -> None:
        """Raise if this encoder's voxels are not ``subject``'s voxels (same fingerprint)."""
        config = self.config
        if config.subject_fingerprint:
            if config.subject_fingerprint != subject.fingerprint:
                mine = config.subject_label or f"{config.subject} · {config.voxel_space}"
                raise ValueError(
                    f"Encoder was fit on voxel space {mine!r} (fingerprint {config.subject_fingerprint[:12]}), but "
                    f"subject {subject.label!r} is a different voxel space (fingerprint {subject.fingerprint[:12]})."
                )
            return
        log.warning("Encoder for %r records no subject fingerprint (older checkpoint): matched by name and "
                    "voxel count only.", config.subject)
        if config.subject != subject.name or config.n_voxels != subject.n_voxels:
            raise ValueError(
                f"Encoder was fit for subject {config.subject!r} with {config.n_voxels} voxels, "
                f"but subject {subject.name!r} has {subject.n_voxels} voxels."
            )

    def save(self, path) -> Path:
        raise NotImplementedError


def _register_backbone_config(name: str, model_config: dict) -> None:
    """Make a custom OpenCLIP model config available under ``name``."""
    import open_clip

    if open_clip.get_model_config(name) == model_config:
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.json"
        path.write_text(json.dumps(model_config))
        open_clip.add_model_config(path)


def build_clip_tower(backbone: str, pretrained: str | None, backbone_config: dict | None = None) -> nn.Module:
    """The OpenCLIP image tower ``backbone`` (weights ``pretrained`` fetched by OpenCLIP, or random)."""
    import open_clip

    if backbone_config is not None:
        _register_backbone_config(backbone, backbone_config)
    if open_clip.get_model_config(backbone) is None:
        raise ValueError(f"`backbone` {backbone!r} is not an OpenCLIP model name (see open_clip.list_models()).")
    try:
        model = open_clip.create_model(backbone, pretrained=pretrained, require_pretrained=pretrained is not None)
    except Exception as exc:  # OpenCLIP raises RuntimeError/OSError/HF errors for missing weights
        raise RuntimeError(
            f"Could not load OpenCLIP weights {backbone!r}/{pretrained!r}: {exc}. The first use downloads "
            "them from the Hugging Face Hub; check the network or HF_HUB_OFFLINE."
        ) from exc
    return model.visual


class PatchEmbedding(nn.Conv2d):
    """A ViT's patch embedding (a convolution whose kernel equals its stride), as one matmul when the
    input needs a gradient.

    Same parameters and state dict as the ``nn.Conv2d`` it replaces. Guidance differentiates through it
    at every guided step: on CPU, oneDNN's input gradient of a 16-32 px stride convolution is ~5x slower
    than this matmul's forward and backward together (the same numbers up to float rounding). Without a
    gradient it is the convolution itself, so features (encoder training, predictions) are unchanged.
    """

    @classmethod
    def replacing(cls, conv: nn.Conv2d) -> nn.Module:
        """``conv`` as a ``PatchEmbedding`` sharing its parameters, or ``conv`` itself if it is not a patchify conv."""
        plain = (conv.kernel_size == conv.stride and conv.padding == (0, 0) and conv.dilation == (1, 1)
                 and conv.groups == 1 and conv.padding_mode == "zeros")
        if type(conv) is not nn.Conv2d or not plain:
            return conv
        patch = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, bias=conv.bias is not None,
                    device="meta")
        patch.weight, patch.bias = conv.weight, conv.bias
        return patch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and x.requires_grad):
            return super().forward(x)
        (ph, pw), (b, c, h, w) = self.kernel_size, x.shape
        gh, gw = h // ph, w // pw  # as the convolution: a remainder narrower than a patch is dropped
        patches = x[..., :gh * ph, :gw * pw].reshape(b, c, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5)
        out = patches.reshape(b * gh * gw, c * ph * pw) @ self.weight.reshape(self.out_channels, -1).T
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(b, gh, gw, self.out_channels).permute(0, 3, 1, 2)


class ClipLinearEncoder(BrainEncoder):
    """OpenCLIP image tower (frozen) + L2-normalised embedding + linear voxelwise head."""

    def __init__(self, config: EncoderConfig, tower: nn.Module | None = None):
        super().__init__()
        tower = tower if tower is not None else build_clip_tower(config.backbone, config.pretrained, config.backbone_config)
        cfg = getattr(tower, "preprocess_cfg", {})
        size = cfg.get("size", getattr(tower, "image_size", 224))
        self.input_size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.26862954, 0.26130258, 0.27577711))).view(1, 3, 1, 1))
        if isinstance(getattr(tower, "conv1", None), nn.Conv2d):
            tower.conv1 = PatchEmbedding.replacing(tower.conv1)
        self.tower = tower.eval().requires_grad_(False)
        embed_dim = int(getattr(tower, "output_dim", 0) or config.embed_dim)
        config.embed_dim = embed_dim
        self.config = config
        self.head = nn.Linear(embed_dim, config.n_voxels)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0,1] -> the tower's input: bilinear resize (differentiable), mean/std."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"`images` must have shape [B, 3, H, W], got {tuple(images.shape)}.")
        x = images.float()
        if tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear")
        return (x - self.mean) / self.std

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings ``[B, embed_dim]`` (the features the head is fit on)."""
        x = self.preprocess(images).to(self.head.weight.dtype)
        return F.normalize(self.tower(x), dim=-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(images))

    def save(self, path) -> Path:
        """Write ``config.json`` + safetensors weights into the folder ``path`` (atomically per file)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        head = {k: v.detach().contiguous().cpu() for k, v in self.head.state_dict().items()}
        _atomic(path / HEAD_NAME, lambda p: save_file(head, str(p)))
        if self.config.pretrained is None:
            tower = {k: v.detach().contiguous().cpu() for k, v in self.tower.state_dict().items()}
            _atomic(path / BACKBONE_NAME, lambda p: save_file(tower, str(p)))
        _atomic(path / CONFIG_NAME, lambda p: p.write_text(self.config.to_json()))
        return path

    @classmethod
    def from_folder(cls, folder: Path) -> "ClipLinearEncoder":
        config = _read_config(folder)
        tower = build_clip_tower(config.backbone, config.pretrained, config.backbone_config)
        if config.pretrained is None:
            _load_weights(tower, folder / BACKBONE_NAME, "backbone")
        encoder = cls(config, tower=tower)
        _load_weights(encoder.head, folder / HEAD_NAME, "head")
        return encoder


ENCODERS = {"clip_linear": ClipLinearEncoder}


def _atomic(path: Path, write) -> None:
    tmp = private_tmp(path)
    write(tmp)
    tmp.replace(path)


def _read_config(folder: Path) -> EncoderConfig:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"Encoder checkpoint {folder} has no {CONFIG_NAME}.")
    try:
        return EncoderConfig.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise ValueError(f"Encoder checkpoint {path} is corrupt: {exc}") from exc


def _load_weights(module: nn.Module, path: Path, what: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"Encoder checkpoint is missing its {what} weights: {path}")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"Encoder {what} weights {path} are corrupt: {exc}") from exc
    expected = module.state_dict()
    bad = [k for k in expected if k not in state or state[k].shape != expected[k].shape]
    if bad or set(state) - set(expected):
        detail = {k: (tuple(state[k].shape) if k in state else None, tuple(expected[k].shape)) for k in bad[:3]}
        raise ValueError(f"Encoder {what} weights {path} do not match its config (file, expected): {detail}")
    module.load_state_dict(state)


def _resolve(path_or_hub_id) -> Path:
    folder = Path(path_or_hub_id)
    if folder.is_dir():
        return folder
    name = str(path_or_hub_id)
    if folder.exists() or name.count("/") != 1 or name.startswith((".", "/")):
        raise FileNotFoundError(f"Encoder checkpoint folder not found: {name}")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, allow_patterns=[CONFIG_NAME, "*.safetensors", SUBJECT_NAME]))
    except Exception as exc:  # offline, unknown repo, auth: all mean "not available"
        raise FileNotFoundError(
            f"Encoder {name!r} is neither a local folder nor a reachable Hugging Face Hub repo: {exc}"
        ) from exc


resolve_checkpoint = _resolve  # public names: a checkpoint's folder (a Hub id is fetched) and its config
read_config = _read_config


class TowerCache:
    """Loads encoders so that checkpoints of one frozen image tower share it (only their linear heads differ).

    A tower is identified by its backbone, its weights (the pretrained tag, or the sha256 of the checkpoint's
    own tower file) and its config; it lives as long as some encoder holds it (weak references).
    """

    def __init__(self):
        self._towers = weakref.WeakValueDictionary()
        self._hashes: dict[tuple, str] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Towers alive now."""
        return len(self._towers)

    def load(self, folder) -> BrainEncoder:
        """The encoder in checkpoint ``folder``, its tower shared with encoders already loaded here."""
        folder = Path(folder)
        config = _read_config(folder)
        if config.encoder_type != "clip_linear":
            return load_encoder(folder)
        with self._lock:
            key = self.tower_key(config, folder)
            tower = self._towers.get(key)
            if tower is None:
                tower = build_clip_tower(config.backbone, config.pretrained, config.backbone_config)
                if config.pretrained is None:
                    _load_weights(tower, folder / BACKBONE_NAME, "backbone")
                self._towers[key] = tower
        encoder = ClipLinearEncoder(config, tower=tower)
        _load_weights(encoder.head, folder / HEAD_NAME, "head")
        return encoder.eval()

    def tower_key(self, config: EncoderConfig, folder: Path) -> tuple:
        """Identity of a frozen tower: backbone + weights (the tag, or the hash of the checkpoint's own tower file)."""
        weights = config.pretrained
        if weights is None:
            path = folder / BACKBONE_NAME
            stat = path.stat()
            cache_key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
            if cache_key not in self._hashes:
                digest = hashlib.sha256()
                with open(path, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        digest.update(block)
                self._hashes[cache_key] = digest.hexdigest()
            weights = "sha256:" + self._hashes[cache_key]
        return config.backbone, weights, json.dumps(config.backbone_config, sort_keys=True)


def load_encoder(path_or_hub_id, subject=None, device=None, dtype=None) -> BrainEncoder:
    """Load an encoder checkpoint from a folder or a Hub repo id; check it against ``subject`` if given."""
    folder = _resolve(path_or_hub_id)
    config = _read_config(folder)
    if config.encoder_type not in ENCODERS:
        raise ValueError(f"Encoder type must be one of {sorted(ENCODERS)}, got {config.encoder_type!r} in {folder}.")
    encoder = ENCODERS[config.encoder_type].from_folder(folder)
    if subject is not None:
        encoder.check_subject(subject)
    return encoder.to(device=device, dtype=dtype).eval()
