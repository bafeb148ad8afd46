"""CAE reproduces the official implementation (Atten4Vis/CAE, commit a7fd162) on its reference tensors."""

from pathlib import Path

import pytest
import torch
from helpers import single_torch_thread  # noqa: F401 (fixture)
from safetensors import safe_open
from safetensors.torch import load_file

from transformers_mixedae.hub.convert_cae_checkpoint import build_model, convert_cae_state_dict, unwrap_state_dict

FIXTURE = Path(__file__).parent / "fixtures" / "cae_official_A_tiny.safetensors"
TOLERANCE = 1e-5

pytestmark = pytest.mark.usefixtures("single_torch_thread")

# Atten4Vis/CAE ("A") key prefixes -> lxtGH/CAE ("L") ones, to check that a checkpoint in either official naming converts to the same model.
A_TO_L_PREFIXES = (
    ("alignment_encoder.", "teacher."),
    ("regresser.regressor_blocks.", "pretext_neck.regressor_blocks."),
    ("regresser.norm.", "pretext_neck.norm."),
    ("decoder.decoder_blocks.", "pretext_neck.decoder_blocks."),
    ("decoder.norm.", "pretext_neck.norm2."),
    ("decoder.head.", "pretext_neck.head."),
)


@pytest.fixture(scope="module")
def reference():
    tensors = load_file(str(FIXTURE))
    with safe_open(str(FIXTURE), "pt") as handle:
        metadata = handle.metadata()
    return tensors, metadata


def convert(state_dict, metadata):
    return convert_cae_state_dict(
        state_dict,
        num_attention_heads=int(metadata["num_heads"]),
        decoder_num_attention_heads=int(metadata["decoder_num_heads"]),
    )


def max_differences(model, tensors) -> dict[str, float]:
    with torch.no_grad():
        outputs = model(tensors["inputs.pixel_values"], bool_masked_pos=tensors["inputs.bool_masked_pos"])
    return {
        "logits": (outputs.logits.reshape(-1, outputs.logits.shape[-1]) - tensors["outputs.logits"]).abs().max().item(),
        "latent_pred": (outputs.predicted_latents - tensors["outputs.latent_pred"]).abs().max().item(),
        "latent_target": (outputs.target_latents - tensors["outputs.latent_target"]).abs().max().item(),
    }


def test_inferred_config_matches_fixture_metadata(reference):
    tensors, metadata = reference
    config = convert(unwrap_state_dict(tensors), metadata).config
    assert config.image_size == int(metadata["img_size"])
    assert config.patch_size == int(metadata["patch_size"])
    assert config.hidden_size == int(metadata["embed_dim"])
    assert config.num_hidden_layers == int(metadata["depth"])
    assert config.decoder_hidden_size == int(metadata["decoder_embed_dim"])
    assert config.regressor_num_layers == int(metadata["regressor_depth"])
    assert config.decoder_num_layers == int(metadata["decoder_depth"])
    assert config.vocab_size == int(metadata["decoder_num_classes"])
    assert config.intermediate_size == int(metadata["mlp_ratio"]) * config.hidden_size
    assert config.layer_norm_eps == float(metadata["layer_norm_eps"])
    assert config.layer_scale_init_value is not None
    assert not config.uses_projection


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_matches_official_outputs(reference, attn_implementation):
    tensors, metadata = reference
    model = build_model(convert(unwrap_state_dict(tensors), metadata))
    model.set_attn_implementation(attn_implementation)
    differences = max_differences(model, tensors)
    assert max(differences.values()) < TOLERANCE, differences


def test_logits_layout_is_batch_major_raster_order(reference):
    tensors, metadata = reference
    model = build_model(convert(unwrap_state_dict(tensors), metadata))
    mask = tensors["inputs.bool_masked_pos"].bool()
    with torch.no_grad():
        outputs = model(tensors["inputs.pixel_values"], bool_masked_pos=mask)
    num_masked = int(mask[0].sum())
    assert outputs.logits.shape == (mask.shape[0], num_masked, 8192)
    assert outputs.predicted_latents.shape == outputs.target_latents.shape == (mask.shape[0], num_masked, 64)
    assert torch.equal(outputs.bool_masked_pos, mask)


def test_target_is_the_encoder_on_the_masked_patches(reference):
    tensors, metadata = reference
    model = build_model(convert(unwrap_state_dict(tensors), metadata))
    mask = tensors["inputs.bool_masked_pos"].bool()
    with torch.no_grad():
        outputs = model(tensors["inputs.pixel_values"], bool_masked_pos=mask)
        encoded = model.cae(tensors["inputs.pixel_values"], bool_masked_pos=~mask).last_hidden_state[:, 1:]
    assert torch.equal(outputs.target_latents, encoded)


def test_lxtgh_naming_converts_to_the_same_model(reference):
    tensors, metadata = reference
    state_dict = unwrap_state_dict(tensors)
    renamed = {}
    for key, value in state_dict.items():
        if key == "rd_pos_embed":  # the L release recomputes it instead of storing it
            continue
        for old, new in A_TO_L_PREFIXES:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        renamed[key] = value
    conversion = convert(renamed, metadata)
    assert conversion.naming == "L"
    differences = max_differences(build_model(conversion), tensors)
    assert max(differences.values()) < TOLERANCE, differences
