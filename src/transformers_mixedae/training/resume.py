# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""What a run checks before it starts, and how it checkpoints and resumes.

Before anything is built: the model path exists (if local), the checkpoint to resume is intact and safe to load,
and the output folder holds no other run's result. Each checkpoint records the run's recipe (model, batch size,
learning rate, schedule, seed); resuming with another recipe is refused unless asked for.
"""

import json
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from transformers import PreTrainedModel

from .checkpointing import (
    TRAINED_PARAMETER_SETTINGS,
    CheckpointError,
    check_checkpoint_is_safe,
    check_resume_recipe,
    read_run_state,
    resolve_checkpoint,
    save_checkpoint,
    set_aside_newer_checkpoints,
)
from .output_folders import check_model_path, check_overwrite_keeps, prepare_output_dir

logger = get_logger(__name__)


def prepare_run_folders(
    accelerator: Accelerator, model_name_or_path: str | None, training_args: Any
) -> tuple[Path, Path | None]:
    """Check what the run reads and writes before anything is built: the model path, the checkpoint to resume
    (intact, safe to load) and the output folder (never mixed with another run's results). Returns the output
    folder and the checkpoint to resume, if any."""
    output_dir = Path(training_args.output_dir)
    if model_name_or_path:
        model_path = check_model_path(model_name_or_path, "--model_name_or_path")
        if training_args.overwrite_output_dir:
            check_overwrite_keeps(output_dir, model_path)
    checkpoint = resolve_checkpoint(training_args.resume_from_checkpoint, output_dir)
    if checkpoint is not None:
        check_checkpoint_is_safe(checkpoint)
    if accelerator.is_main_process:
        # A job restarted with `latest` before its first checkpoint was written still counts as resuming its own run.
        resuming = training_args.resume_from_checkpoint is not None
        prepare_output_dir(output_dir, overwrite=training_args.overwrite_output_dir, resuming=resuming)
    accelerator.wait_for_everyone()
    return output_dir, checkpoint


def set_aside_abandoned_checkpoints(accelerator: Accelerator, output_dir: Path, checkpoint: Path | None) -> None:
    """Once `checkpoint` is resumed, the checkpoints written after it belong to an abandoned run: move them aside
    (`checkpoints.set_aside_newer_checkpoints`). Called after the resume succeeded, so a refused or failed resume
    leaves them where they were. Every rank must call it."""
    if checkpoint is not None and accelerator.is_main_process:
        moved = set_aside_newer_checkpoints(output_dir, checkpoint)
        if moved:
            logger.warning(f"Resumed {checkpoint.name}: the {len(moved)} later checkpoint(s) of the abandoned run "
                           f"moved to {moved[0].parent} ({', '.join(path.name for path in moved)}).")
    accelerator.wait_for_everyone()


# Training arguments whose change on resume changes the optimisation (a checkpoint records them).
RECIPE_ARGUMENTS = (
    "per_device_train_batch_size", "gradient_accumulation_steps", "lr_scheduler_type", "weight_decay", "adam_beta1",
    "adam_beta2", "max_grad_norm", "seed",
)


def run_recipe(
    model: PreTrainedModel, training_args: Any, world_size: int, lr: float, max_train_steps: int,
    warmup_steps: int, task_arguments: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the model (type, parameter shapes, config) and the recipe (the
    shared training arguments that shape the optimisation, and the task's own, `task_arguments`)."""
    from transformers import PreTrainedConfig

    config = model.config
    own_fields = sorted(
        name for name in set(type(config).__dataclass_fields__) - set(PreTrainedConfig.__dataclass_fields__)
        if not name.startswith("_")  # bookkeeping of the config class, not a setting
    )
    recipe = {
        "model_type": config.model_type,
        "parameter_shapes": {name: list(tensor.shape) for name, tensor in model.state_dict().items()},
        # The optimizer's state covers the trained parameters only, so a resume must train the same ones.
        "frozen_parameters": sorted(name for name, weights in model.named_parameters() if not weights.requires_grad),
        "model_config": {name: getattr(config, name) for name in own_fields if hasattr(config, name)},
        "num_processes": world_size,
        "learning_rate": lr,
        "max_train_steps": max_train_steps,
        "warmup_steps": warmup_steps,
        **{name: getattr(training_args, name) for name in RECIPE_ARGUMENTS},
        **(task_arguments or {}),
    }
    return json.loads(json.dumps(recipe, default=str))  # as a checkpoint's run_state.json gives it back


# What a param group holds of the recipe (not of the step): `load_state` brings back the checkpoint's values.
_GROUP_SETTINGS = ("initial_lr", "weight_decay", "betas", "momentum")


def resume_if_requested(
    accelerator: Accelerator,
    checkpoint: Path | None,
    progress: Any,
    recipe: dict[str, Any],
    allow_recipe_change: bool,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    defaults: dict[str, Any] | None = None,
) -> None:
    """Load the whole state of `checkpoint` (from `prepare_run_folders`) once it is known to hold this model and
    recipe (see `check_resume_recipe`). When the recipe changed (`allow_recipe_change`), the `optimizer` and
    `scheduler` keep the checkpoint's moments and position in the schedule but take this run's learning rate, weight
    decay and betas: loading the checkpoint would otherwise bring its own back and silently undo the change."""
    if checkpoint is None:
        return
    changed = check_resume_recipe(checkpoint, recipe, allow_recipe_change, defaults)
    settings = _recipe_settings(optimizer, scheduler) if changed and optimizer is not None else None
    try:
        accelerator.load_state(str(checkpoint))
    except Exception as error:  # noqa: BLE001 - whatever broke, the message must name the checkpoint
        saved_recipe = (read_run_state(checkpoint) or {}).get("recipe")
        unrecorded = (
            ", or trained other parameters than this run (its run state does not say which: it was written before "
            "checkpoints recorded them), then resume with the settings that chose them in its run (such as "
            f"{TRAINED_PARAMETER_SETTINGS})"
        ) if saved_recipe and "frozen_parameters" not in saved_recipe else ""
        raise CheckpointError(
            f"loading {checkpoint} failed ({type(error).__name__}: {error}). It is damaged, or was written by another "
            f"model or version{unrecorded}; resume from another checkpoint, or start over with --overwrite_output_dir."
        ) from error
    if settings is not None:
        _apply_recipe_settings(optimizer, scheduler, settings)
    logger.info(f"Resumed from {checkpoint} at step {progress.completed_steps}", main_process_only=True)


def _recipe_settings(optimizer: torch.optim.Optimizer, scheduler: Any) -> tuple[list[dict[str, Any]], list | None]:
    groups = [{key: group[key] for key in _GROUP_SETTINGS if key in group} for group in optimizer.param_groups]
    return groups, list(scheduler.base_lrs) if scheduler is not None else None


def _apply_recipe_settings(optimizer: torch.optim.Optimizer, scheduler: Any, settings: tuple) -> None:
    groups, base_lrs = settings
    for group, values in zip(optimizer.param_groups, groups, strict=True):
        group.update(values)
    if base_lrs is None:
        return
    scheduler.base_lrs = base_lrs
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        # The rate of the step being resumed under the new schedule, as the scheduler's last step would have set it.
        rates = [base * factor(scheduler.last_epoch) for base, factor in zip(base_lrs, scheduler.lr_lambdas)]
        for group, rate in zip(optimizer.param_groups, rates):
            group["lr"] = rate
        scheduler._last_lr = rates


def checkpoint_if_due(
    accelerator: Accelerator,
    training_args: Any,
    output_dir: Path,
    progress: Any,
    window_loss: torch.Tensor,
    window_batches: int,
    stopping: bool,
    recipe: dict[str, Any] | None = None,
) -> Path | None:
    """Write a checkpoint every `--save_steps` and when the run is stopping (SIGTERM). The loss window
    that is not logged yet goes into `progress`, so a resumed run logs the same numbers."""
    due = training_args.save_steps and progress.completed_steps % training_args.save_steps == 0
    if not (due or stopping):
        return None
    progress.window_loss_sum = accelerator.reduce(window_loss, reduction="mean").item()
    progress.window_batches = window_batches
    saved = save_checkpoint(accelerator, output_dir, progress.completed_steps, training_args.save_total_limit,
                            recipe)
    if stopping:
        logger.warning(
            f"SIGTERM received: checkpoint written at step {progress.completed_steps}; resume with "
            "--resume_from_checkpoint latest.", main_process_only=True,
        )
    return saved


