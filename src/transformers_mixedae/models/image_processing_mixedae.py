# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Image processors for MixedAE: MAE's evaluation transform (resize the short side, center crop, normalise).

Two backends, as in transformers 5.x: `MixedAEImageProcessor` (torchvision, batched, GPU-capable) and
`MixedAEImageProcessorPil` (Pillow + NumPy only). Without torchvision, `AutoImageProcessor` picks the PIL one, and
`MixedAEImageProcessor(...)` warns and returns a `MixedAEImageProcessorPil`, as transformers does for its own
`<Model>ImageProcessor` names.

PIL images become RGB through `rgb_conversion.to_rgb`, the conversion of the training data pipeline, so a 16-bit,
float, palette, CMYK or EXIF-rotated image gives the model the pixels it was trained on. Inputs that are not images
(empty, wrong channel count, values out of range) raise a `ValueError` naming the image.
Training augmentation (random resized crop + flip) lives in `transformers_mixedae.data`; mixing happens in the
model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers.image_processing_backends import PilBackend, TorchvisionBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    ChannelDimension,
    PILImageResampling,
    get_image_size,
    infer_channel_dimension_format,
    make_flat_list_of_images,
)
from transformers.processing_utils import ImagesKwargs
from transformers.utils import is_torchvision_available, logging

from .rgb_conversion import apply_exif_orientation, to_rgb

logger = logging.get_logger(__name__)

SEGMENTATION_IGNORE_INDEX = 255  # label-map pixels that count neither in the loss nor in the metrics

_IMAGE_TYPES = "a PIL image, a NumPy array or a torch tensor of shape (H, W, C) or (C, H, W) with C in (1, 3, 4)"


def _describe(image: Any) -> str:
    if isinstance(image, Image.Image):
        return f"a PIL image of mode {image.mode} and size {image.size[0]}x{image.size[1]}"
    if isinstance(image, (np.ndarray, torch.Tensor)):
        return f"an array of shape {tuple(image.shape)} and dtype {image.dtype}"
    return f"an object of type {type(image).__name__}"


def _check_image(index: int, image: Any, do_rescale: bool) -> None:
    """Raise a `ValueError` naming image `index` when it holds no pixels or values that are not pixel values.

    transformers would fail later with a `ZeroDivisionError` on an empty image, or silently read a float image in
    the wrong range (a [0, 1] image given with `do_rescale=True` becomes almost black).
    """
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise ValueError(f"image {index} is {_describe(image)}: an image needs at least one pixel.")
        return
    if not isinstance(image, (np.ndarray, torch.Tensor)):
        raise TypeError(f"image {index} is {_describe(image)}; expected {_IMAGE_TYPES}.")
    shape = tuple(image.shape)
    if len(shape) != 3 or not ({shape[0], shape[-1]} & {1, 3, 4}):
        raise ValueError(
            f"image {index} is {_describe(image)}; expected {_IMAGE_TYPES} (a 2-D grayscale array needs a "
            "channel axis: array[..., None])."
        )
    if 0 in shape:
        raise ValueError(f"image {index} is {_describe(image)}: an image needs at least one pixel.")
    if isinstance(image, np.ndarray):
        kind, values = image.dtype.kind, image
    else:
        kind = "b" if image.dtype == torch.bool else "c" if image.is_complex() else "f" if image.is_floating_point() else "i"
        # torch has no min/max for its wider unsigned types.
        values = image.detach().to(torch.int64) if kind == "i" and image.dtype != torch.uint8 else image.detach()
    if kind not in "uif":
        raise ValueError(
            f"image {index} is {_describe(image)}; give uint8 values in [0, 255] (for a mask: mask.astype(np.uint8) "
            "* 255)."
        )
    low, high = values.min().item(), values.max().item()
    if kind == "f":
        if not (np.isfinite(low) and np.isfinite(high)):
            raise ValueError(f"image {index} is {_describe(image)} with NaN or infinite values.")
        expected_high = 255.0 if do_rescale else 1.0
        if low < 0.0 or high > expected_high:
            raise ValueError(
                f"image {index} is {_describe(image)} with values in [{low}, {high}], outside [0, {expected_high:g}] "
                f"expected with do_rescale={do_rescale}: give unnormalised pixels (uint8, or floats in [0, 1] with "
                "do_rescale=False)."
            )
        if do_rescale and 4 in (shape[0], shape[-1]) and 3 not in (shape[0], shape[-1]):
            raise ValueError(
                f"image {index} is {_describe(image)}: transformers composites the alpha channel of float images in "
                "[0, 1] only; pass do_rescale=False with values in [0, 1], or uint8 pixels."
            )
        if do_rescale and 0.0 < high <= 1.0:
            raise ValueError(
                f"image {index} is {_describe(image)} with values in [{low}, {high}], which looks already rescaled to "
                "[0, 1], but do_rescale=True divides by 255: pass do_rescale=False for [0, 1] floats, or uint8 pixels."
            )
    elif low < 0 or high > 255:
        raise ValueError(
            f"image {index} is {_describe(image)} with values in [{low}, {high}], outside the 8-bit range [0, 255]: "
            "convert it to 8-bit first (16-bit images: open them with PIL and pass the PIL image, which is scaled "
            "by 255 / 65535)."
        )


class MixedAEImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    do_reduce_labels (`bool`, *optional*, defaults to `self.do_reduce_labels`):
        ADE20K's convention for `segmentation_maps`: class 0 ("other") becomes 255 (ignored) and every other class
        id shifts down by one.
    """

    do_reduce_labels: bool


def _label_map_pixels(index: int, label_map: Any, do_reduce_labels: bool) -> np.ndarray:
    """Segmentation map `index` (PIL image of mode L / P, or integer array `(H, W)`) as an `(H, W, 3)` uint8 image
    that the image pipeline can resize and crop: its class ids, reduced with `do_reduce_labels`, in channel 0, and 1
    in the others, which marks the pixels a crop larger than the image pads with 0 (see `_labels_from_pixels`)."""
    if isinstance(label_map, Image.Image):
        label_map = apply_exif_orientation(label_map)  # as images are turned (`to_rgb`)
    labels = np.array(label_map.detach().cpu() if torch.is_tensor(label_map) else label_map)
    if labels.ndim != 2 or labels.dtype.kind not in "iu":
        raise ValueError(
            f"segmentation map {index} is {_describe(label_map)}; expected class ids: a PIL image of mode L or P, or "
            "an integer array of shape (height, width)."
        )
    labels = labels.astype(np.int64)
    if do_reduce_labels:
        reduced = labels - 1
        reduced[(labels == 0) | (labels == SEGMENTATION_IGNORE_INDEX)] = SEGMENTATION_IGNORE_INDEX
        labels = reduced
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(
            f"segmentation map {index} holds class ids in [{labels.min()}, {labels.max()}]; the processor takes ids "
            f"0..255 ({SEGMENTATION_IGNORE_INDEX} = ignored)."
        )
    pixels = np.ones((*labels.shape, 3), dtype=np.uint8)
    pixels[..., 0] = labels
    return pixels


def _labels_from_pixels(pixels: Any) -> np.ndarray:
    """The `(H, W)` int64 class ids of a processed `_label_map_pixels` image `(3, H, W)`: padding (where the marker
    channel is 0) becomes 255, ignored, rather than class 0."""
    pixels = np.asarray(pixels.cpu() if torch.is_tensor(pixels) else pixels)
    labels = pixels[0].astype(np.int64)
    labels[pixels[1] == 0] = SEGMENTATION_IGNORE_INDEX
    return labels


def _height_width(image: Any) -> tuple[int, int]:
    """An input image's (height, width) as the processor reads it (PIL images turned by their EXIF orientation)."""
    if isinstance(image, Image.Image):
        width, height = apply_exif_orientation(image).size
        return height, width
    array = image.detach().cpu().numpy() if torch.is_tensor(image) else np.asarray(image)
    return tuple(get_image_size(array, channel_dim=infer_channel_dimension_format(array)))


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
    # Semantic segmentation (a UperNet on our backbone): ADE20K's convention, label 0 ("other") ignored and the
    # rest shifted down, as the training data was read (`reduce_labels`).
    do_reduce_labels = False
    model_input_names = ["pixel_values"]
    valid_kwargs = MixedAEImageProcessorKwargs

    @classmethod
    def from_model_config(cls, config: Any, **kwargs: Any):
        """The evaluation processor of a model built from `config`: a centre crop of the model's image size from the
        short side at MAE's 224/256 ratio, so the processor saved with a model always fits it. `kwargs` override.

        A model of other than 3 channels gets images as they come (no RGB conversion) and, per channel, the average
        of ImageNet's channel statistics (grey-level images: about 0.449 / 0.226); set `image_mean` / `image_std` for
        other data."""
        settings = evaluation_sizes(config.image_size)
        num_channels = getattr(config, "num_channels", 3)
        if num_channels != 3:
            settings.update(
                do_convert_rgb=False,
                image_mean=[sum(IMAGENET_DEFAULT_MEAN) / 3] * num_channels,
                image_std=[sum(IMAGENET_DEFAULT_STD) / 3] * num_channels,
            )
        return cls(**{**settings, **kwargs})

    def reduce_label(self, label_map: Any) -> np.ndarray:
        """A label map as the model was trained on it: with `do_reduce_labels`, 0 becomes 255 (ignored) and every
        other class id shifts down by one (255 stays 255); unchanged otherwise. Returns an int64 array."""
        return _label_map_pixels(0, label_map, self.do_reduce_labels)[..., 0].astype(np.int64)

    def preprocess(self, images: Any, segmentation_maps: Any = None, **kwargs: Any) -> BatchFeature:
        """`pixel_values` of `images`; with `segmentation_maps` (one class-id map per image, at the image's size: a PIL
        image of mode L or P, or an integer array `(H, W)`; or an `(N, H, W)` array for N images), also `labels`,
        int64 `(H, W)` per image: reduced with `do_reduce_labels`, then resized (nearest) and cropped exactly as the
        images are; where a crop is larger than the image, the padding is labelled 255 (ignored)."""
        return super().preprocess(images, segmentation_maps, **kwargs)

    def _preprocess_image_like_inputs(
        self, images: Any, segmentation_maps: Any = None, *args: Any, do_reduce_labels: bool = False,
        return_tensors: Any = None, **kwargs: Any,
    ) -> BatchFeature:
        batch = super()._preprocess_image_like_inputs(images, *args, return_tensors=return_tensors, **kwargs)
        if segmentation_maps is None:
            return batch
        maps = segmentation_maps if isinstance(segmentation_maps, (list, tuple)) else [segmentation_maps]
        if len(maps) == 1 and getattr(maps[0], "ndim", None) == 3 and len(maps[0]) == len(batch["pixel_values"]):
            maps = list(maps[0])  # a batch `(N, H, W)`, one map per image
        if len(maps) != len(batch["pixel_values"]):
            raise ValueError(f"got {len(maps)} segmentation maps for {len(batch['pixel_values'])} images; pass one "
                             "map per image")
        # The images' own resize and crop, on the ids held as pixels: nearest, nothing rescaled or normalised.
        map_settings = {**kwargs, "do_rescale": False, "do_normalize": False, "do_convert_rgb": False,
                        "resample": PILImageResampling.NEAREST, "input_data_format": ChannelDimension.LAST}
        if "return_bool_masked_pos" in map_settings:
            map_settings["return_bool_masked_pos"] = False
        pixels = [_label_map_pixels(index, label_map, do_reduce_labels) for index, label_map in enumerate(maps)]
        listed = images if isinstance(images, (list, tuple)) else [images]
        if not any(isinstance(image, str) for image in listed):  # an (N, H, W, C) array is N images
            listed = make_flat_list_of_images(images)
        for index, (image, label_pixels) in enumerate(zip(listed, pixels)):
            image_size = None if isinstance(image, str) else _height_width(image)
            if image_size is not None and image_size != label_pixels.shape[:2]:
                raise ValueError(f"segmentation map {index} is {label_pixels.shape[0]}x{label_pixels.shape[1]} "
                                 f"(height x width) but its image is {image_size[0]}x{image_size[1]}; "
                                 "pass each image's own map, at the image's size")
        resized = super()._preprocess_image_like_inputs(pixels, *args, return_tensors=None, **map_settings)
        labels = [_labels_from_pixels(item) for item in resized["pixel_values"]]
        return BatchFeature(data={**batch, "labels": labels}, tensor_type=return_tensors)

    def post_process_semantic_segmentation(
        self, outputs: Any, target_sizes: Sequence[Sequence[int]] | torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Class-id maps `(height, width)` from a semantic-segmentation model's `outputs.logits` `(B, C, h, w)`:
        the logits are resized (bilinear) to each of `target_sizes` (the images' `(height, width)`) before the
        argmax, so the map has the original image's size; without `target_sizes`, at the logits' size."""
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        if target_sizes is None:
            return list(logits.argmax(dim=1))
        if len(target_sizes) != len(logits):
            raise ValueError(
                f"got {len(target_sizes)} target sizes for {len(logits)} images; pass one (height, width) per image"
            )
        maps = []
        for image_logits, size in zip(logits, target_sizes):
            size = tuple(int(side) for side in size)
            resized = torch.nn.functional.interpolate(
                image_logits[None].float(), size=size, mode="bilinear", align_corners=False
            )
            maps.append(resized[0].argmax(dim=0))
        return maps

    def _prepare_images_structure(self, images: Any, expected_ndims: int = 3) -> list:
        try:
            return super()._prepare_images_structure(images, expected_ndims=expected_ndims)
        except (TypeError, ValueError) as error:
            # transformers says "Could not make a flat list of images from <the whole array printed>".
            if isinstance(images, (list, tuple)):
                for index, image in enumerate(images):
                    if not isinstance(image, str):
                        _check_image(index, image, do_rescale=False)
            elif not isinstance(images, str):
                _check_image(0, images, do_rescale=False)
            raise ValueError(f"cannot read the images: {error}; expected {_IMAGE_TYPES}, or a list of them.") from error

    def _prepare_image_like_inputs(
        self, images: Any, *args: Any, expected_ndims: int = 3, **kwargs: Any
    ) -> list[np.ndarray | torch.Tensor]:
        # The images are numbered here, so that an error names the one at fault.
        images = self._prepare_images_structure(images, expected_ndims=expected_ndims)
        return [self._process_numbered_image(index, image, *args, **kwargs) for index, image in enumerate(images)]

    def _process_numbered_image(
        self,
        index: int,
        image: Any,
        *args: Any,
        do_convert_rgb: bool | None = None,
        input_data_format: str | ChannelDimension | None = None,
        **kwargs: Any,
    ) -> np.ndarray | torch.Tensor:
        _check_image(index, image, do_rescale=bool(kwargs.get("do_rescale")))
        if do_convert_rgb and isinstance(image, Image.Image):
            # The data pipeline's conversion, not transformers' (which clips 16-bit and float images to 255 and
            # ignores EXIF orientation); handed over as an (H, W, 3) array so transformers does not convert again.
            image = np.array(to_rgb(image))
            input_data_format = ChannelDimension.LAST
        return self.process_image(
            image, *args, do_convert_rgb=do_convert_rgb, input_data_format=input_data_format, **kwargs
        )


class _FallsBackToPil:
    """The torchvision class of a pair: without torchvision, constructing it gives the PIL class with a warning.

    transformers 5.x does the same for its own `<Model>ImageProcessor` names, which were the PIL processors before
    the backend split; without it `MixedAEImageProcessor()(image)` fails deep in transformers on the missing
    torchvision functions. `from_pretrained` / `from_dict` construct through `cls(...)`, so they fall back too.
    """

    _pil_class: type | None = None

    def __new__(cls, *args: Any, **kwargs: Any):
        if cls._pil_class is not None and "_pil_class" in cls.__dict__ and not is_torchvision_available():
            logger.warning_once(
                f"`{cls.__name__}` requires torchvision (not installed); falling back to `{cls._pil_class.__name__}`. "
                f"Install torchvision to use the default backend, or use `{cls._pil_class.__name__}` directly to "
                "silence this warning."
            )
            return cls._pil_class(*args, **kwargs)
        return super().__new__(cls)


class MixedAEImageProcessor(_FallsBackToPil, _MixedAEImageProcessorDefaults, TorchvisionBackend):
    """MixedAE evaluation transform on the torchvision backend."""


class MixedAEImageProcessorPil(_MixedAEImageProcessorDefaults, PilBackend):
    """MixedAE evaluation transform on the PIL backend (no torchvision needed)."""


MixedAEImageProcessor._pil_class = MixedAEImageProcessorPil


def evaluation_sizes(image_size: int | Sequence[int], crop_fraction: float = 224 / 256) -> dict:
    """Processor keyword arguments for a model trained at `image_size` (an int, or `(height, width)`): a resize to
    `image_size / crop_fraction`, then a centre crop of `image_size` (MAE's 224/256 ratio by default). Square sizes
    resize the short side, keeping the aspect ratio (MAE's transform); non-square ones resize to that rectangle, so
    the crop never reaches past the image (which would pad it)."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if height == width:
        size = {"shortest_edge": round(height / crop_fraction)}
    else:
        size = {"height": round(height / crop_fraction), "width": round(width / crop_fraction)}
    return {"size": size, "crop_size": {"height": height, "width": width}}


__all__ = ["MixedAEImageProcessor", "MixedAEImageProcessorPil", "evaluation_sizes"]
