#!/usr/bin/env python
# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Reference points for the pre-training evaluation: kNN / linear-probe accuracy of raw pixels and of a randomly
initialised encoder, on the same data, transform and protocol as `run_mim.py`'s evaluation.

    python examples/evaluate_baselines.py examples/configs/mixedae_fashion_mnist.json
"""

import json
import logging

import torch
from accelerate import Accelerator

import transformers_mixedae  # noqa: F401
from transformers_mixedae.cli import run_cli
from transformers_mixedae.tasks.masked_image_modeling import MaskedImageModelingTask, build_pretraining_model
from transformers_mixedae.training.arguments import parse_run_arguments
from transformers_mixedae.tasks.masked_image_modeling_data import PretrainingData, RawPixelFeatures


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, training_args, evaluation_args = parse_run_arguments(argv)
    if model_args.model_name_or_path:
        # It would load the checkpoint and report it as the random encoder.
        raise ValueError(
            f"--model_name_or_path {model_args.model_name_or_path} is not valid here: the baselines are raw pixels and "
            "a randomly initialised encoder built from --model_type and --config_overrides. To evaluate a checkpoint, "
            "run run_mim.py with it and --max_steps 0."
        )
    MaskedImageModelingTask(model_args, data_args, training_args, evaluation_args)  # fills pre-training's defaults
    logging.basicConfig(level=logging.INFO)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    torch.manual_seed(training_args.seed)
    model = build_pretraining_model(model_args).to(accelerator.device)
    data = PretrainingData(model, model_args, data_args, training_args, accelerator, evaluation_args)
    results = {
        "raw_pixels": data.frozen_feature_metrics(RawPixelFeatures()),
        "random_init_encoder": data.frozen_feature_metrics(model),
    }
    if accelerator.is_main_process:
        print(json.dumps(results, indent=2, sort_keys=True))
    return results


if __name__ == "__main__":
    run_cli(main, program="evaluate_baselines.py")
