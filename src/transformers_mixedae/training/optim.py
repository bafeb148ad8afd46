# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Optimizers of the training tasks: AdamW groups as MAE and CAE (no decay on biases and norms), layer-wise
learning-rate decay (BEiT/MAE fine-tuning), LARS (MAE's linear probe), and the learning rate scaled by the global
batch."""

import torch
from torch import nn

# MAE's base learning rate: lr = base * global batch / 256.
DEFAULT_BASE_LEARNING_RATE = 1.5e-4
# MAE's fine-tuning also exempts the [CLS] token and the position embeddings from weight decay.
NO_DECAY_TOKENS = ("cls_token", "position_embeddings")


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups as MAE and CAE: no decay on biases and 1-D parameters (norms, LayerScale)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim <= 1 or name.endswith(".bias") else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_adamw(
    groups: list[dict], lr: float, betas: tuple[float, float]
) -> torch.optim.Optimizer:
    """AdamW over `groups` (which may set their own lr), fused where the device allows it."""
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=lr, betas=betas)


class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017) as MAE's linear probe uses it: SGD with momentum whose update of each matrix is scaled
    by a trust ratio.

    For each parameter `p` with gradient `g`: when `p.ndim > 1`, `g = g + weight_decay * p` and
    `g = g * trust_coefficient * ||p|| / ||g||` (the ratio is 1 when either norm is 0); biases and other 1-D
    parameters (norms) get neither decay nor the ratio. Then `mu = momentum * mu + g` and `p -= lr * mu`. Groups
    may set their own `lr`, `weight_decay`, `momentum` and `trust_coefficient`; the state (`mu`) is checkpointed like
    any optimizer's.
    """

    def __init__(self, params, lr: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9,
                 trust_coefficient: float = 0.001):
        for name, value, low in (("lr", lr, 0.0), ("weight_decay", weight_decay, 0.0), ("momentum", momentum, 0.0),
                                 ("trust_coefficient", trust_coefficient, 0.0)):
            if not value >= low:
                raise ValueError(f"LARS {name} {value!r} is not valid: a number >= {low}.")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for parameter in group["params"]:
                gradient = parameter.grad
                if gradient is None:
                    continue
                if parameter.ndim > 1:
                    gradient = gradient.add(parameter, alpha=group["weight_decay"])
                    parameter_norm = torch.linalg.vector_norm(parameter)
                    gradient_norm = torch.linalg.vector_norm(gradient)
                    ratio = torch.where(
                        (parameter_norm > 0) & (gradient_norm > 0),
                        group["trust_coefficient"] * parameter_norm / gradient_norm,
                        torch.ones_like(parameter_norm),
                    )
                    gradient = gradient.mul(ratio)
                state = self.state[parameter]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(parameter)
                buffer = state["mu"]
                buffer.mul_(group["momentum"]).add_(gradient)
                parameter.add_(buffer, alpha=-group["lr"])
        return loss


def effective_learning_rate(learning_rate: float | None, base_learning_rate: float | None, total_batch_size: int) -> float:
    """`learning_rate` when given, else `base_learning_rate` (default MAE's) scaled by the global batch / 256."""
    if learning_rate is not None:
        return learning_rate
    base = base_learning_rate if base_learning_rate is not None else DEFAULT_BASE_LEARNING_RATE
    return base * total_batch_size / 256


def layer_id(name: str, base_prefix: str, num_layers: int) -> int:
    """Layer index of a parameter for layer-wise lr decay: embeddings 0, block i -> i + 1, everything after the
    blocks (final norm, fc_norm, classifier) L + 1."""
    parts = name.split(".")
    if parts[0] == base_prefix:
        parts = parts[1:]
    if parts[0] == "embeddings":
        return 0
    if parts[0] == "layers":
        return int(parts[1]) + 1
    return num_layers + 1


def layer_decay_parameter_groups(
    model: nn.Module, weight_decay: float, learning_rate: float, layer_decay: float
) -> list[dict]:
    """`parameter_groups` (no decay on biases / 1-D parameters) split per layer, each with
    `lr = learning_rate * layer_decay ** (L + 1 - layer_id)` (MAE/BEiT layer-wise decay)."""
    unwrapped = getattr(model, "module", model)
    num_layers = unwrapped.config.num_hidden_layers
    prefix = unwrapped.base_model_prefix
    layer_of = {id(p): layer_id(name, prefix, num_layers) for name, p in unwrapped.named_parameters()}
    exempt = {id(p) for name, p in unwrapped.named_parameters() if name.endswith(NO_DECAY_TOKENS)}
    groups: dict[tuple[int, float], dict] = {}
    for base_group in parameter_groups(unwrapped, weight_decay):
        for parameter in base_group["params"]:
            layer = layer_of[id(parameter)]
            decay = 0.0 if id(parameter) in exempt else base_group["weight_decay"]
            key = (layer, decay)
            if key not in groups:
                scale = layer_decay ** (num_layers + 1 - layer)
                groups[key] = {"params": [], "weight_decay": decay, "lr": learning_rate * scale, "lr_scale": scale,
                               "layer_id": layer}
            groups[key]["params"].append(parameter)
    return [groups[key] for key in sorted(groups)]


