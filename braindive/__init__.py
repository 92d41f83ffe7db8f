"""BrainDiVE Studio: brain-guided diffusion for exploring what visual cortex prefers."""
from .cache import cache_dir, set_cache_dir
from .subjects import Subject, available_subjects, load_subject
from .flatmap import Pick, flatmap_shape, grow, pick, render_flatmap, roi_centroids, save_flatmap, voxels_in_mask

__version__ = "0.1.0"
from .encoders import BrainEncoder, ClipLinearEncoder, EncoderConfig, load_encoder
from .objectives import Objective
from .pipeline import BrainDiVEPipeline, BrainDiVEPipelineOutput
from . import demo
from .rerank import Ranked, rerank
