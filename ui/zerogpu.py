"""Hugging Face ZeroGPU: request a GPU for each generation when the ``spaces`` package is present."""
from __future__ import annotations

__all__ = ["gpu_task", "gpu_duration", "MIN_SECONDS", "MAX_SECONDS", "OVERHEAD_SECONDS", "DOCS", "PYTHON",
           "TORCH_VERSIONS"]

# what ZeroGPU runs, as its documentation lists it (Gradio 4+)
DOCS = "https://huggingface.co/docs/hub/spaces-zerogpu"
PYTHON = "3.10.13"
TORCH_VERSIONS = ("2.1.0", "2.1.1", "2.1.2", "2.2.0", "2.2.2", "2.4.0", "2.5.1", "2.6.0", "2.7.1", "2.8.0")

MIN_SECONDS, MAX_SECONDS = 20, 300  # ZeroGPU budget bounds per request
OVERHEAD_SECONDS = 10               # moving the models to the GPU, decoding, handing results back


def gpu_duration(steps: int, n_images: int, seconds_per_step: float) -> int:
    """GPU seconds to ask for: every image runs ``steps`` guided and ``steps`` unguided steps; clamped."""
    estimate = OVERHEAD_SECONDS + steps * n_images * 2 * seconds_per_step
    return int(min(MAX_SECONDS, max(MIN_SECONDS, round(estimate))))


def gpu_task(fn, duration):
    """``spaces.GPU(duration=duration)(fn)`` on a Space; ``fn`` unchanged elsewhere.

    ``duration`` is a number of seconds or, as ZeroGPU allows, a function of ``fn``'s arguments.
    """
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(duration=duration)(fn)
