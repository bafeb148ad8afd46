# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Fine-tuning and linear probing of MixedAE / CAE encoders: the logic behind `examples/run_image_classification.py`.

* `--mode finetune` (MAE / CAE fine-tuning recipe): the whole `...ForImageClassification` model trains with AdamW,
  layer-wise learning-rate decay (embeddings = layer 0, block i = i + 1, final norm / fc_norm / head = L + 1, lr x
  decay**(L + 1 - id)), drop path, warm-up + cosine and label smoothing.
* `--mode linear_probe` (MAE protocol): the encoder is frozen (eval mode, no drop path, `requires_grad=False`), the
  head is `BatchNorm1d(D, affine=False, eps=1e-6)` + Linear (trunc-normal std 0.01) on the final-norm [CLS] token,
  trained with SGD. At the end the BatchNorm (running statistics) is folded into the Linear, so the saved model is
  a plain `...ForImageClassification` with `classifier_pooling="cls"` giving the same logits.

The training loop reuses the pre-training machinery (`pretraining`, `pretraining_data`, `checkpointing`): per-rank
streamed loaders with seeded augmentation, atomic checkpoints that restore weights, optimizer, schedule, RNG and
data position (a resumed run ends with the same weights), SIGTERM handling and non-finite step skipping.
"""

import math
import time
from pathlib import Path
from typing import Any

import datasets
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoConfig, PreTrainedModel, get_scheduler

from .data import (
    CAE_CROP_SCALE,
    BatchNormalizer,
    EvaluationTransform,
    PretrainingTransform,
    SkippedSampleStats,
    build_pretraining_dataloader,
)
from .evaluation import LINEAR_PROBE_BATCH_NORM_EPS, LINEAR_PROBE_INIT_STD, Accuracy, _gather_uneven
from .finetuning_args import (
    ClassificationDataArguments,
    ClassificationModelArguments,
    FinetuningArguments,
    recipe_drop_path_rate,
    resolve_recipe,
)
from .pretraining import (
    NonFiniteTrainingError,
    TerminationRequest,
    TrainingProgress,
    _trackers,
    base_encoder,
    build_optimizer,
    checkpoint_if_due,
    effective_learning_rate,
    gradients_are_finite,
    log_evaluation,
    parameter_groups,
    prepare_run_folders,
    resume_if_requested,
    run_recipe,
    save_then_evaluate,
    training_results,
)
from .output_folders import check_model_path
from .pretraining_args import MODEL_TYPES, parse_config_overrides
from .pretraining_data import (
    MAX_LISTED_SKIPPED_SAMPLES,
    DataState,
    PretrainingData,
    SeededTransform,
    image_processor_for,
    load_run_datasets,
)

logger = get_logger(__name__)

NO_DECAY_TOKENS = ("cls_token", "position_embeddings")
DEFAULT_EVAL_DATASET = "zalando-datasets/fashion_mnist"  # Hub id of the data the embedded default is drawn from


# ---------------------------------------------------------------------------------------------- model
def classification_class(model_type: str) -> type:
    if model_type == "mixedae":
        from .modeling_mixedae import MixedAEForImageClassification

        return MixedAEForImageClassification
    if model_type == "cae":
        from .modeling_cae import CAEForImageClassification

        return CAEForImageClassification
    raise ValueError(f"model type {model_type!r} is not supported; choose one of {MODEL_TYPES}.")


def checkpoint_model_type(model_args: ClassificationModelArguments) -> str:
    """The model type of `--model_name_or_path` (read from its config), or `--model_type` for a fresh model."""
    if model_args.model_name_or_path:
        check_model_path(model_args.model_name_or_path, "--model_name_or_path")
        model_type = AutoConfig.from_pretrained(model_args.model_name_or_path).model_type
        if model_args.model_type and model_args.model_type != model_type:
            raise ValueError(
                f"--model_type {model_args.model_type} but {model_args.model_name_or_path} is a {model_type} checkpoint."
            )
        return model_type
    if not model_args.model_type:
        raise ValueError("Pass --model_name_or_path (a MixedAE/CAE checkpoint) or --model_type to start from scratch.")
    return model_args.model_type


def build_classification_model(
    model_args: ClassificationModelArguments, training_args: FinetuningArguments, model_type: str, label_names: list[str]
) -> PreTrainedModel:
    """`...ForImageClassification` from a checkpoint (any of ours; a new head for these labels) or from scratch;
    for linear probing with the BatchNorm + Linear head and a frozen encoder."""
    model_class = classification_class(model_type)
    overrides = parse_config_overrides(model_args.config_overrides, model_class.config_class)
    for name in ("image_size", "patch_size", "classifier_pooling"):
        if getattr(model_args, name) is not None:
            overrides[name] = getattr(model_args, name)
    overrides.setdefault("drop_path_rate", recipe_drop_path_rate(training_args))
    if training_args.mode == "linear_probe":
        overrides.update(classifier_pooling="cls", drop_path_rate=0.0)
    labels = dict(
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: index for index, name in enumerate(label_names)},
    )
    if model_args.attn_implementation:
        overrides["attn_implementation"] = model_args.attn_implementation
    if model_args.model_name_or_path:
        model = model_class.from_pretrained(
            model_args.model_name_or_path, **overrides, **labels, ignore_mismatched_sizes=True
        )
    else:
        model = model_class(model_class.config_class(**overrides, **labels))
    if training_args.mode == "linear_probe":
        add_linear_probe_head(model)
    if model_args.activation_checkpointing:
        model.activation_checkpointing_enable()
    return model


def add_linear_probe_head(model: PreTrainedModel) -> None:
    """Freeze everything and put MAE's probe head (BatchNorm without affine + Linear, trunc-normal 0.01) on [CLS]."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    hidden_size = model.config.hidden_size
    linear = nn.Linear(hidden_size, model.config.num_labels)
    nn.init.trunc_normal_(linear.weight, std=LINEAR_PROBE_INIT_STD)
    nn.init.zeros_(linear.bias)
    model.classifier = nn.Sequential(
        nn.BatchNorm1d(hidden_size, affine=False, eps=LINEAR_PROBE_BATCH_NORM_EPS), linear
    )


@torch.no_grad()
def fold_linear_probe_head(model: PreTrainedModel) -> None:
    """Replace the BatchNorm + Linear probe head by one Linear with the same eval-mode output (loadable by the plain
    `...ForImageClassification` class)."""
    head = model.classifier
    if not isinstance(head, nn.Sequential):
        return
    norm, linear = head
    scale = (norm.running_var + norm.eps).rsqrt()
    folded = nn.Linear(linear.in_features, linear.out_features).to(linear.weight.device, linear.weight.dtype)
    folded.weight.copy_(linear.weight * scale)
    folded.bias.copy_(linear.bias - folded.weight @ norm.running_mean)
    model.classifier = folded


def layer_id(name: str, base_prefix: str, num_layers: int) -> int:
    """Layer index of a parameter for layer-wise lr decay: embeddings 0, block i -> i + 1, everything after the
    blocks (final norm, fc_norm, classifier) L + 1."""
    parts = name.split(".")
    if parts[0] == base_prefix:
        parts = parts[1:]
    if parts[0] == "embeddings":
        return 0
    if parts[0] == "layers":
        return int(parts[1]) + 1
    return num_layers + 1


def layer_decay_parameter_groups(
    model: nn.Module, weight_decay: float, learning_rate: float, layer_decay: float
) -> list[dict]:
    """`parameter_groups` (no decay on biases / 1-D parameters) split per layer, each with
    `lr = learning_rate * layer_decay ** (L + 1 - layer_id)` (MAE/BEiT layer-wise decay)."""
    unwrapped = getattr(model, "module", model)
    num_layers = unwrapped.config.num_hidden_layers
    prefix = unwrapped.base_model_prefix
    layer_of = {id(p): layer_id(name, prefix, num_layers) for name, p in unwrapped.named_parameters()}
    # MAE's fine-tuning also exempts the [CLS] token and position embeddings from weight decay.
    exempt = {id(p) for name, p in unwrapped.named_parameters() if name.endswith(NO_DECAY_TOKENS)}
    groups: dict[tuple[int, float], dict] = {}
    for base_group in parameter_groups(unwrapped, weight_decay):
        for parameter in base_group["params"]:
            layer = layer_of[id(parameter)]
            decay = 0.0 if id(parameter) in exempt else base_group["weight_decay"]
            key = (layer, decay)
            if key not in groups:
                scale = layer_decay ** (num_layers + 1 - layer)
                groups[key] = {"params": [], "weight_decay": decay, "lr": learning_rate * scale, "lr_scale": scale,
                               "layer_id": layer}
            groups[key]["params"].append(parameter)
    return [groups[key] for key in sorted(groups)]


def build_classification_optimizer(model, training_args: FinetuningArguments, model_type: str, lr: float):
    if training_args.mode == "linear_probe":
        groups = parameter_groups(model, training_args.weight_decay)
        return torch.optim.SGD([g for g in groups if g["params"]], lr=lr, momentum=training_args.momentum)
    groups = layer_decay_parameter_groups(model, training_args.weight_decay, lr, training_args.layer_decay)
    return build_optimizer(model, training_args, model_type, lr, groups=groups)


# ---------------------------------------------------------------------------------------------- data
class ClassificationData(PretrainingData):
    """Labelled train/validation data: RandomResizedCrop (0.08, 1) + flip for training, resize + centre crop for
    evaluation; per-rank loaders, seeding and resume positions as in pre-training (`PretrainingData`)."""

    def __init__(self, data_args: ClassificationDataArguments, training_args: FinetuningArguments, accelerator):
        self.data_args = data_args
        self.training_args = training_args
        self.accelerator = accelerator
        self.group_size = 1
        self.tokenizer = None
        if not data_args.label_column_name:
            raise ValueError("image classification needs labels: pass --label_column_name.")
        self.datasets = load_run_datasets(data_args, training_args)
        self.source = self.datasets.source
        self.label_names = self.datasets.label_names or self._integer_label_names()
        self.stats = SkippedSampleStats(max_recorded=MAX_LISTED_SKIPPED_SAMPLES)
        self.state = DataState(self.stats, accelerator)

    def _integer_label_names(self) -> list[str]:
        train = self.datasets.train
        if not isinstance(train, datasets.Dataset):
            raise ValueError(
                f"the label column {self.datasets.label_column_name!r} of {self.source} is not a ClassLabel, so the "
                "number of classes is unknown when streaming; cast it to ClassLabel or load without --streaming."
            )
        values = sorted(train.unique(self.datasets.label_column_name))
        if values != list(range(len(values))):
            raise ValueError(f"labels of {self.source} must be ClassLabel or the integers 0..C-1; found {values[:10]}")
        return [str(value) for value in values]

    def build_loaders(self, config) -> None:
        self.config = config
        self.model_type = config.model_type
        self.image_size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
        # uint8 out of the data workers, normalised on the device by `model_inputs`.
        augmentation = PretrainingTransform(self.image_size, scale=CAE_CROP_SCALE, normalize=False)
        self.normalize_batch = BatchNormalizer(augmentation.mean, augmentation.std, self.accelerator.device)
        self.train_transform = SeededTransform(augmentation, self.training_args.seed, self.accelerator.process_index)
        self.train_loader = build_pretraining_dataloader(
            self.datasets.train,
            self.train_transform,
            batch_size=self.training_args.per_device_train_batch_size,
            rank=self.accelerator.process_index,
            world_size=self.accelerator.num_processes,
            seed=self.training_args.seed,
            num_workers=self.data_args.dataloader_num_workers,
            drop_last=True,
            shuffle_buffer_size=self.data_args.shuffle_buffer_size,
            image_column_name=self.datasets.image_column_name,
            label_column_name=self.datasets.label_column_name,
            skip_undecodable=not self.data_args.strict_decoding,
            pin_memory=torch.cuda.is_available(),
        )
        self.train_loader.stats = self.stats
        self.evaluation_transform = EvaluationTransform(self.image_size)
        self.image_processor = image_processor_for(config)

    def model_inputs(self, batch: dict, batch_seed: int) -> dict[str, torch.Tensor]:
        device = self.accelerator.device
        pixel_values = self.normalize_batch(batch["pixel_values"].to(device, non_blocking=True))
        return {"pixel_values": pixel_values, "labels": batch["labels"].to(device)}

    @torch.no_grad()
    def _evaluate(self, model, step: int) -> dict[str, float]:
        """Top-1 / top-5 accuracy (the shipped `evaluate` metric) and loss on the validation split, all ranks."""
        if self.datasets.validation is None:
            logger.warning("No validation split: skipping evaluation.", main_process_only=True)
            return {}
        # The unwrapped model: DDP's forward would synchronise buffers, and ranks may hold different batch counts.
        module = self.accelerator.unwrap_model(model)
        was_training = module.training
        module.eval()
        logits, labels = [torch.zeros(0, module.config.num_labels)], [torch.zeros(0, dtype=torch.long)]
        for batch in self._evaluation_loader(self.datasets.validation, self.data_args.max_eval_samples):
            if "pixel_values" not in batch:
                continue
            with self.accelerator.autocast():
                outputs = module(pixel_values=batch["pixel_values"].to(self.accelerator.device))
            logits.append(outputs.logits.float().cpu())
            labels.append(batch["labels"].cpu())
        module.train(was_training)
        all_logits, all_labels = torch.cat(logits), torch.cat(labels)
        if self.accelerator.num_processes > 1:
            all_logits = _gather_uneven(self.accelerator, all_logits)
            all_labels = _gather_uneven(self.accelerator, all_labels)
        if not len(all_labels):
            return {}
        metric = Accuracy(keep_in_memory=True)
        metric.add_batch(predictions=all_logits.numpy(), references=all_labels.numpy())
        accuracy = metric.compute(top_k=(1, 5))
        results = {f"eval_{name}": value for name, value in accuracy.items()}
        results["eval_loss"] = float(F.cross_entropy(all_logits, all_labels))
        results["eval_samples"] = len(all_labels)
        return results

    def eval_dataset_id(self) -> str:
        if self.data_args.dataset_name:
            return self.data_args.dataset_name
        return "imagefolder" if self.data_args.train_dir else DEFAULT_EVAL_DATASET


# ---------------------------------------------------------------------------------------------- loop
def run_image_classification(
    model_args: ClassificationModelArguments,
    data_args: ClassificationDataArguments,
    training_args: FinetuningArguments,
    accelerator: Accelerator | None = None,
) -> dict[str, Any]:
    """Fine-tune or linear-probe, evaluate, save. Returns the final metrics (also in `output_dir/all_results.json`)."""
    model_type = checkpoint_model_type(model_args)
    resolve_recipe(model_args, training_args, model_type)
    if accelerator is None:
        accelerator = Accelerator(
            cpu=not torch.cuda.is_available(),
            gradient_accumulation_steps=training_args.gradient_accumulation_steps,
            log_with=_trackers(training_args.report_to),
            project_dir=training_args.output_dir,
        )
    parse_config_overrides(model_args.config_overrides, classification_class(model_type).config_class)
    output_dir, checkpoint = prepare_run_folders(accelerator, model_args, training_args)

    data = ClassificationData(data_args, training_args, accelerator)
    set_seed(training_args.seed, device_specific=True)
    model = build_classification_model(model_args, training_args, model_type, data.label_names)
    data.build_loaders(model.config)
    linear_probe = training_args.mode == "linear_probe"

    world_size = accelerator.num_processes
    total_batch_size = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * world_size
    lr = effective_learning_rate(training_args, total_batch_size)
    steps_per_epoch = data.optimizer_steps_per_epoch(total_batch_size)
    if training_args.max_train_steps is not None:
        max_train_steps = training_args.max_train_steps
    elif steps_per_epoch is not None:
        max_train_steps = max(1, math.ceil(training_args.num_train_epochs * steps_per_epoch))
    else:
        raise ValueError("The number of training examples is unknown (streaming without split sizes): pass --max_train_steps.")
    steps_per_epoch = steps_per_epoch or max_train_steps
    if training_args.warmup_steps is not None:
        warmup_steps = training_args.warmup_steps
    else:
        warmup_steps = min(round(training_args.warmup_epochs * steps_per_epoch), max_train_steps // 2)

    optimizer = build_classification_optimizer(model, training_args, model_type, lr)
    scheduler = get_scheduler(
        training_args.lr_scheduler_type, optimizer, num_warmup_steps=warmup_steps, num_training_steps=max_train_steps
    )
    recipe = run_recipe(model, training_args, world_size, lr, max_train_steps, warmup_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    if model_args.torch_compile:
        model = torch.compile(model)
    progress = TrainingProgress()
    accelerator.register_for_checkpointing(scheduler, progress, data.state)
    resume_if_requested(accelerator, checkpoint, progress, recipe, training_args.allow_recipe_change)
    logger.info(
        f"{training_args.mode} ({training_args.recipe} recipe) of {model_type}: {max_train_steps} optimizer steps, "
        f"global batch {total_batch_size}, lr {lr:.3g}, layer decay {training_args.layer_decay}, warm-up {warmup_steps}",
        main_process_only=True,
    )

    bar = tqdm(total=max_train_steps, initial=progress.completed_steps, disable=not accelerator.is_local_main_process,
               desc=training_args.mode, dynamic_ncols=True)
    eval_results: dict[str, float] = {}
    start_time, start_images = time.perf_counter(), progress.images_seen
    window_loss = torch.full((), progress.window_loss_sum, device=accelerator.device)
    window_batches = progress.window_batches
    step_loss = torch.zeros((), device=accelerator.device)
    step_batches = 0
    stopped_by_signal = False

    def train_mode():
        model.train()
        if linear_probe:  # the frozen encoder stays in eval mode; only the probe's BatchNorm trains
            base_encoder(accelerator.unwrap_model(model)).eval()

    with TerminationRequest() as termination:
        while progress.completed_steps < max_train_steps and not stopped_by_signal:
            train_mode()
            batches = data.train_batches(progress.epoch, steps_per_epoch * training_args.gradient_accumulation_steps,
                                         skip_batches=progress.batches_in_epoch)
            for batch in batches:
                with accelerator.accumulate(model):
                    logits = model(pixel_values=batch["pixel_values"]).logits
                    loss = F.cross_entropy(logits.float(), batch["labels"], label_smoothing=training_args.label_smoothing)
                    accelerator.backward(loss)
                    progress.batches_in_epoch += 1
                    progress.images_seen += batch["pixel_values"].shape[0] * world_size
                    step_loss += loss.detach().float()
                    step_batches += 1
                    if accelerator.sync_gradients:
                        if gradients_are_finite(accelerator, model, training_args.max_grad_norm):
                            optimizer.step()
                            progress.consecutive_nonfinite_steps = 0
                            window_loss += step_loss
                            window_batches += step_batches
                        else:
                            progress.skipped_nonfinite_steps += 1
                            progress.consecutive_nonfinite_steps += 1
                        optimizer.zero_grad(set_to_none=True)
                        step_loss.zero_()
                        step_batches = 0
                if not accelerator.sync_gradients:
                    continue
                scheduler.step()
                progress.completed_steps += 1
                bar.update(1)
                if progress.consecutive_nonfinite_steps >= training_args.max_consecutive_nonfinite_steps:
                    raise NonFiniteTrainingError(
                        f"{progress.consecutive_nonfinite_steps} optimizer steps in a row had a non-finite loss or "
                        f"gradient (step {progress.completed_steps}); stopping. Lower the learning rate or set "
                        "--max_grad_norm."
                    )
                if progress.completed_steps % training_args.logging_steps == 0 or progress.completed_steps == max_train_steps:
                    mean_loss = accelerator.reduce(window_loss / max(window_batches, 1), reduction="mean").item()
                    if window_batches:
                        progress.train_loss_sum += mean_loss * window_batches
                        progress.train_loss_count += window_batches
                    current_lr = max(scheduler.get_last_lr())
                    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{current_lr:.2e}")
                    accelerator.log({"train/loss": mean_loss, "train/learning_rate": current_lr},
                                    step=progress.completed_steps)
                    window_loss.zero_()
                    window_batches = 0
                if training_args.eval_steps and progress.completed_steps % training_args.eval_steps == 0:
                    eval_results = data.evaluate(model, step=progress.completed_steps)
                    accelerator.log(eval_results, step=progress.completed_steps)
                    log_evaluation(progress.completed_steps, eval_results)
                    train_mode()
                stopped_by_signal = termination.requested
                checkpoint_if_due(accelerator, training_args, output_dir, progress, window_loss, window_batches,
                                  stopping=stopped_by_signal, recipe=recipe)
                if stopped_by_signal:
                    break
                if progress.completed_steps >= max_train_steps:
                    break
            else:  # the epoch's batches are exhausted
                progress.epoch += 1
                progress.batches_in_epoch = 0
    bar.close()

    results = training_results(progress, data, start_images, time.perf_counter() - start_time)
    if stopped_by_signal:
        results["stopped_by_signal"] = True
        accelerator.end_training()
        return results
    if linear_probe:  # the saved (and finally evaluated) model is the plain classifier with the BatchNorm folded in
        fold_linear_probe_head(accelerator.unwrap_model(model))
    base_model = model_args.model_name_or_path
    card_kwargs = dict(
        eval_dataset=data.eval_dataset_id(),
        eval_dataset_name=data.source,
        evaluation_protocol="linear probing" if linear_probe else "fine-tuning",
        base_model=base_model if base_model and not Path(base_model).exists() else None,
    )
    results = save_then_evaluate(accelerator, model, data, output_dir, results, eval_results, progress.completed_steps,
                                 model_args, training_args, card_kwargs=card_kwargs)
    accelerator.end_training()
    return results
