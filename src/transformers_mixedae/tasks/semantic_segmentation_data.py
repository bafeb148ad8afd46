# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Data and evaluation of `semantic_segmentation.run_semantic_segmentation`.

Training batches: each image and its label map are decoded in the DataLoader workers, `reduce_labels` is applied,
and the paired augmentation (`SegmentationTrainTransform`: random rescale, crop, flip, photometric distortion,
padding with the ignore index) runs with a generator seeded per sample from (seed, epoch, rank, worker, index), as
pre-training's `SeededTransform` does; images leave the workers as uint8 and are normalised on the device. Shuffling,
rank splitting, skipped undecodable images and exact resume positions are pre-training's (`PretrainingData`).

Evaluation: every validation image at full resolution (rescaled with the keep-ratio rule of the recipe, labels
untouched), whole or in sliding windows; the logits are upsampled to the label map before the argmax, and one
confusion matrix is summed over all images of all ranks (`evaluation.segmentation_metrics`), so the scores are those
of the whole validation set, not an average over batches or ranks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.logging import get_logger

from ..data import (
    SEGMENTATION_IGNORE_INDEX,
    BatchNormalizer,
    SegmentationEvaluationTransform,
    SegmentationTrainTransform,
    SkipAwareCollator,
    SkippedSampleStats,
    label_map_to_tensor,
)
from ..data.images import UndecodableImageError, apply_exif_orientation, image_identifier, open_image
from ..data.segmentation_loading import SegmentationDatasets, load_segmentation_datasets
from ..data import streaming
from ..data.streaming import (
    LABELS_KEY,
    PIXEL_VALUES_KEY,
    SKIPPED_BATCH_KEY,
    SKIPPED_ITEM_KEY,
    DecodedImageStream,
    ImageStreamLoader,
    _image_column_undecoded,
    _rank_stream,
)
from ..evaluation.eval_mode import eval_mode
from ..evaluation.segmentation_metrics import confusion_matrix, reduce_reference_labels, segmentation_scores
from ..evaluation.visualization import save_image_rows, to_display
from ..training.arguments import DataArguments, TrainingArguments
from .masked_image_modeling_data import (
    MAX_LISTED_SKIPPED_SAMPLES,
    DataState,
    PretrainingData,
    SeededTransform,
    shared_source_arguments,
)
from .semantic_segmentation_args import SegmentationArguments, label_map_column

logger = get_logger(__name__)

NUM_VISUALIZED_IMAGES = 4
# Rescale bounds of the recipe as multiples of the short side: ADE20K's (2048, 512).
SCALE_PER_SHORT_SIDE = (4, 1)


class PairedTransform:
    """A segmentation transform called with one `(image, label map)` pair, so that `SeededTransform` (which passes
    one argument and a generator) seeds it per sample."""

    accepts_rgb_arrays = True

    def __init__(self, transform: SegmentationTrainTransform | SegmentationEvaluationTransform):
        self.transform = transform
        self.mean, self.std = transform.mean, transform.std

    def __call__(self, pair: tuple[Any, torch.Tensor], generator: torch.Generator | None = None) -> dict:
        image, labels = pair
        return self.transform(image, labels, generator=generator)


def read_label_map(value: Any, reduce_labels: bool, num_labels: int) -> torch.Tensor:
    """An annotation (`{"bytes", "path"}` dict, PIL image, path; or an `(H, W)` array of class ids, as an `Array2D`
    column or nested lists give it) -> `(H, W)` int64 class ids, an image turned by its own EXIF orientation as images
    are, with `reduce_labels` applied. A map that is not single-channel, or holds a class id outside [0, num_labels)
    other than the ignore index, raises a `ValueError` naming the file and the fix."""
    try:
        if isinstance(value, (np.ndarray, list)) or torch.is_tensor(value):
            labels = label_map_to_tensor(value)
        else:
            labels = label_map_to_tensor(apply_exif_orientation(open_image(value)))
    except UndecodableImageError:
        raise
    except ValueError as error:
        raise ValueError(f"annotation {image_identifier(value)}: {error}") from error
    if reduce_labels:
        labels = reduce_reference_labels(labels, SEGMENTATION_IGNORE_INDEX)
    known = labels[labels != SEGMENTATION_IGNORE_INDEX]
    if known.numel() and (int(known.min()) < 0 or int(known.max()) >= num_labels):
        bad = int(known.max()) if int(known.max()) >= num_labels else int(known.min())
        raise ValueError(
            f"the label map {image_identifier(value)} holds class id {bad}, outside [0, --num_labels {num_labels}) and "
            f"not the ignore index {SEGMENTATION_IGNORE_INDEX}: raise --num_labels, or pass --reduce_labels for "
            "ADE20K-style maps (0 = other)"
        )
    return labels


class SegmentationStream(DecodedImageStream):
    """`DecodedImageStream` for images with label maps: decodes both, applies `reduce_labels`, and calls the transform
    with the `(image, labels)` pair. Undecodable images or annotations are skipped and reported like images.

    Only the reading of one example differs (`decode_example`); order, position, checkpointing and resume are the
    parent's, so segmentation data is shuffled and resumed as pre-training's."""

    def __init__(self, source, transform, image_column_name: str, label_column_name: str, skip_undecodable: bool,
                 reduce_labels: bool, num_labels: int, shuffle_seed: int | None = None, shuffle_buffer_size: int = 1,
                 rank: int = 0):
        super().__init__(source, transform, image_column_name, None, skip_undecodable,
                         shuffle_buffer_size=shuffle_buffer_size, shuffle_seed=shuffle_seed, rank=rank)
        self.label_map_column = label_column_name
        self.reduce_labels = reduce_labels
        self.num_labels = num_labels

    def required_columns(self) -> tuple[str, ...]:
        return (self.image_column_name, self.label_map_column)

    def decode_example(self, example: dict[str, Any], decode: Callable[[Any], Any]) -> dict[str, Any]:
        image = decode(example[self.image_column_name])
        annotation = example[self.label_map_column]
        labels = read_label_map(annotation, self.reduce_labels, self.num_labels)
        try:
            return dict(self.transform((image, labels)))
        except ValueError as error:  # e.g. an annotation of another size: name the pair
            raise ValueError(f"image {image_identifier(example[self.image_column_name])} with annotation "
                             f"{image_identifier(annotation)}: {error}") from error


class ListCollator(SkipAwareCollator):
    """Evaluation batches of images of different sizes: `pixel_values` and `labels` stay lists of tensors."""

    def __call__(self, items: list[dict[str, Any] | None]) -> dict[str, Any]:
        skipped = [entry for item in items if item for entry in item.get(SKIPPED_ITEM_KEY, ())]
        samples = [item for item in items if item is not None and PIXEL_VALUES_KEY in item]
        batch: dict[str, Any] = {SKIPPED_BATCH_KEY: skipped, "num_trimmed": 0}
        if samples:
            batch[PIXEL_VALUES_KEY] = [sample[PIXEL_VALUES_KEY] for sample in samples]
            batch[LABELS_KEY] = [sample[LABELS_KEY] for sample in samples]
        return batch


def segmentation_loader(
    stream: SegmentationStream, batch_size: int, num_workers: int, drop_last: bool, collate_fn, pin_memory: bool
) -> ImageStreamLoader:
    """A DataLoader over `stream` (already shuffled / split for this rank), as pre-training's loaders are."""
    return streaming.stream_loader(stream, batch_size, num_workers, drop_last, collate_fn, pin_memory)


def rank_segmentation_stream(dataset, datasets_: SegmentationDatasets, rank: int, world_size: int, num_workers: int,
                             seed: int | None, shuffle_buffer_size: int):
    """`streaming._rank_stream` (shuffle with one seed, split by rank) with the label-map column left undecoded too."""
    stream = _rank_stream(dataset, datasets_.image_column_name, rank, world_size, num_workers, seed,
                          shuffle_buffer_size)
    return _image_column_undecoded(stream, datasets_.label_column_name)


def same_size_groups(
    images: list[torch.Tensor], label_maps: list[torch.Tensor]
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive images (and label maps) of equal sizes stacked into one batch: one forward for all of them
    (datasets of one image size), one per image where sizes differ (ADE20K)."""
    start = 0
    for end in range(1, len(images) + 1):
        if end == len(images) or images[end].shape != images[start].shape or (
            label_maps[end].shape != label_maps[start].shape
        ):
            yield torch.stack(images[start:end]), torch.stack(label_maps[start:end])
            start = end


def colour_label_maps(label_map: torch.Tensor, num_labels: int) -> np.ndarray:
    """`(H, W)` class ids -> `(H, W, 3)` colours in [0, 1] (a fixed palette; ignored pixels black)."""
    import matplotlib

    palette = matplotlib.colormaps["tab20"].resampled(max(num_labels, 2))(np.arange(max(num_labels, 2)))[:, :3]
    ids = label_map.cpu().numpy()
    colours = np.zeros((*ids.shape, 3))
    known = (ids >= 0) & (ids < num_labels)
    colours[known] = palette[ids[known]]
    return colours


class SegmentationData(PretrainingData):
    """Image / label-map train and validation data of one run, for this rank, plus the whole-set evaluation."""

    def __init__(
        self,
        data_args: DataArguments,
        training_args: TrainingArguments,
        segmentation_args: SegmentationArguments,
        accelerator: Accelerator,
    ):
        self.data_args = data_args
        self.training_args = training_args
        self.segmentation_args = segmentation_args
        self.accelerator = accelerator
        self.group_size = 1
        self.tokenizer = None
        self.datasets = load_segmentation_datasets(
            data_dir=segmentation_args.data_dir,
            label_column_name=label_map_column(data_args),
            **shared_source_arguments(data_args, training_args),
        )
        self.source = self.datasets.source
        self.stats = SkippedSampleStats(max_recorded=MAX_LISTED_SKIPPED_SAMPLES)
        self.state = DataState(self.stats, accelerator)

    def build_loaders(self, config, num_labels: int, image_processor) -> None:
        """The loaders for a model whose UperNet config is `config` (patch size from its backbone)."""
        args, segmentation = self.training_args, self.segmentation_args
        self.config = config
        self.num_labels = num_labels
        self.patch_size = config.backbone_config.patch_size
        crop = segmentation.crop_size
        short_side = segmentation.resolved_rescale_size
        scale = (SCALE_PER_SHORT_SIDE[0] * short_side, SCALE_PER_SHORT_SIDE[1] * short_side)
        augmentation = SegmentationTrainTransform(
            crop_size=crop, scale=scale, cat_max_ratio=segmentation.cat_max_ratio,
            photometric_distortion=segmentation.photometric_distortion, normalize=False,
            padding=segmentation.crop_padding,
        )
        self.normalize_batch = BatchNormalizer(augmentation.mean, augmentation.std, self.accelerator.device)
        self.train_transform = SeededTransform(PairedTransform(augmentation), args.seed, self.accelerator.process_index)
        stream = rank_segmentation_stream(
            self.datasets.train, self.datasets, self.accelerator.process_index, self.accelerator.num_processes,
            self.data_args.dataloader_num_workers, args.seed, self.data_args.shuffle_buffer_size,
        )
        self.train_loader = segmentation_loader(
            self._stream(stream, self.train_transform, shuffle_seed=args.seed), args.per_device_train_batch_size,
            self.data_args.dataloader_num_workers, drop_last=True, collate_fn=SkipAwareCollator(),
            pin_memory=torch.cuda.is_available(),
        )
        self.train_loader.stats = self.stats
        self.evaluation_transform = SegmentationEvaluationTransform(scale=scale, normalize=False)
        self.image_processor = image_processor

    def _stream(self, source, transform, shuffle_seed: int | None = None) -> SegmentationStream:
        return SegmentationStream(
            source, transform, self.datasets.image_column_name, self.datasets.label_column_name,
            skip_undecodable=not self.data_args.strict_decoding,
            reduce_labels=self.segmentation_args.reduce_labels, num_labels=self.num_labels,
            shuffle_seed=shuffle_seed, shuffle_buffer_size=self.data_args.shuffle_buffer_size if shuffle_seed is not None
            else 1, rank=self.accelerator.process_index,
        )

    def model_inputs(self, batch: dict, batch_seed: int) -> dict[str, torch.Tensor]:
        device = self.accelerator.device
        return {
            "pixel_values": self.normalize_batch(batch["pixel_values"].to(device, non_blocking=True)),
            "labels": batch["labels"].to(device, non_blocking=True),
        }

    # ------------------------------------------------------------------ evaluation
    def _validation_batches(self) -> ImageStreamLoader:
        stream = rank_segmentation_stream(
            self.datasets.validation, self.datasets, self.accelerator.process_index, self.accelerator.num_processes,
            self.data_args.dataloader_num_workers, None, 0,
        )
        return segmentation_loader(
            self._stream(stream, PairedTransform(self.evaluation_transform)), self.training_args.per_device_eval_batch_size,
            self.data_args.dataloader_num_workers, drop_last=False, collate_fn=ListCollator(), pin_memory=False,
        )

    def segment(self, model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        """Logits `(B, C, h, w)` of normalised images `(B, 3, h, w)` of one size: whole (padded to the patch size) or
        averaged over sliding `crop_size` windows (mmseg's slide inference)."""
        height, width = pixel_values.shape[-2:]
        if self.segmentation_args.eval_mode == "whole":
            return self._padded_logits(model, pixel_values)[..., :height, :width]
        crop, stride = self.segmentation_args.crop_size, self.segmentation_args.resolved_eval_stride
        rows = max(height - crop + stride - 1, 0) // stride + 1
        columns = max(width - crop + stride - 1, 0) // stride + 1
        logits = pixel_values.new_zeros(len(pixel_values), self.num_labels, height, width, dtype=torch.float32)
        counts = pixel_values.new_zeros(1, 1, height, width, dtype=torch.float32)
        for row in range(rows):
            for column in range(columns):
                bottom, right = min(row * stride + crop, height), min(column * stride + crop, width)
                top, left = max(bottom - crop, 0), max(right - crop, 0)
                window = pixel_values[..., top:bottom, left:right]
                logits[..., top:bottom, left:right] += self._padded_logits(model, window)[
                    ..., : bottom - top, : right - left
                ].float()
                counts[..., top:bottom, left:right] += 1
        return logits / counts

    def _padded_logits(self, model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        """The model's logits for an image padded (bottom / right, zeros in normalised space) to the patch size."""
        height, width = pixel_values.shape[-2:]
        pad_bottom, pad_right = -height % self.patch_size, -width % self.patch_size
        if pad_bottom or pad_right:
            pixel_values = F.pad(pixel_values, (0, pad_right, 0, pad_bottom), value=0.0)
        with self.accelerator.autocast():
            return model(pixel_values=pixel_values).logits.float()

    def _evaluate(self, model, step: int) -> dict[str, float]:
        """mIoU, mean and overall pixel accuracy (and per-class IoU) of the whole validation set, all ranks."""
        # The unwrapped model: no collective inside the forward, so ranks may hold different numbers of images.
        module = self.accelerator.unwrap_model(model)
        device = self.accelerator.device
        confusion = torch.zeros(self.num_labels, self.num_labels, dtype=torch.int64, device=device)
        pictures: dict[str, list[np.ndarray]] = {"image": [], "ground truth": [], "prediction": []}
        images = torch.zeros((), dtype=torch.int64, device=device)
        with eval_mode(module):
            for batch in self._validation_batches():
                for pixels, labels in same_size_groups(batch["pixel_values"], batch["labels"]):
                    pixel_values, labels = self.normalize_batch(pixels.to(device)), labels.to(device)
                    logits = F.interpolate(self.segment(module, pixel_values), size=tuple(labels.shape[-2:]),
                                           mode="bilinear", align_corners=False)
                    predictions = logits.argmax(dim=1)
                    confusion += confusion_matrix(predictions, labels, self.num_labels, SEGMENTATION_IGNORE_INDEX)
                    images += len(labels)
                    self._collect_pictures(pictures, pixel_values, labels, predictions)
        if self.accelerator.num_processes > 1:
            confusion = self.accelerator.reduce(confusion, reduction="sum")
            images = self.accelerator.reduce(images, reduction="sum")
        if int(confusion.sum()) == 0:
            logger.warning("The validation set has no labelled pixel: no segmentation metrics.", main_process_only=True)
            return {"eval_samples": int(images)}
        if pictures["image"] and self.segmentation_args.save_visualizations:
            save_image_rows(Path(self.training_args.output_dir) / "visualizations" / f"step_{step}_segmentation.png",
                            pictures)
        return self.scores(confusion, int(images))

    def _collect_pictures(self, pictures: dict[str, list[np.ndarray]], pixel_values: torch.Tensor,
                          labels: torch.Tensor, predictions: torch.Tensor) -> None:
        """Add image | ground truth | prediction rows until `NUM_VISUALIZED_IMAGES` (main process only)."""
        shown = min(NUM_VISUALIZED_IMAGES - len(pictures["image"]), len(labels))
        if shown <= 0 or not self.accelerator.is_main_process:
            return
        resized = F.interpolate(pixel_values[:shown].float(), size=tuple(labels.shape[-2:]), mode="bilinear",
                                align_corners=False)
        transform = self.evaluation_transform
        pictures["image"] += list(to_display(resized, transform.mean, transform.std))
        pictures["ground truth"] += [colour_label_maps(item, self.num_labels) for item in labels[:shown]]
        pictures["prediction"] += [colour_label_maps(item, self.num_labels) for item in predictions[:shown]]

    def scores(self, confusion: torch.Tensor, num_images: int) -> dict[str, float]:
        scores = segmentation_scores(confusion)
        results = {
            "eval_mean_iou": scores["mean_iou"],
            "eval_mean_accuracy": scores["mean_accuracy"],
            "eval_overall_accuracy": scores["overall_accuracy"],
            "eval_samples": num_images,
        }
        id2label = self.config.id2label
        for index, iou in enumerate(scores["per_category_iou"]):
            if math.isnan(iou):  # a class in neither the labels nor the predictions has no IoU (and NaN is no JSON)
                continue
            key = f"eval_iou_{id2label.get(index, str(index))}"
            results[key if key not in results else f"{key}_{index}"] = float(iou)  # two classes of one name
        return results
