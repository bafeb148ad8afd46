# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Export our encoders to native transformers classes, loadable with no extra package.

* MixedAE -> `ViTModel` (task "feature-extraction") or `ViTForImageClassification` ("image-classification").
  A MixedAE encoder *is* a ViT: pre-norm blocks with q/k/v/o projections, LayerNorm, [CLS] and a position
  table whose [CLS] slot is zero. The fixed sin-cos table becomes ViT's (trainable) position embeddings and
  the segment embeddings, which only tag the source image of a token during mixed pre-training, are dropped.

Pooling. `MixedAEModel.pooler_output` is the [CLS] row of `last_hidden_state`; `ViTModel` adds a dense + tanh
pooler. The feature-extraction export keeps that pooler but makes it the identity (identity weight, zero bias,
`pooler_act="linear"`), so `ViTModel.from_pretrained(folder)` loads without missing weights and its
`pooler_output` equals ours. `ViTForImageClassification` classifies the [CLS] token, which is exactly
`MixedAEForImageClassification` with `classifier_pooling="cls"`; mean pooling with `fc_norm` has no native
equivalent, so such a fine-tuned classifier is refused (export the encoder, or use the remote-code route).

Training-only settings that `ViTConfig` cannot hold (drop path) are not exported; dropout values are kept.
Weights are written by `ViTModel.save_pretrained`, which stores the names every transformers version reads.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    PreTrainedModel,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessorPil,
    ViTModel,
)
from transformers.utils import logging

from .configuration_mixedae import MixedAEConfig
from .image_processing_mixedae import MixedAEImageProcessorPil, evaluation_sizes
from .modeling_mixedae import MixedAEForImageClassification, MixedAEForPreTraining, MixedAEModel

logger = logging.get_logger(__name__)

TASKS = ("feature-extraction", "image-classification")

# MixedAE encoder weights that have no counterpart in a plain ViT, and why they can be dropped.
MIXEDAE_PRETRAINING_ONLY_KEYS = ("embeddings.segment_embeddings.weight",)  # tags the source image under mixing

_MIXEDAE_ARCHITECTURES = {
    "MixedAEModel": MixedAEModel,
    "MixedAEForPreTraining": MixedAEForPreTraining,
    "MixedAEForImageClassification": MixedAEForImageClassification,
}


# ---------------------------------------------------------------------------------------------- configs
def vit_config_from_mixedae(config: MixedAEConfig, task: str = "feature-extraction") -> ViTConfig:
    """The `ViTConfig` of the same encoder; labels are kept for "image-classification"."""
    _check_task(task)
    label_kwargs = {}
    if task == "image-classification":
        label_kwargs = {"id2label": dict(config.id2label), "label2id": dict(config.label2id)}
        if config.problem_type is not None:
            label_kwargs["problem_type"] = config.problem_type
    return ViTConfig(
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        hidden_act=config.hidden_act,
        hidden_dropout_prob=config.hidden_dropout_prob,
        attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        initializer_range=config.initializer_range,
        layer_norm_eps=config.layer_norm_eps,
        image_size=list(config.image_hw),
        patch_size=config.patch_size,
        num_channels=config.num_channels,
        qkv_bias=config.qkv_bias,
        encoder_stride=config.patch_size,
        # With an identity dense layer this pooler returns the [CLS] token, MixedAE's `pooler_output`.
        pooler_act="linear",
        **label_kwargs,
    )


def vit_image_processor_from_mixedae(
    image_processor: MixedAEImageProcessorPil | None = None, config: MixedAEConfig | None = None
) -> ViTImageProcessorPil:
    """A `ViTImageProcessorPil` with the same resize / crop / normalisation (saved as `ViTImageProcessor`).

    Without a processor, MixedAE's evaluation transform for `config.image_size` (short side / 0.875, centre crop).
    """
    if image_processor is None:
        height, width = config.image_hw if config is not None else (224, 224)
        if height == width:
            image_processor = MixedAEImageProcessorPil(**evaluation_sizes(height))
        else:
            image_processor = MixedAEImageProcessorPil(size={"height": height, "width": width}, do_center_crop=False)
    settings = image_processor.to_dict()
    settings.pop("image_processor_type", None)
    settings.pop("auto_map", None)
    return ViTImageProcessorPil(**settings)


# ---------------------------------------------------------------------------------------------- weights
def vit_state_dict_from_mixedae(encoder_state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a `MixedAEModel` state dict to `ViTModel` (transformers 5.x module names).

    The two share module names (`embeddings.cls_token`, `embeddings.position_embeddings`,
    `embeddings.patch_embeddings.projection`, `layers.N.attention.{q,k,v,o}_proj`, `layers.N.layernorm_before`,
    `layers.N.layernorm_after`, `layers.N.mlp.fc1/fc2`, `layernorm`): only pre-training-only tensors are dropped.
    """
    return {key: value for key, value in encoder_state_dict.items() if key not in MIXEDAE_PRETRAINING_ONLY_KEYS}


def _identity_pooler_state(hidden_size: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {
        "pooler.dense.weight": torch.eye(hidden_size, dtype=dtype),
        "pooler.dense.bias": torch.zeros(hidden_size, dtype=dtype),
    }


def convert_mixedae_to_vit(
    model: MixedAEModel | MixedAEForPreTraining | MixedAEForImageClassification,
    task: str = "feature-extraction",
) -> ViTModel | ViTForImageClassification:
    """Build the native ViT equivalent of a MixedAE model in memory (eval mode, same dtype).

    "feature-extraction" gives a `ViTModel` whose `last_hidden_state` and `pooler_output` equal
    `MixedAEModel`'s. "image-classification" gives a `ViTForImageClassification`: from a
    `MixedAEForImageClassification` with `classifier_pooling="cls"` the classifier is copied (same logits);
    from a pre-training or base model the classifier is newly initialised (a warning says so).
    """
    _check_task(task)
    if not isinstance(model, tuple(_MIXEDAE_ARCHITECTURES.values())):
        raise TypeError(f"expected a MixedAE model, got {type(model).__name__}")
    config: MixedAEConfig = model.config
    encoder: MixedAEModel = model.base_model
    dtype = encoder.embeddings.cls_token.dtype
    encoder_state = vit_state_dict_from_mixedae(encoder.state_dict())
    vit_config = vit_config_from_mixedae(config, task)
    vit_config.dtype = dtype

    if task == "feature-extraction":
        vit_config.architectures = ["ViTModel"]
        target = ViTModel(vit_config, add_pooling_layer=True)
        state = encoder_state | _identity_pooler_state(config.hidden_size, dtype)
    else:
        vit_config.architectures = ["ViTForImageClassification"]
        target = ViTForImageClassification(vit_config)
        state = {f"vit.{key}": value for key, value in encoder_state.items()}
        if isinstance(model, MixedAEForImageClassification):
            if model.fc_norm is not None:
                raise ValueError(
                    "this classifier pools the mean patch token through `fc_norm` (classifier_pooling='mean'); "
                    "ViTForImageClassification classifies the [CLS] token, so its logits would differ. Export the "
                    "encoder with task='feature-extraction', or share the model with its remote code "
                    "(`save_pretrained_with_remote_code`)."
                )
            state |= {f"classifier.{key}": value for key, value in model.classifier.state_dict().items()}
        else:
            state |= {f"classifier.{key}": value for key, value in target.classifier.state_dict().items()}
            logger.warning(
                "%s has no classification head: the exported ViTForImageClassification gets a newly initialised "
                "classifier on the [CLS] token (%d labels); fine-tune it before use.",
                type(model).__name__,
                vit_config.num_labels,
            )
    target.to(dtype)
    # strict: a key that is missing or left over means the two architectures disagree, never silently ignored.
    target.load_state_dict(state, strict=True)
    return target.eval()


# ---------------------------------------------------------------------------------------------- entry point
def load_model_for_export(model_or_path: PreTrainedModel | str | os.PathLike) -> PreTrainedModel:
    """A model object, or the checkpoint at a local path / Hub id loaded with its saved architecture."""
    if isinstance(model_or_path, PreTrainedModel):
        return model_or_path
    config = AutoConfig.from_pretrained(model_or_path)
    if isinstance(config, MixedAEConfig):
        architecture = (config.architectures or ["MixedAEModel"])[0]
        model_class = _MIXEDAE_ARCHITECTURES.get(architecture, MixedAEModel)
        return model_class.from_pretrained(model_or_path, config=config)
    raise ValueError(
        f"{model_or_path} holds a {type(config).__name__} (model_type {config.model_type!r}); "
        f"export supports: {', '.join(sorted(_EXPORTERS))}."
    )


def export_to_transformers(
    model_or_path: PreTrainedModel | str | os.PathLike,
    output_dir: str | os.PathLike,
    task: str = "feature-extraction",
    image_processor=None,
    safe_serialization: bool = True,
) -> Path:
    """Save `model_or_path` as a native transformers checkpoint in `output_dir` and return the folder.

    MixedAE becomes `ViTModel` ("feature-extraction") or `ViTForImageClassification` ("image-classification").
    The image processor is written as a `ViTImageProcessor` with the same settings: `image_processor` if given,
    else the one saved next to the checkpoint, else MixedAE's evaluation transform. The folder loads with
    `AutoModel` / `AutoModelForImageClassification` / `AutoImageProcessor` / `pipeline(...)` in any environment
    that has transformers.
    """
    _check_task(task)
    model = load_model_for_export(model_or_path)
    exporter = _EXPORTERS.get(model.config.model_type)
    if exporter is None:
        raise ValueError(
            f"no native export for model_type {model.config.model_type!r}; supported: {sorted(_EXPORTERS)}"
        )
    if image_processor is None and not isinstance(model_or_path, PreTrainedModel):
        image_processor = _load_saved_image_processor(model_or_path)
    native_model, native_processor = exporter(model, task, image_processor)

    output_dir = Path(output_dir)
    native_model.save_pretrained(output_dir, safe_serialization=safe_serialization)
    native_processor.save_pretrained(output_dir)
    logger.info("exported %s as %s to %s", type(model).__name__, type(native_model).__name__, output_dir)
    return output_dir


def _export_mixedae(model, task: str, image_processor):
    return convert_mixedae_to_vit(model, task), vit_image_processor_from_mixedae(image_processor, model.config)


_EXPORTERS = {MixedAEConfig.model_type: _export_mixedae}


def _load_saved_image_processor(path: str | os.PathLike):
    try:
        return AutoImageProcessor.from_pretrained(path, backend="pil")
    except (OSError, ValueError):
        return None  # no preprocessor_config.json: the exporter uses the model's default transform


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not one of {TASKS}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Export a MixedAE checkpoint as a native transformers ViT checkpoint (no extra package needed)."
    )
    parser.add_argument("model", help="local folder or Hub id of a MixedAE checkpoint")
    parser.add_argument("output_dir")
    parser.add_argument("--task", choices=TASKS, default="feature-extraction")
    args = parser.parse_args(argv)
    logging.set_verbosity_info()
    print(export_to_transformers(args.model, args.output_dir, task=args.task))


if __name__ == "__main__":
    main()


__all__ = [
    "convert_mixedae_to_vit",
    "export_to_transformers",
    "load_model_for_export",
    "vit_config_from_mixedae",
    "vit_image_processor_from_mixedae",
    "vit_state_dict_from_mixedae",
]
