# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""CAE (Context Autoencoder, v1) model configuration."""

from huggingface_hub.dataclasses import strict

from .configuration_masked_vit import MaskedViTConfig

MASK_TYPES = ("block", "random")
TARGETS = ("tokens", "pixels")
CLASSIFIER_POOLINGS = ("mean", "cls")


@strict
class CAEConfig(MaskedViTConfig):
    r"""
    Configuration of a CAE model (Chen et al., "Context Autoencoder for Self-Supervised Representation Learning",
    IJCV 2023, arXiv:2202.03026). Defaults give the official ViT-B/16 pre-training model: a 12-layer encoder with
    LayerScale, a 4-layer cross-attention regressor and a 4-layer decoder predicting 8192 DALL-E token ids, 98 of
    196 patches masked block-wise.

    Args:
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, hidden_act, layer_norm_eps:
            Encoder width, depth, heads, MLP width, activation (exact-erf GELU) and LayerNorm epsilon (1e-6 in every
            official model). The official ViT-S uses 12 heads (head dim 32), ViT-L 16.
        hidden_dropout_prob, attention_probs_dropout_prob:
            Dropout on residual branches and attention weights (0 in every official recipe).
        drop_path_rate (`float`, defaults to 0.1):
            Stochastic depth of the last block of each part (encoder, regressor, decoder), linearly increasing from
            0 within each part, as the official pre-training and fine-tuning scripts.
        initializer_range: Standard deviation of the truncated normal of the patch projection, [CLS] and mask token.
        image_size, patch_size, num_channels: Input geometry; `image_size` may be an int or (height, width).
        qkv_bias (`bool`, defaults to `True`):
            Bias on the query and value projections (never on the key projection, as BEiT/CAE).
        layer_scale_init_value (`float`, *optional*, defaults to 0.1):
            Initial LayerScale of the encoder blocks (official: 0.1 for ViT-S/B, 1e-5 for ViT-L); `None` or a value
            <= 0 means no LayerScale.
        decoder_hidden_size (`int`, defaults to 768):
            Width of the regressor and decoder. When it differs from `hidden_size`, a Linear + LayerNorm projects the
            encoder output (official `encoder_to_regresser`).
        regressor_num_layers, decoder_num_layers, decoder_num_attention_heads:
            Depth of the latent contextual regressor (cross-attention blocks), depth of the decoder, heads of both.
        decoder_intermediate_size (`int`, *optional*):
            MLP width of regressor and decoder blocks; `None` means `4 * decoder_hidden_size` (official mlp ratio).
        decoder_layer_scale_init_value (`float`, defaults to 0.1):
            Initial LayerScale of regressor and decoder blocks. The regressor always has its LayerScale parameters
            (frozen at 1 when the value is <= 0, as the official code); decoder blocks have none when it is <= 0.
        vocab_size (`int`, defaults to 8192):
            Number of tokenizer classes predicted for each masked patch (DALL-E dVAE: 8192).
        mask_type (`str`, defaults to `"block"`):
            Masks drawn inside the model when `bool_masked_pos` is not passed: `"block"` (BEiT block-wise, the official
            setting) or `"random"` (uniform without replacement).
        num_masking_patches (`int`, defaults to 98):
            Exact number of masked patches per image at `image_size` (official: 98 of 196).
        mask_min_num_patches, mask_max_num_patches, mask_min_aspect, mask_max_aspect:
            Block masking: minimum / maximum area of one block (16 / `num_masking_patches`) and its aspect-ratio range
            (0.3 to 1/0.3).
        target (`str`, defaults to `"tokens"`):
            `"tokens"`: cross-entropy on tokenizer ids (official). `"pixels"`: **non-official variant**, MSE on the
            (per-patch normalised) pixels of the masked patches, for users without a tokenizer.
        norm_pix_loss (`bool`, defaults to `True`):
            With `target="pixels"`, normalise every target patch by its own mean and standard deviation.
        align_loss_weight (`float`, defaults to 2.0):
            Weight of the MSE between predicted and target latents added to the reconstruction loss.
        classifier_pooling (`str`, defaults to `"mean"`):
            Pooling of `CAEForImageClassification`: `"mean"` (mean of patch tokens + `fc_norm`, the official
            fine-tuning) or `"cls"` (final [CLS] token, the official linear probe).

    Example:

    ```python
    >>> from transformers_mixedae import CAEConfig, CAEForPreTraining
    >>> config = CAEConfig(hidden_size=384, num_attention_heads=12, intermediate_size=1536)  # ViT-S, Dd 768
    >>> model = CAEForPreTraining(config)
    ```
    """

    model_type = "cae"
    size_fields = MaskedViTConfig.size_fields + (
        "decoder_hidden_size", "decoder_num_attention_heads", "decoder_intermediate_size", "regressor_num_layers",
        "decoder_num_layers",
    )
    width_head_fields = MaskedViTConfig.width_head_fields + (("decoder_hidden_size", "decoder_num_attention_heads"),)

    # The encoder fields (hidden_size ... qkv_bias) are MaskedViTConfig's; only the stochastic depth differs.
    drop_path_rate: float | int = 0.1
    layer_scale_init_value: float | int | None = 0.1
    decoder_hidden_size: int = 768
    regressor_num_layers: int = 4
    decoder_num_layers: int = 4
    decoder_num_attention_heads: int = 12
    decoder_intermediate_size: int | None = None
    decoder_layer_scale_init_value: float | int = 0.1
    vocab_size: int = 8192
    mask_type: str = "block"
    num_masking_patches: int = 98
    mask_min_num_patches: int = 16
    mask_max_num_patches: int | None = None
    mask_min_aspect: float | int = 0.3
    mask_max_aspect: float | int | None = None
    target: str = "tokens"
    norm_pix_loss: bool = True
    align_loss_weight: float | int = 2.0
    classifier_pooling: str = "mean"

    # ------------------------------------------------------------------ derived quantities
    @property
    def resolved_decoder_intermediate_size(self) -> int:
        if self.decoder_intermediate_size is None:
            return 4 * self.decoder_hidden_size
        return self.decoder_intermediate_size

    @property
    def uses_projection(self) -> bool:
        """Whether a Linear + LayerNorm maps encoder latents to the regressor width."""
        return self.decoder_hidden_size != self.hidden_size

    # ------------------------------------------------------------------ validation
    def validate_masking(self):
        if self.mask_type not in MASK_TYPES:
            raise ValueError(f"mask_type={self.mask_type!r} must be one of {MASK_TYPES}.")
        if not 0 < self.num_masking_patches < self.num_patches:
            raise ValueError(
                f"num_masking_patches={self.num_masking_patches} must be between 1 and {self.num_patches - 1} "
                f"(image_size={self.image_size} and patch_size={self.patch_size} give {self.num_patches} patches); "
                "the encoder needs visible patches and the regressor masked ones."
            )
        if self.mask_min_num_patches < 1:
            raise ValueError(f"mask_min_num_patches={self.mask_min_num_patches} must be >= 1.")
        if self.mask_max_num_patches is not None and self.mask_max_num_patches < 1:
            raise ValueError(f"mask_max_num_patches={self.mask_max_num_patches} must be >= 1 or None.")
        if self.mask_min_aspect <= 0:
            raise ValueError(f"mask_min_aspect={self.mask_min_aspect} must be > 0.")
        if self.mask_max_aspect is not None and self.mask_max_aspect < self.mask_min_aspect:
            raise ValueError(
                f"mask_max_aspect={self.mask_max_aspect} must be >= mask_min_aspect={self.mask_min_aspect} (or None "
                "for 1 / mask_min_aspect)."
            )
        if self.mask_max_aspect is None and self.mask_min_aspect > 1:
            raise ValueError(
                f"mask_min_aspect={self.mask_min_aspect} > 1 with mask_max_aspect=None, which means 1 / mask_min_aspect "
                f"= {1 / self.mask_min_aspect:g}, below the minimum: use mask_min_aspect <= 1, or set mask_max_aspect."
            )
        if self.mask_type == "block" and min(self.grid_size) < 2:
            raise ValueError(
                f"block masking needs a patch grid of at least 2x2, got {self.grid_size[0]}x{self.grid_size[1]} "
                f"(image_size={self.image_size}, patch_size={self.patch_size}); use mask_type='random'."
            )

    def validate_objective(self):
        if self.target not in TARGETS:
            raise ValueError(
                f"target={self.target!r} must be 'tokens' (official: tokenizer ids) or 'pixels' (non-official "
                "normalised-pixel variant)."
            )
        if self.target == "tokens" and self.vocab_size < 2:
            raise ValueError(f"vocab_size={self.vocab_size} must be >= 2 with target='tokens'.")
        if self.align_loss_weight < 0:
            raise ValueError(f"align_loss_weight={self.align_loss_weight} must be >= 0.")
        if self.classifier_pooling not in CLASSIFIER_POOLINGS:
            raise ValueError(f"classifier_pooling={self.classifier_pooling!r} must be one of {CLASSIFIER_POOLINGS}.")


__all__ = ["CAEConfig"]
