"""Metrics: sample-averaged F2, decoding of probabilities into labels, threshold search and
submission-format CSVs. The lowest layer: numpy only (plus imet.errors and imet.fileio)."""
from imet.metrics.f2 import binarize, f2_per_class, f2_per_sample, f2_score
from imet.metrics.thresholds import (CrossFit, best_global_threshold, cross_fitted_f2,
                                     global_f2_curve, search_thresholds)

__all__ = ["binarize", "f2_per_class", "f2_per_sample", "f2_score", "CrossFit",
           "best_global_threshold", "cross_fitted_f2", "global_f2_curve", "search_thresholds"]
