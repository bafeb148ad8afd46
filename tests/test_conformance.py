"""One contract, checked for both models (MixedAE and CAE, tiny configs): safetensors save/load round trip with
identical outputs, the Auto classes, output shapes and output fields of the three model classes, eager attention ==
SDPA, gradient checkpointing (same loss and gradients), native export (ViT / BEiT give the same features and
logits) and remote code (a saved folder loads with `trust_remote_code` where the package is not installed)."""

import dataclasses
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from helpers import single_torch_thread, tiny_cae_config, tiny_mixedae_config  # noqa: F401 (fixture)
from tiny_checkpoints import random_image, randomise_, tiny_processor_kwargs
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
    BeitForImageClassification,
    BeitModel,
    PretrainedConfig,
    ViTForImageClassification,
    ViTModel,
)
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import ImageClassifierOutput
from without_package import run_without_package

import transformers_mixedae  # noqa: F401  (registers the Auto classes)
from transformers_mixedae import (
    CAEConfig,
    CAEForImageClassification,
    CAEForPreTraining,
    CAEImageProcessor,
    CAEImageProcessorPil,
    CAEModel,
    MixedAEConfig,
    MixedAEForImageClassification,
    MixedAEForPreTraining,
    MixedAEImageProcessor,
    MixedAEImageProcessorPil,
    MixedAEModel,
)
from transformers_mixedae.hub.export import export_to_transformers
from transformers_mixedae.hub.remote_code import save_pretrained_with_remote_code

pytestmark = pytest.mark.usefixtures("single_torch_thread")
ATOL = 1e-5
BATCH, NUM_LABELS = 4, 3
# Every model's outputs carry these fields; each family adds its own (listed in `Family.*_extra_fields`).
MODEL_FIELDS = {"last_hidden_state", "pooler_output", "hidden_states", "attentions"}
PRETRAINING_FIELDS = {"loss", "logits", "hidden_states", "attentions"}


@dataclass(frozen=True)
class Family:
    name: str
    config: Callable[..., PretrainedConfig]
    config_class: type
    model: type
    pretraining: type
    classification: type
    processors: tuple[type, ...]  # (torchvision, PIL)
    native_model: type
    native_classifier: type
    num_patches: int
    pretraining_logits_shape: tuple[int, ...]
    model_extra_fields: frozenset
    pretraining_extra_fields: frozenset
    pretraining_extra_inputs: Callable[[], dict]

    def pretraining_inputs(self) -> dict:
        """A batch with everything random given explicitly (noise / mask), so that two calls agree exactly."""
        torch.manual_seed(1)
        return {"pixel_values": torch.randn(BATCH, 3, 32, 32), **self.pretraining_extra_inputs()}


def cae_masked_inputs() -> dict:
    """6 of 16 patches masked in every image (the same count per row, as CAE requires), token targets."""
    bool_masked_pos = torch.zeros(BATCH, 16, dtype=torch.bool)
    for row in bool_masked_pos:
        row[torch.randperm(16)[:6]] = True
    return {"bool_masked_pos": bool_masked_pos, "labels": torch.randint(0, 50, (BATCH, 16))}


FAMILIES = [
    Family(
        name="mixedae", config=tiny_mixedae_config, config_class=MixedAEConfig, model=MixedAEModel,
        pretraining=MixedAEForPreTraining, classification=MixedAEForImageClassification,
        processors=(MixedAEImageProcessor, MixedAEImageProcessorPil), native_model=ViTModel,
        native_classifier=ViTForImageClassification, num_patches=64,
        pretraining_logits_shape=(BATCH, 64, 4 * 4 * 3),  # every patch of every image, in pixels
        model_extra_fields=frozenset({"homologous_topk_accuracy", "homologous_contrastive_loss"}),
        pretraining_extra_fields=frozenset({"reconstruction_loss", "homologous_contrastive_loss", "mask",
                                            "ids_restore", "homologous_topk_accuracy"}),
        pretraining_extra_inputs=lambda: {"noise": torch.rand(1, 64)},  # one group of g = 4 images
    ),
    Family(
        name="cae", config=tiny_cae_config, config_class=CAEConfig, model=CAEModel, pretraining=CAEForPreTraining,
        classification=CAEForImageClassification, processors=(CAEImageProcessor, CAEImageProcessorPil),
        native_model=BeitModel, native_classifier=BeitForImageClassification, num_patches=16,
        pretraining_logits_shape=(BATCH, 6, 50),  # the masked patches, over the token vocabulary
        model_extra_fields=frozenset(),
        pretraining_extra_fields=frozenset({"main_loss", "align_loss", "predicted_latents", "target_latents",
                                            "bool_masked_pos"}),
        pretraining_extra_inputs=cae_masked_inputs,
    ),
]
KINDS = ("model", "pretraining", "classification")


@pytest.fixture(params=FAMILIES, ids=[family.name for family in FAMILIES])
def family(request) -> Family:
    return request.param


def build(family: Family, kind: str, **overrides) -> torch.nn.Module:
    """A randomised tiny model of `kind` (all weights non-trivial), in eval mode."""
    torch.manual_seed(0)
    if kind == "classification":
        overrides.setdefault("num_labels", NUM_LABELS)
    return randomise_(getattr(family, kind)(family.config(**overrides)))


def inputs_for(family: Family, kind: str) -> dict:
    inputs = family.pretraining_inputs()
    return inputs if kind == "pretraining" else {"pixel_values": inputs["pixel_values"]}


def forward(model, inputs: dict, **kwargs):
    with torch.no_grad():
        return model(**inputs, **kwargs)


def tensors_of(outputs) -> dict[str, torch.Tensor]:
    return {key: value for key, value in outputs.items() if isinstance(value, torch.Tensor)}


# ---------------------------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip_is_safetensors_and_gives_identical_outputs(family, kind, tmp_path):
    model = build(family, kind)
    model.save_pretrained(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    # transformers picks SDPA when loading unless told otherwise: the same (eager) kernels give bit-identical outputs.
    loaded = getattr(family, kind).from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert type(loaded.config) is family.config_class
    assert {**loaded.config.to_dict(), "_name_or_path": ""} == model.config.to_dict()
    expected_state, state = model.state_dict(), loaded.state_dict()
    assert state.keys() == expected_state.keys()
    assert all(torch.equal(state[name], expected_state[name]) for name in state), [
        name for name in state if not torch.equal(state[name], expected_state[name])]
    inputs = inputs_for(family, kind)
    expected, actual = tensors_of(forward(model, inputs)), tensors_of(forward(loaded, inputs))
    assert actual.keys() == expected.keys() and expected
    assert all(torch.equal(actual[key], expected[key]) for key in expected), kind


@pytest.mark.parametrize("kind", KINDS)
def test_fixed_position_tables_stay_fixed_after_loading(family, kind, tmp_path):
    # Pre-training keeps every sin-cos table fixed (MAE, CAE); fine-tuning trains the encoder's for MixedAE (MAE's
    # recipe) and keeps it fixed for CAE (CAE's). Loading must not change which, though the loader hands tensors back
    # as trainable parameters: a trainable parameter without gradient stops DDP (find_unused_parameters=False).
    overrides = {"decoder_layer_scale_init_value": 0.0} if family.name == "cae" else {}
    fresh = build(family, kind, **overrides)
    fresh.save_pretrained(tmp_path)
    loaded = getattr(family, kind).from_pretrained(tmp_path)
    flags = {name: parameter.requires_grad for name, parameter in fresh.named_parameters()}
    assert {name: parameter.requires_grad for name, parameter in loaded.named_parameters()} == flags
    for model in (fresh, loaded):
        model.train()
        outputs = model(**inputs_for(family, kind))
        loss = outputs.loss if kind == "pretraining" else sum(value.float().sum() for value in tensors_of(outputs).values())
        loss.backward()
        trained = {name for name, parameter in model.named_parameters()
                   if parameter.grad is not None and parameter.grad.abs().sum() > 0}
        if kind != "model":  # the trained kinds (a bare MixedAEModel without mixing leaves its segment table out)
            assert [name for name, parameter in model.named_parameters()
                    if parameter.requires_grad and parameter.grad is None] == [], type(model).__name__
        fixed = [name for name, _ in model.named_parameters()
                 if name.endswith(("position_embeddings", "decoder_pos_embed"))
                 or ("regressor" in name and name.endswith(("lambda_1", "lambda_2")))]  # CAE's scale frozen at 1
        trains_positions = family.name == "mixedae" and kind == "classification"
        assert all(flags[name] == (name in trained) for name in fixed)
        assert fixed and {name for name in fixed if name in trained} == (
            {name for name in fixed if name.endswith("embeddings.position_embeddings")} if trains_positions else set()
        ), type(model).__name__


# ---------------------------------------------------------------------------------------------- Auto classes
def test_auto_classes_resolve_to_our_classes(family, tmp_path):
    config = AutoConfig.for_model(family.name, **{
        key: value for key, value in family.config().to_diff_dict().items() if key != "model_type"})
    assert type(config) is family.config_class
    assert type(AutoModel.from_config(config)) is family.model
    assert type(AutoModelForPreTraining.from_config(config)) is family.pretraining
    assert type(AutoModelForImageClassification.from_config(config)) is family.classification

    # From a saved pre-training folder: its encoder loads through AutoModel with every weight.
    pretraining = build(family, "pretraining")
    pretraining.save_pretrained(tmp_path)
    family.processors[1](**tiny_processor_kwargs()).save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is family.config_class
    assert type(AutoModelForPreTraining.from_pretrained(tmp_path)) is family.pretraining
    encoder = AutoModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert type(encoder) is family.model
    pixel_values = inputs_for(family, "model")
    assert torch.equal(forward(encoder, pixel_values).last_hidden_state,
                       forward(pretraining.base_model, pixel_values).last_hidden_state)
    assert type(AutoImageProcessor.from_pretrained(tmp_path)) in family.processors
    assert type(AutoImageProcessor.from_pretrained(tmp_path, backend="pil")) is family.processors[1]


# ---------------------------------------------------------------------------------------------- outputs
def output_fields(outputs) -> set[str]:
    return {field.name for field in dataclasses.fields(outputs)}


def test_model_outputs_shapes_and_fields(family):
    model = build(family, "model")
    outputs = forward(model, inputs_for(family, "model"), output_hidden_states=True, output_attentions=True)
    assert type(outputs).__name__ == f"{family.model.__name__}Output"
    assert output_fields(outputs) == MODEL_FIELDS | family.model_extra_fields
    sequence = 1 + family.num_patches  # [CLS] + every patch
    assert outputs.last_hidden_state.shape == (BATCH, sequence, 32)
    assert torch.equal(outputs.pooler_output, outputs.last_hidden_state[:, 0])
    assert len(outputs.hidden_states) == 2 + 1 and all(
        hidden.shape == (BATCH, sequence, 32) for hidden in outputs.hidden_states)
    assert len(outputs.attentions) == 2 and all(
        attention.shape == (BATCH, 4, sequence, sequence) for attention in outputs.attentions)
    torch.testing.assert_close(outputs.attentions[0].sum(-1), torch.ones(BATCH, 4, sequence))


def test_pretraining_outputs_shapes_and_fields(family):
    model = build(family, "pretraining")
    outputs = forward(model, inputs_for(family, "pretraining"), output_hidden_states=True)
    assert type(outputs).__name__ == f"{family.pretraining.__name__}Output"
    assert output_fields(outputs) == PRETRAINING_FIELDS | family.pretraining_extra_fields
    assert outputs.loss.shape == () and torch.isfinite(outputs.loss) and outputs.loss.dtype == torch.float32
    assert outputs.logits.shape == family.pretraining_logits_shape
    assert len(outputs.hidden_states) == 2 + 1 and outputs.attentions is None


def test_classification_outputs_shapes_and_fields(family):
    model = build(family, "classification")
    labels = torch.tensor([0, 1, 2, 1])
    outputs = forward(model, {**inputs_for(family, "classification"), "labels": labels})
    assert type(outputs) is ImageClassifierOutput
    assert outputs.logits.shape == (BATCH, NUM_LABELS)
    torch.testing.assert_close(outputs.loss, torch.nn.functional.cross_entropy(outputs.logits, labels))
    assert model.config.num_labels == NUM_LABELS and len(model.config.id2label) == NUM_LABELS


# ---------------------------------------------------------------------------------------------- attention
@pytest.mark.parametrize("kind", KINDS)
def test_eager_and_sdpa_attention_agree(family, kind):
    eager = build(family, kind)
    sdpa = getattr(family, kind)(family.config(attn_implementation="sdpa", **(
        {"num_labels": NUM_LABELS} if kind == "classification" else {}))).eval()
    sdpa.load_state_dict(eager.state_dict())
    assert eager.config._attn_implementation == "eager" and sdpa.config._attn_implementation == "sdpa"
    inputs = inputs_for(family, kind)
    expected, actual = tensors_of(forward(eager, inputs)), tensors_of(forward(sdpa, inputs))
    assert actual.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], atol=ATOL, rtol=0, msg=key)


# ---------------------------------------------------------------------------------------------- checkpointing
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(family):
    model = build(family, "pretraining").train()
    layers = [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]
    calls = []
    for layer in layers:  # a layer's own hooks stay outside the checkpoint, its children's run again in backward
        next(layer.children()).register_forward_hook(lambda module, args, output: calls.append(module))
    inputs = inputs_for(family, "pretraining")

    def loss_and_gradients():
        model.zero_grad()
        calls.clear()
        loss = model(**inputs).loss
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    expected_loss, expected_gradients = loss_and_gradients()
    plain_calls = len(calls)
    model.activation_checkpointing_enable()  # transformers 5's name (gradient_checkpointing_enable is deprecated)
    assert model.is_activation_checkpointing
    loss, gradients = loss_and_gradients()
    assert len(calls) > plain_calls >= len(layers)  # the layers really ran again in the backward pass
    torch.testing.assert_close(loss, expected_loss, atol=0, rtol=0)
    assert gradients.keys() == expected_gradients.keys() and len(gradients) > 10
    for name, gradient in gradients.items():
        torch.testing.assert_close(gradient, expected_gradients[name], atol=1e-6, rtol=1e-5, msg=name)


# ---------------------------------------------------------------------------------------------- export
def test_native_export_gives_the_same_features_and_logits(family, tmp_path):
    pretraining = build(family, "pretraining")
    folder = export_to_transformers(pretraining, tmp_path / "features")
    exported = AutoModel.from_pretrained(folder).eval()
    assert type(exported) is family.native_model
    inputs = inputs_for(family, "model")
    ours, theirs = forward(pretraining.base_model, inputs), forward(exported, inputs)
    torch.testing.assert_close(theirs.last_hidden_state, ours.last_hidden_state, atol=ATOL, rtol=0)
    torch.testing.assert_close(theirs.pooler_output, ours.pooler_output, atol=ATOL, rtol=0)

    classifier = build(family, "classification", classifier_pooling="cls")
    folder = export_to_transformers(classifier, tmp_path / "classifier", task="image-classification")
    exported = AutoModelForImageClassification.from_pretrained(folder).eval()
    assert type(exported) is family.native_classifier
    torch.testing.assert_close(forward(exported, inputs).logits, forward(classifier, inputs).logits, atol=ATOL,
                               rtol=0)


# ---------------------------------------------------------------------------------------------- remote code
# Runs without the package, once for both families: loads each folder through the Auto classes with
# trust_remote_code and saves the outputs.
REMOTE_SCRIPT = """
import torch
from PIL import Image
from transformers import (
    AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification, AutoModelForPreTraining,
)

inputs = torch.load("inputs.pt")
image = Image.open("image.png")
outputs = {"package_hidden": PACKAGE_HIDDEN}
for name, family_inputs in inputs.items():
    pretraining_dir, classification_dir = f"{name}/pretraining", f"{name}/classification"
    result = outputs[name] = {}
    try:
        AutoModel.from_pretrained(pretraining_dir)
    except ValueError as error:
        result["refused_without_trust"] = "trust_remote_code" in str(error)
    result["config_module"] = type(AutoConfig.from_pretrained(pretraining_dir, trust_remote_code=True)).__module__
    with torch.no_grad():
        models = {
            "model": AutoModel.from_pretrained(pretraining_dir, trust_remote_code=True),
            "pretraining": AutoModelForPreTraining.from_pretrained(pretraining_dir, trust_remote_code=True),
            "classification": AutoModelForImageClassification.from_pretrained(classification_dir,
                                                                              trust_remote_code=True),
        }
        for kind, model in models.items():
            model_outputs = model.eval()(**family_inputs[kind])
            result[kind] = {
                "class": type(model).__name__,
                "module": type(model).__module__,
                "outputs": {key: value for key, value in model_outputs.items() if isinstance(value, torch.Tensor)},
            }
    processor = AutoImageProcessor.from_pretrained(pretraining_dir, trust_remote_code=True)
    result["processor_class"] = type(processor).__name__
    result["processed"] = processor(image, return_tensors="pt").pixel_values
torch.save(outputs, "outputs.pt")
"""


@pytest.fixture(scope="module")
def remote_run(tmp_path_factory, single_torch_thread):  # noqa: F811 (fixture)
    """Save both families with remote code, run the script once without the package; returns (expected, remote)."""
    workdir = tmp_path_factory.mktemp("remote")
    image = random_image()
    image.save(workdir / "image.png")
    expected, inputs = {}, {}
    for family in FAMILIES:
        processor = family.processors[1](**tiny_processor_kwargs())
        pretraining, classification = build(family, "pretraining"), build(family, "classification")
        save_pretrained_with_remote_code(pretraining, workdir / family.name / "pretraining", image_processor=processor)
        save_pretrained_with_remote_code(classification, workdir / family.name / "classification",
                                         image_processor=processor)
        inputs[family.name] = {kind: inputs_for(family, kind) for kind in KINDS}
        models = {"model": pretraining.base_model, "pretraining": pretraining, "classification": classification}
        expected[family.name] = {
            "outputs": {kind: tensors_of(forward(model, inputs[family.name][kind])) for kind, model in models.items()},
            "processed": processor(image, return_tensors="pt").pixel_values,
            "processor_class": type(processor).__name__,
        }
    torch.save(inputs, workdir / "inputs.pt")
    run_without_package(REMOTE_SCRIPT, workdir)
    return expected, torch.load(workdir / "outputs.pt")


def test_remote_code_folders_load_without_the_package_and_give_the_same_outputs(family, remote_run):
    expected, remote = remote_run
    assert remote["package_hidden"] is True
    result, reference = remote[family.name], expected[family.name]
    assert result["refused_without_trust"] is True
    assert result["config_module"].startswith("transformers_modules.")
    for kind in KINDS:
        assert result[kind]["class"] == getattr(family, kind).__name__, kind
        assert result[kind]["module"].startswith("transformers_modules."), kind
        outputs, expected_outputs = result[kind]["outputs"], reference["outputs"][kind]
        assert outputs.keys() == expected_outputs.keys() and expected_outputs, kind
        for key in expected_outputs:
            torch.testing.assert_close(outputs[key], expected_outputs[key], atol=ATOL, rtol=0, msg=f"{kind}.{key}")
    assert result["processor_class"] == reference["processor_class"]
    torch.testing.assert_close(result["processed"], reference["processed"])
