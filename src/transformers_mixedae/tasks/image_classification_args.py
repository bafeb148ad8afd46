# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Command-line arguments of `examples/run_image_classification.py`: the pre-training dataclasses
(`pretraining_args`) with the fine-tuning / linear-probing fields added and recipe-dependent defaults left unset
(`None`), so that `--recipe` fills them and explicit flags win."""

from dataclasses import dataclass, field

from ..training.arguments import (
    DataArguments,
    ModelArguments,
    PretrainingArguments,
    _check_optional,
    _finite,
    check_argument,
    parse_run_arguments,
)

MODES = ("finetune", "linear_probe")
RECIPES = ("mae", "cae")

# Defaults per (mode, recipe) from the MAE and CAE papers, applied to every field still None. Learning rates are base
# rates: lr = base_learning_rate * global batch / 256 (CAE: 8e-3 at batch 4096 -> 5e-4).
RECIPE_DEFAULTS = {
    ("finetune", "mae"): dict(
        base_learning_rate=5e-4, layer_decay=0.65, weight_decay=0.05, drop_path_rate=0.1, label_smoothing=0.1,
        warmup_epochs=5.0, adam_beta2=0.999,
    ),
    ("finetune", "cae"): dict(
        base_learning_rate=8e-3 * 256 / 4096, layer_decay=0.65, weight_decay=0.05, drop_path_rate=0.1,
        label_smoothing=0.1, warmup_epochs=5.0, adam_beta2=0.999,
    ),
    # MAE linear probe: LARS in the paper; SGD with momentum 0.9 here (one linear layer), no decay, 10 warm-up epochs.
    ("linear_probe", "mae"): dict(
        base_learning_rate=0.1, layer_decay=1.0, weight_decay=0.0, drop_path_rate=0.0, label_smoothing=0.0,
        warmup_epochs=10.0, adam_beta2=0.999,
    ),
}
RECIPE_DEFAULTS[("linear_probe", "cae")] = RECIPE_DEFAULTS[("linear_probe", "mae")]


@dataclass
class ClassificationModelArguments(ModelArguments):
    model_type: str | None = field(
        default=None,
        metadata={
            "help": "mixedae or cae: the model to build from scratch when no --model_name_or_path is given. With a "
            "checkpoint the type is read from its config (and must match when given)."
        },
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A MixedAE/CAE checkpoint (pre-training, encoder or classifier; folder or Hub id)."},
    )
    classifier_pooling: str | None = field(
        default=None,
        metadata={"help": "mean (+ fc_norm, MAE/CAE fine-tuning; the config default) or cls. Linear probing uses cls."},
    )


@dataclass
class ClassificationDataArguments(DataArguments):
    label_column_name: str = field(default="label", metadata={"help": "Column holding the class labels (required)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only this many validation samples."})

    def __post_init__(self):
        super().__post_init__()
        check_argument(self.label_column_name is not None, "label_column_name", "none",
                       "image classification trains on labels; name the column that holds them")


@dataclass
class FinetuningArguments(PretrainingArguments):
    output_dir: str = field(default="outputs/run_image_classification", metadata={"help": "Results and checkpoints."})
    mode: str = field(default="finetune", metadata={"help": f"One of {MODES}."})
    recipe: str | None = field(
        default=None, metadata={"help": f"Hyper-parameter preset, one of {RECIPES} (default: cae for CAE, mae for MixedAE)."}
    )
    weight_decay: float | None = field(default=None, metadata={"help": "Weight decay (recipe: 0.05; probe 0)."})
    layer_decay: float | None = field(
        default=None, metadata={"help": "Layer-wise lr decay: layer i gets lr * decay**(L + 1 - i) (recipe 0.65)."}
    )
    label_smoothing: float | None = field(default=None, metadata={"help": "Label smoothing (recipe 0.1; probe 0)."})
    warmup_epochs: float | None = field(
        default=None, metadata={"help": "Warm-up in epochs when --warmup_steps is not set (recipe 5; probe 10)."}
    )
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum of the linear probe."})
    save_visualizations: bool = field(default=False, metadata={"help": "Unused by classification."})

    def __post_init__(self):
        super().__post_init__()
        check_argument(self.mode in MODES, "mode", self.mode, f"choose one of {MODES}")
        if self.recipe is not None:
            check_argument(self.recipe in RECIPES, "recipe", self.recipe, f"choose one of {RECIPES}")
        _check_optional(self, ("layer_decay",), lambda value: _finite(value) and 0 < value <= 1, "a number in (0, 1]")
        _check_optional(self, ("label_smoothing",), lambda value: _finite(value) and 0 <= value < 1,
                        "a number in [0, 1)")
        _check_optional(self, ("warmup_epochs",), lambda value: _finite(value) and value >= 0, "a number >= 0")
        check_argument(_finite(self.momentum) and 0 <= self.momentum < 1, "momentum", self.momentum,
                       "a number in [0, 1)")


def resolve_recipe(model_args: ClassificationModelArguments, training_args: FinetuningArguments, model_type: str):
    """Fill the recipe defaults into every unset field (and the drop path into the config overrides); returns the
    recipe used."""
    # --mode and --recipe were checked when the arguments were made.
    recipe = training_args.recipe or ("cae" if model_type == "cae" else "mae")  # MixedAE fine-tunes as MAE
    for name, value in RECIPE_DEFAULTS[(training_args.mode, recipe)].items():
        if name == "drop_path_rate":
            continue
        if getattr(training_args, name) is None:
            setattr(training_args, name, value)
    training_args.recipe = recipe
    return recipe


def recipe_drop_path_rate(training_args: FinetuningArguments) -> float:
    return RECIPE_DEFAULTS[(training_args.mode, training_args.recipe)]["drop_path_rate"]


def parse_classification_arguments(argv: list[str] | None = None):
    """`[config.json] [--flag value ...]` -> (ClassificationModelArguments, ClassificationDataArguments,
    FinetuningArguments)."""
    return parse_run_arguments(
        argv, dataclass_types=(ClassificationModelArguments, ClassificationDataArguments, FinetuningArguments)
    )
