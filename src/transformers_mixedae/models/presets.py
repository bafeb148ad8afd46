# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Named Vision Transformer sizes (ViT-Ti/S/B/L/H), written once.

`VIT_PRESETS` maps a size name to its `ViTSize` (width, depth, heads, MLP width, patch and image size, the numbers
of the ViT, DeiT and MAE papers; the MLP is 4x the width). `vit_config_kwargs` turns a size into the keyword
arguments of a transformers config of the ViT family (`vit`, `vit_mae`, `mixedae`, `cae`, ...):

    >>> from transformers_mixedae import MixedAEConfig
    >>> from transformers_mixedae.models.presets import vit_config_kwargs
    >>> config = MixedAEConfig(**vit_config_kwargs("small", "mixedae"))
    >>> config.hidden_size, config.num_hidden_layers, config.patch_size
    (384, 12, 16)

A `ViTSize` can also describe a toy encoder (tests, smoke runs) that has no name here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

ENCODER_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


@dataclass(frozen=True)
class ViTSize:
    """The geometry of a ViT encoder, under the field names transformers' ViT-family configs use."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    patch_size: int = 16
    image_size: int = 224

    def __post_init__(self):
        for field in fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ViTSize.{field.name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"
            )
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def encoder_kwargs(self) -> dict[str, int]:
        """The transformer stack only (no patch or image size), in the order of `ENCODER_FIELDS`."""
        return {name: getattr(self, name) for name in ENCODER_FIELDS}


VIT_PRESETS: dict[str, ViTSize] = {
    "tiny": ViTSize(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768),
    "small": ViTSize(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
    "base": ViTSize(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": ViTSize(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    "huge": ViTSize(
        hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, intermediate_size=5120, patch_size=14
    ),
}


def vit_preset(name: str) -> ViTSize:
    """The registered size `name`; an unknown name raises `ValueError` listing the known ones."""
    try:
        return VIT_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown ViT size {name!r}; choose from {', '.join(VIT_PRESETS)}") from None


def vit_size_name(hidden_size: int, num_hidden_layers: int) -> str | None:
    """The preset name of an encoder of this width and depth (e.g. `(768, 12)` -> "base"), or None."""
    for name, size in VIT_PRESETS.items():
        if (size.hidden_size, size.num_hidden_layers) == (hidden_size, num_hidden_layers):
            return name
    return None


def vit_config_kwargs(size: str | ViTSize, model_type: str = "vit", **overrides) -> dict:
    """Keyword arguments for the config of `model_type` (a transformers or package model type) with the encoder
    geometry of `size` (a preset name or a `ViTSize`), `overrides` on top.

    Raises `ValueError` for a model type whose config names these fields otherwise (e.g. `mlp_ratio` instead of
    `intermediate_size`), rather than returning arguments the config would ignore.
    """
    from transformers import CONFIG_MAPPING  # the package's own types are registered on import

    size = vit_preset(size) if isinstance(size, str) else size
    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"unknown model type {model_type!r}")
    defaults = CONFIG_MAPPING[model_type]()
    kwargs = asdict(size)
    missing = [name for name in kwargs if not hasattr(defaults, name)]
    if missing:
        raise ValueError(f"the {model_type!r} config has no field {', '.join(missing)}: not a ViT-family config")
    return {**kwargs, **overrides}


__all__ = ["ENCODER_FIELDS", "VIT_PRESETS", "ViTSize", "vit_config_kwargs", "vit_preset", "vit_size_name"]
