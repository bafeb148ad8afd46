# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Resume benchmark: time to the first new optimizer step after a resume late in an epoch, against a fresh start.

One run, repeats interleaved in a rotating order (fresh, resume, replay; resume, replay, fresh; ...), wall clock
from the call of `run_pretraining` (model built, checkpoint loaded, data opened) to the end of the first optimizer
step (logging every step; a callback stops the run there). The data: `--images` JPEGs of `--jpeg-size` px (smooth
random colour fields with noise, so decoding costs what a photo of that size costs), written as `--shards` Parquet
shards (ImageNet's Hub schema) and read as run_mim.py's `--streaming` recipe does, with the tiny MixedAE of the
tests at `--image-size`. A checkpoint is written after `--resume-at` batches of the first epoch (of images /
batch), then:

* `fresh`: a new run from step 0;
* `resume`: `--resume_from_checkpoint` on a copy of that checkpoint (the loader continues from its saved position);
* `replay`: the same checkpoint with the loader position removed (what every resume did before: the epoch's
  consumed batches are read, decoded, augmented and dropped).

Also counted: training images decoded and augmented before the first new step (one process, no DataLoader
workers, so every decode is counted in-process). Output: a JSON file in `benchmarks/results/raw/`.
"""

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import datasets
import numpy as np
import torch

from transformers_mixedae.tasks.masked_image_modeling import run_pretraining
from transformers_mixedae.tasks.masked_image_modeling_data import SeededTransform
from transformers_mixedae.training.arguments import (
    DataArguments,
    ModelArguments,
    PretrainingEvaluationArguments,
    TrainingArguments,
)
from transformers_mixedae.training.checkpointing import RUN_STATE_NAME
from transformers_mixedae.training.loop import TrainingCallback

TINY_MIXEDAE = (
    "hidden_size=32,num_hidden_layers=2,num_attention_heads=4,intermediate_size=64,decoder_hidden_size=16,"
    "decoder_num_hidden_layers=1,decoder_num_attention_heads=2,decoder_intermediate_size=32"
)
RESULTS = Path(__file__).resolve().parent / "results" / "raw"


class _Stop(Exception):
    pass


class StopAt(TrainingCallback):
    """Records when the first optimizer step of this process ends (or a checkpoint is written) and stops the run."""

    def __init__(self, on: str):
        self.on = on
        self.at = None

    def on_log(self, state, logs):
        if self.on == "step":
            self.at = time.perf_counter()
            raise _Stop

    def on_save(self, state, checkpoint):
        if self.on == "save":
            raise _Stop


def write_jpeg_shards(directory: Path, images: int, size: int, shards: int, seed: int) -> None:
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(images):
        coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), dtype=np.int16)
        pixels = np.clip(field + rng.integers(-24, 25, field.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        rows.append({"bytes": buffer.getvalue(), "path": None})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    table = datasets.Dataset.from_dict({"image": rows, "label": [i % 10 for i in range(images)]}, features=features)
    directory.mkdir(parents=True)
    for index in range(shards):
        table.shard(shards, index, contiguous=True).to_parquet(str(directory / f"train-{index:05d}-of-{shards:05d}.parquet"))


def arguments(args, train_dir: Path, output_dir: Path, **training):
    model = ModelArguments(model_type="mixedae", config_overrides=TINY_MIXEDAE, image_size=args.image_size,
                           patch_size=16, attn_implementation="eager")
    data = DataArguments(train_dir=str(train_dir), streaming=True, max_eval_samples=8, max_eval_train_samples=8,
                         shuffle_buffer_size=args.shuffle_buffer_size, dataloader_num_workers=0)
    values = dict(output_dir=str(output_dir), per_device_train_batch_size=args.batch_size, max_steps=args.max_steps,
                  logging_steps=1, seed=3, save_total_limit=None)
    values.update(training)
    return model, data, TrainingArguments(**values), PretrainingEvaluationArguments(save_visualizations=False)


def drop_loader_position(checkpoint: Path) -> None:
    """The checkpoint as the version before loader positions wrote it (file sizes in run_state.json kept true)."""
    for path in checkpoint.glob("custom_checkpoint_*.pkl"):
        state = torch.load(path, weights_only=True)
        if isinstance(state, dict) and "ranks" in state:
            for rank in state["ranks"]:
                rank.pop("position", None)
            torch.save(state, path)
    run_state = json.loads((checkpoint / RUN_STATE_NAME).read_text())
    run_state["files"] = {name: (checkpoint / name).stat().st_size for name in run_state["files"]}
    (checkpoint / RUN_STATE_NAME).write_text(json.dumps(run_state, indent=1))


def timed_first_step(args, train_dir: Path, output_dir: Path, **training) -> tuple[float, int]:
    decoded = {"count": 0}
    original = SeededTransform.__call__

    def counted(self, image):
        if self.seed == 3:  # the training transform (evaluation transforms are seeded otherwise)
            decoded["count"] += 1
        return original(self, image)

    SeededTransform.__call__ = counted
    stop = StopAt("step")
    start = time.perf_counter()
    try:
        run_pretraining(*arguments(args, train_dir, output_dir, **training), callbacks=[stop])
    except _Stop:
        pass
    finally:
        SeededTransform.__call__ = original
    return stop.at - start, decoded["count"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--jpeg-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--shuffle-buffer-size", type=int, default=256)
    parser.add_argument("--resume-at", type=int, default=60, help="batches of the first epoch before the checkpoint")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=str(RESULTS / "resume_cpu_1thread.json"))
    args = parser.parse_args()
    batches_per_epoch = args.images // args.batch_size
    if not 0 < args.resume_at < batches_per_epoch:
        parser.error(f"--resume-at must be in [1, {batches_per_epoch - 1}] (batches per epoch)")
    args.max_steps = 2 * batches_per_epoch
    torch.set_num_threads(args.threads)
    datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
    datasets.disable_progress_bars()

    with tempfile.TemporaryDirectory(prefix="bench_resume_") as scratch:
        root = Path(scratch)
        write_jpeg_shards(root / "train", args.images, args.jpeg_size, args.shards, seed=0)
        try:
            run_pretraining(*arguments(args, root / "train", root / "source", save_steps=args.resume_at),
                            callbacks=[StopAt("save")])
        except _Stop:
            pass
        checkpoint = root / "source" / "checkpoints" / f"step_{args.resume_at}"
        replay_checkpoint = root / "replay_source" / checkpoint.name
        shutil.copytree(checkpoint, replay_checkpoint)
        drop_loader_position(replay_checkpoint)

        measured = {"fresh": [], "resume": [], "replay": []}
        decoded = {}
        modes = list(measured)
        orders = []
        for repeat in range(args.repeats):
            # Each repeat starts one mode later, so that a warm-up or a neighbour's load does not fall on one mode.
            order = modes[repeat % len(modes):] + modes[: repeat % len(modes)]
            orders.append(order)
            for mode in order:
                output_dir = root / f"{mode}_{repeat}"
                training = {}
                if mode != "fresh":
                    source = checkpoint if mode == "resume" else replay_checkpoint
                    shutil.copytree(source, output_dir / "checkpoints" / checkpoint.name)
                    training["resume_from_checkpoint"] = "latest"
                seconds, count = timed_first_step(args, root / "train", output_dir, **training)
                measured[mode].append(seconds)
                decoded[mode] = count
                shutil.rmtree(output_dir)

    medians = {mode: statistics.median(values) for mode, values in measured.items()}
    result = {
        "benchmark": "bench_resume",
        "settings": {key: value for key, value in vars(args).items() if key != "output"},
        "batches_per_epoch": batches_per_epoch,
        "seconds_to_first_new_step": measured,
        "order_of_modes_per_repeat": orders,
        "median_seconds": medians,
        "training_images_decoded_before_first_new_step": decoded,
        "ratio_resume_over_fresh": medians["resume"] / medians["fresh"],
        "ratio_replay_over_fresh": medians["replay"] / medians["fresh"],
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "datasets": datasets.__version__, "processor": platform.processor() or platform.machine()},
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=1))
    print(json.dumps({key: result[key] for key in ("median_seconds", "training_images_decoded_before_first_new_step",
                                                   "ratio_resume_over_fresh", "ratio_replay_over_fresh")}, indent=1))


if __name__ == "__main__":
    main()
