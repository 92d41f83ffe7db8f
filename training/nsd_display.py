"""Give a prepared NSD volume subject a flatmap display (``python -m training.nsd_display``).

NSD ships no pycortex database (pycortex #522), so a func1pt8mm subject (``prepare_nsd``,
``import_braindive``) has no surface to draw on. This command gets one, then writes the subject file
again with ``surface``/``transform`` set (``Subject.with_display``: same voxels, same fingerprint):

* ``--pycortex-db DIR``: register an existing pycortex subject folder (e.g. a published NSD database)
  that has flat surfaces and the transform ``--transform``: it is copied into the filestore.
* ``--nsd-root`` / ``--freesurfer-dir``: build one from NSD's FreeSurfer subject. The files
  ``cortex.freesurfer.import_subj`` would import (white -> wm, pial, inflated surfaces in scanner
  coordinates, negated sulc/curv) are converted with nibabel (import_subj shells out to FreeSurfer's
  ``mri_convert``/``mris_convert``; nothing here needs FreeSurfer installed); the flat patches
  ``?h.full.flat.patch.3d`` go through ``cortex.freesurfer.import_flat``, then are rotated by
  ``--flat-rotate`` degrees (NSD's flats come out rotated 90 degrees, pycortex #488).

The func->anatomy alignment (see ``alignment``) comes from NIfTI/MGH headers, not from registration:
NSD's func volumes are already resampled into the subject's anatomical space.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np

from braindive.cache import private_tmp
from braindive.subjects import Subject

from .logs import cli_errors, configure_logging
from .nsd_layout import parse_subject

__all__ = ["SURFACES", "SURFACE_INFO", "FLAT_PATCH", "pycortex_filestore", "alignment", "build_pycortex_subject",
           "register_pycortex_subject", "attach_display", "main"]

log = logging.getLogger(__name__)

SURFACES = {"white": "wm", "pial": "pia", "inflated": "inflated"}      # FreeSurfer -> pycortex surface names
SURFACE_INFO = {"sulc": "sulcaldepth", "curv": "curvature"}             # stored negated, as import_subj does
FLAT_PATCH = "full"                                                     # ?h.full.flat.patch.3d
TRANSFORM = "func1pt8mm"
ANAT = "T1_0pt8_masked.nii.gz"
HEMIS = ("lh", "rh")


@contextmanager
def pycortex_filestore(path):
    """Point pycortex at the filestore ``path`` for the duration: its one database object (shared by every
    pycortex module) is re-initialised there, caches included, and its in-memory config follows; the
    user's options.cfg is never written. Restored afterwards."""
    from cortex import database
    from cortex.options import config

    db = database.db
    saved = dict(db.__dict__), database.default_filestore, config.get("basic", "filestore")
    db.__dict__.clear()
    db.__init__(str(path))
    database.default_filestore = str(path)
    config.set("basic", "filestore", str(path))
    try:
        yield db
    finally:
        db.__dict__.clear()
        db.__dict__.update(saved[0])
        database.default_filestore = saved[1]
        config.set("basic", "filestore", saved[2])


def default_filestore() -> Path:
    from cortex import database

    return Path(database.default_filestore)


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path.name} (looked in {path.parent}).")
    return path


def _read(path: Path, reader):
    try:
        return reader(str(path))
    except Exception as exc:  # nibabel/pycortex raise several types for corrupt files
        raise ValueError(f"{path} is not a readable FreeSurfer file: {exc}") from None


def _fs_files(fs_dir: Path, fs_subject: str) -> dict[str, Path]:
    """Every FreeSurfer file the build reads, checked (presence, vertex counts) before any work."""
    from cortex.freesurfer import parse_patch

    surf = fs_dir / fs_subject / "surf"
    files = {"T1": fs_dir / fs_subject / "mri" / "T1.mgz"}
    for hemi in HEMIS:
        for name in (*SURFACES, "smoothwm", *SURFACE_INFO):  # smoothwm: the topology import_flat reads
            files[f"{hemi}.{name}"] = surf / f"{hemi}.{name}"
        files[f"{hemi}.patch"] = surf / f"{hemi}.{FLAT_PATCH}.flat.patch.3d"
    for key, path in files.items():
        _require(path, f"FreeSurfer subject {fs_subject}: {'flat patch' if key.endswith('patch') else 'file'}")
    for hemi in HEMIS:
        n = len(_read(files[f"{hemi}.smoothwm"], nib.freesurfer.read_geometry)[0])
        counts = {name: len(_read(files[f"{hemi}.{name}"], nib.freesurfer.read_geometry)[0]) for name in SURFACES}
        counts.update({name: len(_read(files[f"{hemi}.{name}"], nib.freesurfer.read_morph_data))
                       for name in SURFACE_INFO})
        counts["patch"] = int(np.abs(_read(files[f"{hemi}.patch"], parse_patch)["vert"]).max(initial=0))
        for name, count in counts.items():
            if count > n or (name != "patch" and count != n):
                what = "as largest vertex" if name == "patch" else "vertices"
                raise ValueError(f"{files[f'{hemi}.{name}']} has {count} {what}, but {files[f'{hemi}.smoothwm'].name} "
                                 f"has {n}.")
    return files


def _centre(affine: np.ndarray, shape) -> np.ndarray:
    """World position of a grid's centre voxel ``N/2`` (FreeSurfer's c_ras convention)."""
    return (affine @ np.r_[np.asarray(shape[:3], float) / 2, 1])[:3]


def alignment(t1_mgz: Path, anat: Path) -> np.ndarray:
    """The 4x4 map from FreeSurfer scanner coordinates to the NSD NIfTI world (pycortex ``magnet`` xfm).

    FreeSurfer's surfaces, moved to scanner coordinates with T1.mgz's ``vox2ras @ inv(vox2ras_tkr)``
    (what ``mris_convert --to-scanner`` does), live in the world of the anatomy FreeSurfer was run on;
    conforming keeps that volume's centre (c_ras). NSD's func1pt8mm volumes are resampled into the same
    anatomical space, and their NIfTI affines place them in the world of NSD's anatomical NIfTIs
    (``ppdata/subjXX/anat/T1_0pt8_masked.nii.gz``). The two worlds can differ only by where the
    origin was put, so they are tied at the T1's centre: a translation ``centre(anat) - c_ras(T1.mgz)``
    (identity when the headers agree). The func voxel of a surface point is then
    ``inv(A_func) @ magnet @ p``, which pycortex stores as the ``coord`` transform.
    """
    t1 = nib.load(str(t1_mgz))
    anat_img = nib.load(str(_require(anat, "NSD anatomy (--anat)")))
    shift = _centre(anat_img.affine, anat_img.shape) - _centre(t1.header.get_vox2ras(), t1.shape)
    magnet = np.eye(4)
    magnet[:3, 3] = shift
    if np.abs(shift).max() > 1e-3:
        log.info("NSD NIfTI world and FreeSurfer scanner world differ by %s mm; tied at the T1 centre.",
                 np.round(shift, 3).tolist())
    return magnet


def _write_surfaces(files: dict[str, Path], folder: Path) -> None:
    """The surfaces, surface info and anatomy import_subj writes, converted with nibabel."""
    from cortex import formats

    t1 = nib.load(str(files["T1"]))
    to_scanner = t1.header.get_vox2ras() @ np.linalg.inv(t1.header.get_vox2ras_tkr())
    for fs_name, cx_name in SURFACES.items():
        for hemi in HEMIS:
            pts, polys = nib.freesurfer.read_geometry(str(files[f"{hemi}.{fs_name}"]))
            pts = pts @ to_scanner[:3, :3].T + to_scanner[:3, 3]
            formats.write_gii(str(folder / "surfaces" / f"{cx_name}_{hemi}.gii"), pts=pts, polys=polys)
    for fs_name, cx_name in SURFACE_INFO.items():
        lh, rh = (nib.freesurfer.read_morph_data(str(files[f"{h}.{fs_name}"])) for h in HEMIS)
        np.savez(folder / "surface-info" / f"{cx_name}.npz", left=-lh, right=-rh)
    raw = nib.Nifti1Image(np.asarray(t1.dataobj), t1.header.get_vox2ras())
    nib.save(raw, str(folder / "anatomicals" / "raw.nii.gz"))


def _rotate_flats(folder: Path, degrees: float) -> None:
    """Rotate both flat surfaces counter-clockwise by ``degrees`` in the flatmap plane."""
    from cortex import formats

    theta = np.deg2rad(degrees)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    for hemi in HEMIS:
        path = folder / "surfaces" / f"flat_{hemi}.gii"
        pts, polys = formats.read_gii(str(path))
        pts = np.array(pts, float)
        pts[:, :2] = pts[:, :2] @ rot.T
        formats.write_gii(str(path), pts=pts, polys=polys)


def _install(built: Path, filestore: Path, name: str, overwrite: bool) -> Path:
    """Move a complete subject folder into the filestore under ``name`` (rename: nothing half-written)."""
    target = filestore / name
    if target.exists() and not overwrite:
        raise ValueError(f"pycortex subject {name!r} already exists in {filestore}; pass --overwrite to replace it.")
    filestore.mkdir(parents=True, exist_ok=True)
    staged = private_tmp(target, ".partial")
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(built, staged)
    if target.exists():
        old = private_tmp(target, ".old")
        target.rename(old)
        shutil.rmtree(old)
    staged.rename(target)
    return target


def _check_grid(subject: Subject, subject_path: Path, reference: Path) -> None:
    img = nib.load(str(_require(reference, "transform reference")))
    shape = tuple(int(s) for s in img.shape[:3])
    if shape != tuple(subject.volume_shape) or not np.allclose(img.affine, subject.affine, atol=1e-3):
        raise ValueError(f"Transform reference {reference} is a {shape} grid with affine "
                         f"{np.round(img.affine, 3).tolist()}, but subject {subject_path} is a "
                         f"{tuple(subject.volume_shape)} grid with affine {np.round(subject.affine, 3).tolist()}.")


def build_pycortex_subject(fs_dir, fs_subject: str, name: str, func_reference, anat, filestore, *,
                           transform: str = TRANSFORM, flat_rotate: float = 90.0, overwrite: bool = False) -> Path:
    """Build pycortex subject ``name`` from a FreeSurfer subject plus the func transform; returns its folder."""
    import cortex.freesurfer

    fs_dir, filestore = Path(fs_dir), Path(filestore)
    if (filestore / name).exists() and not overwrite:
        raise ValueError(f"pycortex subject {name!r} already exists in {filestore}; pass --overwrite to replace it.")
    files = _fs_files(fs_dir, fs_subject)
    _require(Path(func_reference), "func reference volume (--func-reference)")
    magnet = alignment(files["T1"], Path(anat))
    with tempfile.TemporaryDirectory(dir=filestore.parent if filestore.parent.exists() else None) as tmp, \
            pycortex_filestore(tmp) as db:
        folder = Path(tmp) / name
        for sub in ("transforms", "anatomicals", "cache", "surfaces", "surface-info", "views"):
            (folder / sub).mkdir(parents=True)
        _write_surfaces(files, folder)
        cortex.freesurfer.import_flat(fs_subject, FLAT_PATCH, hemis=list(HEMIS), cx_subject=name,
                                      flat_type="freesurfer", auto_overwrite=True, freesurfer_subject_dir=str(fs_dir))
        if flat_rotate % 360:
            _rotate_flats(folder, flat_rotate)
        db.save_xfm(name, transform, magnet, xfmtype="magnet", reference=str(func_reference))
        return _install(folder, filestore, name, overwrite)


def register_pycortex_subject(folder, name: str, filestore, *, transform: str = TRANSFORM, overwrite: bool = False,
                              subject: Subject | None = None, subject_path=None) -> Path:
    """Copy an existing pycortex subject folder (flat surfaces + ``transform``) into the filestore, after
    checking its files and (given ``subject``) that the transform's grid is the subject's."""
    folder, filestore = Path(folder), Path(filestore)
    needed = [folder / "surfaces" / f"{s}_{h}.gii" for s in ("flat", "wm", "pia", "inflated") for h in HEMIS]
    needed += [folder / "transforms" / transform / f for f in ("matrices.xfm", "reference.nii.gz")]
    for path in needed:
        kind = f"transform {transform!r} file" if path.parent.name == transform else "surface"
        _require(path, f"pycortex database {folder}: {kind}")
    if subject is not None:
        _check_grid(subject, Path(subject_path), folder / "transforms" / transform / "reference.nii.gz")
    if (filestore / name).resolve() == folder.resolve():
        return folder
    return _install(folder, filestore, name, overwrite)


def _load_volume_subject(path: Path) -> Subject:
    subject = Subject.load(path)
    if subject.kind != "volume":
        raise ValueError(f"Subject {path} is a {subject.kind} subject, drawn on its own surface; only volume "
                         "subjects need nsd_display.")
    return subject


def attach_display(subject_path, out, surface: str, transform: str, filestore) -> Subject:
    """Write ``subject_path``'s subject to ``out`` with ``surface``/``transform`` set, after checking the grid."""
    subject = _load_volume_subject(Path(subject_path))
    with pycortex_filestore(filestore):
        shown = subject.with_display(surface, transform)  # checks the transform's grid against the subject's
    shown.save(out)
    return shown


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subject-file", required=True, type=Path,
                   help="volume subject .npz (prepare_nsd, import_braindive)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pycortex-db", type=Path, help="existing pycortex subject folder to register")
    src.add_argument("--nsd-root", type=Path, help="NSD root: build from nsddata/freesurfer/subjXX")
    src.add_argument("--freesurfer-dir", type=Path,
                     help="FreeSurfer SUBJECTS_DIR holding subjXX (needs --anat, --func-reference)")
    p.add_argument("--nsd-subject", help="NSD subject (default: the subject file's name)")
    p.add_argument("--anat", type=Path, help=f"NSD anatomy NIfTI (default NSD_ROOT/nsddata/ppdata/subjXX/anat/{ANAT})")
    p.add_argument("--func-reference", type=Path,
                   help="func1pt8mm NIfTI defining the grid "
                   "(default NSD_ROOT/nsddata/ppdata/subjXX/func1pt8mm/roi/nsdgeneral.nii.gz)")
    p.add_argument("--surface", help="pycortex subject name to write (default: the subject's name)")
    p.add_argument("--transform", default=TRANSFORM, help="pycortex transform name (default %(default)s)")
    p.add_argument("--flat-rotate", type=float, default=90.0, help="rotate built flatmaps CCW by this many degrees "
                   "(default %(default)s: NSD's flats come out rotated, pycortex #488; 0 keeps FreeSurfer's)")
    p.add_argument("--filestore", type=Path, help="pycortex filestore (default: pycortex's configured one)")
    p.add_argument("--out", type=Path, help="subject file to write (default: replace --subject-file)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing pycortex subject of that name")
    return p


def main(argv=None) -> Subject:
    args = _parser().parse_args(argv)
    configure_logging()
    with cli_errors():
        subject = _load_volume_subject(args.subject_file)
        surface = args.surface or subject.name
        filestore = args.filestore or default_filestore()
        if args.pycortex_db:
            register_pycortex_subject(args.pycortex_db, surface, filestore, transform=args.transform,
                                      overwrite=args.overwrite, subject=subject, subject_path=args.subject_file)
        else:
            subj = f"subj{parse_subject(args.nsd_subject or subject.name):02d}"
            root = args.nsd_root
            if root is None and (args.anat is None or args.func_reference is None):
                raise ValueError("`--freesurfer-dir` needs --anat and --func-reference (or use --nsd-root).")
            fs_dir = args.freesurfer_dir or root / "nsddata" / "freesurfer"
            anat = args.anat or root / "nsddata" / "ppdata" / subj / "anat" / ANAT
            reference = args.func_reference or root / "nsddata/ppdata" / subj / "func1pt8mm/roi/nsdgeneral.nii.gz"
            _check_grid(subject, args.subject_file, reference)
            build_pycortex_subject(fs_dir, subj, surface, reference, anat, filestore, transform=args.transform,
                                   flat_rotate=args.flat_rotate, overwrite=args.overwrite)
        shown = attach_display(args.subject_file, args.out or args.subject_file, surface, args.transform, filestore)
        log.info("%s now draws on pycortex subject %r with transform %r (filestore %s)", shown.name, surface,
                 args.transform, filestore)
        return shown


if __name__ == "__main__":
    main()
