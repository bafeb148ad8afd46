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
            image; `mixing_ratio=1.0, mask_ratio=0.75` is exactly MAE. (MAE truncates the number of kept patches,
            this config rounds it: the two agree whenever N * (1 - mask_ratio) is whole, as at 0.75 on a 14 x 14
            or 16 x 16 grid, and differ by one patch otherwise, e.g. 20 against 19 at 0.9 on 14 x 14.)
        segment_embedding (`str`, defaults to `"encoder"`):
            Where a learnable per-slot (source image within the group) embedding is added. `"encoder"`: to each
            image's patch tokens before mixing, so the encoder is told every token's source (which can make
            homologous recognition trivial). `"decoder"`: to every patch token of an image's decoder sequence
            (its own tokens and its mask tokens) after unmixing; the encoder is not told the source, and since each
            decoder sequence holds one image it only tells the decoder the image's slot. `"none"`: nowhere.
        homologous_attention_layers (`list[int]`, *optional*):
            Encoder layers (0-based) that use homologous top-k attention during pre-training. `None` means every
            layer, `[]` none.
        homologous_topk (`int`, *optional*):
            Keys kept per patch query in homologous attention. `None` means the query's homologous share plus
            [CLS]: `num_kept / g + 1` (N * r + 1 without extra masking).
        homologous_contrastive_weight (`float`, defaults to 0.1):
            Weight of the homologous contrastive loss added to the reconstruction loss.
        homologous_contrastive_temperature (`float`, defaults to 0.1):
            Temperature of that supervised InfoNCE loss over cosine similarities (targets `"encoder_output"` and
            `"queries_keys"`; the `"attention_logits"` target uses the attention's own logits, whose scale is the
            attention's).
        homologous_contrastive_target (`str`, defaults to `"encoder_output"`):
            What the homologous contrastive term (supervised InfoNCE: for every patch token, the other tokens of its
            source image are positives, those of the group's other images negatives) is computed on.
            `"encoder_output"`: cosine similarities of the final encoder layer's patch tokens (after the final
            LayerNorm, through `homologous_projection_dim`'s head when set). `"attention_logits"`: every patch query's
            attention logits over the patch keys, per head, in each homologous attention layer (averaged over heads
            and layers), so that the quantity the top-k selection reads is itself trained to rank same-source keys
            first. `"queries_keys"`: the same, on cosine similarities of the queries and keys (per head) divided by
            the temperature. The last two need at least one homologous attention layer.
        homologous_projection_dim (`int`, *optional*):
            With `homologous_contrastive_target="encoder_output"`: width of a projection head (Linear, GELU, Linear;
            pre-training only, dropped downstream) between the encoder output and the contrastive term. `None`: no
            head, the encoder output itself.
        homologous_selection (`str`, defaults to `"per_head"`):
            How homologous attention picks the kept keys. `"per_head"`: every head keeps the `homologous_topk` keys of
            its own largest logits. `"head_mean"`: the keys are picked once per query from the logits averaged over
            the heads and every head attends to that same set, so each head's logits need only contribute to the
            ranking; the `"attention_logits"` and `"queries_keys"` contrastive targets are then computed on the
            head-averaged scores, which is what the selection reads.
        homologous_topk_schedule (`str`, defaults to `"constant"`):
            `"constant"`: every patch query keeps `homologous_topk` keys from the first step. `"linear"`: the number
            kept falls linearly from every key (global attention) at step 0 to `homologous_topk` at step
            `homologous_topk_anneal_steps`, then stays there. The step is the optimizer step the training loop passes
            with `MixedAEForPreTraining.set_homologous_training_step`; see there for what happens without it.
        homologous_topk_anneal_steps (`int`, defaults to 0):
            Length of the `"linear"` schedule in optimizer steps (> 0 for it; unused by `"constant"`).
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
    homologous_contrastive_target: str = "encoder_output"
    homologous_projection_dim: int | None = None
    homologous_selection: str = "per_head"
    homologous_topk_schedule: str = "constant"
    homologous_topk_anneal_steps: int = 0
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

    def resolved_homologous_topk(self, num_patches: int | None = None, training_step: int | None = None) -> int:
        """Keys kept per patch query; under the `"linear"` schedule, at optimizer step `training_step` (`None`: the
        schedule's end, as for evaluation and downstream use)."""
        topk = self.homologous_topk
        if topk is None:
            topk = self.num_kept(num_patches) // self.group_size + 1
        if self.homologous_topk_schedule == "linear" and training_step is not None:
            num_keys = 1 + self.num_kept(num_patches)
            progress = min(1.0, max(0, training_step) / self.homologous_topk_anneal_steps)
            topk = round(num_keys - (num_keys - topk) * progress)
        return topk

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
        if self.segment_embedding not in ("encoder", "decoder", "none"):
            raise ValueError(
                f"segment_embedding={self.segment_embedding!r} must be 'encoder', 'decoder' or 'none'."
            )
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
        targets = ("encoder_output", "attention_logits", "queries_keys")
        if self.homologous_contrastive_target not in targets:
            raise ValueError(
                f"homologous_contrastive_target={self.homologous_contrastive_target!r} must be one of {targets}."
            )
        if self.homologous_contrastive_target != "encoder_output" and self.homologous_attention_layers == []:
            raise ValueError(
                f"homologous_contrastive_target={self.homologous_contrastive_target!r} is computed in the homologous "
                "attention layers, but homologous_attention_layers=[] has none: list at least one layer, or use "
                "homologous_contrastive_target='encoder_output'."
            )
        if self.homologous_projection_dim is not None:
            if self.homologous_projection_dim < 1:
                raise ValueError(
                    f"homologous_projection_dim={self.homologous_projection_dim} must be a positive width, or None "
                    "for no projection head."
                )
            if self.homologous_contrastive_target != "encoder_output":
                raise ValueError(
                    f"homologous_projection_dim={self.homologous_projection_dim} projects the encoder output, but "
                    f"homologous_contrastive_target={self.homologous_contrastive_target!r}: set the target to "
                    "'encoder_output' or the projection to None."
                )
        if self.homologous_selection not in ("per_head", "head_mean"):
            raise ValueError(
                f"homologous_selection={self.homologous_selection!r} must be 'per_head' (each head keeps its own "
                "top-k keys) or 'head_mean' (one set per query, from the head-averaged logits)."
            )
        if self.homologous_topk_schedule not in ("constant", "linear"):
            raise ValueError(
                f"homologous_topk_schedule={self.homologous_topk_schedule!r} must be 'constant' or 'linear'."
            )
        if self.homologous_topk_anneal_steps < 0:
            raise ValueError(f"homologous_topk_anneal_steps={self.homologous_topk_anneal_steps} must be >= 0.")
        if self.homologous_topk_schedule == "linear" and self.homologous_topk_anneal_steps == 0:
            raise ValueError(
                "homologous_topk_schedule='linear' needs homologous_topk_anneal_steps > 0 (the optimizer steps over "
                "which the kept keys fall from all to homologous_topk), got 0."
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
