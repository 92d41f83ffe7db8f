"""Sub-regions: split a region's voxels into k parts by response profile or along an anatomical axis.

Three ways (``BY``), all deterministic:

* ``"weights"``: k-means on the encoder's head rows of the region's voxels, each unit-normalised;
* ``"responses"``: k-means on the voxels' predicted responses to a set of images (a folder of natural
  images, or a prepared NSD dataset's shared test images), each voxel's profile centred and unit-normalised
  (so similarity is correlation);
* ``"anatomy"``: equal-count bins along an axis of ``AXES`` in the subject's own millimetres (volume: the
  grid's affine; surface: pycortex's fiducial surface), binned per hemisphere, so "OPA·post" holds the
  posterior part of both hemispheres' OPA.

k-means is k-means++ seeding followed by Lloyd iterations to a fixed point, best of ``n_init`` seeded runs
(``kmeans``); given the same initial centres it gives scikit-learn's ``KMeans(init=centres, n_init=1,
algorithm="lloyd", tol=0)`` labels (``tests/test_subregions.py``). Its k-means++ draws from numpy's seeded
generator, not scikit-learn's, so with scikit-learn's own seeding the partitions agree only where the
clustering is unambiguous. Parts are ordered largest first (ties: lowest voxel index first).

Each ``Part`` is a named voxel set ("OPA·1/2", "OPA·post"); ``part_target`` turns it into a ``Target``.
``report`` gives per part its voxel count per hemisphere and the within- vs between-part similarity of the
profiles; ``braindive.subregion_images`` generates images for each part with the same seeds and measures
how much they raise every part (the paper's validation: part i's images raise part i most).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .subjects import HEMISPHERES, Subject
from .targets import Target

__all__ = ["BY", "AXES", "K_RANGE", "Part", "Split", "split_region", "kmeans", "voxel_coordinates",
           "weight_profiles", "response_profiles", "profile_images", "part_target", "PART_KINDS", "report",
           "profile_similarity"]

BY = ("weights", "responses", "anatomy")
# axis -> (coordinate, short names of its two ends); "lateral" is x signed per hemisphere (away from the midline)
AXES = {
    "posterior-anterior": ("y", ("post", "ant")),
    "ventral-dorsal": ("z", ("ven", "dor")),
    "medial-lateral": ("lateral", ("med", "lat")),
}
K_RANGE = (2, 8)
PART_SEPARATOR = "·"


@dataclass(frozen=True, eq=False)
class Part:
    """One sub-region: ``voxels`` (sorted indices into the subject) named ``name`` ("OPA·1/2")."""

    name: str
    voxels: np.ndarray


@dataclass(frozen=True, eq=False)
class Split:
    """A region split into ``parts``; ``features`` are the unit profiles of ``voxels`` (rows) that were
    clustered (``None`` for an anatomical split), ``labels`` the part of each of ``voxels``; ``subject_space``
    the fingerprint of the voxel space the indices are of."""

    roi: str
    k: int
    by: str
    seed: int
    axis: str | None
    voxels: np.ndarray
    labels: np.ndarray
    parts: tuple[Part, ...]
    features: np.ndarray | None = field(default=None, repr=False)
    subject_space: str = ""

    def to_dict(self) -> dict:
        """JSON-ready: how it was made and each part's voxels (enough to use the parts again)."""
        return {"roi": self.roi, "k": self.k, "by": self.by, "seed": self.seed, "axis": self.axis,
                "subject_space": self.subject_space,
                "parts": [{"name": p.name, "voxels": p.voxels.tolist()} for p in self.parts]}

    def check_subject(self, subject: Subject) -> None:
        """``ValueError`` unless ``subject`` is the voxel space the parts were split in."""
        if self.subject_space and self.subject_space != subject.fingerprint:
            raise ValueError(f"The parts of {self.roi} were split on another voxel space ({self.subject_space[:12]}…) "
                             f"than subject {subject.name!r} ({subject.fingerprint[:12]}…); split it on this subject.")


# ---------------------------------------------------------------------------------------- splitting


def split_region(subject: Subject, roi: str, k: int, by: str = "weights", *, encoder=None, images=None,
                 axis: str = "posterior-anterior", seed: int = 0, n_init: int = 10,
                 coordinates: np.ndarray | None = None) -> Split:
    """Split ROI ``roi`` of ``subject`` into ``k`` parts.

    ``by="weights"`` needs ``encoder`` (or its ``[n_voxels, d]`` head weights); ``by="responses"`` needs ``encoder`` and ``images`` (a folder, or
    ``[N, 3, H, W]`` images in [0, 1]); ``by="anatomy"`` uses ``axis`` and the subject's coordinates
    (``coordinates`` overrides them: ``[n_voxels, 3]`` mm, x right, y anterior, z superior).
    """
    if by not in BY:
        raise ValueError(f"`by` must be one of {list(BY)}, got {by!r}.")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not K_RANGE[0] <= k <= K_RANGE[1]:
        raise ValueError(f"`k` (parts) must be an integer in [{K_RANGE[0]}, {K_RANGE[1]}], got {k!r}.")
    voxels = subject.roi(roi)
    if len(voxels) < k:
        raise ValueError(f"ROI {roi!r} has {len(voxels)} voxels, fewer than k={k} parts.")
    if by == "anatomy":
        if axis not in AXES:
            raise ValueError(f"`axis` must be one of {list(AXES)}, got {axis!r}.")
        coords = voxel_coordinates(subject) if coordinates is None else np.asarray(coordinates, np.float64)
        labels = anatomical_bins(coords[voxels], subject.is_right[voxels], k, axis)
        features, names = None, _axis_names(AXES[axis][1], k)
    else:
        if encoder is None:
            raise ValueError(f"Splitting by {by!r} needs an encoder.")
        if isinstance(encoder, np.ndarray):
            if by != "weights" or encoder.ndim != 2 or len(encoder) != subject.n_voxels:
                raise ValueError(f"Head weights must be [{subject.n_voxels}, d] and split by 'weights', got "
                                 f"{encoder.shape} by {by!r}.")
        else:
            encoder.check_subject(subject)
        if by == "weights":
            features = weight_profiles(encoder, voxels)
        else:
            if images is None:
                raise ValueError("Splitting by 'responses' needs `images` (a folder or an image tensor).")
            features = response_profiles(encoder, voxels, profile_images(images) if isinstance(images, (str, Path))
                                         else images)
        labels = kmeans(features, k, seed=seed, n_init=n_init).labels
        axis, names = None, [f"{i}/{k}" for i in range(1, k + 1)]
        labels = _order_by_size(labels, k)
    parts = tuple(Part(f"{roi}{PART_SEPARATOR}{names[i]}", voxels[labels == i]) for i in range(k))
    return Split(roi, int(k), by, int(seed), axis, voxels, labels, parts, features, subject.fingerprint)


def _order_by_size(labels: np.ndarray, k: int) -> np.ndarray:
    """Relabel clusters largest first, ties by the lowest (first) member."""
    sizes = np.bincount(labels, minlength=k)
    first = np.array([np.flatnonzero(labels == c)[0] if sizes[c] else len(labels) for c in range(k)])
    order = sorted(range(k), key=lambda c: (-sizes[c], first[c]))
    rank = np.empty(k, np.int64)
    rank[order] = np.arange(k)
    return rank[labels]


def _axis_names(ends: tuple[str, str], k: int) -> list[str]:
    if k == 2:
        return list(ends)
    return [f"{ends[0]}→{ends[1]} {i}/{k}" for i in range(1, k + 1)]


def anatomical_bins(coords: np.ndarray, is_right: np.ndarray, k: int, axis: str) -> np.ndarray:
    """Per hemisphere, ``k`` equal-count bins (``np.array_split`` of the stable sort) along ``axis``;
    bin 0 is the first end of the axis (posterior, ventral, medial)."""
    coordinate = AXES[axis][0]
    if coordinate == "lateral":
        values = np.where(is_right, coords[:, 0], -coords[:, 0])
    else:
        values = coords[:, "xyz".index(coordinate)]
    labels = np.empty(len(values), np.int64)
    for hemi in (False, True):
        members = np.flatnonzero(is_right == hemi)
        if not len(members):
            continue
        ordered = members[np.argsort(values[members], kind="stable")]
        for b, chunk in enumerate(np.array_split(ordered, k)):
            labels[chunk] = b
    return labels


def voxel_coordinates(subject: Subject) -> np.ndarray:
    """``[n_voxels, 3]`` mm in the subject's own space: a volume's voxel centres through its affine, a surface's
    vertices on pycortex's fiducial surface."""
    if subject.kind == "volume":
        return np.c_[subject.ijk, np.ones(subject.n_voxels)] @ subject.affine[:3].T
    import cortex

    points, _ = cortex.db.get_surf(subject.surface, "fiducial", merge=True)
    return np.asarray(points, np.float64)[subject.vertices]


# ---------------------------------------------------------------------------------------- profiles


def weight_profiles(encoder, voxels: np.ndarray) -> np.ndarray:
    """The encoder head's rows (or a ``[n_voxels, d]`` weight array's) for ``voxels``, unit-normalised, float64."""
    weights = encoder if isinstance(encoder, np.ndarray) else encoder.head.weight.detach().cpu().numpy()
    rows = np.asarray(weights, np.float64)[voxels]
    return _unit_rows(rows, "weights")


def response_profiles(encoder, voxels: np.ndarray, images, batch_size: int = 16) -> np.ndarray:
    """Each voxel's predicted responses to ``images`` (``[N, 3, H, W]`` in [0, 1], N >= 2), centred and
    unit-normalised: ``[len(voxels), N]``."""
    import torch

    images = torch.as_tensor(images)
    if images.ndim != 4 or len(images) < 2:
        raise ValueError(f"`images` must be at least 2 images [N, 3, H, W], got shape {tuple(images.shape)}.")
    device = next(encoder.parameters()).device
    with torch.no_grad():
        acts = torch.cat([encoder(images[i:i + batch_size].to(device)).float().cpu()
                          for i in range(0, len(images), batch_size)])
    profiles = acts.double().numpy()[:, voxels].T
    return _unit_rows(profiles - profiles.mean(1, keepdims=True), "responses")


def profile_images(source, size: int = 224):
    """The images response profiles are predicted for, as a ``[N, 3, size, size]`` tensor in [0, 1]: those of a
    folder (recursively, sorted by path), or the test split of a prepared NSD dataset file (``.h5``: the
    shared images, in the dataset's order)."""
    import torch

    from .evaluation.natural import IMAGE_SUFFIXES
    from .evaluation.sets import open_rgb
    from .prepared import test_images

    source = Path(source)
    if source.is_file():
        images = test_images(source)
    elif source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        images = [open_rgb(p) for p in files]
    else:
        raise FileNotFoundError(f"Image folder (or prepared NSD dataset) not found: {source}")
    if len(images) < 2:
        raise ValueError(f"{source} has {len(images)} images ({', '.join(IMAGE_SUFFIXES)} files, or a dataset's "
                         "test split); at least 2 are needed.")
    arrays = [np.asarray(image.resize((size, size)), np.float32) / 255 for image in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def _unit_rows(rows: np.ndarray, what: str) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{int((norms == 0).sum())} voxels have all-zero {what}; they cannot be clustered.")
    return rows / norms


# ---------------------------------------------------------------------------------------- k-means


@dataclass(frozen=True)
class KMeansResult:
    labels: np.ndarray  # [n] cluster of each row
    centres: np.ndarray  # [k, d]
    inertia: float  # sum of squared distances to the assigned centres
    init: np.ndarray  # [k, d] the initial centres of the run kept


def kmeans(x: np.ndarray, k: int, seed: int = 0, n_init: int = 10, max_iter: int = 300,
           init: np.ndarray | None = None) -> KMeansResult:
    """Lloyd's k-means from k-means++ seeds (numpy ``default_rng(seed)``), lowest inertia of ``n_init`` runs,
    or a single run from ``init``. Runs end when no label changes (or after ``max_iter``)."""
    x = np.asarray(x, np.float64)
    if init is not None:
        return _lloyd(x, np.asarray(init, np.float64), max_iter)
    rng = np.random.default_rng(seed)
    runs = [_lloyd(x, kmeans_plus_plus(x, k, rng), max_iter) for _ in range(n_init)]
    return min(runs, key=lambda r: r.inertia)  # first of equals: deterministic


def kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ (Arthur & Vassilvitskii 2007): each next centre drawn with probability ∝ squared distance."""
    centres = [x[rng.integers(len(x))]]
    closest = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        total = closest.sum()
        pick = rng.integers(len(x)) if total <= 0 else int(np.searchsorted(np.cumsum(closest), rng.random() * total))
        centres.append(x[min(pick, len(x) - 1)])
        closest = np.minimum(closest, ((x - centres[-1]) ** 2).sum(1))
    return np.array(centres)


def _lloyd(x: np.ndarray, init: np.ndarray, max_iter: int) -> KMeansResult:
    centres, labels = init.copy(), None
    for _ in range(max_iter):
        dist = _sq_dist(x, centres)
        new = dist.argmin(1)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        centres = _update(x, labels, dist, centres)
    dist = _sq_dist(x, centres)
    labels = dist.argmin(1)
    return KMeansResult(labels, centres, float(dist[np.arange(len(x)), labels].sum()), init)


def _update(x, labels, dist, centres) -> np.ndarray:
    """Cluster means; an empty cluster takes the point farthest from its centre (as scikit-learn does)."""
    k = len(centres)
    counts = np.bincount(labels, minlength=k)
    sums = np.zeros_like(centres)
    np.add.at(sums, labels, x)
    new = sums / np.maximum(counts, 1)[:, None]
    for c in np.flatnonzero(counts == 0):
        far = int(np.argmax(dist[np.arange(len(x)), labels]))
        new[c] = x[far]
    return new


def _sq_dist(x, centres) -> np.ndarray:
    """``[n, k]`` squared distances, expanded as ``|x|^2 - 2 x.c + |c|^2`` (as scikit-learn computes them)."""
    return np.maximum((x * x).sum(1)[:, None] - 2 * x @ centres.T + (centres * centres).sum(1)[None], 0)


# ---------------------------------------------------------------------------------------- use and report


PART_KINDS = ("maximize", "minimize", "contrast")


def part_target(split: Split, i: int, kind: str = "maximize") -> Target:
    """Part ``i`` of ``split`` as a request: its voxel set (named "OPA·1/2") maximised or minimised, or
    (``"contrast"``) its mean minus the mean of the region's other parts ("OPA·1/2 − 1.0×OPA·rest"). What
    the pipeline ascends (``build``), records, History and sweeps store."""
    if kind not in PART_KINDS:
        raise ValueError(f"`kind` must be one of {list(PART_KINDS)} for a sub-region, got {kind!r}.")
    part = split.parts[i]
    if kind != "contrast":
        return Target.voxel_set(part.voxels, name=part.name, kind=kind)
    rest = np.concatenate([p.voxels for j, p in enumerate(split.parts) if j != i])
    return Target.voxel_set(part.voxels, name=part.name, kind="contrast", region_b=f"{split.roi}{PART_SEPARATOR}rest",
                            voxels_b=rest)


def profile_similarity(features: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """``[k, k]`` mean cosine of unit profiles: diagonal within a part (distinct pairs), off-diagonal between."""
    sums = np.stack([features[labels == i].sum(0) for i in range(k)])
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    out = sums @ sums.T / np.outer(counts, counts)
    within = (np.einsum("ij,ij->i", sums, sums) - counts) / np.maximum(counts * (counts - 1), 1)
    out[np.diag_indices(k)] = np.where(counts > 1, within, np.nan)
    return out


def report(split: Split, subject: Subject, features: np.ndarray | None = None, encoder=None) -> list[dict]:
    """Per part: voxel counts per hemisphere and the mean within- and between-part profile similarity.

    ``features`` (unit profiles of ``split.voxels``) defaults to those the split clustered; an anatomical
    split has none: then ``encoder``'s weight profiles (``weight_profiles``) are compared, if given."""
    features = split.features if features is None else features
    if features is None and encoder is not None:
        features = weight_profiles(encoder, split.voxels)
    sim = None if features is None else profile_similarity(features, split.labels, split.k)
    rows = []
    for i, part in enumerate(split.parts):
        right = subject.is_right[part.voxels]
        row = {"part": part.name, "n_voxels": int(len(part.voxels)),
               **{f"n_{h}": int((right == (h == "rh")).sum()) for h in HEMISPHERES}}
        if sim is not None:
            others = np.delete(sim[i], i)
            row.update(within=float(sim[i, i]), between=float(np.mean(others)))
        rows.append(row)
    return rows
