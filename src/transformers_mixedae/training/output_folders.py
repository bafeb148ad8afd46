# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Output folders of training runs, conversions and exports: never mix a new result with an old one.

A folder that already holds a finished result (weights, `config.json`, `all_results.json`) is refused unless the
caller passes `--overwrite_output_dir`; one that holds the checkpoints of an unfinished run is refused unless the
run resumes (`--resume_from_checkpoint latest`) or starts over (`--overwrite_output_dir`). Overwriting removes only
the files a run, conversion or export writes (`RUN_ARTIFACTS`), all of them, so that no stale model card, train log
or picture is left next to new weights; any other file in the folder is kept and never blocks.

* `prepare_output_dir`: for training runs, which write into the folder as they go.
* `staged_output_dir`: for the converter and the exporter, which build their whole result in a hidden sibling folder
  and move it in at the end, so a failure leaves the previous content untouched.
* `check_model_path`: a model argument that looks like a local path must exist, instead of falling through to a
  Hub download and its connection errors.
"""

import fnmatch
import glob
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers.utils import logging

from ..listing import first_few
from .checkpointing import CHECKPOINTS_DIRNAME, ensure_writable_directory, list_checkpoints
from .records import SKIPPED_SAMPLES_NAME, TRAIN_LOG_NAME

logger = logging.get_logger(__name__)

# A finished result: `save_pretrained` weights (single file, shards and their index; safetensors or pickled), its
# config, and the metrics a run writes last. Patterns are matched against the names of the folder's entries.
FINISHED_RESULT_ARTIFACTS = (
    "model.safetensors",
    "model-*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model-*.bin",
    "pytorch_model.bin.index.json",
    "config.json",
    "all_results.json",
)
# What a run writes as it goes; a new run next to them would leave a mix of two runs.
RUN_RECORD_ARTIFACTS = (
    "preprocessor_config.json",
    "generation_config.json",
    TRAIN_LOG_NAME,
    SKIPPED_SAMPLES_NAME.replace(".json", "*.json"),  # skipped_samples.json and skipped_samples_rank<N>.json
    "visualizations",
    "run_mim",  # the tensorboard trackers' folders (`init_trackers(<task's project>)` with `project_dir=output_dir`)
    "run_image_classification",
    "run_semantic_segmentation",
    "ema",  # the averaged model of a run with --model_ema
)
# Also ours, but not proof of an earlier result: a README.md may be the user's own (`is_users_readme`: kept by an
# overwrite, set aside before a model card takes its place), `.tmp-*` are the leftovers of an interrupted write (never
# read), and a `checkpoints/` folder without `step_*` holds no checkpoint.
# Present while a run's final phase (final save, evaluation, card, EMA, upload) runs: a folder that still holds it after
# the run has its final model, but its run did not finish, and `--resume_from_checkpoint latest` completes it.
FINAL_PHASE_MARKER = ".final_phase_unfinished"
AMBIGUOUS_ARTIFACTS = ("README.md", ".tmp-*", CHECKPOINTS_DIRNAME, FINAL_PHASE_MARKER)

RUN_ARTIFACTS: tuple[str, ...] = FINISHED_RESULT_ARTIFACTS + RUN_RECORD_ARTIFACTS + AMBIGUOUS_ARTIFACTS
"""Names (glob patterns) of what a finished run, conversion or export leaves in its output folder."""

OVERWRITE_FLAG = "--overwrite_output_dir"


class OutputDirectoryError(ValueError):
    """The output folder holds an earlier result or run; the message says which files and how to proceed."""


# ---------------------------------------------------------------------------------------------- inspecting
def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def find_run_artifacts(output_dir: str | os.PathLike) -> list[Path]:
    """The entries of `output_dir` that are `RUN_ARTIFACTS`, sorted by name (empty if the folder does not exist)."""
    directory = Path(output_dir)
    if not directory.is_dir():
        return []
    return sorted((entry for entry in directory.iterdir() if _matches(entry.name, RUN_ARTIFACTS)), key=_name)


def _finished_results(artifacts: Iterable[Path]) -> list[Path]:
    return [path for path in artifacts if _matches(path.name, FINISHED_RESULT_ARTIFACTS)]


def final_phase_unfinished(output_dir: str | os.PathLike) -> bool:
    """Whether a run in `output_dir` began its final phase and was stopped before the end (`FINAL_PHASE_MARKER`)."""
    return (Path(output_dir) / FINAL_PHASE_MARKER).exists()


def is_resumable(output_dir: str | os.PathLike) -> bool:
    """Whether `output_dir` holds an unfinished run that `--resume_from_checkpoint latest` continues: a checkpoint
    and no finished result (a finished run has nothing left to resume), or a final phase that did not finish."""
    if not list_checkpoints(output_dir):
        return False
    return final_phase_unfinished(output_dir) or not _finished_results(find_run_artifacts(output_dir))


def is_users_readme(path: str | os.PathLike) -> bool:
    """Whether `path` is a `README.md` that this package did not write: its metadata lacks the tag every model card
    of ours carries (or cannot be read)."""
    from huggingface_hub import ModelCard

    from ..hub.model_card import PACKAGE_TAG

    path = Path(path)
    if path.name != "README.md" or not path.is_file():
        return False
    try:
        tags = ModelCard.load(path).data.tags or []
    except Exception:  # noqa: BLE001 - unreadable metadata is not a card of ours
        return True
    return PACKAGE_TAG not in tags


def set_aside_users_readme(output_dir: str | os.PathLike) -> Path | None:
    """Before a model card is written as `output_dir/README.md`: move a user's own README.md (`is_users_readme`) to
    `README.previous.md` (or `README.previous-2.md`, ...), so that nothing of theirs is lost. Returns where it went."""
    readme = Path(output_dir) / "README.md"
    if not is_users_readme(readme):
        return None
    target, number = readme.with_name("README.previous.md"), 1
    while target.exists():
        number += 1
        target = readme.with_name(f"README.previous-{number}.md")
    os.replace(readme, target)
    logger.warning("%s is not a model card written by this package: moved to %s, and the model card takes its place.",
                   readme, target.name)
    return target


def _name(path: Path) -> str:
    return path.name + ("/" if path.is_dir() and not path.is_symlink() else "")


def _listing(paths: Iterable[Path]) -> str:
    return first_few([_name(path) for path in paths])


def check_output_dir(
    output_dir: str | os.PathLike,
    *,
    overwrite: bool,
    resuming: bool = False,
    what: str = "run",
    flag: str = OVERWRITE_FLAG,
) -> list[Path]:
    """Refuse an output folder that a new `what` would mix with an earlier result; change nothing.

    Returns the artifacts that `overwrite` would remove (empty without `overwrite`). See `prepare_output_dir`.

    Raises:
        OutputDirectoryError: the folder is a file, holds a finished result (without `overwrite`), holds the
            checkpoints or records of an unfinished run (without `resuming` or `overwrite`), holds a finished
            result while `resuming`, or both `overwrite` and `resuming` are asked for.
    """
    directory = Path(output_dir)
    if directory.exists() and not directory.is_dir():
        raise OutputDirectoryError(
            f"the output folder {str(directory)!r} is a file: not starting the {what}. Choose a folder (a new one is "
            "created)."
        )
    if overwrite and resuming:
        # A restarted job whose command keeps both flags would otherwise delete the checkpoints it should resume.
        raise OutputDirectoryError(
            f"{flag} and --resume_from_checkpoint contradict each other: resuming continues the run in "
            f"{str(directory)!r}, {flag} deletes its checkpoints and results. Pass only one of them."
        )
    artifacts = find_run_artifacts(directory)
    if not artifacts:
        return []
    if overwrite:
        return [path for path in artifacts if not is_users_readme(path)]
    finished = _finished_results(artifacts)
    stopped_in_final_phase = final_phase_unfinished(directory)
    # The final model is there, the run's end is not: resuming from its last checkpoint finishes it.
    finishable = stopped_in_final_phase and bool(list_checkpoints(directory))
    if finished and resuming and finishable:
        return []
    if finished and resuming and stopped_in_final_phase:
        raise OutputDirectoryError(
            f"{str(directory)!r} holds the final model of a run stopped during its final save or evaluation, and no "
            f"checkpoint to finish it from; nothing was changed. Evaluate that model, or pass {flag} (without "
            "--resume_from_checkpoint) to train again from the start."
        )
    if finished and resuming:
        raise OutputDirectoryError(
            f"{str(directory)!r} holds a finished result ({_listing(finished)}): the run already finished, there "
            f"is nothing to resume, and nothing was changed. Pass {flag} (without --resume_from_checkpoint) to "
            "train again from the start, or choose another output folder."
        )
    if finished:
        unfinished = (" Its run was stopped during its final save or evaluation: pass --resume_from_checkpoint latest "
                      "to finish it.") if finishable else ""
        raise OutputDirectoryError(
            f"{str(directory)!r} already holds a finished result ({_listing(artifacts)}): not starting the {what}, "
            f"and nothing was changed. Pass {flag} to replace it, or choose another output folder.{unfinished}"
        )
    if resuming:
        return []
    checkpoints = list_checkpoints(directory)
    if checkpoints:
        raise OutputDirectoryError(
            f"{str(directory)!r} holds checkpoints of an unfinished run (latest: "
            f"{CHECKPOINTS_DIRNAME}/{checkpoints[-1].name}): not starting the {what}, and nothing was changed. Pass "
            f"--resume_from_checkpoint latest to continue it, {flag} to start over (this deletes them), or choose "
            "another output folder."
        )
    records = [path for path in artifacts if _matches(path.name, RUN_RECORD_ARTIFACTS)]
    if records:
        raise OutputDirectoryError(
            f"{str(directory)!r} holds files of an earlier run that did not finish ({_listing(records)}): not "
            f"starting the {what}, and nothing was changed. Pass {flag} to replace them, or choose another output "
            "folder."
        )
    return []


# ---------------------------------------------------------------------------------------------- changing
def check_overwrite_keeps(output_dir: str | os.PathLike, source: str | os.PathLike, *, what: str = "model",
                          flag: str = OVERWRITE_FLAG) -> None:
    """Refuse `flag` when it would remove `source` (a local folder the run reads, e.g. its --model_name_or_path):
    `source` is `output_dir` itself or lies inside one of its artifacts (`ema/`, `checkpoints/`, ...).

    Raises:
        OutputDirectoryError: naming both folders; nothing was removed.
    """
    source_path = Path(source).expanduser()
    if not source_path.exists():
        return  # a Hub id
    source_path = source_path.resolve()
    directory = Path(output_dir).expanduser().resolve()
    # The folder's own files go; a subfolder that is not an artifact stays.
    removed = [path for path in find_run_artifacts(directory) if source_path == path.resolve()
               or path.resolve() in source_path.parents]
    if source_path == directory or removed:
        where = f"is inside {_name(removed[0])} of the output folder" if removed else "is the output folder"
        raise OutputDirectoryError(
            f"{flag} would delete the {what} this run reads: {str(source)!r} {where} {str(output_dir)!r}, whose "
            f"earlier result {flag} removes before the {what} is loaded. Nothing was changed. Choose another output "
            "folder (or copy the model elsewhere first)."
        )


def remove_run_artifacts(
    output_dir: str | os.PathLike, artifacts: Iterable[Path], *, flag: str = OVERWRITE_FLAG
) -> None:
    """Delete `artifacts` (entries of `output_dir`), logging at WARNING what was removed and why."""
    artifacts = list(artifacts)
    if not artifacts:
        return
    logger.warning(
        "%s: removing the previous result from %s (%s); other files in the folder are kept.",
        flag,
        output_dir,
        _listing(artifacts),
    )
    for path in artifacts:
        # A symlinked artifact: remove the link, never what it points to.
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def prepare_output_dir(
    output_dir: str | os.PathLike,
    *,
    overwrite: bool,
    resuming: bool = False,
    what: str = "run",
    flag: str = OVERWRITE_FLAG,
) -> Path:
    """Make `output_dir` ready for a new `what` (a "run" by default) and return it as a `Path`.

    Creates the folder if missing and proves it is writable. If it holds a finished result (weights, `config.json`
    or `all_results.json`) the call is refused unless `overwrite`, and refused when `resuming` (the run already
    finished). If it holds checkpoints (`checkpoints/step_*`) or records of an unfinished run, it is refused unless
    `resuming` or `overwrite`. With `overwrite`, every `RUN_ARTIFACTS` entry found is removed (logged at WARNING), and
    nothing else. Files that are not artifacts are kept and never block. `flag` is the option named in messages.
    In a distributed run, call it on the main process only, before the other processes use the folder.

    Raises:
        OutputDirectoryError: see `check_output_dir`; nothing was created or removed.
        PermissionError: the folder cannot be created or written.
    """
    artifacts = check_output_dir(output_dir, overwrite=overwrite, resuming=resuming, what=what, flag=flag)
    directory = ensure_writable_directory(output_dir)
    remove_run_artifacts(directory, artifacts, flag=flag)
    return directory


@contextmanager
def staged_output_dir(
    output_dir: str | os.PathLike, *, overwrite: bool, what: str, flag: str = OVERWRITE_FLAG
) -> Iterator[Path]:
    """Write a whole result into a hidden sibling folder (yielded), then move it into `output_dir`.

    The folder is checked on entry (as `prepare_output_dir` does, so a refusal comes before any work). When the
    block succeeds, the previous artifacts are removed (with `overwrite`) and the staged entries moved in; when it
    raises, the staging folder is deleted and `output_dir` is exactly as it was (not even created).
    """
    output_dir = Path(output_dir).expanduser()
    check_output_dir(output_dir, overwrite=overwrite, what=what, flag=flag)
    parent = output_dir.absolute().parent
    leftovers = sorted(parent.glob(f".tmp-{glob.escape(output_dir.name)}-*")) if parent.is_dir() else []
    if leftovers:
        # Not removed: one may belong to a write still running (another process, or another machine on a shared disk).
        logger.warning(
            "%s: %d staging folder(s) of an earlier %s into %s that did not finish (%s); delete them if no other "
            "write is running.", parent, len(leftovers), what, output_dir.name, _listing(leftovers),
        )
    try:
        parent.mkdir(parents=True, exist_ok=True)
        # Not `tempfile.mkdtemp`: its 0700 mode would move in with the folder; `mkdir` follows the umask.
        staging = parent / f".tmp-{output_dir.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
    except OSError as error:
        raise PermissionError(
            f"cannot write next to the output folder {str(output_dir)!r} ({error.strerror or error}): not starting "
            f"the {what}. Choose a folder you can write to."
        ) from error
    try:
        yield staging
        # Checked again: another process may have written into the folder while the result was being built.
        artifacts = check_output_dir(output_dir, overwrite=overwrite, what=what, flag=flag)
        if not output_dir.exists():
            os.replace(staging, output_dir)  # one rename: the folder appears complete or not at all
            return
        remove_run_artifacts(output_dir, artifacts, flag=flag)
        for entry in staging.iterdir():
            target = output_dir / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- model paths
def _looks_local(name_or_path: str) -> bool:
    if name_or_path.startswith(("/", "./", "../", "~")) or name_or_path in (".", ".."):
        return True
    if os.sep != "/" and os.sep in name_or_path:
        return True
    if name_or_path.count("/") > 1:
        return True
    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        return True
    return False


def check_model_path(name_or_path: str | os.PathLike, flag: str, *, allow_file: bool = False) -> str:
    """Refuse a model argument that names a local path which does not exist (or is a file, unless `allow_file`);
    return what to load: an existing local path with `~` expanded (`from_pretrained` does not expand it), else the
    argument unchanged.

    A string is taken as a local path if it exists, starts with `/`, `./`, `../` or `~`, has more than one `/`
    (or an OS path separator), or is not a valid Hub repo id; anything else (`owner/name`, `name`) is a Hub id and
    passes untouched, to be resolved by `from_pretrained`.

    Raises:
        FileNotFoundError: a local path that does not exist; the message names `flag`, the path and the fix.
        NotADirectoryError: an existing file where a folder is needed.
    """
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        if path.is_dir() or allow_file:
            return str(path)
        raise NotADirectoryError(
            f"{flag} {text!r} is a file; give the folder that holds the model (its config.json and weights, as "
            "written by save_pretrained), or a Hub id like owner/name."
        )
    if _looks_local(text):
        raise FileNotFoundError(
            f"{flag} {text!r} is a local {'path' if allow_file else 'folder'} that does not exist; check the path, "
            "or give a Hub id like owner/name."
        )
    return text


__all__ = [
    "RUN_ARTIFACTS",
    "OutputDirectoryError",
    "check_model_path",
    "check_output_dir",
    "find_run_artifacts",
    "prepare_output_dir",
    "remove_run_artifacts",
    "staged_output_dir",
]
