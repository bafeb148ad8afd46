"""Arguments of run_mim.py and run_image_classification.py: every invalid value is refused when the arguments are
parsed (naming the flag and the value), every valid one is accepted as given; `--config_overrides` is read by field
type and layered field by field over a JSON config's."""

import json
import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transformers_mixedae import CAEConfig, MixedAEConfig
from transformers_mixedae.training.arguments import parse_config_overrides, parse_run_arguments


def refused(argv: list[str], flag: str, value: str, requirement: str):
    """`parse_run_arguments(argv)` raises exactly `--{flag} {value} is not valid: {requirement}.`"""
    message = f"--{flag} {value} is not valid: {requirement}."
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_run_arguments(argv)


# ---------------------------------------------------------------------------------------------- the issue's cases
@pytest.mark.parametrize(
    ("argv", "flag", "value", "requirement"),
    [
        (["--num_train_epochs", "0"], "num_train_epochs", "0.0",
         "a number of epochs > 0 (fractions allowed), or set --max_steps"),
        (["--num_train_epochs", "-1"], "num_train_epochs", "-1.0",
         "a number of epochs > 0 (fractions allowed), or set --max_steps"),
        (["--max_steps=-5"], "max_steps", "-5",
         "a whole number of optimizer steps >= 0 (0 evaluates the model as built, without training)"),
        (["--learning_rate", "-0.001"], "learning_rate", "-0.001", "a number > 0"),
        (["--learning_rate=-1e-3"], "learning_rate", "-0.001", "a number > 0"),
        (["--gradient_accumulation_steps", "0"], "gradient_accumulation_steps", "0", "a whole number >= 1"),
    ],
    ids=["epochs_0", "epochs_-1", "steps_-5", "lr_negative", "lr_negative_exponent", "accumulation_0"],
)
def test_the_issue_s_invalid_counts_and_rates_are_refused_at_parse_time(argv, flag, value, requirement):
    refused(argv, flag, value, requirement)


def test_max_steps_zero_stays_valid_and_fractional_epochs_are_accepted():
    assert parse_run_arguments(["--max_steps", "0"])[2].max_steps == 0
    assert parse_run_arguments(["--num_train_epochs", "0.5"])[2].num_train_epochs == 0.5


@pytest.mark.parametrize("spelling", ["none", "None", "NULL", ""])
def test_label_column_name_none_means_unlabelled_data(spelling):
    _, data_args, _, _ = parse_run_arguments(["--label_column_name", spelling])
    assert data_args.label_column_name is None
    assert parse_run_arguments(["--label_column_name", "fine_label"])[1].label_column_name == "fine_label"


def test_resume_from_checkpoint_none_means_no_resume():
    assert parse_run_arguments(["--resume_from_checkpoint", "none"])[2].resume_from_checkpoint is None


def test_image_classification_needs_a_label_column():
    from transformers_mixedae.tasks.image_classification_args import parse_classification_arguments

    message = ("--label_column_name 'none' is not valid: image classification trains on labels; name the column that "
               "holds them.")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_classification_arguments(["--label_column_name", "none"])


@pytest.mark.parametrize(
    ("argv", "flag", "value", "requirement"),
    [
        (["--mode", "probe"], "mode", "'probe'", "choose one of ('finetune', 'linear_probe', 'attentive_probe')"),
        (["--recipe", "beit"], "recipe", "'beit'", "choose one of ('mae', 'cae')"),
        (["--layer_decay", "0"], "layer_decay", "0.0", "a number in (0, 1]"),
        (["--label_smoothing", "1"], "label_smoothing", "1.0", "a number in [0, 1)"),
        (["--momentum", "1"], "momentum", "1.0", "a number in [0, 1)"),
    ],
)
def test_image_classification_flags_are_refused_at_parse_time(argv, flag, value, requirement):
    from transformers_mixedae.tasks.image_classification_args import parse_classification_arguments

    message = f"--{flag} {value} is not valid: {requirement}."
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_classification_arguments(argv)


@pytest.mark.parametrize(
    ("argv", "flag", "value", "requirement"),
    [
        (["--model_type", "mae"], "model_type", "'mae'", "choose one of ('mixedae', 'cae')"),
        (["--train_dir", "/does/not/exist"], "train_dir", "'/does/not/exist'",
         "no such folder; give a folder of images or Parquet shards"),
        (["--lr_scheduler_type", "cosin"], "lr_scheduler_type", "'cosin'", None),
        (["--lr_scheduler_type", "reduce_lr_on_plateau"], "lr_scheduler_type", "'reduce_lr_on_plateau'", None),
        (["--lr_scheduler_type", "warmup_stable_decay"], "lr_scheduler_type", "'warmup_stable_decay'", None),
        (["--max_train_samples", "0"], "max_train_samples", "0", "a whole number >= 1 (leave it out for all samples)"),
        (["--save_steps", "0"], "save_steps", "0",
         "a whole number >= 1 (leave it out to turn it off)"),
        (["--save_total_limit", "0"], "save_total_limit", "0", "a whole number >= 1 (none keeps every checkpoint)"),
        (["--dataloader_num_workers=-1"], "dataloader_num_workers", "-1", "0 (load in the training process) or more"),
        (["--image_size", "0"], "image_size", "0", "a whole number >= 1"),
    ],
)
def test_other_flags_are_refused_at_parse_time(argv, flag, value, requirement):
    if requirement is None:  # the schedulers that run without a metric or extra settings
        with pytest.raises(ValueError, match=rf"^--{flag} {re.escape(value)} is not valid: choose one of \['linear', "
                                             r"'cosine', .*'inverse_sqrt'\]\.$"):
            parse_run_arguments(argv)
    else:
        refused(argv, flag, value, requirement)


# ---------------------------------------------------------------------------------------------- numeric flags: any value
def in_range(low, high, low_open, high_open):
    def check(value):
        return (math.isfinite(value) and (value > low if low_open else value >= low)
                and (high is None or (value < high if high_open else value <= high)))
    return check


# flag -> (requirement as the message says it, valid(value))
FLOAT_FLAGS = {
    "learning_rate": ("a number > 0", in_range(0, None, True, False)),
    "weight_decay": ("a number >= 0", in_range(0, None, False, False)),
    "adam_beta1": ("a number in [0, 1)", in_range(0, 1, False, True)),
    "adam_beta2": ("a number in [0, 1)", in_range(0, 1, False, True)),
    "warmup_ratio": ("a fraction in [0, 1)", in_range(0, 1, False, True)),
    "max_skipped_fraction": ("a fraction between 0 and 1", in_range(0, 1, False, False)),
    "num_train_epochs": ("a number of epochs > 0 (fractions allowed), or set --max_steps",
                         in_range(0, None, True, False)),
    "knn_temperature": ("a number > 0", in_range(0, None, True, False)),
}
INT_FLAGS = {
    "gradient_accumulation_steps": ("a whole number >= 1", 1),
    "per_device_train_batch_size": ("a whole number >= 1", 1),
    "logging_steps": ("a whole number >= 1", 1),
    "max_steps": ("a whole number of optimizer steps >= 0 (0 evaluates the model as built, without training)", 0),
    "save_steps": ("a whole number >= 1 (leave it out to turn it off)", 1),
    "eval_steps": ("a whole number >= 1 (leave it out to turn it off)", 1),
    "shuffle_buffer_size": ("a whole number >= 1", 1),
}
ARGUMENT_GROUP = {"max_skipped_fraction": 1, "shuffle_buffer_size": 1, "knn_temperature": 3}


@settings(max_examples=60, deadline=None)
@given(flag=st.sampled_from(sorted(FLOAT_FLAGS)),
       value=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(-2, 2), st.sampled_from([0.0, 1.0])))
def test_any_float_flag_value_is_refused_naming_it_or_accepted_as_given(flag, value):
    requirement, valid = FLOAT_FLAGS[flag]
    argv = [f"--{flag}={value!r}"]
    if valid(value):
        parsed = parse_run_arguments(argv)[ARGUMENT_GROUP.get(flag, 2)]
        assert getattr(parsed, flag) == value
    else:
        refused(argv, flag, repr(value), requirement)


@settings(max_examples=60, deadline=None)
@given(flag=st.sampled_from(sorted(INT_FLAGS)), value=st.integers(-10**6, 10**6))
def test_any_integer_flag_value_is_refused_naming_it_or_accepted_as_given(flag, value):
    requirement, smallest = INT_FLAGS[flag]
    argv = [f"--{flag}={value}"]
    if value >= smallest:
        assert getattr(parse_run_arguments(argv)[ARGUMENT_GROUP.get(flag, 2)], flag) == value
    else:
        refused(argv, flag, str(value), requirement)


# ---------------------------------------------------------------------------------------------- --config_overrides
def test_segment_embedding_none_is_the_string_none_and_optional_fields_read_none_as_none():
    assert parse_config_overrides("segment_embedding=none,homologous_topk=none,homologous_attention_layers=null",
                                  MixedAEConfig) == {"segment_embedding": "none", "homologous_topk": None,
                                                     "homologous_attention_layers": None}
    assert parse_config_overrides("hidden_act='gelu',mask_type=block", CAEConfig) == {"hidden_act": "gelu",
                                                                                      "mask_type": "block"}


def test_segment_embedding_none_reaches_the_model_through_the_command_line(tmp_path):
    from tiny_runs import command_line

    from transformers_mixedae.tasks.masked_image_modeling import run_pretraining
    from transformers_mixedae.training.arguments import ModelArguments

    argv = command_line(tmp_path, max_steps=1, max_train_samples=16)
    index = argv.index("--config_overrides") + 1
    argv[index] += ",segment_embedding=none"
    model_args, data_args, training_args, evaluation_args = parse_run_arguments(argv)
    assert isinstance(model_args, ModelArguments) and model_args.config_overrides.endswith(",segment_embedding=none")
    results = run_pretraining(model_args, data_args, training_args, evaluation_args)
    assert results["train_steps"] == 1
    assert json.loads((tmp_path / "config.json").read_text())["segment_embedding"] == "none"


def test_a_json_config_s_overrides_and_the_command_line_s_layer_field_by_field(tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"config_overrides": "hidden_size=64,num_hidden_layers=2", "image_size": 32}))
    for argv in (["--config_overrides", "hidden_size=128,segment_embedding=none"],
                 ["--config_overrides=hidden_size=128,segment_embedding=none"]):
        model_args, _, _, _ = parse_run_arguments([str(config), *argv])
        assert parse_config_overrides(model_args.config_overrides, MixedAEConfig) == {
            "hidden_size": 128, "num_hidden_layers": 2, "segment_embedding": "none"}
        assert model_args.image_size == 32
    model_args, _, _, _ = parse_run_arguments([str(config)])
    assert model_args.config_overrides == "hidden_size=64,num_hidden_layers=2"


@pytest.mark.parametrize("spelling", ["--config-overrides", "--config_overr"])
def test_the_dash_spelling_of_config_overrides_also_layers_over_a_json_config(tmp_path, spelling):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"config_overrides": "hidden_size=64,num_hidden_layers=2"}))
    model_args, _, _, _ = parse_run_arguments([str(config), spelling, "hidden_size=128"])
    assert parse_config_overrides(model_args.config_overrides, MixedAEConfig) == {
        "hidden_size": 128, "num_hidden_layers": 2}


@pytest.mark.parametrize(
    ("content", "error", "message"),
    [
        (None, FileNotFoundError, "the arguments file '{path}' does not exist."),
        ("{not json", ValueError, "{path} is not valid JSON ("),
        ("[1, 2]", ValueError, "{path} must hold a JSON object of argument names and values."),
    ],
    ids=["missing", "invalid", "not_an_object"],
)
def test_a_bad_arguments_file_is_named(tmp_path, content, error, message):
    path = tmp_path / "run.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(error, match="^" + re.escape(message.format(path=path))):
        parse_run_arguments([str(path)])


def test_config_overrides_cannot_change_the_model_type(tmp_path):
    from tiny_runs import TINY_MIXEDAE, arguments

    from transformers_mixedae.tasks.masked_image_modeling import run_pretraining

    with pytest.raises(ValueError, match=r"--config_overrides names 'model_type', which is not a field of "
                                         r"MixedAEConfig\."):
        run_pretraining(*arguments(tmp_path, config_overrides=TINY_MIXEDAE + ",model_type=cae", max_steps=1))
    assert not any(tmp_path.iterdir())


# Values that `key=value` writes unambiguously, by field type.
NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=8)
FINITE = st.floats(allow_nan=False, allow_infinity=False, width=64)
FIELD_VALUES = {
    "hidden_size": st.integers(-1000, 1000),
    "qkv_bias": st.booleans(),
    "mask_ratio": FINITE,
    "hidden_act": st.one_of(NAME, st.sampled_from(["none", "null", "true", "1", "[1]"])),
    "segment_embedding": st.one_of(NAME, st.sampled_from(["none", "None", "false", "0"])),
    "homologous_topk": st.one_of(st.none(), st.integers(0, 64)),
    "homologous_attention_layers": st.one_of(st.none(), st.lists(st.integers(0, 12), max_size=4)),
    "image_size": st.one_of(st.integers(1, 512), st.lists(st.integers(1, 512), min_size=2, max_size=2)),
}


def written(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "none"
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return repr(value) if isinstance(value, float) else str(value)


@settings(max_examples=80, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(FIELD_VALUES)), st.none(), min_size=1).flatmap(
    lambda keys: st.fixed_dictionaries({key: FIELD_VALUES[key] for key in keys})))
def test_config_overrides_round_trip_by_field_type(values):
    text = ",".join(f"{key}={written(value)}" for key, value in values.items())
    assert parse_config_overrides(text, MixedAEConfig) == values


OVERRIDE_LAYER = st.lists(st.tuples(st.sampled_from(["hidden_size", "mask_ratio", "segment_embedding",
                                                     "homologous_attention_layers"]),
                                    st.sampled_from(["1", "0.5", "none", "[1, 2]", "pixels"])),
                          max_size=4).map(lambda items: ",".join(f"{key}={value}" for key, value in items) or None)


@settings(max_examples=80, deadline=None)
@given(OVERRIDE_LAYER, OVERRIDE_LAYER, OVERRIDE_LAYER)
def test_merging_config_overrides_is_a_field_by_field_update(first, second, third):
    from transformers_mixedae.training.arguments import merge_config_overrides

    def parsed(text):
        return parse_config_overrides(text, MixedAEConfig)

    merged = merge_config_overrides(first, second)
    assert parsed(merged) == {**parsed(first), **parsed(second)}
    assert parsed(merge_config_overrides(merged, third)) == parsed(merge_config_overrides(first, merge_config_overrides(
        second, third)))
    assert parsed(merge_config_overrides(first)) == parsed(first) and parsed(merge_config_overrides(first, None)) == (
        parsed(first))
    assert merge_config_overrides(None, None) is None
