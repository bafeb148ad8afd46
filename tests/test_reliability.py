"""Reliability of pre-training (issue 7): preemption, bad data, bad configs and inputs, numerical faults, safe
loading, disk full. Every run is tiny (16 px images, 4 px patches, width 32, batches of 8, a few steps) on CPU."""

import errno
import functools
import hashlib
import importlib.util
import io
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from accelerate import Accelerator
from helpers import single_torch_thread  # noqa: F401 (fixture)
from huggingface_hub.errors import StrictDataclassError
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from transformers.activations import ACT2FN

import transformers_mixedae  # noqa: F401
from transformers_mixedae import CAEConfig, CAEForPreTraining, MixedAEConfig, MixedAEForPreTraining
from transformers_mixedae.checkpointing import list_checkpoints
from transformers_mixedae.convert_cae_checkpoint import load_official_state_dict
from transformers_mixedae.data import load_rgb_image
from transformers_mixedae.pretraining import run_pretraining
from transformers_mixedae.training.loop import NonFiniteTrainingError
from transformers_mixedae.pretraining_args import DataArguments, ModelArguments, PretrainingArguments
from transformers_mixedae.tokenizer_dalle import load_dalle_encoder
from transformers_mixedae.training_records import read_train_log

datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
pytestmark = pytest.mark.usefixtures("single_torch_thread")

REPOSITORY = Path(__file__).resolve().parents[1]
RUN_MIM = REPOSITORY / "examples" / "run_mim.py"
TINY_MIXEDAE = (
    "hidden_size=32,num_hidden_layers=2,num_attention_heads=4,intermediate_size=64,decoder_hidden_size=16,"
    "decoder_num_hidden_layers=1,decoder_num_attention_heads=2,decoder_intermediate_size=32"
)
TINY_CAE = (
    "hidden_size=32,num_hidden_layers=2,num_attention_heads=4,intermediate_size=64,decoder_hidden_size=32,"
    "regressor_num_layers=1,decoder_num_layers=1,decoder_num_attention_heads=4,num_masking_patches=8,"
    "mask_min_num_patches=2,target=pixels"
)
SETTINGS = dict(
    model_type="mixedae", config_overrides=TINY_MIXEDAE, image_size=16, patch_size=4, attn_implementation="eager",
    max_train_samples=64, max_eval_samples=8, max_eval_train_samples=16, per_device_train_batch_size=8,
    per_device_eval_batch_size=16, max_steps=4, logging_steps=1, linear_probe_epochs=1, seed=3,
    save_visualizations=False,
)
MODEL_FIELDS = set(ModelArguments.__dataclass_fields__)
DATA_FIELDS = set(DataArguments.__dataclass_fields__)


def arguments(output_dir, **overrides):
    """The three argument groups of a tiny run (`SETTINGS` + overrides)."""
    values = {**SETTINGS, "output_dir": str(output_dir), **overrides}
    if values["model_type"] == "cae" and "config_overrides" not in overrides:
        values["config_overrides"] = TINY_CAE
    model = {key: value for key, value in values.items() if key in MODEL_FIELDS}
    data = {key: value for key, value in values.items() if key in DATA_FIELDS}
    training = {key: value for key, value in values.items() if key not in MODEL_FIELDS | DATA_FIELDS}
    return ModelArguments(**model), DataArguments(**data), PretrainingArguments(**training)


def command_line(output_dir, **overrides) -> list[str]:
    """The same run as `arguments(output_dir, **overrides)`, as run_mim.py arguments."""
    values = {**SETTINGS, "output_dir": str(output_dir), **overrides}
    return [part for key, value in values.items() for part in (f"--{key}", str(value))]


def folder_fingerprint(folder: Path) -> dict[str, tuple[str, int]]:
    """Content hash and modification time of every file below `folder`."""
    return {
        str(path.relative_to(folder)): (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*")) if path.is_file()
    }


def load_run_mim():
    spec = importlib.util.spec_from_file_location("run_mim", RUN_MIM)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------- 1. preemption
def kill_when_checkpoint_appears(process: subprocess.Popen, root: Path, step: int, seen: dict) -> None:
    """SIGKILL `process` within 20 ms of checkpoint `step` starting to be written (its `.tmp-` folder appears), or of
    any later checkpoint being seen; `seen` records the folder names seen then."""
    while process.poll() is None:
        names = set(os.listdir(root)) if root.is_dir() else set()
        if any(name.split("_")[-1].isdigit() and int(name.split("_")[-1]) >= step for name in names):
            time.sleep(random.uniform(0, 0.02))
            seen["names"] = names
            process.send_signal(signal.SIGKILL)
            return
        time.sleep(0.0005)


def test_sigkill_at_a_checkpoint_write_then_latest_resumes_with_the_same_loss_curve(tmp_path, caplog):
    settings = dict(max_steps=10, save_steps=2, save_total_limit=3)
    killed = tmp_path / "killed"
    step = random.choice([4, 6, 8])  # the checkpoint during whose write the run is killed
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                   "PYTHONPATH": os.pathsep.join([str(REPOSITORY / "src"), os.environ.get("PYTHONPATH", "")])}
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen([sys.executable, str(RUN_MIM), *command_line(killed, **settings)], env=environment,
                                   stdout=log, stderr=subprocess.STDOUT)
    seen: dict = {}
    watcher = threading.Thread(target=kill_when_checkpoint_appears,
                               args=(process, killed / "checkpoints", step, seen), daemon=True)
    watcher.start()
    try:
        # The uninterrupted reference runs here while the subprocess starts (same thread count: one).
        run_mim = load_run_mim()
        run_mim.main(command_line(tmp_path / "uninterrupted", **settings))
        watcher.join(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]

    # Killed mid-write (a `.tmp-step_N` folder is left, the usual case) or just after a rename: either way `latest`
    # is the newest complete checkpoint.
    complete = list_checkpoints(killed)
    last = complete[-1]
    assert int(last.name.split("_")[1]) >= step - 2, (step, seen)
    assert read_train_log(killed / "train_log.jsonl")[-1]["step"] >= int(last.name.split("_")[1])

    caplog.set_level("INFO", logger="transformers_mixedae.training.resume")
    run_mim.main(command_line(killed, resume_from_checkpoint="latest", **settings))
    assert f"Resumed from {last} at step" in caplog.text

    expected = read_train_log(tmp_path / "uninterrupted" / "train_log.jsonl")
    assert [record["step"] for record in expected] == list(range(1, 11))
    assert read_train_log(killed / "train_log.jsonl") == expected  # every step once, identical loss and lr
    expected_weights, weights = load_file(tmp_path / "uninterrupted" / "model.safetensors"), load_file(
        killed / "model.safetensors")
    assert all(torch.equal(expected_weights[name], weights[name]) for name in expected_weights)
    assert not list((killed / "checkpoints").glob(".tmp-*"))  # the interrupted write was cleaned up
    # Safetensors only in what a run leaves for users (checkpoints hold accelerate's optimizer/RNG states).
    assert not [path.name for path in killed.iterdir() if path.suffix in (".bin", ".pt", ".pth", ".pkl")]


def test_sigterm_to_the_whole_job_checkpoints_exits_143_and_resumes_to_the_same_weights(tmp_path):
    # A scheduler (or `timeout`) signals every process of the job, DataLoader workers included: the run must still
    # finish its step, write a checkpoint and exit with 143; the resumed run ends as an uninterrupted one.
    settings = dict(max_steps=150, save_steps=1000, dataloader_num_workers=1, logging_steps=1)
    stopped = tmp_path / "stopped"
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                   "PYTHONPATH": os.pathsep.join([str(REPOSITORY / "src"), os.environ.get("PYTHONPATH", "")])}
    with open(tmp_path / "stopped.log", "w") as log:
        process = subprocess.Popen([sys.executable, str(RUN_MIM), *command_line(stopped, **settings)], env=environment,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (stopped / "train_log.jsonl").exists() or not (stopped / "train_log.jsonl").read_text():
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "stopped.log").read_text()[-3000:]
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    log_text = (tmp_path / "stopped.log").read_text()
    assert process.returncode == 143, log_text[-3000:]
    assert "killed by signal" not in log_text
    [checkpoint] = list_checkpoints(stopped)
    step = int(checkpoint.name.split("_")[1])
    assert 1 <= step < 150 and not (stopped / "model.safetensors").exists()

    run_mim = load_run_mim()
    run_mim.main(command_line(stopped, resume_from_checkpoint="latest", **settings))
    run_mim.main(command_line(tmp_path / "uninterrupted", **settings))
    resumed, reference = load_file(stopped / "model.safetensors"), load_file(
        tmp_path / "uninterrupted" / "model.safetensors")
    assert resumed.keys() == reference.keys() and all(torch.equal(resumed[name], reference[name]) for name in reference)


def test_a_checkpoint_between_logging_steps_keeps_the_logged_loss_identical(tmp_path):
    settings = dict(max_steps=6, logging_steps=3, save_steps=2, save_total_limit=None)
    run_pretraining(*arguments(tmp_path / "uninterrupted", **settings))
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    os.replace(tmp_path / "uninterrupted" / "checkpoints" / "step_4", resumed / "checkpoints" / "step_4")
    # What the interrupted run had logged: step 3 (the next log line, step 6, averages steps 4 to 6).
    (resumed / "train_log.jsonl").write_text(
        (tmp_path / "uninterrupted" / "train_log.jsonl").read_text().splitlines()[0] + "\n{\"step\": 6, \"lo")
    run_pretraining(*arguments(resumed, resume_from_checkpoint="latest", **settings))
    expected = read_train_log(tmp_path / "uninterrupted" / "train_log.jsonl")
    assert [record["step"] for record in expected] == [3, 6]
    assert read_train_log(resumed / "train_log.jsonl") == expected


# ---------------------------------------------------------------------------------------------- 2. bad data
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


# ---------------------------------------------------------------------------------------------- 3. configs, inputs
# Each config field: (values that are valid on their own, edge values). A drawn config starts from valid values and
# gets 0 to 2 fields replaced by edge values; whether the result is valid also depends on how fields combine
# (image and patch size, widths and heads, mixing and mask ratio, grid and mask count), which the oracles decide.
NUMBER = (int, float)
SHARED_FIELDS = dict(
    image_size=([16, 16, 8, 24, (8, 16), [16, 8]], [10, 0, -16, [16], [16, 8, 4], (0, 16)]),
    patch_size=([4, 4, 2, 8], [3, 0, -4]),
    num_channels=([3, 3, 1], [0, -1]),
    hidden_size=([32, 16], [30, 0, -32, "32", 32.0]),
    num_attention_heads=([4, 2, 1], [3, 0, -2]),
    intermediate_size=([64, 8], [0, -8]),
    num_hidden_layers=([2, 1], [0, -1]),
    hidden_act=(["gelu", "relu"], ["no_such_activation"]),
    layer_norm_eps=([1e-6, 1e-12], [0.0, -1e-6]),
    hidden_dropout_prob=([0.0, 0.1], [1.0, 1.5, -0.1]),
    attention_probs_dropout_prob=([0.0, 0.1], [1.0, -0.1]),
    drop_path_rate=([0.0, 0.1], [1.0, -0.1]),
    qkv_bias=([True, False], ["yes"]),
    decoder_hidden_size=([16, 32], [30, 0, -16]),
    decoder_num_attention_heads=([2, 1], [3, 0]),
)
MIXEDAE_FIELDS = dict(
    SHARED_FIELDS,
    decoder_num_hidden_layers=([1, 2], [0, -1]),
    decoder_intermediate_size=([32, 8], [0, -1]),
    mixing_ratio=([0.25, 0.5, 1.0], [0.3, 0.2, 0.0, 1.5, -0.5]),
    mask_ratio=([0.0, 0.5, 0.75], [0.3, 1.0, -0.1]),
    homologous_attention_layers=([None, [], [0]], [[1], [5], [-1]]),
    homologous_topk=([None, 1, 2], [0, 1000, -1]),
    homologous_contrastive_weight=([0.1, 0.0], [-1.0]),
    homologous_contrastive_temperature=([0.1, 1.0], [0.0, -0.1]),
    norm_pix_loss=([True, False], [1]),
    segment_embedding=(["encoder", "none"], ["decoder"]),
    classifier_pooling=(["mean", "cls"], ["max"]),
)
CAE_FIELDS = dict(
    SHARED_FIELDS,
    regressor_num_layers=([1, 2], [0, -1]),
    decoder_num_layers=([1, 2], [0, -1]),
    decoder_intermediate_size=([None, 16], [0, -4]),
    layer_scale_init_value=([0.1, None, 0.0, -1.0], []),  # <= 0 or None: no LayerScale
    decoder_layer_scale_init_value=([0.1, 0.0], []),
    vocab_size=([16, 2], [1, 0]),
    target=(["pixels", "tokens"], ["latents"]),
    norm_pix_loss=([True, False], []),
    mask_type=(["block", "random"], ["grid"]),
    num_masking_patches=([1, 3, 6], [0, 64, -1]),
    mask_min_num_patches=([1, 2, 16], [0, -2]),
    mask_max_num_patches=([None, 4], [0, -1]),
    mask_min_aspect=([0.3, 1.0], [0.0, -1.0]),
    mask_max_aspect=([None, 3.0], [0.1]),
    align_loss_weight=([2.0, 0.0], [-1.0]),
    classifier_pooling=(["mean", "cls"], ["max"]),
)


@st.composite
def config_values(draw, fields: dict) -> dict:
    values = {name: draw(st.sampled_from(valid)) for name, (valid, _) in fields.items()}
    changed = draw(st.lists(st.sampled_from([name for name, (_, edge) in fields.items() if edge]), max_size=2,
                            unique=True))
    for name in changed:
        values[name] = draw(st.sampled_from(fields[name][1]))
    return values


def names_field_and_value(error: Exception, fields: dict) -> bool:
    """Whether the message names one of `fields` together with its value."""
    message = str(error)
    for name, value in fields.items():
        if f"{name}={value}" in message or f"{name}={value!r}" in message:
            return True
        if f"'{name}'" in message and repr(value) in message:  # strict type check: "Field 'x' ... (value: ...)"
            return True
    return False


def check_construction(config_class, values: dict, violations: list[tuple[str, ...]]):
    """Build the config: an error naming an offending field (and its value) iff the oracle found a violation."""
    if violations:
        with pytest.raises((ValueError, StrictDataclassError)) as error:
            config_class(**values)
        offending = {name: values[name] for violation in violations for name in violation}
        assert names_field_and_value(error.value, offending), (str(error.value), violations)
        return None
    return config_class(**values)


def type_violations(values: dict) -> list[tuple[str, ...]]:
    """Values of the wrong type for the strict dataclass (a string or float count, a non-bool flag)."""
    integers = ("hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_layers")
    flags = ("qkv_bias", "norm_pix_loss")
    return ([(name,) for name in integers if type(values[name]) is not int]
            + [(name,) for name in flags if type(values[name]) is not bool])


def common_violations(values: dict, positive: tuple[str, ...]):
    """Rules MixedAE and CAE share; returns (violations, patch grid or None when the geometry is invalid)."""
    violations = type_violations(values)
    numbers = {name: value for name, value in values.items() if type(value) in NUMBER}
    violations += [(name,) for name in positive if values[name] is not None and numbers.get(name, 1) < 1]
    violations += [(name,) for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate")
                   if not 0 <= values[name] < 1]
    if values["layer_norm_eps"] <= 0:
        violations.append(("layer_norm_eps",))
    if values["hidden_act"] not in ACT2FN:
        violations.append(("hidden_act",))
    for width, heads in (("hidden_size", "num_attention_heads"), ("decoder_hidden_size", "decoder_num_attention_heads")):
        if numbers.get(width, 0) >= 1 and values[heads] >= 1 and numbers[width] % values[heads]:
            violations.append((width, heads))
        if numbers.get(width, 0) >= 1 and numbers[width] % 4:
            violations.append((width,))
    size, patch = values["image_size"], values["patch_size"]
    hw = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    if len(hw) != 2 or min(hw) < 1:
        violations.append(("image_size",))
        return violations, None
    if patch < 1:
        return violations, None
    if hw[0] % patch or hw[1] % patch:
        violations.append(("image_size", "patch_size"))
        return violations, None
    return violations, (hw[0] // patch, hw[1] // patch)


def mixedae_violations(values: dict) -> list[tuple[str, ...]]:
    violations, grid = common_violations(
        values, ("hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_layers", "decoder_hidden_size",
                 "decoder_num_attention_heads", "decoder_intermediate_size", "decoder_num_hidden_layers", "patch_size",
                 "num_channels"),
    )
    ratio, mask_ratio = values["mixing_ratio"], values["mask_ratio"]
    ratio_ok = 0 < ratio <= 1 and abs(1 / ratio - round(1 / ratio)) < 1e-6
    if not ratio_ok:
        violations.append(("mixing_ratio",))
    if not 0 <= mask_ratio < 1:
        violations.append(("mask_ratio",))
    num_kept = None
    if grid is not None and ratio_ok and 0 <= mask_ratio < 1:
        num_kept = round(grid[0] * grid[1] * (1 - mask_ratio))
        group_size = round(1 / ratio)
        if num_kept < group_size or num_kept % group_size:
            violations.append(("mask_ratio", "mixing_ratio", "image_size", "patch_size"))
        elif num_kept // group_size == grid[0] * grid[1]:  # every patch of every image visible: nothing to predict
            violations.append(("mask_ratio", "mixing_ratio"))
    layers, depth = values["homologous_attention_layers"], values["num_hidden_layers"]
    if layers and type(depth) is int and depth >= 1 and any(not 0 <= i < depth for i in layers):
        violations.append(("homologous_attention_layers",))
    topk = values["homologous_topk"]
    if topk is not None and (topk < 1 or (num_kept is not None and topk > num_kept + 1)):
        violations.append(("homologous_topk",))
    if values["homologous_contrastive_weight"] < 0:
        violations.append(("homologous_contrastive_weight",))
    if values["homologous_contrastive_temperature"] <= 0:
        violations.append(("homologous_contrastive_temperature",))
    if values["segment_embedding"] not in ("encoder", "none"):
        violations.append(("segment_embedding",))
    if values["classifier_pooling"] not in ("mean", "cls"):
        violations.append(("classifier_pooling",))
    return violations


def cae_violations(values: dict) -> list[tuple[str, ...]]:
    violations, grid = common_violations(
        values, ("hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_layers", "decoder_hidden_size",
                 "decoder_num_attention_heads", "decoder_intermediate_size", "regressor_num_layers",
                 "decoder_num_layers", "patch_size", "num_channels"),
    )
    if values["mask_type"] not in ("block", "random"):
        violations.append(("mask_type",))
    if grid is not None:
        if not 0 < values["num_masking_patches"] < grid[0] * grid[1]:
            violations.append(("num_masking_patches", "image_size", "patch_size"))
        if values["mask_type"] == "block" and min(grid) < 2:
            violations.append(("mask_type", "image_size", "patch_size"))
    if values["mask_min_num_patches"] < 1:
        violations.append(("mask_min_num_patches",))
    if values["mask_max_num_patches"] is not None and values["mask_max_num_patches"] < 1:
        violations.append(("mask_max_num_patches",))
    if values["mask_min_aspect"] <= 0:
        violations.append(("mask_min_aspect",))
    elif values["mask_max_aspect"] is not None and values["mask_max_aspect"] < values["mask_min_aspect"]:
        violations.append(("mask_max_aspect", "mask_min_aspect"))
    if values["target"] not in ("tokens", "pixels"):
        violations.append(("target",))
    if values["target"] == "tokens" and values["vocab_size"] < 2:
        violations.append(("vocab_size",))
    if values["align_loss_weight"] < 0:
        violations.append(("align_loss_weight",))
    if values["classifier_pooling"] not in ("mean", "cls"):
        violations.append(("classifier_pooling",))
    return violations


CONFIG_EXAMPLES = settings(max_examples=150, deadline=None, database=None)


def random_inputs(config) -> dict[str, torch.Tensor]:
    """A batch the model takes: two groups of images for MixedAE, token ids for CAE with target='tokens'."""
    height, width = config.image_hw
    batch_size = 2 * getattr(config, "group_size", 1)
    inputs = {"pixel_values": torch.randn(batch_size, config.num_channels, height, width)}
    if getattr(config, "target", None) == "tokens":
        inputs["labels"] = torch.randint(0, config.vocab_size, (batch_size, config.num_patches))
    return inputs


@pytest.mark.parametrize(
    ("config_class", "model_class", "fields", "oracle"),
    [(MixedAEConfig, MixedAEForPreTraining, MIXEDAE_FIELDS, mixedae_violations),
     (CAEConfig, CAEForPreTraining, CAE_FIELDS, cae_violations)],
    ids=["mixedae", "cae"],
)
@CONFIG_EXAMPLES
@given(data=st.data())
def test_configs_are_rejected_naming_the_field_or_train_with_a_finite_loss(config_class, model_class, fields, oracle,
                                                                            data):
    values = data.draw(config_values(fields), label="config")
    config = check_construction(config_class, {**values, "attn_implementation": "eager"}, oracle(values))
    if config is not None:
        outputs = model_class(config)(**random_inputs(config))
        assert torch.isfinite(outputs.loss), values


@functools.cache
def tiny_models() -> tuple[MixedAEForPreTraining, CAEForPreTraining]:
    """16 px images, 4 px patches (4x4 grid), 3 channels; MixedAE mixes groups of 4, CAE masks 6 of 16 patches."""
    torch.manual_seed(0)
    common = dict(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                  intermediate_size=64, decoder_hidden_size=16, decoder_num_attention_heads=2,
                  attn_implementation="eager")
    mixedae = MixedAEForPreTraining(MixedAEConfig(**common, decoder_num_hidden_layers=1, decoder_intermediate_size=32))
    cae = CAEForPreTraining(CAEConfig(**common, regressor_num_layers=1, decoder_num_layers=1, num_masking_patches=6,
                                      mask_min_num_patches=2, target="pixels", drop_path_rate=0.0))
    return mixedae, cae


def input_problem(batch: int, channels: int, height: int, width: int, interpolate: bool) -> str | None:
    """What the tiny models must say about `pixel_values` of this shape, or None when it is fine."""
    if batch == 0:
        return "batch size 0"
    if channels != 3:
        return "num_channels=3"
    if not interpolate and (height, width) != (16, 16):
        return "doesn't match model"
    if interpolate and (height % 4 or width % 4):
        return "divisible by the patch size"
    return None


SHAPES = dict(batch=st.integers(0, 9), channels=st.sampled_from([3, 3, 3, 1, 4]),
              height=st.sampled_from([16, 16, 8, 12, 18, 24]), width=st.sampled_from([16, 16, 8, 12, 18, 24]),
              interpolate=st.booleans())
INPUT_EXAMPLES = settings(max_examples=100, deadline=None, database=None)


@INPUT_EXAMPLES
@given(**SHAPES)
def test_mixedae_inputs_are_rejected_naming_the_problem_or_give_a_finite_loss(batch, channels, height, width,
                                                                              interpolate):
    model = tiny_models()[0]
    pixel_values = torch.randn(batch, channels, height, width)
    problem = input_problem(batch, channels, height, width, interpolate)
    num_patches = (height // 4) * (width // 4)
    if problem is None and batch % 4:
        problem = f"batch size {batch} is not divisible by the group size 4"
    elif problem is None and num_patches % 4:
        problem = f"{num_patches} patches with mask_ratio=0.0 keep {num_patches} positions"
    if problem is not None:
        with pytest.raises(ValueError, match=problem):
            model(pixel_values, interpolate_pos_encoding=interpolate)
        return
    outputs = model(pixel_values, interpolate_pos_encoding=interpolate)
    assert torch.isfinite(outputs.loss) and outputs.logits.shape == (batch, num_patches, 48)


@INPUT_EXAMPLES
@given(**SHAPES, data=st.data())
def test_cae_inputs_and_masks_are_rejected_naming_the_problem_or_give_a_finite_loss(batch, channels, height, width,
                                                                                    interpolate, data):
    model = tiny_models()[1]
    pixel_values = torch.randn(batch, channels, height, width)
    problem = input_problem(batch, channels, height, width, interpolate)
    num_patches = (height // 4) * (width // 4)
    bool_masked_pos = None
    if problem is None and data.draw(st.booleans(), label="explicit mask"):
        counts = data.draw(st.lists(st.integers(0, num_patches), min_size=batch, max_size=batch), label="counts")
        rows = data.draw(st.sampled_from([batch, batch + 1]), label="rows")
        bool_masked_pos = torch.zeros(rows, num_patches, dtype=torch.bool)
        for row, count in zip(bool_masked_pos, counts + counts[:1]):
            row[torch.randperm(num_patches)[:count]] = True
        if rows != batch:
            problem = "`bool_masked_pos` must have shape"
        elif len(set(counts)) > 1:
            problem = "same number of masked patches"
        elif not 0 < counts[0] < num_patches:
            problem = "at least one masked and one visible patch"
    if problem is not None:
        with pytest.raises(ValueError, match=problem):
            model(pixel_values, bool_masked_pos=bool_masked_pos, interpolate_pos_encoding=interpolate)
        return
    outputs = model(pixel_values, bool_masked_pos=bool_masked_pos, interpolate_pos_encoding=interpolate)
    assert torch.isfinite(outputs.loss) and outputs.logits.shape[0] == batch


# ---------------------------------------------------------------------------------------------- 4. numerical faults
class InfiniteGradient(torch.autograd.Function):
    """Identity on the loss, infinite gradient backwards: a finite loss with a non-finite gradient."""

    @staticmethod
    def forward(ctx, loss):
        return loss.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


def inject_faults(monkeypatch, faults: dict[int, str]) -> list[dict[str, torch.Tensor]]:
    """Make training forward pass number `i` (0-based) return a NaN loss (`faults[i] == "loss"`) or a finite loss with
    an infinite gradient (`"gradient"`). Returns the weights seen at the start of every training forward pass."""
    original = MixedAEForPreTraining.forward
    weights_seen = []

    def forward(self, *args, **kwargs):
        outputs = original(self, *args, **kwargs)
        if not self.training:
            return outputs
        index = len(weights_seen)
        weights_seen.append({name: value.detach().clone() for name, value in self.state_dict().items()})
        if faults.get(index) == "loss":
            outputs.loss = outputs.loss * float("nan")
        elif faults.get(index) == "gradient":
            outputs.loss = InfiniteGradient.apply(outputs.loss)
        return outputs

    monkeypatch.setattr(MixedAEForPreTraining, "forward", forward)
    return weights_seen


def same_weights(first: dict, second: dict) -> bool:
    return all(torch.equal(first[name], second[name]) for name in first)


def test_a_non_finite_loss_or_gradient_skips_the_step_counts_it_and_leaves_the_weights(tmp_path, monkeypatch):
    weights_seen = inject_faults(monkeypatch, {2: "loss", 4: "gradient"})  # steps 3 and 5
    results = run_pretraining(*arguments(tmp_path, max_steps=6))
    assert results["train_skipped_nonfinite_steps"] == 2 and results["train_steps"] == 6
    assert np.isfinite(results["train_loss"])
    assert same_weights(weights_seen[2], weights_seen[3])  # step 3 changed nothing
    assert same_weights(weights_seen[4], weights_seen[5])  # nor did step 5
    assert not same_weights(weights_seen[1], weights_seen[2]) and not same_weights(weights_seen[3], weights_seen[4])
    losses = {record["step"]: record["loss"] for record in read_train_log(tmp_path / "train_log.jsonl")}
    assert losses[3] is None and losses[5] is None  # nothing trained in those steps: no loss logged
    assert all(np.isfinite(losses[step]) for step in (1, 2, 4, 6))


def test_consecutive_non_finite_steps_stop_the_job_and_leave_the_last_checkpoint_untouched(tmp_path, monkeypatch):
    weights_seen = inject_faults(monkeypatch, {4: "loss", 5: "gradient", 6: "loss"})  # steps 5 to 7
    original_forward = MixedAEForPreTraining.forward
    fingerprints = []

    def forward(self, *args, **kwargs):
        if self.training and len(weights_seen) == 4:  # step 5 starts: checkpoint step_4 has just been written
            fingerprints.append(folder_fingerprint(tmp_path / "checkpoints" / "step_4"))
        return original_forward(self, *args, **kwargs)

    monkeypatch.setattr(MixedAEForPreTraining, "forward", forward)
    with pytest.raises(NonFiniteTrainingError) as error:
        run_pretraining(*arguments(tmp_path, max_steps=10, save_steps=4,
                                   max_consecutive_nonfinite_steps=3))
    last = tmp_path / "checkpoints" / "step_4"
    assert str(error.value).startswith(
        f"3 optimizer steps in a row had a non-finite loss or gradient (step 7); stopping. The last good checkpoint "
        f"is {last} and was not touched.")
    assert len(weights_seen) == 7 and list_checkpoints(tmp_path) == [last]
    assert folder_fingerprint(last) == fingerprints[0]  # byte-identical, not rewritten
    assert not list((tmp_path / "checkpoints").glob(".tmp-*")) and not (tmp_path / "model.safetensors").exists()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_losses_are_computed_in_float32_under_autocast(dtype):
    mixedae, cae = tiny_models()
    pixel_values = torch.randn(4, 3, 16, 16)
    with torch.autocast("cpu", dtype=dtype):
        mixedae_outputs = mixedae(pixel_values)
        cae_outputs = cae(pixel_values)
    assert mixedae_outputs.logits.dtype == dtype and cae_outputs.logits.dtype == dtype  # autocast was on
    for loss in (mixedae_outputs.loss, cae_outputs.loss, cae_outputs.main_loss, cae_outputs.align_loss):
        assert loss.dtype == torch.float32 and torch.isfinite(loss)


# ---------------------------------------------------------------------------------------------- 5. safe loading
class PlantedCode:
    """Unpickling this runs `open(marker, "w")`: the marker file appears only if code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_save_pretrained_writes_safetensors_only(tmp_path):
    for model in tiny_models():
        folder = tmp_path / model.config.model_type
        model.save_pretrained(folder)
        names = sorted(path.name for path in folder.iterdir())
        assert "model.safetensors" in names, names
        assert not [name for name in names if name.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))], names


def test_pickles_with_code_are_refused_and_nothing_runs(tmp_path, monkeypatch):
    marker = tmp_path / "code_ran"
    checkpoint = tmp_path / "cae_official.pth"
    torch.save({"model": {"encoder.cls_token": torch.zeros(1, 1, 4)}, "args": PlantedCode(marker)}, checkpoint)
    torch.load(checkpoint, weights_only=False)["args"].close()  # the file really runs code when unpickled ...
    assert marker.exists()
    marker.unlink()

    with pytest.raises(ValueError, match="not loaded and nothing in it was run"):  # ... but the converter refuses
        load_official_state_dict(checkpoint)
    assert not marker.exists()

    # The DALL-E tokenizer loader (a stand-in for the optional `dall_e` package: only its Encoder is needed).
    monkeypatch.setitem(sys.modules, "dall_e", types.SimpleNamespace(Encoder=lambda: nn.Conv2d(3, 8, 8, 8)))
    encoder_file = tmp_path / "encoder.pkl"
    torch.save(PlantedCode(marker), encoder_file)
    with pytest.raises(ValueError, match="allow_unsafe_pickle=True if you trust it"):
        load_dalle_encoder(encoder_file)
    assert not marker.exists()
    # ... and run_mim.py, unless --cae_tokenizer_allow_unsafe_pickle is given.
    with pytest.raises(ValueError, match="allow_unsafe_pickle=True if you trust it"):
        run_pretraining(*arguments(tmp_path / "run", model_type="cae", cae_tokenizer_path=str(encoder_file),
                                   config_overrides=TINY_CAE.replace("target=pixels", "target=tokens")))
    assert not marker.exists()


def test_resuming_from_a_tampered_checkpoint_runs_nothing(tmp_path):
    run_pretraining(*arguments(tmp_path, max_steps=2, save_steps=2))
    marker = tmp_path / "code_ran"
    tampered = tmp_path / "checkpoints" / "step_2" / "custom_checkpoint_1.pkl"
    torch.save({"completed_steps": PlantedCode(marker)}, tampered)
    # The recorded file sizes already tell that the file changed since it was written.
    with pytest.raises(ValueError, match=r"no checkpoint in .* is intact \(.*custom_checkpoint_1.pkl has \d+ bytes but "
                                         r"was written with \d+ \(truncated or damaged\)\)"):
        run_pretraining(*arguments(tmp_path, max_steps=4, resume_from_checkpoint="latest"))
    # Without the record (a checkpoint of an earlier version), the pickle itself is refused unread.
    (tmp_path / "checkpoints" / "step_2" / "run_state.json").unlink()
    with pytest.raises(ValueError, match="holds pickled objects other than tensors and plain data.*nothing in it "
                                         "was run"):
        run_pretraining(*arguments(tmp_path, max_steps=4, resume_from_checkpoint="latest"))
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- 6. disk full
def test_a_failed_checkpoint_write_leaves_the_previous_checkpoint_intact_and_says_so(tmp_path, monkeypatch):
    original_save_state = Accelerator.save_state
    fingerprints = []

    def save_state(self, output_dir=None, **kwargs):
        if not list_checkpoints(tmp_path):
            return original_save_state(self, output_dir, **kwargs)
        fingerprints.append(folder_fingerprint(tmp_path / "checkpoints" / "step_2"))
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "model.safetensors").write_bytes(b"half a file")  # the disk fills up mid-write
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Accelerator, "save_state", save_state)
    with pytest.raises(RuntimeError) as error:
        run_pretraining(*arguments(tmp_path, max_steps=6, save_steps=2))
    previous = tmp_path / "checkpoints" / "step_2"
    assert str(error.value) == (
        f"Writing checkpoint {tmp_path / 'checkpoints' / 'step_4'} failed ([Errno 28] No space left on device); the "
        f"previous checkpoint {previous} is intact.")
    assert isinstance(error.value.__cause__, OSError) and error.value.__cause__.errno == errno.ENOSPC
    assert list_checkpoints(tmp_path) == [previous] and not list((tmp_path / "checkpoints").glob(".tmp-*"))
    assert folder_fingerprint(previous) == fingerprints[0]

    monkeypatch.setattr(Accelerator, "save_state", original_save_state)  # space freed: the job resumes from step 2
    results = run_pretraining(*arguments(tmp_path, max_steps=6, save_steps=2,
                                         resume_from_checkpoint="latest"))
    assert results["train_steps"] == 6 and [path.name for path in list_checkpoints(tmp_path)] == ["step_4", "step_6"]


def test_every_rank_stops_together_when_one_rank_is_over_the_skip_limit(tmp_path):
    from transformers_mixedae.pretraining_data import PretrainingData

    class OtherRankOverLimit:
        num_processes, process_index, device = 2, 1, torch.device("cpu")

        def __init__(self, other_ranks_over_limit: int):
            self.other_ranks_over_limit = other_ranks_over_limit

        def reduce(self, tensor, reduction):
            assert reduction == "sum"
            return tensor + self.other_ranks_over_limit

    def rank_state(other_ranks_over_limit):
        return types.SimpleNamespace(
            stats=types.SimpleNamespace(num_skipped=0, num_loaded=100),
            data_args=types.SimpleNamespace(max_skipped_fraction=0.05),
            training_args=types.SimpleNamespace(output_dir=str(tmp_path)),
            accelerator=OtherRankOverLimit(other_ranks_over_limit),
        )

    PretrainingData.check_skipped_fraction(rank_state(0))  # nobody over the limit: training goes on
    with pytest.raises(RuntimeError, match=r"Another rank could not decode more than --max_skipped_fraction 0\.05"):
        PretrainingData.check_skipped_fraction(rank_state(1))
