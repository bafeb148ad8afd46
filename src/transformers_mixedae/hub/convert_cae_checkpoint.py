# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Convert official CAE v1 checkpoints into `save_pretrained` folders.

Reads an official `.pth` (`{"model": state_dict}` or a bare state dict, loaded with `torch.load(weights_only=True)`)
or a `.safetensors` file, in either official naming: "A" (github.com/Atten4Vis/CAE, `ContextAutoencoderViT`) or "L"
(github.com/lxtGH/CAE, `teacher.*`, `pretext_neck.*`, `encoder_to_decoder*`). Full pre-training checkpoints become
`CAEForPreTraining`; encoder-only ones (`encoder.*` or bare `patch_embed.*`, `blocks.*` ... names) become `CAEModel`.

Every size that tensor shapes determine is inferred from them. Head counts cannot be read from shapes: they come
from `--num_attention_heads` / `--decoder_num_attention_heads`, or default to the official presets (12 heads, 16 for
width 1024; 12 regressor/decoder heads), which the report says. The conversion checks that the alignment encoder
(`alignment_encoder.*` / `teacher.*`) equals the encoder and that the stored sin-cos tables equal ours; unknown,
missing or mis-shaped keys are an error that lists them.

The output folder is written atomically (staged in a hidden sibling folder, moved in at the end). A folder that
holds an earlier result is refused unless `--overwrite_output_dir` is given, which replaces that result's files.

Usage:
    transformers-mixedae-convert-cae --checkpoint cae_base_800ep.pth --output_dir cae-base
"""

import argparse
import math
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers.utils import logging

from ..cli import run_cli
from ..models.configuration_cae import CAEConfig
from ..models.image_processing_cae import CAEImageProcessorPil
from ..models.modeling_cae import CAEForPreTraining, CAEModel
from ..training.output_folders import staged_output_dir
from ..models.vit_layers import sincos_2d_position_embedding

logger = logging.get_logger(__name__)

# lxtGH/CAE ("L") prefixes -> Atten4Vis/CAE ("A") prefixes. L recomputes `rd_pos_embed` and does not store it.
L_TO_A_PREFIXES = (
    ("teacher.", "alignment_encoder."),
    ("pretext_neck.regressor_blocks.", "regresser.regressor_blocks."),
    ("pretext_neck.norm.", "regresser.norm."),
    ("pretext_neck.decoder_blocks.", "decoder.decoder_blocks."),
    ("pretext_neck.norm2.", "decoder.norm."),
    ("pretext_neck.head.", "decoder.head."),
    ("encoder_to_decoder.", "encoder_to_regresser."),
    ("encoder_to_decoder_norm.", "encoder_to_regresser_norm."),
)
BARE_ENCODER_PREFIXES = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.")

# Sub-keys of one encoder/decoder block (official `Block`) -> ours (`ViTLayer`). The fused qkv weight is split.
BLOCK_KEYS = {
    "norm1.weight": "layernorm_before.weight",
    "norm1.bias": "layernorm_before.bias",
    "norm2.weight": "layernorm_after.weight",
    "norm2.bias": "layernorm_after.bias",
    "gamma_1": "lambda_1",
    "gamma_2": "lambda_2",
    "attn.q_bias": "attention.q_proj.bias",
    "attn.v_bias": "attention.v_proj.bias",
    "attn.proj.weight": "attention.o_proj.weight",
    "attn.proj.bias": "attention.o_proj.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
}
FUSED_QKV_KEY = "attn.qkv.weight"
# Sub-keys of one regressor block (official `RegressorBlock`) -> ours (`CAERegressorLayer`).
REGRESSOR_BLOCK_KEYS = {
    "norm1_q.weight": "layernorm_query.weight",
    "norm1_q.bias": "layernorm_query.bias",
    "norm1_k.weight": "layernorm_key.weight",
    "norm1_k.bias": "layernorm_key.bias",
    "norm1_v.weight": "layernorm_value.weight",
    "norm1_v.bias": "layernorm_value.bias",
    "norm2_cross.weight": "layernorm_after.weight",
    "norm2_cross.bias": "layernorm_after.bias",
    "gamma_1_cross": "lambda_1",
    "gamma_2_cross": "lambda_2",
    "cross_attn.q.weight": "cross_attention.q_proj.weight",
    "cross_attn.k.weight": "cross_attention.k_proj.weight",
    "cross_attn.v.weight": "cross_attention.v_proj.weight",
    "cross_attn.q_bias": "cross_attention.q_proj.bias",
    "cross_attn.v_bias": "cross_attention.v_proj.bias",
    "cross_attn.proj.weight": "cross_attention.o_proj.weight",
    "cross_attn.proj.bias": "cross_attention.o_proj.bias",
    "mlp_cross.fc1.weight": "mlp.fc1.weight",
    "mlp_cross.fc1.bias": "mlp.fc1.bias",
    "mlp_cross.fc2.weight": "mlp.fc2.weight",
    "mlp_cross.fc2.bias": "mlp.fc2.bias",
}
# Whole-tensor renames outside the blocks (encoder names relative to `encoder.`).
ENCODER_KEYS = {
    "cls_token": "embeddings.cls_token",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}
HEAD_KEYS = {
    "mask_token": "regressor.mask_token",
    "encoder_to_regresser.weight": "encoder_to_regressor.weight",
    "encoder_to_regresser.bias": "encoder_to_regressor.bias",
    "encoder_to_regresser_norm.weight": "encoder_to_regressor_norm.weight",
    "encoder_to_regresser_norm.bias": "encoder_to_regressor_norm.bias",
    "regresser.norm.weight": "regressor.layernorm.weight",
    "regresser.norm.bias": "regressor.layernorm.bias",
    "decoder.norm.weight": "decoder.layernorm.weight",
    "decoder.norm.bias": "decoder.layernorm.bias",
    "decoder.head.weight": "decoder.head.weight",
    "decoder.head.bias": "decoder.head.bias",
}
PRETRAINING_PREFIXES = ("mask_token", "rd_pos_embed", "encoder_to_regresser", "regresser.", "decoder.")
# Official presets: encoder width -> heads (ViT-T/S/B 12, ViT-L 16); regressor/decoder always 12 heads.
PRESET_HEADS = {192: 12, 384: 12, 768: 12, 1024: 16}
OFFICIAL_DECODER_HEADS = 12
# Stored tables are float32 computations of the same formula; ours is computed in float64.
SINCOS_ATOL = 1e-4
# Official block masking masks 98 of 196 patches with blocks of at least 16.
OFFICIAL_MASK_FRACTION = 98 / 196
OFFICIAL_MIN_BLOCK_FRACTION = 16 / 196


class CAEConversionError(ValueError):
    """The checkpoint cannot be converted; the message says which keys or values are at fault."""

    # On the command line: the input file is at fault, not the usage (see `cli.run_cli`).
    exit_status = 1


@dataclass
class CAEConversion:
    """Result of `convert_cae_state_dict`."""

    config: CAEConfig
    state_dict: dict[str, torch.Tensor]
    naming: str
    pretraining: bool
    notes: list[str] = field(default_factory=list)

    @property
    def model_class(self) -> type:
        return CAEForPreTraining if self.pretraining else CAEModel


# ---------------------------------------------------------------------------------------------- reading files
def load_official_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a `.pth`/`.pt` (with `weights_only=True`) or `.safetensors` file and unwrap the state dict.

    Unwraps `{"model": ...}` / `{"state_dict": ...}` / `{"module": ...}` containers, a `module.` (DDP) prefix, and
    the `state_dict.` prefix of flat safetensors fixtures (their other keys are ignored).

    Raises:
        FileNotFoundError: no such file.
        IsADirectoryError: `path` is a folder.
        CAEConversionError: the file is empty, truncated, corrupt, of another format, or holds pickled objects that
            only code could rebuild (nothing in it is run).
    """
    given = os.fspath(path)  # named as the user wrote it
    path = Path(path).expanduser()
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint {given!r} is a folder; pass the official .pth/.pt or .safetensors file.")
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {given!r} does not exist; check the path (the converter reads a local .pth/.pt or "
            ".safetensors file, it does not download)."
        )
    if path.stat().st_size == 0:
        raise CAEConversionError(
            f"checkpoint {given!r} is empty (0 bytes), as an interrupted download or copy leaves it; download or "
            "copy the official checkpoint again."
        )
    if path.suffix == ".safetensors":
        loaded = _load_safetensors(path)
    else:
        loaded = _load_torch_checkpoint(path)
    return unwrap_state_dict(loaded)


# How a file starts: `torch.save` writes a zip archive (or, before PyTorch 1.6, a protocol-2 pickle stream).
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL_OPCODE = b"\x80"
# Messages of torch's weights-only unpickler that mean "not a valid pickle stream", as opposed to a valid stream
# that asks for a class or function it does not allow (the case of pickled code).
_MALFORMED_PICKLE_MESSAGES = ("Unsupported operand", "String is too long", "persistent", "invalid load key")


def _not_a_checkpoint(path: Path, reason: str) -> CAEConversionError:
    return CAEConversionError(
        f"{str(path)!r} is not a readable PyTorch checkpoint or safetensors file ({reason}): it is unreadable, "
        "truncated, corrupt or of another format. Download or copy the official checkpoint again."
    )


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except SafetensorError as error:
        raise _not_a_checkpoint(path, f"safetensors: {error}") from error


def _load_torch_checkpoint(path: Path):
    with path.open("rb") as file:
        head = file.read(4)
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            raise _not_a_checkpoint(path, "a zip archive whose end is missing")
    elif not head.startswith(_PICKLE_PROTOCOL_OPCODE):
        raise _not_a_checkpoint(path, f"it starts with bytes {head!r}, not a zip archive or a pickle stream")
    try:
        # Official training checkpoints also store `args` (an argparse.Namespace), harmless to allow.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if any(text in str(error) for text in _MALFORMED_PICKLE_MESSAGES):
            raise _not_a_checkpoint(path, "its pickle stream is malformed") from error
        raise CAEConversionError(
            f"{str(path)!r} holds pickled objects besides tensors and plain data, which only code from the file "
            "could rebuild: it was not loaded and nothing in it was run. Convert an official checkpoint, or save "
            "its state dict on its own (torch.save(checkpoint['model'], ...)) where you trust the file."
        ) from error
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, zipfile.BadZipFile) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise _not_a_checkpoint(path, first_line[:200]) from error


def unwrap_state_dict(loaded: Mapping) -> dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint container (see `load_official_state_dict`)."""
    if not isinstance(loaded, Mapping):
        raise CAEConversionError(f"expected a state dict or a dict holding one, got {type(loaded).__name__}.")
    for container_key in ("model", "state_dict", "module"):
        if isinstance(loaded.get(container_key), Mapping):
            loaded = loaded[container_key]
            break
    if any(key.startswith("state_dict.") for key in loaded):
        loaded = {key[len("state_dict.") :]: value for key, value in loaded.items() if key.startswith("state_dict.")}
    if loaded and all(key.startswith("module.") for key in loaded):
        loaded = {key[len("module.") :]: value for key, value in loaded.items()}
    not_tensors = sorted(key for key, value in loaded.items() if not isinstance(value, torch.Tensor))
    if not_tensors:
        raise CAEConversionError(f"these entries are not tensors: {not_tensors}.")
    return dict(loaded)


# ---------------------------------------------------------------------------------------------- naming
def detect_naming(state_dict: Mapping[str, torch.Tensor]) -> str:
    """ "A" (Atten4Vis/CAE), "L" (lxtGH/CAE) or "bare" (encoder keys without the `encoder.` prefix)."""
    if any(key.startswith(("teacher.", "pretext_neck.", "encoder_to_decoder")) for key in state_dict):
        return "L"
    if any(key.startswith("encoder.") for key in state_dict):
        return "A"
    if any(key.startswith(BARE_ENCODER_PREFIXES) for key in state_dict):
        return "bare"
    raise CAEConversionError(
        f"no CAE encoder keys found (expected `encoder.*`, `teacher.*` or bare `patch_embed.*`); first keys: "
        f"{sorted(state_dict)[:8]}."
    )


def to_a_naming(state_dict: Mapping[str, torch.Tensor], naming: str) -> dict[str, torch.Tensor]:
    if naming == "A":
        return dict(state_dict)
    if naming == "bare":
        return {f"encoder.{key}": value for key, value in state_dict.items()}
    renamed = {}
    for key, value in state_dict.items():
        for old, new in L_TO_A_PREFIXES:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        renamed[key] = value
    return renamed


# ---------------------------------------------------------------------------------------------- sizes
def _block_indices(keys, prefix: str) -> list[int]:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(match.group(1)) for key in keys if (match := pattern.match(key))})


def _depth(keys, prefix: str) -> int:
    """Number of blocks, from the highest index (a block missing in between is then reported as missing keys)."""
    indices = _block_indices(keys, prefix)
    return indices[-1] + 1 if indices else 0


def _in_any_block(state_dict: Mapping[str, torch.Tensor], prefix: str, suffix: str) -> bool:
    pattern = re.compile(re.escape(prefix) + r"\d+\." + re.escape(suffix) + "$")
    return any(pattern.match(key) for key in state_dict)


def _block_tensor(state_dict: Mapping[str, torch.Tensor], prefix: str, suffix: str) -> torch.Tensor:
    """The tensor `suffix` of the first block that has it (sizes are read from there)."""
    for index in _block_indices(state_dict, prefix):
        if f"{prefix}{index}.{suffix}" in state_dict:
            return state_dict[f"{prefix}{index}.{suffix}"]
    raise CAEConversionError(f"no {prefix}<i>.{suffix} key: cannot infer the model size.")


def _require(state_dict: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state_dict:
        raise CAEConversionError(f"missing key {key!r}, needed to infer the model size.")
    return state_dict[key]


def infer_config(
    state_dict: Mapping[str, torch.Tensor],
    pretraining: bool,
    num_attention_heads: int | None = None,
    decoder_num_attention_heads: int | None = None,
    image_size: int | tuple[int, int] | None = None,
    patch_size: int | None = None,
    **config_overrides,
) -> tuple[CAEConfig, list[str]]:
    """A `CAEConfig` from A-named tensor shapes, plus notes on what was assumed rather than read."""
    notes: list[str] = []
    projection_weight = _require(state_dict, "encoder.patch_embed.proj.weight")
    hidden_size, num_channels, kernel_height, kernel_width = projection_weight.shape
    if kernel_height != kernel_width:
        raise CAEConversionError(f"non-square patches ({kernel_height}x{kernel_width}) are not supported.")
    if patch_size is not None and patch_size != kernel_height:
        raise CAEConversionError(
            f"--patch_size {patch_size} contradicts the patch projection kernel ({kernel_height}x{kernel_width})."
        )
    patch_size = kernel_height

    num_patches = _require(state_dict, "encoder.pos_embed").shape[1] - 1
    if image_size is None:
        side = math.isqrt(num_patches)
        if side * side != num_patches:
            raise CAEConversionError(
                f"{num_patches} patches do not form a square grid: pass --image_size (and a non-square image size "
                "through the Python API)."
            )
        image_size = side * patch_size
    else:
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        if (height // patch_size) * (width // patch_size) != num_patches:
            raise CAEConversionError(
                f"--image_size {image_size} with patch size {patch_size} gives "
                f"{(height // patch_size) * (width // patch_size)} patches, but the position table has {num_patches}."
            )

    if num_attention_heads is None:
        if hidden_size not in PRESET_HEADS:
            raise CAEConversionError(
                f"encoder width {hidden_size} is not an official preset: pass --num_attention_heads (shapes cannot "
                "tell the number of heads)."
            )
        num_attention_heads = PRESET_HEADS[hidden_size]
        notes.append(
            f"num_attention_heads={num_attention_heads} assumed from the official preset of width {hidden_size}"
        )

    values = dict(
        hidden_size=hidden_size,
        num_hidden_layers=_depth(state_dict, "encoder.blocks."),
        num_attention_heads=num_attention_heads,
        intermediate_size=_block_tensor(state_dict, "encoder.blocks.", "mlp.fc1.weight").shape[0],
        image_size=image_size,
        patch_size=patch_size,
        num_channels=num_channels,
        qkv_bias=_in_any_block(state_dict, "encoder.blocks.", "attn.q_bias"),
        # Only the presence of LayerScale is visible; its init value matters for new training only.
        layer_scale_init_value=0.1 if _in_any_block(state_dict, "encoder.blocks.", "gamma_1") else None,
        layer_norm_eps=1e-6,
        num_masking_patches=max(1, round(num_patches * OFFICIAL_MASK_FRACTION)),
        mask_min_num_patches=max(1, round(num_patches * OFFICIAL_MIN_BLOCK_FRACTION)),
    )
    notes.append("layer_norm_eps=1e-6 and GELU assumed (every official model; shapes cannot tell)")

    if pretraining:
        decoder_hidden_size = _require(state_dict, "mask_token").shape[-1]
        if decoder_num_attention_heads is None:
            decoder_num_attention_heads = OFFICIAL_DECODER_HEADS
            notes.append(f"decoder_num_attention_heads={OFFICIAL_DECODER_HEADS} assumed (official default)")
        regressor_mlp = _block_tensor(state_dict, "regresser.regressor_blocks.", "mlp_cross.fc1.weight").shape[0]
        decoder_mlp = _block_tensor(state_dict, "decoder.decoder_blocks.", "mlp.fc1.weight").shape[0]
        if regressor_mlp != decoder_mlp:
            raise CAEConversionError(
                f"regressor MLP width {regressor_mlp} differs from decoder MLP width {decoder_mlp}; CAEConfig has one "
                "decoder_intermediate_size."
            )
        has_decoder_layer_scale = _in_any_block(state_dict, "decoder.decoder_blocks.", "gamma_1")
        values.update(
            decoder_hidden_size=decoder_hidden_size,
            regressor_num_layers=_depth(state_dict, "regresser.regressor_blocks."),
            decoder_num_layers=_depth(state_dict, "decoder.decoder_blocks."),
            decoder_num_attention_heads=decoder_num_attention_heads,
            decoder_intermediate_size=None if regressor_mlp == 4 * decoder_hidden_size else regressor_mlp,
            # Decoder blocks have LayerScale exactly when the official init value was positive.
            decoder_layer_scale_init_value=0.1 if has_decoder_layer_scale else 0.0,
            vocab_size=_require(state_dict, "decoder.head.weight").shape[0],
            target="tokens",
        )
    values.update(config_overrides)
    try:
        config = CAEConfig(**values)
    except Exception as error:  # strict dataclass validation wraps the ValueError
        raise CAEConversionError(f"the inferred configuration is invalid: {error}") from error
    return config, notes


# ---------------------------------------------------------------------------------------------- tensors
def _convert_block(
    source: dict[str, torch.Tensor], official_prefix: str, our_prefix: str, hidden_size: int, converted: dict
) -> None:
    for official_key, our_key in BLOCK_KEYS.items():
        if official_prefix + official_key in source:
            converted[our_prefix + our_key] = source.pop(official_prefix + official_key)
    fused_key = official_prefix + FUSED_QKV_KEY
    if fused_key in source:
        fused = source.pop(fused_key)
        if fused.shape[0] != 3 * hidden_size:
            raise CAEConversionError(f"{fused_key} has shape {tuple(fused.shape)}, expected ({3 * hidden_size}, ...).")
        query, key, value = fused.split(hidden_size, dim=0)
        converted[our_prefix + "attention.q_proj.weight"] = query.clone()
        converted[our_prefix + "attention.k_proj.weight"] = key.clone()
        converted[our_prefix + "attention.v_proj.weight"] = value.clone()


def _check_sincos(table: torch.Tensor, name: str, grid: tuple[int, int]) -> torch.Tensor:
    ours = sincos_2d_position_embedding(grid[0], grid[1], table.shape[-1], row_first=True)
    if tuple(table.shape) != tuple(ours.shape):
        raise CAEConversionError(f"{name} has shape {tuple(table.shape)}, expected {tuple(ours.shape)}.")
    difference = (table.float() - ours).abs().max().item()
    if difference > SINCOS_ATOL:
        raise CAEConversionError(
            f"{name} differs from CAE's 2-D sin-cos table (row first) by up to {difference:.3g}: not a CAE v1 "
            "checkpoint, or a different patch grid."
        )
    return ours


def _check_alignment_copy(source: dict[str, torch.Tensor], allow_mismatch: bool, notes: list[str]) -> None:
    """Remove `alignment_encoder.*` after checking that it equals `encoder.*` (the official teacher is the encoder)."""
    copy_keys = [key for key in source if key.startswith("alignment_encoder.")]
    if not copy_keys:
        return
    orphans = sorted(key for key in copy_keys if "encoder." + key[len("alignment_encoder.") :] not in source)
    missing = sorted(
        key
        for key in source
        if key.startswith("encoder.") and "alignment_encoder." + key[len("encoder.") :] not in source
    )
    if orphans or missing:
        raise CAEConversionError(
            "the alignment encoder does not mirror the encoder: "
            f"alignment keys without an encoder key: {orphans}; encoder keys without an alignment copy: "
            f"{['alignment_encoder.' + key[len('encoder.') :] for key in missing]}."
        )
    mismatched = []
    for key in copy_keys:
        teacher = source.pop(key)
        student = source["encoder." + key[len("alignment_encoder.") :]]
        if teacher.shape != student.shape or not torch.equal(teacher, student):
            mismatched.append(key)
    if mismatched:
        message = (
            f"the alignment encoder differs from the encoder in {len(mismatched)} tensors (e.g. {mismatched[:3]}); "
            "the lxtGH release updates its teacher after the target pass, so it can lag one step."
        )
        if not allow_mismatch:
            raise CAEConversionError(message + " Pass --allow_alignment_mismatch to keep the encoder weights.")
        notes.append(message + " Kept the encoder weights.")


def convert_cae_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    num_attention_heads: int | None = None,
    decoder_num_attention_heads: int | None = None,
    image_size: int | tuple[int, int] | None = None,
    patch_size: int | None = None,
    encoder_only: bool = False,
    allow_alignment_mismatch: bool = False,
    **config_overrides,
) -> CAEConversion:
    """Convert an official CAE state dict (in memory) to our config and state dict.

    Args:
        state_dict: Official tensors, A or L naming (or a bare encoder).
        num_attention_heads, decoder_num_attention_heads: Head counts (shapes cannot tell; default: official presets).
        image_size, patch_size: Only needed (or checked) where shapes cannot tell.
        encoder_only: Convert only the encoder (`CAEModel`) even if regressor and decoder are present; their keys
            are then dropped, not reported.
        allow_alignment_mismatch: Keep going (with a note) when the alignment copy differs from the encoder.
        config_overrides: Further `CAEConfig` fields (training settings such as `drop_path_rate`).

    Raises:
        CAEConversionError: unknown, missing or mis-shaped keys, or failed consistency checks.
    """
    naming = detect_naming(state_dict)
    source = to_a_naming(state_dict, naming)
    has_pretraining_keys = any(key.startswith(PRETRAINING_PREFIXES) for key in source)
    pretraining = has_pretraining_keys and not encoder_only
    if encoder_only:
        source = {key: value for key, value in source.items() if not key.startswith(PRETRAINING_PREFIXES)}
    config, notes = infer_config(
        source,
        pretraining,
        num_attention_heads,
        decoder_num_attention_heads,
        image_size,
        patch_size,
        **config_overrides,
    )
    notes.insert(0, f"official naming {naming!r}; converting to {'CAEForPreTraining' if pretraining else 'CAEModel'}")
    _check_alignment_copy(source, allow_alignment_mismatch, notes)

    encoder_prefix = "cae." if pretraining else ""
    converted: dict[str, torch.Tensor] = {}
    converted[encoder_prefix + "embeddings.position_embeddings"] = _check_sincos(
        source.pop("encoder.pos_embed"), "encoder.pos_embed", config.grid_size
    )
    for official_key, our_key in ENCODER_KEYS.items():
        if "encoder." + official_key in source:
            converted[encoder_prefix + our_key] = source.pop("encoder." + official_key)
    for index in _block_indices(list(source), "encoder.blocks."):
        _convert_block(
            source, f"encoder.blocks.{index}.", f"{encoder_prefix}layers.{index}.", config.hidden_size, converted
        )

    if pretraining:
        grid = config.grid_size
        if "rd_pos_embed" in source:
            converted["regressor.position_embeddings"] = _check_sincos(source.pop("rd_pos_embed"), "rd_pos_embed", grid)
        else:
            notes.append("rd_pos_embed absent (L naming recomputes it); using our sin-cos table")
            table = sincos_2d_position_embedding(grid[0], grid[1], config.decoder_hidden_size, row_first=True)
            converted["regressor.position_embeddings"] = table
        for official_key, our_key in HEAD_KEYS.items():
            if official_key in source:
                converted[our_key] = source.pop(official_key)
        for index in _block_indices(list(source), "regresser.regressor_blocks."):
            prefix = f"regresser.regressor_blocks.{index}."
            for official_key, our_key in REGRESSOR_BLOCK_KEYS.items():
                if prefix + official_key in source:
                    converted[f"regressor.layers.{index}.{our_key}"] = source.pop(prefix + official_key)
        for index in _block_indices(list(source), "decoder.decoder_blocks."):
            _convert_block(
                source,
                f"decoder.decoder_blocks.{index}.",
                f"decoder.layers.{index}.",
                config.decoder_hidden_size,
                converted,
            )

    if source:
        raise CAEConversionError(f"unknown keys in the checkpoint (not part of CAE v1): {sorted(source)}.")
    _check_against_model(converted, config, pretraining)
    return CAEConversion(config=config, state_dict=converted, naming=naming, pretraining=pretraining, notes=notes)


def _check_against_model(converted: dict[str, torch.Tensor], config: CAEConfig, pretraining: bool) -> None:
    """Every tensor the model has must be present with its shape, and nothing else."""
    model_class = CAEForPreTraining if pretraining else CAEModel
    with torch.device("meta"):
        expected = {key: tuple(value.shape) for key, value in model_class(config).state_dict().items()}
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    mis_shaped = sorted(
        f"{key}: checkpoint {tuple(converted[key].shape)} vs model {expected[key]}"
        for key in set(expected) & set(converted)
        if tuple(converted[key].shape) != expected[key]
    )
    if missing or unexpected or mis_shaped:
        raise CAEConversionError(
            f"the checkpoint does not match the inferred {model_class.__name__}: missing keys {missing}; "
            f"unexpected keys {unexpected}; shape mismatches {mis_shaped}."
        )


# ---------------------------------------------------------------------------------------------- files
def build_model(conversion: CAEConversion) -> CAEModel | CAEForPreTraining:
    model = conversion.model_class(conversion.config)
    model.load_state_dict(conversion.state_dict, strict=True)
    return model.eval()


def convert_cae_checkpoint(
    checkpoint: str | Path, output_dir: str | Path, overwrite: bool = False, **conversion_kwargs
) -> tuple[CAEModel | CAEForPreTraining, CAEConversion]:
    """Convert an official checkpoint file and write a `save_pretrained` folder (config, safetensors weights,
    image processor). Keyword arguments go to `convert_cae_state_dict`.

    The folder is written in a hidden sibling folder and moved in at the end: a failure leaves `output_dir` as it
    was. An `output_dir` that holds an earlier result (a trained model, another conversion, a run's records) is
    refused unless `overwrite`, which removes that result's files (see `output_folders.RUN_ARTIFACTS`) and keeps
    any other file.

    Raises:
        OutputDirectoryError: `output_dir` holds an earlier result and `overwrite` is False; nothing was read.
    """
    with staged_output_dir(output_dir, overwrite=overwrite, what="conversion") as staging:
        conversion = convert_cae_state_dict(load_official_state_dict(checkpoint), **conversion_kwargs)
        model = build_model(conversion)
        model.save_pretrained(staging)
        config = conversion.config
        processor = CAEImageProcessorPil.from_model_config(config)
        processor.save_pretrained(staging)
    return model, conversion


PROGRAM = "transformers-mixedae-convert-cae"


def main(argv: list[str] | None = None) -> None:
    """Console script; errors are one line on stderr (exit 2: usage, 1: unreadable or unconvertible input)."""
    run_cli(lambda: _main(argv), program=PROGRAM)


def _main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Convert an official CAE v1 checkpoint (Atten4Vis/CAE or lxtGH/CAE) to a transformers folder.",
    )
    parser.add_argument("--checkpoint", required=True, help="official .pth/.pt or .safetensors file")
    parser.add_argument("--output_dir", required=True, help="folder to write (config, weights, image processor)")
    parser.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="replace an earlier result in --output_dir (its weights, config, card, results, logs; other files stay)",
    )
    parser.add_argument("--num_attention_heads", type=int, help="encoder heads (default: official preset)")
    parser.add_argument("--decoder_num_attention_heads", type=int, help="regressor/decoder heads (default: 12)")
    parser.add_argument("--image_size", type=int, help="input size, when the patch grid is not square")
    parser.add_argument("--patch_size", type=int, help="checked against the patch projection kernel")
    parser.add_argument("--encoder_only", action="store_true", help="write only the encoder (CAEModel)")
    parser.add_argument(
        "--allow_alignment_mismatch",
        action="store_true",
        help="keep going when the alignment/teacher copy differs from the encoder (lxtGH teacher lags one step)",
    )
    args = parser.parse_args(argv)
    # The checkpoint is never a Hub id: `load_official_state_dict` names a missing file with that fix.
    options = {
        key: value
        for key, value in vars(args).items()
        if key not in ("checkpoint", "output_dir", "overwrite_output_dir")
    }
    model, conversion = convert_cae_checkpoint(
        args.checkpoint, args.output_dir, overwrite=args.overwrite_output_dir, **options
    )
    num_parameters = sum(parameter.numel() for parameter in model.parameters())
    print(f"wrote {type(model).__name__} ({num_parameters:,} parameters) to {args.output_dir}")
    for note in conversion.notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main()


__all__ = [
    "CAEConversion",
    "CAEConversionError",
    "convert_cae_checkpoint",
    "convert_cae_state_dict",
    "load_official_state_dict",
    "main",
]
