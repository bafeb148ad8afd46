# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Turning every PIL mode into 8-bit RGB: the one conversion shared by the data pipeline and the image processors.

Conversion policy (the same for training and evaluation):

* EXIF orientation is applied first, so a photo is seen the way a viewer shows it.
* Transparency (`RGBA`, `LA`, `PA`, premultiplied `RGBa`/`La`, and palette, grey or RGB images with a
  transparent colour key) is composited over a **white** background. Dropping alpha would reveal whatever colour
  the encoder left under fully transparent pixels (often black or noise); white is how the images are shown on a
  page.
* 16-bit and 32-bit integer images (`I;16*`, `I`) are read as unsigned 16-bit intensities (how Pillow hands
  over 16-bit PNG and TIFF data) and scaled by 255 / 65535, clipping values outside [0, 65535].
* Float images (`F`) are taken as intensities in [0, 1] when all finite values lie there; otherwise they are
  rescaled from their own minimum/maximum to [0, 255] (float TIFFs carry arbitrary ranges). NaN becomes 0.
* Everything else (`1`, `L`, `P`, `CMYK`, `YCbCr`, `HSV`, `RGBX`, ...) goes through Pillow's own conversion.
  Adobe CMYK JPEGs are stored inverted; Pillow's JPEG decoder already undoes that.

A flat module depending on Pillow and NumPy only, so that the image processors can use it in a
`trust_remote_code` folder, where only flat copies of the modules they import are available.
"""

from __future__ import annotations

import numpy as np
from PIL import ExifTags, Image, ImageOps

ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
# Modes whose PNGs can name one transparent value (`tRNS`: an index, a grey level or a colour) instead of an alpha band.
COLOUR_KEY_MODES = frozenset({"P", "L", "1", "RGB"})
ORIENTATION_TAG = ExifTags.Base.Orientation
_UINT16_MAX = 65535.0


def apply_exif_orientation(image: Image.Image) -> Image.Image:
    """Rotate/flip the pixels as the EXIF orientation tag says (no-op without the tag)."""
    try:
        orientation = image.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - malformed EXIF must not cost us an otherwise good image
        return image
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(image)
    return image


def _composite_on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _scaled_to_uint8(pixels: np.ndarray, mode: str) -> np.ndarray:
    if mode == "F":
        pixels = np.nan_to_num(pixels.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        low, high = float(pixels.min(initial=0.0)), float(pixels.max(initial=0.0))
        if low < 0.0 or high > 1.0:
            pixels = (pixels - low) / (high - low) if high > low else np.zeros_like(pixels)
        scaled = pixels * 255.0
    else:
        scaled = np.clip(pixels.astype(np.float64), 0.0, _UINT16_MAX) * (255.0 / _UINT16_MAX)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB version of `image` following the module's conversion policy."""
    image = apply_exif_orientation(image)
    mode = image.mode
    if mode in ALPHA_MODES or (mode in COLOUR_KEY_MODES and "transparency" in image.info):
        return _composite_on_white(image)
    if mode == "RGB":
        return image
    if mode in SIXTEEN_BIT_MODES or mode == "F":
        gray = _scaled_to_uint8(np.asarray(image), mode)
        return Image.fromarray(gray).convert("RGB")
    return image.convert("RGB")


__all__ = ["ALPHA_MODES", "ORIENTATION_TAG", "SIXTEEN_BIT_MODES", "apply_exif_orientation", "to_rgb"]
