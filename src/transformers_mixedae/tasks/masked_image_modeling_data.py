# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Data and evaluation for `pretraining.run_pretraining`: loaders per rank, per-method batches, evaluation.

Reproducibility: every random draw of the data pipeline (crop, flip, CAE mask) comes from a generator seeded by
(seed, epoch, rank, worker, sample or batch index), never from the global RNG. Accelerate checkpoints the global
RNG for the model's own draws (MixedAE's mixing noise, drop path). Each checkpoint also holds the training loader's
position (every DataLoader worker's stream state and per-sample seed counter, `data.streaming`): a resumed run starts
reading at the next example, decoding nothing it had already consumed, and sees exactly the same batches and random
numbers as an uninterrupted one. Only where that position is missing (a checkpoint written without it, or no
`torchdata`) is the epoch replayed from its start and the consumed batches dropped, which gives the same batches at
the cost of reading and decoding them again, provided the number of DataLoader workers is the same: the order of an
epoch's examples depends on it. A checkpoint whose position records another number of workers is refused.
"""

import math
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import gather_object

from ..data.streaming import derived_seed
from ..data.loading import limit_samples
from ..data import (
    BatchNormalizer,
    EvaluationTransform,
    SkippedSampleStats,
    build_evaluation_dataloader,
    build_pretraining_dataloader,
    load_image_dataset,
    pretraining_transform_for_model_type,
    synchronized_batches,
)
from ..evaluation.eval_mode import eval_mode
from ..evaluation.frozen_features import evaluate_frozen_features, extract_features
from ..evaluation.homologous_probe import can_probe, homologous_probe
from ..evaluation.visualization import (
    mixed_samples,
    save_homologous_attention_figure,
    save_reconstruction_grid,
    to_display,
)
from ..models.modeling_mixedae import mixing_assignment
from ..training.arguments import DataArguments, ModelArguments, PretrainingEvaluationArguments, TrainingArguments
from ..training.records import SKIPPED_SAMPLES_NAME, write_skipped_samples

logger = get_logger(__name__)

NUM_VISUALIZED_IMAGES = 8
# Skipped training images listed by identifier per rank (in skipped_samples.json and checkpoints); all are counted.
MAX_LISTED_SKIPPED_SAMPLES = 10_000


class SeededTransform:
    """Calls an augmentation with a generator seeded per sample from (seed, epoch, rank, worker, index)."""

    def __init__(self, transform, seed: int, rank: int):
        self.transform = transform
        self.seed = seed
        self.rank = rank
        self.epoch = 0
        self.sample_index = 0

    @property
    def accepts_rgb_arrays(self) -> bool:
        return getattr(self.transform, "accepts_rgb_arrays", False)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sample_index = 0

    def state_dict(self) -> dict:
        """The per-sample counter (of this DataLoader worker's copy), saved with the loader's position."""
        return {"epoch": self.epoch, "sample_index": self.sample_index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]
        self.sample_index = state["sample_index"]

    def __call__(self, image):
        worker = torch.utils.data.get_worker_info()
        worker_id = worker.id if worker is not None else 0
        generator = torch.Generator().manual_seed(
            derived_seed(self.seed, self.epoch, self.rank, worker_id, self.sample_index)
        )
        self.sample_index += 1
        return self.transform(image, generator=generator)


class DataState:
    """Checkpointed state of the data pipeline, per rank: the counters of skipped samples (with their identifiers)
    and the training loader's position (`position`, set by `train_batches`: where the epoch in progress stands), so
    that a resume neither loses the counts nor re-reads the data. `state_dict` gathers every rank's state, so every
    rank calls it (as `accelerator.save_state` does)."""

    def __init__(self, stats: SkippedSampleStats, accelerator: Accelerator):
        self.stats = stats
        self.accelerator = accelerator
        self.position = None  # () -> this rank's loader position (plain data) or None
        self.resume_position: dict | None = None  # the position loaded from a checkpoint, until `train_batches` uses it
        self.resume_note: str | None = None  # why a loaded checkpoint's position does not apply, when it does not

    def state_dict(self) -> dict:
        own = self.stats.to_dict()
        position = self.position() if self.position is not None else None
        if position is not None:
            own["position"] = position
        ranks = [own]
        if self.accelerator.num_processes > 1:
            ranks = gather_object(ranks)
        return {"ranks": ranks}

    def load_state_dict(self, state: dict) -> None:
        ranks = state.get("ranks", [state])  # checkpoints written before per-rank states hold rank 0's counters
        own = ranks[self.accelerator.process_index] if self.accelerator.process_index < len(ranks) else {}
        self.restore(own)
        self.resume_position = own.get("position")
        if "ranks" in state and len(ranks) != self.accelerator.num_processes:
            # Resumed with another number of processes (--allow_recipe_change): each rank now reads another part of
            # the data, so no recorded position is this rank's.
            self.resume_position = None
            written_by = f"{len(ranks)} process" + ("es" if len(ranks) != 1 else "")
            self.resume_note = (f"the checkpoint was written by {written_by} and this run has "
                                f"{self.accelerator.num_processes}, so the data is split otherwise and the dropped "
                                "batches are not those already used: some examples of this epoch are seen twice, "
                                "others not at all")

    def restore(self, own: dict) -> None:
        """Set this rank's counters from `SkippedSampleStats.to_dict()` output."""
        self.stats.num_skipped = own.get("num_skipped", 0)
        self.stats.num_loaded = own.get("num_loaded", 0)
        self.stats.num_trimmed = own.get("num_trimmed", 0)
        self.stats.skipped = [tuple(item) for item in own.get("skipped", [])]
        self.stats.reasons = Counter(own.get("reasons", {}))


def shared_source_arguments(data_args: DataArguments, training_args: TrainingArguments) -> dict[str, Any]:
    """The loading arguments every task takes from the shared dataset flags: the Hub dataset (name, configuration,
    revision, token), streaming, the image column and the sample limits."""
    return dict(
        dataset_name=data_args.dataset_name,
        dataset_config_name=data_args.dataset_config_name,
        revision=data_args.dataset_revision,
        validation_split_name=data_args.validation_split_name,
        streaming=data_args.streaming,
        image_column_name=data_args.image_column_name,
        token=training_args.hub_token,
        max_train_samples=data_args.max_train_samples,
        max_eval_samples=data_args.max_eval_samples,
    )


def load_run_datasets(data_args: DataArguments, training_args: TrainingArguments):
    """The train / validation splits the dataset arguments of `run_mim.py` and `run_image_classification.py` name."""
    return load_image_dataset(
        train_dir=data_args.train_dir,
        validation_dir=data_args.validation_dir,
        label_column_name=data_args.label_column_name,
        **shared_source_arguments(data_args, training_args),
    )


class PretrainingData:
    """Train/eval data of one run, built for this rank, plus the evaluation at `eval_steps` and at the end."""

    def __init__(
        self,
        model,
        model_args: ModelArguments,
        data_args: DataArguments,
        training_args: TrainingArguments,
        accelerator: Accelerator,
        evaluation_args: PretrainingEvaluationArguments | None = None,
    ):
        self.model_type = model.config.model_type  # selects the augmentation preset
        # What the model's config says the pipeline must add to `pixel_values` (no branch on the model's name):
        # masks drawn per image when the config describes a mask generator (CAE), DALL-E token targets when
        # the config's target is "tokens" (CAE's official setting).
        self.draws_masks = hasattr(model.config, "mask_type")
        self.config = model.config
        self.evaluation_args = evaluation_args or PretrainingEvaluationArguments()
        self.data_args = data_args
        self.training_args = training_args
        self.accelerator = accelerator
        self.image_size = self.config.image_size  # int or (height, width): the transforms take both
        self.group_size = getattr(self.config, "group_size", 1)
        if training_args.per_device_train_batch_size % self.group_size:
            raise ValueError(
                f"--per_device_train_batch_size {training_args.per_device_train_batch_size} must be a multiple of the "
                f"MixedAE group size {self.group_size} (1/mixing_ratio)."
            )

        self.datasets = load_run_datasets(data_args, training_args)
        self.source = self.datasets.source
        self.stats = SkippedSampleStats(max_recorded=MAX_LISTED_SKIPPED_SAMPLES)
        self.state = DataState(self.stats, accelerator)
        self.tokenizer = self._load_tokenizer(model_args)

        augmentation = self._augmentation()
        self.normalize_batch = BatchNormalizer(augmentation.mean, augmentation.std, accelerator.device)
        self.train_transform = SeededTransform(augmentation, training_args.seed, accelerator.process_index)
        self.train_loader = build_pretraining_dataloader(
            self.datasets.train,
            self.train_transform,
            batch_size=training_args.per_device_train_batch_size,
            rank=accelerator.process_index,
            world_size=accelerator.num_processes,
            seed=training_args.seed,
            num_workers=data_args.dataloader_num_workers,
            drop_last=True,
            batch_multiple=self.group_size,
            shuffle_buffer_size=data_args.shuffle_buffer_size,
            image_column_name=self.datasets.image_column_name,
            label_column_name=None,
            skip_undecodable=not data_args.strict_decoding,
            pin_memory=torch.cuda.is_available(),
        )
        self.train_loader.stats = self.stats
        self.evaluation_transform = EvaluationTransform(self.image_size)
        self.image_processor = image_processor_for(self.config)

    # ------------------------------------------------------------------ sizes
    def num_train_examples(self) -> int | None:
        train = self.datasets.train
        if isinstance(train, datasets.Dataset):
            return len(train)
        splits = train.info.splits if train.info is not None else None
        known = splits.get("train") if splits else None
        if known is None or not known.num_examples:
            return None
        limit = self.data_args.max_train_samples
        return min(known.num_examples, limit) if limit else known.num_examples

    def optimizer_steps_per_epoch(self, total_batch_size: int) -> int | None:
        examples = self.num_train_examples()
        if examples is None:
            return None
        steps = examples // total_batch_size
        if steps == 0:
            raise ValueError(
                f"the training set ({examples} examples) is smaller than one global batch ({total_batch_size}): "
                "lower --per_device_train_batch_size or --gradient_accumulation_steps."
            )
        return steps

    # ------------------------------------------------------------------ training batches
    def train_batches(self, epoch: int, batches_per_epoch: int, skip_batches: int = 0) -> Iterator[dict]:
        """This rank's batches of `epoch` (at most `batches_per_epoch`), the first `skip_batches` skipped, on the
        accelerator's device and in the form the model's forward takes.

        The first `skip_batches` are not read again when the resumed checkpoint holds the loader's position at that
        batch (see the module docstring); otherwise they are replayed and dropped."""
        self.train_loader.set_epoch(epoch)
        self.train_transform.set_epoch(epoch)
        # Creating a DataLoader iterator draws a worker base seed; from a private generator it leaves the global
        # RNG (checkpointed for the model's own draws) untouched, whenever the iterator is created.
        self.train_loader.dataloader.generator = torch.Generator().manual_seed(
            derived_seed(self.training_args.seed, epoch, self.accelerator.process_index)
        )
        if skip_batches >= batches_per_epoch:
            # Resumed at the epoch's end: nothing of it is left to read. Its position is dropped unloaded: loaded, the
            # exhausted loader would carry it into the next epoch, which would then give no batch.
            self.state.resume_position = None
            return
        start = self._resume_loader(epoch, skip_batches)
        consumed = {"batches": start}
        self.state.position = lambda: self._loader_position(epoch, consumed["batches"])
        counted_before_replay = self.stats.to_dict()
        read = start
        # Closed as soon as this pass ends, however it ends, so that the loader's workers stop with it.
        with closing(synchronized_batches(self.train_loader, self.accelerator)) as batches:
            for index, batch in enumerate(batches, start=start):
                read = index + 1
                if index < skip_batches:
                    if index == skip_batches - 1:  # the checkpoint's counters already include the replayed batches
                        self.state.restore(counted_before_replay)
                else:
                    self.check_skipped_fraction()
                    consumed["batches"] = index + 1  # a checkpoint written while this batch is in use resumes after it
                    yield self.model_inputs(
                        batch, derived_seed(self.training_args.seed, epoch, self.accelerator.process_index, index)
                    )
                if read >= batches_per_epoch:  # stop before reading (and decoding) a batch the epoch does not use
                    return
        if read == 0:
            # Without this, a loop over epochs would read the data again and again without ever taking a step.
            self.check_skipped_fraction()
            workers = self.train_loader.dataloader.num_workers
            # Each worker batches its own share of the stream and drops its last incomplete batch.
            split = (f" Each of the {workers} DataLoader workers batches its own share and drops its incomplete "
                     "last batch: lower --dataloader_num_workers." if workers > 1 and self.stats.num_trimmed else "")
            raise RuntimeError(
                f"epoch {epoch} of {self.source} gave no training batch of {self.training_args.per_device_train_batch_size} "
                f"images: {self.stats.summary()}. Check --image_column_name {self.datasets.image_column_name!r} and the "
                f"files, or lower --per_device_train_batch_size.{split}"
            )

    def _loader_position(self, epoch: int, batches: int) -> dict | None:
        """What a checkpoint records of the training loader: the epoch, the batches consumed in it and every
        worker's stream state (`None` when the loader cannot record it)."""
        if not self.train_loader.resumable:
            return None
        return {
            "epoch": epoch,
            "batches": batches,
            "num_workers": self.train_loader.dataloader.num_workers,
            "shuffle_buffer_size": self.data_args.shuffle_buffer_size,
            "loader": self.train_loader.state_dict(),
        }

    def _resume_loader(self, epoch: int, skip_batches: int) -> int:
        """Continue the training loader from the resumed checkpoint's position; returns the index of the first batch
        it gives: `skip_batches`, or 0 where the position does not apply (the consumed batches are then replayed)."""
        position, self.state.resume_position = self.state.resume_position, None
        recorded_block = (position or {}).get("shuffle_buffer_size", self.data_args.shuffle_buffer_size)
        if recorded_block != self.data_args.shuffle_buffer_size:
            # The block size decides the order of the whole epoch: another one would repeat or drop examples.
            raise ValueError(
                f"--shuffle_buffer_size {self.data_args.shuffle_buffer_size} is not the checkpoint's "
                f"({recorded_block}): resume with --shuffle_buffer_size {recorded_block}."
            )
        if skip_batches == 0:
            return 0
        workers = self.train_loader.dataloader.num_workers
        if position is not None and position["num_workers"] != workers:
            # Replayed with another number of workers, the epoch's first batches would be other examples than those
            # already trained on: some would be seen twice in the epoch, others never.
            raise ValueError(
                f"--dataloader_num_workers {workers} is not the checkpoint's ({position['num_workers']}), and the order "
                f"of an epoch's examples depends on it: resume with --dataloader_num_workers {position['num_workers']}."
            )
        if not self.train_loader.resumable:
            why = "this loader cannot restore a position (torchdata's StatefulDataLoader is not installed)"
        elif position is None:
            why = self.state.resume_note or "the checkpoint holds no loader position (it was written by an older version)"
        elif (position["epoch"], position["batches"]) != (epoch, skip_batches):
            why = (f"the checkpoint's loader position (epoch {position['epoch']}, batch {position['batches']}) is not "
                   f"the run's (epoch {epoch}, batch {skip_batches})")
        else:
            self.train_loader.load_state_dict(position["loader"])
            return skip_batches
        logger.warning(f"Resuming by replaying the {skip_batches} batches already used in epoch {epoch}: {why}.")
        return 0

    def model_inputs(self, batch: dict, batch_seed: int) -> dict[str, torch.Tensor]:
        device = self.accelerator.device
        inputs = {"pixel_values": self.normalize_batch(batch["pixel_values"].to(device, non_blocking=True))}
        if self.draws_masks:
            inputs["bool_masked_pos"] = self._masks(len(batch["pixel_values"]), batch_seed).to(device)
        if self.tokenizer is not None:
            tokenizer_views = batch["tokenizer_pixel_values"].to(device, non_blocking=True)
            inputs["labels"] = self.tokenizer(tokenizer_views)
        return inputs

    def _masks(self, batch_size: int, batch_seed: int) -> torch.Tensor:
        from ..models.masking import mask_generator_from_config, stack_masks

        generator = mask_generator_from_config(self.config, seed=batch_seed)
        return stack_masks([generator() for _ in range(batch_size)])

    def _load_tokenizer(self, model_args: ModelArguments):
        if getattr(self.config, "target", None) != "tokens":
            return None
        if not model_args.cae_tokenizer_path:
            raise ValueError(
                "CAE with target='tokens' (the official setting) needs the DALL-E tokenizer: pass "
                "--cae_tokenizer_path /path/to/encoder.pkl (a pickled module: add --cae_tokenizer_allow_unsafe_pickle "
                "if you trust the file), or train the labelled non-official pixel variant with "
                "--config_overrides target=pixels."
            )
        from ..models.tokenizer_dalle import DallETokenizer

        return DallETokenizer.from_file(
            model_args.cae_tokenizer_path, allow_unsafe_pickle=model_args.cae_tokenizer_allow_unsafe_pickle
        ).to(self.accelerator.device)

    def _tokenizer_view_settings(self) -> dict:
        # Without a tokenizer, no 112-px tokenizer view is cut (the CAE preset cuts one by default).
        return {"tokenizer_image_size": None} if self.tokenizer is None else {}

    def _augmentation(self):
        """The model type's preset, returning uint8 images: `model_inputs` normalises them on the device."""
        return pretraining_transform_for_model_type(
            self.model_type, self.image_size, normalize=False, **self._tokenizer_view_settings()
        )

    # ------------------------------------------------------------------ bad samples
    def skipped_summary(self) -> dict[str, float]:
        """Undecodable and loaded training images, summed over the ranks. Every rank must call it."""
        counts = torch.tensor([self.stats.num_skipped, self.stats.num_loaded], dtype=torch.int64,
                              device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        return {"train_skipped_samples": int(counts[0]), "train_loaded_samples": int(counts[1])}

    def skipped_report(self) -> dict:
        """Undecodable training images of every rank: totals, reasons, and `identifier`/`reason`/`rank` of each
        one (up to MAX_LISTED_SKIPPED_SAMPLES per rank). Every rank must call it."""
        ranks = [self.stats.to_dict()]
        if self.accelerator.num_processes > 1:
            ranks = gather_object(ranks)
        return _merged_skipped_report(ranks)

    def check_skipped_fraction(self) -> None:
        """Stop when this rank skipped more than `--max_skipped_fraction` of its images. Called by every rank before
        every training batch, from the first one on: the decision is agreed across ranks, so a rank over the limit
        never leaves the others waiting in the next collective."""
        seen = self.stats.num_skipped + self.stats.num_loaded
        limit = self.data_args.max_skipped_fraction
        # Before 1/limit images were read, one bad image alone would be over the limit: wait for that many, or for
        # the end of a pass that gave no batch at all.
        enough_read = seen >= (math.ceil(1 / limit) if limit > 0 else 1) or self.stats.num_loaded == 0
        over_limit = bool(seen) and enough_read and self.stats.num_skipped / seen > limit
        if self.accelerator.num_processes > 1:
            flag = torch.tensor([float(over_limit)], device=self.accelerator.device)
            if self.accelerator.reduce(flag, reduction="sum").item() > 0 and not over_limit:
                raise RuntimeError(
                    "Another rank could not decode more than --max_skipped_fraction "
                    f"{self.data_args.max_skipped_fraction} of its training images; every rank stops. Its list of "
                    f"skipped images is skipped_samples_rank<N>.json in {self.training_args.output_dir}."
                )
        if over_limit:
            rank = self.accelerator.process_index
            name = SKIPPED_SAMPLES_NAME if self.accelerator.num_processes == 1 else f"skipped_samples_rank{rank}.json"
            report = _merged_skipped_report([self.stats.to_dict()], first_rank=rank)
            path = write_skipped_samples(self.training_args.output_dir, report, name)
            raise RuntimeError(
                f"{self.stats.num_skipped} of {seen} training images could not be decoded "
                f"(more than --max_skipped_fraction {self.data_args.max_skipped_fraction}); stopping. "
                f"{self.stats.summary()}. The skipped images are listed in {path}."
            )

    # ------------------------------------------------------------------ evaluation
    def _evaluation_loader(self, dataset, max_samples: int | None):
        return build_evaluation_dataloader(
            limit_samples(dataset, max_samples),
            self.evaluation_transform,
            batch_size=self.training_args.per_device_eval_batch_size,
            rank=self.accelerator.process_index,
            world_size=self.accelerator.num_processes,
            num_workers=self.data_args.dataloader_num_workers,
            image_column_name=self.datasets.image_column_name,
            label_column_name=self.datasets.label_column_name,
            skip_undecodable=not self.data_args.strict_decoding,
        )

    @torch.no_grad()
    def evaluate(self, model, step: int) -> dict[str, float]:
        """kNN and linear probe on frozen encoder features, validation reconstruction loss, PNG grids.

        Runs on a forked RNG: evaluating (or not) never changes the random numbers training draws afterwards. Without
        a validation split there is nothing to evaluate (for every task): a warning, no metrics.
        """
        if self.datasets.validation is None:
            logger.warning("No validation split: skipping evaluation.", main_process_only=True)
            return {}
        devices = [self.accelerator.device] if self.accelerator.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(derived_seed(self.training_args.seed, 2))
            return self._evaluate(model, step)

    def _evaluate(self, model, step: int) -> dict[str, float]:
        results: dict[str, float] = {}
        validation = self.datasets.validation
        with eval_mode(model):
            if self.datasets.label_column_name is not None:
                results.update(self.frozen_feature_metrics(model))
            results.update(self._reconstruction_loss_and_pictures(model, validation, step))
            results.update(self.homologous_probe_metrics(model, validation))
        return results

    def homologous_probe_metrics(self, model, validation) -> dict[str, float]:
        """MixedAE only (mixing and homologous layers): `evaluation.homologous_probe` on a fixed validation batch,
        the same at every evaluation and on every rank (the first `per_device_eval_batch_size` images of the
        validation set as `max_eval_samples` keeps it, at least g, at most `max_eval_samples`, evaluation transform;
        mixing noise seeded by the run's seed)."""
        unwrapped = self.accelerator.unwrap_model(model)
        if not can_probe(unwrapped):
            return {}
        count = max(self.training_args.per_device_eval_batch_size, self.group_size)
        if self.data_args.max_eval_samples is not None:
            count = min(count, self.data_args.max_eval_samples)
        loader = build_evaluation_dataloader(
            _first(validation, count),
            self.evaluation_transform,
            batch_size=count,
            num_workers=0,
            image_column_name=self.datasets.image_column_name,
            label_column_name=None,
            skip_undecodable=not self.data_args.strict_decoding,
        )
        batch = next(iter(loader), None)
        if batch is None or batch["pixel_values"].shape[0] < self.group_size:
            return {}
        probe = homologous_probe(unwrapped, batch["pixel_values"], seed=derived_seed(self.training_args.seed, 4),
                                 image_std=self.evaluation_transform.std)
        return {
            "eval_homologous_topk_accuracy": probe["homologous_topk_accuracy"],
            "eval_homologous_topk_accuracy_foreground": probe["homologous_topk_accuracy_foreground"],
            "eval_homologous_topk_accuracy_other_keys": probe["homologous_topk_accuracy_other_keys"],
            "eval_homologous_contrastive_loss": probe["homologous_contrastive_loss"],
        }

    def frozen_feature_metrics(self, feature_model) -> dict[str, float]:
        """Weighted kNN and linear probe: bank = `max_eval_train_samples` training images (`limit_samples`),
        queries = the validation split, both with the evaluation transform. `feature_model` is one of our models
        (its encoder runs) or any module whose output has `last_hidden_state` (the [CLS] position is used)."""
        bank_loader = self._evaluation_loader(self.datasets.train, self.data_args.max_eval_train_samples)
        query_loader = self._evaluation_loader(self.datasets.validation, self.data_args.max_eval_samples)
        bank_features, bank_labels = extract_features(feature_model, bank_loader, self.accelerator)
        query_features, query_labels = extract_features(feature_model, query_loader, self.accelerator)
        return evaluate_frozen_features(
            bank_features,
            bank_labels,
            query_features,
            query_labels,
            num_classes=self.datasets.num_labels,
            knn_k=self.evaluation_args.knn_k,
            knn_temperature=self.evaluation_args.knn_temperature,
            epochs=self.evaluation_args.linear_probe_epochs,
            seed=self.training_args.seed,
        )


    def _reconstruction_loss_and_pictures(self, model, validation, step: int) -> dict[str, float]:
        """The pre-training loss on validation images (deterministic augmentation, masks and noise)."""
        eval_batch = self.training_args.per_device_eval_batch_size
        eval_batch -= eval_batch % self.group_size
        augmentation = SeededTransform(
            self._augmentation(),
            seed=derived_seed(self.training_args.seed, 1),
            rank=self.accelerator.process_index,
        )
        loader = build_pretraining_dataloader(
            limit_samples(validation, self.data_args.max_eval_samples),
            augmentation,
            batch_size=max(eval_batch, self.group_size),
            rank=self.accelerator.process_index,
            world_size=self.accelerator.num_processes,
            seed=self.training_args.seed,
            num_workers=0,
            drop_last=False,
            batch_multiple=self.group_size,
            shuffle_buffer_size=1,
            permute_map_style=False,  # the recorded evaluation order (mixing groups) of the validation images
            image_column_name=self.datasets.image_column_name,
            label_column_name=None,
        )
        total = torch.zeros(2, device=self.accelerator.device, dtype=torch.float64)
        for index, batch in enumerate(synchronized_batches(loader, self.accelerator)):
            inputs = self.model_inputs(batch, derived_seed(self.training_args.seed, 3, index))
            with self.accelerator.autocast():
                outputs = model(**inputs)
            if outputs.loss is not None:
                count = inputs["pixel_values"].shape[0]
                total[0] += outputs.loss.detach().double() * count
                total[1] += count
            if index == 0 and self.evaluation_args.save_visualizations and self.accelerator.is_main_process:
                self._save_pictures(model, inputs, outputs, step)
        total = self.accelerator.reduce(total, reduction="sum")
        return {"eval_loss": float(total[0] / total[1])} if total[1] > 0 else {}

    def _save_pictures(self, model, inputs: dict, outputs, step: int) -> None:
        directory = Path(self.training_args.output_dir) / "visualizations"
        pixel_values = inputs["pixel_values"][:NUM_VISUALIZED_IMAGES].float().cpu()
        mean, std = self.evaluation_transform.mean, self.evaluation_transform.std
        patch_size = self.config.patch_size
        if getattr(outputs, "ids_restore", None) is not None:  # a mixing model (MixedAE): show the mixed inputs
            group_size = self.group_size
            num_groups = pixel_values.shape[0] // group_size
            num_kept = self.config.num_kept(outputs.mask.shape[1])
            owner = mixing_assignment(outputs.ids_restore[:num_groups].cpu(), num_kept, group_size)
            grey = (0.5 - sum(mean) / 3) / (sum(std) / 3)
            mixed = mixed_samples(pixel_values[: num_groups * group_size], owner, patch_size, grey)
            save_reconstruction_grid(
                directory / f"step_{step}_reconstruction.png",
                pixel_values[: num_groups * group_size],
                outputs.mask[: num_groups * group_size].cpu() == 0,
                patch_size,
                mean,
                std,
                logits=outputs.logits[: num_groups * group_size].float().cpu(),
                norm_pix_loss=self.config.norm_pix_loss,
                seen_pixel_values=mixed.repeat_interleave(group_size, dim=0),
            )
            if group_size > 1 and self.config.resolved_homologous_attention_layers():
                self._save_homologous_attention(model, inputs, step, directory)
        else:
            masked = inputs["bool_masked_pos"][:NUM_VISUALIZED_IMAGES].cpu()
            logits = None
            if getattr(self.config, "target", None) == "pixels" and outputs.logits is not None:
                logits = _scatter_masked_predictions(outputs.logits.float().cpu(), masked, pixel_values.shape[0])
            save_reconstruction_grid(
                directory / f"step_{step}_reconstruction.png", pixel_values, ~masked, patch_size, mean, std,
                logits=logits, norm_pix_loss=self.config.norm_pix_loss,
            )

    def _save_homologous_attention(self, model, inputs, step, directory) -> None:
        """Which keys the last homologous layer kept for three queries of the first mixed sample."""
        unwrapped = self.accelerator.unwrap_model(model)
        group_pixels = inputs["pixel_values"][: self.group_size]
        num_patches = unwrapped.vit.embeddings.patch_embeddings.num_patches
        noise = torch.rand(1, num_patches, generator=torch.Generator().manual_seed(derived_seed(step)))
        mixing = unwrapped.draw_mixing(self.group_size, num_patches, noise.to(group_pixels.device),
                                       device=group_pixels.device)
        encoder_outputs = unwrapped.vit(group_pixels, mixing=mixing, output_attentions=True)
        last_layer = self.config.resolved_homologous_attention_layers()[-1]
        attention = encoder_outputs.attentions[last_layer][0].float().cpu()  # (heads, 1 + L, 1 + L)
        kept_fraction_tokens = (attention > 0).float().mean(dim=0)[1:, 1:]  # (L, L) over mixed tokens
        ids_keep = mixing.ids_keep[0].cpu()
        owner = mixing_assignment(mixing.ids_restore[:1].cpu(), mixing.num_kept, self.group_size)[0]
        mixed_image = mixed_samples(group_pixels.float().cpu(), owner[None], self.config.patch_size, 0.0)
        queries = [0, len(ids_keep) // 2, len(ids_keep) - 1]
        kept_fraction = torch.zeros(len(queries), owner.shape[0])
        kept_fraction[:, ids_keep] = kept_fraction_tokens[queries]
        grid = unwrapped.vit.embeddings.patch_embeddings.grid_size
        save_homologous_attention_figure(
            directory / f"step_{step}_homologous_attention.png",
            to_display(mixed_image, self.evaluation_transform.mean, self.evaluation_transform.std)[0],
            kept_fraction,
            [int(ids_keep[q]) for q in queries],
            owner,
            grid,
        )


def image_processor_for(config):
    """The image processor saved with a model: every setting derived from the model's own config (image size; for
    CAE also the patch grid and the mask settings), so the saved folder's processor always fits its model."""
    from ..hub.registration import pil_image_processor_class

    return pil_image_processor_class(config).from_model_config(config)


class RawPixelFeatures(torch.nn.Module):
    """The evaluation-transformed pixels themselves as features (the raw-pixel baseline of kNN / linear probe)."""

    def forward(self, pixel_values: torch.Tensor, **kwargs):
        from transformers.modeling_outputs import BaseModelOutput

        return BaseModelOutput(last_hidden_state=pixel_values.flatten(1)[:, None, :])


def _merged_skipped_report(ranks: list[dict], first_rank: int = 0) -> dict:
    reasons = Counter()
    for stats in ranks:
        reasons.update(stats["reasons"])
    return {
        "num_skipped": sum(stats["num_skipped"] for stats in ranks),
        "num_loaded": sum(stats["num_loaded"] for stats in ranks),
        "num_trimmed": sum(stats["num_trimmed"] for stats in ranks),
        "reasons": dict(reasons),
        "all_listed": all(len(stats["skipped"]) == stats["num_skipped"] for stats in ranks),
        "skipped": [
            {"identifier": identifier, "reason": reason, "rank": rank}
            for rank, stats in enumerate(ranks, start=first_rank)
            for identifier, reason in stats["skipped"]
        ],
    }


def _first(dataset, count: int):
    """The first `count` examples: the homologous probe's fixed batch, comparable across runs."""
    if isinstance(dataset, datasets.Dataset):
        return dataset.select(range(min(count, len(dataset))))
    return dataset.take(count)


def _scatter_masked_predictions(logits: torch.Tensor, masked: torch.Tensor, batch_size: int) -> torch.Tensor:
    """CAE pixel predictions `(B, num_masked, P)` (masked positions in raster order) -> `(B, N, P)`, zeros elsewhere."""
    num_patches = masked.shape[1]
    per_image = logits.view(-1, logits.shape[-2], logits.shape[-1])[: masked.shape[0]]
    full = torch.zeros(masked.shape[0], num_patches, per_image.shape[-1])
    full[masked] = per_image.reshape(-1, per_image.shape[-1])
    return full
