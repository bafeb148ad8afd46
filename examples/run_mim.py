#!/usr/bin/env python
# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Pre-train MixedAE or CAE with Accelerate, then evaluate (kNN, linear probe, reconstruction loss).

    accelerate launch examples/run_mim.py examples/configs/mixedae_fashion_mnist.json --num_train_epochs 8
    accelerate launch --multi_gpu --num_processes 8 --mixed_precision bf16 examples/run_mim.py \
        --dataset_name ILSVRC/imagenet-1k --streaming --per_device_train_batch_size 128 ...

Without --dataset_name/--train_dir it trains on the Fashion-MNIST subset shipped with the package. The logic
lives in `transformers_mixedae.tasks.masked_image_modeling` (importable and tested); this file only parses arguments.
"""

import json
import logging

import transformers_mixedae  # noqa: F401  (registers the models with the Auto classes)
from transformers_mixedae.cli import run_cli
from transformers_mixedae.tasks.masked_image_modeling import run_pretraining
from transformers_mixedae.training.loop import exit_status
from transformers_mixedae.training.arguments import parse_run_arguments


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, training_args, evaluation_args = parse_run_arguments(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    results = run_pretraining(model_args, data_args, training_args, evaluation_args)
    if results:
        print(json.dumps(results, indent=2, sort_keys=True))
    return results


if __name__ == "__main__":
    raise SystemExit(exit_status(run_cli(main, program="run_mim.py")))
