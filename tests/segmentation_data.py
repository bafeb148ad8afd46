"""Tiny semantic-segmentation data made in a test: a folder in the ADEChallengeData2016 layout and the same pairs as
Parquet shards (columns `image` / `annotation`, as the bundled dense benchmark and scene_parse_150), plus the tiny
UperNet run settings shared by the segmentation tests."""

from pathlib import Path

import datasets
import numpy as np
from PIL import Image

from transformers_mixedae.tasks.semantic_segmentation_args import SegmentationArguments
from transformers_mixedae.training.arguments import DataArguments, ModelArguments, TrainingArguments

# Class c paints its rectangle in this colour: an image's pixels say their class, so a few steps learn something.
COLOURS = np.array([[20, 20, 20], [230, 40, 40], [40, 200, 60], [50, 80, 230], [220, 220, 40]], dtype=np.uint8)
TINY_BACKBONE = "hidden_size=32,num_hidden_layers=4,num_attention_heads=4,intermediate_size=64"
TINY_CAE_BACKBONE = TINY_BACKBONE + (
    ",decoder_hidden_size=32,regressor_num_layers=1,decoder_num_layers=1,decoder_num_attention_heads=4,"
    "num_masking_patches=8,mask_min_num_patches=2,target=pixels"
)
SETTINGS = dict(
    model_type="mixedae", config_overrides=TINY_BACKBONE, image_size=16, patch_size=4, attn_implementation="eager",
    num_labels=4, crop_size=16, out_indices=[1, 2, 3, 4], head_hidden_size=16, auxiliary_channels=8,
    per_device_train_batch_size=4, per_device_eval_batch_size=2, max_steps=3, logging_steps=1, seed=5,
    learning_rate=1e-3, warmup_steps=1, photometric_distortion=True,
)


def pair(rng: np.random.Generator, height: int, width: int, num_labels: int) -> tuple[Image.Image, Image.Image]:
    """An RGB image and its label map ("L" PNG): background 0 and two rectangles of random classes."""
    labels = np.zeros((height, width), dtype=np.uint8)
    for _ in range(2):
        top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
        bottom, right = top + rng.integers(height // 4, height // 2 + 1), left + rng.integers(width // 4, width // 2 + 1)
        labels[top:bottom, left:right] = rng.integers(1, num_labels)
    noise = rng.integers(0, 25, (height, width, 3))
    image = np.clip(COLOURS[labels].astype(np.int64) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(image), Image.fromarray(labels, mode="L")


def make_ade_folder(root: Path, num_train: int = 12, num_validation: int = 5, num_labels: int = 4,
                    seed: int = 0, sizes=((20, 24), (24, 20), (18, 30))) -> Path:
    """images/{training,validation}/*.jpg|png and annotations/{training,validation}/*.png (same stems)."""
    rng = np.random.default_rng(seed)
    for split, count in (("training", num_train), ("validation", num_validation)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            height, width = sizes[index % len(sizes)]
            image, labels = pair(rng, height, width, num_labels)
            stem = f"ADE_{split}_{index:08d}"
            image.save(root / "images" / split / f"{stem}.png")
            labels.save(root / "annotations" / split / f"{stem}.png")
    return root


def make_parquet_shards(root: Path, num_train: int = 8, num_validation: int = 4, num_labels: int = 4,
                        seed: int = 1) -> Path:
    """{train,validation}-00000-of-00001.parquet with `image` / `annotation` Image columns (PNG bytes)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
    for split, count in (("train", num_train), ("validation", num_validation)):
        pairs = [pair(rng, 20, 24, num_labels) for _ in range(count)]
        dataset = datasets.Dataset.from_dict(
            {"image": [image for image, _ in pairs], "annotation": [labels for _, labels in pairs]}, features=features
        )
        dataset.to_parquet(str(root / f"{split}-00000-of-00001.parquet"))
    return root


def arguments(output_dir, data_dir, **overrides):
    """The four argument groups of a tiny segmentation run (`SETTINGS` + overrides)."""
    values = {**SETTINGS, "output_dir": str(output_dir), "data_dir": str(data_dir), **overrides}
    groups = []
    for group in (ModelArguments, DataArguments, TrainingArguments, SegmentationArguments):
        fields = set(group.__dataclass_fields__)
        groups.append(group(**{key: value for key, value in values.items() if key in fields}))
    return tuple(groups)


def command_line(output_dir, data_dir, **overrides) -> list[str]:
    """The same run as `arguments`, as run_semantic_segmentation.py flags."""
    values = {**SETTINGS, "output_dir": str(output_dir), "data_dir": str(data_dir), **overrides}
    line = []
    for key, value in values.items():
        line += [f"--{key}", *(map(str, value) if isinstance(value, list) else [str(value)])]
    return line
