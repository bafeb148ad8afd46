# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Export our encoders to native transformers classes, loadable with no extra package.

* MixedAE -> `ViTModel` ("feature-extraction") or `ViTForImageClassification` ("image-classification").
  A MixedAE encoder *is* a ViT: pre-norm blocks with q/k/v/o projections, LayerNorm, [CLS] and a position table
  whose [CLS] slot is zero. The fixed sin-cos table becomes ViT's (trainable) position embeddings; the segment
  embeddings, which only tag the source image of a token during mixed pre-training, are dropped.
* CAE -> `BeitModel` / `BeitForImageClassification`, the native class with the same block: LayerScale
  (`lambda_1/2`), query and value biases without a key bias. BEiT's absolute position embeddings
  (`use_absolute_position_embeddings=True`) hold CAE's sin-cos table; no relative position bias.

Pooling. `MixedAEModel.pooler_output` is the [CLS] row of `last_hidden_state`; `ViTModel` adds a dense + tanh
pooler. The ViT feature-extraction export keeps that pooler but makes it the identity (identity weight, zero bias,
`pooler_act="linear"`), so `ViTModel.from_pretrained(folder)` loads without missing weights and its
`pooler_output` equals ours. `ViTForImageClassification` classifies the [CLS] token: exactly
`MixedAEForImageClassification` with `classifier_pooling="cls"`, while MixedAE's mean pooling (`fc_norm` over the
mean of the *normalised* patch tokens) has no native equivalent and is refused. BEiT pools either way CAE does:
[CLS] after the final LayerNorm, or the mean patch token through a LayerNorm (`use_mean_pooling=True`, CAE's
`fc_norm`, with the final LayerNorm dropped), so every CAE model exports exactly.

Not carried over: MixedAE's drop path (ViT has none); at another input resolution, ViT/BEiT resample the position
table bicubically (like MixedAE, unlike CAE, which builds a fresh sin-cos table). Weights are written by
`save_pretrained` of the native class, which stores the names every transformers version reads.

The output folder is written atomically (staged in a hidden sibling folder, moved in at the end). A folder that
holds an earlier result is refused unless `--overwrite_output_dir` (`overwrite=True`) is given, which replaces that
result's files.
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
    BeitConfig,
    BeitForImageClassification,
    BeitImageProcessorPil,
    BeitModel,
    PreTrainedConfig,
    PreTrainedModel,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessorPil,
    ViTModel,
)
from transformers.utils import logging

from ..cli import run_cli
from ..models.configuration_cae import CAEConfig
from ..models.configuration_mixedae import MixedAEConfig
from ..models.image_processing_cae import CAEImageProcessorPil
from ..models.image_processing_mixedae import MixedAEImageProcessorPil, evaluation_sizes
from ..models.modeling_cae import CAEForImageClassification, CAEForPreTraining, CAEModel
from ..models.modeling_mixedae import MixedAEForImageClassification, MixedAEForPreTraining, MixedAEModel
from ..training.output_folders import OutputDirectoryError, check_model_path, staged_output_dir

logger = logging.get_logger(__name__)

TASKS = ("feature-extraction", "image-classification")

# MixedAE encoder weights that have no counterpart in a plain ViT: they tag the source image under mixing.
MIXEDAE_PRETRAINING_ONLY_KEYS = ("embeddings.segment_embeddings.weight",)

# Processor settings every ViT-family processor understands; model-specific ones (CAE's mask options) stay behind.
STANDARD_PROCESSOR_SETTINGS = (
    "do_resize",
    "size",
    "resample",
    "do_center_crop",
    "crop_size",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
    "do_convert_rgb",
)

ARCHITECTURES = {
    MixedAEConfig.model_type: {
        cls.__name__: cls for cls in (MixedAEModel, MixedAEForPreTraining, MixedAEForImageClassification)
    },
    CAEConfig.model_type: {cls.__name__: cls for cls in (CAEModel, CAEForPreTraining, CAEForImageClassification)},
}


# ---------------------------------------------------------------------------------------------- shared
def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not one of {TASKS}")


def _label_settings(config: PreTrainedConfig, task: str) -> dict:
    if task != "image-classification":
        return {}
    settings = {"id2label": dict(config.id2label), "label2id": dict(config.label2id)}
    if config.problem_type is not None:
        settings["problem_type"] = config.problem_type
    return settings


def _encoder_settings(config: PreTrainedConfig) -> dict:
    """Fields that ViT and BEiT configs share with ours, under the same names."""
    return {
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "intermediate_size": config.intermediate_size,
        "hidden_act": config.hidden_act,
        "hidden_dropout_prob": config.hidden_dropout_prob,
        "attention_probs_dropout_prob": config.attention_probs_dropout_prob,
        "initializer_range": config.initializer_range,
        "layer_norm_eps": config.layer_norm_eps,
        "patch_size": config.patch_size,
        "num_channels": config.num_channels,
    }


def _native_image_processor(native_class: type, image_processor, default_class: type, image_hw: tuple[int, int]):
    """`native_class` with the resize / crop / normalisation of `image_processor` (or of our default transform)."""
    if image_processor is None:
        image_processor = default_class(**evaluation_sizes(image_hw))  # our evaluation transform
    settings = image_processor.to_dict()
    return native_class(**{key: settings[key] for key in STANDARD_PROCESSOR_SETTINGS if key in settings})


def _source_encoder(model: PreTrainedModel, config_class: type, task: str):
    """`(config, encoder, dtype)` of a model of the family of `config_class`, after checking model and task."""
    _check_task(task)
    family_classes = tuple(ARCHITECTURES[config_class.model_type].values())
    if not isinstance(model, family_classes):
        raise TypeError(f"expected one of {[cls.__name__ for cls in family_classes]}, got {type(model).__name__}")
    if task == "image-classification" and getattr(model, "attentive_pooler", None) is not None:
        raise ValueError(
            "this classifier pools with CAE's attentive head (classifier_head='attentive'), which the native ViT / "
            "BEiT classifiers do not have, so their logits would differ. Export the encoder with "
            "task='feature-extraction', or share the model with its remote code (`save_pretrained_with_remote_code`)."
        )
    encoder = model.base_model
    return model.config, encoder, encoder.embeddings.cls_token.dtype


def _load_into(target: PreTrainedModel, state: Mapping[str, torch.Tensor], dtype: torch.dtype) -> PreTrainedModel:
    target.to(dtype)
    # strict: a key missing or left over means the two architectures disagree, never silently ignored.
    target.load_state_dict(dict(state), strict=True)
    return target.eval()


def _warn_new_head(model: PreTrainedModel, native_class: type, num_labels: int) -> None:
    logger.warning(
        "%s has no classification head: the exported %s gets a newly initialised classifier (%d labels); fine-tune "
        "it before use.",
        type(model).__name__,
        native_class.__name__,
        num_labels,
    )


# ---------------------------------------------------------------------------------------------- MixedAE -> ViT
def vit_config_from_mixedae(config: MixedAEConfig, task: str = "feature-extraction") -> ViTConfig:
    """The `ViTConfig` of the same encoder; labels are kept for "image-classification"."""
    _check_task(task)
    return ViTConfig(
        **_encoder_settings(config),
        image_size=list(config.image_hw),
        qkv_bias=config.qkv_bias,
        encoder_stride=config.patch_size,
        # With an identity dense layer this pooler returns the [CLS] token, MixedAE's `pooler_output`.
        pooler_act="linear",
        **_label_settings(config, task),
    )


def vit_image_processor_from_mixedae(
    image_processor: MixedAEImageProcessorPil | None = None, config: MixedAEConfig | None = None
) -> ViTImageProcessorPil:
    """A `ViTImageProcessorPil` with the same resize / crop / normalisation (saved as `ViTImageProcessor`).

    Without a processor, MixedAE's evaluation transform for `config.image_size` (short side / 0.875, centre crop).
    """
    image_hw = config.image_hw if config is not None else (224, 224)
    return _native_image_processor(ViTImageProcessorPil, image_processor, MixedAEImageProcessorPil, image_hw)


def vit_state_dict_from_mixedae(encoder_state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a `MixedAEModel` state dict to `ViTModel` (transformers 5.x module names).

    The two share module names (`embeddings.cls_token`, `embeddings.position_embeddings`,
    `embeddings.patch_embeddings.projection`, `layers.N.attention.{q,k,v,o}_proj`, `layers.N.layernorm_before`,
    `layers.N.layernorm_after`, `layers.N.mlp.fc1/fc2`, `layernorm`): only pre-training-only tensors are dropped.
    """
    return {key: value for key, value in encoder_state_dict.items() if key not in MIXEDAE_PRETRAINING_ONLY_KEYS}


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
    config, encoder, dtype = _source_encoder(model, MixedAEConfig, task)
    encoder_state = vit_state_dict_from_mixedae(encoder.state_dict())
    if "layernorm.weight" not in encoder_state:
        # A mean-pooling classifier's encoder ends without the final LayerNorm (its `fc_norm` normalises the pooled
        # token instead); ViT always applies one to every token, and pools [CLS].
        raise ValueError(
            "this MixedAE classifier pools the mean patch token through `fc_norm` (classifier_pooling='mean') and its "
            "encoder has no final LayerNorm, which every ViT model applies: no native ViT gives its features or "
            "logits. Share the model with its remote code "
            "(`transformers_mixedae.hub.remote_code.save_pretrained_with_remote_code`) instead."
        )
    vit_config = vit_config_from_mixedae(config, task)
    vit_config.dtype = dtype

    if task == "feature-extraction":
        vit_config.architectures = ["ViTModel"]
        target = ViTModel(vit_config, add_pooling_layer=True)
        identity_pooler = {
            "pooler.dense.weight": torch.eye(config.hidden_size, dtype=dtype),
            "pooler.dense.bias": torch.zeros(config.hidden_size, dtype=dtype),
        }
        return _load_into(target, encoder_state | identity_pooler, dtype)

    vit_config.architectures = ["ViTForImageClassification"]
    target = ViTForImageClassification(vit_config)
    state = {f"vit.{key}": value for key, value in encoder_state.items()}
    if isinstance(model, MixedAEForImageClassification):  # a [CLS] classifier (mean pooling is refused above)
        head = model.classifier
    else:
        head = target.classifier
        _warn_new_head(model, ViTForImageClassification, vit_config.num_labels)
    state |= {f"classifier.{key}": value for key, value in head.state_dict().items()}
    return _load_into(target, state, dtype)


# ---------------------------------------------------------------------------------------------- CAE -> BEiT
def beit_config_from_cae(
    config: CAEConfig, task: str = "feature-extraction", use_mean_pooling: bool | None = None
) -> BeitConfig:
    """The `BeitConfig` of the same encoder (absolute sin-cos positions, LayerScale, no relative position bias).

    `use_mean_pooling` defaults to `config.classifier_pooling == "mean"` for "image-classification" and to False
    (final LayerNorm, [CLS] pooler) for "feature-extraction".
    """
    _check_task(task)
    height, width = config.image_hw
    if height != width:
        # BEiT always passes its table through a square-grid interpolation, which cannot hold a non-square grid.
        raise ValueError(f"BEiT needs square inputs; this CAE model is trained at {height}x{width}.")
    if use_mean_pooling is None:
        use_mean_pooling = task == "image-classification" and config.classifier_pooling == "mean"
    layer_scale = config.layer_scale_init_value
    return BeitConfig(
        **_encoder_settings(config),
        image_size=height,
        use_mask_token=False,
        use_absolute_position_embeddings=True,
        use_relative_position_bias=False,
        use_shared_relative_position_bias=False,
        # Only the sign matters on export (> 0: LayerScale parameters exist); their values are copied.
        layer_scale_init_value=float(layer_scale) if layer_scale is not None and layer_scale > 0 else 0.0,
        drop_path_rate=config.drop_path_rate,
        use_mean_pooling=use_mean_pooling,
        **_label_settings(config, task),
    )


def beit_image_processor_from_cae(
    image_processor: CAEImageProcessorPil | None = None, config: CAEConfig | None = None
) -> BeitImageProcessorPil:
    """A `BeitImageProcessorPil` with the same resize / crop / normalisation (mask options are not carried)."""
    image_hw = config.image_hw if config is not None else (224, 224)
    return _native_image_processor(BeitImageProcessorPil, image_processor, CAEImageProcessorPil, image_hw)


def beit_state_dict_from_cae(
    encoder_state_dict: Mapping[str, torch.Tensor], config: CAEConfig
) -> dict[str, torch.Tensor]:
    """Rename a `CAEModel` state dict to `BeitModel` (transformers 5.x module names).

    Module names are shared (`embeddings.*`, `layers.N.attention.{q,k,v,o}_proj`, `layers.N.lambda_1/2`,
    `layers.N.layernorm_before/after`, `layers.N.mlp.fc1/fc2`, `layernorm`). BEiT's query and value projections
    always have a bias: without `qkv_bias` they get zeros, which computes the same.
    """
    state = dict(encoder_state_dict)
    for index in range(config.num_hidden_layers):
        for projection in ("q_proj", "v_proj"):
            weight = state[f"layers.{index}.attention.{projection}.weight"]
            state.setdefault(f"layers.{index}.attention.{projection}.bias", weight.new_zeros(weight.shape[0]))
    return state


def convert_cae_to_beit(
    model: CAEModel | CAEForPreTraining | CAEForImageClassification, task: str = "feature-extraction"
) -> BeitModel | BeitForImageClassification:
    """Build the native BEiT equivalent of a CAE model in memory (eval mode, same dtype).

    "feature-extraction" gives a `BeitModel` with `last_hidden_state` and `pooler_output` equal to the CAE
    encoder's: [CLS] after the final LayerNorm, or, for a mean-pooling `CAEForImageClassification` (whose encoder
    has no final LayerNorm), the `fc_norm` of the mean patch token. "image-classification" gives a
    `BeitForImageClassification` with CAE's pooling; from a pre-training or base model the classifier is new and,
    with mean pooling, the final LayerNorm becomes the pooling norm (as the official fine-tuning loads it).
    """
    config, encoder, dtype = _source_encoder(model, CAEConfig, task)
    encoder_state = beit_state_dict_from_cae(encoder.state_dict(), config)
    fc_norm = getattr(model, "fc_norm", None)
    # The encoder's final LayerNorm, or the pooling norm that replaces it; exactly one of the two holds weights.
    final_norm_state = {
        key.removeprefix("layernorm."): encoder_state.pop(key)
        for key in list(encoder_state)
        if key.startswith("layernorm.")
    }

    if task == "feature-extraction":
        use_mean_pooling = not final_norm_state
        beit_config = beit_config_from_cae(config, task, use_mean_pooling=use_mean_pooling)
        beit_config.architectures = ["BeitModel"]
        target = BeitModel(beit_config, add_pooling_layer=True)
        if use_mean_pooling:
            pooling_norm = fc_norm.state_dict() if fc_norm is not None else target.pooler.layernorm.state_dict()
            state = encoder_state | {f"pooler.layernorm.{key}": value for key, value in pooling_norm.items()}
        else:
            state = encoder_state | {f"layernorm.{key}": value for key, value in final_norm_state.items()}
        beit_config.dtype = dtype
        return _load_into(target, state, dtype)

    if isinstance(model, CAEForImageClassification):
        use_mean_pooling = fc_norm is not None
        pooling_norm_state = fc_norm.state_dict() if use_mean_pooling else final_norm_state
        head = model.classifier
    else:
        use_mean_pooling = config.classifier_pooling == "mean"
        pooling_norm_state = final_norm_state
        head = None
    beit_config = beit_config_from_cae(config, task, use_mean_pooling=use_mean_pooling)
    beit_config.architectures = ["BeitForImageClassification"]
    beit_config.dtype = dtype
    target = BeitForImageClassification(beit_config)
    if head is None:
        head = target.classifier
        _warn_new_head(model, BeitForImageClassification, beit_config.num_labels)
    norm_prefix = "beit.pooler.layernorm." if use_mean_pooling else "beit.layernorm."
    state = {f"beit.{key}": value for key, value in encoder_state.items()}
    state |= {f"{norm_prefix}{key}": value for key, value in pooling_norm_state.items()}
    state |= {f"classifier.{key}": value for key, value in head.state_dict().items()}
    return _load_into(target, state, dtype)


# ---------------------------------------------------------------------------------------------- entry point
class ExportSourceError(OSError):
    """The model to export could not be loaded; the message names it and the fix."""

    user_error = True  # printed as one line by `cli.run_cli`


def load_model_for_export(model_or_path: PreTrainedModel | str | os.PathLike) -> PreTrainedModel:
    """A model object as is, or the checkpoint at a local path / Hub id loaded with its saved architecture.

    Raises:
        FileNotFoundError: a local path that does not exist, or a folder without `config.json`.
        ExportSourceError: a Hub id (or folder) that could not be loaded.
    """
    if isinstance(model_or_path, PreTrainedModel):
        return model_or_path
    model_or_path = check_model_path(model_or_path, "model")
    if Path(model_or_path).is_dir() and not (Path(model_or_path) / "config.json").is_file():
        raise FileNotFoundError(
            f"model {str(model_or_path)!r} has no config.json: it is not a folder written by save_pretrained (a "
            "training run writes it into its --output_dir when it finishes; a checkpoints/step_* folder is not one)."
        )
    try:
        config = AutoConfig.from_pretrained(model_or_path)
    except OSError as error:
        # Hub ids end here when they do not exist, are private, or the Hub cannot be reached (or is offline).
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ExportSourceError(
            f"could not load the model {str(model_or_path)!r}: {first_line} Give a local folder written by "
            "save_pretrained, or a Hub id you can reach."
        ) from error
    architectures = ARCHITECTURES.get(config.model_type)
    if architectures is None:
        raise ValueError(
            f"{model_or_path} holds a {type(config).__name__} (model_type {config.model_type!r}); export supports "
            f"{', '.join(sorted(ARCHITECTURES))}."
        )
    base_class = next(iter(architectures.values()))
    model_class = architectures.get((config.architectures or [base_class.__name__])[0], base_class)
    return model_class.from_pretrained(model_or_path, config=config)


def export_to_transformers(
    model_or_path: PreTrainedModel | str | os.PathLike,
    output_dir: str | os.PathLike,
    task: str = "feature-extraction",
    image_processor=None,
    overwrite: bool = False,
) -> Path:
    """Save `model_or_path` as a native transformers checkpoint in `output_dir` and return the folder.

    MixedAE becomes `ViTModel` ("feature-extraction") or `ViTForImageClassification` ("image-classification"); CAE
    becomes `BeitModel` or `BeitForImageClassification`. The image processor is written as the native class
    (`ViTImageProcessor`, `BeitImageProcessor`) with the same resize / crop / normalisation: `image_processor` if
    given, else the one saved next to the checkpoint, else our evaluation transform. The folder loads with
    `AutoModel` / `AutoModelForImageClassification` / `AutoImageProcessor` / `pipeline(...)` wherever transformers
    is installed.

    The folder is written in a hidden sibling folder and moved in at the end: a failure leaves `output_dir` as it
    was. An `output_dir` that holds an earlier result (a trained model, another export, a run's records) is refused
    unless `overwrite`, which removes that result's files (see `output_folders.RUN_ARTIFACTS`) and keeps any other
    file.

    Raises:
        OutputDirectoryError: `output_dir` holds an earlier result and `overwrite` is False, or is the model folder.
    """
    _check_task(task)
    output_dir = Path(output_dir).expanduser()
    if not isinstance(model_or_path, PreTrainedModel):
        model_or_path = check_model_path(model_or_path, "model")
        source = Path(model_or_path)
        if source.is_dir() and output_dir.exists() and source.resolve() == output_dir.resolve():
            raise OutputDirectoryError(
                f"the output folder {str(output_dir)!r} is the model folder itself: the export would replace the "
                "model it reads. Choose another output folder."
            )
    with staged_output_dir(output_dir, overwrite=overwrite, what="export") as staging:
        model = load_model_for_export(model_or_path)
        if image_processor is None and not isinstance(model_or_path, PreTrainedModel):
            image_processor = _load_saved_image_processor(model_or_path)
        if isinstance(model.config, MixedAEConfig):
            native_model = convert_mixedae_to_vit(model, task)
            native_processor = vit_image_processor_from_mixedae(image_processor, model.config)
        elif isinstance(model.config, CAEConfig):
            native_model = convert_cae_to_beit(model, task)
            native_processor = beit_image_processor_from_cae(image_processor, model.config)
        else:
            raise ValueError(f"no native export for {type(model).__name__}; supported: {sorted(ARCHITECTURES)}")
        native_model.save_pretrained(staging)  # safetensors: transformers 5 writes no other format
        native_processor.save_pretrained(staging)
    logger.info("exported %s as %s to %s", type(model).__name__, type(native_model).__name__, output_dir)
    return output_dir


def _load_saved_image_processor(path: str | os.PathLike):
    try:
        return AutoImageProcessor.from_pretrained(path, backend="pil")
    except (OSError, ValueError):
        return None  # no preprocessor_config.json: the exporter uses the model's default transform


PROGRAM = "transformers-mixedae-export"


def main(argv: list[str] | None = None) -> None:
    """Console script; errors are one line on stderr (exit 2: usage, 1: missing or unloadable model)."""
    run_cli(lambda: _main(argv), program=PROGRAM)


def _main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Export a MixedAE (-> ViT) or CAE (-> BEiT) checkpoint as a native transformers checkpoint, "
        "loadable without transformers_mixedae.",
    )
    parser.add_argument("model", help="local folder or Hub id of a MixedAE or CAE checkpoint")
    parser.add_argument("output_dir")
    parser.add_argument("--task", choices=TASKS, default="feature-extraction")
    parser.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="replace an earlier result in output_dir (its weights, config, card, results, logs; other files stay)",
    )
    args = parser.parse_args(argv)
    check_model_path(args.model, "model")
    logging.set_verbosity_info()
    print(export_to_transformers(args.model, args.output_dir, task=args.task, overwrite=args.overwrite_output_dir))


if __name__ == "__main__":
    main()


__all__ = [
    "ExportSourceError",
    "beit_config_from_cae",
    "beit_image_processor_from_cae",
    "beit_state_dict_from_cae",
    "convert_cae_to_beit",
    "convert_mixedae_to_vit",
    "export_to_transformers",
    "load_model_for_export",
    "vit_config_from_mixedae",
    "vit_image_processor_from_mixedae",
    "vit_state_dict_from_mixedae",
]
