"""MixedAEBackbone and CAEBackbone: transformers backbones (stages, out_features / out_indices, multi-scale adapter),
AutoBackbone loading from pre-training checkpoints, UperNet on top, and configs saved before the backbone fields."""

import json

import pytest
import torch
from huggingface_hub.errors import (
    HFValidationError,
    StrictDataclassClassValidationError,
    StrictDataclassFieldValidationError,
)
from transformers import AutoBackbone, BeitBackbone, UperNetConfig, UperNetForSemanticSegmentation

from transformers_mixedae import (
    CAEBackbone,
    CAEForPreTraining,
    CAEModel,
    MixedAEBackbone,
    MixedAEForPreTraining,
    MixedAEModel,
)
from transformers_mixedae.hub.export import convert_cae_to_beit
from transformers_mixedae.models.modeling_cae import position_table_for_grid

from helpers import tiny_cae_config, tiny_mixedae_config

FAMILIES = {
    "mixedae": (tiny_mixedae_config, MixedAEBackbone, MixedAEForPreTraining, MixedAEModel, "vit"),
    "cae": (tiny_cae_config, CAEBackbone, CAEForPreTraining, CAEModel, "cae"),
}
BACKBONE_FIELDS = ("out_features", "out_indices", "backbone_multi_scale", "stage_names")


def _config(family: str, **overrides):
    # 4 layers so that the multi-scale adapter has 4 distinct stages to take.
    return FAMILIES[family][0](num_hidden_layers=4, **overrides)


# ---------------------------------------------------------------------------------------------- config fields
@pytest.mark.parametrize("family", FAMILIES)
def test_stage_names_and_default_out_features(family):
    config = _config(family)
    assert config.stage_names == ["stem", "stage1", "stage2", "stage3", "stage4"]
    assert config.out_features == ["stage4"] and config.out_indices == [4]
    assert config.backbone_multi_scale is False


@pytest.mark.parametrize("family", FAMILIES)
def test_out_features_and_out_indices_align(family):
    assert _config(family, out_indices=[0, 2]).out_features == ["stem", "stage2"]
    assert _config(family, out_features=["stage1", "stage3"]).out_indices == [1, 3]
    assert _config(family, out_indices=(1, -1)).out_features == ["stage1", "stage4"]
    both = _config(family, out_features=["stage2"], out_indices=[2])
    assert (both.out_features, both.out_indices) == (["stage2"], [2])
    config = _config(family)
    config.out_indices = [1, 2]
    assert config.out_features == ["stage1", "stage2"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(out_features=["stage9"]), "out_features must be a subset of stage_names"),
        (dict(out_indices=[2, 1]), "out_indices must be in the same order as stage_names"),
        (dict(out_indices=[1, 1]), "out_indices must not contain any duplicates"),
        (dict(out_features=["stage1"], out_indices=[2]), "should correspond to the same stages"),
    ],
)
@pytest.mark.parametrize("family", FAMILIES)
def test_bad_out_features_name_the_stages(family, overrides, message):
    with pytest.raises(ValueError, match=message) as error:
        _config(family, **overrides)
    assert "with num_hidden_layers=4 the stages are 'stem' (index 0" in str(error.value)


@pytest.mark.parametrize("family", FAMILIES)
def test_multi_scale_needs_four_stages(family):
    with pytest.raises(
        StrictDataclassClassValidationError, match=r"backbone_multi_scale=True .* got out_indices=\[2, 4\]: pass 4 indices"
    ):
        _config(family, backbone_multi_scale=True, out_indices=[2, 4])
    with pytest.raises(StrictDataclassFieldValidationError, match=r"Field 'backbone_multi_scale' expected bool, got str \(value: 'yes'\)"):
        _config(family, backbone_multi_scale="yes")


@pytest.mark.parametrize("family", FAMILIES)
def test_multi_scale_stages_changed_after_the_config_was_built_are_refused_as_clearly(family, tmp_path):
    backbone_class = FAMILIES[family][1]
    backbone_class(_config(family, out_indices=[1, 2, 3, 4], backbone_multi_scale=True)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"backbone_multi_scale=True .* got out_indices=\[2, 4\]: pass 4 indices"):
        backbone_class.from_pretrained(tmp_path, out_indices=[2, 4])
    backbone = backbone_class.from_pretrained(tmp_path)
    backbone.config.out_indices = [4]
    with pytest.raises(ValueError, match=r"got out_indices=\[4\]: pass 4 indices"):
        backbone(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("family", FAMILIES)
def test_config_without_backbone_keys_loads_with_defaults(family, tmp_path):
    config = _config(family)
    config.save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    saved = json.loads(path.read_text())
    assert saved["out_indices"] == [4] and "stage_names" not in saved  # derived from num_hidden_layers
    old = {key: value for key, value in saved.items() if key not in BACKBONE_FIELDS}
    path.write_text(json.dumps(old))
    loaded = type(config).from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.out_features == ["stage4"] and loaded.backbone_multi_scale is False


# ---------------------------------------------------------------------------------------------- feature maps
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("out_indices", [[4], [0, 2], [1, 2, 3, 4]])
@pytest.mark.parametrize("size", [(32, 32), (48, 32), (16, 40)])
def test_feature_map_shapes(family, out_indices, size):
    config = _config(family, out_indices=out_indices)
    backbone = AutoBackbone.from_config(config).eval()
    assert type(backbone) is FAMILIES[family][1]
    assert backbone.channels == [config.hidden_size] * len(out_indices)
    outputs = backbone(torch.randn(2, 3, *size))
    grid = (size[0] // config.patch_size, size[1] // config.patch_size)
    assert [tuple(feature_map.shape) for feature_map in outputs.feature_maps] == [
        (2, config.hidden_size, *grid)
    ] * len(out_indices)
    assert outputs.hidden_states is None
    assert len(backbone(torch.randn(1, 3, *size), output_hidden_states=True).hidden_states) == 5


@pytest.mark.parametrize("family", FAMILIES)
def test_sizes_that_are_not_patch_multiples_are_padded_at_the_bottom_right(family):
    config = _config(family, out_indices=[4])
    backbone = AutoBackbone.from_config(config).eval()
    pixel_values = torch.randn(1, 3, 30, 37)
    padded = torch.nn.functional.pad(pixel_values, (0, 3, 0, 2))  # to 32 x 40, with zeros (patches of 4 and 8)
    with torch.no_grad():
        feature_map = backbone(pixel_values).feature_maps[0]
        assert feature_map.shape == (1, config.hidden_size, 32 // config.patch_size, 40 // config.patch_size)
        assert torch.equal(feature_map, backbone(padded).feature_maps[0])


@pytest.mark.parametrize("family", FAMILIES)
def test_multi_scale_strides(family):
    config = _config(family, out_indices=[1, 2, 3, 4], backbone_multi_scale=True, patch_size=16, image_size=64)
    backbone = AutoBackbone.from_config(config).eval()
    height, width = 128, 96
    feature_maps = backbone(torch.randn(1, 3, height, width)).feature_maps
    assert [tuple(feature_map.shape[-2:]) for feature_map in feature_maps] == [
        (height // stride, width // stride) for stride in (4, 8, 16, 32)
    ]
    assert all(feature_map.shape[1] == config.hidden_size for feature_map in feature_maps)


@pytest.mark.parametrize("family", FAMILIES)
def test_upernet_forward_and_backward(family):
    config = _config(family, out_indices=[1, 2, 3, 4], backbone_multi_scale=True)
    upernet_config = UperNetConfig(
        backbone_config=config, hidden_size=16, auxiliary_channels=8, num_labels=3, pool_scales=[1, 2]
    )
    model = UperNetForSemanticSegmentation(upernet_config)
    assert type(model.backbone) is FAMILIES[family][1]
    pixel_values = torch.randn(2, 3, 64, 48)
    outputs = model(pixel_values, labels=torch.randint(0, 3, (2, 64, 48)))
    assert outputs.logits.shape == (2, 3, 64, 48)
    outputs.loss.backward()
    # Every backbone parameter gets a gradient: no unused final LayerNorm or (MixedAE) segment embeddings.
    missing = [
        name for name, parameter in model.backbone.named_parameters()
        if parameter.requires_grad and parameter.grad is None
    ]
    assert missing == []


# ---------------------------------------------------------------------------------------------- loading
@pytest.mark.parametrize("family", FAMILIES)
def test_auto_backbone_from_pretraining_checkpoint(family, tmp_path):
    _, backbone_class, pretraining_class, _, prefix = FAMILIES[family]
    pretraining = pretraining_class(_config(family))
    pretraining.save_pretrained(tmp_path)

    # The class AutoBackbone maps the config to (AutoBackbone.from_pretrained itself fails on local folders in
    # transformers 5.24: see test_auto_backbone_from_pretrained_local_folder_fails_in_transformers).
    backbone, info = backbone_class.from_pretrained(tmp_path, out_indices=[0, 2, 4], output_loading_info=True)
    assert AutoBackbone._model_mapping[type(backbone.config)] is backbone_class
    assert not info["missing_keys"]
    unexpected = sorted(info["unexpected_keys"])
    # The decoder (and for CAE the regressor and projection), the final LayerNorm and (MixedAE) the segment embeddings
    # are reported as unused.
    assert f"{prefix}.layernorm.weight" in unexpected
    assert any(key.startswith("decoder.") for key in unexpected)
    assert not any(key.startswith(f"{prefix}.layers.") for key in unexpected)

    encoder = getattr(pretraining, prefix).eval()
    backbone.eval()
    pixel_values = torch.randn(2, 3, 40, 32)
    with torch.no_grad():
        hidden_states = encoder(pixel_values, interpolate_pos_encoding=True, output_hidden_states=True).hidden_states
        feature_maps = backbone(pixel_values).feature_maps
    grid = (40 // backbone.config.patch_size, 32 // backbone.config.patch_size)
    for feature_map, index in zip(feature_maps, [0, 2, 4], strict=True):
        expected = hidden_states[index][:, 1:, :].transpose(1, 2).reshape(2, -1, *grid)
        # (The loaded model may pick another attention backend than the eager one of the tiny config.)
        torch.testing.assert_close(feature_map, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_backbone_save_load_round_trip(family, tmp_path):
    config = _config(family, out_indices=[1, 2, 3, 4], backbone_multi_scale=True)
    backbone = AutoBackbone.from_config(config).eval()
    backbone.save_pretrained(tmp_path)
    loaded, info = FAMILIES[family][1].from_pretrained(
        tmp_path, output_loading_info=True, attn_implementation="eager"  # the saved model's backend: exact outputs
    )
    loaded.eval()
    assert type(loaded) is FAMILIES[family][1]
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert loaded.config.out_indices == [1, 2, 3, 4] and loaded.config.backbone_multi_scale is True
    pixel_values = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for mine, theirs in zip(backbone(pixel_values).feature_maps, loaded(pixel_values).feature_maps, strict=True):
            torch.testing.assert_close(mine, theirs, rtol=0, atol=0)


@pytest.mark.xfail(
    strict=True,
    raises=HFValidationError,
    reason="transformers 5.24 AutoBackbone.from_pretrained asks the Hub whether a local path is a repository",
)
def test_auto_backbone_from_pretrained_local_folder_fails_in_transformers(tmp_path):
    MixedAEForPreTraining(_config("mixedae")).save_pretrained(tmp_path)
    AutoBackbone.from_pretrained(str(tmp_path), out_indices=[2])


def test_cae_backbone_matches_beit_backbone_of_the_export(tmp_path):
    cae = CAEForPreTraining(_config("cae")).eval()
    convert_cae_to_beit(cae).save_pretrained(tmp_path / "beit")
    cae.save_pretrained(tmp_path / "cae")
    out_indices = [0, 1, 3, 4]
    beit = BeitBackbone.from_pretrained(str(tmp_path / "beit"), out_indices=out_indices).eval()
    ours = CAEBackbone.from_pretrained(str(tmp_path / "cae"), out_indices=out_indices).eval()
    # The trained resolution: BEiT resamples positions for other sizes, CAE builds a fresh sin-cos table.
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for mine, theirs in zip(ours(pixel_values).feature_maps, beit(pixel_values).feature_maps, strict=True):
            torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [(64, 64), (48, 32)])
def test_cae_backbone_matches_beit_backbone_at_another_size_up_to_the_position_table(size, tmp_path, monkeypatch):
    cae = CAEForPreTraining(_config("cae")).eval()
    convert_cae_to_beit(cae).save_pretrained(tmp_path / "beit")
    cae.save_pretrained(tmp_path / "cae")
    out_indices = [0, 2, 4]
    beit = BeitBackbone.from_pretrained(str(tmp_path / "beit"), out_indices=out_indices).eval()
    ours = CAEBackbone.from_pretrained(str(tmp_path / "cae"), out_indices=out_indices).eval()
    pixel_values = torch.randn(2, 3, *size)
    with torch.no_grad():
        mine = ours(pixel_values).feature_maps
        # Off the trained grid, BEiT resamples the trained sin-cos table bicubically, CAE builds a fresh one for
        # the new grid (as the official fine-tuning does): the features differ ...
        assert (mine[0] - beit(pixel_values).feature_maps[0]).abs().max() > 1e-3
        # ... and only by that: given CAE's table for the grid, BEiT gives CAE's features at every stage.
        trained_table = beit.beit.embeddings.position_embeddings
        trained_grid = ours.config.grid_size
        patch_size = ours.config.patch_size
        monkeypatch.setattr(
            beit.beit.embeddings,
            "interpolate_pos_encoding",
            lambda embeddings, height, width: position_table_for_grid(
                trained_table, trained_grid, (height // patch_size, width // patch_size)
            ),
        )
        for theirs, expected in zip(beit(pixel_values).feature_maps, mine, strict=True):
            torch.testing.assert_close(theirs, expected, rtol=1e-5, atol=1e-5)
