"""Data pipeline: loading, streaming across ranks, augmentation, image modes, corrupt files."""

import io
import logging
import math

import datasets
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from transformers_mixedae.data import images as images_module
from transformers_mixedae.data import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    BatchNormalizer,
    EvaluationTransform,
    SkipAwareCollator,
    UndecodableImageError,
    build_evaluation_dataloader,
    DecodedImageStream,
    build_pretraining_dataloader,
    cae_pretraining_transform,
    center_crop_box,
    crop_to_uint8_tensor,
    decode_rgb,
    fast_jpeg_pixels,
    load_image_dataset,
    load_rgb_image,
    loading,
    mixedae_pretraining_transform,
    normalize_pixels,
    pil_to_uint8_tensor,
    pretraining_transform_for_model_type,
    resized_crop,
    sample_random_resized_crop,
    synchronized_batches,
)
from transformers_mixedae.tasks.masked_image_modeling_data import SeededTransform

NUM_CLASSES = 5
CLASS_NAMES = [f"class_{index}" for index in range(NUM_CLASSES)]
NUM_TRAIN = 120
NUM_VALIDATION = 20


@pytest.fixture(autouse=True)
def _no_stream_shutdown_stall(monkeypatch):
    # A shuffled multi-shard Parquet stream sleeps 5 s whenever an iterator closes (arrow#45214 workaround).
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)


def sample_id_color(sample_id: int) -> tuple[int, int, int]:
    return (sample_id % 256, sample_id // 256, 7)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def solid_image(sample_id: int, size=(6, 5)) -> dict:
    """A flat image whose colour encodes `sample_id`, in `datasets.Image` storage form."""
    return {"bytes": png_bytes(Image.new("RGB", size, sample_id_color(sample_id))), "path": f"sample-{sample_id}.png"}


def write_shards(directory, records: dict, num_shards: int, split: str) -> None:
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASS_NAMES)})
    dataset = datasets.Dataset.from_dict(records, features=features)
    directory.mkdir(parents=True, exist_ok=True)
    for index in range(num_shards):
        shard = dataset.shard(num_shards, index, contiguous=True)
        shard.to_parquet(str(directory / f"{split}-{index:05d}-of-{num_shards:05d}.parquet"))


def id_records(ids) -> dict:
    return {"image": [solid_image(i) for i in ids], "label": [i % NUM_CLASSES for i in ids]}


@pytest.fixture(scope="module")
def shard_dirs(tmp_path_factory):
    """Train/validation Parquet shards with the default (ImageNet-like) schema; 4 and 3 train shards."""
    root = tmp_path_factory.mktemp("shards")
    for num_shards in (4, 3):
        write_shards(root / f"train{num_shards}", id_records(range(NUM_TRAIN)), num_shards, "train")
    write_shards(root / "validation", id_records(range(1000, 1000 + NUM_VALIDATION)), 1, "validation")
    return root


def identify(image: Image.Image, generator=None) -> dict:
    """A transform that returns the sample id encoded in the (flat) image colour."""
    red, green, _ = image.getpixel((0, 0))
    return {"pixel_values": torch.tensor([red + 256 * green])}


def ids_of(loader) -> list[int]:
    return [int(value) for batch in loader for value in batch["pixel_values"][:, 0]]


def load_shards(shard_dirs, num_shards=4, streaming=True):
    return load_image_dataset(
        train_dir=str(shard_dirs / f"train{num_shards}"),
        validation_dir=str(shard_dirs / "validation"),
        streaming=streaming,
    )


# ---------------------------------------------------------------------------------------------- loading
def test_local_parquet_shards_take_the_streaming_parquet_path(shard_dirs):
    loaded = load_shards(shard_dirs)
    assert isinstance(loaded.train, datasets.IterableDataset)
    assert loaded.train.num_shards == 4
    assert loaded.label_names == CLASS_NAMES and loaded.num_labels == NUM_CLASSES
    loader = build_pretraining_dataloader(loaded.train, identify, batch_size=8, seed=0, drop_last=False)
    ids = ids_of(loader)
    assert sorted(ids) == list(range(NUM_TRAIN))
    assert ids != sorted(ids)  # shuffled
    assert loader.stats.num_loaded == NUM_TRAIN and loader.stats.num_skipped == 0


def test_hub_dataset_name_goes_to_load_dataset_with_streaming_and_token(shard_dirs, monkeypatch):
    local = load_shards(shard_dirs)
    calls = []

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name, kwargs))
        return datasets.IterableDatasetDict({"train": local.train, "validation": local.validation})

    monkeypatch.setattr(loading.datasets, "load_dataset", fake_load_dataset)
    loaded = load_image_dataset("ILSVRC/imagenet-1k", streaming=True, token=True)
    assert calls == [("ILSVRC/imagenet-1k", None,
                      {"streaming": True, "token": True, "cache_dir": None, "revision": None})]
    assert loaded.source == "ILSVRC/imagenet-1k" and loaded.num_labels == NUM_CLASSES
    load_image_dataset("timm/imagenet-1k-wds", revision="refs/convert/parquet")
    assert calls[-1][2]["revision"] == "refs/convert/parquet"


def test_embedded_default_dataset_has_ten_balanced_classes():
    loaded = load_image_dataset(streaming=True)
    assert loaded.num_labels == 10 and loaded.label_names[0] == "T-shirt/top"
    assert loaded.train.num_shards == 4 and loaded.validation.num_shards == 1
    for split, per_class in ((loaded.train, 600), (loaded.validation, 100)):
        labels = np.array([example["label"] for example in split.decode(False)])
        assert np.bincount(labels, minlength=10).tolist() == [per_class] * 10
    image = load_rgb_image(next(iter(loaded.validation.decode(False)))["image"])
    assert image.mode == "RGB" and image.size == (28, 28)


def test_max_samples_limit_the_splits(shard_dirs):
    loaded = load_image_dataset(
        train_dir=str(shard_dirs / "train4"), validation_dir=str(shard_dirs / "validation"),
        streaming=False, max_train_samples=10, max_eval_samples=3,
    )
    assert len(loaded.train) == 10 and len(loaded.validation) == 3


def class_sorted_dataset(num_classes: int = 20, per_class: int = 100) -> datasets.Dataset:
    """Solid images numbered by id, labels in blocks: an image folder read in class order."""
    ids = list(range(num_classes * per_class))
    records = id_records(ids)
    records["label"] = [sample // per_class for sample in ids]
    return datasets.Dataset.from_dict(records, features=datasets.Features(
        {"image": datasets.Image(), "label": datasets.Value("int64")}))


def test_sample_limits_take_the_same_random_subset_of_a_class_sorted_dataset():
    dataset = class_sorted_dataset()
    limit_samples = loading.limit_samples
    kept = limit_samples(dataset, 200)
    labels = kept["label"]
    assert len(labels) == 200 and len(set(labels)) == 20  # the first 200 would be classes 0 and 1 only
    assert labels == sorted(labels)  # kept in dataset order
    assert limit_samples(dataset, 200)["image"] == kept["image"]  # the same subset in every run
    assert limit_samples(dataset, 5000) is dataset and limit_samples(dataset, None) is dataset
    streamed = limit_samples(dataset.to_iterable_dataset(), 3)  # a stream keeps its first examples
    assert [example["label"] for example in streamed] == [0, 0, 0]


def test_a_class_sorted_map_style_dataset_larger_than_the_buffer_is_shuffled_across_classes():
    dataset = class_sorted_dataset()
    loader = build_pretraining_dataloader(dataset, identify, batch_size=32, seed=0, shuffle_buffer_size=200,
                                          label_column_name=None)
    ids = [[int(value) for value in batch["pixel_values"][:, 0]] for batch in loader]
    assert len(ids) == 2000 // 32 and len({sample for batch in ids for sample in batch}) == len(ids) * 32
    batches = [[sample // 100 for sample in batch] for batch in ids]
    # Blocks of 200 consecutive examples of the sorted folder would give batches of 2 to 3 classes.
    assert np.mean([len(set(batch)) for batch in batches]) > 12


@pytest.mark.parametrize("streaming", [True, False])
@pytest.mark.parametrize("column", ["image_column_name", "label_column_name"])
def test_missing_column_is_named_with_the_available_ones(shard_dirs, streaming, column):
    with pytest.raises(ValueError, match=r"'pixels'.*available columns: \['image', 'label'\]"):
        load_image_dataset(train_dir=str(shard_dirs / "train4"), streaming=streaming, **{column: "pixels"})


def test_empty_parquet_split_is_named(tmp_path):
    write_shards(tmp_path / "train", id_records([1, 2]), 1, "train")
    write_shards(tmp_path / "validation", id_records([]), 1, "validation")
    with pytest.raises(ValueError, match="validation split .* is empty"):
        load_image_dataset(train_dir=str(tmp_path / "train"), validation_dir=str(tmp_path / "validation"),
                           streaming=True)


def test_empty_image_folder_is_named(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(ValueError, match=r"train split of imagefolder .*train is empty"):
        load_image_dataset(train_dir=str(tmp_path / "train"), streaming=True)


def test_conflicting_sources_are_rejected(shard_dirs):
    with pytest.raises(ValueError, match="only one data source"):
        load_image_dataset("ILSVRC/imagenet-1k", train_dir=str(shard_dirs / "train4"))


# ---------------------------------------------------------------------------------------------- ranks and epochs
@pytest.mark.parametrize("source", ["4 shards (split by shard)", "3 shards (split by example)", "map-style"])
def test_two_ranks_get_disjoint_samples_covering_the_data(shard_dirs, source):
    if source.startswith("map"):
        dataset = load_shards(shard_dirs, streaming=False).train
    else:
        dataset = load_shards(shard_dirs, num_shards=int(source[0])).train
    per_rank = [
        ids_of(build_pretraining_dataloader(dataset, identify, 4, rank=rank, world_size=2, seed=3, drop_last=False))
        for rank in (0, 1)
    ]
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == list(range(NUM_TRAIN))
    assert abs(len(per_rank[0]) - len(per_rank[1])) <= NUM_TRAIN // 4


def test_set_epoch_reshuffles_the_same_way_on_every_rank(shard_dirs):
    dataset = load_shards(shard_dirs).train
    loaders = [build_pretraining_dataloader(dataset, identify, 4, rank=r, world_size=2, seed=0, drop_last=False)
               for r in (0, 1)]
    orders = {}
    for epoch in (0, 1, 0):
        for rank, loader in enumerate(loaders):
            loader.set_epoch(epoch)
            ids = ids_of(loader)
            if (epoch, rank) in orders:
                assert ids == orders[(epoch, rank)]  # same epoch -> same order
            orders[(epoch, rank)] = ids
        assert sorted(orders[(epoch, 0)] + orders[(epoch, 1)]) == list(range(NUM_TRAIN))
    assert orders[(0, 0)] != orders[(1, 0)]


def test_dataloader_workers_read_every_sample_once(shard_dirs):
    dataset = load_shards(shard_dirs).train
    loader = build_pretraining_dataloader(dataset, identify, 8, seed=0, num_workers=2, drop_last=False)
    assert sorted(ids_of(loader)) == list(range(NUM_TRAIN))


def test_evaluation_loader_keeps_every_sample_in_order(shard_dirs):
    validation = load_shards(shard_dirs).validation
    ids = ids_of(build_evaluation_dataloader(validation, identify, batch_size=6))
    assert ids == list(range(1000, 1000 + NUM_VALIDATION))


def test_drop_last_and_batch_multiple(shard_dirs):
    dataset = load_shards(shard_dirs).train
    loader = build_pretraining_dataloader(dataset, identify, 16, seed=0, drop_last=True, batch_multiple=4)
    sizes = [len(batch["pixel_values"]) for batch in loader]
    assert sizes == [16] * (NUM_TRAIN // 16)
    assert loader.stats.num_trimmed == NUM_TRAIN % 16
    with pytest.raises(ValueError, match="multiple of batch_multiple"):
        build_pretraining_dataloader(dataset, identify, 10, batch_multiple=4)


class _TwoRankAccelerator:
    """Plays rank 0 of two; the other rank has `other_batches` batches. `reduce` sums the has-batch flags."""

    num_processes = 2
    device = torch.device("cpu")

    def __init__(self, other_batches: int):
        self.other_batches = other_batches
        self.calls = 0

    def reduce(self, tensor, reduction="sum"):
        other = 1 if self.calls < self.other_batches else 0
        self.calls += 1
        return tensor + other


@pytest.mark.parametrize("mine, other, expected", [(5, 3, 3), (2, 4, 2), (3, 3, 3)])
def test_synchronized_batches_stop_all_ranks_at_the_shortest(mine, other, expected):
    assert len(list(synchronized_batches(range(mine), _TwoRankAccelerator(other)))) == expected
    assert list(synchronized_batches(range(mine))) == list(range(mine))


# ---------------------------------------------------------------------------------------------- augmentation
def gradient_image(width=64, height=48) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)
    y = np.linspace(0, 255, height, dtype=np.float32)
    pixels = np.stack([np.broadcast_to(x, (height, width)), np.broadcast_to(y[:, None], (height, width)),
                       np.full((height, width), 90.0)], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8))


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_pretraining_transform_shapes_dtypes_and_range():
    image = gradient_image()
    output = mixedae_pretraining_transform(32)(image, generator=seeded(0))
    assert set(output) == {"pixel_values"}
    pixels = output["pixel_values"]
    assert pixels.shape == (3, 32, 32) and pixels.dtype == torch.float32
    low = normalize_pixels(torch.zeros(3, 1, 1, dtype=torch.uint8)).flatten()
    high = normalize_pixels(torch.full((3, 1, 1), 255, dtype=torch.uint8)).flatten()
    assert (pixels.amin(dim=(1, 2)) >= low - 1e-5).all() and (pixels.amax(dim=(1, 2)) <= high + 1e-5).all()
    raw = mixedae_pretraining_transform(32, normalize=False)(image, generator=seeded(0))["pixel_values"]
    assert raw.dtype == torch.uint8
    torch.testing.assert_close(normalize_pixels(raw), pixels)


def test_normalize_pixels_matches_the_textbook_formula_bit_for_bit_and_leaves_its_input_alone():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    mean_tensor, std_tensor = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    raw = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(normalize_pixels(raw, mean, std), (raw.float() / 255.0 - mean_tensor) / std_tensor)
    unit = raw.float() / 255.0
    unit_before = unit.clone()
    assert torch.equal(normalize_pixels(unit, mean, std), (unit_before - mean_tensor) / std_tensor)
    assert torch.equal(unit, unit_before)


@pytest.mark.parametrize("seed", range(8))
def test_transforms_resize_exactly_the_sampled_box_of_the_whole_image(seed):
    # The transforms copy only the crop out of PIL; the result must be the crop of the whole image, bit for bit.
    noise = np.random.default_rng(seed).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    image = Image.fromarray(noise)
    whole = pil_to_uint8_tensor(image)
    transform = mixedae_pretraining_transform(16, horizontal_flip_probability=0.0, normalize=False)
    box = sample_random_resized_crop(37, 53, transform.scale, transform.ratio, seeded(seed))
    expected = resized_crop(whole, box, (16, 16))
    assert torch.equal(transform(image, generator=seeded(seed))["pixel_values"], expected)
    assert torch.equal(crop_to_uint8_tensor(image, box), whole[:, box.top : box.top + box.height, box.left : box.left + box.width])
    evaluation = EvaluationTransform(16, crop_fraction=0.7, normalize=False)
    center = center_crop_box(37, 53, (16, 16), 0.7)
    assert torch.equal(evaluation(image)["pixel_values"], resized_crop(whole, center, (16, 16)))


def test_batches_normalised_after_the_copy_equal_images_normalised_in_the_workers_bit_for_bit():
    images = [photo_like(53, 37, seed) for seed in range(4)]
    in_workers = mixedae_pretraining_transform(16)
    as_uint8 = mixedae_pretraining_transform(16, normalize=False)
    expected = torch.stack([in_workers(image, seeded(index))["pixel_values"] for index, image in enumerate(images)])
    batch = torch.stack([as_uint8(image, seeded(index))["pixel_values"] for index, image in enumerate(images)])
    assert batch.dtype == torch.uint8
    assert torch.equal(BatchNormalizer(as_uint8.mean, as_uint8.std, "cpu")(batch), expected)
    with pytest.raises(ValueError, match="expected uint8 pixels .* got torch.float32"):
        BatchNormalizer(as_uint8.mean, as_uint8.std, "cpu")(expected)


def test_cae_transform_adds_tokenizer_view_of_the_same_crop_and_the_mask():
    mask = np.zeros((4, 4), dtype=bool)
    mask[0, :2] = True
    transform = cae_pretraining_transform(32, tokenizer_image_size=16, mask_generator=lambda: mask)
    assert transform.scale == (0.08, 1.0)
    image = gradient_image()
    for seed in range(6):
        output = transform(image, generator=seeded(seed))
        tokenizer_view = output["tokenizer_pixel_values"]
        assert tokenizer_view.shape == (3, 16, 16) and tokenizer_view.dtype == torch.float32
        assert 0.0 <= tokenizer_view.min() and tokenizer_view.max() <= 1.0
        assert output["bool_masked_pos"].dtype == torch.bool and output["bool_masked_pos"].sum() == 2
        # Same box and flip: the small view equals the big view (un-normalised) shrunk to 16 px, up to resampling.
        mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)
        unnormalized = output["pixel_values"] * std + mean
        shrunk = torch.nn.functional.avg_pool2d(unnormalized.unsqueeze(0), 2)[0]
        assert (shrunk - tokenizer_view).abs()[:2].mean() < 0.03


def test_augmentation_is_deterministic_with_a_seed_and_varies_without():
    image = gradient_image()
    transform = mixedae_pretraining_transform(24)
    first = transform(image, generator=seeded(1))["pixel_values"]
    assert torch.equal(first, transform(image, generator=seeded(1))["pixel_values"])
    others = [transform(image, generator=seeded(seed))["pixel_values"] for seed in range(2, 6)]
    assert not all(torch.equal(first, other) for other in others)


def test_flip_mirrors_the_crop():
    image = gradient_image(40, 40)
    fixed_crop = {"scale": (1.0, 1.0), "ratio": (1.0, 1.0), "normalize": False}
    never = mixedae_pretraining_transform(20, horizontal_flip_probability=0.0, **fixed_crop)(image)["pixel_values"]
    always = mixedae_pretraining_transform(20, horizontal_flip_probability=1.0, **fixed_crop)(image)["pixel_values"]
    assert torch.equal(always, never.flip(-1))
    assert never[0, :, 0].float().mean() < never[0, :, -1].float().mean()  # red grows left to right


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(1, 400), width=st.integers(1, 400), low=st.floats(0.05, 1.0), seed=st.integers(0, 2**31),
)
def test_random_resized_crop_box_lies_inside_the_image(height, width, low, seed):
    scale, ratio = (low, 1.0), (3 / 4, 4 / 3)
    box = sample_random_resized_crop(height, width, scale, ratio, seeded(seed))
    assert 0 <= box.top and box.top + box.height <= height and box.height >= 1
    assert 0 <= box.left and box.left + box.width <= width and box.width >= 1
    if height >= 20 and width >= 20 and 0.8 <= width / height <= 1.25:  # random draws practically always fit
        assert box.height * box.width <= height * width * 1.05
        assert ratio[0] * 0.8 <= box.width / box.height <= ratio[1] * 1.25


def test_crop_scale_follows_the_preset():
    areas = {}
    for name in ("mixedae", "cae"):
        transform = pretraining_transform_for_model_type(name, 16)
        boxes = [sample_random_resized_crop(200, 200, transform.scale, transform.ratio, seeded(s)) for s in range(300)]
        areas[name] = [box.height * box.width / 200**2 for box in boxes]
    assert 0.19 <= min(areas["mixedae"]) and min(areas["cae"]) < 0.19
    assert math.isclose(np.mean(areas["mixedae"]), 0.6, abs_tol=0.06)


def test_torchvision_is_optional():
    try:
        import torchvision.transforms.v2.functional  # noqa: F401
    except (ImportError, RuntimeError):  # a torchvision built for another torch fails with RuntimeError
        with pytest.raises(ImportError, match="resize_backend='torch' needs none"):
            mixedae_pretraining_transform(16, resize_backend="torchvision")
    else:
        image = gradient_image()
        with_torchvision = mixedae_pretraining_transform(16, resize_backend="torchvision")(image, seeded(0))
        plain = mixedae_pretraining_transform(16)(image, seeded(0))
        assert (with_torchvision["pixel_values"] - plain["pixel_values"]).abs().mean() < 0.05


def test_evaluation_transform_center_crops():
    transform = EvaluationTransform(16, crop_fraction=0.5, normalize=False)
    image = Image.new("RGB", (64, 32), (0, 0, 0))
    image.paste((255, 255, 255), (24, 8, 40, 24))  # the central 16 x 16 square
    output = transform(image)["pixel_values"]
    assert output.shape == (3, 16, 16) and (output == 255).all()
    assert torch.equal(output, transform(image)["pixel_values"])


# ---------------------------------------------------------------------------------------------- image modes
def encoded(image: Image.Image, fmt: str, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def palette_image(transparent: bool) -> Image.Image:
    image = Image.new("P", (8, 6), 1)
    image.putpalette([0, 0, 0, 200, 30, 30] + [0, 0, 0] * 254)
    if transparent:
        image.info["transparency"] = 1
    return image


def exif_rotated_jpeg() -> bytes:
    image = Image.new("RGB", (20, 10), (250, 0, 0))
    image.paste((0, 0, 250), (0, 0, 10, 10))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 90 degrees counter-clockwise: viewers rotate it clockwise
    return encoded(image, "JPEG", exif=exif.tobytes(), quality=95)


# (stored bytes, expected RGB at the centre (None = don't check), expected (width, height))
MODE_CASES = {
    "L": (encoded(Image.new("L", (7, 5), 100), "PNG"), (100, 100, 100), (7, 5)),
    "1": (encoded(Image.new("1", (7, 5), 1), "PNG"), (255, 255, 255), (7, 5)),
    "LA half transparent black": (encoded(Image.new("LA", (7, 5), (0, 128)), "PNG"), (127, 127, 127), (7, 5)),
    "RGBA fully transparent": (encoded(Image.new("RGBA", (7, 5), (10, 20, 30, 0)), "PNG"), (255, 255, 255), (7, 5)),
    "RGBA opaque": (encoded(Image.new("RGBA", (7, 5), (10, 20, 30, 255)), "PNG"), (10, 20, 30), (7, 5)),
    "P": (encoded(palette_image(False), "PNG"), (200, 30, 30), (8, 6)),
    "P transparent index": (encoded(palette_image(True), "PNG"), (255, 255, 255), (8, 6)),
    "L transparent grey level": (encoded(Image.new("L", (7, 5), 40), "PNG", transparency=40), (255, 255, 255), (7, 5)),
    "L other grey level": (encoded(Image.new("L", (7, 5), 41), "PNG", transparency=40), (41, 41, 41), (7, 5)),
    "RGB transparent colour": (encoded(Image.new("RGB", (7, 5), (1, 2, 3)), "PNG", transparency=(1, 2, 3)),
                               (255, 255, 255), (7, 5)),
    "CMYK JPEG": (encoded(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=95), (254, 0, 0), (8, 8)),
    "I;16 PNG": (encoded(Image.fromarray(np.full((5, 7), 32768, np.uint16)), "PNG"), (128, 128, 128), (7, 5)),
    "I;16 PNG max": (encoded(Image.fromarray(np.full((5, 7), 65535, np.uint16)), "PNG"), (255, 255, 255), (7, 5)),
    "I TIFF": (encoded(Image.fromarray(np.full((5, 7), 65535 // 4, np.int32)), "TIFF"), (64, 64, 64), (7, 5)),
    "F TIFF in [0, 1]": (encoded(Image.fromarray(np.full((5, 7), 0.5, np.float32)), "TIFF"), (128, 128, 128), (7, 5)),
    "F TIFF wide range": (
        encoded(Image.fromarray(np.linspace(-50, 1000, 35, dtype=np.float32).reshape(5, 7)), "TIFF"), None, (7, 5)),
    "EXIF rotated JPEG": (exif_rotated_jpeg(), None, (10, 20)),
    "1x1": (encoded(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"), (1, 2, 3), (1, 1)),
    "1x500": (encoded(Image.new("L", (1, 500), 9), "PNG"), (9, 9, 9), (1, 500)),
    "500x1": (encoded(Image.new("L", (500, 1), 9), "PNG"), (9, 9, 9), (500, 1)),
}


@pytest.mark.parametrize("case", list(MODE_CASES))
def test_every_image_mode_becomes_rgb_and_a_valid_tensor(case):
    stored, expected_center, expected_size = MODE_CASES[case]
    image = load_rgb_image({"bytes": stored, "path": case})
    assert image.mode == "RGB" and image.size == expected_size
    if expected_center is not None:
        center = image.getpixel((image.size[0] // 2, image.size[1] // 2))
        assert all(abs(a - b) <= 2 for a, b in zip(center, expected_center)), center
    for transform in (cae_pretraining_transform(16, tokenizer_image_size=8), EvaluationTransform(16)):
        output = transform(image, generator=seeded(0))
        assert output["pixel_values"].shape == (3, 16, 16) and torch.isfinite(output["pixel_values"]).all()


def test_exif_orientation_is_applied():
    image = load_rgb_image(exif_rotated_jpeg())
    # Rotating clockwise puts the stored left (blue) half on top.
    top, bottom = image.getpixel((5, 2)), image.getpixel((5, 17))
    assert top[2] > 200 and top[0] < 50 and bottom[0] > 200 and bottom[2] < 50


@pytest.mark.parametrize("case", list(MODE_CASES))
def test_decode_rgb_gives_load_rgb_images_pixels_for_every_mode(case):
    stored = MODE_CASES[case][0]
    assert np.array_equal(np.asarray(decode_rgb(stored)), np.asarray(load_rgb_image(stored)))


def photo_like(width: int, height: int, seed: int) -> Image.Image:
    """Smooth colour fields plus fine noise: both the DCT and the chroma upsampling matter."""
    generator = np.random.default_rng(seed)
    coarse = Image.fromarray(generator.integers(0, 256, (3, 4, 3), dtype=np.uint8)).resize((width, height))
    noise = generator.integers(-20, 21, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(coarse, dtype=np.int64) + noise, 0, 255).astype(np.uint8))


JPEG_VARIANTS = [
    ("RGB", size, quality, subsampling, progressive)
    for size in ((37, 23), (64, 48))
    for quality in (60, 95)
    for subsampling in (0, 1, 2)  # 4:4:4, 4:2:2, 4:2:0
    for progressive in (False, True)
] + [("L", (37, 23), 90, 0, False), ("L", (64, 48), 75, 0, True)]


@pytest.mark.parametrize(("mode", "size", "quality", "subsampling", "progressive"), JPEG_VARIANTS)
def test_fast_jpeg_decoder_gives_pillows_pixels_bit_for_bit(mode, size, quality, subsampling, progressive):
    data = encoded(
        photo_like(*size, seed=quality).convert(mode), "JPEG",
        quality=quality, subsampling=subsampling, progressive=progressive,
    )
    pixels = fast_jpeg_pixels({"bytes": data, "path": None})
    assert pixels is not None and pixels.dtype == np.uint8 and pixels.shape == (size[1], size[0], 3)
    assert np.array_equal(pixels, np.asarray(load_rgb_image(data)))


def test_fast_jpeg_decoder_reads_jpeg_files_and_leaves_other_files_to_pillow(tmp_path):
    photo = photo_like(30, 20, seed=0)
    photo.save(tmp_path / "photo.JPEG", quality=90)
    photo.save(tmp_path / "photo.png")
    from_file = decode_rgb({"bytes": None, "path": str(tmp_path / "photo.JPEG")})
    assert isinstance(from_file, np.ndarray)
    assert np.array_equal(from_file, np.asarray(load_rgb_image(str(tmp_path / "photo.JPEG"))))
    assert isinstance(decode_rgb({"bytes": None, "path": str(tmp_path / "photo.png")}), Image.Image)


def test_jpegs_pillow_must_handle_skip_the_fast_decoder():
    cmyk = encoded(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=95)
    assert fast_jpeg_pixels(cmyk) is None and fast_jpeg_pixels(exif_rotated_jpeg()) is None
    assert fast_jpeg_pixels(truncated_jpeg()) is None and fast_jpeg_pixels(encoded(gradient_image(), "PNG")) is None
    upright = Image.Exif()
    upright[0x0112] = 1
    with_upright_exif = encoded(photo_like(20, 10, seed=1), "JPEG", exif=upright.tobytes(), quality=95)
    assert np.array_equal(fast_jpeg_pixels(with_upright_exif), np.asarray(load_rgb_image(with_upright_exif)))


def test_fast_jpeg_decoder_respects_pillows_decompression_bomb_limit(monkeypatch):
    data = encoded(photo_like(40, 30, seed=2), "JPEG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40 * 30 - 1)
    assert fast_jpeg_pixels(data) is None  # Pillow then warns (or refuses beyond twice the limit)


def test_without_simplejpeg_pillow_decodes_everything(monkeypatch):
    monkeypatch.setattr(images_module, "simplejpeg", None)
    data = encoded(photo_like(20, 10, seed=3), "JPEG")
    assert fast_jpeg_pixels(data) is None and isinstance(decode_rgb(data), Image.Image)


@pytest.mark.parametrize("seed", range(4))
def test_transforms_give_the_same_output_for_an_image_and_its_array(seed):
    image = photo_like(53, 37, seed)
    array = np.array(image)
    transforms = (
        cae_pretraining_transform(16, tokenizer_image_size=8),
        mixedae_pretraining_transform(16, normalize=False),
        EvaluationTransform(16),
    )
    for transform in transforms:
        from_image, from_array = transform(image, seeded(seed)), transform(array, seeded(seed))
        assert from_image.keys() == from_array.keys()
        assert all(torch.equal(from_image[key], from_array[key]) for key in from_image)


def test_transforms_reject_arrays_that_are_not_rgb_uint8():
    with pytest.raises(ValueError, match=r"\(height, width, 3\) uint8 array, got float32 \(8, 8, 3\)"):
        mixedae_pretraining_transform(16)(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"got uint8 \(8, 8\)"):
        EvaluationTransform(16)(np.zeros((8, 8), np.uint8))


def test_stream_gives_arrays_only_to_transforms_that_accept_them():
    jpeg = {"bytes": encoded(photo_like(20, 10, seed=4), "JPEG"), "path": "photo.jpg"}
    seen = []

    def pil_only(image, generator=None):
        seen.append(type(image))
        return {"pixel_values": torch.zeros(1)}

    class Recording(EvaluationTransform):
        def __call__(self, image, generator=None):
            seen.append(type(image))
            return super().__call__(image, generator)

    for transform in (pil_only, SeededTransform(pil_only, 0, 0), SeededTransform(Recording(8), 0, 0)):
        items = list(DecodedImageStream([{"image": jpeg}], transform, label_column_name=None))
        assert len(items) == 1
    assert issubclass(seen[0], Image.Image) and issubclass(seen[1], Image.Image) and seen[2] is np.ndarray


def test_wide_range_float_images_are_min_max_scaled():
    pixels = np.array([[-50.0, 1000.0]], dtype=np.float32)
    image = load_rgb_image(encoded(Image.fromarray(pixels), "TIFF"))
    assert image.getpixel((0, 0)) == (0, 0, 0) and image.getpixel((1, 0)) == (255, 255, 255)


# ---------------------------------------------------------------------------------------------- corrupt files
def truncated_jpeg() -> bytes:
    data = encoded(gradient_image(64, 64), "JPEG", quality=90)
    return data[: len(data) // 2]


CORRUPT = {
    "truncated.jpg": truncated_jpeg(),
    "zero-bytes.png": b"",
    "not-an-image.png": b"this is a text file, not an image",
    "truncated.png": encoded(gradient_image(), "PNG")[:60],
}


@pytest.mark.parametrize("decode", [load_rgb_image, decode_rgb])
@pytest.mark.parametrize("name", list(CORRUPT))
def test_corrupt_bytes_raise_undecodable_naming_the_sample(name, decode):
    with pytest.raises(UndecodableImageError) as raised:
        decode({"bytes": CORRUPT[name], "path": name})
    assert raised.value.identifier == name


def test_corrupt_bytes_without_a_path_are_named_by_their_hash():
    data = CORRUPT["not-an-image.png"]
    with pytest.raises(UndecodableImageError, match="cannot decode image <33 bytes, sha1 [0-9a-f]{12}>"):
        load_rgb_image({"bytes": data, "path": None})


@pytest.fixture(scope="module")
def corrupt_shards(tmp_path_factory):
    """20 good samples and the corrupt ones, spread over 2 Parquet shards."""
    root = tmp_path_factory.mktemp("corrupt")
    images = [solid_image(i) for i in range(20)]
    for position, (name, data) in zip((0, 3, 11, 19), CORRUPT.items()):
        images.insert(position, {"bytes": data, "path": name})
    write_shards(root, {"image": images, "label": [0] * len(images)}, 2, "train")
    return root


def test_corrupt_samples_are_skipped_counted_and_named_while_batches_stay_full(corrupt_shards):
    train = load_image_dataset(train_dir=str(corrupt_shards), streaming=True).train
    loader = build_pretraining_dataloader(train, identify, batch_size=4, seed=0, drop_last=False)
    sizes = [len(batch["pixel_values"]) for batch in loader]
    assert sizes == [4] * 5
    assert loader.stats.num_skipped == len(CORRUPT) and loader.stats.num_loaded == 20
    assert {identifier for identifier, _ in loader.stats.skipped} == set(CORRUPT)
    assert "truncated.jpg" in loader.stats.summary()


def test_the_skipped_sample_summary_names_the_first_eight_and_counts_the_unrecorded_rest():
    from transformers_mixedae.data.streaming import SkippedSampleStats

    stats = SkippedSampleStats(num_loaded=5, max_recorded=10)
    for index in range(12):
        stats.record_skipped(f"s{index}.jpg", "UnidentifiedImageError: cannot identify")
    assert len(stats.skipped) == 10
    assert stats.summary() == ("5 samples loaded, 12 undecodable skipped, 0 trimmed; skipped: s0.jpg, s1.jpg, s2.jpg, "
                               "s3.jpg, s4.jpg, s5.jpg, s6.jpg, s7.jpg, and 4 more; reasons: "
                               "{'UnidentifiedImageError': 12}")


def test_corrupt_samples_can_be_fatal(corrupt_shards):
    train = load_image_dataset(train_dir=str(corrupt_shards), streaming=True).train
    loader = build_pretraining_dataloader(train, identify, batch_size=4, seed=0, skip_undecodable=False)
    with pytest.raises(UndecodableImageError, match="cannot decode image"):
        list(loader)


def test_corrupt_file_in_image_folder_is_reported_by_path(tmp_path):
    for split in ("train", "val"):
        for label in ("cats", "dogs"):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            for index in range(3):
                Image.new("RGB", (9, 7), (index, 0, 0)).save(folder / f"{index}.png")
    (tmp_path / "train" / "dogs" / "broken.jpg").write_bytes(truncated_jpeg())
    loaded = load_image_dataset(data_dir=str(tmp_path), streaming=True)
    assert loaded.label_names == ["cats", "dogs"]
    loader = build_pretraining_dataloader(loaded.train, mixedae_pretraining_transform(8), 2, drop_last=False)
    batches = list(loader)
    assert sum(len(batch["labels"]) for batch in batches) == 6
    assert loader.stats.num_skipped == 1 and loader.stats.skipped[0][0].endswith("broken.jpg")


def test_a_dataset_without_a_validation_split_evaluates_on_the_split_named(tmp_path, caplog):
    for split in ("train", "test"):  # as cifar10 or mnist on the Hub
        for label in ("cats", "dogs"):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            for index in range(2 if split == "test" else 3):
                Image.new("RGB", (9, 7), (index, 0, 0)).save(folder / f"{index}.png")
    with caplog.at_level(logging.WARNING):
        assert load_image_dataset(data_dir=str(tmp_path)).validation is None
    assert ("has no 'validation' split (splits: ['train', 'test']): the run will not evaluate. Pass "
            "--validation_split_name test (or another split with labels) to evaluate on it.") in caplog.text
    loaded = load_image_dataset(data_dir=str(tmp_path), validation_split_name="test")
    assert len(loaded.validation) == 4 and len(loaded.train) == 6

    # The run's flag reaches the loader (a local folder given as --dataset_name, as a Hub id would be).
    from transformers_mixedae.tasks.masked_image_modeling_data import load_run_datasets
    from transformers_mixedae.training.arguments import DataArguments, TrainingArguments

    data_args = DataArguments(dataset_name=str(tmp_path), validation_split_name="test")
    assert len(load_run_datasets(data_args, TrainingArguments(output_dir=str(tmp_path / "out"))).validation) == 4


def test_collator_drops_bad_items_and_trims_to_the_batch_multiple():
    good = [{"pixel_values": torch.full((3, 2, 2), float(i)), "labels": i} for i in range(7)]
    report = {"_skipped_samples": [("bad.jpg", "OSError: truncated")]}
    batch = SkipAwareCollator(batch_multiple=4)([None, *good[:3], report, *good[3:]])
    assert batch["pixel_values"].shape == (4, 3, 2, 2) and batch["labels"].tolist() == [0, 1, 2, 3]
    assert batch["num_trimmed"] == 3 and batch["skipped_samples"] == [("bad.jpg", "OSError: truncated")]
    empty = SkipAwareCollator(batch_multiple=4)(good[:2])
    assert "pixel_values" not in empty and empty["num_trimmed"] == 2
