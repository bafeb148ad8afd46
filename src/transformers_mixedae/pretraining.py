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

from .checkpointing import (
    CheckpointError,
    check_checkpoint_is_safe,
    check_resume_recipe,
    resolve_checkpoint,
    save_checkpoint,
)
from .configuration_mixedae import MixedAEConfig
from .modeling_mixedae import MixedAEForPreTraining
from .output_folders import check_model_path, prepare_output_dir
from .pretraining_args import MODEL_TYPES, DataArguments, ModelArguments, PretrainingArguments, parse_config_overrides
from .training_records import TRAIN_LOG_NAME, TrainLog, write_skipped_samples

logger = get_logger(__name__)

DEFAULT_BASE_LEARNING_RATE = 1.5e-4
STOPPED_BY_SIGNAL_STATUS = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM
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
    overrides = parse_config_overrides(model_args.config_overrides, config_class)
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
            _terminate_with_launcher()
        return self

    def _handle(self, signum, frame):
        # Repeated signals are one request: a scheduler may signal every process of the job while the launcher's
        # death signals this one again, and the checkpoint must still be written.
        if not self.requested:
            logger.warning("SIGTERM received: stopping after this step with a checkpoint.")
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _terminate_with_launcher() -> None:
    """Under `accelerate launch`, ask Linux to send this process SIGTERM when its launcher dies.

    `accelerate launch` on one process starts the script as a child and does not pass signals on: a launcher killed
    by `timeout` or a job scheduler would leave the training process running on its own. With the parent-death
    signal it checkpoints and stops like any SIGTERM'd run. A process started by hand is left alone (closing the
    shell that started it must not stop a `nohup` run).
    """
    launched = "ACCELERATE_USE_CPU" in os.environ or "TORCHELASTIC_RUN_ID" in os.environ
    if not (launched and sys.platform.startswith("linux")):
        return
    import ctypes

    set_parent_death_signal = 1  # PR_SET_PDEATHSIG from <sys/prctl.h>
    try:
        ctypes.CDLL(None, use_errno=True).prctl(set_parent_death_signal, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # not glibc-like: the launcher's death is simply not noticed, as before
        return


def exit_status(results: dict[str, Any]) -> int:
    """The process exit status for a run's `results`: 143 (as a process ended by SIGTERM) when it stopped early at
    a signal, after its checkpoint, so that a scheduler or retry loop sees it did not finish; else 0."""
    return STOPPED_BY_SIGNAL_STATUS if results.get("stopped_by_signal") else 0


class NonFiniteTrainingError(RuntimeError):
    pass


class FinalStepError(RuntimeError):
    """A failure after training, raised once the trained model is saved; the message says what was saved."""

    user_error = True


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
    config_class, _ = pretraining_classes(model_args.model_type)
    parse_config_overrides(model_args.config_overrides, config_class)  # field names checked before anything is built
    output_dir, checkpoint = prepare_run_folders(accelerator, model_args, training_args)
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
    recipe = run_recipe(model, training_args, world_size, lr, max_train_steps, warmup_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    if model_args.torch_compile:
        model = torch.compile(model)
    progress = TrainingProgress()
    # The scheduler is stepped by hand once per optimizer step (accelerate would step it once per process).
    accelerator.register_for_checkpointing(scheduler, progress, data.state)

    resume_if_requested(accelerator, checkpoint, progress, recipe, training_args.allow_recipe_change)
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

                if training_args.eval_steps and progress.completed_steps % training_args.eval_steps == 0:
                    eval_results = data.evaluate(model, step=progress.completed_steps)
                    accelerator.log(eval_results, step=progress.completed_steps)
                    log_evaluation(progress.completed_steps, eval_results)
                    model.train()

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
    skipped_report = data.skipped_report()
    if accelerator.is_main_process:
        write_skipped_samples(output_dir, skipped_report)
    if stopped_by_signal:
        results["stopped_by_signal"] = True
        accelerator.end_training()
        return results
    results = save_then_evaluate(accelerator, model, data, output_dir, results, eval_results, progress.completed_steps,
                                 model_args, training_args)
    accelerator.end_training()
    return results


def prepare_run_folders(
    accelerator: Accelerator, model_args: ModelArguments, training_args: PretrainingArguments
) -> tuple[Path, Path | None]:
    """Check what the run reads and writes before anything is built: the model path, the checkpoint to resume
    (intact, safe to load) and the output folder (never mixed with another run's results). Returns the output
    folder and the checkpoint to resume, if any."""
    output_dir = Path(training_args.output_dir)
    if model_args.model_name_or_path:
        check_model_path(model_args.model_name_or_path, "--model_name_or_path")
    checkpoint = resolve_checkpoint(training_args.resume_from_checkpoint, output_dir)
    if checkpoint is not None:
        check_checkpoint_is_safe(checkpoint)
    if accelerator.is_main_process:
        # A job restarted with `latest` before its first checkpoint was written still counts as resuming its own run.
        resuming = training_args.resume_from_checkpoint is not None
        prepare_output_dir(output_dir, overwrite=training_args.overwrite_output_dir, resuming=resuming)
    accelerator.wait_for_everyone()
    return output_dir, checkpoint


# Training arguments whose change on resume changes the optimisation (a checkpoint records them).
RECIPE_ARGUMENTS = (
    "per_device_train_batch_size", "gradient_accumulation_steps", "lr_scheduler_type", "weight_decay", "adam_beta1",
    "adam_beta2", "max_grad_norm", "seed", "mode", "layer_decay", "label_smoothing", "momentum",
)


def run_recipe(
    model: PreTrainedModel, training_args: PretrainingArguments, world_size: int, lr: float, max_train_steps: int,
    warmup_steps: int,
) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the model (type, parameter shapes, config) and the recipe."""
    config = model.config
    own_fields = vars(type(config)).get("__annotations__", {})
    recipe = {
        "model_type": config.model_type,
        "parameter_shapes": {name: list(tensor.shape) for name, tensor in model.state_dict().items()},
        "model_config": {name: getattr(config, name) for name in own_fields if hasattr(config, name)},
        "num_processes": world_size,
        "learning_rate": lr,
        "max_train_steps": max_train_steps,
        "warmup_steps": warmup_steps,
        **{name: getattr(training_args, name) for name in RECIPE_ARGUMENTS if hasattr(training_args, name)},
    }
    return json.loads(json.dumps(recipe, default=str))  # as a checkpoint's run_state.json gives it back


def resume_if_requested(
    accelerator: Accelerator,
    checkpoint: Path | None,
    progress: "TrainingProgress",
    recipe: dict[str, Any],
    allow_recipe_change: bool,
) -> None:
    """Load the whole state of `checkpoint` (from `prepare_run_folders`) once it is known to hold this model and
    recipe (see `check_resume_recipe`)."""
    if checkpoint is None:
        return
    check_resume_recipe(checkpoint, recipe, allow_recipe_change)
    try:
        accelerator.load_state(str(checkpoint))
    except Exception as error:  # noqa: BLE001 - whatever broke, the message must name the checkpoint
        raise CheckpointError(
            f"loading {checkpoint} failed ({type(error).__name__}: {error}). It is damaged or was written by another "
            "model or version; resume from another checkpoint, or start over with --overwrite_output_dir."
        ) from error
    logger.info(f"Resumed from {checkpoint} at step {progress.completed_steps}", main_process_only=True)


def checkpoint_if_due(
    accelerator: Accelerator,
    training_args: PretrainingArguments,
    output_dir: Path,
    progress: "TrainingProgress",
    window_loss: torch.Tensor,
    window_batches: int,
    stopping: bool,
    recipe: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint every `--checkpointing_steps` and when the run is stopping (SIGTERM). The loss window
    that is not logged yet goes into `progress`, so a resumed run logs the same numbers."""
    due = training_args.checkpointing_steps and progress.completed_steps % training_args.checkpointing_steps == 0
    if due or stopping:
        progress.window_loss_sum = accelerator.reduce(window_loss, reduction="mean").item()
        progress.window_batches = window_batches
        save_checkpoint(accelerator, output_dir, progress.completed_steps, training_args.checkpoints_total_limit, recipe)
    if stopping:
        logger.warning(
            f"SIGTERM received: checkpoint written at step {progress.completed_steps}; resume with "
            "--resume_from_checkpoint latest.", main_process_only=True,
        )


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


def save_then_evaluate(
    accelerator: Accelerator,
    model: torch.nn.Module,
    data,
    output_dir: Path,
    results: dict[str, Any],
    eval_results: dict[str, float],
    step: int,
    model_args: ModelArguments,
    training_args: PretrainingArguments,
    card_kwargs: dict | None = None,
) -> dict[str, Any]:
    """The end of a run: save the trained model with its training results first, so that nothing after it (the
    final evaluation, its pictures, the model card, the upload) can lose it; then evaluate (unless the last periodic
    evaluation was at this step) and write the results and the card again."""
    save_final_model(accelerator, model, data.image_processor, output_dir, results, model_args, training_args,
                     card_kwargs)
    if not eval_results or training_args.eval_steps is None or step % training_args.eval_steps:
        try:
            eval_results = data.evaluate(model, step=step)
        except Exception as error:
            raise FinalStepError(
                f"the final evaluation failed ({type(error).__name__}: {error}). The trained model, its image "
                f"processor and the training results (all_results.json) were saved to {output_dir} before it; "
                "evaluate that folder instead of training again."
            ) from error
        log_evaluation(step, eval_results)
    results = {**results, **eval_results}
    accelerator.log({key: value for key, value in results.items() if isinstance(value, (int, float))}, step=step)
    if accelerator.is_main_process:
        write_results_and_card(accelerator.unwrap_model(model), output_dir, results, card_kwargs)
        if training_args.push_to_hub:
            push_final_model(accelerator.unwrap_model(model), data.image_processor, output_dir, training_args)
    accelerator.wait_for_everyone()
    return results


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
    """`save_pretrained` (safetensors) + image processor + `all_results.json`, written into a temporary folder and
    moved in, so `output_dir` never holds a half-written model; then the model card. A failure while staging
    leaves the previous final model untouched; a failure of the card comes after the model is saved, and says so.
    `card_kwargs` go to `generate_model_card` (e.g. `eval_dataset`, `evaluation_protocol`)."""
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    unwrapped = _unwrapped(accelerator, model)
    staging = output_dir / ".tmp-final"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        unwrapped.save_pretrained(staging, safe_serialization=True)
        image_processor.save_pretrained(staging)
        (staging / "all_results.json").write_text(json.dumps(results, indent=2, sort_keys=True))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # the previous final model, if any, stays untouched
        raise
    for item in staging.iterdir():
        os.replace(item, output_dir / item.name)
    staging.rmdir()
    logger.info(f"Saved the final model and all_results.json to {output_dir}")
    write_results_and_card(unwrapped, output_dir, results, card_kwargs)


def write_results_and_card(model: PreTrainedModel, output_dir: Path, results: dict, card_kwargs: dict | None) -> None:
    """Replace `all_results.json` and the model card (`README.md`) of a saved final model, each atomically."""
    model = getattr(model, "_orig_mod", model)
    results_path = output_dir / "all_results.json"
    temporary = output_dir / ".tmp-all_results.json"
    temporary.write_text(json.dumps(results, indent=2, sort_keys=True))
    os.replace(temporary, results_path)
    command = " ".join(shlex.quote(part) for part in sys.argv) if sys.argv and sys.argv[0] else None
    staging = output_dir / ".tmp-card"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        _write_model_card(staging, model, results, command, **(card_kwargs or {}))
        if (staging / "README.md").exists():
            os.replace(staging / "README.md", output_dir / "README.md")
    except Exception as error:
        raise FinalStepError(
            f"writing the model card failed ({type(error).__name__}: {error}). The trained model, its image processor "
            f"and all_results.json are saved in {output_dir}; only README.md is missing or from the save before."
        ) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def push_final_model(model: PreTrainedModel, image_processor, output_dir: Path, training_args) -> None:
    repo_id = training_args.hub_model_id or output_dir.name
    model = getattr(model, "_orig_mod", model)
    try:
        model.push_to_hub(repo_id, token=training_args.hub_token)
        image_processor.push_to_hub(repo_id, token=training_args.hub_token)
        from huggingface_hub import upload_file

        upload_file(path_or_fileobj=str(output_dir / "README.md"), path_in_repo="README.md", repo_id=repo_id,
                    token=training_args.hub_token)
    except Exception as error:
        raise FinalStepError(
            f"uploading to the Hub repository {repo_id} failed ({type(error).__name__}: {error}). Everything is saved "
            f"in {output_dir}; upload it later with `huggingface-cli upload {repo_id} {output_dir}`."
        ) from error


def _unwrapped(accelerator: Accelerator, model: torch.nn.Module) -> PreTrainedModel:
    unwrapped = accelerator.unwrap_model(model)
    return getattr(unwrapped, "_orig_mod", unwrapped)


def _write_model_card(directory: Path, model, results, command, **card_kwargs) -> None:
    from .model_card import generate_model_card

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
