"""Model inputs, as properties: `pixel_values` (and CAE's `bool_masked_pos`) of any batch size, channel count and
size are either refused with an error naming the problem or give a finite loss; losses are float32 under autocast."""

import pytest
import torch
from helpers import single_torch_thread, tiny_models  # noqa: F401 (fixture)
from hypothesis import given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.usefixtures("single_torch_thread")

def input_problem(batch: int, channels: int, height: int, width: int, interpolate: bool) -> str | None:
    """What the tiny models must say about `pixel_values` of this shape, or None when it is fine."""
    if batch == 0:
        return "batch size 0"
    if channels != 3:
        return "num_channels=3"
    if not interpolate and (height, width) != (16, 16):
        return "doesn't match model"
    if interpolate and (height % 4 or width % 4):
        return "divisible by the patch size"
    return None


SHAPES = dict(batch=st.integers(0, 9), channels=st.sampled_from([3, 3, 3, 1, 4]),
              height=st.sampled_from([16, 16, 8, 12, 18, 24]), width=st.sampled_from([16, 16, 8, 12, 18, 24]),
              interpolate=st.booleans())
INPUT_EXAMPLES = settings(max_examples=100, deadline=None, database=None)


@INPUT_EXAMPLES
@given(**SHAPES)
def test_mixedae_inputs_are_rejected_naming_the_problem_or_give_a_finite_loss(batch, channels, height, width,
                                                                              interpolate):
    model = tiny_models()[0]
    pixel_values = torch.randn(batch, channels, height, width)
    problem = input_problem(batch, channels, height, width, interpolate)
    num_patches = (height // 4) * (width // 4)
    if problem is None and batch % 4:
        problem = f"batch size {batch} is not divisible by the group size 4"
    elif problem is None and num_patches % 4:
        problem = f"{num_patches} patches with mask_ratio=0.0 keep {num_patches} positions"
    if problem is not None:
        with pytest.raises(ValueError, match=problem):
            model(pixel_values, interpolate_pos_encoding=interpolate)
        return
    outputs = model(pixel_values, interpolate_pos_encoding=interpolate)
    assert torch.isfinite(outputs.loss) and outputs.logits.shape == (batch, num_patches, 48)


@INPUT_EXAMPLES
@given(**SHAPES, data=st.data())
def test_cae_inputs_and_masks_are_rejected_naming_the_problem_or_give_a_finite_loss(batch, channels, height, width,
                                                                                    interpolate, data):
    model = tiny_models()[1]
    pixel_values = torch.randn(batch, channels, height, width)
    problem = input_problem(batch, channels, height, width, interpolate)
    num_patches = (height // 4) * (width // 4)
    bool_masked_pos = None
    if problem is None and data.draw(st.booleans(), label="explicit mask"):
        counts = data.draw(st.lists(st.integers(0, num_patches), min_size=batch, max_size=batch), label="counts")
        rows = data.draw(st.sampled_from([batch, batch + 1]), label="rows")
        bool_masked_pos = torch.zeros(rows, num_patches, dtype=torch.bool)
        for row, count in zip(bool_masked_pos, counts + counts[:1]):
            row[torch.randperm(num_patches)[:count]] = True
        if rows != batch:
            problem = "`bool_masked_pos` must have shape"
        elif len(set(counts)) > 1:
            problem = "same number of masked patches"
        elif not 0 < counts[0] < num_patches:
            problem = "at least one masked and one visible patch"
    if problem is not None:
        with pytest.raises(ValueError, match=problem):
            model(pixel_values, bool_masked_pos=bool_masked_pos, interpolate_pos_encoding=interpolate)
        return
    outputs = model(pixel_values, bool_masked_pos=bool_masked_pos, interpolate_pos_encoding=interpolate)
    assert torch.isfinite(outputs.loss) and outputs.logits.shape[0] == batch


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_losses_are_computed_in_float32_under_autocast(dtype):
    mixedae, cae = tiny_models()
    pixel_values = torch.randn(4, 3, 16, 16)
    with torch.autocast("cpu", dtype=dtype):
        mixedae_outputs = mixedae(pixel_values)
        cae_outputs = cae(pixel_values)
    assert mixedae_outputs.logits.dtype == dtype and cae_outputs.logits.dtype == dtype  # autocast was on
    for loss in (mixedae_outputs.loss, cae_outputs.loss, cae_outputs.main_loss, cae_outputs.align_loss):
        assert loss.dtype == torch.float32 and torch.isfinite(loss)

