# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Training tasks on the engine of `training.loop`: masked image modelling (MixedAE, CAE pre-training) and image
classification (fine-tuning, linear probing). A task states its model, data, model inputs, optimizer, loss,
evaluation and what happens before the final save; `examples/` parses arguments and calls `run_pretraining` or
`run_image_classification`.
"""
