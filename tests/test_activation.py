"""Explore's activation view and selection: limits, outlines, values under a click, downloads, undrawable subjects."""
import dataclasses
import json
import shutil
from pathlib import Path

import gradio as gr
import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

import braindive as bd
from ui import activation as act
from ui import build_app, explore, selection
from ui.registry import ModelRegistry
from ui.service import GenerationRequest, ImageResult, Service
from ui.settings import Settings
from service_support import demo_service

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    return demo_service(tmp_path_factory.mktemp("activation"))


@pytest.fixture(scope="module")
def result(service) -> ImageResult:
    items = list(service.generate(GenerationRequest(steps=4, seed=3, target="FFA", scale=40.0)))
    return [i for i in items if isinstance(i, ImageResult)][0]


def _maps(s1, guided, unguided, target="FFA", objective=None) -> act.ResultMaps:
    record = {"seed": 0, "target": target, "subject": "S1", "objective": objective or {}}
    return act.ResultMaps("e0", record, guided, unguided, Path("e0.png"), None)


def test_color_limits_robust_and_target(s1):
    values = np.linspace(-10.0, 2.0, s1.n_voxels)
    lo, hi = act.color_limits(values, act.LIMITS[0])
    expected = -np.quantile(values, 0.02)  # the 2nd percentile is the larger in magnitude
    assert hi == pytest.approx(expected, rel=1e-6) and lo == -hi
    target = np.sort(np.random.default_rng(0).choice(s1.n_voxels, 200, replace=False))
    values = np.zeros(s1.n_voxels)
    values[target] = np.linspace(0.5, 2.5, 200)  # the target's change, invisible under a whole-map limit of 15
    values[:50] = 15.0
    lo, hi = act.color_limits(values, act.LIMITS[1], s1, target)
    assert hi == pytest.approx(np.quantile(np.linspace(0.5, 2.5, 200), 0.98)) and lo == -hi


def test_unguided_map_is_stored_and_is_the_unguided_image(service, result, s1):
    maps = act.load_maps(service.catalog, result.entry.id)
    assert maps.unguided_image is not None and maps.unguided is not None
    np.testing.assert_allclose(maps.values("guided − unguided"), maps.guided - maps.unguided)
    # the stored unguided activations are the encoder's prediction for the stored unguided image
    pixels = torch.from_numpy(np.asarray(Image.open(maps.unguided_image).convert("RGB"), np.float32) / 255)
    with torch.no_grad():
        predicted = service.encoder("demo")(pixels.permute(2, 0, 1)[None])[0].numpy()
    assert np.corrcoef(predicted, maps.unguided)[0, 1] > 0.99
    assert np.corrcoef(predicted, maps.guided)[0, 1] < np.corrcoef(predicted, maps.unguided)[0, 1]
    ffa = s1.roi("FFA")
    assert maps.guided[ffa].mean() > maps.unguided[ffa].mean()  # guidance raised the target


def test_render_outlines_the_target_and_region_b(service, s1):
    rng = np.random.default_rng(1)
    maps = _maps(s1, rng.normal(size=s1.n_voxels), rng.normal(size=s1.n_voxels), target="FFA-vs-PPA",
                 objective={"positive": s1.roi("FFA").tolist(), "negative": s1.roi("PPA").tolist()})
    image = act.render(service, "S1", maps, act.MAPS[0], act.LIMITS[0], "z-scored betas")
    shape = service.flatmap_shape("S1")
    assert image.shape[0] > shape[0] and image.shape[1] == shape[1]  # a units line under the map
    for colour, roi in ((act.COLOUR_A, "FFA"), (act.COLOUR_B, "PPA")):
        ys, xs = np.nonzero(np.all(image[: shape[0]] == colour, axis=-1))
        assert len(xs) > 100, roi
        # the outline runs along the region's border: within 4 px of each outline pixel lies a voxel of that ROI
        def near_roi(x, y):
            hits = [bd.pick(s1, x + dx, y + dy, shape, view="voxels") for dx in (-4, 0, 4) for dy in (-4, 0, 4)]
            return any(h is not None and roi in h.rois for h in hits)

        assert np.mean([near_roi(x, y) for x, y in zip(xs[::40], ys[::40])]) > 0.9, roi
    # no target colour where nothing is targeted
    plain = act.render(service, "S1", _maps(s1, maps.guided, maps.unguided, target="custom(0 voxels)"),
                       act.MAPS[1], act.LIMITS[0], "z-scored betas")
    assert not np.all(plain[: shape[0]] == act.COLOUR_B, axis=-1).any()


def test_values_under_a_click(service, s1):
    guided = np.arange(s1.n_voxels, dtype=np.float64)
    maps = _maps(s1, guided, guided / 2)
    x, y = bd.roi_centroids(s1, view="voxels")["FFA.rh"]
    text = act.values_at(service, "S1", maps, x, y)
    voxel = bd.pick(s1, x, y, service.flatmap_shape("S1"), view="voxels").voxel
    assert f"**Voxel {voxel}** (rh, FFA)" in text and f"guided {voxel:+.3f}" in text
    assert f"guided − unguided {voxel / 2:+.3f}" in text
    region = s1.roi("FFA.rh")
    assert f"**FFA.rh mean** ({len(region)} voxels): guided {region.mean():+.3f}" in text
    assert "No voxel" in act.values_at(service, "S1", maps, 2, 2) or "outside" in act.values_at(service, "S1", maps, 2, 2)


def test_export_npy_and_gifti(s1, tmp_path):
    rng = np.random.default_rng(2)
    guided, unguided = rng.normal(size=s1.n_voxels), rng.normal(size=s1.n_voxels)
    paths = [Path(p) for p in act.export_maps(_maps(s1, guided, unguided), s1, tmp_path)]
    by_name = {p.name.split("e0")[-1]: p for p in paths}
    np.testing.assert_allclose(np.load(by_name["_guided_minus_unguided.npy"]), guided - unguided, rtol=1e-6)
    lh, rh = nib.load(by_name[".lh.func.gii"]), nib.load(by_name[".rh.func.gii"])
    assert [d.meta["Name"] for d in lh.darrays] == ["guided", "unguided", "guided_minus_unguided"]
    assert len(lh.darrays[0].data) == s1.n_vertices_lh and len(rh.darrays[0].data) == s1.n_vertices - s1.n_vertices_lh
    v = s1.roi("FFA.rh")[0]  # a right-hemisphere voxel lands on its vertex of the right surface
    assert rh.darrays[1].data[s1.vertices[v] - s1.n_vertices_lh] == pytest.approx(unguided[v], rel=1e-6)
    u = s1.roi("FFA.lh")[0]
    assert lh.darrays[0].data[s1.vertices[u]] == pytest.approx(guided[u], rel=1e-6)
    assert np.isnan(lh.darrays[0].data).sum() == s1.n_vertices_lh - (~s1.is_right).sum()


def test_selection_text_counts_voxels_per_hemisphere(service, s1):
    text = selection.selection_text(service, "S1", {"target": "FFA", "hemi": "left (.lh)", "voxels": []})
    assert f"FFA.lh — {len(s1.roi('FFA.lh'))} voxels ({len(s1.roi('FFA.lh'))} left, 0 right)" in text


def test_a_subject_without_a_map_still_lists_rois_and_generates(service, s1, tmp_path, monkeypatch):
    """Issue 10 item 5: the app starts, lists the ROIs, notes why there is no map, and generates."""
    subject_file = dataclasses.replace(s1, name="nomap", surface="no-such-surface").save(tmp_path / "nomap.npz")
    folder = tmp_path / "app" / "encoders" / "nomap-encoder"
    shutil.copytree(REPO / "braindive" / "assets" / "demo-encoder", folder)
    shutil.copy(subject_file, folder / "subject.npz")
    config = json.loads((folder / "config.json").read_text())
    config["subject"] = "nomap"
    config.pop("subject_fingerprint", None)  # the demo's voxels on another (missing) surface: matched by name
    config["training"]["subject_file"] = "subject.npz"
    (folder / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(ModelRegistry, "_load_backend", lambda self: service.backend())
    settings = Settings(preset="sd21", encoder=str(folder), data_dir=str(tmp_path / "app"), image_size=64)
    svc = Service(settings)
    app = build_app(svc, settings)
    parts = {b.elem_id: b for b in app.blocks.values() if getattr(b, "elem_id", None)}
    assert "No flatmap for nomap" in parts["map-note"].value and parts["map-note"].visible
    assert parts["flatmap"].visible is False
    assert [c[0] for c in parts["roi-list"].choices] == s1.roi_names
    items = list(svc.generate(GenerationRequest(subject="nomap", encoder=str(folder), steps=2, target="PPA")))
    assert sum(isinstance(i, ImageResult) for i in items) == 1
    with gr.Blocks():
        assert explore.build(svc, settings)["subject"].value.startswith("nomap · ")  # listed by its space label
