#!/usr/bin/env python
# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Semantic segmentation with UperNet on a MixedAE / CAE backbone, with Accelerate; mIoU over the whole validation set.

    accelerate launch examples/run_semantic_segmentation.py examples/configs/segment_fashion_mnist_dense.json \
        --model_name_or_path outputs/mixedae_fashion_mnist
    accelerate launch --multi_gpu --num_processes 8 examples/run_semantic_segmentation.py \
        examples/configs/ade20k_upernet_mae.json --model_name_or_path <ViT-B checkpoint> --data_dir ADEChallengeData2016

Data: `--data_dir` (ADEChallengeData2016 layout), `--dataset_name` (e.g. `scene_parse_150 --dataset_config_name
scene_parsing --dataset_revision refs/convert/parquet`: its Parquet conversion), or, with neither, the
dense benchmark shipped with the package. The logic lives in `transformers_mixedae.tasks.semantic_segmentation`;
this file only parses arguments.
"""

import json
import logging

import transformers_mixedae  # noqa: F401  (registers the models with the Auto classes)
from transformers_mixedae.cli import run_cli
from transformers_mixedae.tasks.semantic_segmentation import run_semantic_segmentation
from transformers_mixedae.tasks.semantic_segmentation_args import parse_segmentation_arguments
from transformers_mixedae.training.loop import exit_status


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, training_args, segmentation_args = parse_segmentation_arguments(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    results = run_semantic_segmentation(model_args, data_args, training_args, segmentation_args)
    if results:
        print(json.dumps(results, indent=2, sort_keys=True))
    return results


if __name__ == "__main__":
    raise SystemExit(exit_status(run_cli(main, program="run_semantic_segmentation.py")))
