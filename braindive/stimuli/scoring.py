"""Encoder scores of stimuli: the predicted response of every ROI, each stimulus's target measure, and the
embedding diversity of a set.

The embeddings are the encoder's own image tower (``ClipLinearEncoder.embed``: the L2-normalised OpenCLIP
embedding the voxel head reads; on the offline demo, the demo encoder's small image tower). A set's
diversity is the mean pairwise cosine distance 1 − cos(e_i, e_j) over its images (0: identical images).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Scorer", "Scores", "load_scorer", "diversity", "target_measure", "category_roi"]


@dataclass
class Scores:
    roi_means: dict[str, np.ndarray]     # ROI -> [n] predicted mean response
    activations: np.ndarray              # [n, n_voxels]
    embeddings: np.ndarray               # [n, d], L2-normalised


class Scorer:
    """Scores images with ``encoder`` on ``subject`` (the encoder's voxel space is checked)."""

    def __init__(self, encoder, subject, batch_size: int = 16):
        encoder.check_subject(subject)
        self.encoder, self.subject, self.batch_size = encoder, subject, batch_size
        self.embedding_name = (f"{type(encoder).__name__} image tower "
                               f"({getattr(encoder.config, 'backbone', '?')}/{getattr(encoder.config, 'pretrained', '') or 'no weights tag'})")

    def __call__(self, images) -> Scores:
        import torch

        from ..rerank import images_to_tensor

        pixels = images_to_tensor([_pil(im) for im in images])
        device = next(self.encoder.parameters()).device
        acts, embeds = [], []
        with torch.no_grad():
            for chunk in pixels.split(self.batch_size):
                e = self.encoder.embed(chunk.to(device))
                embeds.append(e.float().cpu())
                acts.append(self.encoder.head(e.to(self.encoder.head.weight.dtype)).float().cpu())
        activations = torch.cat(acts).numpy().astype(np.float64)
        means = {roi: activations[:, self.subject.roi(roi)].mean(axis=1) for roi in self.subject.roi_names}
        return Scores(means, activations, torch.cat(embeds).numpy().astype(np.float64))


def load_scorer(encoder: str, subject: str | None = None) -> Scorer:
    """A ``Scorer`` for an encoder checkpoint folder or Hub id on ``subject`` (a name or ``.npz``); ``"demo"``:
    the offline demo encoder on S1."""
    from ..subjects import load_subject

    if encoder == "demo":
        from ..demo import ASSET_ENCODER, seeded_demo_encoder
        from ..encoders import load_encoder

        if subject not in (None, "", "S1"):
            raise ValueError(f"The demo encoder is on subject S1, got subject {subject!r}.")
        s1 = load_subject("S1")
        model = load_encoder(ASSET_ENCODER, subject=s1) if (ASSET_ENCODER / "config.json").is_file() \
            else seeded_demo_encoder(s1)
        return Scorer(model.eval(), s1)
    from ..encoders import load_encoder

    if not subject:
        raise ValueError("Scoring with an encoder checkpoint needs its subject (name or .npz).")
    loaded = load_subject(subject)
    return Scorer(load_encoder(encoder, subject=loaded).eval(), loaded)


def _pil(image):
    import PIL.Image

    return image if isinstance(image, PIL.Image.Image) else PIL.Image.fromarray(np.asarray(image, dtype=np.uint8))


def diversity(embeddings: np.ndarray) -> float:
    """Mean pairwise cosine distance of a set's embeddings (NaN for fewer than two)."""
    e = np.asarray(embeddings, dtype=np.float64)
    if len(e) < 2:
        return float("nan")
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    cos = e @ e.T
    n = len(e)
    return float(1.0 - (cos.sum() - np.trace(cos)) / (n * (n - 1)))


def target_measure(record: dict | None, subject, activations: np.ndarray) -> float | None:
    """The signed measure a record's target is reported as (mean of region A; A − w × B for a contrast), or None
    for images without a generation record (natural images, unguided baselines of an unknown target).

    Records carrying ``target_spec`` (``braindive.targets``) are measured by their ``Target``; older records by
    their description (a custom voxel set by the voxels its objective stored).
    """
    if not record:
        return None
    if "target_spec" in record:
        try:
            from ..targets import Target
        except ImportError:
            pass
        else:
            return float(Target.from_dict(record["target_spec"]).measure(activations))
    from ..description import describe_record

    d = describe_record(record)
    positive = (record.get("objective") or {}).get("positive")
    try:
        a = activations[subject.roi(d.target)].mean()
    except (ValueError, KeyError):
        if positive is None:
            return None
        a = activations[np.asarray(positive, dtype=int)].mean()
    if d.kind == "contrast":
        return float(a - d.weight * activations[subject.roi(d.target_b)].mean())
    return float(a)


def category_roi(record: dict | None, subject) -> str | None:
    """The ROI whose category an image stands for: only a maximise of one of ``subject``'s ROIs (as
    ``Target.category_roi``); minimise, contrast and custom voxel-set images imply no category."""
    if not record:
        return None
    if "target_spec" in record:
        try:
            from ..targets import Target
        except ImportError:
            pass
        else:
            return Target.from_dict(record["target_spec"]).category_roi
    from ..description import describe_record

    d = describe_record(record)
    if d.kind != "maximize":
        return None
    try:
        subject.roi(d.target)
    except (ValueError, KeyError):
        return None
    return d.target
