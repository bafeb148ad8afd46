"""Small pieces shared by the export, remote-code, pipeline and model-card tests."""

import numpy as np
import torch
from PIL import Image

from transformers_mixedae import MixedAEImageProcessorPil


def randomise_(model: torch.nn.Module, std: float = 0.2) -> torch.nn.Module:
    """Non-trivial values everywhere (frozen position tables, [CLS] slot, biases), so that every copied tensor
    matters in a comparison; returns the model in eval mode."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, std)
    return model.eval()


def tiny_processor_kwargs() -> dict:
    """Short side 36, centre crop 32: the evaluation transform for the 32 px tiny configs."""
    return {"size": {"shortest_edge": 36}, "crop_size": {"height": 32, "width": 32}}


def tiny_mixedae_processor() -> MixedAEImageProcessorPil:
    return MixedAEImageProcessorPil(**tiny_processor_kwargs())


def random_image(seed: int = 0) -> Image.Image:
    """A 52x40 RGB image (not square, not the model size, so resizing and cropping matter)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(40, 52, 3), dtype=np.uint8))
