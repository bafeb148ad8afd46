# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Everything between a trained model and the Hub: Auto-class registration, export to native transformers classes,
remote code, model cards, and the conversion of official CAE checkpoints."""
