# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""MixedAE and CAE for Hugging Face transformers.

Importing the package registers every model with the transformers Auto classes, so
`AutoModel.from_pretrained(<a MixedAE or CAE checkpoint>)` works after `import transformers_mixedae`.
"""

from .models.configuration_cae import CAEConfig
from .models.configuration_mixedae import MixedAEConfig
from .models.image_processing_cae import CAEImageProcessor, CAEImageProcessorPil
from .models.image_processing_mixedae import MixedAEImageProcessor, MixedAEImageProcessorPil
from .models.masking import BlockMaskGenerator, MaskingDataCollator, RandomMaskGenerator
from .models.modeling_cae import (
    CAEBackbone,
    CAEForImageClassification,
    CAEForPreTraining,
    CAEModel,
    CAEPreTrainedModel,
)
from .models.modeling_mixedae import (
    MixedAEBackbone,
    MixedAEForImageClassification,
    MixedAEForPreTraining,
    MixedAEMixing,
    MixedAEModel,
    MixedAEPreTrainedModel,
    mixing_assignment,
)
from .hub.registration import register_auto_classes

register_auto_classes()

__version__ = "0.1.0.dev0"

__all__ = [
    "BlockMaskGenerator",
    "CAEBackbone",
    "CAEConfig",
    "CAEForImageClassification",
    "CAEForPreTraining",
    "CAEImageProcessor",
    "CAEImageProcessorPil",
    "CAEModel",
    "CAEPreTrainedModel",
    "MaskingDataCollator",
    "MixedAEBackbone",
    "MixedAEConfig",
    "MixedAEForImageClassification",
    "MixedAEForPreTraining",
    "MixedAEImageProcessor",
    "MixedAEImageProcessorPil",
    "MixedAEMixing",
    "MixedAEModel",
    "MixedAEPreTrainedModel",
    "RandomMaskGenerator",
    "mixing_assignment",
    "register_auto_classes",
]
