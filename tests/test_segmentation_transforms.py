# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Paired segmentation augmentation: image and labels stay aligned, exact crop and padding, flip, determinism,
photometric distortion on the image only, evaluation transform."""

import numpy as np
import pytest
import torch
from PIL import Image

from transformers_mixedae.data.segmentation_transforms import (
    SegmentationEvaluationTransform,
    SegmentationTrainTransform,
    photometric_distortion,
    rescaled_size,
)


def class_image(height: int = 60, width: int = 90, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels 0..5 plus ignore (255) in random 6x6 blocks; the image's three channels all hold the label."""
    generator = np.random.default_rng(seed)
    blocks = generator.integers(0, 6, (height // 6 + 1, width // 6 + 1))
    blocks[generator.random(blocks.shape) < 0.1] = 255
    labels = np.kron(blocks, np.ones((6, 6), np.int64))[:height, :width]
    image = np.repeat(labels.astype(np.uint8)[:, :, None], 3, axis=2)
    return image, labels


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("seed", range(12))
def test_image_and_labels_stay_aligned_under_every_geometric_op(seed):
    image, labels = class_image(seed=seed)
    transform = SegmentationTrainTransform(
        crop_size=(48, 64), scale=(120, 60), interpolation="nearest", photometric_distortion=False, normalize=False
    )
    output = transform(image, labels, seeded(seed))
    pixels, out_labels = output["pixel_values"], output["labels"]
    assert pixels.shape == (3, 48, 64) and pixels.dtype == torch.uint8
    assert out_labels.shape == (48, 64) and out_labels.dtype == torch.int64
    labelled = out_labels != 255
    assert labelled.any()
    for channel in range(3):
        assert torch.equal(pixels[channel][labelled].to(torch.int64), out_labels[labelled])
    # Padding is ignore in the labels (the image's padding colour is checked in the exact crop test below).
    assert set(out_labels.unique().tolist()) <= {0, 1, 2, 3, 4, 5, 255}


def test_bilinear_image_agrees_with_the_labels_inside_uniform_regions():
    image, labels = class_image(seed=3)
    image = image * 40  # well separated grey levels
    transform = SegmentationTrainTransform(crop_size=64, scale=(120, 60), ratio_range=(1.0, 1.0),
                                           photometric_distortion=False, normalize=False, cat_max_ratio=None)
    output = transform(image, labels, seeded(0))
    out_labels, pixels = output["labels"], output["pixel_values"][0].to(torch.int64)
    # Pixels whose 5x5 neighbourhood has one label cannot be blended with another class.
    padded = torch.nn.functional.pad(out_labels[None, None].float(), (2, 2, 2, 2), value=-1)
    window_max = torch.nn.functional.max_pool2d(padded, 5, 1)[0, 0]
    window_min = -torch.nn.functional.max_pool2d(-padded, 5, 1)[0, 0]
    uniform = (window_max == window_min) & (out_labels != 255)
    assert uniform.sum() > 100
    assert torch.equal(pixels[uniform], out_labels[uniform] * 40)


def test_crop_size_and_padding_are_exact():
    image, labels = class_image(40, 50)
    # scale (50, 40) with ratio 1 keeps the image 40x50; the 64x72 crop holds it whole and pads the rest.
    transform = SegmentationTrainTransform(crop_size=(64, 72), scale=(50, 40), ratio_range=(1.0, 1.0),
                                           flip_probability=0.0, photometric_distortion=False, normalize=False)
    output = transform(Image.fromarray(image), labels, seeded(0))
    assert output["pixel_values"].shape == (3, 64, 72)
    assert output["labels"].shape == (64, 72)
    assert torch.equal(output["labels"][:40, :50], torch.from_numpy(labels))
    assert torch.equal(output["pixel_values"][:, :40, :50], torch.from_numpy(image).permute(2, 0, 1))
    assert (output["labels"][40:] == 255).all() and (output["labels"][:, 50:] == 255).all()
    # uint8 padding is the mean colour, which normalises to about 0 (mmseg pads with 0 after normalising).
    mean_colour = torch.tensor([124, 116, 104], dtype=torch.uint8).view(3, 1, 1)  # round(255 * ImageNet mean)
    assert (output["pixel_values"][:, 40:] == mean_colour).all()
    assert (output["pixel_values"][:, :, 50:] == mean_colour).all()
    on_device = (mean_colour.float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(3, 1, 1)
    assert on_device.abs().max() < 0.01

    normalized = SegmentationTrainTransform(crop_size=(64, 72), scale=(50, 40), ratio_range=(1.0, 1.0),
                                            flip_probability=0.0, photometric_distortion=False)
    values = normalized(image, labels, seeded(0))["pixel_values"]
    assert values.dtype == torch.float32 and values.shape == (3, 64, 72)
    assert (values[:, 40:] == 0).all() and (values[:, :, 50:] == 0).all()  # padded after normalisation
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    expected = (torch.from_numpy(image).permute(2, 0, 1).float() / 255 - mean) / std
    torch.testing.assert_close(values[:, :40, :50], expected)


@pytest.mark.parametrize("normalize", [False, True])
def test_black_padding_is_uint8_zero_before_or_after_normalisation(normalize):
    image, labels = class_image(40, 50)
    transform = SegmentationTrainTransform(crop_size=(64, 72), scale=(50, 40), ratio_range=(1.0, 1.0),
                                           flip_probability=0.0, photometric_distortion=False, normalize=normalize,
                                           padding="black")
    output = transform(image, labels, seeded(0))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    black = (-mean / std).expand(3, 24, 72) if normalize else torch.zeros(3, 24, 72, dtype=torch.uint8)
    assert output["pixel_values"].dtype == (torch.float32 if normalize else torch.uint8)
    torch.testing.assert_close(output["pixel_values"][:, 40:], black, rtol=0, atol=1e-6)
    torch.testing.assert_close(output["pixel_values"][:, :, 50:], black[:, :1, :22].expand(3, 64, 22), rtol=0,
                               atol=1e-6)
    assert (output["labels"][40:] == 255).all() and (output["labels"][:, 50:] == 255).all()
    # The image itself is the same as with the mean colour: only the border differs.
    mean_padded = SegmentationTrainTransform(crop_size=(64, 72), scale=(50, 40), ratio_range=(1.0, 1.0),
                                             flip_probability=0.0, photometric_distortion=False,
                                             normalize=normalize)(image, labels, seeded(0))
    assert torch.equal(output["pixel_values"][:, :40, :50], mean_padded["pixel_values"][:, :40, :50])
    assert torch.equal(output["labels"], mean_padded["labels"])


def test_an_unknown_padding_is_named():
    with pytest.raises(ValueError, match=r"padding must be one of \('mean', 'black'\), got 'grey'"):
        SegmentationTrainTransform(padding="grey")


def test_random_rescale_follows_mmcv_keep_ratio_rule():
    assert rescaled_size(60, 90, (120, 60)) == (60, 90)
    assert rescaled_size(480, 640, (2048, 512)) == (512, 683)
    assert rescaled_size(100, 1000, (2048, 512)) == (205, 2048)  # very wide: the long side bounds it
    image, labels = class_image(60, 90)
    transform = SegmentationTrainTransform(crop_size=1000, scale=(120, 60), ratio_range=(2.0, 2.0),
                                           flip_probability=0.0, photometric_distortion=False, normalize=False)
    output = transform(image, labels, seeded(0))
    assert (output["labels"][:120, :180] != 255).sum() == (np.kron(labels, np.ones((2, 2))) != 255).sum()
    assert torch.equal(output["labels"][:120, :180], torch.from_numpy(np.kron(labels, np.ones((2, 2), np.int64))))


def test_flip_flips_both():
    image, labels = class_image(40, 50)
    image[:, :, 1] = np.arange(50, dtype=np.uint8)  # a channel that is not symmetric
    kwargs = dict(crop_size=(40, 50), scale=(50, 40), ratio_range=(1.0, 1.0), photometric_distortion=False,
                  normalize=False)
    flipped = SegmentationTrainTransform(flip_probability=1.0, **kwargs)(image, labels, seeded(0))
    kept = SegmentationTrainTransform(flip_probability=0.0, **kwargs)(image, labels, seeded(0))
    assert torch.equal(kept["labels"], torch.from_numpy(labels))
    assert torch.equal(flipped["labels"], torch.from_numpy(labels).flip(-1))
    assert torch.equal(flipped["pixel_values"], torch.from_numpy(image).permute(2, 0, 1).flip(-1))


def test_same_seed_same_output_other_seed_different():
    image, labels = class_image(seed=1)
    image = np.ascontiguousarray(image * 40)
    transform = SegmentationTrainTransform(crop_size=32, scale=(120, 60))
    first, second = transform(image, labels, seeded(7)), transform(image, labels, seeded(7))
    other = transform(image, labels, seeded(8))
    assert torch.equal(first["pixel_values"], second["pixel_values"])
    assert torch.equal(first["labels"], second["labels"])
    assert not torch.equal(first["labels"], other["labels"]) or not torch.equal(
        first["pixel_values"], other["pixel_values"]
    )
    # PIL image and uint8 array of the same pixels give the same output.
    from_pil = transform(Image.fromarray(image), Image.fromarray(labels.astype(np.uint8)), seeded(7))
    assert torch.equal(from_pil["pixel_values"], first["pixel_values"])
    assert torch.equal(from_pil["labels"], first["labels"])


def test_photometric_distortion_changes_the_image_never_the_labels():
    image, labels = class_image(seed=2)
    image = np.ascontiguousarray(np.stack([image[..., 0] * 40, image[..., 0] * 20 + 30, 200 - image[..., 0] * 10], -1))
    common = dict(crop_size=32, scale=(120, 60), interpolation="nearest", normalize=False)
    changed = 0
    for seed in range(8):
        plain = SegmentationTrainTransform(photometric_distortion=False, **common)(image, labels, seeded(seed))
        distorted = SegmentationTrainTransform(photometric_distortion=True, **common)(image, labels, seeded(seed))
        # The geometric draws come first, so the same seed gives the same crop and flip.
        assert torch.equal(distorted["labels"], plain["labels"])
        changed += not torch.equal(distorted["pixel_values"], plain["pixel_values"])
    assert changed >= 6


def test_photometric_distortion_is_seeded_and_keeps_uint8():
    pixels = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8, generator=seeded(0))
    first = photometric_distortion(pixels, seeded(3))
    assert first.dtype == torch.uint8 and first.shape == pixels.shape
    assert torch.equal(first, photometric_distortion(pixels, seeded(3)))


def test_cat_max_ratio_redraws_crops_where_one_class_dominates():
    labels = np.zeros((64, 64), np.int64)
    labels[:, 16:32] = labels[:, 48:] = 1  # stripes 16 px wide: 7 of a 16-px crop's 16 offsets share below 0.75
    image = np.repeat(labels.astype(np.uint8)[:, :, None], 3, axis=2)
    common = dict(crop_size=16, scale=(64, 64), ratio_range=(1.0, 1.0), photometric_distortion=False,
                  flip_probability=0.0, normalize=False)

    def largest_shares(cat_max_ratio):
        transform = SegmentationTrainTransform(cat_max_ratio=cat_max_ratio, **common)
        crops = torch.stack([transform(image, labels, seeded(seed))["labels"] for seed in range(200)])
        share_of_one = (crops == 1).flatten(1).float().mean(dim=1)
        return torch.maximum(share_of_one, 1 - share_of_one)

    # Up to 10 draws per crop: a dominated crop survives all of them with probability (9/16)^10 = 0.3 %.
    assert (largest_shares(0.75) < 0.75).float().mean() >= 0.97
    without = largest_shares(None)
    assert 0.3 <= (without < 0.75).float().mean() <= 0.6  # 7/16 of single draws are balanced
    looser = largest_shares(0.95)  # a looser bound accepts shares a stricter one redraws
    assert (looser < 0.95).float().mean() >= 0.97 and ((looser >= 0.75) & (looser < 0.95)).any()


def test_evaluation_transform_rescales_the_image_and_keeps_full_resolution_labels():
    image, labels = class_image(60, 90)
    output = SegmentationEvaluationTransform(scale=(200, 30), normalize=False)(image, labels)
    assert output["pixel_values"].shape == (3, 30, 45)
    assert torch.equal(output["labels"], torch.from_numpy(labels))
    resized = SegmentationEvaluationTransform(scale=(200, 30), resize_labels=True, interpolation="nearest",
                                              normalize=False)(image, labels)
    assert resized["labels"].shape == (30, 45)
    assert torch.equal(resized["labels"], torch.from_numpy(labels[::2, ::2].copy()))
    assert "labels" not in SegmentationEvaluationTransform(scale=(200, 30))(image)


def test_errors_name_the_problem():
    image, labels = class_image(60, 90)
    with pytest.raises(ValueError, match="the image is 60x90 .* but its label map is 90x60"):
        SegmentationTrainTransform()(image, labels.T, seeded(0))
    with pytest.raises(ValueError, match="integer class ids, got float64"):
        SegmentationTrainTransform()(image, labels.astype(np.float64), seeded(0))
    with pytest.raises(ValueError, match="single-channel PIL image .* got mode RGB"):
        SegmentationTrainTransform()(image, Image.fromarray(image), seeded(0))
    with pytest.raises(ValueError, match="interpolation must be"):
        SegmentationTrainTransform(interpolation="lanczos")
