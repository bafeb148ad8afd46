# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Build the embedded dense (semantic-segmentation) benchmark from the embedded Fashion-MNIST subset.

Input: the embedded default dataset (`src/transformers_mixedae/data/default/`, built by
`scripts/build_default_dataset.py`); no download.

    python3 scripts/build_dense_dataset.py

Output (`src/transformers_mixedae/data/default_dense/`): `train-0000k-of-00002.parquet` (1,800 scenes whose items
come only from the default train shards), `validation-00000-of-00001.parquet` (450 scenes whose items come only
from the default validation shards, themselves from the Fashion-MNIST test split), and `provenance.json` (the
folder's `README.md`, kept by hand, describes them). Columns: `image` (`datasets.Image`, 64x64 RGB PNG) and
`annotation` (`datasets.Image`, 64x64 single-channel PNG of class ids: 0 = background, 1 + Fashion-MNIST label for
an item's pixels), i.e. the layout of Hub semantic-segmentation datasets such as `scene_parse_150`.

Each scene: a background (a plain colour, or a colour with a smooth low-frequency variation), then 2-4
distinct Fashion-MNIST items, each resized to a random square size, tinted with a random colour and pasted at
a random position fully inside the canvas; later items occlude earlier ones. An item's pixels are those of its
resized grey image at or above `ITEM_THRESHOLD`, so the mask follows the garment's shape (holes included), and
exactly those pixels are painted: the annotation and the image agree pixel for pixel. A placement that would
leave an earlier item with less than `MIN_VISIBLE_FRACTION` of its pixels visible is redrawn, so every item
of a scene shows in its annotation.

Every scene is drawn from its own generator seeded by (seed, split, scene index), so any scene can be rebuilt
alone (the tests do) and re-running the script reproduces the shards byte for byte with the same library
versions.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
from PIL import Image

# The default dataset's builder is a sibling script, not a package module: its label names, PNG encoding and
# sharding are reused from there.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_default_dataset import FASHION_MNIST_LABEL_NAMES, png_bytes, write_shards  # noqa: E402

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIR = REPOSITORY_ROOT / "src" / "transformers_mixedae" / "data" / "default"
OUTPUT_DIR = REPOSITORY_ROOT / "src" / "transformers_mixedae" / "data" / "default_dense"
BACKGROUND_LABEL = "background"
ID2LABEL = {0: BACKGROUND_LABEL, **{1 + index: name for index, name in enumerate(FASHION_MNIST_LABEL_NAMES)}}
SPLITS = ("train", "validation")
# Grey value (0-255, after resizing) from which a pixel belongs to the item: Fashion-MNIST backgrounds are 0,
# garments mostly well above; dark patterns inside a garment stay holes, painted as background.
ITEM_THRESHOLD = 32
MIN_VISIBLE_FRACTION = 0.3
MAX_PLACEMENT_TRIES = 50
# Coarse colour steps keep the PNGs small (about 1.4 KB per scene instead of 3.2 KB with full shading): an
# item's grey shading is kept in 8 levels, the background's smooth variation in steps of 16.
ITEM_GREY_STEP = 32
BACKGROUND_STEP = 16


@dataclass(frozen=True)
class SceneSettings:
    canvas_size: int = 64
    min_items: int = 2
    max_items: int = 4
    min_item_size: int = 16
    max_item_size: int = 40


@dataclass(frozen=True)
class Placement:
    """One pasted item: its row in the split's source pool, label, size and top-left corner."""

    source_index: int
    label: int
    size: int
    top: int
    left: int


def read_source_split(split: str, source_dir: Path = SOURCE_DIR) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Grey 28x28 images (N, 28, 28) uint8, labels (N,) and source paths of one split of the default dataset."""
    files = sorted(source_dir.glob(f"{split}-*.parquet"))
    if not files:
        raise FileNotFoundError(f"no {split}-*.parquet shards in {source_dir}; run scripts/build_default_dataset.py")
    images, labels, paths = [], [], []
    for path in files:
        table = pq.read_table(path, columns=["image", "label"]).to_pydict()
        for image, label in zip(table["image"], table["label"]):
            images.append(np.asarray(Image.open(io.BytesIO(image["bytes"])).convert("L")))
            labels.append(int(label))
            paths.append(image["path"])
    return np.stack(images), np.asarray(labels, dtype=np.int64), paths


def scene_rng(seed: int, split: str, scene_index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS.index(split), scene_index])


def draw_background(rng: np.random.Generator, canvas_size: int) -> np.ndarray:
    """(H, W, 3) uint8: a plain colour, or (half the scenes) a colour plus a smooth bilinear 4x4 noise field."""
    colour = rng.integers(0, 256, size=3).astype(np.float64)
    background = np.broadcast_to(colour, (canvas_size, canvas_size, 3)).copy()
    if rng.random() < 0.5:
        # Low-frequency noise keeps the PNGs small (per-pixel noise would not compress) and the task non-trivial.
        grid = rng.normal(0.0, 30.0, size=(4, 4, 3)).astype(np.float32)
        channels = [
            np.asarray(Image.fromarray(grid[..., c], mode="F").resize((canvas_size, canvas_size), Image.BILINEAR))
            for c in range(3)
        ]
        background += np.stack(channels, axis=-1)
    return np.clip(np.rint(background / BACKGROUND_STEP) * BACKGROUND_STEP, 0, 255).astype(np.uint8)


def item_mask_and_grey(grey: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """An item resized to `size`: its mask (grey >= ITEM_THRESHOLD) and its shading in 8 grey levels."""
    resized = np.asarray(Image.fromarray(grey).resize((size, size), Image.BILINEAR))
    shading = (resized // ITEM_GREY_STEP) * ITEM_GREY_STEP + ITEM_GREY_STEP // 2
    return resized >= ITEM_THRESHOLD, shading.astype(np.uint8)


def draw_scene(
    rng: np.random.Generator, pool_labels: np.ndarray, pool_images: np.ndarray, settings: SceneSettings
) -> tuple[np.ndarray, list[Placement], list[np.ndarray]]:
    """Background, placements and their tint colours, drawn in a fixed order from `rng`."""
    background = draw_background(rng, settings.canvas_size)
    num_items = int(rng.integers(settings.min_items, settings.max_items + 1))
    sources = rng.choice(len(pool_labels), size=num_items, replace=False)
    placements: list[Placement] = []
    tints: list[np.ndarray] = []
    owner = np.full((settings.canvas_size, settings.canvas_size), -1, dtype=np.int64)
    for item, source in enumerate(sources):
        tint = rng.integers(64, 256, size=3)
        for _ in range(MAX_PLACEMENT_TRIES):
            size = int(rng.integers(settings.min_item_size, settings.max_item_size + 1))
            top, left = (int(v) for v in rng.integers(0, settings.canvas_size - size + 1, size=2))
            mask, _ = item_mask_and_grey(pool_images[source], size)
            candidate = owner.copy()
            candidate[top : top + size, left : left + size][mask] = item
            if all(
                _visible_fraction(candidate, earlier, placements[earlier], pool_images) >= MIN_VISIBLE_FRACTION
                for earlier in range(item)
            ):
                break
        # After MAX_PLACEMENT_TRIES the last draw is kept: rare, and the scene is still valid (checked by tests).
        owner = candidate
        placements.append(Placement(int(source), int(pool_labels[source]), size, top, left))
        tints.append(tint)
    return background, placements, tints


def _visible_fraction(owner: np.ndarray, item: int, placement: Placement, pool_images: np.ndarray) -> float:
    total = int(item_mask_and_grey(pool_images[placement.source_index], placement.size)[0].sum())
    return float((owner == item).sum()) / max(total, 1)


def render(
    background: np.ndarray, placements: list[Placement], tints: list[np.ndarray], pool_images: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Paste the items in order: (image (H, W, 3) uint8, annotation (H, W) uint8 class ids)."""
    image = background.copy()
    annotation = np.zeros(background.shape[:2], dtype=np.uint8)
    for placement, tint in zip(placements, tints):
        mask, grey = item_mask_and_grey(pool_images[placement.source_index], placement.size)
        window = (slice(placement.top, placement.top + placement.size), slice(placement.left, placement.left + placement.size))
        # The item keeps its grey shading, scaled into its tint colour.
        colour = np.rint(grey[..., None].astype(np.float64) * tint / 255.0).astype(np.uint8)
        image[window][mask] = colour[mask]
        annotation[window][mask] = 1 + placement.label
    return image, annotation


def build_scene(
    seed: int, split: str, scene_index: int, pool_images: np.ndarray, pool_labels: np.ndarray, settings: SceneSettings
) -> tuple[np.ndarray, np.ndarray, list[Placement]]:
    background, placements, tints = draw_scene(scene_rng(seed, split, scene_index), pool_labels, pool_images, settings)
    image, annotation = render(background, placements, tints, pool_images)
    return image, annotation, placements


def to_dataset(split: str, scenes: list[tuple[np.ndarray, np.ndarray]]) -> datasets.Dataset:
    features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
    records = {
        "image": [{"bytes": png_bytes(image), "path": f"{split}/{index:05d}.png"} for index, (image, _) in enumerate(scenes)],
        "annotation": [
            {"bytes": png_bytes(annotation), "path": f"{split}/{index:05d}_annotation.png"}
            for index, (_, annotation) in enumerate(scenes)
        ],
    }
    return datasets.Dataset.from_dict(records, features=features)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source_dir", type=Path, default=SOURCE_DIR)
    parser.add_argument("--output_dir", type=Path, default=OUTPUT_DIR)
    parser.add_argument("--train_scenes", type=int, default=1800)
    parser.add_argument("--validation_scenes", type=int, default=450)
    parser.add_argument("--train_shards", type=int, default=2)
    parser.add_argument("--validation_shards", type=int, default=1)
    parser.add_argument("--canvas_size", type=int, default=SceneSettings.canvas_size)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    datasets.disable_progress_bars()
    settings = SceneSettings(canvas_size=args.canvas_size)
    if settings.max_item_size > settings.canvas_size:
        raise ValueError(f"--canvas_size {args.canvas_size} is smaller than the largest item ({settings.max_item_size})")
    start = time.perf_counter()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for stale in args.output_dir.glob("*.parquet"):
        stale.unlink()
    counts = {"train": (args.train_scenes, args.train_shards), "validation": (args.validation_scenes, args.validation_shards)}
    provenance_splits = {}
    for split, (num_scenes, num_shards) in counts.items():
        pool_images, pool_labels, pool_paths = read_source_split(split, args.source_dir)
        scenes = []
        for index in range(num_scenes):
            image, annotation, _ = build_scene(args.seed, split, index, pool_images, pool_labels, settings)
            scenes.append((image, annotation))
        files = write_shards(to_dataset(split, scenes), split, num_shards, args.output_dir)
        source_splits = sorted({path.split("/")[1] for path in pool_paths})
        provenance_splits[split] = {
            "num_examples": num_scenes,
            "item_source": f"default dataset {split} shards (Fashion-MNIST {', '.join(source_splits)} split)",
            "files": {name: {"sha256": sha256(args.output_dir / name), "bytes": (args.output_dir / name).stat().st_size} for name in files},
        }
        print(f"{split}: {num_scenes} scenes -> {', '.join(files)}")

    command = (
        "python3 scripts/build_dense_dataset.py"
        f" --train_scenes {args.train_scenes} --validation_scenes {args.validation_scenes}"
        f" --train_shards {args.train_shards} --validation_shards {args.validation_shards}"
        f" --canvas_size {args.canvas_size} --seed {args.seed}"
    )
    provenance = {
        "name": "Fashion-MNIST scenes (semantic segmentation)",
        "source": "Fashion-MNIST by Zalando Research, https://github.com/zalandoresearch/fashion-mnist, "
        "via the embedded default dataset (transformers_mixedae/data/default)",
        "license": "MIT (Expat), Copyright 2017 Zalando SE",
        "generator": "scripts/build_dense_dataset.py",
        "command": command,
        "seed": args.seed,
        "canvas_size": settings.canvas_size,
        "items_per_scene": [settings.min_items, settings.max_items],
        "item_size_range": [settings.min_item_size, settings.max_item_size],
        "item_threshold": ITEM_THRESHOLD,
        "min_visible_fraction": MIN_VISIBLE_FRACTION,
        "columns": {
            "image": f"{settings.canvas_size}x{settings.canvas_size} RGB PNG",
            "annotation": f"{settings.canvas_size}x{settings.canvas_size} single-channel (L) PNG of class ids",
        },
        "num_labels": len(ID2LABEL),
        "id2label": {str(key): value for key, value in ID2LABEL.items()},
        "splits": provenance_splits,
    }
    (args.output_dir / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.output_dir} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
