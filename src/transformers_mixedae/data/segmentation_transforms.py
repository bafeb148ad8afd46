# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Paired image / label-map augmentation for semantic segmentation (the BEiT / MAE UperNet recipe on ADE20K).

Training (`SegmentationTrainTransform`), in mmsegmentation's order:
1. random rescale: a ratio r uniform in `ratio_range` (0.5, 2.0) scales the base `scale` (2048, 512); the image is
   resized, keeping its aspect ratio, to the largest size whose long side is at most 2048 r and short side at most
   512 r (mmcv's `imrescale`, i.e. mmseg's `Resize(img_scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True)`:
   for ordinary photographs the short side becomes 512 r);
2. random crop of `crop_size` (smaller images keep their size here and are padded in step 5); with
   `cat_max_ratio` (0.75), up to 10 crops are drawn until no single class covers `cat_max_ratio` or more of the
   crop's labelled pixels (ignore pixels not counted), as mmseg's `RandomCrop`;
3. horizontal flip with probability `flip_probability` (0.5);
4. optional photometric distortion of the image only (mmseg's `PhotoMetricDistortion`): each with probability
   1/2, brightness delta in [-32, 32], contrast factor in [0.5, 1.5] (before or after the colour steps, 1/2 each),
   saturation factor in [0.5, 1.5] and hue shift in [-18, 18) of OpenCV's 180 hue steps, each step clipped and
   truncated to uint8 as mmseg does. The colour steps use Pillow's HSV, so the pixels are close to, not
   identical with, OpenCV's;
5. normalisation (with `normalize=True`), then padding at the bottom and right to `crop_size`: labels with
   `ignore_index` (255), so padded pixels never count in the loss, and the image with 0 in normalised space, as
   mmseg (the mean colour). With `normalize=False` the uint8 image is padded with the mean colour rounded to uint8
   (`round(255 * mean)`), which normalises on the device (`BatchNormalizer`) to within 0.01 of 0. `padding="black"`
   pads with uint8 0 instead (-mean/std once normalised), as this package did before the mean colour: a border
   that evaluation, which pads to the patch size with 0 in normalised space, never shows the model.

The geometric steps (1, 2, 3, 5) apply the same box / flip to image and labels: the image is resampled with
`interpolation` (bilinear by default, antialiased as the package's other transforms; "nearest" is there for
exact alignment checks), the labels always with nearest neighbour (`nearest-exact`: pixel centres aligned as the
image's `align_corners=False` resampling), so no label value is ever blended into one that was not there.

Evaluation (`SegmentationEvaluationTransform`): the image is rescaled to the base `scale` with the same
keep-ratio rule (no randomness) and the labels are left at full resolution by default (mmseg's protocol: the
logits are upsampled to the original label map before the argmax, so the scores are those of the original
annotation); `resize_labels=True` resizes them with nearest neighbour instead, to the image's new size.

Both take the image as a PIL RGB image or an `(H, W, 3)` uint8 array, and the labels as a PIL image (mode "L"
/ "P" / "I"), an `(H, W)` integer array or tensor, and an optional `torch.Generator` (without one, the global torch
RNG, which DataLoader workers seed). They return `pixel_values` `(3, h, w)` (float32 normalised, or uint8 with
`normalize=False`) and `labels` `(h, w)` int64.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..models.image_processing_mixedae import SEGMENTATION_IGNORE_INDEX
from .transforms import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    CropBox,
    RGBImage,
    crop_to_uint8_tensor,
    image_height_width,
    normalize_pixels,
    resize_uint8,
)

ADE20K_SCALE = (2048, 512)  # mmseg's img_scale for ADE20K: (long side, short side) bounds
RATIO_RANGE = (0.5, 2.0)
CAT_MAX_RATIO = 0.75
# Crops drawn at most while one class dominates; the last is kept unchecked. mmseg's RandomCrop checks 10 and may
# draw an 11th: a rarely reached difference, kept so that the recorded runs reproduce.
CAT_MAX_RATIO_ATTEMPTS = 10
BRIGHTNESS_DELTA = 32
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 18  # in OpenCV's hue unit (180 per turn)

SegmentationInterpolation = Literal["bilinear", "bicubic", "nearest"]
CropPadding = Literal["mean", "black"]
CROP_PADDINGS = get_args(CropPadding)
LabelMap = Image.Image | np.ndarray | torch.Tensor


def _as_size(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    if len(size) != 2:
        raise ValueError(f"expected a size as an int or (height, width), got {size!r}")
    return int(size[0]), int(size[1])


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return float(torch.empty(1, dtype=torch.float64).uniform_(low, high, generator=generator).item())


def _coin(generator: torch.Generator | None) -> bool:
    return bool(torch.randint(0, 2, (1,), generator=generator).item())


def _randint_inclusive(low: int, high: int, generator: torch.Generator | None) -> int:
    return int(torch.randint(low, high + 1, (1,), generator=generator).item())


def rescaled_size(height: int, width: int, scale: Sequence[int]) -> tuple[int, int]:
    """`(height, width)` after mmcv's keep-ratio rescale to `scale` = (long-side bound, short-side bound): the
    largest factor that keeps the long side within `max(scale)` and the short side within `min(scale)`."""
    long_bound, short_bound = max(scale), min(scale)
    factor = min(long_bound / max(height, width), short_bound / min(height, width))
    return max(int(height * factor + 0.5), 1), max(int(width * factor + 0.5), 1)


def label_map_to_tensor(labels: LabelMap) -> torch.Tensor:
    """`(H, W)` int64 tensor of a label map given as a PIL image ("L", "P", "I", or "1" for 0/1 maps), an integer array
    or a tensor."""
    if isinstance(labels, Image.Image):
        if labels.mode == "1":
            labels = labels.convert("L").point(lambda value: value // 255)  # 1-bit maps: white is class 1
        if labels.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(
                f"expected a label map as a single-channel PIL image (mode L, P, I or 1), got mode {labels.mode}; "
                "load the annotation without converting it to RGB"
            )
        array = np.array(labels)
    elif torch.is_tensor(labels):
        array = labels.detach().cpu().numpy()
    else:
        array = np.asarray(labels)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"expected a label map of shape (height, width) with integer class ids, got {array.dtype} "
            f"{tuple(array.shape)}; pass one single-channel annotation per image"
        )
    return torch.from_numpy(array.astype(np.int64))


def _image_and_labels(image: RGBImage, labels: LabelMap) -> tuple[torch.Tensor, torch.Tensor]:
    height, width = image_height_width(image)
    pixels = crop_to_uint8_tensor(image, CropBox(0, 0, height, width))
    label_tensor = label_map_to_tensor(labels)
    if tuple(label_tensor.shape) != (height, width):
        raise ValueError(
            f"the image is {height}x{width} (height x width) but its label map is "
            f"{label_tensor.shape[0]}x{label_tensor.shape[1]}; pass the annotation that belongs to this image, "
            "at the image's resolution"
        )
    return pixels, label_tensor


def resize_image(pixels: torch.Tensor, size: tuple[int, int], interpolation: SegmentationInterpolation) -> torch.Tensor:
    """Resize a `(3, H, W)` uint8 image; bilinear / bicubic antialiased (`transforms.resize_uint8`)."""
    if tuple(pixels.shape[-2:]) == size:
        return pixels
    if interpolation == "nearest":
        return F.interpolate(pixels.unsqueeze(0), size=size, mode="nearest-exact")[0]
    return resize_uint8(pixels, size, interpolation)


def resize_labels_nearest(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize an `(H, W)` int64 label map with nearest neighbour (no label is ever blended); stays int64."""
    if tuple(labels.shape) == size:
        return labels
    # float64 holds every int32 class id exactly; interpolate has no integer nearest mode on all builds.
    resized = F.interpolate(labels[None, None].to(torch.float64), size=size, mode="nearest-exact")
    return resized[0, 0].to(torch.int64)


def photometric_distortion(pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """mmseg's `PhotoMetricDistortion` on a `(3, H, W)` uint8 RGB image (see the module docstring); uint8 out."""

    def affine(values: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
        # mmseg's convert: float, clip to [0, 255], then truncate to uint8.
        return (values.to(torch.float32) * alpha + beta).clamp_(0, 255).to(torch.uint8)

    def contrast(values: torch.Tensor) -> torch.Tensor:
        if _coin(generator):
            return affine(values, _uniform(*CONTRAST_RANGE, generator), 0.0)
        return values

    if _coin(generator):
        pixels = affine(pixels, 1.0, _uniform(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA, generator))
    contrast_first = _coin(generator)
    if contrast_first:
        pixels = contrast(pixels)
    saturation = _uniform(*SATURATION_RANGE, generator) if _coin(generator) else None
    hue = _randint_inclusive(-HUE_DELTA, HUE_DELTA - 1, generator) if _coin(generator) else None  # mmseg: np.random.randint, high exclusive
    if saturation is not None or hue is not None:
        hsv = np.array(Image.fromarray(pixels.permute(1, 2, 0).numpy()).convert("HSV"))
        if saturation is not None:
            hsv[..., 1] = np.clip(hsv[..., 1].astype(np.float32) * saturation, 0, 255).astype(np.uint8)
        if hue is not None:
            # Pillow's hue has 256 steps per turn where OpenCV's has 180.
            shift = int(round(hue * 256 / 180))
            hsv[..., 0] = ((hsv[..., 0].astype(np.int64) + shift) % 256).astype(np.uint8)
        rgb = np.array(Image.fromarray(hsv, mode="HSV").convert("RGB"))
        pixels = torch.from_numpy(rgb).permute(2, 0, 1)
    if not contrast_first:
        pixels = contrast(pixels)
    return pixels


def _pad_with_colour(values: torch.Tensor, size: tuple[int, int], colour: Sequence[float]) -> torch.Tensor:
    """`(C, h, w)` -> `(C, *size)`: the image at the top left, every other pixel `colour` (one value per channel)."""
    canvas = torch.tensor(colour, dtype=values.dtype).view(-1, 1, 1).repeat(1, *size)
    canvas[:, : values.shape[1], : values.shape[2]] = values
    return canvas


def _sample_crop(
    labels: torch.Tensor,
    crop_size: tuple[int, int],
    cat_max_ratio: float | None,
    ignore_index: int,
    generator: torch.Generator | None,
) -> CropBox:
    height, width = labels.shape
    crop_height, crop_width = min(crop_size[0], height), min(crop_size[1], width)

    def draw() -> CropBox:
        top = _randint_inclusive(0, height - crop_height, generator)
        left = _randint_inclusive(0, width - crop_width, generator)
        return CropBox(top, left, crop_height, crop_width)

    box = draw()
    if cat_max_ratio is None or cat_max_ratio >= 1.0:
        return box
    for _ in range(CAT_MAX_RATIO_ATTEMPTS - 1):
        crop = labels[box.top : box.top + box.height, box.left : box.left + box.width]
        _, counts = torch.unique(crop[crop != ignore_index], return_counts=True)
        # Accept a crop that shows more than one class, none of them dominating.
        if counts.numel() > 1 and counts.max().item() / counts.sum().item() < cat_max_ratio:
            break
        box = draw()
    return box


class SegmentationTrainTransform:
    """Random rescale, random crop, flip, photometric distortion, normalise and pad, on an image and its label map
    (the module docstring gives the recipe). Call with `(image, labels, generator)`.

    The defaults are the BEiT / MAE ADE20K recipe: `crop_size` 512, `scale` (2048, 512), `ratio_range` (0.5, 2.0),
    `cat_max_ratio` 0.75 (None turns the retry off), flip 0.5, photometric distortion on, bilinear.
    """

    accepts_rgb_arrays = True

    def __init__(
        self,
        crop_size: int | Sequence[int] = 512,
        scale: Sequence[int] = ADE20K_SCALE,
        ratio_range: Sequence[float] = RATIO_RANGE,
        cat_max_ratio: float | None = CAT_MAX_RATIO,
        flip_probability: float = 0.5,
        photometric_distortion: bool = True,
        interpolation: SegmentationInterpolation = "bilinear",
        ignore_index: int = SEGMENTATION_IGNORE_INDEX,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        normalize: bool = True,
        padding: CropPadding = "mean",
    ):
        self.crop_size = _as_size(crop_size)
        if min(self.crop_size) < 1:
            raise ValueError(f"crop_size must be positive, got {crop_size!r}")
        if len(scale) != 2 or min(scale) < 1:
            raise ValueError(f"scale must be two positive side lengths, e.g. (2048, 512), got {scale!r}")
        if len(ratio_range) != 2 or not 0 < ratio_range[0] <= ratio_range[1]:
            raise ValueError(f"ratio_range must be (low, high) with 0 < low <= high, got {ratio_range!r}")
        if not 0.0 <= flip_probability <= 1.0:
            raise ValueError(f"flip_probability must be in [0, 1], got {flip_probability}")
        if interpolation not in ("bilinear", "bicubic", "nearest"):
            raise ValueError(f"interpolation must be 'bilinear', 'bicubic' or 'nearest', got {interpolation!r}")
        if padding not in CROP_PADDINGS:
            raise ValueError(f"padding must be one of {CROP_PADDINGS}, got {padding!r}")
        self.scale = (int(scale[0]), int(scale[1]))
        self.ratio_range = (float(ratio_range[0]), float(ratio_range[1]))
        self.cat_max_ratio = cat_max_ratio
        self.flip_probability = flip_probability
        self.photometric_distortion = photometric_distortion
        self.interpolation = interpolation
        self.ignore_index = ignore_index
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.normalize = normalize
        self.padding = padding

    def __call__(
        self, image: RGBImage, labels: LabelMap, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        pixels, label_tensor = _image_and_labels(image, labels)
        ratio = _uniform(*self.ratio_range, generator)
        size = rescaled_size(*label_tensor.shape, (self.scale[0] * ratio, self.scale[1] * ratio))
        pixels = resize_image(pixels, size, self.interpolation)
        label_tensor = resize_labels_nearest(label_tensor, size)

        box = _sample_crop(label_tensor, self.crop_size, self.cat_max_ratio, self.ignore_index, generator)
        rows, columns = slice(box.top, box.top + box.height), slice(box.left, box.left + box.width)
        pixels, label_tensor = pixels[:, rows, columns], label_tensor[rows, columns]

        if _uniform(0.0, 1.0, generator) < self.flip_probability:
            pixels, label_tensor = pixels.flip(-1), label_tensor.flip(-1)
        if self.photometric_distortion:
            pixels = photometric_distortion(pixels.contiguous(), generator)

        values = normalize_pixels(pixels, self.mean, self.std) if self.normalize else pixels
        pad_bottom, pad_right = self.crop_size[0] - box.height, self.crop_size[1] - box.width
        if pad_bottom or pad_right:
            values = _pad_with_colour(values, self.crop_size, self.padding_colour())
            label_tensor = F.pad(label_tensor, (0, pad_right, 0, pad_bottom), value=self.ignore_index)
        return {"pixel_values": values.contiguous(), "labels": label_tensor.contiguous()}

    def padding_colour(self) -> tuple[float, ...]:
        """Per channel, in the output's space (normalised, or uint8 with `normalize=False`): the mean colour (0 once
        normalised) or, with `padding="black"`, uint8 0 (-mean/std once normalised)."""
        if self.padding == "black":
            if self.normalize:
                return tuple(-mean / std for mean, std in zip(self.mean, self.std))
            return (0.0,) * len(self.mean)
        if self.normalize:
            return (0.0,) * len(self.mean)
        return tuple(float(round(255 * mean)) for mean in self.mean)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(crop_size={self.crop_size}, scale={self.scale}, ratio_range={self.ratio_range}, "
            f"cat_max_ratio={self.cat_max_ratio}, flip_probability={self.flip_probability}, "
            f"photometric_distortion={self.photometric_distortion}, interpolation={self.interpolation!r}, "
            f"ignore_index={self.ignore_index}, normalize={self.normalize}, padding={self.padding!r})"
        )


class SegmentationEvaluationTransform:
    """Rescale the image to `scale` keeping its aspect ratio (short side 512 for ordinary ADE20K images); labels
    at full resolution (default: upsample the logits to them) or, with `resize_labels=True`, resized nearest.
    `labels` may be None (inference): the output then has no "labels"."""

    accepts_rgb_arrays = True

    def __init__(
        self,
        scale: Sequence[int] = ADE20K_SCALE,
        interpolation: SegmentationInterpolation = "bilinear",
        resize_labels: bool = False,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        normalize: bool = True,
    ):
        if len(scale) != 2 or min(scale) < 1:
            raise ValueError(f"scale must be two positive side lengths, e.g. (2048, 512), got {scale!r}")
        if interpolation not in ("bilinear", "bicubic", "nearest"):
            raise ValueError(f"interpolation must be 'bilinear', 'bicubic' or 'nearest', got {interpolation!r}")
        self.scale = (int(scale[0]), int(scale[1]))
        self.interpolation = interpolation
        self.resize_labels = resize_labels
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.normalize = normalize

    def __call__(
        self, image: RGBImage, labels: LabelMap | None = None, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        if labels is None:
            height, width = image_height_width(image)
            pixels, label_tensor = crop_to_uint8_tensor(image, CropBox(0, 0, height, width)), None
        else:
            pixels, label_tensor = _image_and_labels(image, labels)
        size = rescaled_size(pixels.shape[1], pixels.shape[2], self.scale)
        pixels = resize_image(pixels, size, self.interpolation)
        output: dict[str, Any] = {
            "pixel_values": normalize_pixels(pixels, self.mean, self.std) if self.normalize else pixels.contiguous()
        }
        if label_tensor is not None:
            output["labels"] = resize_labels_nearest(label_tensor, size) if self.resize_labels else label_tensor
        return output

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(scale={self.scale}, interpolation={self.interpolation!r}, "
            f"resize_labels={self.resize_labels}, normalize={self.normalize})"
        )
