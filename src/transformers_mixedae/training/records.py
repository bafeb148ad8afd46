# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Machine-readable records a pre-training run leaves in `output_dir` (written by the main process only).

* `train_log.jsonl`: one JSON object per logging step, `{"step", "loss", "learning_rate"}` (`loss` is `null` when
  every optimizer step of the window was skipped as non-finite). Each line is flushed when written. A run that
  starts or resumes at step N first drops the lines after step N (and a line cut short by a kill), so after any
  number of interruptions the file holds each step once, as an uninterrupted run would have written it.
* `skipped_samples.json`: the training images that could not be decoded, with their identifiers and reasons,
  written at the end of training and when `--max_skipped_fraction` stops the job.
"""

import json
import math
import os
from pathlib import Path
from typing import Any

TRAIN_LOG_NAME = "train_log.jsonl"
SKIPPED_SAMPLES_NAME = "skipped_samples.json"


class TrainLog:
    """Append-only per-step log that stays consistent across resumes (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def keep_until(self, step: int) -> None:
        """Drop the records after `step` (and unreadable lines): the run continues from `step`."""
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # the last line of a killed run may be cut short
                continue
            if record.get("step", math.inf) <= step:
                kept.append(line)
        write_text_atomically(self.path, "".join(f"{line}\n" for line in kept))

    def append(self, step: int, loss: float | None, learning_rate: float) -> None:
        if not self.enabled:
            return
        if loss is not None and not math.isfinite(loss):
            loss = None
        with self.path.open("a") as log:
            log.write(json.dumps({"step": step, "loss": loss, "learning_rate": learning_rate}) + "\n")
            log.flush()


def read_train_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a `train_log.jsonl`, in order."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """Write `text` through a `.tmp-` sibling and one rename, so that a kill leaves the previous file whole."""
    path = Path(path)
    temporary = path.with_name(f".tmp-{path.name}")
    temporary.write_text(text)
    os.replace(temporary, path)
    return path


def write_json_atomically(path: str | os.PathLike, data: Any, *, sort_keys: bool = False) -> Path:
    """Write `data` as indented JSON with `write_text_atomically`."""
    return write_text_atomically(path, json.dumps(data, indent=2, sort_keys=sort_keys))


def write_skipped_samples(
    output_dir: str | os.PathLike, report: dict[str, Any], name: str = SKIPPED_SAMPLES_NAME
) -> Path:
    """Write `report` (see `PretrainingData.skipped_report`) to `output_dir/name`."""
    return write_json_atomically(Path(output_dir) / name, report)
