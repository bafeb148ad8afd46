"""Export to native transformers classes: same features and logits as ours, clean loads, processor settings."""

import pytest
import torch
from helpers import tiny_cae_config, tiny_mixedae_config
from test_output_folders import USER_FILES, fingerprint, finished_run
from tiny_checkpoints import random_image, randomise_, tiny_mixedae_processor, tiny_processor_kwargs
from transformers import (
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    BeitForImageClassification,
    BeitImageProcessorPil,
    BeitModel,
    ViTForImageClassification,
    ViTModel,
)

from transformers_mixedae import (
    CAEForImageClassification,
    CAEForPreTraining,
    CAEImageProcessorPil,
    CAEModel,
    MixedAEForImageClassification,
    MixedAEForPreTraining,
    MixedAEModel,
)
from transformers_mixedae.hub.export import convert_cae_to_beit, convert_mixedae_to_vit, export_to_transformers, main
from transformers_mixedae.training.output_folders import OutputDirectoryError

ATOL = 1e-5


def load_cleanly(model_class, folder, **kwargs):
    model, info = model_class.from_pretrained(folder, output_loading_info=True, **kwargs)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def assert_native_features_equal(folder, encoder, native_class, our_processor):
    """The folder loads through the Auto classes as `native_class` with no missing or left-over weight, gives
    `encoder`'s `last_hidden_state` and `pooler_output`, and its processor gives `our_processor`'s pixels."""
    exported = load_cleanly(AutoModel, folder)
    assert type(exported) is native_class
    pixel_values = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ours = encoder(pixel_values)
        theirs = exported(pixel_values)
    torch.testing.assert_close(theirs.last_hidden_state, ours.last_hidden_state, atol=ATOL, rtol=0)
    torch.testing.assert_close(theirs.pooler_output, ours.pooler_output, atol=ATOL, rtol=0)

    processor = AutoImageProcessor.from_pretrained(folder)
    assert type(processor).__name__.startswith(native_class.__name__.replace("Model", "ImageProcessor"))
    image = random_image()
    expected = our_processor(image, return_tensors="pt").pixel_values
    torch.testing.assert_close(processor(image, return_tensors="pt").pixel_values, expected)
    return exported


# ---------------------------------------------------------------------------------------------- MixedAE -> ViT
def test_feature_extraction_export_from_folder_matches_mixedae(tmp_path):
    source = randomise_(MixedAEForPreTraining(tiny_mixedae_config()))
    source.save_pretrained(tmp_path / "mixedae")
    tiny_mixedae_processor().save_pretrained(tmp_path / "mixedae")

    folder = export_to_transformers(tmp_path / "mixedae", tmp_path / "vit")

    exported = assert_native_features_equal(folder, source.vit, ViTModel, tiny_mixedae_processor())
    assert exported.config.model_type == "vit"


def test_paths_starting_with_the_home_folder_are_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    MixedAEForPreTraining(tiny_mixedae_config()).save_pretrained(tmp_path / "mixedae")

    folder = export_to_transformers("~/mixedae", "~/vit")
    assert folder == tmp_path / "vit" and (tmp_path / "vit" / "config.json").is_file()
    assert not (tmp_path / "~").exists()


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


@pytest.mark.parametrize("task", ["image-classification", "feature-extraction"])
def test_a_mean_pooling_classifier_is_refused_naming_the_remote_code_export(task, tmp_path):
    # Its encoder has no final LayerNorm, which every native ViT applies (the feature export crashed on it).
    source = MixedAEForImageClassification(tiny_mixedae_config(classifier_pooling="mean", num_labels=3))
    with pytest.raises(ValueError, match=r"pools the mean patch token through `fc_norm`.*no native ViT gives its "
                                         r"features or logits.*save_pretrained_with_remote_code"):
        convert_mixedae_to_vit(source, task=task)


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
    with pytest.raises(TypeError, match="MixedAEModel"):
        convert_mixedae_to_vit(ViTModel(convert_mixedae_to_vit(MixedAEModel(tiny_mixedae_config())).config))


def test_command_line_export(tmp_path, capsys):
    MixedAEModel(tiny_mixedae_config()).save_pretrained(tmp_path / "mixedae")
    main([str(tmp_path / "mixedae"), str(tmp_path / "out")])
    assert str(tmp_path / "out") in capsys.readouterr().out
    load_cleanly(ViTModel, tmp_path / "out")


# ---------------------------------------------------------------------------------------------- CAE -> BEiT
def tiny_cae_processor():
    return CAEImageProcessorPil(**tiny_processor_kwargs())


@pytest.mark.parametrize(
    "overrides", [{}, {"qkv_bias": False}, {"layer_scale_init_value": None}], ids=["default", "no-bias", "no-ls"]
)
def test_cae_feature_extraction_export_from_folder_matches(tmp_path, overrides):
    source = randomise_(CAEForPreTraining(tiny_cae_config(**overrides)))
    source.save_pretrained(tmp_path / "cae")
    tiny_cae_processor().save_pretrained(tmp_path / "cae")

    folder = export_to_transformers(tmp_path / "cae", tmp_path / "beit")

    exported = assert_native_features_equal(folder, source.cae, BeitModel, tiny_cae_processor())
    assert exported.config.use_absolute_position_embeddings and not exported.config.use_relative_position_bias


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_cae_classification_export_gives_the_same_logits_and_features(tmp_path, pooling):
    labels = {0: "cat", 1: "dog", 2: "fish"}
    config = tiny_cae_config(classifier_pooling=pooling, id2label=labels, label2id={v: k for k, v in labels.items()})
    source = randomise_(CAEForImageClassification(config))
    source.save_pretrained(tmp_path / "cae")

    classifier = load_cleanly(
        AutoModelForImageClassification,
        export_to_transformers(tmp_path / "cae", tmp_path / "beit-cls", task="image-classification"),
    )
    features = convert_cae_to_beit(source, task="feature-extraction")
    assert type(classifier) is BeitForImageClassification and classifier.config.id2label == labels
    assert classifier.config.use_mean_pooling == (pooling == "mean")
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(classifier(pixel_values).logits, source(pixel_values).logits, atol=ATOL, rtol=0)
        ours = source.cae(pixel_values).last_hidden_state
        torch.testing.assert_close(features(pixel_values).last_hidden_state, ours, atol=ATOL, rtol=0)
        if pooling == "mean":  # the feature export pools like the classifier: fc_norm of the mean patch token
            pooled = source.fc_norm(ours[:, 1:].mean(dim=1))
            torch.testing.assert_close(features(pixel_values).pooler_output, pooled, atol=ATOL, rtol=0)


def test_cae_classification_export_of_a_pretrained_encoder_pools_through_its_final_norm():
    source = randomise_(CAEForPreTraining(tiny_cae_config(num_labels=4, classifier_pooling="mean")))
    exported = convert_cae_to_beit(source, task="image-classification")
    assert exported.classifier.out_features == 4 and exported.config.use_mean_pooling
    # As the official fine-tuning: the pre-trained final LayerNorm becomes the pooling norm.
    torch.testing.assert_close(exported.beit.pooler.layernorm.weight, source.cae.layernorm.weight)
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        pre_norm = source.cae(pixel_values, output_hidden_states=True).hidden_states[-1]
        expected = source.cae.layernorm(pre_norm[:, 1:].mean(dim=1))
        torch.testing.assert_close(exported.beit(pixel_values).pooler_output, expected, atol=ATOL, rtol=0)


def test_cae_export_refuses_non_square_inputs():
    with pytest.raises(ValueError, match="square"):
        convert_cae_to_beit(CAEModel(tiny_cae_config(image_size=[32, 40])))


# ---------------------------------------------------------------------------------------------- output folder, errors
def tiny_cae_folder(folder):
    CAEModel(tiny_cae_config()).save_pretrained(folder)
    return folder


def run_main(argv, capsys) -> tuple[int, str, str]:
    capsys.readouterr()  # only what `main` prints, not the setup's progress bars and logs
    with pytest.raises(SystemExit) as exit_info:
        main([str(argument) for argument in argv])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_cli_refuses_a_finished_run_as_output_and_changes_nothing(tmp_path, capsys):
    source = tiny_cae_folder(tmp_path / "cae")
    run = finished_run(tmp_path / "mixedae-run")
    before = fingerprint(run)
    assert run_main([source, run], capsys) == (
        2,
        "",
        f"transformers-mixedae-export: error: '{run}' already holds a finished result (.tmp-final/, README.md, "
        "all_results.json, checkpoints/, config.json, model-00001-of-00002.safetensors, "
        "model-00002-of-00002.safetensors, model.safetensors.index.json, and 5 more): not starting the export, and "
        "nothing was changed. Pass --overwrite_output_dir to replace it, or choose another output folder.\n",
    )
    assert fingerprint(run) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cae", "mixedae-run"]


def test_cli_overwrite_leaves_only_the_export_and_the_user_files(tmp_path, capsys):
    source = randomise_(CAEModel(tiny_cae_config()))
    source.save_pretrained(tmp_path / "cae")
    run = finished_run(tmp_path / "mixedae-run")
    capsys.readouterr()
    main([str(tmp_path / "cae"), str(run), "--overwrite_output_dir"])
    assert capsys.readouterr().out == f"{run}\n"
    names = {path.name for path in run.iterdir()}
    assert names == {"config.json", "model.safetensors", "preprocessor_config.json", "notes.txt", "data", "config.yaml"}
    for name, content in USER_FILES.items():
        assert (run / name).read_bytes() == content
    exported = load_cleanly(BeitModel, run)
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            exported(pixel_values).last_hidden_state, source(pixel_values).last_hidden_state, atol=ATOL, rtol=0
        )


def test_an_export_that_fails_while_writing_leaves_the_previous_result(tmp_path, monkeypatch):
    source = tiny_cae_folder(tmp_path / "cae")
    run = finished_run(tmp_path / "mixedae-run")
    before = fingerprint(run)

    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(BeitImageProcessorPil, "save_pretrained", disk_full)  # after the weights were written
    with pytest.raises(OSError, match="No space left on device"):
        export_to_transformers(source, run, overwrite=True)
    assert fingerprint(run) == before
    with pytest.raises(OSError, match="No space left on device"):
        export_to_transformers(source, tmp_path / "new")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cae", "mixedae-run"]


def test_exporting_a_folder_into_itself_is_refused(tmp_path):
    source = tiny_cae_folder(tmp_path / "cae")
    before = fingerprint(source)
    with pytest.raises(OutputDirectoryError, match=r"^the output folder '.*cae' is the model folder itself"):
        export_to_transformers(source, source, overwrite=True)
    assert fingerprint(source) == before


@pytest.mark.parametrize("model", ["./does/not/exist", "does/not/exist", "/does/not/exist"])
def test_cli_names_a_missing_local_model_in_one_line(tmp_path, capsys, monkeypatch, model):
    monkeypatch.chdir(tmp_path)
    assert run_main([model, "out"], capsys) == (
        1,
        "",
        f"transformers-mixedae-export: error: model '{model}' is a local folder that does not exist; check the path, "
        "or give a Hub id like owner/name.\n",
    )
    assert list(tmp_path.iterdir()) == []


def test_cli_names_a_folder_that_is_not_a_saved_model(tmp_path, capsys):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    code, out, err = run_main([tmp_path / "run", tmp_path / "out"], capsys)
    assert (code, out) == (1, "")
    assert err == (
        f"transformers-mixedae-export: error: model '{tmp_path / 'run'}' has no config.json: it is not a folder "
        "written by save_pretrained (a training run writes it into its --output_dir when it finishes; a "
        "checkpoints/step_* folder is not one).\n"
    )
    assert not (tmp_path / "out").exists()


def test_cli_names_an_unreachable_hub_id_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(["nobody-here/no-such-model", "out"], capsys)
    assert (code, out) == (1, "")
    assert err.startswith("transformers-mixedae-export: error: could not load the model 'nobody-here/no-such-model': ")
    assert err.endswith("Give a local folder written by save_pretrained, or a Hub id you can reach.\n")
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()
