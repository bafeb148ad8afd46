# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Atomic, rotated `accelerate` checkpoints.

A checkpoint is written by `accelerator.save_state` into a hidden temporary folder and renamed to
`checkpoints/step_<N>` only once every rank has finished writing, so a folder named `step_<N>` is always
complete: a job killed mid-write leaves a `.tmp-*` folder that is never picked as `latest` and is removed
by the next save. Only the newest `keep_last` checkpoints are kept.
"""

import os
import pickle
import re
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger

logger = get_logger(__name__)

CHECKPOINTS_DIRNAME = "checkpoints"
_STEP_PATTERN = re.compile(r"^step_(\d+)$")
_TEMPORARY_PREFIX = ".tmp-"


def checkpoint_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIRNAME


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), path) for path in root.iterdir() if (m := _STEP_PATTERN.match(path.name))]
    return [path for _, path in sorted(found)]


def resolve_checkpoint(resume_from_checkpoint: str | None, output_dir: str | os.PathLike) -> Path | None:
    """`None` -> no resume; `"latest"` -> newest complete checkpoint in `output_dir` (or None if there is
    none yet, so a restarted job can always pass `latest`); a path -> that checkpoint, which must exist."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        raise FileNotFoundError(
            f"--resume_from_checkpoint {resume_from_checkpoint!r} is not a checkpoint folder. Pass a folder written "
            f"by a previous run (e.g. {checkpoint_root(output_dir) / 'step_100'}) or 'latest'."
        )
    if path.name.startswith(_TEMPORARY_PREFIX):
        raise ValueError(f"{path} is an incomplete checkpoint (its write was interrupted); resume from another one.")
    return path


def check_checkpoint_is_safe(checkpoint: str | os.PathLike) -> None:
    """Refuse a checkpoint whose pickled states hold anything but plain data, before `accelerator.load_state`.

    The model weights are safetensors, and accelerate reads the optimizer and RNG states with `weights_only=True`,
    but it unpickles the states of `register_for_checkpointing` objects (`custom_checkpoint_*.pkl`) in full, which
    would run code planted in a tampered file. Reading them with `weights_only=True` first runs nothing.
    """
    for path in sorted(Path(checkpoint).glob("custom_checkpoint_*.pkl")):
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise ValueError(
                f"{path} holds pickled objects other than tensors and plain data, which only code from the file "
                f"could rebuild: not resuming from {checkpoint}, and nothing in it was run. Checkpoints written by "
                "run_mim.py never contain such objects; resume from one you wrote."
            ) from error


def save_checkpoint(accelerator: Accelerator, output_dir: str | os.PathLike, step: int, keep_last: int | None) -> Path:
    """Write `checkpoints/step_<step>` atomically, then drop the oldest beyond `keep_last`.

    Every rank must call this. If writing fails, the previous checkpoints are left untouched and the error is
    raised with a message that says so.
    """
    root = checkpoint_root(output_dir)
    final = root / f"step_{step}"
    temporary = root / f"{_TEMPORARY_PREFIX}step_{step}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(f"{_TEMPORARY_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(temporary), safe_serialization=True)
    except Exception as error:
        if accelerator.is_main_process:
            shutil.rmtree(temporary, ignore_errors=True)
        previous = list_checkpoints(output_dir)
        raise RuntimeError(
            f"Writing checkpoint {final} failed ({error}); the previous checkpoint "
            f"{previous[-1] if previous else '(none)'} is intact."
        ) from error
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(temporary, final)
        if keep_last is not None and keep_last > 0:
            for old in list_checkpoints(output_dir)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        logger.info(f"Saved checkpoint {final}")
    accelerator.wait_for_everyone()
    return final


def ensure_writable_directory(path: str | os.PathLike) -> Path:
    """Create `path` if needed and prove it is writable, before any training starts."""
    directory = Path(path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f"{_TEMPORARY_PREFIX}write-probe-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as error:
        raise PermissionError(
            f"--output_dir {str(directory)!r} is not writable ({error.strerror or error}). Choose a directory you "
            "can write to; nothing was trained."
        ) from error
    return directory
