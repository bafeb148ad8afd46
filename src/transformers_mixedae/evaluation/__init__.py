# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Evaluation of frozen encoders (feature extraction, weighted kNN, linear probe, `evaluate` metrics shipped with the
package) and the pictures a run draws (reconstructions, homologous attention)."""

from .eval_mode import eval_mode
from .segmentation_metrics import MeanIoU, confusion_matrix, reduce_reference_labels, segmentation_scores

__all__ = ["MeanIoU", "confusion_matrix", "eval_mode", "reduce_reference_labels", "segmentation_scores"]
