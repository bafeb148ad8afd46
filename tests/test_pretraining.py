"""The pre-training pipeline behind examples/run_mim.py: end to end, resume, two processes, signals, errors."""

import json
import logging
import os
import shutil
import signal
import subprocess
import warnings
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForPreTraining

import transformers_mixedae  # noqa: F401
from transformers_mixedae.tasks.masked_image_modeling import run_pretraining
from transformers_mixedae.training.arguments import (
    DataArguments,
    ModelArguments,
    PretrainingEvaluationArguments,
    TrainingArguments,
    parse_config_overrides,
    parse_run_arguments,
)
from transformers_mixedae.tasks.masked_image_modeling_data import SeededTransform
from transformers_mixedae.training.checkpointing import CheckpointError, list_checkpoints

from helpers import TORCHRUN_TWO_PROCESSES  # noqa: E402
from tiny_runs import TINY_CAE, TINY_MIXEDAE  # noqa: E402

datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0



def arguments(output_dir, model_type="mixedae", **training):
    model_args = ModelArguments(
        model_type=model_type,
        config_overrides=TINY_MIXEDAE if model_type == "mixedae" else TINY_CAE,
        image_size=16,
        patch_size=4,
        attn_implementation="eager",
    )
    data_args = DataArguments(max_train_samples=64, max_eval_samples=32, max_eval_train_samples=64)
    values = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        max_steps=4,
        logging_steps=1,
        seed=3,
    )
    values.update(training)
    evaluation = {key: values.pop(key) for key in list(values) if key in PretrainingEvaluationArguments.__dataclass_fields__}
    evaluation.setdefault("linear_probe_epochs", 2)
    return model_args, data_args, TrainingArguments(**values), PretrainingEvaluationArguments(**evaluation)


@pytest.mark.parametrize("model_type", ["mixedae", "cae"])
def test_end_to_end_produces_loadable_model_pictures_and_results(tmp_path, model_type, caplog):
    caplog.set_level(logging.INFO, logger="transformers_mixedae")
    results = run_pretraining(*arguments(tmp_path, model_type, save_steps=2, eval_steps=4))
    evaluation_lines = [record.getMessage() for record in caplog.records if "Evaluation at step" in record.getMessage()]
    assert len(evaluation_lines) == 1 and "Evaluation at step 4: " in evaluation_lines[0]
    logged = [item.split(" ")[0] for item in evaluation_lines[0].split("Evaluation at step 4: ")[1].split(", ")]
    assert logged == sorted(key for key in results if key.startswith("eval_"))  # every metric, in order
    probe_keys = {"eval_homologous_topk_accuracy", "eval_homologous_topk_accuracy_foreground",
                  "eval_homologous_contrastive_loss"}
    assert (probe_keys <= set(results)) == (model_type == "mixedae")
    for key in ("eval_knn_accuracy", "eval_linear_probe_accuracy", "eval_loss", "train_loss",
                "train_samples_per_second"):
        assert key in results and results[key] == results[key], key  # present and not NaN
    saved = json.loads((tmp_path / "all_results.json").read_text())
    assert saved == pytest.approx(results)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "preprocessor_config.json").exists()
    assert (tmp_path / "README.md").exists()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_2", "step_4"]
    pictures = sorted(p.name for p in (tmp_path / "visualizations").iterdir())
    assert "step_4_reconstruction.png" in pictures
    if model_type == "mixedae":
        assert "step_4_homologous_attention.png" in pictures
    model = AutoModelForPreTraining.from_pretrained(tmp_path)
    assert model.config.model_type == model_type and model.config.image_size == 16
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_cae_reconstruction_pictures_undo_the_targets_normalisation_only_when_it_was_applied(
    tmp_path, monkeypatch, norm_pix_loss
):
    from transformers_mixedae.tasks import masked_image_modeling_data

    drawn = []
    original = masked_image_modeling_data.save_reconstruction_grid

    def recording(*args, **kwargs):
        drawn.append(kwargs["norm_pix_loss"])
        return original(*args, **kwargs)

    monkeypatch.setattr(masked_image_modeling_data, "save_reconstruction_grid", recording)
    model_args, *rest = arguments(tmp_path, "cae", max_steps=2, eval_steps=2)
    model_args.config_overrides = f"{TINY_CAE},norm_pix_loss={norm_pix_loss}"  # pixel targets, raw or per patch
    run_pretraining(model_args, *rest)
    assert drawn == [norm_pix_loss]


def final_weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


@pytest.mark.parametrize("model_type", ["mixedae", "cae"])
def test_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one(tmp_path, model_type):
    # 64 samples / batch 8 = 8 batches per epoch, 2 accumulation steps: 4 optimizer steps per epoch; 6 steps
    # cross an epoch boundary, and the checkpoint at step 3 lies in the middle of the first epoch.
    settings = dict(max_steps=6, save_steps=3, gradient_accumulation_steps=2,
                    save_total_limit=None)
    uninterrupted = tmp_path / "uninterrupted"
    run_pretraining(*arguments(uninterrupted, model_type, **settings))

    resumed = tmp_path / "resumed"
    shutil.copytree(uninterrupted / "checkpoints" / "step_3", resumed / "checkpoints" / "step_3")
    run_pretraining(*arguments(resumed, model_type, resume_from_checkpoint="latest", **settings))

    expected, actual = final_weights(uninterrupted), final_weights(resumed)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


def test_a_run_resumed_at_the_end_of_an_epoch_reads_the_next_epoch_whole(tmp_path):
    # 4 optimizer steps per epoch (see above): the checkpoint at step 4 holds the loader's position after the epoch's
    # last batch. Loading it must not carry that exhausted position into the next epoch, which would then be empty.
    settings = dict(max_steps=6, save_steps=4, gradient_accumulation_steps=2)
    uninterrupted = tmp_path / "uninterrupted"
    run_pretraining(*arguments(uninterrupted, **settings))

    resumed = tmp_path / "resumed"
    shutil.copytree(uninterrupted / "checkpoints" / "step_4", resumed / "checkpoints" / "step_4")
    results = run_pretraining(*arguments(resumed, resume_from_checkpoint="latest", **settings))
    assert results["train_steps"] == 6
    expected, actual = final_weights(uninterrupted), final_weights(resumed)
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


def test_adam_beta2_left_out_or_given_as_the_models_default_is_one_recipe_on_resume(tmp_path):
    # MixedAE's default beta2 is 0.95; a checkpoint records the argument as given (None when left out).
    def resume(source: Path, folder: str, **given):
        shutil.copytree(source / "checkpoints" / "step_2", tmp_path / folder / "checkpoints" / "step_2")
        return run_pretraining(*arguments(tmp_path / folder, resume_from_checkpoint="latest", save_steps=2, **given))

    left_out = tmp_path / "left_out"
    run_pretraining(*arguments(left_out, save_steps=2))
    given = tmp_path / "given"
    run_pretraining(*arguments(given, save_steps=2, adam_beta2=0.95))
    assert torch.equal(final_weights(left_out)["decoder.decoder_pred.weight"],
                       final_weights(given)["decoder.decoder_pred.weight"])

    assert resume(left_out, "left_out_then_given", adam_beta2=0.95)["train_steps"] == 4
    assert resume(given, "given_then_left_out")["train_steps"] == 4
    with pytest.raises(CheckpointError, match=r"would change the recipe \(adam_beta2"):
        resume(left_out, "another_beta2", adam_beta2=0.999)


def test_sigterm_writes_a_checkpoint_and_exits_then_latest_resumes(tmp_path, monkeypatch):
    original_call = SeededTransform.__call__
    calls = {"count": 0}

    def call_then_signal(self, image):
        calls["count"] += 1
        if calls["count"] == 20:  # during the third batch of 8
            os.kill(os.getpid(), signal.SIGTERM)
        return original_call(self, image)

    monkeypatch.setattr(SeededTransform, "__call__", call_then_signal)
    results = run_pretraining(*arguments(tmp_path, max_steps=6))
    assert results["stopped_by_signal"] is True and results["train_steps"] == 3
    assert (tmp_path / "checkpoints" / "step_3").is_dir()
    assert not (tmp_path / "model.safetensors").exists()

    monkeypatch.setattr(SeededTransform, "__call__", original_call)
    results = run_pretraining(*arguments(tmp_path, max_steps=6, resume_from_checkpoint="latest"))
    assert results["train_steps"] == 6 and (tmp_path / "model.safetensors").exists()


def test_incomplete_checkpoint_is_never_picked_as_latest(tmp_path):
    run_pretraining(*arguments(tmp_path, max_steps=2, save_steps=2))
    half_written = tmp_path / "checkpoints" / ".tmp-step_9"
    half_written.mkdir()
    from transformers_mixedae.training.checkpointing import resolve_checkpoint

    assert resolve_checkpoint("latest", tmp_path).name == "step_2"
    with pytest.raises(ValueError, match="incomplete checkpoint"):
        resolve_checkpoint(str(half_written), tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a checkpoint folder"):
        resolve_checkpoint(str(tmp_path / "nope"), tmp_path)


def test_unwritable_output_dir_fails_before_training(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    with pytest.raises(PermissionError, match="is not writable.*nothing was trained"):
        run_pretraining(*arguments(blocked / "run"))


def test_batch_size_must_be_a_multiple_of_the_group_size(tmp_path):
    with pytest.raises(ValueError, match="per_device_train_batch_size 6 must be a multiple of the MixedAE group size 4"):
        run_pretraining(*arguments(tmp_path, per_device_train_batch_size=6))


def test_unknown_config_override_is_named(tmp_path):
    model_args, data_args, training_args, evaluation_args = arguments(tmp_path)
    model_args.config_overrides = "hidden_sise=32"
    with pytest.raises(ValueError, match=r"names 'hidden_sise', which is not a field of MixedAEConfig\. "
                                         r"Did you mean 'hidden_size'\?"):
        run_pretraining(model_args, data_args, training_args, evaluation_args)
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_cae_tokens_without_tokenizer_says_how_to_fix(tmp_path):
    model_args, data_args, training_args, evaluation_args = arguments(tmp_path, "cae")
    model_args.config_overrides = TINY_CAE.replace("target=pixels", "target=tokens")
    with pytest.raises(ValueError, match="--cae_tokenizer_path .* target=pixels"):
        run_pretraining(model_args, data_args, training_args, evaluation_args)


def test_json_config_gives_defaults_and_flags_override_them(tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"model_type": "cae", "image_size": 32, "per_device_train_batch_size": 16}))
    model_args, data_args, training_args, _ = parse_run_arguments([str(config), "--image_size", "48", "--streaming"])
    assert model_args.model_type == "cae" and model_args.image_size == 48
    assert training_args.per_device_train_batch_size == 16 and data_args.streaming is True
    config.write_text(json.dumps({"image_sise": 32}))
    with pytest.raises(ValueError, match=r"unknown arguments \['image_sise'\]"):
        parse_run_arguments([str(config)])


def test_raw_pixel_and_random_encoder_baselines(tmp_path):
    from accelerate import Accelerator

    from transformers_mixedae.tasks.masked_image_modeling import build_pretraining_model
    from transformers_mixedae.tasks.masked_image_modeling_data import PretrainingData, RawPixelFeatures

    model_args, data_args, training_args, evaluation_args = arguments(tmp_path)
    model = build_pretraining_model(model_args)
    data = PretrainingData(model, model_args, data_args, training_args, Accelerator(cpu=True), evaluation_args)
    pixels = data.frozen_feature_metrics(RawPixelFeatures())
    encoder = data.frozen_feature_metrics(model)
    for results in (pixels, encoder):
        assert 0.0 <= results["eval_knn_accuracy"] <= 1.0 and 0.0 <= results["eval_linear_probe_accuracy"] <= 1.0
    # Ten balanced Fashion-MNIST classes: raw pixels are far above chance even with a 64-image bank.
    assert pixels["eval_knn_accuracy"] > 0.3


def test_parse_config_overrides():
    assert parse_config_overrides("a=1,b=0.5,c=[1,2],d=pixels,e=true,f=none") == {
        "a": 1, "b": 0.5, "c": [1, 2], "d": "pixels", "e": True, "f": None,
    }
    with pytest.raises(ValueError, match="is not of the form key=value"):
        parse_config_overrides("hidden_size")


def launch_two_processes(output_dir, *mode):
    """tests/scripts/two_process_pretraining.py under a real launch (torchrun, gloo), as `accelerate launch
    --multi_gpu --num_processes 2` does on a CPU machine."""
    script = Path(__file__).parent / "scripts" / "two_process_pretraining.py"
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    completed = subprocess.run(
        [*TORCHRUN_TWO_PROCESSES, str(script), str(output_dir), *mode],
        env=environment, capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]


def test_two_cpu_processes_see_disjoint_data_and_keep_identical_weights(tmp_path):
    launch_two_processes(tmp_path)
    seen = [json.loads((tmp_path / f"seen_{rank}.json").read_text()) for rank in (0, 1)]
    # The first 16 images each rank augmented are its training batches (2 steps x 8); evaluation comes after.
    train_seen = [set(images[:16]) for images in seen]
    assert len(train_seen[0]) == 16 and len(train_seen[1]) == 16
    assert not train_seen[0] & train_seen[1]
    weights = [json.loads((tmp_path / f"weights_{rank}.json").read_text()) for rank in (0, 1)]
    assert weights[0] == weights[1]
    results = json.loads((tmp_path / "all_results.json").read_text())
    assert results["train_steps"] == 2 and results["train_loaded_samples"] == 32  # both ranks, summed


def test_sigterm_on_one_rank_stops_every_rank_at_the_same_step_with_a_checkpoint(tmp_path):
    # Before, the signalled rank went into the checkpoint's collectives alone: gloo failed with mismatched sizes.
    launch_two_processes(tmp_path, "sigterm_rank_1")
    results = [json.loads((tmp_path / f"results_{rank}.json").read_text()) for rank in (0, 1)]
    assert [(result["stopped_by_signal"], result["train_steps"]) for result in results] == [(True, 2), (True, 2)]
    assert list_checkpoints(tmp_path) == [tmp_path / "checkpoints" / "step_2"]


def test_failed_final_save_leaves_the_previous_final_model_untouched(tmp_path, monkeypatch):
    from accelerate import Accelerator

    from transformers_mixedae import MixedAEImageProcessorPil
    from transformers_mixedae.tasks.masked_image_modeling import build_pretraining_model
    from transformers_mixedae.training import final_save

    model_args, _, training_args, _ = arguments(tmp_path)
    model = build_pretraining_model(model_args)
    previous = {"model.safetensors": b"previous weights", "all_results.json": b'{"eval_loss": 1.0}'}
    for name, content in previous.items():
        (tmp_path / name).write_bytes(content)

    def failing_processor_save(*args, **kwargs):
        raise OSError("disk full while writing the image processor")

    monkeypatch.setattr(MixedAEImageProcessorPil, "save_pretrained", failing_processor_save)
    with pytest.raises(OSError, match="disk full"):
        final_save.save_final_model(Accelerator(cpu=True), model, MixedAEImageProcessorPil(), tmp_path,
                                    {"eval_loss": 0.5})
    assert {name: (tmp_path / name).read_bytes() for name in previous} == previous
    assert not (tmp_path / ".tmp-final").exists() and not (tmp_path / "config.json").exists()


def test_overwriting_the_folder_of_the_model_the_run_starts_from_is_refused(tmp_path):
    from transformers_mixedae.training.output_folders import OutputDirectoryError

    run_pretraining(*arguments(tmp_path, max_steps=1))
    before = sorted(path.name for path in tmp_path.iterdir())
    model_args, data_args, training_args, evaluation_args = arguments(tmp_path, max_steps=1, overwrite_output_dir=True)
    model_args.model_type, model_args.config_overrides, model_args.model_name_or_path = None, None, str(tmp_path)
    with pytest.raises(OutputDirectoryError, match="would delete the model this run reads"):
        run_pretraining(model_args, data_args, training_args, evaluation_args)
    assert sorted(path.name for path in tmp_path.iterdir()) == before and (tmp_path / "model.safetensors").exists()


def test_the_final_model_card_sets_a_users_readme_aside(tmp_path):
    from accelerate import Accelerator

    from transformers_mixedae import MixedAEImageProcessorPil
    from transformers_mixedae.tasks.masked_image_modeling import build_pretraining_model
    from transformers_mixedae.training import final_save
    from transformers_mixedae.training.output_folders import is_users_readme

    model_args, _, training_args, _ = arguments(tmp_path)
    (tmp_path / "README.md").write_text("# Notes on this run\n")
    final_save.save_final_model(Accelerator(cpu=True), build_pretraining_model(model_args),
                                MixedAEImageProcessorPil(), tmp_path, {"train_loss": 0.5})
    assert (tmp_path / "README.previous.md").read_text() == "# Notes on this run\n"
    assert not is_users_readme(tmp_path / "README.md")  # the model card


def test_a_failing_model_card_comes_after_the_model_is_saved_and_says_so(tmp_path, monkeypatch):
    from accelerate import Accelerator

    from transformers_mixedae import MixedAEForPreTraining, MixedAEImageProcessorPil
    from transformers_mixedae.tasks.masked_image_modeling import build_pretraining_model
    from transformers_mixedae.training import final_save

    model_args, _, training_args, _ = arguments(tmp_path)
    model = build_pretraining_model(model_args)

    def failing_card(*args, **kwargs):
        raise OSError("disk full while writing the model card")

    monkeypatch.setattr(final_save, "_write_model_card", failing_card)
    with pytest.raises(final_save.FinalStepError, match=r"model card failed \(OSError: disk full.*The trained model, "
                                                         r"its image processor and all_results.json are saved in "):
        final_save.save_final_model(Accelerator(cpu=True), model, MixedAEImageProcessorPil(), tmp_path,
                                    {"train_loss": 0.5})
    reloaded = MixedAEForPreTraining.from_pretrained(tmp_path)
    assert all(torch.equal(reloaded.state_dict()[name], value) for name, value in model.state_dict().items())
    assert json.loads((tmp_path / "all_results.json").read_text()) == {"train_loss": 0.5}
    assert not list(tmp_path.glob(".tmp-*"))


def test_a_failing_final_evaluation_keeps_the_trained_model_and_its_training_results(tmp_path, monkeypatch):
    from transformers_mixedae import MixedAEForPreTraining
    from transformers_mixedae.training.final_save import FinalStepError
    from transformers_mixedae.tasks.masked_image_modeling_data import PretrainingData

    def failing_evaluation(self, model, step):
        raise RuntimeError("out of memory in the kNN bank")

    monkeypatch.setattr(PretrainingData, "evaluate", failing_evaluation)
    with pytest.raises(FinalStepError, match=r"final evaluation failed \(RuntimeError: out of memory in the kNN "
                                             r"bank\)\. The trained model, its image processor and the training "
                                             r"results \(all_results.json\) were saved to "):
        run_pretraining(*arguments(tmp_path, max_steps=2))
    results = json.loads((tmp_path / "all_results.json").read_text())
    assert results["train_steps"] == 2 and "eval_loss" not in results
    MixedAEForPreTraining.from_pretrained(tmp_path)  # a complete, loadable model
    assert (tmp_path / "preprocessor_config.json").exists() and (tmp_path / "README.md").exists()


def test_report_to_tensorboard_writes_the_training_and_evaluation_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_pretraining(*arguments(tmp_path, max_steps=2, eval_steps=2, report_to="tensorboard"))
    event_files = list(tmp_path.rglob("events.out.tfevents.*"))
    assert event_files, f"no TensorBoard event file under {tmp_path}"
    scalars = set()
    for event_file in event_files:
        accumulator = EventAccumulator(str(event_file))
        accumulator.Reload()
        scalars.update(accumulator.Tags()["scalars"])
    assert {"train/loss", "train/learning_rate", "eval_knn_accuracy", "eval_linear_probe_accuracy"} <= scalars, scalars


def test_the_saved_image_processor_is_derived_from_the_saved_model_config(tmp_path):
    from transformers import AutoImageProcessor

    model_args, data_args, training_args, evaluation_args = arguments(tmp_path, "cae", max_steps=1)
    model_args.config_overrides += ",mask_type=random,mask_max_num_patches=6"
    run_pretraining(model_args, data_args, training_args, evaluation_args)
    model = AutoModelForPreTraining.from_pretrained(tmp_path)
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    config = model.config
    settings = {name: getattr(processor, name) for name in (
        "patch_size", "num_masking_patches", "mask_type", "mask_min_num_patches", "mask_max_num_patches")}
    assert settings == {"patch_size": config.patch_size, "num_masking_patches": 8, "mask_type": "random",
                        "mask_min_num_patches": 2, "mask_max_num_patches": 6}
    assert processor.crop_size == {"height": config.image_size, "width": config.image_size}
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    inputs = processor(image, return_bool_masked_pos=True, return_tensors="pt")
    assert inputs["bool_masked_pos"].shape == (1, config.num_patches) and int(inputs["bool_masked_pos"].sum()) == 8
    assert torch.isfinite(model(**inputs).loss)


def test_former_flag_names_still_work_with_a_warning_and_name_the_new_one(tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"checkpointing_steps": 5, "checkpoints_total_limit": None}))
    with pytest.warns(FutureWarning, match=r"--max_train_steps is deprecated; use --max_steps"):
        model_args, _, training_args, _ = parse_run_arguments(
            [str(config), "--max_train_steps", "7", "--activation_checkpointing"])
    assert (training_args.max_steps, training_args.save_steps, training_args.save_total_limit) == (7, 5, None)
    assert model_args.gradient_checkpointing is True
    with pytest.raises(ValueError, match=r"^--max_train_steps and --max_steps set the same thing; pass only "
                                         r"--max_steps\.$"):
        parse_run_arguments(["--max_train_steps", "7", "--max_steps", "8"])
    with pytest.raises(ValueError, match=r"^--checkpoints_total_limit and --save_total_limit set the same thing"):
        parse_run_arguments(["--save_total_limit", "2", "--checkpoints_total_limit=3"])  # was: 3, silently


def test_a_flag_under_either_name_overrides_a_json_value_under_either_name(tmp_path):
    # Before, a deprecated flag over a JSON value (or a new flag over a JSON deprecated key) was called a conflict.
    old_in_file, new_in_file = tmp_path / "old.json", tmp_path / "new.json"
    old_in_file.write_text(json.dumps({"max_train_steps": 10, "checkpointing_steps": 4}))
    new_in_file.write_text(json.dumps({"max_steps": 10, "save_steps": 4}))
    for config in (old_in_file, new_in_file):
        for flags in (["--max_steps", "20", "--save_steps", "5"], ["--max_train_steps", "20", "--checkpointing_steps=5"]):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                training_args = parse_run_arguments([str(config), *flags])[2]
            assert (training_args.max_steps, training_args.save_steps) == (20, 5), (config.name, flags)
    both = tmp_path / "both.json"
    both.write_text(json.dumps({"max_train_steps": 10, "max_steps": 10}))
    with pytest.raises(ValueError, match=r"both.json sets both max_train_steps and max_steps, the same thing"):
        parse_run_arguments([str(both)])


def test_optional_numbers_take_none_on_the_command_line_as_null_in_json(tmp_path, capsys):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"save_total_limit": 3, "save_steps": 7}))
    training_args = parse_run_arguments([str(config), "--save_total_limit", "none", "--save_steps=null"])[2]
    assert (training_args.save_total_limit, training_args.save_steps) == (None, None)  # every checkpoint kept, none due
    assert parse_run_arguments(["--save_total_limit", "4"])[2].save_total_limit == 4
    with pytest.raises(SystemExit) as exit_info:  # any other word is still not a number
        parse_run_arguments(["--save_total_limit", "all"])
    assert exit_info.value.code == 2  # argparse's usage error
    assert "--save_total_limit/--save-total-limit: invalid int value: 'all'" in capsys.readouterr().err


def test_the_engine_gives_the_model_its_optimizer_step_for_the_annealed_topk(tmp_path, caplog):
    """`homologous_topk_schedule="linear"` reads the optimizer step from the loop (`TrainingTask.before_step`): with
    2 micro-batches per step both see the step's number, and the model's fallback counter (and its warning) is unused."""
    from transformers_mixedae.training import TrainingCallback

    seen = []

    class RecordStep(TrainingCallback):
        def on_log(self, state, logs):
            model = state.accelerator.unwrap_model(state.model)
            seen.append((state.progress.completed_steps, model.vit.homologous_training_step))

    model_args, data_args, training_args, evaluation_args = arguments(
        tmp_path / "run", gradient_accumulation_steps=2, per_device_train_batch_size=4, max_steps=3)
    model_args.config_overrides += ',homologous_topk_schedule="linear",homologous_topk_anneal_steps=3'
    with caplog.at_level(logging.WARNING):
        run_pretraining(model_args, data_args, training_args, evaluation_args, callbacks=[RecordStep()])
    assert seen == [(1, 0), (2, 1), (3, 2)]  # logged after step s + 1, which ran with step s's k
    assert "counting training forward passes" not in caplog.text
