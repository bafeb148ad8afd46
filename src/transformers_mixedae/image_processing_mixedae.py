# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Image processors for MixedAE: MAE's evaluation transform (resize the short side, center crop, normalise).

Two backends, as in transformers 5.x: `MixedAEImageProcessor` (torchvision, batched, GPU-capable) and
`MixedAEImageProcessorPil` (Pillow + NumPy only). Without torchvision, `AutoImageProcessor` picks the PIL one.
Training augmentation (random resized crop + flip) lives in `transformers_mixedae.data`; mixing happens in the
model.
"""

from transformers.image_processing_backends import PilBackend, TorchvisionBackend
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling


class _MixedAEImageProcessorDefaults:
    # MAE: Resize(256, bicubic) on the short side + CenterCrop(224), ImageNet mean/std.
    resample = PILImageResampling.BICUBIC
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    size = {"shortest_edge": 256}
    crop_size = {"height": 224, "width": 224}
    do_resize = True
    do_center_crop = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    model_input_names = ["pixel_values"]


class MixedAEImageProcessor(_MixedAEImageProcessorDefaults, TorchvisionBackend):
    """MixedAE evaluation transform on the torchvision backend."""


class MixedAEImageProcessorPil(_MixedAEImageProcessorDefaults, PilBackend):
    """MixedAE evaluation transform on the PIL backend (no torchvision needed)."""


def evaluation_sizes(image_size: int, crop_fraction: float = 224 / 256) -> dict:
    """Processor keyword arguments for a model trained at `image_size`: short side `image_size / crop_fraction`,
    then a centre crop of `image_size` (MAE's 224/256 ratio by default)."""
    return {
        "size": {"shortest_edge": round(image_size / crop_fraction)},
        "crop_size": {"height": image_size, "width": image_size},
    }


__all__ = ["MixedAEImageProcessor", "MixedAEImageProcessorPil", "evaluation_sizes"]
