"""data/segmentation_loading.py: image / label-map pairs from an ADE-layout folder, a dataset named like a Hub one
(here a local Parquet folder, streamed or not, with other column names) and the bundled dense benchmark; the errors
name the missing folder, the unmatched stems and the missing column."""

import json
import shutil

import datasets
import numpy as np
import pytest

from transformers_mixedae.data import segmentation_loading
from transformers_mixedae.data.images import open_image
from transformers_mixedae.data.segmentation_loading import ade_layout_split, load_segmentation_datasets

from segmentation_data import make_ade_folder, make_parquet_shards


def test_ade_layout_pairs_images_and_annotations_by_stem(tmp_path):
    root = make_ade_folder(tmp_path, num_train=4, num_validation=3)
    loaded = load_segmentation_datasets(data_dir=str(root))
    assert (len(loaded.train), len(loaded.validation)) == (4, 3)
    assert (loaded.image_column_name, loaded.label_column_name, loaded.dataset_id) == ("image", "annotation", "imagefolder")
    example = loaded.validation.cast_column("image", loaded.validation.features["image"].__class__(decode=False))[1]
    assert example["image"]["path"].endswith("images/validation/ADE_validation_00000001.png")
    labels = np.array(open_image(loaded.validation[1]["annotation"]))
    expected = np.array(open_image(str(root / "annotations" / "validation" / "ADE_validation_00000001.png")))
    assert np.array_equal(labels, expected)
    streamed = load_segmentation_datasets(data_dir=str(root), streaming=True, max_train_samples=2)
    assert len(list(streamed.train)) == 2


def test_ade_layout_errors_name_the_folder_and_the_stems(tmp_path):
    root = make_ade_folder(tmp_path, num_train=3, num_validation=2)
    shutil.rmtree(root / "annotations" / "validation")
    with pytest.raises(ValueError, match="has no folder annotations/validation"):
        load_segmentation_datasets(data_dir=str(root))
    (root / "annotations" / "validation").mkdir()
    (root / "annotations" / "training" / "ADE_training_00000001.png").unlink()
    with pytest.raises(ValueError, match="images without an annotation in .*annotations/training: ADE_training_00000001"):
        ade_layout_split(root, "train")
    with pytest.raises(ValueError, match="give one data source"):
        load_segmentation_datasets(data_dir=str(root), dataset_name="scene_parse_150")


def test_a_named_dataset_with_its_own_column_names(tmp_path):
    root = make_parquet_shards(tmp_path / "shards")
    for path in root.glob("*.parquet"):  # the columns of another dataset: img / seg
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        pq.write_table(table.rename_columns(["img", "seg"]), path)
    loaded = load_segmentation_datasets(dataset_name=str(root), image_column_name="img", label_column_name="seg")
    assert (len(loaded.train), len(loaded.validation)) == (8, 4)
    streamed = load_segmentation_datasets(dataset_name=str(root), streaming=True, image_column_name="img",
                                          label_column_name="seg")
    assert set(next(iter(streamed.validation))) == {"img", "seg"}
    # Without --label_column_name, the one other image column holds the maps.
    assert load_segmentation_datasets(dataset_name=str(root), image_column_name="img").label_column_name == "seg"


def test_the_bundled_dense_benchmark_is_the_default(tmp_path, monkeypatch):
    folder = make_parquet_shards(tmp_path / "default_dense")
    (folder / "provenance.json").write_text(json.dumps({"id2label": {"0": "background", "1": "t-shirt"}}))
    monkeypatch.setattr(segmentation_loading, "DEFAULT_DENSE_DIR", folder)
    monkeypatch.setattr(segmentation_loading, "DEFAULT_DENSE_PROVENANCE", folder / "provenance.json")
    loaded = load_segmentation_datasets(max_eval_samples=2)
    assert (len(loaded.train), len(loaded.validation)) == (8, 2)
    assert loaded.id2label == {0: "background", 1: "t-shirt"} and loaded.dataset_id == "default_dense"
    monkeypatch.setattr(segmentation_loading, "DEFAULT_DENSE_DIR", tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="pass --data_dir .* or --dataset_name"):
        load_segmentation_datasets()


def test_a_label_map_column_with_another_name_is_found(tmp_path):
    root = make_parquet_shards(tmp_path / "shards")
    import pyarrow.parquet as pq

    for path in root.glob("*.parquet"):
        pq.write_table(pq.read_table(path).rename_columns(["image", "segmentation"]), path)
    loaded = load_segmentation_datasets(dataset_name=str(root))
    assert loaded.label_column_name == "segmentation"
    # Named explicitly, a missing column is an error.
    with pytest.raises(ValueError, match="label-map column 'mask' not found"):
        load_segmentation_datasets(dataset_name=str(root), label_column_name="mask")


def test_label_maps_in_a_column_named_label_are_found_beside_other_image_columns(tmp_path):
    """`--label_column_name label` (also the shared flag's default) finds maps called `label` next to another image
    column (here `depth`), where the one-other-image-column rule alone would not decide."""
    import pyarrow.parquet as pq

    root = make_parquet_shards(tmp_path / "shards")
    for path in root.glob("*.parquet"):
        table = pq.read_table(path).rename_columns(["image", "label"])
        pq.write_table(table.append_column("depth", table.column("label")), path)
    assert load_segmentation_datasets(dataset_name=str(root)).label_column_name == "label"
    # Any other name is taken as given.
    assert load_segmentation_datasets(dataset_name=str(root), label_column_name="depth").label_column_name == "depth"


def test_the_dataset_revision_goes_to_load_dataset(tmp_path, monkeypatch):
    local = load_segmentation_datasets(dataset_name=str(make_parquet_shards(tmp_path / "shards")))
    calls = []

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name, kwargs))
        return datasets.DatasetDict({"train": local.train, "validation": local.validation})

    monkeypatch.setattr(segmentation_loading.datasets, "load_dataset", fake_load_dataset)
    load_segmentation_datasets(dataset_name="scene_parse_150", dataset_config_name="scene_parsing",
                               revision="refs/convert/parquet")
    assert calls == [("scene_parse_150", "scene_parsing",
                      {"streaming": False, "token": None, "revision": "refs/convert/parquet"})]


def test_the_shipped_dense_benchmark_loads_with_its_class_names():
    loaded = load_segmentation_datasets(max_train_samples=2, max_eval_samples=2)
    assert loaded.id2label[0] == "background" and len(loaded.id2label) == 11
    labels = np.array(open_image(loaded.validation[0]["annotation"]))
    assert labels.ndim == 2 and labels.max() < 11


def test_both_an_annotation_and_a_label_image_column_are_named_with_the_one_read(tmp_path, caplog):
    import pyarrow.parquet as pq

    root = make_parquet_shards(tmp_path / "shards")
    for path in root.glob("*.parquet"):
        table = pq.read_table(path)
        pq.write_table(table.append_column("label", table.column("annotation")), path)
    caplog.set_level("WARNING", logger=segmentation_loading.__name__)
    assert load_segmentation_datasets(dataset_name=str(root)).label_column_name == "annotation"
    assert (f"{root} has both 'annotation' and 'label' image columns: the label maps are read from 'annotation'"
            in caplog.text)
