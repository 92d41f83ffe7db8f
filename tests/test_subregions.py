"""Sub-regions: k-means against scikit-learn, anatomical bins against the affine, reports, cross-prediction."""
import numpy as np
import pytest
import torch

import braindive as bd
from braindive import subregions as sr
from braindive.catalog import Catalog
from braindive.demo import ASSET_ENCODER
from braindive.generate import GenerationSettings
from braindive.subregion_images import cross_prediction, store
from braindive.targets import Target
from braindive.demo_components import DEMO_TOWER_CONFIG, DEMO_TOWER_NAME, build_demo_tower
from tiny import SIZE, tiny_pipe

# a synthetic volume: 24 voxels, the grid's k axis is the scanner's y (posterior -> anterior), i is -x
AFFINE = np.array([[-2.0, 0, 0, 20], [0, 0, 2.5, -90], [0, 1.5, 0, -20], [0, 0, 0, 1]])


@pytest.fixture(scope="module")
def volume():
    rng = np.random.default_rng(0)
    ijk = np.stack([rng.integers(0, 20, 24), rng.integers(0, 20, 24), rng.permutation(30)[:24]], axis=1)
    roi = np.arange(24)
    subject = bd.Subject.from_volume("synthetic", ijk, AFFINE, (20, 20, 30), {"ROI": roi})
    assert 6 <= subject.is_right.sum() <= 18  # hemispheres from scanner x > 0
    return subject


def planted_encoder(subject, groups, seed=0):
    """A demo-tower encoder whose head rows are noisy copies of one direction per group (known clusters)."""
    config = bd.EncoderConfig.for_subject(subject, backbone=DEMO_TOWER_NAME, pretrained=None,
                                          backbone_config=DEMO_TOWER_CONFIG)
    encoder = bd.ClipLinearEncoder(config, tower=build_demo_tower(seed))
    rng = np.random.default_rng(seed)
    weight = 0.05 * rng.standard_normal((subject.n_voxels, config.embed_dim))
    for members in groups:
        weight[members] += 3 * rng.standard_normal(config.embed_dim) / np.sqrt(config.embed_dim)
    with torch.no_grad():
        encoder.head.weight.copy_(torch.from_numpy(weight).float())
        encoder.head.bias.zero_()
    return encoder.eval()


def partition(labels):
    return sorted(tuple(np.flatnonzero(labels == c)) for c in np.unique(labels))


def test_kmeans_equals_scikit_learn_from_the_same_initial_centres_on_demo_weights():
    cluster = pytest.importorskip("sklearn.cluster")
    subject = bd.load_subject("S1")
    encoder = bd.load_encoder(ASSET_ENCODER, subject=subject)
    for roi, k in (("FFA", 2), ("OPA", 3), ("PPA", 5)):
        features = sr.weight_profiles(encoder, subject.roi(roi))
        np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0)
        mine = sr.kmeans(features, k, seed=0)
        theirs = cluster.KMeans(k, init=mine.init, n_init=1, algorithm="lloyd", tol=0).fit(features)
        np.testing.assert_array_equal(mine.labels, theirs.labels_)
        assert mine.inertia == pytest.approx(theirs.inertia_, rel=1e-9)


def test_kmeans_equals_scikit_learns_own_seeding_on_separated_clusters():
    cluster = pytest.importorskip("sklearn.cluster")
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((4, 6)) * 5
    x = np.concatenate([c + rng.standard_normal((30, 6)) * 0.3 for c in centres])
    mine = sr.kmeans(x, 4, seed=3)
    theirs = cluster.KMeans(4, n_init=10, random_state=3).fit(x)
    assert partition(mine.labels) == partition(theirs.labels_) == [tuple(range(i, i + 30)) for i in range(0, 120, 30)]


def test_split_is_seeded_and_parts_are_named_and_ordered():
    subject = bd.load_subject("S1")
    encoder = bd.load_encoder(ASSET_ENCODER, subject=subject)
    a = sr.split_region(subject, "OPA", 3, "weights", encoder=encoder, seed=4)
    b = sr.split_region(subject, "OPA", 3, "weights", encoder=encoder, seed=4)
    assert [p.name for p in a.parts] == ["OPA·1/3", "OPA·2/3", "OPA·3/3"]
    assert all(np.array_equal(p.voxels, q.voxels) for p, q in zip(a.parts, b.parts))
    sizes = [len(p.voxels) for p in a.parts]
    assert sizes == sorted(sizes, reverse=True)
    assert np.array_equal(np.sort(np.concatenate([p.voxels for p in a.parts])), subject.roi("OPA"))


@pytest.mark.parametrize("axis, k, coordinate", [("posterior-anterior", 3, 1), ("ventral-dorsal", 2, 2),
                                                 ("medial-lateral", 2, 0)])
def test_anatomical_split_of_a_volume_equals_bins_from_the_affine_by_hand(volume, axis, k, coordinate):
    split = sr.split_region(volume, "ROI", k, "anatomy", axis=axis)
    ijk = volume.ijk
    # by hand: x = -2 i + 20 (right when > 0), y = 2.5 k - 90, z = 1.5 j - 20
    xyz = np.stack([-2.0 * ijk[:, 0] + 20, 2.5 * ijk[:, 2] - 90, 1.5 * ijk[:, 1] - 20], axis=1)
    right = xyz[:, 0] > 0
    value = np.abs(xyz[:, 0]) if coordinate == 0 else xyz[:, coordinate]  # lateral = away from x = 0 here
    expected = [[] for _ in range(k)]
    for hemi in (False, True):
        members = np.flatnonzero(right == hemi)
        ranks = np.argsort(np.argsort(value[members], kind="stable"), kind="stable")
        sizes = [len(members) // k + (b < len(members) % k) for b in range(k)]
        edges = np.cumsum([0] + sizes)
        for b in range(k):
            expected[b] += members[(ranks >= edges[b]) & (ranks < edges[b + 1])].tolist()
    assert [p.voxels.tolist() for p in split.parts] == [sorted(e) for e in expected]
    ends = sr.AXES[axis][1]
    assert split.parts[0].name == (f"ROI·{ends[0]}" if k == 2 else f"ROI·{ends[0]}→{ends[1]} 1/{k}")


def test_anatomical_split_of_s1_is_posterior_then_anterior_per_hemisphere():
    subject = bd.load_subject("S1")
    split = sr.split_region(subject, "OPA", 2, "anatomy")
    y = sr.voxel_coordinates(subject)[:, 1]
    rows = sr.report(split, subject)
    for hemi in (False, True):
        post, ant = (p.voxels[subject.is_right[p.voxels] == hemi] for p in split.parts)
        assert abs(len(post) - len(ant)) <= 1 and y[post].max() <= y[ant].min()
    assert [r["part"] for r in rows] == ["OPA·post", "OPA·ant"]
    assert sum(r["n_lh"] + r["n_rh"] for r in rows) == len(subject.roi("OPA"))
    assert rows[0]["n_rh"] == int(subject.is_right[split.parts[0].voxels].sum())


def test_weights_and_responses_recover_planted_groups(volume):
    groups = [np.arange(0, 8), np.arange(8, 16), np.arange(16, 24)]
    encoder = planted_encoder(volume, groups)
    images = torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for by in ("weights", "responses"):
        split = sr.split_region(volume, "ROI", 3, by, encoder=encoder, images=images)
        assert sorted(p.voxels.tolist() for p in split.parts) == [g.tolist() for g in groups], by
        rows = sr.report(split, volume)
        assert all(r["within"] > r["between"] + 0.3 for r in rows), rows


def test_profile_similarity_equals_pairwise_cosines():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 5))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = rng.integers(0, 3, 20)
    sim = sr.profile_similarity(x, labels, 3)
    cos = x @ x.T
    for i in range(3):
        a = np.flatnonzero(labels == i)
        pairs = [cos[p, q] for p in a for q in a if p != q]
        assert sim[i, i] == pytest.approx(np.mean(pairs))
        for j in range(3):
            if j != i:
                assert sim[i, j] == pytest.approx(cos[np.ix_(a, np.flatnonzero(labels == j))].mean())


def test_cross_prediction_gains_match_direct_pipeline_runs(volume, tmp_path):
    encoder = planted_encoder(volume, [np.arange(0, 12), np.arange(12, 24)])
    pipe = tiny_pipe(encoder=encoder)
    split = sr.split_region(volume, "ROI", 2, "weights", encoder=encoder)
    settings = GenerationSettings(steps=3, height=SIZE, width=SIZE, scale=200.0, sag=0.0)
    catalog = Catalog(tmp_path / "catalog")
    cp = cross_prediction(pipe, split, seeds=(0, 1), settings=settings, subject=volume, kind="contrast",
                          baselines=catalog, model="tiny", encoder="planted")
    assert cp.gains.shape == (2, 2, 2) and cp.names == ("ROI·1/2", "ROI·2/2")

    def acts(objective, seed, scale):
        out = pipe(objective=objective, generator=torch.Generator().manual_seed(seed),
                   **{**settings.pipeline_kwargs(), "brain_guidance_scale": scale})
        return out.activations[0].double().numpy()

    p0, p1 = split.parts
    guided = acts(bd.Objective.contrast(p0.voxels, p1.voxels, 1.0), 1, 200.0)
    base = acts(bd.Objective.maximize(p0.voxels), 1, 0.0)
    for j, part in enumerate(split.parts):
        assert cp.gains[0, j, 1] == pytest.approx(guided[part.voxels].mean() - base[part.voxels].mean(), abs=1e-4)
    assert (cp.margins > 0).all()  # each part's contrast images raise it more than the other part
    row = cp.table()[0]
    assert row["own largest"] == 1.0 and row["margin"] == pytest.approx(cp.margins[0].mean())
    # one unguided image per seed, shared by both parts (kept in the catalog, as the app's Generate keeps it)
    assert len(list((catalog.root / "unguided").glob("*.png"))) == 2
    assert [r.baseline_key for r in cp.results[0]] == [r.baseline_key for r in cp.results[1]]

    # the records: part minus the rest as one Target, its signed measure computed from the stored map
    entries = store(cp, catalog, volume, settings, model="tiny", encoder="planted", run_id="split")
    assert len(entries) == 4
    for entry in entries:
        record = catalog.record(entry.id)
        i = cp.names.index(record["subregion"]["part"])
        target = Target.from_record(record)
        assert target.label == f"{split.parts[i].name} − 1.0×ROI·rest" and target.voxels_b == tuple(split.parts[1 - i].voxels)
        stored = np.load(entry.image_path.with_suffix(".npy"))
        expected = stored[split.parts[i].voxels].mean() - stored[split.parts[1 - i].voxels].mean()
        assert record["predicted_objective"] == pytest.approx(expected, abs=1e-4)
        assert record["subregion"]["gains"][cp.names[i]] == pytest.approx(cp.gains[i, i, cp.seeds.index(record["seed"])])
        assert record["subregion"]["kind"] == "contrast" and record["subregion"]["by"] == "weights"


def test_bad_requests_name_the_field(volume):
    with pytest.raises(ValueError, match=r"`k` \(parts\) must be an integer in \[2, 8\], got 9"):
        sr.split_region(volume, "ROI", 9, "anatomy")
    with pytest.raises(ValueError, match="`by` must be one of"):
        sr.split_region(volume, "ROI", 2, "colour")
    with pytest.raises(ValueError, match="`axis` must be one of"):
        sr.split_region(volume, "ROI", 2, "anatomy", axis="left-right")
    with pytest.raises(ValueError, match="needs an encoder"):
        sr.split_region(volume, "ROI", 2, "weights")
    with pytest.raises(ValueError, match="fewer than k=8"):
        sr.split_region(bd.Subject.from_volume("v", np.array([[0, 0, 0], [1, 0, 0]]), np.eye(4), (2, 1, 1),
                                               {"R": [0, 1]}), "R", 8, "anatomy")


def test_volume_subject_s1_fullhead_splits_by_weights_and_by_its_affine():
    s1, volume = bd.load_subject("S1"), bd.load_subject("S1-fullhead")
    encoder = bd.demo.resampled_encoder(bd.load_encoder(ASSET_ENCODER, subject=s1), s1, volume)
    weights = sr.split_region(volume, "OPA", 2, "weights", encoder=encoder)
    assert np.array_equal(np.sort(np.concatenate([p.voxels for p in weights.parts])), volume.roi("OPA"))
    anatomy = sr.split_region(volume, "OPA", 2, "anatomy")
    y = (np.c_[volume.ijk, np.ones(volume.n_voxels)] @ volume.affine.T)[:, 1]  # scanner y of each voxel centre
    for hemi in (False, True):
        post, ant = (p.voxels[volume.is_right[p.voxels] == hemi] for p in anatomy.parts)
        assert len(post) and abs(len(post) - len(ant)) <= 1 and y[post].max() <= y[ant].min()
