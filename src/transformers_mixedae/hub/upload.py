# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Uploading a finished folder to the Hub under the repository's full id, in one commit."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..training.checkpointing import CHECKPOINTS_DIRNAME
from ..training.output_folders import FINAL_PHASE_MARKER

# Never uploaded from a model folder: a run's training checkpoints (optimizer states, RNG), interrupted writes and the
# marker of an unfinished final phase.
NOT_UPLOADED = (f"{CHECKPOINTS_DIRNAME}/*", ".tmp-*", "*/.tmp-*", FINAL_PHASE_MARKER)


def resolve_hub_repo(repo_id: str, *, token: str | None = None, private: bool | None = None) -> str:
    """Create `repo_id` if needed (`private` applies only then) and return its full id (`"user/name"` for a bare
    `"name"`): what `from_pretrained` must be given, and what every upload must name, since a bare name names no
    repository of the user's."""
    from huggingface_hub import HfApi

    return HfApi(token=token).create_repo(repo_id, private=private, exist_ok=True).repo_id


def upload_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload model",
    ignore_patterns: Sequence[str] = NOT_UPLOADED,
) -> str:
    """Upload `folder` to `repo_id` (created if needed, see `resolve_hub_repo`) in one commit, on branch `revision`
    when given (created from the default branch if needed), leaving out files matching `ignore_patterns` (by default
    `NOT_UPLOADED`). Returns the full repository id."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo_id = resolve_hub_repo(repo_id, token=token, private=private)
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(Path(folder)), commit_message=commit_message,
                      revision=revision, ignore_patterns=list(ignore_patterns) or None)
    return repo_id
