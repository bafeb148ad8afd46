# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Build the embedded default dataset: a class-balanced Fashion-MNIST subset stored as Parquet shards.

Input: Debian's `dataset-fashion-mnist` package (gzipped IDX files). Install it first:

    apt-get update && apt-get install -y dataset-fashion-mnist
    python3 scripts/build_default_dataset.py

Output (`src/transformers_mixedae/data/default/`): `train-0000k-of-00004.parquet` (600 images per class
from the Fashion-MNIST train split), `validation-00000-of-00001.parquet` (100 per class from the test
split), `provenance.json` and `README.md`. Columns: `image` (`datasets.Image`, PNG bytes, the original
IDX index kept in the `path` field) and `label` (`ClassLabel` with the 10 Fashion-MNIST names); the same
schema as the Parquet copy of ImageNet-1k on the Hub, so the embedded default goes through the ImageNet
streaming code path. The selection and order depend only on `--seed`, so re-running the script
reproduces the shards.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import struct
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
OUTPUT_DIR = Path(__file__).resolve().parent.parent / "src" / "transformers_mixedae" / "data" / "default"
# Label order of the Fashion-MNIST README (index = label id in the IDX label files).
FASHION_MNIST_LABEL_NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
# IDX header: two zero bytes, a data-type code (0x08 = unsigned byte) and the number of dimensions.
IDX_UNSIGNED_BYTE = 0x08


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (big-endian uint32 dimension sizes, then uint8 data)."""
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    zero, data_type, num_dims = struct.unpack(">HBB", raw[:4])
    if zero != 0 or data_type != IDX_UNSIGNED_BYTE:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (header {raw[:4]!r})")
    shape = struct.unpack(f">{num_dims}I", raw[4 : 4 + 4 * num_dims])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * num_dims)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: {data.size} bytes of data for shape {shape}")
    return data.reshape(shape)


def balanced_subset(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """`per_class` indices of every class, drawn without replacement, in a random (class-mixed) order."""
    chosen = []
    for label in range(len(FASHION_MNIST_LABEL_NAMES)):
        candidates = np.flatnonzero(labels == label)
        if len(candidates) < per_class:
            raise ValueError(f"class {label} has {len(candidates)} examples, fewer than {per_class}")
        chosen.append(rng.choice(candidates, size=per_class, replace=False))
    # Mixing the classes before sharding makes every shard (and every rank's part of the stream) balanced.
    return rng.permutation(np.concatenate(chosen))


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def to_dataset(images: np.ndarray, labels: np.ndarray, indices: np.ndarray, source_split: str) -> datasets.Dataset:
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=FASHION_MNIST_LABEL_NAMES)}
    )
    records = {
        "image": [
            {"bytes": png_bytes(images[index]), "path": f"fashion-mnist/{source_split}/{index:05d}.png"}
            for index in indices
        ],
        "label": [int(labels[index]) for index in indices],
    }
    return datasets.Dataset.from_dict(records, features=features)


def write_shards(dataset: datasets.Dataset, split: str, num_shards: int, output_dir: Path) -> list[str]:
    names = []
    for shard_index in range(num_shards):
        name = f"{split}-{shard_index:05d}-of-{num_shards:05d}.parquet"
        dataset.shard(num_shards, shard_index, contiguous=True).to_parquet(str(output_dir / name))
        names.append(name)
    return names


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source_dir", type=Path, default=FASHION_MNIST_DIR)
    parser.add_argument("--output_dir", type=Path, default=OUTPUT_DIR)
    parser.add_argument("--train_per_class", type=int, default=600)
    parser.add_argument("--validation_per_class", type=int, default=100)
    parser.add_argument("--train_shards", type=int, default=4)
    parser.add_argument("--validation_shards", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    datasets.disable_progress_bars()
    rng = np.random.default_rng(args.seed)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for stale in args.output_dir.glob("*.parquet"):
        stale.unlink()

    splits = {
        # our split name: (Fashion-MNIST file prefix, its split name, images per class, shards)
        "train": ("train", "train", args.train_per_class, args.train_shards),
        "validation": ("t10k", "test", args.validation_per_class, args.validation_shards),
    }
    provenance_splits = {}
    for split, (prefix, source_split, per_class, num_shards) in splits.items():
        images = read_idx(args.source_dir / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(args.source_dir / f"{prefix}-labels-idx1-ubyte.gz")
        indices = balanced_subset(labels, per_class, rng)
        files = write_shards(to_dataset(images, labels, indices, source_split), split, num_shards, args.output_dir)
        provenance_splits[split] = {
            "source_split": source_split,
            "num_examples": len(indices),
            "examples_per_class": per_class,
            "files": files,
        }
        print(f"{split}: {len(indices)} images from Fashion-MNIST {source_split} -> {', '.join(files)}")

    command = (
        "apt-get install -y dataset-fashion-mnist && python3 scripts/build_default_dataset.py"
        f" --train_per_class {args.train_per_class} --validation_per_class {args.validation_per_class}"
        f" --train_shards {args.train_shards} --validation_shards {args.validation_shards} --seed {args.seed}"
    )
    provenance = {
        "name": "Fashion-MNIST balanced subset",
        "source": "Fashion-MNIST by Zalando Research, https://github.com/zalandoresearch/fashion-mnist",
        "source_package": "Debian dataset-fashion-mnist (files in /usr/share/datasets/fashion-mnist/)",
        "license": "MIT (Expat), Copyright 2017 Zalando SE",
        "command": command,
        "seed": args.seed,
        "image_format": "28x28 grayscale PNG; path field = fashion-mnist/<source split>/<IDX index>.png",
        "label_names": FASHION_MNIST_LABEL_NAMES,
        "splits": provenance_splits,
    }
    (args.output_dir / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.output_dir}")


if __name__ == "__main__":
    main()
