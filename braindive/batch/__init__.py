"""Batch generation on Ray: sweep files, workers that load the pipeline once, an exactly-once catalog writer.

``python -m braindive batch SWEEP.toml`` (see ``docs/batch.md``). Ray is imported only by ``runner``.
"""
from .sweep import EncoderSpec, Job, Settings, Sweep, SweepError, image_id, load_sweep, parse_sweep

__all__ = ["EncoderSpec", "Job", "Settings", "Sweep", "SweepError", "image_id", "load_sweep", "parse_sweep"]
