# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
