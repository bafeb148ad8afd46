"""Training data that cannot train: no decodable image, a wrong column, an empty folder, unlabelled folders. Each
run ends in bounded time with a message naming the source, the column or the reasons (never an endless epoch loop),
or trains when it can. Odd but valid images (1 px, 16 bit, palette, CMYK, EXIF-rotated) decode; undecodable ones
are skipped, counted and listed by identifier (also across a resume) up to `--max_skipped_fraction`."""

import contextlib
import io
import json
import os
import random
import re
import signal
from pathlib import Path

import datasets
import numpy as np
import pytest
from helpers import single_torch_thread  # noqa: F401 (fixture)
from PIL import Image
from tiny_runs import arguments

from transformers_mixedae.data import load_rgb_image
from transformers_mixedae.tasks.masked_image_modeling import run_pretraining

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


def test_an_epoch_emptied_by_the_workers_incomplete_batches_names_the_worker_count(tmp_path):
    # 24 images among 4 workers: 6 each, none a full batch of 8, though 24 would make 3.
    with deadline(), pytest.raises(RuntimeError) as error:
        run_pretraining(*arguments(tmp_path / "out", max_train_samples=24, dataloader_num_workers=4))
    message = str(error.value)
    assert "gave no training batch of 8 images: 0 samples loaded, 0 undecodable skipped, 24 trimmed" in message
    assert message.endswith("Each of the 4 DataLoader workers batches its own share and drops its incomplete last "
                            "batch: lower --dataloader_num_workers.")


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


# ---------------------------------------------------------------------------------------------- bad images
def encoded(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def noise_image(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    return encoded(noise_image(40, 20), "JPEG", exif=exif)


def odd_but_valid_images() -> dict[str, bytes]:
    sixteen_bit = Image.fromarray(np.arange(24 * 20, dtype=np.uint16).reshape(20, 24) * 130)
    palette_with_transparency = noise_image(20, 20, "P")
    palette_with_transparency.info["transparency"] = 0
    return {
        "rgb_1x1.png": encoded(noise_image(1, 1), "PNG"),
        "wide_300x1.png": encoded(noise_image(300, 1), "PNG"),
        "tall_1x300.png": encoded(noise_image(1, 300), "PNG"),
        "gray_16bit.png": encoded(sixteen_bit, "PNG"),
        "palette.png": encoded(noise_image(20, 20, "P"), "PNG"),
        "palette_transparent.png": encoded(palette_with_transparency, "PNG"),
        "gray_alpha.png": encoded(noise_image(20, 20, "LA"), "PNG"),
        "rgba.png": encoded(noise_image(20, 20, "RGBA"), "PNG"),
        "cmyk.jpg": encoded(noise_image(20, 20, "CMYK"), "JPEG"),
        "exif_rotated.jpg": exif_rotated_jpeg(),
        "bilevel.png": encoded(noise_image(20, 20, "1"), "PNG"),
        "float.tiff": encoded(Image.fromarray(np.linspace(-3, 900, 400, dtype=np.float32).reshape(20, 20)), "TIFF"),
    }


def undecodable_images() -> dict[str, bytes]:
    jpeg, png = encoded(noise_image(32, 32), "JPEG"), encoded(noise_image(32, 32), "PNG")
    return {
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "truncated.png": png[: len(png) // 2],
        "zero_bytes.jpg": b"",
        "notes.txt": b"not an image, just some text\n",
        "page.jpg": b"<html><body>404 not found</body></html>",
        "random.bin": np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8).tobytes(),
    }


def write_parquet(path: Path, images: dict[str, bytes]) -> None:
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    rows = {"image": [{"bytes": data, "path": name} for name, data in images.items()],
            "label": [index % 2 for index in range(len(images))]}
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))


@pytest.fixture(scope="module")
def bad_dataset(tmp_path_factory):
    """Parquet shards: 24 decodable images (12 of them odd) and 6 undecodable ones, plus a clean validation set."""
    root = tmp_path_factory.mktemp("bad_data")
    good = {**odd_but_valid_images(), **{f"photo_{i}.jpg": encoded(noise_image(24, 20, seed=i), "JPEG")
                                          for i in range(12)}}
    bad = undecodable_images()
    names = list(good) + list(bad)
    random.Random(0).shuffle(names)
    everything = {**good, **bad}
    write_parquet(root / "train" / "train-00000-of-00002.parquet", {name: everything[name] for name in names[:15]})
    write_parquet(root / "train" / "train-00001-of-00002.parquet", {name: everything[name] for name in names[15:]})
    write_parquet(root / "validation" / "validation-00000-of-00001.parquet",
                  {f"val_{i}.jpg": encoded(noise_image(24, 20, seed=100 + i), "JPEG") for i in range(8)})
    return root, set(bad)


def test_odd_images_decode_and_exif_rotation_is_applied():
    for name, data in odd_but_valid_images().items():
        image = load_rgb_image({"bytes": data, "path": name})
        assert image.mode == "RGB", name
    assert load_rgb_image({"bytes": exif_rotated_jpeg(), "path": "exif_rotated.jpg"}).size == (20, 40)


def test_bad_images_are_skipped_counted_and_listed_by_identifier_also_across_a_resume(tmp_path, bad_dataset):
    root, bad = bad_dataset
    # 30 examples -> 3 steps an epoch as far as the loop knows; only 24 decode, so epoch 0 is read to its end
    # (every bad image met) and step 4 comes from epoch 1.
    settings = dict(train_dir=str(root / "train"), validation_dir=str(root / "validation"), max_train_samples=None,
                    max_skipped_fraction=0.5, save_steps=2, save_total_limit=None)
    results = run_pretraining(*arguments(tmp_path / "uninterrupted", **settings))
    assert results["train_steps"] == 4 and np.isfinite(results["train_loss"]) and np.isfinite(results["eval_loss"])
    report = json.loads((tmp_path / "uninterrupted" / "skipped_samples.json").read_text())
    assert {entry["identifier"] for entry in report["skipped"]} == bad  # the odd-but-valid images all decoded
    assert report["num_skipped"] == len(report["skipped"]) >= len(bad) and report["all_listed"]
    assert all(entry["reason"] and entry["rank"] == 0 for entry in report["skipped"])
    assert sum(report["reasons"].values()) == report["num_skipped"]
    saved = json.loads((tmp_path / "uninterrupted" / "all_results.json").read_text())
    assert saved["train_skipped_samples"] == report["num_skipped"] == results["train_skipped_samples"]
    assert saved["train_loaded_samples"] == report["num_loaded"] == 32

    # Resumed in the middle of epoch 0: the replayed batches are not counted twice, no identifier is lost.
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    os.replace(tmp_path / "uninterrupted" / "checkpoints" / "step_2", resumed / "checkpoints" / "step_2")
    resumed_results = run_pretraining(*arguments(resumed, resume_from_checkpoint="latest", **settings))
    resumed_report = json.loads((resumed / "skipped_samples.json").read_text())
    assert [entry["identifier"] for entry in resumed_report["skipped"]] == [
        entry["identifier"] for entry in report["skipped"]]
    assert {key: resumed_report[key] for key in ("num_skipped", "num_loaded", "reasons", "all_listed")} == {
        key: report[key] for key in ("num_skipped", "num_loaded", "reasons", "all_listed")}
    for key in ("train_skipped_samples", "train_loaded_samples", "train_loss"):
        assert resumed_results[key] == results[key], key


def test_max_skipped_fraction_stops_the_job_and_lists_the_bad_images(tmp_path, bad_dataset):
    root, bad = bad_dataset
    with pytest.raises(RuntimeError, match=r"training images could not be decoded \(more than "
                                           r"--max_skipped_fraction 0.05\); stopping.*skipped: .*listed in") as error:
        run_pretraining(*arguments(
            tmp_path, train_dir=str(root / "train"), validation_dir=str(root / "validation"), max_train_samples=None,
            max_skipped_fraction=0.05))
    report = json.loads((tmp_path / "skipped_samples.json").read_text())
    assert str(tmp_path / "skipped_samples.json") in str(error.value)
    assert report["skipped"] and {entry["identifier"] for entry in report["skipped"]} <= bad
    assert not (tmp_path / "model.safetensors").exists()
