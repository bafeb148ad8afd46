# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Evaluating a model in the middle of training: eval mode for the duration, the caller's modes afterwards."""

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put `module` in eval mode (dropout, drop path and batch norm off) and give every submodule back the mode it
    had, also when the body raises: an evaluation that fails must not leave the rest of training without its
    regularisation, and a part held in eval mode on purpose (a frozen encoder under a linear probe) stays so."""
    modes = [(submodule, submodule.training) for submodule in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for submodule, training in modes:
            submodule.training = training
