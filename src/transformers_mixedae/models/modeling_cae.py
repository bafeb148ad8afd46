# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""PyTorch CAE (Context Autoencoder v1, Chen et al., IJCV 2023, arXiv:2202.03026).

Computes what the official code (github.com/Atten4Vis/CAE, `ContextAutoencoderViT`) computes, with transformers
module names (see `convert_cae_checkpoint.py` for the mapping):

1. encoder F: BEiT-style pre-norm ViT with LayerScale, q/v bias without k bias, frozen sin-cos positions (row in the
   first half), run on the visible patches only ([CLS] first);
2. alignment target: the same encoder (same weights, no EMA, no copy) on the masked patches under `no_grad`, run
   second and in the current train/eval mode, its final-LayerNorm output without [CLS];
3. projection (Linear + LayerNorm) from the encoder width to the regressor width, only when they differ;
4. latent contextual regressor H: mask-token queries cross-attend to [visible latents, current queries]; positions are
   added to queries and keys, not values; the MLP sub-layer is post-norm; LayerScale is always present;
5. decoder G: pre-norm blocks on the masked positions only, then an 8192-way head (official) or a pixel head
   (non-official variant);
6. losses: cross-entropy on token ids + `align_loss_weight` * MSE(predicted latents, target latents).
"""

from dataclasses import dataclass

import torch
import transformers.initialization as init
from torch import nn
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, auto_docstring, logging
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_cae import CAEConfig
from .masking import mask_generator_from_config, stack_masks
from .modeling_masked_vit import (
    BackboneOnEncoder,
    ImageClassifierOnEncoder,
    MaskedViTPreTrainedModel,
    final_layernorm,
    hub_kwargs,
)
from .vit_layers import (
    DropPath,
    ViTAttention,
    ViTEmbeddings,
    ViTLayer,
    ViTMLP,
    drop_path_rates,
    fixed,
    init_linear_and_layernorm,
    patchify,
    sincos_2d_position_embedding,
    xavier_uniform_bound_for_fused_qkv,
)

logger = logging.get_logger(__name__)

# Official fine-tuning scales the classifier's initial weights down by this factor (BEiT/CAE `init_scale`).
CLASSIFIER_INIT_SCALE = 0.001
# Marks the q/k/v projections of encoder/decoder blocks (value: the block width) for the fused-qkv xavier bound.
FUSED_QKV_WIDTH_ATTRIBUTE = "fused_qkv_width"


# ---------------------------------------------------------------------------------------------- outputs
@dataclass
class CAEModelOutput(BaseModelOutputWithPooling):
    r"""
    Output of `CAEModel`: the fields of transformers' `BaseModelOutputWithPooling`.

    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, 1 + num_visible_patches, hidden_size)`):
        Encoder output after the final LayerNorm ([CLS] first). Without `bool_masked_pos` every patch is visible.
    pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
        The [CLS] token of `last_hidden_state` (the official linear-probe feature).
    hidden_states, attentions: as in every transformers model (`attentions` needs `attn_implementation="eager"`).
    """


@dataclass
class CAEForPreTrainingOutput(ModelOutput):
    r"""
    Output of `CAEForPreTraining`. Masked positions are always in batch-major raster order.

    loss (`torch.FloatTensor` of shape `()`, *optional*):
        `main_loss + align_loss_weight * align_loss`; `None` when `target="tokens"` and no `labels` were given.
    main_loss (`torch.FloatTensor` of shape `()`, *optional*):
        Cross-entropy on the masked token ids (`target="tokens"`, official) or MSE on the normalised pixels of the
        masked patches (`target="pixels"`, non-official).
    align_loss (`torch.FloatTensor` of shape `()`):
        MSE between `predicted_latents` and `target_latents`.
    logits (`torch.FloatTensor` of shape `(batch_size, num_masked, vocab_size)` or `(batch_size, num_masked,
    patch_size**2 * num_channels)`):
        Decoder predictions for the masked patches.
    predicted_latents (`torch.FloatTensor` of shape `(batch_size, num_masked, decoder_hidden_size)`):
        Regressor output (after its final LayerNorm) for the masked patches.
    target_latents (`torch.FloatTensor` of shape `(batch_size, num_masked, decoder_hidden_size)`):
        Encoder output on the masked patches (no gradient), projected to the regressor width.
    bool_masked_pos (`torch.BoolTensor` of shape `(batch_size, num_patches)`):
        The mask used (True = masked), drawn inside the model when it was not passed.
    hidden_states, attentions: of the encoder pass over the visible patches.
    """

    loss: torch.FloatTensor | None = None
    main_loss: torch.FloatTensor | None = None
    align_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    predicted_latents: torch.FloatTensor | None = None
    target_latents: torch.FloatTensor | None = None
    bool_masked_pos: torch.BoolTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


# ---------------------------------------------------------------------------------------------- 1. masking
def grid_of(pixel_values: torch.Tensor, patch_size: int) -> tuple[int, int]:
    return pixel_values.shape[2] // patch_size, pixel_values.shape[3] // patch_size


def select_tokens(tokens: torch.Tensor, selection: torch.Tensor) -> torch.Tensor:
    """`(B, N, D)` tokens where `selection` `(B, N)` is True, in raster order -> `(B, n, D)` (same n in every row)."""
    batch_size, _, dim = tokens.shape
    return tokens[selection].reshape(batch_size, -1, dim)


def check_bool_masked_pos(bool_masked_pos: torch.Tensor, batch_size: int, grid: tuple[int, int]) -> torch.Tensor:
    """Validate a mask and return it as a `(batch_size, num_patches)` bool tensor."""
    num_patches = grid[0] * grid[1]
    if not isinstance(bool_masked_pos, torch.Tensor):
        bool_masked_pos = torch.as_tensor(bool_masked_pos)
    if bool_masked_pos.ndim == 3 and tuple(bool_masked_pos.shape[1:]) == tuple(grid):
        bool_masked_pos = bool_masked_pos.flatten(1)
    if tuple(bool_masked_pos.shape) != (batch_size, num_patches):
        raise ValueError(
            f"`bool_masked_pos` must have shape (batch_size, num_patches) = ({batch_size}, {num_patches}) or "
            f"({batch_size}, {grid[0]}, {grid[1]}), got {tuple(bool_masked_pos.shape)}."
        )
    if bool_masked_pos.dtype != torch.bool:
        if bool_masked_pos.is_floating_point() or not ((bool_masked_pos == 0) | (bool_masked_pos == 1)).all():
            raise ValueError("`bool_masked_pos` must be boolean or integer 0/1 (1 = masked).")
        bool_masked_pos = bool_masked_pos.bool()
    counts = bool_masked_pos.sum(dim=1)
    if (counts != counts[0]).any():
        raise ValueError(
            f"every image must have the same number of masked patches (CAE gathers them into a dense batch), got "
            f"{counts.tolist()}; use the block or random mask generators, which mask an exact count."
        )
    if not 0 < int(counts[0]) < num_patches:
        raise ValueError(
            f"`bool_masked_pos` masks {int(counts[0])} of {num_patches} patches; CAE needs at least one masked and one "
            "visible patch."
        )
    return bool_masked_pos


# ---------------------------------------------------------------------------------------------- 2. encoder
def position_table_for_grid(table: torch.Tensor, trained_grid: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """The stored `(1, 1 + H*W, D)` sin-cos table, or a fresh one for another grid.

    The official fine-tuning code builds a new sin-cos table at a new resolution rather than resampling the old one,
    so the positions stay exact.
    """
    if tuple(trained_grid) == tuple(grid):
        return table
    fresh = sincos_2d_position_embedding(grid[0], grid[1], table.shape[-1], row_first=True)
    return fresh.to(device=table.device, dtype=table.dtype)


def cae_vit_layer(
    config: CAEConfig,
    width: int,
    num_attention_heads: int,
    intermediate_size: int,
    drop_path: float,
    layer_scale_init_value: float | None,
) -> ViTLayer:
    """An encoder/decoder block (official `Block`): q and v bias without k bias; LayerScale only for a positive
    init value."""
    has_layer_scale = layer_scale_init_value is not None and layer_scale_init_value > 0
    layer = ViTLayer(
        config,
        width,
        num_attention_heads,
        intermediate_size,
        key_bias=False,
        drop_path=drop_path,
        layer_scale_init_value=layer_scale_init_value if has_layer_scale else None,
    )
    # The official q/k/v are one fused [3D, D] matrix, whose xavier bound `_init_weights` reproduces.
    for projection in (layer.attention.q_proj, layer.attention.k_proj, layer.attention.v_proj):
        setattr(projection, FUSED_QKV_WIDTH_ATTRIBUTE, width)
    return layer


class CAEEmbeddings(ViTEmbeddings):
    """[CLS] token, patch embeddings and frozen sin-cos positions; a mask removes the masked patches."""

    def __init__(self, config: CAEConfig):
        super().__init__(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> torch.Tensor:
        patch_tokens = self.patch_embeddings(pixel_values, interpolate_pos_encoding)  # (B, N, D)
        position_embeddings = position_table_for_grid(
            self.position_table(), self.patch_embeddings.grid_size, grid_of(pixel_values, self.config.patch_size)
        ).to(patch_tokens.dtype)  # (1, 1 + N, D)
        patch_tokens = patch_tokens + position_embeddings[:, 1:, :]
        if bool_masked_pos is not None:
            patch_tokens = select_tokens(patch_tokens, ~bool_masked_pos)  # (B, num_visible, D)
        return self.dropout(self.prepend_cls_token(patch_tokens, position_embeddings))


# ---------------------------------------------------------------------------------------------- 3. regressor
class CAERegressorLayer(GradientCheckpointingLayer):
    """Cross-attention block of the latent contextual regressor (official `RegressorBlock`).

    `q = q + ls1 * attn(Q=LN_q(q + pos_q), K=LN_k(kv + pos_kv), V=LN_v(kv))` with `kv = [visible latents, q]`,
    then `q = LN_2(q)` (post-norm: the residual stream itself is normalised) and `q = q + ls2 * mlp(q)`.
    """

    def __init__(self, config: CAEConfig, drop_path: float = 0.0):
        super().__init__()
        width = config.decoder_hidden_size
        eps = config.layer_norm_eps
        self.layernorm_query = nn.LayerNorm(width, eps=eps)
        self.layernorm_key = nn.LayerNorm(width, eps=eps)
        self.layernorm_value = nn.LayerNorm(width, eps=eps)
        self.cross_attention = ViTAttention(
            config,
            width,
            config.decoder_num_attention_heads,
            query_bias=config.qkv_bias,
            key_bias=False,
            value_bias=config.qkv_bias,
            attention_dropout=config.attention_probs_dropout_prob,
        )
        self.layernorm_after = nn.LayerNorm(width, eps=eps)
        self.mlp = ViTMLP(width, config.resolved_decoder_intermediate_size, config.hidden_act)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.drop_path = DropPath(drop_path)
        # The official block always owns its LayerScale; with a non-positive init value it is frozen at 1.
        trainable = self.layer_scale_trainable = config.decoder_layer_scale_init_value > 0
        self.layer_scale_init_value = float(config.decoder_layer_scale_init_value) if trainable else 1.0
        self.lambda_1 = nn.Parameter(torch.full((width,), self.layer_scale_init_value), requires_grad=trainable)
        self.lambda_2 = nn.Parameter(torch.full((width,), self.layer_scale_init_value), requires_grad=trainable)

    def forward(
        self,
        queries: torch.Tensor,
        visible_latents: torch.Tensor,
        query_positions: torch.Tensor,
        visible_positions: torch.Tensor,
        **kwargs,
    ) -> torch.Tensor:
        keys_values = torch.cat([visible_latents, queries], dim=1)
        key_positions = torch.cat([visible_positions, query_positions], dim=1)
        attention_output, _ = self.cross_attention(
            self.layernorm_query(queries + query_positions),
            None,
            key_value_states=self.layernorm_key(keys_values + key_positions),
            value_states=self.layernorm_value(keys_values),
            **kwargs,
        )
        lambda_1, lambda_2 = (self.lambda_1, self.lambda_2) if self.layer_scale_trainable else (
            fixed(self.lambda_1), fixed(self.lambda_2))
        hidden_states = queries + self.drop_path(lambda_1 * self.dropout(attention_output))
        hidden_states = self.layernorm_after(hidden_states)
        mlp_output = self.dropout(self.mlp(hidden_states))
        return hidden_states + self.drop_path(lambda_2 * mlp_output)


class CAERegressor(nn.Module):
    """Mask-token queries regress the latents of the masked patches from the visible latents."""

    def __init__(self, config: CAEConfig):
        super().__init__()
        self.config = config
        self.grid_size = config.grid_size
        width = config.decoder_hidden_size
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        # Shared by the regressor and the decoder (official `rd_pos_embed`).
        self.position_embeddings = nn.Parameter(torch.zeros(1, config.num_patches + 1, width), requires_grad=False)
        self.layers = nn.ModuleList(
            [
                CAERegressorLayer(config, rate)
                for rate in drop_path_rates(config.drop_path_rate, config.regressor_num_layers)
            ]
        )
        self.layernorm = nn.LayerNorm(width, eps=config.layer_norm_eps)

    def forward(
        self, visible_latents: torch.Tensor, bool_masked_pos: torch.Tensor, grid: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted latents of the masked patches `(B, num_masked, Dd)` and their positions (the decoder's queries
        take them too). The position table is read here, inside `forward`, where accelerate's offloading has moved
        this module's tensors in."""
        batch_size = visible_latents.shape[0]
        positions = position_table_for_grid(fixed(self.position_embeddings), self.grid_size, grid)[:, 1:, :]
        positions = positions.to(visible_latents.dtype).expand(batch_size, -1, -1)  # (B, H*W, Dd), no [CLS] slot
        masked_positions = select_tokens(positions, bool_masked_pos)  # (B, num_masked, Dd)
        visible_positions = select_tokens(positions, ~bool_masked_pos)  # (B, num_visible, Dd)
        queries = self.mask_token.to(visible_latents.dtype).expand(batch_size, masked_positions.shape[1], -1)
        for layer in self.layers:
            queries = layer(queries, visible_latents, masked_positions, visible_positions)
        return self.layernorm(queries), masked_positions


# ---------------------------------------------------------------------------------------------- 4. decoder
class CAEDecoder(nn.Module):
    """Pre-norm blocks on the masked positions only, then the token head (or the non-official pixel head)."""

    def __init__(self, config: CAEConfig):
        super().__init__()
        width = config.decoder_hidden_size
        self.layers = nn.ModuleList(
            [
                cae_vit_layer(
                    config,
                    width,
                    config.decoder_num_attention_heads,
                    config.resolved_decoder_intermediate_size,
                    drop_path=rate,
                    layer_scale_init_value=config.decoder_layer_scale_init_value,
                )
                for rate in drop_path_rates(config.drop_path_rate, config.decoder_num_layers)
            ]
        )
        self.layernorm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        if config.target == "tokens":
            num_outputs = config.vocab_size
        else:
            num_outputs = config.patch_size**2 * config.num_channels
        self.head = nn.Linear(width, num_outputs)

    def forward(self, predicted_latents: torch.Tensor, masked_positions: torch.Tensor) -> torch.Tensor:
        hidden_states = predicted_latents + masked_positions
        for layer in self.layers:
            hidden_states = layer(hidden_states, None)
        return self.head(self.layernorm(hidden_states))


# ---------------------------------------------------------------------------------------------- 5. losses
def select_masked_labels(labels: torch.Tensor, bool_masked_pos: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Token ids for the masked patches, `(batch_size * num_masked,)` in batch-major raster order.

    Accepts ids for every patch `(batch_size, num_patches)` (the masked ones are selected) or already-selected ids
    `(batch_size, num_masked)` / `(batch_size * num_masked,)`.
    """
    batch_size, num_patches = bool_masked_pos.shape
    num_masked = int(bool_masked_pos[0].sum())
    if labels.is_floating_point():
        raise ValueError(f"`labels` must hold integer token ids, got dtype {labels.dtype}.")
    if tuple(labels.shape) == (batch_size, num_patches):
        selected = labels[bool_masked_pos]
    elif tuple(labels.shape) in ((batch_size, num_masked), (batch_size * num_masked,)):
        selected = labels.reshape(-1)
    else:
        raise ValueError(
            f"`labels` must have shape (batch_size, num_patches) = ({batch_size}, {num_patches}), or hold only the "
            f"masked ids as ({batch_size}, {num_masked}) or ({batch_size * num_masked},); got {tuple(labels.shape)}."
        )
    invalid = (selected != -100) & ((selected < 0) | (selected >= vocab_size))
    if invalid.any():
        raise ValueError(
            f"`labels` contains token ids outside [0, {vocab_size}) (vocab_size), e.g. {selected[invalid][0].item()}."
        )
    return selected.long()  # cross-entropy takes int64 targets; int32 / int16 ids are as good


def normalized_pixel_targets(
    pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor, patch_size: int, normalize: bool
) -> torch.Tensor:
    """`(B, num_masked, patch_size**2 * C)` pixels of the masked patches, each normalised by its own mean/std."""
    patches = select_tokens(patchify(pixel_values, patch_size), bool_masked_pos).float()
    if not normalize:
        return patches
    mean = patches.mean(dim=-1, keepdim=True)
    variance = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (variance + 1.0e-6) ** 0.5


# ---------------------------------------------------------------------------------------------- models
class CAEPreTrainedModel(MaskedViTPreTrainedModel):
    config: CAEConfig
    base_model_prefix = "cae"
    _no_split_modules = ["CAEEmbeddings", "ViTLayer", "CAERegressorLayer"]
    # Attention kernel: transformers' choice at load (SDPA unless `attn_implementation` says otherwise), on every
    # device; encoder, regressor cross-attention and decoder all dispatch through it. Measured on a CPU (fp32, one
    # thread, CAE-S shapes, batch 8): one attention's forward + backward is 14-21% faster with SDPA than eager at head
    # dim 32 and 4-10% slower at head dim 64, which changes a whole training step by less than the run-to-run noise,
    # while SDPA keeps ~6% less peak memory; so no per-device or per-shape override.

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The official initialisation (`fix_init_weight=False`, the default of every official script).

        Every Linear is xavier-uniform with zero bias, except the self-attention q/k/v of encoder and decoder blocks,
        which the official code initialises as one fused `[3D, D]` matrix (bound sqrt(6 / 4D)); the patch projection,
        [CLS] and mask token are normal(0, 0.02) truncated at one std; LayerScale starts at its init value; the
        sin-cos tables are copied with `init.copy_`, so the meta-device load path gives the same tables. Loaded
        tensors are never touched (`transformers.initialization` skips them).
        """
        super()._init_weights(module)
        std = self.config.initializer_range
        # For models outside the transformers package, `_init_weights` is only called on modules that own parameters
        # (a module without direct parameters counts as initialised), so each tensor is handled at its owner.
        init_linear_and_layernorm(module)
        if isinstance(module, nn.Linear) and hasattr(module, FUSED_QKV_WIDTH_ATTRIBUTE):
            bound = xavier_uniform_bound_for_fused_qkv(getattr(module, FUSED_QKV_WIDTH_ATTRIBUTE))
            init.uniform_(module.weight, -bound, bound)
        elif isinstance(self, CAEForImageClassification) and module is self.classifier:
            scaled_std = std * CLASSIFIER_INIT_SCALE
            init.trunc_normal_(module.weight, std=scaled_std, a=-scaled_std, b=scaled_std)
        elif isinstance(module, nn.Conv2d):  # the patch projection
            init.trunc_normal_(module.weight, std=std, a=-std, b=std)
            init.zeros_(module.bias)
        elif isinstance(module, CAEEmbeddings):
            grid = module.patch_embeddings.grid_size
            table = sincos_2d_position_embedding(grid[0], grid[1], self.config.hidden_size, row_first=True)
            init.copy_(module.position_embeddings, table)
            init.trunc_normal_(module.cls_token, std=std, a=-std, b=std)
        elif isinstance(module, (ViTLayer, CAERegressorLayer)) and module.lambda_1 is not None:
            init.constant_(module.lambda_1, module.layer_scale_init_value)
            init.constant_(module.lambda_2, module.layer_scale_init_value)
        elif isinstance(module, CAERegressor):
            grid = self.config.grid_size
            table = sincos_2d_position_embedding(grid[0], grid[1], self.config.decoder_hidden_size, row_first=True)
            init.copy_(module.position_embeddings, table)
            init.trunc_normal_(module.mask_token, std=std, a=-std, b=std)


@auto_docstring(
    custom_intro="The bare CAE encoder (ViT with LayerScale); a mask removes patches instead of replacing them."
)
class CAEModel(CAEPreTrainedModel):
    def __init__(self, config: CAEConfig, add_final_layernorm: bool = True):
        r"""
        add_final_layernorm (`bool`, *optional*, defaults to `True`):
            Whether the encoder ends with its LayerNorm. `CAEForImageClassification` with mean pooling drops it and
            normalises the pooled feature instead (`fc_norm`), as the official fine-tuning.
        """
        super().__init__(config)
        self.config = config
        self.embeddings = CAEEmbeddings(config)
        self.layers = nn.ModuleList(
            [
                cae_vit_layer(
                    config,
                    config.hidden_size,
                    config.num_attention_heads,
                    config.intermediate_size,
                    drop_path=rate,
                    layer_scale_init_value=config.layer_scale_init_value,
                )
                for rate in drop_path_rates(config.drop_path_rate, config.num_hidden_layers)
            ]
        )
        self.layernorm = final_layernorm(config, add_final_layernorm)
        self.post_init()

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    @auto_docstring
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CAEModelOutput:
        r"""
        bool_masked_pos (`torch.BoolTensor` of shape `(batch_size, num_patches)`, *optional*):
            True for the patches to leave out (the same number in every row); the encoder then sees [CLS] and the
            visible patches only, in raster order. `None` encodes every patch (features, fine-tuning).
        interpolate_pos_encoding (`bool`, *optional*, defaults to `False`):
            Accept another input resolution; a sin-cos table for the new patch grid is used.
        """
        interpolate_pos_encoding = bool(interpolate_pos_encoding)
        self.embeddings.patch_embeddings.check_pixel_values(pixel_values, interpolate_pos_encoding)
        if bool_masked_pos is not None:
            bool_masked_pos = check_bool_masked_pos(
                bool_masked_pos, pixel_values.shape[0], grid_of(pixel_values, self.config.patch_size)
            ).to(pixel_values.device)
        hidden_states = self.embeddings(pixel_values, bool_masked_pos, interpolate_pos_encoding)
        for layer in self.layers:
            hidden_states = layer(hidden_states, None, **kwargs)
        sequence_output = self.layernorm(hidden_states)
        return CAEModelOutput(last_hidden_state=sequence_output, pooler_output=sequence_output[:, 0])


@auto_docstring(
    custom_intro="CAE with its alignment target, latent regressor and decoder, for self-supervised pre-training."
)
class CAEForPreTraining(CAEPreTrainedModel):
    def __init__(self, config: CAEConfig):
        super().__init__(config)
        self.config = config
        self.cae = CAEModel(config)
        if config.uses_projection:
            self.encoder_to_regressor = nn.Linear(config.hidden_size, config.decoder_hidden_size)
            self.encoder_to_regressor_norm = nn.LayerNorm(config.decoder_hidden_size, eps=config.layer_norm_eps)
        else:
            self.encoder_to_regressor = None
            self.encoder_to_regressor_norm = None
        self.regressor = CAERegressor(config)
        self.decoder = CAEDecoder(config)
        self.post_init()

    def project(self, latents: torch.Tensor) -> torch.Tensor:
        """Encoder width -> regressor width (identity when they are equal)."""
        if self.encoder_to_regressor is None:
            return latents
        return self.encoder_to_regressor_norm(self.encoder_to_regressor(latents))

    def draw_bool_masked_pos(self, batch_size: int, grid: tuple[int, int], device=None) -> torch.Tensor:
        """One mask per image with the configured generator, seeded from torch's RNG (so `torch.manual_seed`
        makes it reproducible)."""
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        generator = mask_generator_from_config(self.config, grid, seed=seed)
        return stack_masks([generator() for _ in range(batch_size)]).to(device)

    def forward_loss(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None,
        bool_masked_pos: torch.Tensor,
        logits: torch.Tensor,
        predicted_latents: torch.Tensor,
        target_latents: torch.Tensor,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """`(loss, main_loss, align_loss)`: MSE between predicted and target latents (`(B, num_masked, Dd)`), and
        cross-entropy on the masked token ids (or MSE on the normalised pixels of the masked patches for
        `target="pixels"`) from the decoder `logits` (`(B, num_masked, vocab_size or patch_size**2 * C)`)."""
        align_loss = nn.functional.mse_loss(predicted_latents.float(), target_latents.float())
        main_loss = None
        if self.config.target == "pixels":
            targets = normalized_pixel_targets(
                pixel_values, bool_masked_pos, self.config.patch_size, self.config.norm_pix_loss
            )
            main_loss = nn.functional.mse_loss(logits.float(), targets)
        elif labels is not None:
            masked_labels = select_masked_labels(labels.to(logits.device), bool_masked_pos, self.config.vocab_size)
            main_loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), masked_labels)
        loss = None if main_loss is None else main_loss + self.config.align_loss_weight * align_loss
        return loss, main_loss, align_loss

    @can_return_tuple
    @auto_docstring
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CAEForPreTrainingOutput:
        r"""
        bool_masked_pos (`torch.BoolTensor` of shape `(batch_size, num_patches)`, *optional*):
            True for masked patches, the same number in every row. Drawn with the configured generator (block-wise,
            `num_masking_patches`) when not given; pass it for deterministic outputs.
        labels (`torch.LongTensor` of shape `(batch_size, num_patches)`, *optional*):
            Tokenizer ids of every patch (the masked ones are selected inside), or only the masked ids as
            `(batch_size, num_masked)` / `(batch_size * num_masked,)`. Needed for the loss with `target="tokens"`;
            not accepted with the non-official `target="pixels"`, whose targets come from `pixel_values`.
        interpolate_pos_encoding (`bool`, *optional*, defaults to `False`):
            Accept another input resolution (sin-cos tables for the new grid).

        Example:

        ```python
        >>> import torch
        >>> from transformers_mixedae import CAEConfig, CAEForPreTraining
        >>> config = CAEConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        ...     intermediate_size=64, decoder_hidden_size=32, regressor_num_layers=1, decoder_num_layers=1,
        ...     decoder_num_attention_heads=4, vocab_size=64, num_masking_patches=8, mask_min_num_patches=2)
        >>> model = CAEForPreTraining(config)
        >>> outputs = model(torch.randn(2, 3, 32, 32), labels=torch.randint(0, 64, (2, 16)))
        >>> outputs.logits.shape
        torch.Size([2, 8, 64])
        ```
        """
        interpolate_pos_encoding = bool(interpolate_pos_encoding)
        self.cae.embeddings.patch_embeddings.check_pixel_values(pixel_values, interpolate_pos_encoding)
        if labels is not None and self.config.target == "pixels":
            raise ValueError(
                "`labels` are tokenizer ids, but this model uses the non-official target='pixels', whose targets are "
                "the pixels of the masked patches: drop `labels` or use target='tokens'."
            )
        batch_size = pixel_values.shape[0]
        grid = grid_of(pixel_values, self.config.patch_size)
        if bool_masked_pos is None:
            bool_masked_pos = self.draw_bool_masked_pos(batch_size, grid, pixel_values.device)
        else:
            bool_masked_pos = check_bool_masked_pos(bool_masked_pos, batch_size, grid).to(pixel_values.device)

        encoder_outputs: CAEModelOutput = self.cae(
            pixel_values, bool_masked_pos=bool_masked_pos, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs
        )
        visible_latents = self.project(encoder_outputs.last_hidden_state)[:, 1:, :]  # (B, num_visible, Dd)

        # Alignment target: the same encoder on the masked patches, after the visible pass (stochastic depth draws
        # come in the official order), in the current mode, without gradient.
        with torch.no_grad():
            target_outputs: CAEModelOutput = self.cae(
                pixel_values,
                bool_masked_pos=~bool_masked_pos,
                interpolate_pos_encoding=interpolate_pos_encoding,
                output_hidden_states=False,
                output_attentions=False,
            )
            target_latents = self.project(target_outputs.last_hidden_state[:, 1:, :])  # (B, num_masked, Dd)

        # (B, num_masked, Dd) each
        predicted_latents, masked_positions = self.regressor(visible_latents, bool_masked_pos, grid)
        logits = self.decoder(predicted_latents, masked_positions)  # (B, num_masked, vocab_size or p**2 * C)

        loss, main_loss, align_loss = self.forward_loss(
            pixel_values, labels, bool_masked_pos, logits, predicted_latents, target_latents
        )

        return CAEForPreTrainingOutput(
            loss=loss,
            main_loss=main_loss,
            align_loss=align_loss,
            logits=logits,
            predicted_latents=predicted_latents,
            target_latents=target_latents,
            bool_masked_pos=bool_masked_pos,
            hidden_states=encoder_outputs.hidden_states,
            attentions=encoder_outputs.attentions,
        )


# ---------------------------------------------------------------------------------------------- downstream
# Official fine-tuning loads the pre-trained final LayerNorm as `fc_norm` (mean pooling); the same renaming lets
# `CAEForImageClassification.from_pretrained` start from a CAEModel / CAEForPreTraining checkpoint.
MEAN_POOLING_KEY_MAPPING = {r"^(cae\.)?layernorm\.": "fc_norm."}


@auto_docstring(
    custom_intro="CAE encoder with a linear classifier on the mean patch token + fc_norm (official fine-tuning) or "
    "on [CLS]."
)
class CAEForImageClassification(ImageClassifierOnEncoder, CAEPreTrainedModel):
    def __init__(self, config: CAEConfig):
        super().__init__(config)
        # With mean pooling the per-token final norm is dropped and the pooled feature is normalised instead.
        self.cae = CAEModel(config, add_final_layernorm=config.classifier_pooling != "mean")
        self.add_classification_head(config)
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """With mean pooling, the final encoder LayerNorm of a CAEModel / CAEForPreTraining checkpoint becomes
        `fc_norm` (as the official fine-tuning); pass `key_mapping` to override."""
        config = kwargs.get("config")
        if config is None and pretrained_model_name_or_path is not None:
            config = CAEConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs(kwargs))
        pooling = kwargs.get("classifier_pooling", getattr(config, "classifier_pooling", "mean"))
        renamed = pooling == "mean" and "key_mapping" not in kwargs
        if renamed:
            kwargs["key_mapping"] = MEAN_POOLING_KEY_MAPPING
        model = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        if renamed:
            # Save under the model's own names: transformers would try to revert the renaming (and fail on its group).
            loaded = model[0] if isinstance(model, tuple) else model
            loaded._weight_conversions = []
        return model


@auto_docstring(
    custom_intro="CAE encoder as a transformers backbone: feature maps of chosen layers on every patch (no masking), "
    "for dense heads such as UperNet; optionally the multi-scale adapter (strides 4-32). Same features as "
    "`BeitBackbone` on the BEiT export (`hub.export.convert_cae_to_beit`)."
)
class CAEBackbone(BackboneOnEncoder, BackboneMixin, CAEPreTrainedModel):
    def __init__(self, config: CAEConfig):
        super().__init__(config)
        self.cae = CAEModel(config, add_final_layernorm=False)
        self.add_backbone_neck(config)
        self.post_init()


__all__ = [
    "CAEBackbone",
    "CAEForImageClassification",
    "CAEForPreTraining",
    "CAEModel",
    "CAEPreTrainedModel",
]
