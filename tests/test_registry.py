"""Model registry: discovery from config.json only, subjects by label and fingerprint, shared towers, LRU bound."""
import gc
import json
import weakref

import numpy as np
import pytest
import torch

import braindive as bd
from braindive.demo_components import DEMO_TOWER_CONFIG, DEMO_TOWER_NAME, build_demo_tower
from ui.registry import ModelRegistry, ServiceError
from ui.settings import Settings

FS, VOL = "subj01 · fsaverage", "subj01 · func1pt8mm"


def _spaces(s1):
    """One person in two voxel spaces: 200 surface vertices, and 150 voxels of a 10^3 volume."""
    surface = bd.Subject(name="subj01", surface=s1.surface, vertices=s1.vertices[:200], n_vertices_lh=s1.n_vertices_lh,
                         n_vertices=s1.n_vertices, rois={"A": np.arange(0, 80), "B": np.arange(80, 200)}, space="fsaverage")
    ijk = np.stack(np.unravel_index(np.arange(150), (10, 10, 10)), axis=1)
    volume = bd.Subject.from_volume("subj01", ijk, np.diag([1.8, 1.8, 1.8, 1.0]), (10, 10, 10),
                                    {"A": np.arange(0, 50), "C": np.arange(50, 150)}, space="func1pt8mm")
    return surface, volume


def _checkpoint(folder, subject, seed, config_subject=None, **config_changes):
    """A tiny-tower encoder of ``subject`` (the same tower weights for every seed; heads differ) + its subject file."""
    config = bd.EncoderConfig.for_subject(config_subject or subject, backbone=DEMO_TOWER_NAME, pretrained=None,
                                          backbone_config=DEMO_TOWER_CONFIG, training={"subject_file": "subject.npz"})
    encoder = bd.ClipLinearEncoder(config, tower=build_demo_tower(0))
    with torch.no_grad():
        encoder.head.weight.copy_(torch.from_numpy(np.random.default_rng(seed).standard_normal(encoder.head.weight.shape)))
    encoder.save(folder)
    subject.save(folder / "subject.npz")
    if config_changes:
        data = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**data, **config_changes}))
    return folder


@pytest.fixture(scope="module")
def registry(tmp_path_factory, s1):
    root = tmp_path_factory.mktemp("registry")
    surface, volume = _spaces(s1)
    models = root / "encoders"
    for k in range(4):
        _checkpoint(models / f"fs-{k}", surface, seed=k)
    _checkpoint(models / "vol", volume, seed=9)
    _checkpoint(models / "old", surface, seed=10, subject_fingerprint="", subject_label="")  # before fingerprints
    _checkpoint(models / "wrong", surface, seed=11, config_subject=volume)  # records the volume, ships the surface
    return ModelRegistry(Settings(preset="sd21", data_dir=str(root), max_encoders=2))


def test_listing_reads_configs_only(registry, monkeypatch):
    def no_weights(*args, **kwargs):
        raise AssertionError("listing encoders must not load weights")

    monkeypatch.setattr(bd.encoders, "build_clip_tower", no_weights)
    monkeypatch.setattr(bd.encoders, "_load_weights", no_weights)
    monkeypatch.setattr(bd.encoders, "load_file", no_weights)
    assert registry.subject_names() == [FS, VOL]  # two spaces of one person, side by side
    assert registry.encoders_for(FS) == ["fs-0", "fs-1", "fs-2", "fs-3", "old"]
    assert registry.encoders_for(VOL) == ["vol"]
    assert registry.subject(FS).kind == "surface" and registry.subject(VOL).kind == "volume"


def test_a_fingerprint_mismatch_names_both_spaces(registry):
    with pytest.raises(ServiceError) as err:
        registry.subject_of("wrong")
    assert f"was fit on '{VOL}', a different voxel space from '{FS}'" in str(err.value)


def test_encoders_share_one_tower_and_at_most_max_encoders_stay_loaded(registry):
    names = [f"fs-{k}" for k in range(4)] + ["vol"]
    loaded = []
    for i in range(200):  # 200 requests cycling through 5 encoders, 2 kept
        encoder = registry.encoder(names[i % len(names)])
        loaded.append(weakref.ref(encoder))
        assert registry.live_towers() == 1
        del encoder
    gc.collect()
    alive = [ref() for ref in loaded if ref() is not None]
    assert len({id(e) for e in alive}) == 2 and registry.loaded_encoders() == ["fs-3", "vol"]
    assert alive[0].tower is alive[-1].tower  # one tower object, whichever head
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    reference = bd.load_encoder(registry.folder("vol"))  # loaded on its own, with its own tower
    with torch.no_grad():
        torch.testing.assert_close(registry.encoder("vol")(images), reference(images))


def test_unknown_and_overlong_encoder_names(registry):
    with pytest.raises(ServiceError, match="Unknown encoder 'nope'"):
        registry.encoder("nope")
    with pytest.raises(ServiceError, match="Unknown encoder 'xxxxxxxx"):
        registry.encoder("x" * 300)  # no "file name too long" from the file system


def test_a_built_in_subject_with_added_rois_is_listed_with_its_own_rois(tmp_path, s1):
    """prepare_generic --subject S1 --rois custom.json: the encoder's subject keeps the added ROI in the app."""
    from training.prepare_generic import with_rois

    custom = with_rois(s1, {"blob": np.arange(10, 30)}, "custom")
    assert custom.name == "S1+custom" and custom.fingerprint == s1.fingerprint  # same voxel space
    _checkpoint(tmp_path / "encoders" / "custom", custom, seed=3)
    _checkpoint(tmp_path / "encoders" / "plain", s1, seed=4)
    (tmp_path / "encoders" / "plain" / "subject.npz").unlink()  # built in: found by name
    registry = ModelRegistry(Settings(preset="sd21", data_dir=str(tmp_path)))
    assert registry.subject_names() == sorted([custom.label, s1.label]) and custom.label != s1.label
    assert registry.encoders_for(custom.label) == ["custom"] and registry.encoders_for(s1.label) == ["plain"]
    assert registry.subject(custom.label).roi("blob").tolist() == list(range(10, 30))
    assert "blob" not in registry.subject(s1.label).roi_names
