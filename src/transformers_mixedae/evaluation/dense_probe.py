# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Frozen dense linear probe: how much of a semantic segmentation the pre-trained patch features already hold.

The encoder stays frozen; a linear classifier (MAE's linear-probe head: BatchNorm without affine + Linear, the
image-level probe's `train_linear_probe`) is trained on the last layer's patch features to predict each patch's
majority class, and is scored at pixel level: its patch logits are upsampled bilinearly to the label map and the
mean IoU comes from one confusion matrix over the whole validation split. The linear segmentation evaluation of
self-supervised ViTs, it scores the features themselves, not a fine-tuning recipe (which retrains the encoder and
can wash differences out), and it runs in minutes on a CPU.

Probe a saved pre-training (or classification) folder on the bundled dense benchmark (prints JSON)::

    python -m transformers_mixedae.evaluation.dense_probe path/to/run [--image_size 64] [--epochs 10]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch
import torch.nn.functional as F

from ..data.segmentation_transforms import SegmentationEvaluationTransform
from ..models.image_processing_mixedae import SEGMENTATION_IGNORE_INDEX
from .eval_mode import eval_mode
from .frozen_features import train_linear_probe
from .segmentation_metrics import confusion_matrix, segmentation_scores

DEFAULT_IMAGE_SIZE = 64  # the bundled dense benchmark's scenes, at their own resolution
DEFAULT_EPOCHS = 10
DEFAULT_BATCH_SIZE = 1024
# Feature extraction dominates the cost (64 px scenes are 256 tokens each); 600 scenes give 153,600 labelled patches,
# plenty for an 11-way linear classifier.
DEFAULT_MAX_TRAIN_IMAGES = 600
FEATURE_BATCH_SIZE = 64


def patch_labels(labels: torch.Tensor, patch_size: int, num_labels: int,
                 ignore_index: int = SEGMENTATION_IGNORE_INDEX) -> torch.Tensor:
    """`(B, H/p, W/p)`: the majority class of each patch of `(B, H, W)` label maps (ties to the lowest id);
    `ignore_index` where a patch has no labelled pixel. H and W must be multiples of `patch_size`."""
    batch, height, width = labels.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"label maps of {height}x{width} px do not divide into {patch_size} px patches")
    ignored = labels == ignore_index
    classes = torch.where(ignored, torch.full_like(labels, num_labels), labels.long())
    votes = F.one_hot(classes, num_labels + 1)[..., :num_labels]  # (B, H, W, num_labels); ignored pixels vote for none
    votes = votes.reshape(batch, height // patch_size, patch_size, width // patch_size, patch_size, num_labels)
    counts = votes.sum(dim=(2, 4))  # (B, h, w, num_labels)
    majority = counts.argmax(dim=-1)
    return torch.where(counts.sum(dim=-1) > 0, majority, torch.full_like(majority, ignore_index))


@torch.no_grad()
def patch_features(backbone: torch.nn.Module, pixel_values: torch.Tensor,
                   batch_size: int = FEATURE_BATCH_SIZE) -> torch.Tensor:
    """`(B, C, h, w)`: the backbone's last feature map for every image, in eval mode (the mode is restored)."""
    device = next(backbone.parameters()).device
    with eval_mode(backbone):
        maps = [backbone(pixel_values=pixel_values[start : start + batch_size].to(device)).feature_maps[-1]
                .float().cpu() for start in range(0, pixel_values.shape[0], batch_size)]
    return torch.cat(maps)


def dense_linear_probe(
    backbone: torch.nn.Module,
    train_pixels: torch.Tensor,
    train_labels: torch.Tensor,
    validation_pixels: torch.Tensor,
    validation_labels: torch.Tensor,
    num_labels: int,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
) -> dict[str, Any]:
    """Train the patch classifier on the training images' frozen features and score it on the validation images.

    Pixels `(B, 3, H, W)` normalised as the backbone expects, labels `(B, H, W)` class ids (`ignore_index` 255 left
    out). Returns `mean_iou`, `mean_accuracy`, `overall_accuracy` and `per_category_iou` (a list, NaN for classes
    absent from both reference and prediction) of the validation pixels."""
    patch_size = backbone.config.patch_size
    features = patch_features(backbone, train_pixels)  # (B, C, h, w)
    targets = patch_labels(train_labels, patch_size, num_labels)  # (B, h, w)
    channels = features.shape[1]
    features = features.permute(0, 2, 3, 1).reshape(-1, channels)
    targets = targets.reshape(-1)
    labelled = targets != SEGMENTATION_IGNORE_INDEX
    head = train_linear_probe(features[labelled], targets[labelled], num_labels, epochs=epochs,
                              batch_size=batch_size, seed=seed)

    validation_features = patch_features(backbone, validation_pixels)
    with torch.no_grad():
        logits = head(validation_features.permute(0, 2, 3, 1).reshape(-1, channels))
    grid = validation_features.shape[-2:]
    logits = logits.reshape(validation_features.shape[0], *grid, num_labels).permute(0, 3, 1, 2)
    logits = F.interpolate(logits, size=validation_labels.shape[-2:], mode="bilinear", align_corners=False)
    confusion = confusion_matrix(logits.argmax(dim=1), validation_labels, num_labels)
    scores = segmentation_scores(confusion)
    return {
        "mean_iou": float(scores["mean_iou"]),
        "mean_accuracy": float(scores["mean_accuracy"]),
        "overall_accuracy": float(scores["overall_accuracy"]),
        "per_category_iou": [float(value) for value in scores["per_category_iou"]],
    }


def dense_benchmark_tensors(
    image_size: int = DEFAULT_IMAGE_SIZE,
    max_train_images: int | None = DEFAULT_MAX_TRAIN_IMAGES,
    data_dir: str | None = None,
    dataset_name: str | None = None,
) -> dict[str, Any]:
    """Both splits of a segmentation source (the bundled dense benchmark by default) as tensors: images rescaled
    to short side `image_size` (square scenes: `image_size` x `image_size`), ImageNet-normalised, label maps
    resized with nearest neighbour to the same size; the first `max_train_images` training images (None: all) and
    every validation image. Returns `train` and `validation` as (pixels, labels), `num_labels` and `id2label` (None
    when the source names no classes)."""
    from ..data.segmentation_loading import load_segmentation_datasets

    loaded = load_segmentation_datasets(data_dir=data_dir, dataset_name=dataset_name,
                                        max_train_samples=max_train_images)
    transform = SegmentationEvaluationTransform(scale=(4 * image_size, image_size), resize_labels=True)
    splits = {}
    for name, dataset in (("train", loaded.train), ("validation", loaded.validation)):
        if dataset is None:
            raise ValueError(f"{loaded.source} has no {name} split: the dense probe needs both")
        pairs = [transform(example[loaded.image_column_name].convert("RGB"), example[loaded.label_column_name])
                 for example in dataset]
        shapes = {tuple(pair["labels"].shape) for pair in pairs}
        if len(shapes) != 1:
            raise ValueError(f"{loaded.source} {name}: images of several shapes after rescaling "
                             f"({sorted(shapes)[:3]}); the dense probe needs one size: use square images")
        splits[name] = (torch.stack([pair["pixel_values"] for pair in pairs]),
                        torch.stack([pair["labels"] for pair in pairs]))
    id2label = loaded.id2label
    observed = max(int(labels[labels != SEGMENTATION_IGNORE_INDEX].max()) for _, labels in splits.values()) + 1
    num_labels = len(id2label) if id2label else observed
    return {**splits, "num_labels": num_labels, "id2label": id2label}


def load_backbone(model_name_or_path: str) -> torch.nn.Module:
    """The backbone (last encoder layer only, no multi-scale neck) of a saved MixedAE or CAE folder."""
    import transformers_mixedae  # noqa: F401  (registers the models)
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_BACKBONE_MAPPING

    config = AutoConfig.from_pretrained(model_name_or_path)
    backbone_class = MODEL_FOR_BACKBONE_MAPPING[type(config)]
    return backbone_class.from_pretrained(model_name_or_path, out_indices=[config.num_hidden_layers],
                                          backbone_multi_scale=False)


def run_dense_probe(model_name_or_path: str, image_size: int = DEFAULT_IMAGE_SIZE, epochs: int = DEFAULT_EPOCHS,
                    seed: int = 0, max_train_images: int | None = DEFAULT_MAX_TRAIN_IMAGES,
                    data: dict[str, Any] | None = None) -> dict[str, Any]:
    """`dense_linear_probe` of a saved folder on the bundled dense benchmark (or on `data`, as returned by
    `dense_benchmark_tensors`, to reuse one decoding for several models)."""
    data = data if data is not None else dense_benchmark_tensors(image_size, max_train_images)
    backbone = load_backbone(model_name_or_path)
    grid = {side % backbone.config.patch_size for side in data["train"][0].shape[-2:]}
    if grid != {0}:
        raise ValueError(f"images of {tuple(data['train'][0].shape[-2:])} px do not divide into the model's "
                         f"{backbone.config.patch_size} px patches: choose an image size that is a multiple of it")
    result = dense_linear_probe(backbone, *data["train"], *data["validation"], data["num_labels"], epochs=epochs,
                                seed=seed)
    if data.get("id2label"):
        result["per_category_iou"] = dict(zip(data["id2label"].values(), result["per_category_iou"]))
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m transformers_mixedae.evaluation.dense_probe",
        description="Frozen dense linear probe of a saved MixedAE / CAE folder on the bundled dense benchmark (JSON).",
    )
    parser.add_argument("model", help="A saved pre-training or classification folder (or Hub id).")
    parser.add_argument("--image_size", type=int, default=DEFAULT_IMAGE_SIZE,
                        help=f"Side the scenes are rescaled to (default {DEFAULT_IMAGE_SIZE}, their own).")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="Epochs of the patch classifier.")
    parser.add_argument("--max_train_images", type=int, default=DEFAULT_MAX_TRAIN_IMAGES,
                        help="Training scenes whose patches train the classifier "
                        f"(default {DEFAULT_MAX_TRAIN_IMAGES}).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if min(args.image_size, args.epochs, args.max_train_images) < 1:
        parser.error("--image_size, --epochs and --max_train_images must be at least 1")
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()  # the backbone's unused decoder weights are expected
    result = run_dense_probe(args.model, image_size=args.image_size, epochs=args.epochs, seed=args.seed,
                             max_train_images=args.max_train_images)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
