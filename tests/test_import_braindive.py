"""``training.import_braindive``: a checkpoint in the published layout, converted and checked against a
direct re-implementation of the published forward (``loss_function_higher``)."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import braindive as bd
from braindive.encoders import build_clip_tower
from training import import_braindive as ib

REPO = Path(__file__).resolve().parents[1]
SHAPE = (9, 11, 8)
SUBJECT = 1
TINY_CLIP = {  # an OpenCLIP ViT-B/16-layout tower, tiny: 2 layers of width 64, 512-d output like the release's
    "embed_dim": 512,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 1000, "width": 32, "heads": 2, "layers": 1},
}
TINY_NAME = "braindive-test-vitb16-tiny"
OPENAI_CLIP_MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
OPENAI_CLIP_STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)


# ---- re-typed from aluo-x/BrainDiVE encoder_model_vit.py (the parts the higher-visual path uses)
class downproject_CLIP_split_linear(torch.nn.Module):  # noqa: N801 (published name)
    def __init__(self, num_early_output=None, num_higher_output=None):
        super().__init__()
        keys = sorted(num_early_output.keys())
        for k_i in keys:
            self.add_module("final_{}_higher".format(k_i), torch.nn.Linear(512, num_higher_output[k_i]))
            getattr(self, "final_{}_higher".format(k_i)).weight.data = getattr(self, "final_{}_higher".format(k_i)).weight.data * 0.5

    def forward_higher(self, first_layer_in, second_layer_in, last_layer_in, key_order):
        key_i = key_order[0]
        last_layer_in_norm = torch.nn.functional.normalize(last_layer_in, dim=1)
        return getattr(self, "final_{}_higher".format(str(key_i)))(last_layer_in_norm)


def tiny_timm_tower():
    """timm's ``vit_base_patch16_clip_224`` family, tiny, random (head bias 0 as in timm's CLIP weights)."""
    import timm

    torch.manual_seed(1)
    model = timm.create_model("vit_base_patch16_clip_224", pretrained=False, num_classes=512, embed_dim=64, depth=2,
                              num_heads=2).eval()
    with torch.no_grad():
        for p in model.parameters():  # every weight random and O(1), so a wrong mapping shows
            p.copy_(torch.randn_like(p) * 0.2)
        model.head.bias.zero_()
    return model


def _save(data, path: Path, affine) -> None:
    nib.save(nib.Nifti1Image(np.asarray(data, np.int16), affine), str(path))


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A synthetic NSD ROI set (NSD layout), release masks and a published-layout checkpoint."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("release")
    roi_dir = root / "nsddata" / "ppdata" / "subj01" / "func1pt8mm" / "roi"
    label_dir = root / "nsddata" / "freesurfer" / "subj01" / "label"
    roi_dir.mkdir(parents=True)
    label_dir.mkdir(parents=True)
    affine = np.array([[-1.8, 0, 0, 70], [0, 1.8, 0, -90], [0, 0, 1.8, -60], [0, 0, 0, 1]])
    cortex = rng.uniform(size=SHAPE) < 0.8
    vols = {"nsdgeneral": np.where(cortex, (rng.uniform(size=SHAPE) < 0.5).astype(int), -1)}
    for family, n_labels, p in (("prf-visualrois", 7, 0.25), ("floc-faces", 5, 0.1), ("floc-places", 3, 0.1),
                                ("floc-bodies", 4, 0.08), ("floc-words", 5, 0.05)):
        labels = np.where(rng.uniform(size=SHAPE) < p, rng.integers(1, n_labels + 1, SHAPE), 0)
        vols[family] = np.where(cortex, labels, -1)
    vols["HCP_MMP1"] = np.where(cortex, rng.integers(0, 181, SHAPE), 0)
    left = np.zeros(SHAPE, bool)
    left[: SHAPE[0] // 2] = True
    vols["lh.nsdgeneral"] = np.where(cortex & left, vols["nsdgeneral"], -1)
    for name, data in vols.items():
        _save(data, roi_dir / f"{name}.nii.gz", affine)
    for family, names in (("floc-faces", "OFA FFA-1 FFA-2 mTL-faces aTL-faces"), ("floc-places", "OPA PPA RSC"),
                          ("floc-bodies", "EBA FBA-1 FBA-2 mTL-bodies"),
                          ("floc-words", "OWFA VWFA-1 VWFA-2 mfs-words mTL-words")):
        lines = ["0 Unknown"] + [f"{i} {n}" for i, n in enumerate(names.split(), 1)]
        (label_dir / f"{family}.mgz.ctab").write_text("\n".join(lines) + "\n")
    n_cortex = int((vols["nsdgeneral"] > -0.5).sum())
    food = rng.uniform(size=n_cortex) < 0.1
    np.save(root / "food_S1.npy", food)
    hcp = rng.permutation(np.arange(1, 181))
    np.save(root / "best_HCP.npy", hcp)

    # the published mask construction, as in run_brain_guidance_category.py
    load = lambda name: nib.load(str(roi_dir / name)).get_fdata()  # noqa: E731
    selected = [load(f"{f}.nii.gz").astype(np.single) >= 0.5 for f in
                ("prf-visualrois", "floc-bodies", "floc-faces", "floc-places", "floc-words")]
    mask2 = load("nsdgeneral.nii.gz")
    container = np.zeros(mask2[mask2 > -0.5].shape)
    container[food] = 1.0
    original_shape = np.zeros(mask2.shape)
    original_shape[mask2 > -0.5] = container
    selected.append(original_shape >= 0.5)
    container = np.zeros_like(mask2)
    all_roi = load("HCP_MMP1.nii.gz").astype(np.int32)
    for i in hcp[:45]:
        container[all_roi == i] += 1.0
    selected.append(container >= 0.5)
    functional = np.logical_or.reduce(selected)
    early_visual = load("prf-visualrois.nii.gz").astype(np.int32)
    higher_vis_mask = torch.from_numpy((early_visual < 0.5)[functional])
    n_higher = int(higher_vis_mask.sum())
    faces = load("floc-faces.nii.gz").astype(np.int32)
    ffa_mask = torch.from_numpy(np.logical_or.reduce([faces == 2, faces == 3])[functional])

    torch.manual_seed(0)
    brain_model = downproject_CLIP_split_linear(num_early_output={"1": 10}, num_higher_output={"1": n_higher}).eval()
    with torch.no_grad():
        brain_model.final_1_higher.bias.normal_(0, 0.5)
    ckpt = root / "00100.chkpt"
    torch.save({"network": brain_model.state_dict()}, ckpt)
    timm_tower = tiny_timm_tower()
    save_file({k: v.contiguous() for k, v in timm_tower.state_dict().items()}, str(root / "timm.safetensors"))
    return argparse.Namespace(root=root, roi_dir=roi_dir, ckpt=ckpt, food=root / "food_S1.npy",
                              hcp=root / "best_HCP.npy", brain_model=brain_model, timm=timm_tower,
                              higher_vis_mask=higher_vis_mask, ffa_mask=ffa_mask, functional=functional,
                              early_visual=early_visual, affine=affine, n_higher=n_higher)


def _convert(release, out, **kw):
    args = dict(food_mask=release.food, hcp_ranking=release.hcp, label_dir=release.root / "nsddata/freesurfer/subj01/label",
                timm_weights=release.root / "timm.safetensors", backbone=TINY_NAME, backbone_config=TINY_CLIP)
    args.update(kw)
    return ib.import_braindive(release.ckpt, release.roi_dir, "subj01", out, **args)


@pytest.fixture(scope="module")
def converted(release, tmp_path_factory):
    return _convert(release, tmp_path_factory.mktemp("enc") / "subj01-braindive")


def test_timm_and_open_clip_towers_are_the_same_network():
    """The release's timm vit_base_patch16_clip_224 and OpenCLIP ViT-B-16 with random weights: ViT-B/16's
    own width, heads, patch, norms and activations; 2 of the 12 (identical) blocks to keep the test fast."""
    import open_clip
    import timm

    config = json.loads(json.dumps(open_clip.get_model_config("ViT-B-16")))
    config["vision_cfg"]["layers"] = 2
    config["text_cfg"]["layers"] = 1  # the text tower is built and dropped
    torch.manual_seed(0)
    timm_tower = timm.create_model("vit_base_patch16_clip_224", pretrained=False, num_classes=512, depth=2).eval()
    with torch.no_grad():
        timm_tower.head.weight.normal_(0, 0.05)  # timm initialises the head to zero
    tower = build_clip_tower("braindive-test-vitb16-2layers", None, config).eval()
    tower.load_state_dict(ib.timm_to_open_clip(timm_tower.state_dict()))  # strict: every weight mapped
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected, got = timm_tower(x), tower(x)
    assert expected.shape == (2, 512) and expected.abs().mean() > 0.1
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        timm_tower.head.bias.fill_(0.1)
    with pytest.raises(ValueError, match="head.bias is not zero"):
        ib.timm_to_open_clip(timm_tower.state_dict())


def test_converted_encoder_matches_published_forward(release, converted):
    subject = bd.load_subject(converted / "subject.npz")
    encoder = bd.load_encoder(converted, subject=subject)
    assert encoder.n_voxels == release.n_higher == subject.n_voxels
    # voxel order: numpy boolean-index order of the higher voxels inside the union mask
    ijk = np.argwhere(release.functional & (release.early_visual < 0.5))
    np.testing.assert_array_equal(subject.ijk, ijk)
    np.testing.assert_allclose(subject.affine, release.affine)
    assert tuple(subject.volume_shape) == SHAPE

    torch.manual_seed(3)
    images = torch.rand(2, 3, 96, 96)  # the pipeline's decoded images in [0, 1], any size
    with torch.no_grad():
        ours = encoder(images)
        normalized = (F.interpolate(images.float(), size=224, mode="bilinear") - OPENAI_CLIP_MEAN) / OPENAI_CLIP_STD
        published = release.brain_model.forward_higher(None, None, release.timm(normalized), [SUBJECT])
    torch.testing.assert_close(ours, published, atol=1e-5, rtol=1e-5)

    # loss_function_higher on FFA (floc-faces ids 2, 3) vs the project's objective on subject.roi("FFA")
    for b in range(2):
        pred_response = torch.zeros(release.higher_vis_mask.shape)
        pred_response[release.higher_vis_mask] = published[b].reshape(-1)
        loss_published = -torch.mean(pred_response[release.ffa_mask])
        ffa = torch.as_tensor(subject.roi("FFA"))
        assert len(ffa) == int((release.ffa_mask & release.higher_vis_mask).sum())
        # the published mean runs over FFA voxels of the union (early ones count as 0 there)
        loss_ours = -ours[b, ffa].sum() / int(release.ffa_mask.sum())
        torch.testing.assert_close(loss_ours, loss_published, atol=1e-5, rtol=1e-5)


def test_subject_rois_and_hemispheres(release, converted):
    subject = bd.load_subject(converted / "subject.npz")
    index = tuple(subject.ijk.T)
    faces = np.rint(nib.load(str(release.roi_dir / "floc-faces.nii.gz")).get_fdata())
    np.testing.assert_array_equal(subject.roi("FFA-1"), np.flatnonzero(faces[index] == 2))
    np.testing.assert_array_equal(subject.roi("OFA"), np.flatnonzero(faces[index] == 1))
    np.testing.assert_array_equal(subject.is_right, subject.ijk[:, 0] >= SHAPE[0] // 2)
    assert "food" in subject.roi_names and "V1v" not in subject.roi_names
    config = json.loads((converted / "config.json").read_text())
    assert config["pretrained"] is None and config["training"]["head"] == "final_1_higher"


def test_default_backbone_is_open_clip_laion2b(release, tmp_path, monkeypatch):
    built = []
    real = ib.build_clip_tower
    monkeypatch.setattr(ib, "build_clip_tower", lambda b, p, c=None: built.append((b, p)) or real(TINY_NAME, None, TINY_CLIP))
    out = ib.main(["--checkpoint", str(release.ckpt), "--nsd-root", str(release.root),  # subject from the head
                   "--food-mask", str(release.food), "--hcp-ranking", str(release.hcp), "--out", str(tmp_path / "enc")])
    config = json.loads((out / "config.json").read_text())
    subject = bd.load_subject(out / "subject.npz")
    assert "FFA-2" in subject.roi_names and config["subject_fingerprint"] == subject.fingerprint
    assert (config["backbone"], config["pretrained"]) == ("ViT-B-16", "laion2b_s34b_b88k")
    assert built == [("ViT-B-16", None)] and not (out / "backbone.safetensors").exists()


@pytest.mark.parametrize("case", ["mismatch", "pickle", "key", "shape", "garbage"])
def test_bad_checkpoint_is_refused_and_nothing_written(release, tmp_path, case):
    state = dict(release.brain_model.state_dict())
    if case == "mismatch":
        state["final_1_higher.weight"] = state["final_1_higher.weight"][:-3]
        state["final_1_higher.bias"] = state["final_1_higher.bias"][:-3]
        obj, message = {"network": state}, "has %d higher-visual voxels but the mask" % (release.n_higher - 3)
    elif case == "pickle":
        obj = {"network": state, "args": argparse.Namespace(lr=1e-3)}
        message = "needs more than tensors to load (refused, it is never unpickled in full): Unsupported global: GLOBAL argparse.Namespace"
    elif case == "key":
        state = {k.replace("final_1_", "final_2_"): v for k, v in state.items()}
        obj, message = {"network": state}, "has no final_1_higher.weight (higher-visual heads found: ['final_2_higher'])"
    elif case == "shape":
        state["final_1_higher.weight"] = state["final_1_higher.weight"][:, :100]
        obj, message = {"network": state}, "must be weight [n_voxels, 512]"
    else:
        obj, message = None, "is not a readable PyTorch checkpoint"
    bad = tmp_path / "bad.chkpt"
    if obj is None:
        bad.write_bytes(b"not a checkpoint")
    else:
        torch.save(obj, bad)
    out = tmp_path / "enc"
    with pytest.raises(SystemExit) as exc:
        ib.main(["--checkpoint", str(bad), "--subject", "subj01", "--nsd-root", str(release.root),
                 "--food-mask", str(release.food), "--hcp-ranking", str(release.hcp), "--out", str(out)])
    text = str(exc.value)
    assert text.startswith("error: ") and "\n" not in text and str(bad) in text and message in text
    assert list(tmp_path.iterdir()) == [bad]


def test_mask_file_errors_name_the_file(release, tmp_path):
    wrong = tmp_path / "food.npy"
    np.save(wrong, np.zeros(7, bool))
    with pytest.raises(ValueError, match=f"--food-mask {wrong} is a boolean array of shape"):
        ib.release_voxels(release.roi_dir, food_mask=wrong)
    with pytest.raises(ValueError, match="higher-visual voxels but the mask from"):
        # without the release masks the union is smaller than the checkpoint's voxels
        _convert(release, tmp_path / "enc", food_mask=None)
    assert not (tmp_path / "enc").exists()


def test_existing_output_needs_overwrite(release, converted):
    with pytest.raises(ValueError, match="already exists; pass --overwrite"):
        _convert(release, converted)
    assert (converted / "head.safetensors").is_file()


def test_saved_union_mask_gives_the_same_encoder(release, converted, tmp_path):
    np.save(tmp_path / "union.npy", release.functional)
    out = _convert(release, tmp_path / "enc", food_mask=None, hcp_ranking=None, union_mask=tmp_path / "union.npy")
    assert bd.load_subject(out / "subject.npz").fingerprint == bd.load_subject(converted / "subject.npz").fingerprint
    np.save(tmp_path / "bad.npy", release.functional[:, :, :-1])
    with pytest.raises(ValueError, match=r"--union-mask .*bad.npy must be a boolean volume of shape \(9, 11, 8\)"):
        ib.release_voxels(release.roi_dir, union_mask=tmp_path / "bad.npy")


def test_without_label_tables_nsd_names_are_used(release, tmp_path):
    out = _convert(release, tmp_path / "enc", label_dir=tmp_path)  # no .ctab there
    subject = bd.load_subject(out / "subject.npz")
    index = tuple(subject.ijk.T)
    faces = np.rint(nib.load(str(release.roi_dir / "floc-faces.nii.gz")).get_fdata())[index]
    np.testing.assert_array_equal(subject.roi("FFA"), np.flatnonzero((faces == 2) | (faces == 3)))
    places = np.rint(nib.load(str(release.roi_dir / "floc-places.nii.gz")).get_fdata())[index]
    np.testing.assert_array_equal(subject.roi("RSC"), np.flatnonzero(places == 3))


def test_unreadable_timm_weights_are_named(release, tmp_path):
    bad = tmp_path / "timm.safetensors"
    bad.write_bytes(b"nope")
    with pytest.raises(ValueError, match=f"--timm-weights {bad} is not a readable .safetensors file"):
        _convert(release, tmp_path / "enc", timm_weights=bad)
    save_file({"cls_token": torch.zeros(1, 1, 64)}, str(bad))
    with pytest.raises(ValueError, match=f"--timm-weights {bad} does not fit OpenCLIP {TINY_NAME}: Missing key"):
        _convert(release, tmp_path / "enc", timm_weights=bad)
    assert not (tmp_path / "enc").exists()


def _copy_release(release, tmp_path) -> Path:
    """A copy of the release's NSD folder and masks, to damage."""
    shutil.copytree(release.root / "nsddata", tmp_path / "nsddata")
    for name in ("food_S1.npy", "best_HCP.npy"):
        shutil.copy(release.root / name, tmp_path / name)
    return tmp_path / "nsddata" / "ppdata" / "subj01" / "func1pt8mm" / "roi"


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
@pytest.mark.parametrize("name", ["prf-visualrois.nii.gz", "floc-faces.nii.gz", "nsdgeneral.nii.gz"])
def test_a_damaged_roi_volume_is_one_line_naming_the_file(release, tmp_path, name, damage):
    roi_dir = _copy_release(release, tmp_path)
    path = roi_dir / name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else data[:40] + bytes(255 - b for b in data[40:]))
    with pytest.raises(SystemExit) as exc:
        ib.main(["--checkpoint", str(release.ckpt), "--subject", "subj01", "--nsd-root", str(tmp_path),
                 "--food-mask", str(tmp_path / "food_S1.npy"), "--hcp-ranking", str(tmp_path / "best_HCP.npy"),
                 "--out", str(tmp_path / "enc")])
    text = str(exc.value)
    assert text.startswith("error: ") and "\n" not in text and str(path) in text, text
    assert not (tmp_path / "enc").exists()


@pytest.mark.parametrize("flag,attr", [("food_mask", "food"), ("hcp_ranking", "hcp"), ("union_mask", None)])
@pytest.mark.parametrize("damage", ["truncated", "pickled"])
def test_a_damaged_mask_file_names_the_file(release, tmp_path, flag, attr, damage):
    bad = tmp_path / f"{flag}.npy"
    source = np.load(getattr(release, attr)) if attr else release.functional
    if damage == "truncated":
        np.save(bad, source)
        bad.write_bytes(bad.read_bytes()[:100])
    else:
        np.save(bad, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError) as exc:
        ib.release_voxels(release.roi_dir, **{flag: bad})
    assert str(bad) in str(exc.value) and "--" + flag.replace("_", "-") in str(exc.value), str(exc.value)


def test_the_summary_line_is_printed_under_python_m(release, tmp_path):
    """``python -m training.import_braindive``: its logger is ``__main__``; the summary must still be shown."""
    args = [sys.executable, "-m", "training.import_braindive", "--checkpoint", str(release.ckpt), "--subject", "subj01",
            "--nsd-root", str(release.root), "--food-mask", str(release.food), "--hcp-ranking", str(release.hcp),
            "--out", str(tmp_path / "enc")]  # the default tower is built at random (OpenCLIP fetches it on use)
    done = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"[training.import_braindive] Imported {release.ckpt.name}" in done.stderr, done.stderr[-2000:]
