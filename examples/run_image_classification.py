#!/usr/bin/env python
# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Fine-tune or linear-probe a MixedAE / CAE checkpoint with Accelerate; top-1/top-5 accuracy with `evaluate`.

    accelerate launch examples/run_image_classification.py examples/configs/finetune_fashion_mnist.json \
        --model_name_or_path outputs/mixedae_fashion_mnist
    accelerate launch examples/run_image_classification.py examples/configs/linear_probe_fashion_mnist.json \
        --model_name_or_path outputs/cae_fashion_mnist

`--mode finetune|linear_probe|attentive_probe`, `--recipe mae|cae` (defaults that explicit flags override). Without
--dataset_name/--train_dir it uses the Fashion-MNIST subset shipped with the package. The logic lives in
`transformers_mixedae.tasks.image_classification`; this file only parses arguments.
"""

import json
import logging

import transformers_mixedae  # noqa: F401  (registers the models with the Auto classes)
from transformers_mixedae.cli import run_cli
from transformers_mixedae.tasks.image_classification import run_image_classification
from transformers_mixedae.tasks.image_classification_args import parse_classification_arguments
from transformers_mixedae.training.loop import exit_status


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, training_args, classification_args = parse_classification_arguments(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    results = run_image_classification(model_args, data_args, training_args, classification_args)
    if results:
        print(json.dumps(results, indent=2, sort_keys=True))
    return results


if __name__ == "__main__":
    raise SystemExit(exit_status(run_cli(main, program="run_image_classification.py")))
