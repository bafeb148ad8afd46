"""transformers_mixedae.models.presets: the registered ViT sizes and the config keyword arguments made from them."""

import pytest
from transformers import ViTConfig, ViTMAEConfig

from transformers_mixedae import CAEConfig, MixedAEConfig
from transformers_mixedae.models.presets import VIT_PRESETS, ViTSize, vit_config_kwargs, vit_preset, vit_size_name


def test_presets_are_the_vit_paper_sizes():
    assert {name: (size.hidden_size, size.num_hidden_layers, size.num_attention_heads, size.patch_size)
            for name, size in VIT_PRESETS.items()} == {
        "tiny": (192, 12, 3, 16), "small": (384, 12, 6, 16), "base": (768, 12, 12, 16),
        "large": (1024, 24, 16, 16), "huge": (1280, 32, 16, 14),
    }
    for size in VIT_PRESETS.values():
        assert size.intermediate_size == 4 * size.hidden_size and size.image_size == 224


@pytest.mark.parametrize("config_class", [ViTConfig, ViTMAEConfig, MixedAEConfig, CAEConfig])
def test_config_kwargs_build_every_vit_family_config(config_class):
    config = config_class(**vit_config_kwargs("small", config_class.model_type, patch_size=8))
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (384, 12, 6)
    assert (config.intermediate_size, config.patch_size, config.image_size) == (1536, 8, 224)


def test_unknown_names_and_other_configs_are_refused():
    with pytest.raises(ValueError, match="tiny, small, base, large, huge"):
        vit_preset("giant")
    with pytest.raises(ValueError, match="intermediate_size"):
        vit_config_kwargs("base", "dinov2")  # mlp_ratio instead of intermediate_size
    with pytest.raises(ValueError, match="multiple of num_attention_heads"):
        ViTSize(hidden_size=100, num_hidden_layers=2, num_attention_heads=3, intermediate_size=400)


def test_a_toy_size_and_name_lookup():
    toy = ViTSize(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, patch_size=4,
                  image_size=16)
    assert toy.num_patches == 16
    assert list(toy.encoder_kwargs()) == ["hidden_size", "num_hidden_layers", "num_attention_heads",
                                          "intermediate_size"]
    assert vit_size_name(768, 12) == "base" and vit_size_name(32, 2) is None
