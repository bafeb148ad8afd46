# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""The end of a run: the trained model is saved first, then evaluated, then its results and card are written, and
with `--push_to_hub` the finished folder is uploaded last (after the EMA model, if any).

Nothing after the save (the final evaluation, its pictures, the model card, the upload) can lose the trained model:
a failure there raises `FinalStepError`, whose message says what was saved and where.
"""

import json
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from transformers import PreTrainedModel

from .checkpointing import CHECKPOINTS_DIRNAME
from .output_folders import FINAL_PHASE_MARKER, set_aside_users_readme
from .records import write_json_atomically

logger = get_logger(__name__)

SECRET_FLAGS = ("--hub_token",)
REDACTED = "<HUB_TOKEN>"


class FinalStepError(RuntimeError):
    """A failure after training, raised once the trained model is saved; the message says what was saved."""

    user_error = True


def log_evaluation(step: int, eval_results: dict[str, float]) -> None:
    """Evaluation results on the console (main process), with or without a `--report_to` tracker."""
    if eval_results:
        metrics = ", ".join(f"{key} {value:.4f}" for key, value in sorted(eval_results.items()))
        logger.info(f"Evaluation at step {step}: {metrics}", main_process_only=True)


def begin_final_phase(accelerator: Accelerator, output_dir: Path, step: int) -> None:
    """Mark `output_dir` as being in its final phase (`FINAL_PHASE_MARKER`) until `end_final_phase`: a run killed in
    between (SIGTERM during the final evaluation, a pre-empted upload) leaves a final model next to the marker, and
    `--resume_from_checkpoint latest` then finishes the run instead of being refused as finished."""
    if accelerator.is_main_process:
        (output_dir / FINAL_PHASE_MARKER).write_text(
            f"The final phase of this run (save, evaluation, model card, upload) began after step {step} and did not "
            "finish. Run the same command with --resume_from_checkpoint latest to finish it.\n"
        )
    accelerator.wait_for_everyone()


def end_final_phase(accelerator: Accelerator, output_dir: Path) -> None:
    if accelerator.is_main_process:
        (output_dir / FINAL_PHASE_MARKER).unlink(missing_ok=True)


def save_then_evaluate(
    accelerator: Accelerator,
    model: torch.nn.Module,
    data,
    output_dir: Path,
    results: dict[str, Any],
    eval_results: dict[str, float],
    step: int,
    training_args: Any,
    card_kwargs: dict | None = None,
) -> dict[str, Any]:
    """The end of a run: save the trained model with its training results first, so that nothing after it (the
    final evaluation, its pictures, the model card, the upload) can lose it; then evaluate (unless the last periodic
    evaluation was at this step) and write the results and the card again."""
    save_final_model(accelerator, model, data.image_processor, output_dir, results, card_kwargs)
    if not eval_results or training_args.eval_steps is None or step % training_args.eval_steps:
        try:
            eval_results = data.evaluate(model, step=step)
        except Exception as error:
            raise FinalStepError(
                f"the final evaluation failed ({type(error).__name__}: {error}). The trained model, its image "
                f"processor and the training results (all_results.json) were saved to {output_dir} before it; "
                "evaluate that folder instead of training again."
            ) from error
        log_evaluation(step, eval_results)
    results = {**results, **eval_results}
    accelerator.log({key: value for key, value in results.items() if isinstance(value, (int, float))}, step=step)
    if accelerator.is_main_process:
        write_results_and_card(accelerator.unwrap_model(model), output_dir, results, card_kwargs)
    accelerator.wait_for_everyone()
    return results


def save_final_model(
    accelerator: Accelerator,
    model: torch.nn.Module,
    image_processor,
    output_dir: Path,
    results: dict,
    card_kwargs: dict | None = None,
) -> None:
    """`save_pretrained` (safetensors) + image processor + `all_results.json`, written into a temporary folder and
    moved in, so `output_dir` never holds a half-written model; then the model card. A failure while staging
    leaves the previous final model untouched; a failure of the card comes after the model is saved, and says so.
    `card_kwargs` go to `generate_model_card` (e.g. `eval_dataset`, `evaluation_protocol`)."""
    accelerator.wait_for_everyone()
    # Under FSDP / DeepSpeed each rank holds a shard: gathering the full weights is a collective every rank joins.
    # A compiled model's gathered weights would carry torch.compile's `_orig_mod.` prefix.
    state_dict = accelerator.get_state_dict(getattr(model, "_orig_mod", model)) if sharded(accelerator) else None
    if not accelerator.is_main_process:
        return
    unwrapped = _unwrapped(accelerator, model)
    # A model loaded from a `trust_remote_code` folder keeps that folder's `auto_map`; saved here without the code
    # files it names, the map would send users without the package to files that are not there.
    if getattr(unwrapped.config, "auto_map", None):
        del unwrapped.config.auto_map
    staging = output_dir / ".tmp-final"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        unwrapped.save_pretrained(staging, state_dict=state_dict, safe_serialization=True)
        image_processor.save_pretrained(staging)
        (staging / "all_results.json").write_text(json.dumps(results, indent=2, sort_keys=True))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # the previous final model, if any, stays untouched
        raise
    for item in staging.iterdir():
        os.replace(item, output_dir / item.name)
    staging.rmdir()
    logger.info(f"Saved the final model and all_results.json to {output_dir}")
    write_results_and_card(unwrapped, output_dir, results, card_kwargs)


def write_results_and_card(model: PreTrainedModel, output_dir: Path, results: dict, card_kwargs: dict | None) -> None:
    """Replace `all_results.json` and the model card (`README.md`) of a saved final model, each atomically."""
    model = getattr(model, "_orig_mod", model)
    write_json_atomically(output_dir / "all_results.json", results, sort_keys=True)
    command = " ".join(shlex.quote(part) for part in redacted_arguments(sys.argv)) if sys.argv and sys.argv[0] else None
    staging = output_dir / ".tmp-card"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        _write_model_card(staging, model, results, command, **(card_kwargs or {}))
        if (staging / "README.md").exists():
            set_aside_users_readme(output_dir)
            os.replace(staging / "README.md", output_dir / "README.md")
    except Exception as error:
        raise FinalStepError(
            f"writing the model card failed ({type(error).__name__}: {error}). The trained model, its image processor "
            f"and all_results.json are saved in {output_dir}; only README.md is missing or from the save before."
        ) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def redacted_arguments(argv: list[str]) -> list[str]:
    """`argv` with the value of every secret flag (`--hub_token X`, `--hub_token=X`) replaced by a placeholder, for
    the model card, which is uploaded and often public."""
    redacted, hide_next = [], False
    for part in argv:
        flag, separator, _ = part.partition("=")
        if hide_next:
            redacted.append(REDACTED)
        elif separator and flag in SECRET_FLAGS:
            redacted.append(f"{flag}={REDACTED}")
        else:
            redacted.append(part)
        hide_next = part in SECRET_FLAGS
    return redacted


def push_final_folder(model: PreTrainedModel, output_dir: Path, results: dict, training_args,
                      card_kwargs: dict | None = None) -> str:
    """Upload the finished `output_dir` (model, image processor, results, card, EMA model and pictures; not the
    training checkpoints) to `--hub_model_id` (default: the folder's name, in the user's namespace) in one commit.
    The card is rewritten first with the repository's full id, so that its usage snippets load what was pushed.
    Returns that id."""
    from ..hub.upload import resolve_hub_repo, upload_folder_to_hub

    repo_id = training_args.hub_model_id or output_dir.name
    try:
        repo_id = resolve_hub_repo(repo_id, token=training_args.hub_token)
        card = {**(card_kwargs or {}), "repo_id": repo_id, "model_name": repo_id.rsplit("/", 1)[-1]}
        write_results_and_card(model, output_dir, results, card)
        upload_folder_to_hub(output_dir, repo_id, token=training_args.hub_token, commit_message="End of training")
    except Exception as error:
        raise FinalStepError(
            f"uploading to the Hub repository {repo_id} failed ({type(error).__name__}: {error}). Everything is saved "
            f"in {output_dir}; upload it later with `hf upload {repo_id} {output_dir} --exclude "
            f"'{CHECKPOINTS_DIRNAME}/*'`."
        ) from error
    logger.info(f"Uploaded {output_dir} to the Hub repository {repo_id}")
    return repo_id


def sharded(accelerator: Accelerator) -> bool:
    """Whether the prepared model's parameters are split across ranks (FSDP, DeepSpeed)."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def _unwrapped(accelerator: Accelerator, model: torch.nn.Module) -> PreTrainedModel:
    unwrapped = accelerator.unwrap_model(model)
    return getattr(unwrapped, "_orig_mod", unwrapped)


def _write_model_card(directory: Path, model, results, command, **card_kwargs) -> None:
    from ..hub.model_card import generate_model_card

    card = generate_model_card(model, results=results, training_command=command, **card_kwargs)
    card.save(str(directory / "README.md"))


