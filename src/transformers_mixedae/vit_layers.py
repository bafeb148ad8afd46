# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Vision Transformer building blocks shared by MixedAE and CAE.

Everything both models need is written once here: patch embedding, frozen 2-D sin-cos tables, an
attention module that dispatches through the transformers attention interface (eager, SDPA, flash,
flex), the MLP, stochastic depth and the pre-norm block. Homologous top-k attention (MixedAE) is an
option of the same attention module, so the same weights run with global attention downstream.

This module only imports from `transformers`, `torch` and sibling modules, so it can be shipped as
flat remote code next to the modeling files.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import transformers.initialization as init
from huggingface_hub import try_to_load_from_cache
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import SAFE_WEIGHTS_NAME

from .configuration_masked_vit import to_2tuple


def _unreadable_safetensors(pretrained_model_name_or_path: str, subfolder: str | None) -> list[str]:
    """The weight files of a local folder (or their Hub cache copies) that safetensors cannot open."""
    if os.path.isdir(pretrained_model_name_or_path):
        folder = os.path.join(pretrained_model_name_or_path, subfolder or "")
        files = sorted(os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(".safetensors"))
    else:
        cached = try_to_load_from_cache(
            pretrained_model_name_or_path, os.path.join(subfolder or "", SAFE_WEIGHTS_NAME)
        )
        files = [cached] if isinstance(cached, str) else []
    unreadable = []
    for file in files:
        try:
            with safe_open(file, framework="pt"):
                pass
        except (SafetensorError, OSError) as error:
            unreadable.append(f"{file} ({error})")
    return unreadable


@contextmanager
def naming_corrupt_checkpoints(pretrained_model_name_or_path: str | os.PathLike, subfolder: str | None = None):
    """Turn safetensors' bare "Error while deserializing header" into an `OSError` naming the bad file and the fix.

    A file cut short by an interrupted download or save fails inside transformers with the reader's message only.
    """
    try:
        yield
    except SafetensorError as error:
        path = os.fspath(pretrained_model_name_or_path)
        unreadable = _unreadable_safetensors(path, subfolder) or [f"a weight file of {path} ({error})"]
        raise OSError(
            f"cannot load the weights of {path}: {'; '.join(unreadable)} is truncated or corrupt. Download it again "
            "(`from_pretrained(..., force_download=True)` for a Hub model) or save the model again with "
            "`save_pretrained`."
        ) from error


def sincos_2d_position_embedding(
    grid_height: int,
    grid_width: int,
    embed_dim: int,
    row_first: bool,
    add_cls_token: bool = True,
) -> torch.Tensor:
    """Fixed 2-D sin-cos position table of shape `(1, [1 +] grid_height * grid_width, embed_dim)`.

    Patches are in raster order. Each quarter of the channels holds `sin` or `cos` of the row or
    column index at frequencies `1 / 10000 ** (k / (embed_dim / 4))`. `row_first=True` gives
    `[sin(row), cos(row), sin(col), cos(col)]` (CAE/BEiT); `row_first=False` gives
    `[sin(col), cos(col), sin(row), cos(row)]`, the layout of the official MAE code and of every
    released MAE checkpoint. The [CLS] slot, when present, is all zeros. Computed in float64 so the
    table is identical on every device.
    """
    if embed_dim % 4 != 0:
        raise ValueError(f"sin-cos position embeddings need a width divisible by 4, got {embed_dim}")
    quarter = embed_dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(
        torch.arange(grid_height, dtype=torch.float64), torch.arange(grid_width, dtype=torch.float64), indexing="ij"
    )
    row_angles = rows.flatten()[:, None] * omega[None]
    col_angles = cols.flatten()[:, None] * omega[None]
    row_part = torch.cat([row_angles.sin(), row_angles.cos()], dim=1)
    col_part = torch.cat([col_angles.sin(), col_angles.cos()], dim=1)
    table = torch.cat([row_part, col_part] if row_first else [col_part, row_part], dim=1)
    if add_cls_token:
        table = torch.cat([torch.zeros(1, embed_dim, dtype=torch.float64), table], dim=0)
    return table.to(torch.float32).unsqueeze(0)


def interpolate_position_embedding(
    position_embeddings: torch.Tensor, grid_size: tuple[int, int], new_grid_size: tuple[int, int]
) -> torch.Tensor:
    """Bicubically resample the patch part of a `(1, 1 + H * W, D)` table to a new grid (DINO style)."""
    if tuple(grid_size) == tuple(new_grid_size):
        return position_embeddings
    cls_part, patch_part = position_embeddings[:, :1], position_embeddings[:, 1:]
    dim = patch_part.shape[-1]
    patch_part = patch_part.reshape(1, grid_size[0], grid_size[1], dim).permute(0, 3, 1, 2)
    patch_part = nn.functional.interpolate(
        patch_part.float(), size=tuple(new_grid_size), mode="bicubic", align_corners=False
    ).to(position_embeddings.dtype)
    patch_part = patch_part.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat([cls_part, patch_part], dim=1)


class PatchEmbeddings(nn.Module):
    """Non-overlapping `patch_size` x `patch_size` patches projected to `hidden_size` with a strided Conv2d."""

    def __init__(self, image_size, patch_size: int, num_channels: int, hidden_size: int):
        super().__init__()
        self.image_size = to_2tuple(image_size)
        self.patch_size = to_2tuple(patch_size)
        self.num_channels = num_channels
        self.grid_size = (self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.projection = nn.Conv2d(num_channels, hidden_size, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        check_pixel_values(pixel_values, self.num_channels, self.image_size, self.patch_size, interpolate_pos_encoding)
        # As transformers' ViT models do: float64 images from NumPy, or float32 images for a half-precision model,
        # would otherwise stop the convolution with a dtype mismatch.
        pixel_values = pixel_values.to(self.projection.weight.dtype)
        return self.projection(pixel_values).flatten(2).transpose(1, 2)

    def check_pixel_values(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> None:
        """`check_pixel_values` against this module's geometry (for models that validate before embedding)."""
        check_pixel_values(pixel_values, self.num_channels, self.image_size, self.patch_size, interpolate_pos_encoding)


def check_pixel_values(
    pixel_values: torch.Tensor,
    num_channels: int,
    image_size: tuple[int, int],
    patch_size: tuple[int, int],
    interpolate_pos_encoding: bool,
) -> None:
    """Raise a `ValueError` that says what is wrong with `pixel_values` and how to fix it."""
    if pixel_values is None:
        raise ValueError("`pixel_values` is required: pass a float tensor of shape (batch, channels, height, width).")
    if pixel_values.ndim != 4:
        raise ValueError(
            f"`pixel_values` must have shape (batch, channels, height, width), got shape {tuple(pixel_values.shape)}."
        )
    if pixel_values.shape[0] == 0:
        raise ValueError("`pixel_values` holds no images (batch size 0): pass at least one image.")
    if not pixel_values.is_floating_point():
        raise ValueError(
            f"`pixel_values` has dtype {pixel_values.dtype}, but the model takes rescaled and normalised float pixel "
            "values: pass the output of the model's image processor (`processor(images, return_tensors='pt')`)."
        )
    channels, height, width = pixel_values.shape[1:]
    if channels != num_channels:
        raise ValueError(
            f"`pixel_values` has {channels} channels but the model expects num_channels={num_channels}. "
            "Convert the images (e.g. `image.convert('RGB')`) or use the model's image processor."
        )
    if interpolate_pos_encoding:
        if height % patch_size[0] or width % patch_size[1]:
            raise ValueError(
                f"Input image size ({height}*{width}) must be divisible by the patch size "
                f"({patch_size[0]}*{patch_size[1]})."
            )
    elif (height, width) != tuple(image_size):
        raise ValueError(
            f"Input image size ({height}*{width}) doesn't match model ({image_size[0]}*{image_size[1]}). "
            "Resize the images with the model's image processor, or pass `interpolate_pos_encoding=True`."
        )


def patchify(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """`(B, C, H, W)` -> `(B, num_patches, patch_size**2 * C)` in raster order, pixels as (row, col, channel)."""
    batch_size, num_channels, height, width = pixel_values.shape
    grid_h, grid_w = height // patch_size, width // patch_size
    patches = pixel_values.reshape(batch_size, num_channels, grid_h, patch_size, grid_w, patch_size)
    patches = patches.permute(0, 2, 4, 3, 5, 1)
    return patches.reshape(batch_size, grid_h * grid_w, patch_size**2 * num_channels)


def unpatchify(patches: torch.Tensor, patch_size: int, grid_size: tuple[int, int], num_channels: int) -> torch.Tensor:
    """Inverse of `patchify`."""
    batch_size = patches.shape[0]
    grid_h, grid_w = grid_size
    if grid_h * grid_w != patches.shape[1]:
        raise ValueError(f"{patches.shape[1]} patches do not form a {grid_h}x{grid_w} grid.")
    images = patches.reshape(batch_size, grid_h, grid_w, patch_size, patch_size, num_channels)
    images = images.permute(0, 5, 1, 3, 2, 4)
    return images.reshape(batch_size, num_channels, grid_h * patch_size, grid_w * patch_size)


def attention_from_logits(
    module: nn.Module, logits: torch.Tensor, value: torch.Tensor, dropout: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax (in fp32) over the keys, dropout, weighted sum of values -> `(B, L, heads, head_dim)` and weights."""
    attn_weights = nn.functional.softmax(logits, dim=-1, dtype=torch.float32).to(value.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference attention. Inputs `(B, heads, L, head_dim)`; returns `(B, L, heads, head_dim)` and the weights."""
    logits = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        logits = logits + attention_mask
    return attention_from_logits(module, logits, value, dropout)


@dataclass
class HomologousAttentionContext:
    """What homologous top-k attention needs to know about a batch of mixed sequences.

    `segment_ids` is `(num_sequences, 1 + num_kept)`: the slot (source image in the group) of every
    token, -1 for [CLS]. `need_weights` asks for the attention weights (`output_attentions`), which the
    fused path does not produce. `topk_accuracies` collects, per homologous layer, the fraction of kept
    patch keys that come from the query's own source image (a diagnostic, no gradient).
    """

    segment_ids: torch.Tensor
    topk: int
    need_weights: bool = False
    topk_accuracies: list[torch.Tensor] = field(default_factory=list)


@torch.no_grad()
def homologous_keep_mask(logits: torch.Tensor, topk: int) -> torch.Tensor:
    """`(B, heads, L, L)` boolean mask of the `topk` largest logits of every patch query row; [CLS] keeps all.

    Selection is not differentiable, so it runs outside autograd; an unsorted top-k and its minimum give the
    same k-th largest value as a sorted one, for less work.
    """
    kth_largest = logits.topk(min(topk, logits.shape[-1]), dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)
    keep = logits >= kth_largest
    keep[:, :, 0, :] = True
    return keep


def homologous_topk_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float,
    homologous: HomologousAttentionContext,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention in which each patch query keeps only its `topk` largest logits per head.

    The [CLS] query (position 0) attends to every key. Fused kernels cannot select keys by value, so the keys
    are selected on logits computed without gradient. With `attn_implementation="sdpa"` (and no attention
    weights requested) the selection then becomes a boolean mask of a fused SDPA call, which keeps no
    `(L, L)` probabilities for the backward pass; otherwise the same logits are masked and used directly,
    the eager reference. Both keep exactly the same keys.
    """
    implementation = getattr(getattr(module, "config", None), "_attn_implementation", "eager")
    fused = implementation == "sdpa" and not homologous.need_weights and attention_mask is None
    if fused:
        with torch.no_grad():
            keep = homologous_keep_mask(torch.matmul(query, key.transpose(2, 3)) * scaling, homologous.topk)
        attn_output = nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=keep, dropout_p=dropout, scale=scaling
        ).transpose(1, 2).contiguous()
        attn_weights = None
    else:
        logits = torch.matmul(query, key.transpose(2, 3)) * scaling
        if attention_mask is not None:
            logits = logits + attention_mask
        keep = homologous_keep_mask(logits, homologous.topk)
        attn_output, attn_weights = attention_from_logits(
            module, logits.masked_fill(~keep, float("-inf")), value, dropout
        )

    with torch.no_grad():
        segment_ids = homologous.segment_ids
        same_source = segment_ids[:, None, 1:, None] == segment_ids[:, None, None, 1:]
        kept_patch_keys = keep[:, :, 1:, 1:]
        homologous.topk_accuracies.append(
            (kept_patch_keys & same_source).sum().float() / kept_patch_keys.sum().clamp(min=1).float()
        )
    return attn_output, attn_weights


class ViTAttention(nn.Module):
    """Multi-head attention with separate q/k/v projections (transformers 5.x names).

    Self-attention by default; `key_value_states` (and `value_states`, when values differ from keys
    as in CAE's regressor) turn it into cross-attention. Biases are per projection so that CAE's
    "q and v bias, no k bias" and MAE's "qkv bias" are the same class.
    """

    def __init__(
        self,
        config,
        hidden_size: int,
        num_attention_heads: int,
        query_bias: bool = True,
        key_bias: bool = True,
        value_bias: bool = True,
        attention_dropout: float = 0.0,
    ):
        super().__init__()
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden size {hidden_size} is not divisible by {num_attention_heads} attention heads")
        self.config = config
        self.num_attention_heads = num_attention_heads
        self.head_dim = hidden_size // num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = attention_dropout
        self.is_causal = False
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=query_bias)
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=key_bias)
        self.v_proj = nn.Linear(hidden_size, hidden_size, bias=value_bias)
        self.o_proj = nn.Linear(hidden_size, hidden_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        key_value_states: torch.Tensor | None = None,
        value_states: torch.Tensor | None = None,
        homologous: HomologousAttentionContext | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        key_input = hidden_states if key_value_states is None else key_value_states
        value_input = key_input if value_states is None else value_states
        batch_size, query_length = hidden_states.shape[:2]

        def split_heads(projected: torch.Tensor) -> torch.Tensor:
            return projected.view(batch_size, -1, self.num_attention_heads, self.head_dim).transpose(1, 2)

        query = split_heads(self.q_proj(hidden_states))
        key = split_heads(self.k_proj(key_input))
        value = split_heads(self.v_proj(value_input))
        dropout = self.attention_dropout if self.training else 0.0

        if homologous is not None:
            attn_output, attn_weights = homologous_topk_attention_forward(
                self, query, key, value, attention_mask, self.scaling, dropout, homologous
            )
        else:
            attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, eager_attention_forward
            )
            attn_output, attn_weights = attention_interface(
                self, query, key, value, attention_mask, dropout=dropout, scaling=self.scaling, **kwargs
            )
        attn_output = attn_output.reshape(batch_size, query_length, -1).contiguous()
        return self.o_proj(attn_output), attn_weights


class ViTMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.activation_fn = ACT2FN[hidden_act]
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability `drop_prob`."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return hidden_states
        keep_prob = 1.0 - self.drop_prob
        shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
        random_tensor = hidden_states.new_empty(shape).bernoulli_(keep_prob)
        return hidden_states * random_tensor / keep_prob

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


def drop_path_rates(drop_path_rate: float, depth: int) -> list[float]:
    """Linearly increasing stochastic-depth rates, 0 for the first block and `drop_path_rate` for the last."""
    if depth <= 1:
        return [0.0] * depth
    return [drop_path_rate * i / (depth - 1) for i in range(depth)]


class ViTLayer(GradientCheckpointingLayer):
    """Pre-norm Transformer block: `x + ls1 * attn(LN(x))`, then `x + ls2 * mlp(LN(x))`.

    LayerScale (`lambda_1`, `lambda_2`) exists when `layer_scale_init_value` is not None (BEiT/CAE);
    the block is plain ViT/MAE otherwise.
    """

    def __init__(
        self,
        config,
        hidden_size: int,
        num_attention_heads: int,
        intermediate_size: int,
        hidden_act: str = "gelu",
        layer_norm_eps: float = 1e-6,
        query_bias: bool = True,
        key_bias: bool = True,
        value_bias: bool = True,
        attention_dropout: float = 0.0,
        hidden_dropout: float = 0.0,
        drop_path: float = 0.0,
        layer_scale_init_value: float | None = None,
    ):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.attention = ViTAttention(
            config, hidden_size, num_attention_heads, query_bias, key_bias, value_bias, attention_dropout
        )
        self.layernorm_after = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.mlp = ViTMLP(hidden_size, intermediate_size, hidden_act)
        self.dropout = nn.Dropout(hidden_dropout)
        self.drop_path = DropPath(drop_path)
        self.layer_scale_init_value = layer_scale_init_value
        if layer_scale_init_value is not None:
            self.lambda_1 = nn.Parameter(torch.full((hidden_size,), float(layer_scale_init_value)))
            self.lambda_2 = nn.Parameter(torch.full((hidden_size,), float(layer_scale_init_value)))
        else:
            self.lambda_1 = self.lambda_2 = None

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        attention_output, _ = self.attention(self.layernorm_before(hidden_states), attention_mask, **kwargs)
        attention_output = self.dropout(attention_output)
        if self.lambda_1 is not None:
            attention_output = self.lambda_1 * attention_output
        hidden_states = hidden_states + self.drop_path(attention_output)

        mlp_output = self.dropout(self.mlp(self.layernorm_after(hidden_states)))
        if self.lambda_2 is not None:
            mlp_output = self.lambda_2 * mlp_output
        return hidden_states + self.drop_path(mlp_output)


def xavier_uniform_bound_for_fused_qkv(hidden_size: int) -> float:
    """Xavier bound of a fused `[3D, D]` qkv matrix, which official MAE/CAE initialise as one tensor."""
    return math.sqrt(6.0 / (hidden_size + 3 * hidden_size))


def init_linear_and_layernorm(module: nn.Module) -> bool:
    """MAE/CAE initialisation of plain layers: xavier-uniform Linear with zero bias, LayerNorm weight 1 and bias 0.

    Goes through `transformers.initialization`, so tensors loaded from a checkpoint are left alone. Returns whether
    `module` was one of these layers.
    """
    if isinstance(module, nn.Linear):
        init.xavier_uniform_(module.weight)
        if module.bias is not None:
            init.zeros_(module.bias)
        return True
    if isinstance(module, nn.LayerNorm):
        init.ones_(module.weight)
        init.zeros_(module.bias)
        return True
    return False


def build_classification_head(config, pooling: str) -> tuple[nn.LayerNorm | None, nn.Module]:
    """`(fc_norm, classifier)` of the `...ForImageClassification` models: `"mean"` pooling averages the patch tokens
    and normalises them with `fc_norm` (MAE / CAE fine-tuning); `"cls"` takes the encoder's [CLS] token."""
    fc_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if pooling == "mean" else None
    classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
    return fc_norm, classifier


def classify_encoder_output(model, outputs, labels: torch.Tensor | None, **kwargs) -> ImageClassifierOutput:
    """Pool `outputs` (a base-model output with `last_hidden_state`, `pooler_output`) with `model.fc_norm` /
    `model.classifier` and compute the loss with `model.loss_function`."""
    if model.fc_norm is not None:
        pooled = model.fc_norm(outputs.last_hidden_state[:, 1:, :].mean(dim=1))
    else:
        pooled = outputs.pooler_output
    logits = model.classifier(pooled)
    loss = model.loss_function(labels, logits, model.config, **kwargs) if labels is not None else None
    return ImageClassifierOutput(
        loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
    )
