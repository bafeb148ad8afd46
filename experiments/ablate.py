#!/usr/bin/env python
# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Ablation grid for MixedAE's components: short pre-training runs, kNN and linear probe, mean and std over seeds.

Every run goes through `transformers_mixedae.tasks.masked_image_modeling.run_pretraining` (the code behind
`examples/run_mim.py`), with arguments parsed by the same `HfArgumentParser` from a command line that is
recorded with the result, so each run can be repeated alone with `examples/run_mim.py`. Without dataset
arguments the runs use the Fashion-MNIST subset shipped with the package.

All arms of one size train for the same number of optimizer steps on the same batch size, so they see the
same number of images. MixedAE arms set every objective field explicitly (they do not depend on
`MixedAEConfig`'s defaults, which this grid is meant to choose).

Results: `<output_dir>/runs/<arm>/seed_<k>/` holds the run (final model, `all_results.json`) and
`ablate_result.json` (metrics, the homologous top-k curve, the settings). An arm/seed whose
`ablate_result.json` exists with the same settings is skipped, so an interrupted grid continues where it
stopped when the same command is run again. A run stopped by SIGTERM (which writes a checkpoint) resumes from that
checkpoint, with the top-k curve and time it had then (`ablate_progress.json`, written with each checkpoint); so does
a segmentation fine-tune. A run folder without a checkpoint (a run killed outright) is started afresh.
The script writes `runs.csv` (one row per run), `summary.csv` and `summary.md` (mean and sample standard deviation
per arm) and the two plots at the end; with `--jobs 1` the tables are also rewritten after every run, and
`--report_only` rebuilds everything from the results so far at any time (e.g. while a grid runs).

    PYTHONPATH=src python3 experiments/ablate.py --size tiny --arms mae,full --seeds 1      # smoke test
    PYTHONPATH=src python3 experiments/ablate.py --size doc --seeds 3 --jobs 2 \
        --output_dir outputs/ablations/doc --plot_dir docs                                   # docs/ablations.md

Homologous top-k accuracy curve: every run gets a training callback (`TopkProbe`, a
`transformers_mixedae.training.TrainingCallback`) that measures `homologous_topk_accuracy` of the model, over all
patch queries and over foreground (non-constant) patch queries, on a fixed validation batch with fixed mixing noise
(`transformers_mixedae.evaluation.homologous_probe`: no gradient, forked RNG, eval mode restored) at every logging
step (`on_log`), and once before the first step. The training trajectory is unchanged by the probe.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

# Run from a checkout without installing: fall back to the repository's src/ folder.
_SOURCE_FOLDER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
if importlib.util.find_spec("transformers_mixedae") is None and os.path.isdir(_SOURCE_FOLDER):
    sys.path.insert(0, _SOURCE_FOLDER)

import transformers_mixedae  # noqa: F401  (registers the models)
from transformers import HfArgumentParser

from transformers_mixedae.evaluation.dense_probe import dense_benchmark_tensors, run_dense_probe
from transformers_mixedae.evaluation.homologous_probe import can_probe, homologous_probe, validation_batch
from transformers_mixedae.models.presets import ViTSize
from transformers_mixedae.tasks.masked_image_modeling import run_pretraining
from transformers_mixedae.tasks.semantic_segmentation import run_semantic_segmentation
from transformers_mixedae.tasks.semantic_segmentation_args import parse_segmentation_arguments
from transformers_mixedae.training.arguments import (
    DataArguments,
    ModelArguments,
    PretrainingEvaluationArguments,
    TrainingArguments,
)
from transformers_mixedae.training import LoopState, TrainingCallback
from transformers_mixedae.training.checkpointing import resolve_checkpoint
from transformers_mixedae.training.output_folders import is_resumable
from transformers_mixedae.training.records import write_json_atomically

RESULT_FILENAME = "ablate_result.json"
PROGRESS_FILENAME = "ablate_progress.json"
RESUME_ARGUMENTS = ["--resume_from_checkpoint", "latest"]
ACCURACY_PLOT = "ablations_accuracy.png"
TOPK_CURVE_PLOT = "ablations_topk_curve.png"


# ---------------------------------------------------------------------------------------------- sizes
@dataclass(frozen=True)
class SizePreset:
    """Model geometry and run length of one grid size (every arm of the size uses all of it)."""

    encoder: ViTSize  # the encoder, with image and patch size
    mixedae_decoder: dict
    cae_parts: dict  # CAE regressor/decoder and block masking at this geometry
    steps: int
    batch_size: int
    learning_rate: float
    max_train_samples: int | None
    max_eval_samples: int
    max_eval_train_samples: int
    linear_probe_epochs: int
    logging_steps: int
    probe_images: int
    eval_batch_size: int = 256
    warmup_ratio: float = 0.0  # passed only when set, so the settings of the earlier sizes are unchanged

    @property
    def image_size(self) -> int:
        return self.encoder.image_size

    @property
    def patch_size(self) -> int:
        return self.encoder.patch_size


SIZES = {
    # CI: a 16-pixel, two-layer toy; seconds per run.
    "tiny": SizePreset(
        encoder=ViTSize(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, patch_size=4,
            image_size=16,
        ),
        mixedae_decoder=dict(
            decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
            decoder_intermediate_size=32,
        ),
        cae_parts=dict(
            decoder_hidden_size=32, regressor_num_layers=1, decoder_num_layers=1, decoder_num_attention_heads=4,
            num_masking_patches=8, mask_min_num_patches=2,
        ),
        steps=3,
        batch_size=8,
        learning_rate=1e-3,
        max_train_samples=64,
        max_eval_samples=32,
        max_eval_train_samples=64,
        linear_probe_epochs=2,
        logging_steps=1,
        probe_images=8,
        eval_batch_size=32,
    ),
    # The documented grid (docs/ablations.md): 32 px, patch 4 (64 patches), a 4-layer 128-wide encoder and a
    # 2-layer 64-wide decoder; 200 steps of 64 images (about 2 epochs of the 6,000 training images). Sized
    # from a measured run: about 110 s of CPU per run, so 13 arms x 3 seeds take about 40 min with --jobs 2 on an
    # idle 2-core machine.
    "doc": SizePreset(
        encoder=ViTSize(
            hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512, patch_size=4,
            image_size=32,
        ),
        mixedae_decoder=dict(
            decoder_hidden_size=64, decoder_num_hidden_layers=2, decoder_num_attention_heads=4,
            decoder_intermediate_size=256,
        ),
        cae_parts=dict(
            decoder_hidden_size=64, regressor_num_layers=2, decoder_num_layers=2, decoder_num_attention_heads=4,
            decoder_intermediate_size=256, num_masking_patches=32, mask_min_num_patches=4,
        ),
        steps=200,
        batch_size=64,
        learning_rate=1e-3,
        max_train_samples=None,
        max_eval_samples=1000,
        max_eval_train_samples=6000,
        linear_probe_epochs=30,
        logging_steps=20,
        probe_images=64,
    ),
    # The main job's model and schedule (examples/configs/mixedae_fashion_mnist.json): 6-layer 192-wide encoder,
    # 2-layer 128-wide decoder, 930 steps of 64 images (10 epochs), learning rate 1.5e-3 * 64 / 256, 10% warm-up.
    # About 8 min per run on both cores of an idle 2-core machine: long enough for pre-training to beat the
    # random encoder (README), too long for more than a few arms in a session.
    "main": SizePreset(
        encoder=ViTSize(
            hidden_size=192, num_hidden_layers=6, num_attention_heads=3, intermediate_size=768, patch_size=4,
            image_size=32,
        ),
        mixedae_decoder=dict(
            decoder_hidden_size=128, decoder_num_hidden_layers=2, decoder_num_attention_heads=4,
            decoder_intermediate_size=512,
        ),
        cae_parts=dict(
            decoder_hidden_size=192, regressor_num_layers=2, decoder_num_layers=2, decoder_num_attention_heads=3,
            num_masking_patches=32, mask_min_num_patches=4,
        ),
        steps=930,
        batch_size=64,
        learning_rate=3.75e-4,
        max_train_samples=None,
        max_eval_samples=1000,
        max_eval_train_samples=6000,
        linear_probe_epochs=30,
        logging_steps=31,
        probe_images=64,
        warmup_ratio=0.1,
    ),
}


# ---------------------------------------------------------------------------------------------- arms
@dataclass(frozen=True)
class Arm:
    """One configuration of the grid. MixedAE fields are always written out; `homologous_attention` is
    "all", "none", "last_half" or "last" (the final layer only) of the encoder layers, `topk` "share" (N*r + 1, the
    homologous share plus [CLS]) or "twice_share" (2*N*r + 1).

    The homologous-recognition design fields (`contrastive_target`, `projection_dim`, `topk_anneal_fraction`,
    `selection`) came after the first grid: they are written into `--config_overrides` only when an arm sets them
    away from the config defaults, so the settings (and skipped results) of the earlier arms are unchanged.
    `topk_anneal_fraction` > 0 selects `homologous_topk_schedule="linear"` over that fraction of the run's steps.
    """

    name: str
    label: str
    model_type: str = "mixedae"
    mixing_ratio: float = 0.25
    mask_ratio: float = 0.0
    segment_embedding: str = "encoder"
    homologous_attention: str = "all"
    topk: str = "share"
    contrastive_weight: float = 0.1
    contrastive_temperature: float = 0.1
    contrastive_target: str = "encoder_output"
    projection_dim: int | None = None
    topk_anneal_fraction: float = 0.0
    selection: str = "per_head"
    pretrain: bool = True  # False: evaluate the randomly initialised encoder (0 steps), a floor for the grid


_NO_COMPONENTS = dict(segment_embedding="none", homologous_attention="none", contrastive_weight=0.0)
ARMS = {
    arm.name: arm
    for arm in (
        Arm("random_init", "no pre-training (random encoder, 0 steps)", mixing_ratio=1.0, mask_ratio=0.75,
            pretrain=False, **_NO_COMPONENTS),
        Arm("mae", "MAE (r=1, mask 0.75)", mixing_ratio=1.0, mask_ratio=0.75, **_NO_COMPONENTS),
        Arm("naive_mixing", "naive mixing (r=0.25, nothing else)", **_NO_COMPONENTS),
        Arm("ha_only", "mixing + homologous attention only",
            **{**_NO_COMPONENTS, "homologous_attention": "all"}),
        Arm("hc_only", "mixing + homologous contrastive (0.1) only",
            **{**_NO_COMPONENTS, "contrastive_weight": 0.1}),
        Arm("segment_only", "mixing + segment embedding only",
            **{**_NO_COMPONENTS, "segment_embedding": "encoder"}),
        Arm("full", "full MixedAE (segment, HA all layers, k=N*r+1, HC 0.1)"),
        Arm("full_no_segment", "full, segment embedding none", segment_embedding="none"),
        Arm("full_ha_last_half", "full, HA on the last half of the layers", homologous_attention="last_half"),
        Arm("full_topk_2x", "full, top-k 2*N*r+1", topk="twice_share"),
        Arm("full_hc0.03", "full, HC weight 0.03", contrastive_weight=0.03),
        Arm("full_hc0.3", "full, HC weight 0.3", contrastive_weight=0.3),
        Arm("cae_pixels", "CAE, pixel target (non-official), same encoder", model_type="cae"),
        # Homologous-recognition designs (not in the default grid: pass them with --arms).
        Arm("full_decoder_segment", "full, segment embedding at the decoder", segment_embedding="decoder"),
        Arm("full_projection", "full, HC through a 2-layer projection head (width = encoder/2)", projection_dim=-1),
        Arm("full_topk_anneal", "full, k annealed linearly from all keys over the first half",
            topk_anneal_fraction=0.5),
        Arm("logits_hc", "full, HC on the HA layers' attention logits", contrastive_target="attention_logits"),
        Arm("logits_hc_no_segment", "HC on attention logits, no segment embedding",
            contrastive_target="attention_logits", segment_embedding="none"),
        Arm("logits_hc1_no_segment", "HC 1.0 on attention logits, no segment embedding",
            contrastive_target="attention_logits", segment_embedding="none", contrastive_weight=1.0),
        Arm("logits_hc_decoder_segment", "HC on attention logits, segment embedding at the decoder",
            contrastive_target="attention_logits", segment_embedding="decoder"),
        Arm("qk_hc_no_segment", "HC on query-key cosines of the HA layers, no segment embedding",
            contrastive_target="queries_keys", segment_embedding="none"),
        Arm("logits_hc3_no_segment", "HC 3.0 on attention logits, no segment embedding",
            contrastive_target="attention_logits", segment_embedding="none", contrastive_weight=3.0),
        Arm("logits_hc_no_segment_last_half", "HC on attention logits, no segment embedding, HA on the last half",
            contrastive_target="attention_logits", segment_embedding="none", homologous_attention="last_half"),
        Arm("logits_hc1_no_segment_last_half", "HC 1.0 on attention logits, no segment embedding, HA on the last "
            "half", contrastive_target="attention_logits", segment_embedding="none", contrastive_weight=1.0,
            homologous_attention="last_half"),
        Arm("logits_hc_no_segment_anneal", "HC on attention logits, no segment embedding, k annealed over the "
            "first half", contrastive_target="attention_logits", segment_embedding="none", topk_anneal_fraction=0.5),
        Arm("logits_hc1_no_segment_last", "HC 1.0 on attention logits, no segment embedding, HA on the last layer",
            contrastive_target="attention_logits", segment_embedding="none", contrastive_weight=1.0,
            homologous_attention="last"),
        Arm("logits_hc1_no_segment_head_mean", "HC 1.0 on head-averaged attention logits, no segment embedding, "
            "one kept set per query", contrastive_target="attention_logits", segment_embedding="none",
            contrastive_weight=1.0, selection="head_mean"),
        Arm("logits_hc1_no_segment_last_half_head_mean", "HC 1.0 on head-averaged attention logits, no segment "
            "embedding, one kept set per query, HA on the last half", contrastive_target="attention_logits",
            segment_embedding="none", contrastive_weight=1.0, homologous_attention="last_half", selection="head_mean"),
    )
}
# The documented grid (docs/ablations.md); the homologous-recognition arms run when named with --arms.
DEFAULT_ARMS = (
    "random_init", "mae", "naive_mixing", "ha_only", "hc_only", "segment_only", "full", "full_no_segment",
    "full_ha_last_half", "full_topk_2x", "full_hc0.03", "full_hc0.3", "cae_pixels",
)


def arm_config_overrides(arm: Arm, size: SizePreset, steps: int | None = None) -> dict:
    """The config fields of `arm` at `size` (architecture + objective), as `--config_overrides` takes them;
    `steps` (default: the size's) sets the length of an annealed top-k schedule."""
    if arm.model_type == "cae":
        return {**size.encoder.encoder_kwargs(), **size.cae_parts, "target": "pixels"}
    num_layers = size.encoder.num_hidden_layers
    num_patches = size.encoder.num_patches
    homologous_share = round(num_patches * (1 - arm.mask_ratio) * arm.mixing_ratio)
    layers = {
        "all": None, "none": [], "last_half": list(range(num_layers // 2, num_layers)), "last": [num_layers - 1]
    }[arm.homologous_attention]
    topk = {"share": None, "twice_share": 2 * homologous_share + 1}[arm.topk]
    return {
        **size.encoder.encoder_kwargs(),
        **size.mixedae_decoder,
        "mixing_ratio": arm.mixing_ratio,
        "mask_ratio": arm.mask_ratio,
        "segment_embedding": arm.segment_embedding,
        "homologous_attention_layers": layers,
        "homologous_topk": topk,
        "homologous_contrastive_weight": arm.contrastive_weight,
        "homologous_contrastive_temperature": arm.contrastive_temperature,
        "norm_pix_loss": True,
        **recognition_overrides(arm, size, size.steps if steps is None else steps),
    }


def recognition_overrides(arm: Arm, size: SizePreset, steps: int) -> dict:
    """The homologous-recognition design fields an arm sets away from their defaults (see `Arm`)."""
    overrides = {}
    if arm.contrastive_target != "encoder_output":
        overrides["homologous_contrastive_target"] = arm.contrastive_target
    if arm.projection_dim is not None:
        # -1: half the encoder width, so one arm fits every size.
        overrides["homologous_projection_dim"] = (
            size.encoder.hidden_size // 2 if arm.projection_dim == -1 else arm.projection_dim
        )
    if arm.topk_anneal_fraction > 0:
        overrides["homologous_topk_schedule"] = "linear"
        overrides["homologous_topk_anneal_steps"] = max(1, round(arm.topk_anneal_fraction * steps))
    if arm.selection != "per_head":
        overrides["homologous_selection"] = arm.selection
    return overrides


def format_config_overrides(overrides: dict) -> str:
    """`{"a": 1, "b": [2, 3], "c": "none", "d": None}` -> `a=1,b=[2,3],c="none",d=none` (strings quoted, so
    the string "none" is not read as None by `parse_config_overrides`)."""

    def text(value):
        if value is None:
            return "none"
        if isinstance(value, (list, tuple)):
            return "[" + ",".join(str(item) for item in value) + "]"
        if isinstance(value, str):
            return json.dumps(value)
        return str(value)

    return ",".join(f"{key}={text(value)}" for key, value in overrides.items())


def run_arguments(arm: Arm, size: SizePreset, steps: int, seed: int, output_dir: Path) -> list[str]:
    """The `examples/run_mim.py` command line of one run (everything but the program name)."""
    argv = [
        "--model_type", arm.model_type,
        "--config_overrides", format_config_overrides(arm_config_overrides(arm, size, steps)),
        "--image_size", str(size.image_size),
        "--patch_size", str(size.patch_size),
        "--output_dir", str(output_dir),
        "--seed", str(seed),
        "--max_steps", str(steps if arm.pretrain else 0),
        "--per_device_train_batch_size", str(size.batch_size),
        "--per_device_eval_batch_size", str(size.eval_batch_size),
        "--learning_rate", str(size.learning_rate),
        "--logging_steps", str(size.logging_steps),
        "--max_eval_samples", str(size.max_eval_samples),
        "--max_eval_train_samples", str(size.max_eval_train_samples),
        "--linear_probe_epochs", str(size.linear_probe_epochs),
        "--save_visualizations", "False",
    ]
    if size.max_train_samples is not None:
        argv += ["--max_train_samples", str(size.max_train_samples)]
    if size.warmup_ratio:
        argv += ["--warmup_ratio", str(size.warmup_ratio)]
    return argv


def _without_output_dir(argv: list[str]) -> list[str]:
    index = argv.index("--output_dir")
    return argv[:index] + argv[index + 2 :]


# ---------------------------------------------------------------------------------------------- top-k probe
class TopkProbe(TrainingCallback):
    """Measures MixedAE's `homologous_topk_accuracy` (all and foreground queries, `evaluation.homologous_probe`)
    on a fixed batch whenever the training loop logs its loss
    (`on_log`), and once before the first optimizer step (step 0).

    The measurement runs without gradient, in eval mode (restored after), with fixed mixing noise and on a forked
    RNG, so the run trains exactly as it would without the probe. Models without mixing or without homologous
    layers are not probed. The step-0 measurement is taken when the loop begins (`on_train_begin`).
    """

    def __init__(self, probe_pixel_values: torch.Tensor, probe_seed: int, curve: list[dict] | None = None):
        self.probe_pixel_values = probe_pixel_values
        self.probe_seed = probe_seed
        self.curve: list[dict] = list(curve or [])  # a resumed run's curve up to its checkpoint

    def on_log(self, state: LoopState, logs: dict[str, float]) -> None:
        if "train/loss" in logs:
            self.measure(state.accelerator.unwrap_model(state.model), state.progress.completed_steps, logs)

    def on_train_begin(self, state: LoopState) -> None:
        # A resumed run repeats the steps after its checkpoint: their points are measured again.
        self.curve = [point for point in self.curve if point["step"] <= state.progress.completed_steps]
        if state.progress.completed_steps == 0:
            self.measure(state.accelerator.unwrap_model(state.model), step=0, logs={})

    def measure(self, model: torch.nn.Module, step: int, logs: dict) -> None:
        if not can_probe(model):
            return
        probe = homologous_probe(model, self.probe_pixel_values, seed=self.probe_seed)
        point = {
            "step": int(step),
            "homologous_topk_accuracy": probe["homologous_topk_accuracy"],
            "homologous_topk_accuracy_foreground": probe["homologous_topk_accuracy_foreground"],
            "homologous_topk_accuracy_other_keys": probe["homologous_topk_accuracy_other_keys"],
            "homologous_topk_accuracy_other_keys_foreground": probe["homologous_topk_accuracy_other_keys_foreground"],
            "homologous_own_key_kept": probe["homologous_own_key_kept"],
        }
        if not math.isnan(probe["homologous_contrastive_loss"]):
            point["homologous_contrastive_loss"] = probe["homologous_contrastive_loss"]
        point["reconstruction_loss"] = probe["reconstruction_loss"]
        if "train/loss" in logs:
            point["train_loss"] = float(logs["train/loss"])
        self.curve.append(point)


def probe_batch(size: SizePreset) -> torch.Tensor:
    """The first `probe_images` validation images of the default dataset, evaluation transform."""
    return validation_batch(size.probe_images, size.image_size)[0]


# ---------------------------------------------------------------------------------------------- one run
class RunInterrupted(Exception):
    """`run_pretraining` stopped on SIGTERM (after writing a checkpoint): the run has no result, stop the grid."""


class ProgressKeeper(TrainingCallback):
    """With each checkpoint, writes `ablate_progress.json` in the run folder: the run's settings, the step, the top-k
    curve so far and the seconds spent, so that a stopped grid resumes the run where its checkpoint is
    (`interrupted_progress`) and its record is that of an uninterrupted run."""

    def __init__(self, run_dir: Path, settings: list[str], probe: TopkProbe, earlier: dict | None):
        self.run_dir, self.settings, self.probe = run_dir, settings, probe
        self.earlier_seconds = earlier["wall_seconds"] if earlier else 0.0
        self.resumed_from_steps = (earlier["resumed_from_steps"] + [earlier["step"]]) if earlier else []
        self.started = time.perf_counter()

    def wall_seconds(self) -> float:
        return self.earlier_seconds + time.perf_counter() - self.started

    def on_save(self, state: LoopState, checkpoint: Path) -> None:
        if state.accelerator.is_main_process:
            write_json_atomically(self.run_dir / PROGRESS_FILENAME, {
                "settings": self.settings, "step": state.progress.completed_steps, "topk_curve": self.probe.curve,
                "wall_seconds": self.wall_seconds(), "resumed_from_steps": self.resumed_from_steps,
            })


def interrupted_progress(run_dir: Path, settings: list[str]) -> dict | None:
    """What `ProgressKeeper` wrote for a run of `run_dir` that stopped after a checkpoint and can be resumed, or None
    (no such run: a folder without a checkpoint is started again). Other settings are an error, as for a finished
    run."""
    path = run_dir / PROGRESS_FILENAME
    if not (path.exists() and is_resumable(run_dir)):
        return None
    progress = json.loads(path.read_text())
    if progress["settings"] != settings:
        raise SystemExit(
            f"{run_dir} holds an interrupted run with other settings:\n  {progress['settings']}\nnot\n  {settings}\n"
            "Use another --output_dir (or delete that run folder) to run this grid."
        )
    checkpoint = resolve_checkpoint("latest", run_dir)
    resumed_step = int(checkpoint.name.removeprefix("step_")) if checkpoint is not None else 0
    if resumed_step > progress["step"]:  # killed between writing a checkpoint and this record of it
        print(f"{run_dir}: resuming step {resumed_step}, but its top-k curve was kept at step {progress['step']}: the "
              "curve lacks the points in between.", flush=True)
    return progress


def _final_foreground_accuracy(curve: list[dict]) -> float | None:
    return curve[-1].get("homologous_topk_accuracy_foreground") if curve else None


RUN_METRICS = ("eval_knn_accuracy", "eval_linear_probe_accuracy", "eval_loss", "train_loss")


def run_one(arm: Arm, size: SizePreset, steps: int, seed: int, run_dir: Path, probe_pixels: torch.Tensor,
            earlier: dict | None = None) -> dict:
    """Pre-trains one arm/seed in `run_dir` and returns its record; with `earlier` (`interrupted_progress`), resumes
    the interrupted run from its latest checkpoint."""
    argv = run_arguments(arm, size, steps, seed, run_dir)
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments, PretrainingEvaluationArguments))
    model_args, data_args, training_args, evaluation_args = parser.parse_args_into_dataclasses(
        args=argv + (RESUME_ARGUMENTS if earlier else []))
    probe = TopkProbe(probe_pixels, probe_seed=seed, curve=earlier["topk_curve"] if earlier else None)
    keeper = ProgressKeeper(run_dir, _without_output_dir(argv), probe, earlier)
    results = run_pretraining(model_args, data_args, training_args, evaluation_args, callbacks=[probe, keeper])
    wall_seconds = keeper.wall_seconds()
    if results.get("stopped_by_signal"):
        raise RunInterrupted(f"{arm.name} seed {seed} was stopped by SIGTERM at step {results.get('train_steps')}")
    curve = probe.curve
    return {
        "arm": arm.name,
        "label": arm.label,
        "seed": seed,
        "model_type": arm.model_type,
        "steps": int(results.get("train_steps", steps)),
        "images_seen": int(results.get("train_steps", steps)) * size.batch_size,
        "wall_seconds": wall_seconds,
        "resumed_from_steps": keeper.resumed_from_steps,
        "train_samples_per_second": results.get("train_samples_per_second"),
        "final_homologous_topk_accuracy": curve[-1]["homologous_topk_accuracy"] if curve else None,
        "final_homologous_topk_accuracy_foreground": _final_foreground_accuracy(curve),
        **{key: results.get(key) for key in RUN_METRICS},
        "topk_curve": curve,
        "command": "python examples/run_mim.py " + " ".join(shlex.quote(part) for part in argv),
        "settings": _without_output_dir(argv),
        "torch_threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------------------------------------- dense transfer
SEGMENTATION_FOLDER = "segmentation"
SEGMENTATION_METRICS = ("eval_mean_iou", "eval_mean_accuracy", "eval_overall_accuracy")


def segmentation_arguments(config: Path, run_dir: Path, seed: int) -> list[str]:
    """The `examples/run_semantic_segmentation.py` command line fine-tuning the model of `run_dir`."""
    return [str(config), "--model_name_or_path", str(run_dir),
            "--output_dir", str(run_dir / SEGMENTATION_FOLDER / f"seed_{seed}"), "--seed", str(seed)]


def segment(record: dict, run_dir: Path, config: Path, seeds: int) -> bool:
    """Fine-tunes UperNet from the pre-trained model of `run_dir` on the dense data of `config` with seeds
    0 .. `seeds`-1 (those without a result in `record`), and stores each seed's metrics and their mean
    (`eval_mean_iou`, ...) in `record`. The spread over these seeds is the fine-tuning's, not the pre-training's.
    Returns whether a run was added."""
    settings = Path(config).read_text()  # the recipe is the config's content (the rest is run_dir and seed)
    results = record.get("segmentation") or {}
    folders = {seed: run_dir / SEGMENTATION_FOLDER / f"seed_{seed}" for seed in range(seeds)}
    recorded = record.get("segmentation_settings")
    # A stopped fine-tune resumes only under recorded settings (a grid of an older version recorded none: start afresh).
    resumable = {seed for seed, folder in folders.items()
                 if str(seed) not in results and recorded is not None and is_resumable(folder)}
    if (results or resumable) and recorded != settings:
        raise SystemExit(f"{run_dir} was segmented with other settings ({record.get('segmentation_settings')}); "
                         f"use another --output_dir or delete its segmentation results (and {SEGMENTATION_FOLDER}/).")
    if recorded != settings:  # recorded before any fine-tune, so that an interrupted one is resumed
        record["segmentation_settings"] = settings
        save_record(run_dir, record)
    results, added = dict(results), False
    for seed, output_dir in folders.items():
        if str(seed) in results:
            continue
        if output_dir.exists() and seed not in resumable:  # killed before its first checkpoint: start it again
            shutil.rmtree(output_dir)
        argv = segmentation_arguments(config, run_dir, seed)
        start = time.perf_counter()
        metrics = run_semantic_segmentation(
            *parse_segmentation_arguments(argv + (RESUME_ARGUMENTS if seed in resumable else [])))
        if metrics.get("stopped_by_signal"):
            raise RunInterrupted(f"segmentation of {run_dir} seed {seed} was stopped by SIGTERM")
        results[str(seed)] = {
            **{key: metrics.get(key) for key in SEGMENTATION_METRICS},
            "wall_seconds": time.perf_counter() - start,  # of this process: a resumed fine-tune's time since it resumed
            "resumed": seed in resumable,
            "command": "python examples/run_semantic_segmentation.py " + " ".join(shlex.quote(part) for part in argv),
        }
        added = True
        _store_segmentation(record, results, settings, seeds)
        save_record(run_dir, record)  # each finished fine-tune is kept, so a stopped grid loses at most one
    _store_segmentation(record, results, settings, seeds)
    return added


def _store_segmentation(record: dict, results: dict, settings: str, seeds: int) -> None:
    record["segmentation"], record["segmentation_settings"] = results, settings
    for key in SEGMENTATION_METRICS:
        record[key], _ = mean_std([results[str(seed)][key] for seed in range(seeds) if str(seed) in results])


DENSE_PROBE_METRICS = ("mean_iou", "mean_accuracy", "overall_accuracy")


def dense_probe_runs(records: list[dict], output_dir: Path) -> int:
    """Adds the frozen dense linear probe (`evaluation.dense_probe`, bundled dense benchmark at 64 px) to every
    record without it and saves the record; the scenes are decoded once. Returns the number probed."""
    pending = [record for record in records if record.get("dense_probe_mean_iou") is None]
    if not pending:
        return 0
    data = dense_benchmark_tensors()
    transformers.logging.set_verbosity_error()  # each backbone leaves the decoder's weights unused, as expected
    for record in pending:
        run_dir = output_dir / "runs" / record["arm"] / f"seed_{record['seed']}"
        start = time.perf_counter()
        result = run_dense_probe(str(run_dir), data=data)
        for key in DENSE_PROBE_METRICS:
            record[f"dense_probe_{key}"] = result[key]
        record["dense_probe_seconds"] = time.perf_counter() - start
        save_record(run_dir, record)
        print(f"{record['arm']} seed {record['seed']}: dense linear probe mIoU {100 * result['mean_iou']:.1f} %",
              flush=True)
    return len(pending)


def save_record(run_dir: Path, record: dict) -> None:
    write_json_atomically(run_dir / RESULT_FILENAME, record)


# ---------------------------------------------------------------------------------------------- tables
SUMMARY_METRICS = (
    "eval_knn_accuracy",
    "eval_linear_probe_accuracy",
    "eval_mean_iou",
    "dense_probe_mean_iou",
    "eval_loss",
    "train_loss",
    "final_homologous_topk_accuracy",
    "final_homologous_topk_accuracy_foreground",
    "wall_seconds",
)
RUN_COLUMNS = ("arm", "seed", "model_type", "steps", "images_seen", *SUMMARY_METRICS, "train_samples_per_second")
SUMMARY_COLUMNS = ("arm", "label", "num_seeds") + tuple(
    f"{metric}_{stat}" for metric in SUMMARY_METRICS for stat in ("mean", "std")
)
MARKDOWN_COLUMNS = (
    "arm", "what it is", "seeds", "kNN top-1 (%)", "linear probe top-1 (%)", "LP vs MAE (pts)",
    "dense mIoU (%)", "dense linear mIoU (%)", "eval loss", "top-k acc. (final)", "top-k acc. foreground (final)",
    "min / run",
)


def measured(values: list[float | None]) -> list[float]:
    """The values that were measured: neither missing (None) nor NaN."""
    return [value for value in values if value is not None and not math.isnan(value)]


def mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    values = measured(values)
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def summarize(records: list[dict], arm_order: list[str]) -> list[dict]:
    """Per arm (in `arm_order`): number of seeds, mean and sample std of every summary metric."""
    rows = []
    for name in arm_order:
        runs = [record for record in records if record["arm"] == name]
        if not runs:
            continue
        row = {"arm": name, "label": runs[0]["label"], "num_seeds": len(runs)}
        for metric in SUMMARY_METRICS:
            values = [run.get(metric) for run in runs]
            row[f"{metric}_mean"], row[f"{metric}_std"] = mean_std(values)
            # Runs without the metric (not measured, or NaN) are left out of its mean: the tables say how many count.
            row[f"{metric}_count"] = len(measured(values))
        rows.append(row)
    return rows


def _cell(mean: float | None, std: float | None, scale: float = 1.0, digits: int = 1) -> str:
    if mean is None:
        return "n/a"
    if std is None:
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def _metric_cell(row: dict, metric: str, scale: float = 1.0, digits: int = 1) -> str:
    """Mean ± std of `metric` over the arm's runs, with "(n of m runs)" when some runs lack it."""
    text = _cell(row[f"{metric}_mean"], row[f"{metric}_std"], scale, digits)
    count = row[f"{metric}_count"]
    return text if count in (0, row["num_seeds"]) else f"{text} ({count} of {row['num_seeds']} runs)"


def markdown_table(summary: list[dict]) -> str:
    reference = next((row for row in summary if row["arm"] == "mae"), None)
    lines = ["| " + " | ".join(MARKDOWN_COLUMNS) + " |", "|" + "---|" * len(MARKDOWN_COLUMNS)]
    for row in summary:
        delta = "n/a"
        reference_mean = reference["eval_linear_probe_accuracy_mean"] if reference is not None else None
        if reference_mean is not None and row["eval_linear_probe_accuracy_mean"] is not None:
            delta = f"{100 * (row['eval_linear_probe_accuracy_mean'] - reference_mean):+.1f}"
        minutes = row["wall_seconds_mean"] / 60 if row["wall_seconds_mean"] is not None else None
        cells = [
            f"`{row['arm']}`",
            row["label"],
            str(row["num_seeds"]),
            _metric_cell(row, "eval_knn_accuracy", 100),
            _metric_cell(row, "eval_linear_probe_accuracy", 100),
            delta,
            _metric_cell(row, "eval_mean_iou", 100),
            _metric_cell(row, "dense_probe_mean_iou", 100),
            _metric_cell(row, "eval_loss", digits=3),
            _metric_cell(row, "final_homologous_topk_accuracy", digits=3),
            _metric_cell(row, "final_homologous_topk_accuracy_foreground", digits=3),
            f"{minutes:.1f}" if minutes is not None else "n/a",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: ("" if row.get(key) is None else row.get(key)) for key in columns})
    os.replace(temporary, path)


def write_reports(records: list[dict], arm_order: list[str], output_dir: Path, plot_dir: Path,
                  size_name: str, size: SizePreset, steps: int, plots: bool = True) -> list[dict]:
    """runs.csv, summary.csv, summary.md in `output_dir`; with `plots`, the two PNGs in `plot_dir`. Returns the
    summary."""
    records = sorted(records, key=lambda record: (arm_order.index(record["arm"]), record["seed"]))
    summary = summarize(records, arm_order)
    _write_csv(output_dir / "runs.csv", RUN_COLUMNS, records)
    _write_csv(output_dir / "summary.csv", SUMMARY_COLUMNS, summary)
    header = (
        f"Size `{size_name}`: {size.image_size} px, patch {size.patch_size}, encoder "
        f"{size.encoder.hidden_size} wide x {size.encoder.num_hidden_layers} layers; {steps} steps x batch "
        f"{size.batch_size} = {steps * size.batch_size} images per run; mean ± sample std over seeds.\n\n"
    )
    (output_dir / "summary.md").write_text(header + markdown_table(summary))
    if records and plots:
        plot_dir.mkdir(parents=True, exist_ok=True)
        plot_accuracy(summary, records, plot_dir / ACCURACY_PLOT, size_name, steps, size.batch_size)
        plot_topk_curves(records, arm_order, plot_dir / TOPK_CURVE_PLOT, size)
    return summary


# ---------------------------------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(summary: list[dict], records: list[dict], path: Path, size_name: str, steps: int,
                  batch_size: int) -> None:
    """kNN and linear-probe accuracy per arm: mean with sample-std error bars, every seed as a dot."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(max(6.0, 0.75 * len(summary) + 2), 4.5))
    positions = range(len(summary))
    series = (("eval_knn_accuracy", "kNN (k=20)", -0.15, "tab:blue"),
              ("eval_linear_probe_accuracy", "linear probe", 0.15, "tab:orange"))
    for metric, name, offset, colour in series:
        means = [100 * (row[f"{metric}_mean"] if row[f"{metric}_mean"] is not None else float("nan"))
                 for row in summary]
        errors = [100 * (row[f"{metric}_std"] or 0.0) for row in summary]
        xs = [position + offset for position in positions]
        axis.errorbar(xs, means, yerr=errors, fmt="o", capsize=4, color=colour, label=f"{name}, mean ± std")
        for position, row in zip(positions, summary):
            seeds = [100 * run[metric] for run in records if run["arm"] == row["arm"] and run.get(metric) is not None]
            axis.scatter([position + offset] * len(seeds), seeds, s=10, color=colour, alpha=0.35)
        reference = next((row for row in summary if row["arm"] == "mae"), None)
        if reference is not None and reference[f"{metric}_mean"] is not None:
            axis.axhline(100 * reference[f"{metric}_mean"], color=colour, linestyle=":", linewidth=1)
    axis.set_xticks(list(positions))
    axis.set_xticklabels([row["arm"] for row in summary], rotation=35, ha="right")
    axis.set_ylabel("Fashion-MNIST validation top-1 (%)")
    seeds = max((row["num_seeds"] for row in summary), default=0)
    # Two lines: with few arms the axis is narrower than a one-line title, which tight_layout then clips.
    axis.set_title(f"Ablation grid, size {size_name}: {steps} steps x {batch_size} images,\nup to {seeds} seeds "
                   "per arm (dotted: MAE's means)", fontsize=10)
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_topk_curves(records: list[dict], arm_order: list[str], path: Path, size: SizePreset) -> None:
    """Two panels over training, on the fixed probe batch, for every arm with homologous attention (the full model
    bold, mean ± std band over seeds): the homologous top-k accuracy (chance: r, the share of the kept keys that
    come from the query's own image) and the homologous contrastive loss (chance: log(L - 1) for L kept tokens,
    the value when all similarities are equal)."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(12.0, 4.5))
    panels = (("homologous_topk_accuracy", "homologous top-k accuracy"),
              ("homologous_contrastive_loss", "homologous contrastive loss"))
    chances: dict[str, set] = {metric: set() for metric, _ in panels}
    # tab10 repeats its colours after ten arms, and a screen of every design has more.
    colours = plt.get_cmap("tab20" if len(arm_order) > 10 else "tab10").colors
    plotted = False
    for index, name in enumerate(arm_order):
        curves = [record["topk_curve"] for record in records if record["arm"] == name and record.get("topk_curve")]
        if not curves:
            continue
        plotted = True
        arm = ARMS[name]
        num_kept = round((size.image_size // size.patch_size) ** 2 * (1 - arm.mask_ratio))
        chances["homologous_topk_accuracy"].add(arm.mixing_ratio)
        chances["homologous_contrastive_loss"].add(math.log(num_kept - 1))
        steps = sorted({point["step"] for curve in curves for point in curve})
        is_full = name == "full"
        for axis, (metric, _) in zip(axes, panels):
            stats = [mean_std([point[metric] for curve in curves for point in curve
                               if point["step"] == step and metric in point]) for step in steps]
            means = [mean for mean, _ in stats]
            stds = [std or 0.0 for _, std in stats]
            line = axis.plot(steps, means, marker="o" if is_full else None, linewidth=2.5 if is_full else 1.0,
                             color=colours[index % len(colours)], label=f"{name} (n={len(curves)})",
                             zorder=3 if is_full else 2)[0]
            if is_full:
                axis.fill_between(steps, [m - d for m, d in zip(means, stds)], [m + d for m, d in zip(means, stds)],
                                  color=line.get_color(), alpha=0.2)
    for axis, (metric, title) in zip(axes, panels):
        for chance in sorted(chances[metric]):
            axis.axhline(chance, color="grey", linestyle="--", linewidth=1, label=f"chance ({chance:.3g})")
        axis.set_xlabel("optimizer step")
        axis.set_ylabel(title)
        axis.grid(alpha=0.3)
    axes[0].set_title("Kept patch keys from the query's own image", fontsize=10)
    axes[1].set_title("Homologous contrastive term\n(final-layer tokens; HA logits for logits_* / qk_* arms)",
                      fontsize=10)
    if not plotted:
        axes[0].text(0.5, 0.5, "no arm with homologous attention", ha="center", transform=axes[0].transAxes)
    figure.suptitle("Homologous recognition on a fixed validation batch during pre-training", fontsize=11)
    legend_rows = 0
    if plotted:  # one legend for both panels, below them, so that no curve is hidden behind it
        entries = {}
        for axis in axes:
            for handle, label in zip(*axis.get_legend_handles_labels()):
                entries.setdefault(label, handle)
        columns = 3
        legend_rows = -(-len(entries) // columns)
        figure.legend(list(entries.values()), list(entries), loc="lower center", ncol=columns, fontsize=8)
    legend_height = 0.22 * legend_rows  # inches below the panels
    figure.set_size_inches(12.0, 4.5 + legend_height)
    figure.tight_layout(rect=(0, legend_height / (4.5 + legend_height), 1, 1))
    figure.savefig(path, dpi=120)
    plt.close(figure)


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--arms",
        default=",".join(DEFAULT_ARMS),
        help=f"Comma list of arms (default: the documented grid, {', '.join(DEFAULT_ARMS)}); homologous-recognition "
        f"designs: {', '.join(name for name in ARMS if name not in DEFAULT_ARMS)}.",
    )
    parser.add_argument("--seeds", type=int, default=3, help="Seeds per arm: 0 .. N-1 (default 3).")
    parser.add_argument("--steps", type=int, default=None, help="Pre-training steps per run (default: the size's).")
    parser.add_argument("--size", choices=sorted(SIZES), default="doc",
                        help="Preset: tiny (CI), doc (the 2-epoch grid of the docs) or main (the main job's model and "
                        "10-epoch schedule).")
    parser.add_argument("--segmentation_config", default=None,
                        help="A run_semantic_segmentation.py JSON config (e.g. examples/configs/"
                        "segment_fashion_mnist_dense.json): every run's model is then fine-tuned for semantic "
                        "segmentation and the grid reports mIoU.")
    parser.add_argument("--segmentation_seeds", type=int, default=1,
                        help="Segmentation fine-tunes per pre-trained model, seeds 0 .. N-1 (default 1).")
    parser.add_argument("--output_dir", default=None, help="Runs and tables (default outputs/ablations/<size>).")
    parser.add_argument("--plot_dir", default=None, help="Where the PNGs go (default: the output dir).")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's).")
    parser.add_argument("--jobs", type=int, default=1,
                        help="Worker processes, each single-threaded with its share of the runs (default 1: this "
                        "process, torch's thread count). On a small CPU, --jobs <cores> avoids thread contention.")
    parser.add_argument("--shard", default=None, help=argparse.SUPPRESS)  # "k/n": a worker of --jobs n
    parser.add_argument("--dense_probe", action="store_true",
                        help="Also score every finished run with the frozen dense linear probe on the bundled dense "
                        "benchmark (evaluation.dense_probe, a few CPU minutes per run; runs that have it are skipped).")
    parser.add_argument("--report_only", action="store_true",
                        help="Only rebuild tables and plots from results (with --dense_probe, probe the runs that lack "
                        "it first).")
    args = parser.parse_args(argv)
    unknown = [name for name in args.arms.split(",") if name and name not in ARMS]
    if unknown:
        parser.error(f"unknown arms {unknown}; choose from {list(ARMS)}")
    if args.seeds < 1 or args.jobs < 1 or args.segmentation_seeds < 1:
        parser.error("--seeds, --jobs and --segmentation_seeds must be at least 1")
    if args.segmentation_config is not None and not os.path.isfile(args.segmentation_config):
        parser.error(f"--segmentation_config {args.segmentation_config}: no such file")
    return args


def load_result(run_dir: Path, settings: list[str]) -> dict | None:
    """The finished result of `run_dir`, or None when it has not finished. A finished run with other settings
    is an error (the same output_dir must not mix grids)."""
    path = run_dir / RESULT_FILENAME
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    # Results recorded before the grid switched to `--max_steps` name its deprecated alias; same setting.
    recorded = ["--max_steps" if item == "--max_train_steps" else item for item in record.get("settings") or []]
    if recorded != settings:
        raise SystemExit(
            f"{path} was produced with other settings:\n  {record.get('settings')}\nnot\n  {settings}\n"
            "Use another --output_dir (or delete that run folder) to run this grid."
        )
    # Records written before the foreground accuracy had its own field carry it in their curve.
    record.setdefault("final_homologous_topk_accuracy_foreground", _final_foreground_accuracy(record.get("topk_curve")))
    return record


def train_runs(plan: list[tuple[int, Arm]], size: SizePreset, steps: int, output_dir: Path,
               report: callable | None, segmentation: tuple[Path, int] | None = None) -> tuple[int, list]:
    """Train every run of `plan` that has no result yet; `report(records, plots=False)` (the tables) after each
    one. With `segmentation` (config, seeds), every run's model is also fine-tuned for segmentation (`segment`).
    Returns (number trained, failed (arm, seed) pairs)."""
    records, failures, trained = [], [], 0
    probe_pixels = None
    start = time.perf_counter()
    for index, (seed, arm) in enumerate(plan, start=1):
        run_dir = output_dir / "runs" / arm.name / f"seed_{seed}"
        settings = _without_output_dir(run_arguments(arm, size, steps, seed, run_dir))
        record = load_result(run_dir, settings)
        if record is not None:
            try:
                if segmentation is not None and segment(record, run_dir, *segmentation):
                    save_record(run_dir, record)
                    trained += 1
            except RunInterrupted as interrupted:
                print(f"{arm.name} seed {seed}: {interrupted}; the same command continues the grid.", flush=True)
                raise SystemExit(1) from interrupted
            except Exception:  # as for a new run: the pre-training record stays, the rest of the grid goes on
                failures.append((arm.name, seed))
                print(f"{arm.name} seed {seed}: segmentation FAILED:\n{traceback.format_exc()}", flush=True)
            records.append(record)
            continue
        earlier = interrupted_progress(run_dir, settings)
        if run_dir.exists() and earlier is None:  # killed before its first checkpoint: start it again
            shutil.rmtree(run_dir)
        if probe_pixels is None:
            probe_pixels = probe_batch(size)
        tag = f"[{index}/{len(plan)}] {arm.name} seed {seed}"
        resuming = f" (resuming at step {earlier['step']})" if earlier else ""
        print(f"{tag}: training {steps if arm.pretrain else 0} steps{resuming} ...", flush=True)
        try:
            record = run_one(arm, size, steps, seed, run_dir, probe_pixels, earlier)
            save_record(run_dir, record)
            if segmentation is not None:
                segment(record, run_dir, *segmentation)
        except RunInterrupted as interrupted:
            print(f"{tag}: {interrupted}; the same command continues the grid.", flush=True)
            raise SystemExit(1) from interrupted
        except Exception:  # one failing arm must not lose the rest of a long grid
            failures.append((arm.name, seed))
            print(f"{tag} FAILED:\n{traceback.format_exc()}", flush=True)
            continue
        save_record(run_dir, record)
        records.append(record)
        trained += 1
        topk = record["final_homologous_topk_accuracy"]
        print(
            f"{tag}: {record['wall_seconds']:.0f} s, kNN {100 * record['eval_knn_accuracy']:.1f}%, linear probe "
            f"{100 * record['eval_linear_probe_accuracy']:.1f}%" + (f", top-k acc {topk:.3f}" if topk is not None else "")
            + (f", dense mIoU {100 * record['eval_mean_iou']:.1f}%" if record.get("eval_mean_iou") is not None else "")
            + f" ({(time.perf_counter() - start) / 60:.1f} min so far)",
            flush=True,
        )
        if report is not None:
            report(records, plots=False)
    return trained, failures


def run_workers(args: argparse.Namespace, output_dir: Path) -> list[int]:
    """`--jobs n`: n copies of this script, single-threaded, worker k training runs k, k + n, ... of the plan."""
    common = ["--arms", args.arms, "--seeds", str(args.seeds), "--size", args.size, "--output_dir", str(output_dir),
              "--threads", "1"]
    if args.steps is not None:
        common += ["--steps", str(args.steps)]
    if args.segmentation_config is not None:
        common += ["--segmentation_config", args.segmentation_config,
                   "--segmentation_seeds", str(args.segmentation_seeds)]
    workers = [
        subprocess.Popen([sys.executable, os.path.abspath(__file__), *common, "--shard", f"{k}/{args.jobs}"])
        for k in range(args.jobs)
    ]

    def forward_sigterm(signum, frame):  # stop the workers too; what finished is reported below
        for worker in workers:
            worker.send_signal(signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, forward_sigterm)
    try:
        codes = [worker.wait() for worker in workers]
    finally:
        signal.signal(signal.SIGTERM, previous)
    if any(codes):
        print(f"worker exit codes {codes}: some runs failed (see above); reporting what finished.", flush=True)
    return codes


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = SIZES[args.size]
    steps = args.steps if args.steps is not None else size.steps
    output_dir = Path(args.output_dir or f"outputs/ablations/{args.size}")
    plot_dir = Path(args.plot_dir) if args.plot_dir else output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    arm_names = [name for name in args.arms.split(",") if name]
    # Seeds outer, arms inner: a grid stopped early has every arm at the same number of seeds (or one fewer).
    plan = [(seed, ARMS[name]) for seed in range(args.seeds) for name in arm_names]
    segmentation = None
    if args.segmentation_config is not None:
        segmentation = (Path(args.segmentation_config), args.segmentation_seeds)

    def report(records: list[dict], plots: bool = True) -> list[dict]:
        return write_reports(records, arm_names, output_dir, plot_dir, args.size, size, steps, plots=plots)

    trained, failures = 0, []
    if args.shard is not None:  # a worker: train its share, leave the reports to the parent
        index, count = (int(part) for part in args.shard.split("/"))
        trained, failures = train_runs(plan[index::count], size, steps, output_dir, report=None,
                                       segmentation=segmentation)
        if failures:
            raise SystemExit(f"failed runs: {failures}")
        return {"trained": trained}
    if not args.report_only:
        if args.jobs > 1:
            failures += [f"worker {index} exited with {code}"
                         for index, code in enumerate(run_workers(args, output_dir)) if code]
        else:
            trained, failures = train_runs(plan, size, steps, output_dir, report=report, segmentation=segmentation)

    records = []
    for seed, arm in plan:
        run_dir = output_dir / "runs" / arm.name / f"seed_{seed}"
        record = load_result(run_dir, _without_output_dir(run_arguments(arm, size, steps, seed, run_dir)))
        if record is not None:
            records.append(record)
    if args.dense_probe:
        dense_probe_runs(records, output_dir)
    summary = report(records)
    print((output_dir / "summary.md").read_text(), flush=True)
    print(f"{len(records)} of {len(plan)} runs have results ({trained} trained by this process); "
          f"tables in {output_dir}, plots in {plot_dir}", flush=True)
    if failures:
        raise SystemExit(f"failed runs: {failures}")
    return {"records": records, "summary": summary, "output_dir": str(output_dir), "trained": trained}


if __name__ == "__main__":
    main()
