"""MixedAE image processors: MAE evaluation transform, backends, save/load, Auto class."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor
from transformers.utils import is_torchvision_available

from transformers_mixedae import MixedAEConfig, MixedAEImageProcessor, MixedAEImageProcessorPil
from transformers_mixedae.image_processing_mixedae import evaluation_sizes


def photo(width=80, height=60, mode="RGB") -> Image.Image:
    array = np.random.default_rng(0).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(array).convert(mode)


def test_defaults_are_mae_evaluation_transform():
    processor = MixedAEImageProcessorPil()
    assert processor.size == {"shortest_edge": 256} and processor.crop_size == {"height": 224, "width": 224}
    assert list(processor.image_mean) == [0.485, 0.456, 0.406] and list(processor.image_std) == [0.229, 0.224, 0.225]
    pixel_values = processor(photo(), return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 3, 224, 224) and pixel_values.dtype == torch.float32


@pytest.mark.parametrize("to_input", [lambda im: im, np.asarray, lambda im: torch.from_numpy(np.array(im)).permute(2, 0, 1)])
def test_pil_numpy_and_torch_inputs_agree(to_input):
    processor = MixedAEImageProcessorPil(**evaluation_sizes(32))
    expected = processor(photo(), return_tensors="pt")["pixel_values"]
    actual = processor(to_input(photo()), return_tensors="pt")["pixel_values"]
    assert actual.shape == (1, 3, 32, 32)
    torch.testing.assert_close(actual, expected)


def test_grayscale_and_rgba_images_become_three_channels():
    processor = MixedAEImageProcessorPil(**evaluation_sizes(32))
    batch = processor([photo(mode="L"), photo(mode="RGBA")], return_tensors="pt")["pixel_values"]
    assert batch.shape == (2, 3, 32, 32)


def test_center_crop_keeps_the_middle_of_the_short_side():
    # A left half black / right half white image: after resize + centre crop the crop straddles the edge.
    array = np.zeros((40, 120, 3), dtype=np.uint8)
    array[:, 60:] = 255
    processor = MixedAEImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_normalize=False
    )
    pixel_values = processor(Image.fromarray(array), return_tensors="pt")["pixel_values"][0]
    assert pixel_values[:, :, :8].max() < 0.1 and pixel_values[:, :, -8:].min() > 0.9


def test_save_load_round_trip_and_auto_class(tmp_path):
    processor = MixedAEImageProcessorPil(**evaluation_sizes(32))
    processor.save_pretrained(tmp_path)
    MixedAEConfig(image_size=32, patch_size=4, hidden_size=32, num_attention_heads=4,
                  decoder_hidden_size=16, decoder_num_attention_heads=2).save_pretrained(tmp_path)
    reloaded = MixedAEImageProcessorPil.from_pretrained(tmp_path)
    assert reloaded.to_dict() == processor.to_dict()
    auto = AutoImageProcessor.from_pretrained(tmp_path)
    expected_class = MixedAEImageProcessor if is_torchvision_available() else MixedAEImageProcessorPil
    assert type(auto) is expected_class
    torch.testing.assert_close(
        auto(photo(), return_tensors="pt")["pixel_values"], processor(photo(), return_tensors="pt")["pixel_values"]
    )
    pil = AutoImageProcessor.from_pretrained(tmp_path, backend="pil")
    assert type(pil) is MixedAEImageProcessorPil
