# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Atomic, rotated `accelerate` checkpoints.

A checkpoint is written by `accelerator.save_state` into a hidden temporary folder and renamed to
`checkpoints/step_<N>` only once every rank has finished writing, so a folder named `step_<N>` is always
complete: a job killed mid-write leaves a `.tmp-*` folder that is never picked as `latest` and is removed
by the next save. Only the newest `keep_last` checkpoints are kept.

Each checkpoint also holds `run_state.json`: the size of every file it was written with (so a file damaged
later, e.g. truncated by a full disk or a partial copy, is found before loading, and `latest` falls back to
the previous intact checkpoint) and the run's recipe (model, batch size, learning rate, schedule), so that a
resume cannot silently continue another recipe.
"""

import json
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger

from ..listing import first_few

logger = get_logger(__name__)

CHECKPOINTS_DIRNAME = "checkpoints"
SUPERSEDED_DIRNAME = "superseded"  # inside the checkpoints folder: those of an abandoned run
RUN_STATE_NAME = "run_state.json"
_STEP_PATTERN = re.compile(r"^step_(\d+)$")
# The settings that choose which parameters a run trains: a resume must use those of the checkpoint's run.
TRAINED_PARAMETER_SETTINGS = "--mode, --freeze_position_embeddings or --config_overrides"
_TEMPORARY_PREFIX = ".tmp-"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from: damaged, tampered with, or of another recipe."""


def checkpoint_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIRNAME


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), path) for path in root.iterdir() if (m := _STEP_PATTERN.match(path.name))]
    return [path for _, path in sorted(found)]


def set_aside_newer_checkpoints(output_dir: str | os.PathLike, checkpoint: Path) -> list[Path]:
    """Resuming `checkpoint` abandons the checkpoints of `output_dir` written after it: they move to
    `checkpoints/superseded/` (kept, not deleted), so that rotation keeps the resumed run's own checkpoints and
    `latest` cannot return to the abandoned run. Returns their new paths (none for a checkpoint of another folder)."""
    root = checkpoint_root(output_dir)
    resumed = _STEP_PATTERN.match(Path(checkpoint).name)
    if resumed is None or not root.is_dir() or Path(checkpoint).resolve().parent != root.resolve():
        return []
    newer = [path for path in list_checkpoints(output_dir)
             if int(_STEP_PATTERN.match(path.name).group(1)) > int(resumed.group(1))]
    moved = []
    for path in newer:
        target = root / SUPERSEDED_DIRNAME / path.name
        suffix = 1
        while target.exists():  # set aside by an earlier resume too
            target, suffix = root / SUPERSEDED_DIRNAME / f"{path.name}.{suffix}", suffix + 1
        target.parent.mkdir(exist_ok=True)
        os.replace(path, target)
        moved.append(target)
    return moved


def resolve_checkpoint(resume_from_checkpoint: str | None, output_dir: str | os.PathLike) -> Path | None:
    """`None` -> no resume; `"latest"` -> newest intact checkpoint in `output_dir` (or None if there is
    none yet, so a restarted job can always pass `latest`; a damaged newer one is skipped with a warning that
    names the damaged file); a path -> that checkpoint, which must exist and be intact."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        damages = []
        for checkpoint in reversed(checkpoints):
            damage = checkpoint_damage(checkpoint)
            if damage is None:
                return checkpoint
            damages.append(damage)
            logger.warning(
                f"Not resuming from {checkpoint}: {damage}. Trying the previous checkpoint.", main_process_only=True
            )
        if damages:
            raise CheckpointError(
                f"no checkpoint in {checkpoint_root(output_dir)} is intact ({'; '.join(damages)}). Pass "
                "--overwrite_output_dir to start the run over."
            )
        return None
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        raise FileNotFoundError(
            f"--resume_from_checkpoint {resume_from_checkpoint!r} is not a checkpoint folder. Pass a folder written "
            f"by a previous run (e.g. {checkpoint_root(output_dir) / 'step_100'}) or 'latest'."
        )
    if path.name.startswith(_TEMPORARY_PREFIX):
        raise ValueError(f"{path} is an incomplete checkpoint (its write was interrupted); resume from another one.")
    damage = checkpoint_damage(path)
    if damage is not None:
        raise CheckpointError(f"cannot resume from {path}: {damage}. Resume from another checkpoint (or 'latest').")
    return path


def checkpoint_damage(checkpoint: Path) -> str | None:
    """What is wrong with the files of `checkpoint` against the sizes it was written with, or None when intact
    (also for checkpoints written before `run_state.json` existed, which carry no sizes)."""
    state, damage = _read_run_state(checkpoint)
    if damage is not None or state is None:
        return damage
    for name, size in sorted(state.get("files", {}).items()):
        path = checkpoint / name
        if not path.is_file():
            return f"{path} is missing"
        actual = path.stat().st_size
        if actual != size:
            return f"{path} has {actual} bytes but was written with {size} (truncated or damaged)"
    return None


def read_run_state(checkpoint: Path) -> dict[str, Any] | None:
    state, damage = _read_run_state(checkpoint)
    if damage is not None:
        raise CheckpointError(f"{damage}; resume from another checkpoint.")
    return state


def _read_run_state(checkpoint: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(the checkpoint's run state or None when it has none, what is wrong with it or None)."""
    path = Path(checkpoint) / RUN_STATE_NAME
    if not path.is_file():
        return None, None
    try:
        return json.loads(path.read_text()), None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return None, f"{path} is damaged ({error})"


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
            raise CheckpointError(
                f"{path} holds pickled objects other than tensors and plain data, which only code from the file "
                f"could rebuild: not resuming from {checkpoint}, and nothing in it was run. Checkpoints written by "
                "run_mim.py never contain such objects; resume from one you wrote."
            ) from error
    # accelerate reads the random states with the same safe loader but, when that fails, only logs it and goes
    # on with other random numbers: the resumed run would silently differ from an uninterrupted one.
    from accelerate.utils import load as accelerate_load

    for path in sorted(Path(checkpoint).glob("random_states_*.pkl")):
        try:
            accelerate_load(path)
        except Exception as error:  # noqa: BLE001 - any failure means the states cannot be restored
            raise CheckpointError(
                f"{path} cannot be read as plain random-number states ({type(error).__name__}); it is damaged or "
                f"holds other objects, and nothing in it was run. Not resuming from {checkpoint}, since the run "
                "would continue with different random numbers; resume from another checkpoint."
            ) from error


# Recipe entries (None = off) whose switching on or off changes what a checkpoint holds, with their flags: a run with
# an EMA checkpoints the average, one without does not, so neither resumes the other.
STATE_SHAPING_ARGUMENTS = {"model_ema_decay": "--model_ema"}


def check_resume_recipe(
    checkpoint: Path, recipe: dict[str, Any], allow_change: bool, defaults: dict[str, Any] | None = None
) -> bool:
    """Refuse to resume `checkpoint` with another recipe: another model, or another set of trained parameters
    (the optimizer's state fits only those), always; another batch size, learning rate, schedule or seed unless
    `allow_change` (then a warning lists what changed). An entry that is None on one side and its value in
    `defaults` on the other is unchanged. Returns whether it changed."""
    state = read_run_state(checkpoint)
    saved = (state or {}).get("recipe")
    if not saved:
        return False

    def resolved(key: str, value: Any) -> Any:
        return (defaults or {}).get(key) if value is None else value

    changed = {
        key: (saved.get(key), value) for key, value in recipe.items()
        if key in saved and resolved(key, saved[key]) != resolved(key, value)
    }
    if not changed:
        return False
    listed = "; ".join(_describe_change(key, before, after) for key, (before, after) in changed.items())
    if "parameter_shapes" in changed or "model_type" in changed:
        if "model_type" in changed:
            difference = f"model_type {saved['model_type']!r} in the checkpoint, {recipe['model_type']!r} now"
        else:
            difference = _dict_changes(saved["parameter_shapes"], recipe["parameter_shapes"])
        raise CheckpointError(
            f"{checkpoint} holds a different model ({difference}); a checkpoint only resumes the model it was written "
            "for. Use the same --model_type, --model_name_or_path and --config_overrides, or start a new run in "
            "another --output_dir."
        )
    if "frozen_parameters" in changed:
        before, after = set(saved["frozen_parameters"]), set(recipe["frozen_parameters"])
        raise CheckpointError(
            f"{checkpoint} trained other parameters than this run (frozen there, trained now: "
            f"{first_few(sorted(before - after)) or 'none'}; trained there, frozen now: "
            f"{first_few(sorted(after - before)) or 'none'}), and its optimizer state only fits the same ones, even "
            "with --allow_recipe_change. Resume with the settings that chose them in the checkpoint's run (such as "
            f"{TRAINED_PARAMETER_SETTINGS}), or start a new run in another --output_dir."
        )
    for key, flag in STATE_SHAPING_ARGUMENTS.items():
        had = saved.get(key) is not None
        if key in changed and had != (recipe[key] is not None):
            raise CheckpointError(
                f"{checkpoint} was written {'with' if had else 'without'} {flag}, and this run is "
                f"{'without' if had else 'with'} it: the checkpoint holds {'a' if had else 'no'} state for it, so it "
                "cannot resume this run, even with --allow_recipe_change. Resume with the checkpoint's setting, or "
                "start a new run in another --output_dir."
            )
    if not allow_change:
        raise CheckpointError(
            f"resuming {checkpoint} would change the recipe ({listed}). Resume with the same values, or pass "
            "--allow_recipe_change to continue with the new ones."
        )
    logger.warning(f"Resuming {checkpoint} with a changed recipe: {listed}.", main_process_only=True)
    return True


def _describe_change(key: str, before: Any, after: Any) -> str:
    if isinstance(before, dict) and isinstance(after, dict):
        return f"{key}: {_dict_changes(before, after)}"
    return f"{key}: {before!r} in the checkpoint, {after!r} now"


def _dict_changes(before: dict, after: dict) -> str:
    keys = [key for key in sorted(set(before) | set(after)) if before.get(key) != after.get(key)]
    return first_few([f"{key}: {before.get(key)!r} -> {after.get(key)!r}" for key in keys])


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str | os.PathLike,
    step: int,
    keep_last: int | None,
    recipe: dict[str, Any] | None = None,
) -> Path:
    """Write `checkpoints/step_<step>` atomically (with `run_state.json`: file sizes and `recipe`), then drop the
    oldest beyond `keep_last`.

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
        files = {
            str(path.relative_to(temporary)): path.stat().st_size for path in sorted(temporary.rglob("*")) if path.is_file()
        }
        (temporary / RUN_STATE_NAME).write_text(json.dumps({"step": step, "recipe": recipe, "files": files}, indent=1))
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
