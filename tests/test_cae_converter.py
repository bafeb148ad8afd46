"""Conversion of official CAE checkpoints: file formats, namings, size inference, consistency checks, errors, CLI."""

import argparse
import json
import re
from pathlib import Path

import pytest
import torch
from helpers import single_torch_thread  # noqa: F401 (fixture)
from safetensors.torch import load_file
from test_output_folders import USER_FILES, fingerprint, finished_run

from transformers_mixedae import CAEForPreTraining, CAEImageProcessorPil, CAEModel
from transformers_mixedae.hub.convert_cae_checkpoint import (
    CAEConversionError,
    build_model,
    convert_cae_checkpoint,
    convert_cae_state_dict,
    infer_config,
    load_official_state_dict,
    main,
    unwrap_state_dict,
)

FIXTURE = Path(__file__).parent / "fixtures" / "cae_official_A_tiny.safetensors"
HEADS = {"num_attention_heads": 4, "decoder_num_attention_heads": 4}

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def fixture_tensors():
    return load_file(str(FIXTURE))


@pytest.fixture
def official(fixture_tensors):
    """A fresh copy of the official (A-named) state dict, safe to modify."""
    return {key: value.clone() for key, value in unwrap_state_dict(fixture_tensors).items()}


def encoder_keys_only(state_dict: dict, prefix: str = "encoder.") -> dict:
    return {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}


def test_unknown_keys_are_listed(official):
    official["decoder.extra_head.weight"] = torch.zeros(3)
    official["something_else"] = torch.zeros(1)
    with pytest.raises(CAEConversionError, match=r"unknown keys .*decoder\.extra_head\.weight.*something_else"):
        convert_cae_state_dict(official, **HEADS)


def test_missing_keys_are_listed(official):
    del official["decoder.decoder_blocks.1.mlp.fc2.bias"]
    del official["regresser.regressor_blocks.0.norm1_k.weight"]
    with pytest.raises(CAEConversionError, match="missing keys") as error:
        convert_cae_state_dict(official, **HEADS)
    message = str(error.value)
    assert "decoder.layers.1.mlp.fc2.bias" in message and "regressor.layers.0.layernorm_key.weight" in message


def test_a_missing_block_is_listed(official):
    for key in [key for key in official if key.startswith(("encoder.blocks.0.", "alignment_encoder.blocks.0."))]:
        del official[key]
    with pytest.raises(CAEConversionError, match=r"missing keys \[.*'cae\.layers\.0\.attention\.k_proj\.weight'"):
        convert_cae_state_dict(official, **HEADS)


def test_missing_alignment_copy_is_listed(official):
    del official["alignment_encoder.blocks.0.gamma_1"]
    with pytest.raises(
        CAEConversionError, match=r"without an alignment copy: \['alignment_encoder\.blocks\.0\.gamma_1'\]"
    ):
        convert_cae_state_dict(official, **HEADS)


def test_alignment_copy_must_equal_the_encoder(official):
    official["alignment_encoder.blocks.1.mlp.fc1.weight"] += 1e-3
    with pytest.raises(CAEConversionError, match="alignment encoder differs.*allow_alignment_mismatch"):
        convert_cae_state_dict(official, **HEADS)
    conversion = convert_cae_state_dict(official, allow_alignment_mismatch=True, **HEADS)
    assert any("Kept the encoder weights" in note for note in conversion.notes)
    assert torch.equal(
        conversion.state_dict["cae.layers.1.mlp.fc1.weight"], official["encoder.blocks.1.mlp.fc1.weight"]
    )


@pytest.mark.parametrize("table", ["encoder.pos_embed", "rd_pos_embed"])
def test_stored_sincos_tables_must_equal_ours(official, table):
    # A column-first table (the MAE layout) is not CAE's.
    swapped = official[table].clone()
    quarter = swapped.shape[-1] // 2
    official[table] = torch.cat([swapped[..., quarter:], swapped[..., :quarter]], dim=-1)
    official["alignment_encoder.pos_embed"] = official["encoder.pos_embed"]
    with pytest.raises(CAEConversionError, match=f"{table} differs from CAE's 2-D sin-cos table"):
        convert_cae_state_dict(official, **HEADS)


def test_mis_shaped_tensor_is_reported(official):
    official["decoder.head.bias"] = torch.zeros(10)
    with pytest.raises(CAEConversionError, match=r"shape mismatches .*decoder\.head\.bias"):
        convert_cae_state_dict(official, **HEADS)


def test_head_counts_come_from_flags_or_official_presets(official):
    with pytest.raises(CAEConversionError, match="--num_attention_heads"):
        convert_cae_state_dict(official)  # width 64 is no official preset
    # The official default of 12 regressor/decoder heads does not divide width 64: the error names the field.
    with pytest.raises(CAEConversionError, match="decoder_num_attention_heads=12"):
        convert_cae_state_dict(official, num_attention_heads=4)


@pytest.mark.parametrize(("width", "heads"), [(384, 12), (768, 12), (1024, 16)])
def test_official_widths_get_preset_heads_with_a_note(width, heads):
    shapes = {
        "encoder.patch_embed.proj.weight": (width, 3, 16, 16),
        "encoder.pos_embed": (1, 197, width),
        "encoder.blocks.0.mlp.fc1.weight": (4 * width, width),
        "encoder.blocks.0.attn.q_bias": (width,),
        "encoder.blocks.0.gamma_1": (width,),
        "encoder.blocks.11.gamma_1": (width,),
        "mask_token": (1, 1, 768),
        "regresser.regressor_blocks.3.mlp_cross.fc1.weight": (3072, 768),
        "regresser.regressor_blocks.0.mlp_cross.fc1.weight": (3072, 768),
        "decoder.decoder_blocks.3.mlp.fc1.weight": (3072, 768),
        "decoder.decoder_blocks.0.mlp.fc1.weight": (3072, 768),
        "decoder.decoder_blocks.0.gamma_1": (768,),
        "decoder.head.weight": (8192, 768),
    }
    state_dict = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    config, notes = infer_config(state_dict, pretraining=True)
    assert config.num_attention_heads == heads and config.decoder_num_attention_heads == 12
    assert (config.image_size, config.patch_size, config.num_hidden_layers) == (224, 16, 12)
    assert (config.regressor_num_layers, config.decoder_num_layers, config.vocab_size) == (4, 4, 8192)
    assert config.num_masking_patches == 98 and config.mask_min_num_patches == 16
    assert config.uses_projection == (width != 768)
    assert any("num_attention_heads" in note for note in notes)
    assert any("decoder_num_attention_heads=12 assumed" in note for note in notes)


def test_patch_and_image_size_flags_are_checked_against_shapes(official):
    with pytest.raises(CAEConversionError, match="--patch_size 8 contradicts"):
        convert_cae_state_dict(official, patch_size=8, **HEADS)
    with pytest.raises(CAEConversionError, match="--image_size 96"):
        convert_cae_state_dict(official, image_size=96, **HEADS)


def test_encoder_only_checkpoints_become_cae_model(official, fixture_tensors):
    reference = build_model(convert_cae_state_dict(official, **HEADS))
    prefixed = {key: value for key, value in official.items() if key.startswith("encoder.")}
    bare = encoder_keys_only(official)  # names as downstream loaders strip them: patch_embed.*, blocks.*, ...
    for state_dict, naming in ((prefixed, "A"), (bare, "bare")):
        conversion = convert_cae_state_dict(state_dict, num_attention_heads=4)
        assert conversion.model_class is CAEModel and conversion.naming == naming
        encoder = build_model(conversion)
        with torch.no_grad():
            features = encoder(fixture_tensors["inputs.pixel_values"]).last_hidden_state
            expected = reference.cae(fixture_tensors["inputs.pixel_values"]).last_hidden_state
        assert torch.equal(features, expected)
    assert convert_cae_state_dict(official, encoder_only=True, num_attention_heads=4).model_class is CAEModel


def test_load_official_pth_containers(tmp_path, official):
    torch.save({"model": official, "epoch": 3, "args": argparse.Namespace(lr=1.5e-3)}, tmp_path / "a.pth")
    loaded = load_official_state_dict(tmp_path / "a.pth")
    assert loaded.keys() == official.keys()
    torch.save({f"module.{key}": value for key, value in official.items()}, tmp_path / "b.pth")
    assert load_official_state_dict(tmp_path / "b.pth").keys() == official.keys()
    assert load_official_state_dict(FIXTURE).keys() == official.keys()
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_official_state_dict(tmp_path / "missing.pth")


def test_cli_main_writes_a_loadable_folder(tmp_path, official, fixture_tensors, capsys):
    checkpoint = tmp_path / "cae_tiny.pth"
    torch.save({"model": official}, checkpoint)
    output_dir = tmp_path / "converted"
    main(
        [
            "--checkpoint",
            str(checkpoint),
            "--output_dir",
            str(output_dir),
            "--num_attention_heads",
            "4",
            "--decoder_num_attention_heads",
            "4",
        ]
    )
    printed = capsys.readouterr().out
    assert "wrote CAEForPreTraining" in printed and "note:" in printed
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {p.name for p in output_dir.iterdir()}
    assert json.loads((output_dir / "config.json").read_text())["model_type"] == "cae"
    model = CAEForPreTraining.from_pretrained(output_dir).eval()
    with torch.no_grad():
        outputs = model(
            fixture_tensors["inputs.pixel_values"], bool_masked_pos=fixture_tensors["inputs.bool_masked_pos"]
        )
    assert (outputs.logits.reshape(-1, 8192) - fixture_tensors["outputs.logits"]).abs().max() < 1e-5
    processor = CAEImageProcessorPil.from_pretrained(output_dir)
    assert processor.crop_size["height"] == 64 and processor.patch_size == 16


def test_cli_main_reads_the_safetensors_fixture(tmp_path, capsys):
    main(
        [
            "--checkpoint",
            str(FIXTURE),
            "--output_dir",
            str(tmp_path),
            "--num_attention_heads",
            "4",
            "--decoder_num_attention_heads",
            "4",
            "--encoder_only",
        ]
    )
    assert "wrote CAEModel" in capsys.readouterr().out
    assert isinstance(CAEModel.from_pretrained(tmp_path), CAEModel)


def test_cli_main_reports_errors_without_a_traceback(tmp_path, official, capsys):
    official["unexpected.weight"] = torch.zeros(1)
    checkpoint = tmp_path / "bad.pth"
    torch.save(official, checkpoint)
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "--checkpoint",
                str(checkpoint),
                "--output_dir",
                str(tmp_path / "out"),
                "--num_attention_heads",
                "4",
                "--decoder_num_attention_heads",
                "4",
            ]
        )
    assert exit_info.value.code == 1
    error = capsys.readouterr().err
    assert "unknown keys" in error and "unexpected.weight" in error
    assert not (tmp_path / "out").exists()


def test_convert_cae_checkpoint_returns_the_model(tmp_path):
    model, conversion = convert_cae_checkpoint(FIXTURE, tmp_path, **HEADS)
    assert isinstance(model, CAEForPreTraining) and not model.training
    assert conversion.naming == "A"


# ---------------------------------------------------------------------------------------------- unreadable files
def convert_args(checkpoint, output_dir, *extra) -> list[str]:
    return ["--checkpoint", str(checkpoint), "--output_dir", str(output_dir), *extra, *HEAD_FLAGS]


HEAD_FLAGS = ("--num_attention_heads", "4", "--decoder_num_attention_heads", "4")
NOT_A_CHECKPOINT = (
    "is not a readable PyTorch checkpoint or safetensors file ({reason}): it is unreadable, truncated, corrupt or "
    "of another format. Download or copy the official checkpoint again."
)


def not_a_checkpoint(path, reason_pattern: str) -> str:
    message = re.escape(f"'{path}' " + NOT_A_CHECKPOINT)
    return "^" + message.replace(re.escape("{reason}"), reason_pattern) + "$"


def test_random_bytes_are_not_a_checkpoint(tmp_path):
    path = tmp_path / "cae.pth"
    path.write_bytes(b"\x13\x37" + bytes(range(256)) * 4)
    with pytest.raises(CAEConversionError, match=not_a_checkpoint(path, r"it starts with bytes b'\\x137\\x00\\x01', "
                                                                        "not a zip archive or a pickle stream")):
        load_official_state_dict(path)


def test_random_bytes_that_start_like_a_pickle_are_not_a_checkpoint(tmp_path):
    path = tmp_path / "cae.pth"
    path.write_bytes(b"\x80\x02" + b"\xdd" * 100)
    with pytest.raises(CAEConversionError, match=not_a_checkpoint(path, "its pickle stream is malformed")):
        load_official_state_dict(path)


def test_truncated_checkpoints_name_the_file(tmp_path, official):
    zipped, legacy = tmp_path / "zipped.pth", tmp_path / "legacy.pth"
    torch.save({"model": official}, zipped)
    torch.save({"model": official}, legacy, _use_new_zipfile_serialization=False)
    for path in (zipped, legacy):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CAEConversionError, match=not_a_checkpoint(zipped, "a zip archive whose end is missing")):
        load_official_state_dict(zipped)
    legacy_reason = r"unexpected EOF, expected \d+ more bytes.*"
    with pytest.raises(CAEConversionError, match=not_a_checkpoint(legacy, legacy_reason)):
        load_official_state_dict(legacy)


def test_truncated_and_foreign_safetensors_name_the_file(tmp_path):
    truncated, foreign = tmp_path / "truncated.safetensors", tmp_path / "foreign.safetensors"
    truncated.write_bytes(FIXTURE.read_bytes()[: FIXTURE.stat().st_size // 2])
    foreign.write_bytes(b"\x00" * 7)
    with pytest.raises(CAEConversionError, match=not_a_checkpoint(truncated, "safetensors: .*")):
        load_official_state_dict(truncated)
    with pytest.raises(CAEConversionError, match=not_a_checkpoint(foreign, "safetensors: .*")):
        load_official_state_dict(foreign)


def test_empty_files_and_folders_are_named(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CAEConversionError, match=r"^checkpoint '.*empty\.pth' is empty \(0 bytes\)"):
        load_official_state_dict(tmp_path / "empty.pth")
    with pytest.raises(IsADirectoryError, match=r"is a folder; pass the official \.pth/\.pt or \.safetensors file"):
        load_official_state_dict(tmp_path)


def test_pickled_code_keeps_its_own_message(tmp_path, official):
    path = tmp_path / "cae.pth"
    torch.save({"model": official, "hook": print}, path)
    with pytest.raises(CAEConversionError, match=r"holds pickled objects besides tensors.*nothing in it was run"):
        load_official_state_dict(path)


@pytest.mark.parametrize(
    ("checkpoint", "status", "message"),
    [
        ("random", 1, "'{path}' is not a readable PyTorch checkpoint or safetensors file"),
        ("missing", 1, "checkpoint '{path}' does not exist; check the path (the converter reads a local"),
        ("./missing/cae.pth", 1, "checkpoint './missing/cae.pth' does not exist; check the path (the converter reads "
         "a local .pth/.pt or .safetensors file, it does not download).\n"),
        ("cae_base.pth", 1, "checkpoint 'cae_base.pth' does not exist; check the path (the converter reads a local "
         ".pth/.pt or .safetensors file, it does not download).\n"),
    ],
)
def test_cli_reports_unreadable_checkpoints_in_one_line(tmp_path, capsys, monkeypatch, checkpoint, status, message):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "cae.pth"
    if checkpoint == "random":
        path.write_bytes(bytes(range(200)))
    elif checkpoint != "missing":
        path = checkpoint
    with pytest.raises(SystemExit) as exit_info:
        main(convert_args(path, tmp_path / "out"))
    captured = capsys.readouterr()
    assert exit_info.value.code == status and captured.out == ""
    assert captured.err.startswith(f"transformers-mixedae-convert-cae: error: {message.format(path=path)}")
    assert captured.err.count("\n") == 1 and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- output folder
def test_cli_refuses_a_finished_run_as_output_and_changes_nothing(tmp_path, capsys):
    run = finished_run(tmp_path / "mixedae-run")
    before = fingerprint(run)
    with pytest.raises(SystemExit) as exit_info:
        main(convert_args(FIXTURE, run))
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and captured.out == ""
    assert captured.err == (
        f"transformers-mixedae-convert-cae: error: '{run}' already holds a finished result (.tmp-final/, README.md, "
        "all_results.json, checkpoints/, config.json, model-00001-of-00002.safetensors, "
        "model-00002-of-00002.safetensors, model.safetensors.index.json, and 5 more): not starting the conversion, "
        "and nothing was changed. Pass --overwrite_output_dir to replace it, or choose another output folder.\n"
    )
    assert fingerprint(run) == before
    assert [path.name for path in tmp_path.iterdir()] == ["mixedae-run"]  # no staging folder left behind


def test_cli_overwrite_replaces_the_whole_result_and_keeps_user_files(tmp_path, capsys, fixture_tensors):
    run = finished_run(tmp_path / "mixedae-run")
    main(convert_args(FIXTURE, run, "--overwrite_output_dir"))
    assert "wrote CAEForPreTraining" in capsys.readouterr().out
    names = {path.name for path in run.iterdir()}
    assert names == {"config.json", "model.safetensors", "preprocessor_config.json"} | {"notes.txt", "data",
                                                                                         "config.yaml"}
    for name, content in USER_FILES.items():
        assert (run / name).read_bytes() == content
    assert json.loads((run / "config.json").read_text())["model_type"] == "cae"
    model = CAEForPreTraining.from_pretrained(run).eval()
    with torch.no_grad():
        logits = model(
            fixture_tensors["inputs.pixel_values"], bool_masked_pos=fixture_tensors["inputs.bool_masked_pos"]
        ).logits
    assert (logits.reshape(-1, 8192) - fixture_tensors["outputs.logits"]).abs().max() < 1e-5


def test_a_conversion_that_fails_while_writing_leaves_the_previous_result(tmp_path, monkeypatch):
    run = finished_run(tmp_path / "mixedae-run")
    before = fingerprint(run)

    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(CAEImageProcessorPil, "save_pretrained", disk_full)  # after the weights were written
    with pytest.raises(OSError, match="No space left on device"):
        convert_cae_checkpoint(FIXTURE, run, overwrite=True, **HEADS)
    assert fingerprint(run) == before
    assert [path.name for path in tmp_path.iterdir()] == ["mixedae-run"]
    with pytest.raises(OSError, match="No space left on device"):
        convert_cae_checkpoint(FIXTURE, tmp_path / "new", **HEADS)
    assert [path.name for path in tmp_path.iterdir()] == ["mixedae-run"]


def test_a_bad_checkpoint_with_overwrite_leaves_the_previous_result(tmp_path, capsys):
    run = finished_run(tmp_path / "mixedae-run")
    before = fingerprint(run)
    (tmp_path / "bad.pth").write_bytes(bytes(range(100)))
    with pytest.raises(SystemExit):
        main(convert_args(tmp_path / "bad.pth", run, "--overwrite_output_dir"))
    assert "not a readable PyTorch checkpoint" in capsys.readouterr().err
    assert fingerprint(run) == before


def test_a_non_square_position_table_converts_with_its_image_size():
    shapes = {
        "encoder.patch_embed.proj.weight": (384, 3, 16, 16),
        "encoder.pos_embed": (1, 1 + 14 * 28, 384),
        "encoder.blocks.0.mlp.fc1.weight": (1536, 384),
        "encoder.blocks.0.attn.q_bias": (384,),
        "encoder.blocks.0.gamma_1": (384,),
    }
    state_dict = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    with pytest.raises(CAEConversionError, match="392 patches do not form a square grid: pass --image_size"):
        infer_config(state_dict, pretraining=False)
    config, _ = infer_config(state_dict, pretraining=False, image_size=(224, 448))
    assert tuple(config.image_size) == (224, 448)
    with pytest.raises(CAEConversionError, match=r"--image_size \(448, 448\) with patch size 16 gives 784 patches"):
        infer_config(state_dict, pretraining=False, image_size=(448, 448))
