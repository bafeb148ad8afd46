"""Evaluation: accuracy metrics, weighted kNN, linear probe, feature extraction (also across two ranks)."""

import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from accelerate import Accelerator
from helpers import tiny_mixedae_config

from transformers_mixedae import MixedAEForPreTraining
from transformers_mixedae.evaluation import frozen_features as evaluation
from transformers_mixedae.evaluation.frozen_features import (
    Accuracy,
    KNNAccuracy,
    LinearProbeAccuracy,
    evaluate_frozen_features,
    extract_features,
    linear_probe_scores,
    pool_features,
    top_k_accuracy,
    weighted_knn_scores,
)


@pytest.fixture(autouse=True)
def _no_stream_shutdown_stall(monkeypatch):
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)


def blobs(num_classes=4, per_class=50, dim=16, spread=0.3, seed=0):
    """Well separated Gaussian clusters (one per class) and their labels."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=generator) * 5
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    features = centres[labels] + spread * torch.randn(len(labels), dim, generator=generator)
    return features, labels


# ---------------------------------------------------------------------------------------------- accuracy
def test_accuracy_top1_from_class_ids():
    metric = Accuracy(keep_in_memory=True)
    metric.add_batch(predictions=[0, 1, 2, 3], references=[0, 1, 0, 0])
    assert metric.compute() == {"accuracy": 0.5}


def test_accuracy_top5_from_scores():
    labels = torch.tensor([0, 1, 2])
    scores = torch.zeros(3, 8)
    scores[0, 0] = 9.0  # rank 1: top-1 and top-5 hit
    scores[1, [5, 6, 7, 1]] = torch.tensor([9.0, 8.0, 7.0, 6.0])  # rank 4: top-5 hit only
    scores[2, [3, 4, 5, 6, 7, 2]] = torch.tensor([9.0, 8.0, 7.0, 6.0, 5.0, 4.0])  # rank 6: miss
    metric = Accuracy(keep_in_memory=True)
    metric.add_batch(predictions=scores.numpy(), references=labels)
    results = metric.compute(top_k=(1, 5))
    assert results["accuracy"] == pytest.approx(1 / 3) and results["top5_accuracy"] == pytest.approx(2 / 3)
    assert top_k_accuracy(scores, labels, 5) == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------------------------- kNN
def test_knn_is_perfect_on_separable_features():
    train, train_labels = blobs(seed=0)
    queries, labels = blobs(seed=0, per_class=10)
    metric = KNNAccuracy(keep_in_memory=True)
    metric.add_batch(predictions=queries.numpy(), references=labels)
    assert metric.compute(train_features=train, train_labels=train_labels)["accuracy"] == 1.0


def test_knn_is_near_chance_on_random_labels():
    generator = torch.Generator().manual_seed(1)
    train, queries = torch.randn(2000, 32, generator=generator), torch.randn(1000, 32, generator=generator)
    train_labels = torch.randint(0, 10, (2000,), generator=generator)
    labels = torch.randint(0, 10, (1000,), generator=generator)
    accuracy = top_k_accuracy(weighted_knn_scores(train, train_labels, queries, 10), labels)
    assert 0.05 <= accuracy <= 0.16


def test_knn_votes_are_weighted_by_exp_similarity():
    # One very close neighbour of class 0 outvotes two distant ones of class 1 (a plain majority would not).
    train = torch.tensor([[1.0, 0.02], [1.0, 1.0], [1.0, -1.0]])
    train_labels = torch.tensor([0, 1, 1])
    scores = weighted_knn_scores(train, train_labels, torch.tensor([[1.0, 0.0]]), num_classes=2, k=3)
    votes = ((torch.nn.functional.normalize(train, dim=1) @ torch.tensor([1.0, 0.0])) / 0.07).exp()
    torch.testing.assert_close(scores[0], torch.stack([votes[0], votes[1] + votes[2]]))
    assert scores.argmax().item() == 0


def test_knn_top5_counts_only_classes_that_neighbours_voted_for():
    # Every query's 40 neighbours are of classes 0 and 7: a label no neighbour has is a miss at top-5 whatever its id
    # (before, labels 5, 6 and 8 filled the top 5 by class-id order and counted as hits).
    train = torch.cat([torch.eye(4)[0].expand(20, 4), -torch.eye(4)[0].expand(20, 4)])
    train_labels = torch.cat([torch.zeros(20, dtype=torch.long), torch.full((20,), 7)])
    queries = torch.eye(4)[0].expand(5, 4)
    for labels, top5 in (([1, 2, 3, 4, 9], 0.0), ([5, 6, 8, 9, 1], 0.0), ([0, 7, 0, 7, 5], 0.8)):
        metric = KNNAccuracy(keep_in_memory=True)
        metric.add_batch(predictions=queries.numpy(), references=labels)
        results = metric.compute(train_features=train, train_labels=train_labels, num_classes=10, k=40)
        assert results["top5_accuracy"] == pytest.approx(top5), labels


def test_frozen_feature_metrics_name_labels_outside_the_classes():
    train, train_labels = blobs(num_classes=4)
    for metric_class in (KNNAccuracy, LinearProbeAccuracy):
        metric = metric_class(keep_in_memory=True)
        metric.add_batch(predictions=train[:3].numpy(), references=[0, 1, 4])
        with pytest.raises(ValueError, match=r"references holds label 4, outside \[0, num_classes 4\)"):
            metric.compute(train_features=train, train_labels=train_labels, num_classes=4)
        metric.add_batch(predictions=train[:3].numpy(), references=[0, 1, 2])
        with pytest.raises(ValueError, match=r"train_labels holds label -1, outside \[0, num_classes 4\)"):
            metric.compute(train_features=train, train_labels=torch.cat([train_labels[:-1], torch.tensor([-1])]),
                           num_classes=4)


def test_knn_in_query_blocks_matches_one_block(monkeypatch):
    train, train_labels = blobs(seed=8, spread=3.0)
    queries, _ = blobs(seed=9, per_class=7, spread=3.0)
    whole = weighted_knn_scores(train, train_labels, queries, 4)
    monkeypatch.setattr(evaluation, "KNN_SIMILARITY_BUDGET", 3 * len(train))  # 3 queries per block
    torch.testing.assert_close(weighted_knn_scores(train, train_labels, queries, 4), whole)


def test_knn_is_scale_invariant():
    train, train_labels = blobs(seed=2, spread=3.0)
    queries, _ = blobs(seed=3, per_class=5, spread=3.0)
    torch.testing.assert_close(
        weighted_knn_scores(train, train_labels, queries, 4), weighted_knn_scores(train * 7, train_labels, queries, 4)
    )


# ---------------------------------------------------------------------------------------------- linear probe
def test_linear_probe_learns_a_separable_set_deterministically():
    train, train_labels = blobs(seed=4, spread=1.0)
    queries, labels = blobs(seed=4, per_class=20, spread=1.0)
    rng_state = torch.random.get_rng_state()
    scores = linear_probe_scores(train, train_labels, queries, 4, epochs=5, seed=7)
    assert torch.equal(torch.random.get_rng_state(), rng_state)  # the caller's RNG stream is untouched
    assert top_k_accuracy(scores, labels) == 1.0
    assert torch.equal(scores, linear_probe_scores(train, train_labels, queries, 4, epochs=5, seed=7))


def test_linear_probe_cannot_learn_random_labels_out_of_sample():
    generator = torch.Generator().manual_seed(5)
    train, queries = torch.randn(500, 16, generator=generator), torch.randn(500, 16, generator=generator)
    train_labels = torch.randint(0, 4, (500,), generator=generator)
    labels = torch.randint(0, 4, (500,), generator=generator)
    metric = LinearProbeAccuracy(keep_in_memory=True)
    metric.add_batch(predictions=queries.numpy(), references=labels)
    assert metric.compute(train_features=train, train_labels=train_labels, num_classes=4)["accuracy"] < 0.4


def test_frozen_feature_evaluation_names_its_results():
    train, train_labels = blobs(num_classes=6, seed=6)
    queries, labels = blobs(num_classes=6, seed=6, per_class=5)
    results = evaluate_frozen_features(train, train_labels, queries, labels)
    assert set(results) == {
        "eval_knn_accuracy", "eval_knn_top5_accuracy", "eval_linear_probe_accuracy", "eval_linear_probe_top5_accuracy"
    }
    assert results["eval_knn_accuracy"] == 1.0 and results["eval_linear_probe_accuracy"] == 1.0


# ---------------------------------------------------------------------------------------------- features
def image_batches(num_images=10, batch_size=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(num_images, 3, 32, 32, generator=generator)
    labels = torch.arange(num_images)
    return [
        {"pixel_values": pixels[start : start + batch_size], "labels": labels[start : start + batch_size]}
        for start in range(0, num_images, batch_size)
    ]


def test_extract_features_uses_the_unmasked_encoder_and_restores_training_mode():
    # Dropout and stochastic depth on, so that features taken in training mode would differ from the expected ones.
    model = MixedAEForPreTraining(tiny_mixedae_config(hidden_dropout_prob=0.5, drop_path_rate=0.5)).train()
    batches = image_batches()
    features, labels = extract_features(model, batches)
    assert features.shape == (10, 32) and features.dtype == torch.float32 and labels.tolist() == list(range(10))
    assert model.training and model.vit.training
    with torch.no_grad():
        model.eval()
        expected = model.vit(pixel_values=torch.cat([b["pixel_values"] for b in batches])).last_hidden_state
    torch.testing.assert_close(features, expected[:, 0])
    mean_pooled, _ = extract_features(model, batches, pooling="mean")
    torch.testing.assert_close(mean_pooled, expected[:, 1:].mean(dim=1))
    pooler, _ = extract_features(model, batches, pooling="pooler")
    torch.testing.assert_close(pooler, expected[:, 0])


def test_extract_features_with_a_single_process_accelerator():
    model = MixedAEForPreTraining(tiny_mixedae_config())
    plain, _ = extract_features(model, image_batches())
    accelerator = Accelerator(cpu=True)
    prepared_model = accelerator.prepare(model)
    with_accelerator, labels = extract_features(prepared_model, image_batches(), accelerator)
    torch.testing.assert_close(with_accelerator, plain)
    assert labels.tolist() == list(range(10))


def test_pool_features_rejects_unknown_pooling():
    class Output:
        last_hidden_state = torch.zeros(2, 3, 4)

    with pytest.raises(ValueError, match="pooling"):
        pool_features(Output(), "max")


def _two_rank_extraction():
    """Runs in each of two gloo processes: uneven rank-split loaders, then gather."""
    from transformers_mixedae.data import (
        EvaluationTransform,
        build_evaluation_dataloader,
    )

    accelerator = Accelerator(cpu=True)
    assert accelerator.num_processes == 2
    torch.manual_seed(0)
    model = MixedAEForPreTraining(tiny_mixedae_config())
    # 7 images with labels 0..6: ranks hold 4 and 3 (split by example), batches of 2 -> 2 vs 2 uneven batches.
    images = [np.full((8, 8), 30 * index, dtype=np.uint8) for index in range(7)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    dataset = datasets.Dataset.from_dict({"image": images, "label": list(range(7))}, features=features)
    loader = build_evaluation_dataloader(
        dataset, EvaluationTransform(32), batch_size=2,
        rank=accelerator.process_index, world_size=accelerator.num_processes,
    )
    features, labels = extract_features(model, loader, accelerator)
    assert sorted(labels.tolist()) == list(range(7)), labels
    single = build_evaluation_dataloader(dataset, EvaluationTransform(32), batch_size=7)
    reference, reference_labels = extract_features(model, single)
    order = labels.argsort()
    torch.testing.assert_close(features[order], reference[reference_labels.argsort()], atol=1e-5, rtol=1e-4)


def _two_rank_gather_with_an_empty_rank():
    """Runs in each of two gloo processes: rank 1 has no rows and, as a feature model without a config leaves it,
    no width either; the gather must give rank 0's rows on both (it failed on the mismatched widths)."""
    from transformers_mixedae.evaluation.frozen_features import _gather_uneven

    accelerator = Accelerator(cpu=True)
    assert accelerator.num_processes == 2
    first = accelerator.process_index == 0
    features = _gather_uneven(accelerator, torch.arange(6.0).view(3, 2) if first else torch.zeros(0, 0))
    labels = _gather_uneven(accelerator, torch.tensor([4, 5, 6]) if first else torch.zeros(0, dtype=torch.long))
    assert torch.equal(features, torch.arange(6.0).view(3, 2)) and labels.tolist() == [4, 5, 6]


def run_on_two_ranks(function_name: str) -> None:
    # A fresh interpreter: `debug_launcher` forks, and forking after this process has run torch ops (OpenMP
    # thread pools) or built an Accelerator (a process-wide state singleton) can hang the children.
    tests_dir = Path(__file__).resolve().parent
    code = (
        "import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
        "from accelerate import debug_launcher\n"
        "import test_evaluation\n"
        f"debug_launcher(test_evaluation.{function_name}, num_processes=2)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code, str(tests_dir), str(tests_dir.parent / "src")],
        env=env, capture_output=True, text=True, timeout=180, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_a_rank_without_rows_joins_the_feature_gather():
    run_on_two_ranks("_two_rank_gather_with_an_empty_rank")


def test_extract_features_gathers_uneven_ranks():
    run_on_two_ranks("_two_rank_extraction")
