# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Evaluation of frozen encoders: feature extraction, weighted kNN, linear probe, accuracy metrics.

Everything works offline: the metrics are `evaluate.Metric` subclasses shipped here and instantiated
directly (`Accuracy()`), never `evaluate.load`, which needs the Hub. Each metric is a thin wrapper around a
tensor function (`weighted_knn_scores`, `linear_probe_scores`, `top_k_accuracy`); call those directly for
large feature sets, since the `evaluate` route stores every feature vector as an Arrow list.

Protocols (those of MAE, DINO and CAE):

* weighted kNN (DINO, after Wu et al. 2018): L2-normalised features; the k most cosine-similar training
  features vote for their label with weight exp(similarity / T); k = 20, T = 0.07.
* linear probe (MAE, after MoCo v3): `BatchNorm1d(D, affine=False, eps=1e-6)` + `Linear(D, C)` (weights
  trunc-normal, std 0.01) on cached frozen features; SGD with momentum and a cosine schedule instead of
  LARS and 90 epochs (CPU-scale budget), seeded so the result is reproducible.

Typical use (every rank runs it; results are complete on every rank):

    train_features, train_labels = extract_features(model, train_eval_loader, accelerator)
    features, labels = extract_features(model, validation_loader, accelerator)
    metrics = evaluate_frozen_features(train_features, train_labels, features, labels, num_classes=10)
    # {"eval_knn_accuracy": ..., "eval_knn_top5_accuracy": ..., "eval_linear_probe_accuracy": ..., ...}
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import datasets
import evaluate
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .eval_mode import eval_mode

KNN_NEIGHBOURS = 20
KNN_TEMPERATURE = 0.07
LINEAR_PROBE_BATCH_NORM_EPS = 1e-6
LINEAR_PROBE_INIT_STD = 0.01
# Similarities held at once in the kNN (queries per block x training features): 64 Mi floats = 256 MB, so an
# ImageNet-sized bank (1.28 M) is processed 52 queries at a time instead of needing 5 GB per 1024 queries.
KNN_SIMILARITY_BUDGET = 2**26

Pooling = Literal["cls", "pooler", "mean"]
ArrayLike = torch.Tensor | np.ndarray | Sequence


def _as_tensor(values: ArrayLike, dtype: torch.dtype) -> torch.Tensor:
    if torch.is_tensor(values):
        return values.detach().to("cpu", dtype)
    return torch.as_tensor(np.asarray(values), dtype=dtype)


def _num_classes(num_classes: int | None, *label_sets: torch.Tensor) -> int:
    if num_classes is not None:
        return num_classes
    return int(max(int(labels.max()) for labels in label_sets if labels.numel())) + 1


# ---------------------------------------------------------------------------------------------- tensor functions
def top_k_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """Fraction of rows of `scores` `(N, C)` whose `k` highest classes contain the label. A label scored -inf is never
    a hit, even when fewer than `k` classes score more (the kNN scores classes no neighbour voted for so)."""
    if scores.shape[0] == 0:
        raise ValueError("top_k_accuracy of an empty set")
    k = min(k, scores.shape[1])
    top = scores.topk(k, dim=1).indices
    hit = (top == labels.view(-1, 1)).any(dim=1)
    hit &= scores.gather(1, labels.view(-1, 1)).squeeze(1) > float("-inf")
    return float(hit.float().mean())


def weighted_knn_scores(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    num_classes: int,
    k: int = KNN_NEIGHBOURS,
    temperature: float = KNN_TEMPERATURE,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """DINO's weighted kNN: `(Q, num_classes)` class scores (on CPU) = sum over the k nearest (cosine) training
    features of exp(similarity / temperature), per label. `device` (e.g. the accelerator's GPU) runs the
    similarity search there."""
    if train_features.shape[0] == 0:
        raise ValueError("weighted kNN needs at least one training feature")
    device = torch.device(device) if device is not None else train_features.device
    train = F.normalize(train_features.to(device, torch.float32), dim=1)
    train_labels = train_labels.to(device, torch.long)
    queries = F.normalize(query_features.to(device, torch.float32), dim=1)
    k = min(k, train.shape[0])
    chunk = max(1, KNN_SIMILARITY_BUDGET // train.shape[0])
    scores = torch.zeros(queries.shape[0], num_classes, device=device)
    for start in range(0, queries.shape[0], chunk):
        similarity = queries[start : start + chunk] @ train.T
        top_similarity, top_index = similarity.topk(k, dim=1)
        weights = (top_similarity / temperature).exp()
        scores[start : start + chunk].scatter_add_(1, train_labels[top_index], weights)
    return scores.cpu()


def train_linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    num_classes: int,
    epochs: int = 10,
    batch_size: int = 256,
    base_learning_rate: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> nn.Sequential:
    """Train MAE's linear-probe head (BatchNorm without affine + Linear) on cached features; deterministic.

    Learning rate = `base_learning_rate` x batch_size / 256 (MAE's scaling), cosine-decayed per step.
    The global torch RNG is left untouched (a private generator draws the init and the batch order).
    """
    features = train_features.float()
    labels = train_labels.long()
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # nn.Linear's default init would consume the caller's RNG stream
        head = nn.Sequential(
            nn.BatchNorm1d(features.shape[1], affine=False, eps=LINEAR_PROBE_BATCH_NORM_EPS),
            nn.Linear(features.shape[1], num_classes),
        )
    nn.init.trunc_normal_(head[1].weight, std=LINEAR_PROBE_INIT_STD, generator=generator)
    nn.init.zeros_(head[1].bias)
    learning_rate = base_learning_rate * batch_size / 256
    optimizer = torch.optim.SGD(head.parameters(), lr=learning_rate, momentum=momentum, weight_decay=weight_decay)
    # A batch of one cannot be normalised by BatchNorm in training mode: drop such a last batch.
    steps_per_epoch = max(1, features.shape[0] // batch_size + (features.shape[0] % batch_size > 1))
    total_steps = epochs * steps_per_epoch
    step = 0
    head.train()
    for _ in range(epochs):
        order = torch.randperm(features.shape[0], generator=generator)
        for start in range(0, features.shape[0], batch_size):
            index = order[start : start + batch_size]
            if index.numel() < 2:
                continue
            for group in optimizer.param_groups:
                group["lr"] = learning_rate * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
            loss = F.cross_entropy(head(features[index]), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    return head.eval()


@torch.no_grad()
def linear_probe_scores(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    num_classes: int,
    **training: Any,
) -> torch.Tensor:
    """Logits `(Q, num_classes)` of a linear probe trained on the training features (`train_linear_probe`)."""
    with torch.enable_grad():
        head = train_linear_probe(train_features, train_labels, num_classes, **training)
    return head(query_features.float())


def _accuracies(scores: torch.Tensor, labels: torch.Tensor, top_k: Iterable[int]) -> dict[str, float]:
    results = {}
    for k in top_k:
        if k <= scores.shape[1]:
            results["accuracy" if k == 1 else f"top{k}_accuracy"] = top_k_accuracy(scores, labels, k)
    return results


# ---------------------------------------------------------------------------------------------- evaluate metrics
_LABEL = datasets.Value("int64")
_VECTOR = datasets.List(datasets.Value("float32"))
_CITATION_DINO = (
    "@inproceedings{caron2021emerging, title={Emerging Properties in Self-Supervised Vision Transformers}, "
    "author={Caron, Mathilde and others}, booktitle={ICCV}, year={2021}}"
)
_CITATION_MAE = (
    "@inproceedings{he2022masked, title={Masked Autoencoders Are Scalable Vision Learners}, "
    "author={He, Kaiming and others}, booktitle={CVPR}, year={2022}}"
)


class Accuracy(evaluate.Metric):
    """Top-1 (and top-k) accuracy, numpy only (no scikit-learn), no Hub.

    `predictions` are either class ids (top-1 only) or per-class scores (top-1 and `top_k`).
    `compute(..., top_k=(1, 5))` returns `{"accuracy": ..., "top5_accuracy": ...}`.

        metric = Accuracy(keep_in_memory=True)
        metric.add_batch(predictions=logits, references=labels)
        metric.compute(top_k=(1, 5))
    """

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Fraction of examples whose label is the predicted class (or among the top k scores).",
            citation="",
            inputs_description="predictions: class ids (int) or class scores (list of float); references: class ids",
            features=[
                datasets.Features({"predictions": _LABEL, "references": _LABEL}),
                datasets.Features({"predictions": _VECTOR, "references": _LABEL}),
            ],
        )

    def _compute(self, predictions, references, top_k: Sequence[int] = (1, 5)) -> dict[str, float]:
        labels = _as_tensor(references, torch.long)
        predictions = np.asarray(predictions)
        if predictions.ndim == 1:
            return {"accuracy": float((_as_tensor(predictions, torch.long) == labels).float().mean())}
        return _accuracies(_as_tensor(predictions, torch.float32), labels, top_k)


class _FrozenFeatureMetric(evaluate.Metric):
    """Query features go through `add_batch(predictions=features, references=labels)`; the training features
    (the kNN bank / the probe's training set) are passed to `compute(train_features=..., train_labels=...)`,
    with `num_classes` (default: 1 + the largest label seen) and `top_k` (default (1, 5))."""

    _description = ""
    _citation = ""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=self._description,
            citation=self._citation,
            inputs_description="predictions: feature vectors (list of float); references: class ids",
            features=datasets.Features({"predictions": _VECTOR, "references": _LABEL}),
        )

    def _scores(
        self, train_features: torch.Tensor, train_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
        **options: Any,
    ) -> torch.Tensor:
        raise NotImplementedError

    def _compute(
        self,
        predictions,
        references,
        train_features=None,
        train_labels=None,
        num_classes: int | None = None,
        top_k: Sequence[int] = (1, 5),
        **options: Any,
    ) -> dict[str, float]:
        if train_features is None or train_labels is None:
            raise ValueError(f"{type(self).__name__}.compute needs train_features and train_labels")
        queries = _as_tensor(predictions, torch.float32)
        labels = _as_tensor(references, torch.long)
        bank = _as_tensor(train_features, torch.float32)
        bank_labels = _as_tensor(train_labels, torch.long)
        classes = _num_classes(num_classes, labels, bank_labels)
        for name, values in (("train_labels", bank_labels), ("references", labels)):
            outside = values[(values < 0) | (values >= classes)]
            if outside.numel():
                raise ValueError(f"{type(self).__name__}: {name} holds label {int(outside[0])}, outside [0, "
                                 f"num_classes {classes}); pass the class ids 0..{classes - 1}, or a larger num_classes")
        return _accuracies(self._scores(bank, bank_labels, queries, classes, **options), labels, top_k)


class KNNAccuracy(_FrozenFeatureMetric):
    """DINO weighted kNN accuracy: `{"accuracy", "top5_accuracy"}`; `compute` also takes `k` (20) and
    `temperature` (0.07)."""

    _description = "Weighted k-nearest-neighbour classification of L2-normalised frozen features (DINO)."
    _citation = _CITATION_DINO

    def _scores(self, train_features, train_labels, queries, num_classes, k: int = KNN_NEIGHBOURS,
                temperature: float = KNN_TEMPERATURE) -> torch.Tensor:
        scores = weighted_knn_scores(train_features, train_labels, queries, num_classes, k, temperature)
        # A class no neighbour voted for is not a guess (DINO's top-5 counts such classes, in class-id order).
        return scores.masked_fill(scores == 0, float("-inf"))


class LinearProbeAccuracy(_FrozenFeatureMetric):
    """MAE linear-probe accuracy on frozen features: `{"accuracy", "top5_accuracy"}`; `compute` also takes the
    keyword arguments of `train_linear_probe` (epochs, batch_size, base_learning_rate, seed, ...)."""

    _description = "Accuracy of a BatchNorm(affine=False) + Linear head trained on frozen features (MAE protocol)."
    _citation = _CITATION_MAE

    def _scores(self, train_features, train_labels, queries, num_classes, **training: Any) -> torch.Tensor:
        return linear_probe_scores(train_features, train_labels, queries, num_classes, **training)


def evaluate_frozen_features(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    eval_features: torch.Tensor,
    eval_labels: torch.Tensor,
    num_classes: int | None = None,
    prefix: str = "eval_",
    knn_k: int = KNN_NEIGHBOURS,
    knn_temperature: float = KNN_TEMPERATURE,
    linear_probe: bool = True,
    **linear_probe_training: Any,
) -> dict[str, float]:
    """kNN and linear-probe accuracies through the shipped metrics, named `{prefix}knn_accuracy`,
    `{prefix}knn_top5_accuracy`, `{prefix}linear_probe_accuracy`, `{prefix}linear_probe_top5_accuracy`."""
    classes = _num_classes(num_classes, _as_tensor(train_labels, torch.long), _as_tensor(eval_labels, torch.long))
    inputs = {"predictions": _as_tensor(eval_features, torch.float32).numpy(), "references": eval_labels}
    bank = {"train_features": train_features, "train_labels": train_labels, "num_classes": classes}
    results = {}
    knn = KNNAccuracy(keep_in_memory=True).compute(**inputs, **bank, k=knn_k, temperature=knn_temperature)
    results.update({f"{prefix}knn_{name}": value for name, value in knn.items()})
    if linear_probe:
        probe = LinearProbeAccuracy(keep_in_memory=True).compute(**inputs, **bank, **linear_probe_training)
        results.update({f"{prefix}linear_probe_{name}": value for name, value in probe.items()})
    return results


# ---------------------------------------------------------------------------------------------- feature extraction
def pool_features(outputs: Any, pooling: Pooling = "cls", num_prefix_tokens: int = 1) -> torch.Tensor:
    """One vector per image from a model output: the [CLS] token of `last_hidden_state` ("cls"),
    `pooler_output` ("pooler", falling back to CLS when the model has none) or the mean of the patch tokens
    ("mean", the first `num_prefix_tokens` tokens excluded)."""
    hidden = outputs.last_hidden_state if hasattr(outputs, "last_hidden_state") else outputs[0]
    if pooling == "pooler":
        pooled = getattr(outputs, "pooler_output", None)
        return pooled if pooled is not None else hidden[:, 0]
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        return hidden[:, num_prefix_tokens:].mean(dim=1)
    raise ValueError(f"pooling must be 'cls', 'pooler' or 'mean', got {pooling!r}")


def _is_prepared_by_accelerate(dataloader: Any) -> bool:
    from accelerate.data_loader import DataLoaderStateMixin

    return isinstance(dataloader, DataLoaderStateMixin)


def _gather_uneven(accelerator: Any, tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's `tensor` (first dims may differ) in rank order, on every rank."""
    # Plain `gather`: `gather_for_metrics` would cut "padding duplicates" if a prepared loader happened to be
    # at its end, but these rows are all genuine (the padding is removed here, by count).
    count = torch.tensor([tensor.shape[0]], device=accelerator.device)
    counts = accelerator.gather(count).tolist()
    if tensor.ndim > 1:
        # A rank without rows may not know their width (a feature model without a config gives (0, 0)): use the
        # others', or the gather below would meet tensors of different widths.
        width = int(accelerator.gather(torch.tensor([tensor.shape[1]], device=accelerator.device)).max())
        if tensor.shape[0] == 0 and tensor.shape[1] != width:
            tensor = tensor.new_zeros((0, width, *tensor.shape[2:]))
    padded = accelerator.pad_across_processes(tensor.to(accelerator.device), dim=0)
    gathered = accelerator.gather(padded).cpu()
    rows = padded.shape[0]
    return torch.cat([gathered[rank * rows : rank * rows + counts[rank]] for rank in range(len(counts))])


@torch.no_grad()
def extract_features(
    model: nn.Module,
    dataloader: Iterable[dict[str, torch.Tensor]],
    accelerator: Any | None = None,
    pooling: Pooling = "cls",
    use_base_model: bool = True,
    pixel_values_key: str = "pixel_values",
    labels_key: str = "labels",
    num_prefix_tokens: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen features and labels of every image of `dataloader`, gathered from all ranks (float32, on CPU).

    `model` is any of our models (MixedAE, CAE, their pre-training or classification heads, also DDP-wrapped):
    with `use_base_model` the encoder (`model.base_model`) runs without masking or mixing. Batches need
    `pixel_values` and `labels`. The model is put in eval mode and restored afterwards.

    Distributed: with a loader prepared by `accelerator.prepare`, each batch goes through
    `accelerator.gather_for_metrics` (which drops the padding duplicates of the last batch); with a rank-split
    loader from `data.build_evaluation_dataloader` (ranks may hold different counts), each rank's features
    are padded, gathered and unpadded. Every rank gets the full result.
    """
    module = accelerator.unwrap_model(model) if accelerator is not None else model
    encoder = module.base_model if use_base_model and hasattr(module, "base_model") else module
    device = accelerator.device if accelerator is not None else next(encoder.parameters()).device
    per_batch_gather = accelerator is not None and _is_prepared_by_accelerate(dataloader)
    features, labels = [], []
    with eval_mode(encoder):
        for batch in dataloader:
            if labels_key not in batch:
                raise KeyError(f"feature extraction needs {labels_key!r} in every batch; got keys {sorted(batch)}")
            # A fresh context per batch: accelerate's autocast() is a one-shot generator context manager.
            with accelerator.autocast() if accelerator is not None else contextlib.nullcontext():
                outputs = encoder(pixel_values=batch[pixel_values_key].to(device))
            batch_features = pool_features(outputs, pooling, num_prefix_tokens).float()
            batch_labels = batch[labels_key].to(device)
            if per_batch_gather:
                batch_features, batch_labels = accelerator.gather_for_metrics((batch_features, batch_labels))
            features.append(batch_features.cpu())
            labels.append(batch_labels.cpu())
    hidden_size = getattr(getattr(encoder, "config", None), "hidden_size", 0)
    all_features = torch.cat(features) if features else torch.zeros(0, hidden_size)
    all_labels = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
    if accelerator is not None and accelerator.num_processes > 1 and not per_batch_gather:
        all_features = _gather_uneven(accelerator, all_features)
        all_labels = _gather_uneven(accelerator, all_labels)
    return all_features, all_labels
