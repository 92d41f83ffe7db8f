"""Import an encoder released with BrainDiVE (NeurIPS 2023) (``python -m training.import_braindive``).

The release (aluo-x/BrainDiVE, ``encoder_model_vit.downproject_CLIP_split_linear``, used by
``run_brain_guidance_*.py``) stores per subject ``{"network": state_dict}`` whose
``final_{subject}_higher.weight`` ``[n_voxels, 512]`` and ``.bias`` map the L2-normalised image
embedding of timm ``vit_base_patch16_clip_224.laion2b`` (CLIP-normalised 224 px input) to the
*higher visual* voxels: voxels of a func1pt8mm union mask with ``prf-visualrois < 0.5``, in numpy
boolean-index (C) order. The union mask is built exactly as the published scripts do:

* ``prf-visualrois``, ``floc-bodies``, ``floc-faces``, ``floc-places``, ``floc-words``: value >= 0.5;
* the food mask (``--food-mask``, release file): cortex voxels (``nsdgeneral > -0.5``, C order) selected
  by a boolean vector or index array;
* the HCP mask (``--hcp-ranking``, release file): ``HCP_MMP1`` labels equal to one of the first 45 ids.

The result is this project's encoder (``ClipLinearEncoder``: OpenCLIP ViT-B-16 laion2b_s34b_b88k, the
same network and weights as the timm tower, see ``timm_to_open_clip``) with its func1pt8mm volume
subject. Checkpoints are read with ``torch.load(weights_only=True)`` only.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import pickle
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from braindive.encoders import SUBJECT_NAME, ClipLinearEncoder, EncoderConfig, build_clip_tower
from braindive.subjects import Subject

from .logs import cli_errors, configure_logging
from .nsd_io import read_array, read_header, read_volume
from .nsd_layout import NSDLayout, parse_subject, read_ctab, require
from .nsd_spaces import subject_rois

__all__ = ["UNION_ROIS", "NSD_LABELS", "HCP_TOP", "ReleaseVoxels", "release_voxels", "release_subject", "read_release_head",
           "timm_to_open_clip", "import_braindive", "main"]

log = logging.getLogger(__name__)

UNION_ROIS = ("prf-visualrois", "floc-bodies", "floc-faces", "floc-places", "floc-words")
# named regions of the higher voxels, with NSD's label tables (used where no <family>.mgz.ctab is found);
# the published scripts use the same ids (OFA 1, FFA 2+3 of floc-faces; OPA 1, PPA 2, RSC 3 of floc-places)
NSD_LABELS = {
    "floc-faces": ("OFA", "FFA-1", "FFA-2", "mTL-faces", "aTL-faces"),
    "floc-places": ("OPA", "PPA", "RSC"),
    "floc-bodies": ("EBA", "FBA-1", "FBA-2", "mTL-bodies"),
    "floc-words": ("OWFA", "VWFA-1", "VWFA-2", "mfs-words", "mTL-words"),
}
HCP_TOP = 45
EMBED_DIM = 512
BACKBONE, PRETRAINED = "ViT-B-16", "laion2b_s34b_b88k"  # = timm vit_base_patch16_clip_224.laion2b
SPACE = "func1pt8mm"


def _volume(path: Path, what: str, shape: tuple | None = None) -> np.ndarray:
    """A 3-D volume as float64 (``get_fdata``, as the published ``load_from_nii``)."""
    data = np.asarray(read_volume(require(path, what), what), dtype=np.float64)
    if data.ndim != 3 or (shape is not None and data.shape != shape):
        raise ValueError(f"{path} has shape {data.shape}, expected {shape or 'a 3-D volume'} like prf-visualrois.")
    return data


@dataclass
class ReleaseVoxels:
    """The published voxel set of one subject.

    Attributes:
        union: 3-D bool, the union ("functional") mask.
        higher: 3-D bool, ``union & (prf-visualrois < 0.5)``; its C-order voxels are the head's rows.
        affine: NIfTI affine of the func1pt8mm grid.
    """

    union: np.ndarray
    higher: np.ndarray
    affine: np.ndarray

    @property
    def ijk(self) -> np.ndarray:
        return np.argwhere(self.higher).astype(np.int64)

    @property
    def n_voxels(self) -> int:
        return int(self.higher.sum())


def _food_volume(path: Path, roi_dir: Path, shape: tuple) -> np.ndarray:
    cortex = _volume(roi_dir / "nsdgeneral.nii.gz", "cortex mask (for --food-mask)", shape) > -0.5
    sel = read_array(require(path, "--food-mask"), "--food-mask")
    n_cortex = int(cortex.sum())
    if sel.dtype == bool and sel.shape != (n_cortex,):
        raise ValueError(f"--food-mask {path} is a boolean array of shape {sel.shape}; expected ({n_cortex},), "
                         "one value per cortex voxel (nsdgeneral > -0.5, C order).")
    if sel.dtype != bool and (not np.issubdtype(sel.dtype, np.integer) or sel.ndim != 1
                              or (sel.size and (sel.min() < -n_cortex or sel.max() >= n_cortex))):
        raise ValueError(f"--food-mask {path} must be a boolean vector or 1-D indices into the {n_cortex} cortex "
                         f"voxels, got dtype {sel.dtype}, shape {sel.shape}.")
    flat = np.zeros(n_cortex, bool)
    flat[sel] = True
    out = np.zeros(shape, bool)
    out[cortex] = flat
    return out


def _hcp_volume(path: Path, roi_dir: Path, shape: tuple, top: int) -> np.ndarray:
    ranking = read_array(require(path, "--hcp-ranking"), "--hcp-ranking")
    if ranking.ndim != 1 or not np.issubdtype(ranking.dtype, np.number) or len(ranking) < top:
        raise ValueError(f"--hcp-ranking {path} must be a 1-D array of at least {top} HCP_MMP1 label ids, "
                         f"got dtype {ranking.dtype}, shape {ranking.shape}.")
    labels = _volume(roi_dir / "HCP_MMP1.nii.gz", "ROI file HCP_MMP1 (for --hcp-ranking)", shape).astype(np.int32)
    return np.isin(labels, ranking[:top].astype(np.int64))


def _union_volume(path: Path, shape: tuple) -> np.ndarray:
    union = read_array(require(path, "--union-mask"), "--union-mask")
    if union.shape != shape or not (union.dtype == bool or np.isin(union, (0, 1)).all()):
        raise ValueError(f"--union-mask {path} must be a boolean volume of shape {shape} like prf-visualrois, "
                         f"got dtype {union.dtype}, shape {union.shape}.")
    return union.astype(bool)


def release_voxels(roi_dir, food_mask=None, hcp_ranking=None, hcp_top: int = HCP_TOP, union_mask=None) -> ReleaseVoxels:
    """Build the published union mask and its higher-visual voxels from NSD ROI volumes (+ release masks),
    or take the union mask as a saved boolean volume (``union_mask``, .npy)."""
    roi_dir = Path(roi_dir)
    prf_path = roi_dir / "prf-visualrois.nii.gz"
    prf = _volume(prf_path, "ROI file prf-visualrois")
    shape = prf.shape
    if union_mask is not None:
        union, source = _union_volume(Path(union_mask), shape), f"--union-mask {union_mask}"
    else:
        selected = [prf >= 0.5] + [_volume(roi_dir / f"{f}.nii.gz", f"ROI file {f}", shape) >= 0.5
                                   for f in UNION_ROIS[1:]]
        if food_mask is not None:
            selected.append(_food_volume(Path(food_mask), roi_dir, shape))
        if hcp_ranking is not None:
            selected.append(_hcp_volume(Path(hcp_ranking), roi_dir, shape, hcp_top))
        union, source = np.logical_or.reduce(selected), f"The union mask from {roi_dir}"
    higher = union & (prf.astype(np.int32) < 0.5)
    if not higher.any():
        raise ValueError(f"{source} has no higher-visual voxels (prf-visualrois < 0.5).")
    return ReleaseVoxels(union=union, higher=higher, affine=read_header(prf_path, "ROI file prf-visualrois").affine)


def _load_tensors(path: Path) -> dict:
    """``torch.load(weights_only=True)``; anything that needs more than tensors is refused."""
    try:
        obj = torch.load(require(path, "--checkpoint"), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n\n|$)", str(exc), re.S)
        reason = " ".join(found.group(1).split()) if found else (str(exc).strip().splitlines() or ["?"])[0]
        if "Unsupported global" not in reason:
            raise ValueError(f"--checkpoint {path} is not a readable PyTorch checkpoint: {reason}") from None
        raise ValueError(f"--checkpoint {path} needs more than tensors to load (refused, it is never unpickled "
                         f"in full): {reason}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as exc:
        raise ValueError(f"--checkpoint {path} is not a readable PyTorch checkpoint: {exc}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("network"), dict):
        found = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"--checkpoint {path} has no 'network' state dict (found {found}).")
    return obj["network"]


def release_subject(path) -> int:
    """The subject number of a checkpoint's only higher-visual head (``final_{N}_higher``)."""
    path = Path(path)
    heads = (re.fullmatch(r"final_(\d+)_higher\.weight", str(k)) for k in _load_tensors(path))
    numbers = sorted({int(m.group(1)) for m in heads if m})
    if len(numbers) != 1:
        raise ValueError(f"--checkpoint {path} has higher-visual heads for subjects {numbers}; pass --subject.")
    return numbers[0]


def read_release_head(path, subject: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight [n, 512], bias [n])`` of ``final_{subject}_higher`` from a released checkpoint."""
    path = Path(path)
    state = _load_tensors(path)
    key = f"final_{subject}_higher"
    found = sorted({k.rsplit(".", 1)[0] for k in state if re.fullmatch(r"final_\w+_higher\.(weight|bias)", str(k))})
    missing = [f"{key}.{p}" for p in ("weight", "bias") if f"{key}.{p}" not in state]
    if missing:
        raise ValueError(f"--checkpoint {path} has no {missing[0]} (higher-visual heads found: {found or 'none'}).")
    weight, bias = state[f"{key}.weight"], state[f"{key}.bias"]
    if (not isinstance(weight, torch.Tensor) or weight.ndim != 2 or weight.shape[1] != EMBED_DIM
            or not isinstance(bias, torch.Tensor) or bias.shape != (weight.shape[0],)):
        raise ValueError(f"--checkpoint {path}: {key} must be weight [n_voxels, {EMBED_DIM}] and bias [n_voxels], "
                         f"got {tuple(getattr(weight, 'shape', ()))} and {tuple(getattr(bias, 'shape', ()))}.")
    return weight.float(), bias.float()


_TIMM_RENAMES = (
    ("blocks.", "transformer.resblocks."), ("patch_embed.proj.", "conv1."), ("norm_pre.", "ln_pre."),
    (".norm1.", ".ln_1."), (".norm2.", ".ln_2."), (".attn.qkv.weight", ".attn.in_proj_weight"),
    (".attn.qkv.bias", ".attn.in_proj_bias"), (".attn.proj.", ".attn.out_proj."),
    (".mlp.fc1.", ".mlp.c_fc."), (".mlp.fc2.", ".mlp.c_proj."),
)


def timm_to_open_clip(state: dict, source: str = "timm weights") -> dict:
    """Map a timm ``vit_*_clip_*`` state dict onto OpenCLIP's ``VisionTransformer`` (the inverse of timm's
    ``_convert_openai_clip``): same network, so outputs are equal. timm's ``head.bias`` must be zero."""
    out = {}
    for key, value in state.items():
        if key == "cls_token":
            out["class_embedding"] = value.reshape(-1)
        elif key == "pos_embed":
            out["positional_embedding"] = value[0]
        elif key in ("norm.weight", "norm.bias"):
            out["ln_post." + key.split(".")[1]] = value
        elif key == "head.weight":
            out["proj"] = value.t().contiguous()
        elif key == "head.bias":
            if value.abs().max() > 0:
                raise ValueError(f"{source}: head.bias is not zero; OpenCLIP's projection has no bias.")
        else:
            for old, new in _TIMM_RENAMES:
                key = key.replace(old, new)
            out[key] = value
    return out


def _tower(backbone: str, backbone_config: dict | None, timm_weights: Path | None):
    """The image tower: random (only its shape is used; OpenCLIP fetches ``PRETRAINED``), or timm weights."""
    tower = build_clip_tower(backbone, None, backbone_config)
    if timm_weights is not None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            raw = load_file(str(require(timm_weights, "--timm-weights")))
        except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
            raise ValueError(f"--timm-weights {timm_weights} is not a readable .safetensors file: {exc}") from None
        state = timm_to_open_clip(raw, str(timm_weights))
        try:
            tower.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
            raise ValueError(f"--timm-weights {timm_weights} does not fit OpenCLIP {backbone}: {first}") from None
    if int(tower.output_dim) != EMBED_DIM:
        raise ValueError(f"`backbone` {backbone!r} embeds to {tower.output_dim} dims; the release's heads need "
                         f"{EMBED_DIM}.")
    return tower


def _volume_subject(voxels: ReleaseVoxels, roi_dir: Path, label_dir: Path, name: str, food_mask) -> Subject:
    """The func1pt8mm subject of the higher-visual voxels, with NSD's floc ROIs (+ food)."""
    shape = voxels.higher.shape
    index = tuple(voxels.ijk.T)
    labels = {}
    for family, names in NSD_LABELS.items():
        values = np.rint(_volume(roi_dir / f"{family}.nii.gz", f"ROI file {family}", shape)[index]).astype(np.int64)
        values[values < 0] = 0
        ctab = label_dir / f"{family}.mgz.ctab"
        table = read_ctab(ctab, family) if ctab.is_file() else dict(enumerate(names, 1))
        labels[family] = (values, {int(v): table.get(int(v), f"{family}-{int(v)}") for v in np.unique(values) if v > 0})
    rois = subject_rois(labels)
    if food_mask is not None:
        rois["food"] = np.flatnonzero(_food_volume(Path(food_mask), roi_dir, shape)[index])
    lh_path = roi_dir / "lh.nsdgeneral.nii.gz"
    is_right, note = None, " (hemispheres from scanner x > 0: lh.nsdgeneral.nii.gz not found)"
    if lh_path.is_file():
        is_right, note = np.rint(_volume(lh_path, "hemisphere mask", shape)[index]) < 0, ""
    return Subject.from_volume(
        name, voxels.ijk, voxels.affine, shape, {k: v for k, v in rois.items() if len(v)},
        is_right=is_right, space=SPACE,
        description=f"NSD {name} {SPACE}: higher-visual voxels of the BrainDiVE (NeurIPS 2023) release{note}",
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_folder(out: Path, write, overwrite: bool) -> None:
    """Write a folder under a temporary name and rename it into place (nothing half-written)."""
    if out.exists() and not overwrite:
        raise ValueError(f"`--out` {out} already exists; pass --overwrite to replace it.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = (out.with_name(f".{out.name}.{os.getpid()}.{s}") for s in ("partial", "old"))
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def import_braindive(checkpoint, roi_dir, subject, out, *, food_mask=None, hcp_ranking=None, hcp_top: int = HCP_TOP,
                     union_mask=None, label_dir=None, timm_weights=None, backbone: str = BACKBONE,
                     backbone_config: dict | None = None, overwrite: bool = False) -> Path:
    """Convert a released checkpoint into an encoder folder ``out`` (config.json, head.safetensors, subject.npz).

    ``union_mask``: the union mask as a boolean .npy volume, instead of building it (then ``food_mask`` only
    names the ``food`` ROI).
    ``label_dir``: the folder of ``<family>.mgz.ctab`` label names (NSD: ``nsddata/freesurfer/subjXX/label``;
    default: beside the ROI volumes; missing tables give names like ``floc-faces-2``).
    ``timm_weights``: timm ``vit_base_patch16_clip_224.laion2b`` weights (safetensors) to store in the
    checkpoint (``backbone.safetensors``); without them the encoder uses OpenCLIP's ``laion2b_s34b_b88k``.
    """
    checkpoint, roi_dir, out = Path(checkpoint), Path(roi_dir), Path(out)
    n = parse_subject(subject)
    voxels = release_voxels(roi_dir, food_mask, hcp_ranking, hcp_top, union_mask)
    weight, bias = read_release_head(checkpoint, n)
    if weight.shape[0] != voxels.n_voxels:
        raise ValueError(f"--checkpoint {checkpoint} has {weight.shape[0]} higher-visual voxels but the mask from "
                         f"{roi_dir} has {voxels.n_voxels} (check --food-mask, --hcp-ranking, --hcp-top, --union-mask, "
                         "--subject).")
    subj = _volume_subject(voxels, roi_dir, Path(label_dir) if label_dir else roi_dir, f"subj{n:02d}", food_mask)
    tower = _tower(backbone, backbone_config, Path(timm_weights) if timm_weights else None)
    config = EncoderConfig.for_subject(
        subj, backbone=backbone,
        pretrained=None if timm_weights else PRETRAINED, backbone_config=backbone_config,
        training={"source": "BrainDiVE NeurIPS 2023 release (aluo-x/BrainDiVE, downproject_CLIP_split_linear)",
                  "checkpoint": str(checkpoint.resolve()), "checkpoint_sha256": _sha256(checkpoint),
                  "head": f"final_{n}_higher", "roi_dir": str(roi_dir.resolve()),
                  "food_mask": str(food_mask) if food_mask else None,
                  "hcp_ranking": str(hcp_ranking) if hcp_ranking else None, "hcp_top": hcp_top,
                  "union_mask": str(union_mask) if union_mask else None, "subject_file": SUBJECT_NAME,
                  "union_voxels": int(voxels.union.sum()), "timm_weights": str(timm_weights) if timm_weights else None},
    )
    encoder = ClipLinearEncoder(config, tower=tower)
    with torch.no_grad():
        encoder.head.weight.copy_(weight)
        encoder.head.bias.copy_(bias)

    def write(folder: Path) -> None:
        subj.save(folder / SUBJECT_NAME)
        encoder.save(folder)

    _write_folder(out, write, overwrite)
    log.info("Imported %s (%d higher-visual voxels of %d in the union mask) -> %s", checkpoint.name,
             voxels.n_voxels, int(voxels.union.sum()), out)
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, type=Path, help="released encoder checkpoint ({'network': ...})")
    p.add_argument("--subject", help="NSD subject of the checkpoint: subj01..subj08 or 1..8 (default: the "
                   "checkpoint's only final_N_higher head)")
    roi = p.add_mutually_exclusive_group(required=True)
    roi.add_argument("--nsd-root", type=Path, help="NSD root: ROIs from nsddata/ppdata/subjXX/func1pt8mm/roi")
    roi.add_argument("--roi-dir", type=Path, help="folder with the subject's func1pt8mm ROI volumes")
    p.add_argument("--label-dir", type=Path, help="folder of <roi>.mgz.ctab label names (default: from --nsd-root, "
                   "else beside the ROI volumes)")
    p.add_argument("--food-mask", type=Path, help="release food mask .npy (over nsdgeneral > -0.5 cortex voxels)")
    p.add_argument("--hcp-ranking", "--hcp-mask", dest="hcp_ranking", type=Path,
                   help="release HCP ranking .npy (HCP_MMP1 ids, best first; the published best_HCP.npy)")
    p.add_argument("--hcp-top", type=int, default=HCP_TOP, help="ids of --hcp-ranking used (published: 45)")
    p.add_argument("--union-mask", type=Path, help="the union mask as a boolean .npy volume (instead of building it)")
    p.add_argument("--timm-weights", type=Path, help="timm vit_base_patch16_clip_224.laion2b .safetensors to store")
    p.add_argument("--out", required=True, type=Path, help="encoder folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return p


def main(argv=None) -> Path:
    args = _parser().parse_args(argv)
    configure_logging()
    with cli_errors():
        if args.hcp_top < 1:
            raise ValueError(f"`--hcp-top` must be >= 1, got {args.hcp_top}.")
        n = parse_subject(args.subject) if args.subject else release_subject(args.checkpoint)
        layout = NSDLayout(args.nsd_root, n) if args.nsd_root else None
        roi_dir = args.roi_dir or layout.roi_dir(SPACE)
        label_dir = args.label_dir or (layout.label_dir() if layout else None)
        return import_braindive(args.checkpoint, roi_dir, n, args.out, food_mask=args.food_mask,
                                hcp_ranking=args.hcp_ranking, hcp_top=args.hcp_top, union_mask=args.union_mask,
                                label_dir=label_dir,
                                timm_weights=args.timm_weights, overwrite=args.overwrite)


if __name__ == "__main__":
    main()
