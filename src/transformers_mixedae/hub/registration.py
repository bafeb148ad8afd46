# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Registration of our models with the transformers Auto classes (per process, done at package import)."""

from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
)

from ..models.configuration_cae import CAEConfig
from ..models.configuration_mixedae import MixedAEConfig
from ..models.image_processing_cae import CAEImageProcessor, CAEImageProcessorPil
from ..models.image_processing_mixedae import MixedAEImageProcessor, MixedAEImageProcessorPil
from ..models.modeling_cae import CAEBackbone, CAEForImageClassification, CAEForPreTraining, CAEModel
from ..models.modeling_mixedae import (
    MixedAEBackbone,
    MixedAEForImageClassification,
    MixedAEForPreTraining,
    MixedAEModel,
)


def _register_model_family(
    config_class, base_model, pretraining_model, classification_model, backbone, processors
) -> None:
    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    AutoModel.register(config_class, base_model, exist_ok=True)
    AutoModelForPreTraining.register(config_class, pretraining_model, exist_ok=True)
    AutoModelForImageClassification.register(config_class, classification_model, exist_ok=True)
    # `load_backbone` (UperNet, DPT, Mask2Former, ...) builds `backbone_config` through AutoBackbone.
    AutoBackbone.register(config_class, backbone, exist_ok=True)
    AutoImageProcessor.register(config_class, image_processor_classes=processors, exist_ok=True)


# The PIL backend of each model type's image processor: what training saves, as it needs no torchvision.
PIL_IMAGE_PROCESSORS = {MixedAEConfig.model_type: MixedAEImageProcessorPil, CAEConfig.model_type: CAEImageProcessorPil}


def pil_image_processor_class(config) -> type:
    """The PIL-backend image processor class of `config`'s model type."""
    if config.model_type not in PIL_IMAGE_PROCESSORS:
        raise ValueError(f"no image processor for model_type {config.model_type!r}; one of {sorted(PIL_IMAGE_PROCESSORS)}")
    return PIL_IMAGE_PROCESSORS[config.model_type]


def register_auto_classes() -> None:
    """Make `Auto*.from_pretrained` resolve our `model_type`s. Idempotent."""
    _register_model_family(
        MixedAEConfig,
        MixedAEModel,
        MixedAEForPreTraining,
        MixedAEForImageClassification,
        MixedAEBackbone,
        {"torchvision": MixedAEImageProcessor, "pil": MixedAEImageProcessorPil},
    )
    _register_model_family(
        CAEConfig,
        CAEModel,
        CAEForPreTraining,
        CAEForImageClassification,
        CAEBackbone,
        {"torchvision": CAEImageProcessor, "pil": CAEImageProcessorPil},
    )
