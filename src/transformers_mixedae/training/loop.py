# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""The training engine: one Accelerate loop for every task.

A task (masked image modelling, image classification, ...) states what differs: its model, data and model inputs,
optimizer, loss, evaluation and what happens before the final save (`TrainingTask`). `train` owns the rest, the
same for every task:

* one process on CPU, one GPU, many GPUs or many nodes (`accelerate launch`); the optimizer step, learning-rate
  schedule (stepped once per optimizer step) and logged numbers count optimizer steps over the global batch
  `per_device_train_batch_size * gradient_accumulation_steps * world_size`;
* gradient accumulation, clipping, and a finite-gradient check that skips (and counts) a non-finite step before the
  optimizer applies it, stopping after `max_consecutive_nonfinite_steps` in a row;
* logging (console, `train_log.jsonl`, `--report_to` trackers), periodic and final evaluation;
* atomic checkpoints and exact resume (weights, optimizer, schedule, RNG, data position), SIGTERM (checkpoint and
  exit 143), the skipped-samples report, and the final save with image processor and model card;
* callbacks (`TrainingCallback`) that see every log, evaluation and checkpoint, for experiments that record more;
* an exponential moving average of the weights when the task sets `model_ema_decay` (`training.ema`).
"""

import math
import os
import signal
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import PreTrainedModel, get_scheduler

from .checkpointing import resolve_checkpoint
from .ema import ModelEma, evaluate_ema, finish_ema
from .records import TRAIN_LOG_NAME, TrainLog, write_skipped_samples
from .final_save import (
    begin_final_phase,
    end_final_phase,
    log_evaluation,
    push_final_folder,
    save_then_evaluate,
    sharded,
)
from .optim import effective_learning_rate
from .resume import (
    checkpoint_if_due,
    prepare_run_folders,
    resume_if_requested,
    run_recipe,
    set_aside_abandoned_checkpoints,
)

logger = get_logger(__name__)

STOPPED_BY_SIGNAL_STATUS = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM


class TrainingTask:
    """What one kind of training states; `train` does everything else.

    A task holds its arguments. `train` calls, in this order: `check_arguments` (before anything is built or
    written), `build` (after seeding: returns the model and the data), `warmup_steps`, `build_optimizer`, then per
    micro-batch `loss`, around evaluations `train_mode`, and at the end `before_save` and `card_kwargs`.

    The data object `build` returns provides `train_batches(epoch, batches_per_epoch, skip_batches)` (model inputs
    on the device), `optimizer_steps_per_epoch(total_batch_size)`, `evaluate(model, step)`, `state` (checkpointed),
    `skipped_summary()`, `skipped_report()` and `image_processor` (saved with the model).
    """

    name = "training"  # the progress bar's label
    tracker_project = "run"  # the `--report_to` project name
    model_ema_decay: float | None = None  # keep an EMA of the weights (`training.ema`), saved as output_dir/ema/
    model_ema_eval = False  # evaluate the EMA weights too (`eval_ema_*`)

    def __init__(self, training_args: Any, model_name_or_path: str | None = None):
        self.training_args = training_args
        self.model_name_or_path = model_name_or_path
        self.accelerator: Accelerator | None = None

    def check_arguments(self) -> None:
        """Raise `ValueError` for arguments that only the task can check, before anything is built or written."""

    def build(self) -> tuple[PreTrainedModel, Any]:
        raise NotImplementedError

    def warmup_steps(self, steps_per_epoch: int | None, max_train_steps: int) -> int:
        """`--warmup_steps`, else `--warmup_ratio` of the run; `steps_per_epoch` is None when the epoch size is
        unknown (a stream without split sizes)."""
        args = self.training_args
        return args.warmup_steps if args.warmup_steps is not None else round(args.warmup_ratio * max_train_steps)

    def build_optimizer(self, model: PreTrainedModel, lr: float) -> torch.optim.Optimizer:
        raise NotImplementedError

    def before_step(self, model: PreTrainedModel, completed_steps: int) -> None:
        """Called before every micro-batch with the (unwrapped) model and the optimizer steps done so far, for
        models whose training depends on the step (a schedule inside the model)."""

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss of one micro-batch; by default the model's own (`outputs.loss`)."""
        return model(**batch).loss

    def train_mode(self, model: torch.nn.Module) -> None:
        model.train()

    def before_save(self, model: PreTrainedModel) -> None:
        """Change the trained model into the form that is saved (and finally evaluated)."""

    def card_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `generate_model_card` (evaluation dataset, protocol, base model)."""
        return {}

    def description(self) -> str:
        """What is trained, for the start-of-run log line."""
        return self.name

    def recipe_arguments(self) -> dict[str, Any]:
        """The task's own arguments that a resumed run must keep (see `resume.check_resume_recipe`)."""
        return {}

    def recipe_defaults(self, model: PreTrainedModel) -> dict[str, Any]:
        """What a recipe entry left as None means for `model` (e.g. the model's own AdamW beta2), so that leaving an
        argument out and giving its default value are one recipe when a run is resumed."""
        return {}

    def tracker_config(self) -> dict[str, Any]:
        """The hyper-parameters `--report_to` trackers record."""
        return _flat_config(self.training_args)


class TrainingCallback:
    """Hooks called on the main loop's events, on every process. Subclass and override what you need."""

    def on_train_begin(self, state: "LoopState") -> None:
        """Once before the first step of this process's loop (after a resume, `state.progress` says where)."""

    def on_log(self, state: "LoopState", logs: dict[str, float]) -> None:
        """After each logging step, with the logged values (`train/loss`, `train/learning_rate`, ...)."""

    def on_evaluate(self, state: "LoopState", metrics: dict[str, float]) -> None:
        """After each evaluation during training, with its metrics."""

    def on_save(self, state: "LoopState", checkpoint: Path) -> None:
        """After each checkpoint is written."""


@dataclass
class LoopState:
    """What callbacks see: the accelerator, the (prepared) model and the training progress."""

    accelerator: Accelerator
    model: torch.nn.Module
    progress: "TrainingProgress"
    max_train_steps: int
    task: TrainingTask = field(repr=False, default=None)


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

    def agreed(self, accelerator: Accelerator) -> bool:
        """Whether any process got SIGTERM: every rank must stop at the same step, or the ranks that stop would wait
        in the checkpoint's collectives while the others wait in the next step's (a preemption notice often reaches
        one node first). One scalar all-reduce per optimizer step, only when there are several processes."""
        if accelerator.num_processes == 1:
            return self.requested
        flag = torch.tensor(float(self.requested), device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


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


def gradients_are_finite(accelerator: Accelerator, model: torch.nn.Module, max_grad_norm: float | None) -> bool:
    """Clip (when asked) and check the global gradient norm: one host sync per optimizer step, needed to skip a
    non-finite step before the optimizer applies it."""
    parameters = [p for p in model.parameters() if p.grad is not None]
    total_norm = accelerator.clip_grad_norm_(parameters, max_grad_norm if max_grad_norm else float("inf"))
    if total_norm is None:  # DeepSpeed before its first step: it keeps the norm, clips and skips overflows itself
        return True
    return bool(torch.isfinite(torch.as_tensor(total_norm)))  # DeepSpeed gives a float, the others a tensor


def finite_on_every_rank(accelerator: Accelerator, value: torch.Tensor) -> bool:
    """Whether `value` is finite on every process. What a rank does next must not hang on its own loss: a step
    counted towards the non-finite streak on one rank only would stop that rank while the others wait for it."""
    finite = torch.isfinite(value.detach()).all().float()
    return bool(accelerator.reduce(finite, reduction="sum") == accelerator.num_processes)


def release_loss_scaler(accelerator: Accelerator) -> bool:
    """After a step skipped as non-finite, under fp16: let the loss scaler back off (it recorded the overflow when
    `gradients_are_finite` unscaled the gradients) and reset its per-step state, as its own skipped step would;
    without it the scale never drops and the next step's unscaling fails. Returns whether a scaler of scale >= 1 took
    the overflow (an ordinary fp16 overflow, not counted towards `--max_consecutive_nonfinite_steps`)."""
    scaler = getattr(accelerator, "scaler", None)
    if scaler is None:
        return False
    scaler.update()
    return scaler.get_scale() >= 1.0


def train(
    task: TrainingTask,
    accelerator: Accelerator | None = None,
    callbacks: tuple[TrainingCallback, ...] | list[TrainingCallback] = (),
) -> dict[str, Any]:
    """Train `task`, evaluate, save. Returns the final metrics (also written to `output_dir/all_results.json`);
    `results["stopped_by_signal"]` when SIGTERM stopped the run after its checkpoint (see `exit_status`)."""
    args = task.training_args
    if accelerator is None:
        accelerator = Accelerator(
            cpu=not torch.cuda.is_available(),
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            log_with=_trackers(args.report_to),
            project_dir=args.output_dir,
        )
    elif accelerator.gradient_accumulation_steps != args.gradient_accumulation_steps:
        # The batch size, learning-rate scaling and epoch length follow the arguments, the optimizer steps follow
        # the accelerator: a mismatch would train another recipe than the one recorded, without a word.
        raise ValueError(
            f"the Accelerator passed in accumulates {accelerator.gradient_accumulation_steps} batches per optimizer "
            f"step, the arguments ask for --gradient_accumulation_steps {args.gradient_accumulation_steps}: build "
            f"it with Accelerator(gradient_accumulation_steps={args.gradient_accumulation_steps}, ...) or pass the "
            "same value in the arguments."
        )
    task.accelerator = accelerator
    warn_if_sharding_is_not_applied(accelerator)
    refuse_what_sharding_breaks(accelerator, task)
    task.check_arguments()
    output_dir, checkpoint = prepare_run_folders(accelerator, task.model_name_or_path, args)
    set_seed(args.seed, device_specific=True)
    model, data = task.build()

    world_size = accelerator.num_processes
    total_batch_size = args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size
    lr = effective_learning_rate(args.learning_rate, args.base_learning_rate, total_batch_size)
    steps_per_epoch = data.optimizer_steps_per_epoch(total_batch_size)
    if args.max_steps is not None:
        max_train_steps = args.max_steps
    elif steps_per_epoch is not None:
        max_train_steps = max(1, math.ceil(args.num_train_epochs * steps_per_epoch))
    else:
        raise ValueError(
            "The number of training examples is unknown (streaming without split sizes): pass --max_steps."
        )
    warmup_steps = task.warmup_steps(steps_per_epoch, max_train_steps)
    if 0 < max_train_steps <= warmup_steps:
        decays = "" if args.lr_scheduler_type.startswith("constant") else " nor decays"
        logger.warning(
            f"the warm-up ({warmup_steps} steps) is as long as the run or longer ({max_train_steps} steps): the "
            f"learning rate never reaches its peak{decays}. Shorten the warm-up or train longer.",
            main_process_only=True,
        )
    if steps_per_epoch is None:
        steps_per_epoch = max_train_steps

    optimizer = task.build_optimizer(model, lr)
    scheduler = get_scheduler(
        args.lr_scheduler_type, optimizer, num_warmup_steps=warmup_steps, num_training_steps=max_train_steps
    )
    recipe = run_recipe(model, args, world_size, lr, max_train_steps, warmup_steps, task.recipe_arguments())
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    ema = ModelEma(unwrapped, task.model_ema_decay) if task.model_ema_decay is not None else None
    if getattr(task, "torch_compile", False):
        model = torch.compile(model)
    progress = TrainingProgress()
    # The scheduler is stepped by hand once per optimizer step (accelerate would step it once per process).
    accelerator.register_for_checkpointing(scheduler, progress, data.state, *([ema] if ema is not None else []))

    resume_if_requested(accelerator, checkpoint, progress, recipe, args.allow_recipe_change, optimizer, scheduler,
                        defaults=task.recipe_defaults(unwrapped))
    set_aside_abandoned_checkpoints(accelerator, output_dir, checkpoint)
    train_log = TrainLog(output_dir / TRAIN_LOG_NAME, enabled=accelerator.is_main_process)
    train_log.keep_until(progress.completed_steps)
    state = LoopState(accelerator, model, progress, max_train_steps, task)

    if accelerator.is_main_process:
        accelerator.init_trackers(task.tracker_project, config=task.tracker_config())
    logger.info(
        f"{task.description()}: {max_train_steps} optimizer steps, global batch {total_batch_size} "
        f"({world_size} processes x {args.per_device_train_batch_size} x {args.gradient_accumulation_steps} "
        f"accumulation), lr {lr:.3g}, warm-up {warmup_steps} steps",
        main_process_only=True,
    )

    for callback in callbacks:
        callback.on_train_begin(state)
    bar = tqdm(
        total=max_train_steps, initial=progress.completed_steps, disable=not accelerator.is_local_main_process,
        desc=task.name, dynamic_ncols=True,
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

    # Each epoch's pass is closed when the loop ends, by a stop, a signal or an exception: its DataLoader workers
    # (which ignore SIGTERM) are then shut down, instead of outliving the run and stalling the interpreter's exit.
    with TerminationRequest() as termination, ExitStack() as passes:
        while progress.completed_steps < max_train_steps and not stopped_by_signal:
            task.train_mode(model)
            batches_per_epoch = steps_per_epoch * args.gradient_accumulation_steps
            batches = data.train_batches(progress.epoch, batches_per_epoch, skip_batches=progress.batches_in_epoch)
            if hasattr(batches, "close"):  # a generator (a task's data may also give a plain iterable)
                passes.callback(batches.close)
            for batch in batches:
                with accelerator.accumulate(model):
                    task.before_step(unwrapped, progress.completed_steps)
                    loss = task.loss(model, batch)
                    accelerator.backward(loss)
                    progress.batches_in_epoch += 1
                    batch_images = batch["pixel_values"].shape[0] * world_size
                    progress.images_seen += batch_images
                    window_images += batch_images
                    step_loss += loss.detach().float()
                    step_batches += 1
                    if accelerator.sync_gradients:
                        if gradients_are_finite(accelerator, model, args.max_grad_norm):
                            optimizer.step()
                            if ema is not None:
                                ema.update(unwrapped)
                            progress.consecutive_nonfinite_steps = 0
                            window_loss += step_loss  # skipped steps stay out of the logged and final losses
                            window_batches += step_batches
                        else:
                            progress.skipped_nonfinite_steps += 1
                            if release_loss_scaler(accelerator) and finite_on_every_rank(accelerator, step_loss):
                                # fp16's ordinary overflow, handled by the lowered scale: not a diverging run.
                                logger.info(f"fp16 gradient overflow at step {progress.completed_steps}: step "
                                            f"skipped, loss scale now {accelerator.scaler.get_scale():g}",
                                            main_process_only=True)
                            else:
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

                if progress.consecutive_nonfinite_steps >= args.max_consecutive_nonfinite_steps:
                    last = resolve_checkpoint("latest", output_dir)
                    raise NonFiniteTrainingError(
                        f"{progress.consecutive_nonfinite_steps} optimizer steps in a row had a non-finite loss or "
                        f"gradient (step {progress.completed_steps}); stopping. The last good checkpoint is "
                        f"{last if last else '(none written)'} and was not touched. Lower the learning rate, set "
                        "--max_grad_norm, or check the data."
                    )

                if progress.completed_steps % args.logging_steps == 0 or progress.completed_steps == max_train_steps:
                    mean_loss = accelerator.reduce(window_loss / max(window_batches, 1), reduction="mean").item()
                    if window_batches:
                        progress.train_loss_sum += mean_loss * window_batches
                        progress.train_loss_count += window_batches
                    else:  # every step of the window was skipped as non-finite
                        mean_loss = float("nan")
                    elapsed = time.perf_counter() - window_start
                    images_per_second = window_images / max(elapsed, 1e-9)
                    current_lr = max(scheduler.get_last_lr())  # the top layer's rate under layer-wise decay
                    train_log.append(progress.completed_steps, mean_loss, current_lr)
                    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{current_lr:.2e}", img_s=f"{images_per_second:.1f}")
                    logs = {"train/loss": mean_loss, "train/learning_rate": current_lr,
                            "train/images_per_second": images_per_second, **data.skipped_summary()}
                    accelerator.log(logs, step=progress.completed_steps)
                    for callback in callbacks:
                        callback.on_log(state, logs)
                    window_loss.zero_()
                    window_batches, window_images, window_start = 0, 0, time.perf_counter()

                if args.eval_steps and progress.completed_steps % args.eval_steps == 0:
                    eval_results = data.evaluate(model, step=progress.completed_steps)
                    if ema is not None and task.model_ema_eval:
                        eval_results.update(evaluate_ema(ema, data, progress.completed_steps))
                    accelerator.log(eval_results, step=progress.completed_steps)
                    log_evaluation(progress.completed_steps, eval_results)
                    for callback in callbacks:
                        callback.on_evaluate(state, eval_results)
                    task.train_mode(model)

                stopped_by_signal = termination.agreed(accelerator)
                saved = checkpoint_if_due(accelerator, args, output_dir, progress, window_loss, window_batches,
                                          stopping=stopped_by_signal, recipe=recipe)
                if saved is not None:
                    for callback in callbacks:
                        callback.on_save(state, saved)
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
        finish_processes(accelerator)
        return results
    begin_final_phase(accelerator, output_dir, progress.completed_steps)
    task.before_save(accelerator.unwrap_model(model))
    results = save_then_evaluate(accelerator, model, data, output_dir, results, eval_results, progress.completed_steps,
                                 args, card_kwargs=task.card_kwargs())
    if ema is not None:
        results = finish_ema(accelerator, ema, task, data, model, output_dir, results, progress.completed_steps,
                             evaluate=task.model_ema_eval)
    if args.push_to_hub and accelerator.is_main_process:
        push_final_folder(unwrapped, output_dir, results, args, task.card_kwargs())
    end_final_phase(accelerator, output_dir)
    finish_processes(accelerator)
    return results


# How long every rank leaves the GIL free after the last collective, before the process group is torn down.
TEARDOWN_PAUSE_SECONDS = 0.1


def finish_processes(accelerator: Accelerator) -> None:
    """End the run on every rank together: meet, then end the trackers and the process group.

    Two gloo hangs are avoided here. A rank that tears its process group down while another still writes its records
    leaves gloo's threads waiting when the DDP wrapper is freed (measured: both ranks hung), hence the meeting. And
    gloo frees each finished collective on its worker thread, which needs the GIL when the collective's tensors were
    made in Python (`gather_object`, as the run's records are gathered just before the end), while the group's
    destructor joins those threads holding the GIL: a collective freed just as the group goes deadlocks the rank
    (seen once, in a SIGTERM-stopped two-rank run under load; py-spy: `~AsyncAllgatherWork` waiting for the GIL,
    the main thread in `~ProcessGroupGloo`). A short pause without the GIL lets the worker threads finish first."""
    accelerator.wait_for_everyone()
    if accelerator.num_processes > 1:
        time.sleep(TEARDOWN_PAUSE_SECONDS)
    accelerator.end_training()


def warn_if_sharding_is_not_applied(accelerator: Accelerator) -> None:
    """Say so when an FSDP or DeepSpeed configuration (`accelerate launch --config_file ...`) was given but accelerate
    runs otherwise: it enables both only on GPUs and other accelerators, so on CPU (`--cpu`, or no GPU) every process
    holds the whole model and the run's memory is not what the configuration promised."""
    from accelerate.utils import DistributedType

    for variable, kind in (("ACCELERATE_USE_FSDP", DistributedType.FSDP),
                           ("ACCELERATE_USE_DEEPSPEED", DistributedType.DEEPSPEED)):
        if os.environ.get(variable, "false").lower() == "true" and accelerator.distributed_type != kind:
            logger.warning(
                f"The accelerate configuration asks for {kind.value}, but this run is "
                f"{accelerator.distributed_type.value} on {accelerator.device.type} ({accelerator.num_processes} "
                f"processes): accelerate applies {kind.value} only on GPUs and other accelerators, so every process "
                "holds the whole model.",
                main_process_only=True,
            )


def refuse_what_sharding_breaks(accelerator: Accelerator, task: TrainingTask) -> None:
    """Model EMA keeps a copy of the unwrapped model's parameters; under FSDP or DeepSpeed those are this rank's
    shard, so the average would be wrong. Refused before anything is written."""
    if sharded(accelerator) and task.model_ema_decay is not None:
        raise ValueError(
            f"--model_ema is not supported under {accelerator.distributed_type.value}: each rank holds only a shard "
            "of the weights to average. Launch with data parallelism (examples/accelerate_configs/ddp.yaml) or "
            "drop --model_ema."
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


def _trackers(report_to: str | None):
    if report_to in (None, "", "none"):
        return None
    return [name.strip() for name in report_to.split(",")] if report_to != "all" else "all"


# Never sent to a tracker: a tracker's hyper-parameters are often shared or public.
SECRET_ARGUMENTS = ("hub_token",)


def _flat_config(*argument_groups) -> dict:
    flat = {}
    for group in argument_groups:
        for key, value in asdict(group).items():
            if key in SECRET_ARGUMENTS:
                continue
            flat[key] = value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
    return flat
