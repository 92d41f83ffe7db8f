"""BrainDiVE Studio: brain-guided diffusion for exploring what visual cortex prefers.

Names are imported on first use (PEP 562 ``__getattr__``), so ``import braindive`` and the CLI's
``--help`` do not load torch, diffusers or pycortex.
"""
import importlib
import importlib.util
import sys
import types

__version__ = "0.1.0"

_EXPORTS = {
    "cache": ("cache_dir", "set_cache_dir"),
    "subjects": ("Subject", "available_subjects", "load_subject"),
    "flatmap": ("Pick", "flatmap_shape", "grow", "pick", "render_flatmap", "roi_centroids", "save_flatmap",
                "voxels_in_mask"),
    "encoders": ("BrainEncoder", "ClipLinearEncoder", "EncoderConfig", "load_encoder"),
    "objectives": ("Objective",),
    "pipeline": ("BrainDiVEPipeline", "BrainDiVEPipelineOutput"),
    "rerank": ("Ranked", "rerank"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = ["__version__", "demo", *_MODULE_OF]


def __getattr__(name: str):
    """Import the submodule that defines ``name`` (or the submodule ``name``) on first access."""
    if name in _MODULE_OF:
        value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """``braindive.rerank`` stays the function ``rerank`` when the import system binds the submodule of that name
    (``from braindive.rerank import rank_scores`` still reaches the module through ``sys.modules``)."""

    def __setattr__(self, name, value):
        if isinstance(value, types.ModuleType) and _MODULE_OF.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
