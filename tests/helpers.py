"""Tiny configurations shared by the tests (<= 2 layers, < 1M parameters)."""

from transformers_mixedae import MixedAEConfig


def tiny_mixedae_config(**overrides) -> MixedAEConfig:
    values = dict(
        image_size=32,
        patch_size=4,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        decoder_hidden_size=16,
        decoder_num_hidden_layers=2,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=20,
        attn_implementation="eager",
    )
    values.update(overrides)
    return MixedAEConfig(**values)


def tiny_mae_mode_overrides() -> dict:
    """MixedAE settings that reduce it to MAE."""
    return dict(
        mixing_ratio=1.0,
        mask_ratio=0.75,
        segment_embedding="none",
        homologous_attention_layers=[],
        homologous_contrastive_weight=0.0,
    )
