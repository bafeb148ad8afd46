# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""Fine-tuning and linear probing of MixedAE / CAE encoders: the logic behind `examples/run_image_classification.py`.

* `--mode finetune` (MAE / CAE fine-tuning recipe): the whole `...ForImageClassification` model trains with AdamW,
  layer-wise learning-rate decay (embeddings = layer 0, block i = i + 1, final norm / fc_norm / head = L + 1, lr x
  decay**(L + 1 - id)), drop path, warm-up + cosine and label smoothing.
* `--mode linear_probe` (MAE protocol): the encoder is frozen (eval mode, no drop path, `requires_grad=False`), the
  head is `BatchNorm1d(D, affine=False, eps=1e-6)` + Linear (trunc-normal std 0.01) on the final-norm [CLS] token,
  trained with SGD (or MAE's LARS, `--optimizer lars`). At the end the BatchNorm (running statistics) is folded into
  the Linear, so the saved model is a plain `...ForImageClassification` with `classifier_pooling="cls"` giving the
  same logits.
* `--mode attentive_probe` (CAE protocol): the encoder is frozen as for the linear probe; the head is CAE's
  attentive pooling (a learned query token cross-attending over the final-norm tokens, BatchNorm without affine,
  `AttentivePooler`) + Linear (normal std 0.01), trained with SGD; the config says `classifier_head="attentive"`,
  so the saved folder loads with `AutoModelForImageClassification` and runs in `pipeline("image-classification")`.

Fine-tuning draws RandAugment (`--aa`) or colour jitter (`--color_jitter`) per image in the data workers
(`ClassificationTrainTransform`), and random erasing, Mixup and CutMix per batch on the device.

All are one task of the training engine (`training.loop`), which owns the loop, checkpoints, resume, logging and
the final save; the task states the model, its data (`ClassificationData`), the optimizer, the cross-entropy loss,
the frozen encoder of the probe, and the BatchNorm folding before the save. `--model_ema` turns on the engine's
moving average of the weights (`training.ema`), saved as `output_dir/ema/`.
"""

from pathlib import Path
from typing import Any

import datasets
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.logging import get_logger
from torch import nn
from transformers import CONFIG_MAPPING, AutoConfig, AutoModel, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING

from ..data import (
    CAE_CROP_SCALE,
    BatchNormalizer,
    EvaluationTransform,
    SkippedSampleStats,
    build_pretraining_dataloader,
)
from ..data.rand_augment import auto_augment_off
from ..data.transforms import ClassificationTrainTransform
from ..data.batch_augmentation import MixupCutmix, random_erase, soft_target_cross_entropy
from ..evaluation.eval_mode import eval_mode
from ..listing import first_few
from ..models.vit_layers import interpolate_position_embedding, sincos_2d_position_embedding
from ..evaluation.frozen_features import LINEAR_PROBE_BATCH_NORM_EPS, LINEAR_PROBE_INIT_STD, Accuracy, _gather_uneven
from .image_classification_args import (
    PROBE_MODES,
    ClassificationArguments,
    check_classification_data,
    recipe_drop_path_rate,
    resolve_recipe,
)
from ..training.output_folders import check_model_path
from ..training.arguments import (
    MODEL_TYPES,
    DataArguments,
    ModelArguments,
    TrainingArguments,
    check_argument,
    parse_config_overrides,
)
from .masked_image_modeling_data import (
    MAX_LISTED_SKIPPED_SAMPLES,
    DataState,
    PretrainingData,
    SeededTransform,
    derived_seed,
    image_processor_for,
    load_run_datasets,
)
from ..training.loop import TrainingCallback, TrainingTask, _flat_config, train
from ..training.optim import LARS, build_adamw, layer_decay_parameter_groups, parameter_groups

logger = get_logger(__name__)

DEFAULT_OUTPUT_DIR = "outputs/run_image_classification"
DEFAULT_EVAL_DATASET = "zalando-datasets/fashion_mnist"  # Hub id of the data the embedded default is drawn from
EVALUATION_PROTOCOLS = {"finetune": "fine-tuning", "linear_probe": "linear probing",
                        "attentive_probe": "attentive probing"}


# ---------------------------------------------------------------------------------------------- model
def classification_class(model_type: str) -> type:
    """The `...ForImageClassification` class registered for `model_type`."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model type {model_type!r} is not supported; choose one of {MODEL_TYPES}.")
    return MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING[CONFIG_MAPPING[model_type]]


def checkpoint_model_type(model_args: ModelArguments) -> str:
    """The model type of `--model_name_or_path` (read from its config), or `--model_type` for a fresh model."""
    if model_args.model_name_or_path:
        check_model_path(model_args.model_name_or_path, "--model_name_or_path")
        model_type = AutoConfig.from_pretrained(model_args.model_name_or_path).model_type
        if model_args.model_type and model_args.model_type != model_type:
            raise ValueError(
                f"--model_type {model_args.model_type} but {model_args.model_name_or_path} is a {model_type} checkpoint."
            )
        return model_type
    if not model_args.model_type:
        raise ValueError("Pass --model_name_or_path (a MixedAE/CAE checkpoint) or --model_type to start from scratch.")
    return model_args.model_type


def build_classification_model(
    model_args: ModelArguments, classification_args: ClassificationArguments, model_type: str, label_names: list[str]
) -> PreTrainedModel:
    """`...ForImageClassification` from a checkpoint (any of ours; a new head for these labels) or from scratch;
    for linear probing with the BatchNorm + Linear head and a frozen encoder, for attentive probing with the attentive
    head (in the config) and a frozen encoder."""
    model_class = classification_class(model_type)
    overrides = parse_config_overrides(model_args.config_overrides, model_class.config_class)
    given_labels = sorted(set(overrides) & {"num_labels", "id2label", "label2id"})
    if given_labels:
        raise ValueError(
            f"--config_overrides sets {', '.join(given_labels)}, which a classifier takes from the dataset's labels "
            f"({len(label_names)} classes here): remove {'them' if len(given_labels) > 1 else 'it'}, and name the "
            "classes in the data (a ClassLabel column, or the image folders' names)."
        )
    for name in ("image_size", "patch_size"):
        if getattr(model_args, name) is not None:
            overrides[name] = getattr(model_args, name)
    if classification_args.classifier_pooling is not None:
        overrides["classifier_pooling"] = classification_args.classifier_pooling
    overrides.setdefault("drop_path_rate", recipe_drop_path_rate(classification_args))
    if classification_args.mode in PROBE_MODES:
        overrides.update(classifier_pooling="cls", drop_path_rate=0.0)
    if classification_args.mode == "attentive_probe":
        overrides["classifier_head"] = "attentive"
    labels = dict(
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: index for index, name in enumerate(label_names)},
    )
    if model_args.attn_implementation:
        overrides["attn_implementation"] = model_args.attn_implementation
    if model_args.model_name_or_path:
        model, loading_info = model_class.from_pretrained(
            model_args.model_name_or_path, **overrides, **labels, ignore_mismatched_sizes=True,
            output_loading_info=True,
        )
        if any(key.endswith(POSITION_TABLE) for key, *_ in loading_info["mismatched_keys"]):
            resize_trained_position_table(model, model_args.model_name_or_path)
        if classification_args.mode == "finetune":
            match_head_to_labels(model, model_args.model_name_or_path, label_names)
    else:
        model = model_class(model_class.config_class(**overrides, **labels))
    if classification_args.mode == "linear_probe":
        add_linear_probe_head(model)
    elif classification_args.mode == "attentive_probe":
        prepare_attentive_probe(model)
    if model_args.gradient_checkpointing:
        model.activation_checkpointing_enable()
    return model


POSITION_TABLE = "embeddings.position_embeddings"


def resize_trained_position_table(model: PreTrainedModel, model_name_or_path: str) -> None:
    """A checkpoint fine-tuned at another image size: resample its trained position table to the new grid
    (bicubic, as MAE, BEiT and DeiT do before fine-tuning at a higher resolution). `from_pretrained` re-initialised
    the table of the new shape to the fixed sin-cos one, which is right (and exact) when the checkpoint's table was
    the fixed sin-cos table of its own grid, as after pre-training, and undoes the fine-tuning otherwise."""
    source = AutoModel.from_pretrained(model_name_or_path).embeddings
    table, grid = source.position_embeddings.detach(), source.patch_embeddings.grid_size
    fixed_tables = [sincos_2d_position_embedding(*grid, table.shape[-1], row_first) for row_first in (True, False)]
    if any(torch.allclose(table, fixed, atol=1e-6) for fixed in fixed_tables):
        return
    embeddings = model.base_model.embeddings
    with torch.no_grad():
        embeddings.position_embeddings.copy_(
            interpolate_position_embedding(table, grid, embeddings.patch_embeddings.grid_size)
        )
    logger.info(f"The trained position table of {model_name_or_path} was resampled from a {grid[0]} x {grid[1]} to "
                f"a {embeddings.patch_embeddings.grid_size[0]} x {embeddings.patch_embeddings.grid_size[1]} grid.",
                main_process_only=True)


def match_head_to_labels(model: PreTrainedModel, model_name_or_path: str, label_names: list[str]) -> None:
    """A classifier checkpoint with as many classes as the data keeps its trained head (its shape fits), row `i` for
    the checkpoint's class `i`. When the data names the same classes in another order, the rows are reordered to
    follow the names; when it names other classes, the head starts anew, initialised as the model initialises it
    (a head trained for other classes is no better a start than a fresh one, and it looks like one that fits)."""
    source = AutoConfig.from_pretrained(model_name_or_path)
    trained_head = any(name.endswith("ForImageClassification") for name in source.architectures or [])
    if not trained_head or source.num_labels != len(label_names):
        return  # no head, or one of another shape, which `from_pretrained` already initialised anew
    source_names = [source.id2label[index] for index in range(source.num_labels)]
    if source_names == label_names:
        return
    head = model.classifier
    if sorted(source_names) == sorted(label_names):
        order = torch.tensor([source_names.index(name) for name in label_names])
        with torch.no_grad():
            head.weight.copy_(head.weight[order])
            head.bias.copy_(head.bias[order])
        logger.info(f"The head of {model_name_or_path} follows the data's class order.", main_process_only=True)
        return
    for parameter in head.parameters():
        parameter._is_hf_initialized = False  # loaded, so `transformers.initialization` would leave it as it is
    model._init_weights(head)
    logger.warning(
        f"{model_name_or_path} was fine-tuned for other classes ({first_few(source_names)}) than the data's "
        f"({first_few(label_names)}): its classification head starts anew.", main_process_only=True,
    )


def add_linear_probe_head(model: PreTrainedModel) -> None:
    """Freeze everything and put MAE's probe head (BatchNorm without affine + Linear, trunc-normal 0.01) on [CLS]."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    hidden_size = model.config.hidden_size
    linear = nn.Linear(hidden_size, model.config.num_labels)
    nn.init.trunc_normal_(linear.weight, std=LINEAR_PROBE_INIT_STD)
    nn.init.zeros_(linear.bias)
    model.classifier = nn.Sequential(
        nn.BatchNorm1d(hidden_size, affine=False, eps=LINEAR_PROBE_BATCH_NORM_EPS), linear
    )


@torch.no_grad()
def prepare_attentive_probe(model: PreTrainedModel) -> None:
    """Freeze the encoder and start the Linear as CAE's attentive probe does (normal std 0.01, zero bias); the
    attentive pooling keeps its own initialisation (or a checkpoint's)."""
    if model.attentive_pooler is None:
        raise ValueError("the attentive probe needs a model built with classifier_head='attentive'.")
    for parameter in base_encoder(model).parameters():
        parameter.requires_grad_(False)
    nn.init.normal_(model.classifier.weight, std=LINEAR_PROBE_INIT_STD)
    nn.init.zeros_(model.classifier.bias)


@torch.no_grad()
def fold_linear_probe_head(model: PreTrainedModel) -> None:
    """Replace the BatchNorm + Linear probe head by one Linear with the same eval-mode output (loadable by the plain
    `...ForImageClassification` class)."""
    head = model.classifier
    if not isinstance(head, nn.Sequential):
        return
    norm, linear = head
    scale = (norm.running_var + norm.eps).rsqrt()
    folded = nn.Linear(linear.in_features, linear.out_features).to(linear.weight.device, linear.weight.dtype)
    folded.weight.copy_(linear.weight * scale)
    folded.bias.copy_(linear.bias - folded.weight @ norm.running_mean)
    model.classifier = folded


# ---------------------------------------------------------------------------------------------- data
class ClassificationData(PretrainingData):
    """Labelled train/validation data: RandomResizedCrop (0.08, 1) + flip (+ RandAugment or colour jitter when
    fine-tuning) for training, resize + centre crop for evaluation; per-rank loaders, seeding and resume positions as
    in pre-training (`PretrainingData`)."""

    def __init__(
        self, data_args: DataArguments, training_args: TrainingArguments, accelerator,
        classification_args: ClassificationArguments | None = None,
    ):
        self.data_args = data_args
        self.classification_args = classification_args or ClassificationArguments()
        self.training_args = training_args
        self.accelerator = accelerator
        self.group_size = 1
        self.tokenizer = None
        if not data_args.label_column_name:
            raise ValueError("image classification needs labels: pass --label_column_name.")
        self.datasets = load_run_datasets(data_args, training_args)
        self.source = self.datasets.source
        self.label_names = self.datasets.label_names or self._integer_label_names()
        self.stats = SkippedSampleStats(max_recorded=MAX_LISTED_SKIPPED_SAMPLES)
        self.state = DataState(self.stats, accelerator)

    def _integer_label_names(self) -> list[str]:
        train = self.datasets.train
        if not isinstance(train, datasets.Dataset):
            raise ValueError(
                f"the label column {self.datasets.label_column_name!r} of {self.source} is not a ClassLabel, so the "
                "number of classes is unknown when streaming; cast it to ClassLabel or load without --streaming."
            )
        column = self.datasets.label_column_name
        values = sorted(train.unique(column))
        if values != list(range(len(values))):
            raise ValueError(
                f"labels of {self.source} must be ClassLabel or the integers 0..C-1; the training split has "
                f"{len(values)} distinct values, {values[:10]}{' ...' if len(values) > 10 else ''}. If "
                "--max_train_samples took a subset that misses a class, take more samples or cast the column to "
                "ClassLabel."
            )
        validation = self.datasets.validation
        if isinstance(validation, datasets.Dataset):
            # Checked now: otherwise the first evaluation, after training, would fail on a class the model lacks.
            unknown = sorted(set(validation.unique(column)) - set(values))
            if unknown:
                raise ValueError(
                    f"the validation split of {self.source} has labels {unknown[:10]} that are not classes of the "
                    f"training split (0..{len(values) - 1}): fix the validation labels (an unlabelled split, -1, cannot "
                    "be evaluated), or cast both columns to one ClassLabel."
                )
        return [str(value) for value in values]

    def build_loaders(self, config) -> None:
        self.config = config
        self.model_type = config.model_type
        self.image_size = config.image_size  # int or (height, width): the transforms take both
        # uint8 out of the data workers, normalised on the device by `model_inputs`.
        args = self.classification_args
        augmentation = ClassificationTrainTransform(
            self.image_size, scale=CAE_CROP_SCALE, auto_augment=args.aa, color_jitter=args.color_jitter,
            normalize=False,
        )
        self.normalize_batch = BatchNormalizer(augmentation.mean, augmentation.std, self.accelerator.device)
        self.train_transform = SeededTransform(augmentation, self.training_args.seed, self.accelerator.process_index)
        self.train_loader = build_pretraining_dataloader(
            self.datasets.train,
            self.train_transform,
            batch_size=self.training_args.per_device_train_batch_size,
            rank=self.accelerator.process_index,
            world_size=self.accelerator.num_processes,
            seed=self.training_args.seed,
            num_workers=self.data_args.dataloader_num_workers,
            drop_last=True,
            shuffle_buffer_size=self.data_args.shuffle_buffer_size,
            image_column_name=self.datasets.image_column_name,
            label_column_name=self.datasets.label_column_name,
            skip_undecodable=not self.data_args.strict_decoding,
            pin_memory=torch.cuda.is_available(),
        )
        self.train_loader.stats = self.stats
        self.evaluation_transform = EvaluationTransform(self.image_size)
        self.image_processor = image_processor_for(config)

    def model_inputs(self, batch: dict, batch_seed: int) -> dict[str, torch.Tensor]:
        device = self.accelerator.device
        pixel_values = self.normalize_batch(batch["pixel_values"].to(device, non_blocking=True))
        # The batch's seed goes with it: the task's augmentation (`ImageClassificationTask.augment`) draws from it.
        return {"pixel_values": pixel_values, "labels": batch["labels"].to(device), "batch_seed": batch_seed}

    @torch.no_grad()
    def _evaluate(self, model, step: int) -> dict[str, float]:
        """Top-1 / top-5 accuracy (the shipped `evaluate` metric) and loss on the validation split, all ranks."""
        # The unwrapped model: DDP's forward would synchronise buffers, and ranks may hold different batch counts.
        module = self.accelerator.unwrap_model(model)
        logits, labels = [torch.zeros(0, module.config.num_labels)], [torch.zeros(0, dtype=torch.long)]
        with eval_mode(module):
            for batch in self._evaluation_loader(self.datasets.validation, self.data_args.max_eval_samples):
                if "pixel_values" not in batch:
                    continue
                with self.accelerator.autocast():
                    outputs = module(pixel_values=batch["pixel_values"].to(self.accelerator.device))
                logits.append(outputs.logits.float().cpu())
                labels.append(batch["labels"].cpu())
        all_logits, all_labels = torch.cat(logits), torch.cat(labels)
        if self.accelerator.num_processes > 1:
            all_logits = _gather_uneven(self.accelerator, all_logits)
            all_labels = _gather_uneven(self.accelerator, all_labels)
        if not len(all_labels):
            return {}
        metric = Accuracy(keep_in_memory=True)
        metric.add_batch(predictions=all_logits.numpy(), references=all_labels.numpy())
        accuracy = metric.compute(top_k=(1, 5))
        results = {f"eval_{name}": value for name, value in accuracy.items()}
        results["eval_loss"] = float(F.cross_entropy(all_logits, all_labels))
        results["eval_samples"] = len(all_labels)
        return results

    def num_validation_examples(self) -> int | None:
        """How many examples evaluation reads (after `--max_eval_samples`); None for a stream of unknown length."""
        validation = self.datasets.validation
        return len(validation) if isinstance(validation, datasets.Dataset) else None

    def eval_dataset_id(self) -> str:
        if self.data_args.dataset_name:
            return self.data_args.dataset_name
        return "imagefolder" if self.data_args.train_dir else DEFAULT_EVAL_DATASET


def evaluation_data_card(data_args: DataArguments, source: str, evaluated: int | None = None) -> dict[str, Any]:
    """What a model card's `model-index` says of the evaluation data: its display name (with the number of examples,
    `evaluated` when known, when `--max_eval_samples` may have cut the split), split and configuration, and the
    training data's Hub id (metadata `datasets`). The embedded default's validation images come from Fashion-MNIST's
    test split."""
    embedded = not (data_args.dataset_name or data_args.train_dir)
    name = source
    if data_args.max_eval_samples:
        count = evaluated if evaluated is not None else f"at most {data_args.max_eval_samples}"
        name += f", {count} examples"
    hub_id = DEFAULT_EVAL_DATASET if embedded else data_args.dataset_name
    if hub_id and Path(hub_id).exists():  # a local folder given as --dataset_name: no Hub id to name
        hub_id = None
    return dict(eval_dataset_name=name, eval_split="test" if embedded else data_args.validation_split_name,
                eval_dataset_config=data_args.dataset_config_name, training_datasets=[hub_id] if hub_id else [])


# ---------------------------------------------------------------------------------------------- task
def base_encoder(model: PreTrainedModel) -> PreTrainedModel:
    """The encoder inside one of our task models (what a linear probe freezes)."""
    return getattr(model, model.base_model_prefix)


class ImageClassificationTask(TrainingTask):
    """Fine-tuning or linear probing of a MixedAE / CAE encoder with cross-entropy (label smoothing)."""

    tracker_project = "run_image_classification"

    def __init__(
        self,
        model_args: ModelArguments,
        data_args: DataArguments,
        training_args: TrainingArguments,
        classification_args: ClassificationArguments | None = None,
    ):
        super().__init__(training_args, model_args.model_name_or_path)
        self.model_args = model_args
        self.data_args = data_args
        self.classification_args = classification_args = classification_args or ClassificationArguments()
        check_classification_data(data_args)
        training_args.output_dir = training_args.output_dir or DEFAULT_OUTPUT_DIR
        self.torch_compile = model_args.torch_compile
        self.model_type = checkpoint_model_type(model_args)
        resolve_recipe(training_args, classification_args, self.model_type)
        self.name = classification_args.mode
        self.linear_probe = classification_args.mode == "linear_probe"
        self.frozen_encoder = classification_args.mode in PROBE_MODES
        self.model_ema_decay = classification_args.model_ema_decay if classification_args.model_ema else None
        self.model_ema_eval = classification_args.model_ema_eval
        self.data: ClassificationData | None = None
        self.mixup: MixupCutmix | None = None

    def check_arguments(self) -> None:
        parse_config_overrides(self.model_args.config_overrides, classification_class(self.model_type).config_class)
        batch_size = self.training_args.per_device_train_batch_size
        # Batch-mode Mixup/CutMix pairs image i with image B-1-i (timm's): an odd batch mixes its middle image, and
        # a batch of 1 its only image, with itself.
        check_argument(not self.classification_args.mixup_active or batch_size % 2 == 0,
                       "per_device_train_batch_size", batch_size,
                       "it must be even when Mixup/CutMix is on (--mixup / --cutmix, or the recipe's), which pairs "
                       "the images of a batch; or pass --mixup 0 --cutmix 0")

    def build(self):
        self.data = ClassificationData(self.data_args, self.training_args, self.accelerator, self.classification_args)
        model = build_classification_model(
            self.model_args, self.classification_args, self.model_type, self.data.label_names
        )
        self.data.build_loaders(model.config)
        args = self.classification_args
        if args.mixup_active:
            self.mixup = MixupCutmix(
                mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, label_smoothing=args.label_smoothing,
                num_classes=model.config.num_labels,
            )
        return model, self.data

    def warmup_steps(self, steps_per_epoch: int | None, max_train_steps: int) -> int:
        """`--warmup_steps`, else the recipe's `--warmup_epochs` (not `--warmup_ratio`), at most half the run."""
        if self.training_args.warmup_steps is not None:
            return self.training_args.warmup_steps
        epochs = self.classification_args.warmup_epochs
        check_argument(steps_per_epoch is not None or not epochs, "warmup_epochs", epochs,
                       "an epoch's length is unknown (a stream without split sizes): pass --warmup_steps")
        steps = round(epochs * steps_per_epoch) if epochs else 0
        if steps > max_train_steps // 2:
            logger.warning(f"--warmup_epochs {epochs} is {steps} steps, more than half of the {max_train_steps}-step "
                           f"run: warming up over {max_train_steps // 2} (pass --warmup_steps to choose)",
                           main_process_only=True)
            steps = max_train_steps // 2
        return steps

    def build_optimizer(self, model: PreTrainedModel, lr: float):
        args, classification = self.training_args, self.classification_args
        if self.frozen_encoder:  # the probes: the head alone (MAE: SGD with momentum by default, LARS in the paper)
            groups = [group for group in parameter_groups(model, args.weight_decay) if group["params"]]
        else:
            groups = layer_decay_parameter_groups(model, args.weight_decay, lr, classification.layer_decay)
        if classification.optimizer == "adamw":
            return build_adamw(groups, lr, (args.adam_beta1, args.adam_beta2))
        if classification.optimizer == "lars":  # no decay nor trust ratio on biases and 1-D parameters
            return LARS(groups, lr=lr, momentum=classification.momentum)
        return torch.optim.SGD(groups, lr=lr, momentum=classification.momentum)

    def augment(
        self, pixel_values: torch.Tensor, labels: torch.Tensor, batch_seed: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Random erasing then Mixup / CutMix of one normalised training batch, as MAE's fine-tuning (erasing in the
        per-image transform, mixing in the loop), drawn from generators seeded by the batch's seed (seed, epoch,
        rank, index): (images, soft targets or None without Mixup / CutMix)."""
        args = self.classification_args
        if args.reprob > 0:
            pixel_values, _ = random_erase(
                pixel_values, args.reprob,
                torch.Generator().manual_seed(derived_seed(batch_seed, 1)),
                torch.Generator(device=pixel_values.device).manual_seed(derived_seed(batch_seed, 2)),
                max_count=args.recount,
            )
        if self.mixup is None:
            return pixel_values, None
        pixel_values, targets, _ = self.mixup(
            pixel_values, labels, torch.Generator().manual_seed(derived_seed(batch_seed, 3))
        )
        return pixel_values, targets

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pixel_values, targets = self.augment(batch["pixel_values"], batch["labels"], batch["batch_seed"])
        logits = model(pixel_values=pixel_values).logits
        if targets is not None:  # label smoothing is folded into the soft targets
            return soft_target_cross_entropy(logits.float(), targets)
        return F.cross_entropy(logits.float(), batch["labels"], label_smoothing=self.classification_args.label_smoothing)

    def train_mode(self, model: torch.nn.Module) -> None:
        model.train()
        if self.frozen_encoder:  # the frozen encoder stays in eval mode; only the probe's head (and BatchNorm) trains
            base_encoder(self.accelerator.unwrap_model(model)).eval()

    def before_save(self, model: PreTrainedModel) -> None:
        if self.linear_probe:  # the saved (and finally evaluated) model is the plain classifier with the BN folded in
            fold_linear_probe_head(model)

    def card_kwargs(self) -> dict[str, Any]:
        base_model = self.model_args.model_name_or_path
        return dict(
            eval_dataset=self.data.eval_dataset_id(),
            **evaluation_data_card(self.data_args, self.data.source, self.data.num_validation_examples()),
            evaluation_protocol=EVALUATION_PROTOCOLS[self.classification_args.mode],
            base_model=base_model if base_model and not Path(base_model).exists() else None,
        )

    def description(self) -> str:
        args = self.classification_args
        ema = f", EMA decay {args.model_ema_decay}" if args.model_ema else ""
        augmentation = "".join((
            f", mixup {args.mixup}" if args.mixup > 0 else "",
            f", cutmix {args.cutmix_minmax or args.cutmix}" if args.cutmix > 0 or args.cutmix_minmax else "",
            f", random erasing {args.reprob}" if args.reprob > 0 else "",
            f", RandAugment {args.aa}" if not auto_augment_off(args.aa) else "",
            f", colour jitter {args.color_jitter}" if args.color_jitter and auto_augment_off(args.aa) else "",
        ))
        return (f"{args.mode} ({args.recipe} recipe) of {self.model_type}, {args.optimizer}, layer decay "
                f"{args.layer_decay}{ema}{augmentation}")

    def recipe_arguments(self) -> dict[str, Any]:
        args = self.classification_args
        return {"mode": args.mode, "layer_decay": args.layer_decay, "label_smoothing": args.label_smoothing,
                "momentum": args.momentum, "optimizer": args.optimizer,
                "model_ema_decay": args.model_ema_decay if args.model_ema else None,
                **self._augmentation_recipe()}

    def _augmentation_recipe(self) -> dict[str, Any]:
        """The augmentation flags a resume must keep (a checkpoint written before they existed lacks them and
        still resumes)."""
        args = self.classification_args
        return dict(mixup=args.mixup, cutmix=args.cutmix,
                    cutmix_minmax=list(args.cutmix_minmax) if args.cutmix_minmax is not None else None,
                    mixup_prob=args.mixup_prob, mixup_switch_prob=args.mixup_switch_prob, mixup_mode=args.mixup_mode,
                    reprob=args.reprob, remode=args.remode, recount=args.recount, aa=args.aa,
                    color_jitter=args.color_jitter)

    def tracker_config(self) -> dict[str, Any]:
        return _flat_config(self.model_args, self.data_args, self.training_args, self.classification_args)


def run_image_classification(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: TrainingArguments,
    classification_args: ClassificationArguments | None = None,
    accelerator: Accelerator | None = None,
    callbacks: tuple[TrainingCallback, ...] | list[TrainingCallback] = (),
) -> dict[str, Any]:
    """Fine-tune or linear-probe, evaluate, save. Returns the final metrics (also in `output_dir/all_results.json`)."""
    task = ImageClassificationTask(model_args, data_args, training_args, classification_args)
    return train(task, accelerator, callbacks)
