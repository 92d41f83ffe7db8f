"""Evaluation of generated images: CLIP 5-way zero-shot classification, comparisons with natural images,
and human studies (export and analysis)."""
from .categories import CATEGORIES, category_of, load_roi_table
from .stats import Accuracy, accuracy, confusion_matrix, wilson_interval
from .stage import evaluate_batch
from .zeroshot import ZeroShotClassifier, ZeroShotConfig, load_classifier

__all__ = ["CATEGORIES", "category_of", "load_roi_table", "Accuracy", "accuracy", "confusion_matrix",
           "wilson_interval", "evaluate_batch", "ZeroShotClassifier", "ZeroShotConfig", "load_classifier"]
