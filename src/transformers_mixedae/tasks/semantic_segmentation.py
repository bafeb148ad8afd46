# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Semantic segmentation with UperNet on a MixedAE / CAE backbone: the logic behind
`examples/run_semantic_segmentation.py`.

The model is transformers' own `UperNetForSemanticSegmentation` whose `backbone_config` is one of our configs with
`out_indices` and the multi-scale neck (`MixedAEBackbone` / `CAEBackbone` through `AutoBackbone`). The backbone's
weights come from `--model_name_or_path` (a pre-training or image-classification checkpoint of ours: the decoder,
the final LayerNorm and a classifier head are not used, and reported like any unused key) or start from scratch
(`--model_type mixedae|cae --config_overrides ...`). The loss is UperNet's own: cross-entropy ignoring 255 plus the
auxiliary FCN head's, weighted by `--auxiliary_loss_weight`. The backbone trains with layer-wise learning-rate decay
(`training.optim`), the heads at the full rate; AdamW, weight decay 0.05 and lr 1e-4 by default (MAE / CAE on
ADE20K; the schedule is `--lr_scheduler_type`, the recipe's `polynomial` in `examples/configs`).

It is one task of the training engine (`training.loop`), which owns the loop, checkpoints, exact resume, logging
and the final save (model, image processor working with `pipeline("image-segmentation")`, model card with the mIoU).
"""

import logging
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from transformers import CONFIG_MAPPING, PreTrainedModel, UperNetConfig, UperNetForSemanticSegmentation
from transformers.image_utils import PILImageResampling
from transformers.models.auto.modeling_auto import MODEL_FOR_BACKBONE_MAPPING

from ..data import SEGMENTATION_IGNORE_INDEX
from ..hub.registration import pil_image_processor_class
from ..listing import first_few
from ..models.vit_layers import ViTEmbeddings
from ..training.arguments import (
    MODEL_TYPES, DataArguments, ModelArguments, TrainingArguments, check_argument, parse_config_overrides,
)
from ..training.loop import TrainingCallback, TrainingTask, _flat_config, train
from ..training.optim import build_adamw, layer_decay_parameter_groups, parameter_groups
from .image_classification import checkpoint_model_type
from .semantic_segmentation_args import SegmentationArguments, check_segmentation_data
from .semantic_segmentation_data import SegmentationData

# A plain logger: `build_segmentation_model` is also called outside an Accelerate run.
logger = logging.getLogger(__name__)

DEFAULT_OUTPUT_DIR = "outputs/run_semantic_segmentation"
# MAE / CAE on ADE20K (UperNet): AdamW lr 1e-4, weight decay 0.05, betas (0.9, 0.999).
DEFAULT_LEARNING_RATE = 1e-4
DEFAULT_WEIGHT_DECAY = 0.05
DEFAULT_ADAM_BETA2 = 0.999
# Where torch's SyncBatchNorm synchronises (on other devices it raises in a multi-process run).
SYNC_BATCH_NORM_DEVICES = ("cuda", "xpu", "hpu")


def default_out_indices(num_layers: int) -> list[int]:
    """Stages at 1/3, 1/2, 2/3 and all of the depth: 4 6 8 12 for ViT-B (the papers' blocks 3 5 7 11, 0-based). Where
    that rule repeats a stage (under 5 layers), the last four stages are used instead (1 2 3 4 for 4 layers)."""
    stages = [num_layers // 3, num_layers // 2, (2 * num_layers) // 3, num_layers]
    if len(set(stages)) < len(stages):
        stages = list(range(max(num_layers - 3, 0), num_layers + 1))
    return stages


def backbone_class(model_type: str) -> type:
    return MODEL_FOR_BACKBONE_MAPPING[CONFIG_MAPPING[model_type]]


def _backbone_overrides(model_args: ModelArguments, segmentation_args: SegmentationArguments, model_type: str) -> dict:
    overrides = parse_config_overrides(model_args.config_overrides, CONFIG_MAPPING[model_type])
    for name in ("image_size", "patch_size"):
        if getattr(model_args, name) is not None:
            overrides[name] = getattr(model_args, name)
    overrides.setdefault("drop_path_rate", segmentation_args.drop_path_rate)
    if model_args.attn_implementation:
        overrides["attn_implementation"] = model_args.attn_implementation
    return overrides


def _stages(segmentation_args: SegmentationArguments, num_layers: int) -> dict:
    out_indices = segmentation_args.out_indices or default_out_indices(num_layers)
    check_argument(
        max(out_indices) <= num_layers and len(set(out_indices)) == len(out_indices), "out_indices", out_indices,
        f"stages of a {num_layers}-layer backbone are 0..{num_layers}, distinct; pass --out_indices explicitly",
    )
    check_argument(
        not segmentation_args.multi_scale_neck or len(out_indices) == 4, "out_indices", out_indices,
        f"the multi-scale neck takes 4 stages, a {num_layers}-layer backbone has {num_layers + 1} (0..{num_layers}): "
        "pass --multi_scale_neck false",
    )
    # UperNet's auxiliary FCN head reads the third feature map (transformers' `auxiliary_in_index`, 2).
    check_argument(
        not segmentation_args.auxiliary_head or len(out_indices) >= 3, "out_indices", out_indices,
        "the auxiliary head reads the third feature map: give at least 3 stages, or pass --auxiliary_head False",
    )
    return {"out_indices": list(out_indices), "backbone_multi_scale": segmentation_args.multi_scale_neck}


def build_segmentation_model(
    model_args: ModelArguments, segmentation_args: SegmentationArguments, model_type: str, id2label: dict[int, str]
) -> UperNetForSemanticSegmentation:
    """UperNet on our backbone: weights from `--model_name_or_path` (unused and new keys logged) or from scratch."""
    overrides = _backbone_overrides(model_args, segmentation_args, model_type)
    config_class = CONFIG_MAPPING[model_type]
    backbone = None
    if model_args.model_name_or_path:
        num_layers = config_class.from_pretrained(model_args.model_name_or_path, **overrides).num_hidden_layers
        backbone, info = backbone_class(model_type).from_pretrained(
            model_args.model_name_or_path, **overrides, **_stages(segmentation_args, num_layers),
            output_loading_info=True,
        )
        if info["unexpected_keys"]:
            logger.info(f"{len(info['unexpected_keys'])} weights of {model_args.model_name_or_path} are not used by the "
                        f"backbone (decoder, final norm, heads): {first_few(sorted(info['unexpected_keys']))}")
        if info["missing_keys"]:
            logger.info(f"{len(info['missing_keys'])} backbone weights are new (multi-scale neck): "
                        f"{first_few(sorted(info['missing_keys']))}")
        backbone_config = backbone.config
    else:
        num_layers = config_class(**overrides).num_hidden_layers
        backbone_config = config_class(**overrides, **_stages(segmentation_args, num_layers))
    config = UperNetConfig(
        backbone_config=backbone_config,
        num_labels=len(id2label),
        id2label=dict(id2label),
        label2id={name: index for index, name in id2label.items()},
        hidden_size=segmentation_args.head_hidden_size,
        auxiliary_channels=segmentation_args.auxiliary_channels,
        use_auxiliary_head=segmentation_args.auxiliary_head,
        auxiliary_loss_weight=segmentation_args.auxiliary_loss_weight,
        loss_ignore_index=SEGMENTATION_IGNORE_INDEX,
    )
    model = UperNetForSemanticSegmentation(config)
    if backbone is not None:
        model.backbone.load_state_dict(backbone.state_dict())
    if segmentation_args.freeze_position_embeddings:
        for module in model.backbone.modules():
            if isinstance(module, ViTEmbeddings):
                module.train_positions(trained=False)
    if model_args.gradient_checkpointing:
        model.backbone.activation_checkpointing_enable()
    return model


def synchronises_batch_norm(segmentation_args: SegmentationArguments, accelerator: Accelerator) -> bool:
    """Whether the run's BatchNorm layers become SyncBatchNorm: `--sync_batch_norm`, several processes, and a device
    on which torch synchronises them."""
    return (segmentation_args.sync_batch_norm and accelerator.num_processes > 1
            and accelerator.device.type in SYNC_BATCH_NORM_DEVICES)


def with_synchronised_batch_norm(
    model: UperNetForSemanticSegmentation, segmentation_args: SegmentationArguments, accelerator: Accelerator
) -> UperNetForSemanticSegmentation:
    """`model` with SyncBatchNorm in place of its BatchNorm layers when `synchronises_batch_norm`, else as it is. The
    parameters and buffers keep their names, so the saved folder loads as a plain UperNet."""
    if not synchronises_batch_norm(segmentation_args, accelerator):
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def segmentation_image_processor(backbone_config, segmentation_args: SegmentationArguments):
    """The processor saved with the model: resize to the evaluation scale (`--rescale_size`, default the training
    crop; a multiple of the patch size, so any image gives a valid input), square, normalise; `do_reduce_labels` as
    trained; `post_process_semantic_segmentation` gives the class-id map at each image's own size (what
    `pipeline("image-segmentation")` calls)."""
    side = segmentation_args.resolved_rescale_size
    # Bilinear, as the run's evaluation rescales images.
    return pil_image_processor_class(backbone_config)(
        size={"height": side, "width": side}, resample=PILImageResampling.BILINEAR, do_center_crop=False,
        do_reduce_labels=segmentation_args.reduce_labels,
    )


class SemanticSegmentationTask(TrainingTask):
    """UperNet on a MixedAE / CAE backbone, trained with UperNet's loss on image / label-map pairs."""

    name = "segmentation"
    tracker_project = "run_semantic_segmentation"

    def __init__(
        self,
        model_args: ModelArguments,
        data_args: DataArguments,
        training_args: TrainingArguments,
        segmentation_args: SegmentationArguments | None = None,
    ):
        super().__init__(training_args, model_args.model_name_or_path)
        self.model_args = model_args
        self.data_args = data_args
        self.segmentation_args = segmentation_args = segmentation_args or SegmentationArguments()
        check_segmentation_data(data_args, segmentation_args)
        training_args.output_dir = training_args.output_dir or DEFAULT_OUTPUT_DIR
        if training_args.learning_rate is None and training_args.base_learning_rate is None:
            training_args.learning_rate = DEFAULT_LEARNING_RATE
        if training_args.weight_decay is None:
            training_args.weight_decay = DEFAULT_WEIGHT_DECAY
        if training_args.adam_beta2 is None:
            training_args.adam_beta2 = DEFAULT_ADAM_BETA2
        self.torch_compile = model_args.torch_compile
        self.model_type = checkpoint_model_type(model_args)
        if self.model_type not in MODEL_TYPES:
            segmentation_folder = self.model_type == UperNetConfig.model_type
            raise ValueError(
                f"--model_name_or_path {model_args.model_name_or_path} holds a {self.model_type!r} model"
                + (", a finished segmentation run" if segmentation_folder else "")
                + f"; segmentation starts from a {' or '.join(MODEL_TYPES)} pre-training or classification "
                "checkpoint, whose encoder becomes the backbone"
                + (" (to continue a segmentation run, pass its --output_dir with --resume_from_checkpoint latest)."
                   if segmentation_folder else ".")
            )
        self.data: SegmentationData | None = None

    def check_arguments(self) -> None:
        """The crop and rescale sizes against the patch size, `--out_indices` against the depth and the batch size
        against the BatchNorm layers, before anything is written."""
        overrides = _backbone_overrides(self.model_args, self.segmentation_args, self.model_type)
        config_class = CONFIG_MAPPING[self.model_type]
        if self.model_args.model_name_or_path:
            config = config_class.from_pretrained(self.model_args.model_name_or_path, **overrides)
        else:
            config = config_class(**overrides)
        patch_size = config.patch_size
        for name in ("crop_size", "rescale_size"):
            side = getattr(self.segmentation_args, name)
            check_argument(side is None or side % patch_size == 0, name, side,
                           f"a multiple of the backbone's patch size {patch_size}, "
                           f"e.g. {max(1, (side or 0) // patch_size) * patch_size}")
        _stages(self.segmentation_args, config.num_hidden_layers)
        # The heads' BatchNorm layers (pyramid pooling down to 1 x 1) cannot train on statistics of one image.
        batch_size = self.training_args.per_device_train_batch_size
        if synchronises_batch_norm(self.segmentation_args, self.accelerator):
            batch_size *= self.accelerator.num_processes
        check_argument(batch_size >= 2, "per_device_train_batch_size", self.training_args.per_device_train_batch_size,
                       "UperNet's BatchNorm layers need at least 2 images per batch: pass 2 or more (or train on "
                       "several GPUs with --sync_batch_norm)")

    def label_names(self) -> dict[int, str]:
        """id -> name: `--id2label`, else the dataset's names (without class 0 and shifted down under
        `--reduce_labels`, as the labels are), else the ids; `--num_labels` must agree."""
        segmentation = self.segmentation_args
        names = segmentation.id2label_map
        if names is None and self.data.datasets.id2label is not None:
            names = self.data.datasets.id2label
            if segmentation.reduce_labels:
                names = {index - 1: name for index, name in names.items() if index > 0}
        num_labels = segmentation.num_labels
        # (--id2label and --num_labels were checked against each other with the arguments: only the dataset's names
        # can disagree here.)
        if names is not None and num_labels is not None and len(names) != num_labels:
            if self.accelerator.is_main_process:
                logger.warning(f"--num_labels {num_labels} differs from the {len(names)} class names of "
                               f"{self.data.source}; the classes are named by their ids")
            names = None
        if names is None:
            check_argument(num_labels is not None, "num_labels", num_labels,
                           f"{self.data.source} names no classes: pass --num_labels (ADE20K: 150 with --reduce_labels) "
                           "or --id2label")
            names = {index: str(index) for index in range(num_labels)}
        check_argument(len(names) >= 2, "num_labels", len(names),
                       "UperNet's loss needs at least 2 classes (e.g. background and object)")
        check_argument(len(names) <= SEGMENTATION_IGNORE_INDEX, "num_labels", len(names),
                       f"at most {SEGMENTATION_IGNORE_INDEX} classes: class id {SEGMENTATION_IGNORE_INDEX} is the "
                       "ignore index of the loss and the metrics, so a class with that id would never count")
        return names

    def build(self):
        self.data = SegmentationData(self.data_args, self.training_args, self.segmentation_args, self.accelerator)
        id2label = self.label_names()
        model = build_segmentation_model(self.model_args, self.segmentation_args, self.model_type, id2label)
        model = with_synchronised_batch_norm(model, self.segmentation_args, self.accelerator)
        processor = segmentation_image_processor(model.config.backbone_config, self.segmentation_args)
        self.data.build_loaders(model.config, len(id2label), processor)
        return model, self.data

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """UperNet's loss; 0 for a micro-batch without a labelled pixel (all 255, as mmseg's loss is there), where
        UperNet's mean over no pixel is NaN and the step would be dropped as non-finite. The zero is selected on the
        device (no host sync per micro-batch) and its gradient, zero, still reaches every parameter through the
        forward, so DDP's gradient reduction runs on every rank."""
        loss = model(**batch).loss
        labelled = (batch["labels"] != SEGMENTATION_IGNORE_INDEX).any()
        return torch.where(labelled, loss, torch.zeros_like(loss))

    def build_optimizer(self, model: PreTrainedModel, lr: float):
        """Layer-wise decay over the backbone (embeddings 0, block i -> i, neck at the top rate); the heads at `lr`."""
        args = self.training_args
        unwrapped = getattr(model, "module", model)
        groups = layer_decay_parameter_groups(unwrapped.backbone, args.weight_decay, lr,
                                              self.segmentation_args.layer_decay)
        heads = nn.ModuleList(module for name, module in unwrapped.named_children() if name != "backbone")
        for group in parameter_groups(heads, args.weight_decay):
            if group["params"]:
                groups.append({**group, "lr": lr, "lr_scale": 1.0})
        return build_adamw(groups, lr, (args.adam_beta1, args.adam_beta2))

    def card_kwargs(self) -> dict[str, Any]:
        base_model = self.model_args.model_name_or_path
        return dict(
            eval_dataset=self.data.datasets.dataset_id,
            eval_dataset_name=self.data.source,
            eval_split=self.data_args.validation_split_name,
            eval_dataset_config=self.data_args.dataset_config_name,
            evaluation_protocol="UperNet fine-tuning",
            base_model=base_model if base_model and not Path(base_model).exists() else None,
        )

    def description(self) -> str:
        args = self.segmentation_args
        return (f"UperNet segmentation on {self.model_type}, crop {args.crop_size} of images rescaled to "
                f"{args.resolved_rescale_size}, layer decay {args.layer_decay}, "
                f"auxiliary head {args.auxiliary_loss_weight if args.auxiliary_head else 'off'}, "
                f"evaluation {args.eval_mode}")

    def recipe_arguments(self) -> dict[str, Any]:
        # --freeze_position_embeddings is recorded by its effect, the recipe's frozen parameters: on CAE, whose table
        # is always fixed, the flag changes nothing and must not stop a resume.
        args = self.segmentation_args
        return {"crop_size": args.crop_size, "rescale_size": args.resolved_rescale_size,
                "layer_decay": args.layer_decay, "reduce_labels": args.reduce_labels,
                "photometric_distortion": args.photometric_distortion, "cat_max_ratio": args.cat_max_ratio,
                "crop_padding": args.crop_padding,
                "auxiliary_loss_weight": args.auxiliary_loss_weight if args.auxiliary_head else None}

    def tracker_config(self) -> dict[str, Any]:
        return _flat_config(self.model_args, self.data_args, self.training_args, self.segmentation_args)


def run_semantic_segmentation(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: TrainingArguments,
    segmentation_args: SegmentationArguments | None = None,
    accelerator: Accelerator | None = None,
    callbacks: tuple[TrainingCallback, ...] | list[TrainingCallback] = (),
) -> dict[str, Any]:
    """Train UperNet on our backbone, evaluate (mIoU over the whole validation set), save. Returns the final metrics
    (also in `output_dir/all_results.json`)."""
    task = SemanticSegmentationTask(model_args, data_args, training_args, segmentation_args)
    return train(task, accelerator, callbacks or ())
