"""The training loop under faults (tiny pre-training runs on CPU): preemption (SIGKILL during a checkpoint write, then
`latest` resumes to the same loss curve; SIGTERM to the whole job checkpoints and exits 143), a checkpoint between
logging steps keeps the logged loss, and non-finite losses or gradients skip a step (counted, weights untouched) or,
several in a row, stop the job with the last checkpoint untouched."""

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from helpers import single_torch_thread  # noqa: F401 (fixture)
from safetensors.torch import load_file
from tiny_runs import REPOSITORY, RUN_MIM, arguments, command_line, folder_fingerprint, load_run_mim

from transformers_mixedae import MixedAEForPreTraining
from transformers_mixedae.training.checkpointing import list_checkpoints
from transformers_mixedae.tasks.image_classification import ImageClassificationTask
from transformers_mixedae.tasks.masked_image_modeling import MaskedImageModelingTask, run_pretraining
from transformers_mixedae.tasks.semantic_segmentation import SemanticSegmentationTask
from transformers_mixedae.training.loop import NonFiniteTrainingError, TrainingCallback
from transformers_mixedae.training.output_folders import RUN_RECORD_ARTIFACTS
from transformers_mixedae.training.records import read_train_log

datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
pytestmark = pytest.mark.usefixtures("single_torch_thread")


# ---------------------------------------------------------------------------------------------- preemption
def kill_when_checkpoint_appears(
    process: subprocess.Popen, root: Path, step: int, seen: dict, rng: random.Random
) -> None:
    """SIGKILL `process` within 20 ms of checkpoint `step` starting to be written (its `.tmp-` folder appears), or of
    any later checkpoint being seen; `seen` records the folder names seen then."""
    while process.poll() is None:
        names = set(os.listdir(root)) if root.is_dir() else set()
        if any(name.split("_")[-1].isdigit() and int(name.split("_")[-1]) >= step for name in names):
            time.sleep(rng.uniform(0, 0.02))
            seen["names"] = names
            process.send_signal(signal.SIGKILL)
            return
        time.sleep(0.0005)


def test_sigkill_at_a_checkpoint_write_then_latest_resumes_with_the_same_loss_curve(tmp_path, caplog):
    settings = dict(max_steps=10, save_steps=2, save_total_limit=3)
    killed = tmp_path / "killed"
    # The checkpoint during whose write the run is killed, and the delay: drawn anew each run (set KILL_SEED to
    # replay a failure's draw; the kill still lands in real time).
    seed = int(os.environ.get("KILL_SEED", random.randrange(2**31)))
    rng = random.Random(seed)
    step = rng.choice([4, 6, 8])
    replay = f"KILL_SEED={seed} (killed while checkpoint step_{step} was written)"
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                   "PYTHONPATH": os.pathsep.join([str(REPOSITORY / "src"), os.environ.get("PYTHONPATH", "")])}
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen([sys.executable, str(RUN_MIM), *command_line(killed, **settings)], env=environment,
                                   stdout=log, stderr=subprocess.STDOUT)
    seen: dict = {}
    watcher = threading.Thread(target=kill_when_checkpoint_appears,
                               args=(process, killed / "checkpoints", step, seen, rng), daemon=True)
    watcher.start()
    try:
        # The uninterrupted reference runs here while the subprocess starts (same thread count: one).
        run_mim = load_run_mim()
        run_mim.main(command_line(tmp_path / "uninterrupted", **settings))
        watcher.join(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL, (replay, (tmp_path / "killed.log").read_text()[-3000:])

    # Killed mid-write (a `.tmp-step_N` folder is left, the usual case) or just after a rename: either way `latest`
    # is the newest complete checkpoint.
    complete = list_checkpoints(killed)
    last = complete[-1]
    assert int(last.name.split("_")[1]) >= step - 2, (replay, seen)
    assert read_train_log(killed / "train_log.jsonl")[-1]["step"] >= int(last.name.split("_")[1])

    caplog.set_level("INFO", logger="transformers_mixedae.training.resume")
    run_mim.main(command_line(killed, resume_from_checkpoint="latest", **settings))
    assert f"Resumed from {last} at step" in caplog.text, replay

    expected = read_train_log(tmp_path / "uninterrupted" / "train_log.jsonl")
    assert [record["step"] for record in expected] == list(range(1, 11))
    assert read_train_log(killed / "train_log.jsonl") == expected, replay  # every step once, same loss and lr
    expected_weights, weights = load_file(tmp_path / "uninterrupted" / "model.safetensors"), load_file(
        killed / "model.safetensors")
    assert all(torch.equal(expected_weights[name], weights[name]) for name in expected_weights), replay
    assert not list((killed / "checkpoints").glob(".tmp-*"))  # the interrupted write was cleaned up
    # Safetensors only in what a run leaves for users (checkpoints hold accelerate's optimizer/RNG states).
    assert not [path.name for path in killed.iterdir() if path.suffix in (".bin", ".pt", ".pth", ".pkl")]


def test_sigterm_to_the_whole_job_checkpoints_exits_143_and_resumes_to_the_same_weights(tmp_path):
    # A scheduler (or `timeout`) signals every process of the job, DataLoader workers included: the run must still
    # finish its step, write a checkpoint and exit with 143; the resumed run ends as an uninterrupted one.
    settings = dict(max_steps=150, save_steps=1000, dataloader_num_workers=1, logging_steps=1)
    stopped = tmp_path / "stopped"
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                   "PYTHONPATH": os.pathsep.join([str(REPOSITORY / "src"), os.environ.get("PYTHONPATH", "")])}
    with open(tmp_path / "stopped.log", "w") as log:
        process = subprocess.Popen([sys.executable, str(RUN_MIM), *command_line(stopped, **settings)], env=environment,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (stopped / "train_log.jsonl").exists() or not (stopped / "train_log.jsonl").read_text():
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "stopped.log").read_text()[-3000:]
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    log_text = (tmp_path / "stopped.log").read_text()
    assert process.returncode == 143, log_text[-3000:]
    assert "killed by signal" not in log_text
    [checkpoint] = list_checkpoints(stopped)
    step = int(checkpoint.name.split("_")[1])
    assert 1 <= step < 150 and not (stopped / "model.safetensors").exists()

    run_mim = load_run_mim()
    run_mim.main(command_line(stopped, resume_from_checkpoint="latest", **settings))
    run_mim.main(command_line(tmp_path / "uninterrupted", **settings))
    resumed, reference = load_file(stopped / "model.safetensors"), load_file(
        tmp_path / "uninterrupted" / "model.safetensors")
    assert resumed.keys() == reference.keys() and all(torch.equal(resumed[name], reference[name]) for name in reference)


class FailAtStepTwo(TrainingCallback):
    def on_log(self, state, logs):
        if state.progress.completed_steps == 2:
            raise RuntimeError("failure in the middle of an epoch")


def test_dataloader_workers_stop_with_the_run_however_it_ends(tmp_path):
    # The workers ignore SIGTERM, so one that outlives the run stalls the interpreter's exit for ever (multiprocessing
    # terminates its children at exit, then joins them). A failure's traceback keeps the training frame, and the
    # epoch's pass in it, alive: the pass must still be closed, and its workers stopped, before the error propagates.
    settings = dict(max_steps=6, logging_steps=1, dataloader_num_workers=1)
    with pytest.raises(RuntimeError, match="failure in the middle of an epoch") as failure:
        run_pretraining(*arguments(tmp_path / "failed", **settings), callbacks=[FailAtStepTwo()])
    assert failure.traceback and multiprocessing.active_children() == []
    results = run_pretraining(*arguments(tmp_path / "finished", **settings))
    assert results["train_steps"] == 6 and multiprocessing.active_children() == []


def test_a_checkpoint_between_logging_steps_keeps_the_logged_loss_identical(tmp_path):
    settings = dict(max_steps=6, logging_steps=3, save_steps=2, save_total_limit=None)
    run_pretraining(*arguments(tmp_path / "uninterrupted", **settings))
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    os.replace(tmp_path / "uninterrupted" / "checkpoints" / "step_4", resumed / "checkpoints" / "step_4")
    # What the interrupted run had logged: step 3 (the next log line, step 6, averages steps 4 to 6).
    (resumed / "train_log.jsonl").write_text(
        (tmp_path / "uninterrupted" / "train_log.jsonl").read_text().splitlines()[0] + "\n{\"step\": 6, \"lo")
    run_pretraining(*arguments(resumed, resume_from_checkpoint="latest", **settings))
    expected = read_train_log(tmp_path / "uninterrupted" / "train_log.jsonl")
    assert [record["step"] for record in expected] == [3, 6]
    assert read_train_log(resumed / "train_log.jsonl") == expected


# ---------------------------------------------------------------------------------------------- numerical faults
class InfiniteGradient(torch.autograd.Function):
    """Identity on the loss, infinite gradient backwards: a finite loss with a non-finite gradient."""

    @staticmethod
    def forward(ctx, loss):
        return loss.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


def inject_faults(monkeypatch, faults: dict[int, str]) -> list[dict[str, torch.Tensor]]:
    """Make training forward pass number `i` (0-based) return a NaN loss (`faults[i] == "loss"`) or a finite loss with
    an infinite gradient (`"gradient"`). Returns the weights seen at the start of every training forward pass."""
    original = MixedAEForPreTraining.forward
    weights_seen = []

    def forward(self, *args, **kwargs):
        outputs = original(self, *args, **kwargs)
        if not self.training:
            return outputs
        index = len(weights_seen)
        weights_seen.append({name: value.detach().clone() for name, value in self.state_dict().items()})
        if faults.get(index) == "loss":
            outputs.loss = outputs.loss * float("nan")
        elif faults.get(index) == "gradient":
            outputs.loss = InfiniteGradient.apply(outputs.loss)
        return outputs

    monkeypatch.setattr(MixedAEForPreTraining, "forward", forward)
    return weights_seen


def same_weights(first: dict, second: dict) -> bool:
    return all(torch.equal(first[name], second[name]) for name in first)


def test_a_non_finite_loss_or_gradient_skips_the_step_counts_it_and_leaves_the_weights(tmp_path, monkeypatch):
    weights_seen = inject_faults(monkeypatch, {2: "loss", 4: "gradient"})  # steps 3 and 5
    results = run_pretraining(*arguments(tmp_path, max_steps=6))
    assert results["train_skipped_nonfinite_steps"] == 2 and results["train_steps"] == 6
    assert np.isfinite(results["train_loss"])
    assert same_weights(weights_seen[2], weights_seen[3])  # step 3 changed nothing
    assert same_weights(weights_seen[4], weights_seen[5])  # nor did step 5
    assert not same_weights(weights_seen[1], weights_seen[2]) and not same_weights(weights_seen[3], weights_seen[4])
    losses = {record["step"]: record["loss"] for record in read_train_log(tmp_path / "train_log.jsonl")}
    assert losses[3] is None and losses[5] is None  # nothing trained in those steps: no loss logged
    assert all(np.isfinite(losses[step]) for step in (1, 2, 4, 6))


def test_a_skipped_fp16_step_lets_the_loss_scaler_back_off_and_train_on():
    """accelerate's fp16 scaler (a CPU GradScaler here: accelerate gives none on CPU) saw the overflow when the
    gradients were unscaled for the norm; the skipped step must update it, or the next unscaling raises."""
    from types import SimpleNamespace

    from transformers_mixedae.training.loop import release_loss_scaler

    layer = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    scaler.scale(layer(torch.tensor([[float("inf"), 1.0]])).sum()).backward()
    scaler.unscale_(optimizer)  # what clip_grad_norm_ does under fp16
    assert release_loss_scaler(SimpleNamespace(scaler=scaler))  # an ordinary overflow: not counted as divergence
    optimizer.zero_grad(set_to_none=True)
    assert scaler.get_scale() == 2.0**15
    before = layer.weight.detach().clone()
    scaler.scale(layer(torch.ones(1, 2)).sum()).backward()
    scaler.unscale_(optimizer)  # raised "unscale_() has already been called" without the update
    scaler.step(optimizer)
    scaler.update()
    assert not torch.equal(layer.weight, before)
    assert not release_loss_scaler(SimpleNamespace(scaler=None))  # fp32 / bf16: a real non-finite step


FINITE_ON_EVERY_RANK = """
import json, sys
import torch
from accelerate import Accelerator
from transformers_mixedae.training.loop import finite_on_every_rank

accelerator = Accelerator(cpu=True)
rank = accelerator.process_index
answers = [finite_on_every_rank(accelerator, torch.tensor(1.0)),
           finite_on_every_rank(accelerator, torch.tensor(float("inf") if rank == 1 else 2.0))]
with open(f"{sys.argv[1]}/rank_{rank}.json", "w") as handle:
    json.dump(answers, handle)
"""


def test_whether_a_skipped_steps_loss_was_finite_is_decided_by_every_rank_together(tmp_path):
    # Under fp16 the non-finite streak counts a skipped step only when its loss was finite; one rank's infinite loss
    # must count on all ranks alike, or that rank alone reaches the limit and stops while the others wait.
    from helpers import TORCHRUN_TWO_PROCESSES

    script = tmp_path / "finite.py"
    script.write_text(FINITE_ON_EVERY_RANK)
    completed = subprocess.run([*TORCHRUN_TWO_PROCESSES, str(script), str(tmp_path)], capture_output=True, text=True,
                               timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert [json.loads((tmp_path / f"rank_{rank}.json").read_text()) for rank in (0, 1)] == [[True, False]] * 2


@pytest.mark.parametrize(("norm", "finite"), [(None, True), (1.5, True), (float("nan"), False),
                                              (torch.tensor(2.0), True), (torch.tensor(float("inf")), False)])
def test_the_finite_check_reads_every_kind_of_norm_accelerate_returns(norm, finite):
    """DeepSpeed's `clip_grad_norm_` gives `None` before its first step and a float after; the others a tensor.
    `torch.isfinite` raised a TypeError on both DeepSpeed kinds, at the first optimizer step."""
    from types import SimpleNamespace

    from transformers_mixedae.training.loop import gradients_are_finite

    accelerator = SimpleNamespace(clip_grad_norm_=lambda parameters, max_norm: norm)
    assert gradients_are_finite(accelerator, torch.nn.Linear(2, 1), 1.0) is finite


def test_consecutive_non_finite_steps_stop_the_job_and_leave_the_last_checkpoint_untouched(tmp_path, monkeypatch):
    weights_seen = inject_faults(monkeypatch, {4: "loss", 5: "gradient", 6: "loss"})  # steps 5 to 7
    original_forward = MixedAEForPreTraining.forward
    fingerprints = []

    def forward(self, *args, **kwargs):
        if self.training and len(weights_seen) == 4:  # step 5 starts: checkpoint step_4 has just been written
            fingerprints.append(folder_fingerprint(tmp_path / "checkpoints" / "step_4"))
        return original_forward(self, *args, **kwargs)

    monkeypatch.setattr(MixedAEForPreTraining, "forward", forward)
    with pytest.raises(NonFiniteTrainingError) as error:
        run_pretraining(*arguments(tmp_path, max_steps=10, save_steps=4,
                                   max_consecutive_nonfinite_steps=3))
    last = tmp_path / "checkpoints" / "step_4"
    assert str(error.value).startswith(
        f"3 optimizer steps in a row had a non-finite loss or gradient (step 7); stopping. The last good checkpoint "
        f"is {last} and was not touched.")
    assert len(weights_seen) == 7 and list_checkpoints(tmp_path) == [last]
    assert folder_fingerprint(last) == fingerprints[0]  # byte-identical, not rewritten
    assert not list((tmp_path / "checkpoints").glob(".tmp-*")) and not (tmp_path / "model.safetensors").exists()



def test_an_accelerator_accumulating_otherwise_than_the_arguments_is_refused_before_anything_runs(tmp_path):
    from accelerate import Accelerator

    with pytest.raises(ValueError, match=r"^the Accelerator passed in accumulates 1 batches per optimizer step, the "
                                         r"arguments ask for --gradient_accumulation_steps 2: build it with "
                                         r"Accelerator\(gradient_accumulation_steps=2, \.\.\.\)"):
        run_pretraining(*arguments(tmp_path / "run", gradient_accumulation_steps=2), accelerator=Accelerator(cpu=True))
    assert not (tmp_path / "run").exists()


def test_a_warm_up_as_long_as_the_run_is_named(tmp_path, caplog):
    import logging

    caplog.set_level(logging.WARNING)
    run_pretraining(*arguments(tmp_path, max_steps=2, warmup_steps=2))
    assert "the warm-up (2 steps) is as long as the run or longer (2 steps): the learning rate never reaches its " \
           "peak nor decays. Shorten the warm-up or train longer." in caplog.text


def test_every_accepted_scheduler_runs_from_the_warm_up_and_length_alone():
    from transformers import get_scheduler

    from transformers_mixedae.training.arguments import SCHEDULERS

    for name in SCHEDULERS:
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        scheduler = get_scheduler(name, optimizer, num_warmup_steps=1, num_training_steps=4)
        optimizer.step()
        scheduler.step()
        assert scheduler.get_last_lr()[0] > 0, name


def test_the_hub_token_never_reaches_a_tracker(tmp_path):
    task = MaskedImageModelingTask(*arguments(tmp_path, hub_token="hf_SECRET"))
    config = task.tracker_config()
    assert "hub_token" not in config and "hf_SECRET" not in map(str, config.values())
    assert config["output_dir"] == str(tmp_path)  # the other hyper-parameters are still recorded


@pytest.mark.parametrize("task_class", [MaskedImageModelingTask, ImageClassificationTask, SemanticSegmentationTask])
def test_every_tasks_tracker_folder_is_one_overwrite_removes(task_class):
    assert task_class.tracker_project in RUN_RECORD_ARTIFACTS
