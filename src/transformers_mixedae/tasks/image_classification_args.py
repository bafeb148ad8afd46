# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Command-line arguments of `examples/run_image_classification.py`: the shared model, data and training arguments
(`training.arguments`) composed with `ClassificationArguments`, the fields only fine-tuning and linear probing have.
Recipe-dependent defaults are left unset (`None`), so that `--recipe` fills them and explicit flags win."""

from dataclasses import dataclass, field

from ..data.rand_augment import AUTO_AUGMENT_GRAMMAR, auto_augment_off, parse_rand_augment
from ..training.arguments import (
    DataArguments,
    ModelArguments,
    TrainingArguments,
    _check_optional,
    _finite,
    check_argument,
    parse_run_arguments,
)

MODES = ("finetune", "linear_probe", "attentive_probe")
PROBE_MODES = ("linear_probe", "attentive_probe")
RECIPES = ("mae", "cae")
OPTIMIZERS = ("sgd", "adamw", "lars")
MIXUP_MODES = ("batch",)  # timm's "pair" and "elem" are not implemented
ERASE_MODES = ("pixel",)  # timm's "const" and "rand" are not implemented

# RandAugment of MAE's and CAE's fine-tuning (CAE's run_class_finetuning.py sets it whenever it fine-tunes).
FINETUNE_AUTO_AUGMENT = "rand-m9-mstd0.5-inc1"
# CAE's attentive probe: lr 0.4 at batch 256 x 32 GPUs.
CAE_ATTENTIVE_PROBE_LR, CAE_ATTENTIVE_PROBE_BATCH = 0.4, 256 * 32

# Defaults per (mode, recipe) from the MAE and CAE papers, applied to every field still None. Learning rates are base
# rates: lr = base_learning_rate * global batch / 256 (CAE: 8e-3 at batch 4096 -> 5e-4).
RECIPE_DEFAULTS = {
    ("finetune", "mae"): dict(
        base_learning_rate=5e-4, layer_decay=0.65, weight_decay=0.05, drop_path_rate=0.1, label_smoothing=0.1,
        warmup_epochs=5.0, adam_beta2=0.999, optimizer="adamw", aa=FINETUNE_AUTO_AUGMENT, color_jitter=None,
    ),
    # CAE's colour jitter default (0.4) is inert while RandAugment is on, as in timm; it acts with --aa none.
    ("finetune", "cae"): dict(
        base_learning_rate=8e-3 * 256 / 4096, layer_decay=0.65, weight_decay=0.05, drop_path_rate=0.1,
        label_smoothing=0.1, warmup_epochs=5.0, adam_beta2=0.999, optimizer="adamw", aa=FINETUNE_AUTO_AUGMENT,
        color_jitter=0.4,
    ),
    # CAE's attentive probe (tools/run_attentive.py): SGD momentum 0.9, no decay, no label smoothing, 10 warm-up
    # epochs, crop + flip only; MixedAE is probed the same way.
    ("attentive_probe", "cae"): dict(
        base_learning_rate=CAE_ATTENTIVE_PROBE_LR * 256 / CAE_ATTENTIVE_PROBE_BATCH, layer_decay=1.0,
        weight_decay=0.0, drop_path_rate=0.0, label_smoothing=0.0, warmup_epochs=10.0, adam_beta2=0.999,
        optimizer="sgd",
    ),
    # MAE linear probe: LARS in the paper (--optimizer lars); SGD with momentum 0.9 by default (one linear layer), no
    # decay, 10 warm-up epochs.
    ("linear_probe", "mae"): dict(
        base_learning_rate=0.1, layer_decay=1.0, weight_decay=0.0, drop_path_rate=0.0, label_smoothing=0.0,
        warmup_epochs=10.0, adam_beta2=0.999, optimizer="sgd",
    ),
}
RECIPE_DEFAULTS[("linear_probe", "cae")] = RECIPE_DEFAULTS[("linear_probe", "mae")]
RECIPE_DEFAULTS[("attentive_probe", "mae")] = RECIPE_DEFAULTS[("attentive_probe", "cae")]


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
        metadata={"help": f"One of {OPTIMIZERS} (default: adamw for finetune, sgd for the probes). lars is MAE's "
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
        metadata={"help": "mean (+ fc_norm, MAE/CAE fine-tuning; the config default) or cls. The probes use cls."},
    )
    # Fine-tuning augmentation on the device (data.batch_augmentation), MAE's main_finetune flags; off by default.
    mixup: float = field(default=0.0, metadata={"help": "Mixup alpha, > 0 enables Mixup (MAE recipe 0.8; off: 0)."})
    cutmix: float = field(default=0.0, metadata={"help": "CutMix alpha, > 0 enables CutMix (MAE recipe 1.0; off: 0)."})
    cutmix_minmax: list[float] | None = field(
        default=None,
        metadata={"help": "Two floats: CutMix box side fraction drawn uniformly in [min, max] (enables CutMix; the "
                          "alpha is then unused)."},
    )
    mixup_prob: float = field(
        default=1.0, metadata={"help": "Probability of mixing a batch when Mixup or CutMix is enabled."}
    )
    mixup_switch_prob: float = field(
        default=0.5, metadata={"help": "Probability of CutMix instead of Mixup when both are enabled."}
    )
    mixup_mode: str = field(default="batch", metadata={"help": f"One of {MIXUP_MODES}: one lam per batch."})
    reprob: float = field(default=0.0, metadata={"help": "Random erasing probability per image (off unless given; MAE's and CAE's ImageNet commands, and our "
                          "ImageNet configs, pass 0.25)."})
    remode: str = field(
        default="pixel", metadata={"help": f"Random erasing fill, one of {ERASE_MODES}: per-pixel normal noise."}
    )
    recount: int = field(default=1, metadata={"help": "Random erasing: at most this many boxes per erased image."})
    # Per-image fine-tuning augmentation in the data workers (data.rand_augment), timm's grammar and semantics.
    aa: str | None = field(
        default=None,
        metadata={"help": f"RandAugment of the fine-tuning images, timm's string: {AUTO_AUGMENT_GRAMMAR} (recipes: "
                          f"{FINETUNE_AUTO_AUGMENT}; probes: none)."},
    )
    color_jitter: float | None = field(
        default=None,
        metadata={"help": "Colour jitter strength F: brightness, contrast and saturation factors in [1 - F, 1 + F], "
                          "applied only while --aa is none, as timm (mae recipe: off; cae recipe: 0.4)."},
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
        self._check_augmentation()

    def _check_augmentation(self) -> None:
        for name in ("mixup", "cutmix"):
            value = getattr(self, name)
            check_argument(_finite(value) and value >= 0, name, value, "an alpha >= 0 (0 turns it off), e.g. 0.8")
        if self.cutmix_minmax is not None:
            minmax = self.cutmix_minmax
            check_argument(
                isinstance(minmax, (list, tuple)) and len(minmax) == 2 and all(_finite(value) for value in minmax)
                and 0 < minmax[0] < minmax[1] <= 1,
                "cutmix_minmax", minmax, "two fractions of the image side with 0 < min < max <= 1, e.g. 0.2 0.8",
            )
        for name in ("mixup_prob", "mixup_switch_prob", "reprob"):
            value = getattr(self, name)
            check_argument(_finite(value) and 0 <= value <= 1, name, value, "a probability in [0, 1]")
        if self.mixup_mode in ("pair", "elem"):
            check_argument(False, "mixup_mode", self.mixup_mode,
                           f"timm's {self.mixup_mode!r} mode is not implemented here; use batch")
        check_argument(self.mixup_mode in MIXUP_MODES, "mixup_mode", self.mixup_mode, f"choose one of {MIXUP_MODES}")
        if self.remode in ("const", "rand"):
            check_argument(False, "remode", self.remode,
                           f"timm's {self.remode!r} fill is not implemented here; use pixel")
        check_argument(self.remode in ERASE_MODES, "remode", self.remode, f"choose one of {ERASE_MODES}")
        check_argument(isinstance(self.recount, int) and not isinstance(self.recount, bool) and self.recount >= 1,
                       "recount", self.recount, "an integer >= 1")
        if self.aa is not None and not auto_augment_off(self.aa):
            parse_rand_augment(self.aa, "aa")
        _check_optional(self, ("color_jitter",), lambda value: _finite(value) and value >= 0,
                        "a strength >= 0 (0 turns it off), e.g. 0.4")
        check_argument(auto_augment_off(self.aa) or not self.color_jitter, "color_jitter", self.color_jitter,
                       f"colour jitter is not applied while RandAugment is on (--aa {self.aa}), as in timm; pass "
                       "--aa none to jitter colours instead, or leave --color_jitter out")
        augmented = (self.mixup > 0 or self.cutmix > 0 or self.cutmix_minmax is not None or self.reprob > 0
                     or not auto_augment_off(self.aa) or bool(self.color_jitter))
        check_argument(self.mode == "finetune" or not augmented, "mode", self.mode,
                       "--mixup, --cutmix, --cutmix_minmax, --reprob, --aa and --color_jitter are fine-tuning "
                       "augmentation; use --mode finetune or leave them off")

    @property
    def mixup_active(self) -> bool:
        """Mixup or CutMix is on: the targets are soft and the loss is soft-target cross-entropy."""
        return self.mixup > 0 or self.cutmix > 0 or self.cutmix_minmax is not None


def resolve_recipe(
    training_args: TrainingArguments, classification_args: ClassificationArguments, model_type: str
) -> str:
    """Fill the recipe's defaults into every unset field of both argument groups (the drop path goes into the model
    config, see `recipe_drop_path_rate`); returns the recipe used."""
    # --mode and --recipe were checked when the arguments were made.
    recipe = classification_args.recipe or ("cae" if model_type == "cae" else "mae")  # MixedAE fine-tunes as MAE
    explicit_jitter = classification_args.color_jitter
    for name, value in RECIPE_DEFAULTS[(classification_args.mode, recipe)].items():
        if name == "drop_path_rate":
            continue
        arguments = classification_args if hasattr(classification_args, name) else training_args
        if getattr(arguments, name) is None:
            setattr(arguments, name, value)
    check_argument(not explicit_jitter or auto_augment_off(classification_args.aa), "color_jitter", explicit_jitter,
                   f"colour jitter is not applied while RandAugment is on (--aa {classification_args.aa}, the {recipe} "
                   "recipe's default), as in timm; pass --aa none too to jitter colours instead")
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
