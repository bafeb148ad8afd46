# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Pre-training of MixedAE and CAE with Accelerate: the logic behind `examples/run_mim.py`.

One process on CPU, one GPU, many GPUs or many nodes (`accelerate launch`). Each rank reads a disjoint part of
the (streamed) dataset; the optimizer step, learning-rate schedule and logged numbers count optimizer steps
over the global batch `per_device_train_batch_size * gradient_accumulation_steps * world_size`. Checkpoints
are atomic `accelerator.save_state` folders; resuming restores weights, optimizer, schedule, RNG and the data
position, so an interrupted run ends with the same weights as an uninterrupted one.
"""

import json
import math
import os
import shlex
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import PreTrainedModel, get_scheduler

from .checkpointing import check_checkpoint_is_safe, ensure_writable_directory, resolve_checkpoint, save_checkpoint
from .configuration_mixedae import MixedAEConfig
from .modeling_mixedae import MixedAEForPreTraining
from .pretraining_args import MODEL_TYPES, DataArguments, ModelArguments, PretrainingArguments, parse_config_overrides
from .training_records import TRAIN_LOG_NAME, TrainLog, write_skipped_samples

logger = get_logger(__name__)

DEFAULT_BASE_LEARNING_RATE = 1.5e-4
DEFAULT_BETA2 = {"mixedae": 0.95, "cae": 0.999}


# ---------------------------------------------------------------------------------------------- model
def pretraining_classes(model_type: str) -> tuple[type, type]:
    if model_type == "mixedae":
        return MixedAEConfig, MixedAEForPreTraining
    if model_type == "cae":
        from .configuration_cae import CAEConfig
        from .modeling_cae import CAEForPreTraining

        return CAEConfig, CAEForPreTraining
    raise ValueError(f"--model_type {model_type!r} is not supported; choose one of {MODEL_TYPES}.")


def build_pretraining_model(model_args: ModelArguments) -> PreTrainedModel:
    """A fresh model from the config defaults + overrides, or a checkpoint (`model_name_or_path`) + overrides."""
    config_class, model_class = pretraining_classes(model_args.model_type)
    overrides = parse_config_overrides(model_args.config_overrides)
    if model_args.image_size is not None:
        overrides["image_size"] = model_args.image_size
    if model_args.patch_size is not None:
        overrides["patch_size"] = model_args.patch_size
    load_kwargs = {}
    if model_args.attn_implementation:
        load_kwargs["attn_implementation"] = model_args.attn_implementation
    if model_args.model_name_or_path:
        model = model_class.from_pretrained(model_args.model_name_or_path, **overrides, **load_kwargs)
    else:
        unknown = sorted(set(overrides) - set(config_class.__dataclass_fields__))
        if unknown:
            raise ValueError(
                f"--config_overrides names fields that {config_class.__name__} does not have: {unknown}."
            )
        model = model_class(config_class(**overrides, **load_kwargs))
    if model_args.activation_checkpointing:
        model.activation_checkpointing_enable()
    return model


def base_encoder(model: PreTrainedModel) -> PreTrainedModel:
    """The encoder inside a pre-training model (what kNN / linear probe evaluate)."""
    return getattr(model, model.base_model_prefix)


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups as MAE and CAE: no decay on biases and 1-D parameters (norms, LayerScale)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim <= 1 or name.endswith(".bias") else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(
    model: torch.nn.Module, args: PretrainingArguments, model_type: str, lr: float, groups: list[dict] | None = None
):
    """AdamW over `groups` (default `parameter_groups(model, args.weight_decay)`; groups may set their own lr)."""
    betas = (args.adam_beta1, args.adam_beta2 if args.adam_beta2 is not None else DEFAULT_BETA2[model_type])
    groups = parameter_groups(model, args.weight_decay) if groups is None else groups
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=lr, betas=betas)


def effective_learning_rate(args: PretrainingArguments, total_batch_size: int) -> float:
    if args.learning_rate is not None:
        return args.learning_rate
    base = args.base_learning_rate if args.base_learning_rate is not None else DEFAULT_BASE_LEARNING_RATE
    return base * total_batch_size / 256


# ---------------------------------------------------------------------------------------------- progress
@dataclass
class TrainingProgress:
    """Everything besides model/optimizer/scheduler/RNG that a resumed run needs; saved with each checkpoint."""

    completed_steps: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    skipped_nonfinite_steps: int = 0
    consecutive_nonfinite_steps: int = 0
    train_loss_sum: float = 0.0
    train_loss_count: int = 0
    images_seen: int = 0
    # Loss of the logging window not logged yet when a checkpoint falls between two logging steps (mean over ranks).
    window_loss_sum: float = 0.0
    window_batches: int = 0

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


class TerminationRequest:
    """Turns SIGTERM (what schedulers send before preemption) into a flag the loop checks between steps."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if hasattr(signal, "SIGTERM") and _in_main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class NonFiniteTrainingError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------- loop
def gradients_are_finite(accelerator: Accelerator, model: torch.nn.Module, max_grad_norm: float | None) -> bool:
    """Clip (when asked) and check the global gradient norm: one host sync per optimizer step, needed to skip a
    non-finite step before the optimizer applies it."""
    parameters = [p for p in model.parameters() if p.grad is not None]
    total_norm = accelerator.clip_grad_norm_(parameters, max_grad_norm if max_grad_norm else float("inf"))
    return bool(torch.isfinite(total_norm))


def run_pretraining(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: PretrainingArguments,
    accelerator: Accelerator | None = None,
) -> dict[str, Any]:
    """Pre-train, evaluate, save. Returns the final metrics (also written to `output_dir/all_results.json`)."""
    from .pretraining_data import PretrainingData

    if accelerator is None:
        accelerator = Accelerator(
            cpu=not torch.cuda.is_available(),
            gradient_accumulation_steps=training_args.gradient_accumulation_steps,
            log_with=_trackers(training_args.report_to),
            project_dir=training_args.output_dir,
        )
    output_dir = Path(training_args.output_dir)
    if accelerator.is_main_process:
        ensure_writable_directory(output_dir)
    accelerator.wait_for_everyone()
    set_seed(training_args.seed, device_specific=True)

    model = build_pretraining_model(model_args)
    data = PretrainingData(model, model_args, data_args, training_args, accelerator)

    world_size = accelerator.num_processes
    total_batch_size = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * world_size
    lr = effective_learning_rate(training_args, total_batch_size)
    steps_per_epoch = data.optimizer_steps_per_epoch(total_batch_size)
    if training_args.max_train_steps is not None:
        max_train_steps = training_args.max_train_steps
    elif steps_per_epoch is not None:
        max_train_steps = max(1, math.ceil(training_args.num_train_epochs * steps_per_epoch))
    else:
        raise ValueError(
            "The number of training examples is unknown (streaming without split sizes): pass --max_train_steps."
        )
    if steps_per_epoch is None:
        steps_per_epoch = max_train_steps
    warmup_steps = (
        training_args.warmup_steps
        if training_args.warmup_steps is not None
        else round(training_args.warmup_ratio * max_train_steps)
    )

    optimizer = build_optimizer(model, training_args, model_args.model_type, lr)
    scheduler = get_scheduler(
        training_args.lr_scheduler_type, optimizer, num_warmup_steps=warmup_steps, num_training_steps=max_train_steps
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    if model_args.torch_compile:
        model = torch.compile(model)
    progress = TrainingProgress()
    # The scheduler is stepped by hand once per optimizer step (accelerate would step it once per process).
    accelerator.register_for_checkpointing(scheduler, progress, data.state)

    resume_if_requested(accelerator, training_args.resume_from_checkpoint, output_dir, progress)
    train_log = TrainLog(output_dir / TRAIN_LOG_NAME, enabled=accelerator.is_main_process)
    train_log.keep_until(progress.completed_steps)

    if accelerator.is_main_process:
        accelerator.init_trackers("run_mim", config=_flat_config(model_args, data_args, training_args))
    logger.info(
        f"Training {model_args.model_type}: {max_train_steps} optimizer steps, global batch {total_batch_size} "
        f"({world_size} processes x {training_args.per_device_train_batch_size} x "
        f"{training_args.gradient_accumulation_steps} accumulation), lr {lr:.3g}",
        main_process_only=True,
    )

    bar = tqdm(
        total=max_train_steps, initial=progress.completed_steps, disable=not accelerator.is_local_main_process,
        desc="pre-training", dynamic_ncols=True,
    )
    eval_results: dict[str, float] = {}
    start_time, start_images = time.perf_counter(), progress.images_seen
    window_loss = torch.full((), progress.window_loss_sum, device=accelerator.device)
    window_batches = progress.window_batches
    step_loss = torch.zeros((), device=accelerator.device)
    step_batches = 0
    window_start = time.perf_counter()
    window_images = 0
    stopped_by_signal = False

    with TerminationRequest() as termination:
        while progress.completed_steps < max_train_steps and not stopped_by_signal:
            model.train()
            batches_per_epoch = steps_per_epoch * training_args.gradient_accumulation_steps
            batches = data.train_batches(progress.epoch, batches_per_epoch, skip_batches=progress.batches_in_epoch)
            for batch in batches:
                with accelerator.accumulate(model):
                    outputs = model(**batch)
                    loss = outputs.loss
                    accelerator.backward(loss)
                    progress.batches_in_epoch += 1
                    batch_images = batch["pixel_values"].shape[0] * world_size
                    progress.images_seen += batch_images
                    window_images += batch_images
                    step_loss += loss.detach().float()
                    step_batches += 1
                    if accelerator.sync_gradients:
                        if gradients_are_finite(accelerator, model, training_args.max_grad_norm):
                            optimizer.step()
                            progress.consecutive_nonfinite_steps = 0
                            window_loss += step_loss  # skipped steps stay out of the logged and final losses
                            window_batches += step_batches
                        else:
                            progress.skipped_nonfinite_steps += 1
                            progress.consecutive_nonfinite_steps += 1
                            logger.warning(
                                f"Non-finite loss or gradient at step {progress.completed_steps}: step skipped "
                                f"({progress.consecutive_nonfinite_steps} in a row).",
                                main_process_only=True,
                            )
                        optimizer.zero_grad(set_to_none=True)
                        step_loss.zero_()
                        step_batches = 0
                if not accelerator.sync_gradients:
                    continue
                scheduler.step()
                progress.completed_steps += 1
                bar.update(1)

                if progress.consecutive_nonfinite_steps >= training_args.max_consecutive_nonfinite_steps:
                    last = resolve_checkpoint("latest", output_dir)
                    raise NonFiniteTrainingError(
                        f"{progress.consecutive_nonfinite_steps} optimizer steps in a row had a non-finite loss or "
                        f"gradient (step {progress.completed_steps}); stopping. The last good checkpoint is "
                        f"{last if last else '(none written)'} and was not touched. Lower the learning rate, set "
                        "--max_grad_norm, or check the data."
                    )

                if progress.completed_steps % training_args.logging_steps == 0 or progress.completed_steps == max_train_steps:
                    mean_loss = accelerator.reduce(window_loss / max(window_batches, 1), reduction="mean").item()
                    if window_batches:
                        progress.train_loss_sum += mean_loss * window_batches
                        progress.train_loss_count += window_batches
                    else:  # every step of the window was skipped as non-finite
                        mean_loss = float("nan")
                    elapsed = time.perf_counter() - window_start
                    images_per_second = window_images / max(elapsed, 1e-9)
                    current_lr = scheduler.get_last_lr()[0]
                    train_log.append(progress.completed_steps, mean_loss, current_lr)
                    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{current_lr:.2e}", img_s=f"{images_per_second:.1f}")
                    accelerator.log(
                        {"train/loss": mean_loss, "train/learning_rate": current_lr,
                         "train/images_per_second": images_per_second, **data.skipped_summary()},
                        step=progress.completed_steps,
                    )
                    window_loss.zero_()
                    window_batches, window_images, window_start = 0, 0, time.perf_counter()
                    data.check_skipped_fraction()

                if training_args.eval_steps and progress.completed_steps % training_args.eval_steps == 0:
                    eval_results = data.evaluate(model, step=progress.completed_steps)
                    accelerator.log(eval_results, step=progress.completed_steps)
                    log_evaluation(progress.completed_steps, eval_results)
                    model.train()

                stopped_by_signal = termination.requested
                checkpoint_if_due(accelerator, training_args, output_dir, progress, window_loss, window_batches,
                                  stopping=stopped_by_signal)
                if stopped_by_signal:
                    break
                if progress.completed_steps >= max_train_steps:
                    break
            else:  # the epoch's batches are exhausted
                progress.epoch += 1
                progress.batches_in_epoch = 0
    bar.close()

    results = training_results(progress, data, start_images, time.perf_counter() - start_time)
    skipped_report = data.skipped_report()
    if accelerator.is_main_process:
        write_skipped_samples(output_dir, skipped_report)
    if stopped_by_signal:
        results["stopped_by_signal"] = True
        accelerator.end_training()
        return results
    if not eval_results or training_args.eval_steps is None or progress.completed_steps % training_args.eval_steps:
        eval_results = data.evaluate(model, step=progress.completed_steps)
        log_evaluation(progress.completed_steps, eval_results)
    results.update(eval_results)
    accelerator.log({key: value for key, value in results.items() if isinstance(value, (int, float))},
                    step=progress.completed_steps)
    save_final_model(accelerator, model, data.image_processor, output_dir, results, model_args, training_args)
    accelerator.end_training()
    return results


def resume_if_requested(
    accelerator: Accelerator, resume_from_checkpoint: str | None, output_dir: Path, progress: "TrainingProgress"
) -> None:
    """`--resume_from_checkpoint` (a path or `latest`): check the folder is complete and load the whole state."""
    checkpoint = resolve_checkpoint(resume_from_checkpoint, output_dir)
    if checkpoint is not None:
        check_checkpoint_is_safe(checkpoint)
        accelerator.load_state(str(checkpoint))
        logger.info(f"Resumed from {checkpoint} at step {progress.completed_steps}", main_process_only=True)


def checkpoint_if_due(
    accelerator: Accelerator,
    training_args: PretrainingArguments,
    output_dir: Path,
    progress: "TrainingProgress",
    window_loss: torch.Tensor,
    window_batches: int,
    stopping: bool,
) -> None:
    """Write a checkpoint every `--checkpointing_steps` and when the run is stopping (SIGTERM). The loss window
    that is not logged yet goes into `progress`, so a resumed run logs the same numbers."""
    due = training_args.checkpointing_steps and progress.completed_steps % training_args.checkpointing_steps == 0
    if due or stopping:
        progress.window_loss_sum = accelerator.reduce(window_loss, reduction="mean").item()
        progress.window_batches = window_batches
        save_checkpoint(accelerator, output_dir, progress.completed_steps, training_args.checkpoints_total_limit)
    if stopping:
        logger.warning("SIGTERM received: checkpoint written, exiting cleanly.", main_process_only=True)


def training_results(progress: "TrainingProgress", data, start_images: int, train_seconds: float) -> dict:
    """The `train_*` entries of `all_results.json`."""
    return {
        "train_loss": progress.train_loss_sum / progress.train_loss_count if progress.train_loss_count else None,
        "train_samples_per_second": (progress.images_seen - start_images) / max(train_seconds, 1e-9),
        "train_steps": progress.completed_steps,
        "train_skipped_nonfinite_steps": progress.skipped_nonfinite_steps,
        **data.skipped_summary(),
    }


def log_evaluation(step: int, eval_results: dict[str, float]) -> None:
    """Evaluation results on the console (main process), with or without a `--report_to` tracker."""
    if eval_results:
        metrics = ", ".join(f"{key} {value:.4f}" for key, value in sorted(eval_results.items()))
        logger.info(f"Evaluation at step {step}: {metrics}", main_process_only=True)


def save_final_model(
    accelerator: Accelerator,
    model: torch.nn.Module,
    image_processor,
    output_dir: Path,
    results: dict,
    model_args: ModelArguments,
    training_args: PretrainingArguments,
    card_kwargs: dict | None = None,
) -> None:
    """`save_pretrained` (safetensors) + image processor + model card + `all_results.json`, written into a
    temporary folder and moved in, so `output_dir` never holds a half-written model. `card_kwargs` go to
    `generate_model_card` (e.g. `eval_dataset`, `evaluation_protocol`)."""
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    unwrapped = accelerator.unwrap_model(model)
    unwrapped = getattr(unwrapped, "_orig_mod", unwrapped)
    staging = output_dir / ".tmp-final"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        unwrapped.save_pretrained(staging, safe_serialization=True)
        image_processor.save_pretrained(staging)
        command = " ".join(shlex.quote(part) for part in sys.argv) if sys.argv and sys.argv[0] else None
        (staging / "all_results.json").write_text(json.dumps(results, indent=2, sort_keys=True))
        _write_model_card(staging, unwrapped, results, command, model_args, training_args, **(card_kwargs or {}))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # the previous final model, if any, stays untouched
        raise
    for item in staging.iterdir():
        os.replace(item, output_dir / item.name)
    staging.rmdir()
    logger.info(f"Saved the final model and all_results.json to {output_dir}")
    if training_args.push_to_hub:
        repo_id = training_args.hub_model_id or output_dir.name
        unwrapped.push_to_hub(repo_id, token=training_args.hub_token)
        image_processor.push_to_hub(repo_id, token=training_args.hub_token)
        from huggingface_hub import upload_file

        upload_file(path_or_fileobj=str(output_dir / "README.md"), path_in_repo="README.md", repo_id=repo_id,
                    token=training_args.hub_token)


def _write_model_card(directory: Path, model, results, command, model_args, training_args, **card_kwargs) -> None:
    try:
        from .model_card import generate_model_card
    except ImportError:  # the model-card module is optional for training itself
        return
    card = generate_model_card(model, results=results, training_command=command, **card_kwargs)
    card.save(str(directory / "README.md"))


def _trackers(report_to: str | None):
    if report_to in (None, "", "none"):
        return None
    return [name.strip() for name in report_to.split(",")] if report_to != "all" else "all"


def _flat_config(*argument_groups) -> dict:
    flat = {}
    for group in argument_groups:
        for key, value in asdict(group).items():
            flat[key] = value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
    return flat
