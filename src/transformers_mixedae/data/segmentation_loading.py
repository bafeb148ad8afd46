# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Loading semantic-segmentation data: train / validation splits of images and their label maps.

Three sources, one result (`SegmentationDatasets`, columns named by `image_column_name` / `label_column_name`):

* `data_dir` in the ADEChallengeData2016 layout: `images/training`, `annotations/training`, `images/validation`,
  `annotations/validation`; each annotation is a PNG of class ids with the stem of its image (`ADE_train_00000001.jpg`
  -> `ADE_train_00000001.png`). A missing folder or an image without annotation (or the reverse) is named in the
  error. The splits become `datasets.Dataset`s of file paths (`datasets.Image` features, decoded by the loader);
* `dataset_name`: a Hub dataset loaded with `datasets.load_dataset` (streamed or not, at `revision`), e.g. ADE20K's
  `scene_parse_150` with the columns `image` and `annotation` (a loading-script dataset, which `datasets` no longer
  runs: its Parquet export is `revision="refs/convert/parquet"`);
* neither: the dense benchmark bundled with the package (`data/default_dense/{train,validation}-*.parquet`, columns
  `image` and `annotation`, class names in `provenance.json` under `id2label`).

Both splits are checked before training starts: a missing column or an empty split raises a `ValueError` naming it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from ..listing import first_few
from .loading import (
    TRAIN_SPLIT,
    VALIDATION_SPLIT,
    _column_names,
    bundled_parquet_files,
    check_image_dataset,
    limit_samples,
    no_validation_split_message,
)

logger = logging.getLogger(__name__)

DEFAULT_DENSE_DIR = Path(__file__).resolve().parent / "default_dense"
DEFAULT_DENSE_PROVENANCE = DEFAULT_DENSE_DIR / "provenance.json"
DEFAULT_IMAGE_COLUMN = "image"
DEFAULT_LABEL_COLUMN = "annotation"
LABEL_IMAGE_COLUMN = "label"  # what datasets without an `annotation` column most often call their label maps
# ADEChallengeData2016's split folders.
ADE_SPLITS = {TRAIN_SPLIT: "training", VALIDATION_SPLIT: "validation"}
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


@dataclass
class SegmentationDatasets:
    """What `load_segmentation_datasets` returns.

    Attributes:
        train / validation: the splits (`IterableDataset` when streaming); validation may be `None`.
        image_column_name / label_column_name: the columns of the images and of their label maps.
        id2label: class names the source provides (bundled data: `provenance.json`; Hub: a `ClassLabel`-free
            dataset has none), or `None`.
        source: human-readable origin (for logs and model cards).
        dataset_id: the Hub id (or `imagefolder` / the bundled name) for the model card's `model-index`.
    """

    train: Any
    validation: Any
    image_column_name: str
    label_column_name: str
    id2label: dict[int, str] | None
    source: str
    dataset_id: str


def default_dense_files() -> dict[str, list[str]]:
    """Parquet shards of the bundled dense benchmark, per split."""
    return bundled_parquet_files(
        DEFAULT_DENSE_DIR, "bundled dense benchmark", "rebuild it with scripts/build_dense_dataset.py, or pass "
        "--data_dir (a folder in the ADEChallengeData2016 layout) or --dataset_name (e.g. scene_parse_150) instead",
    )


def default_dense_id2label() -> dict[int, str] | None:
    """Class names of the bundled dense benchmark (`provenance.json`, key `id2label`), or None without the file."""
    if not DEFAULT_DENSE_PROVENANCE.is_file():
        return None
    names = json.loads(DEFAULT_DENSE_PROVENANCE.read_text(encoding="utf-8")).get("id2label")
    return {int(key): str(value) for key, value in names.items()} if names else None


def _image_files(directory: Path) -> dict[str, Path]:
    return {path.stem: path for path in sorted(directory.iterdir())
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES}


def ade_layout_split(data_dir: str | Path, split: str) -> datasets.Dataset:
    """One split of a folder in the ADEChallengeData2016 layout as a `Dataset` of (image, annotation) file paths,
    sorted by stem. Raises `ValueError` naming a missing folder or the stems without a partner."""
    root = Path(data_dir)
    folder = ADE_SPLITS[split]
    images_dir, annotations_dir = root / "images" / folder, root / "annotations" / folder
    for directory in (images_dir, annotations_dir):
        if not directory.is_dir():
            raise ValueError(
                f"--data_dir {str(root)!r} has no folder {directory.relative_to(root)}; the ADEChallengeData2016 "
                "layout is images/training, annotations/training, images/validation, annotations/validation"
            )
    images, annotations = _image_files(images_dir), _image_files(annotations_dir)
    if not images:
        raise ValueError(f"--data_dir: {images_dir} holds no image files ({sorted(IMAGE_SUFFIXES)})")
    without_annotation = sorted(set(images) - set(annotations))
    without_image = sorted(set(annotations) - set(images))
    if without_annotation or without_image:
        problems = []
        if without_annotation:
            problems.append(f"images without an annotation in {annotations_dir}: {first_few(without_annotation)}")
        if without_image:
            problems.append(f"annotations without an image in {images_dir}: {first_few(without_image)}")
        raise ValueError(
            f"--data_dir {str(root)!r}, {folder} split: " + "; ".join(problems) + ". Each annotation is a PNG of "
            "class ids with the same file stem as its image."
        )
    stems = sorted(images)
    features = datasets.Features({DEFAULT_IMAGE_COLUMN: datasets.Image(), DEFAULT_LABEL_COLUMN: datasets.Image()})
    return datasets.Dataset.from_dict(
        {DEFAULT_IMAGE_COLUMN: [str(images[stem]) for stem in stems],
         DEFAULT_LABEL_COLUMN: [str(annotations[stem]) for stem in stems]},
        features=features,
    )


def _check_label_column(dataset: Any, split: str, label_column_name: str, source: str) -> None:
    columns = _column_names(dataset)
    if columns is None:
        first = next(iter(dataset), None)
        columns = list(first) if first else None
    if columns is not None and label_column_name not in columns:
        raise ValueError(
            f"label-map column {label_column_name!r} not found in the {split} split of {source}; available columns: "
            f"{columns}. Pass --label_column_name with the column of the annotations (class-id images)."
        )


def _holds_encoded_images(feature: Any) -> bool:
    """An `Image` feature, or the `{"bytes", "path"}` struct it is stored as (Parquet without its metadata)."""
    return isinstance(feature, datasets.Image) or (isinstance(feature, dict) and {"bytes", "path"} <= set(feature))


def _resolve_label_map_column(dataset: Any, image_column_name: str, label_column_name: str, source: str) -> str:
    """The default label-map column (`annotation`) the data lacks is replaced by an image column named `label` (the
    shared `--label_column_name` default, so also that name given explicitly), else by its one other image column
    (e.g. `segmentation`); any other name is used as given."""
    features = dataset.features
    if label_column_name == DEFAULT_LABEL_COLUMN and features is not None and label_column_name in features:
        if _holds_encoded_images(features.get(LABEL_IMAGE_COLUMN)):
            # `--label_column_name label` is also the shared flag's default, so it cannot choose this column.
            logger.warning("%s has both %r and %r image columns: the label maps are read from %r; to read %r "
                           "instead, rename the columns (datasets' rename_column) or pass a copy without %r",
                           source, DEFAULT_LABEL_COLUMN, LABEL_IMAGE_COLUMN, DEFAULT_LABEL_COLUMN,
                           LABEL_IMAGE_COLUMN, DEFAULT_LABEL_COLUMN)
    if label_column_name != DEFAULT_LABEL_COLUMN or features is None or label_column_name in features:
        return label_column_name
    candidates = [name for name, feature in features.items()
                  if name != image_column_name and _holds_encoded_images(feature)]
    if LABEL_IMAGE_COLUMN in candidates:
        candidates = [LABEL_IMAGE_COLUMN]
    if len(candidates) == 1:
        logger.info("%s has no %r column: using its image column %r as the label maps", source,
                    DEFAULT_LABEL_COLUMN, candidates[0])
        return candidates[0]
    return label_column_name


def load_segmentation_datasets(
    data_dir: str | None = None,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    streaming: bool = False,
    image_column_name: str = DEFAULT_IMAGE_COLUMN,
    label_column_name: str = DEFAULT_LABEL_COLUMN,
    token: str | bool | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    revision: str | None = None,
    validation_split_name: str = VALIDATION_SPLIT,
) -> SegmentationDatasets:
    """Train and validation splits of images and label maps from one source (see the module docstring)."""
    if data_dir is not None and dataset_name is not None:
        raise ValueError(f"give one data source: --data_dir {data_dir!r} or --dataset_name {dataset_name!r}, not both")
    id2label = None
    if data_dir is not None:
        if not Path(data_dir).is_dir():
            raise ValueError(f"--data_dir {data_dir!r} does not exist or is not a folder")
        splits = {split: ade_layout_split(data_dir, split) for split in (TRAIN_SPLIT, VALIDATION_SPLIT)}
        if streaming:
            splits = {split: dataset.to_iterable_dataset() for split, dataset in splits.items()}
        source, dataset_id = f"ADE-layout folder {data_dir}", "imagefolder"
        image_column_name, label_column_name = DEFAULT_IMAGE_COLUMN, DEFAULT_LABEL_COLUMN
    elif dataset_name is not None:
        splits = datasets.load_dataset(dataset_name, dataset_config_name, streaming=streaming, token=token,
                                       revision=revision)
        source = dataset_name if dataset_config_name is None else f"{dataset_name} ({dataset_config_name})"
        dataset_id = dataset_name
    else:
        splits = datasets.load_dataset("parquet", data_files=default_dense_files(), streaming=streaming)
        id2label = default_dense_id2label()
        source, dataset_id = "bundled dense benchmark (transformers_mixedae/data/default_dense)", "default_dense"
    if TRAIN_SPLIT not in splits:
        raise ValueError(f"{source} has no {TRAIN_SPLIT!r} split; available splits: {list(splits)}")
    train, validation = splits[TRAIN_SPLIT], splits.get(validation_split_name)
    label_column_name = _resolve_label_map_column(train, image_column_name, label_column_name, source)
    if validation is None:
        logger.warning(no_validation_split_message(source, validation_split_name, list(splits)))
    for split, dataset in ((TRAIN_SPLIT, train), (validation_split_name, validation)):
        if dataset is not None:
            check_image_dataset(dataset, split, image_column_name, None, source)
            _check_label_column(dataset, split, label_column_name, source)
    return SegmentationDatasets(
        train=limit_samples(train, max_train_samples),
        validation=None if validation is None else limit_samples(validation, max_eval_samples),
        image_column_name=image_column_name,
        label_column_name=label_column_name,
        id2label=id2label,
        source=source,
        dataset_id=dataset_id,
    )


__all__ = [
    "DEFAULT_DENSE_DIR",
    "SegmentationDatasets",
    "ade_layout_split",
    "default_dense_files",
    "default_dense_id2label",
    "load_segmentation_datasets",
]
