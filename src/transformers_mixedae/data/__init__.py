# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Data for pre-training and evaluation: loading, image decoding, augmentation and distributed loaders.

Typical use in a training script (one process per device, launched by `accelerate launch`):

    datasets_ = load_image_dataset(args.dataset_name, streaming=args.streaming)        # or the default
    transform = pretraining_transform_for_model_type(config.model_type, config.image_size)
    loader = build_pretraining_dataloader(
        datasets_.train, transform, args.per_device_train_batch_size,
        rank=accelerator.process_index, world_size=accelerator.num_processes, seed=args.seed,
        batch_multiple=config.group_size,   # MixedAE: 1 / mixing_ratio; CAE: 1
    )                                        # NOT accelerator.prepare(loader): the data is already split
    for epoch in range(num_epochs):
        loader.set_epoch(epoch)
        for batch in synchronized_batches(loader, accelerator):
            ...
    print(loader.stats.summary())            # undecodable images skipped, with their identifiers
"""

from .images import (
    UndecodableImageError,
    decode_rgb,
    fast_jpeg_pixels,
    image_identifier,
    load_rgb_image,
    open_image,
    to_rgb,
)
from .loading import (
    DEFAULT_DATASET_DIR,
    ImageDatasets,
    check_image_dataset,
    default_dataset_files,
    load_image_dataset,
    resolve_column_names,
)
from .segmentation_transforms import (
    SEGMENTATION_IGNORE_INDEX,
    SegmentationEvaluationTransform,
    SegmentationTrainTransform,
    label_map_to_tensor,
    photometric_distortion,
    rescaled_size,
)
from .streaming import (
    DecodedImageStream,
    ImageStreamLoader,
    SkipAwareCollator,
    SkippedSampleStats,
    build_evaluation_dataloader,
    build_pretraining_dataloader,
    set_loader_epoch,
    shard_split_warning,
    synchronized_batches,
)
from .transforms import (
    CAE_CROP_SCALE,
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    MAE_CROP_SCALE,
    BatchNormalizer,
    CropBox,
    EvaluationTransform,
    PretrainingTransform,
    cae_pretraining_transform,
    center_crop_box,
    crop_to_uint8_tensor,
    image_height_width,
    mixedae_pretraining_transform,
    normalize_pixels,
    pil_to_uint8_tensor,
    pretraining_transform_for_model_type,
    resize_uint8,
    resized_crop,
    sample_random_resized_crop,
)

__all__ = [
    "CAE_CROP_SCALE",
    "DEFAULT_DATASET_DIR",
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "MAE_CROP_SCALE",
    "SEGMENTATION_IGNORE_INDEX",
    "BatchNormalizer",
    "CropBox",
    "DecodedImageStream",
    "EvaluationTransform",
    "ImageDatasets",
    "ImageStreamLoader",
    "PretrainingTransform",
    "SegmentationEvaluationTransform",
    "SegmentationTrainTransform",
    "SkipAwareCollator",
    "SkippedSampleStats",
    "UndecodableImageError",
    "build_evaluation_dataloader",
    "build_pretraining_dataloader",
    "cae_pretraining_transform",
    "center_crop_box",
    "check_image_dataset",
    "crop_to_uint8_tensor",
    "decode_rgb",
    "default_dataset_files",
    "fast_jpeg_pixels",
    "image_identifier",
    "label_map_to_tensor",
    "image_height_width",
    "load_image_dataset",
    "load_rgb_image",
    "mixedae_pretraining_transform",
    "normalize_pixels",
    "open_image",
    "photometric_distortion",
    "pil_to_uint8_tensor",
    "pretraining_transform_for_model_type",
    "rescaled_size",
    "resize_uint8",
    "resized_crop",
    "resolve_column_names",
    "sample_random_resized_crop",
    "set_loader_epoch",
    "shard_split_warning",
    "synchronized_batches",
    "to_rgb",
]
