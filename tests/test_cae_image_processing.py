"""CAE image processors: the torchvision name without torchvision, save/load, inputs named in errors."""

import json
import logging
import re

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor
from transformers.utils import is_torchvision_available

from transformers_mixedae import CAEConfig, CAEImageProcessor, CAEImageProcessorPil

TINY = {"size": {"shortest_edge": 36}, "crop_size": {"height": 32, "width": 32}, "patch_size": 8}


def photo() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(40, 52, 3), dtype=np.uint8))


@pytest.mark.skipif(is_torchvision_available(), reason="the fallback is for environments without torchvision")
def test_torchvision_name_gives_a_working_pil_processor_with_a_warning(tmp_path, caplog, fresh_warning_once):
    with caplog.at_level(logging.WARNING):
        processor = CAEImageProcessor(**TINY, num_masking_patches=6, mask_min_num_patches=2, mask_seed=0)
    assert type(processor) is CAEImageProcessorPil
    assert [record.getMessage() for record in caplog.records] == [
        "`CAEImageProcessor` requires torchvision (not installed); falling back to `CAEImageProcessorPil`. Install "
        "torchvision to use the default backend, or use `CAEImageProcessorPil` directly to silence this warning."
    ]
    batch = processor([photo(), np.asarray(photo())], return_bool_masked_pos=True, return_tensors="pt")
    assert batch.pixel_values.shape == (2, 3, 32, 32) and torch.equal(batch.pixel_values[0], batch.pixel_values[1])
    assert batch.bool_masked_pos.shape == (2, 16) and batch.bool_masked_pos.sum(-1).tolist() == [6, 6]

    processor.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "preprocessor_config.json").read_text())["image_processor_type"] == "CAEImageProcessor"
    reloaded = CAEImageProcessor.from_pretrained(tmp_path)
    assert type(reloaded) is CAEImageProcessorPil and reloaded.to_dict() == processor.to_dict()
    CAEConfig(image_size=32, patch_size=8, hidden_size=32, num_attention_heads=4, decoder_hidden_size=16,
              decoder_num_attention_heads=2, num_masking_patches=6, mask_min_num_patches=2).save_pretrained(tmp_path)
    auto = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(auto) is CAEImageProcessorPil and auto.to_dict() == processor.to_dict()


def test_empty_image_raises_naming_it_also_with_a_mask():
    processor = CAEImageProcessorPil(**TINY)
    message = "image 1 is an array of shape (0, 0, 3) and dtype uint8: an image needs at least one pixel."
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        processor([photo(), np.zeros((0, 0, 3), np.uint8)], return_bool_masked_pos=True)


def test_sixteen_bit_image_is_scaled_like_the_training_pipeline():
    processor = CAEImageProcessorPil(do_resize=False, do_center_crop=False, do_rescale=False, do_normalize=False)
    image = Image.fromarray(np.full((4, 4), 32768, np.uint16))
    assert image.mode == "I;16"
    # rint(32768 * 255 / 65535), where transformers' own conversion clipped to 255.
    assert processor(image, return_tensors="pt").pixel_values.unique().tolist() == [128]
