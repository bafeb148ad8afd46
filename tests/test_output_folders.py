"""Output folders: a new run, conversion or export never mixes with an earlier result, and never deletes user files."""

import hashlib
import json
import logging
import os
import re
import shutil
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

from transformers_mixedae.training.checkpointing import CHECKPOINTS_DIRNAME
from transformers_mixedae.training.output_folders import (
    RUN_ARTIFACTS,
    OutputDirectoryError,
    check_model_path,
    check_overwrite_keeps,
    find_run_artifacts,
    is_resumable,
    is_users_readme,
    prepare_output_dir,
    set_aside_users_readme,
    staged_output_dir,
)
from transformers_mixedae.training.records import SKIPPED_SAMPLES_NAME, TRAIN_LOG_NAME

# What `pretraining.save_final_model` and a run leave (weights shards included), plus the user's own files.
FINISHED_RUN_FILES = {
    "model-00001-of-00002.safetensors": b"weights 1",
    "model-00002-of-00002.safetensors": b"weights 2",
    "model.safetensors.index.json": b"{}",
    "config.json": b'{"model_type": "mixedae"}',
    "preprocessor_config.json": b"{}",
    "README.md": b"---\nlicense: apache-2.0\ntags:\n- transformers_mixedae\n---\n# old card\n",  # ours
    "all_results.json": b'{"eval_loss": 0.5}',
    TRAIN_LOG_NAME: b'{"step": 1, "loss": 1.0, "learning_rate": 0.1}\n',
    "skipped_samples_rank1.json": b"[]",
    "visualizations/step_2_reconstruction.png": b"png",
    "checkpoints/step_2/model.safetensors": b"checkpoint",
    "run_mim/events.out.tfevents.1": b"events",
    ".tmp-final/config.json": b"{}",
}
USER_FILES = {"notes.txt": b"my notes", "data/train.csv": b"a,b\n", "config.yaml": b"lr: 1"}


def write_files(folder: Path, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    return folder


def fingerprint(folder: Path) -> dict[str, str]:
    """Every file and folder under `folder` (relative path -> content hash, "dir" for folders); {} if missing."""
    if not folder.exists():
        return {}
    return {
        str(path.relative_to(folder)): "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
    }


def finished_run(folder: Path) -> Path:
    """A folder as a finished pre-training run leaves it, next to files of the user's."""
    return write_files(folder, FINISHED_RUN_FILES | USER_FILES)


def unfinished_run(folder: Path) -> Path:
    """A run killed after its second checkpoint: records and checkpoints, no final model."""
    return write_files(
        folder,
        {
            TRAIN_LOG_NAME: b"{}\n",
            "checkpoints/step_2/model.safetensors": b"2",
            "checkpoints/step_4/model.safetensors": b"4",
            "checkpoints/.tmp-step_6/model.safetensors": b"6",
            "visualizations/step_2_reconstruction.png": b"png",
        }
        | USER_FILES,
    )


# ---------------------------------------------------------------------------------------------- the artifact list
def test_run_artifacts_cover_what_runs_conversions_and_exports_write():
    written = [
        "model.safetensors",
        "model-00001-of-00003.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",  # a pickled model written by an older transformers
        "pytorch_model-00001-of-00002.bin",
        "pytorch_model.bin.index.json",
        "config.json",
        "generation_config.json",
        "preprocessor_config.json",
        "README.md",
        "all_results.json",
        TRAIN_LOG_NAME,
        SKIPPED_SAMPLES_NAME,
        "skipped_samples_rank3.json",
        "visualizations",
        CHECKPOINTS_DIRNAME,
        "run_mim",
        ".tmp-final",
    ]
    assert [name for name in written if not any(fnmatchcase(name, pattern) for pattern in RUN_ARTIFACTS)] == []
    for user_name in ("notes.txt", "data", "config.yaml", "model.safetensors.bak", "train.py", "results.json"):
        assert not any(fnmatchcase(user_name, pattern) for pattern in RUN_ARTIFACTS), user_name


def test_find_run_artifacts_lists_only_artifacts(tmp_path):
    finished_run(tmp_path)
    found = {path.name for path in find_run_artifacts(tmp_path)}
    assert found == {name.split("/")[0] for name in FINISHED_RUN_FILES}
    assert find_run_artifacts(tmp_path / "missing") == []


# ---------------------------------------------------------------------------------------------- refusals
def test_a_finished_result_is_refused_and_left_untouched(tmp_path):
    finished_run(tmp_path)
    before = fingerprint(tmp_path)
    expected = (
        f"'{tmp_path}' already holds a finished result (.tmp-final/, README.md, all_results.json, checkpoints/, "
        "config.json, model-00001-of-00002.safetensors, model-00002-of-00002.safetensors, "
        "model.safetensors.index.json, and 5 more): not starting the run, and nothing was changed. Pass "
        "--overwrite_output_dir to replace it, or choose another output folder."
    )
    with pytest.raises(OutputDirectoryError, match=f"^{re.escape(expected)}$"):
        prepare_output_dir(tmp_path, overwrite=False)
    assert fingerprint(tmp_path) == before


@pytest.mark.parametrize("marker", ["model.safetensors", "config.json", "all_results.json", "pytorch_model.bin"])
def test_each_finished_marker_alone_is_refused(tmp_path, marker):
    write_files(tmp_path, {marker: b"x"})
    with pytest.raises(OutputDirectoryError, match=rf"already holds a finished result \({re.escape(marker)}\)"):
        prepare_output_dir(tmp_path, overwrite=False, what="conversion", flag="--force")
    with pytest.raises(OutputDirectoryError, match="not starting the conversion.*Pass --force to replace it"):
        prepare_output_dir(tmp_path, overwrite=False, what="conversion", flag="--force")


def test_checkpoints_of_an_unfinished_run_are_refused_unless_resuming(tmp_path):
    unfinished_run(tmp_path)
    before = fingerprint(tmp_path)
    expected = (
        f"'{tmp_path}' holds checkpoints of an unfinished run (latest: checkpoints/step_4): not starting the run, and "
        "nothing was changed. Pass --resume_from_checkpoint latest to continue it, --overwrite_output_dir to start "
        "over (this deletes them), or choose another output folder."
    )
    with pytest.raises(OutputDirectoryError, match=f"^{re.escape(expected)}$"):
        prepare_output_dir(tmp_path, overwrite=False)
    assert fingerprint(tmp_path) == before

    assert prepare_output_dir(tmp_path, overwrite=False, resuming=True) == tmp_path
    assert fingerprint(tmp_path) == before


def test_records_of_a_run_without_checkpoints_are_refused_unless_resuming(tmp_path):
    write_files(tmp_path, {TRAIN_LOG_NAME: b"{}\n", "visualizations/step_2.png": b"png", "notes.txt": b"n"})
    before = fingerprint(tmp_path)
    with pytest.raises(
        OutputDirectoryError,
        match=re.escape(f"'{tmp_path}' holds files of an earlier run that did not finish (train_log.jsonl, "
                        "visualizations/): not starting the run, and nothing was changed. Pass --overwrite_output_dir"),
    ):
        prepare_output_dir(tmp_path, overwrite=False)
    # A restarted job passes --resume_from_checkpoint latest before its first checkpoint exists.
    prepare_output_dir(tmp_path, overwrite=False, resuming=True)
    assert fingerprint(tmp_path) == before


def test_only_a_folder_with_a_checkpoint_and_no_finished_result_is_resumable(tmp_path):
    assert not is_resumable(tmp_path / "missing")
    write_files(tmp_path, {TRAIN_LOG_NAME: b"{}\n"})
    assert not is_resumable(tmp_path)  # records, but no checkpoint to continue from
    unfinished_run(tmp_path)
    assert is_resumable(tmp_path)
    write_files(tmp_path, {"all_results.json": b"{}"})
    assert not is_resumable(tmp_path)  # finished: nothing is left to resume


def test_resuming_a_finished_run_is_refused(tmp_path):
    finished_run(tmp_path)
    before = fingerprint(tmp_path)
    with pytest.raises(
        OutputDirectoryError,
        match=r"holds a finished result \(.*all_results\.json.*\): the run already finished, there is nothing to "
        r"resume, and nothing was changed\. Pass --overwrite_output_dir \(without --resume_from_checkpoint\) to "
        r"train again from the start, or choose another output folder\.$",
    ):
        prepare_output_dir(tmp_path, overwrite=False, resuming=True)
    assert fingerprint(tmp_path) == before


def test_overwrite_and_resume_together_are_refused_before_anything_is_deleted(tmp_path):
    unfinished_run(tmp_path)
    before = fingerprint(tmp_path)
    with pytest.raises(
        OutputDirectoryError,
        match="--overwrite_output_dir and --resume_from_checkpoint contradict each other.*Pass only one of them",
    ):
        prepare_output_dir(tmp_path, overwrite=True, resuming=True)
    assert fingerprint(tmp_path) == before


def test_a_file_as_output_folder_is_refused(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(OutputDirectoryError, match=r"the output folder '.*out' is a file: not starting the export"):
        prepare_output_dir(tmp_path / "out", overwrite=True, what="export")
    assert (tmp_path / "out").read_text() == "x"


def test_an_unwritable_location_is_a_permission_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(PermissionError, match=r"--output_dir '.*file/run' is not writable"):
        prepare_output_dir(tmp_path / "file" / "run", overwrite=False)


# ---------------------------------------------------------------------------------------------- what passes
def test_a_missing_folder_is_created(tmp_path):
    folder = prepare_output_dir(tmp_path / "a" / "b", overwrite=False)
    assert folder == tmp_path / "a" / "b" and folder.is_dir() and list(folder.iterdir()) == []


@pytest.mark.parametrize(
    "files",
    [
        USER_FILES,
        {"README.md": b"# my project"},  # may be the user's own: does not block
        {".tmp-final/config.json": b"{}", "checkpoints/.tmp-step_2/x": b"x"},  # interrupted writes, never read
    ],
    ids=["user-files", "readme", "temporaries"],
)
def test_files_that_prove_no_earlier_result_do_not_block(tmp_path, files):
    write_files(tmp_path, files)
    before = fingerprint(tmp_path)
    prepare_output_dir(tmp_path, overwrite=False)
    assert fingerprint(tmp_path) == before


# ---------------------------------------------------------------------------------------------- overwrite
@pytest.mark.parametrize("make_run", [finished_run, unfinished_run], ids=["finished", "unfinished"])
def test_overwrite_removes_every_artifact_and_keeps_user_files(tmp_path, make_run, caplog):
    make_run(tmp_path)
    removed = [path.name for path in find_run_artifacts(tmp_path)]
    with caplog.at_level(logging.WARNING, logger="transformers_mixedae.training.output_folders"):
        assert prepare_output_dir(tmp_path, overwrite=True) == tmp_path
    assert fingerprint(tmp_path) == fingerprint(write_files(tmp_path.parent / "expected", USER_FILES))
    [record] = [record for record in caplog.records if record.name == "transformers_mixedae.training.output_folders"]
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert message.startswith(f"--overwrite_output_dir: removing the previous result from {tmp_path} (")
    assert message.endswith("); other files in the folder are kept.")
    for name in removed[:8]:  # the listing stops after 8 names ("and N more")
        assert name in message


USERS_README = b"---\nlicense: mit\ntags:\n- vision\n---\n# My experiments\n"


@pytest.mark.parametrize("readme", [USERS_README, b"# my project", b"---\n: not yaml [\n---\n"],
                         ids=["other-tags", "no-metadata", "unreadable-metadata"])
def test_a_readme_this_package_did_not_write_is_kept_by_an_overwrite(tmp_path, readme):
    finished_run(tmp_path)
    (tmp_path / "README.md").write_bytes(readme)
    assert is_users_readme(tmp_path / "README.md")
    prepare_output_dir(tmp_path, overwrite=True)
    assert fingerprint(tmp_path) == fingerprint(
        write_files(tmp_path.parent / "expected", USER_FILES | {"README.md": readme}))


def test_a_users_readme_is_set_aside_under_a_free_name_and_a_card_of_ours_is_not(tmp_path):
    (tmp_path / "README.md").write_bytes(USERS_README)
    (tmp_path / "README.previous.md").write_bytes(b"an earlier one")
    assert set_aside_users_readme(tmp_path) == tmp_path / "README.previous-2.md"
    assert (tmp_path / "README.previous-2.md").read_bytes() == USERS_README and not (tmp_path / "README.md").exists()
    assert (tmp_path / "README.previous.md").read_bytes() == b"an earlier one"
    (tmp_path / "README.md").write_bytes(FINISHED_RUN_FILES["README.md"])  # a card of ours: left to be replaced
    assert set_aside_users_readme(tmp_path) is None and (tmp_path / "README.md").exists()


def test_overwrite_removes_a_symlinked_artifact_but_not_its_target(tmp_path):
    target = write_files(tmp_path / "elsewhere", {"model.safetensors": b"keep me"})
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").symlink_to(target / "model.safetensors")
    (run / "visualizations").symlink_to(target, target_is_directory=True)
    prepare_output_dir(run, overwrite=True)
    assert list(run.iterdir()) == []
    assert (target / "model.safetensors").read_bytes() == b"keep me"


def test_overwrite_of_an_empty_or_missing_folder_logs_nothing(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        prepare_output_dir(tmp_path / "new", overwrite=True)
        prepare_output_dir(tmp_path / "new", overwrite=True)
    assert not [record for record in caplog.records if record.name == "transformers_mixedae.training.output_folders"]


# ---------------------------------------------------------------------------------------------- staged writes
def staging_leftovers(parent: Path) -> list[str]:
    return sorted(path.name for path in parent.iterdir() if path.name.startswith(".tmp-"))


def test_staged_write_into_a_new_folder(tmp_path):
    with staged_output_dir(tmp_path / "out", overwrite=False, what="export") as staging:
        assert staging.parent == tmp_path and staging.name.startswith(".tmp-out-")
        assert not (tmp_path / "out").exists()  # nothing visible until the end
        write_files(staging, {"config.json": b"{}", "model.safetensors": b"w"})
    expected = write_files(tmp_path / "expected", {"config.json": b"{}", "model.safetensors": b"w"})
    assert fingerprint(tmp_path / "out") == fingerprint(expected)
    assert staging_leftovers(tmp_path) == []
    # The folder gets the usual permissions (tempfile.mkdtemp would make it private to its owner).
    assert oct((tmp_path / "out").stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_failed_staged_write_leaves_no_folder(tmp_path):
    with pytest.raises(RuntimeError, match="disk full"):
        with staged_output_dir(tmp_path / "out", overwrite=False, what="export") as staging:
            write_files(staging, {"config.json": b"{}"})
            raise RuntimeError("disk full")
    assert not (tmp_path / "out").exists() and staging_leftovers(tmp_path) == []


def test_a_failed_overwrite_leaves_the_previous_result_untouched(tmp_path):
    run = finished_run(tmp_path / "run")
    before = fingerprint(run)
    with pytest.raises(RuntimeError, match="disk full"):
        with staged_output_dir(run, overwrite=True, what="export") as staging:
            write_files(staging, {"config.json": b"{}"})
            raise RuntimeError("disk full")
    assert fingerprint(run) == before and staging_leftovers(tmp_path) == []


def test_a_staged_overwrite_replaces_the_result_and_keeps_user_files(tmp_path):
    run = finished_run(tmp_path / "run")
    with staged_output_dir(run, overwrite=True, what="export") as staging:
        write_files(staging, {"config.json": b'{"model_type": "vit"}', "model.safetensors": b"new"})
    assert fingerprint(run) == fingerprint(
        write_files(tmp_path / "expected", USER_FILES | {"config.json": b'{"model_type": "vit"}',
                                                         "model.safetensors": b"new"})
    )
    assert json.loads((run / "config.json").read_text()) == {"model_type": "vit"}


def test_a_staged_write_is_refused_before_the_block_runs(tmp_path):
    run = finished_run(tmp_path / "run")
    before = fingerprint(run)
    ran = []
    with pytest.raises(OutputDirectoryError, match="already holds a finished result.*not starting the export"):
        with staged_output_dir(run, overwrite=False, what="export"):
            ran.append(True)
    assert ran == [] and fingerprint(run) == before and staging_leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------- model paths
@pytest.mark.parametrize("hub_id", ["owner/name", "name", "google/vit-base-patch16-224", "cae_base.pth"])
def test_hub_ids_pass_untouched(hub_id, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert check_model_path(hub_id, "--model_name_or_path") == hub_id


@pytest.mark.parametrize(
    "path", ["./missing", "../missing", "/no/such/folder", "~/no-such-folder-here", "does/not/exist", "bad name"]
)
def test_missing_local_paths_are_named_with_the_fix(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    expected = (
        f"--model_name_or_path '{path}' is a local folder that does not exist; check the path, or give a Hub id like "
        "owner/name."
    )
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(expected)}$"):
        check_model_path(path, "--model_name_or_path")


def test_existing_folders_pass_and_files_only_where_allowed(tmp_path, monkeypatch):
    assert check_model_path(str(tmp_path), "model") == str(tmp_path)
    assert check_model_path(tmp_path, "model") == str(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "folder").mkdir()
    assert check_model_path("~/folder", "model") == str(tmp_path / "folder")  # from_pretrained does not expand ~
    (tmp_path / "weights.pth").write_bytes(b"x")
    weights = str(tmp_path / "weights.pth")
    assert check_model_path(weights, "--checkpoint", allow_file=True) == weights
    with pytest.raises(NotADirectoryError, match=r"^model '.*weights\.pth' is a file; give the folder that holds"):
        check_model_path(str(tmp_path / "weights.pth"), "model")
    with pytest.raises(FileNotFoundError, match=r"^--checkpoint '\./x\.pth' is a local path that does not exist"):
        check_model_path("./x.pth", "--checkpoint", allow_file=True)


def test_staging_folders_left_by_an_interrupted_write_are_named_and_kept(tmp_path, caplog):
    left = tmp_path / ".tmp-out-12345-abcdef01"  # a SIGKILLed export's staging folder
    write_files(left, {"model.safetensors": b"partial"})
    write_files(tmp_path / ".tmp-other-1-00000000", {"config.json": b"{}"})  # another output's: not named
    caplog.set_level(logging.WARNING)
    with staged_output_dir(tmp_path / "out", overwrite=False, what="export") as staging:
        write_files(staging, {"config.json": b"{}"})
    assert (f"{tmp_path}: 1 staging folder(s) of an earlier export into out that did not finish "
            f"(.tmp-out-12345-abcdef01/); delete them if no other write is running.") in caplog.text
    assert (left / "model.safetensors").read_bytes() == b"partial"  # never removed: it may be another writer's


def test_a_final_phase_stopped_without_a_checkpoint_is_not_resumed_and_says_why(tmp_path):
    from transformers_mixedae.training.output_folders import FINAL_PHASE_MARKER

    finished_run(tmp_path)
    (tmp_path / FINAL_PHASE_MARKER).write_text("stopped")
    assert prepare_output_dir(tmp_path, overwrite=False, resuming=True) == tmp_path  # step_2 finishes it
    shutil.rmtree(tmp_path / "checkpoints")
    assert not is_resumable(tmp_path)
    with pytest.raises(OutputDirectoryError, match="stopped during its final save or evaluation, and no checkpoint "
                                                   "to finish it from"):
        prepare_output_dir(tmp_path, overwrite=False, resuming=True)
    with pytest.raises(OutputDirectoryError) as refused:
        prepare_output_dir(tmp_path, overwrite=False)
    assert "--resume_from_checkpoint" not in str(refused.value)  # no hint that cannot work
