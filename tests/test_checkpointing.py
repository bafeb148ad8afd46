"""Checkpoints and output folders: a finished run is never overwritten by accident, `--overwrite_output_dir` leaves
nothing stale, a damaged `latest` falls back to the previous intact checkpoint, and a checkpoint only resumes its own
model and recipe (another batch size only with `--allow_recipe_change`); tampered random states refuse the resume.
Safe loading: models save safetensors only, pickles holding code are refused unrun (converter, DALL-E tokenizer,
tampered checkpoints), and a checkpoint write that fails (disk full) leaves the previous one intact."""

import errno
import json
import logging
import os
import re
import shutil
import signal
import sys
import types
from pathlib import Path

import datasets
import pytest
import torch
from accelerate import Accelerator
from helpers import single_torch_thread, tiny_models  # noqa: F401 (fixture)
from safetensors.torch import load_file
from tiny_runs import TINY_CAE, TINY_MIXEDAE, arguments, folder_fingerprint
from torch import nn

from transformers_mixedae.training.checkpointing import list_checkpoints
from transformers_mixedae.hub.convert_cae_checkpoint import load_official_state_dict
from transformers_mixedae.tasks.masked_image_modeling import run_pretraining
from transformers_mixedae.training.loop import TrainingCallback
from transformers_mixedae.models.tokenizer_dalle import load_dalle_encoder

datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
pytestmark = pytest.mark.usefixtures("single_torch_thread")
CHECKPOINTED = dict(max_steps=2, save_steps=1, save_total_limit=None)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-step run with checkpoints step_1 and step_2."""
    root = tmp_path_factory.mktemp("finished")
    run_pretraining(*arguments(root, **CHECKPOINTED))
    return root


def interrupted_copy(finished, destination, steps=(1, 2)):
    """An output folder holding only the checkpoints `steps` of `finished`: a run stopped after its last one."""
    for step in steps:
        shutil.copytree(finished / "checkpoints" / f"step_{step}", destination / "checkpoints" / f"step_{step}")
    return destination


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


# ---------------------------------------------------------------------------------------------- output folder
def test_rerunning_into_a_finished_run_is_refused_and_overwrite_leaves_no_stale_pictures(tmp_path):
    run_pretraining(*arguments(tmp_path, max_steps=4, eval_steps=4, save_visualizations=True))
    before = folder_fingerprint(tmp_path)
    assert {"visualizations/step_4_reconstruction.png", "model.safetensors"} <= set(before)
    with pytest.raises(ValueError, match=rf"^'{re.escape(str(tmp_path))}' already holds a finished result \(.*\): not "
                                         r"starting the run, and nothing was changed\. Pass --overwrite_output_dir to "
                                         r"replace it, or choose another output folder\.$"):
        run_pretraining(*arguments(tmp_path, max_steps=2, save_visualizations=True))
    assert folder_fingerprint(tmp_path) == before

    (tmp_path / "notes.txt").write_text("mine")
    results = run_pretraining(*arguments(tmp_path, max_steps=2, save_visualizations=True,
                                         overwrite_output_dir=True))
    assert results["train_steps"] == 2
    assert sorted(path.name for path in (tmp_path / "visualizations").iterdir()) == [
        "step_2_homologous_attention.png", "step_2_reconstruction.png"]
    assert json.loads((tmp_path / "all_results.json").read_text())["train_steps"] == 2
    assert (tmp_path / "notes.txt").read_text() == "mine"


class Killed(BaseException):
    """Stands for the process being killed (SIGTERM's default action) in the middle of the final phase."""


def test_a_run_killed_during_its_final_evaluation_is_finished_by_latest(tmp_path, finished, monkeypatch):
    from transformers_mixedae.tasks.masked_image_modeling_data import PretrainingData
    from transformers_mixedae.training.output_folders import FINAL_PHASE_MARKER, OutputDirectoryError, is_resumable

    def killed_evaluation(self, model, step):
        raise Killed()

    with monkeypatch.context() as patch:
        patch.setattr(PretrainingData, "evaluate", killed_evaluation)
        with pytest.raises(Killed):
            run_pretraining(*arguments(tmp_path, **CHECKPOINTED))
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / FINAL_PHASE_MARKER).exists()
    assert not any(key.startswith("eval_") for key in json.loads((tmp_path / "all_results.json").read_text()))
    assert is_resumable(tmp_path)
    with pytest.raises(OutputDirectoryError, match="stopped during its final save or evaluation: pass "
                                                   "--resume_from_checkpoint latest to finish it"):
        run_pretraining(*arguments(tmp_path, **CHECKPOINTED))

    results = run_pretraining(*arguments(tmp_path, resume_from_checkpoint="latest", **CHECKPOINTED))
    uninterrupted = json.loads((finished / "all_results.json").read_text())
    compared = [key for key in uninterrupted if key.startswith("eval_")] + ["train_loss", "train_steps"]
    assert len(compared) > 4 and {key: results[key] for key in compared} == {key: uninterrupted[key] for key in compared}
    assert not (tmp_path / FINAL_PHASE_MARKER).exists() and not is_resumable(tmp_path)
    expected, actual = weights(finished), weights(tmp_path)
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    with pytest.raises(OutputDirectoryError, match="the run already finished"):
        run_pretraining(*arguments(tmp_path, resume_from_checkpoint="latest", **CHECKPOINTED))


# ---------------------------------------------------------------------------------------------- damaged checkpoints
def test_a_truncated_latest_names_the_file_and_resumes_from_the_previous_checkpoint(tmp_path, finished, caplog):
    run = interrupted_copy(finished, tmp_path / "run")
    damaged = run / "checkpoints" / "step_2" / "model.safetensors"
    size = damaged.stat().st_size
    damaged.write_bytes(damaged.read_bytes()[:100])
    caplog.set_level(logging.WARNING)
    results = run_pretraining(*arguments(run, resume_from_checkpoint="latest", **CHECKPOINTED))
    assert f"{damaged} has 100 bytes but was written with {size} (truncated or damaged)" in caplog.text
    assert f"Not resuming from {run / 'checkpoints' / 'step_2'}" in caplog.text
    assert results["train_steps"] == 2
    expected, actual = weights(finished), weights(run)  # step 2 redone from step 1: the same weights
    assert expected.keys() == actual.keys() and all(torch.equal(expected[name], actual[name]) for name in expected)


def test_when_every_checkpoint_is_damaged_the_resume_is_refused_naming_them(tmp_path, finished):
    run = interrupted_copy(finished, tmp_path / "run")
    for step in (1, 2):
        (run / "checkpoints" / f"step_{step}" / "optimizer.bin").write_bytes(b"")
    before = folder_fingerprint(run)
    with pytest.raises(ValueError, match=rf"^no checkpoint in {re.escape(str(run / 'checkpoints'))} is intact \(.*"
                                         r"step_2/optimizer\.bin has 0 bytes but was written with \d+ .*step_1/"
                                         r"optimizer\.bin has 0 bytes.*\)\. Pass --overwrite_output_dir"):
        run_pretraining(*arguments(run, resume_from_checkpoint="latest", **CHECKPOINTED))
    assert folder_fingerprint(run) == before


def test_an_explicit_damaged_checkpoint_is_refused(tmp_path, finished):
    run = interrupted_copy(finished, tmp_path / "run", steps=(1,))
    checkpoint = run / "checkpoints" / "step_1"
    (checkpoint / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=rf"^cannot resume from {re.escape(str(checkpoint))}: "
                                         rf"{re.escape(str(checkpoint / 'model.safetensors'))} is missing\. Resume from "
                                         r"another checkpoint"):
        run_pretraining(*arguments(run, resume_from_checkpoint=str(checkpoint), **CHECKPOINTED))


def test_a_garbled_run_state_is_named_and_latest_falls_back_past_it(tmp_path, finished, caplog):
    run = interrupted_copy(finished, tmp_path / "run", steps=(1,))
    state = run / "checkpoints" / "step_1" / "run_state.json"
    state.write_text('{"files": {"model.safe')
    with pytest.raises(ValueError, match=rf"^cannot resume from .*step_1: {re.escape(str(state))} is damaged \(.*\)\. "
                                         "Resume from another checkpoint"):
        run_pretraining(*arguments(run, resume_from_checkpoint=str(state.parent), **CHECKPOINTED))
    with pytest.raises(ValueError, match=rf"^no checkpoint in .* is intact \({re.escape(str(state))} is damaged"):
        run_pretraining(*arguments(run, resume_from_checkpoint="latest", **CHECKPOINTED))

    # An empty run_state.json (e.g. lost in a power cut after the rename) in the newest checkpoint: `latest` goes back.
    run = interrupted_copy(finished, tmp_path / "run2")
    newest = run / "checkpoints" / "step_2" / "run_state.json"
    newest.write_text("")
    caplog.set_level(logging.WARNING)
    assert run_pretraining(*arguments(run, resume_from_checkpoint="latest", **CHECKPOINTED))["train_steps"] == 2
    assert f"Not resuming from {newest.parent}: {newest} is damaged" in caplog.text


def test_garbage_random_states_of_the_recorded_size_refuse_the_resume(tmp_path, finished):
    run = interrupted_copy(finished, tmp_path / "run", steps=(1,))
    states = run / "checkpoints" / "step_1" / "random_states_0.pkl"
    size = states.stat().st_size
    states.write_bytes((b"\x80\x04garbage, not random states" * size)[:size])  # the size check cannot tell
    before = folder_fingerprint(run)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(states))} cannot be read as plain random-number states "
                                         r"\(UnpicklingError\); it is damaged or holds other objects, and nothing in "
                                         r"it was run\. Not resuming"):
        run_pretraining(*arguments(run, resume_from_checkpoint="latest", **CHECKPOINTED))
    assert folder_fingerprint(run) == before


# ---------------------------------------------------------------------------------------------- another model or recipe
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(config_overrides=TINY_MIXEDAE.replace("hidden_size=32", "hidden_size=64", 1)),
         r"holds a different model \(.*vit\.embeddings\.cls_token: \[1, 1, 32\] -> \[1, 1, 64\]"),
        (dict(model_type="cae"), r"holds a different model \(model_type 'mixedae' in the checkpoint, 'cae' now\)"),
    ],
    ids=["another_size", "another_family"],
)
def test_resuming_into_another_model_says_so(tmp_path, finished, changes, message):
    run = interrupted_copy(finished, tmp_path / "run", steps=(1,))
    before = folder_fingerprint(run)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(run / 'checkpoints' / 'step_1'))} {message}.*; a checkpoint "
                                         r"only resumes the model it was written for\."):
        run_pretraining(*arguments(run, resume_from_checkpoint="latest", **CHECKPOINTED, **changes))
    assert folder_fingerprint(run) == before


def test_another_batch_size_is_refused_unless_allow_recipe_change(tmp_path, finished, caplog):
    run = interrupted_copy(finished, tmp_path / "run", steps=(1,))
    checkpoint = run / "checkpoints" / "step_1"
    before = folder_fingerprint(run)
    with pytest.raises(ValueError, match=rf"^resuming {re.escape(str(checkpoint))} would change the recipe \(.*"
                                         r"per_device_train_batch_size: 8 in the checkpoint, 4 now\)\. Resume with the "
                                         r"same values, or pass --allow_recipe_change"):
        run_pretraining(*arguments(run, resume_from_checkpoint="latest", per_device_train_batch_size=4, **CHECKPOINTED))
    assert folder_fingerprint(run) == before

    caplog.set_level(logging.WARNING)
    results = run_pretraining(*arguments(run, resume_from_checkpoint="latest", per_device_train_batch_size=4,
                                         allow_recipe_change=True, **CHECKPOINTED))
    assert results["train_steps"] == 2
    assert re.search(rf"Resuming {re.escape(str(checkpoint))} with a changed recipe: .*per_device_train_batch_size: 8 "
                     r"in the checkpoint, 4 now", caplog.text)


class OptimizerSettings(TrainingCallback):
    """Records the optimizer's per-group settings when the loop starts (after a resume) and at each logged step."""

    KEYS = ("lr", "initial_lr", "weight_decay", "betas")

    def __init__(self):
        self.at_step = {}

    def record(self, state):
        groups = state.accelerator._optimizers[0].param_groups
        self.at_step[state.progress.completed_steps] = [{key: group[key] for key in self.KEYS} for group in groups]

    on_train_begin = record

    def on_log(self, state, logs):
        self.record(state)


def test_a_changed_learning_rate_weight_decay_and_betas_take_effect_on_resume(tmp_path, finished):
    """Loading a checkpoint brings back its optimizer's settings; with --allow_recipe_change the new ones must win,
    as in a fresh run of the new recipe at the same step (the moments and the schedule's position stay resumed)."""
    run = interrupted_copy(finished, tmp_path / "run", steps=(1,))
    new_recipe = dict(learning_rate=1e-2, weight_decay=0.3, adam_beta2=0.5, **CHECKPOINTED)
    fresh, resumed = OptimizerSettings(), OptimizerSettings()
    run_pretraining(*arguments(tmp_path / "fresh", **new_recipe), callbacks=[fresh])
    run_pretraining(*arguments(run, resume_from_checkpoint="latest", allow_recipe_change=True, **new_recipe),
                    callbacks=[resumed])
    assert resumed.at_step[1] == fresh.at_step[1]
    assert {group["weight_decay"] for group in resumed.at_step[1]} == {0.0, 0.3}
    assert {group["betas"] for group in resumed.at_step[1]} == {(0.9, 0.5)}
    assert resumed.at_step[2] == fresh.at_step[2]


def test_resuming_an_earlier_checkpoint_sets_the_later_ones_aside(tmp_path, finished, caplog):
    """Rotation must not keep the abandoned run's step_2 over the resumed run's own checkpoints, nor `latest` return
    to it: it moves to checkpoints/superseded/, kept."""
    run = interrupted_copy(finished, tmp_path / "run")
    abandoned = folder_fingerprint(run / "checkpoints" / "step_2")
    caplog.set_level(logging.WARNING)
    results = run_pretraining(*arguments(run, resume_from_checkpoint=str(run / "checkpoints" / "step_1"),
                                         **{**CHECKPOINTED, "save_total_limit": 1}))
    assert results["train_steps"] == 2
    assert "the 1 later checkpoint(s) of the abandoned run moved to" in caplog.text
    assert folder_fingerprint(run / "checkpoints" / "superseded" / "step_2") == abandoned
    assert list_checkpoints(run) == [run / "checkpoints" / "step_2"]  # the resumed run's own, rotated to 1


def test_a_refused_resume_of_an_earlier_checkpoint_leaves_the_later_ones_in_place(tmp_path, finished):
    run = interrupted_copy(finished, tmp_path / "run")
    with pytest.raises(ValueError, match="would change the recipe"):
        run_pretraining(*arguments(run, resume_from_checkpoint=str(run / "checkpoints" / "step_1"),
                                   per_device_train_batch_size=4, **CHECKPOINTED))
    assert list_checkpoints(run) == [run / "checkpoints" / "step_1", run / "checkpoints" / "step_2"]
    assert not (run / "checkpoints" / "superseded").exists()


def test_the_same_recipe_resumes_without_allow_recipe_change(tmp_path, finished):
    run = interrupted_copy(finished, tmp_path / "run", steps=(1,))
    assert run_pretraining(*arguments(run, resume_from_checkpoint="latest", **CHECKPOINTED))["train_steps"] == 2
    expected, actual = weights(finished), weights(run)
    assert all(torch.equal(expected[name], actual[name]) for name in expected)


# ---------------------------------------------------------------------------------------------- exit status
def test_a_run_stopped_by_sigterm_exits_143_and_a_finished_one_0():
    from transformers_mixedae.tasks.masked_image_modeling import exit_status

    assert exit_status({"stopped_by_signal": True, "train_steps": 3}) == 128 + signal.SIGTERM == 143
    assert exit_status({"train_steps": 4}) == 0


# ---------------------------------------------------------------------------------------------- safe loading
class PlantedCode:
    """Unpickling this runs `open(marker, "w")`: the marker file appears only if code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_save_pretrained_writes_safetensors_only(tmp_path):
    for model in tiny_models():
        folder = tmp_path / model.config.model_type
        model.save_pretrained(folder)
        names = sorted(path.name for path in folder.iterdir())
        assert "model.safetensors" in names, names
        assert not [name for name in names if name.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))], names


def test_pickles_with_code_are_refused_and_nothing_runs(tmp_path, monkeypatch):
    marker = tmp_path / "code_ran"
    checkpoint = tmp_path / "cae_official.pth"
    torch.save({"model": {"encoder.cls_token": torch.zeros(1, 1, 4)}, "args": PlantedCode(marker)}, checkpoint)
    torch.load(checkpoint, weights_only=False)["args"].close()  # the file really runs code when unpickled ...
    assert marker.exists()
    marker.unlink()

    with pytest.raises(ValueError, match="not loaded and nothing in it was run"):  # ... but the converter refuses
        load_official_state_dict(checkpoint)
    assert not marker.exists()

    # The DALL-E tokenizer loader (a stand-in for the optional `dall_e` package: only its Encoder is needed).
    monkeypatch.setitem(sys.modules, "dall_e", types.SimpleNamespace(Encoder=lambda: nn.Conv2d(3, 8, 8, 8)))
    encoder_file = tmp_path / "encoder.pkl"
    torch.save(PlantedCode(marker), encoder_file)
    with pytest.raises(ValueError, match="allow_unsafe_pickle=True if you trust it"):
        load_dalle_encoder(encoder_file)
    assert not marker.exists()
    # ... and run_mim.py, unless --cae_tokenizer_allow_unsafe_pickle is given.
    with pytest.raises(ValueError, match="allow_unsafe_pickle=True if you trust it"):
        run_pretraining(*arguments(tmp_path / "run", model_type="cae", cae_tokenizer_path=str(encoder_file),
                                   config_overrides=TINY_CAE.replace("target=pixels", "target=tokens")))
    assert not marker.exists()


def test_resuming_from_a_tampered_checkpoint_runs_nothing(tmp_path):
    run_pretraining(*arguments(tmp_path, max_steps=2, save_steps=2))
    marker = tmp_path / "code_ran"
    tampered = tmp_path / "checkpoints" / "step_2" / "custom_checkpoint_1.pkl"
    torch.save({"completed_steps": PlantedCode(marker)}, tampered)
    # The recorded file sizes already tell that the file changed since it was written.
    with pytest.raises(ValueError, match=r"no checkpoint in .* is intact \(.*custom_checkpoint_1.pkl has \d+ bytes but "
                                         r"was written with \d+ \(truncated or damaged\)\)"):
        run_pretraining(*arguments(tmp_path, max_steps=4, resume_from_checkpoint="latest"))
    # Without the record (a checkpoint of an earlier version), the pickle itself is refused unread.
    (tmp_path / "checkpoints" / "step_2" / "run_state.json").unlink()
    with pytest.raises(ValueError, match="holds pickled objects other than tensors and plain data.*nothing in it "
                                         "was run"):
        run_pretraining(*arguments(tmp_path, max_steps=4, resume_from_checkpoint="latest"))
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- disk full
def test_a_failed_checkpoint_write_leaves_the_previous_checkpoint_intact_and_says_so(tmp_path, monkeypatch):
    original_save_state = Accelerator.save_state
    fingerprints = []

    def save_state(self, output_dir=None, **kwargs):
        if not list_checkpoints(tmp_path):
            return original_save_state(self, output_dir, **kwargs)
        fingerprints.append(folder_fingerprint(tmp_path / "checkpoints" / "step_2"))
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "model.safetensors").write_bytes(b"half a file")  # the disk fills up mid-write
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Accelerator, "save_state", save_state)
    with pytest.raises(RuntimeError) as error:
        run_pretraining(*arguments(tmp_path, max_steps=6, save_steps=2))
    previous = tmp_path / "checkpoints" / "step_2"
    assert str(error.value) == (
        f"Writing checkpoint {tmp_path / 'checkpoints' / 'step_4'} failed ([Errno 28] No space left on device); the "
        f"previous checkpoint {previous} is intact.")
    assert isinstance(error.value.__cause__, OSError) and error.value.__cause__.errno == errno.ENOSPC
    assert list_checkpoints(tmp_path) == [previous] and not list((tmp_path / "checkpoints").glob(".tmp-*"))
    assert folder_fingerprint(previous) == fingerprints[0]

    monkeypatch.setattr(Accelerator, "save_state", original_save_state)  # space freed: the job resumes from step 2
    results = run_pretraining(*arguments(tmp_path, max_steps=6, save_steps=2,
                                         resume_from_checkpoint="latest"))
    assert results["train_steps"] == 6 and [path.name for path in list_checkpoints(tmp_path)] == ["step_4", "step_6"]
