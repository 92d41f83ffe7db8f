"""Batch generation on Ray: sweep files, workers that load the pipeline once, an exactly-once catalog writer.

``python -m braindive batch SWEEP.toml`` (see ``docs/batch.md``). Ray is imported only by ``runner``.
"""
__all__ = ["EncoderSpec", "Job", "Settings", "Sweep", "SweepError", "image_id", "load_sweep", "parse_sweep"]


def __getattr__(name: str):
    """The sweep names, imported on first use (``sweep`` loads torch; the CLI's ``--help`` must not)."""
    if name in __all__:
        from . import sweep

        return getattr(sweep, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
