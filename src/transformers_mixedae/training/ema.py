# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""An exponential moving average of a model's weights (DeiT/MAE fine-tuning's `--model_ema`), for any task.

`ModelEma` keeps a copy of the model on the model's device. After every applied optimizer step (a skipped non-finite
step leaves it alone) each floating-point entry of the state dict (parameters and buffers such as BatchNorm running
statistics) becomes `ema = decay * ema + (1 - decay) * model`; other entries (counters) are copied. Its
`state_dict` / `load_state_dict` make it a checkpointed object of the run (`accelerator.register_for_checkpointing`),
so a resumed run continues the same average. At the end the average is saved as its own model folder
(`output_dir/ema/`), with the image processor, and evaluated when asked (`eval_ema_*` results).
"""

import copy
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger

logger = get_logger(__name__)

EMA_FOLDER = "ema"


class ModelEma:
    """The moving average of `model`'s state dict, started from its current weights."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"--model_ema_decay {decay!r} is not valid: a number in (0, 1), e.g. 0.9999.")
        self.decay = float(decay)
        self.module = copy.deepcopy(model)
        self.module.eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """One step of the average towards `model` (the unwrapped model with the same structure)."""
        current = model.state_dict()
        for name, average in self.module.state_dict().items():
            value = current[name].detach()
            if average.is_floating_point():
                average.mul_(self.decay).add_(value.to(average.dtype), alpha=1.0 - self.decay)
            else:
                average.copy_(value)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "decay": self.decay,
            "updates": self.updates,
            "weights": {name: tensor.detach().cpu() for name, tensor in self.module.state_dict().items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["decay"] != self.decay:
            # The recipe check (`model_ema_decay`) refuses this unless --allow_recipe_change: continue the saved
            # average with the new decay.
            logger.warning(f"The checkpoint's EMA used decay {state['decay']}; continuing it with {self.decay}.",
                           main_process_only=True)
        self.module.load_state_dict(state["weights"])
        self.updates = state["updates"]


def finish_ema(
    accelerator: Accelerator, ema: ModelEma, task, data, model: torch.nn.Module, output_dir: Path,
    results: dict[str, Any], step: int, evaluate: bool,
) -> dict[str, Any]:
    """After the final model is saved: save the average (in the task's saved form, `task.before_save`) as
    `output_dir/ema/` with the image processor; evaluate it when `evaluate` (its folder's `all_results.json` holds
    its own `eval_*`, the run's holds them as `eval_ema_*`). Returns the run's results."""
    from .final_save import FinalStepError, save_final_model, write_results_and_card

    ema_dir = Path(output_dir) / EMA_FOLDER
    task.before_save(ema.module)
    ema_results = {"ema_decay": ema.decay, "ema_updates": ema.updates}
    save_final_model(accelerator, ema.module, data.image_processor, ema_dir, ema_results, task.card_kwargs())
    if not evaluate:
        return results
    try:
        own = data.evaluate(ema.module, step=step)
    except Exception as error:
        raise FinalStepError(
            f"evaluating the EMA weights failed ({type(error).__name__}: {error}). The trained model is saved in "
            f"{output_dir} and the EMA weights in {ema_dir}; evaluate that folder instead of training again."
        ) from error
    results = {**results, **{_ema_name(name): value for name, value in own.items()}}
    if accelerator.is_main_process:
        write_results_and_card(ema.module, ema_dir, {**ema_results, **own}, task.card_kwargs())
        write_results_and_card(accelerator.unwrap_model(model), Path(output_dir), results, task.card_kwargs())
    accelerator.wait_for_everyone()
    return results


def evaluate_ema(ema: ModelEma, data, step: int) -> dict[str, float]:
    """The task's evaluation of the averaged weights, named `eval_ema_*` (`eval_accuracy` -> `eval_ema_accuracy`)."""
    results = data.evaluate(ema.module, step=step)
    return {_ema_name(name): value for name, value in results.items()}


def _ema_name(name: str) -> str:
    return "eval_ema_" + name[len("eval_"):] if name.startswith("eval_") else "ema_" + name
