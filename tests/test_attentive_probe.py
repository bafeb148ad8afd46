"""CAE's attentive probe: the attentive classifier head (`classifier_head="attentive"`, `AttentivePooler`) of both
families, its config checks, save / load / Auto class / pipeline, the frozen encoder, and `--mode attentive_probe`
through the task and examples/run_image_classification.py."""

import importlib.util
import json
import shutil

import pytest
import torch
from helpers import tiny_cae_config, tiny_mixedae_config
from safetensors.torch import load_file
from tiny_checkpoints import random_image, tiny_processor_kwargs
from transformers import AutoModelForImageClassification, pipeline

from test_finetuning import arguments, pretrained  # noqa: F401 - the fixture
from tiny_runs import RUN_IMAGE_CLASSIFICATION
from transformers_mixedae import (
    CAEForImageClassification,
    CAEImageProcessorPil,
    MixedAEForImageClassification,
    MixedAEImageProcessorPil,
)
from transformers_mixedae.models.modeling_masked_vit import ATTENTIVE_BATCH_NORM_EPS, AttentivePooler
from transformers_mixedae.tasks.image_classification import (
    base_encoder,
    prepare_attentive_probe,
    run_image_classification,
)
from transformers_mixedae.tasks.image_classification_args import ClassificationArguments, parse_classification_arguments

LABELS = {0: "cat", 1: "dog", 2: "fish"}
ATTENTIVE = dict(classifier_head="attentive", classifier_pooling="cls", id2label=LABELS,
                 label2id={name: index for index, name in LABELS.items()})
FAMILIES = {
    "mixedae": (MixedAEForImageClassification, tiny_mixedae_config, MixedAEImageProcessorPil),
    "cae": (CAEForImageClassification, tiny_cae_config, CAEImageProcessorPil),
}


def attentive_classifier(family, seed=0, **overrides):
    model_class, config, _ = FAMILIES[family]
    torch.manual_seed(seed)
    return model_class(config(**ATTENTIVE, **overrides))


def reference_pooling(pooler: AttentivePooler, tokens: torch.Tensor) -> torch.Tensor:
    """CAE's AttentiveBlock + LP_BatchNorm written out: softmax(q k^T / sqrt(d)) v per head, projection, batch norm
    with the batch statistics (training)."""
    batch_size, length, width = tokens.shape
    heads, size = pooler.num_heads, width // pooler.num_heads
    norm = torch.nn.functional.layer_norm
    query = norm(pooler.query_token, (width,), pooler.norm_query.weight, pooler.norm_query.bias, pooler.norm_query.eps)
    query = (query @ pooler.query_weight.T + pooler.query_bias).reshape(1, heads, size)
    keys = norm(tokens, (width,), pooler.norm_key.weight, pooler.norm_key.bias, pooler.norm_key.eps)
    keys = keys @ pooler.key_weight.T
    values = norm(tokens, (width,), pooler.norm_value.weight, pooler.norm_value.bias, pooler.norm_value.eps)
    values = values @ pooler.value_weight.T + pooler.value_bias
    keys, values = keys.reshape(batch_size, length, heads, size), values.reshape(batch_size, length, heads, size)
    weights = torch.einsum("hd,blhd->bhl", query[0], keys).div(size**0.5).softmax(-1)
    pooled = torch.einsum("bhl,blhd->bhd", weights, values).reshape(batch_size, width)
    pooled = pooled @ pooler.output_weight.T + pooler.output_bias
    mean, variance = pooled.mean(0), pooled.var(0, unbiased=False)
    return (pooled - mean) / (variance + ATTENTIVE_BATCH_NORM_EPS).sqrt()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_head_is_caes_attentive_block_with_its_initialisation(family):
    model = attentive_classifier(family, attentive_num_heads=2)
    pooler = model.attentive_pooler
    assert isinstance(pooler, AttentivePooler) and model.fc_norm is None and pooler.num_heads == 2
    shapes = {name: tuple(parameter.shape) for name, parameter in pooler.named_parameters()}
    assert shapes == {
        "query_token": (1, 1, 32), "query_weight": (32, 32), "key_weight": (32, 32), "value_weight": (32, 32),
        "query_bias": (32,), "value_bias": (32,), "output_weight": (32, 32), "output_bias": (32,),
        "norm_query.weight": (32,), "norm_query.bias": (32,), "norm_key.weight": (32,), "norm_key.bias": (32,),
        "norm_value.weight": (32,), "norm_value.bias": (32,),
    }
    assert not pooler.batch_norm.affine and pooler.batch_norm.eps == 1e-5
    # CAE: zero query token, normal(0.02) projections, zero biases.
    assert torch.equal(pooler.query_token, torch.zeros(1, 1, 32)) and torch.equal(pooler.output_bias, torch.zeros(32))
    assert 0.015 < pooler.key_weight.std() < 0.025 and torch.equal(pooler.batch_norm.running_var, torch.ones(32))
    tokens = torch.randn(5, 17, 32)
    with torch.no_grad():
        pooler.query_token.normal_()  # a trained query: the attention is no longer uniform
        torch.testing.assert_close(pooler.train()(tokens), reference_pooling(pooler, tokens), atol=1e-5, rtol=1e-5)
    logits = model(torch.randn(4, 3, 32, 32)).logits
    assert logits.shape == (4, 3)


@pytest.mark.parametrize("overrides, message", [
    (dict(classifier_head="mlp"), r"classifier_head='mlp' must be one of \('linear', 'attentive'\)"),
    (dict(classifier_head="attentive", classifier_pooling="mean"),
     r"classifier_head='attentive' with classifier_pooling='mean'.*set classifier_pooling='cls'"),
    (dict(**ATTENTIVE, attentive_num_heads=3), r"attentive_num_heads=3 must be at least 1 and divide hidden_size=32"),
    (dict(**ATTENTIVE, attentive_num_heads=0), r"attentive_num_heads=0 must be at least 1"),
])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_bad_head_configs_are_refused_naming_the_field(family, overrides, message):
    with pytest.raises(Exception, match=message):
        FAMILIES[family][1](**overrides)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_only_the_head_gets_gradients_once_prepared(family):
    model = attentive_classifier(family)
    prepare_attentive_probe(model)
    assert 0.008 < model.classifier.weight.std() < 0.012 and torch.equal(model.classifier.bias, torch.zeros(3))
    model(torch.randn(4, 3, 32, 32), labels=torch.tensor([0, 1, 2, 0])).loss.backward()
    encoder = set(base_encoder(model).parameters())
    for name, parameter in model.named_parameters():
        if parameter in encoder:
            assert not parameter.requires_grad and parameter.grad is None, name
        else:
            assert parameter.requires_grad and parameter.grad is not None, name


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_saved_head_reloads_with_the_auto_class_and_runs_in_the_pipeline(tmp_path, family):
    model = attentive_classifier(family)
    model.train()
    model(torch.randn(8, 3, 32, 32))  # running statistics of the BatchNorm move away from (0, 1)
    model.eval()
    processor = FAMILIES[family][2](**tiny_processor_kwargs())
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert type(loaded) is type(model) and loaded.config.classifier_head == "attentive"
    pixels = processor([random_image(0), random_image(1)], return_tensors="pt").pixel_values
    with torch.no_grad():
        expected = model(pixels).logits
        torch.testing.assert_close(loaded(pixels).logits, expected, atol=0, rtol=0)
    assert not torch.equal(loaded.attentive_pooler.batch_norm.running_var, torch.ones(32))
    predictions = pipeline("image-classification", model=str(tmp_path))(random_image(0), top_k=3)
    assert [p["label"] for p in predictions] == [LABELS[int(i)] for i in expected[0].argsort(descending=True)]


def test_the_task_probes_with_a_frozen_encoder_and_saves_a_loadable_classifier(tmp_path, pretrained):  # noqa: F811
    checkpoint = pretrained / "cae"
    results = run_image_classification(*arguments(checkpoint, tmp_path, "attentive_probe", max_steps=3))
    saved = json.loads((tmp_path / "all_results.json").read_text())
    assert saved["eval_accuracy"] == pytest.approx(results["eval_accuracy"]) and saved["eval_samples"] == 32
    assert "attentive probing" in (tmp_path / "README.md").read_text()
    model = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert model.config.classifier_head == "attentive" and model.config.classifier_pooling == "cls"
    assert model.config.drop_path_rate == 0.0
    # The encoder is the pre-training checkpoint's, untouched; the head trained.
    start = load_file(str(checkpoint / "model.safetensors"))
    final = load_file(str(tmp_path / "model.safetensors"))
    encoder_keys = [key for key in final if key.startswith("cae.")]
    assert encoder_keys and all(torch.equal(final[key], start[key]) for key in encoder_keys)
    assert final["attentive_pooler.batch_norm.num_batches_tracked"] == 3
    assert final["attentive_pooler.query_token"].abs().sum() > 0


def test_a_resumed_attentive_probe_ends_with_the_same_weights_and_statistics(tmp_path, pretrained):  # noqa: F811
    settings = dict(max_steps=3, save_steps=1, save_total_limit=None)
    uninterrupted, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    run_image_classification(*arguments(pretrained / "mixedae", uninterrupted, "attentive_probe", **settings))
    shutil.copytree(uninterrupted / "checkpoints" / "step_1", resumed / "checkpoints" / "step_1")
    run_image_classification(*arguments(pretrained / "mixedae", resumed, "attentive_probe",
                                        resume_from_checkpoint="latest", **settings))
    expected = load_file(str(uninterrupted / "model.safetensors"))
    actual = load_file(str(resumed / "model.safetensors"))
    assert expected.keys() == actual.keys() and "attentive_pooler.batch_norm.running_var" in expected
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


def test_the_recipe_is_caes_attentive_probe():
    from transformers_mixedae.tasks.image_classification_args import RECIPE_DEFAULTS

    for recipe in ("cae", "mae"):
        defaults = RECIPE_DEFAULTS[("attentive_probe", recipe)]
        # lr 0.4 at batch 8192, SGD, no decay, no smoothing, 10 warm-up epochs.
        assert defaults["base_learning_rate"] * 8192 / 256 == pytest.approx(0.4)
        assert (defaults["optimizer"], defaults["weight_decay"], defaults["label_smoothing"], defaults["warmup_epochs"],
                defaults["layer_decay"], defaults["drop_path_rate"]) == ("sgd", 0.0, 0.0, 10.0, 1.0, 0.0)


def test_the_example_runs_an_attentive_probe_from_the_command_line(tmp_path, pretrained):  # noqa: F811
    spec = importlib.util.spec_from_file_location("run_image_classification", RUN_IMAGE_CLASSIFICATION)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    results = script.main([
        "--model_name_or_path", str(pretrained / "mixedae"), "--mode", "attentive_probe", "--output_dir",
        str(tmp_path), "--max_train_samples", "32", "--max_eval_samples", "16", "--per_device_train_batch_size", "8",
        "--max_steps", "2", "--seed", "1", "--attn_implementation", "eager",
    ])
    assert 0 <= results["eval_accuracy"] <= results["eval_top5_accuracy"] <= 1
    assert AutoModelForImageClassification.from_pretrained(tmp_path).attentive_pooler is not None


@pytest.mark.parametrize("preset", ["linear_probe_imagenet_mae", "finetune_imagenet_cae",
                                    "attentive_probe_imagenet_cae", "finetune_imagenet_mae"])
def test_the_imagenet_presets_parse_with_their_comment(preset):
    path = RUN_IMAGE_CLASSIFICATION.parent / "configs" / f"{preset}.json"
    assert "top-1" in json.loads(path.read_text())["_comment"]
    _, _, training, classification = parse_classification_arguments([str(path)])
    assert isinstance(classification, ClassificationArguments)
    batch = training.per_device_train_batch_size * training.gradient_accumulation_steps
    expected = {"linear_probe_imagenet_mae": ("linear_probe", "lars", 16384, 90),
                "finetune_imagenet_cae": ("finetune", None, 512, 100),
                "attentive_probe_imagenet_cae": ("attentive_probe", "sgd", 1024, 90),
                "finetune_imagenet_mae": ("finetune", None, 128, 100)}[preset]
    assert (classification.mode, classification.optimizer, batch, training.num_train_epochs) == expected


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_native_export_refuses_the_attentive_head(tmp_path, family):
    from transformers_mixedae.hub.export import export_to_transformers

    model = attentive_classifier(family)
    model.save_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match=r"attentive head \(classifier_head='attentive'\).*feature-extraction"):
        export_to_transformers(tmp_path / "model", tmp_path / "native", task="image-classification")
    export_to_transformers(tmp_path / "model", tmp_path / "encoder")  # the encoder alone exports


REMOTE_ATTENTIVE = """
import torch
from transformers import AutoModelForImageClassification, pipeline
from PIL import Image

outputs = {}
for family in ("mixedae", "cae"):
    model = AutoModelForImageClassification.from_pretrained(family, trust_remote_code=True).eval()
    outputs[family + "_class"] = type(model.attentive_pooler).__name__
    with torch.no_grad():
        outputs[family] = model(torch.load("pixels.pt")).logits
    labels = pipeline("image-classification", model=family, trust_remote_code=True)(Image.open("image.png"), top_k=3)
    outputs[family + "_labels"] = [prediction["label"] for prediction in labels]
torch.save(outputs, "outputs.pt")
"""


def test_the_attentive_head_works_as_remote_code_without_the_package(tmp_path):
    from tiny_checkpoints import randomise_
    from without_package import run_without_package

    from transformers_mixedae.hub.remote_code import save_pretrained_with_remote_code

    pixels = torch.randn(2, 3, 32, 32)
    torch.save(pixels, tmp_path / "pixels.pt")
    random_image(3).save(tmp_path / "image.png")
    expected = {}
    for family in FAMILIES:
        model = randomise_(attentive_classifier(family)).eval()
        save_pretrained_with_remote_code(model, tmp_path / family,
                                         image_processor=FAMILIES[family][2](**tiny_processor_kwargs()))
        with torch.no_grad():
            expected[family] = model(pixels).logits
    run_without_package(REMOTE_ATTENTIVE, tmp_path)
    remote = torch.load(tmp_path / "outputs.pt")
    for family in FAMILIES:
        assert remote[family + "_class"] == "AttentivePooler"
        assert set(remote[family + "_labels"]) == set(LABELS.values())
        torch.testing.assert_close(remote[family], expected[family], atol=1e-5, rtol=0)
