# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""What the MixedAE and CAE configurations share.

Both describe a ViT encoder with frozen 2-D sin-cos positions and a decoder of `decoder_hidden_size` width:
`MaskedViTConfig` holds the encoder fields, the sizes derived from them, the backbone fields (`out_features` /
`out_indices` over the stages "stem", "stage1".."stageL", `backbone_multi_scale`), their checks, and the check that a
loaded config describes the right model family. The check helpers raise a `ValueError` naming the field and its value.

This module only imports from `transformers` and `huggingface_hub`, so it can be shipped as flat remote code next to
the configuration files.
"""

import os

from transformers import PreTrainedConfig
from transformers.activations import ACT2FN
from transformers.backbone_utils import BackboneConfigMixin
from transformers.configuration_utils import CONFIG_NAME
from transformers.models.auto.configuration_auto import CONFIG_MAPPING


def to_2tuple(value: int | list[int] | tuple[int, int]) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"expected an int or a pair of ints, got {value!r}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


def check_config_values(config, positive_fields: tuple[str, ...], probability_fields: tuple[str, ...]) -> None:
    """Raise a `ValueError` naming the config field and its value when `image_size` is not a positive int or pair
    of positive ints, a size in `positive_fields` is below 1 (`None` is skipped), a rate in `probability_fields` is
    outside [0, 1), `layer_norm_eps` or `initializer_range` is not positive or `hidden_act` is not a transformers
    activation."""
    size = config.image_size
    is_pair = isinstance(size, (list, tuple))
    if (is_pair and len(size) != 2) or min(size if is_pair else [size]) < 1:
        raise ValueError(f"image_size={size} must be a positive int or a pair of positive ints (height, width).")
    for name in positive_fields:
        value = getattr(config, name)
        if value is not None and value < 1:
            raise ValueError(f"{name}={value} must be at least 1.")
    for name in probability_fields:
        if not 0 <= getattr(config, name) < 1:
            raise ValueError(f"{name}={getattr(config, name)} must be in [0, 1).")
    if not config.layer_norm_eps > 0:
        raise ValueError(f"layer_norm_eps={config.layer_norm_eps} must be > 0.")
    if not config.initializer_range > 0:
        raise ValueError(f"initializer_range={config.initializer_range} must be > 0 (the standard deviation of the "
                         "initial weights, e.g. 0.02).")
    if config.hidden_act not in ACT2FN:
        raise ValueError(f"hidden_act={config.hidden_act!r} is not an activation of transformers.activations.ACT2FN.")


def check_vit_geometry(config, width_head_fields: tuple[tuple[str, str], ...]) -> None:
    """Raise a `ValueError` naming the config fields when the image does not split into patches, or a width does
    not split into its heads or into the four quarters of a 2-D sin-cos position table.

    `width_head_fields` pairs width and head-count field names, e.g. `(("hidden_size", "num_attention_heads"),)`.
    """
    height, width = to_2tuple(config.image_size)
    if config.patch_size <= 0 or height % config.patch_size or width % config.patch_size:
        raise ValueError(
            f"image_size={config.image_size} is not divisible by patch_size={config.patch_size}: "
            "choose an image size that is a multiple of the patch size."
        )
    for width_name, heads_name in width_head_fields:
        width_value, heads_value = getattr(config, width_name), getattr(config, heads_name)
        if heads_value <= 0 or width_value % heads_value:
            raise ValueError(f"{width_name}={width_value} is not divisible by {heads_name}={heads_value}.")
        if width_value % 4:
            raise ValueError(
                f"{width_name}={width_value} is not divisible by 4, which the 2-D sin-cos position embeddings need."
            )


def config_source(pretrained_model_name_or_path: str | os.PathLike, subfolder: str | None = None) -> str:
    """The `config.json` a `from_pretrained` call reads, for error messages (the Hub id itself for the Hub)."""
    path = os.fspath(pretrained_model_name_or_path)
    if os.path.isdir(path):
        return os.path.join(path, subfolder or "", CONFIG_NAME)
    return path


def check_config_model_type(
    config_class: type, config_dict: dict, source: str, also_accepted: tuple[str, ...] = ()
) -> None:
    """Raise a `ValueError` when `config_dict` describes another model family than `config_class`.

    Without it the fields of the other family are read as ours and fail on an unrelated field (e.g. "Field
    'decoder_intermediate_size' expected int, got NoneType" for a CAE checkpoint loaded as MixedAE).
    """
    found = config_dict.get("model_type")
    if found is None or found == config_class.model_type or found in also_accepted:
        return
    try:
        right_class = f"{CONFIG_MAPPING[found].__name__} and its model classes"
    except KeyError:
        right_class = f"the classes of model_type {found!r}"
    raise ValueError(
        f"{source} describes a model_type={found!r} model, but {config_class.__name__} loads "
        f"model_type={config_class.model_type!r} only: load it with {right_class}, or with the Auto classes "
        "(AutoConfig, AutoModel, AutoModelForPreTraining, AutoModelForImageClassification), which pick the class "
        "from model_type."
    )


CLASSIFIER_HEADS = ("linear", "attentive")


# The multi-scale adapter turns exactly this many encoder stages into strides patch_size / 4, / 2, x 1 and x 2
# (4, 8, 16 and 32 for 16-pixel patches).
MULTI_SCALE_NUM_STAGES = 4


class MaskedViTConfig(BackboneConfigMixin, PreTrainedConfig):
    r"""
    The encoder fields of `MixedAEConfig` and `CAEConfig` (documented there), with their checks. A subclass is a
    `@strict` config that adds its own fields and names its own sizes in `size_fields` and `width_head_fields`.

    The backbone fields, used by `MixedAEBackbone` / `CAEBackbone` only (as `BeitConfig` / `ViTDetConfig`):

    Args:
        out_features (`list[str]`, *optional*):
            Stages whose feature maps the backbone returns, among `stage_names`: "stem" (the patch embeddings with
            positions) and "stage1".."stageL" (the output of encoder layer i). Defaults to the last stage.
        out_indices (`list[int]`, *optional*):
            The same stages by index in `stage_names` (0 is "stem"); aligned with `out_features` when both are given.
        backbone_multi_scale (`bool`, defaults to `False`):
            Turn the 4 chosen stages (all at stride `patch_size`) into strides 4, 8, 16 and 32 with the adapter
            BEiT/MAE/CAE use for dense heads (for `patch_size=16`: 4x up, 2x up, identity, 2x down). Needs exactly
            4 `out_indices`.

    The classifier head of `MixedAEForImageClassification` / `CAEForImageClassification`:

    Args:
        classifier_head (`str`, defaults to `"linear"`):
            `"linear"`: a Linear on the pooled feature (`classifier_pooling`). `"attentive"`: CAE's attentive probe
            head, a learned query token cross-attending over the encoder's final-norm tokens ([CLS] and patches),
            then a BatchNorm without affine and the Linear; needs `classifier_pooling="cls"` (the encoder keeps its
            final LayerNorm, as CAE's `--use_cls`).
        attentive_num_heads (`int`, *optional*):
            Heads of the attentive head's cross-attention; defaults to `num_attention_heads` (CAE). Must divide
            `hidden_size`.
    """

    # Model types besides `model_type` whose config dicts this class reads.
    also_accepted_model_types = ()
    # Sizes that must be at least 1, in the order they are checked.
    size_fields = ("hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_layers", "patch_size",
                   "num_channels")
    # (width, heads) pairs: the width must split into its heads and into the quarters of a 2-D sin-cos table.
    width_head_fields = (("hidden_size", "num_attention_heads"),)

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.0
    drop_path_rate: float | int = 0.0
    initializer_range: float | int = 0.02
    layer_norm_eps: float | int = 1e-6
    image_size: int | list[int] | tuple[int, int] = 224
    patch_size: int = 16
    num_channels: int = 3
    qkv_bias: bool = True
    backbone_multi_scale: bool = False
    classifier_head: str = "linear"
    attentive_num_heads: int | None = None
    # Set from the `out_features` / `out_indices` keywords by `set_output_features_output_indices` (BackboneConfigMixin),
    # which aligns them with each other and with `stage_names`; `to_dict` writes them without the underscore.
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    def __post_init__(self, **kwargs):
        # `stage_names` follows `num_hidden_layers` (a property): a saved copy in config.json is not read back.
        kwargs.pop("stage_names", None)
        try:
            self.set_output_features_output_indices(
                out_features=kwargs.pop("out_features", None), out_indices=kwargs.pop("out_indices", None)
            )
        except ValueError as error:
            raise ValueError(
                f"{error}: with num_hidden_layers={self.num_hidden_layers} the stages are 'stem' (index 0, the patch "
                f"embeddings) and 'stage1'..'stage{self.num_hidden_layers}' (index i, the output of layer i); pass "
                "distinct stages in increasing order."
            ) from error
        super().__post_init__(**kwargs)

    @property
    def stage_names(self) -> list[str]:
        """The backbone stages: "stem" (patch embeddings) then "stage1".."stageL" (the encoder layers)."""
        return ["stem"] + [f"stage{index}" for index in range(1, self.num_hidden_layers + 1)]

    # ------------------------------------------------------------------ derived quantities
    @property
    def image_hw(self) -> tuple[int, int]:
        return to_2tuple(self.image_size)

    @property
    def grid_size(self) -> tuple[int, int]:
        height, width = self.image_hw
        return height // self.patch_size, width // self.patch_size

    @property
    def num_patches(self) -> int:
        grid_height, grid_width = self.grid_size
        return grid_height * grid_width

    # ------------------------------------------------------------------ validation
    def validate_architecture(self):
        super().validate_architecture()
        check_config_values(
            self,
            positive_fields=self.size_fields,
            probability_fields=("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate"),
        )
        check_vit_geometry(self, self.width_head_fields)

    def validate_classifier_head(self):
        if self.classifier_head not in CLASSIFIER_HEADS:
            raise ValueError(f"classifier_head={self.classifier_head!r} must be one of {CLASSIFIER_HEADS}.")
        heads = self.attentive_num_heads
        if heads is not None and (heads < 1 or self.hidden_size % heads):
            raise ValueError(
                f"attentive_num_heads={heads} must be at least 1 and divide hidden_size={self.hidden_size} (or None "
                f"for num_attention_heads={self.num_attention_heads})."
            )
        pooling = getattr(self, "classifier_pooling", "cls")
        if self.classifier_head == "attentive" and pooling != "cls":
            raise ValueError(
                f"classifier_head='attentive' with classifier_pooling={pooling!r}: the attentive head attends over the "
                "encoder's final-norm tokens, which classifier_pooling='cls' keeps (mean pooling replaces the final "
                "norm by fc_norm); set classifier_pooling='cls'."
            )

    def validate_backbone(self):
        if self.backbone_multi_scale and len(self._out_indices) != MULTI_SCALE_NUM_STAGES:
            raise ValueError(
                f"backbone_multi_scale=True turns exactly {MULTI_SCALE_NUM_STAGES} stages into 4x up-sampled, 2x "
                f"up-sampled, unchanged and 2x down-sampled maps, got out_indices={self._out_indices}: pass 4 indices "
                f"(e.g. [3, 5, 7, 11] for 12 layers; num_hidden_layers={self.num_hidden_layers}) or "
                "backbone_multi_scale=False."
            )

    # ------------------------------------------------------------------ loading
    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs) -> tuple[dict, dict]:
        source = config_source(pretrained_model_name_or_path, kwargs.get("subfolder"))
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        check_config_model_type(cls, config_dict, source, also_accepted=cls.also_accepted_model_types)
        return config_dict, kwargs

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        check_config_model_type(cls, config_dict, "the config dict", also_accepted=cls.also_accepted_model_types)
        return super().from_dict(config_dict, **kwargs)
