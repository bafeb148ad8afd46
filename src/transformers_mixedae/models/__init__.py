# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""The models: each one's configuration, modeling and image processing (MixedAE, CAE), the ViT pieces and bases they
share, masking, the DALL-E tokenizer and the ViT size presets.

These files import only each other (relative imports inside this folder), torch, numpy, Pillow and transformers: a
`trust_remote_code` folder copies them as they are (`hub.remote_code`).
"""
