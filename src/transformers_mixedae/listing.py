# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""How messages name many things (files, weights, samples): the first few, then how many more, so that an error
about thousands of files stays one readable line."""

from __future__ import annotations

from collections.abc import Sequence

MOST_NAMED = 8


def first_few(names: Sequence[str], most: int = MOST_NAMED, total: int | None = None) -> str:
    """`names[:most]` joined by commas, then ", and K more" for the rest of `total` (default `len(names)`; larger
    when `names` is only the recorded part of a longer list)."""
    if most < 1:
        raise ValueError(f"most={most} is not valid: name at least 1 item")
    shown = list(names[:most])
    total = len(names) if total is None else total
    more = total - len(shown)
    return ", ".join(shown + ([f"and {more} more"] if more > 0 else []))
