# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Command-line arguments of `examples/run_semantic_segmentation.py`: the shared model, data and training arguments
(`training.arguments`) composed with `SegmentationArguments`, the fields only semantic segmentation has (labels,
the paired augmentation, the UperNet head, the backbone's stages, evaluation mode). Each field is checked when the
arguments are made, with an error naming the flag, the value and the fix."""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.segmentation_transforms import CROP_PADDINGS
from ..training.arguments import (
    DataArguments,
    ModelArguments,
    TrainingArguments,
    _check_optional,
    _finite,
    _positive_int,
    check_argument,
    parse_run_arguments,
)

EVAL_MODES = ("whole", "slide")
# The label-map column when --label_column_name keeps the shared default ("label", a class-id column): the name
# ADE20K on the Hub (scene_parse_150) and the bundled dense benchmark use.
DEFAULT_LABEL_MAP_COLUMN = "annotation"
SHARED_LABEL_COLUMN_DEFAULT = "label"


@dataclass
class SegmentationArguments:
    """What only semantic segmentation has. Defaults follow the MAE / CAE UperNet recipe on ADE20K."""

    data_dir: str | None = field(
        default=None,
        metadata={"help": "A folder in the ADEChallengeData2016 layout (images/training, annotations/training, "
                          "images/validation, annotations/validation; annotations are PNGs of class ids with the "
                          "image's stem). Without it and --dataset_name: the bundled dense benchmark."},
    )
    num_labels: int | None = field(
        default=None,
        metadata={"help": "Number of classes (after --reduce_labels; ADE20K: 150). Default: the size of --id2label "
                          "or of the dataset's class names."},
    )
    id2label: str | None = field(
        default=None,
        metadata={"help": "Class names: a JSON file or JSON text mapping class id to name, e.g. '{\"0\": \"wall\"}', "
                          "or a list of names; in a JSON config also the object or list itself."},
    )
    reduce_labels: bool = field(
        default=False,
        metadata={"help": "ADE20K's convention: label 0 ('other') becomes ignored (255) and every other label shifts "
                          "down by one."},
    )
    crop_size: int = field(default=512, metadata={"help": "Training crop side in pixels (MAE/CAE on ADE20K: 512)."})
    rescale_size: int | None = field(
        default=None,
        metadata={"help": "Short side images are rescaled to (long side at most 4x), before the random 0.5-2 ratio "
                          "in training and as is for evaluation and the saved image processor: mmseg's img_scale "
                          "(2048, 512) on ADE20K. Default: --crop_size. Larger than the crop, training crops see "
                          "part of each image at the evaluation scale."},
    )
    photometric_distortion: bool = field(
        default=True, metadata={"help": "mmseg's photometric distortion of training images (brightness, contrast, "
                                        "saturation, hue)."},
    )
    crop_padding: str = field(
        default="mean",
        metadata={"help": f"One of {CROP_PADDINGS}: how a training crop larger than its rescaled image is filled "
                          "(its labels are ignored either way): the mean colour, 0 once normalised (mmseg), or black "
                          "(uint8 0, this package's padding until 2026-12-01). Evaluation pads to the patch size "
                          "with the mean colour either way."},
    )
    cat_max_ratio: float = field(
        default=0.75, metadata={"help": "Redraw a training crop (up to 10 times) while one class covers this much of "
                                        "it; 1 turns it off."},
    )
    eval_mode: str = field(
        default="whole", metadata={"help": f"One of {EVAL_MODES}: the whole rescaled image at once, or sliding "
                                           "crop_size windows (--eval_stride apart) whose logits are averaged."},
    )
    eval_stride: int | None = field(
        default=None, metadata={"help": "Sliding-window stride of --eval_mode slide (default 2/3 of --crop_size, "
                                        "mmseg's 341 for 512)."},
    )
    out_indices: list[int] | None = field(
        default=None,
        metadata={"help": "Backbone stages fed to the head: 0 is the patch embedding, i the output of block i (the "
                          "papers' 0-based block indices 3 5 7 11 of ViT-B are 4 6 8 12 here). Default: 4 stages at "
                          "1/3, 1/2, 2/3 and all of the depth."},
    )
    multi_scale_neck: bool = field(
        default=True, metadata={"help": "Turn the 4 stages into strides 4, 8, 16 and 32 (deconvolutions, identity, "
                                        "max-pool), as BEiT/MAE/CAE do for UperNet."},
    )
    layer_decay: float = field(
        default=0.65, metadata={"help": "Layer-wise lr decay of the backbone (block i gets lr * decay**(L + 1 - i)); "
                                        "the UperNet head trains at the full rate."},
    )
    drop_path_rate: float = field(default=0.1, metadata={"help": "Stochastic depth of the backbone (MAE: 0.1)."})
    freeze_position_embeddings: bool = field(
        default=False,
        metadata={"help": "Keep the backbone's position table fixed at its starting values (loaded, or sin-cos when "
                          "built from scratch). MixedAE's backbone trains it by default, as MAE's fine-tuning does; "
                          "CAE's always keeps it fixed."},
    )
    auxiliary_head: bool = field(
        default=True, metadata={"help": "UperNet's auxiliary FCN head on the third feature map (training loss only)."}
    )
    auxiliary_loss_weight: float = field(default=0.4, metadata={"help": "Weight of the auxiliary head's loss."})
    head_hidden_size: int = field(default=512, metadata={"help": "Channels of the UperNet head (mmseg: 512)."})
    auxiliary_channels: int = field(default=256, metadata={"help": "Channels of the auxiliary FCN head."})
    sync_batch_norm: bool = field(
        default=True,
        metadata={"help": "On several GPUs, turn the heads' and neck's BatchNorm layers into SyncBatchNorm so that "
                          "their statistics cover the global batch (the MAE/CAE recipe's SyncBN; with 2 crops per "
                          "GPU, per-device statistics are noisy). torch synchronises batch norm on accelerators only: "
                          "on CPU each process keeps its own."},
    )
    save_visualizations: bool = field(
        default=True, metadata={"help": "Write image | ground truth | prediction PNGs at every evaluation."}
    )

    def __post_init__(self):
        if self.data_dir is not None:
            check_argument(Path(self.data_dir).is_dir(), "data_dir", self.data_dir,
                           "no such folder; give the root of an ADEChallengeData2016-layout folder")
        _check_optional(self, ("num_labels",), _positive_int, "a whole number of classes >= 1, e.g. 150 for ADE20K")
        if self.id2label is not None:
            self.id2label_map = read_id2label(self.id2label)
            if self.num_labels is not None:
                check_argument(len(self.id2label_map) == self.num_labels, "id2label", self.id2label,
                               f"it names {len(self.id2label_map)} classes but --num_labels is {self.num_labels}; "
                               "make them agree or leave --num_labels out")
        else:
            self.id2label_map = None
        check_argument(_positive_int(self.crop_size), "crop_size", self.crop_size, "a side in pixels >= 1, e.g. 512")
        _check_optional(self, ("rescale_size",), _positive_int, "a short side in pixels >= 1, e.g. 512")
        check_argument(_finite(self.cat_max_ratio) and 0 < self.cat_max_ratio <= 1, "cat_max_ratio",
                       self.cat_max_ratio, "a fraction in (0, 1] (1 turns the redraw off)")
        check_argument(self.crop_padding in CROP_PADDINGS, "crop_padding", self.crop_padding,
                       f"choose one of {CROP_PADDINGS}")
        check_argument(self.eval_mode in EVAL_MODES, "eval_mode", self.eval_mode, f"choose one of {EVAL_MODES}")
        _check_optional(self, ("eval_stride",), _positive_int, "a stride in pixels >= 1")
        if self.eval_stride is not None:
            check_argument(self.eval_stride <= self.crop_size, "eval_stride", self.eval_stride,
                           f"at most --crop_size {self.crop_size}, or windows would leave pixels out")
        if self.out_indices is not None:
            indices = self.out_indices
            check_argument(
                isinstance(indices, (list, tuple)) and len(indices) > 0
                and all(isinstance(index, int) and index >= 0 for index in indices)
                and list(indices) == sorted(set(indices)),
                "out_indices", indices, "increasing, distinct stage indices >= 0, e.g. 4 6 8 12 for ViT-B",
            )
            if self.multi_scale_neck:
                check_argument(len(indices) == 4, "out_indices", indices,
                               "--multi_scale_neck takes exactly 4 stages; give 4 or pass --multi_scale_neck false")
        check_argument(_finite(self.layer_decay) and 0 < self.layer_decay <= 1, "layer_decay", self.layer_decay,
                       "a number in (0, 1] (1: no decay)")
        check_argument(_finite(self.drop_path_rate) and 0 <= self.drop_path_rate < 1, "drop_path_rate",
                       self.drop_path_rate, "a probability in [0, 1)")
        check_argument(_finite(self.auxiliary_loss_weight) and self.auxiliary_loss_weight >= 0,
                       "auxiliary_loss_weight", self.auxiliary_loss_weight, "a weight >= 0 (UperNet/mmseg: 0.4)")
        for name in ("head_hidden_size", "auxiliary_channels"):
            check_argument(_positive_int(getattr(self, name)), name, getattr(self, name), "a channel count >= 1")

    @property
    def resolved_rescale_size(self) -> int:
        return self.rescale_size if self.rescale_size is not None else self.crop_size

    @property
    def resolved_eval_stride(self) -> int:
        return self.eval_stride if self.eval_stride is not None else max(1, (2 * self.crop_size) // 3)


def read_id2label(value: str | dict | list) -> dict[int, str]:
    """`--id2label`: a JSON file, or JSON text, of `{class id: name}` (or a list of names), or that object itself (a
    JSON config's value) -> `{int: str}` with the ids 0..C-1."""
    if isinstance(value, (dict, list)):
        loaded: Any = value
    else:
        text = str(value)
        # JSON text is read as such, never as a path: ADE20K's 150 names are longer than a file name may be.
        if not text.lstrip().startswith(("{", "[")):
            path = Path(text).expanduser()
            check_argument(path.is_file(), "id2label", value,
                           "no such file; give an existing JSON file or the JSON text itself")
            text = path.read_text(encoding="utf-8")
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as error:
            where = f"the file {value}" if text is not value else "the text given"
            check_argument(False, "id2label", value, f"{where} is not JSON ({error}); give a JSON file or text such "
                                                     "as '{\"0\": \"background\", \"1\": \"cat\"}'")
    if isinstance(loaded, list):
        loaded = dict(enumerate(loaded))
    check_argument(isinstance(loaded, dict) and bool(loaded), "id2label", value,
                   "a JSON object of class id -> name (or a list of names)")
    try:
        mapping = {int(key): str(name) for key, name in loaded.items()}
    except ValueError:
        check_argument(False, "id2label", value, "its keys must be integer class ids, e.g. {\"0\": \"wall\"}")
    check_argument(sorted(mapping) == list(range(len(mapping))), "id2label", value,
                   f"the ids must be 0..{len(mapping) - 1} without gaps; got {sorted(mapping)[:10]}")
    return mapping


def check_segmentation_data(data_args: DataArguments, segmentation_args: SegmentationArguments) -> None:
    """The shared data flags that segmentation does not take, named before anything is built."""
    for flag in ("train_dir", "validation_dir"):
        check_argument(getattr(data_args, flag) is None, flag, getattr(data_args, flag),
                       "semantic segmentation reads image/annotation pairs: use --data_dir (ADEChallengeData2016 "
                       "layout) or --dataset_name")


def label_map_column(data_args: DataArguments) -> str:
    """The column of the label maps: `--label_column_name` when given, else `annotation`."""
    name = data_args.label_column_name
    return DEFAULT_LABEL_MAP_COLUMN if name in (None, SHARED_LABEL_COLUMN_DEFAULT) else name


def parse_segmentation_arguments(argv: list[str] | None = None) -> tuple:
    """`[config.json] [--flag value ...]` -> (ModelArguments, DataArguments, TrainingArguments, SegmentationArguments)."""
    parsed = parse_run_arguments(
        argv, dataclass_types=(ModelArguments, DataArguments, TrainingArguments, SegmentationArguments)
    )
    check_segmentation_data(parsed[1], parsed[3])
    return parsed
