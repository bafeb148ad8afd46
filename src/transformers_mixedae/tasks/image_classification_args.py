# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Command-line arguments of `examples/run_image_classification.py`: the shared model, data and training arguments
(`training.arguments`) composed with `ClassificationArguments`, the fields only fine-tuning and linear probing have.
Recipe-dependent defaults are left unset (`None`), so that `--recipe` fills them and explicit flags win."""

from dataclasses import dataclass, field

from ..training.arguments import (
    DataArguments,
    ModelArguments,
    TrainingArguments,
    _check_optional,
    _finite,
    check_argument,
    parse_run_arguments,
)

MODES = ("finetune", "linear_probe")
RECIPES = ("mae", "cae")
OPTIMIZERS = ("sgd", "adamw", "lars")

# Defaults per (mode, recipe) from the MAE and CAE papers, applied to every field still None. Learning rates are base
# rates: lr = base_learning_rate * global batch / 256 (CAE: 8e-3 at batch 4096 -> 5e-4).
RECIPE_DEFAULTS = {
    ("finetune", "mae"): dict(
        base_learning_rate=5e-4, layer_decay=0.65, weight_decay=0.05, drop_path_rate=0.1, label_smoothing=0.1,
        warmup_epochs=5.0, adam_beta2=0.999, optimizer="adamw",
    ),
    ("finetune", "cae"): dict(
        base_learning_rate=8e-3 * 256 / 4096, layer_decay=0.65, weight_decay=0.05, drop_path_rate=0.1,
        label_smoothing=0.1, warmup_epochs=5.0, adam_beta2=0.999, optimizer="adamw",
    ),
    # MAE linear probe: LARS in the paper (--optimizer lars); SGD with momentum 0.9 by default (one linear layer), no
    # decay, 10 warm-up epochs.
    ("linear_probe", "mae"): dict(
        base_learning_rate=0.1, layer_decay=1.0, weight_decay=0.0, drop_path_rate=0.0, label_smoothing=0.0,
        warmup_epochs=10.0, adam_beta2=0.999, optimizer="sgd",
    ),
}
RECIPE_DEFAULTS[("linear_probe", "cae")] = RECIPE_DEFAULTS[("linear_probe", "mae")]


@dataclass
class ClassificationArguments:
    """What only image classification has: the protocol, its recipe, and the head."""

    mode: str = field(default="finetune", metadata={"help": f"One of {MODES}."})
    recipe: str | None = field(
        default=None, metadata={"help": f"Hyper-parameter preset, one of {RECIPES} (default: cae for CAE, mae for MixedAE)."}
    )
    layer_decay: float | None = field(
        default=None, metadata={"help": "Layer-wise lr decay: layer i gets lr * decay**(L + 1 - i) (recipe 0.65)."}
    )
    label_smoothing: float | None = field(default=None, metadata={"help": "Label smoothing (recipe 0.1; probe 0)."})
    warmup_epochs: float | None = field(
        default=None, metadata={"help": "Warm-up in epochs when --warmup_steps is not set (recipe 5; probe 10)."}
    )
    momentum: float = field(default=0.9, metadata={"help": "Momentum of --optimizer sgd and lars."})
    optimizer: str | None = field(
        default=None,
        metadata={"help": f"One of {OPTIMIZERS} (default: adamw for finetune, sgd for linear_probe). lars is MAE's "
                          "linear-probe optimizer (trust coefficient 0.001; biases and 1-D parameters plain momentum SGD)."},
    )
    model_ema: bool = field(
        default=False,
        metadata={"help": "Keep an exponential moving average of the weights, saved at the end as output_dir/ema/."},
    )
    model_ema_decay: float = field(default=0.9999, metadata={"help": "Decay of --model_ema, in (0, 1)."})
    model_ema_eval: bool = field(
        default=False, metadata={"help": "Evaluate the --model_ema weights too (reported as eval_ema_accuracy ...)."}
    )
    classifier_pooling: str | None = field(
        default=None,
        metadata={"help": "mean (+ fc_norm, MAE/CAE fine-tuning; the config default) or cls. Linear probing uses cls."},
    )

    def __post_init__(self):
        check_argument(self.mode in MODES, "mode", self.mode, f"choose one of {MODES}")
        if self.recipe is not None:
            check_argument(self.recipe in RECIPES, "recipe", self.recipe, f"choose one of {RECIPES}")
        _check_optional(self, ("layer_decay",), lambda value: _finite(value) and 0 < value <= 1, "a number in (0, 1]")
        _check_optional(self, ("label_smoothing",), lambda value: _finite(value) and 0 <= value < 1,
                        "a number in [0, 1)")
        _check_optional(self, ("warmup_epochs",), lambda value: _finite(value) and value >= 0, "a number >= 0")
        check_argument(_finite(self.momentum) and 0 <= self.momentum < 1, "momentum", self.momentum,
                       "a number in [0, 1)")
        if self.optimizer is not None:
            check_argument(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, f"choose one of {OPTIMIZERS}")
        check_argument(_finite(self.model_ema_decay) and 0 < self.model_ema_decay < 1, "model_ema_decay",
                       self.model_ema_decay, "a number in (0, 1), e.g. 0.9999")
        check_argument(self.model_ema or not self.model_ema_eval, "model_ema_eval", self.model_ema_eval,
                       "it evaluates the EMA weights; pass --model_ema too")


def resolve_recipe(
    training_args: TrainingArguments, classification_args: ClassificationArguments, model_type: str
) -> str:
    """Fill the recipe's defaults into every unset field of both argument groups (the drop path goes into the model
    config, see `recipe_drop_path_rate`); returns the recipe used."""
    # --mode and --recipe were checked when the arguments were made.
    recipe = classification_args.recipe or ("cae" if model_type == "cae" else "mae")  # MixedAE fine-tunes as MAE
    for name, value in RECIPE_DEFAULTS[(classification_args.mode, recipe)].items():
        if name == "drop_path_rate":
            continue
        arguments = classification_args if hasattr(classification_args, name) else training_args
        if getattr(arguments, name) is None:
            setattr(arguments, name, value)
    classification_args.recipe = recipe
    return recipe


def recipe_drop_path_rate(classification_args: ClassificationArguments) -> float:
    return RECIPE_DEFAULTS[(classification_args.mode, classification_args.recipe)]["drop_path_rate"]


def check_classification_data(data_args: DataArguments) -> None:
    check_argument(data_args.label_column_name is not None, "label_column_name", "none",
                   "image classification trains on labels; name the column that holds them")


def parse_classification_arguments(argv: list[str] | None = None) -> tuple:
    """`[config.json] [--flag value ...]` -> (ModelArguments, DataArguments, TrainingArguments,
    ClassificationArguments)."""
    parsed = parse_run_arguments(
        argv, dataclass_types=(ModelArguments, DataArguments, TrainingArguments, ClassificationArguments)
    )
    check_classification_data(parsed[1])
    return parsed
