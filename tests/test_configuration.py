"""Configuration validation, as a property: a config drawn from valid and edge values of every field is either
refused with an error naming an offending field and its value, or builds a model that trains with a finite loss;
the oracles below decide which (for MixedAE and CAE)."""

import pytest
import torch
from helpers import single_torch_thread  # noqa: F401 (fixture)
from huggingface_hub.errors import StrictDataclassError
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.activations import ACT2FN

from transformers_mixedae import CAEConfig, CAEForPreTraining, MixedAEConfig, MixedAEForPreTraining

pytestmark = pytest.mark.usefixtures("single_torch_thread")

# Each config field: (values that are valid on their own, edge values). A drawn config starts from valid values and
# gets 0 to 2 fields replaced by edge values; whether the result is valid also depends on how fields combine
# (image and patch size, widths and heads, mixing and mask ratio, grid and mask count), which the oracles decide.
NUMBER = (int, float)
SHARED_FIELDS = dict(
    image_size=([16, 16, 8, 24, (8, 16), [16, 8]], [10, 0, -16, [16], [16, 8, 4], (0, 16)]),
    patch_size=([4, 4, 2, 8], [3, 0, -4]),
    num_channels=([3, 3, 1], [0, -1]),
    hidden_size=([32, 16], [30, 0, -32, "32", 32.0]),
    num_attention_heads=([4, 2, 1], [3, 0, -2]),
    intermediate_size=([64, 8], [0, -8]),
    num_hidden_layers=([2, 1], [0, -1]),
    hidden_act=(["gelu", "relu"], ["no_such_activation"]),
    layer_norm_eps=([1e-6, 1e-12, 1], [0.0, 0, -1e-6]),
    initializer_range=([0.02, 0.01], [0.0, -0.02]),
    hidden_dropout_prob=([0.0, 0.1], [1.0, 1.5, -0.1]),
    attention_probs_dropout_prob=([0.0, 0.1], [1.0, -0.1]),
    drop_path_rate=([0.0, 0.1], [1.0, -0.1]),
    qkv_bias=([True, False], ["yes"]),
    decoder_hidden_size=([16, 32], [30, 0, -16]),
    decoder_num_attention_heads=([2, 1], [3, 0]),
)
MIXEDAE_FIELDS = dict(
    SHARED_FIELDS,
    decoder_num_hidden_layers=([1, 2], [0, -1]),
    decoder_intermediate_size=([32, 8], [0, -1]),
    mixing_ratio=([0.25, 0.5, 1.0], [0.3, 0.2, 0.0, 1.5, -0.5]),
    mask_ratio=([0.0, 0.5, 0.75], [0.3, 1.0, -0.1]),
    homologous_attention_layers=([None, [], [0]], [[1], [5], [-1]]),
    homologous_topk=([None, 1, 2], [0, 1000, -1]),
    homologous_contrastive_weight=([0.1, 0.0], [-1.0]),
    homologous_contrastive_temperature=([0.1, 1.0], [0.0, -0.1]),
    norm_pix_loss=([True, False], [1]),
    segment_embedding=(["encoder", "decoder", "none"], ["both"]),
    homologous_contrastive_target=(["encoder_output", "attention_logits", "queries_keys"], ["logits"]),
    homologous_projection_dim=([None, 8], [0, -4]),
    homologous_topk_schedule=(["constant", "linear"], ["cosine"]),
    homologous_selection=(["per_head", "head_mean"], ["mean"]),
    homologous_topk_anneal_steps=([3], [0, -1]),
    classifier_pooling=(["mean", "cls"], ["max"]),
)
CAE_FIELDS = dict(
    SHARED_FIELDS,
    regressor_num_layers=([1, 2], [0, -1]),
    decoder_num_layers=([1, 2], [0, -1]),
    decoder_intermediate_size=([None, 16], [0, -4]),
    layer_scale_init_value=([0.1, None, 0.0, -1.0], []),  # <= 0 or None: no LayerScale
    decoder_layer_scale_init_value=([0.1, 0.0], []),
    vocab_size=([16, 2], [1, 0]),
    target=(["pixels", "tokens"], ["latents"]),
    norm_pix_loss=([True, False], []),
    mask_type=(["block", "random"], ["grid"]),
    num_masking_patches=([1, 3, 6], [0, 64, -1]),
    mask_min_num_patches=([1, 2, 16], [0, -2]),
    mask_max_num_patches=([None, 4], [0, -1]),
    mask_min_aspect=([0.3, 1.0], [0.0, -1.0, 2.0]),
    mask_max_aspect=([None, 3.0], [0.1]),
    align_loss_weight=([2.0, 0.0], [-1.0]),
    classifier_pooling=(["mean", "cls"], ["max"]),
)


@st.composite
def config_values(draw, fields: dict) -> dict:
    values = {name: draw(st.sampled_from(valid)) for name, (valid, _) in fields.items()}
    changed = draw(st.lists(st.sampled_from([name for name, (_, edge) in fields.items() if edge]), max_size=2,
                            unique=True))
    for name in changed:
        values[name] = draw(st.sampled_from(fields[name][1]))
    return values


def names_field_and_value(error: Exception, fields: dict) -> bool:
    """Whether the message names one of `fields` together with its value."""
    message = str(error)
    for name, value in fields.items():
        if f"{name}={value}" in message or f"{name}={value!r}" in message:
            return True
        if f"'{name}'" in message and repr(value) in message:  # strict type check: "Field 'x' ... (value: ...)"
            return True
    return False


def check_construction(config_class, values: dict, violations: list[tuple[str, ...]]):
    """Build the config: an error naming an offending field (and its value) iff the oracle found a violation."""
    if violations:
        with pytest.raises((ValueError, StrictDataclassError)) as error:
            config_class(**values)
        offending = {name: values[name] for violation in violations for name in violation}
        assert names_field_and_value(error.value, offending), (str(error.value), violations)
        return None
    return config_class(**values)


def type_violations(values: dict) -> list[tuple[str, ...]]:
    """Values of the wrong type for the strict dataclass (a string or float count, a non-bool flag)."""
    integers = ("hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_layers")
    flags = ("qkv_bias", "norm_pix_loss")
    return ([(name,) for name in integers if type(values[name]) is not int]
            + [(name,) for name in flags if type(values[name]) is not bool])


def common_violations(values: dict, positive: tuple[str, ...]):
    """Rules MixedAE and CAE share; returns (violations, patch grid or None when the geometry is invalid)."""
    violations = type_violations(values)
    numbers = {name: value for name, value in values.items() if type(value) in NUMBER}
    violations += [(name,) for name in positive if values[name] is not None and numbers.get(name, 1) < 1]
    violations += [(name,) for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate")
                   if not 0 <= values[name] < 1]
    violations += [(name,) for name in ("layer_norm_eps", "initializer_range") if values[name] <= 0]
    if values["hidden_act"] not in ACT2FN:
        violations.append(("hidden_act",))
    for width, heads in (("hidden_size", "num_attention_heads"), ("decoder_hidden_size", "decoder_num_attention_heads")):
        if numbers.get(width, 0) >= 1 and values[heads] >= 1 and numbers[width] % values[heads]:
            violations.append((width, heads))
        if numbers.get(width, 0) >= 1 and numbers[width] % 4:
            violations.append((width,))
    size, patch = values["image_size"], values["patch_size"]
    hw = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    if len(hw) != 2 or min(hw) < 1:
        violations.append(("image_size",))
        return violations, None
    if patch < 1:
        return violations, None
    if hw[0] % patch or hw[1] % patch:
        violations.append(("image_size", "patch_size"))
        return violations, None
    return violations, (hw[0] // patch, hw[1] // patch)


def mixedae_violations(values: dict) -> list[tuple[str, ...]]:
    violations, grid = common_violations(
        values, ("hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_layers", "decoder_hidden_size",
                 "decoder_num_attention_heads", "decoder_intermediate_size", "decoder_num_hidden_layers", "patch_size",
                 "num_channels"),
    )
    ratio, mask_ratio = values["mixing_ratio"], values["mask_ratio"]
    ratio_ok = 0 < ratio <= 1 and abs(1 / ratio - round(1 / ratio)) < 1e-6
    if not ratio_ok:
        violations.append(("mixing_ratio",))
    if not 0 <= mask_ratio < 1:
        violations.append(("mask_ratio",))
    num_kept = None
    if grid is not None and 0 <= mask_ratio < 1:
        # The number of keys (and so homologous_topk's range) does not depend on the mixing ratio.
        num_kept = round(grid[0] * grid[1] * (1 - mask_ratio))
    if num_kept is not None and ratio_ok:
        group_size = round(1 / ratio)
        if num_kept < group_size or num_kept % group_size:
            violations.append(("mask_ratio", "mixing_ratio", "image_size", "patch_size"))
        elif num_kept // group_size == grid[0] * grid[1]:  # every patch of every image visible: nothing to predict
            violations.append(("mask_ratio", "mixing_ratio"))
    layers, depth = values["homologous_attention_layers"], values["num_hidden_layers"]
    if layers and type(depth) is int and depth >= 1 and any(not 0 <= i < depth for i in layers):
        violations.append(("homologous_attention_layers",))
    topk = values["homologous_topk"]
    if topk is not None and (topk < 1 or (num_kept is not None and topk > num_kept + 1)):
        violations.append(("homologous_topk",))
    if values["homologous_contrastive_weight"] < 0:
        violations.append(("homologous_contrastive_weight",))
    if values["homologous_contrastive_temperature"] <= 0:
        violations.append(("homologous_contrastive_temperature",))
    if values["segment_embedding"] not in ("encoder", "decoder", "none"):
        violations.append(("segment_embedding",))
    target = values["homologous_contrastive_target"]
    if target not in ("encoder_output", "attention_logits", "queries_keys"):
        violations.append(("homologous_contrastive_target",))
    elif target != "encoder_output" and layers == []:
        violations.append(("homologous_contrastive_target", "homologous_attention_layers"))
    projection = values["homologous_projection_dim"]
    if projection is not None and projection < 1:
        violations.append(("homologous_projection_dim",))
    elif projection is not None and target != "encoder_output":
        violations.append(("homologous_projection_dim", "homologous_contrastive_target"))
    if values["homologous_selection"] not in ("per_head", "head_mean"):
        violations.append(("homologous_selection",))
    schedule, anneal_steps = values["homologous_topk_schedule"], values["homologous_topk_anneal_steps"]
    if schedule not in ("constant", "linear"):
        violations.append(("homologous_topk_schedule",))
    if anneal_steps < 0:
        violations.append(("homologous_topk_anneal_steps",))
    elif schedule == "linear" and anneal_steps == 0:
        violations.append(("homologous_topk_schedule", "homologous_topk_anneal_steps"))
    if values["classifier_pooling"] not in ("mean", "cls"):
        violations.append(("classifier_pooling",))
    return violations


def cae_violations(values: dict) -> list[tuple[str, ...]]:
    violations, grid = common_violations(
        values, ("hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_layers", "decoder_hidden_size",
                 "decoder_num_attention_heads", "decoder_intermediate_size", "regressor_num_layers",
                 "decoder_num_layers", "patch_size", "num_channels"),
    )
    if values["mask_type"] not in ("block", "random"):
        violations.append(("mask_type",))
    if grid is not None:
        if not 0 < values["num_masking_patches"] < grid[0] * grid[1]:
            violations.append(("num_masking_patches", "image_size", "patch_size"))
        if values["mask_type"] == "block" and min(grid) < 2:
            violations.append(("mask_type", "image_size", "patch_size"))
    if values["mask_min_num_patches"] < 1:
        violations.append(("mask_min_num_patches",))
    if values["mask_max_num_patches"] is not None and values["mask_max_num_patches"] < 1:
        violations.append(("mask_max_num_patches",))
    if values["mask_min_aspect"] <= 0:
        violations.append(("mask_min_aspect",))
    elif values["mask_max_aspect"] is not None and values["mask_max_aspect"] < values["mask_min_aspect"]:
        violations.append(("mask_max_aspect", "mask_min_aspect"))
    elif values["mask_max_aspect"] is None and values["mask_min_aspect"] > 1:
        violations.append(("mask_min_aspect", "mask_max_aspect"))
    if values["target"] not in ("tokens", "pixels"):
        violations.append(("target",))
    if values["target"] == "tokens" and values["vocab_size"] < 2:
        violations.append(("vocab_size",))
    if values["align_loss_weight"] < 0:
        violations.append(("align_loss_weight",))
    if values["classifier_pooling"] not in ("mean", "cls"):
        violations.append(("classifier_pooling",))
    return violations


CONFIG_EXAMPLES = settings(max_examples=150, deadline=None, database=None)


def random_inputs(config) -> dict[str, torch.Tensor]:
    """A batch the model takes: two groups of images for MixedAE, token ids for CAE with target='tokens'."""
    height, width = config.image_hw
    batch_size = 2 * getattr(config, "group_size", 1)
    inputs = {"pixel_values": torch.randn(batch_size, config.num_channels, height, width)}
    if getattr(config, "target", None) == "tokens":
        inputs["labels"] = torch.randint(0, config.vocab_size, (batch_size, config.num_patches))
    return inputs


@pytest.mark.parametrize(
    ("config_class", "model_class", "fields", "oracle"),
    [(MixedAEConfig, MixedAEForPreTraining, MIXEDAE_FIELDS, mixedae_violations),
     (CAEConfig, CAEForPreTraining, CAE_FIELDS, cae_violations)],
    ids=["mixedae", "cae"],
)
@CONFIG_EXAMPLES
@given(data=st.data())
def test_configs_are_rejected_naming_the_field_or_train_with_a_finite_loss(config_class, model_class, fields, oracle,
                                                                            data):
    values = data.draw(config_values(fields), label="config")
    config = check_construction(config_class, {**values, "attn_implementation": "eager"}, oracle(values))
    if config is not None:
        outputs = model_class(config)(**random_inputs(config))
        assert torch.isfinite(outputs.loss), values



@pytest.mark.parametrize(("config_class", "model_class", "field", "value", "message"),
                         [(MixedAEConfig, MixedAEForPreTraining, "mixing_ratio", 0.3, "1/mixing_ratio must be an integer"),
                          (CAEConfig, CAEForPreTraining, "num_masking_patches", 99, "num_masking_patches=99 must be")],
                         ids=["mixedae", "cae"])
def test_a_field_set_after_construction_is_validated_when_a_model_is_built(config_class, model_class, field, value,
                                                                            message):
    # Before, `config.mixing_ratio = 0.3` built a model with groups of round(1 / 0.3) = 3 images, without a word.
    geometry = dict(num_masking_patches=6) if config_class is CAEConfig else {}
    config = config_class(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          image_size=16, patch_size=4, **geometry)
    setattr(config, field, value)
    with pytest.raises(ValueError, match=message):
        model_class(config)
