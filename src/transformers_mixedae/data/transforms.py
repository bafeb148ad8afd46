# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Pre-training and evaluation augmentation in PIL + torch (torchvision optional, never required).

The fast path: decode (`images.decode_rgb`) -> uint8 tensor of the crop box only (a
view of a decoded array, or a copy of the box out of a PIL image) -> one `F.interpolate(..., antialias=True)`
on uint8 -> flip -> normalise (here, or per batch on the device with `BatchNormalizer`). The random crop follows the logic of
torchvision's `RandomResizedCrop.get_params`: up to 10 draws of an area fraction in `scale` and a
log-uniform aspect ratio in `ratio`, else a central crop with the aspect ratio clamped into `ratio`.

Presets:
* `mixedae_pretraining_transform`: MAE/MixedAE recipe, RandomResizedCrop scale (0.2, 1) bicubic + flip.
* `cae_pretraining_transform`: CAE/BEiT recipe, scale (0.08, 1) bicubic + flip, plus the tokenizer view
  (`tokenizer_pixel_values`, 112 px Lanczos, values in [0, 1], DALL-E `map_pixels` NOT applied) cut from the
  same crop box with the same flip, and an optional per-sample mask (`bool_masked_pos`) from a callable.
* `EvaluationTransform`: resize the short side to `image_size / crop_fraction`, centre crop, normalise.

Every transform takes an RGB image, as a PIL image (`images.load_rgb_image`) or as its `(H, W, 3)` uint8
array (`images.decode_rgb`'s fast JPEG path; the same pixels give the same output), and an optional
`torch.Generator`; without a generator the global torch RNG is used, which DataLoader workers seed from the
main process.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .rand_augment import RandAugment, auto_augment_off, color_jitter, fill_color

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
MAE_CROP_SCALE = (0.2, 1.0)
CAE_CROP_SCALE = (0.08, 1.0)
DEFAULT_CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
CAE_TOKENIZER_IMAGE_SIZE = 112
# torchvision's RandomResizedCrop tries this many random boxes before falling back to a central crop.
RANDOM_CROP_ATTEMPTS = 10

Interpolation = Literal["bilinear", "bicubic"]
ResizeBackend = Literal["torch", "torchvision"]
PIL_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class CropBox:
    """A crop in source-image pixels."""

    top: int
    left: int
    height: int
    width: int

    def as_pil_box(self) -> tuple[int, int, int, int]:
        return (self.left, self.top, self.left + self.width, self.top + self.height)


def _as_size(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    height, width = size
    return (int(height), int(width))


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return float(torch.empty(1).uniform_(low, high, generator=generator).item())


def _randint_inclusive(low: int, high: int, generator: torch.Generator | None) -> int:
    return int(torch.randint(low, high + 1, (1,), generator=generator).item())


def sample_random_resized_crop(
    height: int,
    width: int,
    scale: tuple[float, float] = CAE_CROP_SCALE,
    ratio: tuple[float, float] = DEFAULT_CROP_RATIO,
    generator: torch.Generator | None = None,
) -> CropBox:
    """Draw a RandomResizedCrop box for a `height` x `width` image (torchvision's `get_params` logic)."""
    if not (0.0 < scale[0] <= scale[1] <= 1.0):
        raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
    if not (0.0 < ratio[0] <= ratio[1]):
        raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}")
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(RANDOM_CROP_ATTEMPTS):
        target_area = area * _uniform(scale[0], scale[1], generator)
        aspect_ratio = math.exp(_uniform(log_ratio[0], log_ratio[1], generator))
        crop_width = round(math.sqrt(target_area * aspect_ratio))
        crop_height = round(math.sqrt(target_area / aspect_ratio))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top = _randint_inclusive(0, height - crop_height, generator)
            left = _randint_inclusive(0, width - crop_width, generator)
            return CropBox(top, left, crop_height, crop_width)
    # Fallback (small or very elongated images): the largest central box whose aspect ratio is within `ratio`.
    input_ratio = width / height
    if input_ratio < ratio[0]:
        crop_width, crop_height = width, round(width / ratio[0])
    elif input_ratio > ratio[1]:
        crop_width, crop_height = round(height * ratio[1]), height
    else:
        crop_width, crop_height = width, height
    crop_width = min(max(crop_width, 1), width)
    crop_height = min(max(crop_height, 1), height)
    return CropBox((height - crop_height) // 2, (width - crop_width) // 2, crop_height, crop_width)


def center_crop_box(height: int, width: int, output_size: tuple[int, int], crop_fraction: float) -> CropBox:
    """Source box of "resize short side to min(output_size) / crop_fraction, then centre crop output_size"."""
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    resized_short_side = min(output_size) / crop_fraction
    source_pixels_per_output_pixel = min(height, width) / resized_short_side
    crop_height = min(max(round(output_size[0] * source_pixels_per_output_pixel), 1), height)
    crop_width = min(max(round(output_size[1] * source_pixels_per_output_pixel), 1), width)
    return CropBox(round((height - crop_height) / 2), round((width - crop_width) / 2), crop_height, crop_width)


def pil_to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """`(3, H, W)` uint8 view of an RGB PIL image (channels-last in memory, which the uint8 resize prefers)."""
    if image.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {image.mode}; convert it with images.to_rgb first")
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)


RGBImage = Image.Image | np.ndarray


def _rgb_array(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"expected an RGB image as a (height, width, 3) uint8 array, got {image.dtype} {tuple(image.shape)}; "
            "pass a PIL image or convert the array"
        )
    return image


def image_height_width(image: RGBImage) -> tuple[int, int]:
    """`(height, width)` of an RGB PIL image or `(H, W, 3)` uint8 array."""
    if isinstance(image, np.ndarray):
        return _rgb_array(image).shape[:2]
    return image.height, image.width


def crop_to_uint8_tensor(image: RGBImage, box: CropBox) -> torch.Tensor:
    """`(3, box.height, box.width)` uint8 tensor of the pixels inside `box` of an RGB image.

    From a PIL image only the box is copied out: a RandomResizedCrop box covers 60% of the image on average,
    and the copy out of PIL is a sizeable share of the per-image cost. From an array it is a view, no copy.
    """
    if isinstance(image, np.ndarray):
        rows = slice(box.top, box.top + box.height)
        columns = slice(box.left, box.left + box.width)
        crop = _rgb_array(image)[rows, columns]
        if not crop.flags.writeable:  # e.g. np.asarray(pil_image); torch warns on read-only memory
            crop = crop.copy()
        return torch.from_numpy(crop).permute(2, 0, 1)
    return pil_to_uint8_tensor(image.crop(box.as_pil_box()))


def _torchvision_resized_crop() -> tuple[Callable[..., torch.Tensor], Any]:
    try:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2.functional import resized_crop
    except Exception as error:  # ImportError, or a torchvision built for another torch (operator errors)
        raise ImportError(
            "resize_backend='torchvision' needs an importable torchvision matching your torch build; "
            "the default resize_backend='torch' needs none"
        ) from error
    return resized_crop, InterpolationMode


def resized_crop(
    image: torch.Tensor,
    box: CropBox,
    size: tuple[int, int],
    interpolation: Interpolation = "bicubic",
    resize_backend: ResizeBackend = "torch",
) -> torch.Tensor:
    """Cut `box` out of a `(3, H, W)` uint8 tensor and resize it (antialiased) to `size`; stays uint8."""
    if interpolation not in ("bilinear", "bicubic"):
        raise ValueError(f"interpolation must be 'bilinear' or 'bicubic', got {interpolation!r}")
    if resize_backend == "torchvision":
        resized_crop_fn, modes = _torchvision_resized_crop()
        mode = modes.BICUBIC if interpolation == "bicubic" else modes.BILINEAR
        return resized_crop_fn(image, box.top, box.left, box.height, box.width, list(size), mode, antialias=True)
    if resize_backend != "torch":
        raise ValueError(f"resize_backend must be 'torch' or 'torchvision', got {resize_backend!r}")
    crop = image[:, box.top : box.top + box.height, box.left : box.left + box.width].unsqueeze(0)
    if crop.shape[-2:] == size:
        return crop[0]
    # uint8 input -> uint8 output with saturation: bicubic overshoot cannot wrap around.
    return F.interpolate(crop, size=size, mode=interpolation, align_corners=False, antialias=True)[0]


def resize_uint8(
    pixels: torch.Tensor,
    size: tuple[int, int],
    interpolation: Interpolation = "bicubic",
    resize_backend: ResizeBackend = "torch",
) -> torch.Tensor:
    """Resize a whole `(3, H, W)` uint8 tensor (antialiased) to `size`; stays uint8."""
    whole = CropBox(0, 0, pixels.shape[1], pixels.shape[2])
    return resized_crop(pixels, whole, size, interpolation, resize_backend)


def normalize_pixels(
    pixels: torch.Tensor,
    mean: Sequence[float] | torch.Tensor = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] | torch.Tensor = IMAGENET_DEFAULT_STD,
) -> torch.Tensor:
    """uint8 (0..255) or float (0..1) pixels `(..., 3, H, W)` -> float32 `(x - mean) / std`.

    The transforms call it per image with `normalize=True`; the training loops call it per batch on the device
    through `BatchNormalizer`, with the same result bit for bit.
    """
    # One fresh float tensor, then in-place steps: the same arithmetic as `(x / 255 - mean) / std`, bit for bit,
    # with one allocation instead of four (this runs once per image or batch).
    values = pixels.to(torch.float32, copy=True)
    if pixels.dtype == torch.uint8:
        # A tensor divisor, not a Python number: CUDA turns division by a host scalar into multiplication by its
        # reciprocal, which can differ in the last bit; true division gives the same bits on every device.
        values.div_(torch.full((), 255.0, dtype=torch.float32, device=pixels.device))
    mean_tensor = torch.as_tensor(mean, dtype=torch.float32, device=pixels.device).view(-1, 1, 1)
    std_tensor = torch.as_tensor(std, dtype=torch.float32, device=pixels.device).view(-1, 1, 1)
    return values.sub_(mean_tensor).div_(std_tensor)


class BatchNormalizer:
    """`normalize_pixels` for uint8 batches on `device`, with mean and std kept there.

    The training loops take uint8 images from the data workers (`normalize=False`: a quarter of the float32
    bytes to pass between processes, pin and copy to the accelerator) and normalise them here, after the copy.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device | str):
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(-1, 1, 1)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.dtype != torch.uint8:
            raise ValueError(
                f"expected uint8 pixels from a transform built with normalize=False, got {pixels.dtype}; "
                "normalising them again would be wrong"
            )
        return normalize_pixels(pixels, self.mean, self.std)


class PretrainingTransform:
    """RandomResizedCrop + horizontal flip (+ normalise), optionally with a tokenizer view and a mask.

    Returns a dict: `pixel_values` `(3, H, W)` (float32 normalised, or uint8 with `normalize=False`);
    with `tokenizer_image_size`: `tokenizer_pixel_values` `(3, t, t)` float32 in [0, 1], the same crop box
    and flip resized with `tokenizer_interpolation` (PIL, so Lanczos is available); with `mask_generator`:
    `bool_masked_pos`, the generator's output (called once per sample with no arguments) as a bool tensor.
    """

    def __init__(
        self,
        image_size: int | Sequence[int] = 224,
        scale: tuple[float, float] = MAE_CROP_SCALE,
        ratio: tuple[float, float] = DEFAULT_CROP_RATIO,
        interpolation: Interpolation = "bicubic",
        horizontal_flip_probability: float = 0.5,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        normalize: bool = True,
        tokenizer_image_size: int | None = None,
        tokenizer_interpolation: str = "lanczos",
        mask_generator: Callable[[], Any] | None = None,
        resize_backend: ResizeBackend = "torch",
    ):
        self.image_size = _as_size(image_size)
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.interpolation = interpolation
        self.horizontal_flip_probability = horizontal_flip_probability
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.normalize = normalize
        self.tokenizer_image_size = tokenizer_image_size
        if tokenizer_interpolation not in PIL_RESAMPLING:
            raise ValueError(f"tokenizer_interpolation must be one of {sorted(PIL_RESAMPLING)}")
        self.tokenizer_interpolation = tokenizer_interpolation
        self.mask_generator = mask_generator
        self.resize_backend = resize_backend
        if resize_backend == "torchvision":
            _torchvision_resized_crop()  # fail at construction, not in a DataLoader worker

    # DecodedImageStream may hand this transform `images.decode_rgb`'s arrays instead of PIL images.
    accepts_rgb_arrays = True

    def __call__(self, image: RGBImage, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        box = sample_random_resized_crop(*image_height_width(image), self.scale, self.ratio, generator)
        flip = _uniform(0.0, 1.0, generator) < self.horizontal_flip_probability
        view = resize_uint8(crop_to_uint8_tensor(image, box), self.image_size, self.interpolation, self.resize_backend)
        if flip:
            view = view.flip(-1)
        output = {"pixel_values": normalize_pixels(view, self.mean, self.std) if self.normalize else view.contiguous()}
        if self.tokenizer_image_size is not None:
            size = self.tokenizer_image_size
            source = Image.fromarray(image) if isinstance(image, np.ndarray) else image  # Lanczos needs PIL
            small = source.resize((size, size), PIL_RESAMPLING[self.tokenizer_interpolation], box=box.as_pil_box())
            tokenizer_view = pil_to_uint8_tensor(small).float().div_(255.0)
            output["tokenizer_pixel_values"] = tokenizer_view.flip(-1) if flip else tokenizer_view.contiguous()
        if self.mask_generator is not None:
            output["bool_masked_pos"] = torch.as_tensor(np.asarray(self.mask_generator())).bool()
        return output

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(image_size={self.image_size}, scale={self.scale}, ratio={self.ratio}, "
            f"interpolation={self.interpolation!r}, flip_p={self.horizontal_flip_probability}, "
            f"normalize={self.normalize}, tokenizer_image_size={self.tokenizer_image_size}, "
            f"mask_generator={self.mask_generator!r})"
        )


class ClassificationTrainTransform:
    """The fine-tuning train transform (timm's `create_transform(is_training=True)` as MAE / CAE use it):
    RandomResizedCrop + flip (`PretrainingTransform`), then RandAugment (`auto_augment`, e.g.
    "rand-m9-mstd0.5-inc1") or, only when that is off, colour jitter of strength `color_jitter`, on the uint8 crop
    (through PIL, as timm); normalised here or, with `normalize=False`, per batch on the device. Random erasing,
    Mixup and CutMix act on the batch (`batch_augmentation`). Without `auto_augment` and `color_jitter` the output
    and the random draws are those of `PretrainingTransform`.
    """

    accepts_rgb_arrays = True

    def __init__(
        self,
        image_size: int | Sequence[int] = 224,
        scale: tuple[float, float] = CAE_CROP_SCALE,
        interpolation: Interpolation = "bicubic",
        auto_augment: str | None = None,
        color_jitter: float | None = None,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        normalize: bool = True,
    ):
        self.crop = PretrainingTransform(image_size, scale=scale, interpolation=interpolation, mean=mean, std=std,
                                         normalize=False)
        self.mean, self.std, self.normalize = tuple(mean), tuple(std), normalize
        self.rand_augment = None
        if not auto_augment_off(auto_augment):
            self.rand_augment = RandAugment.from_string(auto_augment, fill=fill_color(mean), resample=interpolation)
        # timm turns colour jitter off while an auto-augmentation is on.
        self.color_jitter = color_jitter if self.rand_augment is None and color_jitter else None

    def __call__(self, image: RGBImage, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        pixels = self.crop(image, generator)["pixel_values"]
        if self.rand_augment is not None or self.color_jitter is not None:
            picture = Image.fromarray(pixels.permute(1, 2, 0).numpy())
            if self.rand_augment is not None:
                picture = self.rand_augment(picture, generator)
            else:
                picture = color_jitter(picture, self.color_jitter, generator)
            pixels = pil_to_uint8_tensor(picture).contiguous()
        return {"pixel_values": normalize_pixels(pixels, self.mean, self.std) if self.normalize else pixels}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.crop!r}, rand_augment={self.rand_augment!r}, "
                f"color_jitter={self.color_jitter}, normalize={self.normalize})")


class EvaluationTransform:
    """Resize the short side to `min(image_size) / crop_fraction`, centre crop `image_size`, normalise.

    Computed as one resize of the matching source box, so 1-pixel-thin images never blow up in memory.
    """

    def __init__(
        self,
        image_size: int | Sequence[int] = 224,
        crop_fraction: float = 0.875,
        interpolation: Interpolation = "bicubic",
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        normalize: bool = True,
        resize_backend: ResizeBackend = "torch",
    ):
        self.image_size = _as_size(image_size)
        self.crop_fraction = crop_fraction
        self.interpolation = interpolation
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.normalize = normalize
        self.resize_backend = resize_backend
        if resize_backend == "torchvision":
            _torchvision_resized_crop()

    accepts_rgb_arrays = True

    def __call__(self, image: RGBImage, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        box = center_crop_box(*image_height_width(image), self.image_size, self.crop_fraction)
        view = resize_uint8(crop_to_uint8_tensor(image, box), self.image_size, self.interpolation, self.resize_backend)
        return {"pixel_values": normalize_pixels(view, self.mean, self.std) if self.normalize else view.contiguous()}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(image_size={self.image_size}, crop_fraction={self.crop_fraction}, "
            f"interpolation={self.interpolation!r}, normalize={self.normalize})"
        )


def mixedae_pretraining_transform(image_size: int | Sequence[int] = 224, **overrides: Any) -> PretrainingTransform:
    """MixedAE / MAE: RandomResizedCrop scale (0.2, 1), bicubic, horizontal flip, ImageNet normalisation."""
    return PretrainingTransform(image_size=image_size, **{"scale": MAE_CROP_SCALE, **overrides})


def cae_pretraining_transform(
    image_size: int | Sequence[int] = 224,
    tokenizer_image_size: int = CAE_TOKENIZER_IMAGE_SIZE,
    mask_generator: Callable[[], Any] | None = None,
    **overrides: Any,
) -> PretrainingTransform:
    """CAE: RandomResizedCrop scale (0.08, 1), bicubic, flip, + the 112-px Lanczos tokenizer view and mask hook.

    Pass `mask_generator` (e.g. CAE's block-wise mask generator from `transformers_mixedae.models.masking`) to get
    `bool_masked_pos` per sample.
    """
    settings = {"scale": CAE_CROP_SCALE, "tokenizer_interpolation": "lanczos", **overrides}
    return PretrainingTransform(
        image_size=image_size, tokenizer_image_size=tokenizer_image_size, mask_generator=mask_generator, **settings
    )


def pretraining_transform_for_model_type(
    model_type: str, image_size: int | Sequence[int] = 224, **overrides: Any
) -> PretrainingTransform:
    """The preset for a `model_type` ("mixedae", "vit_mae" -> MAE recipe; "cae" -> CAE recipe)."""
    if model_type in ("mixedae", "vit_mae", "mae"):
        return mixedae_pretraining_transform(image_size, **overrides)
    if model_type == "cae":
        return cae_pretraining_transform(image_size, **overrides)
    raise ValueError(f"no pre-training augmentation preset for model_type={model_type!r} (use 'mixedae' or 'cae')")
