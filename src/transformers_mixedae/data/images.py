# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Opening dataset images and turning them into 8-bit RGB.

Conversion of every PIL mode to 8-bit RGB (EXIF orientation, transparency over white, 16-bit and float
scaling) is `rgb_conversion.to_rgb`, re-exported here; the image processors use the same function, so training
and inference see the same pixels.

Any failure to open, fully decode or convert an image raises `UndecodableImageError`, which the data
pipeline counts and skips (or re-raises when asked to be strict).

Fast JPEG path (`decode_rgb`): when `simplejpeg` is installed, YCbCr and grayscale JPEGs with no EXIF rotation
are decoded by libjpeg-turbo straight into an `(H, W, 3)` uint8 array, skipping Pillow's Python header parser
and its 4-byte-per-pixel storage. The decoder settings are Pillow's (accurate integer DCT, smooth chroma
upsampling), so the pixels are Pillow's, bit for bit; everything else, and any JPEG the fast decoder
complains about, goes through Pillow as above.
"""

from __future__ import annotations

import hashlib
import io
import os
from typing import Any

import numpy as np
from PIL import Image

try:
    import simplejpeg
except ImportError:  # optional at run time: Pillow then decodes every image
    simplejpeg = None

# Re-exported: the data pipeline's names for the conversion the image processors share.
from ..models.rgb_conversion import (  # noqa: F401
    ALPHA_MODES,
    ORIENTATION_TAG,
    SIXTEEN_BIT_MODES,
    apply_exif_orientation,
    to_rgb,
)

# Colour spaces the fast decoder turns into RGB exactly as Pillow does; CMYK/YCCK (Adobe inversion) stay with Pillow.
FAST_JPEG_COLORSPACES = frozenset({"YCbCr", "Gray"})
JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")
_EXIF_HEADER = b"Exif\x00\x00"


class UndecodableImageError(ValueError):
    """An image that cannot be opened, decoded or converted to RGB; `identifier` names the sample."""

    def __init__(self, identifier: str, reason: str):
        super().__init__(f"cannot decode image {identifier}: {reason}")
        self.identifier = identifier
        self.reason = reason


def image_identifier(value: Any) -> str:
    """A name for a sample's image, for error reports: its path when known, else a hash of its bytes."""
    if isinstance(value, dict):
        if value.get("path"):
            return str(value["path"])
        value = value.get("bytes")
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        return f"<{len(data)} bytes, sha1 {hashlib.sha1(data).hexdigest()[:12]}>"
    if isinstance(value, Image.Image):
        return getattr(value, "filename", None) or f"<PIL image {value.mode} {value.size[0]}x{value.size[1]}>"
    return f"<{type(value).__name__}>"


def _stored_form(value: Any) -> Any:
    """The bytes (else the path) of a `{"bytes", "path"}` dict; any other value as it is."""
    if isinstance(value, dict):
        return value.get("bytes") if value.get("bytes") is not None else value.get("path")
    return value


def open_image(value: Any) -> Image.Image:
    """Open and fully decode an image given as a PIL image, `{"bytes", "path"}` dict, bytes or file path.

    `datasets.Image(decode=False)` yields the dict form (bytes for Parquet/Hub data, a path for local
    imagefolder data). Decoding is forced here (`load()`), so truncated files fail now, not in a later step.
    """
    source = _stored_form(value)
    try:
        if isinstance(source, Image.Image):
            image = source
        else:
            if source is None:
                raise ValueError("neither bytes nor path given")
            if isinstance(source, (bytes, bytearray, memoryview)):
                if len(source) == 0:
                    raise ValueError("empty bytes")
                image = Image.open(io.BytesIO(bytes(source)))
            elif isinstance(source, (str, os.PathLike)):
                image = Image.open(os.fspath(source))
            else:
                raise TypeError(f"unsupported image value of type {type(source).__name__}")
        image.load()
    except UndecodableImageError:
        raise
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        # Named only on failure: the name of an in-memory image is a hash of its bytes, too dear for every sample.
        raise UndecodableImageError(image_identifier(value), f"{type(error).__name__}: {error}") from error
    return image


def load_rgb_image(value: Any) -> Image.Image:
    """`open_image` + `to_rgb`; any failure becomes `UndecodableImageError` naming the sample."""
    image = open_image(value)
    try:
        return to_rgb(image)
    except Exception as error:
        raise UndecodableImageError(image_identifier(value), f"{type(error).__name__}: {error}") from error


def _jpeg_bytes(value: Any) -> bytes | None:
    """The encoded bytes of `value` when it is (or names a file that is) a JPEG, else None."""
    value = _stored_form(value)
    if isinstance(value, (str, os.PathLike)):
        if not os.fspath(value).lower().endswith(JPEG_SUFFIXES):
            return None
        try:
            with open(value, "rb") as file:
                value = file.read()
        except OSError:
            return None  # Pillow reports the missing or unreadable file
    if not isinstance(value, (bytes, bytearray, memoryview)) or not simplejpeg.is_jpeg(value):
        return None
    return bytes(value)


def _needs_exif_rotation(data: bytes) -> bool:
    if _EXIF_HEADER not in data:
        return False
    try:
        with Image.open(io.BytesIO(data)) as image:  # header only: no pixels are decoded here
            return image.getexif().get(ORIENTATION_TAG, 1) in (2, 3, 4, 5, 6, 7, 8)
    except Exception:  # noqa: BLE001 - Pillow decides what a malformed header means
        return True


def fast_jpeg_pixels(value: Any) -> np.ndarray | None:
    """`(H, W, 3)` uint8 RGB pixels of a JPEG decoded by simplejpeg, or None where Pillow must decode it.

    None for: simplejpeg missing, not a JPEG, CMYK/YCCK colour, an EXIF rotation to apply, more pixels than
    `PIL.Image.MAX_IMAGE_PIXELS` (Pillow warns or refuses), or any decoder warning or error (Pillow decides
    whether the image is usable and names the problem).
    """
    if simplejpeg is None:
        return None
    data = _jpeg_bytes(value)
    if data is None:
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if colorspace not in FAST_JPEG_COLORSPACES:
        return None
    if Image.MAX_IMAGE_PIXELS is not None and height * width > Image.MAX_IMAGE_PIXELS:
        return None
    if _needs_exif_rotation(data):
        return None
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=False, fastupsample=False, strict=True)
    except ValueError:
        return None


def decode_rgb(value: Any) -> Image.Image | np.ndarray:
    """The 8-bit RGB image of `value`: `fast_jpeg_pixels` where it applies, else `load_rgb_image`.

    Both forms hold the same pixels (`np.asarray(load_rgb_image(value))`); the transforms in `transforms`
    take either. Failures raise `UndecodableImageError` as in `load_rgb_image`.
    """
    pixels = fast_jpeg_pixels(value)
    return pixels if pixels is not None else load_rgb_image(value)
