# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Patch masks for masked image modeling: BEiT/CAE block-wise masking and uniform random masking.

Both generators return a boolean `(height, width)` NumPy array (True = masked) with exactly the requested number of
masked patches, draw from their own seedable random source (never the global one), and are used by
`CAEImageProcessor(return_bool_masked_pos=True)`, by `MaskingDataCollator` and by `CAEForPreTraining` when no mask
is passed.
"""

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# Official block masking tries this many blocks per step before drawing again (CAE masking_generator).
ATTEMPTS_PER_BLOCK = 10
# Guard against settings in which no block fits any more; CAE's own loop would spin forever there. With the
# official settings a mask needs under 20 rounds (at most 80 seen for a 4x4 grid with 16-patch blocks).
MAX_BLOCK_ROUNDS = 1_000


def _grid(input_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(input_size, (list, tuple)):
        height, width = input_size
        return int(height), int(width)
    return int(input_size), int(input_size)


def _check_count(num_masking_patches: int, num_patches: int) -> None:
    if not 0 <= num_masking_patches <= num_patches:
        raise ValueError(f"num_masking_patches={num_masking_patches} must be between 0 and {num_patches} (grid size).")


@dataclass(frozen=True)
class MaskBlock:
    """One accepted block: where it lies, what was drawn for it, and how many new patches it masked."""

    top: int
    left: int
    height: int
    width: int
    target_area: float
    aspect_ratio: float
    newly_masked: int


class _OwnStreamPerWorker:
    """A generator's own random source, split per DataLoader worker.

    Workers start as copies of the main process's collator or image processor, generator state included, so without
    this every worker would draw the same sequence of masks. In a worker, a generator that made its own source
    re-seeds it once from the worker's seed (which DataLoader derives from torch's RNG, per worker and per epoch)
    mixed with its own `seed`: the workers draw different masks, and a run seeded with `torch.manual_seed` draws the
    same ones again. A source passed in as `rng` is the caller's and is left alone."""

    def _init_stream(self, seed: int | None, rng: Any, new_stream: Callable[[int | None], Any]) -> None:
        self.rng = rng if rng is not None else new_stream(seed)
        self._seed, self._new_stream = seed, (new_stream if rng is None else None)
        self._worker_seed: int | None = None

    def _stream(self):
        info = torch.utils.data.get_worker_info()
        if info is not None and self._new_stream is not None and info.seed != self._worker_seed:
            self._worker_seed = info.seed
            entropy = [info.seed] if self._seed is None else [info.seed, self._seed]
            self.rng = self._new_stream(int(np.random.SeedSequence(entropy).generate_state(1)[0]))
        return self.rng


class BlockMaskGenerator(_OwnStreamPerWorker):
    """BEiT block-wise masking with CAE's exact count.

    Blocks are added until exactly `num_masking_patches` patches are masked. For each block (at most 10 attempts):
    area ~ U(min_num_patches, max), with max = min(remaining, max_num_patches); aspect = exp(U(log min_aspect,
    log max_aspect)); h = round(sqrt(area * aspect)), w = round(sqrt(area / aspect)); the block must be strictly
    smaller than the grid, its top-left corner is uniform, and it is accepted when it masks between 1 and `max` new
    patches. The draws are made in the official order from a private `random.Random`, so the same seed gives the
    same mask as the official generator after `random.seed(seed)`.

    Args:
        input_size: Patch grid, an int or (height, width).
        num_masking_patches: Exact number of masked patches per mask (CAE: 98 of 14x14).
        min_num_patches: Smallest block area drawn (16).
        max_num_patches: Largest block area drawn; `None` means `num_masking_patches`.
        min_aspect: Smallest aspect ratio h/w drawn (0.3); `max_aspect` defaults to `1 / min_aspect`.
        seed: Seed of the generator's own random source (`None`: nondeterministic).
        rng: A `random.Random` to draw from instead (overrides `seed`).
    """

    def __init__(
        self,
        input_size: int | Sequence[int],
        num_masking_patches: int,
        min_num_patches: int = 16,
        max_num_patches: int | None = None,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
        seed: int | None = None,
        rng: random.Random | None = None,
    ):
        self.height, self.width = _grid(input_size)
        if self.height < 2 or self.width < 2:
            raise ValueError(
                f"block masking needs a grid of at least 2x2 patches (blocks are strictly smaller than the grid), "
                f"got {self.height}x{self.width}; use RandomMaskGenerator."
            )
        _check_count(num_masking_patches, self.height * self.width)
        if min_num_patches < 1:
            raise ValueError(f"min_num_patches={min_num_patches} must be >= 1.")
        if min_aspect <= 0:
            raise ValueError(f"min_aspect={min_aspect} must be > 0.")
        max_aspect = 1.0 / min_aspect if max_aspect is None else max_aspect
        if max_aspect < min_aspect:
            raise ValueError(f"max_aspect={max_aspect} must be >= min_aspect={min_aspect}.")
        self.num_masking_patches = num_masking_patches
        self.min_num_patches = min_num_patches
        self.max_num_patches = num_masking_patches if max_num_patches is None else max_num_patches
        self.min_aspect, self.max_aspect = min_aspect, max_aspect
        self.log_aspect_range = (math.log(min_aspect), math.log(max_aspect))
        self._init_stream(seed, rng, random.Random)

    @property
    def num_patches(self) -> int:
        return self.height * self.width

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(grid={self.height}x{self.width}, num_masking_patches={self.num_masking_patches}, "
            f"block area {self.min_num_patches}..{self.max_num_patches}, aspect {self.min_aspect:.3g}.."
            f"{self.max_aspect:.3g})"
        )

    def _add_block(self, mask: np.ndarray, max_new_patches: int) -> MaskBlock | None:
        for _ in range(ATTEMPTS_PER_BLOCK):
            target_area = self.rng.uniform(self.min_num_patches, max_new_patches)
            aspect_ratio = math.exp(self.rng.uniform(*self.log_aspect_range))
            block_height = int(round(math.sqrt(target_area * aspect_ratio)))
            block_width = int(round(math.sqrt(target_area / aspect_ratio)))
            if block_width >= self.width or block_height >= self.height:
                continue
            top = self.rng.randint(0, self.height - block_height)
            left = self.rng.randint(0, self.width - block_width)
            window = mask[top : top + block_height, left : left + block_width]
            newly_masked = block_height * block_width - int(window.sum())
            if 0 < newly_masked <= max_new_patches:
                window[...] = True
                return MaskBlock(top, left, block_height, block_width, target_area, aspect_ratio, newly_masked)
        return None

    def generate_with_blocks(self) -> tuple[np.ndarray, list[MaskBlock]]:
        """A mask and the blocks that built it, in order (for inspection and tests)."""
        self._stream()
        mask = np.zeros((self.height, self.width), dtype=bool)
        blocks: list[MaskBlock] = []
        masked = 0
        for _ in range(MAX_BLOCK_ROUNDS):
            if masked == self.num_masking_patches:
                return mask, blocks
            max_new_patches = min(self.num_masking_patches - masked, self.max_num_patches)
            block = self._add_block(mask, max_new_patches)
            if block is not None:
                blocks.append(block)
                masked += block.newly_masked
        # Pathological settings only (no block can fit any more): finish with single random patches so the count
        # stays exact.
        free = np.flatnonzero(~mask.reshape(-1))
        chosen = self.rng.sample(list(free), self.num_masking_patches - masked)
        mask.reshape(-1)[chosen] = True
        return mask, blocks

    def __call__(self) -> np.ndarray:
        return self.generate_with_blocks()[0]


class RandomMaskGenerator(_OwnStreamPerWorker):
    """Exactly `num_masking_patches` patches chosen uniformly without replacement (CAE's `--mask_generator random`).

    Args:
        input_size: Patch grid, an int or (height, width).
        num_masking_patches: Exact number of masked patches per mask.
        seed: Seed of the generator's own `numpy.random.Generator` (`None`: nondeterministic).
        rng: A `numpy.random.Generator` to draw from instead (overrides `seed`).
    """

    def __init__(
        self,
        input_size: int | Sequence[int],
        num_masking_patches: int,
        seed: int | None = None,
        rng: np.random.Generator | None = None,
    ):
        self.height, self.width = _grid(input_size)
        _check_count(num_masking_patches, self.height * self.width)
        self.num_masking_patches = num_masking_patches
        self._init_stream(seed, rng, np.random.default_rng)

    @property
    def num_patches(self) -> int:
        return self.height * self.width

    def __repr__(self) -> str:
        return f"{type(self).__name__}(grid={self.height}x{self.width}, num_masking_patches={self.num_masking_patches})"

    def __call__(self) -> np.ndarray:
        mask = np.zeros(self.num_patches, dtype=bool)
        mask[self._stream().choice(self.num_patches, self.num_masking_patches, replace=False)] = True
        return mask.reshape(self.height, self.width)


MaskGenerator = BlockMaskGenerator | RandomMaskGenerator


def build_mask_generator(
    mask_type: str, input_size: int | Sequence[int], num_masking_patches: int, seed: int | None = None, **block_options
) -> MaskGenerator:
    """`"block"` -> `BlockMaskGenerator` (`block_options`: `min_num_patches`, `max_num_patches`, `min_aspect`,
    `max_aspect`), `"random"` -> `RandomMaskGenerator` (block options are ignored)."""
    if mask_type == "block":
        return BlockMaskGenerator(input_size, num_masking_patches, seed=seed, **block_options)
    if mask_type == "random":
        return RandomMaskGenerator(input_size, num_masking_patches, seed=seed)
    raise ValueError(f"mask_type={mask_type!r} must be 'block' or 'random'.")


def mask_generator_from_settings(
    settings: Mapping[str, Any] | Any, grid_size: Sequence[int], num_masking_patches: int, seed: int | None = None
) -> MaskGenerator:
    """The generator described by the `mask_type` and `mask_*` block options of a `CAEConfig` or of image processor
    keyword arguments (a mapping)."""

    def setting(name: str):
        return settings[name] if isinstance(settings, Mapping) else getattr(settings, name)

    return build_mask_generator(
        setting("mask_type"),
        grid_size,
        num_masking_patches,
        seed=seed,
        min_num_patches=setting("mask_min_num_patches"),
        max_num_patches=setting("mask_max_num_patches"),
        min_aspect=setting("mask_min_aspect"),
        max_aspect=setting("mask_max_aspect"),
    )


def mask_generator_from_config(
    config, grid_size: Sequence[int] | None = None, seed: int | None = None
) -> MaskGenerator:
    """The generator a `CAEConfig` describes, for its own patch grid or for `grid_size` (count scaled by area)."""
    grid_size = tuple(config.grid_size) if grid_size is None else tuple(grid_size)
    num_masking_patches = config.num_masking_patches
    if grid_size != tuple(config.grid_size):
        num_masking_patches = round(num_masking_patches * grid_size[0] * grid_size[1] / config.num_patches)
    return mask_generator_from_settings(config, grid_size, num_masking_patches, seed=seed)


def stack_masks(masks: Sequence[np.ndarray]) -> torch.Tensor:
    """Masks of shape `(height, width)` -> `bool_masked_pos` `(batch, height * width)` in raster order."""
    return torch.from_numpy(np.stack([np.asarray(mask, dtype=bool).reshape(-1) for mask in masks]))


class MaskingDataCollator:
    """Collate a batch and add `bool_masked_pos` `(batch, num_patches)`, one fresh mask per example.

    Args:
        mask_generator: Called once per example; returns a `(height, width)` mask (`BlockMaskGenerator`,
            `RandomMaskGenerator` or any callable).
        base_collator: Builds the batch from the examples (default: `transformers.default_data_collator`).

    Example:

    ```python
    >>> from torch.utils.data import DataLoader
    >>> from transformers_mixedae.models.masking import BlockMaskGenerator, MaskingDataCollator
    >>> collator = MaskingDataCollator(BlockMaskGenerator((14, 14), 98, seed=0))
    >>> loader = DataLoader(dataset, batch_size=64, collate_fn=collator)  # batches gain "bool_masked_pos"
    ```
    """

    def __init__(self, mask_generator: Callable[[], np.ndarray], base_collator: Callable | None = None):
        if base_collator is None:
            from transformers import default_data_collator

            base_collator = default_data_collator
        self.mask_generator = mask_generator
        self.base_collator = base_collator

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = dict(self.base_collator(examples))
        batch["bool_masked_pos"] = stack_masks([self.mask_generator() for _ in examples])
        return batch


class PretrainingDataCollator:
    """Batches of `pixel_values` for a MixedAE or CAE pre-training model, e.g. as `transformers.Trainer`'s
    `data_collator`.

    Stacks the examples' `pixel_values`, keeps a multiple of the model's group size (MixedAE mixes groups of
    g = 1/mixing_ratio images; a short last batch loses its remainder, as `drop_last` would) and, for a model whose
    config describes a mask generator (CAE: `mask_type`, `num_masking_patches`, ...), adds one fresh
    `bool_masked_pos` per image drawn as in pre-training.

    Args:
        config: The model's config (`MixedAEConfig` or `CAEConfig`).
        seed: Seed of the mask generator (`None`: a fresh one each run).
    """

    def __init__(self, config: Any, seed: int | None = None):
        self.group_size = getattr(config, "group_size", 1)
        self.mask_generator = mask_generator_from_config(config, seed=seed) if hasattr(config, "mask_type") else None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        kept = len(examples) - len(examples) % self.group_size
        if kept == 0:
            raise ValueError(
                f"a batch of {len(examples)} images has no full group of {self.group_size} for MixedAE's mixing: use a "
                f"batch size that is a multiple of {self.group_size}."
            )
        pixel_values = [torch.as_tensor(example["pixel_values"]) for example in examples[:kept]]
        batch = {"pixel_values": torch.stack(pixel_values)}
        if self.mask_generator is not None:
            batch["bool_masked_pos"] = stack_masks([self.mask_generator() for _ in range(kept)])
        return batch


__all__ = [
    "BlockMaskGenerator",
    "MaskBlock",
    "MaskingDataCollator",
    "PretrainingDataCollator",
    "RandomMaskGenerator",
    "build_mask_generator",
    "mask_generator_from_config",
    "mask_generator_from_settings",
    "stack_masks",
]
