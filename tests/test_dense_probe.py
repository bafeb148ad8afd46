"""evaluation.dense_probe: majority patch labels by hand, the probe learning a colour-coded segmentation through a
frozen backbone, the size check, and the CLI on the bundled dense benchmark."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from helpers import tiny_mixedae_config
from tiny_runs import REPOSITORY
from transformers_mixedae import MixedAEBackbone, MixedAEForPreTraining
from transformers_mixedae.evaluation.dense_probe import dense_linear_probe, patch_labels, run_dense_probe


def test_patch_labels_take_each_patchs_majority_class():
    labels = torch.tensor([[
        [1, 1, 2, 2],
        [1, 2, 2, 0],
        [0, 0, 255, 255],
        [3, 3, 255, 4],
    ]])
    # Quadrants: three 1s; three 2s; a 2-2 tie between 0 and 3 goes to the lower id; ignored pixels do not vote.
    assert patch_labels(labels, patch_size=2, num_labels=5).tolist() == [[[1, 2], [0, 4]]]
    assert patch_labels(torch.full((1, 2, 2), 255), 2, 5).tolist() == [[[255]]]  # nothing labelled: ignored
    with pytest.raises(ValueError, match="do not divide into 4 px patches"):
        patch_labels(torch.zeros(1, 6, 8, dtype=torch.long), patch_size=4, num_labels=2)


def colour_coded_scenes(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """32 px images of 4 px patches, each patch plain red (class 1) or green (class 2), labels per pixel."""
    generator = torch.Generator().manual_seed(seed)
    classes = torch.randint(1, 3, (count, 8, 8), generator=generator)
    labels = classes.repeat_interleave(4, dim=1).repeat_interleave(4, dim=2)
    pixels = torch.zeros(count, 3, 32, 32)
    pixels[:, 0] = (labels == 1).float() * 2.0 - 1.0
    pixels[:, 1] = (labels == 2).float() * 2.0 - 1.0
    return pixels, labels


def test_the_probe_reads_a_segmentation_that_the_frozen_features_hold():
    torch.manual_seed(0)
    backbone = MixedAEBackbone(tiny_mixedae_config(out_indices=[2]))
    before = {name: parameter.clone() for name, parameter in backbone.state_dict().items()}
    train = colour_coded_scenes(32, seed=0)
    validation = colour_coded_scenes(8, seed=1)
    result = dense_linear_probe(backbone, *train, *validation, num_labels=3, epochs=5, batch_size=256)
    # Class 0 never occurs: NaN IoU, left out of the mean; red and green are told apart almost everywhere
    # (bilinear upsampling blurs the patch borders a little).
    assert math.isnan(result["per_category_iou"][0])
    assert result["mean_iou"] > 0.9 and result["overall_accuracy"] > 0.95
    assert all(torch.equal(before[name], value) for name, value in backbone.state_dict().items())  # frozen
    # Same inputs and seed: the same numbers.
    again = dense_linear_probe(backbone, *train, *validation, num_labels=3, epochs=5, batch_size=256)
    assert again["mean_iou"] == result["mean_iou"] and again["per_category_iou"][1:] == result["per_category_iou"][1:]


def test_an_image_size_off_the_patch_grid_is_refused(tmp_path):
    torch.manual_seed(0)
    MixedAEForPreTraining(tiny_mixedae_config()).save_pretrained(tmp_path)
    data = {"train": (torch.zeros(2, 3, 30, 30), torch.zeros(2, 30, 30, dtype=torch.long)),
            "validation": (torch.zeros(2, 3, 30, 30), torch.zeros(2, 30, 30, dtype=torch.long)), "num_labels": 2}
    with pytest.raises(ValueError, match=r"images of \(30, 30\) px do not divide into the model's 4 px patches"):
        run_dense_probe(str(tmp_path), data=data)


def test_cli_on_a_saved_pretraining_folder_and_the_bundled_dense_benchmark(tmp_path):
    torch.manual_seed(0)
    MixedAEForPreTraining(tiny_mixedae_config()).save_pretrained(tmp_path)
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPOSITORY / "src")}
    completed = subprocess.run(
        [sys.executable, "-m", "transformers_mixedae.evaluation.dense_probe", str(tmp_path),
         "--max_train_images", "8", "--epochs", "1", "--image_size", "32"],
        capture_output=True, text=True, env=environment, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout)
    assert list(result["per_category_iou"]) == ["background", "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    for key in ("mean_iou", "mean_accuracy", "overall_accuracy"):
        assert 0.0 <= result[key] <= 1.0
