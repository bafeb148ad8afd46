"""Training data that cannot train: no decodable image, a wrong column, an empty folder, unlabelled folders. Each
run ends in bounded time with a message naming the source, the column or the reasons (never an endless epoch loop),
or trains when it can."""

import contextlib
import json
import re
import signal

import datasets
import numpy as np
import pytest
from helpers import single_torch_thread  # noqa: F401 (fixture)
from PIL import Image
from tiny_runs import arguments

from transformers_mixedae.pretraining import run_pretraining

datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
pytestmark = pytest.mark.usefixtures("single_torch_thread")
SECONDS = 60  # a tiny run takes a few seconds; the loops these tests guard against never end


@contextlib.contextmanager
def deadline(seconds: int = SECONDS):
    """Fail with TimeoutError (raised in the main thread, inside whatever Python loop runs) after `seconds`."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: an endless loop")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def junk_folder(tmp_path):
    """An imagefolder with two class folders of 4 'PNG' files each that are not images."""
    for name in ("a", "b"):
        (tmp_path / "train" / name).mkdir(parents=True)
        for index in range(4):
            (tmp_path / "train" / name / f"{index}.png").write_bytes(b"not a png at all " * index)
    return tmp_path / "train"


def unlabelled_folder(path, count=16):
    path.mkdir(parents=True)
    for index in range(count):
        pixels = np.random.default_rng(index).integers(0, 256, (20, 20, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path / f"{index}.png")
    return path


def test_a_folder_without_a_decodable_image_stops_naming_the_reasons(tmp_path, junk_folder):
    with deadline(), pytest.raises(RuntimeError) as error:
        run_pretraining(*arguments(tmp_path / "out", train_dir=str(junk_folder), max_train_samples=None))
    message = str(error.value)
    assert message.startswith("8 of 8 training images could not be decoded (more than --max_skipped_fraction 0.01); "
                              "stopping. 0 samples loaded, 8 undecodable skipped, 0 trimmed; skipped: ")
    assert "reasons: {'UnidentifiedImageError': 8}" in message and str(junk_folder / "a" / "0.png") in message
    assert f"listed in {tmp_path / 'out' / 'skipped_samples.json'}" in message
    report = json.loads((tmp_path / "out" / "skipped_samples.json").read_text())
    assert report["num_skipped"] == 8 and report["num_loaded"] == 0
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_an_epoch_without_a_batch_stops_even_when_every_image_may_be_skipped(tmp_path, junk_folder):
    with deadline(), pytest.raises(RuntimeError) as error:
        run_pretraining(*arguments(tmp_path / "out", train_dir=str(junk_folder), max_train_samples=None,
                                   max_skipped_fraction=1.0))
    message = str(error.value)
    assert message.startswith(f"epoch 0 of imagefolder {junk_folder} gave no training batch of 8 images: 0 samples "
                              "loaded, 8 undecodable skipped, 0 trimmed; skipped: ")
    assert message.endswith("Check --image_column_name 'image' and the files, or lower --per_device_train_batch_size.")


def test_a_streamed_folder_without_a_decodable_image_stops(tmp_path, junk_folder):
    with deadline(), pytest.raises(RuntimeError, match=r"^8 of 8 training images could not be decoded"):
        run_pretraining(*arguments(tmp_path / "out", train_dir=str(junk_folder), max_train_samples=None,
                                   streaming=True))


def test_an_image_column_that_holds_labels_is_refused_before_training(tmp_path):
    message = ("image column 'label' of the train split of embedded default (Fashion-MNIST subset, "
               "transformers_mixedae/data/default) holds ClassLabel, not images (encoded bytes or file paths). Pass "
               "--image_column_name with an image column (here: ['image']).")
    with deadline(), pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        run_pretraining(*arguments(tmp_path / "out", image_column_name="label"))
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_a_label_column_of_text_is_refused_before_training(tmp_path):
    images = [{"bytes": Image_bytes(seed), "path": f"{seed}.png"} for seed in range(16)]
    dataset = datasets.Dataset.from_dict({"image": images, "label": ["cat", "dog"] * 8},
                                         features=datasets.Features({"image": datasets.Image(),
                                                                     "label": datasets.Value("string")}))
    (tmp_path / "data").mkdir()
    dataset.to_parquet(str(tmp_path / "data" / "train-00000-of-00001.parquet"))
    with deadline(), pytest.raises(ValueError, match=r"^label column 'label' of the train split of .* holds string "
                                                     r"values, not integer class labels\. Pass --label_column_name "
                                                     r"with a label column, or --label_column_name none"):
        run_pretraining(*arguments(tmp_path / "out", train_dir=str(tmp_path / "data"), max_train_samples=None))


def Image_bytes(seed: int) -> bytes:  # noqa: N802
    import io

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_an_empty_train_dir_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with deadline(), pytest.raises(ValueError, match="^" + re.escape(
            f"no image files found in {tmp_path / 'empty'} (") + r".*\)\. Give folders that hold images"):
        run_pretraining(*arguments(tmp_path / "out", train_dir=str(tmp_path / "empty"), max_train_samples=None))


def test_an_unlabelled_folder_pre_trains_with_label_column_name_none(tmp_path):
    folder, validation = unlabelled_folder(tmp_path / "images"), unlabelled_folder(tmp_path / "validation", 8)
    with deadline():
        results = run_pretraining(*arguments(tmp_path / "out", train_dir=str(folder), validation_dir=str(validation),
                                             max_train_samples=None, label_column_name=None, max_steps=2))
    assert results["train_steps"] == 2 and np.isfinite(results["train_loss"])
    assert np.isfinite(results["eval_loss"]) and not any("knn" in key or "linear_probe" in key for key in results)
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_an_unlabelled_folder_with_the_default_label_column_says_how_to_train_on_it(tmp_path):
    folder = unlabelled_folder(tmp_path / "images")
    with deadline(), pytest.raises(ValueError, match=r"label column 'label' not found in the train split of "
                                                     rf"imagefolder {re.escape(str(folder))}; available columns: "
                                                     r"\['image'\]\. Pass --label_column_name to choose another"):
        run_pretraining(*arguments(tmp_path / "out", train_dir=str(folder), max_train_samples=None))
