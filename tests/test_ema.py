"""The model EMA of the training engine (training/ema.py), as image classification turns it on (--model_ema)."""

import json
import shutil
import sys

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoImageProcessor, AutoModelForImageClassification

from helpers import fake_hub, make_the_first_loss_nonfinite
from test_finetuning import arguments, pretrained  # noqa: F401 - the fixture
from transformers_mixedae.tasks.image_classification import run_image_classification
from transformers_mixedae.tasks.image_classification_args import ClassificationArguments
from transformers_mixedae.training.checkpointing import CheckpointError
from transformers_mixedae.training.ema import ModelEma


def test_two_updates_match_the_hand_computed_average():
    model = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[4.0, 8.0]]))
        model[0].bias.fill_(2.0)
    ema = ModelEma(model, decay=0.75)
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.0, 4.0]]))
        model[0].bias.fill_(6.0)
        model[1].running_mean.fill_(4.0)
        model[1].num_batches_tracked.fill_(5)
    ema.update(model)  # 0.75 * old + 0.25 * new
    assert torch.equal(ema.module[0].weight, torch.tensor([[3.0, 7.0]]))
    assert torch.equal(ema.module[0].bias, torch.tensor([3.0]))
    assert torch.equal(ema.module[1].running_mean, torch.tensor([1.0]))  # buffers are averaged too
    assert ema.module[1].num_batches_tracked.item() == 5  # counters are copied
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[8.0, 0.0]]))
        model[0].bias.fill_(-2.0)
    ema.update(model)
    assert torch.equal(ema.module[0].weight, torch.tensor([[4.25, 5.25]]))
    assert torch.equal(ema.module[0].bias, torch.tensor([1.75]))
    assert torch.equal(model[0].weight, torch.tensor([[8.0, 0.0]]))  # the model itself is untouched
    assert ema.updates == 2 and ema.module[0].weight.device == model[0].weight.device

    restored = ModelEma(nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1)), decay=0.75)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 2
    assert all(torch.equal(a, b) for a, b in zip(restored.module.state_dict().values(),
                                                 ema.module.state_dict().values()))


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, float("nan")])
def test_decay_outside_zero_one_is_refused(decay):
    with pytest.raises(ValueError, match=rf"--model_ema_decay {decay!r} is not valid: a number in \(0, 1\)"):
        ClassificationArguments(model_ema=True, model_ema_decay=decay)


def test_ema_eval_without_ema_is_refused():
    with pytest.raises(ValueError, match="--model_ema_eval True is not valid: .*pass --model_ema too"):
        ClassificationArguments(model_ema_eval=True)


EMA_SETTINGS = dict(max_steps=3, save_steps=1, gradient_accumulation_steps=2, save_total_limit=None,
                    per_device_train_batch_size=16, model_ema=True, model_ema_decay=0.5)


def test_resumed_run_ends_with_the_same_ema_weights_and_a_loadable_ema_folder(tmp_path, pretrained):  # noqa: F811
    uninterrupted = tmp_path / "uninterrupted"
    results = run_image_classification(*arguments(pretrained / "mixedae", uninterrupted, model_ema_eval=True,
                                                  **EMA_SETTINGS))
    resumed = tmp_path / "resumed"
    shutil.copytree(uninterrupted / "checkpoints" / "step_1", resumed / "checkpoints" / "step_1")
    run_image_classification(*arguments(pretrained / "mixedae", resumed, resume_from_checkpoint="latest",
                                        model_ema_eval=True, **EMA_SETTINGS))
    expected = load_file(str(uninterrupted / "ema" / "model.safetensors"))
    actual = load_file(str(resumed / "ema" / "model.safetensors"))
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    final = load_file(str(uninterrupted / "model.safetensors"))
    assert not torch.equal(final["classifier.weight"], expected["classifier.weight"])  # an average, not a copy

    saved = json.loads((uninterrupted / "all_results.json").read_text())
    for key in ("eval_ema_accuracy", "eval_ema_top5_accuracy", "eval_ema_loss", "eval_accuracy"):
        assert saved[key] == pytest.approx(results[key]), key
    assert saved["eval_ema_samples"] == 32
    own = json.loads((uninterrupted / "ema" / "all_results.json").read_text())
    assert own["ema_decay"] == 0.5 and own["ema_updates"] == 3
    assert own["eval_accuracy"] == pytest.approx(saved["eval_ema_accuracy"])

    model = AutoModelForImageClassification.from_pretrained(uninterrupted / "ema")
    assert model.config.model_type == "mixedae" and model.config.num_labels == 10
    assert AutoImageProcessor.from_pretrained(uninterrupted / "ema").size
    assert torch.equal(model.state_dict()["classifier.weight"], expected["classifier.weight"])


def test_resume_with_another_decay_is_refused_unless_allowed(tmp_path, pretrained):  # noqa: F811
    settings = dict(EMA_SETTINGS, max_steps=1)
    run_image_classification(*arguments(pretrained / "mixedae", tmp_path / "first", **settings))
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "first" / "checkpoints" / "step_1", resumed / "checkpoints" / "step_1")
    changed = dict(settings, model_ema_decay=0.9, max_steps=2)
    with pytest.raises(CheckpointError, match=r"model_ema_decay: 0\.5 in the checkpoint, 0\.9 now.*--allow_recipe_change"):
        run_image_classification(*arguments(pretrained / "mixedae", resumed, resume_from_checkpoint="latest", **changed))
    # max_steps changes the recipe too: allowed along with the decay.
    run_image_classification(*arguments(pretrained / "mixedae", resumed, resume_from_checkpoint="latest",
                                        allow_recipe_change=True, **changed))
    assert json.loads((resumed / "ema" / "all_results.json").read_text())["ema_updates"] == 2


def test_turning_the_ema_on_or_off_at_a_resume_is_refused_even_when_changes_are_allowed(tmp_path, pretrained):  # noqa: F811
    with_ema = dict(EMA_SETTINGS, max_steps=1)
    without_ema = {key: value for key, value in with_ema.items() if not key.startswith("model_ema")}
    for first, second, message in ((with_ema, without_ema, "written with --model_ema, and this run is without it"),
                                   (without_ema, with_ema, "written without --model_ema, and this run is with it")):
        first_run, resumed = tmp_path / f"first_{len(first)}", tmp_path / f"resumed_{len(first)}"
        run_image_classification(*arguments(pretrained / "mixedae", first_run, **first))
        shutil.copytree(first_run / "checkpoints" / "step_1", resumed / "checkpoints" / "step_1")
        with pytest.raises(CheckpointError, match=message + ".*even with --allow_recipe_change"):
            run_image_classification(*arguments(pretrained / "mixedae", resumed, resume_from_checkpoint="latest",
                                                allow_recipe_change=True, **dict(second, max_steps=2)))


def test_skipped_steps_do_not_update_the_ema_and_the_probe_ema_is_folded(tmp_path, pretrained, monkeypatch):  # noqa: F811
    from transformers_mixedae.tasks.image_classification import ImageClassificationTask

    make_the_first_loss_nonfinite(monkeypatch, ImageClassificationTask)
    results = run_image_classification(*arguments(pretrained / "cae", tmp_path, "linear_probe", max_steps=3,
                                                  model_ema=True, model_ema_decay=0.5))
    assert results["train_skipped_nonfinite_steps"] == 1 and "eval_ema_accuracy" not in results
    assert json.loads((tmp_path / "ema" / "all_results.json").read_text())["ema_updates"] == 2
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "ema")
    assert isinstance(model.classifier, nn.Linear) and model.config.classifier_pooling == "cls"
    ema, final = load_file(str(tmp_path / "ema" / "model.safetensors")), load_file(str(tmp_path / "model.safetensors"))
    assert ema.keys() == final.keys()
    encoder = [name for name in ema if name.startswith("cae.")]
    assert encoder and all(torch.equal(ema[name], final[name]) for name in encoder)  # frozen: its average is itself


def test_push_to_hub_uploads_the_finished_folder_with_the_ema_under_the_full_id_and_no_token(
    tmp_path, pretrained, monkeypatch  # noqa: F811
):
    calls = fake_hub(monkeypatch)
    monkeypatch.setattr(sys, "argv", ["examples/run_image_classification.py", "--hub_token", "hf_SECRET",
                                      "--hub_token=hf_SECRET", "--push_to_hub", "True"])
    output_dir = tmp_path / "my_run"
    run_image_classification(*arguments(pretrained / "mixedae", output_dir, push_to_hub=True, hub_token="hf_SECRET",
                                        model_ema_eval=True, **EMA_SETTINGS))
    assert calls["token"] == "hf_SECRET" and calls["uploaded"] == ("user/my_run", output_dir)
    files = calls["files"]
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md", "all_results.json",
            "ema/model.safetensors", "ema/README.md"} <= set(files)
    assert not any(name.startswith("checkpoints/") for name in files)  # optimizer states stay local
    card = calls["file_contents"]["README.md"].decode()
    assert "hf_SECRET" not in card and "--hub_token '<HUB_TOKEN>' '--hub_token=<HUB_TOKEN>'" in card
    assert 'repo_id = "user/my_run"' in card and "name: my_run" in card
    assert "eval_ema_accuracy" in card  # the card uploaded is the one written after the EMA evaluation
    assert card.count("Top-5 accuracy") == 1  # eval_ema_top5_accuracy is the EMA's, not the model's
