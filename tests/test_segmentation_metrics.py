# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""MeanIoU / confusion_matrix / segmentation_scores: hand-computed numbers, accumulation, reduce_labels, errors, and
a property test against a direct numpy computation."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transformers_mixedae.evaluation.segmentation_metrics import MeanIoU, confusion_matrix, segmentation_scores

# 4 classes: 0, 1, 2 appear, 3 appears nowhere; two reference pixels are ignore (255).
REFERENCE = np.array([[0, 0, 1, 1], [0, 2, 2, 255], [255, 1, 1, 2]])
PREDICTION = np.array([[0, 1, 1, 1], [0, 2, 0, 1], [2, 1, 1, 2]])
# rows: reference, columns: prediction (the ignored pixels, predicted 1 and 2, are not counted)
EXPECTED_CONFUSION = np.array([[2, 1, 0, 0], [0, 4, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]])


def metric() -> MeanIoU:
    return MeanIoU(keep_in_memory=True)


def assert_scores_equal(actual: dict, expected: dict) -> None:
    assert set(actual) == {"mean_iou", "mean_accuracy", "overall_accuracy", "per_category_iou", "per_category_accuracy"}
    for key in ("mean_iou", "mean_accuracy", "overall_accuracy"):
        assert actual[key] == pytest.approx(expected[key], rel=1e-12), key
    for key in ("per_category_iou", "per_category_accuracy"):
        np.testing.assert_allclose(actual[key], expected[key], rtol=1e-12, equal_nan=True, err_msg=key)


HAND_COMPUTED = {
    "per_category_iou": np.array([2 / 4, 4 / 5, 2 / 3, np.nan]),  # 3: absent from both -> NaN, not in the mean
    "per_category_accuracy": np.array([2 / 3, 4 / 4, 2 / 3, np.nan]),
    "mean_iou": (2 / 4 + 4 / 5 + 2 / 3) / 3,
    "mean_accuracy": (2 / 3 + 1 + 2 / 3) / 3,
    "overall_accuracy": 8 / 10,
}


def test_confusion_matrix_is_the_hand_computed_one():
    confusion = confusion_matrix(torch.from_numpy(PREDICTION), torch.from_numpy(REFERENCE), num_labels=4)
    assert confusion.dtype == torch.int64
    assert confusion.tolist() == EXPECTED_CONFUSION.tolist()


def test_scores_of_the_hand_computed_matrix():
    assert_scores_equal(segmentation_scores(torch.from_numpy(EXPECTED_CONFUSION)), HAND_COMPUTED)
    assert_scores_equal(segmentation_scores(EXPECTED_CONFUSION), HAND_COMPUTED)


def test_metric_equals_the_hand_computed_numbers():
    scores = metric().compute(predictions=[PREDICTION], references=[REFERENCE], num_labels=4)
    assert_scores_equal(scores, HAND_COMPUTED)
    assert isinstance(scores["mean_iou"], float)


def test_a_class_only_predicted_has_iou_zero_and_accuracy_nan():
    scores = metric().compute(predictions=[[[0, 1]]], references=[[[0, 0]]], num_labels=2)
    np.testing.assert_array_equal(scores["per_category_iou"], [0.5, 0.0])  # 0 counts in the mean IoU
    np.testing.assert_array_equal(scores["per_category_accuracy"], [0.5, np.nan])
    assert scores["mean_iou"] == 0.25
    assert scores["mean_accuracy"] == 0.5


def test_batch_by_batch_accumulation_equals_one_batch_and_ragged_shapes():
    generator = np.random.default_rng(0)
    shapes = [(5, 7), (5, 7), (3, 9), (8, 2), (1, 1)]
    predictions = [generator.integers(0, 5, shape) for shape in shapes]
    references = [np.where(generator.random(shape) < 0.2, 255, generator.integers(0, 5, shape)) for shape in shapes]
    for reference in references:
        reference[0, 0] = 1  # every image has a labelled pixel, so each has its own score below
    whole = metric().compute(predictions=predictions, references=references, num_labels=5)

    accumulated = metric()
    accumulated.add_batch(predictions=np.stack(predictions[:2]), references=torch.from_numpy(np.stack(references[:2])))
    accumulated.add_batch(predictions=predictions[2:4], references=references[2:4])
    accumulated.add(prediction=predictions[4], reference=references[4])
    assert_scores_equal(accumulated.compute(num_labels=5), whole)

    # The tensor route: matrices of parts add up to the matrix of the whole, whatever the shapes.
    summed = sum(
        confusion_matrix(torch.from_numpy(p), torch.from_numpy(r), num_labels=5) for p, r in zip(predictions, references)
    )
    assert_scores_equal(segmentation_scores(summed), whole)
    # Not a mean of per-image scores: the images differ in size, so that mean would differ.
    per_image = [metric().compute(predictions=[p], references=[r], num_labels=5)["overall_accuracy"]
                 for p, r in zip(predictions, references)]
    assert not math.isclose(float(np.mean(per_image)), whole["overall_accuracy"])


def test_reduce_labels_ignores_zero_and_shifts_the_rest_down():
    references = np.array([[0, 1, 2], [3, 255, 1]])
    predictions = np.array([[1, 0, 0], [2, 0, 1]])
    # reduced references: [[255, 0, 1], [2, 255, 0]] -> pairs (0, 0), (1, 0), (2, 2), (0, 1)
    expected = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 1]])
    confusion = confusion_matrix(torch.from_numpy(predictions), torch.from_numpy(references), 3, reduce_labels=True)
    assert confusion.tolist() == expected.tolist()
    scores = metric().compute(predictions=[predictions], references=[references], num_labels=3, reduce_labels=True)
    assert_scores_equal(scores, segmentation_scores(expected))
    np.testing.assert_allclose(scores["per_category_iou"], [1 / 3, 0.0, 1.0])
    assert scores["overall_accuracy"] == 2 / 4


def test_another_ignore_index():
    scores = metric().compute(predictions=[[[0, 1, 1]]], references=[[[0, -1, 1]]], num_labels=2, ignore_index=-1)
    assert scores["overall_accuracy"] == 1.0


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"shape \(2, 3\) but its reference has shape \(3, 2\)"):
        metric().add_batch(predictions=[np.zeros((2, 3), int)], references=[np.zeros((3, 2), int)])
    with pytest.raises(ValueError, match=r"shape \(2, 3\) but references have shape \(3, 2\)"):
        confusion_matrix(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="got 2 prediction maps but 1 reference maps"):
        metric().add_batch(predictions=np.zeros((2, 3, 3), int), references=np.zeros((1, 3, 3), int))


def test_label_outside_the_range_names_it():
    with pytest.raises(ValueError, match=r"reference label 7 is outside \[0, 3\)"):
        metric().compute(predictions=[[[0, 1]]], references=[[[0, 7]]], num_labels=3)
    with pytest.raises(ValueError, match=r"predicted label 5 is outside \[0, 3\)"):
        metric().compute(predictions=[[[0, 5]]], references=[[[0, 1]]], num_labels=3)
    with pytest.raises(ValueError, match=r"reference label -2 is outside \[0, 3\)"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, -2]), 3)
    with pytest.raises(ValueError, match=r"predicted label 3 is outside \[0, 3\)"):
        confusion_matrix(torch.tensor([0, 3]), torch.tensor([0, 1]), 3)


def test_scores_not_label_maps_and_missing_num_labels_are_refused():
    with pytest.raises(ValueError, match=r"integer label maps, got dtype float32.*argmax"):
        metric().add_batch(predictions=[np.zeros((2, 2), np.float32)], references=[np.zeros((2, 2), int)])
    with pytest.raises(ValueError, match="integer label maps, got dtype torch.float32"):
        confusion_matrix(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="needs num_labels"):
        metric().compute(predictions=[[[0]]], references=[[[0]]])


def test_nothing_labelled_is_an_error():
    with pytest.raises(ValueError, match="counts no pixel"):
        metric().compute(predictions=[[[0, 1]]], references=[[[255, 255]]], num_labels=2)


def direct_scores(predictions: list[np.ndarray], references: list[np.ndarray], num_labels: int) -> dict:
    """Per-class pixel sets, counted with boolean masks over all pixels at once (no confusion matrix)."""
    prediction = np.concatenate([p.ravel() for p in predictions])
    reference = np.concatenate([r.ravel() for r in references])
    labelled = reference != 255
    prediction, reference = prediction[labelled], reference[labelled]
    iou, accuracy = [], []
    for c in range(num_labels):
        intersection = np.sum((prediction == c) & (reference == c))
        union = np.sum((prediction == c) | (reference == c))
        iou.append(intersection / union if union else np.nan)
        accuracy.append(intersection / np.sum(reference == c) if np.any(reference == c) else np.nan)
    iou, accuracy = np.array(iou), np.array(accuracy)
    return {
        "per_category_iou": iou,
        "per_category_accuracy": accuracy,
        "mean_iou": np.nanmean(iou) if not np.all(np.isnan(iou)) else np.nan,
        "mean_accuracy": np.nanmean(accuracy) if not np.all(np.isnan(accuracy)) else np.nan,
        "overall_accuracy": np.mean(prediction == reference),
    }


@settings(max_examples=40, deadline=None)
@given(
    num_labels=st.integers(1, 6),
    shapes=st.lists(st.tuples(st.integers(1, 6), st.integers(1, 6)), min_size=1, max_size=4),
    seed=st.integers(0, 2**32 - 1),
)
def test_metric_equals_a_direct_numpy_computation(num_labels, shapes, seed):
    generator = np.random.default_rng(seed)
    predictions = [generator.integers(0, num_labels, shape) for shape in shapes]
    references = [np.where(generator.random(shape) < 0.25, 255, generator.integers(0, num_labels, shape))
                  for shape in shapes]
    references[0][0, 0] = 0  # at least one labelled pixel
    scores = metric().compute(predictions=predictions, references=references, num_labels=num_labels)
    assert_scores_equal(scores, direct_scores(predictions, references, num_labels))
