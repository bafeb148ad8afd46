# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Evaluation of frozen encoders (feature extraction, weighted kNN, linear probe, `evaluate` metrics shipped with the
package) and the pictures a run draws (reconstructions, homologous attention)."""
