# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Image processors for CAE: the official evaluation transform, optionally with a block-wise patch mask.

Resize the short side to 256 (bicubic), center crop 224, rescale, ImageNet mean/std (official fine-tuning
evaluation). `return_bool_masked_pos=True` adds `bool_masked_pos` `(batch, num_patches)`, one fresh mask per image
from the BEiT/CAE block-wise generator (or uniform random masking), for `CAEForPreTraining`.

Two backends, as in transformers 5.x: `CAEImageProcessor` (torchvision) and `CAEImageProcessorPil` (Pillow + NumPy
only); without torchvision, `CAEImageProcessor(...)` warns and returns a `CAEImageProcessorPil`. Pre-training augmentation (one random resized crop box for the 224 px view and the 112 px tokenizer view)
belongs to the data pipeline; `tokenizer_dalle.dalle_tokenizer_view` makes the tokenizer view.
"""

from typing import Any

from transformers.image_processing_backends import PilBackend, TorchvisionBackend
from transformers.image_processing_utils import BatchFeature

from .image_processing_mixedae import MixedAEImageProcessorKwargs, _FallsBackToPil, _MixedAEImageProcessorDefaults
from .masking import mask_generator_from_settings, stack_masks


class CAEImageProcessorKwargs(MixedAEImageProcessorKwargs, total=False):
    r"""
    return_bool_masked_pos (`bool`, *optional*, defaults to `False`):
        Add `bool_masked_pos` (True = masked), one mask per image, for the patch grid of the processed images.
    patch_size (`int`, *optional*, defaults to 16):
        Patch size of the model, which sets the mask grid (processed height and width divided by it).
    mask_type (`str`, *optional*, defaults to `"block"`):
        `"block"` (BEiT/CAE block-wise) or `"random"`.
    num_masking_patches (`int`, *optional*, defaults to 98):
        Exact number of masked patches per image.
    mask_min_num_patches, mask_max_num_patches, mask_min_aspect, mask_max_aspect:
        Block masking: block area range (16 to `num_masking_patches`) and aspect-ratio range (0.3 to 1/0.3).
    mask_seed (`int`, *optional*):
        Seed of the processor's mask generator (created on first use; later calls continue its sequence).
    """

    return_bool_masked_pos: bool
    patch_size: int
    mask_type: str
    num_masking_patches: int
    mask_min_num_patches: int
    mask_max_num_patches: int | None
    mask_min_aspect: float
    mask_max_aspect: float | None
    mask_seed: int | None


MASK_SETTING_NAMES = tuple(name for name in CAEImageProcessorKwargs.__annotations__ if name.startswith("mask_"))


class _CAEImageProcessorMixin(_MixedAEImageProcessorDefaults):
    """Defaults and mask handling shared by both backends."""

    # Same evaluation transform as MixedAE (short side 256 bicubic, center crop 224, ImageNet mean/std), which is the
    # official CAE fine-tuning evaluation; only the mask options are added.
    valid_kwargs = CAEImageProcessorKwargs

    return_bool_masked_pos = False
    patch_size = 16
    mask_type = "block"
    num_masking_patches = 98
    mask_min_num_patches = 16
    mask_max_num_patches = None
    mask_min_aspect = 0.3
    mask_max_aspect = None
    mask_seed = None

    def _mask_generator(self, grid: tuple[int, int], num_masking_patches: int, settings: dict):
        # One generator per setting, kept across calls so a seeded processor yields a reproducible sequence of
        # different masks rather than the same mask every call. Not an attribute: it must stay out of to_dict().
        generators = self.__dict__.setdefault("_CAEImageProcessorMixin__generators", {})
        key = (grid, num_masking_patches, tuple(sorted(settings.items())))
        if key not in generators:
            generators[key] = mask_generator_from_settings(
                settings, grid, num_masking_patches, seed=settings["mask_seed"]
            )
        return generators[key]

    @classmethod
    def from_model_config(cls, config: Any, **kwargs: Any):
        """The evaluation processor of a CAE model built from `config`: its image size (see the MixedAE processor),
        its patch size and its masking settings, so that `return_bool_masked_pos=True` draws the masks the model was
        trained with. `kwargs` override."""
        mask_settings = {name: getattr(config, name) for name in MASK_SETTING_NAMES if name != "mask_seed"}
        settings = {"patch_size": config.patch_size, "num_masking_patches": config.num_masking_patches, **mask_settings}
        return super().from_model_config(config, **{**settings, **kwargs})

    def to_dict(self) -> dict:
        output = super().to_dict()
        output.pop("_CAEImageProcessorMixin__generators", None)
        return output

    def _add_bool_masked_pos(self, batch: BatchFeature, kwargs: dict, return_tensors) -> BatchFeature:
        pixel_values = batch["pixel_values"]
        height, width = pixel_values[0].shape[-2:]
        patch_size = kwargs["patch_size"]
        if height % patch_size or width % patch_size:
            raise ValueError(
                f"processed images are {height}x{width}, not divisible by patch_size={patch_size}: adjust crop_size "
                "or patch_size."
            )
        settings = {name: kwargs[name] for name in MASK_SETTING_NAMES}
        grid = (height // patch_size, width // patch_size)
        generator = self._mask_generator(grid, kwargs["num_masking_patches"], settings)
        masks = stack_masks([generator() for _ in range(len(pixel_values))])
        data = dict(batch)
        data["bool_masked_pos"] = masks if return_tensors == "pt" else masks.numpy()
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _preprocess(self, images, *args, return_tensors=None, **kwargs) -> BatchFeature:
        batch = super()._preprocess(images, *args, return_tensors=return_tensors, **kwargs)
        if kwargs.get("return_bool_masked_pos"):
            batch = self._add_bool_masked_pos(batch, kwargs, return_tensors)
        return batch


class CAEImageProcessor(_FallsBackToPil, _CAEImageProcessorMixin, TorchvisionBackend):
    """CAE evaluation transform (+ optional block mask) on the torchvision backend."""


class CAEImageProcessorPil(_CAEImageProcessorMixin, PilBackend):
    """CAE evaluation transform (+ optional block mask) on the PIL backend (no torchvision needed)."""


CAEImageProcessor._pil_class = CAEImageProcessorPil


__all__ = ["CAEImageProcessor", "CAEImageProcessorPil"]
