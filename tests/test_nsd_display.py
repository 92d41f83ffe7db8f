"""``training.nsd_display``: a synthetic FreeSurfer subject in the real file formats (nibabel.freesurfer
surfaces and morph data, MGH T1, a binary flat patch) imported into a temporary pycortex filestore."""
from __future__ import annotations

import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import braindive as bd
from braindive.subjects import Subject
from training import nsd_display as nd

FUNC_SHAPE = (10, 12, 9)
FUNC_AFFINE = np.array([[1.8, 0, 0, -9.0], [0, 1.8, 0, -11.0], [0, 0, 1.8, -7.0], [0, 0, 0, 1]])
C_RAS = np.array([2.0, -3.0, 1.5])      # FreeSurfer's T1.mgz centre (scanner mm)
NSD_SHIFT = np.array([5.0, 0.0, -2.0])  # NSD NIfTI world = FreeSurfer scanner world + this
GRID = (5, 6)                           # vertices per hemisphere: a x b grid


def hemi_voxels(hemi: str) -> np.ndarray:
    """The func voxel each vertex of ``hemi`` sits on (vertex order a-major)."""
    a, b = np.meshgrid(np.arange(GRID[0]), np.arange(GRID[1]), indexing="ij")
    i = a.ravel() + (0 if hemi == "lh" else 5)
    return np.c_[i, b.ravel() + 3, np.full(a.size, 4)]


def grid_faces() -> np.ndarray:
    idx = np.arange(GRID[0] * GRID[1]).reshape(GRID)
    quads = [(idx[a, b], idx[a + 1, b], idx[a + 1, b + 1], idx[a, b + 1])
             for a in range(GRID[0] - 1) for b in range(GRID[1] - 1)]
    return np.array([f for q in quads for f in ((q[0], q[1], q[2]), (q[0], q[2], q[3]))], np.int32)


def write_patch(path: Path, coords: np.ndarray) -> None:
    """FreeSurfer binary patch: int32 -1, n, then (1-based vertex, x, y, z) per vertex, big-endian."""
    with open(path, "wb") as f:
        f.write(struct.pack(">ii", -1, len(coords)))
        for v, (x, y, z) in enumerate(coords, 1):
            f.write(struct.pack(">ifff", v, x, y, z))


def make_freesurfer_subject(fs_dir: Path, subj: str = "subj01") -> None:
    surf, mri = fs_dir / subj / "surf", fs_dir / subj / "mri"
    surf.mkdir(parents=True)
    mri.mkdir(parents=True)
    lia = np.array([[-1.0, 0, 0, 16], [0, 0, 1, -16], [0, -1, 0, 16], [0, 0, 0, 1]])  # conformed 32^3, 1 mm
    vox2ras = lia.copy()
    vox2ras[:3, 3] += C_RAS
    nib.save(nib.MGHImage(np.zeros((32, 32, 32), np.uint8), vox2ras), str(mri / "T1.mgz"))
    rng = np.random.default_rng(0)
    faces = grid_faces()
    for hemi in ("lh", "rh"):
        world = (np.c_[hemi_voxels(hemi), np.ones(GRID[0] * GRID[1])] @ FUNC_AFFINE.T)[:, :3]  # NSD world
        tkr = world - NSD_SHIFT - C_RAS
        for name, dz in (("white", -0.4), ("smoothwm", -0.4), ("pial", 0.4), ("inflated", 0.0)):
            nib.freesurfer.write_geometry(str(surf / f"{hemi}.{name}"), tkr + [0, 0, dz], faces)
        for name in ("sulc", "curv"):
            nib.freesurfer.write_morph_data(str(surf / f"{hemi}.{name}"), rng.normal(size=len(tkr)).astype(np.float32))
        a, b = np.meshgrid(np.arange(GRID[0]), np.arange(GRID[1]), indexing="ij")
        write_patch(surf / f"{hemi}.full.flat.patch.3d", np.c_[a.ravel() * 3.0, b.ravel() * 4.0, np.zeros(a.size)])


@pytest.fixture
def nsd(tmp_path):
    """NSD root with a FreeSurfer subject, anatomy, func grid, and a prepared func1pt8mm volume subject."""
    root = tmp_path / "nsd"
    make_freesurfer_subject(root / "nsddata" / "freesurfer")
    anat_dir = root / "nsddata" / "ppdata" / "subj01" / "anat"
    roi_dir = root / "nsddata" / "ppdata" / "subj01" / "func1pt8mm" / "roi"
    anat_dir.mkdir(parents=True)
    roi_dir.mkdir(parents=True)
    anat_affine = np.diag([0.8, 0.8, 0.8, 1.0])
    anat_affine[:3, 3] = C_RAS + NSD_SHIFT - 0.8 * 20  # a 40^3 grid whose centre is FreeSurfer's c_ras, shifted
    nib.save(nib.Nifti1Image(np.zeros((40, 40, 40), np.int16), anat_affine), str(anat_dir / "T1_0pt8_masked.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros(FUNC_SHAPE, np.int16), FUNC_AFFINE), str(roi_dir / "nsdgeneral.nii.gz"))
    ijk = np.argwhere(np.ones(FUNC_SHAPE, bool))
    subject = Subject.from_volume("subj01", ijk, FUNC_AFFINE, FUNC_SHAPE, {"all": np.arange(len(ijk))},
                                  space="func1pt8mm")
    path = subject.save(tmp_path / "subj01_func1pt8mm.subject.npz")
    return root, path, subject


def test_build_from_freesurfer_maps_vertices_to_their_voxels(nsd, tmp_path):
    import cortex

    root, path, subject = nsd
    store = tmp_path / "store"
    shown = nd.main(["--subject-file", str(path), "--nsd-root", str(root), "--filestore", str(store)])
    assert (shown.surface, shown.transform) == ("subj01", "func1pt8mm")
    assert shown.fingerprint == subject.fingerprint
    reloaded = Subject.load(path)
    assert (reloaded.surface, reloaded.transform) == ("subj01", "func1pt8mm")

    with nd.pycortex_filestore(store):
        assert reloaded.drawable
        # pycortex's own transform: fiducial vertices -> func voxel coordinates
        coords = cortex.db.get_coords("subj01", "func1pt8mm")
        expected = np.concatenate([hemi_voxels("lh"), hemi_voxels("rh")])
        np.testing.assert_array_equal(np.concatenate(coords), expected)
        # flats: pycortex's freesurfer import swaps/flips the axes; the 90 degree rotation (#488) restores
        # the patch's own (x, y)
        (lh_flat, _), (rh_flat, _) = cortex.db.get_surf("subj01", "flat", merge=False, nudge=False)
        a, b = np.meshgrid(np.arange(GRID[0]), np.arange(GRID[1]), indexing="ij")
        np.testing.assert_allclose(lh_flat[:, :2], np.c_[a.ravel() * 3.0, b.ravel() * 4.0], atol=1e-4)
        # surface info stored negated, as cortex.freesurfer.import_subj does
        sulc = nib.freesurfer.read_morph_data(str(root / "nsddata/freesurfer/subj01/surf/lh.sulc"))
        np.testing.assert_allclose(np.load(store / "subj01/surface-info/sulcaldepth.npz")["left"], -sulc)
        # pycortex draws a func1pt8mm volume through it: each flatmap pixel shows one of the vertices' voxels
        linear = np.arange(np.prod(FUNC_SHAPE), dtype=float).reshape(FUNC_SHAPE)
        image, _ = cortex.quickflat.utils.make_flatmap_image(cortex.Volume(linear.T, "subj01", "func1pt8mm"),
                                                              height=120)
        shown_voxels = np.unique(image[np.isfinite(image)]).astype(int)
        assert set(shown_voxels) == set(np.ravel_multi_index(tuple(expected.T), FUNC_SHAPE))
        # ... and so does the app's flatmap: render, click and paint resolve to those voxels
        vertex_voxels = np.ravel_multi_index(tuple(expected.T), FUNC_SHAPE)  # == voxel index (C-order subject)
        values = np.arange(reloaded.n_voxels, dtype=float)
        image = bd.flatmap.render_flatmap(values, reloaded, width=256)
        painted = bd.flatmap.voxels_in_mask(reloaded, np.ones(image.shape[:2], bool))
        np.testing.assert_array_equal(painted, np.sort(vertex_voxels))
        picks = [bd.flatmap.pick(reloaded, x, y, image.shape) for x in range(0, image.shape[1], 4)
                 for y in range(0, image.shape[0], 4)]
        picked = {p.voxel for p in picks if p is not None} - {None}
        assert picked <= set(vertex_voxels) and len(picked) > 20
        assert {reloaded.hemisphere_of(v) for v in picked} == {"lh", "rh"}
    assert not any(p.name.startswith(".") for p in store.iterdir())


def test_register_existing_database(nsd, tmp_path):
    root, path, subject = nsd
    built = tmp_path / "built"
    nd.main(["--subject-file", str(path), "--nsd-root", str(root), "--filestore", str(built),
             "--out", str(tmp_path / "first.npz")])
    store = tmp_path / "store"
    out = tmp_path / "registered.npz"
    nd.main(["--subject-file", str(path), "--pycortex-db", str(built / "subj01"), "--surface", "nsd01",
             "--filestore", str(store), "--out", str(out)])
    shown = Subject.load(out)
    assert (shown.surface, shown.transform, shown.fingerprint) == ("nsd01", "func1pt8mm", subject.fingerprint)
    assert (store / "nsd01" / "transforms" / "func1pt8mm" / "matrices.xfm").is_file()
    assert Subject.load(path).surface == ""  # the input file is left as it was


def test_missing_flat_patch_is_named(nsd, tmp_path):
    root, path, _ = nsd
    patch = root / "nsddata/freesurfer/subj01/surf/rh.full.flat.patch.3d"
    patch.unlink()
    with pytest.raises(SystemExit) as exc:
        nd.main(["--subject-file", str(path), "--nsd-root", str(root), "--filestore", str(tmp_path / "store")])
    assert str(exc.value) == f"error: FreeSurfer subject subj01: flat patch not found: rh.full.flat.patch.3d (looked in {patch.parent})."
    assert not (tmp_path / "store" / "subj01").exists() and Subject.load(path).surface == ""


def test_missing_surface_is_named(nsd, tmp_path):
    root, path, _ = nsd
    (root / "nsddata/freesurfer/subj01/surf/lh.pial").unlink()
    with pytest.raises(SystemExit, match=r"error: FreeSurfer subject subj01: file not found: lh\.pial \(looked in"):
        nd.main(["--subject-file", str(path), "--nsd-root", str(root), "--filestore", str(tmp_path / "store")])


def test_grid_mismatch_is_refused(nsd, tmp_path):
    root, path, _ = nsd
    ijk = np.argwhere(np.ones((10, 12, 8), bool))
    other = Subject.from_volume("subj01", ijk, FUNC_AFFINE, (10, 12, 8), {}, space="func1pt8mm").save(tmp_path / "o.npz")
    with pytest.raises(SystemExit) as exc:
        nd.main(["--subject-file", str(other), "--nsd-root", str(root), "--filestore", str(tmp_path / "store")])
    text = str(exc.value)
    assert "nsdgeneral.nii.gz is a (10, 12, 9) grid" in text and f"subject {other} is a (10, 12, 8) grid" in text
    assert not (tmp_path / "store").exists()


def test_register_without_transform_is_refused(nsd, tmp_path):
    root, path, _ = nsd
    built = tmp_path / "built"
    nd.build_pycortex_subject(root / "nsddata/freesurfer", "subj01", "subj01",
                              root / "nsddata/ppdata/subj01/func1pt8mm/roi/nsdgeneral.nii.gz",
                              root / "nsddata/ppdata/subj01/anat/T1_0pt8_masked.nii.gz", built)
    with pytest.raises(SystemExit, match=r"transform 'func1mm' file not found: matrices.xfm"):
        nd.main(["--subject-file", str(path), "--pycortex-db", str(built / "subj01"), "--transform", "func1mm",
                 "--filestore", str(tmp_path / "store")])


def test_surface_of_another_mesh_is_refused(nsd, tmp_path):
    root, path, _ = nsd
    surf = root / "nsddata/freesurfer/subj01/surf"
    pts, faces = nib.freesurfer.read_geometry(str(surf / "rh.inflated"))
    nib.freesurfer.write_geometry(str(surf / "rh.inflated"), pts[:-2], faces[:-4])
    with pytest.raises(SystemExit) as exc:
        nd.main(["--subject-file", str(path), "--nsd-root", str(root), "--filestore", str(tmp_path / "store")])
    assert str(exc.value) == f"error: {surf / 'rh.inflated'} has 28 vertices, but rh.smoothwm has 30."



def test_surface_subject_is_refused(nsd, tmp_path):
    root, _, _ = nsd
    surface = Subject(name="S9", surface="S1", vertices=np.arange(4), n_vertices_lh=2, n_vertices=4, rois={})
    path = surface.save(tmp_path / "s9.npz")
    with pytest.raises(SystemExit, match=r"s9.npz is a surface subject, drawn on its own surface"):
        nd.main(["--subject-file", str(path), "--nsd-root", str(root), "--filestore", str(tmp_path / "store")])
