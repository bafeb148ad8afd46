# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Masked image modelling (MixedAE, CAE) as a task of the training engine: the logic behind `examples/run_mim.py`.

The task states only what pre-training adds to the loop of `training.loop`: the model (looked up through the Auto
classes from `--model_type`, or loaded from `--model_name_or_path`), its data (`PretrainingData`: per-rank loaders,
the model inputs each method needs, kNN / linear-probe / reconstruction evaluation) and AdamW with the method's
default betas. The loss is the model's own.
"""

from typing import Any

from accelerate import Accelerator
from transformers import CONFIG_MAPPING, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_PRETRAINING_MAPPING

from ..training.arguments import (
    MODEL_TYPES,
    DataArguments,
    ModelArguments,
    PretrainingEvaluationArguments,
    TrainingArguments,
    parse_config_overrides,
)
from ..training.loop import TrainingCallback, TrainingTask, _flat_config, exit_status, train
from ..training.optim import build_adamw, parameter_groups

DEFAULT_MODEL_TYPE = "mixedae"
DEFAULT_OUTPUT_DIR = "outputs/run_mim"
DEFAULT_WEIGHT_DECAY = 0.05  # MAE and CAE pre-training
DEFAULT_MAX_EVAL_SAMPLES = 2000  # kNN / linear-probe queries and eval loss
# AdamW's beta2 of each method's pre-training recipe (MAE: 0.95; CAE: 0.999), when --adam_beta2 is not given.
DEFAULT_ADAM_BETA2 = {"mixedae": 0.95, "cae": 0.999}


def pretraining_classes(model_type: str) -> tuple[type, type]:
    """The config class and the `...ForPreTraining` class registered for `model_type`."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"--model_type {model_type!r} is not supported; choose one of {MODEL_TYPES}.")
    config_class = CONFIG_MAPPING[model_type]
    return config_class, MODEL_FOR_PRETRAINING_MAPPING[config_class]


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
    if model_args.gradient_checkpointing:
        model.activation_checkpointing_enable()
    return model


class MaskedImageModelingTask(TrainingTask):
    """Pre-training of MixedAE or CAE: the model's own reconstruction (+ homologous) loss."""

    name = "pre-training"
    tracker_project = "run_mim"

    def __init__(
        self,
        model_args: ModelArguments,
        data_args: DataArguments,
        training_args: TrainingArguments,
        evaluation_args: PretrainingEvaluationArguments | None = None,
    ):
        super().__init__(training_args, model_args.model_name_or_path)
        # The shared arguments' unset fields, with pre-training's defaults.
        model_args.model_type = model_args.model_type or DEFAULT_MODEL_TYPE
        training_args.output_dir = training_args.output_dir or DEFAULT_OUTPUT_DIR
        if training_args.weight_decay is None:
            training_args.weight_decay = DEFAULT_WEIGHT_DECAY
        if data_args.max_eval_samples is None:
            data_args.max_eval_samples = DEFAULT_MAX_EVAL_SAMPLES
        self.model_args = model_args
        self.data_args = data_args
        self.evaluation_args = evaluation_args or PretrainingEvaluationArguments()
        self.torch_compile = model_args.torch_compile

    def check_arguments(self) -> None:
        config_class, _ = pretraining_classes(self.model_args.model_type)
        parse_config_overrides(self.model_args.config_overrides, config_class)

    def build(self):
        from .masked_image_modeling_data import PretrainingData

        model = build_pretraining_model(self.model_args)
        data = PretrainingData(model, self.model_args, self.data_args, self.training_args, self.accelerator,
                               self.evaluation_args)
        return model, data

    def build_optimizer(self, model: PreTrainedModel, lr: float):
        args = self.training_args
        beta2 = args.adam_beta2 if args.adam_beta2 is not None else DEFAULT_ADAM_BETA2[model.config.model_type]
        return build_adamw(parameter_groups(model, args.weight_decay), lr, (args.adam_beta1, beta2))

    def recipe_defaults(self, model: PreTrainedModel) -> dict[str, Any]:
        return {"adam_beta2": DEFAULT_ADAM_BETA2[model.config.model_type]}

    def before_step(self, model: PreTrainedModel, completed_steps: int) -> None:
        # MixedAE's annealed top-k follows optimizer steps, so it is exact under accumulation and after a resume.
        if hasattr(model, "set_homologous_training_step"):
            model.set_homologous_training_step(completed_steps)

    def description(self) -> str:
        return f"Training {self.model_args.model_type}"

    def tracker_config(self) -> dict[str, Any]:
        return _flat_config(self.model_args, self.data_args, self.training_args, self.evaluation_args)


def run_pretraining(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: TrainingArguments,
    evaluation_args: PretrainingEvaluationArguments | None = None,
    accelerator: Accelerator | None = None,
    callbacks: tuple[TrainingCallback, ...] | list[TrainingCallback] = (),
) -> dict[str, Any]:
    """Pre-train, evaluate, save. Returns the final metrics (also written to `output_dir/all_results.json`)."""
    task = MaskedImageModelingTask(model_args, data_args, training_args, evaluation_args)
    return train(task, accelerator, callbacks)


__all__ = ["MaskedImageModelingTask", "build_pretraining_model", "exit_status", "pretraining_classes", "run_pretraining"]
