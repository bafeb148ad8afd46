# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""The training engine (`loop.train`) and what it is made of: optimizers, checks before a run, checkpoint and
resume, and the final save."""

from .loop import LoopState, TrainingCallback, TrainingTask, exit_status, train

__all__ = ["LoopState", "TrainingCallback", "TrainingTask", "exit_status", "train"]
