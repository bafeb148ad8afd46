# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""What the MixedAE and CAE model classes share around their layers.

`MaskedViTPreTrainedModel` holds the class settings of both families (pixel inputs, the attention backends of
`ViTAttention`, hidden states and attentions recorded from `ViTLayer` / `ViTAttention`) and turns a corrupt weight
file into an error that names it. `ImageClassifierOnEncoder` is the `...ForImageClassification` part: a linear
classifier on the mean patch token (+ `fc_norm`), on [CLS], or (`classifier_head="attentive"`) on CAE's attentive
pooling (`AttentivePooler`). `BackboneOnEncoder` is the `...Backbone` part:
`(B, D, H/p, W/p)` feature maps from chosen encoder layers, optionally through `MultiScaleNeck` (strides p/4 .. 2p).

This module only imports from `transformers`, `torch`, `huggingface_hub`, `safetensors` and sibling modules, so it
can be shipped as flat remote code next to the modeling files.
"""

import os
from contextlib import contextmanager

import torch
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.errors import StrictDataclassClassValidationError
from safetensors import SafetensorError, safe_open
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.backbone_utils import filter_output_hidden_states
from transformers.modeling_outputs import BackboneOutput, ImageClassifierOutput
from transformers.processing_utils import Unpack
from transformers.utils import SAFE_WEIGHTS_NAME, TransformersKwargs, auto_docstring
from transformers.utils.generic import can_return_tuple

from .vit_layers import PatchEmbeddings, ViTAttention, ViTLayer


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

class MaskedViTPreTrainedModel(PreTrainedModel):
    """Base of `MixedAEPreTrainedModel` and `CAEPreTrainedModel`, which add the config class, the weight-name prefix
    and the initialisation."""

    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False
    _can_record_outputs = {"hidden_states": ViTLayer, "attentions": ViTAttention}
    _input_embed_layer = "patch_embeddings"

    def __init__(self, config, *inputs, **kwargs):
        # The config's validators run when it is built, not when a field is set afterwards (`config.mixing_ratio =
        # 0.3`, or `from_pretrained(path, out_indices=...)`, which sets its keyword arguments on the loaded config):
        # check again before the model is shaped by it, with the validator's own message.
        try:
            config.validate()
        except StrictDataclassClassValidationError as error:
            raise ValueError(str(error.__cause__ or error)) from error
        super().__init__(config, *inputs, **kwargs)

    def post_init(self) -> None:
        super().post_init()
        # Built frozen (fixed sin-cos tables, layer scales held at 1): remembered by name, since loading replaces them.
        self._frozen_parameter_names = frozenset(
            name for name, parameter in self.named_parameters() if not parameter.requires_grad
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`, naming a truncated or corrupt weight file and how to replace it, and with
        the parameters the model builds frozen frozen again: the loader hands every loaded tensor back trainable, and a
        trainable parameter without gradient stops DistributedDataParallel at the second step."""
        with naming_corrupt_checkpoints(pretrained_model_name_or_path, kwargs.get("subfolder")):
            loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        frozen = getattr(model, "_frozen_parameter_names", frozenset())
        for name, parameter in model.named_parameters():
            if name in frozen:
                parameter.requires_grad_(False)
        return loaded

    def get_input_embeddings(self) -> PatchEmbeddings:
        return self.base_model.embeddings.patch_embeddings

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The attentive classifier head as CAE's attentive probe (the families' own initialisation does the rest)."""
        super()._init_weights(module)
        if isinstance(module, AttentivePooler):
            module.reset_parameters(self.config.initializer_range)


# CAE's attentive probe normalises the pooled feature with a BatchNorm without affine and torch's default eps.
ATTENTIVE_BATCH_NORM_EPS = 1e-5


class AttentivePooler(nn.Module):
    """CAE's attentive-probe pooling (`AttentiveBlock` + `LP_BatchNorm`): one learned query token attends, by
    multi-head cross-attention, over the encoder's final-norm tokens ([CLS] and patches); query, keys and values each
    pass their own LayerNorm first; no residual and no MLP; the attended feature goes through an output projection and
    a BatchNorm without affine (batch statistics in training, running statistics in eval mode).

    The projections are parameters of this module (not `nn.Linear`s), so that their initialisation is CAE's
    (normal std 0.02, zero biases, a zero query token) whatever the family's rule for linear layers; as CAE, the key
    projection has no bias and the query and value ones have one when `config.qkv_bias`.
    """

    def __init__(self, config):
        super().__init__()
        hidden_size = config.hidden_size
        self.num_heads = config.attentive_num_heads or config.num_attention_heads
        self.query_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.norm_query = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.norm_key = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.norm_value = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.query_weight = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.key_weight = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.value_weight = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.query_bias = nn.Parameter(torch.zeros(hidden_size)) if config.qkv_bias else None
        self.value_bias = nn.Parameter(torch.zeros(hidden_size)) if config.qkv_bias else None
        self.output_weight = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.output_bias = nn.Parameter(torch.zeros(hidden_size))
        self.batch_norm = nn.BatchNorm1d(hidden_size, affine=False, eps=ATTENTIVE_BATCH_NORM_EPS)
        self.reset_parameters(config.initializer_range)

    @torch.no_grad()
    def reset_parameters(self, std: float) -> None:
        """CAE's initialisation (through `transformers.initialization`, which leaves loaded tensors alone)."""
        init.zeros_(self.query_token)
        for weight in (self.query_weight, self.key_weight, self.value_weight, self.output_weight):
            init.trunc_normal_(weight, std=std)
        for bias in (self.query_bias, self.value_bias, self.output_bias):
            if bias is not None:
                init.zeros_(bias)
        init.zeros_(self.batch_norm.running_mean)
        init.ones_(self.batch_norm.running_var)
        init.zeros_(self.batch_norm.num_batches_tracked)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # (B, N, D) final-norm encoder tokens -> (B, D)
        batch_size, length, hidden_size = hidden_states.shape
        head_size = hidden_size // self.num_heads
        query = self.norm_query(self.query_token).expand(batch_size, -1, -1)
        query = F.linear(query, self.query_weight, self.query_bias).view(batch_size, 1, self.num_heads, head_size)
        key = F.linear(self.norm_key(hidden_states), self.key_weight)
        value = F.linear(self.norm_value(hidden_states), self.value_weight, self.value_bias)
        key = key.view(batch_size, length, self.num_heads, head_size)
        value = value.view(batch_size, length, self.num_heads, head_size)
        attended = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
        pooled = F.linear(attended.reshape(batch_size, hidden_size), self.output_weight, self.output_bias)
        return self.batch_norm(pooled)


class ImageClassifierOnEncoder:
    """The `...ForImageClassification` part of both families, mixed into a `MaskedViTPreTrainedModel` subclass whose
    `__init__` builds the encoder (`base_model`) and then calls `add_classification_head`."""

    def add_classification_head(self, config) -> None:
        """`classifier_pooling="mean"` averages the patch tokens and normalises them with `fc_norm` (MAE / CAE
        fine-tuning); `"cls"` takes the encoder's [CLS] token; `classifier_head="attentive"` (with `"cls"`, so that the
        encoder keeps its final norm) pools all tokens with `AttentivePooler` (CAE's attentive probe)."""
        self.num_labels = config.num_labels
        attentive = config.classifier_head == "attentive"
        mean_pooling = config.classifier_pooling == "mean" and not attentive
        self.fc_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if mean_pooling else None
        self.attentive_pooler = AttentivePooler(config) if attentive else None
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()

    @can_return_tuple
    @auto_docstring
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> ImageClassifierOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Class indices for the cross-entropy loss (or float targets for regression / multi-label, following
            `config.problem_type`).
        interpolate_pos_encoding (`bool`, *optional*, defaults to `False`):
            Accept another input resolution; the position embeddings follow the new patch grid.
        """
        outputs = self.base_model(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs)
        if self.attentive_pooler is not None:
            pooled = self.attentive_pooler(outputs.last_hidden_state)  # (B, D): attention over all tokens
        elif self.fc_norm is not None:
            pooled = self.fc_norm(outputs.last_hidden_state[:, 1:, :].mean(dim=1))  # (B, D): mean of patch tokens
        else:
            pooled = outputs.pooler_output  # (B, D): [CLS]
        logits = self.classifier(pooled)  # (B, num_labels)
        loss = self.loss_function(labels, logits, self.config, **kwargs) if labels is not None else None
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class MultiScaleNeck(nn.Module):
    """The adapter BEiT, MAE and CAE put between a plain ViT and a dense head (UperNet, Mask R-CNN): four maps at the
    patch stride p become strides p/4, p/2, p and 2p (4, 8, 16, 32 for 16-pixel patches).

    p/4: two stride-2 transposed convolutions with BatchNorm and GELU between them; p/2: one transposed convolution;
    p: identity; 2p: 2x2 max-pooling. Widths stay `hidden_size`; the head's own lateral convolutions adapt them.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.upsample_4x = nn.Sequential(
            nn.ConvTranspose2d(hidden_size, hidden_size, kernel_size=2, stride=2),
            nn.BatchNorm2d(hidden_size),
            nn.GELU(),
            nn.ConvTranspose2d(hidden_size, hidden_size, kernel_size=2, stride=2),
        )
        self.upsample_2x = nn.ConvTranspose2d(hidden_size, hidden_size, kernel_size=2, stride=2)
        self.downsample_2x = nn.MaxPool2d(kernel_size=2, stride=2)

    def forward(self, feature_maps: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        # (B, D, h, w) each -> (B, D, 4h, 4w), (B, D, 2h, 2w), (B, D, h, w), (B, D, h // 2, w // 2)
        first, second, third, fourth = feature_maps
        return self.upsample_4x(first), self.upsample_2x(second), third, self.downsample_2x(fourth)


def tokens_to_feature_map(hidden_state: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """`(B, 1 + h*w, D)` encoder tokens ([CLS] first, patches in raster order) -> `(B, D, h, w)`."""
    batch_size, _, hidden_size = hidden_state.shape
    return hidden_state[:, 1:, :].transpose(1, 2).reshape(batch_size, hidden_size, grid[0], grid[1])


class BackboneOnEncoder:
    """The `...Backbone` part of both families, mixed into `BackboneMixin` and a `MaskedViTPreTrainedModel` subclass
    whose `__init__` builds the encoder (`base_model`, without its final LayerNorm: BEiT/ViTDet backbones and the
    official dense fine-tuning take the block outputs) and then calls `add_backbone_neck`.

    Stage 0 ("stem") is the patch embeddings with positions, stage i the output of encoder layer i; every stage has
    `hidden_size` channels at stride `patch_size`, unless `config.backbone_multi_scale` turns the 4 chosen ones into
    strides p/4, p/2, p and 2p.
    """

    def add_backbone_neck(self, config) -> None:
        # Again here: `from_pretrained(..., out_indices=...)` sets stages after the config validated itself.
        config.validate_backbone()
        self.num_features = [config.hidden_size] * (config.num_hidden_layers + 1)
        self.multi_scale = MultiScaleNeck(config.hidden_size) if config.backbone_multi_scale else None

    @can_return_tuple
    @filter_output_hidden_states
    @auto_docstring
    def forward(self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> BackboneOutput:
        r"""
        Any input size works: the encoder's position embeddings follow the patch grid, and a height or width that is
        not a multiple of `patch_size` p is zero-padded at the bottom / right up to one (as ViTDet does; detection
        image processors give such sizes). Returns `feature_maps`, one `(batch_size, hidden_size, ceil(height / p),
        ceil(width / p))` map per stage of `config.out_features` (or the 4 multi-scale maps).

        Example:

        ```python
        >>> import torch
        >>> from transformers import AutoBackbone
        >>> from transformers_mixedae import MixedAEConfig
        >>> config = MixedAEConfig(image_size=32, patch_size=4, hidden_size=64, num_hidden_layers=4,
        ...     num_attention_heads=4, intermediate_size=128, out_indices=[2, 4])
        >>> backbone = AutoBackbone.from_config(config)
        >>> [tuple(feature_map.shape) for feature_map in backbone(torch.randn(1, 3, 48, 32)).feature_maps]
        [(1, 64, 12, 8), (1, 64, 12, 8)]
        ```
        """
        patch_size = self.config.patch_size
        pad_height, pad_width = -pixel_values.shape[2] % patch_size, -pixel_values.shape[3] % patch_size
        if pad_height or pad_width:
            pixel_values = nn.functional.pad(pixel_values, (0, pad_width, 0, pad_height))
        grid = (pixel_values.shape[2] // patch_size, pixel_values.shape[3] // patch_size)
        # Dense tasks train and infer at sizes other than the pre-training one, so positions always follow the grid.
        kwargs.pop("interpolate_pos_encoding", None)
        outputs = self.base_model(pixel_values, interpolate_pos_encoding=True, **kwargs)
        # hidden_states: the embeddings output, then every layer's output, as `stage_names`.
        feature_maps = tuple(
            tokens_to_feature_map(hidden_state, grid)
            for stage, hidden_state in zip(self.stage_names, outputs.hidden_states)
            if stage in self.out_features
        )
        if self.multi_scale is not None:
            self.config.validate_backbone()  # the stages may have been changed on the config since
            feature_maps = self.multi_scale(feature_maps)
        return BackboneOutput(
            feature_maps=feature_maps, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


# The keywords of `from_pretrained` that say where and how to fetch files, for reading the config first.
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")


def final_layernorm(config, add: bool) -> nn.Module:
    """The encoder's closing LayerNorm, or an identity where the encoder's raw last layer is wanted (a backbone's
    feature maps, a head that brings its own norm)."""
    return nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if add else nn.Identity()


def hub_kwargs(from_pretrained_kwargs: dict) -> dict:
    return {key: from_pretrained_kwargs[key] for key in HUB_KWARGS if key in from_pretrained_kwargs}
