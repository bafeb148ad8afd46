# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Loading the train/validation image datasets: the embedded default, a Hub dataset or local folders.

Three sources, one result (`ImageDatasets`):

* nothing named -> the embedded default (a class-balanced Fashion-MNIST subset shipped as Parquet shards in
  `transformers_mixedae/data/default/`), loaded with `load_dataset("parquet", data_files=...)`, i.e. the same
  builder and schema (`image`: `datasets.Image`, `label`: `ClassLabel`) as the Parquet copy of ImageNet-1k;
* `dataset_name` -> `load_dataset(dataset_name, dataset_config_name, streaming=..., token=...)`, e.g.
  `ILSVRC/imagenet-1k` with `streaming=True` and a token that has accepted the dataset's terms;
* `train_dir` / `validation_dir` (or `data_dir` with split sub-folders) -> Parquet shards when the folder
  holds `*.parquet` files, WebDataset shards (`webdataset` builder) when it holds `*.tar` (or gzipped `*.tar.gz`,
  `*.tgz`) files (each sample a group of files with a common key, e.g. `000001.jpg` + `000001.cls`; the columns
  are the extensions),
  otherwise `imagefolder` (class sub-folders give the labels).

Column names: when the image (label) column keeps its default name `image` (`label`) and the data has no such
column, the one image-like (label-like) column is used instead, e.g. `jpg`/`png`/`webp` and `cls` of
WebDataset shards, local or on the Hub (`timm/imagenet-1k-wds`). Image-like: an `Image` feature, or encoded
bytes / paths under an image name (`jpg`, `png`, ...); label-like: a `ClassLabel`, or integers (or text / bytes
of an integer, as a `.label` file gives) under a label name (`cls`, `label`, `labels`, `class`, `target`).
Names passed explicitly are used as given. None or several candidates: the missing-column error below.

Both splits are checked at once: a missing image/label column or an empty split raises `ValueError` naming
it (and the columns that do exist), before any training starts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np

logger = logging.getLogger(__name__)

# The subset `limit_samples` keeps of a map-style dataset, the same whatever the run's seed.
SUBSET_SEED = 0

DEFAULT_DATASET_DIR = Path(__file__).resolve().parent / "default"
TRAIN_SPLIT = "train"
VALIDATION_SPLIT = "validation"
AnyDataset = datasets.Dataset | datasets.IterableDataset


@dataclass
class ImageDatasets:
    """What `load_image_dataset` returns.

    Attributes:
        train: the train split (`IterableDataset` when streaming).
        validation: the validation split, or `None` when the source has none (a warning is logged).
        image_column_name: column holding the images.
        label_column_name: column holding integer labels, or `None` for unlabelled data.
        label_names: class names from the label column's `ClassLabel`, or `None` when unknown.
        source: human-readable origin (for logs and model cards).
    """

    train: AnyDataset
    validation: AnyDataset | None
    image_column_name: str
    label_column_name: str | None
    label_names: list[str] | None
    source: str

    @property
    def num_labels(self) -> int | None:
        return None if self.label_names is None else len(self.label_names)


def no_validation_split_message(source: str, validation_split_name: str, splits: list[str]) -> str:
    others = [split for split in splits if split not in (TRAIN_SPLIT, validation_split_name)]
    hint = (f" Pass --validation_split_name {others[0]} (or another split with labels) to evaluate on it."
            if others else "")
    return f"{source} has no {validation_split_name!r} split (splits: {splits}): the run will not evaluate.{hint}"


def bundled_parquet_files(directory: Path, name: str, fix: str) -> dict[str, list[str]]:
    """Parquet shards of a dataset shipped inside the package, per split; `name` and `fix` word the error when a
    split has none."""
    files = {
        split: sorted(str(path) for path in directory.glob(f"{split}-*.parquet"))
        for split in (TRAIN_SPLIT, VALIDATION_SPLIT)
    }
    missing = [split for split, paths in files.items() if not paths]
    if missing:
        raise FileNotFoundError(f"the {name} has no {missing} shards in {directory}; {fix}")
    return files


def default_dataset_files() -> dict[str, list[str]]:
    """Parquet shards of the embedded default dataset, per split."""
    return bundled_parquet_files(
        DEFAULT_DATASET_DIR, "embedded default dataset", "rebuild it with scripts/build_default_dataset.py"
    )


# Column names (lower-cased) that say "images" / "integer labels" when the feature alone does not: WebDataset
# columns are the file extensions, and encoded images in Parquet may be plain binary columns.
IMAGE_COLUMN_NAMES = frozenset({"image", "img", "jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"})
LABEL_COLUMN_NAMES = frozenset({"label", "labels", "cls", "class", "target"})
DEFAULT_IMAGE_COLUMN = "image"
DEFAULT_LABEL_COLUMN = "label"
# Per-sample bookkeeping the `webdataset` builder adds: never images or labels.
WEBDATASET_METADATA_COLUMNS = frozenset({"__key__", "__url__"})


def _parquet_files(directory: Path) -> list[str]:
    return sorted(str(path) for path in directory.rglob("*.parquet"))


TAR_SUFFIXES = ("*.tar", "*.tar.gz", "*.tgz")  # what the `webdataset` builder reads (it streams compressed tars)


def _tar_files(directory: Path) -> list[str]:
    return sorted(str(path) for pattern in TAR_SUFFIXES for path in directory.rglob(pattern))


def _folder_kind(directory: Path) -> str:
    if _parquet_files(directory):
        return "parquet"
    if _tar_files(directory):
        return "webdataset"
    return "imagefolder"


def _load_from_directories(
    train_dir: str | None, validation_dir: str | None, streaming: bool, cache_dir: str | None
) -> tuple[datasets.DatasetDict | datasets.IterableDatasetDict, str]:
    directories = {TRAIN_SPLIT: train_dir, VALIDATION_SPLIT: validation_dir}
    directories = {split: Path(path) for split, path in directories.items() if path is not None}
    for split, directory in directories.items():
        if not directory.is_dir():
            raise ValueError(f"{split} directory {str(directory)!r} does not exist or is not a directory")
    kinds = {split: _folder_kind(directory) for split, directory in directories.items()}
    if len(set(kinds.values())) > 1:
        described = {"parquet": "Parquet shards", "webdataset": "WebDataset .tar shards", "imagefolder": "image files"}
        raise ValueError(
            "train_dir and validation_dir must hold the same kind of data (Parquet shards, WebDataset .tar shards or "
            f"image files); got {', '.join(f'{split}: {described[kind]}' for split, kind in kinds.items())}"
        )
    kind = next(iter(kinds.values()))
    if kind != "imagefolder":
        # One file per shard: the stream's shards are these files, which is what ranks and workers split.
        list_files = _parquet_files if kind == "parquet" else _tar_files
        data_files = {split: list_files(directory) for split, directory in directories.items()}
        return (
            datasets.load_dataset(kind, data_files=data_files, streaming=streaming, cache_dir=cache_dir),
            f"{kind} shards in {', '.join(map(str, directories.values()))}",
        )
    # One builder call over both folders, so class names (folder names) map to the same label ids in both.
    data_files = {split: str(directory / "**") for split, directory in directories.items()}
    try:
        loaded = datasets.load_dataset("imagefolder", data_files=data_files, streaming=streaming, cache_dir=cache_dir)
    except (FileNotFoundError, ValueError, datasets.exceptions.DataFilesNotFoundError) as error:
        raise ValueError(
            f"no image files found in {', '.join(map(str, directories.values()))} ({error}). Give folders that hold "
            "images (in class sub-folders for labels), Parquet shards or WebDataset .tar shards."
        ) from error
    return loaded, f"imagefolder {', '.join(map(str, directories.values()))}"


def _load_source(
    dataset_name: str | None,
    dataset_config_name: str | None,
    train_dir: str | None,
    validation_dir: str | None,
    data_dir: str | None,
    streaming: bool,
    token: str | bool | None,
    cache_dir: str | None,
    revision: str | None = None,
) -> tuple[datasets.DatasetDict | datasets.IterableDatasetDict, str]:
    named = [name for name, value in (("dataset_name", dataset_name), ("train_dir", train_dir),
                                      ("data_dir", data_dir)) if value is not None]
    if len(named) > 1:
        raise ValueError(f"give only one data source, got {' and '.join(named)}")
    if validation_dir is not None and train_dir is None:
        raise ValueError("validation_dir needs train_dir")
    if dataset_name is not None:
        loaded = datasets.load_dataset(
            dataset_name, dataset_config_name, streaming=streaming, token=token, cache_dir=cache_dir,
            revision=revision,
        )
        return loaded, dataset_name if dataset_config_name is None else f"{dataset_name} ({dataset_config_name})"
    if train_dir is not None:
        return _load_from_directories(train_dir, validation_dir, streaming, cache_dir)
    if data_dir is not None:
        if not Path(data_dir).is_dir():
            raise ValueError(f"data_dir {data_dir!r} does not exist or is not a directory")
        builder = _folder_kind(Path(data_dir))
        try:
            loaded = datasets.load_dataset(builder, data_dir=data_dir, streaming=streaming, cache_dir=cache_dir)
        except (FileNotFoundError, datasets.exceptions.DataFilesNotFoundError) as error:
            raise ValueError(
                f"no image files, Parquet or WebDataset .tar shards found in data_dir {data_dir!r}: {error}"
            ) from error
        return loaded, f"{builder} {data_dir}"
    files = default_dataset_files()
    loaded = datasets.load_dataset("parquet", data_files=files, streaming=streaming, cache_dir=cache_dir)
    return loaded, "embedded default (Fashion-MNIST subset, transformers_mixedae/data/default)"


def _column_names(dataset: AnyDataset) -> list[str] | None:
    if dataset.column_names is not None:
        return list(dataset.column_names)
    return None


def _first_example(dataset: AnyDataset) -> dict[str, Any] | None:
    """The first example with images left undecoded (cheap), or `None` for an empty dataset."""
    if isinstance(dataset, datasets.Dataset):
        return None if len(dataset) == 0 else {}  # columns are known from the schema
    known_size = dataset.info.splits and dataset.split and dataset.info.splits.get(str(dataset.split))
    if known_size is not None and known_size.num_examples:
        return {}  # non-empty per the dataset card; no need to touch the (remote) data
    return next(iter(dataset.decode(False).take(1)), None)


def _columns_and_features(dataset: AnyDataset) -> tuple[list[str] | None, dict[str, Any]]:
    """Column names and their features (`{}` when unknown, e.g. a stream without schema: then one example is read)."""
    columns = _column_names(dataset)
    features = dict(dataset.features) if dataset.features is not None else {}
    if columns is None:
        stream = dataset.decode(False) if isinstance(dataset, datasets.IterableDataset) else None
        first = None if stream is None else next(iter(stream.take(1)), None)
        columns = None if first is None else list(first)
    return columns, features


def _is_image_like(name: str, feature: Any) -> bool:
    if name in WEBDATASET_METADATA_COLUMNS:
        return False
    if isinstance(feature, datasets.Image):
        return True
    named = name.lower() in IMAGE_COLUMN_NAMES
    return named and (feature is None or _can_hold_images(feature))


def _is_label_like(name: str, feature: Any) -> bool:
    if name in WEBDATASET_METADATA_COLUMNS:
        return False
    if isinstance(feature, datasets.ClassLabel):
        return True
    named = name.lower() in LABEL_COLUMN_NAMES
    return named and (feature is None or _can_hold_labels(feature) or _is_text_or_bytes(feature))


def _detected_column(
    role: str, given: str | None, default: str, columns: list[str], candidates: list[str], split: str, source: str
) -> str | None:
    """`given`, or the one candidate when `given` is the default name and absent; several candidates: an error."""
    if given is None or given != default or given in columns or not candidates:
        return given  # explicit, present, or nothing to offer: `check_image_dataset` names a missing column
    if len(candidates) > 1:
        raise ValueError(
            f"{role} column {given!r} not found in the {split} split of {source}; available columns: {columns}, of "
            f"which {candidates} could all be the {role}s. Pass --{role}_column_name to choose one."
        )
    logger.info("using column %r of %s as the %s column (no %r column)", candidates[0], source, role, given)
    return candidates[0]


def resolve_column_names(
    dataset: AnyDataset, image_column_name: str, label_column_name: str | None, source: str, split: str = TRAIN_SPLIT
) -> tuple[str, str | None]:
    """The image and label columns to use for `dataset`.

    A name that is not the default (`image` / `label`), or that exists, is kept. A default name that does not
    exist is replaced by the one image-like (label-like) column, e.g. `jpg` / `cls` of WebDataset shards.

    Raises:
        ValueError: a default name is absent and several columns could replace it (all named).
    """
    columns, features = _columns_and_features(dataset)
    if columns is None:
        return image_column_name, label_column_name  # an empty stream: `check_image_dataset` says so
    images = [name for name in columns if _is_image_like(name, features.get(name))]
    image_column_name = _detected_column(
        "image", image_column_name, DEFAULT_IMAGE_COLUMN, columns, images, split, source
    )
    labels = [name for name in columns if name != image_column_name and _is_label_like(name, features.get(name))]
    label_column_name = _detected_column(
        "label", label_column_name, DEFAULT_LABEL_COLUMN, columns, labels, split, source
    )
    return image_column_name, label_column_name


def check_image_dataset(
    dataset: AnyDataset, split: str, image_column_name: str, label_column_name: str | None, source: str
) -> None:
    """Raise `ValueError` naming the problem if `dataset` is empty or lacks the image/label column."""
    columns = _column_names(dataset)
    first = _first_example(dataset)
    if first is None:
        raise ValueError(f"the {split} split of {source} is empty (0 examples)")
    if columns is None and first:
        columns = list(first)
    if columns is None:
        return  # a stream without schema or card: the data pipeline will name a missing column when it meets one
    for role, column in (("image", image_column_name), ("label", label_column_name)):
        if column is not None and column not in columns:
            raise ValueError(
                f"{role} column {column!r} not found in the {split} split of {source}; available columns: "
                f"{columns}. Pass --{role}_column_name to choose another."
            )
    feature = dataset.features.get(image_column_name) if dataset.features is not None else None
    if feature is not None and not _can_hold_images(feature):
        image_columns = [name for name, other in dataset.features.items() if isinstance(other, datasets.Image)]
        raise ValueError(
            f"image column {image_column_name!r} of the {split} split of {source} holds {_describe(feature)}, not "
            f"images (encoded bytes or file paths). Pass --image_column_name with an image column"
            f"{f' (here: {image_columns})' if image_columns else ''}."
        )
    if label_column_name is not None and dataset.features is not None:
        label_feature = dataset.features.get(label_column_name)
        if label_feature is not None and not _can_hold_labels(label_feature) and not _holds_integer_text(
            dataset, label_column_name, label_feature
        ):
            raise ValueError(
                f"label column {label_column_name!r} of the {split} split of {source} holds {_describe(label_feature)}, "
                "not integer class labels. Pass --label_column_name with a label column, or --label_column_name none "
                "for unlabelled data (pre-training only)."
            )


def _describe(feature: Any) -> str:
    if isinstance(feature, datasets.Value):
        return f"{feature.dtype} values"
    return type(feature).__name__


def _can_hold_images(feature: Any) -> bool:
    """Encoded images come as `Image`, raw bytes, file paths, or `{"bytes", "path"}` structs."""
    if isinstance(feature, datasets.Image):
        return True
    if isinstance(feature, datasets.Value):
        return feature.dtype in ("binary", "large_binary", "string", "large_string")
    return isinstance(feature, dict) and bool({"bytes", "path"} & set(feature))


def _can_hold_labels(feature: Any) -> bool:
    return isinstance(feature, datasets.ClassLabel) or (
        isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint"))
    )


def _is_text_or_bytes(feature: Any) -> bool:
    return isinstance(feature, datasets.Value) and feature.dtype in ("binary", "large_binary", "string", "large_string")


def _holds_integer_text(dataset: AnyDataset, column: str, feature: Any) -> bool:
    """Whether a text/bytes label column holds integers written out (a WebDataset `.label` file: `b"3"`), which the
    loaders turn into `int`; judged on the first example (read for a stream only in this case)."""
    if not _is_text_or_bytes(feature):
        return False
    if isinstance(dataset, datasets.Dataset):
        value = dataset[0][column] if len(dataset) else None
    else:
        first = next(iter(dataset.decode(False).take(1)), None)
        value = None if first is None else first.get(column)
    try:
        int(value)
    except (TypeError, ValueError):
        return False
    return True


def _label_names(dataset: AnyDataset, label_column_name: str | None) -> list[str] | None:
    if label_column_name is None or dataset.features is None:
        return None
    feature = dataset.features.get(label_column_name)
    return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None


def limit_samples(dataset: AnyDataset, max_samples: int | None) -> AnyDataset:
    """At most `max_samples` examples (`--max_train_samples` and the like). Of a map-style dataset, a random subset
    drawn with `SUBSET_SEED` and kept in dataset order: a folder sorted by class gives every class its share, and
    every run the same examples. Of a stream, `take(max_samples)` (choosing would mean reading the whole stream):
    exactly that many examples, but not always the stream's first ones. Once split over processes and DataLoader
    workers, each reader takes its share from its own shards, so which examples are used depends on the number of
    processes and workers (compare evaluation numbers of streamed runs at the same layout, or evaluate on a
    map-style split)."""
    if max_samples is None:
        return dataset
    if isinstance(dataset, datasets.Dataset):
        if max_samples >= len(dataset):
            return dataset
        chosen = np.random.default_rng(SUBSET_SEED).choice(len(dataset), size=max_samples, replace=False)
        return dataset.select(np.sort(chosen))
    return dataset.take(max_samples)


def load_image_dataset(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_dir: str | None = None,
    validation_dir: str | None = None,
    data_dir: str | None = None,
    streaming: bool = False,
    image_column_name: str = "image",
    label_column_name: str | None = "label",
    token: str | bool | None = None,
    cache_dir: str | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    validation_split_name: str = VALIDATION_SPLIT,
    revision: str | None = None,
) -> ImageDatasets:
    """Load the train and validation splits of an image dataset and check them.

    Args:
        dataset_name: Hub dataset id (e.g. `ILSVRC/imagenet-1k`, gated: pass `token=True` after accepting its
            terms). `None` with no directories -> the embedded default dataset.
        dataset_config_name: Hub dataset configuration.
        train_dir / validation_dir: local folders with Parquet shards, WebDataset `.tar` shards or class
            sub-folders of images.
        data_dir: local root with split sub-folders (`train/`, `val/` or `validation/`) for `imagefolder`.
        streaming: return `IterableDataset`s that read lazily (no download / Arrow copy).
        image_column_name / label_column_name: columns to use; `label_column_name=None` for unlabelled data. A
            default name (`image` / `label`) the data lacks is replaced by its one image-like (label-like) column
            (`resolve_column_names`); the result holds the names used.
        token: Hub token (`True` = the stored login).
        cache_dir: `datasets` cache folder.
        max_train_samples / max_eval_samples: keep at most N examples (`limit_samples`: a fixed random subset, the
            first N when streaming).
        validation_split_name: split used for validation (ImageNet: `validation`; its `test` has no labels).
        revision: branch, tag or commit of `dataset_name` (e.g. `refs/convert/parquet`).

    Raises:
        ValueError: conflicting sources, a missing folder, an empty split, a missing column or several columns
            that could replace a default name (named).
    """
    loaded, source = _load_source(
        dataset_name, dataset_config_name, train_dir, validation_dir, data_dir, streaming, token, cache_dir, revision
    )
    if TRAIN_SPLIT not in loaded:
        raise ValueError(f"{source} has no {TRAIN_SPLIT!r} split; available splits: {list(loaded)}")
    train = loaded[TRAIN_SPLIT]
    validation = loaded.get(validation_split_name)
    if validation is None:
        logger.warning(no_validation_split_message(source, validation_split_name, list(loaded)))
    image_column_name, label_column_name = resolve_column_names(train, image_column_name, label_column_name, source)
    for split_name, dataset in ((TRAIN_SPLIT, train), (validation_split_name, validation)):
        if dataset is not None:
            check_image_dataset(dataset, split_name, image_column_name, label_column_name, source)
    return ImageDatasets(
        train=limit_samples(train, max_train_samples),
        validation=None if validation is None else limit_samples(validation, max_eval_samples),
        image_column_name=image_column_name,
        label_column_name=label_column_name,
        label_names=_label_names(train, label_column_name),
        source=source,
    )
