"""Export to native transformers classes: same features and logits as ours, clean loads, processor settings."""

import pytest
import torch
from helpers import tiny_mixedae_config
from tiny_checkpoints import random_image, randomise_, tiny_mixedae_processor
from transformers import (
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    ViTForImageClassification,
    ViTModel,
)

from transformers_mixedae import MixedAEForImageClassification, MixedAEForPreTraining, MixedAEModel
from transformers_mixedae.export import convert_mixedae_to_vit, export_to_transformers, main

ATOL = 1e-5


def load_cleanly(model_class, folder, **kwargs):
    model, info = model_class.from_pretrained(folder, output_loading_info=True, **kwargs)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


# ---------------------------------------------------------------------------------------------- MixedAE -> ViT
def test_feature_extraction_export_from_folder_matches_mixedae(tmp_path):
    source = randomise_(MixedAEForPreTraining(tiny_mixedae_config()))
    source.save_pretrained(tmp_path / "mixedae")
    tiny_mixedae_processor().save_pretrained(tmp_path / "mixedae")

    folder = export_to_transformers(tmp_path / "mixedae", tmp_path / "vit")

    exported = load_cleanly(AutoModel, folder)  # a pooler with weights: nothing missing, nothing left over
    assert type(exported) is ViTModel and exported.config.model_type == "vit"
    pixel_values = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ours = source.vit(pixel_values)
        theirs = exported(pixel_values)
    torch.testing.assert_close(theirs.last_hidden_state, ours.last_hidden_state, atol=ATOL, rtol=0)
    torch.testing.assert_close(theirs.pooler_output, ours.pooler_output, atol=ATOL, rtol=0)

    # The processor keeps the MixedAE settings under the native type.
    processor = AutoImageProcessor.from_pretrained(folder)
    assert type(processor).__name__.startswith("ViTImageProcessor")
    image = random_image()
    expected = tiny_mixedae_processor()(image, return_tensors="pt").pixel_values
    torch.testing.assert_close(processor(image, return_tensors="pt").pixel_values, expected)


def test_exported_config_carries_the_architecture():
    config = tiny_mixedae_config(layer_norm_eps=1e-5, qkv_bias=False, hidden_act="gelu_new", hidden_dropout_prob=0.1)
    exported = convert_mixedae_to_vit(MixedAEModel(config))
    for name in (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "hidden_act",
        "layer_norm_eps",
        "qkv_bias",
        "patch_size",
        "num_channels",
        "hidden_dropout_prob",
    ):
        assert getattr(exported.config, name) == getattr(config, name), name
    assert exported.layers[0].attention.q_proj.bias is None
    assert "segment_embeddings" not in str(list(exported.state_dict()))


def test_feature_extraction_export_without_qkv_bias_and_at_another_resolution():
    source = randomise_(MixedAEModel(tiny_mixedae_config(qkv_bias=False)))
    exported = convert_mixedae_to_vit(source)
    pixel_values = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        ours = source(pixel_values, interpolate_pos_encoding=True).last_hidden_state
        theirs = exported(pixel_values, interpolate_pos_encoding=True).last_hidden_state
    torch.testing.assert_close(theirs, ours, atol=ATOL, rtol=0)


def test_classification_export_with_cls_pooling_gives_the_same_logits(tmp_path):
    labels = {0: "cat", 1: "dog", 2: "fish"}
    config = tiny_mixedae_config(classifier_pooling="cls", id2label=labels, label2id={v: k for k, v in labels.items()})
    source = randomise_(MixedAEForImageClassification(config))

    folder = export_to_transformers(source, tmp_path / "vit-cls", task="image-classification")

    exported = load_cleanly(AutoModelForImageClassification, folder)
    assert type(exported) is ViTForImageClassification
    assert exported.config.id2label == labels
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(exported(pixel_values).logits, source(pixel_values).logits, atol=ATOL, rtol=0)


def test_classification_export_refuses_mean_pooling():
    source = MixedAEForImageClassification(tiny_mixedae_config(classifier_pooling="mean", num_labels=3))
    with pytest.raises(ValueError, match="fc_norm"):
        convert_mixedae_to_vit(source, task="image-classification")


def test_classification_export_of_a_pretrained_encoder_gets_a_new_head():
    source = randomise_(MixedAEForPreTraining(tiny_mixedae_config(num_labels=4)))
    exported = convert_mixedae_to_vit(source, task="image-classification")
    assert exported.classifier.out_features == 4
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            exported.vit(pixel_values).last_hidden_state, source.vit(pixel_values).last_hidden_state, atol=ATOL, rtol=0
        )


def test_export_rejects_unknown_tasks_and_models():
    with pytest.raises(ValueError, match="task"):
        convert_mixedae_to_vit(MixedAEModel(tiny_mixedae_config()), task="segmentation")
    with pytest.raises(TypeError, match="MixedAE"):
        convert_mixedae_to_vit(ViTModel(convert_mixedae_to_vit(MixedAEModel(tiny_mixedae_config())).config))


def test_command_line_export(tmp_path, capsys):
    MixedAEModel(tiny_mixedae_config()).save_pretrained(tmp_path / "mixedae")
    main([str(tmp_path / "mixedae"), str(tmp_path / "out")])
    assert str(tmp_path / "out") in capsys.readouterr().out
    load_cleanly(ViTModel, tmp_path / "out")
