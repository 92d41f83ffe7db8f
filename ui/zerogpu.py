"""Hugging Face ZeroGPU: request a GPU for each generation when the ``spaces`` package is present."""
from __future__ import annotations

__all__ = ["gpu_task"]


def gpu_task(fn, duration: int = 120):
    """``spaces.GPU(duration)(fn)`` on a Space; ``fn`` unchanged elsewhere."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(duration=duration)(fn)
