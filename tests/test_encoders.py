"""Encoder checkpoints: round trip, preprocessing, and every corrupt or mismatched file."""
import json

import numpy as np
import pytest
import torch

import braindive as bd
from tiny import N_VOXELS, tiny_encoder


@pytest.fixture
def saved(tmp_path):
    encoder = tiny_encoder()
    encoder.config.training = {"dataset": "unit-test", "r2_median": 0.25}
    return encoder, encoder.save(tmp_path / "enc")


def test_save_writes_safetensors_and_json_only(saved):
    _, folder = saved
    assert sorted(p.name for p in folder.iterdir()) == ["backbone.safetensors", "config.json", "head.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["n_voxels"] == N_VOXELS and config["subject"] == "tiny" and config["pretrained"] is None
    assert config["backbone"] == "braindive-tiny-vit" and config["training"]["r2_median"] == 0.25


def test_round_trip_gives_identical_predictions(saved):
    encoder, folder = saved
    loaded = bd.load_encoder(folder)
    images = torch.rand(3, 3, 96, 80, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), encoder(images), atol=0, rtol=0)
    assert loaded.config.training == {"dataset": "unit-test", "r2_median": 0.25}


def test_forward_matches_openclip_encode_image_with_its_own_preprocessing(saved):
    """Oracle: OpenCLIP's full model (its ``encode_image``) and its PIL preprocessing, fed the checkpoint's tower weights."""
    import open_clip
    import PIL.Image

    encoder, folder = saved
    loaded = bd.load_encoder(folder)  # the tower rebuilt from config + safetensors, not the object above
    clip, _, preprocess = open_clip.create_model_and_transforms(encoder.config.backbone, pretrained=None)
    clip.visual.load_state_dict(encoder.tower.state_dict())
    clip.eval()
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    theirs = torch.stack([preprocess(PIL.Image.fromarray(p)) for p in pixels])  # resize/crop are no-ops at 224
    ours = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        expected = clip.encode_image(theirs, normalize=True) @ loaded.head.weight.T + loaded.head.bias
        torch.testing.assert_close(loaded(ours), expected, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(loaded(ours.flip(-1)), expected, atol=1e-2)  # the comparison can fail


def test_preprocessing_is_differentiable(saved):
    encoder, _ = saved
    images = torch.rand(1, 3, 64, 64, requires_grad=True)
    encoder(images).mean().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_subject_mismatch_is_a_clear_error(saved, s1):
    _, folder = saved
    with pytest.raises(ValueError, match=f"fit for subject 'tiny' with {N_VOXELS} voxels, but subject 'S1' has 37926"):
        bd.load_encoder(folder, subject=s1)


def test_missing_folder_and_files(tmp_path, saved):
    _, folder = saved
    with pytest.raises(FileNotFoundError, match="Encoder checkpoint folder not found"):
        bd.load_encoder(tmp_path / "nope")
    (folder / "head.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="missing its head weights"):
        bd.load_encoder(folder)
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        bd.load_encoder(folder)


def test_corrupt_files(saved):
    _, folder = saved
    (folder / "head.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="head weights .* are corrupt"):
        bd.load_encoder(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is corrupt"):
        bd.load_encoder(folder)


def test_head_shape_mismatch_with_config(saved):
    _, folder = saved
    config = json.loads((folder / "config.json").read_text())
    config["n_voxels"] = N_VOXELS + 1
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not match its config"):
        bd.load_encoder(folder)


def test_unknown_encoder_type_and_backbone(saved):
    _, folder = saved
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "encoder_type": "svm"}))
    with pytest.raises(ValueError, match=r"Encoder type must be one of \['clip_linear'\], got 'svm'"):
        bd.load_encoder(folder)
    with pytest.raises(ValueError, match="`backbone` 'ViT-Nope' is not an OpenCLIP model name"):
        bd.encoders.build_clip_tower("ViT-Nope", None)


def test_hub_id_offline_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="neither a local folder nor a reachable Hugging Face Hub repo"):
        bd.load_encoder("someone/missing-encoder")


def test_wrong_image_shape(saved):
    encoder, _ = saved
    with pytest.raises(ValueError, match=r"`images` must have shape \[B, 3, H, W\], got \(3, 64, 64\)"):
        encoder(torch.rand(3, 64, 64))


@pytest.mark.parametrize("bias,size", [(False, (64, 64)), (True, (70, 45))], ids=["no bias", "bias, ragged size"])
def test_patch_embedding_equals_the_convolution_with_its_gradient(bias, size):
    conv = torch.nn.Conv2d(3, 5, 16, 16, bias=bias)
    patch = bd.encoders.PatchEmbedding.replacing(conv)
    assert type(patch) is bd.encoders.PatchEmbedding and patch.weight is conv.weight
    assert list(patch.state_dict()) == list(conv.state_dict())
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0), dtype=torch.float64, requires_grad=True)
    weight, b = conv.weight.double(), None if conv.bias is None else conv.bias.double()
    expected = torch.nn.functional.conv2d(x, weight, b, stride=16)
    patch.double()
    got = patch(x)
    torch.testing.assert_close(got, expected)
    direction = torch.randn_like(expected)
    torch.testing.assert_close(torch.autograd.grad((got * direction).sum(), x)[0],
                               torch.autograd.grad((expected * direction).sum(), x)[0])
    with torch.no_grad():  # no gradient wanted: the convolution itself, bit for bit
        assert torch.equal(patch(x), torch.nn.functional.conv2d(x, weight, b, stride=16))


def test_patch_embedding_leaves_other_convolutions_alone():
    for conv in (torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(3, 4, 4, 4, padding=1), torch.nn.Conv2d(4, 4, 2, 2, groups=2)):
        assert bd.encoders.PatchEmbedding.replacing(conv) is conv


def test_encoder_tower_uses_the_patch_embedding_and_loads_plain_weights(saved):
    encoder, folder = saved
    assert type(encoder.tower.conv1) is bd.encoders.PatchEmbedding
    plain = bd.encoders.build_clip_tower(encoder.config.backbone, None, encoder.config.backbone_config)
    plain.load_state_dict(encoder.tower.state_dict())  # the same keys as OpenCLIP's own tower
    assert type(plain.conv1) is torch.nn.Conv2d
    images = torch.rand(2, 3, *encoder.input_size, generator=torch.Generator().manual_seed(1))
    x = encoder.preprocess(images)
    with torch.no_grad():
        assert torch.equal(encoder.tower(x), plain.eval()(x))
    x.requires_grad_()
    torch.testing.assert_close(encoder.tower(x), plain(x), atol=1e-5, rtol=1e-5)
