"""CLIP zero-shot classification of images into the paper's five categories.

The model and the prompts are settings (``ZeroShotConfig``). Each category's text embedding is a
prompt ensemble: the mean of the L2-normalised embeddings of every template filled with every class
name, normalised again (Radford et al. 2021). Class probabilities are the softmax of the model's
logit scale times the cosine similarity.

Default model: OpenCLIP ViT-B/16 trained on LAION-2B (``laion2b_s34b_b88k``). The authors' released
code (github.com/aluo-x/BrainDiVE) contains no evaluation script, so the paper's exact checkpoint
cannot be confirmed from it; ViT-B/16 LAION-2B is the family of the paper's encoder backbone, is
fetched from the Hugging Face Hub on first use like the encoder, and runs on a CPU. Caveat: the
images were optimised through the same embedding family, so for a classifier independent of the
generator set ``model``/``pretrained`` to another OpenCLIP model (e.g. ``ViT-L-14``/``laion2b_s32b_b82k``).
"""
from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .categories import CATEGORIES
from .sets import open_rgb

__all__ = ["ZeroShotConfig", "ZeroShotClassifier", "load_classifier", "weights_unavailable", "DEFAULT_TEMPLATES",
           "DEFAULT_CLASS_NAMES"]

DEFAULT_TEMPLATES = ("a photo of {}.", "a picture of {}.", "an image of {}.", "a close-up photo of {}.",
                     "a cropped photo of {}.", "a low resolution photo of {}.")
DEFAULT_CLASS_NAMES = {
    "faces": ("a face", "a person's face", "faces"),
    "places": ("a place", "a scene", "a building", "a landscape", "a room"),
    "bodies": ("a body", "a person's body", "people"),
    "words": ("words", "text", "written letters"),
    "food": ("food", "a meal", "a dish of food"),
}


@dataclass
class ZeroShotConfig:
    """Which OpenCLIP model classifies, and with which prompts.

    Attributes:
        model: OpenCLIP model name (``open_clip.list_models()``) or the name of ``model_config``.
        pretrained: OpenCLIP pretrained tag, fetched from the Hub on first use; None = weights from ``weights``.
        model_config: an OpenCLIP model config registered as ``model`` (models not in OpenCLIP's registry).
        weights: safetensors file with the full model's weights (when ``pretrained`` is None).
        class_names: category -> names filled into the templates (a prompt ensemble per category).
        templates: prompt templates with one ``{}``.
        batch_size: images per forward pass.
    """

    model: str = "ViT-B-16"
    pretrained: str | None = "laion2b_s34b_b88k"
    model_config: dict | None = None
    weights: str | None = None
    class_names: dict[str, list[str]] = field(default_factory=lambda: {k: list(v) for k, v in DEFAULT_CLASS_NAMES.items()})
    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    batch_size: int = 32

    def __post_init__(self):
        if not self.class_names:
            raise ValueError("`class_names` must name at least two categories, got none.")
        unknown = [c for c in self.class_names if c not in CATEGORIES]
        if unknown:
            raise ValueError(f"`class_names` categories must be among {list(CATEGORIES)}, got {unknown}.")
        empty = [c for c, names in self.class_names.items() if not names]
        if len(self.class_names) < 2 or empty:
            raise ValueError(f"`class_names` needs >= 2 categories, each with a name; empty: {empty}.")
        bad = [t for t in self.templates if t.count("{}") != 1]
        if not self.templates or bad:
            raise ValueError(f"`templates` must be non-empty strings with exactly one '{{}}', got {bad or self.templates}.")
        if self.batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {self.batch_size}.")

    @property
    def categories(self) -> list[str]:
        return list(self.class_names)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ZeroShotConfig":
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"Unknown zero-shot settings {sorted(unknown)}; allowed: {sorted(cls.__dataclass_fields__)}.")
        return cls(**data)

    @classmethod
    def from_json(cls, path) -> "ZeroShotConfig":
        """Settings from a JSON file; a relative ``weights`` path is relative to the file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"Zero-shot settings {path} are not a readable JSON object: {exc}") from exc
        if data.get("weights") and not Path(data["weights"]).is_absolute():
            data["weights"] = str(path.parent / data["weights"])
        return cls.from_dict(data)


class ZeroShotClassifier:
    """An OpenCLIP model with one ensembled text embedding per category."""

    def __init__(self, config: ZeroShotConfig | None = None, device=None, model=None, preprocess=None, tokenizer=None):
        """Load ``config.model`` (weights from the Hub on first use), or use an OpenCLIP ``model`` built by the
        caller (then ``preprocess`` defaults to the model's own evaluation transform, ``tokenizer`` to
        ``open_clip.get_tokenizer(config.model)``)."""
        import open_clip

        self.config = config or ZeroShotConfig()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if model is None:
            model, preprocess, tokenizer = _load(self.config)
        if preprocess is None:
            cfg = getattr(model.visual, "preprocess_cfg", {})
            preprocess = open_clip.image_transform(cfg.get("size", model.visual.image_size), is_train=False,
                                                   mean=cfg.get("mean"), std=cfg.get("std"))
        self.model, self.preprocess = model, preprocess
        self.tokenizer = tokenizer or open_clip.get_tokenizer(self.config.model)
        self.model.to(self.device).eval()
        self.text_embeddings = self.embed_prompts()

    @property
    def categories(self) -> list[str]:
        return self.config.categories

    @torch.no_grad()
    def embed_prompts(self) -> torch.Tensor:
        """``[n_categories, dim]``: per category, the normalised mean of its normalised prompt embeddings."""
        rows = []
        for names in self.config.class_names.values():
            prompts = [t.format(name) for name in names for t in self.config.templates]
            text = self.tokenizer(prompts).to(self.device)
            rows.append(F.normalize(F.normalize(self.model.encode_text(text).float(), dim=-1).mean(0), dim=0))
        return torch.stack(rows)

    @torch.no_grad()
    def predict_proba(self, images) -> np.ndarray:
        """Class probabilities ``[n_images, n_categories]`` for PIL images or image paths."""
        if len(images) == 0:
            raise ValueError("`images` is empty: nothing to classify.")
        scale = self.model.logit_scale.exp().float()
        out = []
        for start in range(0, len(images), self.config.batch_size):
            chunk = [open_rgb(im) for im in images[start:start + self.config.batch_size]]
            pixels = torch.stack([self.preprocess(im) for im in chunk]).to(self.device)
            features = F.normalize(self.model.encode_image(pixels).float(), dim=-1)
            out.append(torch.softmax(scale * features @ self.text_embeddings.T, dim=-1).cpu())
        return torch.cat(out).numpy().astype(np.float64)

    def classify(self, images) -> list[str]:
        """The most probable category of each image."""
        return [self.categories[i] for i in self.predict_proba(images).argmax(1)]


_CLASSIFIERS: dict[str, ZeroShotClassifier] = {}
_CLASSIFIERS_LOCK = threading.Lock()


def load_classifier(config: ZeroShotConfig | None = None, device=None) -> ZeroShotClassifier:
    """A classifier for ``config``, built once per process and settings (the app reuses it across requests)."""
    config = config or ZeroShotConfig()
    key = json.dumps([config.to_dict(), str(device)], sort_keys=True)
    with _CLASSIFIERS_LOCK:
        if key not in _CLASSIFIERS:
            _CLASSIFIERS[key] = ZeroShotClassifier(config, device)
        return _CLASSIFIERS[key]


def weights_unavailable(config: ZeroShotConfig | None = None) -> str:
    """Why ``load_classifier(config)`` cannot get its weights without trying ("" when it can): no file for
    ``weights``, or Hub weights that are neither cached nor downloadable (``HF_HUB_OFFLINE``). Loads nothing."""
    config = config or ZeroShotConfig()
    if config.pretrained is None:
        return "" if config.weights and Path(config.weights).is_file() else f"the weights file {config.weights} is missing"
    import open_clip
    from huggingface_hub import constants, try_to_load_from_cache

    hub = (open_clip.get_pretrained_cfg(config.model, config.pretrained) or {}).get("hf_hub", "")
    if not constants.HF_HUB_OFFLINE or not hub:
        return ""  # downloadable on first use (or not a Hub tag: OpenCLIP's own error says why)
    parts = hub.strip("/").split("/", 2)  # "org/repo" or "org/repo/file"
    repo_id = "/".join(parts[:2])
    names = parts[2:] or ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]  # OpenCLIP's file names
    if any(isinstance(try_to_load_from_cache(repo_id, name), str) for name in names):
        return ""
    return (f"the OpenCLIP weights {config.model} / {config.pretrained} are not cached and the Hub is off "
            "(HF_HUB_OFFLINE)")


def _load(config: ZeroShotConfig):
    """OpenCLIP model, its evaluation transform and tokenizer; real weights come from the Hub on first use."""
    import open_clip
    from safetensors.torch import load_file

    from ..encoders import _register_backbone_config

    if config.model_config is not None:
        _register_backbone_config(config.model, config.model_config)
    if open_clip.get_model_config(config.model) is None:
        raise ValueError(f"`model` {config.model!r} is not an OpenCLIP model name (see open_clip.list_models()).")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            config.model, pretrained=config.pretrained, require_pretrained=config.pretrained is not None)
    except Exception as exc:  # OpenCLIP raises RuntimeError/OSError/HF errors for missing weights
        raise RuntimeError(
            f"CLIP zero-shot needs the OpenCLIP weights {config.model}/{config.pretrained}, which could not be "
            f"loaded: {exc}. The first use downloads them from the Hugging Face Hub (unset HF_HUB_OFFLINE)."
        ) from exc
    if config.pretrained is None:
        if config.weights is None:
            raise ValueError("Zero-shot settings need `weights` (a safetensors file) when `pretrained` is None.")
        try:
            model.load_state_dict(load_file(config.weights))
        except (OSError, RuntimeError) as exc:
            raise ValueError(f"Zero-shot weights {config.weights} do not load into {config.model}: {exc}") from exc
    return model, preprocess, open_clip.get_tokenizer(config.model)
