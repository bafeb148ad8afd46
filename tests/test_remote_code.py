"""Remote code: a folder saved with `save_pretrained_with_remote_code` loads with `trust_remote_code=True` in a
process where `transformers_mixedae` cannot be imported, and gives the outputs of the in-process model."""

import json
import shutil

import pytest
import torch
from accelerate import Accelerator
from transformers import AutoModelForPreTraining
from helpers import fake_hub, tiny_cae_config, tiny_mixedae_config
from tiny_checkpoints import random_image, randomise_, tiny_mixedae_processor, tiny_processor_kwargs
from without_package import run_without_package

from transformers_mixedae import (
    CAEForImageClassification,
    CAEForPreTraining,
    CAEImageProcessorPil,
    MixedAEBackbone,
    MixedAEConfig,
    MixedAEForImageClassification,
    MixedAEForPreTraining,
    MixedAEImageProcessorPil,
)
from transformers_mixedae.hub.export import export_to_transformers
from transformers_mixedae.hub.model_card import generate_model_card
from transformers_mixedae.hub.remote_code import check_remote_code_folder, save_pretrained_with_remote_code
from transformers_mixedae.training.final_save import save_final_model

ATOL = 1e-5

# Runs without the package: loads every folder through the Auto classes and pipelines, saves the outputs.
REMOTE_SCRIPT = """
import torch
from PIL import Image
from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
    pipeline,
)

pretraining_dir, classification_dir, exported_dir = "pretraining", "classification", "exported"
inputs = torch.load("inputs.pt")
image = Image.open("image.png")
outputs = {"package_hidden": PACKAGE_HIDDEN}
try:
    AutoModel.from_pretrained(pretraining_dir)
except ValueError as error:
    outputs["refused_without_trust"] = "trust_remote_code" in str(error)

config = AutoConfig.from_pretrained(pretraining_dir, trust_remote_code=True)
outputs["config_module"] = type(config).__module__
with torch.no_grad():
    encoder = AutoModel.from_pretrained(pretraining_dir, trust_remote_code=True).eval()
    outputs["encoder_class"] = type(encoder).__name__
    outputs["features"] = encoder(inputs["pixel_values"]).last_hidden_state
    pretraining = AutoModelForPreTraining.from_pretrained(pretraining_dir, trust_remote_code=True).eval()
    pretraining_outputs = pretraining(inputs["pixel_values"], noise=inputs["noise"])
    outputs["pretraining_loss"] = pretraining_outputs.loss
    outputs["pretraining_logits"] = pretraining_outputs.logits
    classifier = AutoModelForImageClassification.from_pretrained(classification_dir, trust_remote_code=True).eval()
    outputs["classification_logits"] = classifier(inputs["pixel_values"]).logits
    # AutoBackbone.from_pretrained asks the Hub even for a local folder (transformers 5.24): the class it maps the
    # config to loads the weights, as in-process.
    backbone_config = AutoConfig.from_pretrained(pretraining_dir, trust_remote_code=True, out_indices=[1])
    backbone_class = type(AutoBackbone.from_config(backbone_config, trust_remote_code=True))
    backbone = backbone_class.from_pretrained(pretraining_dir, out_indices=[1]).eval()
    outputs["backbone_class"] = type(backbone).__name__
    outputs["backbone_feature_map"] = backbone(inputs["pixel_values"]).feature_maps[0]
    exported = AutoModel.from_pretrained(exported_dir).eval()
    outputs["exported_class"] = type(exported).__name__
    outputs["exported_features"] = exported(inputs["pixel_values"]).last_hidden_state

processor = AutoImageProcessor.from_pretrained(pretraining_dir, trust_remote_code=True)
outputs["processor_class"] = type(processor).__name__
outputs["processed"] = processor(image, return_tensors="pt").pixel_values
extractor = pipeline("image-feature-extraction", model=pretraining_dir, trust_remote_code=True)
outputs["pipeline_features"] = torch.tensor(extractor(image))
image_classifier = pipeline("image-classification", model=classification_dir, trust_remote_code=True)
outputs["pipeline_labels"] = [prediction["label"] for prediction in image_classifier(image, top_k=3)]
outputs["pipeline_scores"] = [prediction["score"] for prediction in image_classifier(image, top_k=3)]

# CAE: the same routes, plus its masked pre-training forward.
with torch.no_grad():
    cae = AutoModel.from_pretrained("cae-pretraining", trust_remote_code=True).eval()
    outputs["cae_encoder_class"] = type(cae).__name__
    outputs["cae_features"] = cae(inputs["pixel_values"]).last_hidden_state
    cae_pretraining = AutoModelForPreTraining.from_pretrained("cae-pretraining", trust_remote_code=True).eval()
    cae_outputs = cae_pretraining(
        inputs["pixel_values"], bool_masked_pos=inputs["bool_masked_pos"], labels=inputs["token_ids"]
    )
    outputs["cae_pretraining_loss"] = cae_outputs.loss
    outputs["cae_pretraining_logits"] = cae_outputs.logits
    cae_classifier = AutoModelForImageClassification.from_pretrained("cae-classification", trust_remote_code=True)
    outputs["cae_classification_logits"] = cae_classifier.eval()(inputs["pixel_values"]).logits
    beit = AutoModel.from_pretrained("cae-exported").eval()
    outputs["cae_exported_class"] = type(beit).__name__
    outputs["cae_exported_features"] = beit(inputs["pixel_values"]).last_hidden_state
cae_processor = AutoImageProcessor.from_pretrained("cae-pretraining", trust_remote_code=True)
outputs["cae_processor_class"] = type(cae_processor).__name__
outputs["cae_processed"] = cae_processor(image, return_tensors="pt").pixel_values
torch.save(outputs, "outputs.pt")
"""


@pytest.fixture(scope="module")
def remote_run(tmp_path_factory):
    """Save the folders, run the remote script once, return (in-process references, remote outputs)."""
    workdir = tmp_path_factory.mktemp("remote")
    torch.manual_seed(0)
    pretraining = randomise_(MixedAEForPreTraining(tiny_mixedae_config()))
    labels = {0: "cat", 1: "dog", 2: "fish"}
    classifier = randomise_(
        MixedAEForImageClassification(tiny_mixedae_config(id2label=labels, label2id={v: k for k, v in labels.items()}))
    )
    processor = tiny_mixedae_processor()
    save_pretrained_with_remote_code(pretraining, workdir / "pretraining", image_processor=processor)
    save_pretrained_with_remote_code(classifier, workdir / "classification", image_processor=processor)
    export_to_transformers(pretraining, workdir / "exported", image_processor=processor)

    cae_pretraining = randomise_(CAEForPreTraining(tiny_cae_config()))
    cae_classifier = randomise_(CAEForImageClassification(tiny_cae_config(num_labels=3)))
    cae_processor = CAEImageProcessorPil(**tiny_processor_kwargs())
    save_pretrained_with_remote_code(cae_pretraining, workdir / "cae-pretraining", image_processor=cae_processor)
    save_pretrained_with_remote_code(cae_classifier, workdir / "cae-classification", image_processor=cae_processor)
    export_to_transformers(cae_pretraining, workdir / "cae-exported", image_processor=cae_processor)

    image = random_image()
    image.save(workdir / "image.png")
    bool_masked_pos = torch.zeros(4, 16, dtype=torch.bool)
    bool_masked_pos[:, torch.randperm(16)[:6]] = True
    inputs = {
        "pixel_values": torch.randn(4, 3, 32, 32),
        "noise": torch.rand(1, 64),
        "bool_masked_pos": bool_masked_pos,
        "token_ids": torch.randint(0, 50, (4, 16)),
    }
    torch.save(inputs, workdir / "inputs.pt")

    processed = processor(image, return_tensors="pt").pixel_values
    with torch.no_grad():
        pretraining_outputs = pretraining(inputs["pixel_values"], noise=inputs["noise"])
        expected = {
            "features": pretraining.vit(inputs["pixel_values"]).last_hidden_state,
            "pretraining_loss": pretraining_outputs.loss,
            "pretraining_logits": pretraining_outputs.logits,
            "classification_logits": classifier(inputs["pixel_values"]).logits,
            "processed": processed,
            "pipeline_features": pretraining.vit(processed).last_hidden_state,
            "pipeline_scores": classifier(processed).logits.softmax(-1)[0].sort(descending=True).values,
            "cae_features": cae_pretraining.cae(inputs["pixel_values"]).last_hidden_state,
            "cae_classification_logits": cae_classifier(inputs["pixel_values"]).logits,
            "cae_processed": cae_processor(image, return_tensors="pt").pixel_values,
        }
        cae_outputs = cae_pretraining(
            inputs["pixel_values"], bool_masked_pos=inputs["bool_masked_pos"], labels=inputs["token_ids"]
        )
        expected["cae_pretraining_loss"] = cae_outputs.loss
        expected["cae_pretraining_logits"] = cae_outputs.logits
        backbone = MixedAEBackbone.from_pretrained(workdir / "pretraining", out_indices=[1]).eval()
        expected["backbone_feature_map"] = backbone(inputs["pixel_values"]).feature_maps[0]
    run_without_package(REMOTE_SCRIPT, workdir)
    return expected, torch.load(workdir / "outputs.pt"), workdir


def test_the_package_is_not_importable_in_the_remote_process(remote_run):
    _, remote, _ = remote_run
    assert remote["package_hidden"] is True
    assert remote["refused_without_trust"] is True
    assert remote["config_module"].startswith("transformers_modules.")


def test_remote_models_give_the_in_process_outputs(remote_run):
    expected, remote, _ = remote_run
    assert remote["encoder_class"] == "MixedAEModel" and remote["backbone_class"] == "MixedAEBackbone"
    for name in ("features", "pretraining_loss", "pretraining_logits", "classification_logits",
                 "backbone_feature_map"):
        torch.testing.assert_close(remote[name], expected[name], atol=ATOL, rtol=0, msg=name)


def test_remote_cae_models_and_processor_give_the_in_process_outputs(remote_run):
    expected, remote, _ = remote_run
    assert remote["cae_encoder_class"] == "CAEModel" and remote["cae_processor_class"] == "CAEImageProcessorPil"
    for name in ("cae_features", "cae_pretraining_loss", "cae_pretraining_logits", "cae_classification_logits"):
        torch.testing.assert_close(remote[name], expected[name], atol=ATOL, rtol=0, msg=name)
    torch.testing.assert_close(remote["cae_processed"], expected["cae_processed"])


def test_remote_image_processor_and_pipelines(remote_run):
    expected, remote, _ = remote_run
    assert remote["processor_class"] == "MixedAEImageProcessorPil"
    torch.testing.assert_close(remote["processed"], expected["processed"])
    torch.testing.assert_close(remote["pipeline_features"], expected["pipeline_features"], atol=ATOL, rtol=0)
    assert set(remote["pipeline_labels"]) == {"cat", "dog", "fish"}
    torch.testing.assert_close(torch.tensor(remote["pipeline_scores"]), expected["pipeline_scores"], atol=ATOL, rtol=0)


def test_exported_native_checkpoint_loads_without_the_package(remote_run):
    expected, remote, _ = remote_run
    assert remote["exported_class"] == "ViTModel"
    torch.testing.assert_close(remote["exported_features"], expected["features"], atol=ATOL, rtol=0)
    assert remote["cae_exported_class"] == "BeitModel"
    torch.testing.assert_close(remote["cae_exported_features"], expected["cae_features"], atol=ATOL, rtol=0)


def test_folder_layout_and_auto_map(remote_run):
    _, _, workdir = remote_run
    folder = workdir / "pretraining"
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_mixedae.MixedAEConfig",
        "AutoModel": "modeling_mixedae.MixedAEModel",
        "AutoModelForPreTraining": "modeling_mixedae.MixedAEForPreTraining",
        "AutoModelForImageClassification": "modeling_mixedae.MixedAEForImageClassification",
        "AutoBackbone": "modeling_mixedae.MixedAEBackbone",
    }
    processor_config = json.loads((folder / "preprocessor_config.json").read_text())
    assert processor_config["auto_map"]["AutoImageProcessor"] == {
        "torchvision": "image_processing_mixedae.MixedAEImageProcessor",
        "pil": "image_processing_mixedae.MixedAEImageProcessorPil",
    }
    assert not (folder / "__init__.py").exists() and not (folder / "registration.py").exists()
    # Every module the code needs is in the folder (the checker follows the relative imports).
    mixedae_files = set(check_remote_code_folder(folder))
    assert {"configuration_mixedae.py", "modeling_mixedae.py", "image_processing_mixedae.py", "vit_layers.py"} <= (
        mixedae_files
    )
    cae_config = json.loads((workdir / "cae-pretraining" / "config.json").read_text())
    assert cae_config["auto_map"]["AutoModelForPreTraining"] == "modeling_cae.CAEForPreTraining"
    cae_files = set(check_remote_code_folder(workdir / "cae-pretraining"))
    assert {"configuration_cae.py", "modeling_cae.py", "image_processing_cae.py", "masking.py", "vit_layers.py"} <= (
        cae_files
    )


# ---------------------------------------------------------------------------------------------- in process
def test_saving_with_remote_code_leaves_no_global_state(tmp_path):
    model = MixedAEForPreTraining(tiny_mixedae_config())
    processor = tiny_mixedae_processor()
    save_pretrained_with_remote_code(model, tmp_path / "remote", image_processor=processor)

    assert MixedAEForPreTraining._auto_class is None and MixedAEConfig._auto_class is None
    assert MixedAEImageProcessorPil._auto_class is None
    assert getattr(model.config, "auto_map", None) is None and "auto_map" not in processor.to_dict()
    model.save_pretrained(tmp_path / "plain")
    processor.save_pretrained(tmp_path / "plain")
    assert not list((tmp_path / "plain").glob("*.py"))
    assert "auto_map" not in json.loads((tmp_path / "plain" / "config.json").read_text())


def test_check_remote_code_folder_reports_leaks(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"auto_map": {"AutoModel": "modeling_x.XModel"}}))
    (tmp_path / "modeling_x.py").write_text(
        "from .vit_layers import ViTLayer\nfrom transformers_mixedae.hub.registration import register_auto_classes\n"
    )
    with pytest.raises(RuntimeError) as error:
        check_remote_code_folder(tmp_path)
    assert "vit_layers" in str(error.value) and "imports transformers_mixedae" in str(error.value)


def test_push_to_hub_uploads_the_finished_folder_with_the_callers_token_and_privacy(tmp_path, monkeypatch):
    calls = fake_hub(monkeypatch)
    save_pretrained_with_remote_code(
        MixedAEForPreTraining(tiny_mixedae_config()),
        tmp_path / "out",
        tiny_mixedae_processor(),
        push_to_hub=True,
        repo_id="tiny-mixedae",
        private=True,
        token="hf_caller",
    )
    assert calls["token"] == "hf_caller" and calls["created"] == ("tiny-mixedae", True)
    repo_id, folder = calls["uploaded"]
    files = sorted(path.name for path in folder.iterdir())
    assert repo_id == "user/tiny-mixedae" and "modeling_mixedae.py" in files and "model.safetensors" in files


def test_push_to_hub_from_a_training_folder_leaves_out_its_checkpoints_and_leftovers(tmp_path, monkeypatch):
    calls = fake_hub(monkeypatch)
    run = tmp_path / "run"
    for name in ("checkpoints/step_2/optimizer.bin", ".tmp-final/model.safetensors", "notes.txt"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_bytes(b"x")
    save_pretrained_with_remote_code(MixedAEForPreTraining(tiny_mixedae_config()), run, push_to_hub=True,
                                     repo_id="tiny-mixedae")
    assert "model.safetensors" in calls["files"] and "notes.txt" in calls["files"]
    assert not [name for name in calls["files"] if name.startswith(("checkpoints/", ".tmp-"))]


def test_a_backbone_saves_with_remote_code(tmp_path):
    backbone = MixedAEBackbone(tiny_mixedae_config(out_indices=[1]))
    save_pretrained_with_remote_code(backbone, tmp_path / "backbone")
    auto_map = json.loads((tmp_path / "backbone" / "config.json").read_text())["auto_map"]
    assert auto_map["AutoBackbone"] == "modeling_mixedae.MixedAEBackbone"


def test_a_model_loaded_from_remote_code_is_saved_by_a_run_without_the_stale_code_map(tmp_path):
    folder = save_pretrained_with_remote_code(MixedAEForPreTraining(tiny_mixedae_config()), tmp_path / "remote",
                                              tiny_mixedae_processor())
    assert "trust_remote_code" in generate_model_card(folder).text
    model = AutoModelForPreTraining.from_pretrained(folder)
    assert model.config.auto_map  # carried over from the remote-code folder

    save_final_model(Accelerator(cpu=True), model, tiny_mixedae_processor(), tmp_path / "run", {})
    assert "auto_map" not in json.loads((tmp_path / "run" / "config.json").read_text())
    assert "trust_remote_code" not in (tmp_path / "run" / "README.md").read_text()
    # A folder whose config names code files it does not hold gets no trust_remote_code snippet either.
    shutil.copy(folder / "config.json", tmp_path / "run" / "config.json")
    assert "trust_remote_code" not in generate_model_card(tmp_path / "run").text
