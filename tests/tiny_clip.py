"""A tiny OpenCLIP model built from config whose zero-shot answers are known by construction.

Image tower: patches -> their mean colour after CLIP normalisation, v = (c - mean) / std, embedded as
[v, -v] (zero mean, so LayerNorm only rescales it); transformer blocks are identities (zero output
projections), average pooling, projection onto v. The image embedding direction is v(mean colour).
Text tower: only the five class words have token embeddings, [u_k, -u_k] with u_k = v(COLOURS[k]);
one attention layer with zero queries/keys averages the tokens into the end-of-text token, identity
values; projection onto u. A prompt naming class k embeds along u_k. So an image of COLOURS[k]
matches class k's prompts with cosine 1, and every probability is softmax(LOGIT_SCALE * cos(v, u_j)).
"""
import math

import numpy as np
import open_clip
import PIL.Image
import torch
from safetensors.torch import save_file

from braindive.evaluation import ZeroShotConfig
from braindive.encoders import _register_backbone_config

NAME = "braindive-test-tiny-clip"
WIDTH = 6
LOGIT_SCALE = 10.0
CONFIG = {
    "embed_dim": 3,
    "vision_cfg": {"image_size": 16, "layers": 1, "width": WIDTH, "head_width": WIDTH, "patch_size": 8,
                   "mlp_ratio": 1.0, "pool_type": "avg"},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": WIDTH, "heads": 1, "layers": 1, "mlp_ratio": 1.0},
}
COLOURS = {"faces": (230, 60, 60), "places": (60, 200, 80), "bodies": (60, 80, 220), "words": (230, 220, 60),
           "food": (150, 60, 200)}
WORDS = {"faces": "face", "places": "place", "bodies": "body", "words": "word", "food": "food"}
MEAN = np.array(open_clip.OPENAI_DATASET_MEAN)
STD = np.array(open_clip.OPENAI_DATASET_STD)


def normalised(colour) -> np.ndarray:
    """v(c): the colour after CLIP's per-channel normalisation."""
    return (np.asarray(colour, dtype=np.float64) / 255.0 - MEAN) / STD


def expected_probabilities(colour) -> np.ndarray:
    """Hand computation: softmax over categories of LOGIT_SCALE * cos(v(colour), v(class colour))."""
    v = normalised(colour)
    cos = np.array([v @ normalised(c) / np.linalg.norm(v) / np.linalg.norm(normalised(c)) for c in COLOURS.values()])
    e = np.exp(LOGIT_SCALE * cos - (LOGIT_SCALE * cos).max())
    return e / e.sum()


def swatch(colour, size=32) -> PIL.Image.Image:
    return PIL.Image.new("RGB", (size, size), tuple(colour))


def _set_identity_blocks(transformer, values: bool) -> None:
    for block in transformer.resblocks:
        with torch.no_grad():
            block.attn.in_proj_weight.zero_()
            block.attn.in_proj_bias.zero_()
            block.attn.out_proj.bias.zero_()
            block.mlp.c_proj.weight.zero_()
            block.mlp.c_proj.bias.zero_()
            block.attn.out_proj.weight.zero_()
            if values:  # v = x, out = v: the token average joins the residual stream
                block.attn.in_proj_weight[2 * WIDTH:].copy_(torch.eye(WIDTH))
                block.attn.out_proj.weight.copy_(torch.eye(WIDTH))


def build_model() -> torch.nn.Module:
    _register_backbone_config(NAME, CONFIG)
    model = open_clip.create_model(NAME, pretrained=None)
    split = torch.cat([torch.eye(3), -torch.eye(3)])  # colour -> [v, -v]
    select = torch.cat([torch.eye(3), torch.zeros(3, 3)])  # [v, -v] -> v
    visual = model.visual
    patch = visual.conv1.weight.shape[-1]
    tokenizer = open_clip.get_tokenizer(NAME)
    with torch.no_grad():
        visual.conv1.weight.copy_(split[:, :, None, None].expand(-1, -1, patch, patch) / patch**2)
        visual.positional_embedding.zero_()
        visual.class_embedding.zero_()
        visual.proj.copy_(select)
        _set_identity_blocks(visual.transformer, values=False)
        model.token_embedding.weight.zero_()
        model.positional_embedding.zero_()
        for category, word in WORDS.items():
            token = tokenizer([word])[0, 1]
            model.token_embedding.weight[token] = split @ torch.tensor(normalised(COLOURS[category]), dtype=torch.float32)
        _set_identity_blocks(model.transformer, values=True)
        model.text_projection.copy_(select)
        model.logit_scale.fill_(math.log(LOGIT_SCALE))
    return model


def tiny_config(folder) -> ZeroShotConfig:
    """Save the model's weights (safetensors) in ``folder`` and return settings that load it."""
    path = folder / "tiny-clip.safetensors"
    save_file({k: v.contiguous() for k, v in build_model().state_dict().items()}, str(path))
    return ZeroShotConfig(model=NAME, pretrained=None, model_config=CONFIG, weights=str(path),
                          class_names={k: [w] for k, w in WORDS.items()},
                          templates=["a photo of a {}.", "a picture of a {}."], batch_size=4)
