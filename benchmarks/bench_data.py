# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Data-pipeline benchmark: run_mim.py's decode + augmentation against transformers' ViT image processor.

Part (a), images/s **per core** on the same JPEGs (one torch thread; every pass timed by the process's CPU
time, `time.process_time()`, and by wall time; median over `--passes` passes after one untimed pass, each
pass one call per JPEG, the pipelines interleaved pass by pass in rotating order so that load from other
processes falls on all of them alike; the fastest pass of each is reported too, as the least disturbed one on a
loaded machine). The rows:

* **ours** (`mixedae`): the per-sample code of run_mim.py's loader, not a copy of it, with the preset's
  per-image normalisation switched on (run_mim.py normalises per batch after the copy to the device, with the
  same result bit for bit; here both sides pay for normalising): the examples,
  `{"image": {"bytes": <JPEG>, "path": None}}` as `datasets.Image(decode=False)` yields them, go through
  `data.streaming.DecodedImageStream` (`images.decode_rgb`: simplejpeg's libjpeg-turbo decode into a uint8
  array for YCbCr/grayscale JPEGs without EXIF rotation, Pillow's pixels bit for bit; Pillow with EXIF
  orientation and the RGB policy otherwise) with the transform `pretraining_data.SeededTransform` wrapped
  around `transforms.pretraining_transform_for_model_type("mixedae", image_size)`, as `PretrainingData`
  builds it: a `torch.Generator` seeded per sample, RandomResizedCrop box (scale (0.2, 1), ratio
  (3/4, 4/3)), flip draw, uint8 view of the box -> one antialiased bicubic `F.interpolate` on uint8 ->
  flip -> float32 ImageNet normalisation. Output: float32 `(3, S, S)`.
* **transformers ViTImageProcessorPil** (`vit-pil`, a reference): PIL decode (`Image.open` + `load()`,
  `convert("RGB")` only for non-RGB files: no EXIF handling, so it does a little less than ours), the same
  seeded generator and our crop sampler (`transforms.sample_random_resized_crop` with the preset's scale
  and ratio: the reference crops exactly the boxes ours crops, and flips the same images), the box cut with
  `PIL.Image.crop`, then `processor(crop, return_tensors="pt")` with `size` S x S, `resample=BICUBIC` (ours'
  interpolation; ViT's default is bilinear), rescale 1/255 and ImageNet mean/std (the processor resizes with
  PIL, rescales and normalises in NumPy), and the flip of the float output with `tensor.flip(-1)`.
  This is the class `transformers.ViTImageProcessor` resolves to in transformers 5 without torchvision
  (in transformers 4 it is `ViTImageProcessor` itself). One processor call per image, as a per-sample
  dataset transform calls it.
* `vit-pil-batched` (a reference): the same, but the processor is called once per `--batch-size` crops.
* `vit-torchvision` (a reference): `ViTImageProcessor`'s torchvision backend (transformers 5;
  `ViTImageProcessorFast` in transformers 4, a deprecated alias of it in 5) with the same settings; it
  needs torchvision, and is reported unavailable without it.
* `vit-pil-defaults` (information only): `vit-pil` with the processor's own defaults (bilinear, mean and std
  0.5), i.e. a cheaper resize than ours.
* `decode-only` (information only): `images.decode_rgb` alone, the decode cost inside ours.
* `pil-decode-only` (information only): `images.load_rgb_image` (Pillow) alone, about the decode cost inside
  the references.

The **reference** every headline ratio divides by is the fastest available reference row on the CPU clock
(so the ratio is conservative). Before timing, ours and `vit-pil` run on the same images with the same seeds
and the mean / max absolute difference of their outputs is reported (normalised units; one uint8 level is
about 0.017), as evidence that both sides do the same work.

transformers' own MAE pre-training example (`run_mae.py`) augments with torchvision transforms, not with the
image processor; torchvision is not installable on this project's machine, so it is not measured here.

Part (b), the end-to-end DataLoader rate of run_mim.py's data path, for every N in `--workers` and every
mode in `--loader-modes`: the JPEGs, repeated to as many rows as the run needs, written as `--shards` Parquet
shards with `datasets` (`image`: `datasets.Image`, `label`: `ClassLabel`, the schema of ImageNet-1k's Parquet
copy on the Hub), then `pretraining_data.PretrainingData` itself (`load_image_dataset(train_dir=...)` ->
`SeededTransform(mixedae preset)` -> `build_pretraining_dataloader(..., batch_multiple=4, drop_last=True)`)
with MixedAE's default config (group size 4), iterated through `PretrainingData.train_batches` as the training
loop does. Modes: `streaming` is run_mim.py's `--streaming` (the ImageNet recipe; the Parquet files are read
lazily), `arrow` its default (the shards are first copied into datasets' Arrow cache, in the scratch folder
here, and streamed from there). The first batch of every reader (N workers, or the main process) is the
warm-up (worker start, shuffle-buffer fill); then `--loader-batches` batches are timed by wall clock, from
the arrival of the last warm-up batch to that of the last timed batch; with 0 workers also by the CPU clock
(the main process does all the work). The data never runs out inside the timed window: at the end of a
streamed Parquet source `datasets` sleeps 5 s (a workaround for apache/arrow#45214), a fixed cost per epoch
that is not what this measures. `--shuffle-buffer-size` is small by default (run_mim.py: 10000) so that the
buffer is refilled while timing, as it is in steady state on ImageNet.

JPEG fixtures: `--num-jpegs` random 500x375 crops (ImageNet's most common shape) of the colour photos in
`skimage.data` (astronaut, coffee, chelsea, rocket, hubble_deep_field, immunohistochemistry; upscaled first
where smaller), saved at JPEG quality 90 into a temporary folder. Without scikit-image:
`sklearn.datasets.load_sample_images`, else synthetic smooth images (reported as such). `--jpeg-dir` uses
your own JPEGs instead.

    PYTHONPATH=src OMP_NUM_THREADS=1 python3 benchmarks/bench_data.py --json out.json
    PYTHONPATH=src python3 benchmarks/bench_data.py --image-size 224 --passes 7 --num-jpegs 32 \
        --workers 0,1,2 --loader-modes streaming --loader-batches 8 --batch-size 64 --jpeg-dir /path/to/jpegs
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import io
import json
import logging
import os
import random
import resource
import statistics
import sys
import tempfile
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

# Shared helpers (clocks, machine description) from the training benchmark; importing it also puts the
# repository's src/ folder on the path when the package is not installed.
_BENCHMARK_FOLDER = os.path.dirname(os.path.abspath(__file__))
if _BENCHMARK_FOLDER not in sys.path:
    sys.path.insert(0, _BENCHMARK_FOLDER)
from bench_pretrain import CLOCKS, _fmt, elapsed_since, machine_description, read_clocks  # noqa: E402

FIXTURE_SIZE = (500, 375)  # width, height
FIXTURE_QUALITY = 90
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")
MODEL_TYPE = "mixedae"
OURS = "mixedae"
VARIANTS = {
    OURS: "ours: run_mim.py per-sample path (DecodedImageStream: decode_rgb + SeededTransform(mixedae preset))",
    "vit-pil": "transformers ViTImageProcessorPil, one call per image (PIL decode + crop + processor + flip)",
    "vit-pil-batched": "transformers ViTImageProcessorPil, one call per --batch-size crops",
    "vit-torchvision": "transformers ViTImageProcessor torchvision backend (= ViTImageProcessorFast)",
    "vit-pil-defaults": "ViTImageProcessorPil with its defaults (bilinear, mean/std 0.5): information only",
    "decode-only": "images.decode_rgb alone (our decode floor): information only",
    "pil-decode-only": "images.load_rgb_image alone (Pillow decode floor): information only",
}
REFERENCES = ("vit-pil", "vit-pil-batched", "vit-torchvision")
LOADER_MODES = {
    "streaming": "run_mim.py --streaming (the ImageNet recipe): the Parquet shards read lazily",
    "arrow": "run_mim.py without --streaming: the shards loaded once into datasets' Arrow cache (a scratch folder "
    "here), streamed from it in 8 shards per reader",
}
PREFETCH_BATCHES = 3  # torch DataLoader's prefetch_factor (2) per worker, plus the batch in progress
TABLE_COLUMNS = (
    "pipeline",
    "images/s per core (CPU clock)",
    "images/s (wall)",
    "CPU ms / image",
    "spread",
    "ours ÷ this, CPU clock",
    "ours ÷ this, wall",
    "ours ÷ this, CPU clock, best pass",
)


# ---------------------------------------------------------------------------------------------- fixtures
def _synthetic_photos(count: int = 4) -> list[Image.Image]:
    """Smooth colour fields with fine noise: a last resort when no photo is installed."""
    generator = np.random.default_rng(0)
    photos = []
    for _ in range(count):
        coarse = Image.fromarray(generator.integers(0, 256, (12, 16, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((640, 480), Image.Resampling.BICUBIC), dtype=np.int16)
        noisy = smooth + generator.integers(-12, 13, smooth.shape, dtype=np.int16)
        photos.append(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)))
    return photos


def source_photos() -> tuple[str, list[Image.Image]]:
    """Colour photos to cut fixtures from, and a description of where they come from."""
    with contextlib.suppress(ImportError):
        import skimage
        import skimage.data

        photos, names = [], []
        for name in SKIMAGE_PHOTOS:
            with contextlib.suppress(Exception):  # a photo that needs a download (pooch) is left out
                photos.append(Image.fromarray(getattr(skimage.data, name)()).convert("RGB"))
                names.append(name)
        if photos:
            return f"skimage.data {skimage.__version__} ({', '.join(names)})", photos
    with contextlib.suppress(ImportError):
        from sklearn.datasets import load_sample_images

        return "sklearn.datasets.load_sample_images", [Image.fromarray(a) for a in load_sample_images().images]
    return "synthetic smooth images (neither scikit-image nor scikit-learn is installed)", _synthetic_photos()


def write_jpeg_fixtures(directory: Path, count: int, size=FIXTURE_SIZE, quality=FIXTURE_QUALITY, seed=0) -> str:
    """`count` random `size` crops of the source photos as JPEGs in `directory`; returns the source."""
    source, photos = source_photos()
    rng = random.Random(seed)
    width, height = size
    for index in range(count):
        photo = photos[index % len(photos)]
        cover = max(width / photo.width, height / photo.height)
        if cover > 1:
            photo = photo.resize((round(photo.width * cover + 0.5), round(photo.height * cover + 0.5)),
                                 Image.Resampling.BICUBIC)
        left = rng.randint(0, photo.width - width)
        top = rng.randint(0, photo.height - height)
        crop = photo.crop((left, top, left + width, top + height))
        crop.save(directory / f"fixture_{index:03d}.jpg", format="JPEG", quality=quality)
    return source


def read_jpegs(directory: Path) -> list[bytes]:
    paths = sorted(p for p in Path(directory).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if not paths:
        raise SystemExit(f"--jpeg-dir {directory}: no .jpg/.jpeg files")
    return [path.read_bytes() for path in paths]


def describe_jpegs(jpegs: list[bytes]) -> dict:
    sizes = []
    for data in jpegs:
        with Image.open(io.BytesIO(data)) as image:
            sizes.append(image.size)
    return dict(
        count=len(jpegs),
        sizes=sorted({f"{w}x{h}" for w, h in sizes}),
        mean_megapixels=statistics.mean(w * h for w, h in sizes) / 1e6,
        mean_bytes=statistics.mean(len(data) for data in jpegs),
    )


# ---------------------------------------------------------------------------------------------- pipelines
class Unavailable(RuntimeError):
    """A pipeline that cannot run here (e.g. torchvision missing)."""


def as_examples(jpegs: list[bytes]) -> list[dict]:
    """Examples as `datasets.Image(decode=False)` yields them from Parquet shards."""
    return [{"image": {"bytes": data, "path": None}} for data in jpegs]


class OurPipeline:
    """run_mim.py's per-sample path: DecodedImageStream over the examples with SeededTransform(preset)."""

    def __init__(self, image_size: int, seed: int):
        from transformers_mixedae.data import DecodedImageStream, pretraining_transform_for_model_type
        from transformers_mixedae.tasks.masked_image_modeling_data import SeededTransform

        self.augmentation = pretraining_transform_for_model_type(MODEL_TYPE, image_size)
        self.transform = SeededTransform(self.augmentation, seed, rank=0)
        self.stream_class = DecodedImageStream

    def __call__(self, examples: list[dict], epoch: int) -> list[torch.Tensor]:
        self.transform.set_epoch(epoch)
        stream = self.stream_class(examples, self.transform, image_column_name="image", label_column_name=None)
        return [item["pixel_values"] for item in stream]


def vit_processor_class(backend: str):
    """transformers' ViT processor class for `backend` ("pil" or "torchvision") in transformers 4 or 5."""
    import transformers

    pil_class = getattr(transformers, "ViTImageProcessorPil", None)  # transformers >= 5
    if backend == "pil":
        return pil_class or transformers.ViTImageProcessor
    if importlib.util.find_spec("torchvision") is None:
        raise Unavailable(
            "torchvision is not installed (not installable on this machine); transformers "
            f"{transformers.__version__} resolves ViTImageProcessor to ViTImageProcessorPil without it, and "
            "ViTImageProcessorFast needs it"
        )
    return transformers.ViTImageProcessor if pil_class is not None else transformers.ViTImageProcessorFast


class TransformersPipeline:
    """PIL decode, our crop sampler with the same seeds, PIL crop, transformers' ViT processor, flip."""

    def __init__(self, image_size: int, seed: int, backend: str = "pil", batch_size: int | None = None,
                 processor_defaults: bool = False):
        from transformers_mixedae.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, sample_random_resized_crop
        from transformers_mixedae.data.transforms import mixedae_pretraining_transform
        from transformers_mixedae.tasks.masked_image_modeling_data import derived_seed

        settings = dict(do_resize=True, size={"height": image_size, "width": image_size}, do_rescale=True,
                        do_normalize=True)
        if not processor_defaults:
            settings.update(resample=Image.Resampling.BICUBIC, image_mean=list(IMAGENET_DEFAULT_MEAN),
                            image_std=list(IMAGENET_DEFAULT_STD))
        processor_class = vit_processor_class(backend)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.processor = processor_class(**settings)
        self.processor_name = type(self.processor).__name__
        # The preset's crop parameters, so the boxes are drawn exactly as ours draws them.
        self.preset = mixedae_pretraining_transform(image_size)
        self.sample_box = sample_random_resized_crop
        self.derived_seed = derived_seed
        self.seed = seed
        self.batch_size = batch_size

    def _process(self, crops: list[Image.Image], flips: list[bool]) -> list[torch.Tensor]:
        if self.batch_size is None:
            pixels = [self.processor(crop, return_tensors="pt")["pixel_values"][0] for crop in crops]
        else:
            pixels = list(self.processor(crops, return_tensors="pt")["pixel_values"])
        return [values.flip(-1) if flip else values for values, flip in zip(pixels, flips)]

    def __call__(self, examples: list[dict], epoch: int) -> list[torch.Tensor]:
        outputs, crops, flips = [], [], []
        chunk = self.batch_size or 1
        for index, example in enumerate(examples):
            # The seed SeededTransform gives sample `index` of rank 0, worker 0 in `epoch`.
            generator = torch.Generator().manual_seed(self.derived_seed(self.seed, epoch, 0, 0, index))
            image = Image.open(io.BytesIO(example["image"]["bytes"]))
            image.load()
            if image.mode != "RGB":
                image = image.convert("RGB")
            box = self.sample_box(image.height, image.width, self.preset.scale, self.preset.ratio, generator)
            draw = torch.empty(1).uniform_(0.0, 1.0, generator=generator).item()
            flip = draw < self.preset.horizontal_flip_probability
            crops.append(image.crop(box.as_pil_box()))
            flips.append(flip)
            if len(crops) == chunk:
                outputs += self._process(crops, flips)
                crops, flips = [], []
        if crops:
            outputs += self._process(crops, flips)
        return outputs


class DecodeOnly:
    def __init__(self, pillow: bool = False):
        from transformers_mixedae.data import decode_rgb, load_rgb_image

        self.load = load_rgb_image if pillow else decode_rgb

    def __call__(self, examples: list[dict], epoch: int) -> list:
        return [self.load(example["image"]) for example in examples]


def build_pipeline(name: str, image_size: int, seed: int, batch_size: int):
    if name == OURS:
        return OurPipeline(image_size, seed)
    if name == "vit-pil":
        return TransformersPipeline(image_size, seed)
    if name == "vit-pil-batched":
        return TransformersPipeline(image_size, seed, batch_size=batch_size)
    if name == "vit-torchvision":
        return TransformersPipeline(image_size, seed, backend="torchvision")
    if name == "vit-pil-defaults":
        return TransformersPipeline(image_size, seed, processor_defaults=True)
    if name == "decode-only":
        return DecodeOnly()
    if name == "pil-decode-only":
        return DecodeOnly(pillow=True)
    raise ValueError(name)


def output_check(ours: OurPipeline, reference: TransformersPipeline, examples: list[dict]) -> dict:
    """Ours against the reference on the same images and seeds: same shapes, values within a few levels."""
    mine, theirs = ours(examples, epoch=0), reference(examples, epoch=0)
    level = 1.0 / 255.0 / min(reference.preset.std)  # one uint8 step after normalisation (largest channel)
    differences = torch.stack([(a - b).abs() for a, b in zip(mine, theirs)])
    return dict(
        images=len(examples),
        shape=list(mine[0].shape),
        reference=reference.processor_name,
        mean_abs_difference=float(differences.mean()),
        max_abs_difference=float(differences.max()),
        one_uint8_level=level,
        fraction_within_one_level=float((differences <= level * 1.001).float().mean()),
    )


def measure_pipelines(args, examples: list[dict]) -> tuple[list[dict], dict | None]:
    pipelines, rows = {}, {}
    for name, description in VARIANTS.items():
        rows[name] = dict(pipeline=name, description=description, status="ok", error=None,
                          seconds_by_clock={clock: [] for clock in CLOCKS})
        try:
            pipelines[name] = build_pipeline(name, args.image_size, args.seed, args.batch_size)
            rows[name]["implementation"] = getattr(pipelines[name], "processor_name", type(pipelines[name]).__name__)
        except Unavailable as error:
            rows[name].update(status="unavailable", error=str(error))
    check = None
    if OURS in pipelines and "vit-pil" in pipelines:
        check = output_check(pipelines[OURS], pipelines["vit-pil"], examples[: args.check_images])
    for pipeline in pipelines.values():  # one untimed pass each: first calls, lazy imports, caches, allocator
        pipeline(examples, epoch=0)
    names = list(pipelines)
    for repeat in range(args.passes):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            start = read_clocks()
            pipelines[name](examples, epoch=repeat + 1)
            for clock, seconds in elapsed_since(start).items():
                rows[name]["seconds_by_clock"][clock].append(seconds)
    count = len(examples)
    for row in rows.values():
        if row["status"] != "ok":
            continue
        for clock, seconds in row["seconds_by_clock"].items():
            median = statistics.median(seconds)
            row[f"median_pass_seconds_{clock}"] = median
            row[f"images_per_second_{clock}"] = count / median
        cpu = row["seconds_by_clock"]["cpu"]
        row["spread_cpu"] = (max(cpu) - min(cpu)) / statistics.median(cpu)
        row["images_per_second_cpu_best_pass"] = count / min(cpu)
        row["cpu_ms_per_image"] = 1e3 * row["median_pass_seconds_cpu"] / count
    ours = rows[OURS]
    for row in rows.values():
        if row["status"] != "ok":
            continue
        for clock in CLOCKS:
            row[f"ours_ratio_{clock}"] = ours[f"images_per_second_{clock}"] / row[f"images_per_second_{clock}"]
        # Fastest pass against fastest pass: the least disturbed passes of each, on a loaded machine.
        row["ours_ratio_cpu_best_pass"] = (
            ours["images_per_second_cpu_best_pass"] / row["images_per_second_cpu_best_pass"]
        )
        # Ratio of the passes of the same round (run next to each other), median over rounds.
        row["ours_ratio_cpu_paired"] = statistics.median(
            b / a for a, b in zip(ours["seconds_by_clock"]["cpu"], row["seconds_by_clock"]["cpu"])
        )
    return list(rows.values()), check


# ---------------------------------------------------------------------------------------------- loader
@contextlib.contextmanager
def quiet_datasets():
    """No `datasets` progress bars, and no "no validation split" warning from the package's loader."""
    import datasets

    progress_bars = datasets.utils.logging.is_progress_bar_enabled()
    loading_logger = logging.getLogger("transformers_mixedae.data.loading")
    level = loading_logger.level
    datasets.disable_progress_bars()
    loading_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        loading_logger.setLevel(level)
        if progress_bars:
            datasets.enable_progress_bars()


def write_parquet_shards(jpegs: list[bytes], directory: Path, num_images: int, num_shards: int) -> list[str]:
    """The JPEGs (repeated to `num_images` rows) as Parquet shards with ImageNet's schema."""
    import datasets

    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=len(jpegs))}
    )
    rows = [index % len(jpegs) for index in range(num_images)]
    table = datasets.Dataset.from_dict(
        {"image": [{"bytes": jpegs[row], "path": None} for row in rows], "label": rows}, features=features
    )
    num_shards = max(1, min(num_shards, num_images))
    paths = []
    with quiet_datasets():
        for shard in range(num_shards):
            path = directory / f"train-{shard:05d}-of-{num_shards:05d}.parquet"
            table.shard(num_shards, shard, contiguous=True).to_parquet(str(path))
            paths.append(str(path))
    return paths


@contextlib.contextmanager
def datasets_cache(directory: Path):
    """Point `datasets`' cache (read when a builder is made) at `directory`, so the Arrow copy of the shards
    goes to the scratch folder rather than the user's cache; run_mim.py has no cache option to pass."""
    import datasets.config

    saved = datasets.config.HF_DATASETS_CACHE
    datasets.config.HF_DATASETS_CACHE = Path(directory)
    try:
        yield
    finally:
        datasets.config.HF_DATASETS_CACHE = saved


def loader_rows_needed(args, workers: list[int]) -> int:
    """Rows such that no reader's stream is exhausted before the last timed batch has arrived.

    A reader (a worker, or the main process) runs ahead of the consumer by up to `PREFETCH_BATCHES` batches and
    reads `--shuffle-buffer-size` examples ahead of what it yields; at the end of a streamed Parquet source
    `datasets` sleeps 5 s (its workaround for apache/arrow#45214), which must not fall into the timed window.
    """
    readers = max(1, max(workers))
    consumed = (readers + args.loader_batches) * args.batch_size
    return consumed + readers * (PREFETCH_BATCHES * args.batch_size + args.shuffle_buffer_size)


def _build_pretraining_data(args, mode: str, train_dir: Path, scratch: Path, num_workers: int):
    """`PretrainingData` as run_mim.py builds it for MixedAE (default config, group size 4) on the shards."""
    from accelerate import Accelerator

    from transformers_mixedae import MixedAEConfig
    from transformers_mixedae.training.arguments import DataArguments, ModelArguments, TrainingArguments
    from transformers_mixedae.tasks.masked_image_modeling_data import PretrainingData

    config = MixedAEConfig(image_size=args.image_size, patch_size=16 if args.image_size >= 64 else 4)
    cache = datasets_cache(scratch / "datasets_cache") if mode == "arrow" else contextlib.nullcontext()
    with cache, quiet_datasets():
        data = PretrainingData(
            SimpleNamespace(config=config),  # only the config is read; the model's weights play no part
            ModelArguments(model_type=MODEL_TYPE),
            DataArguments(train_dir=str(train_dir), streaming=mode == "streaming", dataloader_num_workers=num_workers,
                          shuffle_buffer_size=args.shuffle_buffer_size),
            TrainingArguments(output_dir=str(scratch / "run"), per_device_train_batch_size=args.batch_size,
                              seed=args.seed),
            Accelerator(cpu=True),
        )
    return data, config


def measure_loader(args, mode: str, train_dir: Path, scratch: Path, num_workers: int) -> dict:
    """`PretrainingData.train_batches` (run_mim.py's loop): one warm-up batch per reader, then
    `--loader-batches` batches timed from the arrival of the last warm-up batch to that of the last timed one."""
    data, config = _build_pretraining_data(args, mode, train_dir, scratch, num_workers)
    warmup_batches = max(1, num_workers)
    row = dict(mode=mode, workers=num_workers, batch_size=args.batch_size, group_size=config.group_size,
               warmup_batches=warmup_batches, status="ok", error=None)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = read_clocks()
    arrivals, sizes = [], []
    batches = data.train_batches(epoch=0, batches_per_epoch=sys.maxsize)
    for _ in range(warmup_batches + args.loader_batches):
        batch = next(batches, None)
        if batch is None:
            row.update(status="error", error=f"the stream ended after {len(sizes)} batches")
            break
        arrivals.append(read_clocks())
        sizes.append(len(batch["pixel_values"]))
        row["batch_shape"] = list(batch["pixel_values"].shape)
        del batch
    batches.close()  # outside the timed window: stops the workers (and datasets' end-of-stream sleep)
    del data
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if row["status"] == "ok":
        first, last = arrivals[warmup_batches - 1], arrivals[-1]
        timed = {clock: last[clock] - first[clock] for clock in CLOCKS}
        images = sum(sizes[warmup_batches:])
        row.update(
            warmup_seconds={clock: first[clock] - start[clock] for clock in CLOCKS},
            timed_batches=len(sizes) - warmup_batches,
            timed_images=images,
            timed_seconds=timed,
            batch_arrival_wall_seconds=[a["wall"] - start["wall"] for a in arrivals],
            images_per_second_wall=images / timed["wall"],
            # Only with 0 workers does this process do all the work, so only then is it a per-core rate.
            images_per_second_cpu=images / timed["cpu"] if num_workers == 0 else None,
        )
    row["worker_cpu_seconds_whole_run"] = (children_after.ru_utime + children_after.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )
    return row


# ---------------------------------------------------------------------------------------------- report
def _table_line(name: str, row: dict, values) -> str:
    """One table row: `values()` gives the figures of a measured row; a failed one shows its status and error."""
    cells = [name] + (values() if row["status"] == "ok" else [f"{row['status']}: {row['error']}"])
    cells += [""] * (len(TABLE_COLUMNS) - len(cells))
    return "| " + " | ".join(str(cell).replace("|", "/") for cell in cells) + " |"


def markdown_table(rows: list[dict], loader_rows: list[dict], reference: str | None) -> str:
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for row in rows:
        name = row["pipeline"] + (" (reference)" if row["pipeline"] == reference else "")
        lines.append(_table_line(name, row, lambda row=row: [
            _fmt(row["images_per_second_cpu"], ".1f"),
            _fmt(row["images_per_second_wall"], ".1f"),
            _fmt(row["cpu_ms_per_image"], ".2f"),
            _fmt(100 * row["spread_cpu"], ".0f") + "%",
            _fmt(row["ours_ratio_cpu"], ".2f") + "x",
            _fmt(row["ours_ratio_wall"], ".2f") + "x",
            _fmt(row["ours_ratio_cpu_best_pass"], ".2f") + "x",
        ]))
    for row in loader_rows:
        name = f"run_mim DataLoader ({row['mode']}), {row['workers']} workers"
        lines.append(_table_line(name, row, lambda row=row: [
            _fmt(row["images_per_second_cpu"], ".1f"),
            _fmt(row["images_per_second_wall"], ".1f"),
            _fmt(row["images_per_second_cpu"] and 1e3 / row["images_per_second_cpu"], ".2f"),
        ]))
    return "\n".join(lines)


def parse_workers(text: str) -> list[int]:
    try:
        values = [int(value) for value in text.split(",") if value.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise SystemExit(f"--workers: expected a comma list of non-negative integers, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--image-size", type=int, default=224, help="output side in pixels")
    parser.add_argument("--passes", type=int, default=15, help="timed passes over the JPEGs per pipeline (median)")
    parser.add_argument("--num-jpegs", type=int, default=32, help="JPEG fixtures to generate (without --jpeg-dir)")
    parser.add_argument("--jpeg-dir", default=None, help="use the .jpg/.jpeg files of this folder instead")
    parser.add_argument("--check-images", type=int, default=8, help="images of the ours-vs-vit-pil output check")
    parser.add_argument("--workers", default="0,1,2", help="comma list of DataLoader worker counts")
    parser.add_argument("--loader-modes", default="streaming,arrow", help=f"comma list of {', '.join(LOADER_MODES)}")
    parser.add_argument("--loader-batches", type=int, default=8, help="timed loader batches after the warm-up")
    parser.add_argument("--shards", type=int, default=8, help="Parquet shards for part (b)")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="loader batch (a multiple of 4, run_mim.py's default 64); also vit-pil-batched's chunk")
    parser.add_argument("--shuffle-buffer-size", type=int, default=64, help="stream shuffle buffer for part (b)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: per core)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write every figure to this JSON file")
    return parser


def _package_versions() -> dict:
    versions = {}
    for name in ("PIL", "simplejpeg", "numpy", "datasets", "accelerate", "skimage", "torchvision"):
        with contextlib.suppress(Exception):
            versions[name] = getattr(__import__(name), "__version__", "unknown")
    return versions


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    workers = parse_workers(args.workers)
    if args.passes < 1 or args.image_size < 8 or args.batch_size < 4 or args.batch_size % 4:
        raise SystemExit("--passes must be >= 1, --image-size >= 8, --batch-size a positive multiple of 4")
    modes = [mode.strip() for mode in args.loader_modes.split(",") if mode.strip()]
    if not set(modes) <= set(LOADER_MODES):
        raise SystemExit(f"--loader-modes: unknown {sorted(set(modes) - set(LOADER_MODES))}; choose from "
                         f"{', '.join(LOADER_MODES)}")
    if args.loader_batches < 1:
        raise SystemExit("--loader-batches must be >= 1")
    torch.set_num_threads(args.threads)
    load_at_start = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="bench_data_") as scratch:
        scratch = Path(scratch)
        if args.jpeg_dir:
            fixture_source = f"--jpeg-dir {args.jpeg_dir}"
            jpegs = read_jpegs(Path(args.jpeg_dir))
        else:
            (scratch / "jpegs").mkdir()
            fixture_source = write_jpeg_fixtures(scratch / "jpegs", args.num_jpegs, seed=args.seed)
            fixture_source += f", random {FIXTURE_SIZE[0]}x{FIXTURE_SIZE[1]} crops, JPEG quality {FIXTURE_QUALITY}"
            jpegs = read_jpegs(scratch / "jpegs")
        examples = as_examples(jpegs)

        rows, check = measure_pipelines(args, examples)
        available = [row for row in rows if row["pipeline"] in REFERENCES and row["status"] == "ok"]
        reference = max(available, key=lambda row: row["images_per_second_cpu"])["pipeline"] if available else None

        (scratch / "train").mkdir()
        loader_images = loader_rows_needed(args, workers)
        shard_paths = write_parquet_shards(jpegs, scratch / "train", loader_images, args.shards)
        loader_rows = [
            measure_loader(args, mode, scratch / "train", scratch, n) for mode in modes for n in workers
        ]

    table = markdown_table(rows, loader_rows, reference)
    by_name = {row["pipeline"]: row for row in rows}
    headline = None
    if reference is not None:
        headline = dict(
            reference=reference,
            reference_implementation=by_name[reference].get("implementation"),
            ours_over_reference_cpu=by_name[reference]["ours_ratio_cpu"],
            ours_over_reference_wall=by_name[reference]["ours_ratio_wall"],
            ours_over_reference_cpu_paired=by_name[reference]["ours_ratio_cpu_paired"],
            ours_over_reference_cpu_best_pass=by_name[reference]["ours_ratio_cpu_best_pass"],
            target=2.0,
        )
    header = [
        (
            f"# bench_data: {len(jpegs)} JPEGs ({fixture_source}), output {args.image_size} px, "
            f"{args.passes} passes (median), {torch.get_num_threads()} torch thread(s)"
        ),
        "",
    ]
    if headline:
        header.append(
            f"- ours / {reference} ({headline['reference_implementation']}), per core: "
            f"{headline['ours_over_reference_cpu']:.2f}x on the CPU clock (median pass; best pass "
            f"{headline['ours_over_reference_cpu_best_pass']:.2f}x), {headline['ours_over_reference_wall']:.2f}x wall "
            f"(issue target >= 2x)"
        )
    if check:
        header.append(
            f"- output check, ours vs vit-pil on {check['images']} images: mean |diff| "
            f"{check['mean_abs_difference']:.4f}, max {check['max_abs_difference']:.3f}, "
            f"{100 * check['fraction_within_one_level']:.3f}% of values within one uint8 level "
            f"({check['one_uint8_level']:.4f})"
        )
    for row in rows:
        if row["status"] != "ok":
            header.append(f"- {row['pipeline']}: {row['status']}: {row['error']}")
    header.append(
        f"- loader: {loader_images} rows in {len(shard_paths)} Parquet shards, batch {args.batch_size}, shuffle buffer "
        f"{args.shuffle_buffer_size}; {args.loader_batches} batches timed by wall clock after one warm-up batch per "
        f"reader (CPU clock too with 0 workers)"
    )
    header.append("")
    print("\n".join(header) + table)

    machine = machine_description(torch.device("cpu"))
    machine.update(usable_cpus=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                   package_versions=_package_versions(), load_average_start=list(load_at_start),
                   load_average_end=list(os.getloadavg()))
    result = dict(
        command=" ".join(
            [os.path.basename(sys.argv[0] or "bench_data.py")] + list(argv if argv is not None else sys.argv[1:])
        ),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        machine=machine,
        settings=dict(
            image_size=args.image_size,
            passes=args.passes,
            threads=torch.get_num_threads(),
            seed=args.seed,
            batch_size=args.batch_size,
            workers=workers,
            loader_modes={mode: LOADER_MODES[mode] for mode in modes},
            loader_images=loader_images,
            loader_batches=args.loader_batches,
            shards=len(shard_paths),
            shuffle_buffer_size=args.shuffle_buffer_size,
            clocks={"cpu": "time.process_time (this process, all threads)", "wall": "time.perf_counter"},
            descriptions=dict(VARIANTS),
            references=list(REFERENCES),
        ),
        fixtures=dict(source=fixture_source, **describe_jpegs(jpegs)),
        headline=headline,
        output_check=check,
        rows=rows,
        loader=loader_rows,
        table=table,
    )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return result


if __name__ == "__main__":
    main()
