# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Pre-training step benchmark: MixedAE and CAE against `transformers.ViTMAEForPreTraining`.

For every (size, precision, attention implementation) it builds four models with the same encoder
(ViTMAE, the anchor; MixedAE in MAE mode; MixedAE with r = 0.25, homologous attention on every layer
and the contrastive loss; CAE when the package has it) and measures, in the same process:

* the median wall time of one training step (forward + backward + AdamW step) over `--repeats`
  timed steps after `--warmup` untimed ones, the models interleaved step by step (rotating order) so
  that load from other processes falls on all of them alike;
* the model FLOPs of one forward + backward, counted by `torch.utils.flop_counter.FlopCounterMode`
  (the optimizer step is not counted; fused SDPA kernels are counted with the eager formula, without
  the backward's recomputation, so eager and SDPA rows count the same work, except MixedAE's SDPA rows: its masked
  homologous path computes the logits once more, without gradient, to select the kept keys);
* the achieved FLOP/s as a fraction of a large square matmul timed on the same device and dtype
  (fp32, or bf16 for autocast runs) in the same run;
* peak memory of one step: live tensor bytes (parameters, buffers, optimizer state, input) at the
  start of the step plus the high-water mark of the allocations made during it. On CUDA the
  high-water mark comes from `torch.cuda.max_memory_allocated`; on CPU from the allocation and free
  events of `torch.profiler` (`profile_memory=True`), which see every tensor torch allocates (not
  the allocator's cache, not Python objects). Both count the same thing, so the ratios compare.

It prints one Markdown table with ratios against the ViTMAE row of the same configuration.

    PYTHONPATH=src python3 benchmarks/bench_pretrain.py --sizes tiny,small --precisions fp32,bf16 \
        --attn eager,sdpa --batch-size 8 --repeats 5 --device cpu --json out.json

With `--official_cae_repo PATH` (a local checkout of github.com/Atten4Vis/CAE, imported at run time) it also builds
the official ContextAutoencoderViT at the same configuration for every size, precision and `--cae_decoder_widths`
width, copies its weights into our CAEForPreTraining (one per `--attn`) with our checkpoint converter, checks the
loss on the same images, block masks and token ids, and measures both side by side as above, with ratios ours /
official in a second table (and under "official_cae" in the JSON). `--models` then defaults to none:

    PYTHONPATH=src python3 benchmarks/bench_pretrain.py --official_cae_repo ../CAE --sizes small --precisions fp32 \
        --cae_decoder_widths 384,768 --threads 1 --clock cpu --device cpu --json cae_vs_official.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import gc
import importlib
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field

import torch
import torch.utils.flop_counter as flop_counter
from torch.profiler import ProfilerActivity, profile

# Run from a checkout without installing: fall back to the repository's src/ folder.
_SOURCE_FOLDER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
if importlib.util.find_spec("transformers_mixedae") is None and os.path.isdir(_SOURCE_FOLDER):
    sys.path.insert(0, _SOURCE_FOLDER)

from transformers_mixedae.models.presets import VIT_PRESETS, ViTSize, vit_config_kwargs  # noqa: E402
from transformers_mixedae.training.arguments import parse_config_overrides  # noqa: E402

# The README's main job (MixedAE on the bundled Fashion-MNIST); the "main-job" size reads its model from this file so
# that the row measures what the main job trains, whatever the file says today.
MAIN_JOB_CONFIG = os.path.join(os.path.dirname(_SOURCE_FOLDER), "examples", "configs", "mixedae_fashion_mnist.json")


def main_job_size(path: str = MAIN_JOB_CONFIG) -> dict:
    """`SIZES` entry of the main job's encoder and decoder; CAE gets a regressor and decoder of the encoder's width
    and depth 2 (the ablation grid's CAE arm at this size)."""
    with open(path) as handle:
        job = json.load(handle)
    fields = parse_config_overrides(job.get("config_overrides"))
    encoder = ViTSize(
        hidden_size=fields["hidden_size"], num_hidden_layers=fields["num_hidden_layers"],
        num_attention_heads=fields["num_attention_heads"], intermediate_size=fields["intermediate_size"],
        patch_size=job["patch_size"], image_size=job["image_size"],
    )
    decoder = {name: value for name, value in fields.items() if name.startswith("decoder_")}
    cae = dict(decoder_hidden_size=encoder.hidden_size, regressor_num_layers=2, decoder_num_layers=2,
               decoder_num_attention_heads=encoder.num_attention_heads, mask_min_num_patches=4)
    return dict(encoder=encoder, decoder=decoder, cae=cae)


# Encoder sizes (ViT-Ti/S/B at 224 px, patch 16, from `transformers_mixedae.models.presets`) and MAE's decoder (512 wide,
# 8 layers, 16 heads) for ViTMAE and MixedAE. "micro" is a 32 px toy for the unit test and quick smoke runs;
# "main-job" is the README main job's model (32 px, patch 4; run it at that job's --batch-size 64). Neither is in the
# default list.
MAE_DECODER = dict(
    decoder_hidden_size=512, decoder_num_hidden_layers=8, decoder_num_attention_heads=16, decoder_intermediate_size=2048
)
SIZES = {
    "micro": dict(
        encoder=ViTSize(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256, patch_size=4,
            image_size=32,
        ),
        decoder=dict(
            decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=128
        ),
        cae=dict(
            decoder_hidden_size=32,
            regressor_num_layers=1,
            decoder_num_layers=1,
            decoder_num_attention_heads=2,
            vocab_size=64,
            mask_min_num_patches=4,
        ),
    ),
    **{name: dict(encoder=VIT_PRESETS[name], decoder=MAE_DECODER) for name in ("tiny", "small", "base")},
    "main-job": main_job_size(),
}
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
ATTENTION = ("eager", "sdpa")
MODELS = {
    "vitmae": "transformers ViTMAEForPreTraining (mask 0.75), the anchor",
    "mixedae-mae": "MixedAE in MAE mode (r=1, mask 0.75, no segment embedding, no HA, no HC)",
    "mixedae": "MixedAE r=0.25, homologous attention on all layers, contrastive weight 0.1",
    "mixedae-logits-hc": "the same with the contrastive term on the homologous layers' attention logits and no "
    "segment embedding (the recognition design of docs/ablations.md)",
    "cae": "CAEForPreTraining, official token target with random ids (tokenizer not run), package defaults for "
    "regressor/decoder/drop path, 50% block masking",
}
ANCHOR = "vitmae"
MIXING_MODELS = ("mixedae", "mixedae-logits-hc")  # groups of 4 images
# torch's default picks the for-loop on CPU and foreach on CUDA; run_mim.py uses fused where torch has it.
ADAMW_IMPLEMENTATIONS = {"default": {}, "for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
TABLE_COLUMNS = (
    "size",
    "precision",
    "attn",
    "model",
    "images/s",
    "step ms (median)",
    "spread",
    "step time / ViTMAE",
    "GFLOP/step",
    "achieved GFLOP/s",
    "% of matmul peak",
    "peak memory MiB",
    "memory / ViTMAE",
)


# ---------------------------------------------------------------------------------------------- models
class ModelUnavailable(RuntimeError):
    """The model cannot be built in this checkout (e.g. CAE not written yet)."""


def _size_fields(size: str, model_type: str) -> dict:
    return vit_config_kwargs(SIZES[size]["encoder"], model_type)


def build_vitmae(size: str, attn: str):
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    config = ViTMAEConfig(
        **_size_fields(size, "vit_mae"), **SIZES[size]["decoder"], mask_ratio=0.75, norm_pix_loss=True,
        attn_implementation=attn,
    )
    return ViTMAEForPreTraining(config)


def _mixedae_config(size: str, attn: str, **objective):
    from transformers_mixedae import MixedAEConfig

    return MixedAEConfig(
        **_size_fields(size, "mixedae"), **SIZES[size]["decoder"], norm_pix_loss=True, attn_implementation=attn,
        **objective,
    )


def build_mixedae_mae(size: str, attn: str):
    from transformers_mixedae import MixedAEForPreTraining

    config = _mixedae_config(
        size,
        attn,
        mixing_ratio=1.0,
        mask_ratio=0.75,
        segment_embedding="none",
        homologous_attention_layers=[],
        homologous_contrastive_weight=0.0,
    )
    return MixedAEForPreTraining(config)


def build_mixedae(size: str, attn: str, **design):
    from transformers_mixedae import MixedAEForPreTraining

    config = _mixedae_config(
        size,
        attn,
        mixing_ratio=0.25,
        mask_ratio=0.0,
        homologous_attention_layers=None,
        homologous_contrastive_weight=0.1,
        **design,
    )
    return MixedAEForPreTraining(config)


def build_mixedae_logits_hc(size: str, attn: str):
    return build_mixedae(size, attn, homologous_contrastive_target="attention_logits", segment_embedding="none")


def build_cae(size: str, attn: str):
    try:
        package = importlib.import_module("transformers_mixedae")
        config_class = getattr(package, "CAEConfig")
        model_class = getattr(package, "CAEForPreTraining")
    except (ImportError, AttributeError) as error:
        raise ModelUnavailable(f"CAE is not in this checkout ({error})") from error
    # The encoder geometry is the benchmark's; regressor, decoder, LayerScale and drop path keep the package's CAE
    # defaults (official recipe); half of the patches are masked (official: 98 of 196).
    fields = _size_fields(size, "cae")
    num_patches = SIZES[size]["encoder"].num_patches
    overrides = dict(num_masking_patches=num_patches // 2, **SIZES[size].get("cae", {}))
    return model_class(config_class(**fields, **overrides, attn_implementation=attn))


def model_inputs(model, pixel_values: torch.Tensor) -> dict:
    """Keyword arguments of one training step: the pixels, and for CAE's token target random tokenizer ids
    (the tokenizer itself is not part of the benchmarked model)."""
    inputs = dict(pixel_values=pixel_values)
    config = model.config
    if getattr(config, "model_type", None) == "cae" and getattr(config, "target", None) == "tokens":
        grid = pixel_values.shape[-1] // config.patch_size
        generator = torch.Generator(device="cpu").manual_seed(1)
        labels = torch.randint(0, config.vocab_size, (pixel_values.shape[0], grid * grid), generator=generator)
        inputs["labels"] = labels.to(pixel_values.device)
    return inputs


BUILDERS = {"vitmae": build_vitmae, "mixedae-mae": build_mixedae_mae, "mixedae": build_mixedae,
            "mixedae-logits-hc": build_mixedae_logits_hc, "cae": build_cae}


# ---------------------------------------------------------------------------------------------- official CAE
# `--official_cae_repo` compares our CAEForPreTraining with the official implementation (github.com/Atten4Vis/CAE,
# `models/modeling_cae.py`, class ContextAutoencoderViT) at equal configuration, imported at run time from the user's
# checkout; none of its code is part of this repository.
OFFICIAL_CAE_FILES = ("models/modeling_cae.py", "models/modeling_cae_helper.py", "models/modeling_finetune.py")
OFFICIAL_CAE_CLASS = "ContextAutoencoderViT"
# Module names the official files import that this environment does not provide (or must not run): timm for four
# small helpers, and furnace.utils, whose import pulls in tensorboardX, CLIP and the DALL-E code (only its
# fine-tuning classifier uses it). `models` is the checkout's own package, loaded from its folder.
OFFICIAL_CAE_STAND_IN_MODULES = ("timm", "timm.models", "timm.models.layers", "timm.models.registry", "furnace",
                                 "furnace.utils", "models")
OFFICIAL_CAE_MODULES = ("models.modeling_finetune", "models.modeling_cae_helper", "models.modeling_cae")
OFFICIAL_ALIGN_LOSS_WEIGHT = 2.0  # tools/run_pretraining.py default; ours is CAEConfig.align_loss_weight
LOSS_TOLERANCE = 1e-4  # relative; fp32 sums in another order differ by ~1e-7


def check_official_cae_repo(path: str) -> str:
    """The checkout folder, or a `SystemExit` that names `--official_cae_repo` and what is missing."""
    folder = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(folder):
        raise SystemExit(
            f"--official_cae_repo {path}: no such folder; pass a local checkout of github.com/Atten4Vis/CAE "
            "(git clone https://github.com/Atten4Vis/CAE)"
        )
    missing = [name for name in OFFICIAL_CAE_FILES if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        raise SystemExit(
            f"--official_cae_repo {path}: not a checkout of github.com/Atten4Vis/CAE, missing {', '.join(missing)}; "
            "pass the folder that holds models/ and furnace/ of that repository"
        )
    return folder


def checkout_commit(folder: str) -> str | None:
    """The checkout's git commit, when the folder is the top of a git work tree (None for an exported copy)."""
    import subprocess

    if not os.path.exists(os.path.join(folder, ".git")):
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        completed = subprocess.run(
            ["git", "-C", folder, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
        return completed.stdout.strip()
    return None


def _to_2tuple(value):
    if isinstance(value, (tuple, list)):
        return tuple(value)
    return (value, value)


def _drop_path(hidden_states: torch.Tensor, drop_prob: float = 0.0, training: bool = False) -> torch.Tensor:
    """Stochastic depth per sample with timm's function signature, as the official blocks call it (our DropPath)."""
    from transformers_mixedae.models.vit_layers import DropPath

    return DropPath(drop_prob or 0.0).train(training)(hidden_states)


def _stand_in_modules(folder: str) -> dict:
    """Small stand-ins for what the official model files import (see OFFICIAL_CAE_STAND_IN_MODULES)."""
    import types

    modules = {name: types.ModuleType(name) for name in OFFICIAL_CAE_STAND_IN_MODULES}
    layers = modules["timm.models.layers"]
    layers.drop_path = _drop_path
    layers.to_2tuple = _to_2tuple
    layers.trunc_normal_ = torch.nn.init.trunc_normal_  # same signature (tensor, mean, std, a, b)
    modules["timm.models.registry"].register_model = lambda function: function  # the registry is not needed
    modules["timm"].models = modules["timm.models"]
    modules["timm.models"].layers, modules["timm.models"].registry = layers, modules["timm.models.registry"]
    modules["furnace"].utils = modules["furnace.utils"]
    # A package whose submodules load from the checkout's models/ folder, without running its __init__.py.
    modules["models"].__path__ = [os.path.join(folder, "models")]
    return modules


def import_official_cae(path: str):
    """Import the checkout's `models/modeling_cae.py` with the stand-ins in `sys.modules` for the duration of the
    import only; every `sys.modules` entry is restored afterwards (the imported functions keep their globals)."""
    folder = check_official_cae_repo(path)
    names = OFFICIAL_CAE_STAND_IN_MODULES + OFFICIAL_CAE_MODULES
    saved = {name: sys.modules[name] for name in names if name in sys.modules}
    try:
        sys.modules.update(_stand_in_modules(folder))
        module = importlib.import_module("models.modeling_cae")
    except ImportError as error:
        raise SystemExit(
            f"--official_cae_repo {path}: the official models/modeling_cae.py could not be imported ({error}); "
            "the benchmark provides stand-ins only for timm and furnace.utils"
        ) from error
    finally:
        for name in names:
            sys.modules.pop(name, None)
        sys.modules.update(saved)
    if not hasattr(module, OFFICIAL_CAE_CLASS):
        raise SystemExit(f"--official_cae_repo {path}: models/modeling_cae.py has no {OFFICIAL_CAE_CLASS} (CAE v1)")
    return module


@contextlib.contextmanager
def cuda_call_stand_in(device: torch.device):
    """The official forward moves its position table with `tensor.cuda(x.device)`, which fails without CUDA. On a
    CPU run `Tensor.cuda` moves to the given device instead (no move at all here) while the official forward runs,
    and is restored afterwards; on CUDA nothing changes."""
    if device.type == "cuda":
        yield
        return
    original = torch.Tensor.cuda

    def to_requested_device(tensor, device=None, non_blocking=False, **kwargs):
        return tensor if device is None else tensor.to(device, non_blocking=non_blocking)

    torch.Tensor.cuda = to_requested_device
    try:
        yield
    finally:
        torch.Tensor.cuda = original


@dataclass
class LossOutput:
    loss: torch.Tensor


class OfficialCAEWithLoss(torch.nn.Module):
    """The official model plus the official pre-training loss (engine_for_pretraining.py: cross-entropy on the
    masked token ids + align_loss_weight * MSE to the detached target, both in fp32), called like our model."""

    def __init__(self, official: torch.nn.Module, align_loss_weight: float = OFFICIAL_ALIGN_LOSS_WEIGHT):
        super().__init__()
        self.official = official
        self.align_loss_weight = align_loss_weight

    def forward(self, pixel_values, bool_masked_pos, labels) -> LossOutput:
        with cuda_call_stand_in(pixel_values.device):
            logits, predicted, target = self.official(pixel_values, bool_masked_pos)
        main_loss = torch.nn.functional.cross_entropy(logits.float(), labels[bool_masked_pos])
        align_loss = torch.nn.functional.mse_loss(predicted.float(), target.detach().float())
        return LossOutput(loss=main_loss + self.align_loss_weight * align_loss)


def build_official_cae(module, size: str, decoder_width: int, drop_path_rate: float) -> OfficialCAEWithLoss:
    """The official model at our benchmark geometry (`SIZES[size]`): encoder with LayerScale 0.1, regressor and
    decoder of width `decoder_width` (projection when it differs from the encoder's), 4 + 4 layers and 12 heads at
    the real sizes, LayerNorm eps 1e-6."""
    encoder = SIZES[size]["encoder"]
    cae = SIZES[size].get("cae", {})
    options = argparse.Namespace(
        model_type="cae",
        regressor_depth=cae.get("regressor_num_layers", 4),
        decoder_embed_dim=decoder_width,
        decoder_depth=cae.get("decoder_num_layers", 4),
    )
    with contextlib.redirect_stdout(sys.stderr):  # the constructor prints its settings
        official = getattr(module, OFFICIAL_CAE_CLASS)(
            img_size=encoder.image_size,
            patch_size=encoder.patch_size,
            embed_dim=encoder.hidden_size,
            depth=encoder.num_hidden_layers,
            num_heads=encoder.num_attention_heads,
            mlp_ratio=encoder.intermediate_size / encoder.hidden_size,
            qkv_bias=True,
            norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6),
            init_values=0.1,
            drop_path_rate=drop_path_rate,
            decoder_embed_dim=decoder_width,
            regressor_depth=options.regressor_depth,
            decoder_depth=options.decoder_depth,
            decoder_num_heads=cae.get("decoder_num_attention_heads", 12),
            decoder_num_classes=cae.get("vocab_size", 8192),
            decoder_layer_scale_init_value=0.1,
            args=options,
        )
    return OfficialCAEWithLoss(official)


def ours_from_official(official: OfficialCAEWithLoss, size: str, attn: str, drop_path_rate: float):
    """Our CAEForPreTraining with the official model's weights, through the checkpoint converter."""
    from transformers_mixedae import CAEForPreTraining
    from transformers_mixedae.hub.convert_cae_checkpoint import convert_cae_state_dict

    cae = SIZES[size].get("cae", {})
    conversion = convert_cae_state_dict(
        official.official.state_dict(),
        num_attention_heads=SIZES[size]["encoder"].num_attention_heads,
        decoder_num_attention_heads=cae.get("decoder_num_attention_heads", 12),
        drop_path_rate=drop_path_rate,
        align_loss_weight=official.align_loss_weight,
        **{key: cae[key] for key in ("mask_min_num_patches",) if key in cae},
        attn_implementation=attn,
    )
    model = CAEForPreTraining(conversion.config)
    model.load_state_dict(conversion.state_dict, strict=True)
    return model


# ---------------------------------------------------------------------------------------------- measurement helpers
CLOCKS = {
    # Wall time: what a user waits for. CPU time of the whole process (all threads): on a CPU shared with other
    # processes it leaves out the time the scheduler gives to them, so it stays comparable under load.
    "wall": time.perf_counter,
    "cpu": time.process_time,
}


def read_clocks() -> dict:
    return {name: clock() for name, clock in CLOCKS.items()}


def elapsed_since(start: dict) -> dict:
    return {name: clock() - start[name] for name, clock in CLOCKS.items()}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast_context(device: torch.device, precision: str):
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def training_step(model, optimizer, inputs, device, precision) -> None:
    """One step as a training loop runs it; no host-device synchronisation inside."""
    optimizer.zero_grad(set_to_none=True)
    with autocast_context(device, precision):
        loss = model(**inputs).loss
    loss.backward()
    optimizer.step()


def forward_backward(model, inputs, device, precision) -> None:
    with autocast_context(device, precision):
        loss = model(**inputs).loss
    loss.backward()


def _shapes_sdpa_forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query, key, value)


def _shapes_sdpa_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    # Model FLOPs: the four products of the eager backward (twice the forward), without the recomputation of
    # the scores that fused kernels do, so that eager and SDPA runs report the same work.
    return 2 * flop_counter.sdpa_flop_count(query, key, value)


def flop_custom_mapping() -> dict:
    """torch's counter knows the CUDA SDPA kernels but not the CPU flash kernel, and counts the backward's
    recomputation; every fused attention op gets the eager formula here."""
    aten = torch.ops.aten
    forward_ops = ("_scaled_dot_product_flash_attention_for_cpu",)
    backward_ops = (
        "_scaled_dot_product_flash_attention_for_cpu_backward",
        "_scaled_dot_product_flash_attention_backward",
        "_scaled_dot_product_efficient_attention_backward",
        "_scaled_dot_product_cudnn_attention_backward",
    )
    mapping = {getattr(aten, name): _shapes_sdpa_forward for name in forward_ops if hasattr(aten, name)}
    mapping.update({getattr(aten, name): _shapes_sdpa_backward for name in backward_ops if hasattr(aten, name)})
    return mapping


def count_flops(model, inputs, device, precision) -> int:
    """FLOPs of one forward + backward (matmuls, convolutions, attention kernels)."""
    model.zero_grad(set_to_none=True)
    with flop_counter.FlopCounterMode(display=False, custom_mapping=flop_custom_mapping()) as counter:
        forward_backward(model, inputs, device, precision)
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def persistent_bytes(model, optimizer, inputs) -> int:
    """Bytes of the tensors alive between steps: parameters, gradients, buffers, optimizer state, input."""
    seen, total = set(), 0

    def add(tensor):
        nonlocal total
        if not isinstance(tensor, torch.Tensor):
            return
        storage = tensor.untyped_storage()
        key = (storage.device, storage.data_ptr())
        if key not in seen and storage.nbytes() > 0:
            seen.add(key)
            total += storage.nbytes()

    for parameter in model.parameters():
        add(parameter)
        add(parameter.grad)
    for buffer in model.buffers():
        add(buffer)
    for state in optimizer.state.values():
        for value in state.values():
            add(value)
    for value in inputs.values():
        add(value)
    return total


def peak_step_memory(model, optimizer, inputs, device, precision) -> int:
    """Persistent bytes at the start of a step plus the high-water mark of what the step allocates."""
    optimizer.zero_grad(set_to_none=True)
    gc.collect()
    baseline = persistent_bytes(model, optimizer, inputs)
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        training_step(model, optimizer, inputs, device, precision)
        synchronize(device)
        return baseline + torch.cuda.max_memory_allocated(device) - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        training_step(model, optimizer, inputs, device, precision)
    # Allocation (+nbytes) and free (-nbytes) events of the host allocator, in time order.
    events = [
        event
        for event in profiler.profiler.kineto_results.events()
        if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU
    ]
    events.sort(key=lambda event: event.start_ns())
    live = high_water = 0
    for event in events:
        live += event.nbytes()
        high_water = max(high_water, live)
    return baseline + high_water


def _time_product(left, right, device, repeats: int) -> dict:
    """Seconds per `left @ right` on each clock, `repeats` timings after one untimed product; each timing runs
    enough back-to-back products to last about 0.2 s."""
    synchronize(device)
    start = time.perf_counter()
    torch.mm(left, right)
    synchronize(device)
    inner = max(1, min(200, int(0.2 / max(time.perf_counter() - start, 1e-6))))
    timings = {name: [] for name in CLOCKS}
    for _ in range(repeats):
        synchronize(device)
        start = read_clocks()
        for _ in range(inner):
            torch.mm(left, right)
        synchronize(device)
        for name, seconds in elapsed_since(start).items():
            timings[name].append(seconds / inner)
    return timings


def matmul_peak(device: torch.device, precision: str, size: int, repeats: int, clock: str = "wall") -> dict:
    """FLOP/s of a `size` x `size` matmul in the run's dtype (fp32, or bf16 for autocast runs).

    The three operand layouts of a Linear layer's training step are timed: `A @ B.T` (forward), `A @ B` (input
    gradient) and `A.T @ B` (weight gradient); their kernels differ by up to 20x on CPUs without native bf16. The
    peak is the fastest layout's median, so the reported fraction is conservative.
    """
    dtype = PRECISIONS[precision] or torch.float32
    generator = torch.Generator(device="cpu").manual_seed(0)
    left = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    right = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    layouts = {"A@B": (left, right), "A@B^T": (left, right.t()), "A^T@B": (left.t(), right)}
    per_layout = {}
    for name, (first, second) in layouts.items():
        timings = _time_product(first, second, device, max(3, repeats))
        per_layout[name] = dict(
            median_seconds=statistics.median(timings[clock]),
            flops_per_second=2.0 * size**3 / statistics.median(timings[clock]),
            timings=timings,
        )
    best = max(per_layout, key=lambda name: per_layout[name]["flops_per_second"])
    return dict(
        dtype=str(dtype).replace("torch.", ""),
        clock=clock,
        matmul_size=size,
        layout=best,
        flops_per_second=per_layout[best]["flops_per_second"],
        layouts=per_layout,
    )


def machine_description(device: torch.device) -> dict:
    cpu_model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    info = dict(
        cpu_model=cpu_model,
        cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        platform=platform.platform(),
        python=platform.python_version(),
        torch=torch.__version__,
        device=str(device),
    )
    with contextlib.suppress(Exception):
        import transformers

        info["transformers"] = transformers.__version__
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# ---------------------------------------------------------------------------------------------- the run
@dataclass
class Entry:
    size: str
    precision: str
    attn: str
    model: str
    status: str = "ok"
    error: str | None = None
    step_seconds: list[float] = field(default_factory=list)  # on the run's clock
    step_seconds_by_clock: dict = field(default_factory=lambda: {name: [] for name in CLOCKS})
    flops_per_step: int | None = None
    peak_memory_bytes: int | None = None
    num_parameters: int | None = None
    decoder_width: int | None = None  # official-CAE comparison only
    loss: float | None = None  # official-CAE comparison: loss of the copied weights on the shared inputs (eval mode)
    # Live objects while measuring; not serialised.
    handles: tuple | None = None

    def median_seconds(self) -> float | None:
        return statistics.median(self.step_seconds) if self.step_seconds else None


def parse_widths(text: str, sizes: list[str]) -> list[int]:
    """`--cae_decoder_widths`: positive integers that the sin-cos table (4) and every size's decoder heads divide."""
    try:
        widths = [int(value) for value in text.split(",") if value.strip()]
    except ValueError:
        widths = []
    heads = {size: SIZES[size].get("cae", {}).get("decoder_num_attention_heads", 12) for size in sizes}
    bad = [width for width in widths if width <= 0 or width % 4 or any(width % count for count in heads.values())]
    if not widths or bad:
        raise SystemExit(
            f"--cae_decoder_widths {text!r}: give positive integers divisible by 4 and by the decoder heads "
            f"({', '.join(f'{size}: {count}' for size, count in heads.items())}), e.g. 384,768"
        )
    return widths


def parse_list(text: str, allowed, what: str) -> list[str]:
    values = [value.strip() for value in text.split(",") if value.strip()]
    unknown = [value for value in values if value not in allowed]
    if unknown or not values:
        raise SystemExit(f"--{what}: unknown {unknown or text!r}; choose from {', '.join(allowed)}")
    return values


def training_handles(args, entry: Entry, model, inputs: dict) -> tuple:
    """(model in train mode, the benchmark's AdamW over its trainable parameters, inputs); records the parameter
    count."""
    model.train()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=1.5e-4,
        betas=(0.9, 0.95),
        weight_decay=0.05,
        **ADAMW_IMPLEMENTATIONS[args.adamw],
    )
    entry.num_parameters = sum(p.numel() for p in model.parameters())
    return model, optimizer, inputs


def build_entries(args, size, precision, attn, device, pixel_values) -> list[Entry]:
    entries = []
    for name in args.models:
        entry = Entry(size, precision, attn, name)
        try:
            torch.manual_seed(args.seed)
            model = BUILDERS[name](size, attn).to(device)
            entry.handles = training_handles(args, entry, model, model_inputs(model, pixel_values))
        except ModelUnavailable as error:
            entry.status, entry.error = "unavailable", str(error)
        except Exception as error:  # a model that fails to build is reported, the others still run
            entry.status, entry.error = "error", f"{type(error).__name__}: {error}"
            if args.verbose:
                traceback.print_exc()
        entries.append(entry)
    return entries


def run_configuration(args, size, precision, attn, device) -> list[Entry]:
    image_size = SIZES[size]["encoder"].image_size
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    pixel_values = torch.randn(args.batch_size, 3, image_size, image_size, generator=generator).to(device)
    entries = build_entries(args, size, precision, attn, device, pixel_values)
    return measure_entries(args, entries, device, precision)


def measure_entries(args, entries: list[Entry], device: torch.device, precision: str) -> list[Entry]:
    """Time the built entries' steps interleaved (rotating order), then count FLOPs and peak memory; frees the
    models."""
    active = [entry for entry in entries if entry.status == "ok"]

    def guarded(entry, action):
        try:
            return action(*entry.handles)
        except Exception as error:
            entry.status, entry.error = "error", f"{type(error).__name__}: {error}"
            entry.handles = None
            if args.verbose:
                traceback.print_exc()
            return None

    # Warm-up and timed steps, interleaved with a rotating order.
    for repeat in range(args.warmup + args.repeats):
        shift = repeat % max(1, len(active))
        for entry in active[shift:] + active[:shift]:
            if entry.status != "ok":
                continue

            def timed(model, optimizer, inputs):
                synchronize(device)
                start = read_clocks()
                training_step(model, optimizer, inputs, device, precision)
                synchronize(device)
                return elapsed_since(start)

            seconds = guarded(entry, timed)
            if seconds is not None and repeat >= args.warmup:
                entry.step_seconds.append(seconds[args.clock])
                for name, value in seconds.items():
                    entry.step_seconds_by_clock[name].append(value)
    for entry in active:
        if entry.status != "ok":
            continue
        flops = guarded(entry, lambda model, optimizer, inputs: count_flops(model, inputs, device, precision))
        entry.flops_per_step = flops
        if not args.skip_memory and entry.status == "ok":
            entry.peak_memory_bytes = guarded(
                entry, lambda model, optimizer, inputs: peak_step_memory(model, optimizer, inputs, device, precision)
            )
        if args.verbose:
            print(f"  done {entry.size}/{precision}/{entry.attn}/{entry.model}", file=sys.stderr)
    for entry in entries:
        entry.handles = None
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return entries


def comparison_inputs(ours, batch_size: int, seed: int, device: torch.device) -> dict:
    """Pixels, one block mask per image from our generator and token ids, shared by both models."""
    config = ours.config
    generator = torch.Generator(device="cpu").manual_seed(seed)
    pixel_values = torch.randn(batch_size, 3, config.image_size, config.image_size, generator=generator)
    labels = torch.randint(0, config.vocab_size, (batch_size, config.num_patches), generator=generator)
    torch.manual_seed(seed)
    bool_masked_pos = ours.draw_bool_masked_pos(batch_size, config.grid_size)
    inputs = dict(pixel_values=pixel_values, bool_masked_pos=bool_masked_pos, labels=labels)
    return {name: value.to(device) for name, value in inputs.items()}


def evaluation_loss(model, inputs: dict) -> float:
    """The loss in eval mode (no stochastic depth), without gradient: deterministic, so both models compare."""
    model.eval()
    with torch.no_grad():
        loss = model(**inputs).loss.item()
    model.train()
    return loss


def run_official_comparison(args, module, size: str, precision: str, decoder_width: int, device) -> list[Entry]:
    """Ours (every `--attn`) and the official CAE with the same weights, inputs and masks, measured interleaved."""
    torch.manual_seed(args.seed)
    official = build_official_cae(module, size, decoder_width, args.cae_drop_path_rate).to(device)
    models = {"official-cae": ("eager", official)}
    for attn in args.attn:
        models[f"cae-{attn}"] = (attn, ours_from_official(official, size, attn, args.cae_drop_path_rate).to(device))
    inputs = comparison_inputs(models[f"cae-{args.attn[0]}"][1], args.batch_size, args.seed, device)
    entries = []
    for name, (attn, model) in models.items():
        entry = Entry(size, precision, attn, name, decoder_width=decoder_width)
        # The loss check before any step (copied weights still equal), in the run's precision.
        with autocast_context(device, precision):
            entry.loss = evaluation_loss(model, inputs)
        entry.handles = training_handles(args, entry, model, inputs)
        entries.append(entry)
    del models, official
    return measure_entries(args, entries, device, precision)


def summarise_official_comparison(entries: list[Entry], batch_size: int, clock: str) -> list[dict]:
    """Rows with ratios ours / official of the same (size, precision, decoder width), and the loss difference."""
    rows = summarise(entries, batch_size, {}, clock, anchor="official-cae", key=("size", "precision", "decoder_width"))
    official_loss = {
        (entry.size, entry.precision, entry.decoder_width): entry.loss for entry in entries if entry.model == "official-cae"
    }
    for entry, row in zip(entries, rows):
        reference = official_loss.get((entry.size, entry.precision, entry.decoder_width))
        row["decoder_width"] = entry.decoder_width
        row["loss"] = entry.loss
        row["loss_difference_vs_official"] = (
            abs(entry.loss - reference) if entry.loss is not None and reference is not None else None
        )
        row["loss_matches_official"] = (
            row["loss_difference_vs_official"] <= LOSS_TOLERANCE * max(1.0, abs(reference))
            if row["loss_difference_vs_official"] is not None
            else None
        )
    return rows


OFFICIAL_TABLE_COLUMNS = (
    "size",
    "precision",
    "decoder width",
    "attn",
    "model",
    "step ms (median)",
    "spread",
    "step / official",
    "paired step / official",
    "GFLOP/step",
    "peak memory MiB",
    "memory / official",
    "loss",
    "abs(loss - official)",
)


def official_comparison_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(OFFICIAL_TABLE_COLUMNS) + " |", "|" + "---|" * len(OFFICIAL_TABLE_COLUMNS)]
    for row in rows:
        cells = [row["size"], row["precision"], row["decoder_width"], row["attn"], row["model"]]
        if row["status"] != "ok":
            cells += [" ".join(f"{row['status']}: {row['error']}".split())[:300]]
            cells += [""] * (len(OFFICIAL_TABLE_COLUMNS) - len(cells))
        else:
            cells += [
                _fmt(row["median_step_seconds"] and row["median_step_seconds"] * 1e3, ".0f"),
                _fmt(row["spread"] and 100 * row["spread"], ".0f") + "%",
                _fmt(row["step_time_ratio"], ".3f"),
                _fmt(row["paired_step_time_ratio"], ".3f"),
                _fmt(row["flops_per_step"] and row["flops_per_step"] / 1e9, ".4g"),
                _fmt(row["peak_memory_bytes"] and row["peak_memory_bytes"] / 2**20, ".0f"),
                _fmt(row["memory_ratio"], ".3f"),
                _fmt(row["loss"], ".6f"),
                _fmt(row["loss_difference_vs_official"], ".2e"),
            ]
        lines.append("| " + " | ".join(str(cell).replace("|", "/") for cell in cells) + " |")
    return "\n".join(lines)


def summarise(
    entries: list[Entry],
    batch_size: int,
    peaks: dict,
    clock: str = "wall",
    anchor: str = ANCHOR,
    key: tuple[str, ...] = ("size", "precision", "attn"),
) -> list[dict]:
    """One row per entry, with ratios against the `anchor` model's entry that has the same `key` fields."""
    rows = []

    def key_of(entry):
        return tuple(getattr(entry, name) for name in key)

    anchor_name = anchor
    anchors = {key_of(entry): entry for entry in entries if entry.model == anchor_name and entry.status == "ok"}
    for entry in entries:
        median = entry.median_seconds() if entry.status == "ok" else None
        anchor = anchors.get(key_of(entry))
        anchor_median = anchor.median_seconds() if anchor is not None else None
        peak = peaks.get(entry.precision, {}).get("flops_per_second")
        row = dict(
            size=entry.size,
            precision=entry.precision,
            attn=entry.attn,
            model=entry.model,
            status=entry.status,
            error=entry.error,
            batch_size=batch_size,
            num_parameters=entry.num_parameters,
            clock=clock,
            step_seconds=list(entry.step_seconds),
            step_seconds_by_clock={name: list(values) for name, values in entry.step_seconds_by_clock.items()},
            best_step_seconds=min(entry.step_seconds) if entry.step_seconds else None,
            median_step_seconds=median,
            spread=(max(entry.step_seconds) - min(entry.step_seconds)) / median if median else None,
            images_per_second=batch_size / median if median else None,
            step_time_ratio=median / anchor_median if median and anchor_median else None,
            # Ratio of the steps of the same round (run next to each other), median over rounds.
            paired_step_time_ratio=(
                statistics.median(x / y for x, y in zip(entry.step_seconds, anchor.step_seconds))
                if median and anchor is not None and len(anchor.step_seconds) == len(entry.step_seconds)
                else None
            ),
            best_step_time_ratio=(
                min(entry.step_seconds) / min(anchor.step_seconds)
                if median and anchor is not None and anchor.step_seconds
                else None
            ),
            flops_per_step=entry.flops_per_step,
            achieved_flops_per_second=entry.flops_per_step / median if median and entry.flops_per_step else None,
            peak_memory_bytes=entry.peak_memory_bytes,
            memory_ratio=(
                entry.peak_memory_bytes / anchor.peak_memory_bytes
                if anchor is not None and entry.peak_memory_bytes and anchor.peak_memory_bytes
                else None
            ),
        )
        row["fraction_of_matmul_peak"] = (
            row["achieved_flops_per_second"] / peak if row["achieved_flops_per_second"] and peak else None
        )
        rows.append(row)
    return rows


def _fmt(value, pattern: str) -> str:
    return "n/a" if value is None else format(value, pattern)


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for row in rows:
        if row["status"] != "ok":
            cells = [row["size"], row["precision"], row["attn"], row["model"]]
            cells += [" ".join(f"{row['status']}: {row['error']}".split())[:300]] + [""] * (len(TABLE_COLUMNS) - 5)
        else:
            cells = [
                row["size"],
                row["precision"],
                row["attn"],
                row["model"],
                _fmt(row["images_per_second"], ".2f"),
                _fmt(row["median_step_seconds"] and row["median_step_seconds"] * 1e3, ".0f"),
                _fmt(row["spread"] and 100 * row["spread"], ".0f") + "%",
                _fmt(row["step_time_ratio"], ".3f"),
                _fmt(row["flops_per_step"] and row["flops_per_step"] / 1e9, ".4g"),
                _fmt(row["achieved_flops_per_second"] and row["achieved_flops_per_second"] / 1e9, ".4g"),
                _fmt(row["fraction_of_matmul_peak"] and 100 * row["fraction_of_matmul_peak"], ".0f") + "%",
                _fmt(row["peak_memory_bytes"] and row["peak_memory_bytes"] / 2**20, ".0f"),
                _fmt(row["memory_ratio"], ".3f"),
            ]
        lines.append("| " + " | ".join(str(cell).replace("|", "/") for cell in cells) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="tiny,small", help=f"comma list of {', '.join(SIZES)}")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32, bf16 (autocast)")
    parser.add_argument("--attn", default="eager,sdpa", help="comma list of eager, sdpa (attn_implementation)")
    parser.add_argument(
        "--models",
        default=None,
        help=f"comma list of {', '.join(MODELS)} (default: all of them, or none with --official_cae_repo)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="images per step; a multiple of 4 (MixedAE r=0.25)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per model (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model before timing")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--matmul-size", type=int, default=None, help="side of the square matmul for the peak (default 1024 CPU, 8192 GPU)"
    )
    parser.add_argument(
        "--clock",
        choices=list(CLOCKS),
        default="wall",
        help="time steps and the matmul peak by wall time (default) or by the process's CPU time (all threads; "
        "for a CPU shared with other processes, best with --threads 1); both are always in the JSON",
    )
    parser.add_argument(
        "--adamw",
        choices=list(ADAMW_IMPLEMENTATIONS),
        default="default",
        help="torch.optim.AdamW implementation for every model (default: torch's choice; run_mim.py uses fused)",
    )
    parser.add_argument(
        "--official_cae_repo",
        "--official-cae-repo",
        default=None,
        metavar="PATH",
        help="local checkout of github.com/Atten4Vis/CAE: also compare our CAEForPreTraining (each --attn) with the "
        "official ContextAutoencoderViT at equal configuration, weights copied through our checkpoint converter, "
        "same inputs and masks; reports the loss difference and the step-time and memory ratios ours / official",
    )
    parser.add_argument(
        "--cae_decoder_widths",
        "--cae-decoder-widths",
        default="384,768",
        help="comma list of regressor/decoder widths for --official_cae_repo (official default 768; 384 = no projection "
        "for ViT-S)",
    )
    parser.add_argument(
        "--cae_drop_path_rate",
        "--cae-drop-path-rate",
        type=float,
        default=0.1,
        help="stochastic depth of both CAE models in the --official_cae_repo comparison (official scripts: 0.1)",
    )
    parser.add_argument("--skip-memory", action="store_true", help="do not measure peak memory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write every figure to this JSON file")
    parser.add_argument("--verbose", action="store_true", help="progress and tracebacks on stderr")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    args.sizes = parse_list(args.sizes, SIZES, "sizes")
    args.precisions = parse_list(args.precisions, PRECISIONS, "precisions")
    args.attn = parse_list(args.attn, ATTENTION, "attn")
    official_module = None
    if args.official_cae_repo is not None:
        check_official_cae_repo(args.official_cae_repo)
        args.cae_decoder_widths = parse_widths(args.cae_decoder_widths, args.sizes)
        if not 0.0 <= args.cae_drop_path_rate < 1.0:
            raise SystemExit(f"--cae_drop_path_rate {args.cae_drop_path_rate} must be in [0, 1)")
    if args.models is None:
        args.models = [] if args.official_cae_repo is not None else list(MODELS)
    else:
        args.models = parse_list(args.models, MODELS, "models")
    if args.batch_size < 1 or (set(MIXING_MODELS) & set(args.models) and args.batch_size % 4):
        raise SystemExit(f"--batch-size {args.batch_size} must be a positive multiple of 4 (MixedAE groups 4 images)")
    if args.repeats < 1 or args.warmup < 0:
        raise SystemExit("--repeats must be >= 1 and --warmup >= 0")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.official_cae_repo is not None:
        official_module = import_official_cae(args.official_cae_repo)
    if device.type == "cuda" and args.clock != "wall":
        raise SystemExit("--clock cpu measures host CPU time; use the wall clock on CUDA")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32, for the model and for the peak
        torch.backends.cudnn.allow_tf32 = False
    matmul_size = args.matmul_size or (8192 if device.type == "cuda" else 1024)
    load_at_start = os.getloadavg()

    peaks = {
        precision: matmul_peak(device, precision, matmul_size, args.repeats, args.clock) for precision in args.precisions
    }
    entries = []
    for size in args.sizes:
        for precision in args.precisions:
            for attn in args.attn:
                if args.verbose:
                    print(f"running {size}/{precision}/{attn}", file=sys.stderr)
                entries += run_configuration(args, size, precision, attn, device)
    official_entries = []
    if official_module is not None:
        for size in args.sizes:
            for precision in args.precisions:
                for width in args.cae_decoder_widths:
                    if args.verbose:
                        print(f"running official CAE comparison {size}/{precision}/decoder width {width}", file=sys.stderr)
                    official_entries += run_official_comparison(args, official_module, size, precision, width, device)
    # The peak again at the end; the larger of the two medians is the reference (conservative fraction).
    for precision in args.precisions:
        again = matmul_peak(device, precision, matmul_size, args.repeats, args.clock)
        peaks[precision]["flops_per_second_at_end"] = again["flops_per_second"]
        peaks[precision]["measurement_at_end"] = again
        peaks[precision]["flops_per_second_at_start"] = peaks[precision]["flops_per_second"]
        peaks[precision]["flops_per_second"] = max(peaks[precision]["flops_per_second"], again["flops_per_second"])

    rows = summarise(entries, args.batch_size, peaks, args.clock)
    table = markdown_table(rows)
    header = [
        f"# bench_pretrain: batch {args.batch_size}, {args.warmup} warm-up + {args.repeats} timed steps per model "
        f"(median), device {device}, {torch.get_num_threads()} threads, {args.clock} clock",
        "",
    ]
    for precision, peak in peaks.items():
        header.append(
            f"- matmul peak {precision} ({peak['dtype']}, {peak['matmul_size']}^2, {peak['layout']}): "
            f"{peak['flops_per_second'] / 1e9:.1f} GFLOP/s (median; start {peak['flops_per_second_at_start'] / 1e9:.1f}, "
            f"end {peak['flops_per_second_at_end'] / 1e9:.1f})"
        )
    memory_method = (
        "torch.cuda.max_memory_allocated"
        if device.type == "cuda"
        else "torch.profiler allocation events (live torch tensors)"
    )
    header.append(f"- peak memory: persistent state + step high-water mark via {memory_method}")
    load_at_end = os.getloadavg()
    header.append(f"- load average (1, 5, 15 min): start {load_at_start}, end {load_at_end}")
    header.append("")
    print("\n".join(header) + (table if rows else ""))
    official = None
    if official_module is not None:
        official_rows = summarise_official_comparison(official_entries, args.batch_size, args.clock)
        official_table = official_comparison_table(official_rows)
        print(
            f"\n## CAE: ours / official ({args.official_cae_repo}), same weights, inputs and masks; drop path "
            f"{args.cae_drop_path_rate}; loss in eval mode before the first step\n" + official_table
        )
        official = dict(
            repo=os.path.abspath(args.official_cae_repo),
            repo_commit=checkout_commit(args.official_cae_repo),
            decoder_widths=args.cae_decoder_widths,
            drop_path_rate=args.cae_drop_path_rate,
            align_loss_weight=OFFICIAL_ALIGN_LOSS_WEIGHT,
            loss_tolerance=LOSS_TOLERANCE,
            stand_ins=(
                "timm.models.layers (drop_path, to_2tuple, trunc_normal_), timm.models.registry (register_model) and an "
                "empty furnace.utils in sys.modules during the import only; Tensor.cuda moves to the requested "
                "device during the official forward on CPU runs"
            ),
            rows=official_rows,
            table=official_table,
        )

    result = dict(
        command=" ".join([os.path.basename(sys.argv[0] or "bench_pretrain.py")] + list(argv if argv is not None else sys.argv[1:])),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        machine=machine_description(device),
        settings=dict(
            sizes=args.sizes,
            precisions=args.precisions,
            attn=args.attn,
            models=args.models,
            model_descriptions={name: MODELS[name] for name in args.models},
            batch_size=args.batch_size,
            repeats=args.repeats,
            warmup=args.warmup,
            clock=args.clock,
            threads=torch.get_num_threads(),
            optimizer=f"torch.optim.AdamW(lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05), implementation {args.adamw}",
            memory_method=memory_method,
            flops_method="torch.utils.flop_counter.FlopCounterMode, one forward + backward (optimizer not counted)",
            anchor=ANCHOR,
        ),
        matmul_peak=peaks,
        load_average=dict(start=load_at_start, end=load_at_end),
        rows=rows,
        table=table,
        official_cae=official,
    )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return result


if __name__ == "__main__":
    main()
