# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Vision Transformer building blocks shared by MixedAE and CAE.

Everything both models need is written once here: patch embedding, frozen 2-D sin-cos tables, the [CLS] + patches
embedding frame, an attention module that dispatches through the transformers attention interface (eager, SDPA,
flash, flex) or through an attention function the caller passes (MixedAE's homologous attention), the MLP,
stochastic depth, the pre-norm block and the initialisation of plain layers.

This module only imports from `transformers`, `torch` and sibling modules, so it can be shipped as flat remote code
next to the modeling files.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import transformers.initialization as init
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_masked_vit import to_2tuple


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


def fixed(parameter: nn.Parameter) -> torch.Tensor:
    """A parameter built frozen (`requires_grad=False`), as the forward pass must use it: detached. `from_pretrained`
    hands loaded tensors back as trainable parameters, so the flag alone does not keep a fixed table fixed."""
    return parameter.detach()


class ViTEmbeddings(nn.Module):
    """[CLS] token, patch embeddings and a `(1, 1 + num_patches, hidden_size)` position table, which the model's
    `_init_weights` fills with a 2-D sin-cos table. The table is fixed (MAE's and CAE's pre-training, CAE's
    fine-tuning) unless `train_positions()` makes it a trained parameter (MAE's fine-tuning). Subclasses add
    positions and choose the tokens."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.patch_embeddings = PatchEmbeddings(
            config.image_size, config.patch_size, config.num_channels, config.hidden_size
        )
        self.position_embeddings = nn.Parameter(
            torch.zeros(1, self.patch_embeddings.num_patches + 1, config.hidden_size), requires_grad=False
        )
        self.trains_positions = False

    def train_positions(self, trained: bool = True) -> None:
        """Train the position table from here on (it starts from the sin-cos values or the loaded ones), or, with
        `trained=False`, keep it fixed at its present values."""
        self.trains_positions = trained
        self.position_embeddings.requires_grad_(trained)

    def position_table(self) -> torch.Tensor:
        """`(1, 1 + num_patches, hidden_size)`, as the forward pass uses it: see `train_positions`."""
        return self.position_embeddings if self.trains_positions else fixed(self.position_embeddings)

    def prepend_cls_token(self, patch_tokens: torch.Tensor, position_embeddings: torch.Tensor) -> torch.Tensor:
        """`(B, n, D)` patch tokens -> `(B, 1 + n, D)`: [CLS] plus its position (row 0 of the `(1, 1 + N, D)`
        `position_embeddings`, zero in a sin-cos table) first."""
        cls_token = (self.cls_token + position_embeddings[:, :1, :]).expand(patch_tokens.shape[0], -1, -1)
        return torch.cat((cls_token, patch_tokens), dim=1)


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


def attention_logits(
    query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None, scaling: float
) -> torch.Tensor:
    """`(B, heads, Lq, Lk)` scaled dot products of `(B, heads, L, head_dim)` queries and keys, plus the additive
    `attention_mask` when given."""
    logits = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        logits = logits + attention_mask
    return logits


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
    return attention_from_logits(module, attention_logits(query, key, attention_mask, scaling), value, dropout)


class ViTAttention(nn.Module):
    """Multi-head attention with separate q/k/v projections (transformers 5.x names).

    Self-attention by default; `key_value_states` (and `value_states`, when values differ from keys
    as in CAE's regressor) turn it into cross-attention. Biases are per projection so that CAE's
    "q and v bias, no k bias" and MAE's "qkv bias" are the same class. `attention_function`, a function with the
    signature of `eager_attention_forward`, replaces the configured implementation for one call (MixedAE's
    homologous attention), so the same weights run with global attention elsewhere.
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
        attention_function: Callable | None = None,
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

        if attention_function is None:
            attention_function = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, eager_attention_forward
            )
        attn_output, attn_weights = attention_function(
            self, query, key, value, attention_mask, dropout=dropout, scaling=self.scaling, **kwargs
        )
        attn_output = attn_output.reshape(batch_size, query_length, -1).contiguous()
        return self.o_proj(attn_output), attn_weights


class MLPWithRecomputedGELU(torch.autograd.Function):
    """`fc2(gelu(fc1(x)))` whose backward pass recomputes the GELU from `fc1`'s output instead of keeping its own
    output (which `fc2` would otherwise save as its input).

    Autograd keeps both `(..., intermediate_size)` tensors of every MLP, the largest activations of a transformer
    block; this keeps one, for one extra elementwise GELU per backward pass. Values and gradients are those of the
    plain layers: the same matmuls, `aten.gelu_backward` for the GELU, and under autocast the same reduced-precision
    operands (the input is saved as the linear layers see it).
    """

    @staticmethod
    def forward(ctx, hidden_states, fc1_weight, fc1_bias, fc2_weight, fc2_bias):
        pre_activation = nn.functional.linear(hidden_states, fc1_weight, fc1_bias)  # (..., intermediate_size)
        ctx.save_for_backward(hidden_states.to(pre_activation.dtype), pre_activation, fc1_weight, fc2_weight)
        ctx.input_dtype = hidden_states.dtype
        return nn.functional.linear(nn.functional.gelu(pre_activation), fc2_weight, fc2_bias)

    @staticmethod
    def backward(ctx, grad_output):
        hidden_states, pre_activation, fc1_weight, fc2_weight = ctx.saved_tensors
        needs_input, needs_fc1_weight, needs_fc1_bias, needs_fc2_weight, needs_fc2_bias = ctx.needs_input_grad
        compute_dtype = pre_activation.dtype
        grad_output = grad_output.to(compute_dtype)
        rows = grad_output.flatten(0, -2)  # (tokens, hidden_size)
        # A Linear's bias has its weight's dtype, so the weights give both gradients theirs.
        grad_fc2_weight = grad_fc2_bias = grad_input = grad_fc1_weight = grad_fc1_bias = None
        if needs_fc2_weight:
            activation = nn.functional.gelu(pre_activation).flatten(0, -2)
            grad_fc2_weight = (rows.T @ activation).to(fc2_weight.dtype)
        if needs_fc2_bias:
            grad_fc2_bias = rows.sum(0).to(fc2_weight.dtype)
        grad_pre_activation = torch.ops.aten.gelu_backward(grad_output @ fc2_weight.to(compute_dtype), pre_activation)
        pre_activation_rows = grad_pre_activation.flatten(0, -2)  # (tokens, intermediate_size)
        if needs_input:
            grad_input = (grad_pre_activation @ fc1_weight.to(compute_dtype)).to(ctx.input_dtype)
        if needs_fc1_weight:
            grad_fc1_weight = (pre_activation_rows.T @ hidden_states.flatten(0, -2)).to(fc1_weight.dtype)
        if needs_fc1_bias:
            grad_fc1_bias = pre_activation_rows.sum(0).to(fc1_weight.dtype)
        return grad_input, grad_fc1_weight, grad_fc1_bias, grad_fc2_weight, grad_fc2_bias


def _plain_linear(module: nn.Module) -> bool:
    """Whether `module` is an `nn.Linear` whose `forward` may be skipped for its weights: no adapter in its place
    (LoRA, quantised layers), no forward hook (user hooks; accelerate's offloading, which moves the weights in
    `forward`), weights in memory."""
    return (
        type(module) is nn.Linear
        and not (module._forward_hooks or module._forward_pre_hooks or hasattr(module, "_hf_hook"))
        and not (torch.nn.modules.module._global_forward_hooks or torch.nn.modules.module._global_forward_pre_hooks)
        and module.weight.device.type != "meta"
    )


class ViTMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.activation_fn = ACT2FN[hidden_act]
        self.fc2 = nn.Linear(intermediate_size, hidden_size)
        # transformers' "gelu" is the exact (erf) GELU that `MLPWithRecomputedGELU` recomputes; other activations
        # keep autograd's path. An attribute, so a test or a benchmark can switch the saving off.
        self.recompute_activation = hidden_act == "gelu"

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if (
            self.recompute_activation
            and torch.is_grad_enabled()
            and _plain_linear(self.fc1)
            and _plain_linear(self.fc2)
            and (hidden_states.requires_grad or self.fc1.weight.requires_grad or self.fc2.weight.requires_grad)
        ):
            return MLPWithRecomputedGELU.apply(
                hidden_states, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias
            )
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

    Activation, LayerNorm epsilon, q/k/v biases (`qkv_bias`) and dropout rates come from `config`;
    `key_bias=False` leaves the key projection without bias (BEiT/CAE) and `dropout=False` turns dropout off.
    LayerScale (`lambda_1`, `lambda_2`) exists when `layer_scale_init_value` is not None (BEiT/CAE); the block is
    plain ViT/MAE otherwise.
    """

    def __init__(
        self,
        config,
        hidden_size: int,
        num_attention_heads: int,
        intermediate_size: int,
        key_bias: bool = True,
        dropout: bool = True,
        drop_path: float = 0.0,
        layer_scale_init_value: float | None = None,
    ):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.attention = ViTAttention(
            config,
            hidden_size,
            num_attention_heads,
            query_bias=config.qkv_bias,
            key_bias=config.qkv_bias and key_bias,
            value_bias=config.qkv_bias,
            attention_dropout=config.attention_probs_dropout_prob if dropout else 0.0,
        )
        self.layernorm_after = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.mlp = ViTMLP(hidden_size, intermediate_size, config.hidden_act)
        self.dropout = nn.Dropout(config.hidden_dropout_prob if dropout else 0.0)
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
