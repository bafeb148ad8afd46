"""MixedAE image processors: MAE evaluation transform, backends, save/load, Auto class."""

import io
import json
import logging
import re

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor
from transformers.utils import is_torchvision_available

from transformers_mixedae import CAEImageProcessorPil, MixedAEConfig, MixedAEImageProcessor, MixedAEImageProcessorPil
from transformers_mixedae.data import decode_rgb, to_rgb
from transformers_mixedae.models.image_processing_mixedae import evaluation_sizes


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


def test_a_non_square_model_size_crops_inside_the_image_without_padding():
    assert evaluation_sizes((224, 448))["size"] == {"height": 256, "width": 512}
    processor = MixedAEImageProcessorPil(**evaluation_sizes((32, 64)), do_normalize=False)
    white = Image.fromarray(np.full((30, 30, 3), 255, dtype=np.uint8))
    pixels = processor(white, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 32, 64) and bool((pixels == 1.0).all())  # padding would be 0


def test_grayscale_and_rgba_images_become_three_channels():
    processor = MixedAEImageProcessorPil(**evaluation_sizes(32))
    batch = processor([photo(mode="L"), photo(mode="RGBA")], return_tensors="pt")["pixel_values"]
    assert batch.shape == (2, 3, 32, 32)


@pytest.mark.parametrize("num_channels", [1, 4])
def test_the_processor_of_a_model_with_other_than_three_channels_feeds_it(num_channels):
    from transformers_mixedae import MixedAEModel

    config = MixedAEConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, num_channels=num_channels)
    processor = MixedAEImageProcessorPil.from_model_config(config)
    assert processor.do_convert_rgb is False
    assert list(processor.image_mean) == pytest.approx([0.449] * num_channels, abs=1e-3)
    assert list(processor.image_std) == pytest.approx([0.226] * num_channels, abs=1e-3)
    image = np.random.default_rng(0).integers(0, 256, (40, 40, num_channels), dtype=np.uint8)
    pixels = processor(image, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, num_channels, 32, 32)
    assert MixedAEModel(config)(pixels).last_hidden_state.shape == (1, 17, 32)
    assert MixedAEImageProcessorPil.from_model_config(MixedAEConfig(image_size=32)).do_convert_rgb is True


def test_center_crop_keeps_the_middle_of_the_short_side():
    # A left half black / right half white image: after resize + centre crop the crop straddles the edge.
    array = np.zeros((40, 120, 3), dtype=np.uint8)
    array[:, 60:] = 255
    processor = MixedAEImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_normalize=False
    )
    pixel_values = processor(Image.fromarray(array), return_tensors="pt")["pixel_values"][0]
    assert pixel_values[:, :, :8].max() < 0.1 and pixel_values[:, :, -8:].min() > 0.9


def tiny_config() -> MixedAEConfig:
    return MixedAEConfig(image_size=32, patch_size=4, hidden_size=32, num_attention_heads=4,
                         decoder_hidden_size=16, decoder_num_attention_heads=2)


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


# ---------------------------------------------------------------------------------------------- no torchvision
FALLBACK_WARNING = (
    "`{name}` requires torchvision (not installed); falling back to `{name}Pil`. Install torchvision to use the "
    "default backend, or use `{name}Pil` directly to silence this warning."
)


@pytest.mark.skipif(is_torchvision_available(), reason="the fallback is for environments without torchvision")
def test_torchvision_name_gives_a_working_pil_processor_with_a_warning(tmp_path, caplog, fresh_warning_once):
    with caplog.at_level(logging.WARNING):
        processor = MixedAEImageProcessor(**evaluation_sizes(32))
        MixedAEImageProcessor()
    assert type(processor) is MixedAEImageProcessorPil
    assert [record.getMessage() for record in caplog.records] == [FALLBACK_WARNING.format(name="MixedAEImageProcessor")]
    reference = MixedAEImageProcessorPil(**evaluation_sizes(32))
    for image in (photo(), np.asarray(photo()), torch.from_numpy(np.array(photo())).permute(2, 0, 1)):
        assert torch.equal(processor(image, return_tensors="pt").pixel_values, reference(photo(), return_tensors="pt").pixel_values)

    processor.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "preprocessor_config.json").read_text())["image_processor_type"] == "MixedAEImageProcessor"
    reloaded = MixedAEImageProcessor.from_pretrained(tmp_path)
    assert type(reloaded) is MixedAEImageProcessorPil and reloaded.to_dict() == processor.to_dict()
    tiny_config().save_pretrained(tmp_path)
    assert type(AutoImageProcessor.from_pretrained(tmp_path)) is MixedAEImageProcessorPil


def test_subclass_of_torchvision_class_is_not_swapped():
    # The fallback is for our own names only: a user's subclass may add behaviour the PIL class does not have.
    class Custom(MixedAEImageProcessor):
        pass

    assert type(Custom()) is Custom


# ---------------------------------------------------------------------------------------------- degenerate inputs
@pytest.mark.parametrize(
    ("images", "error", "message"),
    [
        (np.zeros((0, 0, 3), np.uint8), ValueError, "image 0 is an array of shape (0, 0, 3) and dtype uint8: an image needs at least one pixel."),
        (np.zeros((0, 7, 3), np.uint8), ValueError, "image 0 is an array of shape (0, 7, 3) and dtype uint8: an image needs at least one pixel."),
        ([np.zeros((5, 5, 3), np.uint8), np.zeros((5, 0, 3), np.uint8)], ValueError, "image 1 is an array of shape (5, 0, 3) and dtype uint8: an image needs at least one pixel."),
        (torch.zeros(3, 0, 0), ValueError, "image 0 is an array of shape (3, 0, 0) and dtype torch.float32: an image needs at least one pixel."),
        (Image.new("RGB", (0, 0)), ValueError, "image 0 is a PIL image of mode RGB and size 0x0: an image needs at least one pixel."),
        (np.zeros((20, 30), np.uint8), ValueError, "image 0 is an array of shape (20, 30) and dtype uint8; expected a PIL image, a NumPy array or a torch tensor of shape (H, W, C) or (C, H, W) with C in (1, 3, 4) (a 2-D grayscale array needs a channel axis: array[..., None])."),
        (np.zeros((20, 30, 2), np.uint8), ValueError, "image 0 is an array of shape (20, 30, 2) and dtype uint8; expected"),
        (np.zeros((20, 30, 3), bool), ValueError, "image 0 is an array of shape (20, 30, 3) and dtype bool; give uint8 values in [0, 255] (for a mask: mask.astype(np.uint8) * 255)."),
        (np.full((20, 30, 3), 6000, np.uint16), ValueError, "image 0 is an array of shape (20, 30, 3) and dtype uint16 with values in [6000, 6000], outside the 8-bit range [0, 255]: convert it to 8-bit first"),
        (np.full((20, 30, 3), -0.5, np.float32), ValueError, "image 0 is an array of shape (20, 30, 3) and dtype float32 with values in [-0.5, -0.5], outside [0, 255] expected with do_rescale=True: give unnormalised pixels (uint8, or floats in [0, 1] with do_rescale=False)."),
        (np.full((20, 30, 3), 0.5, np.float32), ValueError, "image 0 is an array of shape (20, 30, 3) and dtype float32 with values in [0.5, 0.5], which looks already rescaled to [0, 1], but do_rescale=True divides by 255: pass do_rescale=False for [0, 1] floats, or uint8 pixels."),
        (np.full((20, 30, 3), np.nan, np.float32), ValueError, "image 0 is an array of shape (20, 30, 3) and dtype float32 with NaN or infinite values."),
        (np.full((20, 30, 4), 200.0, np.float32), ValueError, "image 0 is an array of shape (20, 30, 4) and dtype float32: transformers composites the alpha channel of float images in [0, 1] only"),
        (5, TypeError, "image 0 is an object of type int; expected a PIL image"),
        ([photo(), None], TypeError, "image 1 is an object of type NoneType; expected a PIL image"),
        ({"bytes": b""}, TypeError, "image 0 is an object of type dict; expected a PIL image"),
    ],
)
def test_degenerate_inputs_raise_naming_the_image(images, error, message):
    processor = MixedAEImageProcessorPil(**evaluation_sizes(32))
    with pytest.raises(error, match="^" + re.escape(message)):
        processor(images, return_tensors="pt")


def test_float_arrays_outside_the_unit_range_need_do_rescale_false_range():
    processor = MixedAEImageProcessorPil(**evaluation_sizes(32))
    with pytest.raises(ValueError, match=re.escape("with values in [0.0, 2.0], outside [0, 1] expected with do_rescale=False")):
        processor(np.linspace(0, 2, 60 * 80 * 3, dtype=np.float32).reshape(60, 80, 3), do_rescale=False)


def test_one_and_four_channel_arrays_give_the_pixels_of_their_pil_images():
    processor = MixedAEImageProcessorPil(**evaluation_sizes(32))
    gray = photo(mode="L")
    assert torch.equal(
        processor(np.asarray(gray)[..., None], return_tensors="pt").pixel_values,
        processor(gray, return_tensors="pt").pixel_values,
    )
    rgba = np.asarray(photo()).copy()
    rgba = np.concatenate([rgba, np.full((*rgba.shape[:2], 1), 255, np.uint8)], axis=-1)
    assert torch.equal(
        processor(rgba, return_tensors="pt").pixel_values, processor(photo(), return_tensors="pt").pixel_values
    )
    # 0..255 floats are read like uint8; [0, 1] floats with do_rescale=False too.
    as_float = np.asarray(photo()).astype(np.float32)
    torch.testing.assert_close(
        processor(as_float, return_tensors="pt").pixel_values, processor(photo(), return_tensors="pt").pixel_values
    )


# ---------------------------------------------------------------------------------------------- one pixel decoder
def _modes() -> dict[str, Image.Image]:
    rng = np.random.default_rng(1)
    base = photo(40, 30)
    alpha = Image.fromarray(rng.integers(0, 256, size=(30, 40), dtype=np.uint8))
    rgba = base.copy()
    rgba.putalpha(alpha)
    la = base.convert("L")
    la.putalpha(alpha)
    palette_transparent = base.convert("P")
    palette_transparent.info["transparency"] = int(np.asarray(palette_transparent)[0, 0])
    return {
        "I;16": Image.fromarray(rng.integers(0, 65536, size=(30, 40), dtype=np.uint16)),
        "I": Image.fromarray(rng.integers(-1000, 70000, size=(30, 40), dtype=np.int32)),
        "F in [0, 1]": Image.fromarray(rng.random((30, 40), dtype=np.float32)),
        "F beyond [0, 1]": Image.fromarray(rng.uniform(-5, 300, size=(30, 40)).astype(np.float32)),
        "P": base.convert("P"),
        "P with transparency": palette_transparent,
        "CMYK": base.convert("CMYK"),
        "LA": la,
        "RGBA": rgba,
        "L": base.convert("L"),
        "1": base.convert("1"),
        "RGB": base,
    }


def _exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    photo(40, 30).save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


@pytest.mark.parametrize("processor_class", [MixedAEImageProcessorPil, CAEImageProcessorPil])
@pytest.mark.parametrize("mode", list(_modes()))
def test_processor_converts_every_mode_like_the_training_pipeline(processor_class, mode):
    image = _modes()[mode]
    assert image.mode == mode.split()[0]
    # Raw pixels: the processor's RGB conversion alone equals the data pipeline's (`to_rgb` after decoding).
    raw = processor_class(do_resize=False, do_center_crop=False, do_rescale=False, do_normalize=False)
    expected = torch.from_numpy(np.array(to_rgb(image))).permute(2, 0, 1)
    assert torch.equal(raw(image, return_tensors="pt").pixel_values[0], expected)
    processor = processor_class(**evaluation_sizes(32))
    assert torch.equal(
        processor(image, return_tensors="pt").pixel_values, processor(to_rgb(image), return_tensors="pt").pixel_values
    )


def test_exif_orientation_is_applied_as_in_the_training_pipeline():
    data = _exif_rotated_jpeg()
    opened = Image.open(io.BytesIO(data))
    assert opened.size == (40, 30)
    raw = MixedAEImageProcessorPil(do_resize=False, do_center_crop=False, do_rescale=False, do_normalize=False)
    pixels = raw(opened, return_tensors="pt").pixel_values[0]
    assert pixels.shape == (3, 40, 30)
    assert torch.equal(pixels, torch.from_numpy(np.array(decode_rgb(data))).permute(2, 0, 1))


# ---------------------------------------------------------------------------------------------- segmentation maps
def _nearest(labels: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.array(Image.fromarray(labels).resize((width, height), Image.NEAREST)).astype(np.int64)


def test_segmentation_maps_become_labels_resized_and_cropped_as_the_images():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, (300, 400)).astype(np.uint8)
    image = Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8))
    # MAE's transform: short side to 256 (300 x 400 -> 256 x 341), centre crop 224 (rows 16.., columns 58..).
    batch = MixedAEImageProcessorPil()(image, segmentation_maps=Image.fromarray(labels, mode="L"), return_tensors="pt")
    assert batch["pixel_values"].shape == (1, 3, 224, 224) and batch["labels"].dtype == torch.int64
    assert torch.equal(batch["labels"][0], torch.from_numpy(_nearest(labels, 341, 256)[16:240, 58:282]))
    # The square resize of the segmentation run's processor, on a list of integer arrays.
    square = MixedAEImageProcessorPil(size={"height": 24, "width": 24}, do_center_crop=False)
    batch = square([image, image], segmentation_maps=[labels, labels.astype(np.int64)], return_tensors="pt")
    assert batch["labels"].shape == (2, 24, 24)
    assert torch.equal(batch["labels"][1], torch.from_numpy(_nearest(labels, 24, 24)))
    assert "labels" not in square(image, return_tensors="pt")


def test_segmentation_maps_are_reduced_as_configured_or_asked():
    labels = np.array([[0, 1], [4, 255]], dtype=np.uint8)
    image = np.zeros((2, 2, 3), dtype=np.uint8)
    settings = dict(size={"height": 2, "width": 2}, do_center_crop=False, return_tensors="np")
    reduced = [[255, 0], [3, 255]]
    assert MixedAEImageProcessorPil(do_reduce_labels=True)(image, segmentation_maps=labels, **settings)[
        "labels"][0].tolist() == reduced
    assert MixedAEImageProcessorPil()(image, segmentation_maps=labels, **settings)["labels"][0].tolist() == [
        [0, 1], [4, 255]]
    assert MixedAEImageProcessorPil()(image, segmentation_maps=labels, do_reduce_labels=True, **settings)[
        "labels"][0].tolist() == reduced
    assert MixedAEImageProcessorPil(do_reduce_labels=True).reduce_label(labels).tolist() == reduced


def test_padding_of_a_crop_larger_than_the_image_is_ignored_not_class_0():
    labels = np.arange(20 * 20).reshape(20, 20) % 7
    processor = MixedAEImageProcessorPil(do_resize=False, crop_size={"height": 24, "width": 24})
    batch = processor(np.zeros((20, 20, 3), dtype=np.uint8), segmentation_maps=labels, return_tensors="np")
    expected = np.full((24, 24), 255)
    expected[2:22, 2:22] = labels
    assert batch["pixel_values"].shape == (1, 3, 24, 24)
    assert batch["labels"][0].tolist() == expected.tolist()


@pytest.mark.parametrize("as_tensor", [False, True])
def test_a_batch_of_segmentation_maps_in_one_array_gives_one_label_map_per_image(as_tensor):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, (3, 8, 8)).astype(np.uint8)
    images = rng.integers(0, 255, (3, 8, 8, 3), dtype=np.uint8)
    processor = MixedAEImageProcessorPil(size={"height": 4, "width": 4}, do_center_crop=False)
    maps = torch.from_numpy(labels) if as_tensor else labels
    for batch in (processor(list(images), segmentation_maps=maps, return_tensors="np"),
                  processor(images, segmentation_maps=maps, return_tensors="np")):
        assert batch["labels"].shape == (3, 4, 4)
        for index in range(3):
            assert batch["labels"][index].tolist() == _nearest(labels[index], 4, 4).tolist()
    with pytest.raises(ValueError, match="segmentation map 2 is 8x6 \\(height x width\\) but its image is 8x8"):
        processor(images, segmentation_maps=list(labels[:2]) + [labels[2][:, :6]])


def test_cae_processor_gives_masks_and_labels_together():
    processor = CAEImageProcessorPil(size={"height": 32, "width": 32}, do_center_crop=False, patch_size=16,
                                     num_masking_patches=2, mask_min_num_patches=1)
    labels = np.arange(64 * 48).reshape(48, 64) % 7
    batch = processor(np.zeros((48, 64, 3), dtype=np.uint8), segmentation_maps=labels, return_bool_masked_pos=True,
                      return_tensors="pt")
    assert batch["labels"].shape == (1, 32, 32) and batch["bool_masked_pos"].shape == (1, 4)
    assert int(batch["bool_masked_pos"].sum()) == 2
    assert torch.equal(batch["labels"][0], torch.from_numpy(_nearest(labels.astype(np.uint8), 32, 32)))


@pytest.mark.parametrize(
    "maps, message",
    [
        ([np.zeros((4, 4), dtype=np.uint8)] * 2, "got 2 segmentation maps for 1 images"),
        (np.zeros((4, 4), dtype=np.float32), "segmentation map 0 is an array of shape \\(4, 4\\) and dtype float32"),
        (np.full((4, 4), 300), "segmentation map 0 holds class ids in \\[300, 300\\]"),
        (np.zeros((4, 4, 3), dtype=np.uint8), "expected class ids: a PIL image of mode L or P"),
        (np.zeros((4, 5), dtype=np.uint8), "segmentation map 0 is 4x5 \\(height x width\\) but its image is 4x4"),
    ],
)
def test_bad_segmentation_maps_are_named(maps, message):
    with pytest.raises(ValueError, match=message):
        MixedAEImageProcessorPil()(np.zeros((4, 4, 3), dtype=np.uint8), segmentation_maps=maps)


def test_a_segmentation_map_turns_with_its_own_exif_orientation(tmp_path):
    labels = np.array([[1, 0, 0], [0, 0, 2]], dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 3  # rotate 180
    Image.fromarray(labels, mode="L").save(tmp_path / "map.png", exif=exif)
    processor = MixedAEImageProcessorPil(size={"height": 2, "width": 3}, do_center_crop=False)
    batch = processor(np.zeros((2, 3, 3), dtype=np.uint8), segmentation_maps=Image.open(tmp_path / "map.png"),
                      return_tensors="np")
    assert batch["labels"][0].tolist() == np.rot90(labels, 2).tolist()
