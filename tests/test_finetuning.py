"""Fine-tuning and linear probing behind examples/run_image_classification.py: tiny in-process runs."""

import json
import os
import shutil
import subprocess

import datasets
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModelForImageClassification

from helpers import TORCHRUN_TWO_PROCESSES, make_the_first_loss_nonfinite, tiny_mixedae_config
from tiny_runs import RUN_IMAGE_CLASSIFICATION
import transformers_mixedae  # noqa: F401
from transformers_mixedae.models.configuration_cae import CAEConfig
from transformers_mixedae.models.configuration_mixedae import MixedAEConfig
from transformers_mixedae.tasks.image_classification import (
    add_linear_probe_head,
    fold_linear_probe_head,
    layer_decay_parameter_groups,
    run_image_classification,
)
from transformers_mixedae.training.arguments import DataArguments, ModelArguments, TrainingArguments
from transformers_mixedae.tasks.image_classification_args import (
    ClassificationArguments,
    parse_classification_arguments,
)
from transformers_mixedae.models.modeling_cae import CAEForPreTraining
from transformers_mixedae.models.modeling_mixedae import MixedAEForImageClassification, MixedAEForPreTraining

datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0

TINY = dict(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
TINY_MIXEDAE = dict(TINY, decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
                    decoder_intermediate_size=32)
TINY_CAE = dict(TINY, decoder_hidden_size=32, regressor_num_layers=1, decoder_num_layers=1, decoder_num_attention_heads=4,
                num_masking_patches=8, mask_min_num_patches=2, target="pixels")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """Tiny pre-training checkpoints, as run_mim.py saves them."""
    root = tmp_path_factory.mktemp("pretrained")
    torch.manual_seed(0)
    MixedAEForPreTraining(MixedAEConfig(**TINY_MIXEDAE)).save_pretrained(root / "mixedae")
    CAEForPreTraining(CAEConfig(**TINY_CAE)).save_pretrained(root / "cae")
    return root


def arguments(checkpoint, output_dir, mode="finetune", **training):
    model_args = ModelArguments(model_name_or_path=str(checkpoint), attn_implementation="eager")
    data_args = DataArguments(max_train_samples=64, max_eval_samples=32)
    values = dict(output_dir=str(output_dir), per_device_train_batch_size=8, per_device_eval_batch_size=16,
                  max_steps=2, logging_steps=1, seed=3)
    values.update(training)
    classification = {key: values.pop(key) for key in list(values) if key in ClassificationArguments.__dataclass_fields__}
    return model_args, data_args, TrainingArguments(**values), ClassificationArguments(mode=mode, **classification)


@pytest.mark.parametrize("model_type", ["mixedae", "cae"])
@pytest.mark.parametrize("mode", ["finetune", "linear_probe"])
def test_run_ends_with_loadable_classifier_and_accuracy(tmp_path, pretrained, model_type, mode):
    checkpoint = pretrained / model_type
    probe = mode == "linear_probe"
    results = run_image_classification(
        *arguments(checkpoint, tmp_path, mode, save_steps=1 if probe else None, save_total_limit=None)
    )
    saved = json.loads((tmp_path / "all_results.json").read_text())
    for key in ("eval_accuracy", "eval_top5_accuracy", "train_loss", "train_samples_per_second"):
        assert saved[key] == pytest.approx(results[key]) and 0 <= saved[key] == saved[key], key
    assert saved["eval_samples"] == 32 and saved["eval_top5_accuracy"] >= saved["eval_accuracy"]
    card = (tmp_path / "README.md").read_text()
    assert "model-index" in card and ("linear probing" if mode == "linear_probe" else "fine-tuning") in card

    model = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert model.config.model_type == model_type and model.config.num_labels == 10
    assert model.config.id2label[0] == "T-shirt/top" or model.config.id2label[0]
    assert model(torch.randn(2, 3, 16, 16)).logits.shape == (2, 10)

    final = load_file(str(tmp_path / "model.safetensors"))
    if mode == "linear_probe":
        assert model.config.classifier_pooling == "cls"
        # The encoder is bit-identical to the pre-trained one; the head (BatchNorm folded into the Linear) trained.
        original = load_file(str(checkpoint / "model.safetensors"))
        prefix = f"{'vit' if model_type == 'mixedae' else 'cae'}."
        encoder = [name for name in final if name.startswith(prefix)]
        assert encoder and all(torch.equal(final[name], original[name]) for name in encoder)
        first = load_file(str(tmp_path / "checkpoints" / "step_1" / "model.safetensors"))
        last = load_file(str(tmp_path / "checkpoints" / "step_2" / "model.safetensors"))
        assert not torch.equal(first["classifier.1.weight"], last["classifier.1.weight"])
        assert all(torch.equal(first[name], last[name]) for name in encoder)
        assert set(name for name in final if not name.startswith(prefix)) == {"classifier.weight", "classifier.bias"}


def test_folded_probe_head_gives_the_same_logits():
    torch.manual_seed(0)
    model = MixedAEForImageClassification(MixedAEConfig(**TINY, num_labels=5, classifier_pooling="cls"))
    add_linear_probe_head(model)
    model.eval()
    norm = model.classifier[0]
    norm.running_mean.normal_()
    norm.running_var.uniform_(0.5, 2.0)
    pixels = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        expected = model(pixels).logits
        fold_linear_probe_head(model)
        assert isinstance(model.classifier, nn.Linear)
        torch.testing.assert_close(model(pixels).logits, expected, rtol=1e-5, atol=1e-5)
    assert not any(p.requires_grad for p in model.vit.parameters())


def test_layer_decay_groups_have_the_right_learning_rates():
    model = MixedAEForImageClassification(MixedAEConfig(**TINY, num_labels=3))
    groups = layer_decay_parameter_groups(model, weight_decay=0.05, learning_rate=1.0, layer_decay=0.5)
    lr_of = {id(p): (group["lr"], group["weight_decay"]) for group in groups for p in group["params"]}
    named = dict(model.named_parameters())
    assert len(lr_of) == sum(p.requires_grad for p in named.values())  # every trainable parameter exactly once
    expected = {  # L = 2: embeddings 0.5**3, block 0 0.5**2, block 1 0.5, head 1
        "vit.embeddings.cls_token": (0.125, 0.0),
        "vit.embeddings.patch_embeddings.projection.weight": (0.125, 0.05),
        "vit.layers.0.mlp.fc1.weight": (0.25, 0.05),
        "vit.layers.0.mlp.fc1.bias": (0.25, 0.0),
        "vit.layers.1.attention.q_proj.weight": (0.5, 0.05),
        "fc_norm.weight": (1.0, 0.0),  # mean pooling: fc_norm replaces the encoder's final norm (MAE)
        "classifier.weight": (1.0, 0.05),
    }
    for name, value in expected.items():
        assert lr_of[id(named[name])] == pytest.approx(value), name


def test_missing_label_column_is_named(tmp_path, pretrained):
    model_args, data_args, training_args, classification_args = arguments(pretrained / "mixedae", tmp_path)
    data_args.label_column_name = "category"
    with pytest.raises(ValueError, match="label column 'category' not found.*--label_column_name"):
        run_image_classification(model_args, data_args, training_args, classification_args)


def test_recipe_defaults_and_explicit_flags(tmp_path):
    _, _, training_args, args = parse_classification_arguments(
        ["--recipe", "cae", "--layer_decay", "0.75", "--output_dir", "x"])
    from transformers_mixedae.tasks.image_classification_args import resolve_recipe

    resolve_recipe(training_args, args, "mixedae")
    assert args.layer_decay == 0.75 and training_args.base_learning_rate == pytest.approx(8e-3 * 256 / 4096)
    assert args.label_smoothing == 0.1 and training_args.weight_decay == 0.05


def test_a_trained_head_follows_the_data_s_class_order_and_starts_anew_for_other_classes(tmp_path, caplog):
    from accelerate import PartialState

    from transformers_mixedae.tasks.image_classification import match_head_to_labels

    PartialState()  # accelerate's logger needs its state
    names = [f"class_{index}" for index in range(10)]
    config = tiny_mixedae_config(num_labels=10, id2label=dict(enumerate(names)))
    MixedAEForImageClassification(config).save_pretrained(tmp_path / "classifier")
    trained = MixedAEForImageClassification.from_pretrained(tmp_path / "classifier").classifier

    reordered = MixedAEForImageClassification.from_pretrained(tmp_path / "classifier")
    match_head_to_labels(reordered, str(tmp_path / "classifier"), names[::-1])
    assert torch.equal(reordered.classifier.weight, trained.weight.flip(0))
    assert torch.equal(reordered.classifier.bias, trained.bias.flip(0))

    other = MixedAEForImageClassification.from_pretrained(tmp_path / "classifier")
    caplog.set_level("WARNING")
    match_head_to_labels(other, str(tmp_path / "classifier"), [f"item_{index}" for index in range(10)])
    assert not torch.equal(other.classifier.weight, trained.weight)
    assert (f"{tmp_path / 'classifier'} was fine-tuned for other classes (class_0, class_1, class_2, class_3, "
            "class_4, class_5, class_6, class_7, and 2 more) than the data's (item_0, item_1, item_2, item_3, item_4, "
            "item_5, item_6, item_7, and 2 more): its classification head starts anew.") in caplog.text


def test_warm_up_is_the_recipes_epochs_capped_at_half_the_run_and_needs_a_known_epoch(caplog):
    from accelerate import PartialState

    from transformers_mixedae.tasks.image_classification import ImageClassificationTask

    PartialState()  # accelerate's logger needs its state
    task = object.__new__(ImageClassificationTask)  # only the arguments matter here
    task.training_args = TrainingArguments(output_dir="x", warmup_steps=None)
    task.classification_args = ClassificationArguments(warmup_epochs=5.0)
    assert task.warmup_steps(steps_per_epoch=10, max_train_steps=1000) == 50
    caplog.set_level("WARNING")
    assert task.warmup_steps(steps_per_epoch=10, max_train_steps=60) == 30
    assert "--warmup_epochs 5.0 is 50 steps, more than half of the 60-step run: warming up over 30" in caplog.text
    with pytest.raises(ValueError, match="--warmup_epochs 5.0 is not valid: an epoch's length is unknown .* pass "
                                         "--warmup_steps"):
        task.warmup_steps(steps_per_epoch=None, max_train_steps=1000)
    task.training_args = TrainingArguments(output_dir="x", warmup_steps=7)
    assert task.warmup_steps(steps_per_epoch=None, max_train_steps=1000) == 7
    task.training_args = TrainingArguments(output_dir="x", warmup_steps=None)
    task.classification_args = ClassificationArguments(warmup_epochs=0.0)
    assert task.warmup_steps(steps_per_epoch=None, max_train_steps=1000) == 0


def test_resumed_fine_tuning_ends_with_the_same_weights(tmp_path, pretrained):
    # 64 samples / batch 16 / 2 accumulation = 2 steps per epoch: the checkpoint at step 1 lies inside the first
    # epoch, step 3 is in the second; drop path (0.1) draws from the checkpointed RNG.
    settings = dict(max_steps=3, save_steps=1, gradient_accumulation_steps=2, save_total_limit=None,
                    per_device_train_batch_size=16)
    uninterrupted = tmp_path / "uninterrupted"
    run_image_classification(*arguments(pretrained / "mixedae", uninterrupted, **settings))
    resumed = tmp_path / "resumed"
    shutil.copytree(uninterrupted / "checkpoints" / "step_1", resumed / "checkpoints" / "step_1")
    run_image_classification(*arguments(pretrained / "mixedae", resumed, resume_from_checkpoint="latest", **settings))
    expected = load_file(str(uninterrupted / "model.safetensors"))
    actual = load_file(str(resumed / "model.safetensors"))
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


def test_finetuning_keeps_the_records_pretraining_keeps_and_logs_a_skipped_window_as_null(pretrained, tmp_path,
                                                                                           monkeypatch):
    from transformers_mixedae.tasks.image_classification import ImageClassificationTask
    from transformers_mixedae.training.records import read_train_log

    make_the_first_loss_nonfinite(monkeypatch, ImageClassificationTask)
    results = run_image_classification(*arguments(pretrained / "mixedae", tmp_path, max_steps=3))
    assert results["train_skipped_nonfinite_steps"] == 1
    log = read_train_log(tmp_path / "train_log.jsonl")
    assert [record["step"] for record in log] == [1, 2, 3]
    assert log[0]["loss"] is None and all(isinstance(record["loss"], float) for record in log[1:])
    report = json.loads((tmp_path / "skipped_samples.json").read_text())
    assert report["num_skipped"] == 0 and report["num_loaded"] == results["train_loaded_samples"] == 24


def test_linear_probe_with_lars_finishes_and_each_optimizer_is_built(tmp_path, pretrained):
    from transformers_mixedae.tasks.image_classification import ImageClassificationTask, build_classification_model
    from transformers_mixedae.training.optim import LARS

    results = run_image_classification(*arguments(pretrained / "mixedae", tmp_path, "linear_probe", optimizer="lars",
                                                  max_steps=3))
    assert results["train_steps"] == 3 and results["train_skipped_nonfinite_steps"] == 0
    assert 0 <= results["eval_accuracy"] <= 1 and results["train_loss"] == results["train_loss"]
    model = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert model.config.classifier_pooling == "cls" and isinstance(model.classifier, nn.Linear)

    expected = {("linear_probe", None): torch.optim.SGD, ("finetune", None): torch.optim.AdamW,
                ("linear_probe", "lars"): LARS, ("finetune", "sgd"): torch.optim.SGD,
                ("linear_probe", "adamw"): torch.optim.AdamW}
    for (mode, optimizer), optimizer_class in expected.items():
        model_args, data_args, training_args, classification_args = arguments(
            pretrained / "mixedae", tmp_path / "unused", mode, **({"optimizer": optimizer} if optimizer else {}))
        task = ImageClassificationTask(model_args, data_args, training_args, classification_args)
        model = build_classification_model(model_args, classification_args, "mixedae", ["a", "b"])
        built = task.build_optimizer(model, 0.1)
        assert type(built) is optimizer_class, (mode, optimizer)
        trained = {id(p) for group in built.param_groups for p in group["params"]}
        assert trained == {id(p) for p in model.parameters() if p.requires_grad}
        if mode == "linear_probe":
            assert {group["weight_decay"] for group in built.param_groups} == {0.0}
            assert [len(group["params"]) for group in built.param_groups] == [1, 1]  # the Linear's weight, its bias


def test_validation_labels_outside_the_training_classes_are_refused_before_training(tmp_path, pretrained):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    for split, labels in (("train", [0, 1, 2] * 4), ("validation", [0, 1, 2, 3])):
        images = [Image.new("RGB", (8, 8), (index * 20, 0, 0)) for index in range(len(labels))]
        folder = tmp_path / "data" / split
        folder.mkdir(parents=True)
        datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).to_parquet(
            str(folder / f"{split}-00000-of-00001.parquet"))
    model_args, data_args, training_args, classification_args = arguments(pretrained / "mixedae", tmp_path / "run")
    data_args.train_dir, data_args.validation_dir = str(tmp_path / "data" / "train"), str(tmp_path / "data" / "validation")
    with pytest.raises(ValueError, match=r"the validation split of .* has labels \[3\] that are not classes of the "
                                         r"training split \(0\.\.2\)"):
        run_image_classification(model_args, data_args, training_args, classification_args)
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before the first step


def test_a_non_square_model_is_fine_tuned_and_evaluated_at_its_own_shape(tmp_path):
    MixedAEForPreTraining(MixedAEConfig(**{**TINY_MIXEDAE, "image_size": [16, 32]})).save_pretrained(tmp_path / "wide")
    results = run_image_classification(*arguments(tmp_path / "wide", tmp_path / "run"))
    assert results["train_steps"] == 2 and 0.0 <= results["eval_accuracy"] <= 1.0
    assert AutoModelForImageClassification.from_pretrained(tmp_path / "run").config.image_size == [16, 32]


def test_labels_given_as_config_overrides_are_refused_naming_where_they_come_from(tmp_path, pretrained):
    model_args, data_args, training_args, classification_args = arguments(pretrained / "mixedae", tmp_path)
    model_args.config_overrides = "id2label={0:'a'},label2id={'a':0}"
    with pytest.raises(ValueError, match=r"--config_overrides sets id2label, label2id, which a classifier takes from "
                                         r"the dataset's labels \(10 classes here\)"):
        run_image_classification(model_args, data_args, training_args, classification_args)


def test_mixup_with_an_odd_batch_is_refused_before_anything_is_built(tmp_path, pretrained):
    with pytest.raises(ValueError, match=r"--per_device_train_batch_size 7 is not valid: it must be even when "
                                         r"Mixup/CutMix is on"):
        run_image_classification(*arguments(pretrained / "mixedae", tmp_path / "run", per_device_train_batch_size=7,
                                            mixup=0.8, cutmix=1.0))
    assert not (tmp_path / "run").exists()


def test_mixedae_fine_tuning_on_two_processes_trains_every_parameter_it_has(tmp_path, pretrained):
    # A real launch (torchrun, gloo): DDP refuses a parameter that gets no gradient (the segment embeddings, which
    # only pre-training's mixing uses, were one), at the second step.
    command = [*TORCHRUN_TWO_PROCESSES, str(RUN_IMAGE_CLASSIFICATION), "--model_name_or_path", str(pretrained / "mixedae"),
               "--output_dir", str(tmp_path / "run"), "--max_steps", "3", "--max_train_samples", "64",
               "--max_eval_samples", "16", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8",
               "--logging_steps", "1", "--attn_implementation", "eager"]
    completed = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                               timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert json.loads((tmp_path / "run" / "all_results.json").read_text())["train_steps"] == 3


def test_re_fine_tuning_at_another_size_resamples_a_trained_position_table_and_keeps_a_fixed_one_exact(tmp_path,
                                                                                                     pretrained):
    from accelerate import PartialState

    from transformers_mixedae.models.vit_layers import interpolate_position_embedding, sincos_2d_position_embedding
    from transformers_mixedae.tasks.image_classification import build_classification_model

    PartialState(cpu=True)  # the run's logger needs it, as under a training run
    def built_at_32_px(checkpoint):
        model_args = ModelArguments(model_name_or_path=str(checkpoint), image_size=32)
        return build_classification_model(model_args, ClassificationArguments(recipe="mae"), "mixedae", ["a", "b", "c"])

    # After pre-training the table is the fixed sin-cos one: the 8 x 8 table is computed, not resampled.
    table = built_at_32_px(pretrained / "mixedae").vit.embeddings.position_embeddings
    assert torch.equal(table, sincos_2d_position_embedding(8, 8, 32, row_first=False))
    # After fine-tuning at 16 px the table is trained: it is resampled (before, it was reset to sin-cos).
    classifier = MixedAEForImageClassification(MixedAEConfig(**TINY, num_labels=3))
    with torch.no_grad():
        classifier.vit.embeddings.position_embeddings.add_(torch.randn_like(classifier.vit.embeddings.position_embeddings))
    classifier.save_pretrained(tmp_path / "fine_tuned")
    trained = classifier.vit.embeddings.position_embeddings.detach()
    table = built_at_32_px(tmp_path / "fine_tuned").vit.embeddings.position_embeddings
    assert torch.equal(table, interpolate_position_embedding(trained, (4, 4), (8, 8)))
    assert table.requires_grad  # still trained, as MAE's fine-tuning does


def test_a_fine_tuned_head_follows_the_datas_class_names(tmp_path):
    """Same classes in another order: the rows follow the names. Other classes: a fresh head. Before, the trained
    head was reused row for row whenever the number of classes matched."""
    from accelerate import PartialState

    from transformers_mixedae.tasks.image_classification import build_classification_model

    PartialState(cpu=True)
    torch.manual_seed(0)
    classifier = MixedAEForImageClassification(
        MixedAEConfig(**TINY, num_labels=3, id2label={0: "cat", 1: "dog", 2: "fox"})
    )
    with torch.no_grad():
        classifier.classifier.bias.normal_()  # as after training: the rows of the bias differ
    classifier.save_pretrained(tmp_path / "fine_tuned")
    trained = classifier.classifier.weight.detach().clone(), classifier.classifier.bias.detach().clone()

    def head_for(label_names):
        model_args = ModelArguments(model_name_or_path=str(tmp_path / "fine_tuned"))
        model = build_classification_model(model_args, ClassificationArguments(recipe="mae"), "mixedae", label_names)
        return model.classifier.weight.detach(), model.classifier.bias.detach()

    weight, bias = head_for(["cat", "dog", "fox"])
    assert torch.equal(weight, trained[0]) and torch.equal(bias, trained[1])
    weight, bias = head_for(["fox", "cat", "dog"])
    assert torch.equal(weight, trained[0][[2, 0, 1]]) and torch.equal(bias, trained[1][[2, 0, 1]])
    weight, bias = head_for(["car", "bus", "van"])
    assert not torch.isclose(weight, trained[0]).any() and torch.equal(bias, torch.zeros(3))  # xavier, zero bias
