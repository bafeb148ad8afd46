# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Command-line arguments of `examples/run_mim.py`, as `HfArgumentParser` dataclasses (transformers examples style)."""

import ast
import difflib
import json
import math
import re
import sys
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODEL_TYPES = ("mixedae", "cae")
# transformers' `get_scheduler` names that run from the warm-up and run length alone; the others need a metric
# (`reduce_lr_on_plateau`, `greedy`) or extra settings this command line does not take (`cosine_with_min_lr`,
# `warmup_stable_decay`, ...), and would only fail at the first optimizer step.
SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt",
)
# How a user writes "no value" on the command line (`--label_column_name none`).
NONE_SPELLINGS = ("none", "null", "")


def check_argument(condition: bool, flag: str, value: Any, requirement: str) -> None:
    """Raise a `ValueError` naming the flag, the value given and what it must be, before anything is built."""
    if not condition:
        raise ValueError(f"--{flag} {value!r} is not valid: {requirement}.")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_optional(arguments: Any, names: tuple[str, ...], condition, requirement: str) -> None:
    for name in names:
        value = getattr(arguments, name)
        if value is not None:
            check_argument(condition(value), name, value, requirement)


# Flags of the first releases that transformers' `TrainingArguments` spells otherwise: still accepted (command line,
# JSON configs, keyword arguments), with a FutureWarning, and copied into the new name.
DEPRECATED_ALIASES = {
    "max_train_steps": "max_steps",
    "checkpointing_steps": "save_steps",
    "checkpoints_total_limit": "save_total_limit",
    "activation_checkpointing": "gradient_checkpointing",
}


class _NotGiven:
    """The default of a deprecated flag: tells "not given" apart from an explicit `None` (e.g. keep every checkpoint)."""

    def __repr__(self) -> str:
        return "not given"


NOT_GIVEN = _NotGiven()


def _deprecated_alias(new_name: str):
    return field(default=NOT_GIVEN, metadata={"help": f"Deprecated: the former name of --{new_name}."})


def _warn_deprecated(old_name: str) -> None:
    warnings.warn(
        f"--{old_name} is deprecated; use --{DEPRECATED_ALIASES[old_name]} (the name transformers' TrainingArguments "
        "uses).", FutureWarning, stacklevel=4,
    )


def _apply_deprecated_aliases(arguments: Any) -> None:
    """Copy each deprecated flag that was given into its new name (see `DEPRECATED_ALIASES`), warning once."""
    for old_name, new_name in DEPRECATED_ALIASES.items():
        value = getattr(arguments, old_name, NOT_GIVEN)
        if value is NOT_GIVEN:
            continue
        current = getattr(arguments, new_name)
        if current != arguments.__dataclass_fields__[new_name].default and current != value:
            raise ValueError(
                f"--{old_name} {value!r} and --{new_name} {current!r} set the same thing; pass only --{new_name}."
            )
        _warn_deprecated(old_name)
        setattr(arguments, new_name, value)
        setattr(arguments, old_name, NOT_GIVEN)


def _none_if_spelled_none(value: str | None) -> str | None:
    return None if value is None or value.strip().lower() in NONE_SPELLINGS else value


@dataclass
class ModelArguments:
    model_type: str | None = field(
        default=None,
        metadata={
            "help": f"One of {MODEL_TYPES}: the model to build from scratch (pre-training: mixedae when not given). With "
            "--model_name_or_path, image classification reads it from the checkpoint (and checks it when given)."
        },
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Continue from a checkpoint (local folder or Hub id). For mixedae, a transformers ViTMAE "
            "checkpoint (e.g. facebook/vit-mae-base) works too. Default: train from scratch."
        },
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated config fields, e.g. 'hidden_size=192,num_hidden_layers=6,"
            "homologous_attention_layers=[3,4,5]'. Values are parsed as JSON/Python literals."
        },
    )
    image_size: int | None = field(default=None, metadata={"help": "Training resolution (config.image_size)."})
    patch_size: int | None = field(default=None, metadata={"help": "Patch size (config.patch_size)."})
    attn_implementation: str | None = field(
        default=None, metadata={"help": "eager, sdpa (default), flash_attention_2, flex_attention, ..."}
    )
    cae_tokenizer_path: str | None = field(
        default=None,
        metadata={
            "help": "CAE with target='tokens': path to the DALL-E dVAE encoder.pkl. Without it, CAE needs "
            "config_overrides target=pixels (the labelled non-official variant)."
        },
    )
    cae_tokenizer_allow_unsafe_pickle: bool = field(
        default=False,
        metadata={
            "help": "Let --cae_tokenizer_path be a pickled module (OpenAI's encoder.pkl), which runs code from the "
            "file while loading: only for a file you trust. Without it, only a plain state dict is accepted."
        },
    )
    torch_compile: bool = field(default=False, metadata={"help": "Compile the model with torch.compile."})
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute block activations in the backward pass to save memory."}
    )
    activation_checkpointing: bool = _deprecated_alias("gradient_checkpointing")

    def __post_init__(self):
        _apply_deprecated_aliases(self)
        if self.model_type is not None:
            check_argument(self.model_type in MODEL_TYPES, "model_type", self.model_type, f"choose one of {MODEL_TYPES}")
        _check_optional(self, ("image_size", "patch_size"), _positive_int, "a whole number >= 1")
        self.model_name_or_path = _none_if_spelled_none(self.model_name_or_path)
        parse_config_overrides(self.config_overrides)  # syntax errors surface now, field names once the model is known


@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset id (e.g. ILSVRC/imagenet-1k, gated: needs a token). Default (no dataset_name "
            "and no train_dir): the Fashion-MNIST subset shipped with the package."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    dataset_revision: str | None = field(
        default=None,
        metadata={"help": "Branch, tag or commit of --dataset_name, e.g. refs/convert/parquet: the Hub's Parquet "
                          "export of a dataset that only has a loading script (such as scene_parse_150), which "
                          "datasets no longer runs."},
    )
    validation_split_name: str = field(
        default="validation",
        metadata={"help": "Split to evaluate on, of --dataset_name or of a --data_dir with split folders: e.g. 'test' "
                          "for datasets without a validation split (cifar10, mnist); it must have labels."},
    )
    train_dir: str | None = field(
        default=None,
        metadata={"help": "Local folder of training images (class sub-folders), Parquet shards or WebDataset .tar shards."},
    )
    validation_dir: str | None = field(default=None, metadata={"help": "Local folder for validation (as --train_dir)."})
    streaming: bool = field(default=False, metadata={"help": "Stream the dataset instead of downloading it."})
    image_column_name: str = field(default="image", metadata={"help": "Column holding the images."})
    label_column_name: str | None = field(
        default="label",
        metadata={
            "help": "Column holding labels (for kNN / linear-probe evaluation). 'none' for unlabelled data: "
            "pre-training needs no labels, and evaluation then reports the reconstruction loss only."
        },
    )
    max_train_samples: int | None = field(
        default=None,
        metadata={"help": "Use only this many training samples: a fixed random subset (the same in every run) of a "
                          "non-streamed dataset, the first ones of a stream. Likewise the two limits below."},
    )
    max_eval_samples: int | None = field(
        default=None,
        metadata={
            "help": "Validation samples to evaluate on (pre-training: the kNN / linear-probe queries and eval loss, "
            "2000 when not given; image classification: all when not given)."
        },
    )
    max_eval_train_samples: int | None = field(
        default=5000,
        metadata={"help": "Training samples (evaluation transform) used as kNN bank / linear-probe training set."},
    )
    shuffle_buffer_size: int = field(
        default=10000,
        metadata={"help": "Examples per shuffle block, per DataLoader worker: after the shard order is shuffled, each "
                  "worker reads this many consecutive examples and permutes them (a resumable shuffle; it also bounds "
                  "what a resume re-reads). A non-streamed dataset larger than this is permuted once (seeded) before "
                  "it is cut into shards, so that a folder sorted by class is not read class by class."},
    )
    dataloader_num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes per rank."})
    max_skipped_fraction: float = field(
        default=0.01,
        metadata={"help": "Stop with an error when more than this fraction of samples could not be decoded."},
    )
    strict_decoding: bool = field(default=False, metadata={"help": "Fail on the first undecodable image."})

    def __post_init__(self):
        self.label_column_name = _none_if_spelled_none(self.label_column_name)
        check_argument(bool(self.image_column_name), "image_column_name", self.image_column_name, "name a column")
        for flag in ("train_dir", "validation_dir"):
            path = getattr(self, flag)
            if path is not None:
                check_argument(Path(path).is_dir(), flag, path, "no such folder; give a folder of images or Parquet shards")
        _check_optional(self, ("max_train_samples", "max_eval_samples", "max_eval_train_samples"), _positive_int,
                        "a whole number >= 1 (leave it out for all samples)")
        check_argument(_positive_int(self.shuffle_buffer_size), "shuffle_buffer_size", self.shuffle_buffer_size,
                       "a whole number >= 1")
        check_argument(isinstance(self.dataloader_num_workers, int) and self.dataloader_num_workers >= 0,
                       "dataloader_num_workers", self.dataloader_num_workers, "0 (load in the training process) or more")
        check_argument(_finite(self.max_skipped_fraction) and 0 <= self.max_skipped_fraction <= 1,
                       "max_skipped_fraction", self.max_skipped_fraction, "a fraction between 0 and 1")


@dataclass
class TrainingArguments:
    """What every task's run shares: the loop, its schedule, checkpoints, logging and the Hub. Names follow
    transformers' `TrainingArguments` where a field means the same thing."""

    output_dir: str | None = field(
        default=None,
        metadata={"help": "Where checkpoints and results go (default: outputs/run_mim or outputs/run_image_classification)."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Replace the finished run (or unfinished checkpoints) already in --output_dir. Without it, a run "
            "refuses to write into a folder that holds another run's results."
        },
    )
    per_device_train_batch_size: int = field(default=64, metadata={"help": "Images per device per micro-step."})
    per_device_eval_batch_size: int = field(default=128, metadata={"help": "Images per device for evaluation."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-steps per optimizer step."})
    base_learning_rate: float | None = field(
        default=None,
        metadata={"help": "lr = base_learning_rate * total_batch / 256 (MAE). Default 1.5e-4 (MixedAE)."},
    )
    learning_rate: float | None = field(
        default=None, metadata={"help": "Absolute learning rate (CAE's recipe uses 1.5e-3); overrides the base rate."}
    )
    weight_decay: float | None = field(
        default=None,
        metadata={"help": "Weight decay, not on biases and norms (default: pre-training 0.05; classification: recipe)."},
    )
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float | None = field(default=None, metadata={"help": "AdamW beta2 (default 0.95 MAE, 0.999 CAE)."})
    lr_scheduler_type: str = field(
        default="cosine", metadata={"help": f"transformers get_scheduler name, one of {', '.join(SCHEDULERS)}."}
    )
    warmup_steps: int | None = field(default=None, metadata={"help": "Warm-up optimizer steps."})
    warmup_ratio: float = field(
        default=0.05,
        metadata={"help": "Warm-up fraction of the run when --warmup_steps is not set (pre-training, segmentation; "
                          "image classification warms up over --warmup_epochs)."},
    )
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs (ignored when max_steps is set)."})
    max_steps: int | None = field(
        default=None,
        metadata={"help": "Optimizer steps in total; 0 evaluates and saves the model as built (a random-init baseline)."},
    )
    max_train_steps: int | None = _deprecated_alias("max_steps")
    max_grad_norm: float | None = field(default=None, metadata={"help": "Clip gradients to this norm (CAE: 3.0)."})
    seed: int = field(default=0, metadata={"help": "Seed for weights, data order, augmentation and masks."})
    logging_steps: int = field(default=10, metadata={"help": "Log every this many optimizer steps."})
    save_steps: int | None = field(default=None, metadata={"help": "Save a checkpoint every N optimizer steps."})
    save_total_limit: int | None = field(
        default=2, metadata={"help": "Keep only the newest K checkpoints (none: keep every one)."}
    )
    checkpointing_steps: int | None = _deprecated_alias("save_steps")
    checkpoints_total_limit: int | None = _deprecated_alias("save_total_limit")
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "A checkpoint folder, or 'latest' (newest complete one in output_dir)."}
    )
    allow_recipe_change: bool = field(
        default=False,
        metadata={
            "help": "Resume although the batch size, learning rate, schedule or seed differ from the checkpoint's "
            "(they are listed in a warning). Without it such a resume is refused. A different model, or other "
            "trained parameters (e.g. the position table frozen on one side only), never resumes."
        },
    )
    eval_steps: int | None = field(default=None, metadata={"help": "Evaluate every N steps (and always at the end)."})
    max_consecutive_nonfinite_steps: int = field(
        default=5, metadata={"help": "Stop after this many optimizer steps in a row with a non-finite loss/gradient."}
    )
    report_to: str | None = field(default=None, metadata={"help": "tensorboard, trackio, wandb, all, or none."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the final model to the Hub."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repository for --push_to_hub."})
    hub_token: str | None = field(default=None, metadata={"help": "Hub token (default: the logged-in one)."})

    def __post_init__(self):
        _apply_deprecated_aliases(self)
        self.resume_from_checkpoint = _none_if_spelled_none(self.resume_from_checkpoint)
        positive_counts = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                           "logging_steps", "max_consecutive_nonfinite_steps")
        for name in positive_counts:
            check_argument(_positive_int(getattr(self, name)), name, getattr(self, name), "a whole number >= 1")
        _check_optional(self, ("save_steps", "eval_steps"), _positive_int,
                        "a whole number >= 1 (leave it out to turn it off)")
        _check_optional(self, ("save_total_limit",), _positive_int,
                        "a whole number >= 1 (none keeps every checkpoint)")
        _check_optional(self, ("max_steps",), lambda value: isinstance(value, int) and value >= 0,
                        "a whole number of optimizer steps >= 0 (0 evaluates the model as built, without training)")
        check_argument(_finite(self.num_train_epochs) and self.num_train_epochs > 0, "num_train_epochs",
                       self.num_train_epochs, "a number of epochs > 0 (fractions allowed), or set --max_steps")
        _check_optional(self, ("learning_rate", "base_learning_rate", "max_grad_norm"),
                        lambda value: _finite(value) and value > 0, "a number > 0")
        _check_optional(self, ("weight_decay",), lambda value: _finite(value) and value >= 0, "a number >= 0")
        _check_optional(self, ("adam_beta1", "adam_beta2"), lambda value: _finite(value) and 0 <= value < 1,
                        "a number in [0, 1)")
        _check_optional(self, ("warmup_steps",), lambda value: isinstance(value, int) and value >= 0,
                        "a whole number >= 0")
        check_argument(_finite(self.warmup_ratio) and 0 <= self.warmup_ratio < 1, "warmup_ratio", self.warmup_ratio,
                       "a fraction in [0, 1)")
        check_argument(self.lr_scheduler_type in SCHEDULERS, "lr_scheduler_type", self.lr_scheduler_type,
                       f"choose one of {list(SCHEDULERS)}")


@dataclass
class PretrainingEvaluationArguments:
    """How masked-image-modelling runs judge their encoder: weighted kNN and a linear probe on frozen features, and the
    pictures drawn at each evaluation."""

    knn_k: int = field(default=20, metadata={"help": "Neighbours of the weighted kNN classifier (DINO: 20)."})
    knn_temperature: float = field(default=0.07, metadata={"help": "Temperature of the kNN vote (DINO: 0.07)."})
    linear_probe_epochs: int = field(default=30, metadata={"help": "Epochs of the linear probe on cached features."})
    save_visualizations: bool = field(default=True, metadata={"help": "Write PNG grids at every evaluation."})

    def __post_init__(self):
        for name in ("knn_k", "linear_probe_epochs"):
            check_argument(_positive_int(getattr(self, name)), name, getattr(self, name), "a whole number >= 1")
        check_argument(_finite(self.knn_temperature) and self.knn_temperature > 0, "knn_temperature",
                       self.knn_temperature, "a number > 0")


_TOP_LEVEL_COMMA = re.compile(r",(?![^\[\]\(\)\{\}]*[\]\)\}])")


def parse_config_overrides(overrides: str | None, config_class: type | None = None) -> dict[str, Any]:
    """`"a=1,b=[1,2],c=pixels"` -> `{"a": 1, "b": [1, 2], "c": "pixels"}`.

    With `config_class`, every key must be one of its fields, and a value is read as the field's type says: a
    text field keeps the text as written (`segment_embedding=none` is the string "none", as documented), a field
    that admits `None` reads `none`/`null` as `None`, and the other values are JSON or Python literals.
    """
    if not overrides:
        return {}
    field_types = _field_types(config_class) if config_class is not None else {}
    parsed = {}
    for item in _TOP_LEVEL_COMMA.split(overrides):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise ValueError(
                f"--config_overrides entry {item!r} is not of the form key=value "
                "(example: 'hidden_size=192,num_hidden_layers=6')."
            )
        key, raw = (part.strip() for part in item.split("=", 1))
        if config_class is not None and key not in field_types:
            close = difflib.get_close_matches(key, field_types, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"--config_overrides names {key!r}, which is not a field of {config_class.__name__}.{hint} "
                f"The fields it may set: {sorted(field_types)}."
            )
        parsed[key] = _parse_value(raw, field_types.get(key))
    return parsed


# Fields every transformers config has that a user may set; the others (model_type, transformers_version,
# architectures, parallelism plans, ...) describe the class or the file, and changing them would build another model.
SETTABLE_BASE_CONFIG_FIELDS = ("id2label", "label2id", "problem_type", "output_hidden_states", "return_dict", "dtype")


def _field_types(config_class: type) -> dict[str, Any]:
    """The annotation of each field `--config_overrides` may set (`Any` where it is only a string, so its values
    are read as literals): the model's own fields and the settable ones of every config."""
    from transformers import PreTrainedConfig

    base_fields = set(PreTrainedConfig.__dataclass_fields__) - set(SETTABLE_BASE_CONFIG_FIELDS)
    return {
        name: Any if isinstance(definition.type, str) else definition.type
        for name, definition in config_class.__dataclass_fields__.items()
        if name not in base_fields
    }


def _type_options(annotation: Any) -> tuple:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return typing.get_args(annotation)
    return (annotation,)


def _unquoted(raw: str) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return raw[1:-1]
    return raw


def _parse_value(raw: str, annotation: Any = None) -> Any:
    options = _type_options(annotation) if annotation is not None else ()
    if options and all(option is str for option in options):
        return _unquoted(raw)  # a text field: what was written is the value, even "none" or "1"
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for parser in (json.loads, ast.literal_eval):
        try:
            return parser(raw)
        except (ValueError, SyntaxError):
            continue
    return raw


def merge_config_overrides(*layers: str | None) -> str | None:
    """Layer `--config_overrides` strings field by field: a later layer's value for a field wins, the other fields
    of the earlier layers stay (a JSON config's overrides, then the command line's)."""
    merged: dict[str, str] = {}
    for layer in layers:
        for item in _TOP_LEVEL_COMMA.split(layer or ""):
            if item.strip():
                key, _, raw = item.partition("=")
                merged[key.strip()] = f"{key.strip()}={raw.strip()}" if _ else item.strip()
    return ",".join(merged.values()) or None


def _renamed_deprecated_flags(argv: list[str]) -> list[str]:
    """`--max_train_steps 10` -> `--max_steps 10` (and `--flag=value`), so that a deprecated flag on the command line
    overrides a JSON config's value under either name, as any flag does; both names on the command line conflict."""
    given = {token[2:].split("=", 1)[0] for token in argv if token.startswith("--")}
    renamed = []
    for token in argv:
        name, separator, value = token[2:].partition("=") if token.startswith("--") else ("", "", "")
        if name in DEPRECATED_ALIASES:
            new_name = DEPRECATED_ALIASES[name]
            if new_name in given:
                raise ValueError(f"--{name} and --{new_name} set the same thing; pass only --{new_name}.")
            _warn_deprecated(name)
            token = f"--{new_name}{separator}{value}"
        renamed.append(token)
    return renamed


def _renamed_deprecated_keys(values: dict[str, Any], source: str) -> dict[str, Any]:
    """A JSON config's deprecated keys under their new names; both names in one file conflict."""
    renamed = {}
    for key, value in values.items():
        if key in DEPRECATED_ALIASES:
            if DEPRECATED_ALIASES[key] in values:
                raise ValueError(f"{source} sets both {key} and {DEPRECATED_ALIASES[key]}, the same thing; keep "
                                 f"only {DEPRECATED_ALIASES[key]}.")
            _warn_deprecated(key)
            key = DEPRECATED_ALIASES[key]
        renamed[key] = value
    return renamed


def _optional_numbers(dataclass_types: tuple) -> set[str]:
    """Fields typed `int | None` or `float | None`: `none` on the command line gives them None, as `null` in JSON."""
    names = set()
    for dataclass_type in dataclass_types:
        for name, hint in typing.get_type_hints(dataclass_type).items():
            arguments = set(typing.get_args(hint))
            if type(None) in arguments and arguments - {type(None)} <= {int, float} and len(arguments) > 1:
                names.add(name)
    return names


def _flags_set_to_none(argv: list[str], dataclass_types: tuple) -> tuple[list[str], set[str]]:
    """Take `--flag none` (`null`, `--flag=none`) of optional numeric flags out of `argv` (argparse would read the
    word as a number); returns the rest and the names to set to None after parsing."""
    optional = _optional_numbers(dataclass_types)
    kept, nulls, index = [], set(), 0
    while index < len(argv):
        token = argv[index]
        name, separator, value = token[2:].partition("=") if token.startswith("--") else ("", "", "")
        if not separator and name in optional and index + 1 < len(argv):
            value = argv[index + 1]
        if name in optional and value.strip().lower() in NONE_SPELLINGS and (separator or index + 1 < len(argv)):
            nulls.add(name)
            index += 1 if separator else 2
            continue
        kept.append(token)
        index += 1
    return kept, nulls


def parse_run_arguments(
    argv: list[str] | None = None,
    dataclass_types: tuple = (ModelArguments, DataArguments, TrainingArguments, PretrainingEvaluationArguments),
) -> tuple:
    """Parse `[config.json] [--flag value ...]` into `dataclass_types`: the JSON file (if first) gives defaults,
    flags override them field by field, also inside `--config_overrides`."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(dataclass_types)
    argv = _renamed_deprecated_flags(list(sys.argv[1:] if argv is None else argv))
    argv, nulls = _flags_set_to_none(argv, dataclass_types)
    defaults: dict[str, Any] = {}
    if argv and argv[0].endswith(".json"):
        config_path = Path(argv[0])
        if not config_path.is_file():
            raise FileNotFoundError(f"the arguments file {argv[0]!r} does not exist.")
        try:
            defaults = json.loads(config_path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{argv[0]} is not valid JSON ({error}); fix the file or pass the flags instead.") from None
        if not isinstance(defaults, dict):
            raise ValueError(f"{argv[0]} must hold a JSON object of argument names and values.")
        # Keys starting with "_" are comments (the ImageNet presets state the paper's number in "_comment").
        defaults = {key: value for key, value in defaults.items() if not key.startswith("_")}
        defaults = _renamed_deprecated_keys(defaults, source=str(config_path))
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(defaults) - known)
        if unknown:
            raise ValueError(f"{argv[0]} has unknown arguments {unknown}; see the script's --help.")
        parser.set_defaults(**defaults)
        argv = argv[1:]
    parsed = parser.parse_args_into_dataclasses(args=argv)
    for arguments in parsed:
        for name in nulls & set(type(arguments).__dataclass_fields__):
            setattr(arguments, name, None)
    if defaults.get("config_overrides"):
        for arguments in parsed:
            if hasattr(arguments, "config_overrides"):
                # The parsed value is the command line's (however spelled) or, without one, the file's own, which
                # merged over itself stays the same.
                arguments.config_overrides = merge_config_overrides(
                    defaults["config_overrides"], arguments.config_overrides
                )
    return parsed
