# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Distributed, skip-aware data loaders for pre-training and feature extraction.

How to use them with Accelerate (the rules behind the code):

1. Build the loader with this process's `rank = accelerator.process_index` and
   `world_size = accelerator.num_processes`. The stream is shuffled with the **same seed on every rank,
   before** `datasets.distributed.split_dataset_by_node`, so every rank draws a disjoint part of one
   permutation. Shard-level splitting needs `num_shards % world_size == 0` (ImageNet's 294 shards: world
   sizes 2, 3, 6, 7, 14, ...); otherwise every rank reads all shards and keeps every world_size-th example
   (still disjoint, more I/O). Likewise each rank's shards are divided among its DataLoader workers, so a
   per-rank count that is not a multiple of the workers leaves some of them idle at the end of an epoch.
   Both are logged (rank 0, once per stream layout) with the fix: `shard_split_warning`.
2. Do **not** pass the loader to `accelerator.prepare`: the data is already split, and a prepared loader
   with `dispatch_batches=False` would split it again and silently drop half of it. Move batches with
   `{k: v.to(accelerator.device) for k, v in batch.items()}` instead.
3. Call `loader.set_epoch(epoch)` before every epoch. It reaches the final `datasets` object (`map`,
   `split_dataset_by_node`, ... return new objects whose epoch restarts at 0, so setting it earlier is lost);
   the value lives in shared memory, so persistent workers see it too.
4. Ranks can hold a few examples more or less (uneven shards, skipped files). Wrap the loop in
   `synchronized_batches(loader, accelerator)`, which stops every rank as soon as one runs dry, so no
   rank waits forever in a collective.

Shuffling and exact resume: `datasets` permutes the shards, seeded by (seed, epoch), and each reader goes through its
shards one at a time; the examples are shuffled in blocks of `shuffle_buffer_size` consecutive examples inside each
DataLoader worker, each block by its own permutation seeded from (seed, epoch, rank, worker, block). Unlike
`datasets`' rolling shuffle buffer (whose content a `state_dict` cannot hold), a block can be re-read from its start,
so the loader's `state_dict()` (a `torchdata` `StatefulDataLoader`: per worker, the `datasets` state at the start of
its current block, the entries of the block already taken and the transform's sample counter) resumes at exactly the
next example: a restored loader re-reads, undecoded, at most one block per worker plus what `datasets` skips inside
the current shard (Parquet/WebDataset streams read up to the offset; map-style data jumps to it by index), and
decodes only new examples. Mixing is within a block (plus the shard order): raise `shuffle_buffer_size` for more.

Bad samples: images that cannot be decoded are skipped inside the stream (the next good image takes their
place, so batches stay full), and reported in-band to the main process, which counts them in
`loader.stats` (`SkippedSampleStats`, with the identifiers). `skip_undecodable=False` makes the first one
fatal. MixedAE needs batches that are a multiple of its group size g = 1/mixing_ratio: pass
`batch_multiple=g` (and a `batch_size` that is a multiple of g); a short final batch is trimmed down to a
multiple of g, or dropped with `drop_last=True`.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import signal
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import datasets
import torch
from datasets.distributed import split_dataset_by_node

from ..listing import MOST_NAMED, first_few
from .images import UndecodableImageError, decode_rgb, load_rgb_image

try:  # carries each DataLoader worker's position, so that a resumed loader starts where a checkpoint left it
    from torchdata.stateful_dataloader import StatefulDataLoader
except ImportError:  # without it a resumed run replays the epoch's consumed batches (see `ImageStreamLoader.resumable`)
    StatefulDataLoader = None

logger = logging.getLogger(__name__)


class _EmptyShuffleBufferWarningFilter(logging.Filter):
    """`datasets` warns that a resumed shuffle buffer loses its content; ours holds one example at a time (the
    example-level shuffle is `DecodedImageStream`'s, resumable), so nothing is lost."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Loading a state dict of a shuffle buffer")


logging.getLogger("datasets.iterable_dataset").addFilter(_EmptyShuffleBufferWarningFilter())

# Key under which a stream item carries the bad samples skipped just before it (and a report-only item at the
# end of a worker's stream carries the rest); the collator turns it into `SKIPPED_BATCH_KEY`.
SKIPPED_ITEM_KEY = "_skipped_samples"
SKIPPED_BATCH_KEY = "skipped_samples"
LABELS_KEY = "labels"
PIXEL_VALUES_KEY = "pixel_values"
# Shards a map-style Dataset is cut into when it is turned into a stream, per (rank x worker): enough for the
# shard permutation to mix the data while keeping shard-level splitting across ranks.
SHARDS_PER_READER = 8

Transform = Callable[..., dict[str, torch.Tensor]]
T = TypeVar("T")


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (stable across processes and Python versions)."""
    digest = hashlib.sha256(",".join(str(int(part)) for part in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass
class SkippedSampleStats:
    """Counts of what a loader read, skipped and trimmed (kept in the main process).

    Attributes:
        num_loaded: good samples delivered in batches.
        num_skipped: undecodable samples skipped.
        num_trimmed: good samples cut off to keep a batch a multiple of `batch_multiple`, or in a dropped
            short last batch.
        skipped: `(identifier, reason)` of the first `max_recorded` skipped samples.
        reasons: skipped samples per error type.
    """

    num_loaded: int = 0
    num_skipped: int = 0
    num_trimmed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    reasons: Counter = field(default_factory=Counter)
    max_recorded: int = 100

    def record_skipped(self, identifier: str, reason: str) -> None:
        self.num_skipped += 1
        self.reasons[reason.split(":", 1)[0]] += 1
        if len(self.skipped) < self.max_recorded:
            self.skipped.append((identifier, reason))

    def summary(self) -> str:
        text = f"{self.num_loaded} samples loaded, {self.num_skipped} undecodable skipped, {self.num_trimmed} trimmed"
        if self.skipped:
            shown = first_few([identifier for identifier, _ in self.skipped[:MOST_NAMED]], total=self.num_skipped)
            text += f"; skipped: {shown}; reasons: {dict(self.reasons)}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_loaded": self.num_loaded,
            "num_skipped": self.num_skipped,
            "num_trimmed": self.num_trimmed,
            "skipped": [list(item) for item in self.skipped],
            "reasons": dict(self.reasons),
        }


class DecodedImageStream(torch.utils.data.IterableDataset):
    """Decode (to RGB) and transform each example of a `datasets.IterableDataset`, skipping bad images.

    Yields dicts with the transform's tensors, `labels` (when a label column is given) and, when bad samples
    were skipped since the previous item, their `(identifier, reason)` pairs under `SKIPPED_ITEM_KEY`.
    Inside DataLoader workers the wrapped `datasets` stream shards itself across workers. The transform gets
    RGB PIL images, or `images.decode_rgb`'s output (fast-decoded JPEGs as uint8 arrays) when it has a true
    `accepts_rgb_arrays` attribute, as the package's transforms do.

    With `shuffle_seed`, the examples are shuffled in blocks of `shuffle_buffer_size` (see the module docstring).
    `state_dict()` is the position after the last item yielded (in a worker: that worker's); `load_state_dict`
    makes the next iteration start there without decoding anything already yielded. A transform with
    `state_dict`/`load_state_dict` (e.g. a per-sample seed counter) is saved and restored with it.
    """

    def __init__(
        self,
        source: datasets.IterableDataset,
        transform: Transform,
        image_column_name: str = "image",
        label_column_name: str | None = "label",
        skip_undecodable: bool = True,
        shuffle_buffer_size: int = 1,
        shuffle_seed: int | None = None,
        rank: int = 0,
    ):
        super().__init__()
        if shuffle_buffer_size < 1:
            raise ValueError(f"shuffle_buffer_size must be >= 1, got {shuffle_buffer_size}")
        self.source = source
        self.transform = transform
        self.image_column_name = image_column_name
        self.label_column_name = label_column_name
        self.skip_undecodable = skip_undecodable
        self.shuffle_buffer_size = shuffle_buffer_size if shuffle_seed is not None else 1
        self.shuffle_seed = shuffle_seed
        self.rank = rank
        self._position: dict[str, Any] = {"source": None, "block": 0, "taken": 0}
        self._resume_from: dict[str, Any] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.source.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        """Where the stream stands after the last item it yielded: the `datasets` state at the start of the
        current block, the block's number and how many of its entries were taken (yielded or skipped as bad)."""
        state = dict(self._position)
        if hasattr(self.transform, "state_dict"):
            state["transform"] = self.transform.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Start the next iteration at `state` (from `state_dict`, same epoch, rank and worker)."""
        self._resume_from = dict(state)

    def _missing_column(self, column: str, example: dict[str, Any]) -> ValueError:
        return ValueError(f"column {column!r} not found in the data stream; available columns: {sorted(example)}")

    def _missing_image(self, example: dict[str, Any]) -> UndecodableImageError:
        """An example whose image column is empty, named by its WebDataset key and shard when it has them."""
        name = example.get("__key__")
        where = f"{name} in {example['__url__']}" if name and example.get("__url__") else name or "<no key>"
        return UndecodableImageError(
            where,
            f"no {self.image_column_name!r} image. WebDataset columns are the file extensions of the first samples "
            "read: a sample stored with another extension (.png among .jpg) comes without it. Store every image "
            "of the shards with one extension.",
        )

    def _block_order(self, size: int, worker_id: int, block: int) -> list[int]:
        if self.shuffle_buffer_size == 1 or size == 1:
            return list(range(size))
        generator = torch.Generator().manual_seed(
            derived_seed(self.shuffle_seed, self.source.epoch, self.rank, worker_id, block)
        )
        return torch.randperm(size, generator=generator).tolist()

    def _blocks(self) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        """(number of entries to skip, block) pairs; the block's position is recorded in `_position`."""
        resume, self._resume_from = self._resume_from, None
        block_start, block, skip = None, 0, 0
        if resume is not None:
            block_start, block, skip = resume["source"], resume["block"], resume["taken"]
            if block_start is not None:
                self.source.load_state_dict(block_start)
            if "transform" in resume and hasattr(self.transform, "load_state_dict"):
                self.transform.load_state_dict(resume["transform"])
        examples = iter(self.source)
        while True:
            entries = list(itertools.islice(examples, self.shuffle_buffer_size))
            if not entries:
                return
            # The `datasets` position right after this block (any other iterable of examples has none to give).
            next_start = self.source.state_dict() if hasattr(self.source, "state_dict") else None
            self._position = {"source": block_start, "block": block, "taken": skip}
            yield skip, entries
            block_start, block, skip = next_start, block + 1, 0

    def _examples(self) -> Iterator[dict[str, Any]]:
        """The examples in this stream's order (its seeded block shuffle), recording the resumable position."""
        worker = torch.utils.data.get_worker_info()
        worker_id = worker.id if worker is not None else 0
        for skip, entries in self._blocks():
            order = self._block_order(len(entries), worker_id, self._position["block"])
            for taken, entry in enumerate(order[skip:], start=skip + 1):
                self._position["taken"] = taken  # an entry counts as taken before it is decoded
                yield entries[entry]

    def required_columns(self) -> tuple[str, ...]:
        """The columns every example must have."""
        return (self.image_column_name,) + ((self.label_column_name,) if self.label_column_name is not None else ())

    def decode_example(self, example: dict[str, Any], decode: Callable[[Any], Any]) -> dict[str, Any]:
        """One stream item from one example (`decode` reads the image); raises `UndecodableImageError` for a bad
        image. Subclasses that read more than an image and a class label override this."""
        item = dict(self.transform(decode(example[self.image_column_name])))
        if self.label_column_name is not None:
            item[LABELS_KEY] = int(example[self.label_column_name])
        return item

    def __iter__(self) -> Iterator[dict[str, Any]]:
        pending: list[tuple[str, str]] = []
        # Transforms that say they take arrays get the fast JPEG decoder's; any other callable gets PIL images.
        decode = decode_rgb if getattr(self.transform, "accepts_rgb_arrays", False) else load_rgb_image
        for example in self._examples():
            for column in self.required_columns():
                if column not in example:
                    raise self._missing_column(column, example)
            try:
                if example[self.image_column_name] is None:
                    raise self._missing_image(example)
                item = self.decode_example(example, decode)
            except UndecodableImageError as error:
                if not self.skip_undecodable:
                    raise
                pending.append((error.identifier, error.reason))
                continue
            if pending:
                item[SKIPPED_ITEM_KEY] = pending
                pending = []
            yield item
        if pending:
            yield {SKIPPED_ITEM_KEY: pending}


class SkipAwareCollator:
    """Stack stream items into a batch; drop `None`/report-only items; trim to a multiple of `batch_multiple`.

    The batch holds stacked tensors for every tensor key, `labels` as int64, and `skipped_samples` (a list of
    `(identifier, reason)`, usually empty) plus `num_trimmed`. A batch with no good sample has no
    `pixel_values`.
    """

    def __init__(self, batch_multiple: int = 1):
        if batch_multiple < 1:
            raise ValueError(f"batch_multiple must be >= 1, got {batch_multiple}")
        self.batch_multiple = batch_multiple

    def __call__(self, items: list[dict[str, Any] | None]) -> dict[str, Any]:
        skipped = [entry for item in items if item for entry in item.get(SKIPPED_ITEM_KEY, ())]
        samples = [item for item in items if item is not None and PIXEL_VALUES_KEY in item]
        keep = len(samples) - len(samples) % self.batch_multiple
        batch: dict[str, Any] = {SKIPPED_BATCH_KEY: skipped, "num_trimmed": len(samples) - keep}
        samples = samples[:keep]
        if samples:
            for key in samples[0]:
                if key == SKIPPED_ITEM_KEY:
                    continue
                values = [sample[key] for sample in samples]
                batch[key] = torch.stack(values) if torch.is_tensor(values[0]) else torch.tensor(values)
        return batch


class ImageStreamLoader:
    """Iterate a DataLoader over a `DecodedImageStream`; keep `stats`; apply `drop_last`; forward `set_epoch`.

    Yields batches `{"pixel_values": (B, 3, H, W), "labels": (B,), ...}` (the transform's keys), never with
    bookkeeping keys. Not meant for `accelerator.prepare` (see the module docstring).
    """

    def __init__(
        self,
        dataloader: torch.utils.data.DataLoader,
        stream: DecodedImageStream,
        batch_size: int,
        drop_last: bool,
        stats: SkippedSampleStats | None = None,
    ):
        self.dataloader = dataloader
        self.stream = stream
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.stats = stats if stats is not None else SkippedSampleStats()

    @property
    def dataset(self) -> datasets.IterableDataset:
        """The final `datasets` object (shuffled and split for this rank)."""
        return self.stream.source

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for `epoch` (same permutation on every rank)."""
        self.stream.set_epoch(epoch)

    @property
    def resumable(self) -> bool:
        """Whether `state_dict`/`load_state_dict` carry the position (needs `torchdata`'s `StatefulDataLoader`)."""
        return hasattr(self.dataloader, "load_state_dict")

    def state_dict(self) -> dict[str, Any]:
        """The position after the last batch this loader yielded (every worker's stream state): plain data."""
        return self.dataloader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next iteration continue from `state` (same epoch, set with `set_epoch` first, same workers)."""
        self.dataloader.load_state_dict(state)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        iterator = iter(self.dataloader)
        try:
            for batch in iterator:
                for identifier, reason in batch.pop(SKIPPED_BATCH_KEY):
                    self.stats.record_skipped(identifier, reason)
                    logger.warning("skipped undecodable image %s (%s)", identifier, reason)
                self.stats.num_trimmed += batch.pop("num_trimmed")
                size = len(batch[PIXEL_VALUES_KEY]) if PIXEL_VALUES_KEY in batch else 0
                if size == 0:
                    continue
                if self.drop_last and size < self.batch_size:
                    self.stats.num_trimmed += size
                    continue
                self.stats.num_loaded += size
                yield batch
        finally:
            self._release(iterator)

    def _release(self, iterator) -> None:
        """Stop the workers of a finished or abandoned pass now. A `StatefulDataLoader` keeps its last iterator (for
        `state_dict`), so its workers would live until the interpreter exits, where `multiprocessing` terminates
        them with SIGTERM, which they ignore (`ignore_termination_signal`), and then waits for them forever."""
        if self.dataloader.persistent_workers:
            return
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        if getattr(self.dataloader, "_iterator", None) is iterator:
            self.dataloader._iterator = None


def set_loader_epoch(loader: ImageStreamLoader, epoch: int) -> None:
    """Reshuffle `loader` for `epoch`; call before iterating each epoch (identical on every rank)."""
    loader.set_epoch(epoch)


def _image_column_undecoded(dataset: datasets.IterableDataset, image_column_name: str) -> datasets.IterableDataset:
    """Hand raw bytes/paths to our decoder, which skips bad files instead of crashing inside `datasets`."""
    features = dataset.features
    if features is not None and isinstance(features.get(image_column_name), datasets.Image):
        return dataset.cast_column(image_column_name, datasets.Image(decode=False))
    return dataset


def _as_stream(dataset: datasets.Dataset | datasets.IterableDataset, world_size: int, num_workers: int):
    if isinstance(dataset, datasets.IterableDataset):
        return dataset
    if len(dataset) == 0:
        raise ValueError("cannot build a data loader over an empty dataset")
    num_shards = min(len(dataset), world_size * max(1, num_workers) * SHARDS_PER_READER)
    return dataset.to_iterable_dataset(num_shards=num_shards)


def _next_multiple(value: int, factor: int) -> int:
    return -(-value // factor) * factor


def _processes(count: int) -> str:
    return f"{count} process" if count == 1 else f"{count} processes"


def shard_split_warning(
    num_shards: int, world_size: int, num_workers: int, name: str = "the data stream"
) -> str | None:
    """What is wasted when `num_shards` shards are split over `world_size` processes x `num_workers` DataLoader
    workers each, and how to avoid it; `None` when the shards divide evenly.

    Shards not a multiple of `world_size`: `split_dataset_by_node` cannot give each process its own shards, so
    every process reads every shard and keeps every world_size-th example (world_size times the reading).
    A process's shards not a multiple of its workers (as many as it has shards at most, see `_build_loader`):
    workers with fewer shards finish early and idle while the others read on.
    """
    problems = []
    if num_shards % world_size:
        shards_per_rank = num_shards
        problems.append(
            f"{num_shards} is not a multiple of the {world_size} processes, so every process reads all {num_shards} "
            f"shards and keeps one example in {world_size} ({world_size}x the reading). Re-shard the data into a "
            f"multiple of {world_size} shards (e.g. {_next_multiple(num_shards, world_size)}), or launch a number of "
            f"processes that divides {num_shards}"
        )
    else:
        shards_per_rank = num_shards // world_size
    workers = min(max(1, num_workers), shards_per_rank)
    if shards_per_rank % workers:
        readers = world_size * workers
        problems.append(
            f"each process's {shards_per_rank} shards do not divide among its {workers} DataLoader workers, so some "
            f"workers run out of shards early and idle. Re-shard the data into a multiple of {readers} shards "
            f"({_processes(world_size)} x {workers} workers; e.g. {_next_multiple(num_shards, readers)}), or set "
            f"--dataloader_num_workers to a divisor of {shards_per_rank}"
        )
    if not problems:
        return None
    readers = _processes(world_size) + (f" x {num_workers} DataLoader workers" if num_workers else "")
    return f"{name} has {num_shards} shards for {readers}: " + "; ".join(problems) + "."


# Stream layouts already warned about in this process: evaluation rebuilds its loaders at every evaluation.
_WARNED_SHARD_SPLITS: set[tuple[str, int, int, int]] = set()


def _warn_about_shard_split(stream: datasets.IterableDataset, rank: int, world_size: int, num_workers: int) -> None:
    split = getattr(stream, "split", None)
    name = f"the {split} stream" if split else "the data stream"
    message = shard_split_warning(stream.num_shards, world_size, num_workers, name)
    key = (name, stream.num_shards, world_size, num_workers)
    if message is not None and rank == 0 and key not in _WARNED_SHARD_SPLITS:
        _WARNED_SHARD_SPLITS.add(key)
        logger.warning(message)


def _rank_stream(
    dataset: datasets.Dataset | datasets.IterableDataset,
    image_column_name: str,
    rank: int,
    world_size: int,
    num_workers: int,
    shuffle_seed: int | None,
    shuffle_buffer_size: int,
    permute_map_style: bool = True,
) -> datasets.IterableDataset:
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    if isinstance(dataset, datasets.IterableDataset):
        # Only the user's own shards (files): a map-style Dataset is cut into as many shards as suit the readers.
        _warn_about_shard_split(dataset, rank, world_size, num_workers)
    elif permute_map_style and shuffle_seed is not None and len(dataset) > shuffle_buffer_size:
        # The shards below are contiguous and the examples are shuffled within blocks of `shuffle_buffer_size`: over
        # a folder sorted by class, batches would hold a few classes. One seeded permutation first (the same on
        # every rank and in every epoch, so positions stay resumable); a dataset within one block needs none.
        dataset = dataset.shuffle(seed=shuffle_seed)
    stream = _image_column_undecoded(_as_stream(dataset, world_size, num_workers), image_column_name)
    if shuffle_seed is not None:
        # Same seed on every rank and before the split: one shard permutation, cut into disjoint parts. The buffer
        # of one example keeps `datasets`' state exact; the examples are shuffled by `DecodedImageStream`'s blocks.
        # One input shard at a time: `datasets` 5.2 cannot restore an interleaved-shards state in a DataLoader
        # worker (it loads the worker's state into the unsplit stream first, whose shard list is longer).
        stream = stream.shuffle(seed=shuffle_seed, buffer_size=1, max_buffer_input_shards=1)
    if world_size > 1:
        stream = split_dataset_by_node(stream, rank=rank, world_size=world_size)
    return stream


def _build_loader(
    stream: datasets.IterableDataset,
    transform: Transform,
    batch_size: int,
    num_workers: int,
    drop_last: bool,
    batch_multiple: int,
    image_column_name: str,
    label_column_name: str | None,
    skip_undecodable: bool,
    pin_memory: bool,
    persistent_workers: bool,
    shuffle_seed: int | None = None,
    shuffle_buffer_size: int = 1,
    rank: int = 0,
) -> ImageStreamLoader:
    if batch_size % batch_multiple:
        raise ValueError(f"batch_size={batch_size} must be a multiple of batch_multiple={batch_multiple}")
    decoded = DecodedImageStream(stream, transform, image_column_name, label_column_name, skip_undecodable,
                                 shuffle_buffer_size, shuffle_seed, rank)
    return stream_loader(decoded, batch_size, num_workers, drop_last, SkipAwareCollator(batch_multiple), pin_memory,
                         persistent_workers)


def stream_loader(
    decoded: DecodedImageStream,
    batch_size: int,
    num_workers: int,
    drop_last: bool,
    collate_fn: Callable[[list], dict[str, Any]],
    pin_memory: bool,
    persistent_workers: bool = False,
) -> ImageStreamLoader:
    """The (stateful, where torchdata is installed) DataLoader over a decoded stream of this rank, as every task
    uses it: at most one worker per shard, workers that leave SIGTERM to the training process."""
    if num_workers > decoded.source.num_shards:
        logger.info("using %d DataLoader workers instead of %d: the stream has %d shards for this rank",
                    decoded.source.num_shards, num_workers, decoded.source.num_shards)
        num_workers = decoded.source.num_shards
    with warnings.catch_warnings():  # torchdata 0.11 calls a torch function deprecated since (no effect on loading)
        warnings.filterwarnings("ignore", message=".*set_vital.*")
        dataloader = (StatefulDataLoader or torch.utils.data.DataLoader)(
            decoded,
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=collate_fn,
            drop_last=False,  # applied after the in-band skip reports are read, so none is lost
            pin_memory=pin_memory,
            persistent_workers=persistent_workers and num_workers > 0,
            worker_init_fn=ignore_termination_signal,
        )
    return ImageStreamLoader(dataloader, decoded, batch_size, drop_last)


def ignore_termination_signal(worker_id: int) -> None:
    """DataLoader workers leave SIGTERM to the training process. A scheduler (or `timeout`) signals every process of
    the job; a worker that died of it would make the training process fail at once ("DataLoader worker is killed
    by signal") instead of finishing its step and writing its checkpoint. The workers still end with the training
    process, which shuts them down (and they exit when it dies)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def build_pretraining_dataloader(
    dataset: datasets.Dataset | datasets.IterableDataset,
    transform: Transform,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = True,
    batch_multiple: int = 1,
    shuffle_buffer_size: int = 1000,
    image_column_name: str = "image",
    label_column_name: str | None = "label",
    skip_undecodable: bool = True,
    pin_memory: bool = False,
    persistent_workers: bool = False,
    permute_map_style: bool = True,
) -> ImageStreamLoader:
    """Shuffled, rank-split, skip-aware loader of transformed images for pre-training.

    `batch_size` is per process. The returned loader must not go through `accelerator.prepare`; call its
    `set_epoch(epoch)` before each epoch. A map-style `Dataset` is turned into a sharded stream first, so both
    kinds behave the same; with `permute_map_style`, one larger than `shuffle_buffer_size` is permuted (seeded) first.
    See the module docstring for the distributed rules.
    """
    stream = _rank_stream(dataset, image_column_name, rank, world_size, num_workers, seed, shuffle_buffer_size,
                          permute_map_style)
    return _build_loader(stream, transform, batch_size, num_workers, drop_last, batch_multiple, image_column_name,
                         label_column_name, skip_undecodable, pin_memory, persistent_workers, seed,
                         shuffle_buffer_size, rank)


def build_evaluation_dataloader(
    dataset: datasets.Dataset | datasets.IterableDataset,
    transform: Transform,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    image_column_name: str = "image",
    label_column_name: str | None = "label",
    skip_undecodable: bool = True,
) -> ImageStreamLoader:
    """Unshuffled, rank-split, skip-aware loader that keeps every sample (no `drop_last`, no trimming).

    Feed it to `evaluation.extract_features(..., accelerator=accelerator)`, which gathers the ranks' parts.
    """
    stream = _rank_stream(dataset, image_column_name, rank, world_size, num_workers, None, 0)
    return _build_loader(stream, transform, batch_size, num_workers, False, 1, image_column_name,
                         label_column_name, skip_undecodable, False, False)


def synchronized_batches(batches: Iterable[T], accelerator: Any | None = None) -> Iterator[T]:
    """Yield batches while **every** rank still has one (one tiny all-reduce per step).

    Without it, a rank with one batch more than the others would wait forever in the gradient all-reduce.
    With no accelerator or a single process it simply yields everything.
    """
    iterator = iter(batches)
    num_processes = 1 if accelerator is None else accelerator.num_processes
    try:
        while True:
            batch = next(iterator, None)
            if num_processes > 1:
                has_batch = torch.tensor([0 if batch is None else 1], device=accelerator.device)
                if int(accelerator.reduce(has_batch, reduction="sum").item()) < num_processes:
                    return
            elif batch is None:
                return
            yield batch
    finally:
        # A loader's pass (`ImageStreamLoader.__iter__`) stops its workers when closed; left to the garbage
        # collector, an abandoned pass could outlive the run (see `ImageStreamLoader._release`).
        close = getattr(iterator, "close", None)
        if close is not None:
            close()

