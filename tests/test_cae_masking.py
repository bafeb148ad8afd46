"""Block-wise and random patch masks, the collator, the image processor's masks and masks drawn by the model."""

import math

import numpy as np
import pytest
import torch
from helpers import single_torch_thread, tiny_cae_config  # noqa: F401 (fixture)
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from transformers_mixedae import CAEForPreTraining, CAEImageProcessorPil
from transformers_mixedae.models.masking import (
    BlockMaskGenerator,
    MaskingDataCollator,
    RandomMaskGenerator,
    build_mask_generator,
    stack_masks,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.mark.parametrize("seed", range(20))
def test_official_block_masking_masks_exactly_98_of_196(seed):
    mask = BlockMaskGenerator((14, 14), 98, min_num_patches=16, min_aspect=0.3, seed=seed)()
    assert mask.shape == (14, 14) and mask.dtype == bool
    assert mask.sum() == 98


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(2, 16),
    width=st.integers(2, 16),
    fraction=st.floats(0.0, 0.9),
    min_num_patches=st.integers(1, 20),
    seed=st.integers(0, 2**31 - 1),
)
def test_block_masking_count_is_exact_for_any_setting(height, width, fraction, min_num_patches, seed):
    count = int(fraction * height * width)
    mask = BlockMaskGenerator((height, width), count, min_num_patches=min_num_patches, seed=seed)()
    assert mask.sum() == count


@pytest.mark.parametrize("seed", range(10))
def test_blocks_respect_min_size_and_aspect_limits(seed):
    generator = BlockMaskGenerator((14, 14), 98, min_num_patches=16, min_aspect=0.3, seed=seed)
    mask, blocks = generator.generate_with_blocks()
    remaining = 98
    rebuilt = np.zeros_like(mask)
    for block in blocks:
        max_new = min(remaining, generator.max_num_patches)
        # The area is drawn between the minimum block size and what may still be masked.
        assert min(16, max_new) <= block.target_area <= max(16, max_new)
        assert 0.3 - 1e-9 <= block.aspect_ratio <= 1 / 0.3 + 1e-9
        assert block.height == round(math.sqrt(block.target_area * block.aspect_ratio))
        assert block.width == round(math.sqrt(block.target_area / block.aspect_ratio))
        assert block.height < 14 and block.width < 14
        assert 0 < block.newly_masked <= max_new
        rebuilt[block.top : block.top + block.height, block.left : block.left + block.width] = True
        remaining -= block.newly_masked
    assert remaining == 0
    assert np.array_equal(rebuilt, mask)
    # While plenty remains, blocks are at least the minimum size (up to the rounding of h and w).
    assert blocks[0].target_area >= 16


def test_block_masking_is_reproducible_from_a_seed():
    first = [BlockMaskGenerator(14, 98, seed=3)() for _ in range(1)]
    generator_a, generator_b = BlockMaskGenerator(14, 98, seed=3), BlockMaskGenerator(14, 98, seed=3)
    sequence_a = [generator_a() for _ in range(5)]
    sequence_b = [generator_b() for _ in range(5)]
    assert all(np.array_equal(a, b) for a, b in zip(sequence_a, sequence_b, strict=True))
    assert np.array_equal(first[0], sequence_a[0])
    assert not all(np.array_equal(sequence_a[0], other) for other in sequence_a[1:])
    assert not np.array_equal(BlockMaskGenerator(14, 98, seed=4)(), sequence_a[0])


def test_block_masking_does_not_touch_the_global_random_state():
    import random

    random.seed(123)
    expected = random.random()
    random.seed(123)
    BlockMaskGenerator(14, 98, seed=0)()
    assert random.random() == expected


def test_random_masking_is_exact_and_reproducible():
    masks_a = [RandomMaskGenerator((4, 6), 10, seed=1)() for _ in range(1)]
    generator = RandomMaskGenerator((4, 6), 10, seed=1)
    assert np.array_equal(generator(), masks_a[0])
    for _ in range(10):
        assert generator().sum() == 10


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: BlockMaskGenerator((1, 14), 3), "at least 2x2"),
        (lambda: BlockMaskGenerator(14, 197), "between 0 and 196"),
        (lambda: BlockMaskGenerator(14, 98, min_aspect=0), "min_aspect"),
        (lambda: BlockMaskGenerator(14, 98, min_aspect=0.5, max_aspect=0.4), "max_aspect"),
        (lambda: RandomMaskGenerator(4, 17), "between 0 and 16"),
        (lambda: build_mask_generator("grid", 4, 3), "mask_type"),
    ],
)
def test_bad_mask_settings_raise(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_collator_adds_one_mask_per_example():
    collator = MaskingDataCollator(BlockMaskGenerator(4, 6, min_num_patches=2, seed=0))
    examples = [{"pixel_values": torch.randn(3, 32, 32)} for _ in range(3)]
    batch = collator(examples)
    assert batch["pixel_values"].shape == (3, 3, 32, 32)
    assert batch["bool_masked_pos"].shape == (3, 16) and batch["bool_masked_pos"].dtype == torch.bool
    assert batch["bool_masked_pos"].sum(dim=1).tolist() == [6, 6, 6]


@pytest.mark.parametrize("generator", [BlockMaskGenerator(4, 6, min_num_patches=2, seed=0),
                                       RandomMaskGenerator(4, 6, seed=0)], ids=["block", "random"])
def test_dataloader_workers_draw_their_own_masks_reproducibly(generator):
    examples = [{"pixel_values": torch.zeros(3, 8, 8)} for _ in range(8)]

    def masks() -> list[torch.Tensor]:
        torch.manual_seed(0)
        loader = torch.utils.data.DataLoader(examples, batch_size=2, num_workers=2,
                                             collate_fn=MaskingDataCollator(generator))
        return [batch["bool_masked_pos"] for batch in loader]

    first = masks()
    # Batches 0 and 1 come from workers 0 and 1, which start as copies of the same generator.
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[2], first[3])
    assert all(torch.equal(a, b) for a, b in zip(first, masks()))  # the same again under the same torch seed


def test_stack_masks_flattens_in_raster_order():
    mask = np.zeros((2, 3), dtype=bool)
    mask[1, 0] = True
    assert stack_masks([mask]).tolist() == [[False, False, False, True, False, False]]


def test_image_processor_returns_block_masks():
    processor = CAEImageProcessorPil(return_bool_masked_pos=True, mask_seed=0)
    images = [
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (240, 300, 3), dtype=np.uint8)) for i in range(2)
    ]
    batch = processor(images, return_tensors="pt")
    assert batch["pixel_values"].shape == (2, 3, 224, 224)
    assert batch["bool_masked_pos"].shape == (2, 196) and batch["bool_masked_pos"].dtype == torch.bool
    assert batch["bool_masked_pos"].sum(dim=1).tolist() == [98, 98]
    again = CAEImageProcessorPil(return_bool_masked_pos=True, mask_seed=0)(images, return_tensors="pt")
    assert torch.equal(again["bool_masked_pos"], batch["bool_masked_pos"])
    assert "bool_masked_pos" not in CAEImageProcessorPil()(images, return_tensors="pt")


def test_image_processor_mask_options_and_serialisation(tmp_path):
    processor = CAEImageProcessorPil(
        crop_size={"height": 32, "width": 32},
        size={"shortest_edge": 36},
        patch_size=8,
        mask_type="random",
        num_masking_patches=5,
        mask_seed=1,
    )
    image = Image.new("RGB", (50, 40), color=(10, 200, 30))
    batch = processor([image], return_bool_masked_pos=True, return_tensors="pt")
    assert batch["bool_masked_pos"].shape == (1, 16) and int(batch["bool_masked_pos"].sum()) == 5
    processor.save_pretrained(tmp_path)
    reloaded = CAEImageProcessorPil.from_pretrained(tmp_path)
    assert reloaded.num_masking_patches == 5 and reloaded.mask_type == "random" and reloaded.patch_size == 8
    assert "__generators" not in (tmp_path / "preprocessor_config.json").read_text()


def test_model_draws_reproducible_masks_when_none_is_given():
    model = CAEForPreTraining(tiny_cae_config()).eval()
    pixel_values = torch.randn(3, 3, 32, 32)
    torch.manual_seed(7)
    first = model(pixel_values)
    torch.manual_seed(7)
    second = model(pixel_values)
    assert torch.equal(first.bool_masked_pos, second.bool_masked_pos)
    assert first.bool_masked_pos.sum(dim=1).tolist() == [6, 6, 6]
    assert torch.equal(first.logits, second.logits)


def test_model_random_mask_type():
    model = CAEForPreTraining(tiny_cae_config(mask_type="random", num_masking_patches=11)).eval()
    outputs = model(torch.randn(2, 3, 32, 32))
    assert outputs.bool_masked_pos.sum(dim=1).tolist() == [11, 11]
    assert outputs.logits.shape == (2, 11, 50)
