"""CAE models: shapes, losses, training behaviour, initialisation, save/load, Auto classes, attention backends,
errors. Tiny configurations (see helpers.tiny_cae_config)."""

import math
import re

import pytest
import torch
from helpers import single_torch_thread, tiny_cae_config  # noqa: F401 (fixture)
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
)

from transformers_mixedae import (
    CAEConfig,
    CAEForImageClassification,
    CAEForPreTraining,
    CAEImageProcessorPil,
    CAEModel,
)
from transformers_mixedae.models.modeling_cae import CAERegressorLayer
from transformers_mixedae.models.vit_layers import ViTLayer, sincos_2d_position_embedding

pytestmark = pytest.mark.usefixtures("single_torch_thread")

BATCH = 2
NUM_PATCHES = 16
NUM_MASKED = 6


def fixed_mask(batch_size: int = BATCH) -> torch.Tensor:
    mask = torch.zeros(batch_size, NUM_PATCHES, dtype=torch.bool)
    for row in range(batch_size):
        mask[row, torch.randperm(NUM_PATCHES)[:NUM_MASKED]] = True
    return mask


def pixels(batch_size: int = BATCH, size: int = 32) -> torch.Tensor:
    return torch.randn(batch_size, 3, size, size)


def token_labels(batch_size: int = BATCH) -> torch.Tensor:
    return torch.randint(0, 50, (batch_size, NUM_PATCHES))


# ---------------------------------------------------------------------------------------------- outputs and losses
def test_pretraining_output_fields_and_shapes():
    model = CAEForPreTraining(tiny_cae_config()).eval()
    mask = fixed_mask()
    outputs = model(pixels(), bool_masked_pos=mask, labels=token_labels())
    assert outputs.logits.shape == (BATCH, NUM_MASKED, 50)
    assert outputs.predicted_latents.shape == outputs.target_latents.shape == (BATCH, NUM_MASKED, 16)
    assert torch.equal(outputs.bool_masked_pos, mask)
    expected = outputs.main_loss + 2.0 * outputs.align_loss
    assert torch.allclose(outputs.loss, expected)
    assert set(outputs.keys()) == {
        "loss",
        "main_loss",
        "align_loss",
        "logits",
        "predicted_latents",
        "target_latents",
        "bool_masked_pos",
    }


def test_without_labels_only_the_alignment_loss_is_computed():
    outputs = CAEForPreTraining(tiny_cae_config()).eval()(pixels(), bool_masked_pos=fixed_mask())
    assert outputs.loss is None and outputs.main_loss is None
    assert outputs.align_loss is not None and outputs.align_loss.ndim == 0


def test_labels_for_all_patches_or_only_the_masked_ones_give_the_same_loss():
    model = CAEForPreTraining(tiny_cae_config()).eval()
    pixel_values, mask, labels = pixels(), fixed_mask(), token_labels()
    full = model(pixel_values, bool_masked_pos=mask, labels=labels)
    selected = labels[mask]
    per_row = model(pixel_values, bool_masked_pos=mask, labels=selected.reshape(BATCH, NUM_MASKED))
    flat = model(pixel_values, bool_masked_pos=mask, labels=selected)
    assert torch.allclose(full.main_loss, per_row.main_loss) and torch.allclose(full.main_loss, flat.main_loss)
    expected = torch.nn.functional.cross_entropy(full.logits.reshape(-1, 50), selected)
    assert torch.allclose(full.main_loss, expected)
    for dtype in (torch.int32, torch.int16, torch.uint8):  # ids of any integer type give the same loss
        assert torch.equal(model(pixel_values, bool_masked_pos=mask, labels=labels.to(dtype)).main_loss, full.main_loss)


def test_pixel_target_is_the_non_official_normalised_pixel_mse():
    model = CAEForPreTraining(tiny_cae_config(target="pixels")).eval()
    pixel_values, mask = pixels(), fixed_mask()
    outputs = model(pixel_values, bool_masked_pos=mask)
    assert outputs.logits.shape == (BATCH, NUM_MASKED, 8 * 8 * 3)
    patches = pixel_values.reshape(BATCH, 3, 4, 8, 4, 8).permute(0, 2, 4, 3, 5, 1).reshape(BATCH, 16, -1)
    target = patches[mask].reshape(BATCH, NUM_MASKED, -1)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    assert torch.allclose(outputs.main_loss, torch.nn.functional.mse_loss(outputs.logits, target), atol=1e-6)
    assert torch.allclose(outputs.loss, outputs.main_loss + 2.0 * outputs.align_loss)


def test_base_model_encodes_all_or_only_visible_patches():
    model = CAEModel(tiny_cae_config()).eval()
    pixel_values, mask = pixels(), fixed_mask()
    full = model(pixel_values)
    assert full.last_hidden_state.shape == (BATCH, 1 + NUM_PATCHES, 32)
    assert torch.equal(full.pooler_output, full.last_hidden_state[:, 0])
    visible = model(pixel_values, bool_masked_pos=mask)
    assert visible.last_hidden_state.shape == (BATCH, 1 + NUM_PATCHES - NUM_MASKED, 32)
    # A 3-D (batch, grid_h, grid_w) mask means the same.
    grid_mask = model(pixel_values, bool_masked_pos=mask.reshape(BATCH, 4, 4))
    assert torch.equal(grid_mask.last_hidden_state, visible.last_hidden_state)


def test_hidden_states_attentions_and_tuples():
    model = CAEForPreTraining(tiny_cae_config()).eval()
    mask = fixed_mask()
    outputs = model(pixels(), bool_masked_pos=mask, output_hidden_states=True, output_attentions=True)
    num_tokens = 1 + NUM_PATCHES - NUM_MASKED
    assert len(outputs.hidden_states) == 3 and outputs.hidden_states[0].shape == (BATCH, num_tokens, 32)
    assert len(outputs.attentions) == 2 and outputs.attentions[0].shape == (BATCH, 4, num_tokens, num_tokens)
    as_tuple = model(pixels(), bool_masked_pos=mask, return_dict=False)
    assert isinstance(as_tuple, tuple)
    base = CAEModel(tiny_cae_config()).eval()
    assert len(base(pixels(), output_hidden_states=True).hidden_states) == 3


def test_classification_mean_pooling_uses_fc_norm_and_cls_pooling_the_final_norm():
    model = CAEForImageClassification(tiny_cae_config(num_labels=5)).eval()
    assert isinstance(model.cae.layernorm, torch.nn.Identity) and model.fc_norm is not None
    pixel_values = pixels()
    outputs = model(pixel_values, labels=torch.tensor([1, 3]))
    assert outputs.logits.shape == (BATCH, 5) and outputs.loss.ndim == 0
    tokens = model.cae(pixel_values).last_hidden_state
    assert torch.allclose(outputs.logits, model.classifier(model.fc_norm(tokens[:, 1:].mean(1))))
    cls_model = CAEForImageClassification(tiny_cae_config(num_labels=5, classifier_pooling="cls")).eval()
    assert cls_model.fc_norm is None and isinstance(cls_model.cae.layernorm, torch.nn.LayerNorm)
    assert cls_model(pixel_values).logits.shape == (BATCH, 5)


def test_interpolate_pos_encoding_uses_sincos_table_of_the_new_grid():
    config = tiny_cae_config()
    model = CAEForPreTraining(config).eval()
    pixel_values = pixels(size=48)
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        model(pixel_values)
    outputs = model(pixel_values, interpolate_pos_encoding=True)
    # 6 of 16 patches at 32 px -> 14 of 36 at 48 px.
    assert outputs.bool_masked_pos.shape == (BATCH, 36) and outputs.logits.shape[1] == 14
    features = model.cae(pixel_values, interpolate_pos_encoding=True).last_hidden_state
    assert features.shape == (BATCH, 37, 32)


# ---------------------------------------------------------------------------------------------- training behaviour
def test_gradient_reaches_every_trainable_parameter_after_one_step():
    model = CAEForPreTraining(tiny_cae_config()).train()
    outputs = model(pixels(), bool_masked_pos=fixed_mask(), labels=token_labels())
    outputs.loss.backward()
    trainable = {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}
    no_gradient = [name for name, parameter in trainable.items() if parameter.grad is None or not parameter.grad.any()]
    assert no_gradient == []
    frozen = sorted(name for name, parameter in model.named_parameters() if not parameter.requires_grad)
    assert frozen == ["cae.embeddings.position_embeddings", "regressor.position_embeddings"]
    before = {name: parameter.detach().clone() for name, parameter in trainable.items()}
    torch.optim.SGD(trainable.values(), lr=0.1).step()
    assert all(not torch.equal(before[name], parameter) for name, parameter in trainable.items())
    assert outputs.target_latents.grad_fn is None


def test_no_alignment_copy_of_the_encoder_weights():
    model = CAEForPreTraining(tiny_cae_config())
    assert not any("align" in name or "teacher" in name for name, _ in model.named_parameters())
    assert not any(isinstance(module, CAEModel) and module is not model.cae for module in model.modules())


def test_target_pass_runs_second_in_train_mode_with_the_same_weights():
    model = CAEForPreTraining(tiny_cae_config(drop_path_rate=0.5)).train()
    pixel_values, mask = pixels(8), fixed_mask(8)
    torch.manual_seed(11)
    outputs = model(pixel_values, bool_masked_pos=mask)
    torch.manual_seed(11)
    model.cae(pixel_values, bool_masked_pos=mask)  # the visible pass consumes its drop-path draws first
    with torch.no_grad():
        target = model.project(model.cae(pixel_values, bool_masked_pos=~mask).last_hidden_state[:, 1:])
    assert torch.equal(outputs.target_latents, target)
    with torch.no_grad():
        eval_target = model.eval()(pixel_values, bool_masked_pos=mask).target_latents
    assert not torch.allclose(eval_target, target)  # stochastic depth really was active


# ---------------------------------------------------------------------------------------------- initialisation
def test_initialisation_follows_the_official_scheme():
    config = tiny_cae_config()
    model = CAEForPreTraining(config)
    grid = config.grid_size
    assert torch.equal(
        model.cae.embeddings.position_embeddings, sincos_2d_position_embedding(*grid, 32, row_first=True)
    )
    assert torch.equal(model.regressor.position_embeddings, sincos_2d_position_embedding(*grid, 16, row_first=True))
    for layer in list(model.cae.layers) + list(model.decoder.layers):
        width = layer.attention.q_proj.in_features
        assert layer.attention.q_proj.weight.abs().max() <= math.sqrt(6 / (4 * width))  # fused qkv bound
        assert layer.attention.k_proj.bias is None
        assert torch.all(layer.lambda_1 == 0.1) and torch.all(layer.lambda_2 == 0.1)
    for layer in model.regressor.layers:
        assert layer.cross_attention.k_proj.bias is None
        assert torch.all(layer.lambda_1 == 0.1) and layer.lambda_1.requires_grad
    for token in (model.cae.embeddings.cls_token, model.regressor.mask_token):
        assert token.abs().max() <= 0.02 and token.abs().max() > 0
    classifier = CAEForImageClassification(tiny_cae_config(num_labels=3)).classifier
    # Official fine-tuning: truncated normal(0.02) scaled by init_scale 0.001.
    assert 0 < classifier.weight.abs().max() <= 0.02 * 0.001 and not classifier.bias.any()
    # Blocks without LayerScale own no direct parameters: their q/k/v must still get the fused-qkv bound.
    plain = CAEModel(tiny_cae_config(layer_scale_init_value=None))
    for layer in plain.layers:
        for projection in (layer.attention.q_proj, layer.attention.k_proj, layer.attention.v_proj):
            assert projection.weight.abs().max() <= math.sqrt(6 / (4 * 32))
    projection = plain.embeddings.patch_embeddings.projection
    assert projection.weight.abs().max() <= 0.02 and not projection.bias.any()
    cross = model.regressor.layers[0].cross_attention.q_proj.weight
    assert cross.abs().max() > math.sqrt(6 / (4 * 16))  # separate q/k/v: plain xavier, bound sqrt(6 / 2D)


def test_non_positive_decoder_layer_scale_freezes_regressor_scale_and_drops_decoder_scale():
    model = CAEForPreTraining(tiny_cae_config(decoder_layer_scale_init_value=0.0, layer_scale_init_value=None))
    regressor_layer = model.regressor.layers[0]
    assert torch.all(regressor_layer.lambda_1 == 1.0) and not regressor_layer.lambda_1.requires_grad
    assert model.decoder.layers[0].lambda_1 is None and model.cae.layers[0].lambda_1 is None


def test_meta_device_load_path_initialises_every_tensor_like_init(tmp_path):
    config = tiny_cae_config()
    torch.manual_seed(0)
    reference = CAEForPreTraining(config)
    model = CAEForPreTraining.from_pretrained(None, config=config, state_dict={})
    reference_state = reference.state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.isfinite(tensor).all() and tensor.abs().max() < 10, name
        if "position_embeddings" in name or "lambda" in name or "layernorm" in name or name.endswith("bias"):
            assert torch.equal(tensor, reference_state[name]), name
    for module in model.modules():
        if isinstance(module, (ViTLayer, CAERegressorLayer)) and module.lambda_1 is not None:
            assert torch.all(module.lambda_1 == 0.1)


def test_a_model_split_with_its_regressor_offloaded_to_disk_gives_the_same_loss(tmp_path):
    torch.manual_seed(0)
    model = CAEForPreTraining(tiny_cae_config()).eval()
    model.save_pretrained(tmp_path / "model")
    pixel_values, mask, labels = pixels(), fixed_mask(), token_labels()
    with torch.no_grad():
        expected = model(pixel_values, bool_masked_pos=mask, labels=labels).loss
    device_map = {"cae": "cpu", "encoder_to_regressor": "cpu", "encoder_to_regressor_norm": "cpu",
                  "regressor": "disk", "decoder": "cpu"}
    offloaded = CAEForPreTraining.from_pretrained(tmp_path / "model", device_map=device_map,
                                                  offload_folder=tmp_path / "offload").eval()
    with torch.no_grad():
        assert torch.allclose(offloaded(pixel_values, bool_masked_pos=mask, labels=labels).loss, expected)


# ---------------------------------------------------------------------------------------------- loading and Auto classes
# (save / load round trips, eager = SDPA and activation checkpointing for both families: test_conformance.py)
def test_auto_classes(tmp_path):
    config = tiny_cae_config(num_labels=3)
    CAEForPreTraining(config).save_pretrained(tmp_path)
    CAEImageProcessorPil().save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), CAEConfig)
    assert isinstance(AutoModelForPreTraining.from_pretrained(tmp_path), CAEForPreTraining)
    assert type(AutoModel.from_pretrained(tmp_path)) is CAEModel
    assert isinstance(AutoModelForImageClassification.from_pretrained(tmp_path), CAEForImageClassification)
    assert isinstance(AutoImageProcessor.from_pretrained(tmp_path), CAEImageProcessorPil)
    assert isinstance(AutoConfig.for_model("cae"), CAEConfig)


def test_encoder_and_classifier_start_from_a_pretraining_checkpoint(tmp_path):
    config = tiny_cae_config(num_labels=3)
    pretrained = CAEForPreTraining(config)
    with torch.no_grad():
        pretrained.cae.layernorm.weight.uniform_(0.5, 1.5)
        pretrained.cae.layernorm.bias.uniform_(-0.5, 0.5)
    pretrained.save_pretrained(tmp_path / "pretraining")
    encoder = CAEModel.from_pretrained(tmp_path / "pretraining")
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(tensor, pretrained.cae.state_dict()[name]), name
    encoder.save_pretrained(tmp_path / "encoder")
    for source in ("pretraining", "encoder"):
        classifier = CAEForImageClassification.from_pretrained(tmp_path / source)
        # Official fine-tuning: the pre-trained final LayerNorm becomes fc_norm (mean pooling).
        assert torch.equal(classifier.fc_norm.weight, pretrained.cae.layernorm.weight), source
        assert torch.equal(classifier.fc_norm.bias, pretrained.cae.layernorm.bias), source
        assert torch.equal(classifier.cae.layers[1].mlp.fc2.weight, pretrained.cae.layers[1].mlp.fc2.weight)
    cls_classifier = CAEForImageClassification.from_pretrained(tmp_path / "pretraining", classifier_pooling="cls")
    assert torch.equal(cls_classifier.cae.layernorm.weight, pretrained.cae.layernorm.weight)


def test_official_parameter_counts():
    """The official model sizes: ViT-B with a 768-wide regressor and decoder, and ViT-S with a projection from 384
    to 768 (built on the meta device)."""

    def count(module) -> int:
        return sum(parameter.numel() for parameter in module.parameters())

    with torch.device("meta"):
        base = CAEForPreTraining(CAEConfig())
        small = CAEForPreTraining(CAEConfig(hidden_size=384, intermediate_size=1536))
    assert count(base.cae) == 85_807_872
    assert count(base.regressor.layers) + count(base.regressor.layernorm) == 28_368_384
    assert count(base.decoder) == 34_655_744
    assert sum(p.numel() for p in base.parameters() if p.requires_grad) == 148_681_472
    assert count(small.cae) == 21_670_272
    assert count(small.encoder_to_regressor) + count(small.encoder_to_regressor_norm) == 297_216


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"hidden_size": 30}, "hidden_size=30 is not divisible by num_attention_heads=4"),
        ({"hidden_size": 30, "num_attention_heads": 6}, "hidden_size=30 is not divisible by 4"),
        (
            {"decoder_num_attention_heads": 3},
            "decoder_hidden_size=16 is not divisible by decoder_num_attention_heads=3",
        ),
        ({"image_size": 30}, "image_size=30 is not divisible by patch_size=8"),
        ({"regressor_num_layers": 0}, "regressor_num_layers=0 must be at least 1"),
        ({"num_masking_patches": 16}, r"num_masking_patches=16 must be between 1 and 15"),
        ({"num_masking_patches": 0}, r"num_masking_patches=0 must be between 1 and 15"),
        ({"mask_type": "grid"}, "mask_type='grid'"),
        ({"mask_min_aspect": 0.0}, "mask_min_aspect=0.0"),
        ({"mask_min_aspect": 0.5, "mask_max_aspect": 0.4}, "mask_max_aspect=0.4"),
        ({"target": "features"}, "target='features'"),
        ({"align_loss_weight": -1.0}, "align_loss_weight=-1.0"),
        ({"classifier_pooling": "max"}, "classifier_pooling='max'"),
        ({"drop_path_rate": 1.0}, r"drop_path_rate=1.0 must be in \[0, 1\)"),
        ({"image_size": 8, "num_masking_patches": 1}, "needs at least one masked|between 1 and 0"),
        ({"image_size": 16, "num_masking_patches": 2, "patch_size": 16}, "between 1 and 0"),
    ],
)
def test_bad_configs_raise_clear_errors(overrides, message):
    with pytest.raises((ValueError, StrictDataclassClassValidationError), match=message):
        tiny_cae_config(**overrides)


def test_block_masking_on_a_one_row_grid_is_refused():
    with pytest.raises(StrictDataclassClassValidationError, match="at least 2x2"):
        tiny_cae_config(image_size=(8, 32), num_masking_patches=2)
    assert tiny_cae_config(image_size=(8, 32), num_masking_patches=2, mask_type="random").num_patches == 4


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"pixel_values": torch.randn(2, 1, 32, 32)}, "num_channels=3"),
        ({"pixel_values": torch.randn(2, 3, 24, 24)}, "doesn't match model"),
        ({"pixel_values": torch.randn(3, 32, 32)}, "must have shape"),
        ({"bool_masked_pos": torch.zeros(2, 15, dtype=torch.bool)}, r"must have shape \(batch_size, num_patches\)"),
        ({"bool_masked_pos": torch.tensor([[True] * 6 + [False] * 10, [True] * 5 + [False] * 11])}, "same number"),
        ({"bool_masked_pos": torch.zeros(2, 16, dtype=torch.bool)}, "masks 0 of 16"),
        ({"bool_masked_pos": torch.full((2, 16), 0.5)}, "boolean or integer 0/1"),
        ({"labels": torch.zeros(2, 7, dtype=torch.long)}, "`labels` must have shape"),
        ({"labels": torch.full((2, 16), 50)}, r"outside \[0, 50\)"),
        ({"labels": torch.zeros(2, 16)}, "integer token ids"),
    ],
)
def test_bad_inputs_raise_clear_errors(inputs, message):
    model = CAEForPreTraining(tiny_cae_config()).eval()
    inputs = {"pixel_values": pixels(), "bool_masked_pos": fixed_mask(), **inputs}
    with pytest.raises(ValueError, match=message):
        model(**inputs)


def test_labels_are_refused_with_the_pixel_target():
    model = CAEForPreTraining(tiny_cae_config(target="pixels"))
    with pytest.raises(ValueError, match="non-official target='pixels'"):
        model(pixels(), bool_masked_pos=fixed_mask(), labels=token_labels())


# ---------------------------------------------------------------------------------------------- input dtypes
@pytest.mark.parametrize("model_class", [CAEModel, CAEForPreTraining, CAEForImageClassification])
def test_float64_and_half_pixel_values_are_cast_to_the_model_dtype(model_class):
    model = model_class(tiny_cae_config(num_labels=3)).eval()
    images, mask, labels = pixels(), fixed_mask(), token_labels()
    kwargs = {"bool_masked_pos": mask, "labels": labels} if model_class is CAEForPreTraining else {}
    with torch.no_grad():
        results = {dtype: model(images.to(dtype), **kwargs) for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16)}
    first = (lambda out: out.last_hidden_state) if model_class is CAEModel else (lambda out: out.logits)
    outputs = {dtype: first(out) for dtype, out in results.items()}
    assert all(output.dtype == torch.float32 for output in outputs.values())
    # float64 -> float32 is exact for float32-representable values: the same result as the float32 input.
    assert torch.equal(outputs[torch.float64], outputs[torch.float32])
    if model_class is CAEForPreTraining:
        assert torch.equal(results[torch.float64].loss, results[torch.float32].loss)
    torch.testing.assert_close(outputs[torch.float16], outputs[torch.float32], rtol=0.02, atol=0.02)
    torch.testing.assert_close(outputs[torch.bfloat16], outputs[torch.float32], rtol=0.1, atol=0.1)


@pytest.mark.parametrize("model_class", [CAEModel, CAEForPreTraining, CAEForImageClassification])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool])
def test_integer_pixel_values_raise_a_clear_error(model_class, dtype):
    model = model_class(tiny_cae_config(num_labels=3)).eval()
    message = (
        f"`pixel_values` has dtype {dtype}, but the model takes rescaled and normalised float pixel values: pass the "
        "output of the model's image processor (`processor(images, return_tensors='pt')`)."
    )
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        model(torch.zeros(BATCH, 3, 32, 32, dtype=dtype))


# ---------------------------------------------------------------------------------------------- loading mistakes
def test_loading_a_mixedae_checkpoint_names_the_file_and_the_right_classes(tmp_path):
    from helpers import tiny_mixedae_config

    from transformers_mixedae import MixedAEForPreTraining

    MixedAEForPreTraining(tiny_mixedae_config()).save_pretrained(tmp_path)
    message = (
        f"{tmp_path / 'config.json'} describes a model_type='mixedae' model, but CAEConfig loads model_type='cae' "
        "only: load it with MixedAEConfig and its model classes, or with the Auto classes (AutoConfig, AutoModel, "
        "AutoModelForPreTraining, AutoModelForImageClassification), which pick the class from model_type."
    )
    for load in (CAEForPreTraining.from_pretrained, CAEModel.from_pretrained,
                 CAEForImageClassification.from_pretrained, CAEConfig.from_pretrained):
        with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
            load(tmp_path)
    with pytest.raises(ValueError, match="^" + re.escape("the config dict describes a model_type='mixedae' model")):
        CAEConfig.from_dict(tiny_mixedae_config().to_dict())
    assert type(AutoModelForPreTraining.from_pretrained(tmp_path)) is MixedAEForPreTraining


def test_truncated_weights_name_the_file_and_the_fix(tmp_path):
    CAEForPreTraining(tiny_cae_config()).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5])
    message = (
        f"cannot load the weights of {tmp_path}: {weights} (Error while deserializing header: header too small) is "
        "truncated or corrupt. Download it again (`from_pretrained(..., force_download=True)` for a Hub model) or "
        "save the model again with `save_pretrained`."
    )
    for load in (CAEForPreTraining.from_pretrained, CAEModel.from_pretrained,
                 CAEForImageClassification.from_pretrained, AutoModel.from_pretrained):
        with pytest.raises(OSError, match="^" + re.escape(message) + "$"):
            load(tmp_path)


# ---------------------------------------------------------------------------------------------- checkpoint keys
# The weight names of every class for a one-layer tiny config (with projection and LayerScale), frozen: a change here
# breaks every saved and converted checkpoint.
CAE_MLP_KEYS = ["layernorm_after.weight", "layernorm_after.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
                "mlp.fc2.bias"]
CAE_ATTENTION_KEYS = ["q_proj.weight", "q_proj.bias", "k_proj.weight", "v_proj.weight", "v_proj.bias", "o_proj.weight",
                      "o_proj.bias"]
CAE_LAYER_KEYS = [
    "lambda_1", "lambda_2", "layernorm_before.weight", "layernorm_before.bias",
    *(f"attention.{key}" for key in CAE_ATTENTION_KEYS), *CAE_MLP_KEYS,
]
CAE_ENCODER_KEYS = [
    "embeddings.cls_token", "embeddings.position_embeddings", "embeddings.patch_embeddings.projection.weight",
    "embeddings.patch_embeddings.projection.bias", *(f"layers.0.{key}" for key in CAE_LAYER_KEYS),
]
CAE_REGRESSOR_LAYER_KEYS = [
    "lambda_1", "lambda_2", "layernorm_query.weight", "layernorm_query.bias", "layernorm_key.weight",
    "layernorm_key.bias", "layernorm_value.weight", "layernorm_value.bias",
    *(f"cross_attention.{key}" for key in CAE_ATTENTION_KEYS), *CAE_MLP_KEYS,
]
CAE_KEYS = {
    CAEModel: CAE_ENCODER_KEYS + ["layernorm.weight", "layernorm.bias"],
    CAEForPreTraining: [f"cae.{key}" for key in CAE_ENCODER_KEYS]
    + ["cae.layernorm.weight", "cae.layernorm.bias"]
    + ["encoder_to_regressor.weight", "encoder_to_regressor.bias", "encoder_to_regressor_norm.weight",
       "encoder_to_regressor_norm.bias"]
    + ["regressor.mask_token", "regressor.position_embeddings"]
    + [f"regressor.layers.0.{key}" for key in CAE_REGRESSOR_LAYER_KEYS]
    + ["regressor.layernorm.weight", "regressor.layernorm.bias"]
    + [f"decoder.layers.0.{key}" for key in CAE_LAYER_KEYS]
    + ["decoder.layernorm.weight", "decoder.layernorm.bias", "decoder.head.weight", "decoder.head.bias"],
    # Mean pooling: the final encoder LayerNorm is `fc_norm`.
    CAEForImageClassification: [f"cae.{key}" for key in CAE_ENCODER_KEYS]
    + ["fc_norm.weight", "fc_norm.bias", "classifier.weight", "classifier.bias"],
}


@pytest.mark.parametrize("model_class", list(CAE_KEYS))
def test_weight_names_are_those_of_saved_checkpoints(model_class):
    config = tiny_cae_config(num_hidden_layers=1, regressor_num_layers=1, decoder_num_layers=1, num_labels=3)
    assert sorted(model_class(config).state_dict()) == sorted(CAE_KEYS[model_class])


def test_classification_with_cls_pooling_keeps_the_final_layernorm():
    config = tiny_cae_config(num_hidden_layers=1, num_labels=3, classifier_pooling="cls")
    expected = [f"cae.{key}" for key in CAE_ENCODER_KEYS] + ["cae.layernorm.weight", "cae.layernorm.bias"]
    assert sorted(CAEForImageClassification(config).state_dict()) == sorted(
        expected + ["classifier.weight", "classifier.bias"]
    )


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_every_attention_of_encoder_regressor_and_decoder_goes_through_the_configured_kernel(monkeypatch, precision):
    # The regressor's cross-attention dispatches like the self-attention blocks: with "sdpa" every attention call of
    # the step (encoder: visible and target passes; regressor; decoder) reaches transformers' SDPA function, without
    # a mask and with q, k and v in one dtype (bf16 under autocast), which is what the flash kernels need on a GPU.
    from transformers.modeling_utils import AttentionInterface

    calls = []
    sdpa = AttentionInterface._global_mapping["sdpa"]

    def spy(module, query, key, value, attention_mask, **kwargs):
        calls.append((module, query.shape, key.shape, attention_mask, {query.dtype, key.dtype, value.dtype}))
        return sdpa(module, query, key, value, attention_mask, **kwargs)

    monkeypatch.setitem(AttentionInterface._global_mapping, "sdpa", spy)
    config = tiny_cae_config()
    for implementation, expected_calls in (("eager", 0), ("sdpa", 2 * 2 + 2 + 2)):
        calls.clear()
        model = CAEForPreTraining(tiny_cae_config(attn_implementation=implementation)).train()
        assert model.config._attn_implementation == implementation
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        with torch.autocast("cpu", dtype=dtype, enabled=precision == "bf16"):
            loss = model(pixels(), bool_masked_pos=fixed_mask(), labels=token_labels()).loss
        loss.backward()
        assert len(calls) == expected_calls, implementation
    encoder = [layer.attention for layer in model.cae.layers]
    regressor = [layer.cross_attention for layer in model.regressor.layers]
    decoder = [layer.attention for layer in model.decoder.layers]
    assert [call[0] for call in calls] == encoder + encoder + regressor + decoder
    heads, decoder_heads = config.num_attention_heads, config.decoder_num_attention_heads
    visible = NUM_PATCHES - NUM_MASKED
    encoder_dim, decoder_dim = config.hidden_size // heads, config.decoder_hidden_size // decoder_heads
    expected_shapes = (
        [((BATCH, heads, 1 + visible, encoder_dim),) * 2] * 2
        + [((BATCH, heads, 1 + NUM_MASKED, encoder_dim),) * 2] * 2
        # Queries: the masked positions; keys: visible latents then the queries.
        + [((BATCH, decoder_heads, NUM_MASKED, decoder_dim), (BATCH, decoder_heads, NUM_PATCHES, decoder_dim))] * 2
        + [((BATCH, decoder_heads, NUM_MASKED, decoder_dim),) * 2] * 2
    )
    assert [(tuple(call[1]), tuple(call[2])) for call in calls] == expected_shapes
    assert all(call[3] is None and call[4] == {dtype} for call in calls)
