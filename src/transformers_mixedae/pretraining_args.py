# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Command-line arguments of `examples/run_mim.py`, as `HfArgumentParser` dataclasses (transformers examples style)."""

import ast
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODEL_TYPES = ("mixedae", "cae")


@dataclass
class ModelArguments:
    model_type: str = field(default="mixedae", metadata={"help": f"Which method to pre-train: one of {MODEL_TYPES}."})
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
    activation_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute block activations in the backward pass to save memory."}
    )


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
    train_dir: str | None = field(default=None, metadata={"help": "Local imagefolder with the training images."})
    validation_dir: str | None = field(default=None, metadata={"help": "Local imagefolder for validation."})
    streaming: bool = field(default=False, metadata={"help": "Stream the dataset instead of downloading it."})
    image_column_name: str = field(default="image", metadata={"help": "Column holding the images."})
    label_column_name: str = field(default="label", metadata={"help": "Column holding labels (for evaluation)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only this many training samples."})
    max_eval_samples: int | None = field(
        default=2000, metadata={"help": "Validation samples used for kNN/linear-probe queries and eval loss."}
    )
    max_eval_train_samples: int | None = field(
        default=5000,
        metadata={"help": "Training samples (evaluation transform) used as kNN bank / linear-probe training set."},
    )
    shuffle_buffer_size: int = field(default=10000, metadata={"help": "Streaming shuffle buffer."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes per rank."})
    max_skipped_fraction: float = field(
        default=0.01,
        metadata={"help": "Stop with an error when more than this fraction of samples could not be decoded."},
    )
    strict_decoding: bool = field(default=False, metadata={"help": "Fail on the first undecodable image."})


@dataclass
class PretrainingArguments:
    output_dir: str = field(default="outputs/run_mim", metadata={"help": "Where checkpoints and results go."})
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
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (not on biases and norms)."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float | None = field(default=None, metadata={"help": "AdamW beta2 (default 0.95 MAE, 0.999 CAE)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "transformers get_scheduler name."})
    warmup_steps: int | None = field(default=None, metadata={"help": "Warm-up optimizer steps."})
    warmup_ratio: float = field(default=0.05, metadata={"help": "Warm-up fraction when warmup_steps is not set."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs (ignored when max_train_steps is set)."})
    max_train_steps: int | None = field(default=None, metadata={"help": "Optimizer steps in total."})
    max_grad_norm: float | None = field(default=None, metadata={"help": "Clip gradients to this norm (CAE: 3.0)."})
    seed: int = field(default=0, metadata={"help": "Seed for weights, data order, augmentation and masks."})
    logging_steps: int = field(default=10, metadata={"help": "Log every this many optimizer steps."})
    checkpointing_steps: int | None = field(default=None, metadata={"help": "Save a checkpoint every N steps."})
    checkpoints_total_limit: int | None = field(default=2, metadata={"help": "Keep only the newest K checkpoints."})
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "A checkpoint folder, or 'latest' (newest complete one in output_dir)."}
    )
    eval_steps: int | None = field(default=None, metadata={"help": "Evaluate every N steps (and always at the end)."})
    knn_k: int = field(default=20, metadata={"help": "Neighbours of the weighted kNN classifier (DINO: 20)."})
    knn_temperature: float = field(default=0.07, metadata={"help": "Temperature of the kNN vote (DINO: 0.07)."})
    linear_probe_epochs: int = field(default=30, metadata={"help": "Epochs of the linear probe on cached features."})
    max_consecutive_nonfinite_steps: int = field(
        default=5, metadata={"help": "Stop after this many optimizer steps in a row with a non-finite loss/gradient."}
    )
    report_to: str | None = field(default=None, metadata={"help": "tensorboard, trackio, wandb, all, or none."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the final model to the Hub."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repository for --push_to_hub."})
    hub_token: str | None = field(default=None, metadata={"help": "Hub token (default: the logged-in one)."})
    save_visualizations: bool = field(default=True, metadata={"help": "Write PNG grids at every evaluation."})


_TOP_LEVEL_COMMA = re.compile(r",(?![^\[\]\(\)\{\}]*[\]\)\}])")


def parse_config_overrides(overrides: str | None) -> dict[str, Any]:
    """`"a=1,b=[1,2],c=pixels"` -> `{"a": 1, "b": [1, 2], "c": "pixels"}`."""
    if not overrides:
        return {}
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
        parsed[key] = _parse_value(raw)
    return parsed


def _parse_value(raw: str) -> Any:
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


def parse_run_arguments(
    argv: list[str] | None = None, dataclass_types: tuple = (ModelArguments, DataArguments, PretrainingArguments)
) -> tuple[ModelArguments, DataArguments, PretrainingArguments]:
    """Parse `[config.json] [--flag value ...]` into `dataclass_types`: the JSON file (if first) gives defaults,
    flags override them."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(dataclass_types)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith(".json"):
        defaults = json.loads(Path(argv[0]).read_text())
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(defaults) - known)
        if unknown:
            raise ValueError(f"{argv[0]} has unknown arguments {unknown}; see the script's --help.")
        parser.set_defaults(**defaults)
        argv = argv[1:]
    return parser.parse_args_into_dataclasses(args=argv)
