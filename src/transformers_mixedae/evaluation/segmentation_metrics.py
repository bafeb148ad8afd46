# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Semantic-segmentation metrics from one confusion matrix accumulated over the whole validation set.

The numbers are those of mmsegmentation's `mIoU` and transformers' `mean_iou` metric: every pixel of every image
counts once (the matrix is summed over images, never an average of per-image or per-batch scores).

* `confusion_matrix(predictions, references, num_labels, ignore_index)`: torch, on any device (`torch.bincount`).
  Rows are reference classes, columns predicted classes; pixels whose reference is `ignore_index` are left out.
* `segmentation_scores(confusion)`: `mean_iou`, `mean_accuracy`, `overall_accuracy`, `per_category_iou`,
  `per_category_accuracy` from a matrix.
* `MeanIoU`: the same as an `evaluate.Metric` shipped here (no Hub; instantiate it, never `evaluate.load`).

Definitions (per class c, with the matrix M summed over all pixels):
    IoU(c) = M[c, c] / (row_sum(c) + column_sum(c) - M[c, c]),   accuracy(c) = M[c, c] / row_sum(c),
    overall_accuracy = trace(M) / sum(M).
A class absent from both the references and the predictions has IoU NaN (0 / 0); a class absent from the
references has accuracy NaN. NaN entries are left out of `mean_iou` and `mean_accuracy` (as mmseg and transformers'
`mean_iou` do), so a validation set that never shows a class does not drag the mean down.

A training loop accumulates on the device and reduces across ranks by summing matrices, which is exact (integer
counts): no label map ever leaves the device.

    confusion = torch.zeros(num_labels, num_labels, dtype=torch.int64, device=accelerator.device)
    for batch in validation_batches:
        logits = upsample(model(batch["pixel_values"]).logits, batch["labels"].shape[-2:])
        confusion += confusion_matrix(logits.argmax(dim=1), batch["labels"], num_labels)
    confusion = accelerator.reduce(confusion, reduction="sum")      # or torch.distributed.all_reduce (SUM)
    scores = segmentation_scores(confusion)                          # the same numbers on every rank
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasets
import evaluate
import numpy as np
import torch

from ..models.image_processing_mixedae import SEGMENTATION_IGNORE_INDEX

DEFAULT_IGNORE_INDEX = SEGMENTATION_IGNORE_INDEX
LabelMaps = torch.Tensor | np.ndarray | Sequence[Any]


# ---------------------------------------------------------------------------------------------- tensor functions
def reduce_reference_labels(references: torch.Tensor, ignore_index: int = DEFAULT_IGNORE_INDEX) -> torch.Tensor:
    """ADE20K's `reduce_labels` convention: label 0 ("other") becomes `ignore_index`, every other label shifts down
    by one; pixels already at `ignore_index` stay ignored. Returns a new tensor."""
    reduced = references - 1
    reduced[(references == 0) | (references == ignore_index)] = ignore_index
    return reduced


def _check_labels_in_range(labels: torch.Tensor, num_labels: int, what: str) -> None:
    """`labels` are those left after dropping ignored pixels, so every one must be a class id."""
    outside = (labels < 0) | (labels >= num_labels)
    if bool(outside.any()):
        value = int(labels[outside].flatten()[0])
        if what == "reference":
            fix = (
                "pass the dataset's num_labels, set ignore_index to the label that marks unlabelled pixels, or "
                "reduce_labels=True for ADE20K-style labels (0 = other)"
            )
        else:
            fix = "predictions must be class ids in [0, num_labels): check num_labels and the model's number of classes"
        raise ValueError(f"{what} label {value} is outside [0, {num_labels}) (ignored pixels excluded); {fix}")


def _labelled_pixels(
    references: torch.Tensor, *aligned: torch.Tensor, ignore_index: int | None, reduce_labels: bool
) -> tuple[torch.Tensor, ...]:
    """`references` (with `reduce_labels` applied) and the tensors aligned with them, flattened, keeping only the
    pixels whose reference is not `ignore_index`."""
    if reduce_labels:
        if ignore_index is None:
            raise ValueError("reduce_labels=True needs an ignore_index (label 0 becomes it)")
        references = reduce_reference_labels(references, ignore_index)
    if ignore_index is None:
        return references.flatten(), *(tensor.flatten() for tensor in aligned)
    labelled = references != ignore_index
    return references[labelled], *(tensor[labelled] for tensor in aligned)


def confusion_matrix(
    predictions: torch.Tensor,
    references: torch.Tensor,
    num_labels: int,
    ignore_index: int | None = DEFAULT_IGNORE_INDEX,
    reduce_labels: bool = False,
    check_range: bool = True,
) -> torch.Tensor:
    """`(num_labels, num_labels)` int64 confusion matrix of integer label maps of the same (any) shape, on their
    device: entry `[r, p]` counts pixels with reference `r` predicted as `p`. Pixels whose reference is
    `ignore_index` (after `reduce_labels`, see `reduce_reference_labels`) are left out.

    Matrices of several batches, images or ranks add up to the matrix of all their pixels. `check_range=False`
    skips the range check, which costs one host synchronisation per call; labels outside `[0, num_labels)` then
    give a wrong matrix (or an error from `bincount`), so keep it on unless the labels are known to be valid.
    """
    if predictions.shape != references.shape:
        raise ValueError(
            f"predictions have shape {tuple(predictions.shape)} but references have shape "
            f"{tuple(references.shape)}; upsample the logits to the label map's size before the argmax"
        )
    for name, tensor in (("predictions", predictions), ("references", references)):
        if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
            raise ValueError(
                f"{name} must be integer label maps, got dtype {tensor.dtype}; pass class ids (e.g. "
                "logits.argmax(dim=1)), not scores"
            )
    if num_labels < 1:
        raise ValueError(f"num_labels must be at least 1, got {num_labels}")
    references, predictions = _labelled_pixels(
        references.to(torch.int64), predictions.to(torch.int64), ignore_index=ignore_index,
        reduce_labels=reduce_labels,
    )
    if check_range:
        _check_labels_in_range(references, num_labels, "reference")
        _check_labels_in_range(predictions, num_labels, "predicted")
    # One bincount over combined indices: a single pass, deterministic (integer counts), on any device.
    counts = torch.bincount(references * num_labels + predictions, minlength=num_labels * num_labels)
    return counts.view(num_labels, num_labels)


def segmentation_scores(confusion: torch.Tensor | np.ndarray) -> dict[str, Any]:
    """Scores of a `(num_labels, num_labels)` confusion matrix (rows: reference, columns: prediction):
    `mean_iou`, `mean_accuracy`, `overall_accuracy` (floats) and `per_category_iou`, `per_category_accuracy`
    (float64 numpy arrays, NaN for classes absent as described in the module docstring)."""
    matrix = torch.as_tensor(confusion).detach().to("cpu", torch.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"expected a square (num_labels, num_labels) confusion matrix, got shape {tuple(matrix.shape)}")
    total = float(matrix.sum())
    if total == 0:
        raise ValueError(
            "the confusion matrix counts no pixel: every reference pixel was ignore_index (or nothing was added); "
            "check ignore_index / reduce_labels and that the validation set has labelled pixels"
        )
    intersection = matrix.diagonal()
    reference_area = matrix.sum(dim=1)
    predicted_area = matrix.sum(dim=0)
    union = reference_area + predicted_area - intersection
    # 0 / 0 gives NaN: exactly the classes to leave out of the means.
    per_category_iou = (intersection / union).numpy()
    per_category_accuracy = (intersection / reference_area).numpy()

    def nan_mean(values: np.ndarray) -> float:
        present = values[~np.isnan(values)]
        return float(present.mean()) if present.size else float("nan")  # no warning for an all-NaN array

    return {
        "mean_iou": nan_mean(per_category_iou),
        "mean_accuracy": nan_mean(per_category_accuracy),
        "overall_accuracy": float(intersection.sum()) / total,
        "per_category_iou": per_category_iou,
        "per_category_accuracy": per_category_accuracy,
    }


# ---------------------------------------------------------------------------------------------- evaluate metric
_IDS = datasets.List(datasets.Value("int64"))


def _label_map(value: Any, what: str) -> np.ndarray:
    array = value.detach().cpu().numpy() if torch.is_tensor(value) else np.asarray(value)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.integer)):
        raise ValueError(
            f"{what} must be integer label maps, got dtype {array.dtype}; pass class ids (e.g. "
            "logits.argmax(dim=1)), not scores, and one array per image"
        )
    return array.astype(np.int64, copy=False)


def _pixel_pairs(prediction: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct (prediction, reference) pairs of one image and how many pixels have each: a sparse confusion
    matrix that needs neither num_labels nor ignore_index, which are only known at `compute`."""
    predicted, referenced = prediction.ravel(), reference.ravel()
    if predicted.size == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    low_p, low_r = int(predicted.min()), int(referenced.min())
    span_p, span_r = int(predicted.max()) - low_p + 1, int(referenced.max()) - low_r + 1
    if span_p * span_r <= 2**24:  # a dense count is fastest for ordinary label ranges (at most 128 MB)
        counts = np.bincount((predicted - low_p) * span_r + (referenced - low_r), minlength=span_p * span_r)
        codes = np.flatnonzero(counts)
        counts = counts[codes]
        return codes // span_r + low_p, codes % span_r + low_r, counts
    pairs, counts = np.unique(np.stack([predicted, referenced]), axis=1, return_counts=True)
    return pairs[0], pairs[1], counts.astype(np.int64)


class MeanIoU(evaluate.Metric):
    """Mean IoU, per-class IoU, mean (per-class) accuracy and overall pixel accuracy of semantic segmentation,
    from one confusion matrix accumulated over every image added (mmseg's `mIoU`, transformers' `mean_iou`).

    `add_batch(predictions=..., references=...)` takes a batch of integer label maps: an `(N, ...)` tensor or
    array, or a list of N maps whose shapes may differ from image to image (prediction and reference of the same
    image must have the same shape). `compute(num_labels=..., ignore_index=255, reduce_labels=False)` returns
    `segmentation_scores`' keys. Each image is stored as its distinct (prediction, reference) pairs with their
    pixel counts (a few hundred numbers, not the full map), so a whole validation set fits in memory.

        metric = MeanIoU(keep_in_memory=True)
        for logits, labels in batches:
            metric.add_batch(predictions=logits.argmax(dim=1), references=labels)
        metric.compute(num_labels=150, reduce_labels=True)

    In a training loop on accelerators prefer `confusion_matrix` + `segmentation_scores` (accumulated on the
    device, summed across ranks) over gathering label maps to the host.
    """

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Mean intersection over union and pixel accuracies of semantic segmentation, from one "
            "confusion matrix over the whole set.",
            citation="",
            inputs_description="predictions: a batch of integer label maps; references: the batch's reference label "
            "maps, same shapes",
            # One row per image: its sparse confusion entries (see _pixel_pairs).
            features=datasets.Features({"predictions": _IDS, "references": _IDS, "pixel_counts": _IDS}),
        )

    def add_batch(self, *, predictions: LabelMaps = None, references: LabelMaps = None, **kwargs: Any) -> None:
        """A batch of label maps (see the class docstring); shapes are checked here, label ranges at `compute`."""
        if kwargs:
            raise ValueError(f"MeanIoU.add_batch takes only predictions and references, got {sorted(kwargs)}")
        if predictions is None or references is None:
            raise ValueError("MeanIoU.add_batch needs both predictions and references (batches of label maps)")
        if len(predictions) != len(references):
            raise ValueError(
                f"got {len(predictions)} prediction maps but {len(references)} reference maps; pass one reference "
                "per prediction (a batch is indexed along its first dimension)"
            )
        rows: dict[str, list[np.ndarray]] = {"predictions": [], "references": [], "pixel_counts": []}
        for index, (prediction, reference) in enumerate(zip(predictions, references)):
            prediction = _label_map(prediction, "predictions")
            reference = _label_map(reference, "references")
            if prediction.shape != reference.shape:
                raise ValueError(
                    f"prediction {index} of the batch has shape {prediction.shape} but its reference has shape "
                    f"{reference.shape}; upsample the logits to the label map's size before the argmax"
                )
            for key, values in zip(rows, _pixel_pairs(prediction, reference)):
                rows[key].append(values)
        super().add_batch(**rows)

    def add(self, *, prediction: Any = None, reference: Any = None, **kwargs: Any) -> None:
        """One image's label maps."""
        if kwargs:
            raise ValueError(f"MeanIoU.add takes only prediction and reference, got {sorted(kwargs)}")
        self.add_batch(predictions=[prediction], references=[reference])

    def compute(self, *, predictions: LabelMaps = None, references: LabelMaps = None, **kwargs: Any) -> dict | None:
        """Scores of every image added (plus `predictions` / `references` if given): `num_labels` (required),
        `ignore_index` (default 255), `reduce_labels` (default False). `evaluate` appends the inputs' description.
        """
        if predictions is not None or references is not None:
            self.add_batch(predictions=predictions, references=references)
        return super().compute(**kwargs)

    def _compute(
        self,
        predictions,
        references,
        pixel_counts,
        num_labels: int | None = None,
        ignore_index: int | None = DEFAULT_IGNORE_INDEX,
        reduce_labels: bool = False,
    ) -> dict[str, Any]:
        if num_labels is None:
            raise ValueError("MeanIoU.compute needs num_labels (the number of classes, e.g. 150 for ADE20K)")
        if num_labels < 1:
            raise ValueError(f"num_labels must be at least 1, got {num_labels}")

        def concatenated(rows: Sequence[Any]) -> torch.Tensor:
            arrays = [np.asarray(row, dtype=np.int64) for row in rows]
            return torch.from_numpy(np.concatenate(arrays) if arrays else np.zeros(0, np.int64))

        referenced, predicted, counts = _labelled_pixels(
            concatenated(references), concatenated(predictions), concatenated(pixel_counts),
            ignore_index=ignore_index, reduce_labels=reduce_labels,
        )
        _check_labels_in_range(referenced, num_labels, "reference")
        _check_labels_in_range(predicted, num_labels, "predicted")
        # bincount has no integer weights: scatter the pixel counts instead (exact int64 sums).
        confusion = torch.zeros(num_labels * num_labels, dtype=torch.int64).index_add_(
            0, referenced * num_labels + predicted, counts
        )
        return segmentation_scores(confusion.view(num_labels, num_labels))
