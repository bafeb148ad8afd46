"""The embedded dense benchmark (transformers_mixedae/data/default_dense) and scripts/build_dense_dataset.py: the
shipped files are what provenance.json says and what the generator rebuilds, image and annotation agree pixel for
pixel, class ids and item counts are in range, and train and validation share no item."""

import hashlib
import importlib
import io
import json
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from transformers_mixedae.data import DEFAULT_DATASET_DIR

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
DENSE_DIR = DEFAULT_DATASET_DIR.parent / "default_dense"
PROVENANCE = json.loads((DENSE_DIR / "provenance.json").read_text(encoding="utf-8"))
# Every 40th scene of each split is rebuilt and compared with the shipped pixels (all of them would take ~25 s).
REBUILD_STRIDE = 40


@pytest.fixture(scope="module")
def builder():
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(REPOSITORY_ROOT / "scripts"))
        yield importlib.import_module("build_dense_dataset")


@pytest.fixture(scope="module")
def pools(builder):
    return {split: builder.read_source_split(split) for split in builder.SPLITS}


@pytest.fixture(scope="module")
def shipped():
    """Decoded (image, annotation) uint8 arrays of every shipped scene, per split, in file order."""
    scenes = {}
    for split, info in PROVENANCE["splits"].items():
        scenes[split] = []
        for name in sorted(info["files"]):
            table = pq.read_table(DENSE_DIR / name).to_pydict()
            for image, annotation in zip(table["image"], table["annotation"]):
                scenes[split].append(
                    (np.asarray(Image.open(io.BytesIO(image["bytes"]))), np.asarray(Image.open(io.BytesIO(annotation["bytes"]))))
                )
    return scenes


def settings_of_provenance(builder):
    return builder.SceneSettings(
        canvas_size=PROVENANCE["canvas_size"],
        min_items=PROVENANCE["items_per_scene"][0],
        max_items=PROVENANCE["items_per_scene"][1],
        min_item_size=PROVENANCE["item_size_range"][0],
        max_item_size=PROVENANCE["item_size_range"][1],
    )


def test_provenance_matches_the_shipped_files():
    shipped_files = sorted(path.name for path in DENSE_DIR.glob("*.parquet"))
    listed = sorted(name for info in PROVENANCE["splits"].values() for name in info["files"])
    assert shipped_files == listed
    for split, info in PROVENANCE["splits"].items():
        rows = 0
        for name, recorded in info["files"].items():
            path = DENSE_DIR / name
            assert hashlib.sha256(path.read_bytes()).hexdigest() == recorded["sha256"], name
            assert path.stat().st_size == recorded["bytes"]
            assert name.startswith(f"{split}-")
            rows += pq.ParquetFile(path).metadata.num_rows
        assert rows == info["num_examples"]
    assert PROVENANCE["splits"]["train"]["num_examples"] == 1800
    assert PROVENANCE["splits"]["validation"]["num_examples"] == 450
    # The whole benchmark stays small enough to ship inside the wheel.
    assert sum(path.stat().st_size for path in DENSE_DIR.glob("*.parquet")) < 4_200_000


def test_id2label_is_background_then_the_default_datasets_classes(builder):
    default_names = json.loads((DEFAULT_DATASET_DIR / "provenance.json").read_text(encoding="utf-8"))["label_names"]
    expected = {"0": "background", **{str(1 + index): name for index, name in enumerate(default_names)}}
    assert PROVENANCE["id2label"] == expected
    assert PROVENANCE["num_labels"] == 11
    assert {str(key): value for key, value in builder.ID2LABEL.items()} == expected


def test_load_dataset_gives_pil_images_and_annotations(tmp_path):
    files = {split: [str(DENSE_DIR / name) for name in sorted(info["files"])] for split, info in PROVENANCE["splits"].items()}
    data = datasets.load_dataset("parquet", data_files=files, cache_dir=str(tmp_path))
    assert {split: len(data[split]) for split in data} == {"train": 1800, "validation": 450}
    assert isinstance(data["train"].features["image"], datasets.Image)
    assert isinstance(data["train"].features["annotation"], datasets.Image)
    example = data["validation"][0]
    assert example["image"].mode == "RGB" and example["image"].size == (64, 64)
    assert example["annotation"].mode == "L" and example["annotation"].size == (64, 64)


def test_every_shipped_scene_has_valid_classes_and_items(shipped):
    for split, scenes in shipped.items():
        for image, annotation in scenes:
            assert image.shape == (64, 64, 3) and image.dtype == np.uint8
            assert annotation.shape == (64, 64) and annotation.dtype == np.uint8
            assert annotation.max() <= 10
            values = np.unique(annotation)
            # Background and at least one item class are always present (two items may share a class).
            assert values[0] == 0 and 2 <= len(values) <= 5


def test_shipped_scenes_match_a_rebuild(builder, pools, shipped):
    settings = settings_of_provenance(builder)
    for split, scenes in shipped.items():
        pool_images, pool_labels, _ = pools[split]
        for index in range(0, len(scenes), REBUILD_STRIDE):
            image, annotation, _ = builder.build_scene(PROVENANCE["seed"], split, index, pool_images, pool_labels, settings)
            np.testing.assert_array_equal(image, scenes[index][0], err_msg=f"{split} scene {index}")
            np.testing.assert_array_equal(annotation, scenes[index][1], err_msg=f"{split} scene {index}")


def test_the_generator_is_deterministic_per_scene(builder, pools):
    settings = builder.SceneSettings()
    pool_images, pool_labels, _ = pools["validation"]
    first = builder.build_scene(0, "validation", 7, pool_images, pool_labels, settings)
    again = builder.build_scene(0, "validation", 7, pool_images, pool_labels, settings)
    other_seed = builder.build_scene(1, "validation", 7, pool_images, pool_labels, settings)
    other_split = builder.build_scene(0, "train", 7, pool_images, pool_labels, settings)
    assert builder.png_bytes(first[0]) == builder.png_bytes(again[0])
    assert builder.png_bytes(first[1]) == builder.png_bytes(again[1])
    assert first[2] == again[2]
    assert not np.array_equal(first[0], other_seed[0])
    assert not np.array_equal(first[0], other_split[0])


def test_annotations_agree_with_images_and_placements(builder, pools, shipped):
    settings = settings_of_provenance(builder)
    for split in builder.SPLITS:
        pool_images, pool_labels, _ = pools[split]
        for index in range(0, len(shipped[split]), REBUILD_STRIDE):
            image, annotation, placements = builder.build_scene(
                PROVENANCE["seed"], split, index, pool_images, pool_labels, settings
            )
            # The background is the first thing a scene's generator draws.
            background = builder.draw_background(builder.scene_rng(PROVENANCE["seed"], split, index), settings.canvas_size)
            background_pixels = annotation == 0
            np.testing.assert_array_equal(image[background_pixels], background[background_pixels])
            assert 2 <= len(placements) <= 4
            assert len({placement.source_index for placement in placements}) == len(placements)
            item_classes = {1 + placement.label for placement in placements}
            assert set(np.unique(annotation)) == {0} | item_classes
            for placement in placements:
                assert placement.label == pool_labels[placement.source_index]
                assert 16 <= placement.size <= 40
                assert placement.top + placement.size <= 64 and placement.left + placement.size <= 64
            # The last item is on top: its whole mask carries its class.
            top = placements[-1]
            mask, _ = builder.item_mask_and_grey(pool_images[top.source_index], top.size)
            window = annotation[top.top : top.top + top.size, top.left : top.left + top.size]
            assert (window[mask] == 1 + top.label).all()


def test_a_single_item_is_painted_exactly_on_its_thresholded_shape(builder, pools):
    pool_images, pool_labels, _ = pools["train"]
    background = np.full((64, 64, 3), 100, dtype=np.uint8)
    placement = builder.Placement(source_index=3, label=int(pool_labels[3]), size=28, top=10, left=20)
    tint = np.array([255, 128, 64])
    image, annotation = builder.render(background, [placement], [tint], pool_images)
    expected = np.zeros((64, 64), dtype=np.uint8)
    expected[10:38, 20:48][pool_images[3] >= builder.ITEM_THRESHOLD] = 1 + placement.label
    np.testing.assert_array_equal(annotation, expected)
    np.testing.assert_array_equal(image[annotation == 0], background[annotation == 0])
    shading = (pool_images[3] // 32) * 32 + 16
    inside = pool_images[3] >= builder.ITEM_THRESHOLD
    np.testing.assert_array_equal(image[10:38, 20:48][inside], np.rint(shading[inside][:, None] * tint / 255.0))


def test_a_later_item_occludes_an_earlier_one(builder, pools):
    pool_images, pool_labels, _ = pools["train"]
    background = np.zeros((64, 64, 3), dtype=np.uint8)
    first = builder.Placement(0, int(pool_labels[0]), 28, 0, 0)
    second = builder.Placement(1, int(pool_labels[1]), 28, 10, 10)
    tints = [np.array([255, 255, 255]), np.array([255, 255, 255])]
    _, annotation = builder.render(background, [first, second], tints, pool_images)
    second_mask = np.zeros((64, 64), dtype=bool)
    second_mask[10:38, 10:38] = pool_images[1] >= builder.ITEM_THRESHOLD
    first_mask = np.zeros((64, 64), dtype=bool)
    first_mask[0:28, 0:28] = pool_images[0] >= builder.ITEM_THRESHOLD
    assert (annotation[second_mask] == 1 + second.label).all()
    assert (annotation[first_mask & ~second_mask] == 1 + first.label).all()
    assert (annotation[~first_mask & ~second_mask] == 0).all()


def test_train_and_validation_items_are_disjoint(pools):
    train_images, _, train_paths = pools["train"]
    validation_images, _, validation_paths = pools["validation"]
    assert all(path.startswith("fashion-mnist/train/") for path in train_paths)
    assert all(path.startswith("fashion-mnist/test/") for path in validation_paths)
    # Not even a pixel-identical image appears in both item pools.
    train_hashes = {hashlib.sha256(image.tobytes()).digest() for image in train_images}
    assert not any(hashlib.sha256(image.tobytes()).digest() in train_hashes for image in validation_images)
    assert (len(train_images), len(validation_images)) == (6000, 1000)
