"""The optional DALL-E tokenizer wrapper, with randomly initialised encoders (no OpenAI weights needed).

The `dall_e` tests run only where the PyPI package `dall-e` is importable (`pip install --no-deps dall-e`).
"""

import sys

import numpy as np
import pytest
import torch
from helpers import single_torch_thread, tiny_cae_config  # noqa: F401 (fixture)
from PIL import Image
from torch import nn

from transformers_mixedae import CAEForPreTraining
from transformers_mixedae.models.tokenizer_dalle import DallETokenizer, dalle_tokenizer_view, load_dalle_encoder, map_pixels

pytestmark = pytest.mark.usefixtures("single_torch_thread")


class StandInEncoder(nn.Module):
    """Same interface as `dall_e.Encoder`: (B, 3, H, W) mapped pixels -> (B, vocab_size, H/8, W/8) logits."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.conv = nn.Conv2d(3, vocab_size, kernel_size=8, stride=8)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.conv(pixel_values)


def random_images(count: int, size=(150, 120)) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(count)]


def test_map_pixels_squeezes_into_0_1_to_0_9():
    assert torch.allclose(map_pixels(torch.tensor([0.0, 0.5, 1.0])), torch.tensor([0.1, 0.5, 0.9]))


def test_tokenizer_view_is_a_lanczos_resize_to_112_in_unit_range():
    images = random_images(2)
    views = dalle_tokenizer_view(images)
    assert views.shape == (2, 3, 112, 112) and views.min() >= 0 and views.max() <= 1
    expected = np.asarray(images[0].resize((112, 112), Image.Resampling.LANCZOS), dtype=np.float32) / 255
    assert torch.allclose(views[0].permute(1, 2, 0), torch.from_numpy(expected))


def test_tokenizer_view_converts_images_as_the_encoder_view_does():
    transparent = Image.new("RGBA", (20, 20), (0, 0, 0, 0))  # composited on white, not black with alpha dropped
    assert torch.equal(dalle_tokenizer_view([transparent]), torch.ones(1, 3, 112, 112))


def test_token_ids_are_the_argmax_of_the_encoder_on_mapped_pixels():
    encoder = StandInEncoder(vocab_size=64)
    tokenizer = DallETokenizer(encoder)
    views = dalle_tokenizer_view(random_images(3))
    ids = tokenizer(views)
    assert ids.shape == (3, 196) and ids.dtype == torch.long
    with torch.no_grad():
        expected = encoder(views * 0.8 + 0.1).argmax(dim=1).flatten(1)
    assert torch.equal(ids, expected)
    assert tokenizer.vocab_size == 64
    assert not any(parameter.requires_grad for parameter in tokenizer.parameters())
    tokenizer.train()
    assert not tokenizer.encoder.training


def test_tokenizer_rejects_normalised_or_misshaped_views():
    tokenizer = DallETokenizer(StandInEncoder(vocab_size=8))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        tokenizer(torch.randn(1, 3, 112, 112))
    with pytest.raises(ValueError, match="batch, 3, height, width"):
        tokenizer(torch.rand(3, 112, 112))


def test_token_ids_are_cae_labels():
    config = tiny_cae_config()  # 4x4 patch grid, vocab 50: a 32 px tokenizer view gives 4x4 ids
    tokenizer = DallETokenizer(StandInEncoder(vocab_size=config.vocab_size))
    labels = tokenizer(dalle_tokenizer_view(random_images(2), size=32))
    model = CAEForPreTraining(config)
    outputs = model(torch.randn(2, 3, 32, 32), labels=labels)
    assert labels.shape == (2, config.num_patches) and torch.isfinite(outputs.loss)


def test_loading_needs_the_dall_e_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "dall_e", None)
    with pytest.raises(ImportError, match="pip install --no-deps dall-e"):
        load_dalle_encoder(tmp_path / "encoder.pkl")


def small_dalle_encoder():
    dall_e = pytest.importorskip("dall_e")
    # The smallest configuration its validators allow; random weights (the real ones come from OpenAI's file).
    return dall_e.Encoder(n_hid=64, n_blk_per_group=1, vocab_size=512)


def test_wrapper_with_a_random_dall_e_encoder():
    encoder = small_dalle_encoder()
    tokenizer = DallETokenizer(encoder)
    views = dalle_tokenizer_view(random_images(2))
    ids = tokenizer(views)
    assert ids.shape == (2, 196) and 0 <= int(ids.min()) and int(ids.max()) < 512
    dall_e = sys.modules["dall_e"]
    with torch.no_grad():
        assert torch.equal(ids, encoder(dall_e.map_pixels(views)).argmax(dim=1).flatten(1))


def test_load_dall_e_weights_from_a_state_dict_or_a_trusted_pickle(tmp_path, monkeypatch):
    encoder = small_dalle_encoder()
    dall_e = sys.modules["dall_e"]
    # A state dict loads safely into a fresh Encoder (built here with the same small sizes).
    monkeypatch.setattr(dall_e, "Encoder", lambda: type(encoder)(n_hid=64, n_blk_per_group=1, vocab_size=512))
    torch.save(encoder.state_dict(), tmp_path / "encoder_state.pt")
    views = dalle_tokenizer_view(random_images(1))
    expected = DallETokenizer(encoder)(views)
    assert torch.equal(DallETokenizer.from_file(tmp_path / "encoder_state.pt")(views), expected)
    # OpenAI's encoder.pkl is a pickled module: refused unless the caller trusts the file.
    torch.save(encoder, tmp_path / "encoder.pkl")
    with pytest.raises(ValueError, match="allow_unsafe_pickle=True"):
        load_dalle_encoder(tmp_path / "encoder.pkl")
    assert torch.equal(DallETokenizer.from_file(tmp_path / "encoder.pkl", allow_unsafe_pickle=True)(views), expected)
