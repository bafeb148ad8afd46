"""WebDataset `.tar` shards as `--train_dir` / `--validation_dir` (and as a dataset folder): loading, column detection,
decoding, bad images, the warning about shard counts that do not split evenly over processes and workers."""

import gzip
import io
import json
import logging
import re
import tarfile
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from helpers import single_torch_thread  # noqa: F401 (fixture)
from PIL import Image

from transformers_mixedae.data import (
    EvaluationTransform,
    build_evaluation_dataloader,
    build_pretraining_dataloader,
    check_image_dataset,
    decode_rgb,
    load_image_dataset,
    resolve_column_names,
    shard_split_warning,
    streaming,
)

FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
TRANSFORM = EvaluationTransform(16, normalize=False)


def image_bytes(seed: int, extension: str = "jpg") -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, FORMATS[extension])
    return buffer.getvalue()


def write_shards(folder: Path, samples: list[dict[str, bytes]], num_shards: int, first_key: int = 0) -> list[Path]:
    """`samples` (extension -> file bytes) as WebDataset shards `folder/shard-0000N.tar`, cut into `num_shards`
    consecutive runs; sample i is stored under the key `first_key + i` (6 digits)."""
    folder.mkdir(parents=True)
    paths = [folder / f"shard-{index:05d}.tar" for index in range(num_shards)]
    per_shard = -(-len(samples) // num_shards)
    for index, path in enumerate(paths):
        with tarfile.open(path, "w") as archive:
            for offset, sample in enumerate(samples[index * per_shard:(index + 1) * per_shard]):
                key = f"{first_key + index * per_shard + offset:06d}"
                for extension, data in sample.items():
                    member = tarfile.TarInfo(f"{key}.{extension}")
                    member.size = len(data)
                    archive.addfile(member, io.BytesIO(data))
    return paths


def labelled(count: int, extension: str = "jpg", first_seed: int = 0, label_extension: str = "cls") -> list[dict]:
    """`count` samples: an image and its class (seed % 3) written as text, as WebDataset `.cls` files are."""
    return [{extension: image_bytes(seed, extension), label_extension: str(seed % 3).encode()}
            for seed in range(first_seed, first_seed + count)]


@pytest.fixture(autouse=True)
def _fresh_shard_warnings(monkeypatch):
    # The warning is logged once per stream layout and process: every test starts with none logged yet.
    monkeypatch.setattr(streaming, "_WARNED_SHARD_SPLITS", set())


@pytest.fixture
def shard_folders(tmp_path):
    write_shards(tmp_path / "train", labelled(12), 3)
    write_shards(tmp_path / "validation", labelled(4, first_seed=100), 2, first_key=100)
    return tmp_path / "train", tmp_path / "validation"


def undecoded(dataset):
    if isinstance(dataset, datasets.Dataset):
        return list(dataset.cast_column("jpg", datasets.Image(decode=False)))
    return list(dataset.decode(False))


# ---------------------------------------------------------------------------------------------- loading
@pytest.mark.parametrize("streaming_", [False, True])
def test_a_folder_of_shards_loads_with_the_image_and_label_columns_detected(shard_folders, streaming_):
    train_dir, validation_dir = shard_folders
    loaded = load_image_dataset(train_dir=str(train_dir), validation_dir=str(validation_dir), streaming=streaming_)
    assert isinstance(loaded.train, datasets.IterableDataset if streaming_ else datasets.Dataset)
    assert (loaded.image_column_name, loaded.label_column_name) == ("jpg", "cls")
    assert loaded.source == f"webdataset shards in {train_dir}, {validation_dir}"
    assert loaded.label_names is None  # integers without class names, as ImageNet's `.cls` files
    train = undecoded(loaded.train)
    assert [example["__key__"] for example in train] == [f"{seed:06d}" for seed in range(12)]
    assert [example["jpg"]["bytes"] for example in train] == [image_bytes(seed) for seed in range(12)]
    assert [example["cls"] for example in train] == [seed % 3 for seed in range(12)]
    assert [example["cls"] for example in undecoded(loaded.validation)] == [seed % 3 for seed in range(100, 104)]
    # The skip-aware decoder takes the column's `{"bytes", "path"}` dicts and gives the pixels Pillow gives.
    first = np.asarray(decode_rgb(train[0]["jpg"]))
    assert np.array_equal(first, np.asarray(Image.open(io.BytesIO(image_bytes(0))).convert("RGB")))


@pytest.mark.parametrize("streaming_", [False, True])
def test_the_loaders_give_integer_labels_in_order(shard_folders, streaming_):
    train_dir, _ = shard_folders
    loaded = load_image_dataset(train_dir=str(train_dir), streaming=streaming_)
    loader = build_evaluation_dataloader(loaded.train, TRANSFORM, batch_size=5, image_column_name="jpg",
                                         label_column_name="cls")
    batches = list(loader)
    assert [batch["labels"].tolist() for batch in batches] == [[0, 1, 2, 0, 1], [2, 0, 1, 2, 0], [1, 2]]
    assert batches[0]["labels"].dtype == torch.int64 and batches[0]["pixel_values"].shape == (5, 3, 16, 16)
    assert loader.stats.num_loaded == 12 and loader.stats.num_skipped == 0


@pytest.mark.parametrize("extension", ["png", "webp"])
def test_png_and_webp_shards_with_label_files_holding_text(tmp_path, extension):
    # `.label` is not among the builder's decoders: the column holds the bytes b"2", read as the integer 2.
    write_shards(tmp_path / "train", labelled(6, extension, label_extension="label"), 2)
    loaded = load_image_dataset(train_dir=str(tmp_path / "train"))
    assert (loaded.image_column_name, loaded.label_column_name) == (extension, "label")
    assert loaded.train.features["label"] == datasets.Value("binary")
    loader = build_evaluation_dataloader(loaded.train, TRANSFORM, batch_size=6, image_column_name=extension,
                                         label_column_name="label")
    (batch,) = list(loader)
    assert batch["labels"].tolist() == [0, 1, 2, 0, 1, 2]
    expected = [np.asarray(Image.open(io.BytesIO(image_bytes(seed, extension))).convert("RGB")) for seed in range(6)]
    assert np.array_equal(batch["pixel_values"][0].numpy(), TRANSFORM(expected[0])["pixel_values"].numpy())


def test_a_cls_column_of_text_integers_is_accepted_and_read_as_integers():
    images = [{"bytes": image_bytes(seed), "path": f"{seed}.jpg"} for seed in range(4)]
    dataset = datasets.Dataset.from_dict({"jpg": images, "cls": ["3", "1", "0", "2"]},
                                         features=datasets.Features({"jpg": datasets.Image(),
                                                                     "cls": datasets.Value("string")}))
    assert resolve_column_names(dataset, "image", "label", "test data") == ("jpg", "cls")
    check_image_dataset(dataset, "train", "jpg", "cls", "test data")
    (batch,) = list(build_evaluation_dataloader(dataset, TRANSFORM, batch_size=4, image_column_name="jpg",
                                                label_column_name="cls"))
    assert batch["labels"].tolist() == [3, 1, 0, 2]


def test_explicit_column_names_are_used_as_given(tmp_path):
    write_shards(tmp_path / "train", [{"jpg": image_bytes(0), "png": image_bytes(1, "png"), "cls": b"1"}] * 2, 1)
    loaded = load_image_dataset(train_dir=str(tmp_path / "train"), image_column_name="png", label_column_name="cls")
    assert (loaded.image_column_name, loaded.label_column_name) == ("png", "cls")
    with pytest.raises(ValueError, match=r"^image column 'jpeg' not found in the train split of webdataset shards in "
                                         r".*; available columns: \['jpg', 'png', 'cls', '__key__', '__url__'\]\. "
                                         r"Pass --image_column_name to choose another\.$"):
        load_image_dataset(train_dir=str(tmp_path / "train"), image_column_name="jpeg")


@pytest.mark.parametrize("streaming_", [False, True])
def test_several_image_columns_are_named_in_the_error(tmp_path, streaming_):
    write_shards(tmp_path / "train", [{"jpg": image_bytes(0), "png": image_bytes(1, "png"), "cls": b"1"}] * 2, 1)
    message = (f"image column 'image' not found in the train split of webdataset shards in {tmp_path / 'train'}; "
               "available columns: ['jpg', 'png', 'cls', '__key__', '__url__'], of which ['jpg', 'png'] could all be "
               "the images. Pass --image_column_name to choose one.")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        load_image_dataset(train_dir=str(tmp_path / "train"), streaming=streaming_)


def test_several_label_columns_are_named_in_the_error(tmp_path):
    write_shards(tmp_path / "train", [{"jpg": image_bytes(0), "cls": b"1", "target": b"1"}] * 2, 1)
    message = (f"label column 'label' not found in the train split of webdataset shards in {tmp_path / 'train'}; "
               "available columns: ['jpg', 'cls', 'target', '__key__', '__url__'], of which ['cls', 'target'] could "
               "all be the labels. Pass --label_column_name to choose one.")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        load_image_dataset(train_dir=str(tmp_path / "train"))
    chosen = load_image_dataset(train_dir=str(tmp_path / "train"), label_column_name="target")
    assert chosen.label_column_name == "target"


def test_unlabelled_shards_keep_the_missing_label_error(tmp_path):
    write_shards(tmp_path / "train", [{"jpg": image_bytes(0)}] * 2, 1)
    with pytest.raises(ValueError, match=r"^label column 'label' not found in the train split of webdataset shards "
                                         r"in .*; available columns: \['jpg', '__key__', '__url__'\]\. Pass "
                                         r"--label_column_name to choose another\.$"):
        load_image_dataset(train_dir=str(tmp_path / "train"))
    assert load_image_dataset(train_dir=str(tmp_path / "train"), label_column_name=None).image_column_name == "jpg"


def test_shards_and_image_files_cannot_be_mixed(shard_folders, tmp_path):
    train_dir, _ = shard_folders
    (tmp_path / "images" / "a").mkdir(parents=True)
    (tmp_path / "images" / "a" / "0.jpg").write_bytes(image_bytes(0))
    with pytest.raises(ValueError, match=r"^train_dir and validation_dir must hold the same kind of data \(Parquet "
                                         r"shards, WebDataset \.tar shards or image files\); got train: WebDataset "
                                         r"\.tar shards, validation: image files$"):
        load_image_dataset(train_dir=str(train_dir), validation_dir=str(tmp_path / "images"))


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tgz"])
def test_a_data_dir_with_split_folders_of_plain_or_gzipped_shards(tmp_path, suffix):
    for split, first in (("train", 0), ("validation", 50)):
        for shard in write_shards(tmp_path / "data" / split, labelled(2, first_seed=first), 1, first_key=first):
            if suffix != ".tar":
                with gzip.open(shard.with_name(shard.stem + suffix), "wb") as packed:
                    packed.write(shard.read_bytes())
                shard.unlink()
    loaded = load_image_dataset(data_dir=str(tmp_path / "data"))  # was: an empty imagefolder
    assert (loaded.image_column_name, loaded.label_column_name) == ("jpg", "cls")
    assert [example["cls"] for example in undecoded(loaded.validation)] == [50 % 3, 51 % 3]
    assert len(loaded.train) == 2
    by_split = load_image_dataset(train_dir=str(tmp_path / "data" / "train"),
                                  validation_dir=str(tmp_path / "data" / "validation"))
    assert [example["cls"] for example in undecoded(by_split.validation)] == [50 % 3, 51 % 3]


@pytest.mark.parametrize("streaming_", [False, True])
def test_a_dataset_folder_of_shards_given_as_dataset_name_detects_the_columns(tmp_path, streaming_):
    # What `--dataset_name timm/imagenet-1k-wds` loads, with a local folder in place of the Hub repository.
    write_shards(tmp_path / "repo" / "train", labelled(4), 2)
    write_shards(tmp_path / "repo" / "validation", labelled(2, first_seed=50), 1, first_key=50)
    loaded = load_image_dataset(dataset_name=str(tmp_path / "repo"), streaming=streaming_)
    assert (loaded.image_column_name, loaded.label_column_name) == ("jpg", "cls")
    assert [example["cls"] for example in undecoded(loaded.validation)] == [50 % 3, 51 % 3]


# ---------------------------------------------------------------------------------------------- bad images
@pytest.mark.parametrize("streaming_", [False, True])
def test_a_corrupt_image_in_a_shard_is_skipped_and_named(tmp_path, streaming_):
    samples = labelled(8)
    samples[5]["jpg"] = samples[5]["jpg"][:40]  # truncated in its header
    write_shards(tmp_path / "train", samples, 2)
    loaded = load_image_dataset(train_dir=str(tmp_path / "train"), streaming=streaming_)
    loader = build_pretraining_dataloader(loaded.train, TRANSFORM, batch_size=7, image_column_name="jpg",
                                          label_column_name="cls")
    batches = list(loader)
    assert [len(batch["pixel_values"]) for batch in batches] == [7]
    assert (loader.stats.num_loaded, loader.stats.num_skipped) == (7, 1)
    ((identifier, reason),) = loader.stats.skipped
    assert identifier == "000005.jpg" and reason.startswith("OSError: ")


@pytest.mark.parametrize("streaming_", [False, True])
def test_a_sample_stored_with_another_image_extension_is_named_by_key_and_shard_with_the_cause(tmp_path, streaming_):
    # The builder reads its columns from the first samples: the .png sample comes without a `jpg` value.
    samples = labelled(6)
    samples[4] = {"png": image_bytes(4, "png"), "cls": b"1"}
    shards = write_shards(tmp_path / "train", samples, 2)
    loaded = load_image_dataset(train_dir=str(tmp_path / "train"), streaming=streaming_)
    loader = build_evaluation_dataloader(loaded.train, TRANSFORM, 8, image_column_name="jpg", label_column_name="cls")
    assert [len(batch["pixel_values"]) for batch in loader] == [5]
    ((identifier, reason),) = loader.stats.skipped
    assert identifier == f"000004 in {shards[1]}"  # was "<NoneType>"
    assert reason.startswith("no 'jpg' image. WebDataset columns are the file extensions of the first samples read")


def test_a_tiny_pretraining_run_on_shards_lists_a_corrupt_image(tmp_path, single_torch_thread):  # noqa: F811
    # Imported here: the run's argument groups are not needed by the loading tests above.
    from tiny_runs import arguments

    from transformers_mixedae.tasks.masked_image_modeling import run_pretraining

    # 16 good images: the two steps (batches of 8) read the whole epoch, so the bad image is met exactly once.
    samples = labelled(17)
    samples[3]["jpg"] = b"not an image"
    write_shards(tmp_path / "train", samples, 4)
    write_shards(tmp_path / "validation", labelled(8, first_seed=100), 2, first_key=100)
    results = run_pretraining(*arguments(tmp_path / "out", train_dir=str(tmp_path / "train"),
                                         validation_dir=str(tmp_path / "validation"), max_train_samples=None,
                                         max_steps=2, max_skipped_fraction=0.5))
    assert results["train_steps"] == 2 and np.isfinite(results["train_loss"]) and np.isfinite(results["eval_loss"])
    assert any(key.startswith("eval_knn") for key in results)  # the detected `cls` column feeds the kNN evaluation
    report = json.loads((tmp_path / "out" / "skipped_samples.json").read_text())
    assert [entry["identifier"] for entry in report["skipped"]] == ["000003.jpg"]
    assert report["skipped"][0]["reason"].startswith("UnidentifiedImageError: ")
    assert (results["train_skipped_samples"], results["train_loaded_samples"]) == (1, 16)


# ---------------------------------------------------------------------------------------------- shard counts
def shard_warnings(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.name == streaming.__name__ and record.levelno == logging.WARNING]


def test_three_shards_for_two_processes_are_warned_about_with_the_fix(shard_folders, caplog):
    train_dir, _ = shard_folders
    train = load_image_dataset(train_dir=str(train_dir), streaming=True).train
    with caplog.at_level(logging.WARNING, logger=streaming.__name__):
        loader = build_pretraining_dataloader(train, TRANSFORM, batch_size=2, rank=0, world_size=2,
                                              image_column_name="jpg", label_column_name="cls")
        build_pretraining_dataloader(train, TRANSFORM, batch_size=2, rank=0, world_size=2,
                                     image_column_name="jpg", label_column_name="cls")  # logged once
    assert shard_warnings(caplog) == [
        "the train stream has 3 shards for 2 processes: 3 is not a multiple of the 2 processes, so every process "
        "reads all 3 shards and keeps one example in 2 (2x the reading). Re-shard the data into a multiple of 2 "
        "shards (e.g. 4), or launch a number of processes that divides 3."
    ]
    # Still correct, only dearer: the two ranks share the 12 examples out between them.
    other = build_pretraining_dataloader(train, TRANSFORM, batch_size=2, rank=1, world_size=2,
                                         image_column_name="jpg", label_column_name="cls")
    assert loader.dataset.num_shards == other.dataset.num_shards == 3
    assert sum(len(batch["pixel_values"]) for rank in (loader, other) for batch in rank) == 12


def test_four_shards_for_two_processes_are_not_warned_about(tmp_path, caplog):
    write_shards(tmp_path / "train", labelled(8), 4)
    train = load_image_dataset(train_dir=str(tmp_path / "train"), streaming=True).train
    with caplog.at_level(logging.WARNING, logger=streaming.__name__):
        loader = build_pretraining_dataloader(train, TRANSFORM, batch_size=2, rank=0, world_size=2,
                                              image_column_name="jpg", label_column_name="cls")
    assert shard_warnings(caplog) == []
    assert loader.dataset.num_shards == 2  # shard-level split: this rank reads 2 of the 4 files


def test_map_style_data_is_not_warned_about(shard_folders, caplog):
    # Loaded without --streaming, the shards became one Arrow table that the loader cuts as it needs.
    train_dir, _ = shard_folders
    train = load_image_dataset(train_dir=str(train_dir)).train
    with caplog.at_level(logging.WARNING, logger=streaming.__name__):
        build_pretraining_dataloader(train, TRANSFORM, batch_size=2, rank=0, world_size=2, image_column_name="jpg",
                                     label_column_name="cls")
    assert shard_warnings(caplog) == []


def test_the_warning_for_workers_that_would_idle():
    assert shard_split_warning(6, 2, 2, "the train stream") == (
        "the train stream has 6 shards for 2 processes x 2 DataLoader workers: each process's 3 shards do not divide "
        "among its 2 DataLoader workers, so some workers run out of shards early and idle. Re-shard the data into a "
        "multiple of 4 shards (2 processes x 2 workers; e.g. 8), or set --dataloader_num_workers to a divisor of 3."
    )
    assert shard_split_warning(8, 2, 2) is None and shard_split_warning(8, 2, 0) is None
    assert shard_split_warning(4, 2, 8) is None  # more workers than shards: the loader starts one per shard
    assert shard_split_warning(294, 8, 0).startswith(
        "the data stream has 294 shards for 8 processes: 294 is not a multiple of the 8 processes")
