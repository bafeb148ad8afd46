# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Optional DALL-E dVAE tokenizer: the token-id targets of official CAE pre-training.

The official pipeline resizes the same crop box as the 224 px encoder view to 112x112 (Lanczos), converts it to a
[0, 1] tensor, applies `map_pixels` (x * 0.8 + 0.1), runs OpenAI's DALL-E `Encoder` and takes the argmax over the
8192 logits: a 14x14 grid of ids, 196 per image in raster order, which `CAEForPreTraining(labels=...)` accepts.

The encoder comes from the PyPI package `dall-e` (not a dependency of this package: install it with
`pip install --no-deps dall-e`, since its metadata pulls torchvision; it needs only `torch`, `attrs` and
`requests`) and from an `encoder.pkl` the user provides. Any module with the same interface (pixels in, `(B, vocab,
H/8, W/8)` logits out) can be wrapped instead.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .rgb_conversion import to_rgb

# DALL-E's `logit_laplace_eps`: pixels are squeezed from [0, 1] into [eps, 1 - eps].
LOGIT_LAPLACE_EPS = 0.1
TOKENIZER_IMAGE_SIZE = 112


def map_pixels(pixel_values: torch.Tensor, eps: float = LOGIT_LAPLACE_EPS) -> torch.Tensor:
    """[0, 1] pixels -> the dVAE's input range, `(1 - 2 * eps) * x + eps` (x * 0.8 + 0.1)."""
    return (1 - 2 * eps) * pixel_values + eps


def dalle_tokenizer_view(images: Sequence, size: int = TOKENIZER_IMAGE_SIZE) -> torch.Tensor:
    """PIL images (already cropped to the same box as the encoder view) -> `(B, 3, size, size)` in [0, 1].

    Lanczos resize and `ToTensor`-style scaling, as the official tokenizer transform. Images that are not RGB yet
    are converted as the encoder's view is (`to_rgb`: transparency on white, 16-bit scaled), so that both views
    show the same pixels.
    """
    from PIL import Image

    views = []
    for image in images:
        resized = to_rgb(image).resize((size, size), resample=Image.Resampling.LANCZOS)
        views.append(torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1))
    return torch.stack(views)


def load_dalle_encoder(path: str | Path, allow_unsafe_pickle: bool = False) -> nn.Module:
    """Load the DALL-E dVAE encoder from a local file.

    A state dict (e.g. `torch.save(encoder.state_dict(), ...)`) is read safely (`weights_only=True`) into a fresh
    `dall_e.Encoder`. OpenAI's `encoder.pkl` is a pickled module, which only full unpickling can read: that runs
    code from the file, so it needs `allow_unsafe_pickle=True` and a file you trust.
    """
    try:
        import dall_e
    except ImportError as error:
        raise ImportError(
            "loading DALL-E weights needs the `dall-e` package: `pip install --no-deps dall-e` (it needs torch, attrs "
            "and requests; --no-deps avoids its torchvision requirement)."
        ) from error
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DALL-E encoder weights {str(path)!r} do not exist.")
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:
        if not allow_unsafe_pickle:
            raise ValueError(
                f"{str(path)!r} is not a plain state dict (OpenAI's encoder.pkl is a pickled module). Loading it runs "
                "code from the file: pass allow_unsafe_pickle=True if you trust it."
            ) from error
        loaded = torch.load(str(path), map_location="cpu", weights_only=False)
    if isinstance(loaded, nn.Module):
        return loaded
    encoder = dall_e.Encoder()
    encoder.load_state_dict(loaded)
    return encoder


class DallETokenizer(nn.Module):
    """Turns 112 px views into dVAE token ids, `(B, (H/8) * (W/8))` in raster order (196 for 112 px).

    Args:
        encoder: `dall_e.Encoder` (see `load_dalle_encoder`) or any module mapping `(B, 3, H, W)` mapped pixels to
            `(B, vocab_size, H/8, W/8)` logits.

    Example:

    ```python
    >>> tokenizer = DallETokenizer.from_file("encoder.pkl", allow_unsafe_pickle=True)
    >>> labels = tokenizer(dalle_tokenizer_view(cropped_images))        # (B, 196)
    >>> outputs = model(pixel_values, bool_masked_pos=mask, labels=labels)
    ```
    """

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder.eval()
        for parameter in self.encoder.parameters():
            parameter.requires_grad_(False)

    @classmethod
    def from_file(cls, path: str | Path, allow_unsafe_pickle: bool = False) -> "DallETokenizer":
        return cls(load_dalle_encoder(path, allow_unsafe_pickle))

    @property
    def vocab_size(self) -> int | None:
        return getattr(self.encoder, "vocab_size", None)

    def train(self, mode: bool = True) -> "DallETokenizer":
        # The tokenizer is frozen: it stays in eval mode whatever its parent does.
        super().train(mode)
        self.encoder.eval()
        return self

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`pixel_values` `(B, 3, H, W)` in [0, 1] (not ImageNet-normalised) -> token ids `(B, H/8 * W/8)`."""
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(
                f"expected tokenizer views of shape (batch, 3, height, width), got {tuple(pixel_values.shape)}."
            )
        if pixel_values.min() < 0 or pixel_values.max() > 1:
            raise ValueError(
                "tokenizer views must be in [0, 1] (use dalle_tokenizer_view), not normalised with a mean and std."
            )
        logits = self.encoder(map_pixels(pixel_values.float()))
        return logits.argmax(dim=1).flatten(1)


__all__ = ["DallETokenizer", "dalle_tokenizer_view", "load_dalle_encoder", "map_pixels"]
