# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""MixedAE model configuration."""

from huggingface_hub.dataclasses import strict

from .configuration_masked_vit import MaskedViTConfig

# Fields a transformers ViTMAE checkpoint shares with MixedAE and that describe the network itself.
# Training-objective fields (mask_ratio, norm_pix_loss) mean something else under mixing and keep
# MixedAE's defaults unless the caller overrides them.
VIT_MAE_ARCHITECTURE_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "initializer_range",
    "layer_norm_eps",
    "image_size",
    "patch_size",
    "num_channels",
    "qkv_bias",
    "decoder_hidden_size",
    "decoder_num_hidden_layers",
    "decoder_num_attention_heads",
    "decoder_intermediate_size",
)


@strict
class MixedAEConfig(MaskedViTConfig):
    r"""
    Configuration of a MixedAE model (Chen et al., "Mixed Autoencoder for Self-supervised Visual Representation
    Learning", CVPR 2023). Defaults give the ViT-B/16 encoder with MAE's 8-layer, 512-wide decoder. The defaults of
    the homologous parts (segment embedding, homologous layers and top-k, contrastive weight and temperature) are the
    best arm of the project's ablation grid (`docs/ablations.md`).

    Args:
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, hidden_act, layer_norm_eps:
            Encoder width, depth, heads, MLP width, activation and LayerNorm epsilon.
        hidden_dropout_prob, attention_probs_dropout_prob, drop_path_rate:
            Dropout on residual branches, on attention weights, and the stochastic-depth rate of the last block
            (linearly increasing from 0); all 0 for pre-training.
        initializer_range: Standard deviation of the normal init of [CLS], mask token and segment embeddings.
        image_size, patch_size, num_channels: Input geometry; `image_size` may be an int or (height, width).
        qkv_bias: Whether the query, key and value projections have a bias.
        decoder_hidden_size, decoder_num_hidden_layers, decoder_num_attention_heads, decoder_intermediate_size:
            Size of the unmixing decoder.
        mixing_ratio (`float`, defaults to 0.25):
            r: every image shows a fraction r of the kept positions of its group of g = 1/r images. 1.0 is plain MAE.
        mask_ratio (`float`, defaults to 0.0):
            Fraction of positions hidden from every image of a group before mixing. Mixing alone hides 1 - r of each
            image; `mixing_ratio=1.0, mask_ratio=0.75` is exactly MAE.
        segment_embedding (`str`, defaults to `"encoder"`):
            `"encoder"` adds a learnable per-slot embedding to each image's patch tokens before mixing; `"none"`.
        homologous_attention_layers (`list[int]`, *optional*):
            Encoder layers (0-based) that use homologous top-k attention during pre-training. `None` means every
            layer, `[]` none.
        homologous_topk (`int`, *optional*):
            Keys kept per patch query in homologous attention. `None` means the query's homologous share plus
            [CLS]: `num_kept / g + 1` (N * r + 1 without extra masking).
        homologous_contrastive_weight (`float`, defaults to 0.1):
            Weight of the homologous contrastive loss added to the reconstruction loss.
        homologous_contrastive_temperature (`float`, defaults to 0.1):
            Temperature of that supervised InfoNCE loss over cosine similarities.
        norm_pix_loss (`bool`, defaults to `True`):
            Reconstruct per-patch normalised pixels (MAE's best setting).
        classifier_pooling (`str`, defaults to `"mean"`):
            Pooling of `MixedAEForImageClassification`: `"mean"` (patch tokens + `fc_norm`, MAE fine-tuning) or
            `"cls"`.

    Example:

    ```python
    >>> from transformers_mixedae import MixedAEConfig, MixedAEForPreTraining
    >>> config = MixedAEConfig(hidden_size=192, num_hidden_layers=6, num_attention_heads=3, intermediate_size=768)
    >>> model = MixedAEForPreTraining(config)
    ```
    """

    model_type = "mixedae"
    also_accepted_model_types = ("vit_mae",)
    size_fields = MaskedViTConfig.size_fields + (
        "decoder_hidden_size", "decoder_num_attention_heads", "decoder_intermediate_size", "decoder_num_hidden_layers"
    )
    width_head_fields = MaskedViTConfig.width_head_fields + (("decoder_hidden_size", "decoder_num_attention_heads"),)

    # The encoder fields (hidden_size ... qkv_bias) are MaskedViTConfig's.
    decoder_hidden_size: int = 512
    decoder_num_hidden_layers: int = 8
    decoder_num_attention_heads: int = 16
    decoder_intermediate_size: int = 2048
    mixing_ratio: float | int = 0.25
    mask_ratio: float | int = 0.0
    segment_embedding: str = "encoder"
    homologous_attention_layers: list[int] | None = None
    homologous_topk: int | None = None
    homologous_contrastive_weight: float | int = 0.1
    homologous_contrastive_temperature: float | int = 0.1
    norm_pix_loss: bool = True
    classifier_pooling: str = "mean"

    # ------------------------------------------------------------------ derived quantities
    @property
    def group_size(self) -> int:
        """g = 1 / mixing_ratio: images mixed into one sequence."""
        return round(1.0 / self.mixing_ratio)

    def num_kept(self, num_patches: int | None = None) -> int:
        """Positions kept per group (shared out among its g images)."""
        num_patches = self.num_patches if num_patches is None else num_patches
        return round(num_patches * (1.0 - self.mask_ratio))

    def resolved_homologous_attention_layers(self) -> list[int]:
        if self.homologous_attention_layers is None:
            return list(range(self.num_hidden_layers))
        return sorted(set(self.homologous_attention_layers))

    def resolved_homologous_topk(self, num_patches: int | None = None) -> int:
        if self.homologous_topk is not None:
            return self.homologous_topk
        return self.num_kept(num_patches) // self.group_size + 1

    # ------------------------------------------------------------------ validation
    def validate_mixing(self):
        if not 0.0 < self.mixing_ratio <= 1.0:
            raise ValueError(f"mixing_ratio={self.mixing_ratio} must be in (0, 1]; use 1.0 for plain MAE.")
        group_size = 1.0 / self.mixing_ratio
        if abs(group_size - round(group_size)) > 1e-6:
            raise ValueError(
                f"1/mixing_ratio must be an integer (images per group), got mixing_ratio={self.mixing_ratio} "
                f"(1/mixing_ratio={group_size:g}); use 1.0, 0.5, 0.25, 0.2, ..."
            )
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio={self.mask_ratio} must be in [0, 1).")
        num_kept = self.num_kept()
        if num_kept < self.group_size or num_kept % self.group_size:
            raise ValueError(
                f"the {num_kept} kept positions (num_patches={self.num_patches}, mask_ratio={self.mask_ratio}) "
                f"are not divisible by the group size {self.group_size} (mixing_ratio={self.mixing_ratio}): "
                "change mask_ratio or image_size/patch_size so every image of a group owns the same number."
            )
        if num_kept // self.group_size >= self.num_patches:
            raise ValueError(
                f"mixing_ratio={self.mixing_ratio} with mask_ratio={self.mask_ratio} hides no patch of an image, so "
                "there is nothing to reconstruct (the loss would be undefined): with mixing_ratio=1.0 (plain MAE) "
                "set a mask_ratio that hides at least one patch, e.g. 0.75."
            )
        if self.segment_embedding not in ("encoder", "none"):
            raise ValueError(f"segment_embedding={self.segment_embedding!r} must be 'encoder' or 'none'.")
        if self.classifier_pooling not in ("mean", "cls"):
            raise ValueError(f"classifier_pooling={self.classifier_pooling!r} must be 'mean' or 'cls'.")

    def validate_homologous(self):
        if self.homologous_attention_layers is not None:
            out_of_range = [i for i in self.homologous_attention_layers if not 0 <= i < self.num_hidden_layers]
            if out_of_range:
                raise ValueError(
                    f"homologous_attention_layers={self.homologous_attention_layers} has indices {out_of_range} "
                    f"outside [0, {self.num_hidden_layers - 1}] (num_hidden_layers={self.num_hidden_layers})."
                )
        num_keys = 1 + self.num_kept()
        # (validate_mixing, which runs after this validator, names an out-of-range mask_ratio itself.)
        if self.homologous_topk is not None and 0 <= self.mask_ratio < 1 and not 1 <= self.homologous_topk <= num_keys:
            raise ValueError(
                f"homologous_topk={self.homologous_topk} must be in [1, {num_keys}] (the number of keys: "
                f"[CLS] + {num_keys - 1} kept positions)."
            )
        if self.homologous_contrastive_weight < 0:
            raise ValueError(
                f"homologous_contrastive_weight={self.homologous_contrastive_weight} must be >= 0."
            )
        if self.homologous_contrastive_temperature <= 0:
            raise ValueError(
                f"homologous_contrastive_temperature={self.homologous_contrastive_temperature} must be > 0."
            )

    # ------------------------------------------------------------------ loading, and starting from MAE weights
    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """Also accepts a transformers ViTMAE config (`model_type` "vit_mae"): its architecture fields are kept,
        MixedAE's own fields take their defaults or the keyword overrides."""
        if config_dict.get("model_type") == "vit_mae":
            config_dict = {key: config_dict[key] for key in VIT_MAE_ARCHITECTURE_FIELDS if key in config_dict}
            config_dict["model_type"] = cls.model_type
        return super().from_dict(config_dict, **kwargs)


__all__ = ["MixedAEConfig"]
