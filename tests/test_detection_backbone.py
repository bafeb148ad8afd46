"""MixedAEBackbone and CAEBackbone inside transformers' DETR-family detectors (`backbone_config=` our config, no timm):
forward, Hungarian-matched loss, gradients into the backbone, save/load through the Auto classes, and pre-trained
encoder weights loaded into the detector's backbone."""

import itertools

import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForObjectDetection,
    ConditionalDetrConfig,
    ConditionalDetrForObjectDetection,
    DeformableDetrConfig,
    DeformableDetrForObjectDetection,
    DetrConfig,
    DetrForObjectDetection,
)
from transformers.loss import loss_deformable_detr, loss_for_object_detection
from transformers.utils import import_utils

from transformers_mixedae import CAEBackbone, CAEForPreTraining, MixedAEBackbone, MixedAEForPreTraining

from helpers import tiny_cae_config, tiny_mixedae_config

FAMILIES = {
    "mixedae": (tiny_mixedae_config, MixedAEBackbone, MixedAEForPreTraining),
    "cae": (tiny_cae_config, CAEBackbone, CAEForPreTraining),
}
TRANSFORMER = dict(
    d_model=32,  # Deformable DETR's GroupNorm has 32 groups
    encoder_layers=1,
    decoder_layers=1,
    encoder_ffn_dim=32,
    decoder_ffn_dim=32,
    encoder_attention_heads=2,
    decoder_attention_heads=2,
    num_queries=5,
    num_labels=3,
    use_timm_backbone=False,
)
# detector: (config class, model class, backbone overrides, detector overrides, class logits per query)
DETECTORS = {
    # DETR and Conditional DETR take the last feature map: one encoder layer's output at stride patch_size.
    "detr": (DetrConfig, DetrForObjectDetection, dict(out_indices=[2]), {}, 3 + 1),  # + the no-object class
    "conditional_detr": (ConditionalDetrConfig, ConditionalDetrForObjectDetection, dict(out_indices=[1, 2]), {}, 3),
    # Deformable DETR takes every map: the multi-scale adapter's strides p/4, p/2, p, 2p (ViTDet-style input).
    "deformable_detr": (
        DeformableDetrConfig,
        DeformableDetrForObjectDetection,
        dict(num_hidden_layers=4, out_indices=[1, 2, 3, 4], backbone_multi_scale=True),
        # 2 decoder layers: with 1, transformers 5.24's bbox_embed weight tying finds nothing to tie and raises.
        dict(num_feature_levels=4, encoder_n_points=2, decoder_n_points=2, decoder_layers=2),
        3,
    ),
}


def exact_assignment(cost) -> tuple[np.ndarray, np.ndarray]:
    """`scipy.optimize.linear_sum_assignment` for a tall cost matrix (queries x targets), by trying every injection of
    targets into queries: exact, and fast for the few queries of these tests."""
    cost = np.asarray(cost)
    num_queries, num_targets = cost.shape
    rows = min(
        itertools.permutations(range(num_queries), num_targets),
        key=lambda chosen: cost[list(chosen), range(num_targets)].sum(),
    )
    order = np.argsort(rows)
    return np.asarray(rows, dtype=np.int64)[order], np.arange(num_targets)[order]


@pytest.fixture(autouse=True)
def hungarian_matching(monkeypatch):
    """The detectors' matcher needs scipy, which is not one of our dependencies: without it, the exact brute-force
    assignment above stands in (the matching is not differentiated through, so the loss and gradients are the same)."""
    try:
        import scipy.optimize  # noqa: F401
    except ImportError:
        monkeypatch.setitem(import_utils.BACKENDS_MAPPING, "scipy", (lambda: True, ""))
        for module in (loss_for_object_detection, loss_deformable_detr):
            monkeypatch.setattr(module, "linear_sum_assignment", exact_assignment, raising=False)


def detector(family: str, name: str):
    config_class, model_class, backbone_overrides, overrides, _ = DETECTORS[name]
    backbone_config = FAMILIES[family][0](**backbone_overrides)
    return model_class(config_class(backbone_config=backbone_config, **(TRANSFORMER | overrides)))


def targets() -> list[dict]:
    return [
        {"class_labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.3, 0.1, 0.1]])},
        {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.4, 0.6, 0.3, 0.3]])},
    ]


def test_exact_assignment_finds_the_cheapest_matching():
    # Columns are targets; the optimum (cost 3) sends target 0 to query 1 and target 1 to query 0.
    rows, columns = exact_assignment([[4.0, 1.0], [2.0, 5.0], [3.0, 2.0]])
    assert rows.tolist() == [0, 1] and columns.tolist() == [1, 0]


@pytest.mark.parametrize("name", DETECTORS)
@pytest.mark.parametrize("family", FAMILIES)
def test_forward_loss_and_backward_reach_the_backbone(family, name):
    model = detector(family, name)
    backbone = model.model.backbone.model
    assert type(backbone) is FAMILIES[family][1]
    # Non-square, padded input: the backbone follows the patch grid, the detector's mask marks the padding.
    pixel_values = torch.randn(2, 3, 64, 48)
    pixel_mask = torch.ones(2, 64, 48, dtype=torch.long)
    pixel_mask[1, :, 32:] = 0
    outputs = model(pixel_values, pixel_mask=pixel_mask, labels=targets())
    assert outputs.logits.shape == (2, 5, DETECTORS[name][4])
    assert outputs.pred_boxes.shape == (2, 5, 4)
    assert ((outputs.pred_boxes >= 0) & (outputs.pred_boxes <= 1)).all()
    assert {"loss_ce", "loss_bbox", "loss_giou"} <= set(outputs.loss_dict)
    assert torch.isfinite(outputs.loss) and outputs.loss > 0
    outputs.loss.backward()
    # DETR freezes only ResNet stems: of our backbone, only CAE's fixed sin-cos position table is frozen (as in the
    # backbone itself; MixedAE's backbone trains its table, as MAE's fine-tuning does), and every other parameter
    # gets a gradient.
    parameters = dict(backbone.named_parameters())
    frozen = [name for name, parameter in parameters.items() if not parameter.requires_grad]
    assert frozen == ([f"{backbone.base_model_prefix}.embeddings.position_embeddings"] if family == "cae" else [])
    missing = [name for name, parameter in parameters.items() if parameter.requires_grad and parameter.grad is None]
    assert missing == []
    assert all(parameter.grad.abs().sum() > 0 for name, parameter in parameters.items() if "patch_embeddings" in name)


@pytest.mark.parametrize("name", DETECTORS)
@pytest.mark.parametrize("family", FAMILIES)
def test_save_and_load_through_the_auto_class(family, name, tmp_path):
    model = detector(family, name).eval()
    model.save_pretrained(tmp_path)
    # (A detector picks one attention backend for itself and its backbone, sdpa here, whatever the tiny backbone
    # config said; loading picks the same, so the outputs are exact.)
    loaded, info = AutoModelForObjectDetection.from_pretrained(tmp_path, output_loading_info=True)
    loaded.eval()
    assert type(loaded) is DETECTORS[name][1]
    assert type(loaded.model.backbone.model) is FAMILIES[family][1]
    assert type(loaded.config.backbone_config) is type(model.config.backbone_config)
    assert loaded.config.backbone_config.out_indices == model.config.backbone_config.out_indices
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    pixel_values = torch.randn(1, 3, 48, 32)
    with torch.no_grad():
        for mine, theirs in zip(
            model.model.backbone.model(pixel_values).feature_maps,
            loaded.model.backbone.model(pixel_values).feature_maps,
            strict=True,
        ):
            torch.testing.assert_close(theirs, mine, rtol=0, atol=0)
        expected, actual = model(pixel_values), loaded(pixel_values)
    # Identical weights; Deformable DETR's head on 2 threads still differs by ~3e-8 between the two instances.
    torch.testing.assert_close(actual.logits, expected.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(actual.pred_boxes, expected.pred_boxes, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_pretrained_encoder_weights_load_into_the_detector(family, tmp_path):
    config_factory, backbone_class, pretraining_class = FAMILIES[family]
    pretraining_class(config_factory()).save_pretrained(tmp_path)
    # transformers builds a detector's backbone from its config only (random weights); the pre-trained encoder is
    # loaded as our backbone (decoder keys reported unused) and its weights copied in, all keys matching.
    pretrained = backbone_class.from_pretrained(tmp_path, out_indices=[2]).eval()
    model = DetrForObjectDetection(DetrConfig(backbone_config=pretrained.config, **TRANSFORMER)).eval()
    result = model.model.backbone.model.load_state_dict(pretrained.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    pixel_values = torch.randn(1, 3, 32, 40)
    with torch.no_grad():
        expected = pretrained(pixel_values).feature_maps
        features = model.model.backbone(pixel_values, torch.ones(1, 32, 40, dtype=torch.long))
    torch.testing.assert_close(features[-1][0], expected[-1], rtol=0, atol=0)
    assert model.model.backbone.intermediate_channel_sizes == pretrained.channels
